"""Samples per second through the DataLoader: ultrasound frames streamed from shards
(``modalities.shards.ShardStream``) against the same files read as loose files, and both against
what a pretraining step of the recipe's default model consumes.

    ./mae.sh exec python benchmarks/streaming.py [--modality both] [--workers auto] [--batch N] [--rounds 3]

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
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import interleaved, training_step
from torch.utils.data import DataLoader, Dataset

from foundations.mae import MaskedAutoencoder
from foundations.masking import sample_generators
from foundations.train import Seeded
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
from modalities.volume import data as volumes
from modalities.volume.data import VolumeOptions
from tasks.options import PretrainOptions, RunOptions
from tasks.pretrain import model_config
from tasks.shards import convert

SHARED = Path(os.environ.get("MAE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


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


class LooseVolumes(Dataset):
    """Each item read from its NIfTI file and prepared when asked (what ``preprocess`` does once per
    file when the recipe reads a folder), then cropped as pretraining crops."""

    def __init__(self, records: list[dict], pipe, seed: int):
        self.records, self.pipe = records, pipe
        self.crop = volumes.VolumeDataset([], volumes.pipeline(pipe, "pretrain", False, seed))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        (item,), _ = volumes.preprocess([self.records[i]], self.pipe, False, 2, None, False, False)
        return self.crop.prepare(item)


def write_volumes(folder: Path, n: int, shape=(160, 160, 80), seed: int = 0) -> None:
    """``n`` CT-like int16 NIfTI volumes (HU: air, tissue, bright spheres) at 1 x 1 x 2.5 mm in two
    class folders."""
    import nibabel as nib
    from monai.data import create_test_image_3d

    rs = np.random.RandomState(seed)
    for i in range(n):
        spheres, _ = create_test_image_3d(*shape, num_objs=3 + 6 * (i % 2), rad_max=20, noise_max=0.2, random_state=rs)
        hu = np.where(spheres > 0, 40 + 400 * spheres, -1000 + 50 * rs.rand(*shape)).astype(np.int16)
        (folder / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(hu, np.diag([1.0, 1.0, 2.5, 1.0])), folder / "ab"[i % 2] / f"ct_{i:03d}.nii.gz")


def ultrasound(args, tmp: Path) -> dict:
    opts = UltrasoundOptions()
    index, took = timed_convert("ultrasound", args.data or str(SHARED / "ultrasound" / "busi_256"), opts, tmp)
    data = build_domain(DataSource(data=str(tmp), progress=False), opts)
    loose = LooseFrames(list(dict.fromkeys(data.train_eval.sources)), opts)  # the training split's files
    batch = args.batch or 32
    return {
        "what": f"ultrasound frames, {opts.image_size}x{opts.image_size}",
        "index": index,
        "took": took,
        "loose": loose,
        "data": data,
        "batch": batch,
        "loss": lambda mae, b: mae(b["x"], b["valid"], generator=sample_generators(b["key"])).loss,
    }


def volume(args, tmp: Path) -> dict:
    opts = VolumeOptions(window="abdomen", spacing=(1.5, 1.5, 2.5))
    folder = args.volumes
    if folder is None:
        folder = tmp / "nifti"
        write_volumes(folder, args.n_volumes)
    index, took = timed_convert("volumes", str(folder), opts, tmp / "shards")
    data = volumes.build_domain(DataSource(data=str(tmp / "shards"), progress=False), opts)
    train, _, _, _, pipe = volumes.plan(DataSource(data=str(folder), progress=False), opts)
    roi = "x".join(map(str, opts.roi))
    return {
        "what": f"CT volumes, {roi} crops",
        "index": index,
        "took": took,
        "loose": LooseVolumes(train, pipe, 0),
        "data": data,
        "batch": args.batch or 16,
        "loss": lambda mae, b: mae(b["x"], generator=sample_generators(b["key"])).loss,
    }


def timed_convert(modality: str, data: str, opts, out: Path):
    t = time.perf_counter()
    index = convert(modality, DataSource(data=data, progress=False), opts, out, parse_size("256MB"))
    return index, time.perf_counter() - t


def samples_per_second(loader: DataLoader) -> float:
    t, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["key"])
    return n / (time.perf_counter() - t)


def measure(case: dict, args) -> None:
    data, batch, index = case["data"], case["batch"], case["index"]
    stream = data.pretrain.split(0, 1, batch)
    shards = index["splits"]["train"]
    mb = (
        sum(
            (Path(s["url"]) if Path(s["url"]).is_absolute() else stream.shards[0][0].parent / s["url"]).stat().st_size
            for s in shards
        )
        / 1e6
    )
    print(
        f"{case['what']}: {len(case['loose'])} training files -> {len(shards)} shards ({mb:.0f} MB), "
        f"converted in {case['took']:.1f} s"
    )
    loaders = {
        "loose files": DataLoader(
            Seeded(case["loose"], 0), batch, shuffle=True, drop_last=True, num_workers=args.workers
        ),
        "shards": DataLoader(stream, batch, drop_last=True, num_workers=args.workers),
    }
    for loader in loaders.values():  # warm the page cache and the workers' imports
        samples_per_second(loader)
    rates = {}
    for _ in range(args.rounds):
        for name, loader in loaders.items():
            rates.setdefault(name, []).append(samples_per_second(loader))
    rates = {name: statistics.median(r) for name, r in rates.items()}
    cfg = model_config(PretrainOptions(), data.adapter, None, None)
    mae = MaskedAutoencoder(build_adapter(data.adapter, cfg.encoder.dim), cfg)
    b = next(iter(loaders["shards"]))
    step = training_step(mae, lambda: case["loss"](mae, b))
    step_rate = batch / interleaved({"step": step}, rounds=args.rounds)["step"]
    print(f"{args.workers} workers, batch {batch}, {torch.get_num_threads()} threads, median of {args.rounds} passes")
    print(f"{'loader':<14}{'samples/s':>11}{'/ loose':>10}{'loader / step':>16}")
    for name, rate in rates.items():
        print(f"{name:<14}{rate:>11.1f}{rate / rates['loose files']:>10.2f}{rate / step_rate:>16.2f}")
    print(f"{'pretrain step':<14}{step_rate:>11.1f}   (--preset {PretrainOptions().preset})\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=("ultrasound", "volumes", "both"), default="both")
    parser.add_argument("--data", help="a labelled image folder (default: BUSI in $MAE_SHARED_DATA)")
    parser.add_argument("--volumes", type=Path, help="a labelled NIfTI folder (default: CT-like volumes written here)")
    parser.add_argument("--n-volumes", type=int, default=48, help="volumes written without --volumes")
    parser.add_argument(
        "--workers",
        default="auto",
        help="DataLoader workers of each loader; auto: what a recipe's --workers auto gives one process here",
    )
    parser.add_argument("--batch", type=int, help="default: the recipe's (32 frames, 16 volumes)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    args.workers = RunOptions(workers=args.workers).data_workers(1, gpu)
    chosen = ("ultrasound", "volumes") if args.modality == "both" else (args.modality,)
    for name in chosen:
        with tempfile.TemporaryDirectory() as tmp:
            measure({"ultrasound": ultrasound, "volumes": volume}[name](args, Path(tmp)), args)


if __name__ == "__main__":
    main()
