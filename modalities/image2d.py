"""2-D images of any channel count and any size divisible by the patch (ViT patching).

Tokens are non-overlapping ``ph x pw`` patches embedded by a strided convolution; coordinates are
the (row, col) patch indices, so non-square inputs and new resolutions need no interpolation.
Inputs are normalised with the config's per-channel mean and std before patching, so the
targets are normalised pixels too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from foundations.adapter import Adapter, Targets, Tokens


@dataclass(frozen=True)
class Image2DConfig:
    channels: int = 1
    patch: tuple[int, int] = (16, 16)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    image_size: tuple[int, int] = (128, 128)  # size it was trained at; any multiple of patch works

    def __post_init__(self):
        object.__setattr__(self, "patch", tuple(self.patch))
        object.__setattr__(self, "image_size", tuple(self.image_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels < 1:
            raise ValueError(f"Image2DConfig.channels must be >= 1, got {self.channels}")
        if len(self.patch) != 2 or min(self.patch) < 1:
            raise ValueError(f"Image2DConfig.patch must be two positive ints, got {self.patch}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.channels:
                raise ValueError(f"Image2DConfig.{name} needs {self.channels} values, got {getattr(self, name)}")
        if min(self.std) <= 0:
            raise ValueError(f"Image2DConfig.std must be positive, got {self.std}")


class Image2DAdapter(Adapter):
    name = "image2d"
    coord_dim = 2
    pos_embed = "sincos"

    def __init__(self, config: Image2DConfig, dim: int):
        super().__init__(config, dim)
        ph, pw = config.patch
        self.target_dim = ph * pw * config.channels
        self.proj = nn.Conv2d(config.channels, dim, kernel_size=(ph, pw), stride=(ph, pw))
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))  # as a linear layer (MAE)
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1), persistent=False)
        self._grid_cache: dict = {}

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.channels:
            raise ValueError(f"expected images (B, {self.config.channels}, H, W), got {tuple(x.shape)}")
        (ph, pw), (H, W) = self.config.patch, x.shape[-2:]
        if H % ph or W % pw:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch {ph}x{pw}")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def grid(self, h: int, w: int, device) -> torch.Tensor:
        """(h*w, 2) float (row, col) patch indices in token order."""
        key = (h, w, str(device))
        if key not in self._grid_cache:
            rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            self._grid_cache[key] = torch.stack([rows, cols], dim=-1).flatten(0, 1).float()
        return self._grid_cache[key]

    def embed(self, x: torch.Tensor) -> Tokens:
        self._check(x)
        t = self.proj(self.normalize(x))  # (B, D, h, w)
        B, _, h, w = t.shape
        return Tokens(t.flatten(2).transpose(1, 2), self.grid(h, w, x.device).expand(B, -1, -1))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, h*w, ph*pw*C)."""
        ph, pw = self.config.patch
        return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=ph, q=pw)

    def targets(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> Targets:
        self._check(x)
        values = self.patchify(self.normalize(x))
        if valid is None:
            return Targets(values, None)
        valid = valid.to(values.dtype).expand(-1, self.config.channels, -1, -1)  # (B, C, H, W)
        return Targets(values, self.patchify(valid))

    def unpatchify(self, values: torch.Tensor, like=None) -> torch.Tensor:
        """(B, h*w, ph*pw*C) -> normalised images (B, C, H, W) of the size of ``like`` (images or an
        (H, W) tuple; default: the config's image_size)."""
        (ph, pw) = self.config.patch
        H, W = like.shape[-2:] if isinstance(like, torch.Tensor) else like or self.config.image_size
        return rearrange(values, "b (h w) (p q c) -> b c (h p) (w q)", h=H // ph, w=W // pw, p=ph, q=pw)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)

    def baselines(self, target, weights=None, norm_target: bool = False) -> dict[str, torch.Tensor]:
        """``dataset_mean``: every pixel at the dataset mean (zero after normalisation);
        ``patch_mean``: each patch flat at its own true mean (an oracle of brightness; zero, like
        dataset_mean, in per-patch normalised units)."""
        from foundations.losses import normalize_target

        zero = torch.zeros_like(target)
        _, mean, _ = normalize_target(target, weights)  # (B, M, 1)
        return {"dataset_mean": zero, "patch_mean": zero if norm_target else mean.expand_as(target)}


@torch.no_grad()
def reconstruction_grid(mae, x: torch.Tensor, valid: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Rows input / masked input / reconstruction (visible patches pasted back), as MAE's figures.

    x: (B, C, H, W) -> (3*H, B*W) or (3*H, B*W, C) float in [0, 1] for an image file.
    """
    rows = [mae.adapter.denormalize(r).clamp(0, 1) for r in mae.reconstruct(x, valid, seed)]
    if valid is not None:  # outside the valid region nothing is trained: show the input there
        rows[2] = torch.where(valid.bool(), rows[2], rows[0])
    grid = torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)  # (C, 3H, B*W)
    return grid[0] if grid.shape[0] == 1 else grid[:3].permute(1, 2, 0)
