"""Radiance-grid datasets for the nerf recipe: the built-in procedural scenes, a folder of baked
grids (``.npz`` as ``modalities.nerf.bake.save_grid`` writes them) or shards of them
(``write_shards``), or a folder of posed-image scenes baked into such grids first (``bake_scenes``,
cached).

Layouts of ``--data``:
  grids    DIR/labels.csv or DIR/<class>/**.npz (labelled, ``modalities.common.discover``), or
           DIR/*.npz (unlabelled: pretraining only).
  scenes   a scene is a folder holding ``transforms.json`` (instant-ngp) or ``transforms_train.json``
           (Blender); DIR/<class>/<scene>/ (labelled) bakes into OUT/grids/<class>/<scene>.npz,
           DIR/<scene>/ or DIR itself (unlabelled) into OUT/grids/<scene>.npz. A folder of one layout
           or the other, never both. DIR holds scenes when any of these folders has a transforms file.

A grid's density becomes opacity over one voxel, ``alpha = 1 - exp(-sigma * l)`` with ``l`` the
mean voxel edge in world units (NeRF-MAE, Irshad et al. 2024, feeds alpha computed the same way
from the density of its sampled grids), so grids baked at different scales share one range. Grids
are padded at the far corner to a common size, a multiple of the patch, with ``valid`` = 0 there;
a grid smaller than one patch is padded like any other. A grid with no occupied voxel (alpha above
``NerfConfig.occupied`` nowhere) is bad data: one line naming the file, or skipped and counted
under ``--skip-bad-files``.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from modalities.common import (
    DataError,
    DataSource,
    DomainData,
    Sample,
    discover,
    held_out_split,
    read_each,
    require_classes,
)
from modalities.nerf.adapter import NerfConfig
from modalities.nerf.bake import BakeConfig, bake, load_grid, write_bake
from modalities.nerf.cameras import SceneOptions, read_scene
from modalities.nerf.mesh import PRIMITIVES, procedural_scene
from modalities.shards import OnFirstUse, ShardStream, is_shards, open_shards, samples_in, split_shards

log = logging.getLogger(__name__)
VOXEL_CLASSES = ("empty", *PRIMITIVES)  # voxel label k: VOXEL_CLASSES[k] (bake.py's ``labels`` array)
TRANSFORMS = ("transforms.json", "transforms_train.json")  # a folder holding either is a posed-image scene


@dataclass(frozen=True)
class NerfOptions:
    task: str = field(
        default="classify",
        metadata={
            "choices": ("classify", "segment"),
            "help": "classify: probe and fine-tuning on scene labels; segment: voxel labelling (each occupied "
            "voxel's primitive kind) by a linear decoder per token, IoU per class on held-out grids",
        },
    )
    grid: int = field(default=32, metadata={"help": "voxels per axis of the built-in procedural scenes"})
    patch: int = field(
        default=8,
        metadata={"help": "voxels per patch side: 64 tokens a 32^3 grid (NeRF-MAE: 4 on 160^3 grids)"},
    )
    scenes: int = field(default=1000, metadata={"help": "built-in procedural scenes (80 %% train; 30 ms each)"})
    augment: bool = field(
        default=True, metadata={"help": "random flips of the two horizontal axes and quarter turns about the up axis"}
    )
    bake_grid: int = field(
        default=32, metadata={"help": "posed-image scenes in --data: voxels along the longest side of the box"}
    )
    bake_steps: int = field(default=300, metadata={"help": "posed-image scenes: optimiser steps of each bake"})
    bake_downscale: int = field(
        default=4, metadata={"help": "posed-image scenes: shrink the images by this factor before baking"}
    )
    # the recipe's own stage (tasks.options.domain_stages): --stage bake alone bakes and stops
    stages: ClassVar[dict[str, str]] = {
        "bake": "posed-image scenes in --data -> OUT/grids/<class>/<scene>.npz (cached; --overwrite bakes again)"
    }

    def __post_init__(self):
        if self.grid < self.patch or self.grid % self.patch:
            raise ValueError(f"NerfOptions.grid must be a multiple of the patch {self.patch}, got {self.grid}")
        if self.scenes < 10:
            raise ValueError(f"NerfOptions.scenes must be >= 10, got {self.scenes}")
        if self.task not in ("classify", "segment"):
            raise ValueError(f"NerfOptions.task must be classify or segment, got {self.task!r}")
        try:
            self.bake_config(), self.scene_options()
        except ValueError as e:  # BakeConfig's and SceneOptions' messages start with the field's name
            raise ValueError(f"NerfOptions.bake_{e}") from None

    def bake_config(self) -> BakeConfig:
        """Short bakes for a CPU: 1024 rays a step, 64 samples a ray, one upsampling (at 30 %)."""
        return BakeConfig(
            grid=self.bake_grid, steps=self.bake_steps, rays=1024, samples=64, upsample_at=(0.3,), pictures=1
        )

    def scene_options(self) -> SceneOptions:
        return SceneOptions(downscale=self.bake_downscale)


def opacity(sigma: np.ndarray, voxel_size) -> np.ndarray:
    """Density per world unit -> alpha over one voxel, ``1 - exp(-sigma * mean edge)``."""
    return -np.expm1(-np.maximum(sigma, 0) * float(np.mean(voxel_size)))


def prepare(grid: dict, name: str, label: int) -> dict:
    """A loaded or generated grid -> the item of a ``GridDataset`` (unpadded)."""
    rgbsigma = np.asarray(grid["rgbsigma"], dtype=np.float32)
    rgba = np.concatenate([rgbsigma[..., :3].clip(0, 1), opacity(rgbsigma[..., 3:], grid["voxel_size"])], -1)
    item = {
        "image": torch.from_numpy(rgba).permute(3, 0, 1, 2).contiguous(),  # (4, X, Y, Z)
        "valid": torch.from_numpy(np.asarray(grid["valid"], dtype=np.float32))[None],  # (1, X, Y, Z)
        "spacing": torch.as_tensor(np.asarray(grid["voxel_size"], dtype=np.float32)),
        "label": label,
        "name": name,
    }
    if "labels" in grid:
        item["voxels"] = torch.from_numpy(np.asarray(grid["labels"], dtype=np.int64))
    return item


def pad_to(item: dict, size: tuple[int, int, int]) -> dict:
    """Zero padding at the far corner of every axis up to ``size``; padding is not valid."""
    pad = [p for s, n in zip(reversed(size), reversed(item["image"].shape[1:]), strict=True) for p in (0, s - n)]
    out = {
        **item,
        "image": torch.nn.functional.pad(item["image"], pad),
        "valid": torch.nn.functional.pad(item["valid"], pad),
    }
    if "voxels" in item:
        out["voxels"] = torch.nn.functional.pad(item["voxels"], pad)
    return out


class GridDataset(Dataset):
    """Radiance grids in memory; items {"x": {"image": (4, X, Y, Z), "spacing": (3,)}, "y", "valid":
    (1, X, Y, Z)}, "y" the scene's class index (``labels="scene"``) or its voxel labels (X, Y, Z)
    long (``labels="voxels"``, 0 on padding). With ``augment``, the two horizontal axes are flipped
    at random and, on square grids, turned by a random quarter about the up axis (z)."""

    def __init__(self, items: list[dict], augment: bool = False, labels: str = "scene"):
        if labels not in ("scene", "voxels"):
            raise ValueError(f"GridDataset.labels must be scene or voxels, got {labels!r}")
        self.items, self.augment, self.labels = items, augment, labels
        self.class_ids = [it["label"] for it in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        voxels = self.labels == "voxels"
        image, valid = it["image"], it["valid"]
        y = it["voxels"] if voxels else it["label"]
        if self.augment:
            moved = [image, valid, y[None].to(image.dtype)] if voxels else [image, valid]
            both = torch.cat(moved)  # (5 or 6, X, Y, Z), moved together
            for axis in (1, 2):
                if torch.rand(()) < 0.5:
                    both = both.flip(axis)
            if both.shape[1] == both.shape[2]:
                both = both.rot90(int(torch.randint(4, ())), (1, 2))
            image, valid = both[:4], both[4:5]
            y = both[5].long() if voxels else y
        return {"x": {"image": image, "spacing": it["spacing"]}, "y": y, "valid": valid}


def raw_features(dataset: GridDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's raw-input baseline: colour and opacity averaged over 4^3 blocks of each grid."""
    feats = [torch.nn.functional.adaptive_avg_pool3d(it["image"], 4).flatten() for it in dataset.items]
    return torch.stack(feats), torch.tensor(dataset.class_ids)


def composite(rgba: torch.Tensor, axis: int = -1, background: float = 1.0) -> torch.Tensor:
    """Front-to-back alpha compositing of (4, X, Y, Z) along a spatial ``axis`` -> (3, ...) image:
    a view of the grid from that axis with parallel rays (``bake`` renders perspective views)."""
    rgb, alpha = rgba[:3].movedim(axis, -1), rgba[3:].clamp(0, 1).movedim(axis, -1)
    before = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
    weight = before * alpha  # (1, ..., Z)
    return (weight * rgb).sum(-1) + (1 - weight.sum(-1)) * background


@torch.no_grad()
def render_views(mae, x: dict, valid=None, zoom: int = 4) -> torch.Tensor:
    """Input / masked input / reconstruction of held-out grids, each seen from above (composited
    along z), a voxel ``zoom`` pixels wide: rows of (zoom X, B zoom Y, 3) images in [0, 1]."""
    rows = []
    for grid in mae.reconstruct(x, valid):  # each (B, 4, X, Y, Z) in input units
        views = [composite(g.clamp(0, 1)).permute(1, 2, 0) for g in grid]  # B x (X, Y, 3)
        rows.append(torch.cat(views, dim=1))
    image = torch.cat(rows, dim=0).clamp(0, 1)  # (3 X, B Y, 3)
    return image.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)


def procedural_items(n: int, grid: int, seed: int) -> list[dict]:
    """``n`` built-in scenes (``modalities.nerf.mesh.procedural_scene``), labelled by the kind of
    primitive that fills the most voxels."""
    items = []
    for i in range(n):
        scene = procedural_scene(seed * 1_000_003 + i, grid)
        items.append(prepare(scene, f"procedural_{i:04d}", PRIMITIVES.index(scene["kind"])))
    return items


def grid_samples(root) -> list[Sample]:
    """The grids under ``root``: labelled (labels.csv or class folders) or, when ``root`` itself holds
    .npz files, those unlabelled (label "")."""
    root = Path(root)
    flat = sorted(root.glob("*.npz")) if root.is_dir() else []
    if not flat:
        return discover(root, (".npz",))
    if (root / "labels.csv").is_file() or any(p.is_dir() and any(p.rglob("*.npz")) for p in root.iterdir()):
        raise DataError(f"{root}: .npz files both in the folder (unlabelled) and in class folders; use one layout")
    return [Sample(p, "") for p in flat]


def read_grids(root, skip_bad: bool, keep: Callable[[dict], dict] | None = None):
    """The ``.npz`` grids under ``root`` -> (items, classes, skipped, splits); unlabelled grids have
    label -1 and no classes. ``keep``: what to keep of each item (all of it by default)."""
    samples = grid_samples(root)
    labelled = samples[0].label != ""
    classes = require_classes([s.label for s in samples], root) if labelled else []

    def read(sample):
        item = prepare(load_grid(sample.path), str(sample.path), classes.index(sample.label) if labelled else -1)
        if not (item["image"][3] > NerfConfig.occupied).any():
            raise DataError(f"{sample.path}: no occupied voxel (alpha > {NerfConfig.occupied} nowhere): an empty grid")
        return sample, keep(item) if keep else item

    pairs, skipped = read_each(samples, read, skip_bad, name=lambda s: str(s.path))
    return [p[1] for p in pairs], classes, skipped, [p[0].split for p in pairs]


def find_scenes(root) -> list[tuple[str, Path]]:
    """Posed-image scenes under ``root`` as (class, folder), class "" when unlabelled: ``root``
    itself, its sub-folders (unlabelled), or the sub-folders of its class folders (labelled)."""
    if is_shards(str(root)):  # shards hold baked grids
        return []
    root = Path(root)

    def is_scene(folder: Path) -> bool:
        return any((folder / name).is_file() for name in TRANSFORMS)

    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if is_scene(root):
        return [("", root)]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    flat = [("", p) for p in folders if is_scene(p)]
    nested = [
        (c.name, p) for c in folders if not is_scene(c) for p in sorted(c.iterdir()) if p.is_dir() and is_scene(p)
    ]
    if flat and nested:
        raise DataError(
            f"{root}: scene folders ({flat[0][1].name}) beside class folders of scenes ({nested[0][0]}/): "
            "use one layout"
        )
    return flat or nested


def bake_scenes(
    root, out: Path, opts: NerfOptions, overwrite: bool, skip_bad: bool, progress: bool = True
) -> dict[str, object]:
    """Bake every posed-image scene under ``root`` (``find_scenes``) into ``out/<class>/<scene>.npz``
    (``out/<scene>.npz`` unlabelled) with one held-out picture beside it, as ``python -m
    modalities.nerf.bake`` does; a grid already there is kept unless ``overwrite``. A scene that
    cannot be read stops with one line naming the file, or with ``skip_bad`` is logged and counted.
    Returns figures for metrics.json."""
    if root is None:
        raise DataError("--stage bake needs --data: a folder of posed-image scenes")
    scenes = find_scenes(root)
    if not scenes:
        raise DataError(f"{root}: no posed-image scenes (folders holding {' or '.join(TRANSFORMS)})")
    cfg, scene_options = opts.bake_config(), opts.scene_options()

    def one(entry: tuple[str, Path]) -> str:
        label, folder = entry
        grid_file = out / label / f"{folder.name}.npz"
        if grid_file.is_file() and not overwrite:
            return "cached"
        try:
            scene = read_scene(folder, scene_options)
        except FileNotFoundError as e:  # a missing image: bad data like any other
            raise DataError(str(e)) from None
        result = bake(scene, cfg, progress and sys.stderr.isatty())
        write_bake(grid_file, result, folder, scene_options, cfg)
        f = result.figures
        log.info(
            "baked %s -> %s: held-out PSNR %.2f dB (stored grid %.2f), %.0f s",
            folder,
            grid_file,
            f["psnr"],
            f["grid_psnr"],
            f["seconds"],
        )
        return "baked"

    done, skipped = read_each(scenes, one, skip_bad, name=lambda e: str(e[1]))
    baked, cached = done.count("baked"), done.count("cached")
    log.info("%s: %d scenes baked, %d cached, %d skipped", out, baked, cached, len(skipped))
    return {"scenes": str(root), "baked_scenes": baked, "cached_scenes": cached, "skipped_scenes": len(skipped)}


def check_voxel_labels(name: str, top: int | None) -> None:
    """--task segment: a grid needs voxel labels (``top``: its largest, None without), each a kind."""
    if top is None:
        raise DataError(f"{name}: no labels array; --task segment needs voxel labels")
    if top >= len(VOXEL_CLASSES):
        raise DataError(f"{name}: voxel label {top} beyond {', '.join(VOXEL_CLASSES)}")


def padded_size(shapes, patch: int) -> tuple[int, int, int]:
    """The common size grids of ``shapes`` (X, Y, Z) are padded to: the largest, a multiple of ``patch``."""
    return tuple(math.ceil(max(shape[a] for shape in shapes) / patch) * patch for a in range(3))


def build_domain(source: DataSource, opts: NerfOptions, baked: dict | None = None) -> DomainData:
    """Datasets, adapter config and data card for the nerf recipe; ``baked``: what ``bake_scenes``
    returned when ``source.data`` holds the grids it baked. Shards (``modalities.shards.is_shards``)
    are streamed for pretraining."""
    if is_shards(source.data):
        return shard_domain(source, opts)
    if source.data is None:
        items = procedural_items(opts.scenes, opts.grid, source.seed)
        classes, splits, skipped, card = list(PRIMITIVES), [None] * len(items), [], "data_cards/nerf_procedural.md"
    else:
        items, classes, skipped, splits = read_grids(source.data, source.skip_bad_files)
        card = f"user data at {source.data}"
        if baked is not None:
            card = f"posed-image scenes at {baked['scenes']}, baked into {source.data} (modalities/nerf/bake.py)"
    if not items:
        raise DataError(f"{source.data}: no readable grids")
    if opts.task == "segment":
        classes = list(VOXEL_CLASSES)
        for it in items:
            check_voxel_labels(it["name"], int(it["voxels"].max()) if "voxels" in it else None)
    size = padded_size([it["image"].shape[1:] for it in items], opts.patch)
    items = [pad_to(it, size) for it in items]
    train_idx, held_idx = held_out_split(
        [str(it["label"]) for it in items], [it["name"] for it in items], splits, source.seed
    )
    train, held = [items[i] for i in train_idx], [items[i] for i in held_idx]
    spacing = torch.stack([it["spacing"] for it in items])
    return assemble(
        opts,
        GridDataset(train, augment=opts.augment),
        lambda: train,
        lambda: held,
        classes,
        size,
        card,
        {
            "train_grids": len(train),
            "eval_grids": len(held),
            "voxel_size_min": spacing.min(0).values.tolist(),
            "voxel_size_max": spacing.max(0).values.tolist(),
            "occupied_fraction": float(torch.stack([(it["image"][3] > 0.01).float().mean() for it in items]).mean()),
            "skipped_files": len(skipped),
            "skipped": skipped,
            **(baked or {}),
        },
    )


def assemble(opts, pretrain, train: Callable[[], list], held: Callable[[], list], classes, size, card, info):
    """The recipe's ``DomainData``; ``train`` and ``held`` return the padded items of the splits,
    called when a stage first needs them (``OnFirstUse``)."""
    voxels = opts.task == "segment"
    labels = "voxels" if voxels else "scene"
    return DomainData(
        pretrain=pretrain,
        finetune=OnFirstUse(lambda: GridDataset(train(), augment=opts.augment, labels=labels)),
        train_eval=OnFirstUse(lambda: GridDataset(train(), labels=labels)),
        held_out=OnFirstUse(lambda: GridDataset(held(), labels=labels)),
        classes=classes,
        adapter={"name": "nerf", **asdict(NerfConfig(patch=(opts.patch,) * 3, size=size))},
        data_card=card,
        render=render_views,
        raw_features=None if voxels else raw_features,
        info={"classes": classes, "grid_size": list(size), **info},
    )


# segment stores the voxel labels (checked); the padding and the augmentation come when read
SHARD_OPTIONS = ("task",)


def summary(item: dict) -> dict:
    """What the writer keeps of a grid it checks: no arrays, one grid in memory at a time."""
    return {
        "name": item["name"],
        "label": item["label"],
        "shape": list(item["image"].shape[1:]),
        "spacing": item["spacing"].tolist(),
        "occupied": int((item["image"][3] > 0.01).sum()),
        "top": int(item["voxels"].max()) if "voxels" in item else None,
    }


def write_shards(source: DataSource, opts: NerfOptions, write: Callable[[str, Iterable[dict]], list]) -> dict:
    """Check every grid of ``source.data`` as the recipe reads it (``read_grids``: layouts, empty
    grids, --skip-bad-files; --task segment: voxel labels), split the grids as the recipe splits them
    and hand each split to ``write(split, samples)``, the training split as ``train`` and the
    held-out one as ``test``, each grid read again when written. A sample is the grid's arrays as
    ``load_grid`` gives them (rgbsigma in float16, as ``save_grid`` writes it, where that loses
    nothing, else float32; valid, voxel_size; labels with --task segment) and {label, name}; the
    opacity, padding and augmentation are computed when read, as from the folder. Posed-image scenes
    are baked first (the recipe's --stage bake) and OUT/grids converted. -> what the index of the
    shards records of the data."""
    if find_scenes(source.data):
        raise DataError(
            f"{source.data}: posed-image scenes; bake them first (recipes/nerf.py --data {source.data} --stage bake) "
            "and convert OUT/grids"
        )
    segment = opts.task == "segment"
    seen, classes, skipped, splits = read_grids(source.data, source.skip_bad_files, keep=summary)
    if not seen:
        raise DataError(f"{source.data}: no readable grids")
    if segment:
        classes = list(VOXEL_CLASSES)
        for grid in seen:
            check_voxel_labels(grid["name"], grid["top"])
    train_idx, held_idx = held_out_split(
        [str(g["label"]) for g in seen], [g["name"] for g in seen], splits, source.seed
    )

    def samples(chosen: list[dict]) -> Iterator[dict]:
        for grid in random.Random(source.seed).sample(chosen, len(chosen)):  # a stream reads them in order
            arrays = load_grid(grid["name"])
            rgbsigma = arrays["rgbsigma"]
            half = rgbsigma.astype(np.float16)
            sample = {
                "rgbsigma.npy": half if np.array_equal(half, rgbsigma) else rgbsigma,
                "valid.npy": arrays["valid"],
                "voxel_size.npy": arrays["voxel_size"],
                "json": {"label": grid["label"], "name": grid["name"]},
            }
            if segment:
                sample["labels.npy"] = arrays["labels"]
            yield sample

    written = {
        "train": write("train", samples([seen[i] for i in train_idx])),
        "test": write("test", samples([seen[i] for i in held_idx])),
    }
    spacing = np.array([g["spacing"] for g in seen])
    return {
        "classes": classes,
        "options": {k: getattr(opts, k) for k in SHARD_OPTIONS},
        "data_card": f"user data at {source.data}",
        "splits": written,
        "skipped": skipped,
        "grid_max": [max(g["shape"][a] for g in seen) for a in range(3)],
        "voxel_size": [spacing.min(0).tolist(), spacing.max(0).tolist()],
        "occupied_voxels": sum(g["occupied"] for g in seen),
    }


def grid_item(sample: dict, size: tuple[int, int, int]) -> dict:
    """A shard sample (``write_shards``) -> the item the folder's file gives, padded to ``size``."""
    grid = {"rgbsigma": sample["rgbsigma.npy"], "valid": sample["valid.npy"], "voxel_size": sample["voxel_size.npy"]}
    if "labels.npy" in sample:
        grid["labels"] = sample["labels.npy"]
    return pad_to(prepare(grid, sample["json"]["name"], sample["json"]["label"]), size)


def stream_item(sample: dict, size: tuple[int, int, int], augment: bool) -> dict:
    """The ``decode`` of a ``ShardStream`` of grids: a sample -> its pretraining item."""
    return GridDataset([grid_item(sample, size)], augment=augment)[0]


def shard_domain(source: DataSource, opts: NerfOptions) -> DomainData:
    """Shards written by ``write_shards``: pretraining streams the training split (``ShardStream``);
    the probe and fine-tuning read the splits into memory when they start, as the folder's are."""
    index, shards = open_shards(source.data, "nerf", opts)
    where = source.data
    held = split_shards(where, index, "test")  # the folder's held-out split: its own, never --eval-data
    if not held:
        raise DataError(f"{where}: no held-out shards (test split) beside these")
    size = padded_size([index["grid_max"]], opts.patch)

    def items(chosen) -> list[dict]:
        return [grid_item(s, size) for s in ShardStream(chosen, None, source.seed, source.skip_bad_files).samples()]

    written = sum(s["nsamples"] for listed in index["splits"].values() for s in listed)
    return assemble(
        opts,
        ShardStream(
            shards, functools.partial(stream_item, size=size, augment=opts.augment), source.seed, source.skip_bad_files
        ),
        functools.cache(lambda: items(shards)),  # read once for the probe and fine-tuning
        functools.cache(lambda: items(held)),
        index["classes"],
        size,
        index["data_card"],
        {
            "shards": len(shards),
            "train_grids": samples_in(shards),
            "eval_grids": samples_in(held),
            "voxel_size_min": index["voxel_size"][0],
            "voxel_size_max": index["voxel_size"][1],
            "occupied_fraction": index["occupied_voxels"] / (written * math.prod(size)),
        },
    )
