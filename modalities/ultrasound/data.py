"""Ultrasound datasets: frames in memory with their sectors, the built-in phantom, folders in the
standard layouts, and the domain the recipe trains on.

A clip contributes ``frames_per_clip`` frames spread evenly over its length, each a 2-D training
sample; all frames of a clip stay on one side of a train/eval split.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from foundations.grid import GridConfig
from modalities.common import (
    DataError,
    DataSource,
    DomainData,
    Sample,
    check_held_out_classes,
    data_card,
    discover,
    read_each,
    require_classes,
    stratified_split,
)
from modalities.image.figures import reconstruction_grid
from modalities.shards import OnFirstUse, ShardStream, is_shards, open_shards, read_index, samples_in, split_shards
from modalities.ultrasound.io import CLIP_EXTENSIONS, IMAGE_EXTENSIONS, MAX_PIXELS, read_clip, read_image
from modalities.ultrasound.phantom import PHANTOM_CLASSES, phantom_dataset
from modalities.ultrasound.transforms import UltrasoundAugment, resize_pair, sector_geometry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UltrasoundOptions:
    image_size: int = field(default=128, metadata={"help": "square training size in pixels"})
    patch: int = field(default=16, metadata={"help": "patch size in pixels"})
    frames_per_clip: int = field(default=8, metadata={"help": "frames taken from each cine loop"})
    phantom_per_class: int = field(default=160, metadata={"help": "built-in phantom images per class"})
    max_pixels: int = field(
        default=MAX_PIXELS,
        metadata={
            "help": "most pixels an image file may hold (Pillow's decompression-bomb default); larger images are "
            "refused from their header, before decoding"
        },
    )

    def __post_init__(self):
        if self.image_size % self.patch:
            raise ValueError(f"UltrasoundOptions.image_size {self.image_size} must be a multiple of patch {self.patch}")
        if min(self.frames_per_clip, self.phantom_per_class) < 1:
            raise ValueError("UltrasoundOptions.frames_per_clip and phantom_per_class must be >= 1")
        if self.max_pixels < 1:
            raise ValueError(f"UltrasoundOptions.max_pixels must be >= 1, got {self.max_pixels}")


class FrameDataset(Dataset):
    """Grey frames in memory (uint8, short side ``store``), with their sectors and labels.

    Items: {"x": (1, S, S) float, "valid": (1, S, S) float, "y": long}; ``augment`` None gives
    the evaluation view.
    """

    def __init__(self, frames, sectors, labels, sources, classes, size: int, augment: UltrasoundAugment | None):
        self.frames, self.sectors, self.labels, self.sources = frames, sectors, labels, sources
        self.classes, self.size, self.augment = list(classes), size, augment

    def __len__(self):
        return len(self.frames)

    @property
    def class_ids(self) -> list[int]:
        return [self.classes.index(label) for label in self.labels]

    def subset(self, indices, augment: UltrasoundAugment | None) -> FrameDataset:
        pick = lambda seq: [seq[i] for i in indices]  # noqa: E731
        return FrameDataset(
            pick(self.frames),
            pick(self.sectors),
            pick(self.labels),
            pick(self.sources),
            self.classes,
            self.size,
            augment,
        )

    def __getitem__(self, i):
        return frame_item(self.frames[i], self.sectors[i], self.classes.index(self.labels[i]), self.size, self.augment)

    def statistics(self) -> tuple[float, float]:
        """Mean and std of the stored pixels inside the sectors (the adapter's normalisation)."""
        total, sq, n = 0.0, 0.0, 0
        for frame, sector in zip(self.frames, self.sectors, strict=True):
            v = frame[sector].double() / 255
            total, sq, n = total + v.sum().item(), sq + (v**2).sum().item(), n + v.numel()
        mean = total / max(n, 1)
        return mean, max((sq / max(n, 1) - mean**2), 1e-12) ** 0.5


def frame_item(frame: torch.Tensor, sector: torch.Tensor, label: int, size: int, augment) -> dict:
    """A stored frame (H, W) uint8 and its sector (H, W) bool -> {"x": (1, S, S), "valid": (1, S, S),
    "y"}, augmented or (``augment`` None) the evaluation view."""
    image, sector = frame.float()[None] / 255, sector[None]
    image, sector = augment(image, sector) if augment else resize_pair(image, sector, size)
    return {"x": image, "valid": sector.float(), "y": label}


def raw_features(dataset: FrameDataset, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's raw-input baseline: every frame of the evaluation view (in [0, 1], before the
    adapter's normalisation) area-downsampled to ``side`` x ``side`` pixels -> (N, C * side**2),
    with the class indices (N,)."""
    feats = [F.adaptive_avg_pool2d(dataset[i]["x"], side).flatten() for i in range(len(dataset))]  # (C * side**2,)
    return torch.stack(feats), torch.tensor(dataset.class_ids)


def _store(frame: np.ndarray, short: int) -> torch.Tensor:
    """float (H, W) in [0, 1] -> uint8 with short side ``short`` (never upsampled)."""
    t = torch.from_numpy(frame)[None, None]
    h, w = frame.shape
    f = min(1.0, short / min(h, w))
    if f < 1.0:
        t = F.interpolate(t, size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
    return (t[0, 0] * 255).round().clamp(0, 255).to(torch.uint8)


def read_frames(path, frames_per_clip: int, patch: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Grey frames (T, H, W) of an image (T = 1, at most ``max_pixels``) or a cine loop, checked for
    size and NaNs."""
    if path.suffix.lower() in CLIP_EXTENSIONS:
        stack = read_clip(path, frames_per_clip)
    else:
        stack = read_image(path, max_pixels)[None]
    if min(stack.shape[-2:]) < patch:
        raise DataError(f"{path}: image is {stack.shape[-2]}x{stack.shape[-1]}, smaller than one {patch}x{patch} patch")
    if not np.isfinite(stack).all():
        raise DataError(f"{path}: contains NaN or infinite pixels")
    return stack


def stored_frames(samples: list[Sample], opts: UltrasoundOptions, skip_bad: bool, skipped: list, progress: bool):
    """Read each sample -> (sample, its frames as stored: uint8 with short side 1.25 x the training
    size, the sector of its imaged region); unreadable files go to ``skipped`` under ``skip_bad``."""
    store = round(opts.image_size * 1.25)
    read = lambda s: read_frames(s.path, opts.frames_per_clip, opts.patch, opts.max_pixels)  # noqa: E731
    for s in tqdm(samples, desc="reading ultrasound", disable=None if progress else True):  # None: TTY only
        stacks, bad = read_each([s], read, skip_bad, name=lambda s: str(s.path))
        skipped += bad
        for stack in stacks:
            stored = [_store(f, store) for f in stack]
            yield s, stored, sector_geometry(torch.stack(stored).float() / 255)


def load_frames(samples: list[Sample], opts: UltrasoundOptions, skip_bad: bool, classes=None, progress: bool = True):
    """Read every sample into a ``FrameDataset``; returns (dataset, skipped [(path, reason)], the
    count of sources by the geometry of their imaged region)."""
    frames, sectors, labels, sources, geometries, skipped = [], [], [], [], Counter(), []
    for s, stored, sector in stored_frames(samples, opts, skip_bad, skipped, progress):
        frames += stored
        sectors += [sector.mask] * len(stored)
        geometries[sector.geometry] += 1
        labels += [s.label] * len(stored)
        sources += [str(s.path)] * len(stored)
    if not frames:
        raise DataError("no readable ultrasound images or clips among the given files")
    classes = classes or sorted(set(labels))
    log.info("imaged regions: %s", ", ".join(f"{n} {g}" for g, n in sorted(geometries.items())))
    return FrameDataset(frames, sectors, labels, sources, classes, opts.image_size, None), skipped, geometries


def phantom_frames(n_per_class: int, size: int, seed: int = 0) -> FrameDataset:
    """The built-in phantom as a ``FrameDataset`` (see ultrasound_phantom.py)."""
    items = phantom_dataset(n_per_class, round(size * 1.25), seed)
    frames = [(img[0] * 255).round().to(torch.uint8) for img, _, _ in items]
    sectors = [sec[0] for _, sec, _ in items]
    labels = [label for _, _, label in items]
    return FrameDataset(
        frames, sectors, labels, [f"phantom_{i}" for i in range(len(items))], PHANTOM_CLASSES, size, None
    )


# Data cards of the sets this module knows, by folder name (see data_cards/).
KNOWN_CARDS = {"busi_256": "data_cards/busi.md", "pocus_ccby_subset": "data_cards/pocus.md"}


def build_domain(source: DataSource, opts: UltrasoundOptions) -> DomainData:
    """Datasets, adapter config and data card for the ultrasound recipe.

    With ``source.data`` None the built-in phantom is used; shards (``modalities.shards.is_shards``)
    are streamed for pretraining; without ``eval_data`` a stratified split (20 %, grouped by source
    file, fixed seed) of the data is held out.
    """
    if is_shards(source.data):
        return shard_domain(source, opts)
    exts = IMAGE_EXTENSIONS + CLIP_EXTENSIONS
    skipped, size, geometries = [], opts.image_size, Counter()
    if source.data is None:
        full = phantom_frames(opts.phantom_per_class, size, source.seed)
        card = "data_cards/ultrasound_phantom.md"
    else:
        samples = discover(source.data, exts)
        require_classes([s.label for s in samples], source.data)
        full, skipped, geometries = load_frames(samples, opts, source.skip_bad_files, progress=source.progress)
        card = data_card(source.data, KNOWN_CARDS)
    if source.eval_data is None:
        train_idx, eval_idx = stratified_split(full.labels, full.sources, 0.2, source.seed)
        train, held = full.subset(train_idx, None), full.subset(eval_idx, None)
    else:
        train = full
        samples = discover(source.eval_data, exts)
        held, more, also = load_frames(samples, opts, source.skip_bad_files, full.classes, source.progress)
        geometries += also
        skipped += more
        check_held_out_classes(held.labels, full.classes, source.eval_data, source.data)
    everything = range(len(train))
    return assemble(
        opts,
        train.subset(everything, UltrasoundAugment(opts.image_size)),
        train,
        held,
        full.classes,
        train.statistics(),
        card,
        {
            "train_frames": len(train),
            "eval_frames": len(held),
            "skipped_files": len(skipped),
            "skipped": skipped,
            **({"sectors": dict(geometries)} if geometries else {}),
        },
    )


def assemble(opts, pretrain, train, held, classes, statistics, card, info) -> DomainData:
    """The recipe's ``DomainData`` from its pretraining set, the training split's evaluation view
    ``train``, the held-out split and the training pixels' mean and std."""
    size, (mean, std) = opts.image_size, statistics
    adapter = GridConfig(1, (opts.patch, opts.patch), (size, size), (mean,), (std,))
    return DomainData(
        pretrain=pretrain,
        # milder crops for classification: a small crop can cut the lesion out
        finetune=OnFirstUse(lambda: train.subset(range(len(train)), UltrasoundAugment(size, scale=(0.8, 1.0)))),
        train_eval=train,
        held_out=held,
        classes=classes,
        adapter={"name": "ultrasound", **asdict(adapter)},
        data_card=card,
        render=reconstruction_grid,
        raw_features=raw_features,
        info={"classes": classes, **info},
    )


# What a folder of shards holds per frame, and the options that fix it (checked when it is read)
SHARD_OPTIONS = ("image_size", "frames_per_clip", "max_pixels")


def write_shards(source: DataSource, opts: UltrasoundOptions, write: Callable[[str, Iterable[dict]], list]) -> dict:
    """Read ``source.data`` as the recipe reads it and hand each split's frames to ``write(split,
    samples)``, the training split as ``train`` and the held-out one (``eval_data``, else the
    recipe's own 20 % split) as ``test``; a sample is a stored frame, its sector and its label,
    group (the source file) and source. -> what the index of the shards records of the data."""
    exts = IMAGE_EXTENSIONS + CLIP_EXTENSIONS
    samples = discover(source.data, exts)
    classes = require_classes([s.label for s in samples], source.data)
    if source.eval_data is None:
        train_idx, eval_idx = stratified_split(
            [s.label for s in samples], [str(s.path) for s in samples], 0.2, source.seed
        )
        splits = {"train": [samples[i] for i in train_idx], "test": [samples[i] for i in eval_idx]}
    else:
        held = discover(source.eval_data, exts)
        check_held_out_classes([s.label for s in held], classes, source.eval_data, source.data)
        splits = {"train": samples, "test": held}
    skipped, sums = [], np.zeros(3)  # sums of the training pixels in sectors: (v, v**2, count)

    def frames(split: str, chosen: list[Sample]) -> Iterator[dict]:
        for s, stored, sector in stored_frames(chosen, opts, source.skip_bad_files, skipped, source.progress):
            for t, frame in enumerate(stored):
                if split == "train":
                    v = frame[sector.mask].double() / 255
                    sums[:] += (v.sum().item(), (v**2).sum().item(), v.numel())
                meta = {"label": s.label, "group": s.group or str(s.path), "source": str(s.path), "frame": t}
                yield {"frame.npy": frame.numpy(), "sector.npy": sector.mask.numpy(), "json": meta}

    for chosen in splits.values():  # shuffled once here: a stream reads each shard in order
        random.Random(source.seed).shuffle(chosen)
    written = {split: write(split, frames(split, chosen)) for split, chosen in splits.items()}
    mean = sums[0] / max(sums[2], 1)
    return {
        "classes": classes,
        "statistics": [mean, max(sums[1] / max(sums[2], 1) - mean**2, 1e-12) ** 0.5],
        "options": {k: getattr(opts, k) for k in SHARD_OPTIONS},
        "data_card": data_card(source.data, KNOWN_CARDS),
        "splits": written,
        "skipped": skipped,
    }


def shard_item(sample: dict, classes: list[str], size: int, augment) -> dict:
    return frame_item(
        torch.from_numpy(sample["frame.npy"]),
        torch.from_numpy(sample["sector.npy"]),
        classes.index(sample["json"]["label"]),
        size,
        augment,
    )


def shard_domain(source: DataSource, opts: UltrasoundOptions) -> DomainData:
    """Shards written by ``write_shards``: pretraining streams the training split (``ShardStream``);
    the probe and fine-tuning read the labelled splits into memory when they start."""
    index, shards = open_shards(source.data, "ultrasound", opts)
    where = source.data
    classes, size = index["classes"], opts.image_size
    held = read_index(source.eval_data)[1] if source.eval_data else split_shards(source.data, index, "test")
    if not held:
        raise DataError(f"{where}: no held-out shards (test split) beside these; pass --eval-data")

    def frames(chosen) -> FrameDataset:
        stream = ShardStream(chosen, None, source.seed, source.skip_bad_files)
        frames, sectors, labels, sources = [], [], [], []
        for sample in stream.samples():
            frames.append(torch.from_numpy(sample["frame.npy"]))
            sectors.append(torch.from_numpy(sample["sector.npy"]))
            labels.append(sample["json"]["label"])
            sources.append(sample["json"]["group"])
        return FrameDataset(frames, sectors, labels, sources, classes, size, None)

    decode = functools.partial(shard_item, classes=classes, size=size, augment=UltrasoundAugment(size))
    return assemble(
        opts,
        ShardStream(shards, decode, source.seed, source.skip_bad_files),
        OnFirstUse(lambda: frames(shards)),
        OnFirstUse(lambda: frames(held)),
        classes,
        index["statistics"],
        index["data_card"],
        {"shards": len(shards), "train_frames": samples_in(shards), "eval_frames": samples_in(held)},
    )
