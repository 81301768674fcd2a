"""Classification with a pretrained encoder: probes of its frozen, cached features (linear, MAE's
protocol; kNN; efficient and standard attentive probing on patch tokens: ``foundations.probes``)
beside the same probes on a random encoder and on the raw input, and fine-tuning with layer-wise
lr decay, optionally with mixup (Zhang et al. 2018) and test-time voting over augmented views.
Single-label tasks report accuracy, balanced accuracy, macro-F1 (AUROC for two classes);
multi-label tasks (``DomainData.multi_label``) mean average precision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from foundations.checkpoint import load_state
from foundations.files import write_text
from foundations.heads import Classifier, LinearProbeHead, layer_decay_groups
from foundations.metrics import classification_metrics, multilabel_metrics
from foundations.probes import AttentiveProbe, EfficientProbe, knn_scores, parameter_count
from foundations.train import TrainConfig
from foundations.vit import Encoder
from modalities import build_adapter, load_encoder
from modalities.common import DataError, DomainData
from tasks.features import Features, cached, weights_digest
from tasks.options import FinetuneOptions
from tasks.plots import bar_chart
from tasks.session import Session, check_encoder


def class_weights(class_ids, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, so that the loss weighs every class as balanced accuracy does."""
    counts = torch.bincount(torch.as_tensor(class_ids), minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


@torch.no_grad()
def predict(model, dataset, session: Session):
    """Run the classifier ``model`` over ``dataset`` on every process; gathered logits and labels."""
    acc, run = session.acc, session.run
    model.eval()
    dl = acc.prepare(DataLoader(dataset, batch_size=run.batch_size, **session.loader_options()))
    outs, labels = [], []
    for batch in dl:
        o = model(batch["x"]).logits
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


TOKEN_PROBES = ("ep", "attentive")  # read patch tokens, not pooled features
PROBE_LR = {"linear": 0.1, "ep": 1e-2, "attentive": 1e-3}  # AdamW base lr (x batch / 256)


def probe_stage(kind: str, baseline: str = "") -> str:
    """Where a probe's figures go: probe/ (linear), probe_knn/ ..., then _random_init or _raw_input."""
    return ("probe" if kind == "linear" else f"probe_{kind}") + baseline


def probe(session: Session, data: DomainData, encoder_dir: Path, opts: FinetuneOptions) -> dict:
    """The probes ``opts.probes`` on the encoder's cached features (``tasks.features``); with
    ``opts.probe_baselines`` the same on a randomly initialised encoder of the same shape
    (``*_random_init/``) and, where the domain has them, on features of the raw input
    (``*_raw_input/``, ``DomainData.raw_features``; no tokens, so no attentive probes), so that the
    table (``probes.md``, ``probes.png``) shows at a glance what pretraining added."""
    check_encoder(encoder_dir, data.adapter)
    acc = session.acc
    encoder = load_encoder(encoder_dir, acc.device)
    results = probe_encoder(session, data, encoder, opts, "encoder")
    if opts.probe_baselines:
        torch.manual_seed(session.seed)
        random_init = Encoder(build_adapter(data.adapter, encoder.cfg.dim), encoder.cfg).to(acc.device)
        results |= probe_encoder(session, data, random_init, opts, "random_init")
        if data.raw_features is not None:
            train_x, train_y = data.raw_features(data.train_eval)
            eval_x, eval_y = data.raw_features(data.held_out)
            train, held_out = Features(train_x, None, train_y, []), Features(eval_x, None, eval_y, [])
            for kind in (k for k in opts.probes if k not in TOKEN_PROBES):
                results |= run_probe(session, data, kind, train, held_out, opts, probe_stage(kind, "_raw_input"))
    report_probes(session.out, results, opts.probes, headline(data))
    return results


def probe_encoder(session: Session, data: DomainData, encoder, opts: FinetuneOptions, name: str) -> dict:
    """Every probe of ``opts.probes`` on ``encoder``'s features, cached in ``out/features/<name>/``."""
    tokens = any(k in TOKEN_PROBES for k in opts.probes)
    train, held_out = cached_splits(session, data, encoder, session.out / "features" / name, tokens)
    baseline = "" if name == "encoder" else f"_{name}"
    results = {}
    for kind in opts.probes:
        results |= run_probe(session, data, kind, train, held_out, opts, probe_stage(kind, baseline))
    return results


def cached_splits(session: Session, data: DomainData, encoder, folder: Path, tokens: bool) -> list[Features]:
    """The training and held-out splits' features under ``encoder``, cached in ``folder``."""
    splits, weights = [], weights_digest(encoder)  # the weights hashed once for both splits
    for split, dataset in (("train", data.train_eval), ("held_out", data.held_out)):
        key = {"adapter": data.adapter, "preprocessing": data.preprocessing, "items": len(dataset)}
        class_ids = None if data.multi_label else getattr(dataset, "class_ids", None)  # multi-label: none
        key |= {"names": getattr(dataset, "names", None), "class_ids": class_ids}
        splits.append(cached(session, encoder, dataset, folder / f"{split}.safetensors", key, tokens, weights))
    return splits


def run_probe(
    session: Session, data: DomainData, kind: str, train: Features, held_out: Features, opts: FinetuneOptions, stage
) -> dict:
    """One probe trained on ``train`` and scored on ``held_out``: kNN on the pooled features, or a
    head (linear on pooled features; EP or attentive on patch tokens) trained with AdamW."""
    n_classes = len(data.classes)
    if kind == "knn":
        scores = knn_scores(train.pooled, train.labels, held_out.pooled, n_classes)
        logits = scores.clamp_min(1e-6).log()  # softmax gives the votes back (AUROC)
        return {f"{stage}/{k}": v for k, v in metrics(data, logits, held_out.labels).items()}
    if kind in TOKEN_PROBES and (train.tokens is None or held_out.tokens is None):
        raise DataError(f"{stage}: the {kind} probe reads patch tokens; these features have none")
    x, eval_x = (train.tokens, held_out.tokens) if kind in TOKEN_PROBES else (train.pooled, held_out.pooled)
    head = {"linear": LinearProbeHead, "ep": EfficientProbe, "attentive": AttentiveProbe}[kind](x.shape[-1], n_classes)
    model = train_head(
        session, data, head, x, train.labels, opts, stage, PROBE_LR[kind], 0.0 if kind == "linear" else 0.05
    )
    with torch.no_grad():
        logits = torch.cat([model(b.to(session.acc.device)).logits.cpu() for b in eval_x.split(256)])
    out = {f"{stage}/{k}": v for k, v in metrics(data, logits, held_out.labels).items()}
    return out | {f"{stage}/parameters": parameter_count(head)}


def train_head(session: Session, data: DomainData, head, x, y, opts: FinetuneOptions, stage: str, lr, weight_decay):
    """``head`` trained on frozen features ``x`` (pooled or tokens) for ``opts.probe_steps`` steps
    of AdamW, classes weighted as balanced accuracy weighs them -> the classifier, in eval mode."""
    model = Classifier(None, head, class_weights=weights(data, y), multi_label=data.multi_label)
    dl = session.loader(TensorDataset(x, y), shuffle=True, batch_size=256)
    cfg = TrainConfig(
        max_steps=opts.probe_steps,
        batch_size=dl.batch_size,
        base_lr=lr,
        weight_decay=weight_decay,
        warmup_steps=max(1, opts.probe_steps // 10),
        clip_grad=None,
        checkpoint_every=opts.probe_steps,
    )
    session.fit(model, dl, lambda m, b: m(b[0], b[1]).loss, cfg, stage)
    return session.acc.unwrap_model(model).eval()


def headline(data: DomainData) -> str:
    return "mAP" if data.multi_label else "balanced_accuracy"


def report_probes(out: Path, results: dict, kinds, metric: str) -> None:
    """``probes.md``: every probe (rows) on the encoder, a random one and the raw input, with the
    held-out figures (columns) and each head's parameters; ``probes.png``: ``metric`` as bars."""
    encoders = {"encoder": "", "random init": "_random_init", "raw input": "_raw_input"}
    figures = [
        k
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "mAP", "micro_f1")
        if any(key.endswith(f"/{k}") for key in results)
    ]
    lines = [f"| probe | features | {' | '.join(figures)} | parameters |", "|---" * (len(figures) + 3) + "|"]
    bars = {kind: dict.fromkeys(encoders) for kind in kinds}
    for kind in kinds:
        for name, baseline in encoders.items():
            stage = probe_stage(kind, baseline)
            if f"{stage}/{metric}" in results:
                bars[kind][name] = results[f"{stage}/{metric}"]
                cells = [f"{results[f'{stage}/{k}']:.4f}" if f"{stage}/{k}" in results else "-" for k in figures]
                lines.append(f"| {kind} | {name} | {' | '.join(cells)} | {results.get(f'{stage}/parameters', 0)} |")
    write_text(out / "probes.md", "held-out figures of each probe\n\n" + "\n".join(lines) + "\n")
    bar_chart(bars, out / "probes.png", f"held-out {metric}")


def finetune(
    session: Session, data: DomainData, encoder_dir: Path, opts: FinetuneOptions, mix: float = 0.0, stage="finetune"
) -> dict:
    """Fine-tune encoder + head (the linear probe's: BatchNorm without affine, then Linear), the
    head first fitted to the frozen encoder's cached features
    (``opts.finetune_from_probe``: LP-FT, Kumar et al. 2022: a head that starts at random sends
    random gradients into the pretrained features); ``mix`` > 0 mixes the training batches (mixup's alpha; inputs must
    be tensors whose weighted sum is an input, as spectrograms and images are). Held-out logits are
    summed over ``data.held_out`` and every one of ``data.held_out_views`` (test-time views)."""
    check_encoder(encoder_dir, data.adapter)
    acc = session.acc
    encoder = load_encoder(encoder_dir)
    n_classes = len(data.classes)
    class_ids = None if data.multi_label else data.finetune.class_ids
    head = LinearProbeHead(encoder.feature_dim, n_classes)
    if opts.finetune_from_probe:  # LP-FT: the head first learns the frozen features, then everything moves
        features = session.out / "features" / ("encoder" if stage == "finetune" else stage)  # the probe's cache
        train, _ = cached_splits(session, data, encoder.to(acc.device), features, tokens=False)
        # at lr 1e-2, not the linear probe's 0.1: a head fitted that hard to the evaluation view is brittle
        # on augmented views (ModelNet10, cross-entropy on scaled and shifted clouds: 2.6 against 0.7)
        train_head(session, data, head, train.pooled, train.labels, opts, f"{stage}_head", 1e-2, 0.0)
    cfg_dp = dataclasses.replace(encoder.cfg, drop_path=opts.drop_path)
    if cfg_dp != encoder.cfg:  # rebuild with stochastic depth, same weights
        rebuilt = type(encoder)(encoder.adapter, cfg_dp)
        load_state(rebuilt, encoder.state_dict(), encoder_dir)
        encoder = rebuilt
    model = Classifier(encoder, head, opts.label_smoothing, weights(data, class_ids), data.multi_label)

    def loss(m, b):
        x, y = mixup(b["x"], b["y"], mix, n_classes) if mix > 0 else (b["x"], b["y"])
        return m(x, y).loss

    dl = session.loader(data.finetune, shuffle=True)
    cfg = finetune_config(opts, opts.finetune_steps, dl.batch_size, session.run.checkpoint_every)
    param_groups = layer_decay_groups(model, cfg.weight_decay, opts.layer_decay)
    session.fit(model, dl, loss, cfg, stage, param_groups=param_groups)
    model = acc.unwrap_model(model)
    logits, labels = predict(model, data.held_out, session)
    for view in data.held_out_views:  # the same items in the same order, other views
        logits = logits + predict(model, view, session)[0]
    return {f"{stage}/{k}": v for k, v in metrics(data, logits, labels).items()}
