"""Clips per second decoding the same clips with decord (``modalities.video.io.read_clip``, which
``VideoClips`` uses), PyAV (a seek-and-decode reader written here as the fair peer) and torchcodec
where it imports.

    ./mae.sh exec python benchmarks/video_decode.py [--clips 24] [--rounds 5] [--videos DIR_OR_FILE ...]

Without ``--videos`` it writes its own H.264 mp4s (yuv420p, x264 "veryfast", CRF 23, B-frames
on, 30 fps, 300 frames = 10 s, like a Kinetics clip) into a temporary folder: 224x224 and 320x240,
each with x264's default key-frame interval (250: two key frames, seeking decodes far) and with
one every 32 frames (seeking decodes little). Every reader decodes the same list of clips: VideoMAE's
Kinetics sampling, ``--frames`` frames ``--stride`` apart from a seeded random start
(``clip_starts`` and ``dense_indices``), the files taken in turn.

Every reader does per clip what a dataset item does: open the file, find the frames, decode them
single-threaded (decord ``num_threads=1`` as ``read_clip`` opens it, PyAV ``thread_count=1``,
torchcodec ``num_ffmpeg_threads=1``), return uint8 (T, H, W, 3) RGB. Opening includes each
library's index of the file: decord and torchcodec (``seek_mode="exact"``) read every packet's
header when they open, and the PyAV reader does the same (a demux pass, nothing decoded) to map
frame indices to timestamps and key frames. The readers run interleaved (round-robin, one pass
over all clips per reader and round); clips/s is the median over rounds. Before timing, the
frames of every reader are compared with decord's on every clip (max and mean absolute
difference in uint8 levels): a comparison is honest only if they decode the same frames.
"""

from __future__ import annotations

import argparse
import bisect
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from timing import interleaved

from modalities.common import DataError
from modalities.video.io import EXTENSIONS, clip_starts, dense_indices, probe_video, read_clip

FPS, LENGTH = 30, 300  # frames per second and frames per written video
SIZES = ((224, 224), (320, 240))  # (width, height) of the written videos
KEYINTS = (250, 32)  # x264's default key-frame interval, and a short one


def write_videos(folder: Path, seed: int = 0) -> list[Path]:
    """H.264 mp4s of a textured scene panning under a moving disc, with sensor noise: content
    the encoder must code with real motion vectors and residuals (a still or flat video would
    decode unrealistically fast)."""
    import av

    paths = []
    rng = np.random.default_rng(seed)
    for width, height in SIZES:
        # a texture of 8-pixel blocks twice the frame's width, panned across it over the video
        coarse = rng.uniform(0, 255, (height // 8 + 1, width // 4 + 1, 3)).astype(np.float32)
        texture = np.kron(coarse, np.ones((8, 8, 1), np.float32))[:height, : 2 * width]
        yy, xx = np.mgrid[:height, :width]
        for keyint in KEYINTS:
            path = folder / f"pan_{width}x{height}_gop{keyint}.mp4"
            with av.open(str(path), "w") as container:
                stream = container.add_stream(
                    "libx264",
                    rate=FPS,
                    options={"preset": "veryfast", "crf": "23", "x264-params": f"keyint={keyint}:scenecut=0"},
                )
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                for t in range(LENGTH):
                    shift = int(t * width / LENGTH)
                    frame = texture[:height, shift : shift + width].copy()
                    cx, cy = width * (0.2 + 0.6 * t / LENGTH), height * (0.5 + 0.3 * np.sin(t / 15))
                    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (height / 6) ** 2
                    frame[disc] = (230, 60, 40)
                    frame += rng.normal(0, 4, frame.shape).astype(np.float32)
                    image = np.clip(frame, 0, 255).astype(np.uint8)
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                container.mux(stream.encode())
            paths.append(path)
    return paths


def find_videos(items: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, items):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in EXTENSIONS)
        else:
            paths.append(item)
    if not paths:
        raise SystemExit(f"no video in {items}")
    return paths


def label(path: Path) -> str:
    """The file's name with its folder, at most 31 characters (their ends kept)."""
    return f"{path.parent.name}/{path.name}"[-31:]


# ------------------------------------------------------------------------------------- readers
def pyav_index(container, stream) -> tuple[list[int], list[int]]:
    """One demux pass (headers only, nothing decoded) -> (pts of every frame in presentation
    order, indices of the key frames in that order)."""
    packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None and p.size]
    packets.sort()
    return [pts for pts, _ in packets], [i for i, (_, key) in enumerate(packets) if key]


def pyav_clip(path, indices) -> np.ndarray:
    """Frames ``indices`` of ``path`` as uint8 (T, H, W, 3) with PyAV: seek to the key frame at
    or before the first wanted frame, decode forward keeping only the wanted frames, and seek
    again only where the next wanted frame's key frame lies ahead of the decoder (as decord's
    ``get_batch`` does). RGB through one ``VideoReformatter`` for the clip: ``frame.to_ndarray``
    builds a new swscale context for every frame, about 0.1 ms a frame here."""
    import av
    from av.video.reformatter import VideoReformatter

    wanted = sorted(set(int(i) for i in indices))
    frames = {}
    rgb = VideoReformatter()  # one conversion context for the clip (to_ndarray makes one per frame)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "SLICE", 1  # single-threaded, as read_clip's decord
        pts, keys = pyav_index(container, stream)
        row = {p: i for i, p in enumerate(pts)}
        position = None  # index of the last frame decoded; None = must seek
        decoded = None
        for target in wanted:
            k = bisect.bisect_right(keys, target) - 1
            key = keys[k] if k >= 0 else 0  # no key frame flagged at or before it: from the start
            if position is None or key > position:
                container.seek(pts[key], stream=stream, backward=True, any_frame=False)
                decoded = container.decode(stream)
            for frame in decoded:
                position = row[frame.pts]
                if position == target:
                    frames[target] = rgb.reformat(frame, format="rgb24").to_ndarray()
                    break
                if position > target:
                    break
            if target not in frames:
                raise RuntimeError(f"{path}: frame {target} not decoded (seek landed after it, or the file ends)")
    return np.stack([frames[int(i)] for i in indices])


def decord_clip(path, indices) -> np.ndarray:
    return read_clip(path, indices).numpy()


def torchcodec_reader():
    """torchcodec's reader, or the reason it cannot run here."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # ImportError, or the RuntimeError/OSError of missing FFmpeg libraries
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    def clip(path, indices) -> np.ndarray:
        decoder = VideoDecoder(str(path), dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact")
        return decoder.get_frames_at(indices=[int(i) for i in indices]).data.numpy()

    return clip, None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", nargs="+", help="video files or folders (default: write test videos)")
    p.add_argument("--clips", type=int, default=24, help="clips per round and reader")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import av
    import decord

    tmp = None
    if args.videos:
        paths = find_videos(args.videos)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="video-decode-"))
        print(f"writing {len(SIZES) * len(KEYINTS)} test videos ({LENGTH} frames at {FPS} fps) to {tmp}")
        paths = write_videos(tmp, args.seed)
    show = (lambda path: path.name) if tmp is not None else label
    try:
        print(f"decord {decord.__version__}, PyAV {av.__version__}; every reader single-threaded")
        print(f"{'video':<32}{'size':>10}{'frames':>8}{'keys':>6}")
        lengths = {}
        for path in paths:
            try:
                info = probe_video(path)
            except DataError as e:
                print(f"{show(path):<32}skipped: {e}")
                continue
            with av.open(str(path)) as c:
                pts, keys = pyav_index(c, c.streams.video[0])
            if len(pts) != info.frames:  # e.g. packets without timestamps: frame i is not the same frame
                print(f"{show(path):<32}skipped: decord counts {info.frames} frames, PyAV's index {len(pts)}")
                continue
            lengths[path] = info.frames
            print(f"{show(path):<32}{f'{info.width}x{info.height}':>10}{info.frames:>8}{len(keys):>6}")
        paths = list(lengths)
        if not paths:
            raise SystemExit("no video that both decord and PyAV index alike")

        span = (args.frames - 1) * args.stride + 1
        gen = torch.Generator().manual_seed(args.seed)
        clips = []
        for k in range(args.clips):
            path = paths[k % len(paths)]
            start = clip_starts(lengths[path], span, 1, gen)[0]
            clips.append((path, dense_indices(lengths[path], args.frames, args.stride, start).indices))

        readers = {"decord": decord_clip, "pyav": pyav_clip}
        torchcodec, why = torchcodec_reader()
        if torchcodec is not None:
            readers["torchcodec"] = torchcodec
        else:
            print(f"torchcodec: skipped ({why})")

        print(f"{len(clips)} clips of {args.frames} frames at stride {args.stride}; frames against decord's:")
        for name, read in readers.items():
            if name == "decord":
                continue
            diffs = [
                np.abs(read(path, idx).astype(np.int16) - decord_clip(path, idx).astype(np.int16))
                for path, idx in clips
            ]
            print(
                f"  {name}: max |diff| {max(int(d.max()) for d in diffs)} levels, "
                f"mean {np.mean([d.mean() for d in diffs]):.3f} (uint8)"
            )

        def pass_over(read):
            return lambda: [read(path, idx) for path, idx in clips]

        seconds = interleaved({name: pass_over(read) for name, read in readers.items()}, args.rounds, args.warmup)
        print(f"{'reader':<12}{'clips/s':>10}{'vs decord':>11}")
        for name, s in seconds.items():
            print(f"{name:<12}{len(clips) / s:>10.2f}{seconds['decord'] / s:>11.2f}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
