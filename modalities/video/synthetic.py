"""The built-in video set (data_cards/video_motion_synthetic.md): a shape moving over a noisy
background, labelled by how it moves, so that only the change between frames tells the classes
apart, as in Something-Something (Goyal et al. 2017), whose classes a single frame cannot tell.

Every clip draws the same things whatever its class: shape, colour, background, orientation,
position, size, and the amount of each motion; its class only says which one changes over time.
Positions live on a torus (the shape leaves one side and comes back on the other) and orientations
on a circle, so both are uniform in every frame; sizes are the same for every class in a frame
drawn at random from a clip (growing at frame t is shrinking at frame T - 1 - t). A horizontal flip
swaps left/right and clockwise/counterclockwise, and time reversal swaps every pair: train on this
set without flips (``ClipTransform(flip=False)``) and never reverse time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MOTIONS = ("left", "right", "up", "down", "clockwise", "counterclockwise", "growing", "shrinking")
# asymmetric outlines in units of the shape's radius, centred near (0, 0); y points down
SHAPES = (
    ((-0.6, -1.0), (-0.1, -1.0), (-0.1, 0.5), (0.8, 0.5), (0.8, 1.0), (-0.6, 1.0)),  # L
    ((-1.0, -0.6), (1.0, -0.2), (-0.4, 0.9)),  # scalene triangle
    ((-1.0, -0.3), (0.3, -0.3), (0.3, -0.8), (1.0, 0.0), (0.3, 0.8), (0.3, 0.3), (-1.0, 0.3)),  # arrow
)
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (x, y) per unit of travel
RADIUS = (0.1, 0.3)  # the shape's radius in every frame, in units of the frame's side
TRAVEL = (0.4, 0.8)  # distance moved over a clip, in frame sides
TURN = (math.pi / 2, math.pi)  # angle turned over a clip
GROWTH = (1.6, 2.2)  # size ratio from first to last frame of a growing clip
SUPERSAMPLE = 4  # outlines drawn at 4x and averaged down: anti-aliased edges


def _mask(outline, centre, angle: float, radius: float, size: int) -> np.ndarray:
    """(size, size) float32 coverage of the outline rotated by ``angle`` (clockwise on screen, as y
    points down), scaled by ``radius`` and centred at ``centre`` on a torus."""
    big = size * SUPERSAMPLE
    cos, sin = math.cos(angle), math.sin(angle)
    points = [
        ((x * cos - y * sin) * radius * SUPERSAMPLE + big / 2, (x * sin + y * cos) * radius * SUPERSAMPLE + big / 2)
        for x, y in outline
    ]
    canvas = Image.new("L", (big, big))
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    mask = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    # drawn in the middle, then rolled into place: the torus wraps what leaves one side to the other
    shift = (round(centre[1] - size / 2) % size, round(centre[0] - size / 2) % size)
    return np.roll(mask, shift, axis=(0, 1))


def motion_clip(motion: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``motion``, uint8 (frames, size, size, 3)."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    outline = SHAPES[rng.integers(len(SHAPES))]
    angle = rng.uniform(0, 2 * math.pi)
    centre = rng.uniform(0, size, 2)  # (x, y)
    growth = math.log(rng.uniform(*GROWTH))
    log_low, log_high = math.log(RADIUS[0] * size), math.log(RADIUS[1] * size)
    log_radius = rng.uniform(log_low, log_high - growth)  # at the small end of the clip's size range
    travel, turn = rng.uniform(*TRAVEL) * size, rng.uniform(*TURN)
    still = rng.integers(frames)  # the frame of a growing clip whose size a clip of another class keeps
    level = rng.uniform(40, 215)
    background = level + rng.uniform(-20, 20, 3) + 18 * _texture(size, rng)  # (size, size, 3)
    contrast = rng.uniform(50, 110) * (1 if level < 128 else -1)
    colour = np.clip(level + contrast + rng.uniform(-30, 30, 3), 0, 255)
    noise = rng.normal(0, 6, (frames, size, size, 3)).astype(np.float32)

    dx, dy = STEP.get(motion, (0, 0))
    clip = np.empty((frames, size, size, 3), np.float32)
    for t in range(frames):
        f = t / (frames - 1)  # 0 at the first frame, 1 at the last
        at = centre + travel * f * np.array([dx, dy])
        turned = angle + {"clockwise": turn, "counterclockwise": -turn}.get(motion, 0.0) * f
        grown = {"growing": t, "shrinking": frames - 1 - t}.get(motion, still) / (frames - 1)
        mask = _mask(outline, at, turned, math.exp(log_radius + growth * grown), size)[..., None]
        clip[t] = background * (1 - mask) + colour * mask
    return np.clip(clip + noise, 0, 255).round().astype(np.uint8)


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 1) smooth noise of unit scale: white noise at an eighth of the size, upscaled."""
    coarse = rng.normal(0, 1, (max(2, size // 8),) * 2).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))[..., None]


def write_motion_clips(
    folder, per_class: int, frames: int = 16, size: int = 64, fps: int = 8, seed: int = 0
) -> list[tuple[Path, str]]:
    """``per_class`` clips of every motion as H.264 mp4 (yuv420p) in ``folder/<motion>/<i>.mp4`` ->
    [(path, motion)]. Clip i of a motion depends only on (seed, motion, i), not on ``per_class``."""
    import av  # imported here: only the built-in set writes video

    if per_class < 1 or frames < 2 or fps < 1:
        raise ValueError(f"per_class, fps must be positive and frames at least 2, got {per_class}, {fps}, {frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and at least 16 (H.264 in yuv420p), got {size}")
    written = []
    for label, motion in enumerate(MOTIONS):
        (Path(folder) / motion).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = Path(folder) / motion / f"{i:04d}.mp4"
            clip = motion_clip(motion, frames, size, np.random.default_rng([seed, label, i]))
            with av.open(str(path), "w") as container:
                # a constant quantiser: x264's CRF rate control (mb-tree) encoded the same frames
                # to different bytes from run to run; QP gives the same file for the same seed
                stream = container.add_stream("libx264", rate=fps, options={"qp": "18", "preset": "veryfast"})
                stream.height, stream.width, stream.pix_fmt = size, size, "yuv420p"
                for frame in clip:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())
            written.append((path, motion))
    return written
