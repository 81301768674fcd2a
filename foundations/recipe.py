"""What every domain recipe shares: the command line, the stages and the files they write.

A recipe builds its ``DomainData`` (datasets, adapter config, mask, data card) and calls ``run``:

    pretrain  MAE on the training split        -> encoder/, reconstructions/*.png, checkpoints/pretrain
    probe     linear probe on frozen features  -> checkpoints/probe
    finetune  encoder + head, layer-wise decay -> checkpoints/finetune
    all       the three in turn (the default)

Every stage adds its figures to ``metrics.json`` as soon as it ends, so a later failure loses
nothing; ``config.yaml`` holds the resolved options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate.utils import send_to_device
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from foundations.checkpoint import CheckpointError, load_encoder, load_state, read_config, save_pretrained
from foundations.heads import Classifier, ClassifierHead, LinearProbeHead, layer_decay_groups
from foundations.mae import DECODER_PRESETS, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from foundations.metrics import classification_metrics
from foundations.train import NonFiniteLossError, TrainConfig, fit, make_accelerator
from foundations.vit import PRESETS, gather_tokens

STAGES = ("pretrain", "probe", "finetune", "all")


@dataclass
class DomainData:
    """What a domain hands to ``run``. Batches are dicts with "x", "y" and optionally "valid";
    labelled datasets have ``targets``, the class index of every item."""

    pretrain: Dataset  # training split, augmented
    train_eval: Dataset  # training split, evaluation view (probe features)
    eval: Dataset  # held-out split, evaluation view
    classes: list[str]
    adapter: dict  # adapter config, {"name": ..., **fields}
    mask: MaskConfig
    data_card: str
    render: Callable | None = None  # render(mae, x, valid) -> (H, W[, 3]) float image in [0, 1]
    finetune: Dataset | None = None  # defaults to ``pretrain``
    norm_target: bool = True  # MAE's norm_pix_loss; a domain whose patches are mostly noise turns it off
    encoder: dict = field(default_factory=dict)  # EncoderConfig fields the domain sets (e.g. pooling)
    vote_view: Dataset | None = None  # held-out split with test-time augmentation, for voting
    votes: int = 1  # fine-tuned predictions averaged over the plain view and votes - 1 augmented ones
    info: dict = field(default_factory=dict)  # figures about the data for metrics.json
    groups: list[int] | None = None  # group of every pretraining item; a batch holds one group (2-D/3-D)
    recon_eval: Dataset | None = None  # held-out items for reconstruction figures; defaults to ``eval``
    stages: dict[str, Callable] = field(default_factory=dict)  # replaces "probe"/"finetune" (e.g. segmentation)
    preprocessing: dict = field(default_factory=dict)  # saved with the encoder: how to prepare new inputs


def build_parser(domain: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"accelerate launch recipes/{domain}.py",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data and outputs")
    g.add_argument("--data", help="dataset folder (labels.csv or one folder per class); default: built-in set")
    g.add_argument("--eval-data", help="held-out folder; default: a stratified split of --data (fixed seed)")
    g.add_argument("--out", default=f"runs/{domain}", help="output folder")
    g.add_argument("--config", help="YAML file of options (same names as the flags); flags given win")
    g.add_argument("--skip-bad-files", action="store_true", help="log, count and skip unreadable files")
    g = p.add_argument_group("stages")
    g.add_argument("--stage", choices=STAGES, default="all")
    g.add_argument("--encoder", help="pretrained encoder folder to probe/fine-tune (default: OUT/encoder)")
    g.add_argument("--resume", action="store_true", help="continue each stage from its last checkpoint")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("model and training")
    g.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="encoder size")
    g.add_argument("--max-steps", type=int, default=600, help="pretraining optimizer steps")
    g.add_argument("--epochs", type=int, help="pretraining epochs over the training split (replaces --max-steps)")
    g.add_argument("--batch-size", type=int, default=32, help="per process")
    g.add_argument(
        "--lr",
        type=float,
        default=1.5e-3,
        help="pretraining base lr (x total batch / 256); MAE's 1.5e-4 suits batch 4096 and 800 "
        "epochs, short runs on small batches need more",
    )
    g.add_argument("--mask-ratio", type=float, help="fraction of tokens hidden; default: the domain's")
    g.add_argument("--mask", choices=("random", "block"), help="masking strategy; default: the domain's")
    g.add_argument(
        "--norm-pix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-patch normalised targets (MAE's norm_pix_loss); default: the domain's choice",
    )
    g.add_argument("--probe-steps", type=int, default=300)
    g.add_argument("--finetune-steps", type=int, default=120)
    g.add_argument(
        "--finetune-lr",
        type=float,
        default=2e-2,
        help="fine-tuning base lr (x total batch / 256), high for short runs on small batches",
    )
    g.add_argument("--layer-decay", type=float, default=0.75, help="fine-tuning lr x decay per block from the top")
    g.add_argument("--drop-path", type=float, default=0.1, help="fine-tuning stochastic depth (last block)")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="fine-tuning cross-entropy smoothing")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument(
        "--mixed-precision",
        choices=("auto", "no", "bf16", "fp16"),
        default="auto",
        help="auto: bf16 on a GPU that supports it, else fp32",
    )
    g.add_argument("--checkpoint-every", type=int, default=100, help="optimizer steps between checkpoints")
    g.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Flags over ``--config`` YAML over defaults."""
    args = parser.parse_args(argv)
    if args.config:
        with open(args.config) as f:
            options = yaml.safe_load(f) or {}
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(options) - known)
        if unknown:
            parser.error(f"{args.config}: unknown options {unknown}")
        parser.set_defaults(**options)
        args = parser.parse_args(argv)
    return args


def mask_config(args: argparse.Namespace, default: MaskConfig) -> MaskConfig:
    """The domain's default mask with whatever ``--mask`` and ``--mask-ratio`` set."""
    return dataclasses.replace(default, strategy=args.mask or default.strategy, ratio=args.mask_ratio or default.ratio)


def run_main(main: Callable[[], None]) -> None:
    """Run a recipe; bad data, checkpoints or a diverging loss end with one clear line, exit code 2."""
    from modalities.samples import DataError

    try:
        main()
    except (DataError, CheckpointError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(args: argparse.Namespace, data: DomainData) -> dict:
    acc = make_accelerator(args.mixed_precision, args.grad_accum, args.seed)
    out = Path(args.out)
    metrics_path = out / "metrics.json"
    # figures of stages not run now (e.g. pretraining, before a later --stage probe) are kept
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics.update({f"data/{k}": v for k, v in data.info.items()})
    metrics["run/processes"] = acc.num_processes
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(
            yaml.safe_dump(
                {**vars(args), "adapter": data.adapter, "mask": dataclasses.asdict(data.mask)}, sort_keys=False
            )
        )
    acc.wait_for_everyone()

    def save(new: dict) -> None:
        metrics.update(new)
        if acc.is_main_process:
            metrics_path.write_text(json.dumps(metrics, indent=2))

    stages = ("pretrain", "probe", "finetune") if args.stage == "all" else (args.stage,)
    encoder_dir = out / "encoder" if "pretrain" in stages or not args.encoder else Path(args.encoder)
    if "pretrain" in stages:
        save(pretrain(args, data, acc, out))
    later = {"probe": probe, "finetune": finetune, **data.stages}
    for name in ("probe", "finetune"):
        if name in stages:
            save(later[name](args, data, acc, out, encoder_dir))
    if acc.is_main_process:
        print(results_table(metrics))
    acc.end_training()
    return metrics


class GroupedBatchSampler(Sampler):
    """Shuffled full batches whose items all come from one group, for items that cannot be
    stacked together (2-D slices and 3-D crops). The order depends on the seed and the epoch only,
    so every process draws the same batches and Accelerate hands each its share."""

    def __init__(self, groups: list[int], batch_size: int, seed: int = 0):
        self.groups, self.batch_size, self.seed, self.epoch = torch.as_tensor(groups), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1  # a later pass without set_epoch still reshuffles
        batches = []
        for g in self.groups.unique():
            idx = torch.nonzero(self.groups == g).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
            batches += [idx[i : i + self.batch_size] for i in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        yield from (batches[i] for i in torch.randperm(len(batches), generator=gen).tolist())

    def __len__(self) -> int:
        return sum(int((self.groups == g).sum()) // self.batch_size for g in self.groups.unique())


def loader(dataset, args, shuffle: bool, processes: int = 1, batch_size: int | None = None, groups=None) -> DataLoader:
    """Batches of at most each process's share of ``dataset``, so every process gets one; with
    ``groups``, every batch comes from one group."""
    batch = max(1, min(batch_size or args.batch_size, len(dataset) // processes))
    if groups is not None:
        batch = max(1, min(batch, min(groups.count(g) for g in set(groups)) // processes))
        return DataLoader(
            dataset, batch_sampler=GroupedBatchSampler(groups, batch, args.seed), num_workers=args.workers
        )
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle, drop_last=shuffle, num_workers=args.workers)


def pretrain_steps(args, n_train: int, processes: int) -> int:
    if not args.epochs:
        return args.max_steps
    return args.epochs * max(1, n_train // (min(args.batch_size, n_train) * processes * args.grad_accum))


def check_encoder(directory: Path, adapter: dict) -> None:
    """The encoder in ``directory`` must be of this recipe's modality and channel count."""
    theirs = read_config(directory)["adapter"]
    for key in ("name", "channels"):
        if theirs.get(key) != adapter.get(key):
            raise CheckpointError(
                f"{directory}: encoder was trained with adapter {key}={theirs.get(key)!r}, "
                f"this recipe needs {adapter.get(key)!r}"
            )


def pretrain(args, data: DomainData, acc, out: Path) -> dict:
    from modalities import build_adapter

    enc_cfg = dataclasses.replace(PRESETS[args.preset], **data.encoder)
    norm_target = data.norm_target if args.norm_pix is None else args.norm_pix
    mae = MaskedAutoencoder(
        build_adapter(data.adapter, enc_cfg.dim),
        MAEConfig(enc_cfg, DECODER_PRESETS[args.preset], data.mask, norm_target),
    )
    if args.encoder:  # continue pretraining from a saved encoder
        check_encoder(Path(args.encoder), data.adapter)
        load_state(mae.encoder, load_encoder(args.encoder).state_dict(), args.encoder)
    train_loader = loader(data.pretrain, args, shuffle=True, processes=acc.num_processes, groups=data.groups)
    steps = pretrain_steps(args, len(data.pretrain), acc.num_processes)
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=train_loader.batch_sampler.batch_size,
        base_lr=args.lr,
        warmup_steps=max(1, steps // 10),
        checkpoint_every=args.checkpoint_every,
    )
    recon_eval = data.recon_eval or data.eval
    view = send_to_device(next(iter(DataLoader(recon_eval, batch_size=8))), acc.device)
    pictures = out / "reconstructions"
    every = max(1, steps // 4)

    def on_step(step: int, model) -> None:
        if data.render is None or not acc.is_main_process or (step % every and step != steps):
            return
        pictures.mkdir(parents=True, exist_ok=True)
        model.eval()
        image = data.render(model, view["x"], view.get("valid"))
        model.train()
        Image.fromarray((image.cpu().numpy() * 255).round().astype("uint8")).save(pictures / f"step_{step:06d}.png")

    res = fit(
        mae,
        train_loader,
        lambda m, b: m(b["x"], b.get("valid")).loss,
        cfg,
        acc,
        out,
        "pretrain",
        resume=args.resume,
        on_step=on_step,
    )
    mae = acc.unwrap_model(mae)
    held = held_out_reconstruction(mae, recon_eval, args, acc)
    if acc.is_main_process:
        save_pretrained(
            mae.encoder,
            out / "encoder",
            data_card=data.data_card,
            classes=data.classes,
            mask=dataclasses.asdict(data.mask),
            pretrain={"steps": res.steps, "loss": res.last_loss},
            preprocessing=data.preprocessing,
        )
    acc.wait_for_everyone()
    return {
        "pretrain/loss_first": res.first_loss,
        "pretrain/loss_last": res.last_loss,
        "pretrain/steps": res.steps,
        **held,
    }


@torch.no_grad()
def held_out_reconstruction(mae, dataset, args, acc) -> dict:
    """Masked-token loss on held-out data, with one fixed mask per batch, beside the loss of the
    adapter's trivial baselines (e.g. a flat patch, the group centre) on the same tokens."""
    mae.eval()
    sums: dict[str, float] = {}
    n = 0
    gen = torch.Generator(device=acc.device).manual_seed(args.seed)
    for batch in DataLoader(dataset, batch_size=args.batch_size):
        batch = send_to_device(batch, acc.device)
        o = mae(batch["x"], batch.get("valid"), generator=gen)
        target = gather_tokens(o.target, o.ids_pred)  # (B, M, P)
        weights = None if o.weights is None else gather_tokens(o.weights, o.ids_pred)
        losses = {"eval_loss": o.loss}
        for name, pred in mae.adapter.baselines(target, weights, mae.cfg.norm_target).items():
            losses[f"eval_loss_{name}"] = mae.adapter.loss(pred, target, weights, mae.cfg.norm_target)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(batch["y"])
        n += len(batch["y"])
    mae.train()
    return {f"pretrain/{k}": v / n for k, v in sums.items()}


def class_weights(targets, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, so that the loss weighs every class as balanced accuracy does."""
    counts = torch.bincount(torch.as_tensor(targets), minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


@torch.no_grad()
def predict(model, dataset, args, acc, key: str = "logits"):
    """Run ``model`` over ``dataset`` on every process; gathered outputs and labels."""
    model.eval()
    dl = acc.prepare(DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers))
    outs, labels = [], []
    for batch in dl:
        o = model(batch["x"])
        o = getattr(o, key)
        o, y = acc.gather_for_metrics((o, batch["y"]))
        outs.append(o.float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def require_encoder(encoder_dir: Path, adapter: dict) -> None:
    if not (encoder_dir / "config.json").is_file():
        raise CheckpointError(
            f"{encoder_dir}: no pretrained encoder here; run --stage pretrain first or pass --encoder DIR"
        )
    check_encoder(encoder_dir, adapter)


def probe(args, data: DomainData, acc, out: Path, encoder_dir: Path) -> dict:
    require_encoder(encoder_dir, data.adapter)
    encoder = load_encoder(encoder_dir, acc.device)
    train_x, train_y = predict(encoder, data.train_eval, args, acc, key="features")
    eval_x, eval_y = predict(encoder, data.eval, args, acc, key="features")
    n_classes = len(data.classes)
    model = Classifier(
        None, LinearProbeHead(train_x.shape[1], n_classes), class_weights=class_weights(train_y, n_classes)
    )
    dl = loader(TensorDataset(train_x, train_y), args, shuffle=True, processes=acc.num_processes, batch_size=256)
    cfg = TrainConfig(
        max_steps=args.probe_steps,
        batch_size=dl.batch_size,
        base_lr=0.1,
        weight_decay=0.0,
        warmup_steps=max(1, args.probe_steps // 10),
        clip_grad=None,
        checkpoint_every=args.probe_steps,
    )
    fit(model, dl, lambda m, b: m(b[0], b[1]).loss, cfg, acc, out, "probe", resume=args.resume)
    model = acc.unwrap_model(model).eval()
    with torch.no_grad():
        logits = model(eval_x.to(acc.device)).logits.cpu()
    return {f"probe/{k}": v for k, v in classification_metrics(logits, eval_y).items()}


def finetune_config(args, steps: int, batch_size: int) -> TrainConfig:
    """The schedule of a fine-tuning stage: this one, or a domain's own (e.g. segmentation)."""
    return TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        base_lr=args.finetune_lr,
        warmup_steps=max(1, steps // 10),
        checkpoint_every=args.checkpoint_every,
    )


def finetune(args, data: DomainData, acc, out: Path, encoder_dir: Path) -> dict:
    require_encoder(encoder_dir, data.adapter)
    encoder = load_encoder(encoder_dir)
    cfg_dp = dataclasses.replace(encoder.cfg, drop_path=args.drop_path)
    if cfg_dp != encoder.cfg:  # rebuild with stochastic depth, same weights
        rebuilt = type(encoder)(encoder.adapter, cfg_dp)
        load_state(rebuilt, encoder.state_dict(), encoder_dir)
        encoder = rebuilt
    dataset = data.finetune or data.pretrain
    n_classes = len(data.classes)
    model = Classifier(
        encoder,
        ClassifierHead(encoder.feature_dim, n_classes),
        args.label_smoothing,
        class_weights(dataset.targets, n_classes),
    )
    dl = loader(dataset, args, shuffle=True, processes=acc.num_processes)
    cfg = finetune_config(args, args.finetune_steps, dl.batch_size)
    groups = layer_decay_groups(model, cfg.weight_decay, args.layer_decay)
    fit(model, dl, lambda m, b: m(b["x"], b["y"]).loss, cfg, acc, out, "finetune", groups=groups, resume=args.resume)
    model = acc.unwrap_model(model)
    logits, labels = predict(model, data.eval, args, acc)
    for _ in range(data.votes - 1):  # test-time voting: same order, augmented views
        logits = logits + predict(model, data.vote_view, args, acc)[0]
    return {f"finetune/{k}": v for k, v in classification_metrics(logits, labels).items()}


def results_table(metrics: dict) -> str:
    rows = [
        f"{k:<36} {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"{k:<36} {v}"
        for k, v in metrics.items()
        if not isinstance(v, (list, dict))
    ]
    return "\n".join(["", "results", "-" * 46, *rows, ""])
