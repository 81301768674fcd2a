import torch

from foundations.losses import masked_mse, normalize_target


def test_masked_mse__plain_mean():
    pred, target = torch.zeros(2, 3, 4), torch.ones(2, 3, 4) * 2
    assert masked_mse(pred, target).item() == 4.0


def test_masked_mse__weights_exclude_elements():
    pred, target = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 100.0], [3.0, 100.0]]])
    w = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert masked_mse(pred, target, w).item() == (1 + 9) / 2


def test_normalize_target__per_token_zero_mean_unit_var():
    t = torch.randn(2, 5, 64) * 3 + 7
    n, mean, std = normalize_target(t)
    torch.testing.assert_close(n.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.var(-1), torch.ones(2, 5), atol=1e-3, rtol=0)  # unbiased, as MAE's code
    torch.testing.assert_close(n * std + mean, t)
    torch.testing.assert_close(normalize_target(t, torch.ones_like(t))[0], n)  # weights of one change nothing


def test_normalize_target__weighted_stats_ignore_masked_elements():
    t = torch.tensor([[[1.0, 3.0, 1000.0]]])
    w = torch.tensor([[[1.0, 1.0, 0.0]]])
    n, mean, _ = normalize_target(t, w)
    assert mean.item() == 2.0
    torch.testing.assert_close(n[..., :2], torch.tensor([[[-1.0, 1.0]]]) / 2**0.5, atol=1e-4, rtol=0)  # unbiased


def test_normalize_target__ignores_patch_offset_and_scale():
    t = torch.randn(2, 4, 16)
    pred, _, _ = normalize_target(t)
    assert masked_mse(pred, normalize_target(t * 5 + 3)[0]).item() < 1e-6
