"""Accuracy for the same wall-clock budget: the reference configuration (MAE's decoder over every
hidden token, fp32) against the fast one (CrossMAE's decoder predicting a quarter of the tokens
from a learned mix of the encoder's blocks; bf16 autocast where the CPU computes bf16 natively),
each pretrained for the same seconds on real samples (BUSI, ModelNet10) and probed on held-out
items, over several seeds.

    ./mae.sh exec python benchmarks/efficiency.py [--budget 60] [--seeds 0 1] [--only busi]

Each configuration's step time is measured first (a short run); its pretraining then gets the
steps that fill the budget. The recipes run as a user runs them, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from foundations.train import native_bf16  # noqa: E402

SHARED = Path(os.environ.get("MAE_SHARED_DATA", ROOT.parent / "shared" / "data"))  # the sample data
DATA = {  # recipe and its options at a CPU scale
    "busi": ("ultrasound", "ultrasound/busi_256", "--preset mini --image-size 64 --patch 8 --batch-size 32"),
    "modelnet10": (
        "pointcloud",
        "pointcloud/modelnet10_pcd_subset",
        "--preset micro --batch-size 32 --pointnet-width 64 --lr 5e-3",
    ),
}
CONFIGS = {
    "reference": "--decoder self --mixed-precision no",
    "fast": "--decoder cross-mix --predict-ratio 0.25 --mixed-precision " + ("bf16" if native_bf16() else "no"),
}


def recipe(name: str, args: str, out: Path) -> dict:
    command = [sys.executable, str(ROOT / "recipes" / f"{name}.py"), *args.split(), "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def seconds_per_step(name: str, args: str, work: Path) -> float:
    """From a 20-step run's log: the seconds between its step 10 and step 20 (past the warm-up)."""
    recipe(name, f"{args} --stage pretrain --max-steps 20 --log-every 10", work)
    rows = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in rows if r.get("stage") == "pretrain"}
    return (elapsed[20] - elapsed[10]) / 10


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=60.0, help="pretraining seconds per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", choices=list(DATA), nargs="+", default=list(DATA))
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {native_bf16()}")
    print(f"budget {args.budget:.0f} s of pretraining per run, seeds {args.seeds}")
    print(f"{'data':<12}{'config':<11}{'s/step':>8}{'steps':>7}{'probe (balanced accuracy)':>40}")
    for data in args.only:
        name, folder, options = DATA[data]
        base = f"--data {SHARED / folder} {options} --no-probe-baselines"
        for config, flags in CONFIGS.items():
            with tempfile.TemporaryDirectory() as work:
                step = seconds_per_step(name, f"{base} {flags}", Path(work) / "time")
                steps = max(10, round(args.budget / step))
                scores = []
                for seed in args.seeds:
                    run = f"{base} {flags} --stage pretrain,probe --max-steps {steps} --seed {seed}"
                    scores.append(recipe(name, run, Path(work) / f"seed{seed}")["probe/balanced_accuracy"])
            spread = statistics.pstdev(scores) if len(scores) > 1 else 0.0
            listed = ", ".join(f"{s:.3f}" for s in scores)
            mean = statistics.mean(scores)
            print(f"{data:<12}{config:<11}{step:>8.3f}{steps:>7}{mean:>14.3f} +- {spread:.3f} ({listed})")


if __name__ == "__main__":
    main()
