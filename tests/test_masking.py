import dataclasses

import pytest
import torch

from foundations.masking import (
    MaskConfig,
    block_masking,
    make_mask,
    random_masking,
    sample_generators,
    tube_masking,
)


def grid(*sizes):
    axes = torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij")
    return torch.stack(axes, -1).reshape(-1, len(sizes)).float()


def check_plan(plan, n_tokens, n_hide):
    B = plan.mask.shape[0]
    assert plan.mask.dtype == torch.bool and plan.mask.shape == (B, n_tokens)
    assert (plan.mask.sum(1) == n_hide).all()
    assert plan.ids_keep.shape == (B, n_tokens - n_hide) and plan.ids_hide.shape == (B, n_hide)
    assert not plan.mask.gather(1, plan.ids_keep).any()  # kept ids are visible
    assert plan.mask.gather(1, plan.ids_hide).all()  # hidden ids are hidden
    both = torch.cat([plan.ids_keep, plan.ids_hide], 1).sort(1).values
    assert torch.equal(both, torch.arange(n_tokens).expand(B, -1))  # a partition


@pytest.mark.parametrize("ratio,n_hide", [(0.75, 48), (0.5, 32), (0.9, 58)])
def test_random_masking__exact_count(ratio, n_hide):
    check_plan(random_masking(grid(8, 8).expand(5, -1, -1), ratio), 64, n_hide)


def test_random_masking__seedable_and_varies_across_samples():
    coords = grid(8, 8).expand(4, -1, -1)
    a = random_masking(coords, 0.75, torch.Generator().manual_seed(3))
    b = random_masking(coords, 0.75, torch.Generator().manual_seed(3))
    c = random_masking(coords, 0.75, torch.Generator().manual_seed(4))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    assert not torch.equal(a.mask[0], a.mask[1])


def test_block_masking__contiguous_on_grid():
    coords = grid(16, 16).expand(8, -1, -1)
    block = block_masking(coords, 0.5, block_tokens=64, generator=torch.Generator().manual_seed(0))
    rand = random_masking(coords, 0.5, torch.Generator().manual_seed(0))
    check_plan(block, 256, 128)

    def hidden_neighbour_fraction(mask):  # how often a hidden token's right neighbour is hidden too
        m = mask.view(-1, 16, 16)
        return ((m[:, :, :-1] & m[:, :, 1:]).sum() / m[:, :, :-1].sum()).item()

    assert hidden_neighbour_fraction(block.mask) > 0.8 > 0.6 > hidden_neighbour_fraction(rand.mask)


def test_block_masking__single_seed_hides_nearest_points():
    coords = torch.rand(2, 100, 3)
    plan = block_masking(coords, 0.3, block_tokens=30)
    for b in range(2):
        hidden, visible = coords[b][plan.mask[b]], coords[b][~plan.mask[b]]
        centre = hidden.mean(0)  # hidden points form one ball: all nearer its centre than most visible ones
        assert (hidden - centre).norm(dim=1).max() < (visible - centre).norm(dim=1).quantile(0.5)


def test_tube_masking__shared_along_axis():
    coords = grid(4, 6, 6).expand(3, -1, -1)  # (t, h, w), tubes along t
    plan = tube_masking(coords, 0.75, axis=0)
    check_plan(plan, 144, 27 * 4)
    m = plan.mask.view(3, 4, 6, 6)
    assert (m == m[:, :1]).all()  # same mask in every frame


def test_tube_masking__unequal_tubes_raise():
    coords = torch.cat([grid(2, 3), torch.tensor([[5.0, 0.0]])])[None]
    with pytest.raises(ValueError, match="equal-length"):
        tube_masking(coords, 0.5, axis=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"strategy": "checkerboard"}, "strategy"),
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"block_tokens": 0}, "block_tokens"),
        ({"ratio": 0.5, "predict_ratio": 0.75}, "predict_ratio"),
    ],
)
def test_mask_config__bad_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskConfig(**kwargs)


def test_make_mask__dispatches_by_strategy():
    coords = grid(4, 4, 4).expand(2, -1, -1)
    plan = make_mask(MaskConfig("tube", 0.5, tube_axis=2), coords)
    m = plan.mask.view(2, 4, 4, 4)
    assert (m == m[..., :1]).all()


@pytest.mark.parametrize("strategy", ["random", "block", "tube"])
def test_sample_generators__a_samples_mask_does_not_depend_on_its_batch(strategy):
    """What lets two processes (each half a batch) and a resumed run hide what one process does."""
    cfg = MaskConfig(strategy, 0.75, block_tokens=4, tube_axis=0)
    coords = grid(4, 4, 4).expand(6, -1, -1)
    keys = torch.tensor([11, 12, 13, 14, 15, 16])
    whole = make_mask(cfg, coords, sample_generators(keys)).mask
    halves = [make_mask(cfg, coords[:3], sample_generators(keys[i : i + 3])).mask for i in (0, 3)]
    assert torch.equal(whole, torch.cat(halves))
    reordered = make_mask(cfg, coords, sample_generators(keys.flip(0))).mask
    assert torch.equal(reordered, whole.flip(0))
    check_plan(make_mask(cfg, coords, sample_generators(keys)), 64, 48)
    assert len({tuple(m.tolist()) for m in whole}) == 6  # different keys, different masks


def test_running_cell__half_the_hidden_tokens_each_tube_at_two_steps_of_four():
    coords = grid(8, 4, 4).expand(3, -1, -1)  # (t, y, x)
    cfg = MaskConfig("tube", 0.75, tube_axis=0, decode="running_cell")
    plan = make_mask(cfg, coords, torch.Generator().manual_seed(0))
    n_hide = plan.ids_hide.shape[1]
    assert plan.ids_pred.shape == (3, n_hide // 2)
    for b in range(3):
        pred = set(plan.ids_pred[b].tolist())
        assert pred <= set(plan.ids_hide[b].tolist())  # only hidden tokens are reconstructed
        tyx = coords[b, plan.ids_pred[b]].long()
        for y, x in {(int(y), int(x)) for _, y, x in tyx}:  # every hidden tube: two steps of every four
            steps = sorted(int(t) for t, yy, xx in tyx if (yy, xx) == (y, x))
            phases = sorted({s % 4 for s in steps})  # two neighbouring phases of the cycle of four
            assert len(steps) == 4 and len(phases) == 2 and phases[1] - phases[0] in (1, 3)
        cells = tyx[tyx[:, 0] == 0]  # one step: per 2x2 cell, two of four positions
        assert len({(int(y) % 2, int(x) % 2) for _, y, x in cells}) == 2


def test_running_cell__the_decoder_predicts_only_the_subset():
    import dataclasses

    from foundations.grid import GridAdapter, GridConfig
    from foundations.mae import MaskedAutoencoder
    from tests.conftest import TINY_MAE, image_adapter  # noqa: F401

    class Video(GridAdapter):
        name = "video_test"

    cfg = dataclasses.replace(TINY_MAE, mask=MaskConfig("tube", 0.75, decode="running_cell"))
    mae = MaskedAutoencoder(Video(GridConfig(3, (2, 8, 8), (8, 32, 32), (0.0,), (1.0,)), 32), cfg)
    out = mae(torch.rand(2, 3, 8, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.pred.shape[1] == out.mask.sum(1)[0] // 2 and out.ids_pred.shape == out.pred.shape[:2]
    assert out.mask.gather(1, out.ids_pred).all()


@pytest.mark.parametrize("decode", ["hidden", "running_cell"])
def test_predict_ratio__a_random_subset_of_what_would_be_decoded(decode):
    coords = grid(4, 8, 8).expand(3, -1, -1)  # 256 tokens
    cfg = MaskConfig("tube", 0.75, decode=decode, predict_ratio=0.25)
    plan = make_mask(cfg, coords, torch.Generator().manual_seed(0))
    full = make_mask(dataclasses.replace(cfg, predict_ratio=None), coords, torch.Generator().manual_seed(0))
    assert plan.ids_pred.shape == (3, 64)  # a quarter of 256, out of 192 hidden (the running cell: 96)
    pool = full.ids_hide if decode == "hidden" else full.ids_pred
    for b in range(3):
        assert set(plan.ids_pred[b].tolist()) <= set(pool[b].tolist()) and plan.ids_pred[b].unique().numel() == 64
    assert not torch.equal(plan.ids_pred[0].sort().values, plan.ids_pred[1].sort().values)  # drawn per sample
