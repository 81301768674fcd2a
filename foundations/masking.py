"""Masking strategies over token sets.

The one mask convention of the project, used everywhere:

    mask: (B, N) bool, True = hidden (the encoder never sees it), False = visible.

Every strategy hides the same exact count of tokens in every sample, so visible tokens gather
into a dense (B, N_vis, D) tensor with no padding. A strategy turns per-token scores into a
mask: the ``n_hide`` lowest scores are hidden.

- random: i.i.d. uniform scores, as in MAE (He et al. 2022).
- block: tokens near a few random seed tokens (distance in coordinate space), which hides
  spatially contiguous blobs as in GMML (Atito et al. 2021) and Point-MAE's block masking; it works
  on grids and on irregular token sets (point-group centres) alike.
- tube: one random score per tube, shared along ``axis``, as in VideoMAE (Tong et al. 2022).

What the decoder reconstructs (``decode``): every hidden token (MAE), or with "running_cell" the
half of them that VideoMAE V2's dual masking picks (Wang et al. 2023): in every 2x2 cell of the
two axes other than ``tube_axis``, two positions of four (in raster order, rolled by one per step
along ``tube_axis``), so each tube is reconstructed at two steps of every four and the decoder does
about half the work. ``predict_ratio`` narrows that to a random subset, a fraction of all tokens
(CrossMAE's ``kept_mask_ratio``: 0.25 predicts 49 of 196 tokens, where 0.75 are hidden).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class MaskConfig:
    strategy: str = "random"  # random | block | tube
    ratio: float = 0.75
    block_tokens: int = 16  # block: mean tokens per block (seeds = n_hide / block_tokens)
    tube_axis: int = 0  # tube: coordinate axis that tubes run along
    decode: str = "hidden"  # hidden | running_cell: which hidden tokens the decoder reconstructs
    predict_ratio: float | None = None  # reconstruct a random subset of those, this fraction of all tokens

    def __post_init__(self):
        if self.strategy not in ("random", "block", "tube"):
            raise ValueError(f"MaskConfig.strategy must be random|block|tube, got {self.strategy!r}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"MaskConfig.ratio must be in (0, 1), got {self.ratio}")
        if self.decode not in ("hidden", "running_cell"):
            raise ValueError(f"MaskConfig.decode must be hidden|running_cell, got {self.decode!r}")
        if self.block_tokens < 1:
            raise ValueError(f"MaskConfig.block_tokens must be >= 1, got {self.block_tokens}")
        if self.predict_ratio is not None and not 0.0 < self.predict_ratio <= self.ratio:
            raise ValueError(f"MaskConfig.predict_ratio must be in (0, ratio={self.ratio}], got {self.predict_ratio}")


class MaskPlan(NamedTuple):
    mask: torch.Tensor  # (B, N) bool, True = hidden
    ids_keep: torch.Tensor  # (B, N_vis) long, indices of visible tokens
    ids_hide: torch.Tensor  # (B, N_hide) long, indices of hidden tokens
    ids_pred: torch.Tensor | None = None  # (B, M) long, the hidden tokens to reconstruct; None: all


def sample_generators(keys: torch.Tensor) -> list[torch.Generator]:
    """keys: (B,) ints -> one CPU generator per sample. Masks drawn from these depend on the sample
    alone: not on its batch, its process or the device, so a run split over two processes, or
    resumed half-way, hides the same tokens as one uninterrupted process."""
    return [torch.Generator().manual_seed(int(k) ^ 0x6D61736B) for k in keys.tolist()]  # "mask"


def _rand(shape, device, generator) -> torch.Tensor:
    """Uniform draws of ``shape`` (B, ...) from ``generator``: one torch.Generator (or None, the
    global one), or a list of B generators, one per row."""
    if isinstance(generator, list):
        return torch.stack([torch.rand(shape[1:], generator=g) for g in generator]).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def plan_from_scores(scores: torch.Tensor, n_hide: int) -> MaskPlan:
    """scores: (B, N); the ``n_hide`` lowest scores in each row are hidden."""
    B, N = scores.shape
    if not 0 < n_hide < N:
        raise ValueError(f"must hide between 1 and {N - 1} of {N} tokens, got {n_hide}")
    order = scores.argsort(dim=1)  # (B, N)
    ids_hide, ids_keep = order[:, :n_hide], order[:, n_hide:]
    mask = torch.zeros(B, N, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, ids_hide, True)
    return MaskPlan(mask, ids_keep, ids_hide)


def hidden_count(n_tokens: int, ratio: float) -> int:
    return min(max(int(round(n_tokens * ratio)), 1), n_tokens - 1)


def random_masking(coords: torch.Tensor, ratio: float, generator=None) -> MaskPlan:
    B, N, _ = coords.shape
    return plan_from_scores(_rand((B, N), coords.device, generator), hidden_count(N, ratio))


def block_masking(coords: torch.Tensor, ratio: float, block_tokens: int, generator=None) -> MaskPlan:
    B, N, _ = coords.shape
    n_hide = hidden_count(N, ratio)
    n_seeds = max(1, round(n_hide / block_tokens))
    seeds = (_rand((B, n_seeds), coords.device, generator) * N).long().clamp_max(N - 1)  # (B, S)
    seed_xyz = coords.gather(1, seeds[..., None].expand(-1, -1, coords.shape[-1]))  # (B, S, k)
    dist = torch.cdist(coords.float(), seed_xyz.float()).amin(dim=2)  # (B, N)
    jitter = _rand((B, N), coords.device, generator) * 1e-3  # random order among equal distances
    return plan_from_scores(dist + jitter, n_hide)


def tube_masking(coords: torch.Tensor, ratio: float, axis: int, generator=None) -> MaskPlan:
    """Tokens that share every coordinate but ``axis`` form a tube and share one score.

    Tubes must all have the same length (a full grid) for the hidden count to be exact.
    """
    B, N, k = coords.shape
    others = [a for a in range(k) if a != axis % k]
    scores = torch.empty(B, N, device=coords.device)
    n_hide = None
    for b in range(B):
        _, tube_id = torch.unique(coords[b][:, others], dim=0, return_inverse=True)  # (N,)
        n_tubes = int(tube_id.max()) + 1
        if N % n_tubes:
            raise ValueError(f"tube masking needs equal-length tubes: {N} tokens in {n_tubes} tubes")
        row = generator[b : b + 1] if isinstance(generator, list) else generator
        scores[b] = _rand((1, n_tubes), coords.device, row)[0, tube_id]
        n_hide = hidden_count(n_tubes, ratio) * (N // n_tubes)
    return plan_from_scores(scores, n_hide)


def running_cell(coords: torch.Tensor, plan: MaskPlan, axis: int, generator=None) -> torch.Tensor:
    """-> ids_pred (B, n_hide // 2): the hidden tokens on VideoMAE V2's running cell (one random
    phase per sample), topped up with other hidden tokens where a grid's edges leave fewer, so
    that every sample reconstructs the same count. coords: (B, N, k) grid indices."""
    B, N, k = coords.shape
    y, x = (coords[..., a].long() for a in range(k) if a != axis % k)  # the two axes across the tube
    t = coords[..., axis % k].long()
    phase = (_rand((B, 1), coords.device, generator) * 4).long()  # (B, 1)
    on = ((y % 2) * 2 + x % 2 - t - phase) % 4 < 2  # (B, N): V2's cell (1, 1, 0, 0), rolled each step
    hidden_on = on.gather(1, plan.ids_hide)  # (B, N_hide)
    # on-cell hidden tokens first (random order within each group keeps the top-up unbiased)
    score = hidden_on.float() + _rand(tuple(hidden_on.shape), coords.device, generator) * 0.5
    order = score.argsort(dim=1, descending=True)[:, : plan.ids_hide.shape[1] // 2]
    return plan.ids_hide.gather(1, order)


def make_mask(cfg: MaskConfig, coords: torch.Tensor, generator=None) -> MaskPlan:
    """coords: (B, N, k) -> MaskPlan with an exact hidden count per sample."""
    if cfg.strategy == "random":
        plan = random_masking(coords, cfg.ratio, generator)
    elif cfg.strategy == "block":
        plan = block_masking(coords, cfg.ratio, cfg.block_tokens, generator)
    else:
        plan = tube_masking(coords, cfg.ratio, cfg.tube_axis, generator)
    if cfg.decode == "running_cell":
        plan = plan._replace(ids_pred=running_cell(coords, plan, cfg.tube_axis, generator))
    if cfg.predict_ratio is not None:
        candidates = plan.ids_hide if plan.ids_pred is None else plan.ids_pred  # (B, C)
        m = min(max(1, round(coords.shape[1] * cfg.predict_ratio)), candidates.shape[1])
        order = _rand(tuple(candidates.shape), coords.device, generator).argsort(dim=1)[:, :m]
        plan = plan._replace(ids_pred=candidates.gather(1, order))  # (B, m)
    return plan
