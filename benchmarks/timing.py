"""What every benchmark here shares: timing, interleaved rounds, a training step, the matmul peak.

Benchmarks run as scripts (``python benchmarks/<name>.py``), which puts this folder on the path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def timed(fn: Callable, sync: Callable | None = None) -> float:
    """Seconds one call of ``fn`` takes (``sync`` waits for queued GPU work)."""
    t = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t


def interleaved(runs: dict[str, Callable], rounds: int, warmup: int = 1, sync=None) -> dict[str, float]:
    """Median seconds per call of each run, one call of each per round (round-robin), so machine
    noise hits every run alike."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn, sync))
    return {name: statistics.median(t) for name, t in times.items()}


def training_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor], bf16: bool = False) -> Callable[[], None]:
    """One forward, backward and AdamW update (MAE's betas and weight decay) per call; with
    ``bf16`` the forward runs under bf16 autocast, as Accelerate's mixed precision runs it."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    device = next(model.parameters()).device.type

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            value = loss()
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def matmul_peak(size: int = 2048, repeats: int = 10, dtype=torch.float32, device: str = "cpu") -> float:
    """This device's matmul FLOP/s in ``dtype``: the best of ``repeats`` square products."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    for _ in range(3):
        a @ b
    return 2 * size**3 / min(timed(lambda: a @ b, sync) for _ in range(repeats))


def memory_bytes(model: torch.nn.Module, loss: Callable[[], torch.Tensor], device: torch.device) -> tuple[int, int]:
    """(activation bytes, peak bytes) of one training step of ``model`` whose loss ``loss()`` computes.
    On a GPU the allocator's peak (activations: the peak above what was allocated before the step);
    on a CPU, which has no allocator statistics, the tensors saved for backward (parameters
    excluded, each storage counted once) plus parameters, gradients and AdamW's two moments."""
    if device.type == "cuda":
        step = training_step(model, loss)
        step()  # creates the AdamW moments
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak - before, peak
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = loss()
    value.backward()
    model.zero_grad(set_to_none=True)
    n_param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    activations = sum(saved.values())
    return activations, activations + 4 * n_param_bytes  # weights, gradients, two AdamW moments
