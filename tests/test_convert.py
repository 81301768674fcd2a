"""Importing the field's encoders: a source model built by its own library with random weights,
saved in its own format, imported, and compared with the source on the same images: patch tokens
and pooled features equal to 1e-5, at the source's size and at another."""

import json

import pytest
import torch
from safetensors.torch import save_file

from foundations.checkpoint import CheckpointError, save_pretrained
from modalities import load_encoder
from modalities.convert import IMAGENET, convert, main

MEAN, STD = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random, LayerNorms and position tables included (initialisation leaves
    LayerNorms at 1 and 0, and transformers 5 leaves ViTMAE's tables at zero)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] > 1 else 0.0))
    return model.eval()


def timm_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    kw = {"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 0, **kw}
    return randomised(VisionTransformer(global_pool="avg", fc_norm=False, **kw))


def assert_same(ours: torch.Tensor, theirs: torch.Tensor):
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-5, (ours - theirs).abs().max().item()


@pytest.mark.parametrize("fmt", ["safetensors", "pth-mae"])
def test_timm_and_mae_files_import_equal_at_their_size_and_another(tmp_path, fmt):
    vit = timm_vit()
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "vit.safetensors"
        save_file(state, path)
    else:  # MAE's release: {"model": state dict}, with the decoder of a *_full file beside it
        path = tmp_path / "mae_pretrain_vit.pth"
        decoder = {"decoder_embed.weight": torch.randn(32, 64), "mask_token": torch.zeros(1, 1, 32)}
        torch.save({"model": {**state, **decoder}}, path)  # a foreign file, as MAE writes it
    encoder = convert(path, heads=2)
    assert encoder.info["source"]["kind"] == ("timm" if fmt == "safetensors" else "mae")
    assert encoder.info["not_imported"] == ([] if fmt == "safetensors" else ["decoder_embed.weight", "mask_token"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        theirs = vit.forward_features((x - MEAN) / STD)  # (B, 1 + N, D), normed
        out = encoder(x)
    assert_same(out.tokens, theirs[:, 1:])
    assert_same(out.features, vit.forward_head(theirs, pre_logits=True))  # the mean of the patch tokens
    # 96 x 64: the position table resized as timm resizes it, or as MAE's interpolate_pos_embed
    other = torch.rand(2, 3, 96, 64)
    if fmt == "safetensors":
        reference = timm_vit(dynamic_img_size=True)
        reference.load_state_dict(state)
    else:
        table = state["pos_embed"][:, 1:].transpose(1, 2).reshape(1, 64, 4, 4)
        table = torch.nn.functional.interpolate(table, size=(6, 4), mode="bicubic", align_corners=False)
        reference = timm_vit(img_size=(96, 64))
        reference.load_state_dict(
            {**state, "pos_embed": torch.cat([state["pos_embed"][:, :1], table.flatten(2).transpose(1, 2)], 1)}
        )
    with torch.no_grad():
        assert_same(encoder(other).tokens, reference.forward_features((other - MEAN) / STD)[:, 1:])


def test_a_table_without_a_row_for_the_class_token_imports_equal(tmp_path):
    vit = timm_vit(no_embed_class=True)  # DeiT III's layout: positions for the patches only
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, tmp_path / "deit3.safetensors")
    encoder = convert(tmp_path / "deit3.safetensors", heads=2)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_same(encoder(x).tokens, vit.forward_features((x - MEAN) / STD)[:, 1:])


def test_hugging_face_vitmae_directory_imports_equal(tmp_path):
    import transformers  # the dev extra's (tests and benchmarks), never the suite's at run time

    cfg = transformers.ViTMAEConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=64,
        patch_size=16, mask_ratio=0.0,
    )  # fmt: skip
    hf = randomised(transformers.ViTMAEModel(cfg))
    hf.save_pretrained(tmp_path / "hf")
    encoder = convert(tmp_path / "hf")
    assert encoder.info["source"] == {
        "kind": "hf-vitmae", "guessed": True, "file": str(tmp_path / "hf"), "licence": "see the source"
    }  # fmt: skip
    assert encoder.cfg.norm_eps == 1e-12  # Hugging Face's, not MAE's 1e-6
    for size in ((64, 64), (96, 64)):
        x = torch.rand(2, 3, *size)
        n = (size[0] // 16) * (size[1] // 16)
        with torch.no_grad():  # sorted noise keeps the tokens in order (ViTMAE shuffles even at ratio 0)
            theirs = hf(
                (x - MEAN) / STD, noise=torch.arange(n).float().expand(2, n), interpolate_pos_encoding=size != (64, 64)
            ).last_hidden_state
            assert_same(encoder(x).tokens, theirs[:, 1:])


def test_imported_encoder_round_trips_through_our_format_and_loads_in_one_call(tmp_path):
    vit = timm_vit()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, tmp_path / "vit.safetensors")
    assert main([str(tmp_path / "vit.safetensors"), str(tmp_path / "ours"), "--heads", "2"]) == 0
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["source"]["kind"] == "timm" and config["encoder"]["pos_grid"] == [4, 4]
    x = torch.rand(2, 3, 64, 48)
    direct, saved = convert(tmp_path / "vit.safetensors", heads=2), load_encoder(tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(direct(x).tokens, saved(x).tokens)
    save_pretrained(saved, tmp_path / "again")
    assert torch.equal(load_encoder(tmp_path / "again")(x).tokens, saved(x).tokens)


def test_what_cannot_be_imported_is_named(tmp_path, capsys):
    state = {k: v.contiguous() for k, v in timm_vit().state_dict().items()}
    save_file({**state, "reg_token": torch.zeros(1, 4, 64)}, tmp_path / "reg.safetensors")
    with pytest.raises(CheckpointError, match=r"reg.safetensors: 1 tensors this ViT has no place for.*reg_token"):
        convert(tmp_path / "reg.safetensors", heads=2)
    del state["blocks.0.attn.qkv.weight"]
    save_file(state, tmp_path / "cut.safetensors")
    with pytest.raises(
        CheckpointError, match=r"cut.safetensors: not a ViT in timm/MAE names: missing \['blocks.0.attn"
    ):
        convert(tmp_path / "cut.safetensors", heads=2)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main([str(tmp_path / "junk.pth"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'junk.pth'}: cannot read weights")
    assert not (tmp_path / "out").exists()
