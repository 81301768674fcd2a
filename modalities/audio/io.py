"""Reading audio: waveforms through soundfile (wav, flac, ogg; mp3 where libsndfile reads it),
downmixed to mono and resampled (torchaudio), and AudioMAE's kaldi filterbank."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
import torchaudio

from modalities.common import DataError

EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SILENCE = 1e-6  # peak amplitude below which a clip counts as silent
HOP_MS = 10.0  # AudioMAE's frame shift


def read_audio(path, sample_rate: int) -> tuple[torch.Tensor, int]:
    """(mono waveform (N,) float32 at ``sample_rate``, channels in the file)."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: cannot read audio ({e})") from None
    if rate is None or rate <= 0:
        raise DataError(f"{path}: missing or invalid sample rate {rate}")
    if len(data) == 0:
        raise DataError(f"{path}: empty audio (no samples)")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: NaN or infinite samples")
    if np.abs(data).max() < SILENCE:
        raise DataError(f"{path}: silent clip (peak amplitude below {SILENCE:g})")
    wave = torch.from_numpy(data.mean(1))  # downmix to mono
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave, data.shape[1]


def fbank(wave: torch.Tensor, sample_rate: int, mel_bins: int = 128) -> torch.Tensor:
    """(N,) waveform -> (frames, mel_bins) log-mel filterbank, exactly AudioMAE's kaldi call."""
    wave = wave - wave.mean()
    return torchaudio.compliance.kaldi.fbank(
        wave[None],
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel_bins,
        dither=0.0,
        frame_shift=HOP_MS,
    )


def fit_frames(features: torch.Tensor, frames: int, offset: int = 0, floor: float = 0.0) -> torch.Tensor:
    """(T, F) -> (frames, F): cropped at ``offset`` when longer, padded at the end with ``floor``
    when shorter. AudioMAE pads with zeros in log-mel units; the data module pads with the clip's
    own quietest value instead, so that a short clip (a spoken digit is half a second) is followed
    by silence rather than by a loud flat band."""
    if len(features) >= frames:
        return features[offset : offset + frames]
    return torch.cat([features, features.new_full((frames - len(features), features.shape[1]), float(floor))])
