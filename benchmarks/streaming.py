"""Samples per second through the DataLoader: ultrasound frames streamed from shards
(``modalities.shards.ShardStream``) against the same files read as loose files, and both against
what a pretraining step of the recipe's default model consumes.

    ./mae.sh exec python benchmarks/streaming.py [--data DIR] [--workers 2] [--batch 32] [--rounds 3]

``--data`` (default: BUSI in $MAE_SHARED_DATA/ultrasound/busi_256) is converted once into shards
(``python -m tasks.shards``, timed). Both loaders do per item what pretraining does: the loose one
opens the image, decodes it, stores it at 1.25x the training size and finds its sector (what the
recipe does once per file when it reads a folder into memory, here per item as a set too large for
memory needs), the stream decodes the stored frame and sector; both then crop, flip and resize
(``UltrasoundAugment``). A pass is one epoch of the training split; rounds interleave the two
loaders. The step is one forward, backward and AdamW update of the recipe's default pretraining
model (``--preset tiny``, 128x128, 75 % masked) on a batch; "loader / step" above 1 means the
loader keeps up with the model on this machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from timing import interleaved, training_step
from torch.utils.data import DataLoader, Dataset

from foundations.mae import MaskedAutoencoder
from foundations.masking import sample_generators
from modalities import build_adapter
from modalities.common import DataSource
from modalities.shards import parse_size
from modalities.ultrasound.data import (
    UltrasoundOptions,
    _store,
    build_domain,
    frame_item,
    read_frames,
)
from modalities.ultrasound.transforms import UltrasoundAugment, sector_geometry
from tasks.options import PretrainOptions
from tasks.pretrain import model_config
from tasks.shards import convert


class LooseFrames(Dataset):
    """Each item read from its file when asked: the first frame of every file in the split."""

    def __init__(self, paths: list[str], opts: UltrasoundOptions):
        self.paths, self.opts, self.augment = paths, opts, UltrasoundAugment(opts.image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        opts = self.opts
        stack = read_frames(Path(self.paths[i]), opts.frames_per_clip, opts.patch, opts.max_pixels)
        frame = _store(stack[0], round(opts.image_size * 1.25))
        sector = sector_geometry(frame.float()[None] / 255).mask
        return frame_item(frame, sector, 0, opts.image_size, self.augment)


def samples_per_second(loader: DataLoader) -> float:
    t, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["x"])
    return n / (time.perf_counter() - t)


def main():
    shared = Path(os.environ.get("MAE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(shared / "ultrasound" / "busi_256"), help="a labelled image folder")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of each loader")
    parser.add_argument("--batch", type=int, default=32, help="the recipe's default batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    opts = UltrasoundOptions()
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        index = convert("ultrasound", DataSource(data=args.data, progress=False), opts, Path(tmp), parse_size("64MB"))
        took = time.perf_counter() - t
        data = build_domain(DataSource(data=tmp, progress=False), opts)
        stream = data.pretrain.split(0, 1, args.batch)
        paths = [s for s in dict.fromkeys(data.train_eval.sources)]  # the training split's files
        loose = LooseFrames(paths, opts)
        mb = sum((Path(tmp) / s["url"]).stat().st_size for s in index["splits"]["train"]) / 1e6
        print(
            f"{args.data}: {len(paths)} training files -> {len(stream)} samples in "
            f"{len(index['splits']['train'])} shards ({mb:.0f} MB), converted in {took:.1f} s"
        )
        loaders = {
            "loose files": DataLoader(loose, args.batch, shuffle=True, drop_last=True, num_workers=args.workers),
            "shards": DataLoader(stream, args.batch, drop_last=True, num_workers=args.workers),
        }
        rates = {}
        for loader in loaders.values():  # warm the page cache and the workers' imports
            samples_per_second(loader)
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                rates.setdefault(name, []).append(samples_per_second(loader))
        rates = {name: sorted(r)[len(r) // 2] for name, r in rates.items()}

        cfg = model_config(PretrainOptions(), data.adapter, None, None)
        mae = MaskedAutoencoder(build_adapter(data.adapter, cfg.encoder.dim), cfg)
        batch = next(iter(loaders["shards"]))
        step = training_step(
            mae, lambda: mae(batch["x"], batch["valid"], generator=sample_generators(batch["key"])).loss
        )
        step_rate = args.batch / interleaved({"step": step}, rounds=args.rounds)["step"]

    print(f"\n{args.workers} workers, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.rounds}")
    print(f"{'loader':<14}{'samples/s':>11}{'/ loose':>10}{'loader / step':>16}")
    for name, rate in rates.items():
        print(f"{name:<14}{rate:>11.1f}{rate / rates['loose files']:>10.2f}{rate / step_rate:>16.2f}")
    size = opts.image_size
    print(f"{'pretrain step':<14}{step_rate:>11.1f}   (--preset {PretrainOptions().preset}, {size}x{size})")


if __name__ == "__main__":
    main()
