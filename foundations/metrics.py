"""Classification metrics: accuracy, balanced accuracy, macro-F1, and AUROC for two classes;
mean average precision for multi-label tasks (AudioSet's headline metric)."""

from __future__ import annotations

import torch


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
        from monai.metrics import compute_roc_auc  # imported here: monai's import takes seconds, two classes need it

        out["auroc"] = float(compute_roc_auc(probs, target.long()))
    return out


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the precision-recall curve of one class: the mean precision at each positive, in
    order of decreasing score. scores, positive: (B,)."""
    hits = positive[scores.argsort(descending=True)].double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return float((precision * hits).sum() / hits.sum())


def multilabel_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """logits, target: (B, C), target 0/1. ``mAP``: average precision averaged over the classes with
    at least one positive; ``micro_f1`` at probability 0.5."""
    positive = target > 0.5
    present = [c for c in range(target.shape[1]) if positive[:, c].any()]
    pred = logits.float().sigmoid() > 0.5
    tp = (pred & positive).sum().item()
    f1 = 2 * tp / max(1, pred.sum().item() + positive.sum().item())
    ap = [average_precision(logits[:, c].float(), positive[:, c]) for c in present]
    return {"mAP": sum(ap) / max(1, len(ap)), "micro_f1": f1, "n": len(target)}
