"""Real runs of the point-cloud recipe through ``accelerate launch``: two processes on the built-in
shapes, a short pretraining and probe on the real ModelNet10 subset, and bad input."""

import json

import numpy as np
import pytest
import torch

from modalities import load_encoder
from tests.conftest import launch_recipe

pytestmark = pytest.mark.e2e
SMALL = [
    "--preset",
    "micro",
    "--batch-size",
    "8",
    "--probe-steps",
    "20",
    "--finetune-steps",
    "4",
    "--checkpoint-every",
    "50",
    "--pointnet-width",
    "32",
]


def launch(*args, **kwargs):
    return launch_recipe("pointcloud", *args, **kwargs)


def test_two_process_run_on_builtin_shapes(tmp_path):
    out = tmp_path / "run"
    launch(
        *SMALL,
        "--shapes-per-class",
        "6",
        "--points",
        "256",
        "--groups",
        "16",
        "--group-size",
        "16",
        "--max-steps",
        "6",
        "--votes",
        "3",
        "--out",
        str(out),
        processes=2,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run/processes"] == 2 and metrics["pretrain/steps"] == 6 and len(metrics["data/classes"]) == 10
    for key in (
        "pretrain/eval_loss",
        "pretrain/eval_loss_group_centre",
        "probe/balanced_accuracy",
        "finetune/balanced_accuracy",
    ):
        assert np.isfinite(metrics[key]), key
    assert sorted(p.name for p in (out / "reconstructions").glob("*.png"))[-1] == "step_000006.png"
    encoder = load_encoder(out / "encoder")
    features = encoder(torch.rand(3, 256, 3) * 2 - 1).features
    assert features.shape == (3, 2 * 64)  # cls token + max-pooled tokens


def test_modelnet10_pretraining_beats_the_group_centre_and_probe_and_finetune_beat_chance(shared, tmp_path):
    out = tmp_path / "run"
    data = shared / "pointcloud" / "modelnet10_pcd_subset"
    common = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "micro",
        "--batch-size",
        "32",
        "--pointnet-width",
        "64",
    ]
    launch(
        *common,
        "--stage",
        "pretrain,probe,finetune",
        "--finetune-steps",
        "100",
        "--max-steps",
        "80",
        "--lr",
        "5e-3",
        "--probe-steps",
        "300",
        "--no-probe-baselines",
        "--probe",
        "linear",
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data/eval_clouds"] == 200  # 20 % of each class held out
    assert metrics["pretrain/eval_loss"] < 0.8 * metrics["pretrain/eval_loss_group_centre"], metrics
    assert metrics["probe/balanced_accuracy"] > 0.1 + 0.3, metrics  # ten classes: chance is 0.1
    # fine-tuning keeps what the probe found (it once fell to chance: a LayerNorm head on pooled features
    # that hardly differ between clouds, stochastic depth, rotations of aligned shapes, a 10x lr)
    assert metrics["finetune/balanced_accuracy"] > metrics["probe/balanced_accuracy"] - 0.05, metrics


def test_bad_cloud_is_named(tmp_path):
    data = tmp_path / "data"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        np.save(data / cls / "ok.npy", np.random.default_rng(0).normal(size=(64, 3)))
    np.save(data / "b" / "flat.npy", np.full((64, 3), 0.5))
    proc = launch(*SMALL, "--data", data, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "flat.npy: degenerate point cloud" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
