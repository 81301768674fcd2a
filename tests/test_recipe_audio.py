"""Real runs of the audio recipe through ``accelerate launch``: two processes on the built-in
synthetic sounds, and a bad clip."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image

from modalities import load_encoder
from tests.conftest import launch_recipe

pytestmark = pytest.mark.e2e
SMALL = ["--preset", "micro", "--batch-size", "8", "--probe-steps", "20", "--finetune-steps", "4"]


def test_two_process_run_on_synthetic_sounds(tmp_path):
    out = tmp_path / "run"
    args = ["--synthetic-per-class", "6", "--frames", "96", "--max-steps", "6", "--checkpoint-every", "50"]
    launch_recipe("audio", *SMALL, *args, "--out", out, processes=2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run/processes"] == 2 and metrics["pretrain/steps"] == 6 and len(metrics["data/classes"]) == 8
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]  # audio keeps MAE's decoder (recipe)
    assert (model["decoder"]["kind"], model["mask"]["predict_ratio"]) == ("self", None)
    for key in ("pretrain/eval_loss", "pretrain/eval_loss_patch_mean", "probe/balanced_accuracy", "finetune/accuracy"):
        assert np.isfinite(metrics[key]), key
    for baseline in ("probe_random_init", "probe_raw_input"):  # the probe's honest baselines, same table
        assert 0 <= metrics[f"{baseline}/balanced_accuracy"] <= 1, baseline
    picture = np.asarray(Image.open(out / "reconstructions" / "step_000006.png"))
    assert picture.shape == (3 * 128, 8 * 96)  # mel bins up, frames across; 8 held-out clips
    encoder = load_encoder(out / "encoder")
    assert encoder.info["preprocessing"] == {"sample_rate": 16000, "frames": 96, "mel_bins": 128}
    for frames in (32, 512):  # any clip length through the saved encoder
        assert encoder(torch.randn(2, 1, frames, 128)).features.shape == (2, 64 * 8)  # 8 mel bands x width


def test_bad_clip_is_named_and_skip_bad_files_counts_it(tmp_path):
    data = tmp_path / "data"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            t = np.arange(8000) / 8000
            sf.write(data / cls / f"{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t), 8000)
    (data / "b" / "broken.wav").write_bytes(b"RIFF" + b"\x00" * 40)
    args = [*SMALL, "--data", data, "--out", tmp_path / "out", "--max-steps", "2", "--stage", "pretrain"]
    proc = launch_recipe("audio", *args, check=False)
    assert proc.returncode == 2 and "broken.wav: cannot read audio" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    launch_recipe("audio", *args, "--skip-bad-files")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data/skipped_files"] == 1 and metrics["data/skipped"][0][0].endswith("broken.wav")


def test_multi_label_run_reports_mean_average_precision(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows, t = ["path,label"], np.arange(8000) / 8000
    for i, label in enumerate(["low", "low;high", "high", "mid;high", "mid", "low;mid"] * 4):
        freqs = {"low": 200, "mid": 800, "high": 2400}
        wave = sum(np.sin(2 * np.pi * (freqs[p] + 10 * i) * t) for p in label.split(";"))
        sf.write(data / f"c{i}.wav", 0.2 * wave, 8000)
        rows.append(f"c{i}.wav,{label}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    stages = "pretrain,probe,finetune,extract"
    args = ["--data", data, "--out", out, "--max-steps", "4", "--frames", "96", "--stage", stages]
    launch_recipe("audio", *SMALL, *args)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = json.loads((out / "features.json").read_text())["rows"]  # extract names each row's labels as written
    assert sorted({r["label"] for r in rows}) == ["high", "low", "low;high", "low;mid", "mid", "mid;high"]
    for key in ("probe/mAP", "finetune/mAP", "finetune/micro_f1", "probe_random_init/mAP"):
        assert 0 < metrics[key] <= 1, key
    # three tones at fixed pitches: the pooled filterbank names them, far above label frequency (0.5)
    assert metrics["probe_raw_input/mAP"] > 0.9, metrics
    assert "finetune/balanced_accuracy" not in metrics


def test_fsdd_with_a_speaker_held_out_learns(tmp_path, shared):
    """Real speech, a voice never heard in training: the MAE reconstructs the held-out speaker's
    masked patches better than the patch mean, and fine-tuning beats the linear probe on the
    pooled filterbank (the raw-input baseline) by a clear margin."""
    out = tmp_path / "fsdd"
    args = ["--data", shared / "audio" / "fsdd_recordings", "--split-by", "speaker", "--frames", "64"]
    args += ["--preset", "mini", "--lr", "8e-3", "--max-steps", "400", "--finetune-steps", "200", "--out", out]
    args += ["--probe", "linear"]  # the figures checked
    launch_recipe("audio", *args)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["data/held_out_sources"]) == 1 and metrics["data/eval_clips"] == 500
    assert metrics["pretrain/eval_loss"] < 0.8 * metrics["pretrain/eval_loss_patch_mean"], metrics
    assert metrics["probe/balanced_accuracy"] > 0.1 + 0.15, metrics  # ten digits: chance is 0.1
    # seed 0: fine-tune 0.72 against 0.47 (0.25 above it; the held-out speaker's 500 clips put the
    # standard error near 0.02); the probe 0.48
    assert metrics["finetune/balanced_accuracy"] > metrics["probe_raw_input/balanced_accuracy"] + 0.1, metrics
