"""Reading audio: waveforms through soundfile (wav, flac, ogg; mp3 where libsndfile reads it),
downmixed to mono and resampled (torchaudio), and AudioMAE's kaldi filterbank."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from modalities.common import DataError

EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SILENCE = 1e-6  # peak amplitude below which a clip counts as silent
HOP_MS = 10.0  # AudioMAE's frame shift


# WAV format tags libsndfile decodes: PCM, ADPCM, IEEE float, A-law, mu-law, IMA ADPCM, GSM, extensible
WAV_TAGS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0xFFFE}


def wav_header_problem(path) -> str | None:
    """What a RIFF/WAVE header says is wrong with the file, in words: a zero sample rate, no
    channels, a codec libsndfile lacks, or fewer sample bytes than the header declares (a file cut
    short, which libsndfile would read in part without a word); None when the header looks fine
    or is not a WAV header. libsndfile's own messages ("SF_INFO struct incomplete") do not say."""
    with open(path, "rb") as f:
        head = f.read(4096)
        file_size = f.seek(0, 2)
    if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 24 <= len(head):
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", head[pos + 8 : pos + 24])
            if rate == 0:
                return "missing sample rate (0 Hz in the WAV header)"
            if channels == 0:
                return "no channels in the WAV header"
            if tag not in WAV_TAGS:
                return (
                    f"unsupported sample format (WAV format tag 0x{tag:04x}, {bits} bits); "
                    "convert it to PCM or float WAV, FLAC or OGG"
                )
        if chunk == b"data":
            held = file_size - pos - 8
            if 0 < size < 0xFFFFFFFF and held < size:  # 0 and 0xFFFFFFFF: length left open by a streaming writer
                return f"truncated: the header declares {size} bytes of samples, the file holds {held}"
            return None
        pos += 8 + size + (size & 1)
    return None


def read_audio(path, sample_rate: int) -> tuple[torch.Tensor, int, int]:
    """(mono waveform (N,) float32 at ``sample_rate``, the file's sample rate, its channels)."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        problem = wav_header_problem(path) if Path(path).is_file() else None
        raise DataError(f"{path}: cannot read audio ({problem or e})") from None
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
    return wave, rate, data.shape[1]


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
