import dataclasses
import json
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from foundations.checkpoint import save_pretrained
from foundations.prune import (
    block_scores,
    choose_blocks,
    encoder_cost,
    random_blocks,
    remove_blocks,
    weight_entropy,
)
from foundations.vit import Encoder, EncoderConfig
from modalities import build_adapter, load_encoder
from tests.conftest import TINY_ENCODER, image_adapter

DEEP = dataclasses.replace(TINY_ENCODER, depth=4)
CONFIG = {"name": "ultrasound", "channels": 1, "patch": [8, 8], "mean": [0.3], "std": [0.2], "size": [32, 32]}


def four_matrices(block) -> list[torch.Tensor]:
    return [block.attn.qkv.weight, block.attn.proj.weight, block.mlp.fc1.weight, block.mlp.fc2.weight]


def embedded(enc: Encoder, x: torch.Tensor) -> torch.Tensor:
    """The tokens as they enter the first block: adapter tokens plus the position embedding."""
    tokens, coords = enc.adapter.embed(enc.adapter.tokenize(x))
    return tokens + enc.pos_embed(coords)  # (B, N, D)


@pytest.mark.parametrize("binning", ["float16", "histogram"])
def test_weight_entropy__hand_computed(binning):
    assert weight_entropy([torch.tensor([0.0, 0.0, 1.0, 1.0])], binning) == pytest.approx(1.0)
    three_one = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))  # 0.811 bits
    assert weight_entropy([torch.tensor([0.5, 0.5, 0.5, 2.0])], binning) == pytest.approx(three_one)
    # the values of all tensors together, whatever their shapes
    together = [torch.tensor([0.0, 1.0]), torch.tensor([[2.0, 3.0]])]
    assert weight_entropy(together, binning, bins=4) == pytest.approx(2.0)
    assert weight_entropy([torch.full((3, 5), 0.25)], binning) == 0.0


def test_weight_entropy__float16_merges_values_below_its_precision():
    close = torch.tensor([1.0, 1.0 + 1e-5])  # distinct in float32, one value in float16
    assert close[0] != close[1]
    assert weight_entropy([close], "float16") == 0.0
    assert weight_entropy([close], "histogram") == pytest.approx(1.0)


def test_weight_entropy__histogram_bins_between_min_and_max():
    values = torch.tensor([0.0, 0.1, 0.9, 1.0])
    assert weight_entropy([values], "histogram", bins=2) == pytest.approx(1.0)  # {0, 0.1}, {0.9, 1}
    assert weight_entropy([values], "histogram", bins=10) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs,match", [({"binning": "float32"}, "float16"), ({"binning": "histogram", "bins": 0}, "bins")]
)
def test_weight_entropy__bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        weight_entropy([torch.zeros(3)], **kwargs)


def test_block_scores__constant_block_has_zero_entropy_and_the_lowest_score():
    enc = Encoder(image_adapter(), DEEP)
    with torch.no_grad():
        for m in four_matrices(enc.blocks[2]):
            m.fill_(0.01)
    for binning in ("float16", "histogram"):
        scores = block_scores(enc, "entropy", binning)
        assert scores.shape == (4,) and scores[2] == 0.0
        assert scores.argmin() == 2 and (scores[[0, 1, 3]] > 1.0).all()
    assert choose_blocks(block_scores(enc), keep=3) == [2]


def test_block_scores__entropy_of_the_four_matrices_only():
    enc = Encoder(image_adapter(), DEEP)
    scores = block_scores(enc, "entropy")
    for block, score in zip(enc.blocks, scores, strict=True):
        assert score == pytest.approx(weight_entropy(four_matrices(block)))
    with torch.no_grad():  # biases and norms are no part of the score
        enc.blocks[0].attn.qkv.bias.normal_()
        enc.blocks[0].norm1.weight.normal_()
    torch.testing.assert_close(block_scores(enc, "entropy"), scores)


@pytest.mark.parametrize("method", ["l1", "variance"])
def test_block_scores__l1_and_variance_match_direct_computation(method):
    enc = Encoder(image_adapter(), DEEP)
    scores = block_scores(enc, method)
    for block, score in zip(enc.blocks, scores, strict=True):
        values = torch.cat([m.detach().double().flatten() for m in four_matrices(block)])
        expected = values.abs().mean() if method == "l1" else values.var()
        assert score.item() == pytest.approx(expected.item(), rel=1e-9)


def test_block_scores__unknown_method_lists_the_methods():
    with pytest.raises(ValueError, match=r"\('entropy', 'l1', 'variance'\)"):
        block_scores(Encoder(image_adapter(), DEEP), "taylor")


def test_choose_blocks__lowest_scores_by_ratio_or_keep():
    scores = torch.tensor([3.0, 1.0, 2.0, 0.5])
    assert choose_blocks(scores, ratio=0.5) == [1, 3]
    assert choose_blocks(scores, keep=3) == [3]
    assert choose_blocks(scores, keep=1) == [1, 2, 3]
    assert choose_blocks(scores, ratio=0.0) == [] == choose_blocks(scores, keep=4)
    assert choose_blocks(scores, keep=0) == [0, 1, 2, 3]
    assert choose_blocks([1.0, 2.0], ratio=0.4) == [0]  # a plain list works too; round(0.8) = 1


def test_choose_blocks__ratio_arithmetic():
    scores = torch.arange(12.0)  # block i scores i
    assert choose_blocks(scores, ratio=0.25) == [0, 1, 2]
    assert choose_blocks(scores, ratio=0.917) == list(range(11))  # the paper's 91.7 %: 11 of 12
    assert choose_blocks(scores, ratio=0.99) == list(range(12))  # round(11.88) = 12


def test_choose_blocks__ties_go_to_the_lower_index():
    assert choose_blocks([1.0, 1.0, 1.0, 0.5], keep=2) == [0, 3]
    assert choose_blocks([2.0, 2.0, 2.0, 2.0], keep=1) == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ratio": 1.0}, r"ratio must be in \[0, 1\), got 1.0"),
        ({"ratio": -0.1}, r"ratio must be in \[0, 1\), got -0.1"),
        ({"keep": 5}, r"keep must be an integer in \[0, 4\]"),
        ({"keep": -1}, "keep must be"),
        ({"keep": 2.0}, "keep must be"),
        ({"ratio": 0.5, "keep": 2}, "exactly one of ratio and keep"),
        ({}, "exactly one of ratio and keep"),
    ],
)
def test_choose_blocks__bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        choose_blocks(torch.tensor([3.0, 1.0, 2.0, 0.5]), **kwargs)


def test_random_blocks__seeded_distinct_sorted():
    drawn = random_blocks(12, 5, seed=3)
    assert drawn == random_blocks(12, 5, seed=3) == sorted(set(drawn)) and len(drawn) == 5
    assert all(0 <= i < 12 for i in drawn)
    assert any(random_blocks(12, 5, seed=s) != drawn for s in range(4, 8))
    assert random_blocks(4, 4, seed=0) == [0, 1, 2, 3] and random_blocks(4, 0, seed=0) == []
    with pytest.raises(ValueError, match="n must be in"):
        random_blocks(4, 5, seed=0)


def test_remove_blocks__equals_skipping_those_blocks_and_leaves_the_original():
    enc = Encoder(image_adapter(), DEEP).eval()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.rand(2, 1, 16, 24)
    h = embedded(enc, x)
    for i in (0, 3):  # blocks 1 and 2 removed
        h = enc.blocks[i](h)
    expected = enc.norm(h)
    pruned = remove_blocks(enc, [2, 1])
    assert pruned.cfg.depth == len(pruned.blocks) == 2 and pruned.cfg == dataclasses.replace(DEEP, depth=2)
    out = pruned(x)
    torch.testing.assert_close(out.tokens, expected)
    torch.testing.assert_close(out.features, expected.mean(1))
    # the original keeps its blocks, config and weights, and shares no tensor with the copy
    assert enc.cfg.depth == len(enc.blocks) == 4
    with torch.no_grad():
        pruned.blocks[0].attn.qkv.weight.add_(1.0)
        pruned.norm.weight.add_(1.0)
    after = enc.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.allclose(pruned(x).tokens, enc(x).tokens)


def test_remove_blocks__all_blocks_leaves_the_embedding():
    enc = Encoder(image_adapter(), DEEP).eval()
    x = torch.rand(2, 1, 16, 24)  # 2 x 3 patches
    empty = remove_blocks(enc, range(4))
    assert empty.cfg.depth == 0 and len(empty.blocks) == 0
    out = empty(x)
    expected = enc.norm(embedded(enc, x))  # (2, 6, 32)
    assert out.tokens.shape == (2, 6, 32) and out.features.shape == (2, 32)
    torch.testing.assert_close(out.tokens, expected)
    torch.testing.assert_close(out.features, expected.mean(1))


@pytest.mark.parametrize("indices", [[5], [-1], [1, 1], [0.5]])
def test_remove_blocks__bad_indices_raise(indices):
    with pytest.raises(ValueError, match="block indices"):
        remove_blocks(Encoder(image_adapter(), DEEP), indices)


@pytest.mark.parametrize("indices", [[0, 2], [0, 1, 2, 3]])
def test_remove_blocks__saved_and_loaded_gives_the_same_encoder(tmp_path, indices):
    enc = Encoder(build_adapter(CONFIG, 32), DEEP).eval()
    pruned = remove_blocks(enc, indices)
    pruning = {"method": "entropy", "binning": "float16", "removed": indices, "depth": 4}
    save_pretrained(pruned, tmp_path / "pruned", pruning=pruning)
    loaded = load_encoder(tmp_path / "pruned")
    assert loaded.cfg.depth == len(loaded.blocks) == 4 - len(indices)
    x = torch.rand(2, 1, 32, 48)
    torch.testing.assert_close(loaded(x).features, pruned(x).features)
    torch.testing.assert_close(loaded(x).tokens, pruned(x).tokens)
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["pruning"] == pruning and config["encoder"]["depth"] == 4 - len(indices)


def test_encoder_cost__hand_computed_small_case():
    cost = encoder_cost(EncoderConfig(dim=4, depth=1, heads=1, mlp_ratio=2.0), n_tokens=3)
    # qkv 2*3*4*12 = 288, proj 2*3*4*4 = 96, scores and sum 2*2*9*4 = 144, MLP 2*2*3*4*8 = 384
    assert cost["block_flops"] == 288 + 96 + 144 + 384
    # qkv 48 + 12, proj 16 + 4, fc1 32 + 8, fc2 32 + 4, two LayerNorms 16
    assert cost["block_params"] == 60 + 20 + 40 + 36 + 16


@pytest.mark.parametrize("layer_scale", [None, 1e-4])
def test_encoder_cost__scales_with_depth_and_matches_the_built_blocks(layer_scale):
    cfg = dataclasses.replace(DEEP, layer_scale=layer_scale)
    one = encoder_cost(dataclasses.replace(cfg, depth=1), n_tokens=10)
    for depth in (0, 1, 3):
        cost = encoder_cost(dataclasses.replace(cfg, depth=depth), n_tokens=10)
        assert cost == {"block_params": depth * one["block_params"], "block_flops": depth * one["block_flops"]}
    enc = Encoder(image_adapter(), cfg)
    assert encoder_cost(cfg, 10)["block_params"] == sum(p.numel() for p in enc.blocks.parameters())
    # torch's own count of the matrix products; the math kernel, as the CPU's fused one goes uncounted
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        enc.blocks[0](torch.rand(1, 10, 32))
    assert one["block_flops"] == counter.get_total_flops()
