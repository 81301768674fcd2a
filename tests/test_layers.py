"""The floors of the project never import upward, and loading an encoder stays light.

    foundations  <-  modalities  <-  tasks  <-  recipes

A module may import its own floor and the floors below it; a lower floor that needs something
from a higher one is handed it (the adapter registry is passed to the checkpoint loader).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

FLOORS = ["foundations", "modalities", "tasks", "recipes"]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, function-local ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(root: Path) -> list[str]:
    bad = []
    for floor, package in enumerate(FLOORS):
        for path in sorted((root / package).rglob("*.py")):
            for line, module in imports_of(path):
                if module in FLOORS and FLOORS.index(module) > floor:
                    bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


def test_floors__no_module_imports_a_higher_floor():
    assert upward_imports(ROOT) == []


def test_floors__the_check_finds_a_function_local_upward_import(tmp_path):
    for package in FLOORS:
        (tmp_path / package).mkdir()
    (tmp_path / "foundations" / "x.py").write_text("def f():\n    from tasks.run import run\n")
    (tmp_path / "modalities" / "y.py").write_text("import foundations.vit\n")
    assert upward_imports(tmp_path) == ["foundations/x.py:2 imports tasks"]


HEAVY = ["accelerate", "open3d", "decord", "nibabel", "monai", "torchaudio", "tasks", "foundations.train"]


def test_light_import__loading_an_encoder_and_embedding_imports_no_training_stack_or_readers(tmp_path):
    """yaml is not on the list: timm (the layers library) imports huggingface_hub, which imports it."""
    from foundations import save_pretrained
    from foundations.vit import Encoder
    from modalities import build_adapter
    from tests.conftest import TINY_ENCODER

    config = {"name": "volume", "channels": 1, "patch": [4, 4, 4], "size": [8, 8, 8], "coords": "spacing"}
    save_pretrained(Encoder(build_adapter(config, TINY_ENCODER.dim), TINY_ENCODER), tmp_path / "enc")
    script = f"""
import json, sys, torch
from modalities import load_encoder
encoder = load_encoder({str(tmp_path / "enc")!r})
out = encoder({{"image": torch.rand(2, 1, 8, 8, 8), "spacing": torch.ones(2, 3)}})
assert out.features.shape == (2, {TINY_ENCODER.dim})
loaded = [m for m in {HEAVY!r} if m in sys.modules]
loaded += [m for m in sys.modules if m.startswith("modalities.") and m.endswith((".data", ".io", ".transforms"))]
print(json.dumps(loaded))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("module", ["modalities", "foundations"])
def test_light_import__the_registry_and_the_core_need_no_modality_reader(module):
    script = f"import json, sys, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], proc.stderr[-2000:]
