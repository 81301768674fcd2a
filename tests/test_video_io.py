"""Video reading: clip sampling (dense, evaluation starts, TSN segments, short videos, fps
resampling), decoding exactly the frames asked for, what decord does with awkward files, clip
transforms shared by every frame, the synthetic motion set, bad inputs."""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from modalities.common import DataError
from modalities.video.io import (
    ClipTransform,
    ClipViews,
    clip_starts,
    dense_indices,
    frame_rate,
    probe_video,
    read_clip,
    retime,
    segment_indices,
    timeline,
)
from modalities.video.synthetic import MOTIONS, motion_clip, write_motion_clips

CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}
CODECS |= {".mpg": "mpeg2video"}
STEP = 8  # brightness per frame index in graded clips


def graded(n: int, size=(48, 64)) -> np.ndarray:
    """(n, H, W, 3) uint8 flat frames; frame i has brightness STEP * i."""
    return np.broadcast_to((STEP * np.arange(n, dtype=np.uint8))[:, None, None, None], (n, *size, 3)).copy()


def write_video(path, frames: np.ndarray, rate: int = 30, pts_ms=None, options=None):
    """Frames (T, H, W, 3) uint8 to ``path`` (codec by suffix, high bit rate); ``pts_ms`` gives each
    frame's time in milliseconds (variable frame rate)."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(CODECS[path.suffix], rate=rate)
        stream.height, stream.width, stream.pix_fmt = *frames.shape[1:3], "yuv420p"
        stream.bit_rate = 8_000_000  # mpeg4/mpeg2 at their default rate shift flat frames by a few levels
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts_ms is not None:
                picture.pts, picture.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return path


def brightness(clip: torch.Tensor) -> np.ndarray:
    """(T, H, W, 3) -> (T,) mean level of each frame."""
    return clip.float().mean((1, 2, 3)).numpy()


# ---- sampling: pure functions on frame indices


def test_dense_indices__start_and_stride():
    assert dense_indices(100, 4, stride=3, start=10) == ([10, 13, 16, 19], False)
    assert dense_indices(16, 16) == (list(range(16)), False)  # exactly fits: not short


@pytest.mark.parametrize("short,expected", [("loop", [0, 2, 4, 1]), ("pad", [0, 2, 4, 4])])
def test_dense_indices__short_video_loops_or_pads(short, expected):
    assert dense_indices(5, 4, stride=2, short=short) == (expected, True)


@pytest.mark.parametrize(
    "args",
    [
        dict(n_frames=0, frames=4),
        dict(n_frames=10, frames=0),
        dict(n_frames=10, frames=4, stride=0),
        dict(n_frames=10, frames=4, start=10),
        dict(n_frames=10, frames=4, start=-1),
        dict(n_frames=10, frames=4, short="mirror"),
    ],
)
def test_dense_indices__bad_arguments_raise(args):
    with pytest.raises(ValueError):
        dense_indices(**args)


def test_clip_starts__evenly_spaced_for_testing():
    assert clip_starts(100, 16, clips=5) == [0, 21, 42, 63, 84]  # VideoMAE: int(k * (n - span) / (clips - 1))
    assert clip_starts(100, 16, clips=2) == [0, 84]
    assert clip_starts(100, 16) == [42]  # one clip: the middle
    assert clip_starts(10, 16, clips=3) == [0, 0, 0]  # shorter than the span


def test_clip_starts__random_starts_cover_the_room_and_no_more():
    n, span = 40, 31  # room for starts 0..9
    starts = clip_starts(n, span, clips=5000, generator=torch.Generator().manual_seed(0))
    counts = np.bincount(starts, minlength=10)
    assert min(starts) == 0 and max(starts) == n - span
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500  # uniform over the room
    again = clip_starts(n, span, clips=5000, generator=torch.Generator().manual_seed(0))
    assert again == starts
    assert clip_starts(10, 16, clips=20, generator=torch.Generator().manual_seed(0)) == [0] * 20


def test_segment_indices__segment_centres_for_testing():
    assert segment_indices(32, 8) == ([2, 6, 10, 14, 18, 22, 26, 30], False)
    tick = 10 / 4  # VideoMAE's SSv2 test: int(tick / 2 + tick * k)
    assert segment_indices(10, 4).indices == [int(tick / 2 + tick * k) for k in range(4)] == [1, 3, 6, 8]


def test_segment_indices__random_within_each_segment_and_every_frame_drawn():
    n, frames = 30, 8
    tick = n / frames
    generator = torch.Generator().manual_seed(0)
    draws = np.array([segment_indices(n, frames, generator).indices for _ in range(2000)])  # (2000, 8)
    for k in range(frames):
        assert draws[:, k].min() == int(k * tick) and draws[:, k].max() == int(np.ceil((k + 1) * tick)) - 1
    assert (np.diff(draws, axis=1) >= 0).all()
    assert set(draws.flatten()) == set(range(n))  # the last n % frames frames too


def test_segment_indices__short_video_repeats_frames():
    clip = segment_indices(3, 8)
    assert clip.short and sorted(set(clip.indices)) == [0, 1, 2] and clip.indices == sorted(clip.indices)
    assert not segment_indices(8, 8).short


def test_retime__30_fps_at_10_fps_takes_every_third_frame():
    starts = (np.arange(30) / 30).astype(np.float32)  # decord's timestamps are float32
    assert retime(starts, 1.0, 10) == list(range(0, 30, 3))
    assert retime(starts, 1.0, 30) == list(range(30))
    assert retime(starts, 1.0, 60) == [i // 2 for i in range(60)]  # every frame twice
    assert retime([0.0], 0.1, 30) == [0, 0, 0]  # one frame, shown for a tenth of a second


def test_retime__variable_frame_rate_takes_the_nearest_frame():
    starts = np.array([0, 33, 66, 100, 200, 300, 400, 433, 466, 500, 1000, 1033, 1066, 1100]) / 1000
    assert retime(starts, 1.133, 10) == [0, 3, 4, 5, 6, 9, 9, 9, 10, 10, 10, 13]


def test_frame_rate__declared_else_timestamps_else_none():
    starts = np.arange(5) / 25
    assert frame_rate(30.0, starts) == 30.0
    for bad in (float("nan"), 0.0, -1.0, float("inf")):
        assert frame_rate(bad, starts) == pytest.approx(25.0)
    assert frame_rate(float("nan"), [0.0]) is None  # one frame: no interval to measure
    assert frame_rate(0.0, [-1e14, -1e14, 0.0]) is None  # decord's timestamps of an MPEG program stream


# ---- reading files


def test_probe_video__frames_rate_and_size(tmp_path):
    path = write_video(tmp_path / "a.mp4", graded(12, (48, 64)), rate=25)
    info = probe_video(path)
    assert (info.frames, info.fps, info.height, info.width) == (12, 25.0, 48, 64)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".webm", ".avi", ".mpg"])
def test_read_clip__exactly_the_frames_requested(tmp_path, suffix):
    path = write_video(tmp_path / f"a{suffix}", graded(30))
    indices = [7, 2, 29, 2, 0, 15]  # out of order, repeated
    clip = read_clip(path, indices)
    assert clip.shape == (6, 48, 64, 3) and clip.dtype == torch.uint8
    np.testing.assert_allclose(brightness(clip), STEP * np.array(indices), atol=3)


def test_timeline__30_fps_file_at_10_fps_reads_every_third_frame(tmp_path):
    path = write_video(tmp_path / "a.mp4", graded(30), rate=30)
    ticks = timeline(path, 10)
    assert ticks == list(range(0, 30, 3))
    clip = dense_indices(len(ticks), 4, stride=2, start=1)  # stride in 10 fps frames: source 3, 9, 15, 21
    frames = read_clip(path, [ticks[i] for i in clip.indices])
    np.testing.assert_allclose(brightness(frames), STEP * np.array([3, 9, 15, 21]), atol=3)


def test_timeline__variable_frame_rate_resampled_by_timestamps(tmp_path):
    pts_ms = [0, 33, 66, 100, 200, 300, 400, 433, 466, 500, 1000, 1033, 1066, 1100]
    path = write_video(tmp_path / "vfr.mkv", graded(14), pts_ms=pts_ms)
    assert probe_video(path).fps == 30.0  # decord reports the declared rate of an mkv, not the mean
    assert timeline(path, 10) == [0, 3, 4, 5, 6, 9, 9, 9, 10, 10, 10, 13]


def test_read_clip__resolution_change_comes_back_at_the_first_size(tmp_path):
    """decord rescales frames of a later size to the size the stream starts with."""
    path = tmp_path / "switch.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        for frame in graded(5, (48, 64)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        second = av.CodecContext.create("libx264", "w")  # a second encoder at 96 x 80, muxed into the stream
        second.height, second.width, second.pix_fmt = 96, 80, "yuv420p"
        second.time_base, second.framerate = stream.codec_context.time_base, 30
        for i, frame in enumerate(graded(10, (96, 80))[5:]):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            for packet in [*second.encode(picture), *([] if i < 4 else second.encode())]:
                packet.stream, packet.pts, packet.dts = stream, packet.pts + 5, packet.dts + 5
                container.mux(packet)
    clip = read_clip(path, [8, 1, 6])
    assert clip.shape == (3, 48, 64, 3)
    np.testing.assert_allclose(brightness(clip), [64, 8, 48], atol=3)


def test_read_clip__index_outside_the_video_raises(tmp_path):
    path = write_video(tmp_path / "a.mp4", graded(10))
    with pytest.raises(ValueError, match="outside the video's 0..9"):
        read_clip(path, [3, 10])


# ---- bad files: one line naming the file


def noisy(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)


def truncated(path):
    """An mp4 cut in half: its index (moov, written last) is lost."""
    write_video(path, noisy(20))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def zero_frames(path):
    """An mp4 with a video track and no frame in it."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=30)
    stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
    container.start_encoding()
    container.close()
    return path


def audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def garbage(path):
    path.write_bytes(b"not a video at all " * 100)
    return path


def empty(path):
    path.write_bytes(b"")
    return path


BAD_FILES = [
    ("missing.mp4", lambda p: p, "no such file"),
    ("garbage.mp4", garbage, r"cannot open video \(not a video, or corrupt or truncated\)"),
    ("empty.mp4", empty, r"cannot open video \(not a video, or corrupt or truncated\)"),
    ("cut.mp4", truncated, r"cannot open video \(not a video, or corrupt or truncated\)"),
    ("zero.mp4", zero_frames, r"no video stream \(audio only, or a video track without frames\)"),
    ("speech.mp4", audio_only, r"no video stream \(audio only"),
]


@pytest.mark.parametrize("name,make,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
@pytest.mark.parametrize("read", [probe_video, lambda p: read_clip(p, [0]), lambda p: timeline(p, 10)])
def test_bad_file__one_line_data_error_naming_it(tmp_path, name, make, message, read):
    path = make(tmp_path / name)
    with pytest.raises(DataError, match=rf"^{path}: {message}") as caught:
        read(path)
    assert "\n" not in str(caught.value)


def test_bad_file__truncated_after_its_index_fails_on_the_missing_frames(tmp_path):
    """With the index first (faststart), a cut file opens with its full frame count."""
    path = write_video(tmp_path / "cut.mp4", noisy(20), options={"movflags": "faststart"})
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.98)])
    assert probe_video(path).frames == 20
    assert read_clip(path, [0, 1]).shape == (2, 48, 64, 3)
    with pytest.raises(DataError, match=rf"^{path}: cannot decode frames 0..19 \(.*\); corrupt or truncated\?$"):
        read_clip(path, [0, 19])


def test_bad_file__corrupt_first_frame_fails_probe_and_read(tmp_path):
    path = write_video(tmp_path / "holes.mp4", noisy(20), options={"movflags": "faststart"})
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 4
    data[start : start + 2000] = bytes(2000)  # the first frame's bytes, zeroed
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"^{path}: cannot decode the first frame \(.+\)$"):
        probe_video(path)
    with pytest.raises(DataError, match=rf"^{path}: cannot decode frames 0..5 \(.+\); corrupt or truncated\?$"):
        read_clip(path, [0, 5])


# ---- clip transforms


def drifting_clip(t=6, size=(40, 56)) -> torch.Tensor:
    """uint8 (T, H, W, 3): one random picture, brighter by 10 levels in each frame."""
    base = torch.randint(0, 150, (*size, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return base[None] + 10 * torch.arange(t, dtype=torch.uint8)[:, None, None, None]


def test_clip_transform__one_crop_and_flip_for_every_frame():
    clip = drifting_clip()
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = ClipTransform(size=32)(clip)  # (C, T, 32, 32)
        assert out.shape == (3, 6, 32, 32) and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1
        # each frame is the first one plus its brightness step: the same pixels were cropped
        steps = (10 * torch.arange(6) / 255)[None, :, None, None].expand_as(out)
        np.testing.assert_allclose(out - out[:, :1], steps, atol=0.01)
        torch.manual_seed(seed)
        plain = ClipTransform(size=32, flip=False)(clip)
        flips.add(bool(torch.equal(out, plain.flip(-1))) and not torch.equal(out, plain))
    assert flips == {True, False}  # some draws flipped, others not


def test_clip_transform__no_flip_when_turned_off():
    clip = drifting_clip(size=(32, 32))
    whole = ClipTransform(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)  # the whole frame
    expected = clip.permute(3, 0, 1, 2).float() / 255
    for seed in range(10):
        torch.manual_seed(seed)
        np.testing.assert_allclose(whole(clip), expected, atol=1e-6)


def test_clip_transform__draws_from_the_global_generator():
    clip = drifting_clip()
    torch.manual_seed(5)
    first = ClipTransform(size=24)(clip)
    torch.manual_seed(5)
    assert torch.equal(ClipTransform(size=24)(clip), first)
    assert not torch.equal(ClipTransform(size=24)(clip), first)


def test_clip_views__centre_crop_and_three_crops_along_the_long_side():
    # brightness = column: a crop's mean tells where along the width it was taken
    columns = torch.arange(96, dtype=torch.uint8)[None, None, :, None].expand(2, 48, 96, 3).contiguous()
    three = ClipViews(size=32, crops=3)(columns)  # short side 48 -> 32, long side 96 -> 64
    assert three.shape == (3, 3, 2, 32, 32)
    left, centre, right = (three[k, 0, 0, 0] * 255 for k in range(3))  # first row of each crop
    np.testing.assert_allclose(left[0], 0.75, atol=1.0)  # crop 0 starts at the left edge
    np.testing.assert_allclose(right[-1], 95.25, atol=1.0)  # crop 2 ends at the right edge
    np.testing.assert_allclose(centre.mean(), 47.5, atol=1.0)
    one = ClipViews(size=32)(columns)
    assert one.shape == (1, 3, 2, 32, 32)
    torch.testing.assert_close(one[0], three[1])  # the centre crop is the middle one of three
    tall = ClipViews(size=32, crops=3)(columns.transpose(1, 2).contiguous())  # (T, 96, 48, 3): along the height
    torch.testing.assert_close(tall[:, :, :, :, 0], three[:, :, :, 0, :])


def test_clip_transforms__video_smaller_than_the_crop_is_upscaled():
    small = drifting_clip(t=4, size=(12, 20))
    assert ClipTransform(size=32)(small).shape == (3, 4, 32, 32)
    assert ClipViews(size=32, crops=3)(small).shape == (3, 3, 4, 32, 32)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ClipTransform(size=0),
        lambda: ClipTransform(scale=(0.0, 1.0)),
        lambda: ClipTransform(scale=(0.6, 0.4)),
        lambda: ClipTransform(ratio=(2.0, 1.0)),
        lambda: ClipViews(crops=0),
    ],
)
def test_clip_transforms__bad_configs_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("clip", [torch.zeros(4, 8, 8, 3), torch.zeros(4, 8, 8, 1, dtype=torch.uint8)])
def test_clip_transforms__not_a_uint8_rgb_clip_raises(clip):
    with pytest.raises(ValueError, match="uint8 \\(T, H, W, 3\\)"):
        ClipTransform(size=8)(clip)


# ---- the synthetic motion set


def test_write_motion_clips__layout_readable_and_deterministic(tmp_path):
    items = write_motion_clips(tmp_path / "a", per_class=2, frames=10, size=32, fps=8, seed=3)
    assert [label for _, label in items] == [m for m in MOTIONS for _ in range(2)]
    assert all(path == tmp_path / "a" / label / f"{i % 2:04d}.mp4" for i, (path, label) in enumerate(items))
    info = probe_video(items[0][0])
    assert (info.frames, info.fps, info.height, info.width) == (10, 8, 32, 32) and probe_video(items[-1][0]) == info
    again = write_motion_clips(tmp_path / "b", per_class=1, frames=10, size=32, fps=8, seed=3)
    assert all(a.read_bytes() == b.read_bytes() for (a, _), (b, _) in zip(items[::2], again, strict=True))
    other = write_motion_clips(tmp_path / "c", per_class=1, frames=10, size=32, fps=8, seed=4)
    assert items[0][0].read_bytes() != other[0][0].read_bytes()


def frame_statistics(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> what one frame shows: the shape's area, the background's and the shape's colour,
    where the shape is (circular means of x and y: positions live on a torus)."""
    frame = frame.astype(np.float64)
    grey = frame.mean(-1)
    level = np.median(grey)
    shape = (grey - level) * (1 if level < 128 else -1) > 35  # (H, W): brighter on dark, darker on light
    colour = frame[shape].mean(0) if shape.any() else np.zeros(3)
    where = []
    for axis, n in ((1, shape.shape[0]), (0, shape.shape[1])):
        angle, profile = 2 * np.pi * np.arange(n) / n, shape.sum(axis)
        where += [np.cos(angle) @ profile, np.sin(angle) @ profile]
    return np.concatenate(
        [[shape.mean()], np.median(frame.reshape(-1, 3), 0), colour, np.array(where) / max(1, shape.sum())]
    )


def anova_f(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-way ANOVA F of every feature across classes: about 1 when the class does not change it."""
    groups = [features[labels == k] for k in np.unique(labels)]
    between = sum(len(g) * (g.mean(0) - features.mean(0)) ** 2 for g in groups) / (len(groups) - 1)
    within = sum(((g - g.mean(0)) ** 2).sum(0) for g in groups) / (len(features) - len(groups))
    return between / within


def test_motion_clip__one_frame_looks_the_same_in_every_class():
    """A frame drawn at random from a clip: no statistic of it differs between classes. F(7, 184) is
    above 4 with probability 3e-4 where the class changes nothing; a class that sets the size, the
    colour or the start quadrant gives 10 to 30."""
    per_class, frames = 24, 16
    pick = np.random.default_rng(0).integers(frames, size=(len(MOTIONS), per_class))
    features, labels = [], []
    for k, motion in enumerate(MOTIONS):
        for i in range(per_class):
            clip = motion_clip(motion, frames, 64, np.random.default_rng([0, k, i]))
            features.append(frame_statistics(clip[pick[k, i]]))
            labels.append(k)
    f = anova_f(np.stack(features), np.array(labels))
    assert f.max() < 4, f"a single frame differs between classes (F per statistic: {f.round(1)})"


def motion_features(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (shift x, shift y, rotation, growth) per frame: the affine optical flow that
    best explains the change between frames (brightness constancy: dI/dt = -grad I . flow, the flow
    affine about the centre of motion), on the torus the clips live on. y points down, so a positive
    rotation is clockwise on screen. NumPy: torch's threads cost more than these small arrays."""
    t, height, width, _ = clip.shape
    grey = clip.astype(np.float64).mean(-1).reshape(t, height // 2, 2, width // 2, 2).mean((2, 4))  # (T, h, w)
    grey = sum(np.roll(grey, (dy, dx), (1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9  # smoothed
    _, h, w = grey.shape
    energy = np.abs(grey[1:] - grey[:-1]).sum(0)  # (h, w) where things change
    shift = []
    for axis, n in ((1, h), (0, w)):  # circular mean along each axis, moved to the middle
        angle, profile = 2 * np.pi * np.arange(n) / n, energy.sum(axis)
        shift.append(
            int(n // 2 - round(np.arctan2(np.sin(angle) @ profile, np.cos(angle) @ profile) * n / (2 * np.pi)))
        )
    grey = np.roll(grey, shift, (1, 2))
    change, mean = grey[1:] - grey[:-1], (grey[1:] + grey[:-1]) / 2  # (T - 1, h, w)
    gy = (np.roll(mean, -1, 1) - np.roll(mean, 1, 1)) / 2
    gx = (np.roll(mean, -1, 2) - np.roll(mean, 1, 2)) / 2
    y, x = np.mgrid[:h, :w] - np.array([h // 2, w // 2])[:, None, None]
    # flow (u, v) = (a + b x + c y, d + e x + f y); change = -(gx u + gy v), least squares
    basis = -np.stack([gx, gx * x, gx * y, gy, gy * x, gy * y], -1).reshape(-1, 6)
    a, b, c, d, e, f = np.linalg.solve(basis.T @ basis, basis.T @ change.reshape(-1))
    return np.array([a, d, (e - c) / 2, (b + f) / 2])  # shift x, shift y, curl, divergence


# the flow component each class moves along, and its sign
MOTION_AXES = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
MOTION_AXES |= {"clockwise": (2, 1), "counterclockwise": (2, -1), "growing": (3, 1), "shrinking": (3, -1)}


def centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Nearest class centroid (standardised features) fit on every other clip, scored on the rest."""
    train, test = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    mean, std = features[train].mean(0), features[train].std(0) + 1e-9
    z = (features - mean) / std
    centroids = np.stack([z[train & (labels == k)].mean(0) for k in range(len(MOTIONS))])
    predicted = ((z[test][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((predicted == labels[test]).mean())


def test_motion_clips__the_motion_between_frames_tells_the_class(tmp_path):
    """Read back from the mp4 files: every clip moves along its class's direction, and a nearest
    centroid on the flow tells the classes apart."""
    items = write_motion_clips(tmp_path, per_class=6)
    flows = np.stack([motion_features(read_clip(path, range(16)).numpy()) for path, _ in items])  # (48, 4)
    labels = np.array([MOTIONS.index(label) for _, label in items])
    for motion, (axis, sign) in MOTION_AXES.items():
        along = sign * flows[labels == MOTIONS.index(motion), axis]
        assert (along > 0).all(), f"{motion}: clips moving the other way ({along.round(3)})"
    assert centroid_accuracy(flows, labels) > 0.75


@pytest.mark.parametrize("args", [dict(per_class=0), dict(per_class=1, frames=1), dict(per_class=1, size=33)])
def test_write_motion_clips__bad_arguments_raise(tmp_path, args):
    with pytest.raises(ValueError):
        write_motion_clips(tmp_path, **args)
