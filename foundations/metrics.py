"""Classification metrics: accuracy, balanced accuracy, macro-F1, and AUROC for two classes."""

from __future__ import annotations

import torch
from monai.metrics import compute_roc_auc


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts."""
    idx = target.long() * n_classes + pred.long()
    return torch.bincount(idx, minlength=n_classes * n_classes).view(n_classes, n_classes)


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """logits: (B, C), target: (B,). Balanced accuracy and macro-F1 average over the classes present
    in ``target`` (a class with no samples has no recall to average)."""
    n_classes = logits.shape[1]
    cm = confusion_matrix(logits.argmax(1), target, n_classes).double()
    support, predicted, tp = cm.sum(1), cm.sum(0), cm.diag()
    present = support > 0
    recall = tp[present] / support[present]
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))[present]
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(recall))
    out = {
        "accuracy": (tp.sum() / cm.sum()).item(),
        "balanced_accuracy": recall.mean().item(),
        "macro_f1": f1.mean().item(),
        "n": int(cm.sum().item()),
    }
    if n_classes == 2 and present.all():
        probs = logits.float().softmax(1)[:, 1]
        out["auroc"] = float(compute_roc_auc(probs, target.long()))
    return out
