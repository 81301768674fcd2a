"""The feature cache: computed once, the same as a fresh pass, recomputed when the encoder changes;
and the probes read it (bad caches stop with one line)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from foundations.train import make_accelerator
from foundations.vit import Encoder
from modalities.common import DataError, DomainData
from tasks import features as feature_cache
from tasks.classify import run_probe
from tasks.features import Features, cached, load_features
from tasks.options import FinetuneOptions, RunOptions
from tasks.session import Session
from tests.conftest import TINY_ENCODER, image_adapter


class Items(torch.utils.data.Dataset):
    def __init__(self, n=10, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.x, self.class_ids = torch.rand(n, 1, 32, 32, generator=gen), [i % 2 for i in range(n)]
        self.names = [f"item{i}.png" for i in range(n)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.class_ids[i]}


@pytest.fixture
def session(tmp_path):
    return Session(make_accelerator("no"), tmp_path, RunOptions(out=str(tmp_path), batch_size=4, workers="0"), 0)


def test_cache__round_trip_equals_a_fresh_pass_and_is_read_not_recomputed(session, tmp_path, monkeypatch):
    encoder, data = Encoder(image_adapter(), TINY_ENCODER).eval(), Items()
    path = tmp_path / "features" / "train.safetensors"
    first = cached(session, encoder, data, path, {"split": "train"}, tokens=True)
    with torch.no_grad():
        fresh = encoder(data.x)
    assert torch.allclose(first.pooled, fresh.features, atol=1e-6) and torch.equal(
        first.labels, torch.tensor(data.class_ids)
    )
    stored = load_features(path)  # float16 on disk, with the names
    assert stored.names == data.names and torch.equal(stored.labels, first.labels)
    assert torch.allclose(stored.pooled, fresh.features, atol=2e-3) and stored.tokens.shape == (10, 16, 32)
    assert torch.allclose(stored.tokens, fresh.tokens, atol=2e-3)

    def no_pass(*args):
        raise AssertionError("the encoder ran again")

    monkeypatch.setattr(feature_cache, "encode", no_pass)
    again = cached(session, encoder, data, path, {"split": "train"}, tokens=True)
    assert torch.equal(again.pooled, stored.pooled)
    monkeypatch.undo()

    key = json.loads(path.with_suffix(".json").read_text())["key"]
    with torch.no_grad():  # other weights, or other data: computed again
        encoder.blocks[0].mlp.fc2.weight.add_(0.5)
        changed = encoder(data.x).features
    assert torch.allclose(cached(session, encoder, data, path, {"split": "train"}, True).pooled, changed, atol=1e-6)
    assert json.loads(path.with_suffix(".json").read_text())["key"] != key
    monkeypatch.setattr(feature_cache, "encode", no_pass)
    with pytest.raises(AssertionError, match="ran again"):
        cached(session, encoder, data, path, {"split": "train", "size": 64}, True)


def test_cache__without_tokens_is_computed_again_when_a_token_probe_asks(session, tmp_path):
    encoder, data = Encoder(image_adapter(), TINY_ENCODER).eval(), Items()
    path = tmp_path / "f.safetensors"
    assert cached(session, encoder, data, path, {}, tokens=False).tokens is None
    assert load_features(path).tokens is None
    assert cached(session, encoder, data, path, {}, tokens=True).tokens.shape == (10, 16, 32)


def test_bad_caches_and_a_token_probe_without_tokens_stop_with_one_line(session, tmp_path):
    empty = tmp_path / "empty.safetensors"
    save_file({"pooled": torch.zeros(0, 8), "labels": torch.zeros(0)}, empty)
    empty.with_suffix(".json").write_text(json.dumps({"key": "k", "names": []}))
    with pytest.raises(DataError, match="empty.safetensors: the feature cache is empty"):
        load_features(empty)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="garbage.safetensors: not a readable feature cache"):
        load_features(garbage)

    pooled = Features(torch.randn(8, 16), None, torch.arange(8) % 2, [])
    data = DomainData(None, None, None, None, ["a", "b"], {}, "")
    with pytest.raises(DataError, match="probe_ep: the ep probe reads patch tokens; these features have none"):
        run_probe(session, data, "ep", pooled, pooled, FinetuneOptions(probe_steps=2), "probe_ep")


def test_probe_option__names_probes_and_refuses_unknown_ones():
    assert FinetuneOptions().probes == ("linear", "knn", "ep")
    assert FinetuneOptions(probe="all").probes == ("linear", "knn", "ep", "attentive")
    assert FinetuneOptions(probe="knn,linear").probes == ("linear", "knn")
    for bad in ("svm", "linear,", ""):
        with pytest.raises(ValueError, match="choose all or from linear,knn,ep,attentive"):
            FinetuneOptions(probe=bad)
