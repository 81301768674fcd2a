import pytest
import torch

from foundations.metrics import average_precision, classification_metrics, confusion_matrix, multilabel_metrics


def one_hot_logits(pred, n):
    return torch.nn.functional.one_hot(torch.tensor(pred), n).float()


def test_confusion_matrix__counts():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_metrics__imbalanced_example_by_hand():
    # 8 of class 0 all right, 2 of class 1 all predicted 0
    m = classification_metrics(one_hot_logits([0] * 10, 2), torch.tensor([0] * 8 + [1] * 2))
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # F1 class 0: p = 0.8, r = 1 -> 0.888..; class 1: 0 -> macro 0.444..
    assert m["macro_f1"] == pytest.approx((2 * 0.8 / 1.8) / 2)


def test_metrics__auroc_two_classes():
    target = torch.tensor([0, 0, 1, 1])
    perfect = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert classification_metrics(perfect, target)["auroc"] == pytest.approx(1.0)
    inverted = perfect.flip(1)
    assert classification_metrics(inverted, target)["auroc"] == pytest.approx(0.0)
    assert "auroc" not in classification_metrics(one_hot_logits([0, 1, 2], 3), torch.tensor([0, 1, 2]))


def test_average_precision__hand_computed():
    # ranked by score: pos, neg, pos, neg -> precisions at the positives 1/1 and 2/3
    scores, positive = torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([True, False, True, False])
    assert average_precision(scores, positive) == pytest.approx((1 + 2 / 3) / 2)


def test_multilabel_metrics__perfect_ranking_and_classes_without_positives():
    target = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    logits = torch.tensor([[3.0, -2, -1], [2.0, 2, -1], [-1.0, 1, -1]])
    out = multilabel_metrics(logits, target)
    assert out["mAP"] == 1.0 and out["micro_f1"] == 1.0 and out["n"] == 3  # class 2 has no positive
    assert multilabel_metrics(-logits, target)["mAP"] < 0.6
