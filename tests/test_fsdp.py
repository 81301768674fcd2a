"""Sharded parameters (recipes/accelerate/fsdp.yaml). Accelerate runs FSDP on GPUs only, so here
its wrapping is applied as Accelerate applies it (FSDP2's fully_shard on what the config's policy
names, then the root) on two gloo CPU processes (tests/fixtures/fsdp_worker.py), and what the
suite adds is checked: checkpoints and saved encoders gathered whole into our format, and resume
handing each process its shard. The GPU run is in benchmarks/gpu.sh."""

import json

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from foundations.mae import CrossBlock
from foundations.vit import Block
from tests.conftest import ROOT, launch_recipe

CONFIG = ROOT / "recipes" / "accelerate" / "fsdp.yaml"


def test_config__accelerate_reads_it_as_fsdp2_wrapping_our_blocks():
    config = load_config_from_file(str(CONFIG))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    names = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert names == [Block.__name__, CrossBlock.__name__]


@pytest.mark.e2e
def test_two_sharded_processes_save_one_whole_model_and_resume_their_shards(tmp_path):
    launch_recipe("tests/fixtures/fsdp_worker.py", tmp_path, processes=2)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["units"] == result["blocks"] == 3  # every transformer block its own FSDP unit
    assert result["shard_rows"] * 2 == result["rows"]  # each process holds half of a weight
    assert result["saved_keys_match"] and result["loaded_step"] == 3
    # the gathered checkpoint is the unsharded model trained alike (AdamW's fused kernel there, the
    # foreach one on sharded tensors: last-bit differences, 3e-7 measured)
    assert result["saved_vs_unsharded"] < 1e-5
    assert result["resumed_vs_continued"] == 0.0  # the resumed model steps exactly as the one it continues
    assert result["gathered_vs_unsharded"] < 1e-5  # what the pretraining stage saves under FSDP


def test_grad_checkpointing__the_option_reaches_the_encoder_and_changes_no_gradient():
    """--grad-checkpointing recomputes activations; the gradients are those of the plain encoder."""
    from foundations.grid import GridConfig
    from foundations.mae import MaskedAutoencoder
    from foundations.masking import sample_generators
    from modalities import build_adapter
    from tasks.options import PretrainOptions
    from tasks.pretrain import model_config

    adapter = {"name": "ultrasound", **GridConfig(1, (8, 8), (32, 32), (0.5,), (0.25,)).__dict__}
    grads = []
    for on in (False, True):
        cfg = model_config(PretrainOptions(preset="micro", grad_checkpointing=on), adapter)
        assert cfg.encoder.grad_checkpointing is on
        torch.manual_seed(0)
        mae = MaskedAutoencoder(build_adapter(adapter, cfg.encoder.dim), cfg)
        x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        mae(x, generator=sample_generators(torch.arange(2))).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in mae.encoder.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
