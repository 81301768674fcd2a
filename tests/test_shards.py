"""Shards (modalities.shards, tasks.shards): the converter's round trip against the loose folder,
webdataset reading what we write, the split over processes and workers, resuming at a batch, and
damaged shards."""

import json
import logging
import tarfile
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from modalities.common import DataError, DataSource
from modalities.shards import INDEX, ShardStream, parse_size, read_index, write_split
from modalities.ultrasound.data import UltrasoundOptions, build_domain
from modalities.volume import data as volumes
from tasks.shards import WRITERS, convert, main, parse
from tests.test_ultrasound import write_clip
from tests.test_volume import write_nifti

OPTS = UltrasoundOptions(image_size=32, patch=16, frames_per_clip=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of grey images of different sizes and one cine loop."""
    root = tmp_path_factory.mktemp("us")
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("a", "b", "c")):
        (root / cls).mkdir()
        for i in range(6):
            image = rng.integers(0, 256, (40 + 4 * i, 48 + 2 * c), dtype=np.uint8)
            Image.fromarray(image).save(root / cls / f"{i}.png")
    write_clip(root / "a" / "loop.mp4", n_frames=6)
    return root


def by_source(dataset) -> dict:
    frames = defaultdict(list)
    for frame, sector, label, source in zip(
        dataset.frames, dataset.sectors, dataset.labels, dataset.sources, strict=True
    ):
        frames[source].append((frame, sector, label))
    return frames


def test_converter__shards_hold_what_the_recipe_reads_from_the_folder(folder, tmp_path):
    loose = build_domain(DataSource(data=str(folder)), OPTS)
    convert("ultrasound", DataSource(data=str(folder)), OPTS, tmp_path, parse_size("20kB"))
    shards = build_domain(DataSource(data=str(tmp_path)), OPTS)
    assert len(read_index(str(tmp_path))[1]) > 3  # several shards of at most 20 kB
    assert shards.classes == loose.classes
    stats = ("mean", "std")  # summed in another order: equal to rounding
    assert {k: v for k, v in shards.adapter.items() if k not in stats} == {
        k: v for k, v in loose.adapter.items() if k not in stats
    }
    for k in stats:
        assert shards.adapter[k] == pytest.approx(loose.adapter[k], rel=1e-12)
    for split in ("train_eval", "held_out"):
        a, b = by_source(getattr(loose, split)), by_source(getattr(shards, split))
        assert a.keys() == b.keys() and len(a) >= 3
        for source in a:
            assert len(a[source]) == len(b[source])
            for (fa, sa, la), (fb, sb, lb) in zip(a[source], b[source], strict=True):
                assert torch.equal(fa, fb) and torch.equal(sa, sb) and la == lb, source
    assert len(by_source(shards.train_eval)[str(folder / "a" / "loop.mp4")]) == 3  # a clip's frames, together


def test_webdataset_reads_our_shards(folder, tmp_path):
    import webdataset as wds

    index = convert("ultrasound", DataSource(data=str(folder)), OPTS, tmp_path, parse_size("1MB"))
    url = str(tmp_path / index["splits"]["train"][0]["url"])
    theirs = list(wds.WebDataset(url, shardshuffle=False).decode())
    ours = list(ShardStream(read_index(str(tmp_path))[1], None, 0, False).samples())
    assert len(theirs) == len(ours) == index["splits"]["train"][0]["nsamples"]
    for t, o in zip(theirs, ours, strict=True):
        assert np.array_equal(t["frame.npy"], o["frame.npy"]) and t["json"] == o["json"]


def volume_folder(root, segment: bool):
    """NIfTI volumes of two classes with anisotropic spacing (resampled when prepared), and for
    segmentation a label volume beside each (``<name>_seg.nii.gz``)."""
    rng = np.random.default_rng(1)
    for c, cls in enumerate(("x", "y")):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            image = rng.normal(c, 1, (20 + 2 * i, 18, 12)).astype(np.float32)
            write_nifti(root / cls / f"v{i}.nii.gz", image, zooms=(1.0, 1.0, 2.0))
            if segment:
                write_nifti(root / cls / f"v{i}_seg.nii.gz", (image > c + 0.5).astype(np.uint8), zooms=(1.0, 1.0, 2.0))
    return root


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_converter__volumes_prepared_as_the_recipe_prepares_them(tmp_path, task):
    opts = volumes.VolumeOptions(task=task, roi=(16, 16, 16), patch=(8, 8, 8), spacing=(1.5, 1.5, 1.5))
    source = DataSource(data=str(volume_folder(tmp_path / "data", task == "segment")))
    loose = volumes.build_domain(source, opts)
    convert("volumes", source, opts, tmp_path / "shards", parse_size("30kB"))
    shards = volumes.build_domain(DataSource(data=str(tmp_path / "shards")), opts)
    assert len(read_index(str(tmp_path / "shards"))[1]) > 1
    assert (shards.classes, shards.adapter, shards.preprocessing) == (loose.classes, loose.adapter, loose.preprocessing)
    for split in ("train_eval", "held_out"):
        a = {it["name"]: it for it in getattr(loose, split).items}
        b = {it["name"]: it for it in getattr(shards, split).items}
        assert a.keys() == b.keys() and len(a) >= 2
        for name in a:
            assert torch.equal(torch.as_tensor(a[name]["image"]), torch.as_tensor(b[name]["image"]))
            assert torch.equal(a[name]["image"].affine, b[name]["image"].affine)
            assert torch.equal(torch.as_tensor(a[name]["label"]).float(), torch.as_tensor(b[name]["label"]).float())
    # the stream's crops: the recipe's random crops of the same volumes
    item = next(iter(DataLoader(shards.pretrain.split(0, 1, 2), batch_size=2)))
    assert item["x"]["image"].shape == (2, 1, 16, 16, 16) and torch.allclose(item["x"]["spacing"], torch.tensor(1.5))


def numbered(tmp_path, n: int = 48, shard_bytes: int = 5000) -> list:
    """``n`` samples numbered in order, in shards of unequal counts."""
    samples = ({"x.npy": np.full(40 + 30 * (i % 3), i), "json": {"i": i}} for i in range(n))
    shards = write_split("train", samples, tmp_path, shard_bytes)
    assert len({s["nsamples"] for s in shards}) > 1  # unequal shards
    return [(tmp_path / s["url"], s["nsamples"]) for s in shards]


def number(sample: dict) -> dict:
    return {"i": sample["json"]["i"], "size": len(sample["x.npy"])}


def read(stream: ShardStream, workers: int) -> list[list[int]]:
    return [b["i"].tolist() for b in DataLoader(stream, batch_size=stream.batch, num_workers=workers, drop_last=True)]


def test_stream__two_processes_two_workers_cover_the_epoch_once(tmp_path):
    stream = ShardStream(numbered(tmp_path), number, seed=3, skip_bad=False)
    runs = [read(stream.split(rank, 2, 4), workers=2) for rank in (0, 1)]
    assert len(runs[0]) == len(runs[1]) == 6  # the same count of batches on every process
    seen = [i for run in runs for batch in run for i in batch]
    assert sorted(seen) == list(range(48))  # no sample twice, none left out
    assert runs[0] == read(stream.split(0, 2, 4), workers=0)  # the order does not depend on workers
    stream.set_epoch(1)
    assert read(stream.split(0, 2, 4), workers=2) != runs[0]  # another epoch, another shard order


def test_stream__resumes_at_a_batch_without_opening_the_shards_before(tmp_path):
    shards = numbered(tmp_path)
    stream = ShardStream(shards, number, seed=1, skip_bad=False).split(1, 2, 4)
    stream.set_epoch(2)
    whole = read(stream, workers=2)
    order = stream.order(2)
    passed = 48 // 2 + 3 * 4  # process 1's run starts half-way; three of its batches are done
    done = [path for path, _ in order[: np.searchsorted(np.cumsum([n for _, n in order]), passed, "right")]]
    assert done  # the resume would start past at least one whole shard
    for path in done:
        path.write_bytes(b"")  # a resume that opened them would fail
    stream.skip_batches(3)
    assert read(stream, workers=2) == whole[3:]


def damage(shard, member_name: str) -> None:
    """Overwrite the data of one member with bytes that are no .npy."""
    with tarfile.open(shard) as tar:
        offset = tar.getmember(member_name).offset_data
    with open(shard, "r+b") as f:
        f.seek(offset)
        f.write(b"garbage!" * 4)


def test_stream__a_damaged_member_is_named_or_skipped(tmp_path, caplog):
    shards = numbered(tmp_path, n=12)
    shard = shards[0][0]
    damage(shard, "000000001.x.npy")
    with pytest.raises(DataError, match=rf"{shard.name}: member 000000001.x.npy"):
        read(ShardStream([shards[0]], number, 0, skip_bad=False), workers=0)
    with caplog.at_level(logging.WARNING, logger="modalities.shards"):
        batches = read(ShardStream([shards[0]], number, 0, skip_bad=True), workers=0)
    assert [i for b in batches for i in b] == [0, 2, 2, *range(3, shards[0][1])]  # the next one takes its place
    assert f"{shard.name}: member 000000001.x.npy" in caplog.text


def test_stream__a_truncated_shard_names_the_missing_samples(tmp_path):
    shards = numbered(tmp_path, n=12)
    shard, n = shards[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{shard.name}: sample \d+ (is missing|lacks x.npy)"):
        read(ShardStream([(shard, n)], number, 0, skip_bad=False), workers=0)


def test_converter__keeps_earlier_shards_and_checks_the_options(folder, tmp_path):
    convert("ultrasound", DataSource(data=str(folder)), OPTS, tmp_path, parse_size("1MB"))
    before = (tmp_path / INDEX).read_bytes()
    with pytest.raises(DataError, match=rf"{tmp_path}: holds shards already"):
        convert("ultrasound", DataSource(data=str(folder)), OPTS, tmp_path, parse_size("1MB"))
    assert (tmp_path / INDEX).read_bytes() == before
    with pytest.raises(DataError, match=r"written with --image-size 32; run with those or convert again"):
        build_domain(DataSource(data=str(tmp_path)), UltrasoundOptions(image_size=64, patch=16, frames_per_clip=3))
    with pytest.raises(DataError, match=r"train-000001.tar: not a shard listed"):
        build_domain(DataSource(data=str(tmp_path / "train-{000000..000001}.tar")), OPTS)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--modality", "ultrasound", "--out", "OUT"], "--data: the folder to convert is required"),
        (["--modality", "ultrasound", "--out", "OUT", "--data", "NOWHERE"], "NOWHERE: data folder not found"),
    ],
)
def test_converter__bad_input_named(tmp_path, args, message):
    args = [a.replace("OUT", str(tmp_path / "o")).replace("NOWHERE", str(tmp_path / "none")) for a in args]
    with pytest.raises(DataError, match=message.replace("NOWHERE", str(tmp_path / "none"))):
        main(args)
    assert not (tmp_path / "o" / INDEX).exists()


@pytest.mark.parametrize("modality", sorted(WRITERS))
def test_converter__every_modality_s_options_from_the_command_line(modality, tmp_path):
    args, source, opts = parse(["--modality", modality, "--data", "D", "--out", str(tmp_path), "--seed", "3"])
    assert args.modality == modality and source.data == "D" and source.seed == 3
    assert type(opts).__name__ == WRITERS[modality][1]


def test_converter__overwrite_replaces_an_earlier_conversion_and_needs_none(folder, tmp_path):
    convert("ultrasound", DataSource(data=str(folder)), OPTS, tmp_path, parse_size("1MB"), overwrite=True)
    (tmp_path / "train-000042.tar").write_bytes(b"an old shard")
    index = convert("ultrasound", DataSource(data=str(folder)), OPTS, tmp_path, parse_size("1MB"), overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == sorted(
        s["url"] for ss in index["splits"].values() for s in ss
    )


def test_converter__command_line_writes_the_index(folder, tmp_path, capsys):
    main(["--modality", "ultrasound", "--data", str(folder), "--out", str(tmp_path), "--image-size", "32"])
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["options"]["image_size"] == 32 and index["classes"] == ["a", "b", "c"]
    written = sum(s["nsamples"] for ss in index["splits"].values() for s in ss)
    assert written == 18 + 6 and "train:" in capsys.readouterr().out  # 18 images, the 6 frames of the clip


@pytest.mark.e2e
def test_recipe__two_processes_killed_mid_stream_resume_bit_identical(folder, tmp_path):
    """Pretraining on shards with 2 processes x 1 worker, SIGKILLed at its first checkpoint (step 7 of
    an epoch of 2 batches per process: mid-epoch) and resumed, ends with the weights and losses of
    an uninterrupted run."""
    from safetensors.torch import load_file

    from tests.conftest import launch_recipe
    from tests.test_resume import COMMON, launch_and_kill, losses

    convert("ultrasound", DataSource(data=str(folder)), OPTS, tmp_path / "shards", parse_size("20kB"))
    args = [*COMMON, "--data", tmp_path / "shards", "--image-size", "32", "--patch", "16", "--frames-per-clip", "3"]
    args += ["--batch-size", "4", "--workers", "1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    launch_recipe("ultrasound", *args, "--out", straight, processes=2, threads=1)
    left = launch_and_kill("ultrasound", args, killed, processes=2)
    position = json.loads((killed / "checkpoints" / "pretrain" / left[-1] / "trainer.json").read_text())["data"]
    assert position[1] > 0, f"resumed at {position} (epoch, batch): not mid-epoch"
    proc = launch_recipe("ultrasound", *args, "--out", killed, "--resume", processes=2, threads=1)
    assert "resumed from" in proc.stdout + proc.stderr, left
    a, b = (load_file(run / "encoder" / "model.safetensors") for run in (straight, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(killed) == losses(straight)
