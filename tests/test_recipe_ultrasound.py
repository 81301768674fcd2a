"""Real runs of the ultrasound recipe (two processes through ``accelerate launch``, one as plain
``python``), on the phantom, BUSI and bad inputs, checking the files the runs leave behind."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from foundations import save_pretrained
from foundations.mae import DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from foundations.train import TrainConfig, fit, make_accelerator
from foundations.vit import Encoder, EncoderConfig
from modalities import build_adapter, load_encoder
from modalities.common import DataSource
from modalities.ultrasound.data import UltrasoundOptions, build_domain
from tasks.pretrain import held_out_reconstruction
from tests.conftest import assert_no_pickle, launch_recipe

pytestmark = pytest.mark.e2e
SMALL = [
    "--preset",
    "micro",
    "--image-size",
    "64",
    "--phantom-per-class",
    "16",
    "--batch-size",
    "8",
    "--probe-steps",
    "20",
    "--finetune-steps",
    "6",
    "--checkpoint-every",
    "4",
]


def launch(*args, **kwargs):
    return launch_recipe("ultrasound", *args, **kwargs)


def test_two_process_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    launch(*SMALL, "--max-steps", "8", "--finetune-from-probe", "--probe", "all", "--out", str(out), processes=2)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "pretrain/loss_first",
        "pretrain/loss_last",
        "probe/balanced_accuracy",
        "finetune/balanced_accuracy",
        "finetune/accuracy",
    ):
        assert np.isfinite(metrics[key]), key
    assert metrics["run/processes"] == 2  # one distributed run (gloo), not two independent ones
    assert metrics["pretrain/steps"] == 8 and metrics["data/skipped_files"] == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["preset"] == "micro" and config["adapter"]["name"] == "ultrasound"
    assert config["model"]["mask"]["ratio"] == 0.75 and config["model"]["norm_target"] is False  # the modality's
    assert sorted(p.name for p in (out / "reconstructions").glob("*.png")) == [
        "step_000002.png",
        "step_000004.png",
        "step_000006.png",
        "step_000008.png",
    ]
    picture = np.asarray(Image.open(out / "reconstructions" / "step_000008.png"))
    assert picture.shape == (3 * 64, 8 * 64)  # input / masked / reconstruction rows of 8 images
    for stage in ("pretrain", "probe", "finetune"):
        assert list((out / "checkpoints" / stage).glob("step_*/model.safetensors")), stage
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    trained = [f"{p}{b}" for p in ("probe", "probe_ep", "probe_attentive") for b in ("", "_random_init")]
    stages = {"pretrain", *trained, "probe_raw_input", "finetune_head", "finetune"}  # kNN trains nothing
    order = [r["stage"] for r in log]
    assert set(order) == stages and order.index("finetune_head") < order.index("finetune")  # LP-FT: the head first
    table = (out / "probes.md").read_text()  # every probe on the encoder, a random one and the raw input
    assert "| knn | " in table and "| ep | " in table and (out / "probes.png").stat().st_size > 1000
    for name in ("encoder", "random_init"):  # the features, computed once per encoder, with patch tokens
        cache = load_file(out / "features" / name / "held_out.safetensors")
        assert cache["tokens"].dtype == torch.float16 and cache["tokens"].shape[1:] == (16, 64)

    assert len(assert_no_pickle(out)) > 20  # checkpoints of three stages, encoder, pictures, metrics, log

    encoder = load_encoder(out / "encoder")  # the one-call load of a saved run
    feats = encoder(torch.rand(2, 1, 64, 64)).features
    assert feats.shape == (2, 64) and torch.isfinite(feats).all()
    assert encoder.info["data_card"] == "data_cards/ultrasound_phantom.md"


def test_a_second_run_into_a_folder_with_checkpoints_stops_and_resume_must_keep_the_schedule(tmp_path):
    out = tmp_path / "run"
    launch(*SMALL, "--stage", "pretrain", "--max-steps", "4", "--out", str(out))
    again = launch(*SMALL, "--stage", "pretrain", "--max-steps", "4", "--out", str(out), check=False)
    assert again.returncode == 2
    assert "holds checkpoints of an earlier run; --resume to continue it, --overwrite to start over" in again.stderr
    longer = [*SMALL, "--stage", "pretrain", "--max-steps", "8", "--out", str(out), "--resume"]
    changed = launch(*longer, check=False)
    assert changed.returncode == 2 and "max_steps 4 -> 8" in changed.stderr.strip().splitlines()[-1]


def test_probe_and_finetune_from_a_saved_encoder(tmp_path):
    launch(*SMALL, "--stage", "pretrain", "--max-steps", "4", "--out", str(tmp_path / "pre"))
    launch(*SMALL, "--stage", "finetune", "--encoder", str(tmp_path / "pre" / "encoder"), "--out", str(tmp_path / "ft"))
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert "finetune/balanced_accuracy" in metrics and "pretrain/loss_first" not in metrics


def test_crossmae_decoder_is_the_default_and_a_saved_mae_decoder_continues_as_it_was(tmp_path):
    args = [*SMALL, "--stage", "pretrain", "--max-steps", "4"]
    launch(*args, "--out", tmp_path / "fast")
    model = yaml.safe_load((tmp_path / "fast" / "config.yaml").read_text())["model"]
    assert (model["decoder"]["kind"], model["decoder"]["mix"], model["mask"]["predict_ratio"]) == ("cross", True, 0.25)
    saved = json.loads((tmp_path / "fast" / "encoder" / "config.json").read_text())["decoder"]
    assert (saved["kind"], saved["mix"]) == ("cross", True)
    launch(*args, "--decoder", "self", "--predict-ratio", "all", "--out", tmp_path / "mae")
    model = yaml.safe_load((tmp_path / "mae" / "config.yaml").read_text())["model"]
    assert (model["decoder"]["kind"], model["mask"]["predict_ratio"]) == ("self", None)
    # continued with the default --decoder: the saved MAE decoder goes on, weights and all
    proc = launch(*args, "--encoder", tmp_path / "mae" / "encoder", "--out", tmp_path / "more")
    assert "with its MAE decoder" in proc.stderr
    again = json.loads((tmp_path / "more" / "encoder" / "config.json").read_text())["decoder"]
    assert again == json.loads((tmp_path / "mae" / "encoder" / "config.json").read_text())["decoder"]
    assert again["kind"] == "self"


def write_images(folder: Path, classes=("a", "b"), n=4, size=40):
    for cls in classes:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (size, size), dtype=np.uint8)).save(
                folder / cls / f"{i}.png"
            )


@pytest.mark.parametrize(
    "case,message",
    [
        ("empty", "no data found"),
        ("one_class", "only one class"),
        ("corrupt", "broken.png: cannot read image"),
        ("missing_encoder", "no pretrained encoder here"),
        ("wrong_encoder", "encoder was trained with adapter channels=3"),
        ("mask_ratio", "options: MaskConfig.ratio must be in (0, 1), got 1.0"),
    ],
)
def test_bad_inputs_end_with_a_clear_error(tmp_path, case, message):
    data = tmp_path / "data"
    data.mkdir()
    args = [*SMALL, "--data", str(data), "--out", str(tmp_path / "out")]
    if case == "one_class":
        write_images(data, classes=("a",))
    elif case == "corrupt":
        write_images(data)
        (data / "a" / "broken.png").write_bytes(b"not a png")
    elif case == "mask_ratio":  # nothing left to see
        write_images(data)
        args += ["--mask-ratio", "1.0"]
    elif case in ("missing_encoder", "wrong_encoder"):
        write_images(data)
        args += ["--stage", "probe", "--encoder", str(tmp_path / "enc")]
        if case == "wrong_encoder":
            rgb = build_adapter({"name": "ultrasound", "channels": 3, "mean": [0.5], "std": [0.2]}, 32)
            save_pretrained(Encoder(rgb, EncoderConfig(32, 1, 2)), tmp_path / "enc")
    proc = launch(*args, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: " in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr
    if case == "empty":  # through the launcher: the same one line, no launcher traceback
        proc = launch(*args, check=False, direct=False)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_skip_bad_files_counts_them(tmp_path):
    data = tmp_path / "data"
    write_images(data, n=6)
    (data / "a" / "broken.png").write_bytes(b"not a png")
    launch(
        *SMALL,
        "--data",
        str(data),
        "--max-steps",
        "2",
        "--stage",
        "pretrain",
        "--skip-bad-files",
        "--out",
        str(tmp_path / "out"),
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data/skipped_files"] == 1 and metrics["data/skipped"][0][0].endswith("broken.png")


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "out"
    proc = launch(
        *SMALL,
        "--stage",
        "pretrain",
        "--max-steps",
        "200",
        "--lr",
        "1e9",
        "--checkpoint-every",
        "1",
        "--out",
        str(out),
        check=False,
    )
    assert proc.returncode == 2 and "loss is not finite" in proc.stderr, proc.stderr[-2000:]
    kept = sorted((out / "checkpoints" / "pretrain").glob("step_*/trainer.json"))
    assert kept and np.isfinite(json.loads(kept[-1].read_text())["last_loss"])
    weights = load_file(kept[-1].parent / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert f"last good checkpoint: {kept[-1].parent}" in proc.stderr
    assert (out / "config.yaml").is_file()


def test_short_pretraining_on_busi_beats_the_patch_mean(shared, tmp_path):
    """MAE on the real BUSI images: held-out masked-patch error below predicting each patch flat
    at its own mean (per-patch normalised targets, where that baseline is 1)."""
    torch.manual_seed(0)
    source = DataSource(str(shared / "ultrasound" / "busi_256"), progress=False)
    data = build_domain(source, UltrasoundOptions(image_size=64, patch=8))
    mae = MaskedAutoencoder(
        build_adapter(data.adapter, 64),
        MAEConfig(EncoderConfig(64, 2, 2), DecoderConfig(64, 1, 2), MaskConfig(ratio=0.75)),
    )
    cfg = TrainConfig(max_steps=250, batch_size=32, base_lr=1e-2, warmup_steps=10, checkpoint_every=1000)
    loader = DataLoader(data.pretrain, batch_size=32, shuffle=True, drop_last=True)
    fit(mae, loader, lambda m, b: m(b["x"], b["valid"]).loss, cfg, make_accelerator("no"), tmp_path, "busi")
    held = held_out_reconstruction(mae, data.held_out, batch_size=64, seed=0, device="cpu")
    assert held["pretrain/eval_loss"] < 0.95 * held["pretrain/eval_loss_patch_mean"], held
