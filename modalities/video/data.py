"""Video datasets: clips sampled and decoded per item (decord, ``modalities.video.io``), the built-in
motion set, folders in the field's layouts (``modalities.video.layouts``) or shards of their files
(``write_shards``), VideoMAE's test views, the domain the recipe trains on and its picture.
"""

from __future__ import annotations

import atexit
import bisect
import dataclasses
import logging
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from foundations.grid import GridConfig
from modalities.common import (
    DataError,
    DataSource,
    DomainData,
    Sample,
    check_held_out_classes,
    held_out_split,
    read_each,
    require_classes,
)
from modalities.shards import ShardStream, is_shards, open_shards, read_index, read_sample, split_shards
from modalities.ultrasound.transforms import sector_geometry
from modalities.video.io import (
    SHORT,
    ClipTransform,
    ClipViews,
    clip_starts,
    dense_indices,
    probe_video,
    read_clip,
    segment_indices,
    timeline,
)
from modalities.video.layouts import find_videos, video_card
from modalities.video.synthetic import write_motion_clips

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # VideoMAE normalises so
BUILT_IN_SIZE = 64  # the built-in clips are written at this size


@dataclass(frozen=True)
class VideoOptions:
    frames: int = field(default=16, metadata={"help": "frames per clip (VideoMAE: 16)"})
    stride: int = field(
        default=4, metadata={"help": "frames between sampled frames (4 for Kinetics-like data, 2 for SSv2-like)"}
    )
    sampling: str = field(
        default="dense",
        metadata={
            "choices": ("dense", "segment"),
            "help": "dense: --frames frames --stride apart from a random start; segment: one frame per equal "
            "segment of the video (TSN, VideoMAE on SSv2)",
        },
    )
    fps: float | None = field(
        default=None,
        metadata={"help": "resample time to this rate by frame timestamps before sampling; default: the file's frames"},
    )
    short: str = field(
        default="loop",
        metadata={"choices": SHORT, "help": "a clip longer than its video: loop round, or pad with the last frame"},
    )
    size: int | None = field(
        default=None, metadata={"help": f"crop side in pixels; default 224 (VideoMAE), {BUILT_IN_SIZE} built-in"}
    )
    tubelet: int = field(default=2, metadata={"help": "frames per tubelet token"})
    patch: int = field(default=16, metadata={"help": "tubelet side in pixels"})
    flip: bool | None = field(
        default=None,
        metadata={
            "help": "random horizontal flips; default on, off for the built-in set (its classes are directions); "
            "--no-flip for classes a mirror changes (SSv2's left to right)"
        },
    )
    test_clips: int = field(
        default=1, metadata={"help": "evaluation clips per video, logits averaged (VideoMAE: 5 on K400, 2 on SSv2)"}
    )
    test_crops: int = field(default=1, metadata={"help": "evaluation crops per clip (VideoMAE: 3)"})
    split: int = field(default=1, metadata={"help": "UCF101's train/test split (1, 2 or 3)"})
    per_class: int = field(default=32, metadata={"help": "built-in set: clips per motion"})
    ultrasound: bool = field(
        default=False,
        metadata={
            "help": "B-mode cine loops (POCUS): grey frames, the imaged sector found once per video by the "
            "ultrasound recipe's detector and the loss kept inside it, dataset-normalised targets"
        },
    )

    def __post_init__(self):
        for name in ("frames", "stride", "tubelet", "patch", "test_clips", "test_crops", "per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.frames % self.tubelet:
            raise ValueError(f"--frames {self.frames} must be a multiple of --tubelet {self.tubelet}")
        if self.size is not None and self.size % self.patch:
            raise ValueError(f"--size {self.size} must be a multiple of --patch {self.patch}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"--fps must be positive, got {self.fps}")

    def crop(self, built_in: bool) -> int:
        return self.size or (BUILT_IN_SIZE if built_in else 224)

    def span(self) -> int:
        """Frames of the video a clip covers; a shorter video is looped or padded."""
        return self.frames if self.sampling == "segment" else (self.frames - 1) * self.stride + 1


@dataclass(frozen=True)
class Video:
    path: Path
    label: str
    frames: int  # in the file, or ticks at --fps
    ticks: tuple[int, ...] | None = None  # with --fps: the file's frame at each tick
    sector: torch.Tensor | None = None  # --ultrasound: (H, W) bool, the imaged region of every frame
    geometry: str | None = None  # --ultrasound: the sector's, "linear" or "fan"
    level: tuple[float, float] = (0.0, 0.0)  # --ultrasound: mean grey level and its square inside the sector
    group: str = ""  # what a split keeps on one side (UCF101's gXX, a YouTube id); the file when none
    shard: tuple[Path, int, int] | None = None  # in shards: (shard, its sample, samples it holds)


class VideoClips(Dataset):
    """One clip per video and item. ``view`` "train": a random clip (dense or segment sampling)
    through ``ClipTransform``; "eval": clip ``clip`` of ``clips`` evenly spaced, crop ``crop`` of
    ``ClipViews``. Items: {"x": (C, T, size, size) float in [0, 1], "y": class index}. A video in
    shards (``Video.shard``) is read from its sample (``decode``); ``members`` names that sample's
    member in messages (``member_name``)."""

    def __init__(
        self,
        videos: list[Video],
        classes: list[str],
        opts: VideoOptions,
        size: int,
        view: str = "eval",
        clip=0,
        crop=0,
        members: Callable[[dict], str] | None = None,
    ):
        self.videos, self.classes, self.opts, self.view, self.clip, self.crop = videos, classes, opts, view, clip, crop
        self.members = members
        self.class_ids = [classes.index(v.label) for v in videos]
        self.train_transform = ClipTransform(size, flip=opts.flip is not False)
        self.eval_transform = ClipViews(size, opts.test_crops)

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def names(self) -> list[str]:
        return [str(v.path) for v in self.videos]

    def with_view(self, view: str, clip: int = 0, crop: int = 0) -> VideoClips:
        return VideoClips(
            self.videos, self.classes, self.opts, self.train_transform.size, view, clip, crop, self.members
        )

    def indices(self, video: Video) -> list[int]:
        """The clip's frame indices in the file."""
        o, n, train = self.opts, video.frames, self.view == "train"
        generator = torch.default_generator if train else None  # seeded per item by the training loop
        if o.sampling == "segment":
            picked = segment_indices(n, o.frames, generator).indices
        else:
            span = (o.frames - 1) * o.stride + 1
            start = clip_starts(n, span, 1 if train else o.test_clips, generator)[0 if train else self.clip]
            picked = dense_indices(n, o.frames, o.stride, start, o.short).indices
        return [video.ticks[i] for i in picked] if video.ticks is not None else picked

    def __getitem__(self, i: int) -> dict:
        video = self.videos[i]
        if video.shard is not None:
            return self.decode(read_sample(*video.shard))
        return self.item(video, read_clip(video.path, self.indices(video)))

    def decode(self, sample: dict) -> dict:
        """A shard sample (``write_shards``) -> its item, the clip decoded from the file's bytes in
        the sample: the ``decode`` of a ``ShardStream`` of videos."""
        video = from_sample(sample)
        try:
            clip = read_clip(video.path, self.indices(video), sample["video"])
        except DataError as e:  # a stream hands decode the sample alone: its json says where it lies
            raise DataError(f"{self.members(sample['json'])}: {e}") from None
        return self.item(video, clip)

    def item(self, video: Video, clip: torch.Tensor) -> dict:
        """A video's clip, uint8 (T, H, W, 3) -> its item in this view."""
        y = self.classes.index(video.label)
        if video.sector is None:
            x = self.train_transform(clip) if self.view == "train" else self.eval_transform(clip)[self.crop]
            return {"x": x, "y": y}
        if self.view == "train":
            x, valid = self.train_transform(clip, video.sector)  # (3, T, S, S), (1, 1, S, S)
        else:
            x, valid = (views[self.crop] for views in self.eval_transform(clip, video.sector))
        x = x.mean(0, keepdim=True)  # grey (1, T, S, S)
        return {"x": x, "valid": valid.expand_as(x).float(), "y": y}


def raw_features(dataset: VideoClips, size: tuple[int, int, int] = (4, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's raw-input baseline: every clip of the evaluation view (in [0, 1], before the
    adapter's normalisation) area-downsampled to ``size`` (frames, height, width), channels kept
    apart -> (N, C * 4 * 16 * 16), with the class indices (N,)."""
    feats = [F.adaptive_avg_pool3d(dataset[i]["x"], size).flatten() for i in range(len(dataset))]  # x: (C, T, H, W)
    return torch.stack(feats), torch.tensor(dataset.class_ids)


def probe_videos(samples: list[Sample], opts: VideoOptions, skip_bad: bool, progress: bool):
    """Open every video once (its first frame decoded): bad files stop the run or are skipped;
    -> (videos, skipped, short): short ones are shorter than a clip's span (looped or padded)."""
    span = opts.span()

    def read(sample: Sample) -> Video:
        info = probe_video(sample.path)
        ticks = tuple(timeline(sample.path, opts.fps)) if opts.fps else None
        group = sample.group or str(sample.path)
        video = Video(Path(sample.path), sample.label, len(ticks) if ticks else info.frames, ticks, group=group)
        return imaged_sector(video, info.frames) if opts.ultrasound else video

    bar = tqdm(samples, desc="opening videos", disable=not progress, leave=False)
    videos, skipped = read_each(bar, read, skip_bad, name=lambda s: str(s.path))
    short = [str(v.path) for v in videos if v.frames < span]
    if short:
        log.info("%d of %d videos are shorter than a clip of %d frames: %s", len(short), len(videos), span, opts.short)
    return videos, skipped, short


def imaged_sector(video: Video, frames: int, looks: int = 8) -> Video:
    """The video with its imaged sector, found once from ``looks`` grey frames spread over it (as
    the ultrasound recipe finds a cine loop's), and the grey level inside it."""
    picks = torch.linspace(0, frames - 1, min(looks, frames)).round().long().tolist()
    grey = read_clip(video.path, picks).float().mean(-1) / 255  # (looks, H, W) in [0, 1]
    sector = sector_geometry(grey)
    inside = grey[:, sector.mask].double()
    level = (inside.mean().item(), (inside**2).mean().item())
    return dataclasses.replace(video, sector=sector.mask, geometry=sector.geometry, level=level)


def built_in(opts: VideoOptions, seed: int) -> list[Sample]:
    """The motion set (``modalities.video.synthetic``) written to mp4 in a temporary folder for this
    run, long enough for one clip of --frames x --stride."""
    folder = Path(tempfile.mkdtemp(prefix="mae-video-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    length = max(opts.frames * opts.stride, 2 * opts.frames)
    clips = write_motion_clips(folder, opts.per_class, frames=length, size=BUILT_IN_SIZE, seed=seed)
    return [Sample(path, label, group=f"{label}/{path.stem}") for path, label in clips]


def plan(source: DataSource, opts: VideoOptions) -> tuple[VideoOptions, list[Video], list[Video], str, list, list]:
    """The options as the data needs them (no flips on the built-in set), the probed videos of the
    training and held-out splits (``probe_videos``: bad files stop the run or are skipped), the data
    card, the skipped files and the videos shorter than a clip. Held-out data: ``eval_data``; else
    the layout's test (or val) split; else a stratified 20 % that keeps each group (UCF101's gXX,
    labels.csv's group column) on one side."""
    if source.data is None:
        samples, card = built_in(opts, source.seed), "data_cards/video_motion_synthetic.md"
        opts = dataclasses.replace(opts, flip=bool(opts.flip))  # a mirror turns left into right
    else:
        samples, layout = find_videos(source.data, opts.split)
        card = video_card(layout, source.data)
    require_classes([s.label for s in samples], source.data or "the built-in set")
    videos, skipped, short = probe_videos(samples, opts, source.skip_bad_files, source.progress)
    if not videos:
        raise DataError(f"{source.data}: no readable video")
    if source.eval_data is not None:
        held_samples, _ = find_videos(source.eval_data, opts.split)
        check_held_out_classes(
            [s.label for s in held_samples], sorted({v.label for v in videos}), source.eval_data, source.data
        )
        held_videos, more, more_short = probe_videos(held_samples, opts, source.skip_bad_files, source.progress)
        return opts, videos, held_videos, card, skipped + more, short + more_short
    split = {Path(s.path): s.split for s in samples}
    labels, groups = [v.label for v in videos], [v.group for v in videos]
    train_idx, held_idx = held_out_split(labels, groups, [split[v.path] for v in videos], source.seed)
    return opts, [videos[i] for i in train_idx], [videos[i] for i in held_idx], card, skipped, short


def sector_statistics(videos: list[Video]) -> tuple[float, float]:
    """--ultrasound: mean and std of the grey level inside the sectors of ``videos``."""
    mean = sum(v.level[0] for v in videos) / len(videos)
    square = sum(v.level[1] for v in videos) / len(videos)
    return mean, max(square - mean**2, 1e-12) ** 0.5


def build_domain(source: DataSource, opts: VideoOptions) -> DomainData:
    """Datasets, adapter config and data card for the video recipe: the splits of ``plan``, or shards
    (``modalities.shards.is_shards``), streamed for pretraining."""
    if is_shards(source.data):
        return shard_domain(source, opts)
    opts, train_videos, held_videos, card, skipped, short = plan(source, opts)
    classes = sorted({v.label for v in train_videos})
    size = opts.crop(source.data is None)
    train = VideoClips(train_videos, classes, opts, size, "train")
    sectors = Counter(v.geometry for v in train_videos + held_videos)
    return assemble(
        opts,
        size,
        train,
        train,
        VideoClips(held_videos, classes, opts, size, "eval"),
        card,
        sector_statistics(train_videos) if opts.ultrasound else None,
        {
            "short_videos": len(short),
            **({"sectors": dict(sectors)} if opts.ultrasound else {}),
            "skipped_files": len(skipped),
            "skipped": skipped,
        },
    )


def assemble(opts, size, pretrain, train: VideoClips, held: VideoClips, card, statistics, info) -> DomainData:
    """The recipe's ``DomainData`` from its pretraining set, the training split ``train`` (random
    clips), the held-out split and, with --ultrasound, the training sectors' mean and std."""
    classes = train.classes
    views = [(c, k) for c in range(opts.test_clips) for k in range(opts.test_crops)]
    centre = (opts.test_clips // 2, opts.test_crops // 2)  # the plain view: the middle clip, centre crop
    grid = (opts.tubelet, opts.patch, opts.patch), (opts.frames, size, size)
    if opts.ultrasound:  # grey, normalised by the training videos' level inside their sectors
        mean, std = statistics
        adapter = {"name": "ultrasound_cine", **GridConfig(1, *grid, (mean,), (std,)).__dict__}
    else:
        adapter = {"name": "video", **GridConfig(3, *grid, IMAGENET_MEAN, IMAGENET_STD).__dict__}
    return DomainData(
        pretrain=pretrain,
        finetune=train,
        train_eval=train.with_view("eval", *centre),
        held_out=held.with_view("eval", *centre),
        held_out_views=[held.with_view("eval", c, k) for c, k in views if (c, k) != centre],
        classes=classes,
        adapter=adapter,
        data_card=card,
        render=render_clips,
        animate=animate_clip,
        raw_features=raw_features,
        preprocessing={
            "frames": opts.frames,
            "stride": opts.stride,
            "sampling": opts.sampling,
            "fps": opts.fps,
            "size": size,
            "resize": "short side to size, centre crop",
            "scale": "grey in [0, 1], then the training sectors' mean and std (the adapter); loss inside the sector"
            if opts.ultrasound
            else "[0, 1], then ImageNet mean and std (the adapter)",
        },
        info={
            "train_videos": len(train),
            "eval_videos": len(held),
            "classes": classes,
            "per_class": dict(sorted(Counter(v.label for v in train.videos).items())),
            **info,
        },
    )


# What the stored videos depend on (checked when read): the frames, stride, sampling and crops of a
# clip are drawn when it is read
SHARD_OPTIONS = ("split", "fps", "ultrasound")


def write_shards(source: DataSource, opts: VideoOptions, write: Callable[[str, Iterable[dict]], list]) -> dict:
    """Probe the videos of ``source.data`` as the recipe does (``plan``: layouts, checks,
    --skip-bad-files, the held-out split) and hand each split's videos to ``write(split, samples)``,
    the training split as ``train`` and the held-out one as ``test``, one file in memory at a time.

    A sample is the video file's bytes as they are, {label, group, source, frames, ticks (--fps),
    its split and place in it} and, with --ultrasound, the imaged sector and its grey level. Decoded
    videos are too large to store (a Kinetics clip of 300 frames of 224 x 224 is 45 MB), so clips
    are sampled and decoded when read, as the field's WebDataset video shards do (video2dataset
    stores each file's encoded bytes); decord reads the bytes from memory with the reader it uses for
    files (same seeking, same frames), so a clip from shards is the clip from the folder.
    -> what the index of the shards records of the data."""
    opts, train, held, card, skipped, _ = plan(source, opts)
    rows: dict[str, list] = {}  # [label, source, frames] of each sample: the labelled splits, nothing read

    def samples(split: str, videos: list[Video]) -> Iterator[dict]:
        rows[split] = []
        for i, v in enumerate(random.Random(source.seed).sample(videos, len(videos))):  # a stream reads in order
            meta = {"label": v.label, "group": v.group, "source": str(v.path), "frames": v.frames, "ticks": v.ticks}
            sample = {"video": v.path.read_bytes(), "json": {**meta, "split": split, "i": i}}
            if v.sector is not None:
                sample["sector.npy"] = v.sector.numpy()
                sample["json"] |= {"geometry": v.geometry, "level": v.level}
            rows[split].append([v.label, str(v.path), v.frames])
            yield sample

    written = {"train": write("train", samples("train", train)), "test": write("test", samples("test", held))}
    ultrasound = {
        "statistics": sector_statistics(train),
        "sectors": dict(Counter(v.geometry for v in train + held)),
    }
    return {
        "classes": sorted({v.label for v in train}),
        "options": {k: getattr(opts, k) for k in SHARD_OPTIONS},
        "data_card": card,
        "splits": written,
        "skipped": skipped,
        "videos": rows,
        **(ultrasound if opts.ultrasound else {}),
    }


def from_sample(sample: dict) -> Video:
    """A shard sample (``write_shards``) -> the probed video it was written from."""
    meta = sample["json"]
    return Video(
        Path(meta["source"]),
        meta["label"],
        meta["frames"],
        None if meta["ticks"] is None else tuple(meta["ticks"]),
        torch.from_numpy(sample["sector.npy"]) if "sector.npy" in sample else None,
        meta.get("geometry"),
        tuple(meta.get("level", (0.0, 0.0))),
        meta["group"],
    )


def member_name(index: dict, folder: Path, meta: dict) -> str:
    """The shard member holding the video of the sample whose json is ``meta``, from its split and
    place in it (``write_split`` keys the i-th sample of a split ``%09d``)."""
    listed = index["splits"][meta["split"]]
    s = bisect.bisect_right(np.cumsum([s["nsamples"] for s in listed]).tolist(), meta["i"])
    return f"{folder / listed[s]['url']}: member {meta['i']:09d}.video"


def shard_videos(index: dict, shards: list[tuple[Path, int]]) -> list[Video]:
    """The videos of ``shards`` as the index lists them (label, source, frames: nothing is read),
    each with its place in the shards."""
    rows = {}
    for split, listed in index["splits"].items():
        start = 0
        for s in listed:
            rows[s["url"]] = index["videos"][split][start : start + s["nsamples"]]
            start += s["nsamples"]
    return [
        Video(Path(source), label, frames, shard=(path, j, n))
        for path, n in shards
        for j, (label, source, frames) in enumerate(rows[path.name])
    ]


def shard_domain(source: DataSource, opts: VideoOptions) -> DomainData:
    """Shards written by ``write_shards``: pretraining streams the training split (``ShardStream``),
    a random clip of each video decoded from its bytes; the labelled splits read each video from its
    shard when an item is asked for."""
    index, shards = open_shards(source.data, "video", opts)
    where = source.data
    held_index, held = index, split_shards(where, index, "test")
    if source.eval_data:
        held_index, held = read_index(source.eval_data)
    if not held:
        raise DataError(f"{where}: no held-out shards (test split) beside these; pass --eval-data")
    classes, size = index["classes"], opts.crop(False)
    train_videos, held_videos = shard_videos(index, shards), shard_videos(held_index, held)
    check_held_out_classes([v.label for v in held_videos], classes, source.eval_data or where, where)
    train = VideoClips(
        train_videos, classes, opts, size, "train", members=partial(member_name, index, shards[0][0].parent)
    )
    held_clips = VideoClips(
        held_videos, classes, opts, size, "eval", members=partial(member_name, held_index, held[0][0].parent)
    )
    return assemble(
        opts,
        size,
        ShardStream(shards, train.decode, source.seed, source.skip_bad_files),
        train,
        held_clips,
        index["data_card"],
        index.get("statistics"),
        {
            "shards": len(shards),
            "short_videos": sum(v.frames < opts.span() for v in train_videos + held_videos),
            **({"sectors": index["sectors"]} if opts.ultrasound else {}),
        },
    )


def _rows(mae, x: torch.Tensor, valid, seed: int) -> list[torch.Tensor]:
    """Input, masked input and reconstruction of clips x, each (B, C, T, H, W) in [0, 1]."""
    rows = [mae.adapter.denormalize(r).clamp(0, 1) for r in mae.reconstruct(x, valid, seed)]
    if valid is not None:  # outside the sector nothing is trained: show the input there
        rows[2] = torch.where(valid.bool(), rows[2], rows[0])
    return rows


def _image(grid: torch.Tensor) -> torch.Tensor:
    """(C, ..., H, W) -> grey (..., H, W) or colour (..., H, W, C), as image files hold them."""
    return grid[0] if grid.shape[0] == 1 else grid.movedim(0, -1)


@torch.no_grad()
def render_clips(mae, x: torch.Tensor, valid=None, seed: int = 0, clips: int = 2, frames: int = 4) -> torch.Tensor:
    """Rows input / masked input / reconstruction of ``clips`` held-out clips, ``frames`` frames
    each spread over the clip, side by side -> (3 * H, clips * frames * W[, C]) in [0, 1]."""
    rows = _rows(mae, x[:clips], None if valid is None else valid[:clips], seed)  # 3 x (B, C, T, H, W)
    T = rows[0].shape[2]
    pick = torch.linspace(0, T - 1, min(frames, T)).round().long()
    rows = [r[:, :, pick] for r in rows]  # (B, C, F, H, W)
    grid = torch.cat([torch.cat([torch.cat(list(clip.unbind(1)), -1) for clip in r], -1) for r in rows], -2)
    return _image(grid)  # grid: (C, 3H, B*F*W)


@torch.no_grad()
def animate_clip(mae, x: torch.Tensor, valid=None, seed: int = 0) -> torch.Tensor:
    """The first clip's input, masked input and reconstruction side by side, frame by frame (an
    animated GIF's frames) -> (T, H, 3 * W[, C]) in [0, 1]."""
    rows = _rows(mae, x[:1], None if valid is None else valid[:1], seed)  # 3 x (1, C, T, H, W)
    return _image(torch.cat([r[0] for r in rows], -1))  # (C, T, H, 3W)
