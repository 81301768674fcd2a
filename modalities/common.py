"""What every modality's data shares: the ``DomainData`` contract handed to the tasks, the data
source options, labelled files in the standard layouts, leak-free splits, the skip-bad-file loop
and data-card lookup.

Two layouts are understood, in this order:
  DIR/labels.csv   a CSV with a path column (``path``, ``image_path``, ``file`` or ``filename``,
                   relative to DIR), a ``label`` column and optionally ``split`` and ``group``
                   (speaker, patient or session: kept on one side of a split) columns.
  DIR/<class>/...  one folder per class, files anywhere below it; a first sub-folder named
                   train, val or test (ModelNet's ``<class>/<split>/<file>``) gives the split.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

PATH_COLUMNS = ("path", "image_path", "file", "filename")
log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataSource:
    """Where a domain's data comes from and how bad files are treated."""

    data: str | None = field(default=None, metadata={"help": "dataset folder; default: the built-in set"})
    eval_data: str | None = field(
        default=None, metadata={"help": "held-out folder; default: the data's own test/val split, else 20 %% of it"}
    )
    seed: int = field(default=0, metadata={"help": "seed of splits, built-in sets and training"})
    skip_bad_files: bool = field(default=False, metadata={"help": "log, count and skip unreadable files"})
    progress: bool = field(default=True, metadata={"help": "progress bars while reading (on a terminal)"})


@dataclass
class DomainData:
    """What a domain hands to the tasks: data only. Batches are dicts with "x", "y" and optionally
    "valid"; labelled datasets have ``class_ids``, the class index of every item."""

    pretrain: Dataset  # training split, pretraining augmentation
    finetune: Dataset  # training split, fine-tuning augmentation
    train_eval: Dataset  # training split, evaluation view (probe features)
    held_out: Dataset  # held-out split, evaluation view
    classes: list[str]  # empty: unlabelled data, pretraining only
    adapter: dict  # adapter config, {"name": ..., **fields}
    data_card: str
    render: Callable | None = None  # render(mae, x, valid) -> (H, W[, 3]) float image in [0, 1]
    animate: Callable | None = None  # animate(mae, x, valid) -> (T, H, W[, 3]) frames of one input, for a GIF
    info: dict = field(default_factory=dict)  # figures about the data for metrics.json
    batch_groups: list[int] | None = None  # of every pretraining item; a batch holds one (2-D/3-D mixes)
    held_out_recon: Dataset | None = None  # held-out items for reconstruction figures; default held_out
    # more views of the held-out split (the same items in the same order: other clips and crops of
    # a video, augmented clouds); fine-tuning sums the logits of held_out and every view
    held_out_views: list[Dataset] = field(default_factory=list)
    multi_label: bool = False  # "y" is (classes,) 0/1, several classes per item
    preprocessing: dict = field(default_factory=dict)  # saved with the encoder: how to prepare new inputs
    # raw_features(dataset) -> (features (N, F), targets): the raw input reduced the obvious way for
    # the modality (e.g. time-pooled fbank statistics), the probe's baseline
    raw_features: Callable | None = None


def read_each(items: Iterable, read: Callable, skip_bad: bool, name=str) -> tuple[list, list]:
    """``read(item)`` for every item -> (results, skipped [(name, reason)]); a ``DataError`` stops
    the run, or with ``skip_bad`` is logged, listed and skipped."""
    results, skipped = [], []
    for item in items:
        try:
            results.append(read(item))
        except DataError as e:
            if not skip_bad:
                raise
            log.warning("skipping bad file: %s", e)
            skipped.append((name(item), str(e)))
    return results, skipped


def data_card(root, known: dict[str, str]) -> str:
    """The data card of a known set (by the name of the folder or one above it), else a note."""
    root = Path(root)
    for part in (root, *root.parents):
        if part.name in known:
            return known[part.name]
    return f"user data at {root}"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    split: str | None = None
    group: str | None = None  # what must stay on one side of a split: speaker, patient, session


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
        root = table.parent.resolve()
        for line, row in enumerate(reader, start=2):
            name, label = ((row.get(k) or "").strip() for k in (path_col, "label"))
            if not name or not label:
                raise DataError(f"{table}, line {line}: empty {path_col if not name else 'label'} cell")
            path = table.parent / name
            if not path.resolve().is_relative_to(root):
                raise DataError(f"{table}, line {line}: {name} points outside the data folder {root}")
            if not path.is_file():
                raise DataError(f"{table}, line {line}: file {path} does not exist")
            if not name.lower().endswith(tuple(extensions)):
                raise DataError(
                    f"{table}, line {line}: {name} is not a file this recipe reads ({', '.join(extensions)})"
                )
            split, group = ((row.get(k) or "").strip() or None for k in ("split", "group"))
            samples.append(Sample(path, label, split, group))
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


def stratified_split(labels: list[str], sources: list[str], eval_fraction: float, seed: int):
    """Split indices into (train, eval) per class, keeping the items of each source (e.g. all frames
    of one clip) on one side, with at least one source of each class on each side when it has two."""
    by_class: dict[str, set[str]] = defaultdict(set)
    for label, source in zip(labels, sources, strict=True):
        by_class[label].add(source)
    rng = random.Random(seed)
    eval_sources = set()
    for label in sorted(by_class):
        members = sorted(by_class[label])
        rng.shuffle(members)
        n_eval = min(max(1, round(len(members) * eval_fraction)), len(members) - 1) if len(members) > 1 else 0
        eval_sources.update(members[:n_eval])
    train = [i for i, s in enumerate(sources) if s not in eval_sources]
    held = [i for i, s in enumerate(sources) if s in eval_sources]
    return train, held


def group_split(sources: list[str], eval_fraction: float, seed: int):
    """Split indices into (train, eval) by whole sources (speakers, patients), whatever their
    class: a fraction of the sources, at least one, is held out."""
    names = sorted(set(sources))
    if len(names) < 2:
        raise DataError(f"a split by source needs at least two, found {names}")
    random.Random(seed).shuffle(names)
    held = set(names[: min(len(names) - 1, max(1, round(len(names) * eval_fraction)))])
    return [i for i, s in enumerate(sources) if s not in held], [i for i, s in enumerate(sources) if s in held]


def held_out_split(labels: list[str], sources: list[str], splits: list[str | None], seed: int):
    """(train, eval) indices: the data's own ``test`` (else ``val``) split when it has one, else a
    stratified 20 % split that keeps each source on one side (``stratified_split``)."""
    held = next((s for s in ("test", "val") if s in splits), None)
    if held is None:
        return stratified_split(labels, sources, 0.2, seed)
    return [i for i, s in enumerate(splits) if s != held], [i for i, s in enumerate(splits) if s == held]


def check_held_out_classes(held_labels, classes, eval_data, data) -> None:
    """Every class of a separate held-out folder must occur in the training data."""
    unknown = sorted(set(held_labels) - set(classes))
    if unknown:
        raise DataError(f"{eval_data}: classes {unknown} do not occur in the training data {data}")
