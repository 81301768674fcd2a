"""The video domain: options, clip datasets over real mp4 files (written with PyAV, read through
decord), the built-in motion set, the picture, and shards of the video files."""

import dataclasses
import itertools
import json
import re
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from foundations.mae import MaskedAutoencoder
from modalities import build_adapter
from modalities.common import DataError, DataSource
from modalities.shards import INDEX, ShardStream, parse_size, read_index
from modalities.video.data import (
    Video,
    VideoClips,
    VideoOptions,
    animate_clip,
    build_domain,
    imaged_sector,
    raw_features,
    render_clips,
)
from modalities.video.io import ClipTransform, ClipViews
from modalities.video.synthetic import write_motion_clips
from tasks.options import PretrainOptions
from tasks.pretrain import model_config
from tasks.shards import convert


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    folder = tmp_path_factory.mktemp("motion")
    return folder, write_motion_clips(folder, per_class=3, frames=24, size=32, seed=1)


def small(**kw) -> VideoOptions:
    return VideoOptions(**{"frames": 4, "stride": 2, "patch": 16, "size": 32, "per_class": 3, **kw})


@pytest.mark.parametrize(
    "kw,match",
    [({"frames": 5}, "multiple of --tubelet"), ({"size": 40}, "multiple of --patch"), ({"fps": 0.0}, "fps")],
)
def test_video_options__bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_video_clips__training_clips_are_random_windows_evaluation_clips_evenly_spaced(motion):
    _, clips = motion
    videos = [Video(path, label, 24) for path, label in clips[:2]]
    opts = small(test_clips=3)
    train = VideoClips(videos, ["left", "right"], opts, 32, "train")
    torch.manual_seed(0)
    starts = {train.indices(videos[0])[0] for _ in range(200)}
    assert starts == set(range(0, 24 - 7 + 1))  # span (4 - 1) * 2 + 1 = 7: every start, none past the end
    assert [VideoClips(videos, ["left"], opts, 32, "eval", c).indices(videos[0]) for c in range(3)] == [
        [0, 2, 4, 6],
        [8, 10, 12, 14],
        [17, 19, 21, 23],
    ]
    ticks = Video(videos[0].path, "left", 12, tuple(range(0, 24, 2)))  # --fps: frame of each tick
    assert VideoClips([ticks], ["left"], small(), 32, "eval").indices(ticks) == [4, 8, 12, 16]  # ticks 2, 4, 6, 8


def test_video_clips__items_are_normalisable_clips_of_the_crop(motion):
    _, clips = motion
    data = VideoClips([Video(p, label, 24) for p, label in clips[:4]], ["left", "right"], small(), 32, "train")
    item = data[0]
    assert item["x"].shape == (3, 4, 32, 32) and item["x"].dtype == torch.float32 and item["y"] == 0
    assert 0.0 <= item["x"].min() and item["x"].max() <= 1.0


def test_build_domain__built_in_set_keeps_directions_and_splits_by_clip():
    opts = small(per_class=4, test_clips=2, test_crops=3)
    data = build_domain(DataSource(seed=0, progress=False), opts)
    assert data.classes == sorted(
        ["left", "right", "up", "down", "clockwise", "counterclockwise", "growing", "shrinking"]
    )
    assert data.pretrain.train_transform.flip is False  # a mirror would turn "left" into "right"
    assert len(data.held_out_views) == 2 * 3 - 1  # VideoMAE's views, the plain one aside
    assert set(data.train_eval.names).isdisjoint(data.held_out.names)
    assert data.info["train_videos"] + data.info["eval_videos"] == 32
    assert data.adapter["patch"] == (2, 16, 16) and data.adapter["size"] == (4, 32, 32)


def test_build_domain__a_corrupt_video_is_named_or_skipped_and_counted(motion, tmp_path):
    folder, clips = motion
    for path, label in clips:
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / path.name).write_bytes(path.read_bytes())
    bad = tmp_path / "left" / "broken.mp4"
    bad.write_bytes(clips[0][0].read_bytes()[:300])  # cut short: the header survives, no frame does
    with pytest.raises(DataError, match="broken.mp4"):
        build_domain(DataSource(str(tmp_path), progress=False), small())
    data = build_domain(DataSource(str(tmp_path), skip_bad_files=True, progress=False), small())
    assert data.info["skipped_files"] == 1 and data.info["train_videos"] + data.info["eval_videos"] == len(clips)


def clips_and_mae(motion) -> tuple[torch.Tensor, MaskedAutoencoder]:
    """Two evaluation clips (2, 3, 4, 32, 32) and an untrained MAE of width 32 for them."""
    _, clips = motion
    data = VideoClips([Video(p, label, 24) for p, label in clips[:2]], ["left", "right"], small(), 32, "eval")
    adapter = {"name": "video", "channels": 3, "patch": (2, 16, 16), "size": (4, 32, 32)}
    cfg = model_config(PretrainOptions(preset="micro"), adapter)
    cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, dim=32, depth=1, heads=2))
    return torch.stack([data[0]["x"], data[1]["x"]]), MaskedAutoencoder(build_adapter(adapter, cfg.encoder.dim), cfg)


def test_render_clips__rows_of_frames(motion):
    x, mae = clips_and_mae(motion)
    picture = render_clips(mae, x)
    assert picture.shape == (3 * 32, 2 * 4 * 32, 3) and 0 <= picture.min() and picture.max() <= 1
    assert torch.equal(picture[:32, :32], x[0, :, 0].permute(1, 2, 0))  # first row: the input frames


def test_animate_clip__one_clip_input_masked_reconstruction_side_by_side(motion):
    x, mae = clips_and_mae(motion)
    frames = animate_clip(mae, x)
    assert frames.shape == (4, 32, 3 * 32, 3)  # every frame of the first clip, three panels wide
    assert torch.equal(frames[:, :, :32], x[0].permute(1, 2, 3, 0))  # left: the input, frame by frame


def test_ultrasound_clips__grey_tubes_with_the_sector_of_a_real_convex_clip(shared):
    path = shared / "ultrasound/pocus_ccby_subset/pocus_videos/convex/Reg_pat1Image_132943.mpeg"
    video = imaged_sector(Video(path, "regular", 280), 280)
    h, w = video.sector.shape
    assert not video.sector[: h // 10, : w // 10].any() and not video.sector[: h // 10, -w // 10 :].any()  # corners
    assert video.sector[h // 2, w // 2] and 0.3 < video.sector.float().mean() < 0.9
    opts = small(ultrasound=True, size=64)
    for view in ("train", "eval"):
        item = VideoClips([video], ["regular"], opts, 64, view)[0]
        assert item["x"].shape == item["valid"].shape == (1, 4, 64, 64)
        valid = item["valid"][0, 0].bool()
        assert torch.equal(item["valid"], valid.expand(1, 4, 64, 64).float())  # one sector for every frame
        # the mask was cut with the frames: outside it the clip is black, inside it is not
        assert item["x"][0, :, ~valid].mean() < 0.02 < item["x"][0, :, valid].mean()


@pytest.mark.parametrize("view", ["train", "eval"])
def test_clip_transforms__a_region_is_cut_and_flipped_with_its_frames(view):
    clip = torch.zeros(4, 48, 80, 3, dtype=torch.uint8)
    clip[:, 10:40, 5:50] = 255  # a bright rectangle, and the region is that rectangle
    region = clip[0, :, :, 0] > 0
    torch.manual_seed(3)
    transform = ClipTransform(size=32, scale=(0.3, 1.0)) if view == "train" else ClipViews(size=32, crops=3)
    for _ in range(5):
        x, mask = transform(clip, region)
        x, mask = (x, mask) if view == "train" else (x[1], mask[1])  # eval: the middle of three crops
        assert mask.shape == (1, 1, 32, 32) and mask.dtype == torch.bool
        bright = x[0] > 0.5  # (T, 32, 32)
        assert (bright ^ mask[0]).float().mean() < 0.05  # differ at the resampled edges only


def test_video_features__keep_time_steps_apart_and_resample_other_lengths():
    adapter = build_adapter({"name": "video", "channels": 3, "patch": (2, 4, 4), "size": (8, 8, 8)}, 16)
    tokens = torch.randn(2, 4 * 2 * 2, 16)  # 4 steps of 2 x 2 tubelets, (t, y, x) order
    features = adapter.pool(tokens, torch.rand(2, 3, 8, 8, 8))
    backwards = adapter.pool(tokens.reshape(2, 4, 4, 16).flip(1).reshape(2, 16, 16), torch.rand(2, 3, 8, 8, 8))
    assert features.shape == (2, adapter.pooled_dim(16)) == (2, 4 * 2 * 16)
    assert torch.allclose(features[:, :16], tokens[:, :4].mean(1), atol=1e-6)  # step 0: its 4 tubelets' mean
    assert torch.equal(features[:, 16:32], tokens[:, :4].amax(1))  # and their maximum
    assert not torch.allclose(features, backwards)  # played backwards: other features
    longer = torch.randn(2, 5 * 4, 16)  # a 10-frame clip: 5 steps, resampled to 4 at t = 0, 4/3, 8/3, 4
    pooled = adapter.pool(longer, torch.rand(2, 3, 10, 8, 8)).reshape(2, 4, 32)[..., :16]  # the means
    steps = longer.reshape(2, 5, 4, 16).mean(2)
    assert torch.allclose(pooled[:, 0], steps[:, 0], atol=1e-6) and torch.allclose(pooled[:, 3], steps[:, 4], atol=1e-6)
    assert torch.allclose(pooled[:, 1], (2 * steps[:, 1] + steps[:, 2]) / 3, atol=1e-6)


def test_video_targets__normalised_per_tubelet_and_channel_as_videomae():
    adapter = build_adapter({"name": "video", "channels": 3, "patch": (2, 4, 4), "size": (4, 8, 8)}, 16)
    clip = torch.rand(2, 3, 4, 8, 8) * torch.tensor([1.0, 5.0, 0.5]).view(1, 3, 1, 1, 1)  # channels of other scales
    target = adapter.targets(clip).values  # (2, 8, 2 * 4 * 4 * 3), channel last
    normed = adapter.normalize_target(target)
    per_channel = normed.unflatten(-1, (32, 3))  # (B, M, pixels, C)
    assert torch.allclose(per_channel.mean(2), torch.zeros(2, 8, 3), atol=1e-5)
    assert torch.allclose(per_channel.var(2), torch.ones(2, 8, 3), atol=1e-3)  # unbiased, as VideoMAE's
    assert torch.allclose(adapter.denormalize_prediction(normed, target), target, atol=1e-5)  # as pictures undo it
    weights = torch.ones_like(target)
    assert torch.allclose(adapter.normalize_target(target, weights), normed, atol=1e-5)


def test_raw_features__clips_area_downsampled_to_4_frames_of_16_pixels():
    """Built-in clips of 8 frames of 32 x 32: each feature is the mean of a block of 2 frames x
    2 x 2 pixels of the evaluation clip, channels apart."""
    data = build_domain(DataSource(seed=0, progress=False), small(frames=8, per_class=2))
    for dataset in (data.train_eval, data.held_out):
        features, targets = data.raw_features(dataset)
        assert features.shape == (len(dataset), 3 * 4 * 16 * 16) and targets.tolist() == dataset.class_ids
        x = dataset[0]["x"]  # (3, 8, 32, 32)
        torch.testing.assert_close(features[0], x.reshape(3, 4, 2, 16, 2, 16, 2).mean((2, 4, 6)).flatten())


def test_raw_features__grey_cine_loops_one_channel(motion):
    _, clips = motion
    videos = [Video(p, label, 24, sector=torch.ones(32, 32, dtype=torch.bool)) for p, label in (clips[3], clips[0])]
    dataset = VideoClips(videos, sorted({v.label for v in videos}), small(ultrasound=True), 32, "eval")
    features, targets = raw_features(dataset)
    assert features.shape == (2, 4 * 16 * 16) and targets.tolist() == dataset.class_ids == [1, 0]
    torch.testing.assert_close(features[1], dataset[1]["x"].reshape(4, 16, 2, 16, 2).mean((2, 4)).flatten())


def converted(folder, out, opts: VideoOptions, shard_size: str = "20kB"):
    """The domain of ``folder``'s videos converted to shards of at most ``shard_size`` in ``out``."""
    convert("video", DataSource(str(folder), progress=False), opts, out, parse_size(shard_size))
    return build_domain(DataSource(str(out), progress=False), opts)


def assert_same_items(a: VideoClips, b: VideoClips) -> None:
    """The two datasets give the same items under the same names, in any order."""
    by_name = {name: b[i] for i, name in enumerate(b.names)}
    assert sorted(a.names) == sorted(by_name) and len(a) >= 2
    for i, name in enumerate(a.names):
        x, y = a[i], by_name[name]
        assert x.keys() == y.keys() and all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x), name


def test_shards__hold_the_videos_the_recipe_reads_from_the_folder(motion, tmp_path):
    folder, _ = motion
    opts = small(test_clips=2)
    loose = build_domain(DataSource(str(folder), progress=False), opts)
    shards = converted(folder, tmp_path, opts)
    assert len(read_index(str(tmp_path))[1]) > 3  # several shards of at most 20 kB
    assert (shards.classes, shards.adapter, shards.preprocessing) == (loose.classes, loose.adapter, loose.preprocessing)
    assert (shards.info["train_videos"], shards.info["eval_videos"]) == (16, 8)
    for split in ("train_eval", "held_out"):
        assert_same_items(getattr(loose, split), getattr(shards, split))
    assert_same_items(loose.held_out_views[0], shards.held_out_views[0])  # the other clip of each video


def test_shards__the_stream_draws_the_clips_the_folder_draws(motion, tmp_path):
    folder, _ = motion
    loose = build_domain(DataSource(str(folder), progress=False), small())
    shards = converted(folder, tmp_path, small())
    batch = next(iter(DataLoader(shards.pretrain.split(0, 1, 4), batch_size=4)))
    assert batch["x"].shape == (4, 3, 4, 32, 32) and batch["y"].shape == (4,)
    samples = ShardStream(read_index(str(tmp_path))[1], None, 0, False).samples()
    for seed, sample in enumerate(itertools.islice(samples, 3)):  # the same draws give the same clip
        torch.manual_seed(seed)
        a = shards.pretrain.decode(sample)
        torch.manual_seed(seed)
        b = loose.pretrain[loose.pretrain.names.index(sample["json"]["source"])]
        assert torch.equal(a["x"], b["x"]) and a["y"] == b["y"]


def test_shards__a_damaged_video_is_named_by_shard_and_member_or_skipped(motion, tmp_path, caplog):
    folder, _ = motion
    shards = converted(folder, tmp_path, small())
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith(".video"))
    with open(shard, "r+b") as f:  # the bytes of the video zeroed, the tar intact
        f.seek(member.offset_data)
        f.write(bytes(member.size))
    named = rf"{re.escape(str(shard))}: member {member.name}: .*cannot open video"
    with pytest.raises(DataError, match=named):
        list(DataLoader(shards.pretrain.split(0, 1, 1), batch_size=1))
    with pytest.raises(DataError, match=named):
        [shards.train_eval[i] for i in range(len(shards.train_eval))]
    skipping = build_domain(DataSource(str(tmp_path), skip_bad_files=True, progress=False), small())
    stream = skipping.pretrain.split(0, 1, 1)
    assert len(list(DataLoader(stream, batch_size=1))) == len(stream) == 16  # the next one took its place
    assert f"{shard}: member {member.name}" in caplog.text


def test_shards__options_the_stored_videos_depend_on_are_checked(motion, tmp_path):
    folder, _ = motion
    converted(folder, tmp_path, small())
    with pytest.raises(DataError, match=r"written with --fps None; run with those or convert again"):
        build_domain(DataSource(str(tmp_path)), small(fps=4.0))
    assert build_domain(DataSource(str(tmp_path)), small(frames=8)).adapter["size"] == (8, 32, 32)  # drawn when read
    index = json.loads((tmp_path / INDEX).read_text())
    (tmp_path / INDEX).write_text(json.dumps({**index, "modality": "audio"}))
    with pytest.raises(DataError, match=r"shards of the audio recipe, not video"):
        build_domain(DataSource(str(tmp_path)), small())


def test_shards__cine_loops_keep_their_sectors_and_grey_level(shared, tmp_path):
    """Real POCUS loops (mp4 and mov) with --ultrasound: the sector found at conversion and the
    training sectors' grey level (the adapter's mean and std) come back from the shards."""
    videos = shared / "ultrasound/pocus_ccby_subset/pocus_videos/convex"
    for label, pattern in (("regular", "Reg_*.mp4"), ("covid", "Cov_*.mov")):
        (tmp_path / "data" / label).mkdir(parents=True)
        for path in sorted(videos.glob(pattern))[:3]:
            (tmp_path / "data" / label / path.name).symlink_to(path)
    opts = small(ultrasound=True)
    loose = build_domain(DataSource(str(tmp_path / "data"), progress=False), opts)
    shards = converted(tmp_path / "data", tmp_path / "shards", opts, "300kB")
    assert shards.adapter == loose.adapter and shards.adapter["name"] == "ultrasound_cine"
    assert shards.info["sectors"] == loose.info["sectors"] == {"fan": 6}
    assert 0.5 < loose.held_out[0]["valid"].mean() < 1  # a sector, not the whole frame
    for split in ("train_eval", "held_out"):
        assert_same_items(getattr(loose, split), getattr(shards, split))
