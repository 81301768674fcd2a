"""3-D medical volumes (CT, MRI) and their 2-D slices through one shared encoder: the grid adapter
with three spatial axes, physical coordinates and the slice stem.

Tokens are non-overlapping ``p0 x p1 x p2`` patches (anisotropic allowed, e.g. 16x16x4 for thick
slices). Coordinates are patch centres in millimetres, ``(index + 0.5) * patch * spacing``, so
volumes of different voxel spacing share one positional frame. A batch is ``{"image": (B, C, X,
Y, Z), "spacing": (B, 3)}`` in array axis order (RAS after ``Orientationd``); a 2-D batch
``{"image": (B, C, X, Y), ...}`` is a one-slice volume (see ``foundations.grid``). Intensities
are normalised by the MONAI pipeline, so the adapter's mean and std stay 0 and 1.
"""

from __future__ import annotations

import dataclasses

import torch

from foundations.adapter import ModelDefaults
from foundations.grid import GridAdapter, GridConfig
from foundations.losses import normalize_target
from foundations.masking import MaskConfig


def volume_config(channels: int, patch, roi) -> GridConfig:
    return GridConfig(channels, tuple(patch), tuple(roi), coords="spacing", slices=True)


class VolumeAdapter(GridAdapter):
    name = "volume"
    dims = 3
    # intensities are normalised by the pipeline; per-patch normalised targets are mostly noise
    defaults = ModelDefaults(MaskConfig("random", 0.75), norm_target=False)

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        if version < 2:  # format 1: VolumeConfig(channels, patch, roi)
            return dataclasses.asdict(volume_config(fields["channels"], fields["patch"], fields["roi"]))
        return fields

    def baselines(self, target, weights=None, norm_target: bool = False) -> dict[str, torch.Tensor]:
        """``batch_mean``: every voxel at the mean of the hidden voxels (zero in per-patch
        normalised units); ``patch_mean``: each patch flat at its own true mean (an oracle)."""
        zero = torch.zeros_like(target)
        if norm_target:
            return {"batch_mean": zero, "patch_mean": zero}
        _, mean, _ = normalize_target(target, weights)  # (B, M, 1)
        return {"batch_mean": zero + target.mean(), "patch_mean": mean.expand_as(target)}
