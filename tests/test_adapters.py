"""The adapter contract, run over every entry of ``modalities.ADAPTERS``.

A new adapter adds one example here (a config and a small input); the test for a missing
example fails, so no adapter goes untested.
"""

import dataclasses

import pytest
import torch

from foundations.mae import MaskedAutoencoder
from modalities import ADAPTERS, build_adapter
from tests.conftest import TINY_MAE

EXAMPLES = {
    "image2d": lambda: (
        {"name": "image2d", "channels": 3, "patch": [8, 4], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]},
        torch.rand(2, 3, 16, 24),
        None,
    ),
    "ultrasound": lambda: (
        {"name": "ultrasound", "channels": 1, "patch": [8, 8], "mean": [0.3], "std": [0.2]},
        torch.rand(2, 1, 24, 16),
        (torch.rand(2, 1, 24, 16) > 0.3).float(),
    ),
}


def test_every_adapter_has_an_example():
    assert sorted(EXAMPLES) == sorted(ADAPTERS)


@pytest.fixture(params=sorted(ADAPTERS))
def example(request):
    config, x, valid = EXAMPLES[request.param]()
    return build_adapter(config, TINY_MAE.encoder.dim), x, valid


def test_contract__shapes(example):
    adapter, x, valid = example
    tokens, coords = adapter.embed(x)
    values, weights = adapter.targets(x, valid)
    B, N = tokens.shape[:2]
    assert tokens.shape == (B, N, adapter.dim) and B == len(x)
    assert coords.shape == (B, N, adapter.coord_dim) and coords.is_floating_point()
    assert values.shape == (B, N, adapter.target_dim)
    assert weights is None or weights.shape == values.shape


def test_contract__targets_unpatchify_round_trip_is_exact(example):
    adapter, x, valid = example
    values, _ = adapter.targets(x, valid)
    back = adapter.unpatchify(values, tuple(x.shape[-2:]))
    assert torch.equal(back, adapter.normalize(x))  # exact: patching only moves elements
    torch.testing.assert_close(adapter.denormalize(back), x)


def test_contract__coords_are_distinct_per_token(example):
    adapter, x, _ = example
    coords = adapter.embed(x).coords[0]
    assert len(torch.unique(coords, dim=0)) == len(coords)


def test_contract__finite_loss_and_gradients_reach_every_parameter(example):
    adapter, x, valid = example
    mae = MaskedAutoencoder(adapter, dataclasses.replace(TINY_MAE, norm_target=True))
    out = mae(x, valid)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [
        n
        for n, p in mae.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert missing == []


def test_contract__config_round_trips(example):
    adapter, _, _ = example
    rebuilt = build_adapter(adapter.config_dict(), adapter.dim)
    assert rebuilt.config == adapter.config and type(rebuilt) is type(adapter)


def test_image2d__bad_inputs_raise():
    adapter = build_adapter(EXAMPLES["image2d"]()[0], 32)
    with pytest.raises(ValueError, match="expected images"):
        adapter.embed(torch.rand(2, 1, 16, 24))  # wrong channel count
    with pytest.raises(ValueError, match="not a multiple"):
        adapter.embed(torch.rand(2, 3, 15, 24))


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"channels": 0}, "channels"),
        ({"patch": [0, 8]}, "patch"),
        ({"mean": [0.1, 0.2]}, "mean"),
        ({"std": [0.0]}, "std"),
    ],
)
def test_image2d_config__bad_values_raise(fields, match):
    with pytest.raises(ValueError, match=match):
        build_adapter({"name": "image2d", **fields}, 32)


def test_build_adapter__unknown_name_raises():
    with pytest.raises(ValueError, match="unknown adapter"):
        build_adapter({"name": "sonar"}, 32)
