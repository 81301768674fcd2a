"""Positional embeddings computed from token coordinates.

Tokens carry their N-D positions ``coords: (B, N, k)`` (grid indices, millimetres or point
centres), so the embedding is a function of the coordinates rather than a lookup table: any
resolution, aspect ratio or irregular token set works without interpolating a position table.

- ``sincos_embed``: the fixed sin-cos embedding of MAE (He et al. 2022, after Vaswani et al. 2017)
  generalised from 2-D to k-D by giving each axis an equal share of the channels.
- ``LearnedPosEmbed``: a small MLP on the coordinates, as Point-MAE (Pang et al. 2022) uses for
  continuous group centres.
- ``TablePosEmbed``: the position table of an encoder imported from elsewhere (timm, MAE, Hugging
  Face, VideoMAE, AudioMAE), kept as it was trained and looked up by grid index.
- ``sinusoid_table``: VideoMAE's fixed table, a 1-D sinusoid over the flattened token index.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """VideoMAE's table (Tong et al. 2022, after Vaswani et al. 2017): row ``i`` of (n, dim) holds
    sin on even and cos on odd channels of ``i / 10000 ** (2 * (c // 2) / dim)``, where ``i`` is the
    token's index in the flattened (t, y, x) grid. Computed in float64 as its numpy original."""
    c = torch.arange(dim, dtype=torch.float64)
    angles = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** (2 * (c // 2) / dim)  # (n, dim)
    return torch.where(c % 2 == 0, angles.sin(), angles.cos()).float()


RESIZE = ("bicubic", "bicubic-antialias", "sinusoid")


class TablePosEmbed(nn.Module):
    """A table of one embedding per position of ``grid`` (rows in row-major order), looked up by
    the tokens' grid indices: (B, N, k) -> (B, N, dim). The grid of an input is read from its
    tokens' coordinates, which must therefore be all of them (``PosEmbed`` keeps the visible ones
    after the lookup). Another grid gets the table as its source would (``resize``):
      "bicubic"            a 2-D table resized as a (dim, *grid) image, as MAE's
                           ``interpolate_pos_embed`` and Hugging Face's ``interpolate_pos_encoding``;
      "bicubic-antialias"  the same with antialiasing, as timm's ``resample_abs_pos_embed`` (PyTorch's
                           antialiased bicubic is another kernel, a = -0.5 against -0.75, even when
                           enlarging);
      "sinusoid"           VideoMAE's table computed again for the new grid's flattened index."""

    def __init__(self, grid, dim: int, resize: str = "bicubic"):
        super().__init__()
        if resize not in RESIZE:
            raise ValueError(f"a position table's resize must be one of {RESIZE}, got {resize!r}")
        self.grid, self.resize = tuple(int(g) for g in grid), resize
        self.register_buffer("table", torch.zeros(math.prod(self.grid), dim))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        grid = tuple(int(g) + 1 for g in coords.detach().amax(dim=(0, 1)))
        if math.prod(grid) != coords.shape[1]:
            raise ValueError(f"a position table needs every token of the grid: {coords.shape[1]} tokens in {grid}")
        table = self.table if grid == self.grid else self.resized(grid)
        strides = torch.tensor([math.prod(grid[i + 1 :]) for i in range(len(grid))], device=coords.device)
        return table[(coords.long() * strides).sum(-1)]  # (B, N, dim)

    def resized(self, grid: tuple[int, ...]) -> torch.Tensor:
        if self.resize == "sinusoid":
            return sinusoid_table(math.prod(grid), self.table.shape[1]).to(self.table)
        if len(grid) != 2:
            raise ValueError(f"a position table over {self.grid} cannot be resized to {grid} (2-D grids only)")
        image = self.table.T.reshape(1, -1, *self.grid)  # (1, dim, *grid)
        antialias = self.resize == "bicubic-antialias"
        image = F.interpolate(image, size=grid, mode="bicubic", align_corners=False, antialias=antialias)
        return image.reshape(image.shape[1], -1).T  # (prod(grid), dim)


class PosEmbed(nn.Module):
    """The positional embedding named by ``kind``: "sincos" (fixed), "mlp" (learned) or "table"
    (an imported table over ``grid``, meeting other grids as ``resize`` says)."""

    def __init__(self, kind: str, coord_dim: int, dim: int, grid=None, resize: str = "bicubic"):
        super().__init__()
        if kind not in ("sincos", "mlp", "table"):
            raise ValueError(f"pos_embed must be 'sincos', 'mlp' or 'table', got {kind!r}")
        if (kind == "table") != (grid is not None):
            raise ValueError("pos_embed 'table' needs its grid, and only it takes one")
        self.kind, self.dim = kind, dim
        self.mlp = LearnedPosEmbed(coord_dim, dim) if kind == "mlp" else None
        self.table = TablePosEmbed(grid, dim, resize) if kind == "table" else None

    def forward(self, coords: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """coords of every token (B, N, k), ``ids`` (B, M) the tokens wanted (default: all) ->
        (B, M, dim). A table reads the grid from all the coordinates, so it embeds them all and
        keeps those wanted; the others embed only the tokens wanted."""
        if self.table is not None:
            return _take(self.table(coords), ids)
        coords = _take(coords, ids)
        return self.mlp(coords) if self.mlp is not None else sincos_embed(coords, self.dim)


def _take(x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """x (B, N, C), ids (B, M) -> (B, M, C); x itself without ids."""
    return x if ids is None else x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
