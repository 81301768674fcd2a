"""The one training loop every recipe and stage shares, on Accelerate.

AdamW (betas 0.9, 0.95 as in MAE), linear warmup then cosine decay, learning rate scaled by
total batch / 256 (Goyal et al. 2017, as MAE does), gradient accumulation, clipping, mixed
precision, resumable checkpoints every N steps, a progress bar on the main process and a
JSON-lines log, whose records also go to the Accelerator's experiment trackers, if any. A
non-finite loss on any process, or a non-finite gradient, stops every process before the update,
so the last checkpoint on disk is the last good one; a resume skips a damaged latest checkpoint
for the one before it.

Exact resume: nothing random is carried in a checkpoint. The data order comes from the seed and
the epoch (Accelerate's seedable sampler), each item is drawn with generators seeded from (seed,
epoch, index) (``Seeded``), and each micro-step's draws in the model (drop path, mixup) from (seed,
stage, process, micro-step). A checkpoint then needs only weights and optimizer moments
(safetensors) and the step and schedule (``trainer.json``, written last: the completion marker).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, send_to_device, set_seed
from tqdm.auto import tqdm

from foundations.checkpoint import CheckpointError, check_state, load_training_state, save_training_state
from foundations.files import write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 64  # per process, per micro-step
    base_lr: float = 1.5e-4  # lr = base_lr * batch_size * processes * grad_accum / 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    clip_grad: float | None = 1.0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    compile: str | None = None  # torch.compile the model in place with this backend ("inductor"); None: eager

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        for name in ("max_steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.base_lr <= 0:
            raise ValueError(f"TrainConfig.base_lr must be positive, got {self.base_lr}")


class NonFiniteLossError(RuntimeError):
    pass


class FitResult(NamedTuple):
    first_loss: float
    last_loss: float
    steps: int


def adamw(groups, **options) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel (one pass over every parameter: 44 ms a step for ViT-S's
    47 M parameters on this 2-core CPU, against 185 ms for the default), or the default where the
    parameters' device or dtype has no fused kernel."""
    try:
        return torch.optim.AdamW(groups, fused=True, **options)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, **options)


def compile_quietly(model: torch.nn.Module, **options) -> torch.nn.Module:
    """``model.compile(**options)`` in place (its state dict keeps its names), with TorchDynamo told to
    run any graph it cannot compile eagerly instead of failing (``suppress_errors``): compiling is
    an optimisation, never a reason for a run to stop."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    model.compile(**options)
    return model


DATA_WAIT_WARN = 0.2  # the share of time waiting for data past which a run says so,
DATA_WAIT_MIN_S = 1.0  # when it waited this long since the last record (a probe's 10 ms steps do not count)


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware: AVX512-BF16 or AMX-BF16 among its flags (Linux's
    ``cpuinfo``). Elsewhere bf16 matmuls are emulated and slower than fp32."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_precision(mixed_precision: str = "auto", cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """``auto`` as what it means on this machine: bf16 autocast on a GPU that supports it and on a
    CPU that computes bf16 natively (``native_bf16``), fp32 ("no") elsewhere. Autocast keeps losses
    and reductions in fp32 (the loss casts predictions back). Other values pass through."""
    if mixed_precision != "auto":
        return mixed_precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if native_bf16(cpuinfo) else "no"


def make_accelerator(
    mixed_precision: str = "auto", grad_accum: int = 1, seed: int = 0, log_with: list | None = None
) -> Accelerator:
    """``mixed_precision``: "auto" (``resolve_precision``), "no", "bf16", "fp16". ``log_with``: the
    experiment trackers ``fit`` also logs to (``foundations.trackers``), once ``init_trackers`` starts them."""
    mixed_precision = resolve_precision(mixed_precision)
    # Accelerate picks gloo (MULTI_CPU) for a multi-process launch only when told to use the CPU;
    # without this, `accelerate launch --multi_gpu` on a machine with no GPU starts independent runs.
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    acc = Accelerator(
        cpu=multi_process_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        log_with=log_with,
        # the shuffled order depends on the seed and the epoch only, not on the global generator
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )
    set_seed(seed)
    return acc


def derive_seed(*parts) -> int:
    """A 32-bit seed from ``parts`` (ints and strings), the same in every process and on every run."""
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=4).digest(), "little")


class Seeded(torch.utils.data.Dataset):
    """``dataset`` whose item ``i`` of epoch ``e`` is drawn with torch, NumPy and Python's generators
    (and the dataset's own, through an optional ``reseed(seed)``, e.g. MONAI's) seeded from (seed, e,
    i): an item's augmentation does not depend on which worker loads it or on the items before it,
    so a resumed run that skips half an epoch draws the rest exactly. Dict items carry that seed as
    ``key``, from which the model draws the item's mask (``foundations.masking.sample_generators``)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        key = derive_seed(self.seed, self.epoch, i)
        seed_draws(key, self.dataset)
        item = self.dataset[i]
        return {**item, "key": key} if isinstance(item, dict) else item


def seed_draws(key: int, source=None) -> None:
    """Seed the generators an item is drawn with from ``key``: torch's, NumPy's and Python's CPU
    generators (accelerate's set_seed also seeds every device's, ten times the cost, paid per item)
    and ``source``'s own, through an optional ``reseed(key)`` (e.g. MONAI's random transforms)."""
    torch.default_generator.manual_seed(key)
    np.random.seed(key)
    random.seed(key)
    if hasattr(source, "reseed"):
        source.reseed(key)


def set_epoch(loader, epoch: int) -> None:
    """Tell the sampler and the dataset the epoch. Accelerate's loader reaches its own seedable
    sampler but neither a batch sampler it wraps for several processes nor, beside that sampler,
    the dataset."""
    if hasattr(loader, "set_epoch"):  # Accelerate's; a stream's loader is left to the stream
        loader.set_epoch(epoch)
    for part in (loader.dataset, getattr(loader.batch_sampler, "batch_sampler", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def cosine_schedule(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr: linear warmup, then cosine to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, tokens and other 1-D parameters (as in MAE)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith("token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (the ones with trainer.json), oldest first."""
    return sorted(p.parent for p in directory.glob("step_*/trainer.json"))


def fit(
    model: torch.nn.Module,
    loader,
    loss_fn: Callable,
    cfg: TrainConfig,
    accelerator: Accelerator,
    out_dir,
    stage: str,
    param_groups: list[dict] | None = None,
    resume: bool = False,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps on ``loss_fn(model, batch) -> loss``.

    Checkpoints go to ``out_dir/checkpoints/<stage>/step_N``; the log to ``out_dir/log.jsonl``.
    ``param_groups`` overrides the optimiser's parameter groups (each may carry ``lr_scale``).
    Without ``resume``, checkpoints of an earlier run of the stage stop it, unless ``overwrite``.
    """
    out_dir, acc = Path(out_dir), accelerator
    ckpt_dir = out_dir / "checkpoints" / stage
    total_batch = cfg.batch_size * acc.num_processes * acc.gradient_accumulation_steps
    peak_lr = cfg.base_lr * total_batch / 256
    optimizer = adamw(param_groups or decay_groups(model, cfg.weight_decay), lr=peak_lr, betas=cfg.betas)
    scales = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s, k=k: k * cosine_schedule(s, cfg) for k in scales]
    )
    if cfg.compile:
        compile_quietly(model, backend=cfg.compile)
    # one stage's objects only: what save_state writes must be what a later resume of this stage loads
    acc.free_memory()
    # a stream that cuts itself up among processes and workers and starts at any batch (``skip_batches``,
    # modalities.shards.ShardStream) is not handed to Accelerate, which would give each process all of it to cut
    stream = hasattr(loader.dataset, "skip_batches")
    model, optimizer, *prepared = acc.prepare(model, optimizer, *([] if stream else [loader]))
    loader = loader if stream else prepared[0]
    if len(loader) == 0:
        raise ValueError(f"[{stage}] no full batch of {cfg.batch_size} per process: the dataset is too small")

    # what fixes the schedule and the data order: a resume must not change it
    schedule = {
        "max_steps": cfg.max_steps,
        "warmup_steps": cfg.warmup_steps,
        "base_lr": cfg.base_lr,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "processes": acc.num_processes,
        "grad_accum": acc.gradient_accumulation_steps,
        "batches_per_epoch": len(loader),
    }
    step, first_loss = 0, None
    if not resume and checkpoints(ckpt_dir):
        if not overwrite:
            raise CheckpointError(
                f"{ckpt_dir} holds checkpoints of an earlier run; --resume to continue it, --overwrite to start over"
            )
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(ckpt_dir)
        acc.wait_for_everyone()
    micro_epoch = len(loader)  # micro-batches in an epoch
    position = (0, 0)  # (epoch, micro-batches of it done): the position in the data
    if resume and (state := load_checkpoint(acc, ckpt_dir, stage, model, optimizer, schedule)):
        step, first_loss = state["step"], state["first_loss"]
        position = divmod(step * acc.gradient_accumulation_steps, micro_epoch)
        if state.get("data", list(position)) != list(position):
            raise CheckpointError(f"{ckpt_dir}: step {step} and the data position {state['data']} disagree")
        scheduler.load_state_dict(state["scheduler"])  # stepped by us, once per optimizer step
    if step >= cfg.max_steps:
        return FitResult(first_loss, state["last_loss"], step)

    log = out_dir / "log.jsonl"
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        trim_log(log, stage, step)
    interactive = sys.stderr.isatty()  # a bar on a terminal; plain log lines in files and CI
    bar = tqdm(total=cfg.max_steps, initial=step, desc=stage, disable=not (acc.is_local_main_process and interactive))
    micro = step * acc.gradient_accumulation_steps
    epoch, skip = position
    running, n_running, t0, last_loss = 0.0, 0, time.perf_counter(), float("nan")
    waited, t_log, t_asked = 0.0, t0, t0  # seconds spent waiting for batches since the last record
    step_sum, step_n = 0.0, 0  # this optimizer step's micro-batch losses
    warned = False  # about waiting for data
    model.train()
    while step < cfg.max_steps:
        set_epoch(loader, epoch)
        if stream:
            loader.dataset.skip_batches(skip)
        batches = acc.skip_first_batches(loader, skip) if skip and not stream else loader
        skip = 0
        for batch in batches:
            batch = send_to_device(batch, acc.device) if stream else batch
            waited += time.perf_counter() - t_asked
            set_seed(derive_seed(cfg.seed, stage, acc.process_index, micro))
            micro += 1
            with acc.accumulate(model):
                loss = loss_fn(model, batch)
                bad = acc.reduce(torch.tensor(float(not torch.isfinite(loss)), device=acc.device), "sum")
                if bad.item() > 0:
                    bar.close()
                    raise NonFiniteLossError(
                        f"[{stage}] loss is not finite at step {step} (on {int(bad.item())} process(es)); "
                        f"stopped before the update; {last_good(ckpt_dir)}. Lower the learning rate or check the "
                        "inputs."
                    )
                acc.backward(loss)
                if acc.sync_gradients:  # the norm of the gradients all processes now share; inf: no clipping
                    norm = acc.clip_grad_norm_(model.parameters(), cfg.clip_grad or math.inf)
                    if not torch.isfinite(norm):
                        bar.close()
                        raise NonFiniteLossError(
                            f"[{stage}] gradient is not finite at step {step} (loss {loss.item():.4g}); stopped "
                            f"before the update; {last_good(ckpt_dir)}. Lower the learning rate or check the inputs."
                        )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            running, n_running, step_sum, step_n = running + value, n_running + 1, step_sum + value, step_n + 1
            if not acc.sync_gradients:
                t_asked = time.perf_counter()
                continue
            scheduler.step()
            step += 1
            step_loss, step_sum, step_n = step_sum / step_n, 0.0, 0
            if first_loss is None:
                first_loss = step_loss
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                mean = acc.reduce(torch.tensor(running / n_running, device=acc.device), "mean").item()
                last_loss, running, n_running = mean, 0.0, 0
                now = time.perf_counter()
                slow = waited >= DATA_WAIT_MIN_S
                data_wait, waited, t_log = waited / max(now - t_log, 1e-9), 0.0, now
                if data_wait > DATA_WAIT_WARN and slow and not warned:
                    warned = True  # once a stage
                    logger.warning(
                        "[%s] %.0f%% of the time since the last record went waiting for data: more --workers "
                        "(or faster storage) would speed this run up",
                        stage,
                        100 * data_wait,
                    )
                record = {
                    "stage": stage,
                    "step": step,
                    "loss": mean,
                    "lr": scheduler.get_last_lr()[0],
                    "elapsed_s": round(now - t0, 2),
                    "data_wait": round(data_wait, 4),  # fraction of the time waiting for data (main process)
                }
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{record['lr']:.2e}")
                if not interactive and (step % (cfg.log_every * 10) == 0 or step == cfg.max_steps):
                    acc.print(
                        f"[{stage}] step {step}/{cfg.max_steps} loss {mean:.4f} lr {record['lr']:.2e} "
                        f"({record['elapsed_s']:.0f} s)",
                        flush=True,
                    )
                if acc.is_main_process:
                    with log.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                acc.log({f"{stage}/{k}": record[k] for k in ("loss", "lr", "data_wait")}, step=step)
            if on_step is not None:
                on_step(step, acc.unwrap_model(model))
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                state = {
                    "step": step,
                    "first_loss": first_loss,
                    "last_loss": step_loss,
                    "scheduler": scheduler.state_dict(),
                    "schedule": schedule,
                    "data": divmod(micro, micro_epoch),  # where in the data a resume continues: epoch, batch
                }
                save_checkpoint(acc, ckpt_dir, model, optimizer, state, cfg.keep_checkpoints)
            t_asked = time.perf_counter()
            if step >= cfg.max_steps:
                break
        epoch += 1
    bar.close()
    return FitResult(first_loss, last_loss, step)


def sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded over the processes (FSDP2 makes them DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state(model: torch.nn.Module, optimizer=None) -> tuple[dict, dict | None]:
    """The whole model's state dict, and the optimizer's keyed by parameter name, on the CPU of the
    main process: under FSDP gathered from every process's shards (a collective: every process
    calls it; the others get empty dicts), else the model's own. torch.distributed.checkpoint's
    state-dict functions, which serve plain, DDP and FSDP2 models alike."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=options), None
    return get_state_dict(model, optimizer, options=options)


def load_full_state(model: torch.nn.Module, optimizer, weights: dict, moments: dict, source) -> None:
    """The inverse of ``full_state``, on every process: each takes its shard under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    check_state(model.state_dict(), weights, source)
    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=moments, options=options)


def trim_log(log: Path, stage: str, step: int) -> None:
    """Drop the records of ``stage`` past ``step`` (a killed run wrote them after its checkpoint; they
    are written again) and a line cut short by a kill."""
    if not log.is_file():
        return
    lines = log.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not (record.get("stage") == stage and record.get("step", 0) > step):
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        write_text(log, "".join(kept))


def last_good(ckpt_dir: Path) -> str:
    last = checkpoints(ckpt_dir)
    return f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"


def load_checkpoint(acc: Accelerator, ckpt_dir: Path, stage: str, model, optimizer, schedule: dict) -> dict | None:
    """Restore the newest checkpoint that loads whole -> its trainer state; a truncated or corrupt
    one is reported and the one before it is tried. None when the stage has none yet. A checkpoint
    of another schedule (steps, batch, processes, seed, data size) stops the run."""
    done = checkpoints(ckpt_dir)
    for path in reversed(done):
        try:
            state = json.loads((path / "trainer.json").read_text())
            theirs = state.get("schedule", {})
            if theirs != schedule:
                changed = ", ".join(f"{k} {theirs.get(k)} -> {v}" for k, v in schedule.items() if theirs.get(k) != v)
                raise CheckpointError(
                    f"{path}: this run changes what the checkpoint was trained with ({changed}); resume with the "
                    "same options, or --overwrite to start over"
                )
            weights, moments = load_training_state(path, state["optimizer"])
            load_full_state(acc.unwrap_model(model), optimizer, weights, moments, path / "model.safetensors")
            if acc.scaler is not None and "scaler" in state:
                acc.scaler.load_state_dict(state["scaler"])
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises (JSON, safetensors, torch), skip it
            acc.print(f"[{stage}] checkpoint {path} is unreadable ({type(e).__name__}: {e}); trying the one before")
            continue
        acc.print(f"[{stage}] resumed from {path} at step {state['step']}")
        return state
    if done:
        raise CheckpointError(f"{ckpt_dir}: no checkpoint of {len(done)} loads; run without --resume to start over")
    return None


def save_checkpoint(acc: Accelerator, ckpt_dir: Path, model, optimizer, state: dict, keep: int) -> None:
    """The main process writes the whole model and optimizer: its own under data parallelism, gathered
    from every process's shards under FSDP."""
    path = ckpt_dir / f"step_{state['step']:07d}"
    model = acc.unwrap_model(model)
    if acc.is_main_process or sharded(model):  # under FSDP a gather: every process takes part
        weights, moments = full_state(model, optimizer)
    if acc.is_main_process:
        state["optimizer"] = save_training_state(path, weights, moments)
        if acc.scaler is not None:
            state["scaler"] = acc.scaler.state_dict()
        # trainer.json is written last: a checkpoint without it is incomplete and is never resumed
        write_text(path / "trainer.json", json.dumps(state))
        for old in checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
