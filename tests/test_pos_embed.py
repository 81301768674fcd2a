import pytest
import torch

from foundations.pos_embed import PosEmbed, sincos_embed


def test_sincos__2d_matches_mae_layout():
    # MAE's 2-D table: first half of the channels embeds one axis, second half the other,
    # each as [sin(p * w_k), cos(p * w_k)] with w_k = 10000 ** (-k / F).
    coords = torch.tensor([[[2.0, 5.0]]])
    emb = sincos_embed(coords, 8)  # F = 2 frequencies per axis
    w = torch.tensor([1.0, 10000**-0.5])
    expected = torch.cat([torch.sin(2 * w), torch.cos(2 * w), torch.sin(5 * w), torch.cos(5 * w)])
    torch.testing.assert_close(emb[0, 0], expected)


def test_sincos__any_dim_pads_with_zeros():
    emb = sincos_embed(torch.rand(2, 5, 3), 32)  # 32 = 3 axes * 2 * 5 + 2 leftover
    assert emb.shape == (2, 5, 32)
    assert torch.all(emb[..., 30:] == 0) and emb[..., :30].abs().sum() > 0


def test_sincos__distinct_positions_distinct_embeddings():
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(9), indexing="ij")
    coords = torch.stack([rows, cols], -1).flatten(0, 1).float()[None]
    emb = sincos_embed(coords, 64)[0]
    dist = torch.cdist(emb, emb) + torch.eye(len(emb)) * 1e3
    assert dist.min() > 1e-3


def test_sincos__too_small_dim_raises():
    with pytest.raises(ValueError, match="too small"):
        sincos_embed(torch.rand(1, 2, 3), 4)


def test_pos_embed__mlp_is_learned_and_continuous():
    pe = PosEmbed("mlp", 3, 16)
    out = pe(torch.rand(2, 7, 3))
    assert out.shape == (2, 7, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in pe.parameters())


def test_pos_embed__unknown_kind_raises():
    with pytest.raises(ValueError, match="pos_embed"):
        PosEmbed("rope", 2, 16)
    with pytest.raises(ValueError, match="needs its grid"):
        PosEmbed("table", 2, 16)
