"""The adapter contract, run over every entry of ``modalities.ADAPTERS`` and every configuration
of the grid adapter the coming modalities need (video tubes, radiance grids).

A new adapter adds one example here; the test for a missing example fails, so no adapter goes
untested.
"""

import dataclasses

import pytest
import torch

from foundations.adapter import build_adapter as build_from
from foundations.grid import GridAdapter, GridConfig
from foundations.mae import MaskedAutoencoder
from modalities import ADAPTERS, build_adapter
from tests.conftest import TINY_MAE
from tests.test_pointcloud import brute_fps


class AnyGrid(GridAdapter):
    name = "grid"


# the registry, and grid configurations of modalities to come
REGISTRY = {**ADAPTERS, "grid": (AnyGrid, GridConfig)}


def normalized(adapter, x):
    return adapter.normalize(x)


def image_of(adapter, x):
    return x["image"]


def batch_size(x) -> int:
    return len(x["image"]) if isinstance(x, dict) else len(x)


def grouped_points(adapter, x):
    """What unpatchify(targets(x)) must give for point clouds, by brute force: for each FPS centre
    its k nearest points by a full sort, in the cloud's frame."""
    k, G = adapter.config.group_size, adapter.config.n_groups
    out = []
    for cloud in x:
        centres = cloud[brute_fps(cloud.numpy(), G)]
        order = torch.cdist(centres, cloud).argsort(-1)[:, :k]  # (G, k)
        out.append(cloud[order].reshape(-1, 3))
    return torch.stack(out)


# AudioMAE fbank: (time, frequency), one channel; features keep the mel bands, as the recipe builds it
AUDIO = dict(name="audio", channels=1, patch=[4, 4], size=[16, 8], mean=[-4.3], std=[4.6], keep_last_axis=True)

# VideoMAE tubelets: (t, h, w) with 2 x 16 x 16 tubes, here 2 x 4 x 4 on RGB clips of any length
VIDEO = dict(name="video", channels=3, patch=[2, 4, 4], size=[4, 8, 8], mean=[0.45] * 3, std=[0.225] * 3)

# name -> () -> (config, input x, valid, expected unpatchify(targets(x)), exact?)
EXAMPLES = {
    "image2d": lambda: (
        {"name": "image2d", "channels": 3, "patch": [8, 4], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]},
        torch.rand(2, 3, 16, 24),
        None,
        normalized,
        True,
    ),
    "ultrasound": lambda: (
        {"name": "ultrasound", "channels": 1, "patch": [8, 8], "mean": [0.3], "std": [0.2]},
        torch.rand(2, 1, 24, 16),
        (torch.rand(2, 1, 24, 16) > 0.3).float(),
        normalized,
        True,
    ),
    "pointcloud": lambda: (
        {"name": "pointcloud", "n_points": 96, "n_groups": 8, "group_size": 12},
        torch.rand(2, 96, 3),
        None,
        grouped_points,
        False,
    ),
    "volume": lambda: (
        {"name": "volume", "channels": 2, "patch": [4, 4, 2], "size": [8, 8, 4], "coords": "spacing", "slices": True},
        {"image": torch.rand(2, 2, 8, 12, 4), "spacing": torch.tensor([[1.0, 1.0, 2.0], [0.5, 0.5, 3.0]])},
        None,
        image_of,
        True,
    ),
    "volume:slices": lambda: (
        {"name": "volume", "channels": 1, "patch": [4, 4, 2], "size": [8, 8, 4], "coords": "spacing", "slices": True},
        {"image": torch.rand(2, 1, 8, 12), "spacing": torch.tensor([[1.0, 1.0, 2.0], [0.5, 0.5, 3.0]])},
        None,
        image_of,
        False,  # the patch depth is averaged away: equal up to rounding
    ),
    "video": lambda: (
        VIDEO,
        torch.rand(2, 3, 4, 8, 12),
        None,
        normalized,
        True,
    ),
    "video:long": lambda: (
        VIDEO,
        torch.rand(2, 3, 10, 8, 8),
        None,
        normalized,
        True,
    ),
    # B-mode cine loops: grey tubes with the imaged sector as element weights
    "ultrasound_cine": lambda: (
        {"name": "ultrasound_cine", "channels": 1, "patch": [2, 4, 4], "size": [4, 8, 8], "mean": [0.3], "std": [0.2]},
        torch.rand(2, 1, 4, 8, 12),
        (torch.rand(2, 1, 1, 8, 12) > 0.3).float().expand(2, 1, 4, 8, 12),
        normalized,
        True,
    ),
    # AudioMAE fbank: (time, frequency), one channel, any number of frames
    "audio": lambda: (
        AUDIO,
        torch.randn(2, 1, 28, 8),
        None,
        normalized,
        True,
    ),
    "audio:long": lambda: (
        AUDIO,
        torch.randn(2, 1, 64, 8),
        None,
        normalized,
        True,
    ),
    # NeRF-MAE: RGB + opacity on an (x, y, z) grid in world units, padding not valid
    "nerf": lambda: (
        {"name": "nerf", "patch": [2, 2, 2], "size": [4, 4, 4]},
        {"image": torch.rand(2, 4, 4, 4, 6), "spacing": torch.tensor([[0.1, 0.1, 0.1], [0.05, 0.05, 0.05]])},
        (torch.arange(6) < 4).float().expand(2, 1, 4, 4, 6),
        image_of,
        True,
    ),
}


def test_every_adapter_has_an_example():
    assert sorted(ADAPTERS) == sorted({name.split(":")[0] for name in EXAMPLES} - {"grid"})


@pytest.fixture(params=sorted(EXAMPLES))
def example(request):
    config, x, valid, expected, exact = EXAMPLES[request.param]()
    return build_from(REGISTRY, config, TINY_MAE.encoder.dim), x, valid, expected, exact


def test_contract__shapes(example):
    adapter, x, valid, _, _ = example
    tokens, coords = adapter.embed(x)
    values, weights = adapter.targets(x, valid)
    B, N = tokens.shape[:2]
    assert tokens.shape == (B, N, adapter.dim) and B == batch_size(x)
    assert coords.shape == (B, N, adapter.coord_dim) and coords.is_floating_point()
    assert values.shape == (B, N, adapter.target_dim)
    assert weights is None or weights.shape == values.shape
    assert adapter.pool(tokens, x).shape == (B, adapter.pooled_dim(adapter.dim))


def test_contract__targets_unpatchify_round_trip(example):
    adapter, x, valid, expected, exact = example
    back = adapter.unpatchify(adapter.targets(x, valid).values, x)
    if exact:  # patching only moves elements
        assert torch.equal(back, expected(adapter, x))
    else:  # relative coordinates shifted back, or depth averaged: equal up to float rounding
        torch.testing.assert_close(back, expected(adapter, x), atol=1e-6, rtol=0)


def test_contract__coords_are_distinct_per_token(example):
    adapter, x, _, _, _ = example
    coords = adapter.embed(x).coords[0]
    assert len(torch.unique(coords, dim=0)) == len(coords)


def test_contract__finite_loss_baselines_and_gradients_reach_every_parameter(example):
    adapter, x, valid, _, _ = example
    mae = MaskedAutoencoder(adapter, dataclasses.replace(TINY_MAE, norm_target=False))
    out = mae(x, valid)
    assert torch.isfinite(out.loss)
    target = out.target.gather(1, out.ids_pred[..., None].expand(-1, -1, out.target.shape[-1]))
    for name, pred in adapter.baselines(target).items():
        assert pred.shape == target.shape and torch.isfinite(adapter.loss(pred, target)), name
    out.loss.backward()
    missing = [
        n
        for n, p in mae.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert missing == []


def test_contract__config_round_trips(example):
    adapter = example[0]
    rebuilt = build_from(REGISTRY, adapter.config_dict(), adapter.dim)
    assert rebuilt.config == adapter.config and type(rebuilt) is type(adapter)


def test_image2d__normalisation_and_bad_inputs():
    adapter = build_adapter(EXAMPLES["image2d"]()[0], 32)
    ones = torch.ones(1, 3, 8, 8)
    torch.testing.assert_close(adapter.denormalize(adapter.normalize(ones)), ones)
    with pytest.raises(ValueError, match="expected 2-D grids"):
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
