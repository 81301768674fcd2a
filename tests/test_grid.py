"""The dimension-generic grid adapter of the core: what every grid modality relies on beyond the
contract (tests/test_adapters.py runs that over each configuration)."""

import pytest
import torch

from foundations.grid import GridAdapter, GridConfig


def grid(**fields) -> GridAdapter:
    return GridAdapter(GridConfig(**fields), 32)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"channels": 0}, "channels"),
        ({"patch": (0, 8), "size": (8, 8)}, "patch"),
        ({"patch": (2, 2, 2, 2), "size": (4, 4, 4, 4)}, "patch"),
        ({"patch": (8, 8), "size": (12, 8)}, "size"),
        ({"patch": (8, 8), "size": (8, 8, 8)}, "size"),
        ({"channels": 3, "mean": (0.1, 0.2)}, "mean"),
        ({"std": (0.0,)}, "std"),
        ({"coords": "mm"}, "coords"),
        ({"patch": (4,), "size": (8,), "slices": True}, "slices"),
    ],
)
def test_config__bad_values_raise_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=f"GridConfig.{match}"):
        GridConfig(**fields)


def test_coords__index_is_row_major_and_any_size_works():
    adapter = grid(patch=(4, 8), size=(8, 16))
    coords = adapter.embed(torch.rand(1, 1, 12, 24)).coords[0]  # 3 x 3 patches, not the trained size
    assert coords[:4].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0]] and len(coords) == 9


def test_coords__spacing_gives_physical_patch_centres_per_item():
    adapter = grid(patch=(2, 4), size=(4, 8), coords="spacing")
    x = {"image": torch.rand(2, 1, 4, 8), "spacing": torch.tensor([[1.0, 1.0], [0.5, 3.0]])}
    coords = adapter.embed(x).coords
    assert coords[0].tolist() == [[1.0, 2.0], [1.0, 6.0], [3.0, 2.0], [3.0, 6.0]]
    torch.testing.assert_close(coords[1], coords[0] * torch.tensor([0.5, 3.0]))
    with pytest.raises(ValueError, match="spacing"):
        adapter.embed(torch.rand(2, 1, 4, 8))


def test_spectrogram__any_number_of_frames_one_token_row_per_time_patch():
    adapter = grid(patch=(16, 16), size=(1024, 128))  # AudioMAE's 1024 frames x 128 mel bins
    for frames in (96, 1024):
        tokens, coords = adapter.embed(torch.randn(1, 1, frames, 128))
        assert tokens.shape == (1, frames // 16 * 8, 32) and coords[0, -1].tolist() == [frames // 16 - 1, 7]


def test_normalisation__one_mean_and_std_for_every_channel():
    adapter = grid(channels=4, patch=(2, 2, 2), size=(2, 2, 2), mean=(1.0,), std=(2.0,))
    x = torch.full((1, 4, 2, 2, 2), 3.0)
    assert torch.equal(adapter.targets(x).values, torch.ones(1, 1, 32))
    torch.testing.assert_close(adapter.denormalize(adapter.unpatchify(adapter.targets(x).values, x)), x)


def test_slices__a_slice_is_the_grid_repeated_through_the_patch_depth():
    adapter = grid(patch=(4, 4, 2), size=(8, 8, 4), slices=True)
    image = torch.rand(2, 1, 8, 8)
    deep = image[..., None].expand(-1, -1, -1, -1, 2)
    torch.testing.assert_close(adapter.embed(image).tokens, adapter.embed(deep).tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapter.targets(image).values, adapter.targets(deep).values)
    with pytest.raises(ValueError, match="expected 3-D grids or 2-D slices"):
        adapter.embed(torch.rand(2, 1, 8))


def test_valid_mask__weights_follow_the_element_mask_per_channel():
    adapter = grid(channels=2, patch=(2, 2), size=(4, 4))
    valid = torch.zeros(1, 1, 4, 4)
    valid[..., :2, :2] = 1  # the first patch only
    weights = adapter.targets(torch.rand(1, 2, 4, 4), valid).weights
    assert weights[0, 0].eq(1).all() and weights[0, 1:].eq(0).all()


@pytest.mark.parametrize(
    "fields,shape",
    [
        ({"channels": 3, "patch": (8, 8), "size": (32, 32), "mean": (0.4, 0.5, 0.6)}, (2, 3, 32, 24)),
        ({"patch": (4, 8, 8), "size": (8, 16, 16), "coords": "spacing"}, (2, 1, 8, 16, 24)),
    ],
)
def test_embed__the_visible_patches_alone_are_the_full_embedding_gathered(fields, shape):
    adapter = grid(**fields)
    image = torch.rand(shape)
    x = {"image": image, "spacing": torch.tensor([[1.0, 0.5, 2.0]] * 2)} if "coords" in fields else image
    full = adapter.embed(x)
    ids = torch.stack([torch.randperm(full.tokens.shape[1])[:5] for _ in range(2)])  # (B, 5)
    visible = adapter.embed(x, ids)
    assert visible.tokens.shape == (2, 5, 32) and torch.equal(visible.coords, full.coords)
    torch.testing.assert_close(visible.tokens, full.tokens.gather(1, ids[..., None].expand(-1, -1, 32)))
    torch.testing.assert_close(adapter.coords(x), full.coords)
