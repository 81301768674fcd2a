"""Hub ids through the local Hugging Face cache: a ViTMAE entry built here, in the cache's own
layout, loads by its id as the same directory loads by its path; an id not in the cache stops with
one line, and nothing is downloaded unless asked."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from foundations.checkpoint import CheckpointError
from modalities import hub, load_encoder
from modalities.convert import convert
from modalities.hub import resolve
from tests.conftest import ROOT

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_vitmae(cache, repo: str = "org/tiny-vit-mae"):
    """A tiny Hugging Face ViTMAE saved as the Hub's cache holds a downloaded model:
    models--org--name/refs/main (the commit) and snapshots/<commit>/ (config.json + weights)."""
    from transformers import ViTMAEConfig, ViTMAEModel

    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    config = ViTMAEConfig(
        hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384, image_size=64, patch_size=16
    )
    ViTMAEModel(config).save_pretrained(snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_resolve__a_cached_id_loads_as_its_snapshot_directory(tmp_path):
    snapshot = cached_vitmae(tmp_path / "hub")
    assert resolve("org/tiny-vit-mae", cache_dir=tmp_path / "hub") == snapshot
    assert resolve(tmp_path) == tmp_path  # an existing path as it is
    # as a user's run finds it: the cache named by HF_HUB_CACHE, the id given to load_encoder
    save_file({"x": torch.rand(2, 3, 64, 64)}, tmp_path / "x.safetensors")
    script = f"""
from safetensors.torch import load_file, save_file
from modalities import load_encoder
tokens = load_encoder("org/tiny-vit-mae")(load_file({str(tmp_path / "x.safetensors")!r})["x"]).tokens
save_file({{"tokens": tokens.detach().contiguous()}}, {str(tmp_path / "t.safetensors")!r})
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    x = load_file(tmp_path / "x.safetensors")["x"]
    with torch.no_grad():
        assert torch.equal(load_file(tmp_path / "t.safetensors")["tokens"], convert(snapshot)(x).tokens)


def test_load_encoder__an_id_equals_its_directory_and_takes_modality_and_grey(tmp_path, monkeypatch):
    snapshot = cached_vitmae(tmp_path / "hub")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_encoder("org/tiny-vit-mae")(x).tokens, convert(snapshot)(x).tokens)
        grey = load_encoder("org/tiny-vit-mae", modality="ultrasound", grey=True)
        assert grey.adapter.name == "ultrasound" and grey.adapter.config.channels == 1
        g = x[:, :1]
        assert (grey(g).tokens - convert(snapshot)(g.expand(-1, 3, -1, -1)).tokens).abs().max() < 1e-5


def test_resolve__an_id_not_in_the_cache_is_one_line_and_fetched_only_when_asked(tmp_path, monkeypatch):
    asked = []  # what each look-up allowed: the cache only, or the Hub
    real = hub.snapshot_download
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: asked.append(k["local_files_only"]) or real(*a, **k))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # the Hub unreachable, as in a sandbox
    for download, words in ((False, "--download fetches it"), (True, "not fetched")):
        with pytest.raises(CheckpointError) as e:
            resolve("org/not-cached", download=download, cache_dir=tmp_path / "hub")
        message = str(e.value)
        assert "\n" not in message and message.startswith("org/not-cached: ") and words in message, message
        assert str(tmp_path / "hub") in message
    assert asked == [True, False]
    assert not (tmp_path / "hub").exists()
