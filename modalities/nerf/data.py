"""Radiance-grid datasets for the nerf recipe: the built-in procedural scenes, or a folder of
baked grids (``.npz`` as ``modalities.nerf.bake.save_grid`` writes them) in the standard layouts.

A grid's density becomes opacity over one voxel, ``alpha = 1 - exp(-sigma * l)`` with ``l`` the
mean voxel edge in world units (NeRF-MAE, Irshad et al. 2024, feeds alpha computed the same way
from the density of its sampled grids), so grids baked at different scales share one range. Grids
are padded at the far corner to a common size, a multiple of the patch, with ``valid`` = 0 there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from modalities.common import DataError, DataSource, DomainData, discover, held_out_split, read_each, require_classes
from modalities.nerf.adapter import NerfConfig
from modalities.nerf.bake import load_grid
from modalities.nerf.mesh import PRIMITIVES, procedural_scene


@dataclass(frozen=True)
class NerfOptions:
    grid: int = field(default=32, metadata={"help": "voxels per axis of the built-in procedural scenes"})
    patch: int = field(default=4, metadata={"help": "voxels per patch side (NeRF-MAE: 4 on 160^3 grids)"})
    scenes: int = field(default=400, metadata={"help": "built-in procedural scenes (80 %% train)"})
    augment: bool = field(
        default=True, metadata={"help": "random flips of the two horizontal axes and quarter turns about the up axis"}
    )

    def __post_init__(self):
        if self.grid < self.patch or self.grid % self.patch:
            raise ValueError(f"NerfOptions.grid must be a multiple of the patch {self.patch}, got {self.grid}")
        if self.scenes < 10:
            raise ValueError(f"NerfOptions.scenes must be >= 10, got {self.scenes}")


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
    """Radiance grids in memory; items {"x": {"image": (4, X, Y, Z), "spacing": (3,)}, "y": class
    index, "valid": (1, X, Y, Z)}. With ``augment``, the two horizontal axes are flipped at random
    and, on square grids, turned by a random quarter about the up axis (z)."""

    def __init__(self, items: list[dict], augment: bool = False):
        self.items, self.augment = items, augment
        self.class_ids = [it["label"] for it in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        image, valid = it["image"], it["valid"]
        if self.augment:
            both = torch.cat([image, valid])  # (5, X, Y, Z), moved together
            for axis in (1, 2):
                if torch.rand(()) < 0.5:
                    both = both.flip(axis)
            if both.shape[1] == both.shape[2]:
                both = both.rot90(int(torch.randint(4, ())), (1, 2))
            image, valid = both[:4], both[4:]
        return {"x": {"image": image, "spacing": it["spacing"]}, "y": it["label"], "valid": valid}


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


def read_grids(root, skip_bad: bool) -> tuple[list[dict], list[str], list, list[str | None]]:
    """Labelled ``.npz`` grids under ``root`` -> (items, classes, skipped, splits)."""
    samples = discover(root, (".npz",))
    classes = require_classes([s.label for s in samples], root)

    def read(sample):
        return sample, prepare(load_grid(sample.path), str(sample.path), classes.index(sample.label))

    pairs, skipped = read_each(samples, read, skip_bad, name=lambda s: str(s.path))
    return [p[1] for p in pairs], classes, skipped, [p[0].split for p in pairs]


def build_domain(source: DataSource, opts: NerfOptions) -> DomainData:
    """Datasets, adapter config and data card for the nerf recipe."""
    if source.data is None:
        items = procedural_items(opts.scenes, opts.grid, source.seed)
        classes, splits, skipped, card = list(PRIMITIVES), [None] * len(items), [], "data_cards/nerf_procedural.md"
    else:
        items, classes, skipped, splits = read_grids(source.data, source.skip_bad_files)
        card = f"user data at {source.data}"
    if not items:
        raise DataError(f"{source.data}: no readable grids")
    size = tuple(math.ceil(max(it["image"].shape[1 + a] for it in items) / opts.patch) * opts.patch for a in range(3))
    items = [pad_to(it, size) for it in items]
    train_idx, held_idx = held_out_split(
        [str(it["label"]) for it in items], [it["name"] for it in items], splits, source.seed
    )
    train, held = [items[i] for i in train_idx], [items[i] for i in held_idx]
    spacing = torch.stack([it["spacing"] for it in items])
    return DomainData(
        pretrain=GridDataset(train, augment=opts.augment),
        finetune=GridDataset(train, augment=opts.augment),
        train_eval=GridDataset(train),
        held_out=GridDataset(held),
        classes=classes,
        adapter={"name": "nerf", **asdict(NerfConfig(patch=(opts.patch,) * 3, size=size))},
        data_card=card,
        render=render_views,
        raw_features=raw_features,
        info={
            "train_grids": len(train),
            "eval_grids": len(held),
            "classes": classes,
            "grid_size": list(size),
            "voxel_size_min": spacing.min(0).values.tolist(),
            "voxel_size_max": spacing.max(0).values.tolist(),
            "occupied_fraction": float(torch.stack([(it["image"][3] > 0.01).float().mean() for it in items]).mean()),
            "skipped_files": len(skipped),
            "skipped": skipped,
        },
    )
