"""A job over two "machines" on this one: two ``accelerate launch`` commands started at once, machine
ranks 0 and 1, one CPU process each, meeting at 127.0.0.1 as nodes meet at the first one's address.
Both write into one run folder, as nodes do on a shared filesystem. The job must train as one
launch of two processes does: the same per-step losses and the same saved encoder."""

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, free_port, launch_recipe, recipe_command

pytestmark = pytest.mark.e2e
STEPS = 20
ARGS = ["--preset", "micro", "--stage", "pretrain", "--max-steps", STEPS, "--log-every", "1"]
ARGS += ["--image-size", "64", "--phantom-per-class", "16", "--batch-size", "4"]


def losses(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps logged out of order or twice: {steps}"
    return {r["step"]: r["loss"] for r in records}


def test_two_machines_train_as_two_processes_on_one(tmp_path):
    machines, port = tmp_path / "machines", free_port()
    procs = []
    for rank in (0, 1):
        command, env = recipe_command(
            "ultrasound", *ARGS, "--out", machines, processes=2, machine=(2, rank, port), threads=1
        )
        log = open(tmp_path / f"machine_{rank}.log", "w")  # noqa: SIM115 - closed below, once the launch ends
        procs.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for rank, (proc, log) in enumerate(procs):
        proc.wait(timeout=900)
        log.close()
        assert proc.returncode == 0, f"machine {rank}:\n{(tmp_path / f'machine_{rank}.log').read_text()[-3000:]}"
    launch_recipe("ultrasound", *ARGS, "--out", tmp_path / "processes", processes=2, threads=1)

    one, two = losses(tmp_path / "processes"), losses(machines)
    assert one.keys() == two.keys() and len(one) == STEPS
    worst = max(abs(one[s] - two[s]) / abs(one[s]) for s in one)
    print(f"two machines vs two processes over {STEPS} steps: largest relative loss difference {worst:.2e}")
    a = load_file(tmp_path / "processes" / "encoder" / "model.safetensors")
    b = load_file(machines / "encoder" / "model.safetensors")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    # measured: 0 (the same gloo all-reduce over the same two ranks, each on one thread, whichever launcher
    # started them), so exact equality is the bound
    assert worst == 0.0 and a.keys() == b.keys() and not differ, differ[:5]
