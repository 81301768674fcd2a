"""The extract stage: one feature vector per input (and, on request, its patch tokens) from a saved
encoder, for use outside this suite: ``features.safetensors`` with ``features.json`` beside it
naming every row (file, split, label)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from foundations.files import replacing, write_text
from modalities import load_encoder
from modalities.common import DomainData
from tasks.features import encode
from tasks.options import FinetuneOptions
from tasks.session import Session, check_encoder


def extract(session: Session, data: DomainData, encoder_dir: Path, opts: FinetuneOptions) -> dict:
    """Features of the training split and the held-out split (their evaluation views) in that
    order; rows are named by the datasets' ``names`` where they have them."""
    check_encoder(encoder_dir, data.adapter)
    acc = session.acc
    encoder = load_encoder(encoder_dir, acc.device)
    features, tokens, rows = [], [], []
    for split, dataset in (("train", data.train_eval), ("held_out", data.held_out)):
        encoded = encode(session, encoder, dataset, session.run.tokens)
        features.append(encoded.pooled)
        tokens += [encoded.tokens] if session.run.tokens else []
        if data.multi_label:  # no class ids: each item's labels as its labels file names them ("dog;rain")
            labels = getattr(dataset, "labels", None)
        else:
            labels = [data.classes[c] for c in dataset.class_ids] if getattr(dataset, "class_ids", None) else None
        names = getattr(dataset, "names", None) or [f"{split}/{i}" for i in range(len(dataset))]
        rows += [{"name": n, "split": split, "label": labels[i] if labels else None} for i, n in enumerate(names)]
    tensors = {"features": torch.cat(features)}  # (N, feature_dim)
    if session.run.tokens:
        tensors["tokens"] = torch.cat(tokens)  # (N, tokens, dim)
    if acc.is_main_process:
        with replacing(session.out / "features.safetensors") as tmp:
            save_file(tensors, tmp)
        index = {"encoder": str(encoder_dir), "rows": rows, "shapes": {k: list(v.shape) for k, v in tensors.items()}}
        write_text(session.out / "features.json", json.dumps(index, indent=2))
    acc.wait_for_everyone()
    return {"extract/items": len(rows), "extract/dim": tensors["features"].shape[1]}
