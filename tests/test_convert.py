"""Importing the field's encoders: a source model built by its own library with random weights,
saved in its own format, imported, and compared with the source on the same images: patch tokens
and pooled features equal to 1e-5, at the source's size and at another."""

import json

import pytest
import torch
from safetensors.torch import save_file

from foundations.checkpoint import CheckpointError, load_decoder, save_pretrained
from modalities import load_encoder
from modalities.convert import IMAGENET, convert, import_checkpoint, main

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
    return randomised(VisionTransformer(**{"global_pool": "avg", "fc_norm": False, **kw}))


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


def test_fine_tuned_mae_file_pools_through_its_fc_norm_and_has_no_final_norm(tmp_path):
    vit = timm_vit(fc_norm=True, num_classes=5)  # MAE's fine-tuning: fc_norm on the tokens' mean, no final norm
    torch.save({"model": {k: v.contiguous() for k, v in vit.state_dict().items()}}, tmp_path / "ft.pth")
    encoder = convert(tmp_path / "ft.pth", heads=2)
    assert (encoder.cfg.final_norm, encoder.cfg.fc_norm, encoder.cfg.pool) == (False, True, "avg")
    assert encoder.info["not_imported"] == ["head.bias", "head.weight"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        theirs = vit.forward_features((x - MEAN) / STD)
        out = encoder(x)
    assert_same(out.tokens, theirs[:, 1:])
    assert_same(out.features, vit.forward_head(theirs, pre_logits=True))


def test_grey_fold_equals_the_source_on_the_grey_image_in_three_channels(tmp_path):
    vit = timm_vit()
    torch.save({"model": {k: v.contiguous() for k, v in vit.state_dict().items()}}, tmp_path / "mae.pth")
    encoder = convert(tmp_path / "mae.pth", modality="ultrasound", heads=2, grey=True)
    assert encoder.adapter.name == "ultrasound" and encoder.adapter.config.channels == 1
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert_same(encoder(grey).tokens, vit.forward_features((grey.expand(-1, 3, -1, -1) - MEAN) / STD)[:, 1:])
    with pytest.raises(CheckpointError, match="a video adapter takes 3-D patches"):
        convert(tmp_path / "mae.pth", modality="video", heads=2)


def hf_videomae(frames=16, size=32, **kw):
    import transformers

    cfg = transformers.VideoMAEConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=size,
        patch_size=16, num_frames=frames, tubelet_size=2, **kw,
    )  # fmt: skip
    return randomised(transformers.VideoMAEModel(cfg))


def official_videomae(hf_state: dict, fine_tuned: bool) -> dict:
    """A Hugging Face VideoMAE's weights in the official names: the pretraining encoder under
    ``encoder.``, fused qkv without bias beside q_bias and v_bias; fine-tuned files have no prefix."""
    pre = "" if fine_tuned else "encoder."
    out = {}
    for key, value in hf_state.items():
        key = key.replace("embeddings.patch_embeddings.projection", "patch_embed.proj").replace("layernorm.", "norm.")
        for a, b in [
            ("layernorm_before", "norm1"),
            ("layernorm_after", "norm2"),
            ("attention.output.dense", "attn.proj"),
        ]:
            key = key.replace(a, b)
        key = (
            key.replace("intermediate.dense", "mlp.fc1")
            .replace("output.dense", "mlp.fc2")
            .replace("encoder.layer.", "blocks.")
        )
        out[pre + key] = value
    for i in range(2):
        a = f"{pre}blocks.{i}.attention.attention."
        out[f"{pre}blocks.{i}.attn.qkv.weight"] = torch.cat(
            [out.pop(a + f"{n}.weight") for n in ("query", "key", "value")]
        )
        out[f"{pre}blocks.{i}.attn.q_bias"], out[f"{pre}blocks.{i}.attn.v_bias"] = (
            out.pop(a + "query.bias"),
            out.pop(a + "value.bias"),
        )
    return out


@pytest.mark.parametrize("fine_tuned", [False, True])
def test_official_videomae_file_imports_equal_at_its_clip_length_and_another(tmp_path, fine_tuned):
    # pretraining: a final norm (use_mean_pooling off); fine-tuned: none, fc_norm on the tokens' mean
    hf = hf_videomae(layer_norm_eps=1e-6, use_mean_pooling=fine_tuned)
    state = official_videomae(hf.state_dict(), fine_tuned)
    fc_norm = torch.nn.LayerNorm(64, eps=1e-6)
    randomised(fc_norm)
    if fine_tuned:
        state |= {"fc_norm.weight": fc_norm.weight, "fc_norm.bias": fc_norm.bias, "head.weight": torch.randn(5, 64)}
    else:
        state |= {"encoder_to_decoder.weight": torch.randn(32, 64), "mask_token": torch.zeros(1, 1, 32)}
    torch.save({"module" if fine_tuned else "model": state}, tmp_path / "videomae.pth")
    encoder = convert(tmp_path / "videomae.pth", heads=2)
    assert encoder.info["source"]["kind"] == "videomae" and encoder.adapter.name == "video"
    assert encoder.cfg.final_norm is not fine_tuned and not encoder.cfg.cls_token
    # no size in the file: the table is VideoMAE's for 16 frames of 224 x 224 (1568 tokens), and for
    # other clips computed again, as VideoMAE computes it; 32 frames of 224 x 224 need more rows
    for frames, size in ((16, 32), (32, 224)):
        reference = hf_videomae(frames, size, layer_norm_eps=1e-6, use_mean_pooling=fine_tuned)
        reference.load_state_dict(hf.state_dict())
        x = torch.rand(2, 3, frames, size, size)
        with torch.no_grad():
            theirs = reference(((x - MEAN[..., None]) / STD[..., None]).transpose(1, 2)).last_hidden_state
            out = encoder(x)
        assert_same(out.tokens, theirs)
        if fine_tuned:
            assert_same(out.features, fc_norm(theirs.mean(1)).detach())


@pytest.mark.parametrize("mean_pooling", [False, True])
def test_hugging_face_videomae_directory_imports_equal(tmp_path, mean_pooling):
    hf = hf_videomae(use_mean_pooling=mean_pooling)  # use_mean_pooling: no final norm on the tokens
    hf.save_pretrained(tmp_path / "hf")  # its files keep q_bias and v_bias, no key bias
    encoder = convert(tmp_path / "hf")
    assert encoder.info["source"]["kind"] == "hf-videomae" and encoder.cfg.norm_eps == 1e-12
    assert encoder.cfg.final_norm is not mean_pooling
    x = torch.rand(2, 3, 16, 32, 32)
    with torch.no_grad():  # Hugging Face's videos are (B, T, C, H, W)
        theirs = hf(((x - MEAN[..., None]) / STD[..., None]).transpose(1, 2)).last_hidden_state
        assert_same(encoder(x).tokens, theirs)


@pytest.mark.parametrize("fine_tuned", [False, True])
def test_audiomae_file_imports_equal_at_1024_frames_and_another_length(tmp_path, fine_tuned):
    # AudioMAE's encoder is timm's ViT on (1024 frames x 128 mel bins) with one channel
    kw = {"img_size": (1024, 128), "in_chans": 1, "fc_norm": fine_tuned}
    vit = timm_vit(**kw)
    # AudioMAE's released decoder has Swin blocks (relative positions): not MAE's, left out
    swin = {"decoder_embed.weight": torch.randn(32, 64), "mask_token": torch.zeros(1, 1, 32)}
    swin |= {"decoder_blocks.0.attn.qkv.weight": torch.randn(96, 32), "decoder_norm.weight": torch.ones(32)}
    swin |= {"decoder_blocks.0.mlp.fc1.weight": torch.randn(128, 32)}
    swin |= {
        "decoder_blocks.0.attn.relative_position_bias_table": torch.zeros(9, 2),
        "decoder_pred.weight": torch.randn(256, 32),
    }
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    torch.save({"model": {**state, **swin}}, tmp_path / "audiomae.pth")
    imported = import_checkpoint(tmp_path / "audiomae.pth", heads=2)
    encoder = imported.encoder
    assert imported.decoder is None and "not MAE's decoder" in imported.decoder_note
    assert encoder.info["source"]["kind"] == "audiomae" and encoder.cfg.pos_grid == (64, 8)
    assert encoder.adapter.name == "audio" and encoder.cfg.fc_norm is fine_tuned
    reference = timm_vit(dynamic_img_size=True, **kw)  # timm resizes the table for other lengths
    reference.load_state_dict(vit.state_dict())
    for frames in (1024, 512):
        fbank = torch.randn(2, 1, frames, 128) * 4 - 4  # log-mel values
        with torch.no_grad():
            theirs = reference.forward_features((fbank + 4.2677393) / (2 * 4.5689974))
            out = encoder(fbank)
        assert_same(out.tokens, theirs[:, 1:])
        if fine_tuned:
            assert_same(out.features, reference.forward_head(theirs, pre_logits=True))


def official_mae_full(hf_state: dict) -> dict:
    """A Hugging Face ViTMAEForPreTraining's weights (transformers 5's names) as MAE's ``*_full``
    files name them: timm's encoder names, then decoder_embed, mask_token, decoder_pos_embed,
    decoder_blocks, decoder_norm, decoder_pred."""
    out = {}
    for key, value in hf_state.items():
        key = key.replace("vit.embeddings.cls_token", "cls_token").replace(
            "vit.embeddings.position_embeddings", "pos_embed"
        )
        key = key.replace("vit.embeddings.patch_embeddings.projection", "patch_embed.proj").replace(
            "vit.layernorm", "norm"
        )
        key = (
            key.replace("vit.layers.", "blocks.")
            .replace("decoder.decoder_layers.", "decoder_blocks.")
            .replace("decoder.", "")
        )
        key = (
            key.replace("layernorm_before", "norm1")
            .replace("layernorm_after", "norm2")
            .replace("attention.o_proj", "attn.proj")
        )
        out[key] = value
    for blocks in ("blocks", "decoder_blocks"):
        for kind in ("weight", "bias"):
            parts = [out.pop(f"{blocks}.0.attention.{n}_proj.{kind}") for n in "qkv"]
            out[f"{blocks}.0.attn.qkv.{kind}"] = torch.cat(parts)
    return out


@pytest.mark.parametrize("fmt", ["hf-vitmae", "mae-full"])
def test_imported_decoder_gives_the_source_loss_on_the_same_masked_images(tmp_path, fmt):
    """Continuing pretraining starts where the source stopped: MAE's loss (norm-pix, 0.75 hidden)."""
    import transformers

    from foundations.mae import MAEConfig, MaskedAutoencoder
    from foundations.masking import MaskConfig, plan_from_scores

    cfg = transformers.ViTMAEConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, image_size=64,
        patch_size=16, decoder_hidden_size=64, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=128, norm_pix_loss=True, mask_ratio=0.75,  # MAE's decoder heads: 32 wide
        layer_norm_eps=1e-12 if fmt == "hf-vitmae" else 1e-6,  # MAE's own LayerNorms: 1e-6
    )  # fmt: skip
    hf = randomised(transformers.ViTMAEForPreTraining(cfg))
    with torch.no_grad():
        hf.decoder.decoder_pos_embed[:, 0] = 0  # MAE's decoder gives the class token no position
    if fmt == "hf-vitmae":
        path = tmp_path / "hf"
        hf.save_pretrained(path)
    else:
        path = tmp_path / "mae_full.pth"
        torch.save({"model": official_mae_full(hf.state_dict())}, path)
    imported = import_checkpoint(path, heads=2)
    decoder_cfg, encoder = imported.decoder.cfg, imported.encoder
    assert (decoder_cfg.dim, decoder_cfg.heads, decoder_cfg.norm_eps) == (64, 2, 1e-12 if fmt == "hf-vitmae" else 1e-6)
    assert encoder.info["not_imported"] == [] and encoder.info["decoder_import"] == "imported"
    mae = MaskedAutoencoder(encoder.adapter, MAEConfig(encoder.cfg, decoder_cfg, MaskConfig("random", 0.75)))
    mae.encoder.load_state_dict(encoder.state_dict())
    mae.decoder.load_state_dict(imported.decoder.state_dict())
    x, noise = torch.rand(2, 3, 64, 64), torch.rand(2, 16)  # Hugging Face keeps the 4 lowest-noise patches
    with torch.no_grad():
        theirs = hf((x - MEAN) / STD, noise=noise).loss
        ours = mae.eval()(x, plan=plan_from_scores(-noise, 12)).loss
    assert abs(ours.item() - theirs.item()) < 1e-5 * theirs.item(), (ours.item(), theirs.item())
    # the decoder travels with the encoder in this suite's format
    assert main([str(path), str(tmp_path / "ours"), "--heads", "2"]) == 0
    saved = load_decoder(tmp_path / "ours", load_encoder(tmp_path / "ours"))
    assert saved.cfg == decoder_cfg
    assert all(torch.equal(saved.state_dict()[k], v) for k, v in imported.decoder.state_dict().items())


def test_imported_videomae_decoder_gives_the_source_loss_on_the_same_masked_clips(tmp_path):
    import transformers

    from foundations.mae import MAEConfig, MaskedAutoencoder
    from foundations.masking import MaskConfig, plan_from_scores

    cfg = transformers.VideoMAEConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, image_size=32,
        patch_size=16, num_frames=8, tubelet_size=2, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True, use_mean_pooling=False,
        layer_norm_eps=1e-5,  # its decoder's last LayerNorm has 1e-5 whatever the config says
    )  # fmt: skip
    hf = randomised(transformers.VideoMAEForPreTraining(cfg))
    hf.save_pretrained(tmp_path / "hf")
    imported = import_checkpoint(tmp_path / "hf")
    decoder_cfg, encoder = imported.decoder.cfg, imported.encoder
    mae = MaskedAutoencoder(encoder.adapter, MAEConfig(encoder.cfg, decoder_cfg, MaskConfig("tube", 0.75), True))
    mae.encoder.load_state_dict(encoder.state_dict())
    mae.decoder.load_state_dict(imported.decoder.state_dict())
    x = torch.rand(2, 3, 8, 32, 32)
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[0, [0, 3, 5, 6, 9, 10, 12, 15]] = hidden[1, [1, 2, 4, 7, 8, 11, 13, 14]] = True
    with torch.no_grad():
        theirs = hf(((x - MEAN[..., None]) / STD[..., None]).transpose(1, 2), bool_masked_pos=hidden).loss
        ours = mae.eval()(x, plan=plan_from_scores(-hidden.float(), 8)).loss
    assert abs(ours.item() - theirs.item()) < 1e-5 * theirs.item(), (ours.item(), theirs.item())  # 1.4e-6 measured


def test_a_timm_model_directory_from_the_hub_imports_with_its_size_mean_and_std(tmp_path):
    vit = timm_vit(img_size=(64, 32), embed_dim=192, num_heads=3)  # a non-square grid: its rows could not tell
    (tmp_path / "timm").mkdir()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, tmp_path / "timm" / "model.safetensors")
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    pretrained = {"input_size": [3, 64, 32], "mean": mean, "std": std}
    config = {"architecture": "vit_tiny_patch16_64", "num_classes": 0, "pretrained_cfg": pretrained}
    (tmp_path / "timm" / "config.json").write_text(json.dumps(config))
    encoder = load_encoder(tmp_path / "timm")  # guessed: a timm directory
    assert encoder.info["source"]["kind"] == "timm" and encoder.cfg.pos_grid == (4, 2)
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        assert_same(encoder(x).tokens, vit.forward_features((x - 0.5) / 0.5)[:, 1:])
