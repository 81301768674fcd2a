"""``--log-with``: a real recipe run hands its log records, its figures and its reconstruction
pictures to Accelerate's tracker; the event files are read back with TensorBoard's own reader."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import launch_recipe

pytestmark = pytest.mark.e2e
TINY = ["--preset", "micro", "--stage", "pretrain", "--image-size", "64", "--phantom-per-class", "16"]
TINY += ["--batch-size", "8", "--log-every", "1"]


def test_log_with_tensorboard__event_files_hold_the_logged_scalars_figures_and_pictures(tmp_path):
    out = tmp_path / "run"
    launch_recipe("ultrasound", *TINY, "--max-steps", "6", "--log-with", "tensorboard", "--out", out)
    events = EventAccumulator(str(out / "trackers" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for name in ("loss", "lr", "data_wait"):
        logged = [(e.step, e.value) for e in events.Scalars(f"pretrain/{name}")]
        # TensorBoard keeps float32
        assert logged == [(r["step"], float(np.float32(r[name]))) for r in records], name
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("pretrain/loss_last", "pretrain/eval_loss"):
        assert [e.value for e in events.Scalars(name)] == [float(np.float32(metrics[name]))], name
    pictures = events.Images("pretrain/reconstruction")
    width, height = Image.open(out / "reconstructions" / "step_000006.png").size
    assert pictures and (pictures[-1].step, pictures[-1].width, pictures[-1].height) == (6, width, height)


def test_log_with_none__writes_no_tracker_folder(tmp_path):
    out = tmp_path / "run"
    launch_recipe("ultrasound", *TINY, "--max-steps", "1", "--out", out)
    assert (out / "log.jsonl").is_file() and not (out / "trackers").exists()


def test_log_with__a_tracker_not_installed_stops_with_one_line_naming_its_package(tmp_path):
    absent = [name for name in ("mlflow", "wandb") if importlib.util.find_spec(name) is None]
    if not absent:
        pytest.fail("mlflow and wandb are both installed here: this test needs one of them absent")
    proc = launch_recipe("ultrasound", *TINY, "--log-with", absent[0], "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: --log-with {absent[0]} needs the {absent[0]} package: pip install {absent[0]}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
