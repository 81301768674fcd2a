"""Sharded, streaming data in WebDataset's format: tar files of samples, read in order.

A folder of shards (written by ``python -m tasks.shards``) holds ``index.json`` and, per split,
``<split>-000000.tar``, ``<split>-000001.tar``, ... Each sample is a group of tar members sharing
a key: arrays as ``<key>.<name>.npy`` (NumPy's format, never pickled) and ``<key>.json`` (label,
group, split, source file). Any WebDataset reader reads them (``webdataset.WebDataset(url).decode()``),
and webdataset's ``ShardWriter`` writes them.

The reader is ``ShardStream`` rather than webdataset's pipeline, which hands whole shards to
processes and workers: the processes would then get unequal counts of batches (a data-parallel
step needs one batch on every process) and a stream has no position to resume from. Here an epoch
is the shards in an order drawn from (seed, epoch), cut into one contiguous run per process and
that run into batches; worker ``w`` of ``W`` reads batches ``w, w + W, ...``, which the DataLoader
returns in turn, so the batches come in the same order with any number of workers, and a resume at
batch ``b`` opens only the shards from there on. Each item is drawn with generators seeded from
(seed, epoch, position), as ``foundations.train.Seeded`` draws a folder's items.
"""

from __future__ import annotations

import bisect
import copy
import functools
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from foundations.train import derive_seed, seed_draws
from modalities.common import DataError

log = logging.getLogger(__name__)

INDEX = "index.json"
FORMAT = "mae-foundations shards 1"
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str) -> int:
    """``1GB``, ``500MB``, ``64kB`` or a count of bytes -> bytes (decimal units, as webdataset's writer counts)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?[bB]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected a size such as 1GB or 500MB, got {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_split(split: str, samples: Iterable[dict], out: Path, max_bytes: int) -> list[dict]:
    """Write ``samples`` ({"<name>.npy": array, "json": dict, "<name>": bytes written as they are,
    e.g. an encoded video}) to ``out/<split>-%06d.tar``, a new shard once one holds ``max_bytes``
    -> the shard list [{"url": file name, "nsamples": n}]."""
    import webdataset as wds  # the writer only: reading needs no webdataset

    counts: dict[str, int] = {}
    with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxsize=max_bytes, verbose=0) as sink:
        for i, sample in enumerate(samples):
            encoded = {
                k: npy_bytes(v) if k.endswith(".npy") else v if isinstance(v, bytes) else json.dumps(v).encode()
                for k, v in sample.items()
            }
            sink.write({"__key__": f"{i:09d}", **encoded})
            counts[sink.fname] = counts.get(sink.fname, 0) + 1
    if not counts:  # the writer opened a first shard before it knew there was nothing to write
        Path(sink.fname).unlink(missing_ok=True)
    return [{"url": Path(name).name, "nsamples": n} for name, n in counts.items()]


def is_shards(spec: str | None) -> bool:
    """Whether ``--data`` names shards: a folder with index.json, the index itself, or tar files
    (brace patterns such as ``shards/train-{000000..000009}.tar``)."""
    if spec is None:
        return False
    path = Path(spec)
    return path.name == INDEX or str(spec).endswith(".tar") or (path.is_dir() and (path / INDEX).is_file())


def read_index(spec: str) -> tuple[dict, list[tuple[Path, int]]]:
    """The shards ``spec`` names (see ``is_shards``; a folder or the index means its train split)
    -> (the index, [(shard path, samples)])."""
    from webdataset.shardlists import expand_urls  # brace patterns, as webdataset expands them

    path = Path(spec)
    folder = path if path.is_dir() else path.parent
    names = None if path.is_dir() or path.name == INDEX else [Path(u) for u in expand_urls(str(spec))]
    index_path = folder / INDEX
    if not index_path.is_file():
        raise DataError(f"{index_path}: not found; shards are written with python -m tasks.shards")
    try:
        index = json.loads(index_path.read_text())
        known = {Path(s["url"]).name: (split, int(s["nsamples"])) for split, ss in index["splits"].items() for s in ss}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{index_path}: not an index of shards ({e})") from None
    if index.get("format") != FORMAT:
        raise DataError(f"{index_path}: format {index.get('format')!r}, this version reads {FORMAT!r}")
    if names is None:
        names = [folder / s["url"] for s in index["splits"].get("train", [])]
    shards = []
    for name in names:
        if name.parent != folder or name.name not in known:
            raise DataError(f"{name}: not a shard listed in {index_path}")
        if not name.is_file():
            raise DataError(f"{name}: shard not found")
        shards.append((name, known[name.name][1]))
    if not samples_in(shards):
        raise DataError(f"{spec}: no samples in these shards")
    return index, shards


def samples_in(shards: list[tuple[Path, int]]) -> int:
    return sum(n for _, n in shards)


def open_shards(spec: str, modality: str, opts) -> tuple[dict, list[tuple[Path, int]]]:
    """``read_index`` of shards that the ``modality`` recipe wrote with the values ``opts`` has of
    the options the samples depend on (the index's "options"); others stop with one line naming them."""
    index, shards = read_index(spec)
    if index.get("modality") != modality:
        raise DataError(f"{spec}: shards of the {index.get('modality')} recipe, not {modality}")
    # through JSON, as the index holds them: tuples as lists
    changed = {k: v for k, v in index["options"].items() if json.loads(json.dumps(getattr(opts, k))) != v}
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changed.items())
        raise DataError(f"{spec}: the shards were written with {flags}; run with those or convert again")
    return index, shards


def split_shards(index_spec: str, index: dict, split: str) -> list[tuple[Path, int]]:
    """Another split of the same folder of shards (e.g. the held-out ``test``), [] without one."""
    path = Path(index_spec)
    folder = path if path.is_dir() else path.parent
    return [(folder / s["url"], int(s["nsamples"])) for s in index["splits"].get(split, [])]


@functools.lru_cache(maxsize=2)  # the shard being read and the one before
def _members(shard: Path, pid: int) -> tuple[tarfile.TarFile, list[dict[str, tarfile.TarInfo]]]:
    """An open shard and its samples in order, each {extension: member}, from the headers alone.
    Opened per process (``pid``): a worker must not share a file offset with its parent."""
    try:
        tar = tarfile.open(shard, "r:")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{shard}: not a readable tar file ({e})") from None
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        for member in tar:  # headers only: the data between them is skipped over
            key, _, ext = member.name.partition(".")
            if member.isfile():
                samples.setdefault(key, {})[ext] = member
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("%s: damaged after %d samples (%s); the samples before the damage are read", shard, len(samples), e)
    return tar, list(samples.values())


def read_sample(shard: Path, i: int, expected: int) -> dict:
    """Sample ``i`` of ``shard``: arrays (``.npy``, no pickle) and JSON decoded; a missing or
    damaged member raises ``DataError`` naming the shard and the member."""
    tar, samples = _members(shard, os.getpid())
    if i >= len(samples):
        raise DataError(f"{shard}: sample {i} is missing (the shard holds {len(samples)} of {expected}: truncated?)")
    missing = samples[0].keys() - samples[i].keys()  # every sample has the members of the first
    if missing:
        raise DataError(f"{shard}: sample {i} lacks {', '.join(sorted(missing))} (cut short?)")
    out = {}
    for ext, member in samples[i].items():
        try:
            raw = tar.extractfile(member).read()
            if len(raw) != member.size:
                raise EOFError(f"{len(raw)} of {member.size} bytes")
            out[ext] = (
                np.load(io.BytesIO(raw), allow_pickle=False)
                if ext.endswith("npy")
                else json.loads(raw)
                if ext == "json"
                else raw
            )
        except (ValueError, OSError, EOFError, UnicodeDecodeError, tarfile.TarError) as e:
            raise DataError(f"{shard}: member {member.name}: {e}") from None
    return out


class ShardStream(IterableDataset):
    """Items ``decode(sample)`` of the samples in ``shards`` [(path, count)], streamed as the module
    docstring describes. ``split(rank, world, batch)`` gives one process's stream; ``len`` is the
    items it yields per epoch (whole batches). ``decode`` may raise ``DataError`` for a bad sample;
    with ``skip_bad`` the next readable sample of the epoch takes its place (logged), so every
    process keeps its count of batches."""

    def __init__(self, shards: list[tuple[Path, int]], decode: Callable[[dict], dict], seed: int, skip_bad: bool):
        self.shards, self.decode, self.seed, self.skip_bad = list(shards), decode, seed, skip_bad
        self.rank, self.world, self.batch, self.epoch, self.start = 0, 1, 1, 0, 0

    @property
    def total(self) -> int:
        return samples_in(self.shards)

    def split(self, rank: int, world: int, batch: int) -> ShardStream:
        stream = copy.copy(self)
        stream.rank, stream.world, stream.batch = rank, world, batch
        return stream

    def batches(self) -> int:
        return self.total // self.world // self.batch

    def __len__(self) -> int:
        return self.batches() * self.batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def skip_batches(self, batches: int) -> None:
        """The next pass starts at batch ``batches`` of the epoch, opening no shard before it."""
        self.start = batches

    def order(self, epoch: int) -> list[tuple[Path, int]]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "shards", epoch))
        return [self.shards[i] for i in torch.randperm(len(self.shards), generator=gen).tolist()]

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        w, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shards = self.order(self.epoch)
        ends = np.cumsum([n for _, n in shards]).tolist()
        first = self.rank * (self.total // self.world)  # this process's run of the epoch
        for b in range(self.start + w, self.batches(), workers):
            for position in range(first + b * self.batch, first + (b + 1) * self.batch):
                yield self.item(shards, ends, position)

    def item(self, shards, ends, position: int) -> dict:
        key = derive_seed(self.seed, self.epoch, position)
        for tried in range(self.total):
            at = (position + tried) % self.total
            s = bisect.bisect_right(ends, at)
            shard, n = shards[s]
            seed_draws(key, self.decode)  # again for a stand-in: it draws as the bad sample would have
            try:
                item = self.decode(read_sample(shard, at - (ends[s] - n), n))
            except DataError as e:
                if not self.skip_bad:
                    raise
                log.warning("skipping bad sample: %s; the next readable sample takes its place", e)
                continue
            return {**item, "key": key}
        raise DataError(f"{self.shards[0][0].parent}: no readable sample in these shards")

    def samples(self) -> Iterator[dict]:
        """Every sample in file order, decoded (arrays and JSON) but not through ``decode``."""
        for shard, n in self.shards:
            for i in range(n):
                try:
                    yield read_sample(shard, i, n)
                except DataError as e:
                    if not self.skip_bad:
                        raise
                    log.warning("skipping bad sample: %s", e)


class OnFirstUse(Dataset):
    """The dataset ``build()`` returns, built when first used (its length included: a loader asks
    for it before it starts workers, so they share the one built here): the labelled splits that the
    probe and fine-tuning read into memory and a pretraining-only run never reads."""

    def __init__(self, build: Callable[[], Dataset]):
        self.build = build

    @functools.cached_property
    def dataset(self) -> Dataset:
        return self.build()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getattr__(self, name):  # class_ids, labels, subset, ... of the built dataset
        if name.startswith("__") or name == "build":
            raise AttributeError(name)
        return getattr(self.dataset, name)
