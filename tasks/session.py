"""What the stages of one run share: the session (accelerator, run folder, run options, seed),
batching, and the encoder a run starts from: checked against the recipe, imported when foreign."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Sampler

from foundations.checkpoint import CheckpointError, read_config, save_pretrained
from foundations.mae import DecoderConfig
from foundations.train import FitResult, Seeded, TrainConfig, fit
from foundations.vit import EncoderConfig
from modalities import hub, is_foreign
from modalities.convert import import_checkpoint
from modalities.shards import ShardStream
from tasks.options import RunOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    acc: Accelerator
    out: Path
    run: RunOptions
    seed: int

    def loader(self, dataset, shuffle: bool, batch_size: int | None = None, batch_groups=None) -> DataLoader:
        """Batches of at most each process's share of ``dataset``, so every process gets one; with
        ``batch_groups``, every batch comes from one group. Training items (shuffled or grouped) are
        drawn with generators seeded from the run's seed, the epoch and the index (``Seeded``). A
        ``ShardStream`` gets this process's part of it, in whole batches."""
        processes, run = self.acc.num_processes, self.run
        if isinstance(dataset, ShardStream):  # it splits itself among processes and workers
            batch = max(1, min(batch_size or run.batch_size, dataset.total // processes))
            stream = dataset.split(self.acc.process_index, processes, batch)
            return DataLoader(stream, batch_size=batch, drop_last=True, **self.loader_options())
        if shuffle or batch_groups is not None:
            dataset = Seeded(dataset, self.seed)
        batch = max(1, min(batch_size or run.batch_size, len(dataset) // processes))
        if batch_groups is not None:
            batch = max(1, min(batch, min(batch_groups.count(g) for g in set(batch_groups)) // processes))
            sampler = GroupedBatchSampler(batch_groups, batch, self.seed)
            return DataLoader(dataset, batch_sampler=sampler, **self.loader_options())
        return DataLoader(dataset, batch_size=batch, shuffle=shuffle, drop_last=shuffle, **self.loader_options())

    def loader_options(self) -> dict:
        """DataLoader's workers (``--workers``) and, on a GPU, pinned memory."""
        gpu = self.acc.device.type == "cuda"
        return {"num_workers": self.run.data_workers(self.acc.num_processes, gpu), "pin_memory": gpu}

    def fit(self, model, loader, loss_fn: Callable, cfg: TrainConfig, stage: str, **kwargs) -> FitResult:
        """``foundations.train.fit`` in this run's folder, with its seed, --resume and --overwrite."""
        cfg = dataclasses.replace(
            cfg, seed=self.seed, log_every=self.run.log_every, compile="inductor" if self.run.compile else None
        )
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
    """The encoder in ``directory`` must exist and fit this recipe's adapter (``check_adapter``)."""
    if not (Path(directory) / "config.json").is_file():
        raise CheckpointError(
            f"{directory}: no pretrained encoder here; run --stage pretrain first or pass --encoder DIR"
        )
    check_adapter(read_config(directory)["adapter"], adapter, directory)


def check_adapter(theirs: dict, adapter: dict, source) -> None:
    """An encoder's adapter config ``theirs`` must be of this recipe's modality and channel count
    (the modality's adapter fixes the spatial axes); ``source`` names it in the error."""
    for key in ("name", "channels"):
        if theirs.get(key) != adapter.get(key):
            raise CheckpointError(
                f"{source}: encoder was trained with adapter {key}={theirs.get(key)!r}, "
                f"this recipe needs {adapter.get(key)!r}"
            )


def saved_config(directory) -> tuple[EncoderConfig, DecoderConfig | None, dict]:
    """A saved encoder's config, its decoder's (None without one) and its adapter's, from its
    config.json alone."""
    config = read_config(directory)
    try:
        decoder = DecoderConfig(**config["decoder"]) if "decoder" in config else None
        return EncoderConfig(**config["encoder"]), decoder, config["adapter"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(directory) / 'config.json'}: invalid encoder or decoder config ({e})") from None


def start_encoder(acc: Accelerator, name: str, download: bool, adapter: dict, out: Path) -> tuple[Path, dict]:
    """``--encoder`` as a directory of ours, checked against this recipe's ``adapter``, and what
    ``metrics.json`` records of it. One of ours is used as it is; another library's checkpoint (a
    file, a Hugging Face directory or Hub id) is imported once, by the main process, into
    ``out/imported_encoder`` (``import_encoder``), which every stage then reads."""
    if acc.is_main_process:
        hub.resolve(name, download)  # the one process that may download
    acc.wait_for_everyone()
    path = hub.resolve(name)
    if not is_foreign(path):
        check_encoder(path, adapter)
        return path, {}
    target = out / "imported_encoder"
    if acc.is_main_process:
        import_encoder(path, adapter, target)
    acc.wait_for_everyone()
    return target, {"encoder/source": read_config(target)["source"]["kind"], "encoder/file": name}


def import_encoder(path: Path, adapter: dict, target: Path) -> None:
    """Import the checkpoint ``path`` behind this recipe's adapter (``modalities.convert``), with its
    MAE decoder where it has one that fits, into ``target``; a 3-channel stem meets a grey recipe
    folded into one."""
    if "patch" not in adapter:
        raise CheckpointError(f"{path}: a ViT over grid patches cannot read the {adapter['name']} recipe's inputs")
    imported = import_checkpoint(path, modality=adapter["name"])
    if imported.encoder.adapter.config.channels == 3 and adapter["channels"] == 1:
        imported = import_checkpoint(path, modality=adapter["name"], grey=True)
        log.info(
            "%s: its 3-channel stem folded into 1 channel for grey inputs (modalities.convert --grey: exact on a grey "
            "image repeated in 3 channels)",
            path,
        )
    encoder = imported.encoder
    check_adapter(encoder.adapter.config_dict(), adapter, path)
    source, cfg = encoder.info["source"], encoder.cfg
    guessed = ", guessed from the file" if source["guessed"] else ""
    decoder = "with its MAE decoder" if imported.decoder is not None else f"no decoder ({imported.decoder_note})"
    log.info(
        "%s: %d blocks of width %d imported (source %s%s), %s, into %s",
        path,
        cfg.depth,
        cfg.dim,
        source["kind"],
        guessed,
        decoder,
        target,
    )
    save_pretrained(encoder, target, decoder=imported.decoder, **encoder.info)
