"""Baking posed photos into an RGB + density voxel grid: a direct voxel radiance field in the manner of
DVGO (Sun, Sun & Chen, "Direct Voxel Grid Optimization", CVPR 2022) and Plenoxels (Fridovich-Keil et
al., "Plenoxels: Radiance Fields without Neural Networks", CVPR 2022), in plain PyTorch on the CPU.

What it takes from them:
- a density grid and a colour grid of spherical-harmonic coefficients (degree 0 or 1, Plenoxels),
  read by trilinear interpolation; colour = sigmoid(SH basis . coefficients);
- DVGO's shifted softplus: alpha = 1 - exp(-softplus(raw + shift) * step / unit), the shift set so
  that an untrained voxel lets almost all light through (DVGO's alpha_init), ``unit`` the final voxel
  edge (DVGO's voxel_size_ratio) so that raw values mean the same at every resolution;
- NeRF's alpha compositing along each ray (Mildenhall et al., ECCV 2020), transmittance as the
  cumulative product of 1 - alpha;
- coarse to fine: the grids start at grid / 2^k and are upsampled trilinearly during training
  (Plenoxels; DVGO's progressive scaling);
- empty-space skipping: at each upsampling, voxels whose alpha stays below a threshold are masked
  (DVGO's mask cache), samples falling in them are never interpolated, and after the coarse stage
  samples of negligible weight skip the colour grid (DVGO's fast_color_thres);
- total variation on both grids (Plenoxels), Adam on random ray batches with the learning rate
  decaying exponentially to a tenth (DVGO).

Departures, for short bakes on a CPU: a learning rate of 0.5 (DVGO: 0.1; 150-step bakes gained
9 dB), a mask threshold of 1e-2 (DVGO: 1e-3; voxels that get tiny gradients random-walk under Adam's
normalised steps, and at 1e-3 the mask kept 97 % of the lego's box), and an L2 decay of the degree-1
SH coefficients: the .npz stores view-independent colour, and without the decay the degree-1 terms
carried so much of it that the stored grid rendered 6 dB below the field.

Held-out views (every N-th frame) are never trained on; the PSNR and SSIM on them of the field
(``psnr``, ``ssim``) and of the stored grid (``grid_psnr``, ``grid_ssim``) are reported, and a few
views are saved beside the ground truth. One .npz per scene (``save_grid``), readable with
``allow_pickle=False`` (``load_grid``):

  rgbsigma    (X, Y, Z, 4) float16: view-independent RGB in [0, 1] (the SH DC term through the
              sigmoid) and density sigma >= 0 per world unit, alpha over a length l = 1 - exp(-sigma l)
  valid       (X, Y, Z) uint8: 1 for a voxel of the scene, 0 for padding
  bbox        (2, 3) float32: world min and max corners; voxel (i, j, k) is centred at
              min + ((i, j, k) + 0.5) * voxel_size
  voxel_size  (3,) float32
  labels      (X, Y, Z) uint8, optional: 0 empty, k an object of kind k (mesh.py)
  meta        0-d str array: JSON of how the grid was made (config, PSNRs, SSIMs, seconds, view counts)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import typing
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from foundations.files import replacing
from modalities.common import DataError
from modalities.nerf.cameras import Scene, SceneOptions, pixel_rays, read_scene

log = logging.getLogger(__name__)
SH_C0 = 0.28209479177387814  # real spherical harmonics: Y_0^0
SH_C1 = 0.4886025119029199  # |Y_1^m|
ALPHA_INIT = 1e-4  # alpha of an untrained voxel over one final voxel edge (DVGO's alpha_init)
COLOUR_MIN_WEIGHT = 1e-4  # after the coarse stage, samples of less weight skip the colour grid
LR_FINAL = 0.1  # the learning rate decays exponentially to this fraction of --lr
EVAL_CHUNK = 8192  # rays per forward pass when rendering whole views
CURVE_POINTS, CURVE_RAYS = 10, 8192  # the PSNR curve: this many times, on this many fixed held-out pixels
FLOAT16_MAX = float(np.finfo(np.float16).max)
GRID_KEYS = ("rgbsigma", "valid", "bbox", "voxel_size", "meta")  # every grid file has these arrays


@dataclass(frozen=True)
class BakeConfig:
    """How a scene is baked."""

    grid: int = field(default=128, metadata={"help": "voxels along the longest side of the scene's box"})
    steps: int = field(default=3000, metadata={"help": "optimiser steps"})
    rays: int = field(default=4096, metadata={"help": "random rays per step, drawn from all training views"})
    samples: int = field(
        default=192,
        metadata={"help": "samples per ray inside the box at the final resolution (coarser stages: fewer)"},
    )
    lr: float = field(default=0.5, metadata={"help": "Adam learning rate of both grids (decays to a tenth)"})
    tv_density: float = field(default=1e-3, metadata={"help": "weight of the density grid's total variation"})
    tv_colour: float = field(default=1e-4, metadata={"help": "weight of the colour grid's total variation"})
    sh_degree: int = field(
        default=1, metadata={"choices": (0, 1), "help": "spherical-harmonic degree of colour (0: view-independent)"}
    )
    held_out_every: int = field(default=8, metadata={"help": "frames 0, N, 2N, ... are held out, never trained on"})
    upsample_at: tuple[float, ...] = field(
        default=(0.2, 0.4),
        metadata={"help": "fractions of the steps at which the grids double; they start at grid / 2^len"},
    )
    mask_threshold: float = field(
        default=1e-2, metadata={"help": "voxels of lower alpha are masked empty at each upsampling"}
    )
    sh_decay: float = field(
        default=0.1,
        metadata={
            "help": "weight of the mean squared degree-1 SH coefficient: keeps the colour in the view-independent "
            "term that the .npz stores (without it the stored grid rendered 6 dB worse on lego)"
        },
    )
    pictures: int = field(
        default=3, metadata={"help": "held-out views saved as PNG: field render | stored grid render | ground truth"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the ray batches and sample jitter"})

    def __post_init__(self):
        positive = {"grid": self.grid, "steps": self.steps, "rays": self.rays, "lr": self.lr}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.samples < 2:
            raise ValueError(f"samples must be at least 2, got {self.samples}")
        for name, value in {
            "tv_density": self.tv_density,
            "tv_colour": self.tv_colour,
            "sh_decay": self.sh_decay,
        }.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.sh_degree not in (0, 1):
            raise ValueError(f"sh_degree must be 0 or 1, got {self.sh_degree}")
        if self.held_out_every < 2:
            raise ValueError(
                f"held_out_every must be at least 2 (some views must be trained on), got {self.held_out_every}"
            )
        if list(self.upsample_at) != sorted(set(self.upsample_at)) or not all(0 < f < 1 for f in self.upsample_at):
            raise ValueError(f"upsample_at must be increasing fractions in (0, 1), got {self.upsample_at}")
        if self.grid < 2 ** (len(self.upsample_at) + 1):
            raise ValueError(
                f"grid {self.grid} is too small for {len(self.upsample_at)} upsamplings (coarsest below 2)"
            )
        if not 0 <= self.mask_threshold < 1:
            raise ValueError(f"mask_threshold must be in [0, 1), got {self.mask_threshold}")
        if self.pictures < 0:
            raise ValueError(f"pictures must be >= 0, got {self.pictures}")


class Render(NamedTuple):
    rgb: torch.Tensor  # (B, 3) composited on the background
    opacity: torch.Tensor  # (B,) 1 - transmittance through the whole box


class BakeResult(NamedTuple):
    grid: dict  # save_grid's arrays: rgbsigma, valid, bbox, voxel_size
    figures: dict  # psnr, ssim (held-out means) of the field, grid_psnr, grid_ssim of the stored grid, curve, ...
    pictures: list  # [(frame, (H, 3W, 3) uint8 field render | stored grid render | truth)] of the first held-out views


def grid_resolution(bbox, grid: int) -> tuple[int, int, int]:
    """Voxels per axis: ``grid`` along the longest side of ``bbox`` (2, 3), nearly cubic voxels."""
    extent = np.asarray(bbox[1], dtype=np.float64) - np.asarray(bbox[0], dtype=np.float64)
    return tuple(max(1, round(grid * e / extent.max())) for e in extent)


def box_span(origins: torch.Tensor, dirs: torch.Tensor, bbox: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (B,) at which rays enter and leave the box (slab method); leave <= enter: a miss."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t_min, t_max = (bbox[0] - origins) / safe, (bbox[1] - origins) / safe  # (B, 3) each
    return torch.minimum(t_min, t_max).amax(-1), torch.maximum(t_min, t_max).amin(-1)


def interpolate(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear values (M, C) of ``grid`` (1, C, X, Y, Z) at ``coords`` (M, 3) in [-1, 1] along X, Y, Z."""
    # grid_sample indexes (D, H, W) = (X, Y, Z) with coordinates ordered (w, h, d): hence the flip
    out = F.grid_sample(grid, coords.flip(-1).view(1, 1, 1, -1, 3), align_corners=False, padding_mode="border")
    return out.view(grid.shape[1], -1).T  # (1, C, 1, 1, M) -> (M, C)


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics (M, (degree + 1)^2) of unit directions (M, 3), in Plenoxels' order and signs."""
    c0 = torch.full_like(dirs[:, :1], SH_C0)
    if degree == 0:
        return c0
    x, y, z = dirs.unbind(-1)
    return torch.cat([c0, torch.stack([-SH_C1 * y, SH_C1 * z, -SH_C1 * x], -1)], -1)


class VoxelField(nn.Module):
    """A density grid (1, 1, X, Y, Z) and an SH colour grid (1, 3 (degree + 1)^2, X, Y, Z) over ``bbox``,
    values at voxel centres; ``mask`` (X, Y, Z) marks the voxels that are not skipped as empty."""

    def __init__(self, bbox: torch.Tensor, resolution: tuple[int, int, int], sh_degree: int, unit: float):
        super().__init__()
        self.sh_degree = sh_degree
        self.unit = unit  # optical depth softplus(raw + shift) is per this length
        self.shift = math.log(math.expm1(-math.log1p(-ALPHA_INIT)))  # softplus(shift) = -log(1 - ALPHA_INIT)
        self.register_buffer("bbox", torch.as_tensor(bbox, dtype=torch.float32))
        self.density = nn.Parameter(torch.zeros(1, 1, *resolution))
        self.colour = nn.Parameter(torch.zeros(1, 3 * (sh_degree + 1) ** 2, *resolution))
        self.register_buffer("mask", torch.ones(resolution, dtype=torch.bool))

    @classmethod
    def from_grid(cls, rgbsigma, bbox) -> VoxelField:
        """The degree-0 field whose ``to_grid()`` gives back ``rgbsigma`` (X, Y, Z, 4): to render a grid."""
        rgbsigma = torch.as_tensor(rgbsigma, dtype=torch.float32)
        bbox = torch.as_tensor(bbox, dtype=torch.float32)
        unit = float(((bbox[1] - bbox[0]) / torch.tensor(rgbsigma.shape[:3])).mean())
        field = cls(bbox, tuple(rgbsigma.shape[:3]), sh_degree=0, unit=unit)
        rgb = rgbsigma[..., :3].clamp(1e-6, 1 - 1e-6)
        depth = (rgbsigma[..., 3] * unit).clamp(min=1e-8)  # softplus(raw + shift)
        with torch.no_grad():
            field.colour.copy_((torch.logit(rgb) / SH_C0).permute(3, 0, 1, 2)[None])  # (1, 3, X, Y, Z)
            field.density.copy_((depth + torch.log(-torch.expm1(-depth)) - field.shift)[None, None])
        return field

    @property
    def resolution(self) -> tuple[int, int, int]:
        return tuple(self.density.shape[2:])

    @property
    def voxel_size(self) -> torch.Tensor:
        return (self.bbox[1] - self.bbox[0]) / torch.tensor(self.resolution)

    def sigma(self, raw: torch.Tensor) -> torch.Tensor:
        """Density per world unit of raw grid values."""
        return F.softplus(raw + self.shift) / self.unit

    def coords(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.bbox[0]) / (self.bbox[1] - self.bbox[0]) * 2 - 1

    def occupied(self, points: torch.Tensor) -> torch.Tensor:
        """(...) bool: whether the voxel holding each point (..., 3) is not masked empty."""
        index = ((points - self.bbox[0]) / self.voxel_size).long()
        index = torch.minimum(index.clamp(min=0), torch.tensor(self.resolution) - 1)  # (..., 3)
        return self.mask[index[..., 0], index[..., 1], index[..., 2]]

    def radiance(self, points: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """RGB (M, 3) in [0, 1] seen along unit ``dirs`` (M, 3) at ``points`` (M, 3)."""
        k = (self.sh_degree + 1) ** 2
        coef = interpolate(self.colour, self.coords(points)).view(-1, 3, k)  # (M, 3, K)
        return torch.sigmoid((coef * sh_basis(dirs, self.sh_degree)[:, None]).sum(-1))

    def render(
        self,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        samples: int,
        background: float,
        near: float = 0.0,
        far: float = math.inf,
        min_weight: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Render:
        """Colours of the rays from ``origins`` (B, 3) along unit ``dirs`` (B, 3): ``samples`` evenly
        spaced samples over each ray's stretch inside the box (and within near..far), jittered within
        their intervals when a ``generator`` is given (stratified sampling, training) else at the
        midpoints. Samples in masked voxels are empty; those of weight <= ``min_weight`` get no colour."""
        n = len(origins)
        enter, leave = box_span(origins, dirs, self.bbox)
        enter, leave = enter.clamp(min=near), leave.clamp(max=far)
        span = (leave - enter).clamp(min=0)  # (B,) 0: the ray misses the box
        offsets = torch.full((n, samples), 0.5) if generator is None else torch.rand(n, samples, generator=generator)
        t = enter[:, None] + span[:, None] * (torch.arange(samples) + offsets) / samples  # (B, S)
        points = origins[:, None] + t[..., None] * dirs[:, None]  # (B, S, 3)
        keep = (span > 0)[:, None] & self.occupied(points)  # (B, S)
        sigma = torch.zeros(n, samples)
        sigma[keep] = self.sigma(interpolate(self.density, self.coords(points[keep]))[:, 0])
        alpha = 1 - torch.exp(-sigma * (span / samples)[:, None])  # (B, S)
        transmittance = torch.cumprod(torch.cat([torch.ones(n, 1), 1 - alpha[:, :-1]], 1), 1)  # light left at each
        weights = alpha * transmittance
        shade = keep & (weights > min_weight)
        colour = torch.zeros(n, samples, 3)
        colour[shade] = self.radiance(points[shade], dirs[:, None].expand(-1, samples, -1)[shade])
        opacity = weights.sum(1)
        return Render((weights[..., None] * colour).sum(1) + (1 - opacity)[:, None] * background, opacity)

    @torch.no_grad()
    def upsample(self, resolution: tuple[int, int, int]) -> None:
        """Both grids trilinearly, the mask by nearest voxel (new parameters: make a new optimiser)."""
        self.density = nn.Parameter(F.interpolate(self.density, resolution, mode="trilinear", align_corners=False))
        self.colour = nn.Parameter(F.interpolate(self.colour, resolution, mode="trilinear", align_corners=False))
        self.mask = F.interpolate(self.mask[None, None].float(), resolution, mode="nearest")[0, 0].bool()

    @torch.no_grad()
    def update_mask(self, threshold: float) -> None:
        """Mask voxels whose alpha over one voxel edge is at most ``threshold``, keeping one voxel of
        margin around the rest; masked voxels stay masked."""
        alpha = 1 - torch.exp(-self.sigma(self.density[0, 0]) * self.voxel_size.mean())  # (X, Y, Z)
        solid = (alpha > threshold) & self.mask
        if not solid.any():  # nothing learnt yet (a very short coarse stage): masking would end the bake
            log.warning(
                "no voxel of alpha above %g at %s: nothing masked", threshold, "x".join(map(str, self.resolution))
            )
            return
        self.mask = F.max_pool3d(solid.float()[None, None], 3, stride=1, padding=1)[0, 0].bool() & self.mask

    @torch.no_grad()
    def add_regulariser_grads(self, tv_density: float, tv_colour: float, sh_decay: float) -> None:
        """Add to the grids' gradients those of the regularisers, in closed form as DVGO's
        total_variation_add_grad (autograd through the differences took 6x longer), within the box
        around the unmasked voxels (the only ones that samples reach): tv_* x the total variation of
        each grid (the mean squared difference of neighbouring voxels, summed over the axes), and
        sh_decay x the mean square of the degree-1 SH coefficients over the colour grid."""
        occupied = self.mask.nonzero()  # (V, 3)
        box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(occupied.amin(0), occupied.amax(0), strict=True))
        for grid, weight in ((self.density, tv_density), (self.colour, tv_colour)):
            if grid.grad is None:  # no sample reached the grid
                grid.grad = torch.zeros_like(grid)
            if not weight:
                continue
            values, grad = grid[(..., *box)], grid.grad[(..., *box)]  # views (1, C, x, y, z)
            for axis in (2, 3, 4):
                step = values.diff(dim=axis).mul_(2 * weight / grid.numel())  # d/dv of weight * mean(diff^2)
                size = values.shape[axis]
                grad.narrow(axis, 0, size - 1).sub_(step)
                grad.narrow(axis, 1, size - 1).add_(step)
        if self.sh_degree and sh_decay:
            k = (self.sh_degree + 1) ** 2
            values = self.colour.view(3, k, *self.resolution)[(slice(None), slice(1, None), *box)]  # (3, K-1, x, y, z)
            grad = self.colour.grad.view(3, k, *self.resolution)[(slice(None), slice(1, None), *box)]
            grad.add_(values, alpha=2 * sh_decay / self.colour.numel())

    @torch.no_grad()
    def to_grid(self) -> dict:
        """save_grid's arrays: view-independent RGB (the DC term), sigma (0 in masked voxels)."""
        rgb = torch.sigmoid(SH_C0 * self.colour[0, :: (self.sh_degree + 1) ** 2])  # (3, X, Y, Z)
        sigma = self.sigma(self.density[0]) * self.mask  # (1, X, Y, Z)
        return {
            "rgbsigma": torch.cat([rgb, sigma]).permute(1, 2, 3, 0).numpy(),  # (X, Y, Z, 4)
            "valid": np.ones(self.resolution, dtype=np.uint8),
            "bbox": self.bbox.numpy().copy(),
            "voxel_size": self.voxel_size.numpy(),
        }


def split_views(n: int, every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) view indices: frames 0, every, 2 every, ... are held out."""
    if n < 2:
        raise DataError(f"{n} view: at least 2 are needed (one held out, one trained on)")
    held = torch.arange(0, n, every)
    train = torch.tensor([i for i in range(n) if i % every])
    return train, held


def stage_resolutions(bbox, grid: int, upsamplings: int) -> list[tuple[int, int, int]]:
    """Resolutions coarse to fine: the final one halved ``upsamplings`` times, then doubled back."""
    final = grid_resolution(bbox, grid)
    return [tuple(max(2, round(r / 2 ** (upsamplings - k))) for r in final) for k in range(upsamplings + 1)]


@torch.no_grad()
def render_views(field: VoxelField, scene: Scene, views: torch.Tensor, samples: int, min_weight: float) -> torch.Tensor:
    """Rendered images (V, H, W, 3) of the scene's ``views``."""
    h, w = scene.images.shape[1:3]
    rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # (H W,)
    images = []
    for v in views.tolist():
        c2w, intrinsics = scene.c2w[v].expand(h * w, 4, 4), scene.intrinsics[v].expand(h * w, 4)
        origins, dirs = pixel_rays(c2w, intrinsics, rows, cols)
        rgb = [
            field.render(o, d, samples, scene.background, scene.near, scene.far, min_weight).rgb
            for o, d in zip(origins.split(EVAL_CHUNK), dirs.split(EVAL_CHUNK), strict=True)
        ]
        images.append(torch.cat(rgb).view(h, w, 3))
    return torch.stack(images)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over views (V, H, W, 3) of each view's PSNR in dB, images in [0, 1]."""
    mse = (pred - target).square().flatten(1).mean(1).clamp(min=1e-10)
    return float((-10 * torch.log10(mse)).mean())


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM (Wang et al., IEEE TIP 2004) over views (V, H, W, 3) in [0, 1]."""
    # MONAI's SSIMMetric, as MONAI is a dependency and torchmetrics is not: Gaussian window of 11
    # pixels (fewer on smaller views), sigma 1.5, k1 0.01, k2 0.03, the paper's settings
    from monai.metrics import SSIMMetric

    side = min(pred.shape[1:3])
    window = min(11, side if side % 2 else side - 1)
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=window)
    return float(metric(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).mean())


def adam(field: VoxelField, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(field.parameters(), lr=lr, fused=True)  # fused: one pass over the grids, 10x faster


def bake(scene: Scene, cfg: BakeConfig, progress: bool = True) -> BakeResult:
    """Fit a voxel radiance field to the scene's training views; evaluate on the held-out ones."""
    start = time.perf_counter()
    train, held = split_views(len(scene.images), cfg.held_out_every)
    stages = stage_resolutions(scene.bbox, cfg.grid, len(cfg.upsample_at))
    samples = [max(2, round(cfg.samples * max(r) / max(stages[-1]))) for r in stages]  # ~constant per voxel
    switch = [round(f * cfg.steps) for f in cfg.upsample_at]  # steps at which the next stage begins
    final_voxel = float(((scene.bbox[1] - scene.bbox[0]) / torch.tensor(stages[-1])).mean())
    field = VoxelField(scene.bbox, stages[0], cfg.sh_degree, unit=final_voxel)
    optimiser = adam(field, cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    h, w = scene.images.shape[1:3]
    *probe, probe_truth = held_out_pixels(scene, held, cfg.seed + 1)  # held-out PSNR against training time
    marks, curve, evaluating = curve_marks(cfg.steps), [], 0.0  # evaluating: seconds not counted as training
    stage, running = 0, None
    bar = tqdm(range(cfg.steps), desc="bake", disable=not progress, dynamic_ncols=True)
    for step in bar:
        while stage < len(switch) and step >= switch[stage]:
            stage += 1
            field.upsample(stages[stage])
            field.update_mask(cfg.mask_threshold)
            optimiser = adam(field, cfg.lr)
        for group in optimiser.param_groups:
            group["lr"] = cfg.lr * LR_FINAL ** (step / cfg.steps)
        pick = torch.randint(len(train) * h * w, (cfg.rays,), generator=generator)
        view, pixel = train[pick // (h * w)], pick % (h * w)
        rows, cols = pixel // w, pixel % w
        origins, dirs = pixel_rays(scene.c2w[view], scene.intrinsics[view], rows + 0.5, cols + 0.5)
        min_weight = COLOUR_MIN_WEIGHT if stage else 0.0
        out = field.render(
            origins, dirs, samples[stage], scene.background, scene.near, scene.far, min_weight, generator
        )
        mse = F.mse_loss(out.rgb, scene.images[view, rows, cols])
        optimiser.zero_grad(set_to_none=True)
        mse.backward()
        field.add_regulariser_grads(cfg.tv_density, cfg.tv_colour, cfg.sh_decay)
        optimiser.step()
        running = mse.item() if running is None else 0.9 * running + 0.1 * mse.item()
        if step + 1 in marks:
            tick = time.perf_counter()
            with torch.no_grad():
                rgb = torch.cat(
                    [
                        field.render(o, d, samples[stage], scene.background, scene.near, scene.far, min_weight).rgb
                        for o, d in zip(*(r.split(EVAL_CHUNK) for r in probe), strict=True)
                    ]
                )
            seconds = tick - start - evaluating
            curve.append([step + 1, round(seconds, 1), round(psnr(rgb[None], probe_truth[None]), 2)])
            evaluating += time.perf_counter() - tick
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(psnr=f"{-10 * math.log10(max(running, 1e-10)):.2f}", grid="x".join(map(str, stages[stage])))
    min_weight = COLOUR_MIN_WEIGHT if stage else 0.0
    grid = field.to_grid()
    rendered = render_views(field, scene, held, samples[-1], min_weight)
    # the .npz keeps view-independent colour only: render what it holds too
    stored = render_views(VoxelField.from_grid(grid["rgbsigma"], grid["bbox"]), scene, held, samples[-1], min_weight)
    truth = scene.images[held]
    figures = {
        "psnr": psnr(rendered, truth),
        "ssim": ssim(rendered, truth),
        "grid_psnr": psnr(stored, truth),
        "grid_ssim": ssim(stored, truth),
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - start, 1),  # training and evaluation
        "curve": curve,  # [step, seconds of training, held-out PSNR of CURVE_RAYS fixed pixels]
        "train_views": len(train),
        "held_out_views": len(held),
        "held_out_frames": held.tolist(),
        "resolution": list(field.resolution),
        "occupied_fraction": float(field.mask.float().mean()),
    }
    pictures = [
        (int(frame), (torch.cat([rendered[i], stored[i], truth[i]], 1).clamp(0, 1) * 255).round().byte().numpy())
        for i, frame in enumerate(held[: cfg.pictures].tolist())
    ]
    return BakeResult(grid, figures, pictures)


def held_out_pixels(scene: Scene, held: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    """CURVE_RAYS distinct pixels (or all) of the held-out views: their ray origins, directions (both
    (R, 3)) and colours."""
    h, w = scene.images.shape[1:3]
    pick = torch.randperm(len(held) * h * w, generator=torch.Generator().manual_seed(seed))[:CURVE_RAYS]
    view, rows, cols = held[pick // (h * w)], pick % (h * w) // w, pick % w
    return *pixel_rays(scene.c2w[view], scene.intrinsics[view], rows + 0.5, cols + 0.5), scene.images[view, rows, cols]


def write_bake(out: Path, result: BakeResult, scene_dir, scene_options: SceneOptions, cfg: BakeConfig) -> None:
    """The grid as ``out`` (.npz, how it was made and its figures in meta) and its held-out pictures
    beside it as OUT-STEM_held_out_FRAME.png."""
    meta = {"source": "posed views", "scene": str(scene_dir), "scene_options": asdict(scene_options)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(out, result.grid, {**meta, "config": asdict(cfg), **result.figures})
    for frame, picture in result.pictures:
        with replacing(out.with_name(f"{out.stem}_held_out_{frame:03d}.png")) as tmp:
            Image.fromarray(picture).save(tmp)


def curve_marks(steps: int) -> set[int]:
    """The steps (1-based) after which the PSNR curve is measured: CURVE_POINTS evenly spaced, the last one last."""
    return {max(1, round(steps * k / CURVE_POINTS)) for k in range(1, CURVE_POINTS + 1)}


def save_grid(path, grid: dict, meta: dict) -> None:
    """Write ``grid``'s arrays (rgbsigma, valid, bbox, voxel_size, optional labels) and ``meta`` (a
    JSON-able dict) to a compressed .npz in the layout of this module's docstring."""
    rgbsigma = np.asarray(grid["rgbsigma"], dtype=np.float32)
    rgbsigma[..., 3] = np.minimum(rgbsigma[..., 3], FLOAT16_MAX)  # float16 overflows to inf beyond
    arrays = {
        "rgbsigma": rgbsigma.astype(np.float16),
        "valid": np.asarray(grid["valid"], dtype=np.uint8),
        "bbox": np.asarray(grid["bbox"], dtype=np.float32),
        "voxel_size": np.asarray(grid["voxel_size"], dtype=np.float32),
        "meta": np.array(json.dumps(meta)),  # 0-d unicode array: no pickle needed
    }
    if "labels" in grid:
        arrays["labels"] = np.asarray(grid["labels"], dtype=np.uint8)
    with replacing(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def load_grid(path) -> dict:
    """A grid written by ``save_grid``: rgbsigma (X, Y, Z, 4) float32, valid (X, Y, Z) uint8, bbox (2, 3),
    voxel_size (3,), meta (dict) and labels (X, Y, Z) uint8 when present. Read without pickle; a
    missing array or a wrong shape is one ``DataError`` line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz grid ({type(e).__name__}: {e})") from None
    missing = [k for k in GRID_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} array (a grid has {', '.join(GRID_KEYS)})")
    rgbsigma = arrays["rgbsigma"]
    if rgbsigma.ndim != 4 or rgbsigma.shape[-1] != 4:
        raise DataError(f"{path}: rgbsigma of shape {rgbsigma.shape}, expected (X, Y, Z, 4)")
    expected = {
        "valid": rgbsigma.shape[:3],
        "bbox": (2, 3),
        "voxel_size": (3,),
        "meta": (),
        "labels": rgbsigma.shape[:3],
    }
    for key, shape in expected.items():
        if key in arrays and arrays[key].shape != shape:
            raise DataError(f"{path}: {key} of shape {arrays[key].shape}, expected {shape}")
    bad = int((~np.isfinite(rgbsigma)).sum())
    if bad:
        raise DataError(f"{path}: {bad} NaN or infinite values in rgbsigma")
    bbox, voxel = arrays["bbox"].astype(np.float64), arrays["voxel_size"].astype(np.float64)
    if not (np.isfinite(bbox).all() and (bbox[1] > bbox[0]).all() and np.isfinite(voxel).all() and (voxel > 0).all()):
        raise DataError(
            f"{path}: bbox {bbox.tolist()} must be finite with max > min, voxel_size {voxel.tolist()} positive"
        )
    if arrays["meta"].dtype.kind != "U":
        raise DataError(f"{path}: meta must be a JSON string, got a {arrays['meta'].dtype} array")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: meta is not JSON ({e.msg})") from None
    grid = {k: arrays[k] for k in ("valid", "bbox", "voxel_size", "labels") if k in arrays}
    return {"rgbsigma": rgbsigma.astype(np.float32), **grid, "meta": meta}


def add_options(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One ``--field-name`` flag per field of the dataclass ``cls``, its default and help from the field."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kwargs = {"dest": f.name, "default": f.default, "help": f"{f.metadata['help']} (default: %(default)s)"}
        if typing.get_origin(hints[f.name]) is tuple:
            kwargs |= {"nargs": "+", "type": typing.get_args(hints[f.name])[0]}
        else:
            kwargs["type"] = hints[f.name]
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)


def options(cls, args: argparse.Namespace) -> SceneOptions | BakeConfig:
    """The dataclass ``cls`` from its flags (``add_options``); nargs lists become tuples."""
    values = {f.name: getattr(args, f.name) for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modalities.nerf.bake",
        description="Bake a posed-image scene (NeRF-synthetic/Blender transforms_train.json, or instant-ngp "
        "transforms.json) into an RGB + density voxel grid (.npz), fitting a voxel radiance field (DVGO/Plenoxels) "
        "on the CPU. Every --held-out-every-th frame is kept out of training; PSNR/SSIM on those views, of the "
        "field and of the stored view-independent grid, are printed and stored in the .npz, and the first "
        "--pictures of them are saved as OUT_held_out_FRAME.png (field | stored grid | ground truth). On one CPU "
        "thread, lego at 100x100 pixels with --grid 96 --steps 1600 --rays 2048 --samples 160 takes 4 to 5 minutes "
        "(held-out PSNR 30 dB).",
        epilog="The .npz holds rgbsigma (X,Y,Z,4) float16 (RGB in [0,1], density per world unit), valid (X,Y,Z) "
        "uint8, bbox (2,3), voxel_size (3,) and meta (JSON string); read it with modalities.nerf.bake.load_grid.",
    )
    parser.add_argument("scene", type=Path, help="scene folder holding transforms.json or transforms_train.json")
    parser.add_argument("out", type=Path, help="the .npz to write")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar")
    add_options(parser, SceneOptions, "reading the scene")
    add_options(parser, BakeConfig, "baking")
    args = parser.parse_args(argv)
    if args.out.suffix != ".npz":
        parser.error(f"OUT must end in .npz, got {args.out}")
    try:
        scene_options, cfg = options(SceneOptions, args), options(BakeConfig, args)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        scene = read_scene(args.scene, scene_options)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = bake(scene, cfg, args.progress)
    write_bake(args.out, result, args.scene, scene_options, cfg)
    f = result.figures
    print(
        f"{args.out}: {'x'.join(map(str, f['resolution']))} grid, held-out PSNR {f['psnr']:.2f} dB, SSIM "
        f"{f['ssim']:.3f} (stored grid: {f['grid_psnr']:.2f} dB, {f['grid_ssim']:.3f}) on {f['held_out_views']} views "
        f"({f['train_views']} trained on), {f['seconds']:.0f} s"
    )
    print("held-out PSNR against training time: " + ", ".join(f"{t:.0f} s {p:.2f} dB" for _, t, p in f["curve"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
