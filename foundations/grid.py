"""One adapter for inputs on a regular grid of any dimension: images, volumes, video tubes,
spectrograms, radiance grids.

In the spirit of MONAI's ``spatial_dims`` (``PatchEmbeddingBlock``), the number of spatial axes
is the length of ``patch``: a ConvNd with kernel = stride = patch embeds non-overlapping patches
(ViT, Dosovitskiy et al. 2021; tubelets of VideoMAE, Tong et al. 2022, are 3-D patches), and
patchify / unpatchify move elements between the grid and (B, N, prod(patch) * C) targets.

Inputs are ``(B, C, *spatial)`` tensors, or dicts ``{"image": (B, C, *spatial), "spacing":
(B, dims)}`` when coordinates are physical. Coordinates (``coords``):
  "index"    the patch's grid index along each axis (any input size, no interpolation);
  "spacing"  the patch centre in physical units, ``(index + 0.5) * patch * spacing``, so inputs
             of different voxel spacing share one positional frame (CT/MRI in millimetres).
With ``slices``, an input missing the last spatial axis (a 2-D slice of a 3-D grid) is a one-slice
grid extended through the patch depth (Uni4Eye, Cai et al. 2022): its stem is the same kernel
summed over that axis, exactly the embedding of the slice repeated ``patch[-1]`` times, so 2-D
and 3-D batches train every weight of one encoder.

Inputs are normalised with the per-channel ``mean`` and ``std`` before patching, so targets are
normalised values too (identity where a pipeline normalises beforehand).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from foundations.adapter import Adapter, Targets, Tokens, gather_tokens
from foundations.losses import normalize_target

COORDS = ("index", "spacing")
AXES = "uvw"  # einops names of the spatial axes; torch has Conv1d to Conv3d


@dataclass(frozen=True)
class GridConfig:
    channels: int = 1
    patch: tuple[int, ...] = (16, 16)  # elements per patch along each spatial axis; len = spatial dims
    size: tuple[int, ...] = (128, 128)  # input size it was trained at; any multiple of the patch works
    mean: tuple[float, ...] = (0.0,)  # per channel (or one for all)
    std: tuple[float, ...] = (1.0,)
    coords: str = "index"  # index | spacing
    slices: bool = False  # also embed inputs without the last spatial axis (2-D slices of 3-D)
    # features: tokens averaged over every axis but the last, one vector per patch along the last
    # axis, concatenated (a spectrogram keeps its frequency bands; their mean would mix them up)
    keep_last_axis: bool = False

    def __post_init__(self):
        for name, kind in (("patch", int), ("size", int), ("mean", float), ("std", float)):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
        if self.channels < 1:
            raise ValueError(f"GridConfig.channels must be >= 1, got {self.channels}")
        if not 1 <= len(self.patch) <= len(AXES) or min(self.patch) < 1:
            raise ValueError(f"GridConfig.patch must be 1 to {len(AXES)} positive ints, got {self.patch}")
        if len(self.size) != len(self.patch) or any(s % p for s, p in zip(self.size, self.patch, strict=True)):
            raise ValueError(f"GridConfig.size {self.size} must be multiples of the patch {self.patch}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, self.channels):
                raise ValueError(f"GridConfig.{name} needs 1 or {self.channels} values, got {getattr(self, name)}")
        if min(self.std) <= 0:
            raise ValueError(f"GridConfig.std must be positive, got {self.std}")
        if self.coords not in COORDS:
            raise ValueError(f"GridConfig.coords must be one of {COORDS}, got {self.coords!r}")
        if self.slices and len(self.patch) < 2:
            raise ValueError("GridConfig.slices needs at least two spatial axes")
        if self.keep_last_axis and (len(self.patch) < 2 or self.slices):
            raise ValueError("GridConfig.keep_last_axis needs at least two spatial axes and no slices")

    @property
    def dims(self) -> int:
        return len(self.patch)


class GridAdapter(Adapter):
    pos_embed = "sincos"
    dims: int | None = None  # spatial axes a modality's inputs have (None: any)

    def __init__(self, config: GridConfig, dim: int):
        super().__init__(config, dim)
        if self.dims not in (None, config.dims):
            raise ValueError(f"a {self.name} adapter takes {self.dims}-D patches, got {config.patch}")
        self.coord_dim = config.dims
        self.target_dim = math.prod(config.patch) * config.channels
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[config.dims - 1]
        self.proj = conv(config.channels, dim, kernel_size=config.patch, stride=config.patch)
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))  # as a linear layer (MAE)
        nn.init.zeros_(self.proj.bias)
        shape = (1, -1) + (1,) * config.dims
        self.register_buffer("mean", torch.tensor(config.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(shape), persistent=False)

    # ------------------------------------------------------------------------------- input
    def split(self, x) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x -> (grid (B, C, *spatial) with every spatial axis, spacing (B, dims) or None); a
        slice comes back with a trailing axis of length 1."""
        image = x["image"] if isinstance(x, dict) else x
        cfg, dims = self.config, self.config.dims
        ndim = image.ndim - 2
        if image.shape[1:2] != (cfg.channels,) or not (ndim == dims or (cfg.slices and ndim == dims - 1)):
            kind = f"{dims}-D grids" + (f" or {dims - 1}-D slices" if cfg.slices else "")
            raise ValueError(f"expected {kind} (B, {cfg.channels}, ...), got {tuple(image.shape)}")
        size = image.shape[2:]
        if any(s % p for s, p in zip(size, cfg.patch, strict=False)):
            raise ValueError(f"input size {tuple(size)} is not a multiple of the patch {cfg.patch[:ndim]}")
        spacing = x.get("spacing") if isinstance(x, dict) else None
        if cfg.coords == "spacing" and spacing is None:
            raise ValueError('coords="spacing" needs inputs {"image": ..., "spacing": (B, dims)}')
        return (image if ndim == dims else image[..., None]), spacing

    def is_slice(self, image: torch.Tensor) -> bool:
        """Whether a grid from ``split`` is a slice (its last axis, 1 long, stands for a patch depth)."""
        return image.shape[-1] == 1 and self.config.patch[-1] > 1

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)

    # ------------------------------------------------------------------------------ tokens
    def coords(self, x) -> torch.Tensor:
        image, spacing = self.split(x)
        grid = [-(-s // p) for s, p in zip(image.shape[2:], self.config.patch, strict=True)]  # a slice: 1 deep
        index = torch.stack(torch.meshgrid(*(torch.arange(g, device=image.device) for g in grid), indexing="ij"), -1)
        index = index.view(1, -1, len(grid)).float()  # (1, N, dims) in token order
        if self.config.coords == "spacing":
            size = torch.tensor(self.config.patch, device=image.device) * spacing.to(image.device).float()  # (B, dims)
            return (index + 0.5) * size[:, None]  # (B, N, dims) patch centres
        return index.expand(image.shape[0], -1, -1)

    def embed(self, x, ids: torch.Tensor | None = None) -> Tokens:
        image, _ = self.split(x)
        image = self.normalize(image)
        if ids is not None and not self.is_slice(image):
            # the visible patches only: the stem's kernel as a linear map on their elements, in the
            # (p0, p1, ..., c) order of patchify (the conv over every patch is 4x the work at 0.75)
            weight = self.proj.weight.movedim(1, -1).flatten(1)  # (D, prod(patch) * C)
            return Tokens(F.linear(gather_tokens(self.patchify(image), ids), weight, self.proj.bias), self.coords(x))
        if self.is_slice(image):  # the kernel summed over depth
            conv = (F.conv1d, F.conv2d)[self.config.dims - 2]
            t = conv(image[..., 0], self.proj.weight.sum(-1), self.proj.bias, stride=self.config.patch[:-1])[..., None]
        else:
            t = self.proj(image)  # (B, D, *grid)
        tokens = t.flatten(2).transpose(1, 2)  # (B, N, D)
        return Tokens(tokens if ids is None else gather_tokens(tokens, ids), self.coords(x))

    def _pattern(self) -> tuple[str, str, dict]:
        """einops patterns grid <-> tokens, e.g. 2-D: "b c (u p0) (v p1)", "b (u v) (p0 p1 c)"."""
        axes = AXES[: self.config.dims]
        grid = "b c " + " ".join(f"({a} p{i})" for i, a in enumerate(axes))
        tokens = f"b ({' '.join(axes)}) ({' '.join(f'p{i}' for i in range(len(axes)))} c)"
        return grid, tokens, {f"p{i}": p for i, p in enumerate(self.config.patch)}

    def pool(self, tokens: torch.Tensor, x) -> torch.Tensor:
        if not self.config.keep_last_axis:
            return tokens.mean(1)
        image, _ = self.split(x)
        if image.shape[-1] != self.config.size[-1]:
            raise ValueError(f"keep_last_axis features need the last axis at {self.config.size[-1]}, got {image.shape}")
        B, _, D = tokens.shape
        return tokens.reshape(B, -1, self.config.size[-1] // self.config.patch[-1], D).mean(1).flatten(1)

    def pooled_dim(self, dim: int) -> int:
        return dim * (self.config.size[-1] // self.config.patch[-1] if self.config.keep_last_axis else 1)

    def patchify(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, N, prod(patch) * C); a slice is repeated through the patch depth."""
        if self.is_slice(image):
            image = image.expand(*image.shape[:-1], self.config.patch[-1])
        grid, tokens, patch = self._pattern()
        return rearrange(image, f"{grid} -> {tokens}", **patch)

    def targets(self, x, valid: torch.Tensor | None = None) -> Targets:
        image, _ = self.split(x)
        values = self.patchify(self.normalize(image))
        if valid is None:
            return Targets(values, None)
        valid = valid.to(values.dtype).reshape(*valid.shape[:2], *image.shape[2:])
        return Targets(values, self.patchify(valid.expand(-1, self.config.channels, *image.shape[2:])))

    def unpatchify(self, values: torch.Tensor, like=None) -> torch.Tensor:
        """(B, N, prod(patch) * C) -> normalised (B, C, *spatial) of the size of ``like`` (inputs,
        or a spatial size; default: the config's size). Slices average the patch depth away."""
        image = like["image"] if isinstance(like, dict) else like
        size = tuple(image.shape[2:]) if isinstance(image, torch.Tensor) else tuple(like or self.config.size)
        grid, tokens, patch = self._pattern()
        full = size if len(size) == self.config.dims else (*size, self.config.patch[-1])
        counts = {a: s // p for a, s, p in zip(AXES, full, self.config.patch, strict=False)}
        out = rearrange(values, f"{tokens} -> {grid}", **patch, **counts)
        return out if len(size) == self.config.dims else out.mean(-1)

    def baselines(self, target, weights=None, norm_target: bool = False) -> dict[str, torch.Tensor]:
        """``dataset_mean``: every element at the normalisation mean (zero in normalised units);
        ``patch_mean``: each patch flat at its own true mean (an oracle of brightness; zero, like
        dataset_mean, in per-patch normalised units)."""
        zero = torch.zeros_like(target)
        _, mean, _ = normalize_target(target, weights)  # (B, M, 1)
        return {"dataset_mean": zero, "patch_mean": zero if norm_target else mean.expand_as(target)}
