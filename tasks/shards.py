"""Write a dataset as WebDataset shards that the recipes stream (``modalities.shards``).

    python -m tasks.shards --modality ultrasound --data DIR --out SHARDS --shard-size 1GB
    accelerate launch recipes/ultrasound.py --data "SHARDS/train-{000000..000009}.tar"   # or --data SHARDS

The data is read as the recipe reads it (the same layouts, checks and --skip-bad-files), split as
the recipe splits it (``--eval-data``, else its own held-out split), and written decoded: the
training split as ``train-*.tar``, the held-out one as ``test-*.tar``, and ``index.json`` last, with
the samples per shard, the classes, the training statistics and the options the samples depend on.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
from functools import partial
from pathlib import Path

from foundations.files import write_text
from modalities.common import DataError, DataSource
from modalities.shards import FORMAT, INDEX, parse_size, write_split
from tasks.options import add_options

log = logging.getLogger(__name__)

# recipe -> (the module of its data, its options class). The module's ``write_shards(source, opts,
# write) -> index fields`` reads a dataset as the recipe does and hands each split's samples to
# ``write``; its ``build_domain`` reads what that wrote (``modalities.shards.is_shards``).
WRITERS = {
    "ultrasound": ("modalities.ultrasound.data", "UltrasoundOptions"),
    "volumes": ("modalities.volume.data", "VolumeOptions"),
    "pointcloud": ("modalities.pointcloud.data", "PointCloudOptions"),
    "audio": ("modalities.audio.data", "AudioOptions"),
    "video": ("modalities.video.data", "VideoOptions"),
    "nerf": ("modalities.nerf.data", "NerfOptions"),
}


def writer(modality: str):
    """(options class, write_shards) of ``modality``."""
    module, options = WRITERS[modality]
    module = importlib.import_module(module)
    return getattr(module, options), module.write_shards


def build_parser(modality: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.shards",
        description=__doc__.split("\n\n")[0],
        epilog="--modality NAME --help lists that modality's options",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--modality", required=True, choices=sorted(WRITERS), help="the recipe whose data this is")
    parser.add_argument("--out", required=True, help="folder for the shards and index.json")
    parser.add_argument(
        "--shard-size", default="1GB", type=parse_size, help="a new shard once one holds this much (1GB, 500MB)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the shards of an earlier conversion in --out")
    add_options(parser, DataSource, "data")
    if modality in WRITERS:
        add_options(parser, writer(modality)[0], modality)
    return parser


def convert(modality: str, source: DataSource, opts, out: Path, shard_size: int, overwrite: bool = False) -> dict:
    """Write ``source``'s data as shards in ``out`` -> the index. An ``out`` holding an earlier
    conversion is left as it is unless ``overwrite``."""
    if source.data is None:
        raise DataError("--data: the folder to convert is required")
    if (out / INDEX).exists() and not overwrite:
        raise DataError(f"{out}: holds shards already ({INDEX}); --overwrite to replace them")
    if overwrite:
        for old in [out / INDEX, *out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar")]:
            old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    fields = writer(modality)[1](source, opts, partial(write_split, out=out, max_bytes=shard_size))
    index = {"format": FORMAT, "modality": modality, "data": str(source.data), "seed": source.seed, **fields}
    write_text(out / INDEX, json.dumps(index, indent=1))  # last: shards without an index are unfinished
    return index


def parse(argv=None) -> tuple[argparse.Namespace, DataSource, object]:
    """The command line -> (its arguments, the data source, the modality's options)."""
    pre = argparse.ArgumentParser(add_help=False)  # the modality first: its options are part of the parser
    pre.add_argument("--modality")
    args = build_parser(pre.parse_known_args(argv)[0].modality).parse_args(argv)
    values = vars(args)
    source = DataSource(**{f.name: values[f.name] for f in dataclasses.fields(DataSource)})
    options = writer(args.modality)[0]
    return args, source, options(**{f.name: values[f.name] for f in dataclasses.fields(options)})  # no ClassVars


def main(argv=None) -> None:
    args, source, opts = parse(argv)
    out = Path(args.out)
    index = convert(args.modality, source, opts, out, args.shard_size, args.overwrite)
    for split, shards in index["splits"].items():
        size = sum((out / s["url"]).stat().st_size for s in shards)
        samples = sum(s["nsamples"] for s in shards)
        print(f"{split}: {samples} samples in {len(shards)} shards, {size / 1e6:.1f} MB")
    if index.get("skipped"):
        print(f"skipped {len(index['skipped'])} unreadable files (listed in {out / INDEX})")
    print(f"wrote {out / INDEX}; train with --data {out}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
