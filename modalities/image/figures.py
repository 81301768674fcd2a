"""Pictures of 2-D reconstructions."""

from __future__ import annotations

import torch


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
