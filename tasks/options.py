"""Typed options of a recipe run, and the command line derived from them.

Every option is a field of a frozen dataclass with its one default and its help beside it; the
command line (``--flag-name``), ``--config FILE.yaml`` (the same names with underscores) and
``config.yaml`` in the run folder are all derived from those fields. A recipe combines the shared
groups below with its domain's options (``modalities.<name>.data.<Name>Options``) and may give a
shared option a different default for its domain (``parse(..., defaults=...)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from foundations import trackers
from foundations.vit import PRESETS
from modalities.common import DataSource

STAGES = ("pretrain", "probe", "finetune", "prune", "extract")  # in the order they run
PROBES = ("linear", "knn", "ep", "attentive")  # tasks.classify's probes of a frozen encoder
RESOLVED = ("adapter", "model")  # what a run's config.yaml adds to the options; ignored as --config


def auto_or_count(text: str) -> str:
    if text != "auto" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected auto or a count, got {text!r}")
    return text


def ratio_or_all(text: str) -> float | None:
    if text == "all":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction or all, got {text!r}") from None


class OptionError(ValueError):
    """Options that contradict each other or the modality's defaults, found after parsing."""


@dataclass(frozen=True)
class RunOptions:
    out: str | None = field(default=None, metadata={"help": "output folder; default: runs/<recipe>"})
    stage: str = field(
        default="all",
        metadata={
            "help": "stages to run, comma-separated (e.g. pretrain,probe), from pretrain, probe, finetune, "
            "prune (Gardener's block pruning of the encoder, with a report: see pruning), "
            "extract (features of every input from the encoder: features.safetensors + features.json); "
            "all: pretrain, probe, finetune in turn",
        },
    )
    tokens: bool = field(default=False, metadata={"help": "--stage extract also saves every patch token"})
    encoder: str | None = field(
        default=None,
        metadata={
            "help": "pretrained encoder to probe, fine-tune or (with --stage pretrain) continue pretraining: a folder "
            "this suite wrote, or another library's checkpoint (MAE/timm .pth/.bin/.safetensors, a Hugging Face "
            "directory or Hub id org/name), imported once into OUT/imported_encoder (default: OUT/encoder)"
        },
    )
    download: bool = field(
        default=False,
        metadata={"help": "allow fetching an --encoder Hub id that is not in the local Hugging Face cache"},
    )
    resume: bool = field(default=False, metadata={"help": "continue each stage from its last checkpoint"})
    overwrite: bool = field(
        default=False, metadata={"help": "start over in an --out that holds an earlier run's checkpoints"}
    )
    batch_size: int = field(default=32, metadata={"help": "per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    mixed_precision: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "no", "bf16", "fp16"),
            "help": "auto: bf16 autocast on a GPU that supports it or a CPU that computes bf16 natively (AVX512-BF16, "
            "AMX), else fp32",
        },
    )
    checkpoint_every: int = field(default=100, metadata={"help": "optimizer steps between checkpoints"})
    log_every: int = field(default=10, metadata={"help": "optimizer steps between log.jsonl records"})
    workers: str = field(
        default="auto",
        metadata={
            "parse": auto_or_count,
            "help": "data-loading worker processes per training process, or auto: on a GPU all of this process's "
            "share of the cores but one (at most 8), on a CPU a quarter of them (the model computes on them)",
        },
    )
    compile: bool = field(
        default=False, metadata={"help": "torch.compile the models; what cannot be compiled runs as it is"}
    )
    log_with: str = field(
        default="none",
        metadata={
            "choices": ("none", *trackers.TRACKERS),
            "help": "experiment tracker that also receives each log.jsonl record (loss, lr, data-wait share, as "
            "<stage>/loss ...), the reconstruction pictures and each stage's figures; log.jsonl stays. "
            "tensorboard: the tensorboard package (pip install 'mae-foundations[trackers]'), event files in "
            "OUT/trackers/tensorboard (tensorboard --logdir OUT/trackers); wandb: the wandb package, an offline run "
            "in OUT/trackers/wandb unless WANDB_MODE=online (or `wandb sync` it later); mlflow: the mlflow package, "
            "into its tracking store (MLFLOW_TRACKING_URI, by default a local one in the working directory). None "
            "needs the network",
        },
    )

    @property
    def stages(self) -> tuple[str, ...]:
        """``--stage`` as the stages it names, in the order they run."""
        named = ("pretrain", "probe", "finetune") if self.stage == "all" else self.stage.split(",")
        return tuple(s for s in STAGES if s in named)

    def data_workers(self, processes: int, gpu: bool) -> int:
        """``--workers`` as a count. Workers are not kept between epochs (persistent workers would
        miss the epoch that ``Seeded`` draws each item's augmentation from)."""
        if self.workers != "auto":
            return int(self.workers)
        cores = len(os.sched_getaffinity(0)) // max(1, processes)  # this process's share of the machine
        # on a CPU the model needs the cores: one worker made a 2-core volume run 35 % slower
        return max(0, min(8, cores - 1)) if gpu else cores // 4

    def __post_init__(self):
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        for name in ("batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        # here, before any data is read: Accelerate would drop a tracker that is not installed without a word
        if self.log_with != "none" and (needs := trackers.missing(self.log_with)):
            raise ValueError(f"--log-with {self.log_with} needs {needs}")


@dataclass(frozen=True)
class PretrainOptions:
    preset: str = field(default="tiny", metadata={"choices": tuple(sorted(PRESETS)), "help": "encoder size"})
    max_steps: int = field(default=600, metadata={"help": "pretraining optimizer steps"})
    epochs: int | None = field(
        default=None, metadata={"help": "pretraining epochs over the training split (replaces --max-steps)"}
    )
    lr: float = field(
        default=1.5e-3,
        metadata={
            "help": "pretraining base lr (x total batch / 256); MAE's 1.5e-4 suits batch 4096 and 800 epochs, "
            "short runs on small batches need more"
        },
    )
    mask: str | None = field(
        default=None,
        metadata={"choices": ("random", "block", "tube"), "help": "masking strategy; default: the modality's"},
    )
    decode: str | None = field(
        default=None,
        metadata={
            "choices": ("hidden", "running_cell"),
            "help": "which hidden tokens the decoder reconstructs: all, or half on VideoMAE V2's running cell "
            "(grids with a time axis); default: the modality's",
        },
    )
    mask_ratio: float | None = field(
        default=None, metadata={"help": "fraction of tokens hidden; default: the modality's"}
    )
    norm_pix: bool | None = field(
        default=None, metadata={"help": "per-patch normalised targets (MAE's norm_pix_loss); default: the modality's"}
    )
    decoder: str = field(
        default="cross-mix",
        metadata={
            "choices": ("self", "cross", "cross-mix"),
            "help": "MAE's decoder (self-attention over latents and queries), or CrossMAE's (each query attends to "
            "the encoder's tokens only; cross-mix: each block to its own learned mix of the encoder's blocks)",
        },
    )
    predict_ratio: float | None = field(
        default=0.25,
        metadata={
            "parse": ratio_or_all,
            "none": "all",  # how None is written on the command line (and in --config)
            "help": "fraction of all tokens the decoder reconstructs, drawn among the hidden ones (CrossMAE: 0.25 "
            "of 0.75 hidden; at most the mask ratio), or all: every hidden token (MAE). The learning rate is "
            "not rescaled for it",
        },
    )
    grad_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each encoder block's activations in the backward pass instead of keeping them: "
            "less memory for large encoders (ViT-L/H, with recipes/accelerate/fsdp.yaml), about a third more compute"
        },
    )

    def __post_init__(self):
        if self.max_steps < 1 or (self.epochs is not None and self.epochs < 1):
            raise ValueError("--max-steps and --epochs must be >= 1")
        if self.predict_ratio is not None and not 0 < self.predict_ratio < 1:
            raise ValueError(f"--predict-ratio must be in (0, 1), got {self.predict_ratio}")


@dataclass(frozen=True)
class FinetuneOptions:
    probe: str = field(
        default="linear,knn,ep",
        metadata={
            "help": "probes of the frozen encoder, comma-separated, from linear (pooled features), knn (k=20, "
            "cosine), ep (efficient attentive probing on patch tokens, 32 queries), attentive (one-query "
            "cross-attention block: about ten times EP's parameters and time); all: the four. Features are "
            "computed once into OUT/features/"
        },
    )
    probe_steps: int = field(default=300, metadata={"help": "optimizer steps of each trained probe"})
    probe_baselines: bool = field(
        default=True,
        metadata={
            "help": "also probe a randomly initialised encoder of the same shape and, where the "
            "modality defines them, features of the raw input (probe_random_init/, probe_raw_input/); "
            "voxel labelling also fine-tunes the random encoder (finetune_random_init/)"
        },
    )
    finetune_steps: int = field(
        default=120,
        metadata={
            "help": "fine-tuning optimizer steps; the recipes' defaults suit their built-in sets, real data wants "
            "more (BUSI beat its linear probe at 600 steps with --finetune-lr 5e-3, not at 120)"
        },
    )
    finetune_from_probe: bool = field(
        default=True,
        metadata={
            "help": "fit the classifier head to the frozen encoder's features first (--probe-steps, lr 1e-2), "
            "then fine-tune everything (LP-FT, Kumar et al. 2022): a head that starts at random "
            "sends random gradients into the pretrained features"
        },
    )
    finetune_lr: float = field(
        default=2e-3,
        metadata={
            "help": "fine-tuning base lr (x total batch / 256); with a fitted head, 2e-2 moved ModelNet10 "
            "and BUSI encoders off their features within a few steps"
        },
    )
    layer_decay: float = field(default=0.75, metadata={"help": "fine-tuning lr x decay per block from the top"})
    drop_path: float = field(
        default=0.0,
        metadata={
            "help": "fine-tuning stochastic depth (last block); MAE uses 0.1 over 100 epochs, but in short runs "
            "it costs more than it gives (ModelNet10: the fitted head's held-out accuracy 0.74 -> 0.58 at 0.1)"
        },
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "fine-tuning cross-entropy smoothing"})

    def __post_init__(self):
        if min(self.probe_steps, self.finetune_steps) < 1:
            raise ValueError("--probe-steps and --finetune-steps must be >= 1")
        unknown = set(self.probes) - set(PROBES)
        if unknown or not self.probes:
            raise ValueError(f"--probe {self.probe}: choose all or from {','.join(PROBES)}, comma-separated")

    @property
    def probes(self) -> tuple[str, ...]:
        """``--probe`` as the probes it names, in the order of ``PROBES``."""
        named = PROBES if self.probe == "all" else tuple(self.probe.split(","))
        return tuple(p for p in PROBES if p in named) + tuple(p for p in named if p not in PROBES)


@dataclass(frozen=True)
class PruneOptions:
    prune_ratio: float = field(default=0.25, metadata={"help": "fraction of the encoder's blocks to remove, in [0, 1)"})
    prune_keep: int | None = field(default=None, metadata={"help": "blocks to keep (replaces --prune-ratio)"})
    prune_method: str = field(
        default="entropy",
        metadata={
            "choices": ("entropy", "l1", "variance", "random", "oracle"),
            "help": "which blocks go: the lowest weight entropy (Gardener), L1 or variance of the same weights, "
            "random ones, or those whose removal alone costs the probe least (oracle, needs the data)",
        },
    )
    prune_binning: str = field(
        default="float16",
        metadata={
            "choices": ("float16", "histogram"),
            "help": "how weight values are counted for their entropy: distinct values once cast to float16 (what "
            "the reference's fp16 checkpoint amounts to), or a histogram of --prune-bins equal bins",
        },
    )
    prune_bins: int = field(default=4096, metadata={"help": "bins of --prune-binning histogram"})
    prune_ratios: str = field(
        default="0,0.25,0.5,0.75", metadata={"help": "pruning ratios of the report, comma-separated"}
    )
    prune_recover_steps: int = field(
        default=0, metadata={"help": "fine-tune the pruned encoder this many steps after pruning (0: no)"}
    )

    def __post_init__(self):
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"--prune-ratio must be in [0, 1), got {self.prune_ratio}")
        if self.prune_keep is not None and self.prune_keep < 0:
            raise ValueError(f"--prune-keep must be >= 0, got {self.prune_keep}")
        try:
            ratios = self.ratios
        except ValueError:
            raise ValueError(f"--prune-ratios {self.prune_ratios}: expected fractions, comma-separated") from None
        if not ratios or not all(0.0 <= r < 1.0 for r in ratios):
            raise ValueError(f"--prune-ratios {self.prune_ratios}: each must be in [0, 1)")
        if self.prune_recover_steps < 0:
            raise ValueError(f"--prune-recover-steps must be >= 0, got {self.prune_recover_steps}")

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(float(r) for r in self.prune_ratios.split(","))


@dataclass(frozen=True)
class Options:
    """A recipe's resolved options, one frozen group each."""

    source: DataSource
    run: RunOptions
    pretrain: PretrainOptions
    finetune: FinetuneOptions
    prune: PruneOptions
    domain: Any  # the domain's own options dataclass

    def flat(self) -> dict:
        """Every option by its flag's name, as ``--config`` takes them."""
        groups = (self.source, self.run, self.pretrain, self.finetune, self.prune, self.domain)
        return {k: v for g in groups for k, v in dataclasses.asdict(g).items()}


SHARED = {
    "data and outputs": DataSource,
    "run": RunOptions,
    "pretraining": PretrainOptions,
    "probe and fine-tuning": FinetuneOptions,
    "pruning (--stage prune)": PruneOptions,
}


def _flag_type(annotation):
    """The base type of a field annotation such as ``int | None`` (str for ``str | int``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else str
    return annotation


def add_options(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One flag per field of ``cls``: ``--field-name``, type from the annotation (or the field's
    metadata "parse"), booleans as --flag / --no-flag, choices and help from the metadata."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _flag_type(hints[f.name])
        names = [f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())]
        kwargs = {"dest": f.name, "default": f.default, "help": f.metadata.get("help", "")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = f.metadata.get("parse", kind if kind in (int, float, str) else str)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        group.add_argument(*names, **kwargs).none = f.metadata.get("none")


def build_parser(recipe: str, description: str, domain_cls, defaults: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"accelerate launch recipes/{recipe}.py",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of options (same names as the flags); flags given win")
    for title, cls in {**SHARED, recipe: domain_cls}.items():
        add_options(parser, cls, title)
    own = domain_stages(domain_cls)
    if own:
        stage = next(a for a in parser._actions if a.dest == "stage")
        stage.help += "; this recipe's own: " + "; ".join(f"{name}: {text}" for name, text in own.items())
    parser.set_defaults(out=f"runs/{recipe}", **(defaults or {}))
    return parser


def domain_stages(domain_cls) -> dict[str, str]:
    """A domain's own stages, {name: help}, that its recipe runs itself (e.g. nerf's bake): declared
    as the class attribute ``stages`` of its options, accepted by --stage beside ``STAGES``."""
    return dict(getattr(domain_cls, "stages", {}))


def config_tokens(parser: argparse.ArgumentParser, options: dict) -> list[str]:
    """--config values as command-line tokens: booleans as --flag / --no-flag, lists as "a,b,c",
    None as the field writes it ("none" metadata), or left out (the field's default)."""
    actions = {a.dest: a for a in parser._actions}
    tokens = []
    for name, value in options.items():
        flag = actions[name].option_strings[0]
        if value is None:
            if getattr(actions[name], "none", None):
                tokens.append(f"{flag}={actions[name].none}")
            continue
        if isinstance(actions[name], argparse.BooleanOptionalAction):
            tokens.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag}={value}")
        else:
            tokens.append(f"{flag}={','.join(map(str, value)) if isinstance(value, list) else value}")
    return tokens


def parse(recipe: str, description: str, domain_cls, defaults: dict | None = None, argv=None) -> Options:
    """Flags over ``--config`` YAML over the recipe's ``defaults`` over the fields' defaults."""
    parser = build_parser(recipe, description, domain_cls, defaults)
    args = parser.parse_args(argv)
    if args.config:
        with open(args.config) as f:
            options = yaml.safe_load(f) or {}
        options = {k: v for k, v in options.items() if k not in RESOLVED}
        unknown = sorted(set(options) - {a.dest for a in parser._actions})
        if unknown:
            parser.error(f"{args.config}: unknown options {unknown}")
        # the file's values go through the flags' own types and choices, flags on the command line win
        tokens = config_tokens(parser, options)
        parser.exit_on_error = False
        try:
            parser.parse_args(tokens)
        except argparse.ArgumentError as e:
            parser.error(f"{args.config}: {e}")
        parser.exit_on_error = True
        args = parser.parse_args([*tokens, *(sys.argv[1:] if argv is None else argv)])
    values = vars(args)
    known = (*STAGES, *domain_stages(domain_cls))
    if values["stage"] != "all" and not set(values["stage"].split(",")) <= set(known):
        parser.error(f"--stage {values['stage']}: choose all or from {','.join(known)}, comma-separated")
    try:
        groups = {
            name: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
            for name, cls in zip(
                ("source", "run", "pretrain", "finetune", "prune", "domain"),
                (*SHARED.values(), domain_cls),
                strict=True,
            )
        }
    except ValueError as e:
        parser.error(str(e))
    return Options(**groups)
