"""Real runs of the video recipe through ``accelerate launch``: two processes on the built-in motion
set with VideoMAE's test views and the running-cell decoder, bad files, extraction, POCUS cine
loops as ultrasound tubes."""

import csv
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from modalities import load_encoder
from modalities.video.synthetic import write_motion_clips
from tests.conftest import assert_no_pickle, launch_recipe

pytestmark = pytest.mark.e2e
# 8-frame clips of 64 x 64 at stride 2: 4 x 4 x 4 tubelets
SMALL = ["--preset", "micro", "--frames", "8", "--stride", "2", "--batch-size", "16", "--probe-steps", "100"]


def test_two_process_run_writes_every_output_and_extracts_features(tmp_path):
    out = tmp_path / "run"
    args = [*SMALL, "--per-class", "6", "--max-steps", "6", "--finetune-steps", "4", "--test-clips", "2"]
    launch_recipe("video", *args, "--test-crops", "3", "--decode", "running_cell", "--out", out, processes=2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run/processes"] == 2 and metrics["pretrain/steps"] == 6
    assert metrics["data/train_videos"] + metrics["data/eval_videos"] == 48 and metrics["data/skipped_files"] == 0
    for key in ("pretrain/eval_loss", "probe/balanced_accuracy", "finetune/balanced_accuracy"):
        assert 0 <= metrics[key] < float("inf"), key
    config = json.loads((out / "encoder" / "config.json").read_text())
    assert config["adapter"]["patch"] == [2, 16, 16] and config["data_card"] == "data_cards/video_motion_synthetic.md"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["data_wait"] <= 1 for r in log)
    assert list((out / "reconstructions").glob("*.png"))
    assert Image.open(out / "reconstructions" / "clip.gif").n_frames == 8  # the last reconstruction, moving

    encoder = load_encoder(out / "encoder")  # any clip length and size, no position table to stretch
    assert encoder(torch.rand(2, 3, 12, 96, 64)).tokens.shape == (2, 6 * 6 * 4, 64)

    launch_recipe("video", *args, "--stage", "extract", "--tokens", "--out", out)
    index = json.loads((out / "features.json").read_text())
    tensors = load_file(out / "features.safetensors")
    assert len(index["rows"]) == 48 and tensors["tokens"].shape[1] == 64
    assert tensors["features"].shape == (48, 4 * 2 * 64)  # mean and max per time step: 8 frames, tubelets of 2
    assert {r["split"] for r in index["rows"]} == {"train", "held_out"} and index["rows"][0]["name"].endswith(".mp4")
    assert_no_pickle(out)


def test_bad_video_is_named_and_skip_bad_files_counts_it(tmp_path):
    data = tmp_path / "data"
    clips = write_motion_clips(data, per_class=3, frames=16, size=64)
    broken = data / "left" / "broken.mp4"
    broken.write_bytes(clips[0][0].read_bytes()[:200])
    args = [*SMALL, "--data", data, "--max-steps", "2", "--stage", "pretrain", "--no-flip"]
    proc = launch_recipe("video", *args, "--out", tmp_path / "a", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {broken}:")
    launch_recipe("video", *args, "--skip-bad-files", "--out", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["data/skipped_files"] == 1


def test_clips_tell_motions_that_single_frames_cannot(tmp_path):
    """The built-in motions from 8-frame clips against single frames of the same videos (--stride
    16 writes the same 16-frame videos as 8 frames at stride 2), each encoder pretrained for the
    same 50 steps, the two runs side by side on one thread each; 80 held-out clips, chance 0.125.
    Measured: clips 0.42, frames 0.14. A random video encoder reads more (0.51, printed here),
    and held-out reconstruction stays at the loss of each tubelet's mean (1.00 in norm-pix units):
    the tubelets across time carry the motion, and so short a pretraining adds nothing measurable.
    With the features' mean over space alone (no maximum) the clips read 0.25 and this test fails."""
    common = ["--preset", "micro", "--per-class", "48", "--size", "32", "--patch", "8", "--lr", "1e-2"]
    common += ["--max-steps", "50", "--checkpoint-every", "50", "--batch-size", "16", "--stage", "pretrain,probe"]
    common += ["--probe-baselines", "--probe", "linear"]
    clips_args, frame_args = ["--frames", "8", "--stride", "2"], ["--frames", "1", "--tubelet", "1", "--stride", "16"]
    runs = {"clips": clips_args, "frames": frame_args}

    def pretrain_and_probe(name):
        out = tmp_path / name
        launch_recipe("video", *common, *runs[name], "--out", out, threads=1)
        return json.loads((out / "metrics.json").read_text())

    with ThreadPoolExecutor(2) as pool:
        clips, frames = pool.map(pretrain_and_probe, runs)
    assert clips["data/eval_videos"] == frames["data/eval_videos"] == 80
    accuracy = {name: m["probe/balanced_accuracy"] for name, m in (("clips", clips), ("frames", frames))}
    accuracy["clips, random init"] = clips["probe_random_init/balanced_accuracy"]
    print(accuracy, "held-out reconstruction", clips["pretrain/eval_loss"])
    assert accuracy["clips"] >= 0.125 + 0.15, accuracy
    assert accuracy["clips"] >= accuracy["frames"] + 0.15, accuracy


def pocus_clips(shared, folder):
    """The POCUS subset's clips with a labels.csv of path,label,group (the patient), as
    data_cards/pocus_clips.md makes them."""
    source = shared / "ultrasound" / "pocus_ccby_subset"
    shutil.copytree(source / "pocus_videos", folder / "pocus_videos")
    with open(source / "labels.csv", newline="") as f, open(folder / "labels.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["path", "label", "group"])
        for r in csv.DictReader(f):
            if r["type"] == "video":
                w.writerow([r["path"], r["label"], (re.search(r"pat\d+", r["path"]) or [r["path"]])[0]])
    return folder


def test_pocus_cine_loops_pretrain_as_grey_tubes_inside_their_sectors_and_probe(shared, tmp_path):
    out = tmp_path / "run"
    data = pocus_clips(shared, tmp_path / "pocus")
    args = [*SMALL, "--data", data, "--ultrasound", "--size", "64", "--frames", "8", "--stride", "4"]
    launch_recipe("video", *args, "--max-steps", "4", "--stage", "pretrain,probe", "--probe", "linear", "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data/train_videos"] + metrics["data/eval_videos"] == 44
    assert metrics["data/sectors"] == {"fan": 37, "linear": 7}  # the convex and the linear probe's clips
    assert 0 <= metrics["probe/balanced_accuracy"] <= 1 and metrics["pretrain/eval_loss"] > 0
    config = json.loads((out / "encoder" / "config.json").read_text())["adapter"]
    assert config["name"] == "ultrasound_cine" and config["channels"] == 1 and 0 < config["mean"][0] < 1
    gif = Image.open(out / "reconstructions" / "clip.gif")
    assert gif.n_frames == 8 and gif.size == (3 * 64, 64)
