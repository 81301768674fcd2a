"""The one training loop every recipe and stage shares, on Accelerate.

AdamW (betas 0.9, 0.95 as in MAE), linear warmup then cosine decay, learning rate scaled by
total batch / 256 (Goyal et al. 2017, as MAE does), gradient accumulation, clipping, mixed
precision, resumable checkpoints every N steps, a progress bar on the main process and a
JSON-lines log. A non-finite loss on any process, or a non-finite gradient, stops every process
before the update, so the last checkpoint on disk is the last good one; a resume skips a damaged
latest checkpoint for the one before it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm

from foundations.checkpoint import CheckpointError
from foundations.files import write_text


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


def make_accelerator(mixed_precision: str = "auto", grad_accum: int = 1, seed: int = 0) -> Accelerator:
    """``mixed_precision``: "auto" (bf16 on a GPU that supports it, else fp32), "no", "bf16", "fp16"."""
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # Accelerate picks gloo (MULTI_CPU) for a multi-process launch only when told to use the CPU;
    # without this, `accelerate launch --multi_gpu` on a machine with no GPU starts independent runs.
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    acc = Accelerator(
        cpu=multi_process_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(seed)
    return acc


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
) -> FitResult:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps on ``loss_fn(model, batch) -> loss``.

    Checkpoints go to ``out_dir/checkpoints/<stage>/step_N``; the log to ``out_dir/log.jsonl``.
    ``param_groups`` overrides the optimiser's parameter groups (each may carry ``lr_scale``).
    """
    out_dir, acc = Path(out_dir), accelerator
    ckpt_dir = out_dir / "checkpoints" / stage
    total_batch = cfg.batch_size * acc.num_processes * acc.gradient_accumulation_steps
    peak_lr = cfg.base_lr * total_batch / 256
    optimizer = torch.optim.AdamW(param_groups or decay_groups(model, cfg.weight_decay), lr=peak_lr, betas=cfg.betas)
    scales = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s, k=k: k * cosine_schedule(s, cfg) for k in scales]
    )
    # one stage's objects only: what save_state writes must be what a later resume of this stage loads
    acc.free_memory()
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    if len(loader) == 0:
        raise ValueError(f"[{stage}] no full batch of {cfg.batch_size} per process: the dataset is too small")

    step, first_loss = 0, None
    if resume and (state := load_checkpoint(acc, ckpt_dir, stage)):
        step, first_loss = state["step"], state["first_loss"]
        scheduler.load_state_dict(state["scheduler"])  # stepped by us, once per optimizer step
    if step >= cfg.max_steps:
        return FitResult(first_loss, state["last_loss"], step)

    log = out_dir / "log.jsonl"
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if step and log.is_file():  # records a killed run wrote past its checkpoint are written again
            lines = log.read_text().splitlines(keepends=True)
            kept = [r for r in lines if not ((d := json.loads(r))["stage"] == stage and d["step"] > step)]
            if len(kept) < len(lines):
                write_text(log, "".join(kept))
    interactive = sys.stderr.isatty()  # a bar on a terminal; plain log lines in files and CI
    bar = tqdm(total=cfg.max_steps, initial=step, desc=stage, disable=not (acc.is_local_main_process and interactive))
    micro = step * acc.gradient_accumulation_steps
    epoch, skip = divmod(micro, len(loader))
    running, n_running, t0, last_loss = 0.0, 0, time.perf_counter(), float("nan")
    step_sum, step_n = 0.0, 0  # this optimizer step's micro-batch losses
    model.train()
    while step < cfg.max_steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        batches = acc.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
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
                record = {
                    "stage": stage,
                    "step": step,
                    "loss": mean,
                    "lr": scheduler.get_last_lr()[0],
                    "elapsed_s": round(time.perf_counter() - t0, 2),
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
            if on_step is not None:
                on_step(step, acc.unwrap_model(model))
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                state = {
                    "step": step,
                    "first_loss": first_loss,
                    "last_loss": step_loss,
                    "scheduler": scheduler.state_dict(),
                }
                save_checkpoint(acc, ckpt_dir, state, cfg.keep_checkpoints)
            if step >= cfg.max_steps:
                break
        epoch += 1
    bar.close()
    return FitResult(first_loss, last_loss, step)


def last_good(ckpt_dir: Path) -> str:
    last = checkpoints(ckpt_dir)
    return f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"


def load_checkpoint(acc: Accelerator, ckpt_dir: Path, stage: str) -> dict | None:
    """Restore the newest checkpoint that loads whole -> its trainer state; a truncated or corrupt
    one is reported and the one before it is tried. None when the stage has none yet."""
    done = checkpoints(ckpt_dir)
    for path in reversed(done):
        try:
            state = json.loads((path / "trainer.json").read_text())
            acc.load_state(str(path))
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises (JSON, safetensors, torch), skip it
            acc.print(f"[{stage}] checkpoint {path} is unreadable ({type(e).__name__}: {e}); trying the one before")
            continue
        acc.print(f"[{stage}] resumed from {path} at step {state['step']}")
        return state
    if done:
        raise CheckpointError(f"{ckpt_dir}: no checkpoint of {len(done)} loads; run without --resume to start over")
    return None


def save_checkpoint(acc: Accelerator, ckpt_dir: Path, state: dict, keep: int) -> None:
    path = ckpt_dir / f"step_{state['step']:07d}"
    acc.save_state(str(path), safe_serialization=True)
    if acc.is_main_process:
        # trainer.json is written last: a checkpoint without it is incomplete and is never resumed
        write_text(path / "trainer.json", json.dumps(state))
        for old in checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
