"""recipes/prune.py: Gardener's pruning of a saved encoder through its recipe's prune stage, the
report of every method, the pruned encoder in our format; bad ratios stop with one line."""

import json

import pytest
import torch

from foundations.prune import remove_blocks
from modalities import load_encoder
from tests.conftest import launch_recipe

pytestmark = pytest.mark.e2e
SMALL = ["--preset", "micro", "--image-size", "32", "--phantom-per-class", "8", "--batch-size", "8"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    launch_recipe("ultrasound", *SMALL, "--stage", "pretrain", "--max-steps", "2", "--out", out)
    return out / "encoder"


def test_prune_saves_the_encoder_without_its_lowest_entropy_block_and_reports_every_method(tmp_path, encoder):
    out = tmp_path / "prune"
    args = ["--encoder", encoder, *SMALL, "--ratio", "0.5", "--ratios", "0,0.5", "--probe-steps", "4"]
    launch_recipe("prune", *args, "--recover-steps", "2", "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "pruned_encoder" / "config.json").read_text())
    removed = metrics["prune/removed_blocks"]
    assert config["pruning"]["removed_blocks"] == removed and config["pruning"]["method"] == "entropy"
    assert config["encoder"]["depth"] == 1 and len(removed) == 1 and config["pruning"]["depth_before"] == 2
    original, pruned = load_encoder(encoder), load_encoder(out / "pruned_encoder")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruned(x).features, remove_blocks(original, removed)(x).features, atol=1e-6)
    assert metrics["prune/block_flops_fraction"] == 0.5 and "finetune_pruned/balanced_accuracy" in metrics
    table = (out / "pruning.md").read_text()
    assert "| entropy | l1 | variance | random | oracle |" in table and "rank correlation with the oracle (l1)" in table
    assert (out / "pruning.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ratio", "1.0"], "--prune-ratio must be in [0, 1), got 1.0"),
        (["--keep", "3"], "--prune-keep 3: the encoder at {encoder} has only 2 blocks"),
    ],
)
def test_prune_refuses_impossible_ratios_with_one_line(tmp_path, encoder, flags, message):
    args = ["--encoder", encoder, *SMALL, *flags, "--ratios", "0", "--probe-steps", "2", "--out", tmp_path]
    proc = launch_recipe("prune", *args, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(message.format(encoder=encoder))
