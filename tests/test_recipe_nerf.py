"""Real runs of the nerf recipe through ``accelerate launch``: two processes on the built-in
procedural scenes, and a folder of baked grids with a broken one."""

import json

import numpy as np
import pytest
from PIL import Image

from modalities import load_encoder
from modalities.nerf.bake import save_grid
from modalities.nerf.mesh import procedural_scene
from tests.conftest import assert_no_pickle, launch_recipe

pytestmark = pytest.mark.e2e
SMALL = ["--preset", "micro", "--batch-size", "4", "--probe-steps", "10", "--finetune-steps", "4", "--grid", "16"]


def test_two_process_run_on_procedural_scenes(tmp_path):
    out = tmp_path / "run"
    launch_recipe("nerf", *SMALL, "--scenes", "20", "--max-steps", "4", "--out", out, processes=2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run/processes"] == 2 and metrics["pretrain/steps"] == 4 and len(metrics["data/classes"]) == 5
    for key in ("pretrain/eval_loss", "pretrain/eval_loss_patch_mean", "probe/balanced_accuracy", "finetune/accuracy"):
        assert np.isfinite(metrics[key]), key
    assert 0 <= metrics["probe_raw_input/balanced_accuracy"] <= 1
    picture = np.asarray(Image.open(out / "reconstructions" / "step_000004.png"))
    shown = min(8, metrics["data/eval_grids"])  # input / masked / reconstruction rows, 4 pixels a voxel
    assert picture.shape == (3 * 4 * 16, shown * 4 * 16, 3)
    encoder = load_encoder(out / "encoder")
    assert encoder.adapter.name == "nerf" and encoder.adapter.config.coords == "spacing"
    assert_no_pickle(out)


def write_grids(folder, n=4):
    for kind in ("a", "b"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            scene = procedural_scene(i + (100 if kind == "b" else 0), 16)
            save_grid(folder / kind / f"{i}.npz", scene, {"source": "test"})


def test_baked_grids_in_class_folders_and_a_broken_one(tmp_path):
    data = tmp_path / "data"
    write_grids(data)
    (data / "a" / "broken.npz").write_bytes(b"not a zip")
    args = [*SMALL, "--data", data, "--max-steps", "2", "--out", tmp_path / "out"]
    proc = launch_recipe("nerf", *args, check=False, direct=True)
    assert proc.returncode == 2 and "broken.npz: not a readable .npz grid" in proc.stderr
    assert "Traceback" not in proc.stderr
    launch_recipe("nerf", *args, "--skip-bad-files", "--overwrite", "--stage", "pretrain", direct=True)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data/skipped_files"] == 1 and metrics["data/train_grids"] + metrics["data/eval_grids"] == 8
    assert metrics["data/classes"] == ["a", "b"]
