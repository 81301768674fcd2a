"""What the stages of one run share: the session (accelerator, run folder, run options, seed),
batching and the check of a saved encoder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Sampler

from foundations.checkpoint import CheckpointError, read_config
from foundations.train import FitResult, Seeded, TrainConfig, fit
from tasks.options import RunOptions


@dataclass(frozen=True)
class Session:
    acc: Accelerator
    out: Path
    run: RunOptions
    seed: int

    def loader(self, dataset, shuffle: bool, batch_size: int | None = None, batch_groups=None) -> DataLoader:
        """Batches of at most each process's share of ``dataset``, so every process gets one; with
        ``batch_groups``, every batch comes from one group. Training items (shuffled or grouped) are
        drawn with generators seeded from the run's seed, the epoch and the index (``Seeded``)."""
        processes, run = self.acc.num_processes, self.run
        if shuffle or batch_groups is not None:
            dataset = Seeded(dataset, self.seed)
        batch = max(1, min(batch_size or run.batch_size, len(dataset) // processes))
        if batch_groups is not None:
            batch = max(1, min(batch, min(batch_groups.count(g) for g in set(batch_groups)) // processes))
            sampler = GroupedBatchSampler(batch_groups, batch, self.seed)
            return DataLoader(dataset, batch_sampler=sampler, num_workers=run.workers)
        return DataLoader(dataset, batch_size=batch, shuffle=shuffle, drop_last=shuffle, num_workers=run.workers)

    def fit(self, model, loader, loss_fn: Callable, cfg: TrainConfig, stage: str, **kwargs) -> FitResult:
        """``foundations.train.fit`` in this run's folder, with its seed, --resume and --overwrite."""
        cfg = dataclasses.replace(cfg, seed=self.seed, log_every=self.run.log_every)
        run = self.run
        return fit(
            model, loader, loss_fn, cfg, self.acc, self.out, stage, resume=run.resume, overwrite=run.overwrite, **kwargs
        )


class GroupedBatchSampler(Sampler):
    """Shuffled full batches whose items all come from one group, for items that cannot be
    stacked together (2-D slices and 3-D crops). The order depends on the seed and the epoch only,
    so every process draws the same batches and Accelerate hands each its share."""

    def __init__(self, batch_groups: list[int], batch_size: int, seed: int = 0):
        self.batch_groups, self.batch_size, self.seed, self.epoch = torch.as_tensor(batch_groups), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1  # a later pass without set_epoch still reshuffles
        batches = []
        for g in self.batch_groups.unique():
            idx = torch.nonzero(self.batch_groups == g).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
            batches += [idx[i : i + self.batch_size] for i in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        yield from (batches[i] for i in torch.randperm(len(batches), generator=gen).tolist())

    def __len__(self) -> int:
        return sum(int((self.batch_groups == g).sum()) // self.batch_size for g in self.batch_groups.unique())


def check_encoder(directory: Path, adapter: dict) -> None:
    """The encoder in ``directory`` must exist and be of this recipe's modality and channel count."""
    if not (Path(directory) / "config.json").is_file():
        raise CheckpointError(
            f"{directory}: no pretrained encoder here; run --stage pretrain first or pass --encoder DIR"
        )
    theirs = read_config(directory)["adapter"]
    for key in ("name", "channels"):
        if theirs.get(key) != adapter.get(key):
            raise CheckpointError(
                f"{directory}: encoder was trained with adapter {key}={theirs.get(key)!r}, "
                f"this recipe needs {adapter.get(key)!r}"
            )
