"""Finding labelled files in the standard layouts, and splitting them without leakage.

Two layouts are understood, in this order:
  DIR/labels.csv   a CSV with a path column (``path``, ``image_path``, ``file`` or ``filename``,
                   relative to DIR), a ``label`` column and optionally a ``split`` column.
  DIR/<class>/...  one folder per class, files anywhere below it; a first sub-folder named
                   train, val or test (ModelNet's ``<class>/<split>/<file>``) gives the split.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PATH_COLUMNS = ("path", "image_path", "file", "filename")


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    split: str | None = None


def discover(root, extensions: tuple[str, ...]) -> list[Sample]:
    """Labelled files under ``root`` with one of ``extensions`` (lower case, with the dot)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    table = root / "labels.csv"
    samples = _from_csv(table, extensions) if table.is_file() else _from_folders(root, extensions)
    if not samples:
        raise DataError(
            f"{root}: no data found; expected labels.csv (path,label) or one folder per class "
            f"holding files ending in {', '.join(extensions)}"
        )
    return samples


def _from_csv(table: Path, extensions) -> list[Sample]:
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        path_col = next((c for c in PATH_COLUMNS if c in columns), None)
        if path_col is None or "label" not in columns:
            raise DataError(
                f"{table}: needs a path column ({'/'.join(PATH_COLUMNS)}) and a label column, found {columns}"
            )
        samples = []
        for line, row in enumerate(reader, start=2):
            path = table.parent / row[path_col]
            if not path.is_file():
                raise DataError(f"{table}, line {line}: file {path} does not exist")
            if str(path).lower().endswith(tuple(extensions)):
                samples.append(Sample(path, row["label"].strip(), (row.get("split") or "").strip() or None))
    return samples


def _from_folders(root: Path, extensions) -> list[Sample]:
    samples = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(cls.rglob("*")):
            if path.is_file() and str(path).lower().endswith(tuple(extensions)):
                first = path.relative_to(cls).parts[0]
                samples.append(Sample(path, cls.name, first if first in SPLITS and first != path.name else None))
    return samples


def require_classes(labels, where) -> list[str]:
    """The sorted class names of ``labels``; a labelled task needs at least two."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"{where}: only one class ({classes[0]!r}); probing and fine-tuning need at least two")
    return classes


def stratified_split(labels: list[str], groups: list[str], eval_fraction: float, seed: int):
    """Split indices into (train, eval) per class, keeping each group (e.g. all frames of one clip)
    on one side, with at least one group of each class on each side when the class has two."""
    by_class: dict[str, set[str]] = defaultdict(set)
    for label, group in zip(labels, groups, strict=True):
        by_class[label].add(group)
    rng = random.Random(seed)
    eval_groups = set()
    for label in sorted(by_class):
        members = sorted(by_class[label])
        rng.shuffle(members)
        n_eval = min(max(1, round(len(members) * eval_fraction)), len(members) - 1) if len(members) > 1 else 0
        eval_groups.update(members[:n_eval])
    train = [i for i, g in enumerate(groups) if g not in eval_groups]
    held = [i for i, g in enumerate(groups) if g in eval_groups]
    return train, held


def held_out_split(labels: list[str], groups: list[str], splits: list[str | None], seed: int):
    """(train, eval) indices: the data's own ``test`` (else ``val``) split when it has one, else a
    stratified 20 % split that keeps each group on one side (``stratified_split``)."""
    held = next((s for s in ("test", "val") if s in splits), None)
    if held is None:
        return stratified_split(labels, groups, 0.2, seed)
    return [i for i, s in enumerate(splits) if s != held], [i for i, s in enumerate(splits) if s == held]


def check_held_out_classes(held_labels, classes, eval_data, data) -> None:
    """Every class of a separate held-out folder must occur in the training data."""
    unknown = sorted(set(held_labels) - set(classes))
    if unknown:
        raise DataError(f"{eval_data}: classes {unknown} do not occur in the training data {data}")
