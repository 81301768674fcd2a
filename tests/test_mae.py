import dataclasses

import pytest
import torch

from foundations.mae import DecoderConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from tests.conftest import TINY_MAE, image_adapter


def make(norm_target=True, mask=None, cls=False):
    ad = image_adapter(32, mean=(0.5,), std=(0.25,))
    cfg = dataclasses.replace(
        TINY_MAE,
        norm_target=norm_target,
        mask=mask or TINY_MAE.mask,
        encoder=dataclasses.replace(TINY_MAE.encoder, cls_token=cls, pool="cls" if cls else "mean"),
    )
    return MaskedAutoencoder(ad, cfg)


@pytest.mark.parametrize("cls", [False, True])
def test_mae__named_outputs_and_shapes(cls):
    out = make(cls=cls)(torch.rand(3, 1, 32, 32))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.mask.shape == (3, 16) and (out.mask.sum(1) == 12).all()
    assert out.pred.shape == (3, 12, 64) and out.target.shape == (3, 16, 64)
    assert out.mask.gather(1, out.ids_pred).all()  # predictions are for hidden tokens


def test_mae__loss_is_on_hidden_tokens_only():
    mae = make(norm_target=False)
    x = torch.rand(2, 1, 32, 32)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = mae(x, generator=gen())
    # the loss is the MSE of the predictions against the targets of the hidden tokens, nothing else
    target = out.target.gather(1, out.ids_pred[..., None].expand(-1, -1, 64))
    manual = ((out.pred - target) ** 2).mean()
    torch.testing.assert_close(out.loss, manual)


def test_mae__weights_zero_outside_valid_region():
    mae = make(norm_target=False)
    x = torch.rand(2, 1, 32, 32)
    valid = torch.zeros_like(x)
    valid[..., :16, :] = 1  # top half only
    out = mae(x, valid, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.weights, mae.adapter.targets(x, valid).weights)
    weights = out.weights.gather(1, out.ids_pred[..., None].expand(-1, -1, 64))
    target = out.target.gather(1, out.ids_pred[..., None].expand(-1, -1, 64))
    expected = ((((out.pred - target) ** 2) * weights).sum((1, 2)) / weights.sum((1, 2))).mean()  # per sample
    torch.testing.assert_close(out.loss, expected)


def test_mae__decoder_predicts_a_requested_subset():
    mae = make()
    x = torch.rand(2, 1, 32, 32)
    latent, coords, plan = mae.forward_encoder(x, torch.Generator().manual_seed(1))
    subset = plan.ids_hide[:, :5]
    pred, ids = mae.forward_decoder(latent, coords, plan, subset)
    assert pred.shape == (2, 5, 64) and torch.equal(ids, subset)
    target, weights = mae.adapter.targets(x)
    assert torch.isfinite(mae.forward_loss(target, weights, pred, ids))


def test_mae__gradients_reach_every_parameter():
    mae = make(mask=MaskConfig("block", 0.75, block_tokens=4))
    mae(torch.rand(2, 1, 32, 32)).loss.backward()
    missing = [n for n, p in mae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_mae__loss_falls_when_overfitting_a_batch():
    torch.manual_seed(0)
    mae = make(norm_target=False)
    x = torch.nn.functional.interpolate(torch.rand(4, 1, 4, 4), size=32, mode="bilinear")  # smooth images
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss = mae(x, generator=torch.Generator().manual_seed(0)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_decoder_config__bad_heads_raise():
    with pytest.raises(ValueError, match="divisible"):
        DecoderConfig(dim=30, heads=4)


def cross(mix=False, predict_ratio=None):
    torch.manual_seed(0)
    decoder = DecoderConfig(dim=32, depth=2, heads=2, kind="cross", mix=mix)
    mask = MaskConfig(ratio=0.75, predict_ratio=predict_ratio)
    cfg = dataclasses.replace(
        TINY_MAE, decoder=decoder, mask=mask, encoder=dataclasses.replace(TINY_MAE.encoder, cls_token=True)
    )
    return MaskedAutoencoder(image_adapter(32), cfg)


@pytest.mark.parametrize("mix", [False, True])
def test_cross_decoder__each_query_alone_predicts_its_token(mix):
    mae = cross(mix).eval()
    x = torch.rand(2, 1, 32, 32)
    latent, coords, plan = mae.forward_encoder(x, torch.Generator().manual_seed(0))
    every, ids = mae.forward_decoder(latent, coords, plan)
    assert every.shape == (2, 12, 64) and torch.equal(ids, plan.ids_hide)
    # no attention among queries: a token's prediction is the same whatever else is predicted
    alone, _ = mae.forward_decoder(latent, coords, plan, plan.ids_hide[:, 3:4])
    torch.testing.assert_close(alone[:, 0], every[:, 3])
    self_mae = make()  # MAE's decoder: the queries see each other
    latent, coords, plan = self_mae.forward_encoder(x, torch.Generator().manual_seed(0))
    every, _ = self_mae.forward_decoder(latent, coords, plan)
    alone, _ = self_mae.forward_decoder(latent, coords, plan, plan.ids_hide[:, 3:4])
    assert (alone[:, 0] - every[:, 3]).abs().max() > 1e-4


def test_cross_decoder__gradients_reach_every_parameter_and_predict_ratio_picks_the_tokens():
    mae = cross(mix=True, predict_ratio=0.25)
    out = mae(torch.rand(2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, 4, 64) and out.mask.gather(1, out.ids_pred).all()  # 4 of 16 tokens, all hidden
    out.loss.backward()
    silent = [n for n, p in mae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == [] and mae.decoder.mix.weight.shape == (2, 3)  # decoder depth x (encoder depth + 1)


def test_cross_decoder__a_mix_of_only_the_last_block_is_the_plain_cross_decoder():
    plain, mixed = cross().eval(), cross(mix=True).eval()
    mixed.load_state_dict(plain.state_dict(), strict=False)  # all but the mix and its norms
    with torch.no_grad():
        mixed.decoder.mix.weight.copy_(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))  # the encoder's output
    # (normed again by each block's mix norm, at its initial 1 and 0: tokens already normed stay so)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a = plain(x, generator=torch.Generator().manual_seed(0)).pred
        b = mixed(x, generator=torch.Generator().manual_seed(0)).pred
    torch.testing.assert_close(a, b)


def test_mae__bf16_autocast_keeps_the_loss_in_fp32_and_near_the_fp32_loss():
    mae = cross(mix=True, predict_ratio=0.25)
    x = torch.rand(4, 1, 32, 32)
    fp32 = mae(x, generator=torch.Generator().manual_seed(0)).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mae(x, generator=torch.Generator().manual_seed(0))
    assert out.pred.dtype == torch.bfloat16  # the matmuls ran in bf16
    assert out.loss.dtype == torch.float32  # the loss and its reduction did not
    assert 0 < (out.loss - fp32).abs() < 0.02 * fp32  # bf16's 8-bit mantissa: about 0.4 % per rounding


def test_reconstruct__predicts_every_hidden_token_when_training_predicts_a_quarter():
    mae = cross(mix=True, predict_ratio=0.25).eval()
    x = torch.rand(2, 1, 32, 32)
    out = mae.predict_hidden(x, seed=3)
    assert torch.equal(out.ids_pred.sort(1).values, out.mask.nonzero()[:, 1].view(2, 12))  # all 12 hidden, not 4
    image, masked, full = mae.reconstruct(x, seed=3)
    hidden = mae.adapter.unpatchify(out.mask[..., None].expand(-1, -1, 64).float(), x).bool()
    assert (full != image)[hidden].float().mean() > 0.99  # no hidden pixel shows the truth
    assert torch.equal(full[~hidden], image[~hidden]) and torch.equal(masked[hidden], torch.zeros_like(masked[hidden]))
