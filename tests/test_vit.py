import dataclasses

import pytest
import torch
import torch.nn.functional as F

from foundations.vit import PRESETS, Attention, Encoder, EncoderConfig
from tests.conftest import TINY_ENCODER, image_adapter


def test_attention__matches_explicit_softmax():
    attn = Attention(16, heads=4)
    x = torch.randn(2, 5, 16)
    qkv = attn.qkv(x).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = F.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(head_dim = 4)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_encoder__features_and_tokens_shapes_any_aspect():
    enc = Encoder(image_adapter(), TINY_ENCODER)
    out = enc(torch.rand(3, 1, 16, 40))  # 2 x 5 patches
    assert out.tokens.shape == (3, 10, 32) and out.features.shape == (3, 32)
    torch.testing.assert_close(out.features, out.tokens.mean(1))


def test_encoder__cls_token_gives_features():
    enc = Encoder(image_adapter(), dataclasses.replace(TINY_ENCODER, cls_token=True, pool="cls"))
    out = enc(torch.rand(2, 1, 16, 16))
    assert out.tokens.shape == (2, 4, 32)
    assert not torch.allclose(out.features, out.tokens.mean(1))


def test_encoder__cls_plus_max_pooling():
    enc = Encoder(image_adapter(), dataclasses.replace(TINY_ENCODER, cls_token=True, pool="cls+max"))
    out = enc(torch.rand(2, 1, 16, 16))
    assert enc.feature_dim == 64 and out.features.shape == (2, 64)
    torch.testing.assert_close(out.features[:, 32:], out.tokens.amax(1))


def test_encoder__visible_only_equals_running_on_the_subset():
    enc = Encoder(image_adapter(), TINY_ENCODER).eval()
    tokens, coords = enc.adapter.embed(torch.rand(2, 1, 32, 32))
    ids = torch.tensor([[0, 5, 9], [15, 2, 3]])
    sub = enc.forward_tokens(tokens, coords, ids)
    idx = ids[..., None]
    direct = enc.forward_tokens(tokens.gather(1, idx.expand(-1, -1, 32)), coords.gather(1, idx.expand(-1, -1, 2)))
    assert sub.shape == (2, 3, 32)
    torch.testing.assert_close(sub, direct)


def test_encoder__gradient_checkpointing_same_values_and_grads():
    torch.manual_seed(0)
    plain = Encoder(image_adapter(), TINY_ENCODER)
    ckpt = Encoder(image_adapter(), dataclasses.replace(TINY_ENCODER, grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 16, 16)
    a, b = plain(x).features, ckpt(x).features
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(plain.blocks[0].attn.qkv.weight.grad, ckpt.blocks[0].attn.qkv.weight.grad)


def test_encoder__drop_path_is_stochastic_in_training_only():
    enc = Encoder(image_adapter(), dataclasses.replace(TINY_ENCODER, drop_path=0.5))
    x = torch.rand(8, 1, 16, 16)
    assert not torch.allclose(enc(x).features, enc(x).features)
    enc.eval()
    torch.testing.assert_close(enc(x).features, enc(x).features)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dim": 30, "heads": 4}, "divisible"),
        ({"depth": -1}, "depth"),
        ({"drop_path": 1.0}, "drop_path"),
        ({"pool": "sum"}, "pool"),
        ({"pool": "cls"}, "cls_token=True"),
    ],
)
def test_encoder_config__bad_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**kwargs)


def test_presets__standard_vit_sizes():
    assert (PRESETS["base"].dim, PRESETS["base"].depth, PRESETS["base"].heads) == (768, 12, 12)
    assert (PRESETS["small"].dim, PRESETS["tiny"].dim, PRESETS["large"].depth) == (384, 192, 24)
