"""Pieces of the classification stages: mixup."""

import torch
import torch.nn.functional as F

from tasks.classify import mixup


def test_mixup__the_same_convex_blend_of_inputs_and_class_probabilities():
    x, y = torch.randn(6, 2, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(3)
    mixed_x, mixed_y = mixup(x, y, alpha=0.5, n_classes=3)
    torch.manual_seed(3)  # the same draws: lam ~ Beta(0.5, 0.5), then a permutation of the batch
    lam = float(torch.distributions.Beta(0.5, 0.5).sample())
    perm = torch.randperm(6)
    assert not torch.equal(perm, torch.arange(6)) and 0 < lam < 1
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x[perm])
    one_hot = F.one_hot(y, 3).float()
    torch.testing.assert_close(mixed_y, lam * one_hot + (1 - lam) * one_hot[perm])
    multi = (torch.rand(6, 3) > 0.5).float()  # multi-label targets mix the same way
    torch.manual_seed(3)
    torch.testing.assert_close(mixup(x, multi, 0.5, 3)[1], lam * multi + (1 - lam) * multi[perm])
