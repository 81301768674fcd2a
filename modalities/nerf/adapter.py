"""Radiance grids (NeRF-MAE, Irshad et al., ECCV 2024): RGB + opacity grids sampled from a radiance
field, through the grid adapter with three spatial axes.

A grid is ``{"image": (B, 4, X, Y, Z), "spacing": (B, 3)}``: colour in [0, 1] and opacity
``alpha = 1 - exp(-sigma * voxel)`` (the density over one voxel's length, as NeRF-MAE turns
density into opacity; ``modalities.nerf.data.opacity``), the voxel size in world units. Tokens are
``p^3`` patches whose coordinates are patch centres in world units, so grids of different extent
share one positional frame. Grids padded to the patch multiple carry ``valid`` = 0 there.

The loss follows NeRF-MAE's two terms on the hidden voxels: colour MSE where the voxel is occupied
(alpha > ``occupied``; empty space has no colour to learn) and opacity MSE everywhere but padding,
each with its weight. Here both are per-element weights of one weighted mean (``masked_mse``), so
the core's loss needs no special case. NeRF-MAE runs the whole grid through a 3-D Swin with mask
tokens; this encoder sees the visible tokens only, as MAE does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foundations.adapter import ModelDefaults, Targets
from foundations.grid import GridAdapter, GridConfig
from foundations.masking import MaskConfig


@dataclass(frozen=True)
class NerfConfig(GridConfig):
    channels: int = 4  # r, g, b, alpha
    patch: tuple[int, ...] = (4, 4, 4)
    size: tuple[int, ...] = (32, 32, 32)
    coords: str = "spacing"  # patch centres in world units
    occupied: float = 0.01  # alpha above which a voxel's colour is learned (NeRF-MAE's threshold)
    colour_weight: float = 1.0
    opacity_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.channels != 4 or len(self.patch) != 3:
            raise ValueError(
                f"NerfConfig needs 4 channels (rgb, alpha) and 3-D patches, got {self.channels}, {self.patch}"
            )
        if not 0 <= self.occupied < 1 or min(self.colour_weight, self.opacity_weight) < 0:
            raise ValueError(
                f"NerfConfig.occupied must be in [0, 1) and the weights >= 0, got {self.occupied}, "
                f"{self.colour_weight}, {self.opacity_weight}"
            )


class NerfAdapter(GridAdapter):
    name = "nerf"
    dims = 3
    # NeRF-MAE hides 75 % of the patches in windows of neighbouring ones; ``block`` hides blobs
    # of about 4^3 = 64 tokens around random seeds. Values are in [0, 1]: no per-patch norm.
    defaults = ModelDefaults(MaskConfig("block", 0.75, block_tokens=64), norm_target=False)

    def targets(self, x, valid: torch.Tensor | None = None) -> Targets:
        """Values as the grid adapter gives them; weights per element: the colour channels
        ``colour_weight`` where occupied, alpha ``opacity_weight``, both 0 on padding."""
        image, _ = self.split(x)
        cfg = self.config
        occupied = (image[:, 3:] > cfg.occupied).to(image.dtype)  # (B, 1, X, Y, Z)
        keep = torch.ones_like(occupied) if valid is None else valid.to(image.dtype).reshape(occupied.shape)
        weights = torch.cat(
            [(occupied * keep * cfg.colour_weight).expand(-1, 3, -1, -1, -1), keep * cfg.opacity_weight], 1
        )
        return Targets(self.patchify(self.normalize(image)), self.patchify(weights))
