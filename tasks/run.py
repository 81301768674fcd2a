"""What every domain recipe shares: the run folder, the stages in turn, and the results.

A recipe parses its ``Options`` (``tasks.options``), builds its ``DomainData`` and calls ``run``:

    pretrain  MAE on the training split        -> encoder/, reconstructions/*.png, checkpoints/pretrain
    probe     a frozen-encoder task            -> checkpoints/probe     (default: linear probe)
    finetune  encoder + head, layer-wise decay -> checkpoints/finetune  (default: classification)
    all       the three in turn (the default)
    prune     Gardener's block pruning          -> pruned_encoder/, pruning.md, pruning.png
    extract   features of every input        -> features.safetensors + features.json (rows named)

``--encoder`` names the encoder the stages start from instead (pretraining continues it): a folder
this suite wrote, or another library's checkpoint (a file, a Hugging Face directory or Hub id)
imported once into ``imported_encoder/`` (``tasks.session.start_encoder``).

The recipe chooses the later tasks (``classify.probe`` / ``classify.finetune``, voting, or
``segment.stages``). Every stage adds its figures to ``metrics.json`` as soon as it ends, so a
later failure loses nothing; ``config.yaml`` holds the resolved options.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from accelerate.utils import set_seed

from foundations import trackers
from foundations.checkpoint import CheckpointError
from foundations.files import write_text
from foundations.train import NonFiniteLossError, derive_seed, make_accelerator
from modalities.common import DataError, DomainData
from tasks import classify
from tasks.extract import extract
from tasks.options import FinetuneOptions, OptionError, Options
from tasks.pretrain import model_config, pretrain
from tasks.prune import prune
from tasks.session import Session, saved_config, start_encoder

log = logging.getLogger(__name__)

# A later stage: (session, data, encoder folder, fine-tuning options) -> metrics
Stage = Callable[[Session, DomainData, Path, FinetuneOptions], dict]


def run_main(main: Callable[[], None]) -> None:
    """Run a recipe; bad data, checkpoints, contradicting options or a diverging loss end with one
    clear line, exit code 2. Our packages' log lines (files resampled, skipped, set aside) go to
    stderr, from the first process only below warnings; other libraries keep their own levels."""
    # The objects of the modules imported by now live as long as the process: frozen, they are left
    # out of every garbage collection, such as the one Accelerate's ``free_memory`` runs before each
    # stage, which would otherwise scan them each time (0.25 s on a 2-core CPU).
    gc.freeze()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("foundations", "modalities", "tasks"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
        logger.addHandler(handler)
    try:
        main()
    except (DataError, CheckpointError, NonFiniteLossError, OptionError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def read_metrics(path: Path) -> dict:
    """Figures of earlier stages in this output folder; an unreadable file is set aside (renamed
    ``.unreadable``, nothing lost) with a warning, and the run starts a new one."""
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
        if isinstance(metrics, dict):
            return metrics
        problem = "not a JSON object"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problem = str(e)
    kept = path.with_name(path.name + ".unreadable")
    path.replace(kept)
    log.warning("%s is unreadable (%s); kept as %s, starting a new one", path, problem, kept)
    return {}


def run(opts: Options, data: DomainData, stages: dict[str, Stage] | None = None) -> dict:
    """Run the stages ``opts.run.stage`` asks for; ``stages`` replaces the default probe/finetune."""
    out = Path(opts.run.out)
    log_with = None
    if opts.run.log_with != "none":  # the modality names the project, the run folder the run
        log_with = [trackers.tracker(opts.run.log_with, out / "trackers", data.adapter["name"], out.resolve().name)]
    acc = make_accelerator(opts.run.mixed_precision, opts.run.grad_accum, opts.source.seed, log_with)
    metrics_path = out / "metrics.json"
    # figures of stages not run now (e.g. pretraining, before a later --stage probe) are kept
    metrics = read_metrics(metrics_path)
    metrics.update({f"data/{k}": v for k, v in data.info.items()})
    metrics["run/processes"] = acc.num_processes
    metrics["run/precision"] = acc.mixed_precision  # what --mixed-precision (auto) resolved to here
    if acc.is_main_process:
        log.info("precision: %s (--mixed-precision %s)", acc.mixed_precision, opts.run.mixed_precision)
    start, adapter, saved, saved_decoder = None, data.adapter, None, None  # the encoder to start from, ours
    if opts.run.encoder:
        start, found = start_encoder(acc, opts.run.encoder, opts.run.download, data.adapter, out)
        saved, saved_decoder, adapter = saved_config(start)
        metrics.update(found)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        # every option by its flag name (so the file works as --config), then what they resolved to
        model = dataclasses.asdict(model_config(opts.pretrain, data.adapter, saved, saved_decoder))
        config = {**opts.flat(), "adapter": adapter, "model": model}
        write_text(out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
        if log_with:
            # the options as trackers take them: numbers, strings, booleans (TensorBoard's hparams refuse tuples)
            scalar = (bool, int, float, str, type(None))
            flat = {k: v if isinstance(v, scalar) else str(v) for k, v in opts.flat().items()}
            acc.init_trackers(data.adapter["name"], config=flat)
    acc.wait_for_everyone()

    def save(new: dict) -> None:
        metrics.update(new)
        if acc.is_main_process:
            write_text(metrics_path, json.dumps(metrics, indent=2))
        # each stage's figures once, as they land in metrics.json, without a step
        acc.log({k: v for k, v in new.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    session = Session(acc, out, opts.run, opts.source.seed)
    chosen = opts.run.stages
    encoder_dir = out / "encoder" if "pretrain" in chosen or start is None else start
    # each stage starts from generators seeded by its name: a resume that finds a stage done and
    # skips it leaves the next one as it was
    if "pretrain" in chosen:
        set_seed(derive_seed(session.seed, "pretrain"))
        save(pretrain(session, data, opts.pretrain, start))
    later = {"probe": classify.probe, "finetune": classify.finetune, "extract": extract, **(stages or {})}
    later["prune"] = functools.partial(prune, prune_opts=opts.prune, finetune=later["finetune"])
    for name in ("probe", "finetune", "prune", "extract"):
        if name in chosen:
            if not data.classes and name != "extract":
                raise DataError(
                    f"{opts.source.data or 'the built-in set'}: the data has no labels (no labels.csv, "
                    "class folders or label files); use --stage pretrain"
                )
            set_seed(derive_seed(session.seed, name))
            save(later[name](session, data, encoder_dir, opts.finetune))
    if acc.is_main_process:
        print(results_table(metrics))
    acc.end_training()
    return metrics


def results_table(metrics: dict) -> str:
    rows = [
        f"{k:<36} {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"{k:<36} {v}"
        for k, v in metrics.items()
        if not isinstance(v, (list, dict))
    ]
    return "\n".join(["", "results", "-" * 46, *rows, ""])
