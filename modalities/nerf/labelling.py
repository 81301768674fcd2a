"""Voxel semantic labelling of radiance grids with a pretrained encoder: NeRF-MAE's semantic voxel
labelling (Irshad et al., "NeRF-MAE", ECCV 2024: every voxel of a grid gets its object class, scored
by IoU per class and their mean), here with a light decoder on the encoder's tokens.

The decoder (``VoxelLabeller``): each final token -> LayerNorm -> Linear to the logits of the
object kinds of its p^3 voxels, put back in place by the adapter's ``unpatchify`` (the dense
counterpart of a linear probe: each token predicts its own voxels, as MAE's decoder predicts a
patch's pixels; Segmenter's linear decoder, Strudel et al., ICCV 2021, does the same per patch then
upsamples). Which voxels are empty is not learned: the grid says it, a voxel of alpha at or below the
adapter's ``occupied`` threshold is empty and every other voxel gets one of the kinds. Light on
purpose: a deep decoder that also reads the voxels (as UNETR's first skip does) can label them
without the encoder, and the point of the probe is what the tokens hold about which kind of object
a voxel belongs to. (A first version learned emptiness too, through a pointwise convolution over
the logits and the voxel: 200 probe steps left 3 % of the empty voxels wrong and the kinds barely
learned, for the pretrained and the random encoder alike.)

Loss: cross-entropy over the kinds on the valid occupied voxels that have one, with inverse-frequency
weights. Metrics on held-out grids: IoU per class (empty included), their mean over the object
classes with a non-empty union, beside two predictors that know no shapes: all empty, and every
occupied voxel labelled with the training split's most frequent kind.

The stages that train and score it in a run are ``tasks.voxel_labels.STAGES``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from foundations.metrics import confusion_matrix
from foundations.vit import Encoder
from modalities.common import DomainData
from modalities.nerf.data import composite

IGNORE = -100  # target of voxels without a loss: padding, empty, occupied but unlabelled
EMPTY_LOGIT = 1e4  # the empty class's logit where the grid is empty (its negative where occupied)
# one colour per voxel class of the pictures: empty white, then box, sphere, cylinder, cone, torus, ...
PALETTE = torch.tensor(
    [[255, 255, 255], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]]
)
PICTURES = 8  # held-out grids shown per stage
PROBE_LR = 0.1  # base lr of a labelling probe (x batch / 256), the linear probe's


class LabellerOutput(NamedTuple):
    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, classes, X, Y, Z)


class VoxelLabeller(nn.Module):
    """A radiance-grid encoder + a per-token linear decoder to the object kinds of its voxels; voxels
    the grid leaves empty are labelled empty (class 0). ``freeze`` trains the decoder alone (a
    labelling probe)."""

    def __init__(self, encoder: Encoder, classes: int, freeze: bool = False, class_weights: torch.Tensor | None = None):
        super().__init__()
        if classes < 2:
            raise ValueError(f"VoxelLabeller.classes must be >= 2 (empty and a kind), got {classes}")
        cfg = encoder.adapter.config
        self.encoder, self.classes, self.freeze = encoder, classes, freeze
        self.norm = nn.LayerNorm(encoder.cfg.dim, eps=1e-6)
        self.proj = nn.Linear(encoder.cfg.dim, math.prod(cfg.patch) * (classes - 1))
        self.register_buffer("class_weights", class_weights, persistent=False)
        if freeze:
            encoder.requires_grad_(False)

    def forward(
        self,
        x: dict,
        y: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ) -> LabellerOutput:
        """x: {"image": (B, 4, X, Y, Z), "spacing": (B, 3)}; y: (B, X, Y, Z) class indices; valid:
        (B, 1, X, Y, Z), 0 on padding (no loss there); tokens: (B, N, D), the frozen encoder's tokens
        of x when computed beforehand. Logits: class 0 (empty) is +-EMPTY_LOGIT by the voxel's alpha."""
        adapter = self.encoder.adapter
        if tokens is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
                tokens = self.encoder(x).tokens  # (B, N, D)
        patches = self.proj(self.norm(tokens))  # (B, N, p^3 kinds) in patchify's (p0 p1 p2 c) order
        kinds = adapter.unpatchify(patches, x)  # (B, classes - 1, X, Y, Z)
        occupied = adapter.split(x)[0][:, 3:] > adapter.config.occupied  # (B, 1, X, Y, Z)
        empty = torch.where(occupied, -EMPTY_LOGIT, EMPTY_LOGIT).to(kinds.dtype)
        logits = torch.cat([empty, kinds], 1)  # (B, classes, X, Y, Z)
        loss = None
        if y is not None:
            known = occupied[:, 0] & (y > 0)  # (B, X, Y, Z): occupied, labelled with a kind, not padding
            if valid is not None:
                known &= valid[:, 0] > 0.5
            weights = None if self.class_weights is None else self.class_weights[1:]
            loss = voxel_loss(kinds, (y - 1).masked_fill(~known, IGNORE), weights)
        return LabellerOutput(loss, logits)


def voxel_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted cross-entropy of logits (B, C, X, Y, Z) against y (B, X, Y, Z), voxels of
    IGNORE left out; 0 (with a gradient) when every voxel is left out."""
    weights = None if weights is None else weights.to(logits.dtype)
    if not (y != IGNORE).any():
        return logits.sum() * 0
    return F.cross_entropy(logits, y.long(), weight=weights, ignore_index=IGNORE)


def voxel_class_weights(labels: list[torch.Tensor], valid: list[torch.Tensor], classes: int) -> torch.Tensor:
    """Inverse-frequency weights over the valid voxels of ``labels``, so that every class weighs as
    much in the loss: total / (classes x count), a class that never occurs counted once."""
    counts = sum(torch.bincount(y[v[0] > 0.5], minlength=classes) for y, v in zip(labels, valid, strict=True))
    counts = counts.double().clamp_min(1)
    return (counts.sum() / (classes * counts)).float()


def iou(confusion: torch.Tensor) -> torch.Tensor:
    """IoU per class, tp / (tp + fp + fn), from a (true, predicted) confusion matrix; NaN for a
    class neither true nor predicted anywhere."""
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def iou_metrics(confusion: torch.Tensor, classes: list[str]) -> dict[str, float]:
    """``iou/<class>`` for every class with a non-empty union, ``iou_mean`` over the object classes
    (all but class 0, empty) among them, and ``voxel_accuracy``."""
    scores = iou(confusion)
    out = {f"iou/{c}": float(v) for c, v in zip(classes, scores, strict=True) if not math.isnan(v)}
    objects = scores[1:]
    objects = objects[~objects.isnan()]
    out["iou_mean"] = float(objects.mean()) if len(objects) else 0.0
    out["voxel_accuracy"] = float(confusion.diag().sum() / confusion.sum().clamp_min(1))
    return out


def valid_confusion(pred: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor, classes: int) -> torch.Tensor:
    """Confusion matrix over the voxels where valid (B, 1, X, Y, Z) is 1; pred, truth: (B, X, Y, Z)."""
    keep = valid[:, 0] > 0.5
    return confusion_matrix(pred[keep], truth[keep], classes)


class WithTokens(Dataset):
    """Grids with their tokens from a frozen encoder, computed once: items of ``grids`` plus
    "tokens" (N, D), what a labelling probe trains on (as the linear probe trains on features)."""

    def __init__(self, grids: Dataset, encoder: Encoder, device, batch_size: int):
        self.grids = grids
        with torch.no_grad():
            encoder.eval()
            batches = DataLoader(grids, batch_size=batch_size)
            self.tokens = torch.cat(
                [encoder({k: v.to(device) for k, v in b["x"].items()}).tokens.cpu() for b in batches]
            )  # (M, N, D)

    def __len__(self) -> int:
        return len(self.grids)

    def __getitem__(self, i: int) -> dict:
        return {**self.grids[i], "tokens": self.tokens[i]}


@torch.no_grad()
def predict(model: VoxelLabeller, dataset, device, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Predicted labels, true labels (both (M, X, Y, Z)), valid (M, 1, X, Y, Z) and images of every
    held-out grid, in order."""
    model.eval()
    preds, truths, valids, images = [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        x = {k: v.to(device) for k, v in batch["x"].items()}
        preds.append(model(x).logits.argmax(1).cpu())
        truths.append(batch["y"])
        valids.append(batch["valid"])
        images.append(batch["x"]["image"])
    return torch.cat(preds), torch.cat(truths), torch.cat(valids), torch.cat(images)


def baselines(data: DomainData, threshold: float) -> dict[str, float]:
    """The IoU of the shape-blind predictors on the held-out grids: all empty, and every occupied
    voxel (alpha > ``threshold``) of the training split's most frequent object class."""
    train = data.finetune.items
    counts = sum(torch.bincount(it["voxels"][it["valid"][0] > 0.5], minlength=len(data.classes)) for it in train)
    majority = int(counts[1:].argmax()) + 1
    out = {}
    for name, guess in (("all_empty", lambda it: torch.zeros_like(it["voxels"])), ("occupied_majority", None)):
        cm = torch.zeros(len(data.classes), len(data.classes), dtype=torch.long)
        for it in data.held_out.items:
            pred = guess(it) if guess else (it["image"][3] > threshold).long() * majority
            cm += valid_confusion(pred[None], it["voxels"][None], it["valid"][None], len(data.classes))
        out |= {f"labelling_{name}/{k}": v for k, v in iou_metrics(cm, data.classes).items()}
    return out


def top_labels(labels: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) labels -> (X, Y): each column's first non-empty label along z (0 if none), the
    labels seen from the side that ``composite`` looks from."""
    first = (labels > 0).long().argmax(-1, keepdim=True)  # (X, Y, 1)
    return labels.gather(-1, first)[..., 0]


def picture(images: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, zoom: int = 4) -> torch.Tensor:
    """One row per grid: the input seen from above | its true labels | the predicted labels, each
    the first non-empty label along z, coloured by ``PALETTE`` -> (B zoom X, 3 zoom Y, 3) uint8."""
    rows = []
    for image, t, p in zip(images, truth, pred, strict=True):
        view = (composite(image.clamp(0, 1)).permute(1, 2, 0) * 255).round().long()  # (X, Y, 3)
        truth_view, pred_view = (PALETTE[top_labels(labels) % len(PALETTE)] for labels in (t, p))
        rows.append(torch.cat([view, truth_view, pred_view], 1))
    grid = torch.cat(rows, 0).to(torch.uint8)  # (B X, 3 Y, 3)
    return grid.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
