"""The GPU benchmark script's argument handling, on a machine without a GPU (issue 16: it runs
where a GPU is lent; here it must say it cannot and stop)."""

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run the benchmark")
def test_gpu_script_without_a_gpu_says_so_and_exits_2():
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh"], cwd=ROOT, capture_output=True, text=True, env={"PYTHON": sys.executable}
    )
    assert proc.returncode == 2 and "no CUDA device on this machine" in proc.stderr, proc.stderr
    direct = [sys.executable, "benchmarks/pretrain_step.py", "--device", "cuda", "--precision", "bf16"]
    proc = subprocess.run(direct, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--device cuda: no CUDA device here" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [sys.executable, "benchmarks/pretrain_step.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and all(
        f in proc.stdout for f in ("--device", "--peak-tflops", "--batch", "--precision")
    )
