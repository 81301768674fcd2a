"""Heads for downstream use of a pretrained encoder.

- ``LinearProbeHead``: BatchNorm without affine parameters before the linear layer, as MAE's
  linear probing protocol (He et al. 2022, appendix A.2) prescribes to normalise frozen features.
  Fine-tuning uses it too, fitted first as a probe (LP-FT). MAE's fine-tuning head is a LayerNorm
  (fc_norm) instead; a LayerNorm normalises each item across its features, and pooled MAE features
  that differ little between items (point clouds: 0.24% of their variance after LayerNorm lies
  between items) leave a LayerNorm head nearly constant, while BatchNorm standardises each feature
  across items, as Point-MAE's fine-tuning head (BatchNorm1d) does.
- ``Classifier``: encoder + head + label-smoothed cross-entropy (class indices or class
  probabilities, e.g. mixed by mixup), or binary cross-entropy per class for multi-label tasks.
- ``layer_decay_groups``: layer-wise lr decay (Clark et al. 2020, BEiT, MAE fine-tuning).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class LinearProbeHead(nn.Module):
    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, n_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, classes)
        return self.fc(self.bn(features))


class ClassifierOutput(NamedTuple):
    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, classes)


class Classifier(nn.Module):
    """Encoder (any modality) + head. ``encoder=None`` trains the head on precomputed features."""

    def __init__(
        self,
        encoder: nn.Module | None,
        head: nn.Module,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        multi_label: bool = False,
    ):
        super().__init__()
        self.encoder, self.head, self.label_smoothing, self.multi_label = encoder, head, label_smoothing, multi_label
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, x, y: torch.Tensor | None = None) -> ClassifierOutput:
        """y: (B,) class indices, (B, classes) class probabilities, or (B, classes) 0/1 targets of a
        multi-label task."""
        features = self.encoder(x).features if self.encoder is not None else x
        logits = self.head(features)
        loss = None
        if y is not None and self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
        elif y is not None:
            loss = F.cross_entropy(logits, y, weight=self.class_weights, label_smoothing=self.label_smoothing)
        return ClassifierOutput(loss, logits)


def layer_id(name: str, depth: int) -> int:
    """0 for the adapter, positions and cls token; i + 1 for block i; depth + 1 for the rest."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("adapter.", "pos_embed.", "cls_token")):
        return 0
    return depth + 1


def layer_decay_groups(model: Classifier, weight_decay: float, decay: float) -> list[dict]:
    """Parameter groups with ``lr_scale = decay ** (depth + 1 - layer_id)`` and no decay on 1-D params."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name.removeprefix("encoder."), depth) if name.startswith("encoder.") else depth + 1
        no_wd = p.ndim <= 1 or name.endswith("token")
        group = groups.setdefault(
            (lid, no_wd),
            {"params": [], "weight_decay": 0.0 if no_wd else weight_decay, "lr_scale": decay ** (depth + 1 - lid)},
        )
        group["params"].append(p)
    return list(groups.values())
