import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundations.checkpoint import VERSION, CheckpointError, save_pretrained
from foundations.vit import Encoder
from modalities import build_adapter, load_encoder
from tests.conftest import TINY_ENCODER

CONFIG = {"name": "ultrasound", "channels": 1, "patch": [8, 8], "mean": [0.3], "std": [0.2], "size": [32, 32]}


@pytest.fixture
def saved(tmp_path):
    enc = Encoder(build_adapter(CONFIG, 32), TINY_ENCODER).eval()
    save_pretrained(enc, tmp_path / "enc", data_card="data_cards/busi.md", classes=["a", "b"])
    return enc, tmp_path / "enc"


def test_save_load__same_outputs_and_metadata(saved):
    enc, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_encoder(path)
    x = torch.rand(2, 1, 32, 48)
    torch.testing.assert_close(loaded(x).features, enc(x).features)
    assert loaded.info["classes"] == ["a", "b"] and loaded.info["data_card"] == "data_cards/busi.md"
    assert loaded.adapter.config.mean == (0.3,)  # normalisation statistics travel with the weights
    assert json.loads((path / "config.json").read_text())["version"] == VERSION == 3


def test_load__missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_encoder(tmp_path / "nothing")


def test_load__corrupt_json(saved):
    _, path = saved
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_encoder(path)


def test_load__foreign_format(saved):
    _, path = saved
    (path / "config.json").write_text(json.dumps({"architectures": ["ViTMAEForPreTraining"]}))
    with pytest.raises(CheckpointError, match="format"):
        load_encoder(path)


def test_load__truncated_weights(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable or corrupt"):
        load_encoder(path)


def test_load__config_and_weights_disagree(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config["encoder"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"1 missing|missing"):
        load_encoder(path)
    config["encoder"]["depth"], config["encoder"]["dim"], config["encoder"]["heads"] = 2, 64, 2
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_encoder(path)


def test_load__invalid_config_values(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config["adapter"]["std"] = [0.0]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="invalid encoder or adapter config"):
        load_encoder(path)


FIXTURES = Path(__file__).parent / "fixtures" / "encoders_v1"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_load__format1_encoders_embed_as_when_saved(name):
    """Encoders written before the grid adapter (checkpoint format 1) give the same features."""
    expected = load_file(FIXTURES / name / "expected.safetensors")
    inputs = {k.removeprefix("input."): v for k, v in expected.items() if k.startswith("input.")}
    x = inputs.pop("x") if "x" in inputs else inputs
    out = load_encoder(FIXTURES / name)(x)
    torch.testing.assert_close(out.features, expected["features"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.tokens, expected["tokens"], atol=1e-5, rtol=0)


def test_load__format1_configs_are_upgraded_to_the_grid_adapter():
    volume = load_encoder(FIXTURES / "volume").adapter.config
    assert (volume.size, volume.coords, volume.slices) == ((16, 16, 16), "spacing", True)
    assert load_encoder(FIXTURES / "ultrasound").adapter.config.size == (32, 32)
    assert load_encoder(FIXTURES / "pointcloud").adapter.config.n_groups == 16


def test_load__the_core_takes_the_registry_it_is_handed(saved):
    from foundations import checkpoint

    _, path = saved
    with pytest.raises(CheckpointError, match="unknown adapter 'ultrasound'"):
        checkpoint.load_encoder(path, adapters={})
