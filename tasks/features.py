"""The feature cache: a frozen encoder's pooled features (and patch tokens) of a dataset, computed
once by every process's share and gathered, stored as ``<split>.safetensors`` (float16) with
``<split>.json`` beside it (item names, labels, and the key it was computed under), and reused by
every probe: a probe on a CPU then costs seconds, not an encoder pass per epoch.

The key is a digest of the encoder's weights and config, the adapter's config (with its
normalisation), the domain's preprocessing and the items' names and labels; a cache whose key
differs is computed again, one without tokens too when a token probe asks for them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from foundations.files import replacing, write_text
from modalities.common import DataError
from tasks.session import Session


@dataclass
class Features:
    pooled: torch.Tensor  # (N, F) float32
    tokens: torch.Tensor | None  # (N, T, D) float32 patch tokens, or None
    labels: torch.Tensor  # (N,) class indices or (N, C) 0/1 targets
    names: list[str]


def weights_digest(encoder: torch.nn.Module) -> str:
    """A fingerprint of an encoder's config and weights (one pass over every parameter)."""
    h = hashlib.sha256(repr(encoder.cfg).encode())
    for name, t in encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def encode(session: Session, encoder: torch.nn.Module, dataset, tokens: bool) -> Features:
    """Pooled features (and patch tokens) of every item of ``dataset``, in order, on every process."""
    acc = session.acc
    encoder.eval()
    loader = acc.prepare(DataLoader(dataset, batch_size=session.run.batch_size, **session.loader_options()))
    pooled, toks, labels = [], [], []
    for batch in loader:
        out = encoder(batch["x"])
        f, y, *t = acc.gather_for_metrics((out.features, batch["y"], *([out.tokens] if tokens else [])))
        pooled.append(f.float().cpu())
        labels.append(y.cpu())
        toks += [t[0].float().cpu()] if tokens else []
    if tokens and len({t.shape[1] for t in toks}) > 1:
        raise DataError(f"{dataset_name(dataset)}: items of different token counts; token probes need equal counts")
    names = getattr(dataset, "names", None) or [str(i) for i in range(len(dataset))]
    return Features(torch.cat(pooled), torch.cat(toks) if tokens else None, torch.cat(labels), list(names))


def dataset_name(dataset) -> str:
    return str(getattr(dataset, "root", None) or type(dataset).__name__)


def save_features(features: Features, path: Path, key: str) -> None:
    """``path`` (.safetensors, float16) and its .json: names, labels' shape and the cache key."""
    tensors = {"pooled": features.pooled.half(), "labels": features.labels}
    if features.tokens is not None:
        tensors["tokens"] = features.tokens.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    write_text(path.with_suffix(".json"), json.dumps({"key": key, "names": features.names}, indent=1))


def load_features(path: Path) -> Features:
    """A cache written by ``save_features``; a missing, unreadable or empty one stops with one line."""
    index = path.with_suffix(".json")
    try:
        tensors = load_file(path)
        names = json.loads(index.read_text())["names"]
    except (OSError, SafetensorError, json.JSONDecodeError, KeyError) as e:
        raise DataError(f"{path}: not a readable feature cache ({e})") from None
    if "pooled" not in tensors or len(tensors["pooled"]) == 0:
        raise DataError(f"{path}: the feature cache is empty")
    tokens = tensors.get("tokens")
    return Features(tensors["pooled"].float(), None if tokens is None else tokens.float(), tensors["labels"], names)


def cache_key(path: Path) -> tuple[str | None, bool]:
    """(key, has tokens) of the cache at ``path``, (None, False) where there is none to read."""
    try:
        key = json.loads(path.with_suffix(".json").read_text())["key"]
        with open(path, "rb") as f:  # the safetensors header: 8 bytes of length, then JSON
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        return key, "tokens" in header
    except (OSError, ValueError, KeyError):
        return None, False


def cached(
    session: Session, encoder, dataset, path: Path, data_key: dict, tokens: bool, weights: str | None = None
) -> Features:
    """The features of ``dataset`` under ``encoder``: read from ``path`` when it holds them under the
    same key (with tokens if asked), else computed, and written by the main process. ``weights``:
    the encoder's ``weights_digest`` when the caller has it (several splits, one encoder)."""
    data = json.dumps(data_key, sort_keys=True, default=str)
    key = hashlib.sha256(((weights or weights_digest(encoder)) + data).encode()).hexdigest()[:16]
    found, has_tokens = cache_key(path)
    # the main process decides for all: the others' keys may differ (the built-in video set lives in a
    # temporary folder per process, so its item names do), and every process must encode, or none
    (hit,) = broadcast_object_list([found == key and (has_tokens or not tokens)])
    if hit:
        return load_features(path)
    features = encode(session, encoder, dataset, tokens)
    if session.acc.is_main_process:
        save_features(features, path, key)
    session.acc.wait_for_everyone()
    return features
