"""UNETR on the shared encoder: shapes for each patch size, the frozen (probe) variant, and the
limits it states."""

import pytest
import torch

from foundations.checkpoint import CheckpointError, save_pretrained
from foundations.vit import Encoder, EncoderConfig
from modalities.volume.adapter import VolumeAdapter, volume_config
from modalities.volume.segmentation import Segmenter, load_segmenter, save_segmenter


def segmenter(patch, depth=4, freeze=False, classes=3):
    adapter = VolumeAdapter(volume_config(2, patch, tuple(2 * p for p in patch)), 32)
    return Segmenter(Encoder(adapter, EncoderConfig(dim=32, depth=depth, heads=2)), classes, features=8, freeze=freeze)


@pytest.mark.parametrize("patch,stages,layers", [((16, 16, 16), 4, [1, 2, 3, 4]), ((8, 8, 8), 3, [1, 2, 4])])
def test_unetr__full_resolution_logits_from_evenly_spread_layers(patch, stages, layers):
    model = segmenter(patch)
    assert model.head.stages == stages and model.layers == layers
    x = {"image": torch.rand(2, 2, 32, 32, 48), "spacing": torch.ones(2, 3)}
    y = torch.randint(0, 3, (2, 1, 32, 32, 48))
    out = model(x, y)
    assert out.logits.shape == (2, 3, 32, 32, 48) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unetr__twelve_blocks_read_unetrs_layers():
    assert segmenter((16, 16, 16), depth=12).layers == [3, 6, 9, 12]  # Hatamizadeh et al. 2022


def test_unetr__frozen_encoder_trains_the_head_only():
    model = segmenter((8, 8, 8), freeze=True)
    x = {"image": torch.rand(1, 2, 32, 32, 32), "spacing": torch.ones(1, 3)}
    model(x, torch.randint(0, 3, (1, 1, 32, 32, 32))).loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


@pytest.mark.parametrize("patch", [(16, 16, 4), (12, 12, 12)])
def test_unetr__needs_an_isotropic_power_of_two_patch(patch):
    with pytest.raises(ValueError, match="isotropic power-of-two patch"):
        segmenter(patch)


def test_save_and_load_segmenter__same_logits_and_clear_error_for_a_plain_encoder(tmp_path):
    model = segmenter((8, 8, 8), depth=2).eval()
    x = {"image": torch.rand(1, 2, 16, 16, 16), "spacing": torch.ones(1, 3)}
    save_segmenter(model, tmp_path / "seg", ["background", "a", "b"], preprocessing={"roi": [16, 16, 16]})
    loaded = load_segmenter(tmp_path / "seg")
    assert loaded.classes == ["background", "a", "b"]
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    save_pretrained(model.encoder, tmp_path / "plain")
    with pytest.raises(CheckpointError, match="without a segmentation head"):
        load_segmenter(tmp_path / "plain")
