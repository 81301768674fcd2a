"""Volume segmentation as the later stages of a run: UNETR on a frozen encoder ("probe") or
fine-tuned with it ("finetune"), Dice by sliding windows over whole held-out volumes."""

from __future__ import annotations

import functools
from pathlib import Path

from foundations.heads import layer_decay_groups
from modalities import load_encoder
from modalities.common import DomainData
from modalities.volume.segmentation import Segmenter, evaluate, save_segmenter
from tasks.classify import finetune_config
from tasks.options import FinetuneOptions
from tasks.session import Session, check_encoder


def segment(session: Session, data: DomainData, encoder_dir: Path, opts: FinetuneOptions, freeze: bool) -> dict:
    check_encoder(encoder_dir, data.adapter)
    acc, run = session.acc, session.run
    name = "probe" if freeze else "finetune"
    model = Segmenter(load_encoder(encoder_dir), len(data.classes), freeze=freeze)
    dl = session.loader(data.finetune, shuffle=True)
    cfg = finetune_config(
        opts, opts.probe_steps if freeze else opts.finetune_steps, dl.batch_size, run.checkpoint_every
    )
    param_groups = None if freeze else layer_decay_groups(model, cfg.weight_decay, opts.layer_decay)
    loss = lambda m, b: m(b["x"], b["y"]).loss  # noqa: E731
    session.fit(model, dl, loss, cfg, name, param_groups=param_groups)
    model = acc.unwrap_model(model)
    save_dir = session.out / "segmentations" / name if acc.is_main_process else None
    roi = tuple(data.adapter["size"])
    metrics = evaluate(model, data.held_out, roi, data.classes, acc.device, save_dir=save_dir)
    if acc.is_main_process:
        save_segmenter(
            model,
            session.out / "segmenter" / name,
            data.classes,
            data_card=data.data_card,
            preprocessing=data.preprocessing,
        )
    acc.wait_for_everyone()
    return {f"{name}/{k}": v for k, v in metrics.items()}


STAGES = {"probe": functools.partial(segment, freeze=True), "finetune": functools.partial(segment, freeze=False)}
