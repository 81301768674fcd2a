"""Recipes started from another library's checkpoint (issue 14): a MAE-layout ``.pth`` written here
from timm's ViT is fine-tuned and further pretrained by the ultrasound recipe (its RGB stem folded
for grey frames), and refused with one line by a recipe whose inputs have another dimensionality."""

import json

import pytest
import torch
from safetensors.torch import load_file

from foundations.checkpoint import CheckpointError
from modalities import load_encoder
from modalities.convert import IMAGENET
from tasks.session import import_encoder
from tests.conftest import launch_recipe

pytestmark = pytest.mark.e2e
SMALL = "--image-size 64 --phantom-per-class 16 --batch-size 8 --probe-steps 20 --finetune-steps 4".split()
SMALL += ["--checkpoint-every", "4", "--no-probe-baselines"]


@pytest.fixture(scope="module")
def mae_file(tmp_path_factory):
    """An official-MAE-layout file, ``{"model": state dict}``, of a small timm ViT with random weights
    (LayerNorms and the position table included), and that ViT."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)  # a module's fixture runs before the per-test seed
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=192, depth=2, num_heads=3, num_classes=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    path = tmp_path_factory.mktemp("foreign") / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": vit.state_dict()}, path)
    return path, vit


def test_ultrasound_fine_tunes_from_a_foreign_mae_file(tmp_path, mae_file):
    path, vit = mae_file
    out = tmp_path / "run"
    proc = launch_recipe("ultrasound", *SMALL, "--encoder", path, "--stage", "probe,finetune", "--out", out)
    assert "3-channel stem folded into 1 channel" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["probe/balanced_accuracy"] <= 1 and 0 <= metrics["finetune/balanced_accuracy"] <= 1
    assert metrics["encoder/source"] == "mae" and metrics["encoder/file"] == str(path)
    config = json.loads((out / "imported_encoder" / "config.json").read_text())
    assert config["source"]["kind"] == "mae" and config["adapter"]["channels"] == 1
    assert config["adapter"]["name"] == "ultrasound"
    # the imported encoder on a grey image is timm's ViT on it repeated in 3 channels, ImageNet-normalised
    grey = torch.rand(2, 1, 64, 64)
    mean, std = (torch.tensor(IMAGENET[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        ours = load_encoder(out / "imported_encoder")(grey).tokens
        theirs = vit.forward_features((grey.expand(-1, 3, -1, -1) - mean) / std)[:, 1:]
    assert (ours - theirs).abs().max().item() < 1e-5


def test_pretraining_continues_from_a_foreign_mae_file(tmp_path, mae_file):
    path, _ = mae_file
    out = tmp_path / "run"
    proc = launch_recipe(
        "ultrasound", *SMALL, "--encoder", path, "--stage", "pretrain", "--max-steps", "2", "--out", out
    )
    assert "--preset tiny ignored" in proc.stderr and "with a fresh decoder" in proc.stderr  # the stem is grey now
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pretrain/steps"] == 2 and metrics["encoder/source"] == "mae"
    config = json.loads((out / "encoder" / "config.json").read_text())
    encoder = config["encoder"]
    assert (encoder["dim"], encoder["depth"], encoder["pos_grid"]) == (192, 2, [4, 4])  # the file's, not --preset's
    assert config["continued_from"]["source"]["kind"] == "mae"  # the source's licence travels with its weights
    imported = load_encoder(out / "imported_encoder").state_dict()
    continued = load_encoder(out / "encoder").state_dict()
    assert imported.keys() == continued.keys()
    assert not torch.equal(imported["blocks.0.attn.qkv.weight"], continued["blocks.0.attn.qkv.weight"])  # trained


def test_video_pretraining_continues_with_the_decoder_of_a_hugging_face_videomae(tmp_path):
    """The decoder of VideoMAEForPreTraining comes along: the continued run starts from it (the
    imported MAE's loss equals the source's: tests/test_convert.py) and saves it beside the encoder."""
    import transformers

    cfg = transformers.VideoMAEConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32,
        patch_size=16, num_frames=8, tubelet_size=2, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True,
    )  # fmt: skip
    transformers.VideoMAEForPreTraining(cfg).save_pretrained(tmp_path / "videomae")
    out = tmp_path / "run"
    args = ["--frames", "8", "--stride", "2", "--size", "32", "--per-class", "4", "--batch-size", "8"]
    args += ["--stage", "pretrain", "--max-steps", "2", "--encoder", tmp_path / "videomae", "--out", out]
    proc = launch_recipe("video", *args)
    assert "with its MAE decoder" in proc.stderr and "continuing from" in proc.stderr, proc.stderr[-2000:]
    imported = json.loads((out / "imported_encoder" / "config.json").read_text())
    continued = json.loads((out / "encoder" / "config.json").read_text())
    assert imported["decoder"] == continued["decoder"] and imported["decoder"]["dim"] == 32
    assert imported["encoder"]["pos_resize"] == "sinusoid" and (out / "encoder" / "decoder.safetensors").is_file()
    before = load_file(out / "imported_encoder" / "decoder.safetensors")
    after = load_file(out / "encoder" / "decoder.safetensors")
    assert before.keys() == after.keys() and not torch.equal(before["pred.weight"], after["pred.weight"])


def test_a_2d_checkpoint_into_the_video_recipe_fails_with_one_line(tmp_path, mae_file):
    path, _ = mae_file
    args = ["--frames", "4", "--size", "32", "--per-class", "4", "--stage", "probe", "--encoder", path]
    proc = launch_recipe("video", *args, "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: ") and "video adapter takes 3-D patches" in last, last


def test_import_encoder__a_recipe_whose_tokens_are_not_patches_takes_no_vit(tmp_path, mae_file):
    path, _ = mae_file
    with pytest.raises(CheckpointError, match=f"^{path}: a ViT over grid patches cannot read the pointcloud"):
        import_encoder(path, {"name": "pointcloud", "channels": 3}, tmp_path / "imported")
    assert not (tmp_path / "imported").exists()
