"""Voxel labelling of radiance grids as the later stages of a run: the labeller of
``modalities.nerf.labelling`` on a frozen encoder ("probe") or fine-tuned with it ("finetune"),
each also on a randomly initialised encoder of the same shape under ``--probe-baselines``; IoU on
held-out grids and their pictures in OUT/segmentations/<stage>/."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from PIL import Image

from foundations.files import replacing
from foundations.heads import layer_decay_groups
from foundations.vit import Encoder
from modalities import build_adapter, load_encoder
from modalities.common import DomainData
from modalities.nerf.labelling import (
    PICTURES,
    PROBE_LR,
    VoxelLabeller,
    WithTokens,
    baselines,
    iou_metrics,
    picture,
    predict,
    valid_confusion,
    voxel_class_weights,
)
from tasks.classify import finetune_config
from tasks.options import FinetuneOptions
from tasks.session import Session, check_encoder


def train_and_score(
    session: Session, data: DomainData, encoder: Encoder, opts: FinetuneOptions, name: str, freeze: bool
) -> dict:
    """Train a labeller on ``encoder`` (frozen, or fine-tuned with layer-wise lr decay) over the
    training grids; IoU on the held-out grids, and their picture in OUT/segmentations/<name>/."""
    acc, run = session.acc, session.run
    train = data.finetune.items
    weights = voxel_class_weights([it["voxels"] for it in train], [it["valid"] for it in train], len(data.classes))
    model = VoxelLabeller(encoder.to(acc.device), len(data.classes), freeze=freeze, class_weights=weights)
    # a frozen encoder's tokens of the training grids (not augmented) are computed once: a probe step of
    # 16 32^3 grids took 0.3 s on one core instead of 0.85 (mini encoder, patch 4)
    grids = WithTokens(data.train_eval, encoder, acc.device, run.batch_size) if freeze else data.finetune
    dl = session.loader(grids, shuffle=True)
    steps = opts.probe_steps if freeze else opts.finetune_steps
    cfg = finetune_config(opts, steps, dl.batch_size, run.checkpoint_every)
    cfg = dataclasses.replace(cfg, base_lr=PROBE_LR) if freeze else cfg
    groups = None if freeze else layer_decay_groups(model, cfg.weight_decay, opts.layer_decay)
    loss = lambda m, b: m(b["x"], b["y"], b["valid"], b.get("tokens")).loss  # noqa: E731
    session.fit(model, dl, loss, cfg, name, param_groups=groups)
    model = acc.unwrap_model(model)
    pred, truth, valid, images = predict(model, data.held_out, acc.device, run.batch_size)
    metrics = iou_metrics(valid_confusion(pred, truth, valid, len(data.classes)), data.classes)
    if acc.is_main_process:
        folder = session.out / "segmentations" / name
        folder.mkdir(parents=True, exist_ok=True)
        shown = slice(0, PICTURES)
        with replacing(folder / "held_out.png") as tmp:
            Image.fromarray(picture(images[shown], truth[shown], pred[shown]).numpy()).save(tmp)
    acc.wait_for_everyone()
    return {f"{name}/{k}": v for k, v in metrics.items()}


def label(session: Session, data: DomainData, encoder_dir: Path, opts: FinetuneOptions, freeze: bool) -> dict:
    """A later stage of a run (``tasks.run.Stage``): "probe" trains the labeller on the frozen
    encoder, "finetune" trains encoder and labeller together with layer-wise lr decay. With
    ``opts.probe_baselines`` each stage also runs on a randomly initialised encoder of the same
    shape (``probe_random_init``, ``finetune_random_init``: NeRF-MAE's comparison with training from
    scratch), and the probe scores the shape-blind predictors."""
    check_encoder(encoder_dir, data.adapter)
    encoder = load_encoder(encoder_dir)
    name = "probe" if freeze else "finetune"
    results = train_and_score(session, data, encoder, opts, name, freeze)
    if opts.probe_baselines:
        torch.manual_seed(session.seed)
        random_init = Encoder(build_adapter(data.adapter, encoder.cfg.dim), encoder.cfg)
        results |= train_and_score(session, data, random_init, opts, f"{name}_random_init", freeze)
    if freeze and opts.probe_baselines:
        results |= baselines(data, encoder.adapter.config.occupied)
    return results


STAGES = {"probe": functools.partial(label, freeze=True), "finetune": functools.partial(label, freeze=False)}
