import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

from foundations.grid import GridAdapter, GridConfig
from foundations.mae import DecoderConfig, MAEConfig
from foundations.masking import MaskConfig
from foundations.vit import EncoderConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAE_SHARED_DATA", ROOT.parent / "shared" / "data"))

TINY_ENCODER = EncoderConfig(dim=32, depth=2, heads=2)
TINY_MAE = MAEConfig(TINY_ENCODER, DecoderConfig(dim=32, depth=1, heads=2), MaskConfig(ratio=0.75))


class ImageGrid(GridAdapter):
    """A 2-D grid adapter for the core's own tests (which never import a modality)."""

    name = "grid"


def image_adapter(dim: int = 32, channels: int = 1, patch=(8, 8), mean=(0.0,), std=(1.0,)) -> ImageGrid:
    return ImageGrid(GridConfig(channels, patch, tuple(4 * p for p in patch), mean, std), dim)


@pytest.fixture
def shared() -> Path:
    """The real sample data; its absence is a failure, never a silent skip."""
    if not SHARED.is_dir():
        pytest.fail(f"shared sample data not found at {SHARED}; set MAE_SHARED_DATA")
    return SHARED


def peak_while_refusing(call, match: str) -> int:
    """Bytes Python and NumPy allocated at most while ``call()`` ran and raised a ``DataError``
    matching ``match``: what a limit checked from a file's header must keep small."""
    from modalities.common import DataError  # conftest serves the core's tests too

    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=match):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def free_port() -> int:
    """A TCP port that nothing on this machine listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_command(
    recipe: str,
    *args,
    processes: int = 1,
    direct: bool | None = None,
    threads: int | None = None,
    machine: tuple[int, int, int] | None = None,
) -> tuple[list[str], dict]:
    """The command line and environment of ``accelerate launch --quiet recipes/<recipe>.py ARGS``
    (``--multi_gpu`` for several processes), or of plain ``python`` with ``direct``, the default for
    one process: the launcher only sets the environment Accelerate reads and would cost the suite
    2 s of imports per run (``./mae.sh main`` launches one process as users do); ``threads``
    per process, by default the two cores shared among the processes (all ``processes`` of the job).
    ``machine``: (machines, this one's rank, port), one launch of a job over several "machines"
    that meet at 127.0.0.1 on that port, ``processes`` being the job's total."""
    machines, rank, port = machine or (1, 0, free_port())
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--quiet",
        "--num_processes",
        str(processes),
        "--num_machines",
        str(machines),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    # a port of its own: two launches side by side (tests/test_resume.py) must not both take 29500
    launcher += ["--multi_gpu", "--main_process_port", str(port)] if processes > 1 else []
    launcher += ["--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"] if machines > 1 else []
    direct = processes == machines == 1 if direct is None else direct
    launcher = [sys.executable] if direct else launcher
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or max(1, 2 // processes)), "PYTHONUNBUFFERED": "1"}
    script = ROOT / recipe if recipe.endswith(".py") else ROOT / "recipes" / f"{recipe}.py"  # a recipe or a script
    return [*launcher, str(script), *map(str, args)], env


def launch_recipe(
    recipe: str, *args, processes: int = 1, check: bool = True, direct: bool | None = None, threads: int | None = None
):
    """Run ``recipe_command`` to the end; returns the finished process."""
    command, env = recipe_command(recipe, *args, processes=processes, direct=direct, threads=threads)
    proc = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{recipe} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def assert_no_pickle(folder: Path) -> list[Path]:
    """Every file under ``folder`` opens with a reader that cannot unpickle (safetensors, JSON,
    YAML's safe loader, images, NIfTI); a file of any other kind fails. Returns the files checked."""
    import json

    import nibabel as nib
    import yaml
    from PIL import Image
    from safetensors.torch import load_file

    readers = {
        ".safetensors": load_file,
        ".json": lambda p: json.loads(p.read_text()),
        ".jsonl": lambda p: [json.loads(line) for line in p.read_text().splitlines()],
        ".yaml": lambda p: yaml.safe_load(p.read_text()),
        ".png": lambda p: Image.open(p).load(),
        ".gif": lambda p: Image.open(p).load(),
        ".gz": lambda p: nib.load(p).get_fdata(),  # .nii.gz segmentations
        ".md": lambda p: p.read_text(),
    }
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    for path in files:
        assert path.suffix in readers, f"{path}: a file of unknown kind in a run folder"
        readers[path.suffix](path)  # each parser fails on a pickle (or torch.save zip) under that name
    return files
