"""Data-free block pruning of a pretrained encoder: Gardener (Xiang, Wu and Bai 2026, "Entropy Reveals
Block Importance in Masked Self-Supervised Vision Transformers", arXiv:2602.03918).

The paper finds that the information entropy of a block's pretrained weights tracks how much the
block matters downstream (its sensitivity under removal and fine-tuning), so a pretrained MAE can be
pruned in one shot without data: score every block by the Shannon entropy of the values of its weight
matrices (qkv, attention projection, fc1, fc2), remove the lowest-scoring blocks, keep the rest as
they are. A removed pre-norm block leaves its residual stream untouched, so nothing is re-initialised:
the tokens simply pass on to the next kept block. The L1 norm and the variance of the same weights
are the data-free baselines; ``random_blocks`` the random one. ``encoder_cost`` says what is saved.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence

import torch

from foundations.vit import Block, Encoder, EncoderConfig

METHODS = ("entropy", "l1", "variance")
BINNINGS = ("float16", "histogram")


def block_matrices(block: Block) -> list[torch.Tensor]:
    """The four weight matrices of a block: qkv (3D, D), attention projection (D, D), fc1 (H, D),
    fc2 (D, H); biases, norms and LayerScale are left out, as in the paper."""
    return [block.attn.qkv.weight, block.attn.proj.weight, block.mlp.fc1.weight, block.mlp.fc2.weight]


def _entropy(counts: torch.Tensor) -> float:
    """Shannon entropy in bits of the distribution given by ``counts``."""
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def weight_entropy(tensors: Iterable[torch.Tensor], binning: str = "float16", bins: int = 4096) -> float:
    """Shannon entropy (bits) of the distribution of the values of all ``tensors`` together.

    The binning is explicit because entropy needs a discrete distribution. The reference
    implementation counts the distinct values as stored; that measures something only because its
    checkpoint was stored at fp16-like precision, where many weights share a value. On float32 weights
    almost every value is distinct, and the count-based entropy is just log2(number of values), the
    same for every block of a width. ``"float16"`` therefore casts to float16 first and counts its
    distinct values (p_i = count_i / total, H = -sum p_i log2 p_i); ``"histogram"`` counts the values
    in ``bins`` equal-width bins between their min and max.
    """
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")
    values = torch.cat([t.detach().reshape(-1) for t in tensors])  # (total,)
    if values.numel() == 0:
        raise ValueError("weight_entropy needs at least one value")
    if binning == "float16":
        counts = torch.unique(values.half(), return_counts=True)[1]
    else:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        values = values.double()
        lo, hi = values.min(), values.max()
        if lo == hi:  # one value: one bin (histc would widen an empty range)
            return 0.0
        index = ((values - lo) / (hi - lo) * bins).long().clamp_(max=bins - 1)  # the max joins the last bin
        counts = torch.bincount(index, minlength=bins)
    return _entropy(counts)


@torch.no_grad()
def block_scores(encoder: Encoder, method: str = "entropy", binning: str = "float16", bins: int = 4096) -> torch.Tensor:
    """Importance of each block, higher = more important -> (depth,) float64. ``entropy``: the
    ``weight_entropy`` of its four matrices; ``l1``: the mean absolute value of their entries;
    ``variance``: the (unbiased) variance of their entries."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    scores = []
    for block in encoder.blocks:
        matrices = block_matrices(block)
        if method == "entropy":
            scores.append(weight_entropy(matrices, binning, bins))
            continue
        values = torch.cat([m.detach().reshape(-1) for m in matrices]).double()  # (total,)
        scores.append(float(values.abs().mean() if method == "l1" else values.var()))
    return torch.tensor(scores, dtype=torch.float64)


def choose_blocks(
    scores: torch.Tensor | Sequence[float], ratio: float | None = None, keep: int | None = None
) -> list[int]:
    """Indices (ascending) of the blocks to remove: the lowest-scoring ones, ties to the lower index.
    Give exactly one of ``ratio`` (a fraction in [0, 1); removes round(ratio * depth) blocks, rounding
    half to even as Python does) or ``keep`` (the number of blocks left, 0 <= keep <= depth)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one value per block, got shape {tuple(scores.shape)}")
    depth = len(scores)
    if (ratio is None) == (keep is None):
        raise ValueError("give exactly one of ratio and keep")
    if ratio is not None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        n = round(ratio * depth)
    else:
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= depth:
            raise ValueError(f"keep must be an integer in [0, {depth}] (the depth), got {keep!r}")
        n = depth - keep
    order = sorted(range(depth), key=lambda i: (scores[i].item(), i))
    return sorted(order[:n])


def random_blocks(depth: int, n: int, seed: int) -> list[int]:
    """``n`` of ``depth`` block indices drawn uniformly without replacement (ascending): the random baseline."""
    if not 0 <= n <= depth:
        raise ValueError(f"n must be in [0, {depth}] (the depth), got {n}")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(depth, generator=generator)[:n].tolist())


def remove_blocks(encoder: Encoder, indices: Iterable[int]) -> Encoder:
    """A new encoder without the blocks at ``indices`` (0-based); the original is left untouched and
    nothing is re-initialised: the residual stream passes where a block was. Its ``cfg.depth`` is the
    number of blocks left; removing them all leaves adapter, position embedding and final norm."""
    indices = list(indices)
    depth = len(encoder.blocks)
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth]
    if bad:
        raise ValueError(f"block indices must be integers in [0, {depth}), got {bad}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"block indices must not repeat, got {sorted(indices)}")
    drop = set(indices)
    pruned = copy.deepcopy(encoder)
    pruned.blocks = torch.nn.ModuleList(b for i, b in enumerate(pruned.blocks) if i not in drop)
    pruned.cfg = dataclasses.replace(encoder.cfg, depth=len(pruned.blocks))
    return pruned


def encoder_cost(cfg: EncoderConfig, n_tokens: int) -> dict:
    """Parameters and forward FLOPs of the ``cfg.depth`` blocks for one input of ``n_tokens`` tokens
    (those entering the blocks: visible patches, plus the cls token if any). A multiply-add is 2 FLOPs
    and only the matrix products count: qkv 2ND(3D), projection 2ND^2, attention scores and weighted
    sum 2(2N^2 D), MLP 2(2NDH) with H = int(mlp_ratio D). Both totals are depth times one block's,
    so ``encoder_cost(dataclasses.replace(cfg, depth=k), n)`` prices a pruned encoder."""
    N, D, H = n_tokens, cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    params = (3 * D * D + 3 * D) + (D * D + D) + (D * H + H) + (H * D + D)  # qkv, proj, fc1, fc2
    params += 2 * 2 * D + (2 * D if cfg.layer_scale else 0)  # two LayerNorms, two LayerScales
    flops = 2 * N * D * 3 * D + 2 * N * D * D + 2 * 2 * N * N * D + 2 * 2 * N * D * H
    return {"block_params": cfg.depth * params, "block_flops": cfg.depth * flops}
