"""Radiance grids as tokens: the nerf adapter's NeRF-MAE loss weights, density to opacity, the
built-in procedural set and its pictures."""

import numpy as np
import pytest
import torch

from foundations.mae import MaskedAutoencoder
from modalities import build_adapter
from modalities.common import DataSource
from modalities.nerf.adapter import NerfConfig
from modalities.nerf.data import GridDataset, NerfOptions, build_domain, composite, opacity, pad_to, prepare
from tests.conftest import TINY_MAE


def nerf_adapter(**fields):
    return build_adapter({"name": "nerf", "patch": [2, 2, 2], "size": [4, 4, 4], **fields}, 32)


def test_targets__colour_counts_where_occupied_opacity_wherever_valid():
    adapter = nerf_adapter(colour_weight=2.0, opacity_weight=0.5)
    image = torch.rand(1, 4, 4, 4, 4)
    image[:, 3] = 0.0
    image[:, 3, 0, 0, 0] = 0.9  # one occupied voxel, in the first patch
    valid = torch.ones(1, 1, 4, 4, 4)
    valid[..., 3] = 0  # the last z layer is padding
    x = {"image": image, "spacing": torch.full((1, 3), 0.1)}
    values, weights = adapter.targets(x, valid)
    back = adapter.unpatchify(weights, x)  # (1, 4, X, Y, Z) weights in the grid's layout
    assert torch.equal(adapter.unpatchify(values, x), image)  # values in [0, 1] as they are
    assert back[0, :3, 0, 0, 0].tolist() == [2.0, 2.0, 2.0] and back[0, :3].sum() == 6.0  # only the occupied voxel
    assert torch.equal(back[0, 3], 0.5 * valid[0, 0])  # opacity everywhere but padding


def test_config__bad_values_name_the_field():
    with pytest.raises(ValueError, match="4 channels"):
        NerfConfig(channels=3)
    with pytest.raises(ValueError, match="occupied"):
        NerfConfig(occupied=1.5)


def test_opacity__is_one_minus_transmittance_over_a_voxel():
    sigma = np.array([0.0, 1.0, 10.0, -3.0])
    np.testing.assert_allclose(opacity(sigma, (0.5, 0.5, 0.5)), [0.0, 1 - np.exp(-0.5), 1 - np.exp(-5.0), 0.0])


def test_composite__the_front_voxel_hides_what_is_behind():
    rgba = torch.zeros(4, 1, 1, 3)
    rgba[:3, 0, 0, 0], rgba[:3, 0, 0, 2] = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    rgba[3, 0, 0, 0], rgba[3, 0, 0, 2] = 0.5, 1.0  # half-transparent red in front of opaque green
    pixel = composite(rgba)[:, 0, 0]
    torch.testing.assert_close(pixel, torch.tensor([0.5, 0.5, 0.0]))
    assert torch.equal(composite(torch.zeros(4, 2, 2, 2))[:, 0, 0], torch.ones(3))  # empty: the white background


def test_pad_to__pads_the_far_corner_with_invalid_voxels():
    grid = {"rgbsigma": np.ones((3, 4, 2, 4), np.float32), "valid": np.ones((3, 4, 2)), "voxel_size": [0.1] * 3}
    item = pad_to(prepare(grid, "g", 0), (4, 4, 4))
    assert item["image"].shape == (4, 4, 4, 4) and item["valid"].sum() == 3 * 4 * 2
    assert item["valid"][0, 3].sum() == 0 and item["valid"][0, :, :, 2:].sum() == 0


def test_build_domain__procedural_scenes_split_and_train_through_the_mae():
    data = build_domain(DataSource(seed=1), NerfOptions(grid=16, scenes=20))
    assert len(data.pretrain) + len(data.held_out) == 20 and data.classes[0] == "box"
    item = data.pretrain[0]
    assert item["x"]["image"].shape == (4, 16, 16, 16) and item["valid"].shape == (1, 16, 16, 16)
    assert 0 < data.info["occupied_fraction"] < 0.5  # sparse scenes in an empty box
    adapter = build_adapter(data.adapter, 32)
    batch = [data.held_out[i] for i in range(2)]
    x = {k: torch.stack([b["x"][k] for b in batch]) for k in ("image", "spacing")}
    mae = MaskedAutoencoder(adapter, TINY_MAE)
    assert torch.isfinite(mae(x, torch.stack([b["valid"] for b in batch])).loss)
    assert data.render(mae, x).shape == (4 * 48, 4 * 32, 3)  # 3 rows of 2 grids of 16^3, 4 pixels a voxel


def test_grid_dataset__augmentation_moves_colour_opacity_and_valid_together():
    image = torch.zeros(4, 4, 4, 4)
    image[:, 0, 1, 2] = 1.0  # one white opaque voxel
    valid = torch.zeros(1, 4, 4, 4)
    valid[0, 0, 1, 2] = 1.0
    data = GridDataset([{"image": image, "valid": valid, "spacing": torch.ones(3), "label": 0}], augment=True)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        item = data[0]
        where = item["x"]["image"][3].nonzero().tolist()
        assert len(where) == 1 and item["valid"][0].nonzero().tolist() == where
        assert (item["x"]["image"][:, where[0][0], where[0][1], where[0][2]] == 1).all()
        seen.add(tuple(where[0]))
    assert len(seen) > 2 and all(z == 2 for _, _, z in seen)  # moved about, never along the up axis
