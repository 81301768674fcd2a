"""recipes/evaluate.py: the encoder's modality picks the recipe whose probe stage runs every probe
beside its baselines; bad encoders stop with one line."""

import json

import pytest

from tests.conftest import launch_recipe

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "recipe, options",
    [
        ("ultrasound", ["--image-size", "32", "--phantom-per-class", "8"]),
        ("pointcloud", ["--shapes-per-class", "6", "--points", "256", "--pointnet-width", "32"]),
    ],
)
def test_evaluate_probes_an_encoder_of_any_modality_beside_its_baselines(tmp_path, recipe, options):
    small = ["--preset", "micro", "--batch-size", "8", *options]
    launch_recipe(recipe, *small, "--stage", "pretrain", "--max-steps", "2", "--out", tmp_path / "pre")
    out = tmp_path / "eval"
    args = ["--encoder", tmp_path / "pre" / "encoder", *small, "--probe", "knn,ep", "--probe-steps", "4"]
    launch_recipe("evaluate", *args, "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "pretrain/loss_first" not in metrics and not any(k.startswith("finetune") for k in metrics)
    for stage in ("probe_knn", "probe_ep", "probe_knn_random_init", "probe_ep_random_init", "probe_knn_raw_input"):
        assert 0 <= metrics[f"{stage}/balanced_accuracy"] <= 1, stage
    assert "probe/balanced_accuracy" not in metrics  # only the probes asked for
    rows = [line.split(" | ")[:2] for line in (out / "probes.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[1:] == [["| knn", "encoder"], ["| knn", "random init"], ["| knn", "raw input"], ["| ep", "encoder"],
                        ["| ep", "random init"]]  # fmt: skip
    assert (out / "probes.png").is_file() and (out / "features" / "encoder" / "held_out.safetensors").is_file()


def test_evaluate_refuses_a_folder_without_an_encoder(tmp_path):
    proc = launch_recipe("evaluate", "--encoder", tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}: not an encoder folder of this suite (no readable config.json with an adapter); "
        "for another library's checkpoint pass --modality"
    )
