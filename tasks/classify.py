"""Classification with a pretrained encoder: a linear probe on frozen features (MAE's protocol)
and fine-tuning with layer-wise lr decay, optionally with mixup (Zhang et al. 2018) and test-time
voting over augmented views. Single-label tasks report accuracy, balanced accuracy, macro-F1
(AUROC for two classes); multi-label tasks (``DomainData.multi_label``) mean average precision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from foundations.checkpoint import load_state
from foundations.heads import Classifier, ClassifierHead, LinearProbeHead, layer_decay_groups
from foundations.metrics import classification_metrics, multilabel_metrics
from foundations.train import TrainConfig
from foundations.vit import Encoder
from modalities import build_adapter, load_encoder
from modalities.common import DomainData
from tasks.options import FinetuneOptions
from tasks.session import Session, check_encoder


def class_weights(class_ids, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, so that the loss weighs every class as balanced accuracy does."""
    counts = torch.bincount(torch.as_tensor(class_ids), minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


@torch.no_grad()
def predict(model, dataset, session: Session, key: str = "logits"):
    """Run ``model`` over ``dataset`` on every process; gathered outputs and labels."""
    acc, run = session.acc, session.run
    model.eval()
    dl = acc.prepare(DataLoader(dataset, batch_size=run.batch_size, **session.loader_options()))
    outs, labels = [], []
    for batch in dl:
        o = getattr(model(batch["x"]), key)
        o, y = acc.gather_for_metrics((o, batch["y"]))
        outs.append(o.float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def metrics(data: DomainData, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return multilabel_metrics(logits, labels) if data.multi_label else classification_metrics(logits, labels)


def weights(data: DomainData, class_ids) -> torch.Tensor | None:
    """Inverse-frequency class weights of a single-label task; none for multi-label targets."""
    return None if data.multi_label else class_weights(class_ids, len(data.classes))


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item blended with another of the batch by lam ~ Beta(alpha, alpha), and so are its
    class probabilities (one-hot or multi-label). x: (B, ...), y: (B,) or (B, classes)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), device=x.device)
    y = F.one_hot(y, n_classes).to(x.dtype) if y.ndim == 1 else y.to(x.dtype)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def finetune_config(opts: FinetuneOptions, steps: int, batch_size: int, checkpoint_every: int) -> TrainConfig:
    """The schedule of a fine-tuning stage (classification or segmentation)."""
    return TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        base_lr=opts.finetune_lr,
        warmup_steps=max(1, steps // 10),
        checkpoint_every=checkpoint_every,
    )


def probe(session: Session, data: DomainData, encoder_dir: Path, opts: FinetuneOptions) -> dict:
    """The linear probe on the encoder's pooled features; with ``opts.probe_baselines`` the same
    probe on a randomly initialised encoder of the same shape (``probe_random_init/``) and, where the
    domain has them, on features of the raw input (``probe_raw_input/``, ``DomainData.raw_features``),
    so that a table shows at a glance what pretraining added."""
    check_encoder(encoder_dir, data.adapter)
    acc = session.acc
    encoder = load_encoder(encoder_dir, acc.device)
    results = linear_probe(session, data, encoder, opts, "probe")
    if opts.probe_baselines:
        torch.manual_seed(session.seed)
        random_init = Encoder(build_adapter(data.adapter, encoder.cfg.dim), encoder.cfg).to(acc.device)
        results |= linear_probe(session, data, random_init, opts, "probe_random_init")
        if data.raw_features is not None:
            raw = (*data.raw_features(data.train_eval), *data.raw_features(data.held_out))
            results |= linear_probe(session, data, raw, opts, "probe_raw_input")
    return results


def linear_probe(session: Session, data: DomainData, features, opts: FinetuneOptions, stage: str) -> dict:
    """A linear head (BatchNorm without affine, then linear: MAE's protocol) on frozen features:
    an encoder's pooled features, or given (train x, train y, held-out x, held-out y)."""
    acc = session.acc
    if isinstance(features, torch.nn.Module):
        train_x, train_y = predict(features, data.train_eval, session, key="features")
        eval_x, eval_y = predict(features, data.held_out, session, key="features")
    else:
        train_x, train_y, eval_x, eval_y = features
    head = LinearProbeHead(train_x.shape[1], len(data.classes))
    model = Classifier(None, head, class_weights=weights(data, train_y), multi_label=data.multi_label)
    dl = session.loader(TensorDataset(train_x, train_y), shuffle=True, batch_size=256)
    cfg = TrainConfig(
        max_steps=opts.probe_steps,
        batch_size=dl.batch_size,
        base_lr=0.1,
        weight_decay=0.0,
        warmup_steps=max(1, opts.probe_steps // 10),
        clip_grad=None,
        checkpoint_every=opts.probe_steps,
    )
    session.fit(model, dl, lambda m, b: m(b[0], b[1]).loss, cfg, stage)
    model = acc.unwrap_model(model).eval()
    with torch.no_grad():
        logits = model(eval_x.to(acc.device)).logits.cpu()
    return {f"{stage}/{k}": v for k, v in metrics(data, logits, eval_y).items()}


def finetune(session: Session, data: DomainData, encoder_dir: Path, opts: FinetuneOptions, mix: float = 0.0) -> dict:
    """Fine-tune encoder + head; ``mix`` > 0 mixes the training batches (mixup's alpha; inputs must
    be tensors whose weighted sum is an input, as spectrograms and images are). Held-out logits are
    summed over ``data.held_out`` and every one of ``data.held_out_views`` (test-time views)."""
    check_encoder(encoder_dir, data.adapter)
    acc = session.acc
    encoder = load_encoder(encoder_dir)
    cfg_dp = dataclasses.replace(encoder.cfg, drop_path=opts.drop_path)
    if cfg_dp != encoder.cfg:  # rebuild with stochastic depth, same weights
        rebuilt = type(encoder)(encoder.adapter, cfg_dp)
        load_state(rebuilt, encoder.state_dict(), encoder_dir)
        encoder = rebuilt
    n_classes = len(data.classes)
    class_ids = None if data.multi_label else data.finetune.class_ids
    head = ClassifierHead(encoder.feature_dim, n_classes)
    model = Classifier(encoder, head, opts.label_smoothing, weights(data, class_ids), data.multi_label)

    def loss(m, b):
        x, y = mixup(b["x"], b["y"], mix, n_classes) if mix > 0 else (b["x"], b["y"])
        return m(x, y).loss

    dl = session.loader(data.finetune, shuffle=True)
    cfg = finetune_config(opts, opts.finetune_steps, dl.batch_size, session.run.checkpoint_every)
    param_groups = layer_decay_groups(model, cfg.weight_decay, opts.layer_decay)
    session.fit(model, dl, loss, cfg, "finetune", param_groups=param_groups)
    model = acc.unwrap_model(model)
    logits, labels = predict(model, data.held_out, session)
    for view in data.held_out_views:  # the same items in the same order, other views
        logits = logits + predict(model, view, session)[0]
    return {f"finetune/{k}": v for k, v in metrics(data, logits, labels).items()}
