"""Positional embeddings computed from token coordinates.

Tokens carry their N-D positions ``coords: (B, N, k)`` (grid indices, millimetres or point
centres), so the embedding is a function of the coordinates rather than a lookup table: any
resolution, aspect ratio or irregular token set works without interpolating a position table.

- ``sincos_embed``: the fixed sin-cos embedding of MAE (He et al. 2022, after Vaswani et al. 2017)
  generalised from 2-D to k-D by giving each axis an equal share of the channels.
- ``LearnedPosEmbed``: a small MLP on the coordinates, as Point-MAE (Pang et al. 2022) uses for
  continuous group centres.
"""

from __future__ import annotations

import torch
from torch import nn


def sincos_embed(coords: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """coords: (B, N, k) float -> (B, N, dim).

    Each axis gets ``2 * (dim // (2k))`` channels (sin and cos of ``dim // (2k)`` frequencies);
    channels left over when ``dim`` is not a multiple of ``2k`` are zero.
    """
    k = coords.shape[-1]
    n_freq = dim // (2 * k)
    if n_freq == 0:
        raise ValueError(f"embedding dim {dim} is too small for {k}-D coordinates (needs >= {2 * k})")
    omega = torch.arange(n_freq, device=coords.device, dtype=torch.float32) / n_freq
    omega = temperature**-omega  # (F,)
    angles = coords.float().unsqueeze(-1) * omega  # (B, N, k, F)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (B, N, k*2F)
    pad = dim - emb.shape[-1]
    if pad:
        emb = nn.functional.pad(emb, (0, pad))
    return emb


class LearnedPosEmbed(nn.Module):
    """MLP from k-D continuous coordinates to ``dim`` channels: (B, N, k) -> (B, N, dim)."""

    def __init__(self, coord_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(coord_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.mlp(coords.float())


class PosEmbed(nn.Module):
    """The positional embedding named by ``kind``: "sincos" (fixed) or "mlp" (learned)."""

    def __init__(self, kind: str, coord_dim: int, dim: int):
        super().__init__()
        if kind not in ("sincos", "mlp"):
            raise ValueError(f"pos_embed must be 'sincos' or 'mlp', got {kind!r}")
        self.kind, self.dim = kind, dim
        self.mlp = LearnedPosEmbed(coord_dim, dim) if kind == "mlp" else None

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        if self.mlp is not None:
            return self.mlp(coords)
        return sincos_embed(coords, self.dim)
