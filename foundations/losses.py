"""Reconstruction losses on predicted tokens (the core computes them on hidden tokens only)."""

from __future__ import annotations

import torch


def normalize_target(target: torch.Tensor, weights: torch.Tensor | None = None, eps: float = 1e-6, dim: int = -1):
    """Per-token normalisation of MAE's norm_pix_loss: (B, M, P) -> (normalised, mean, std), the
    statistics taken over ``dim`` (kept as 1), the variance unbiased as in MAE's code.

    With ``weights``, mean and variance are taken over the weighted elements only, so pixels
    outside an ultrasound sector do not shift the statistics of a patch on its border.
    """
    if weights is None:
        mean = target.mean(dim=dim, keepdim=True)
        var = target.var(dim=dim, keepdim=True)
    else:
        w_sum = weights.sum(dim=dim, keepdim=True).clamp_min(1e-6)
        mean = (weights * target).sum(dim=dim, keepdim=True) / w_sum
        var = (weights * (target - mean) ** 2).sum(dim=dim, keepdim=True) / (w_sum - 1).clamp_min(1e-6)
    std = (var + eps).sqrt()
    return (target - mean) / std, mean, std


def masked_mse(pred, target, weights=None) -> torch.Tensor:
    """Mean squared error over the predicted tokens, honouring per-element weights.

    pred, target, weights: (B, M, P). Returns the mean over every element; with weights, the mean
    over samples of each sample's weighted mean, so that a batch split over processes (each taking
    its half's loss, the gradients averaged) gives the loss of the whole batch. Targets come
    normalised as the adapter normalises them (``Adapter.normalize_target``).
    """
    err = (pred.float() - target.float()) ** 2
    if weights is None:
        return err.mean()
    return ((err * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1.0)).mean()
