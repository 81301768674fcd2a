"""Audio datasets: filterbanks in memory, the built-in synthetic sounds, folders in the standard
layouts (class folders, labels.csv with an optional group column, the Free Spoken Digit Dataset's
``{digit}_{speaker}_{index}.wav`` names) and their shards (``python -m tasks.shards --modality
audio``: filterbanks), SpecAugment-style augmentation, the domain the recipe trains on and its picture.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from foundations.grid import GridConfig
from modalities.audio.io import EXTENSIONS, HOP_MS, fbank, fit_frames, read_audio, wav_header_problem
from modalities.common import (
    DataError,
    DataSource,
    DomainData,
    Sample,
    check_held_out_classes,
    data_card,
    discover,
    group_split,
    held_out_split,
    read_each,
    require_classes,
    stratified_split,
)
from modalities.shards import OnFirstUse, ShardStream, is_shards, open_shards, read_index, samples_in, split_shards

log = logging.getLogger(__name__)
MULTI = ";"  # separates the labels of a multi-label item in labels.csv ("dog;rain")
FSDD_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<group>[^_]+)_\d+$")  # {digit}_{speaker}_{index}


@dataclass(frozen=True)
class AudioOptions:
    sample_rate: int = field(default=16000, metadata={"help": "waveforms are resampled to this rate (Hz)"})
    frames: int = field(
        default=128,
        metadata={"help": "10 ms frames per clip, cropped or padded (AudioMAE: 1024 AudioSet, 512 ESC-50, 128 speech)"},
    )
    mel_bins: int = field(default=128, metadata={"help": "mel filterbank bins"})
    patch: int = field(default=16, metadata={"help": "patch side in frames and mel bins"})
    split_by: str = field(
        default="file",
        metadata={
            "choices": ("file", "speaker"),
            "help": "file: a stratified 20 %% of the files is held out; speaker: whole speakers (FSDD names, or "
            "the group column of labels.csv: speaker, patient, session) never on both sides",
        },
    )
    fold: int = field(default=5, metadata={"help": "ESC-50: the fold held out (1 to 5); the other four train"})
    mixup: float = field(
        default=0.0,
        metadata={
            "help": "fine-tuning mixup alpha; AudioMAE uses 0.5 on long runs, but on the default 200-step CPU "
            "fine-tune 0.5 stayed at chance (0.125 against 0.49 without), so it is off by default"
        },
    )
    synthetic_per_class: int = field(default=60, metadata={"help": "built-in synthetic sounds per class"})
    cache_mb: int = field(
        default=4096,
        metadata={
            "help": "filterbanks of a dataset up to this size (MB) are computed once and kept in memory; a "
            "larger one is read and computed per item in the data-loading workers (--workers)"
        },
    )

    def __post_init__(self):
        if self.frames % self.patch or self.mel_bins % self.patch:
            raise ValueError(f"AudioOptions.frames and mel_bins must be multiples of patch {self.patch}")
        if self.mixup < 0:
            raise ValueError(f"AudioOptions.mixup must be >= 0, got {self.mixup}")
        if self.sample_rate < 1000:
            raise ValueError(f"AudioOptions.sample_rate must be at least 1000 Hz, got {self.sample_rate}")


# ------------------------------------------------------------------------------------ augmentation
@dataclass(frozen=True)
class SpecAugment:
    """Random time shift (roll) and SpecAugment's masks (Park et al. 2019) on a (1, T, F) filterbank;
    a masked band is set to the clip's mean (the data is not yet normalised here)."""

    roll: bool = True
    time_mask: int = 0  # widest masked band of frames (AudioMAE fine-tunes with 48 to 192)
    freq_mask: int = 0  # widest masked band of mel bins (AudioMAE: 24 to 48)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        if self.roll:
            x = x.roll(int(torch.randint(x.shape[1], ())), dims=1)
        fill = x.mean()
        for axis, width in ((1, self.time_mask), (2, self.freq_mask)):
            if width:
                w = int(torch.randint(width + 1, ()))
                start = int(torch.randint(x.shape[axis] - w + 1, ()))
                x.narrow(axis, start, w).fill_(fill)
        return x


class StreamedFbanks:
    """The filterbanks of clips too many to keep in memory, read and computed when an item is
    asked for (in the data-loading workers); a sequence like the list of tensors it stands for."""

    def __init__(self, paths: list, opts: AudioOptions):
        self.paths, self.opts = list(paths), opts

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i) -> torch.Tensor:
        return clip_fbank(self.paths[i], self.opts)[0]

    def subset(self, indices) -> StreamedFbanks:
        return StreamedFbanks([self.paths[i] for i in indices], self.opts)


def clip_fbank(path, opts: AudioOptions) -> tuple[torch.Tensor, int, int]:
    """(the clip's filterbank (T, mel_bins) at ``opts.sample_rate``, the file's rate, its channels)."""
    wave, rate, channels = read_audio(path, opts.sample_rate)
    return fbank(wave, opts.sample_rate, opts.mel_bins), rate, channels


def take(items, indices) -> list | StreamedFbanks:
    return items.subset(indices) if isinstance(items, StreamedFbanks) else [items[i] for i in indices]


class AudioDataset(Dataset):
    """Filterbanks (T_i, F), in memory or streamed; items {"x": (1, frames, F), "y": class index}. Training views
    crop a random window of longer clips; evaluation views take the first ``frames``."""

    def __init__(self, features, labels, classes, sources, splits, frames: int, augment=None, multi_label=None):
        self.features, self.labels, self.classes, self.sources = features, labels, list(classes), sources
        self.splits, self.frames, self.augment = splits, frames, augment
        # multi-label when any label names several classes ("dog;rain"); a subset keeps its parent's
        # answer, so that every split of one task gives targets of one kind
        self.multi_label = any(MULTI in label for label in labels) if multi_label is None else multi_label

    def __len__(self):
        return len(self.features)

    @property
    def class_ids(self) -> list[int]:
        return [self.classes.index(label) for label in self.labels]

    def target(self, label: str):
        """A class index, or for multi-label data a (classes,) 0/1 vector."""
        if not self.multi_label:
            return self.classes.index(label)
        y = torch.zeros(len(self.classes))
        y[[self.classes.index(part) for part in label.split(MULTI)]] = 1
        return y

    def subset(self, indices, augment: SpecAugment | None = None) -> AudioDataset:
        features, labels, sources, splits = (
            take(a, indices) for a in (self.features, self.labels, self.sources, self.splits)
        )
        return AudioDataset(features, labels, self.classes, sources, splits, self.frames, augment, self.multi_label)

    def __getitem__(self, i):
        return self.item(self.features[i], self.labels[i])

    def item(self, f: torch.Tensor, label: str) -> dict:
        """A filterbank (T, F) and its label -> the item: a random window when augmenting, else the first."""
        offset = int(torch.randint(len(f) - self.frames + 1, ())) if self.augment and len(f) > self.frames else 0
        x = fit_frames(f, self.frames, offset, floor=f.min())[None]  # (1, frames, F)
        return {"x": self.augment(x) if self.augment else x, "y": self.target(label)}

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw-input baseline: mean and std over time of every clip's real frames -> (N, 2F),
        with the targets (N,) or (N, classes)."""
        x = torch.stack(
            [torch.cat([f.mean(0), f.std(0) if len(f) > 1 else torch.zeros_like(f[0])]) for f in self.features]
        )
        targets = [self.target(label) for label in self.labels]
        return x, torch.stack(targets) if self.multi_label else torch.tensor(targets)

    def statistics(self, most: int = 512) -> tuple[float, float]:
        """Mean and std of the real (unpadded) frames of every clip, or of ``most`` clips drawn at
        random when the filterbanks are streamed: the adapter's normalisation."""
        clips = range(len(self))
        if isinstance(self.features, StreamedFbanks) and len(self) > most:
            clips = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:most].tolist()
        values = torch.cat([self.features[i].flatten() for i in clips]).double()
        return values.mean().item(), max(values.std().item(), 1e-6)


class AudioStream(AudioDataset):
    """The ``decode`` of a ``ShardStream`` of clips (an ``AudioDataset`` without clips of its own):
    a shard sample (``write_shards``) -> its item, as the dataset gives it."""

    def __call__(self, sample: dict) -> dict:
        return self.item(torch.from_numpy(sample["fbank.npy"]), sample["json"]["label"])


# ------------------------------------------------------------------------------- synthetic sounds
SYNTHETIC_CLASSES = ("am_tone", "chirp_down", "chirp_up", "clicks", "fm_tone", "harmonic", "noise_burst", "tone")


def synthetic_sound(name: str, rng: np.random.Generator, sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    """One labelled sound at a random pitch, level and onset, in background noise."""
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(200, 2000)
    if name == "tone":
        wave = np.sin(2 * np.pi * f0 * t)
    elif name in ("chirp_up", "chirp_down"):
        f1 = f0 * rng.uniform(2, 4) if name == "chirp_up" else f0 / rng.uniform(2, 4)
        wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))
    elif name == "noise_burst":
        wave = rng.normal(0, 1, n) * (np.abs(t - rng.uniform(0.3, 0.7)) < rng.uniform(0.05, 0.2))
    elif name == "harmonic":
        wave = sum(np.sin(2 * np.pi * k * f0 / 2 * t) / k for k in range(1, 6))
    elif name == "am_tone":
        wave = np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 12) * t))
    elif name == "fm_tone":
        wave = np.sin(2 * np.pi * f0 * t + rng.uniform(3, 8) * np.sin(2 * np.pi * rng.uniform(3, 10) * t))
    elif name == "clicks":
        wave = np.zeros(n)
        wave[rng.choice(n, rng.integers(4, 12), replace=False)] = 1.0
        wave = np.convolve(wave, np.hanning(int(sample_rate * 0.004)), mode="same")
    else:
        raise ValueError(f"unknown synthetic sound {name!r}; known: {SYNTHETIC_CLASSES}")
    onset = rng.uniform(0, 0.3)  # a random start, silence before it
    wave = wave * (t >= onset) * rng.uniform(0.1, 0.8) / max(np.abs(wave).max(), 1e-9)
    return (wave + rng.normal(0, 0.01, n)).astype(np.float32)


def synthetic_set(n_per_class: int, opts: AudioOptions, seed: int) -> AudioDataset:
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for i in range(n_per_class * len(SYNTHETIC_CLASSES)):
        name = SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)]
        wave = torch.from_numpy(synthetic_sound(name, rng, opts.sample_rate))
        features.append(fbank(wave, opts.sample_rate, opts.mel_bins))
        labels.append(name)
    sources = [f"synthetic_{i}" for i in range(len(labels))]
    return AudioDataset(features, labels, SYNTHETIC_CLASSES, sources, [None] * len(labels), opts.frames)


# ------------------------------------------------------------------------------------- data sets
def find_clips(root, fold: int = 5) -> list[Sample]:
    """Labelled clips of a dataset folder, in the first layout that fits:

    - ESC-50: ``meta/esc50.csv`` (filename, fold, category, src_file) with ``audio/``; clips of
      fold ``fold`` are the test split, clips cut from one source recording are one group;
    - Speech Commands: class folders with ``validation_list.txt`` / ``testing_list.txt``; the
      speaker (the name before ``_nohash_``) is the group; ``_background_noise_`` is left out;
    - labels.csv (optional ``split`` and ``group`` columns) or class folders (``discover``);
    - a flat folder named as FSDD's ``{digit}_{speaker}_{index}.wav``: label and speaker (group)
      from the name.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if (root / "meta" / "esc50.csv").is_file():
        return esc50_clips(root, fold)
    if (root / "testing_list.txt").is_file():
        return speech_commands_clips(root)
    if (root / "labels.csv").is_file() or any(p.is_dir() for p in root.iterdir()):
        return discover(root, EXTENSIONS)
    samples = []
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in EXTENSIONS):
        match = FSDD_NAME.match(path.stem)
        if match is None:
            raise DataError(
                f"{path}: a flat folder needs names {{label}}_{{speaker}}_{{index}} (FSDD); "
                "otherwise use labels.csv or one folder per class"
            )
        samples.append(Sample(path, match["label"], None, match["group"]))
    if not samples:
        raise DataError(f"{root}: no audio files ({', '.join(EXTENSIONS)}), labels.csv or class folders")
    return samples


def esc50_clips(root: Path, fold: int) -> list[Sample]:
    table = root / "meta" / "esc50.csv"
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"filename", "fold", "category"} - set(rows[0] if rows else {})
    if missing:
        raise DataError(f"{table}: not the ESC-50 metadata, missing columns {sorted(missing)}")
    if str(fold) not in {r["fold"] for r in rows}:
        raise DataError(f"{table}: no fold {fold}; folds are {sorted({r['fold'] for r in rows})}")
    samples = []
    for line, r in enumerate(rows, start=2):
        path = root / "audio" / r["filename"]
        if not path.is_file():
            raise DataError(f"{table}, line {line}: file {path} does not exist")
        split = "test" if r["fold"] == str(fold) else "train"
        samples.append(Sample(path, r["category"], split, r.get("src_file") or r["filename"]))
    return samples


def speech_commands_clips(root: Path) -> list[Sample]:
    lists = {}
    for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
        path = root / name
        lists |= (
            {line.strip(): split for line in path.read_text().splitlines() if line.strip()} if path.is_file() else {}
        )
    samples = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        for path in sorted(cls.glob("*.wav")):
            key = f"{cls.name}/{path.name}"
            samples.append(Sample(path, cls.name, lists.get(key, "train"), path.name.split("_nohash_")[0]))
    if not samples:
        raise DataError(f"{root}: a Speech Commands layout (testing_list.txt) without class folders of .wav files")
    return samples


def read_header(path) -> tuple[int, int, int]:
    """(frames at the file's rate, sample rate, channels) from the header alone; a clear error for
    a file that cannot be opened or holds no samples."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: cannot read audio ({wav_header_problem(path) or e})") from None
    if info.frames == 0:
        raise DataError(f"{path}: empty audio (no samples)")
    if problem := wav_header_problem(path):
        raise DataError(f"{path}: {problem}")
    return info.frames, info.samplerate, info.channels


def clip_headers(samples: list[Sample], skip_bad: bool, progress: bool) -> tuple[list[tuple], list]:
    """(sample, frames, rate, channels) of every clip whose header reads -> (those, skipped)."""
    bar = tqdm(samples, desc="audio headers", disable=None if progress else True)
    return read_each(bar, lambda s: (s, *read_header(s.path)), skip_bad, name=lambda s: str(s.path))


def load_clips(samples: list[Sample], opts: AudioOptions, skip_bad: bool, classes=None, progress: bool = True):
    """Filterbanks of every readable clip -> (dataset, skipped [(path, reason)], clips shorter
    than one patch of frames, which are padded like every clip shorter than ``frames``).

    Up to ``opts.cache_mb`` of filterbanks (estimated from the headers) are computed here and kept;
    beyond, only the headers are checked here and every item is read when it is asked for
    (``StreamedFbanks``), so a silent or NaN clip then stops the run when it is first read."""
    rates, channels = Counter(), set()
    headers, skipped = clip_headers(samples, skip_bad, progress)
    frames = [n / rate * 1000 / HOP_MS for _, n, rate, _ in headers]  # filterbank frames of every clip
    megabytes = sum(frames) * opts.mel_bins * 4 / 2**20
    streamed = megabytes > opts.cache_mb

    def read(s: Sample):
        features, rate, n_channels = clip_fbank(s.path, opts)
        rates[rate] += 1
        channels.add(n_channels)
        return s, features

    if streamed:
        log.info("%d clips, %.0f MB of filterbanks: computed per item in the workers", len(headers), megabytes)
        done = [(s, len_) for (s, _, _, _), len_ in zip(headers, frames, strict=True)]
        rates.update(rate for _, _, rate, _ in headers)
        channels.update(c for _, _, _, c in headers)
    else:
        todo = tqdm([s for s, *_ in headers], desc="reading audio", disable=None if progress else True)
        done, more = read_each(todo, read, skip_bad, name=lambda s: str(s.path))
        skipped += more
    if not done:
        raise DataError("no readable audio clips among the given files")
    if set(rates) != {opts.sample_rate}:
        log.info("clips at %s Hz (count) are resampled to %d Hz", dict(sorted(rates.items())), opts.sample_rate)
    if max(channels) > 1:
        log.info("multi-channel clips (up to %d channels) are downmixed to mono", max(channels))
    short = [str(s.path) for s, f in done if (f if streamed else len(f)) < opts.patch]
    if short:
        log.warning(
            "%d clips are shorter than one patch (%d frames), e.g. %s; padded", len(short), opts.patch, short[0]
        )
    labels = [s.label for s, _ in done]
    sources = [clip_source(s) for s, _ in done]
    splits = [s.split for s, _ in done]
    classes = classes or sorted({part for label in labels for part in label.split(MULTI)})
    features = StreamedFbanks([s.path for s, _ in done], opts) if streamed else [f for _, f in done]
    dataset = AudioDataset(features, labels, classes, sources, splits, opts.frames)
    return dataset, skipped, short


KNOWN_CARDS = {"fsdd_recordings": "data_cards/fsdd.md"}
LAYOUT_CARDS = {"meta/esc50.csv": "data_cards/esc50.md", "testing_list.txt": "data_cards/speech_commands.md"}


def audio_card(root) -> str:
    """The card of a known folder, else of the dataset whose layout the folder has (ESC-50, Speech
    Commands), else a note naming the folder."""
    card = data_card(root, KNOWN_CARDS)
    if card.startswith("data_cards/"):
        return card
    for marker, layout_card in LAYOUT_CARDS.items():
        if (Path(root) / marker).is_file():
            return layout_card
    return card


def split_clips(labels: list[str], sources: list[str], splits: list[str | None], split_by: str, seed: int):
    """(train, held-out) indices of the recipe's own split: the data's test/val split (ESC-50 fold,
    Speech Commands lists), else whole speakers (``split_by="speaker"``), else a stratified 20 % of
    the files."""
    if any(s in ("test", "val") for s in splits):
        return held_out_split(labels, sources, splits, seed)
    if split_by == "speaker":
        return group_split(sources, 0.2, seed)
    return stratified_split(labels, sources, 0.2, seed)


def build_domain(source: DataSource, opts: AudioOptions) -> DomainData:
    """Datasets, adapter config and data card for the audio recipe; shards
    (``modalities.shards.is_shards``) are streamed for pretraining.

    Held-out data, in order: ``eval_data``; the data's own test/val split; whole speakers
    (``split_by="speaker"``); a stratified 20 % of the files.
    """
    if is_shards(source.data):
        return shard_domain(source, opts)
    skipped, short = [], []
    if source.data is None:
        full, card = synthetic_set(opts.synthetic_per_class, opts, source.seed), "data_cards/synthetic_sounds.md"
    else:
        samples = find_clips(source.data, opts.fold)
        require_classes([s.label for s in samples], source.data)
        full, skipped, short = load_clips(samples, opts, source.skip_bad_files, progress=source.progress)
        card = audio_card(source.data)
    if source.eval_data is not None:
        train = full
        held, more, _ = load_clips(
            find_clips(source.eval_data, opts.fold), opts, source.skip_bad_files, full.classes, source.progress
        )
        held_parts = [part for label in held.labels for part in label.split(MULTI)]
        check_held_out_classes(held_parts, full.classes, source.eval_data, source.data)
        full.multi_label = held.multi_label = full.multi_label or held.multi_label
        skipped += more
    else:
        train_idx, held_idx = split_clips(full.labels, full.sources, full.splits, opts.split_by, source.seed)
        train, held = full.subset(train_idx), full.subset(held_idx)
    info = {
        "train_clips": len(train),
        "eval_clips": len(held),
        "held_out_sources": held_out_sources(held.sources, opts),
        "short_clips_padded": len(short),
        "skipped_files": len(skipped),
        "skipped": skipped,
    }
    pretrain = train.subset(range(len(train)), SpecAugment())
    return assemble(opts, pretrain, train, held, full.classes, full.multi_label, train.statistics(), card, info)


def held_out_sources(sources: list[str], opts: AudioOptions) -> list[str] | int:
    """What metrics.json says of the held-out sources: the speakers held out, else their count."""
    return sorted(set(sources)) if opts.split_by == "speaker" else len(set(sources))


def assemble(opts: AudioOptions, pretrain, train, held, classes, multi_label, statistics, card, info) -> DomainData:
    """The recipe's ``DomainData`` from its pretraining set, the training split's evaluation view
    ``train``, the held-out split and the mean and std of the training filterbanks."""
    (mean, std), masks = statistics, SpecAugment(time_mask=opts.frames // 5, freq_mask=opts.mel_bins // 5)
    adapter = GridConfig(
        1, (opts.patch, opts.patch), (opts.frames, opts.mel_bins), (mean,), (std,), keep_last_axis=True
    )
    return DomainData(
        pretrain=pretrain,
        finetune=OnFirstUse(lambda: train.subset(range(len(train)), masks)),
        train_eval=train,
        held_out=held,
        classes=classes,
        adapter={"name": "audio", **asdict(adapter)},
        data_card=card,
        render=render_spectrograms,
        multi_label=multi_label,
        raw_features=AudioDataset.pooled,
        preprocessing={"sample_rate": opts.sample_rate, "frames": opts.frames, "mel_bins": opts.mel_bins},
        info={"classes": classes, **info},
    )


# The options the stored filterbanks and the split depend on: shards written with them are read only
# with them (--frames is cut from the whole clip when an item is drawn)
SHARD_OPTIONS = ("sample_rate", "mel_bins", "split_by", "fold")


def readable_clips(samples: list[Sample], opts: AudioOptions, skip_bad: bool, progress: bool):
    """The clips whose headers read, as ``load_clips`` checks them, and under ``skip_bad`` whose
    samples read too (each clip is then read twice: the recipe splits the clips that read, so those
    are found before anything is written) -> (clips, skipped)."""
    headers, skipped = clip_headers(samples, skip_bad, progress)
    clips = [s for s, *_ in headers]
    if skip_bad:

        def check(s: Sample) -> Sample:
            read_audio(s.path, opts.sample_rate)
            return s

        clips, more = read_each(clips, check, True, name=lambda s: str(s.path))
        skipped += more
    if not clips:
        raise DataError("no readable audio clips among the given files")
    return clips, skipped


def clip_source(s: Sample) -> str:
    """What a split keeps on one side: the clip's group (speaker, source recording), else its file."""
    return s.group or str(s.path)


def label_parts(clips: list[Sample]) -> list[str]:
    return [part for s in clips for part in s.label.split(MULTI)]


def write_shards(source: DataSource, opts: AudioOptions, write: Callable[[str, Iterable[dict]], list]) -> dict:
    """Read ``source.data`` as the recipe reads it and hand each split's filterbanks to
    ``write(split, samples)``, one clip in memory at a time: the training split as ``train``, the
    held-out one (``eval_data``, else the recipe's own split, ``split_clips``) as ``test``. A sample
    is the clip's whole filterbank (T, mel_bins) float32, as the recipe holds it, and {label (several
    joined by ';'), group, source, split, order: its place in the recipe's split}; the mean and std of
    the training filterbanks are summed as they are written. -> what the index of the shards records."""
    found = find_clips(source.data, opts.fold)
    require_classes([s.label for s in found], source.data)
    clips, skipped = readable_clips(found, opts, source.skip_bad_files, source.progress)
    classes, held = sorted(set(label_parts(clips))), []
    if source.eval_data is not None:
        found = find_clips(source.eval_data, opts.fold)
        held, more = readable_clips(found, opts, source.skip_bad_files, source.progress)
        skipped += more
        check_held_out_classes(label_parts(held), classes, source.eval_data, source.data)
        splits = {"train": clips, "test": held}
    else:
        labels, groups, own = [s.label for s in clips], [clip_source(s) for s in clips], [s.split for s in clips]
        train_idx, held_idx = split_clips(labels, groups, own, opts.split_by, source.seed)
        splits = {"train": [clips[i] for i in train_idx], "test": [clips[i] for i in held_idx]}
    of_data = ("train",) if source.eval_data is not None else ("train", "test")  # load_clips counts short --data clips
    sums, short = np.zeros(3), 0  # sums of the training filterbanks: (v, v**2, count)

    def samples(split: str, chosen: list[Sample]) -> Iterator[dict]:
        nonlocal short
        shuffled = random.Random(source.seed).sample(range(len(chosen)), len(chosen))  # a stream reads them in order
        for k in tqdm(shuffled, desc=f"writing {split}", disable=None if source.progress else True):
            s = chosen[k]
            features = clip_fbank(s.path, opts)[0]
            if split == "train":
                v = features.double()
                sums[:] += (v.sum().item(), (v**2).sum().item(), v.numel())
            if len(features) < opts.patch and split in of_data:
                short += 1
            meta = {"label": s.label, "group": clip_source(s), "source": str(s.path), "split": s.split, "order": k}
            yield {"fbank.npy": features.numpy(), "json": meta}

    written = {split: write(split, samples(split, chosen)) for split, chosen in splits.items()}
    n, mean = sums[2], sums[0] / sums[2]
    std = max((max(sums[1] - n * mean**2, 0.0) / max(n - 1, 1)) ** 0.5, 1e-6)  # unbiased, as torch's std
    return {
        "classes": classes,
        "multi_label": any(MULTI in s.label for s in clips + held),
        "statistics": [mean, std],
        "options": {k: getattr(opts, k) for k in SHARD_OPTIONS},
        "data_card": audio_card(source.data),
        "splits": written,
        "skipped": skipped,
        "short_clips_padded": short,
        "held_out_sources": held_out_sources([clip_source(s) for s in splits["test"]], opts),
    }


def shard_domain(source: DataSource, opts: AudioOptions) -> DomainData:
    """Shards written by ``write_shards``: pretraining streams crops of the training filterbanks
    (``ShardStream``); the probe and fine-tuning read the labelled splits into memory when they start."""
    index, shards = open_shards(source.data, "audio", opts)
    where = source.data
    held = read_index(source.eval_data)[1] if source.eval_data else split_shards(source.data, index, "test")
    if not held:
        raise DataError(f"{where}: no held-out shards (test split) beside these; pass --eval-data")
    classes, multi = index["classes"], index["multi_label"]

    def clips(chosen) -> AudioDataset:
        samples = ShardStream(chosen, None, source.seed, source.skip_bad_files).samples()
        samples = sorted(samples, key=lambda sample: sample["json"]["order"])  # the recipe's order, item for item
        meta = [sample["json"] for sample in samples]
        features = [torch.from_numpy(sample["fbank.npy"]) for sample in samples]
        labels, groups, splits = ([m[k] for m in meta] for k in ("label", "group", "split"))
        return AudioDataset(features, labels, classes, groups, splits, opts.frames, None, multi)

    decode = AudioStream([], [], classes, [], [], opts.frames, SpecAugment(), multi)
    info = {"shards": len(shards), "train_clips": samples_in(shards), "eval_clips": samples_in(held)}
    info |= {k: index[k] for k in ("held_out_sources", "short_clips_padded")}
    return assemble(
        opts,
        ShardStream(shards, decode, source.seed, source.skip_bad_files),
        OnFirstUse(lambda: clips(shards)),
        OnFirstUse(lambda: clips(held)),
        classes,
        multi,
        index["statistics"],
        index["data_card"],
        info,
    )


# ---------------------------------------------------------------------------------------- picture
@torch.no_grad()
def render_spectrograms(mae, x: torch.Tensor, valid=None, seed: int = 0) -> torch.Tensor:
    """Rows input / masked input / reconstruction, one column per clip, time to the right and low
    frequencies at the bottom, scaled by the input's range -> (3 * F, B * T) in [0, 1]."""
    rows = [r[:, 0].transpose(-1, -2).flip(-2) for r in mae.reconstruct(x, valid, seed)]  # (B, F, T)
    lo, hi = rows[0].amin(), rows[0].amax()
    rows = [((r - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) for r in rows]
    return torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)
