"""Reading video: clips through decord's ``VideoReader`` (only the frames a clip needs are decoded),
VideoMAE's clip sampling as pure functions on frame indices, and clip transforms that give every
frame of a clip the same crop and flip (torchvision.transforms.v2 on ``tv_tensors.Video``).

Sampling follows VideoMAE (Tong et al., NeurIPS 2022; MCG-NJU/VideoMAE): a dense clip of ``frames``
frames ``stride`` apart (16 x 4 on Kinetics-400) at a random start for training and at evenly
spaced starts for testing (5 clips x 3 crops on K400); on Something-Something v2 one frame per
equal segment, TSN-style (Wang et al., ECCV 2016), at random in training and at the segment
centre in testing (2 x 3).

What decord 0.6.0 does, measured by tests/test_video_io.py:
- Frames come back at the size the stream declares when it opens: frames of another size later in
  the same stream (a resolution switch) are rescaled to it, aspect ratio not kept, without a word.
  We accept that: such files are rare and the clip transforms resize every clip anyway.
- Nothing is cropped at decode time; a video smaller than the transform's ``size`` is upscaled by
  the transform (random resized crop, or short side resized to ``size``), never refused.
- Random access seeks by the packets' timestamps; in MPEG program streams (.mpg/.mpeg) decord sees
  no timestamps and ``get_batch`` silently returns wrong frames (dmlc/decord#91 reports the same).
  A file whose frame timestamps are not finite and increasing is therefore read in order from its
  first frame up to the last frame wanted.
- Its errors are ``DECORDError`` (not a ``RuntimeError``) or ``RuntimeError``, and missing,
  garbage and truncated files all say only "Error reading <path>..." (the cause goes to stderr);
  a truncated mp4 whose index survives opens with its full frame count and fails on the missing
  frames only.
- ``get_avg_fps`` is the container's declared rate for mkv/webm, an average over the duration for
  mp4; ``get_frame_timestamp`` gives each frame's presentation time, which the fps-aware sampling
  below uses, so variable-frame-rate files are resampled by time, whatever the declared rate.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from modalities.common import DataError

EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpeg", ".mpg")
SHORT = ("loop", "pad")  # what a clip longer than its video does: wrap around, or repeat the last frame
DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: |Check failed: .*? \(-?\d+ vs\. -?\d+\) ")


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` reads from decord's index and the first frame."""

    frames: int
    fps: float  # the declared average rate; from the frame timestamps where none is declared
    height: int
    width: int


class ClipIndices(NamedTuple):
    indices: list[int]  # (T,) frame indices, each in [0, n_frames)
    short: bool  # the video was shorter than the clip: frames were looped or padded


def _reason(error: Exception) -> str:
    """decord's message without its time stamps, source lines and failed-check expressions."""
    return DECORD_PREFIX.sub("", str(error).splitlines()[0]).strip() or type(error).__name__


def _open(path, data: bytes | None = None):
    """decord's reader of ``path``, or of the file's bytes ``data`` (a video stored in a shard;
    ``path`` names it), no frame decoded; a ``DataError`` where it cannot be opened."""
    import decord  # imported here: decord's import is slow and only video needs it

    if data is None and not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    try:
        source = str(path) if data is None else io.BytesIO(data)
        reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError) as e:
        reason = _reason(e).replace(f"[{path}]", "").strip()
        if "cannot find video stream" in reason:  # also what an mp4 video track without samples says
            raise DataError(f"{path}: no video stream (audio only, or a video track without frames)") from None
        if reason.startswith("Error reading"):  # decord's whole message; the cause went to stderr
            raise DataError(f"{path}: cannot open video (not a video, or corrupt or truncated)") from None
        raise DataError(f"{path}: cannot open video, corrupt or truncated? (decord: {reason})") from None
    if len(reader) == 0:
        raise DataError(f"{path}: video has no frames")
    return reader


def frame_count(path) -> int:
    """Frames in a video, from its index (nothing decoded)."""
    return len(_open(path))


def _starts(reader) -> np.ndarray:
    """(n,) presentation time of every frame in seconds, from decord's index (nothing decoded)."""
    return reader.get_frame_timestamp(list(range(len(reader))))[:, 0].astype(np.float64)


def _in_order(starts: np.ndarray) -> bool:
    """Timestamps decord can seek by: finite and strictly increasing."""
    return bool(np.isfinite(starts).all() and (np.diff(starts) > 0).all())


def frame_rate(declared: float, starts: Sequence[float]) -> float | None:
    """Frames per second: the declared rate where it is finite and positive, else the mean rate of
    the frame timestamps (finite and increasing, two frames at least), else None."""
    if math.isfinite(declared) and declared > 0:
        return float(declared)
    starts = np.asarray(starts, dtype=np.float64)
    if len(starts) >= 2 and _in_order(starts):
        return float((len(starts) - 1) / (starts[-1] - starts[0]))
    return None


def probe_video(path) -> VideoInfo:
    """Frame count, rate and size of a video; decodes its first frame only. A video without a
    frame rate, declared or in its timestamps, is refused: it cannot be placed in time."""
    import decord

    reader = _open(path)
    try:
        height, width = reader[0].shape[:2]
        rate = frame_rate(reader.get_avg_fps(), _starts(reader))
    except (decord.DECORDError, RuntimeError) as e:
        raise DataError(f"{path}: cannot decode the first frame ({_reason(e)})") from None
    if rate is None:
        raise DataError(f"{path}: no frame rate (none declared, and the frame timestamps are unusable)")
    return VideoInfo(len(reader), rate, int(height), int(width))


def retime(starts: Sequence[float], end: float, fps: float) -> list[int]:
    """The source frame nearest each tick of a clock at ``fps`` from the first frame's time until
    ``end`` (the end of the last frame): a video at ``fps`` frames per second whatever its own rate
    or its variations (variable frame rate). A 30 fps video at 10 fps: frames 0, 3, 6, ...; at 60
    fps every frame twice. Clip samplers then count in these ticks (``stride`` in target frames)."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    starts = np.asarray(starts, dtype=np.float64)
    # ticks strictly before the end; the thousandth of a tick absorbs rounding in float32 timestamps
    ticks = starts[0] + np.arange(max(1, math.ceil((end - starts[0]) * fps - 1e-3))) / fps  # (M,)
    if len(starts) == 1:
        return [0] * len(ticks)
    after = np.clip(np.searchsorted(starts, ticks), 1, len(starts) - 1)  # first frame at or after the tick
    before = after - 1
    gap = starts[after] - starts[before]
    # a tick halfway between two frames (60 fps from 30) goes to the earlier one; the 1 % of the gap
    # keeps float32 timestamps from breaking that tie either way
    nearer_before = (ticks - starts[before]) <= (starts[after] - ticks) + 0.01 * gap
    return np.where(nearer_before, before, after).tolist()


def timeline(path, fps: float) -> list[int]:
    """``retime`` of a file: the source frame index of every tick at ``fps``. Decodes nothing; a
    file whose timestamps decord cannot read is timed by its frame rate instead."""
    reader = _open(path)
    starts = _starts(reader)
    rate = frame_rate(reader.get_avg_fps(), starts)
    if rate is None:
        raise DataError(f"{path}: no frame rate (none declared, and the frame timestamps are unusable)")
    if not _in_order(starts):
        starts = np.arange(len(starts)) / rate
    return retime(starts, starts[-1] + 1 / rate, fps)


def dense_indices(n_frames: int, frames: int, stride: int = 1, start: int = 0, short: str = "loop") -> ClipIndices:
    """``frames`` indices ``start, start + stride, ...`` (VideoMAE's clip of ``frames`` x
    ``stride``). Where the clip runs past the video, ``short="loop"`` wraps it round (index mod n)
    and ``"pad"`` repeats the last frame; ``short`` in the result says it happened."""
    if n_frames < 1 or frames < 1 or stride < 1:
        raise ValueError(f"n_frames, frames and stride must be positive, got {n_frames}, {frames}, {stride}")
    if not 0 <= start < n_frames:
        raise ValueError(f"start must be in [0, {n_frames}), got {start}")
    if short not in SHORT:
        raise ValueError(f"short must be one of {SHORT}, got {short!r}")
    indices = [start + stride * i for i in range(frames)]
    if indices[-1] < n_frames:
        return ClipIndices(indices, False)
    if short == "loop":
        return ClipIndices([i % n_frames for i in indices], True)
    return ClipIndices([min(i, n_frames - 1) for i in indices], True)


def clip_starts(n_frames: int, span: int, clips: int = 1, generator: torch.Generator | None = None) -> list[int]:
    """First frames of ``clips`` clips of ``span`` frames (``(frames - 1) * stride + 1``). With a
    ``generator`` (training; ``torch.default_generator`` is the global one the training loop seeds
    per item) each start is uniform in [0, n_frames - span]; without (testing) they are evenly
    spaced over that range as VideoMAE's test (start k = int(k * (n - span) / (clips - 1))), one
    clip in the middle. A video shorter than the span starts at 0."""
    if n_frames < 1 or span < 1 or clips < 1:
        raise ValueError(f"n_frames, span and clips must be positive, got {n_frames}, {span}, {clips}")
    room = max(0, n_frames - span)
    if generator is not None:
        return torch.randint(room + 1, (clips,), generator=generator).tolist()
    if clips == 1:
        return [room // 2]
    return [int(k * room / (clips - 1)) for k in range(clips)]


def segment_indices(n_frames: int, frames: int, generator: torch.Generator | None = None) -> ClipIndices:
    """One frame in each of ``frames`` equal segments of the video (TSN; VideoMAE on SSv2): at
    random within the segment with a ``generator`` (training), its centre without (testing,
    int(tick / 2 + tick * k) with tick = n / frames). Segment bounds are real-valued, so the last
    n % frames frames can be drawn too (VideoMAE's ``n // frames`` segments never draw them). A
    video of fewer frames than ``frames`` repeats frames and is reported ``short``."""
    if n_frames < 1 or frames < 1:
        raise ValueError(f"n_frames and frames must be positive, got {n_frames}, {frames}")
    tick = n_frames / frames
    if generator is None:
        offsets = torch.full((frames,), 0.5, dtype=torch.float64)
    else:
        offsets = torch.rand(frames, generator=generator, dtype=torch.float64)
    positions = (torch.arange(frames, dtype=torch.float64) + offsets) * tick  # (frames,) in [0, n)
    return ClipIndices(positions.floor().long().clamp(0, n_frames - 1).tolist(), n_frames < frames)


def read_clip(path, indices: Sequence[int], data: bytes | None = None) -> torch.Tensor:
    """Frames ``indices`` of a video, uint8 (T, H, W, 3), decoding those frames only (with the
    frames needed to reach them from a key frame); repeated indices are decoded once. ``data``: the
    file's bytes, read from memory by the same reader (``path`` then only names them)."""
    import decord

    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("read_clip needs at least one frame index")
    reader = _open(path, data)
    n = len(reader)
    if not all(0 <= i < n for i in indices):
        raise ValueError(f"{path}: frame indices {min(indices)}..{max(indices)} outside the video's 0..{n - 1}")
    wanted = sorted(set(indices))  # in file order: one forward pass between key frames
    try:
        if _in_order(_starts(reader)):
            frames = reader.get_batch(wanted).asnumpy()  # (len(wanted), H, W, 3)
        else:  # decord cannot seek here (see the module's docstring): decode in order from frame 0
            keep = set(wanted)
            frames = np.stack([frame for i, frame in enumerate(_in_sequence(reader, wanted[-1] + 1)) if i in keep])
    except (decord.DECORDError, RuntimeError) as e:
        raise DataError(
            f"{path}: cannot decode frames {wanted[0]}..{wanted[-1]} ({_reason(e)}); corrupt or truncated?"
        ) from None
    row = {frame: k for k, frame in enumerate(wanted)}
    return torch.from_numpy(frames[[row[i] for i in indices]])  # (T, H, W, 3)


def _in_sequence(reader, count: int):
    """The first ``count`` frames of ``reader`` as (H, W, 3) arrays, decoded in order."""
    for _ in range(count):
        yield reader.next().asnumpy()


def _as_video(clip: torch.Tensor) -> tv_tensors.Video:
    """uint8 (T, H, W, 3) -> ``tv_tensors.Video`` (T, 3, H, W): v2 draws one set of parameters per call
    and applies it to every frame of a Video."""
    if clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[-1] != 3 or 0 in clip.shape:
        raise ValueError(f"a clip is uint8 (T, H, W, 3), got {clip.dtype} {tuple(clip.shape)}")
    return tv_tensors.Video(clip.permute(0, 3, 1, 2))  # (T, 3, H, W)


def _channels_first(video: torch.Tensor) -> torch.Tensor:
    """uint8 (T, C, H, W) -> float (C, T, H, W) in [0, 1], the layout of the grid adapter's tubes."""
    video = v2.functional.to_dtype(video, torch.float32, scale=True)
    return video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()  # (C, T, H, W)


@dataclass(frozen=True)
class ClipTransform:
    """Training view of a clip: one random resized crop to ``size`` x ``size`` and, unless ``flip``
    is off (classes that a mirror changes: left/right, SSv2's "pushing from left to right"), one
    horizontal flip at random, both the same for every frame. Draws from torch's global generator,
    which the training loop seeds per item.

    ``scale`` (0.4, 1.0) of the frame's area spans about what VideoMAE's pretraining crop keeps
    (``GroupMultiScaleCrop`` with scales 1, .875, .75, .66 of the short side: 0.44 to 1 of its
    square); VideoMAE fine-tunes with (0.08, 1.0) and aspect ratios (3/4, 4/3) (its ssv2.py)."""

    size: int = 224
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")

    def __call__(self, clip: torch.Tensor, region: torch.Tensor | None = None):
        """clip: uint8 (T, H, W, 3) -> float (C, T, size, size) in [0, 1]; with ``region``, a bool
        (H, W) mask of the clip (an ultrasound sector), also the mask cut the same way, (1, 1, size, size)."""
        steps = [v2.RandomResizedCrop(self.size, scale=self.scale, ratio=self.ratio, antialias=True)]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        if region is None:
            return _channels_first(v2.Compose(steps)(_as_video(clip)))
        video, mask = v2.Compose(steps)(_as_video(clip), tv_tensors.Mask(region[None]))  # one draw for both
        return _channels_first(video), mask.as_subclass(torch.Tensor)[None].bool()


@dataclass(frozen=True)
class ClipViews:
    """Evaluation views of a clip, VideoMAE's test protocol: the short side resized to ``size``,
    then ``crops`` crops of ``size`` x ``size``: the centre one, or ``crops`` evenly spaced along the
    long side (3 in VideoMAE's tests: left, centre, right; start k = int(k * (long - size) /
    (crops - 1)))."""

    size: int = 224
    crops: int = 1

    def __post_init__(self):
        if self.size < 1 or self.crops < 1:
            raise ValueError(f"size and crops must be positive, got {self.size}, {self.crops}")

    def __call__(self, clip: torch.Tensor, region: torch.Tensor | None = None):
        """clip: uint8 (T, H, W, 3) -> float (crops, C, T, size, size) in [0, 1]; with ``region``, a
        bool (H, W) mask of the clip, also its views (crops, 1, 1, size, size)."""
        video = v2.functional.resize(_as_video(clip), [self.size], antialias=True)  # short side -> size
        height, width = video.shape[-2:]
        if self.crops == 1:  # the centre crop (rounded as torchvision's center_crop rounds)
            corners = [(round((height - self.size) / 2), round((width - self.size) / 2))]
        else:
            step = (max(height, width) - self.size) / (self.crops - 1)
            corners = [(int(k * step), 0) if height > width else (0, int(k * step)) for k in range(self.crops)]
        views = torch.stack(
            [_channels_first(v2.functional.crop(video, top, left, self.size, self.size)) for top, left in corners]
        )  # (crops, C, T, size, size)
        if region is None:
            return views
        mask = v2.functional.resize(tv_tensors.Mask(region[None]), [self.size])  # nearest, as masks are
        masks = [v2.functional.crop(mask, top, left, self.size, self.size) for top, left in corners]
        return views, torch.stack(masks).as_subclass(torch.Tensor)[:, None].bool()  # (crops, 1, 1, size, size)
