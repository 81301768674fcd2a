"""Posed-image scenes: NeRF-synthetic / Blender (``transforms_{train,val,test}.json``; Mildenhall et
al., "NeRF", ECCV 2020) and instant-ngp (``transforms.json``; Müller et al., "Instant Neural Graphics
Primitives", SIGGRAPH 2022).

Both keep the NeRF code's OpenGL camera convention: a camera looks down its -z axis, y up, x right,
and a frame's ``transform_matrix`` maps camera to world coordinates. Pixel (row, col) is the square
whose centre lies at (col + 0.5, row + 0.5) from the image's top-left corner.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modalities.common import DataError

log = logging.getLogger(__name__)

BACKGROUNDS = {"white": 1.0, "black": 0.0}
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = ("", ".png", ".jpg", ".jpeg")  # tried in turn after a frame's file_path (NeRF-synthetic has none)
BLENDER_BBOX = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))  # every NeRF-synthetic object fits in this cube
BLENDER_NEAR_FAR = (2.0, 6.0)  # the NeRF code's bounds for the synthetic scenes
NGP_SCALE, NGP_OFFSET = 0.33, (0.5, 0.5, 0.5)  # instant-ngp's defaults (NERF_SCALE, its nerf_loader)
NGP_MAX_AABB_SCALE = 128  # instant-ngp caps aabb_scale at 2^(cascades - 1)
DISTORTION = ("k1", "k2", "p1", "p2")
NEAR_FRACTION = 0.05  # instant-ngp scenes: rays start this fraction of the box's diagonal from the camera


@dataclass(frozen=True)
class SceneOptions:
    """How a scene's images are read."""

    background: str = field(
        default="white",
        metadata={
            "choices": tuple(BACKGROUNDS),
            "help": "colour that RGBA images are composited on, and that the renderer shows behind the grid",
        },
    )
    downscale: int = field(
        default=1, metadata={"help": "shrink the images by this integer factor (area average); intrinsics follow"}
    )
    splits: tuple[str, ...] = field(
        default=("train",), metadata={"help": "Blender scenes: which transforms_{split}.json files to read"}
    )

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.downscale < 1:
            raise ValueError(f"downscale must be a positive integer, got {self.downscale}")
        if not self.splits or not set(self.splits) <= set(SPLITS):
            raise ValueError(f"splits must be some of {', '.join(SPLITS)}, got {self.splits}")


@dataclass(frozen=True, eq=False)
class Scene:
    """Posed views of one scene, all of one size."""

    images: torch.Tensor  # (N, H, W, 3) float32 in [0, 1], alpha already composited on `background`
    c2w: torch.Tensor  # (N, 4, 4) float32 camera-to-world, OpenGL convention
    intrinsics: torch.Tensor  # (N, 4) float32 fx, fy, cx, cy in pixels of `images`
    bbox: torch.Tensor  # (2, 3) float32 world min and max corners of the scene's box
    near: float  # rays start no nearer than this to their camera (world units)
    far: float  # ... and end no farther
    background: float  # grey level behind the scene: 1.0 white, 0.0 black
    files: tuple[str, ...] = ()  # the image of each view, for messages

    def __post_init__(self):
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or n == 0:
            raise ValueError(f"images must be (N, H, W, 3) with N >= 1, got shape {tuple(self.images.shape)}")
        if self.c2w.shape != (n, 4, 4):
            raise ValueError(f"c2w must be ({n}, 4, 4) like the images, got shape {tuple(self.c2w.shape)}")
        if self.intrinsics.shape != (n, 4):
            raise ValueError(f"intrinsics must be ({n}, 4) like the images, got shape {tuple(self.intrinsics.shape)}")
        if self.bbox.shape != (2, 3) or not bool((self.bbox[1] > self.bbox[0]).all()):
            raise ValueError(f"bbox must be (2, 3) rows min < max, got {self.bbox.tolist()}")
        if not 0 <= self.near < self.far:
            raise ValueError(f"near and far must satisfy 0 <= near < far, got near={self.near}, far={self.far}")


def pixel_rays(
    c2w: torch.Tensor, intrinsics: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays through image positions: origins (B, 3) and unit directions (B, 3).

    c2w (B, 4, 4), intrinsics (B, 4) as fx, fy, cx, cy, rows and cols (B,) in pixels from the
    top-left corner (a pixel's centre at +0.5). OpenGL camera: image x to the right is camera +x,
    image rows downwards are camera -y, the camera looks down -z.
    """
    fx, fy, cx, cy = intrinsics.unbind(-1)
    d = torch.stack([(cols - cx) / fx, -(rows - cy) / fy, -torch.ones_like(cols)], -1)  # (B, 3) camera frame
    d = (c2w[:, :3, :3] @ d[..., None])[..., 0]  # (B, 3) world frame
    return c2w[:, :3, 3], F.normalize(d, dim=-1)


def read_json(path: Path) -> dict:
    """A transforms file: a JSON object with a non-empty ``frames`` list."""
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (expected JSON)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise DataError(f"{path}: no 'frames' list (expected a NeRF transforms file)")
    return meta


def read_image(path: Path, background: float) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]; an alpha channel is composited on the grey level ``background``."""
    try:
        with Image.open(path) as im:
            alpha = "A" in im.getbands() or "transparency" in im.info
            array = np.asarray(im.convert("RGBA" if alpha else "RGB"), dtype=np.float32) / 255
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"{path}: not a readable image ({e})") from None
    if alpha:
        array = array[..., :3] * array[..., 3:] + background * (1 - array[..., 3:])
    return array


def shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``factor`` x ``factor`` blocks; a remainder at the right and bottom is dropped."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean((1, 3))  # (h, w, 3)


def frame_file(frame, path: Path, index: int) -> str:
    if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
        raise DataError(f"{path}: frame {index} has no 'file_path'")
    return frame["file_path"]


def find_image(root: Path, file_path: str) -> Path | None:
    base = root / file_path
    return next((p for s in IMAGE_SUFFIXES if (p := base.with_name(base.name + s)).is_file()), None)


def frame_pose(frame: dict, path: Path, index: int) -> np.ndarray:
    try:
        pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: frame {index} has no numeric 'transform_matrix'") from None
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DataError(f"{path}: frame {index}: transform_matrix must be a finite 4x4 matrix, got shape {pose.shape}")
    return pose


def number(meta: dict, key: str, path: Path) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{path}: '{key}' must be a number, got {value!r}")
    return float(value)


class Views:
    """Images, poses and intrinsics gathered frame by frame; every image must have the first one's size."""

    def __init__(self, options: SceneOptions):
        self.options = options
        self.images, self.poses, self.intrinsics, self.files = [], [], [], []

    def read(self, file: Path) -> np.ndarray:
        image = read_image(file, BACKGROUNDS[self.options.background])
        if self.images and image.shape != self.images[0].shape:
            (h, w), (h0, w0) = image.shape[:2], self.images[0].shape[:2]
            raise DataError(f"{file}: {w}x{h} pixels where {self.files[0]} has {w0}x{h0}; one size per scene")
        return image

    def add(self, file: Path, image: np.ndarray, pose: np.ndarray, intrinsics: tuple[float, ...]) -> None:
        self.images.append(image)
        self.poses.append(pose)
        self.intrinsics.append(intrinsics)
        self.files.append(str(file))

    def scene(self, bbox, near: float, far: float) -> Scene:
        d = self.options.downscale
        h, w = self.images[0].shape[:2]
        if h < d or w < d:
            raise DataError(f"{self.files[0]}: {w}x{h} pixels, too small to downscale by {d}")
        images = np.stack([shrink(im, d) if d > 1 else im for im in self.images])  # (N, H, W, 3)
        return Scene(
            images=torch.from_numpy(images),
            c2w=torch.tensor(np.stack(self.poses), dtype=torch.float32),
            intrinsics=torch.tensor(self.intrinsics, dtype=torch.float32) / d,  # pixels d times larger
            bbox=torch.tensor(bbox, dtype=torch.float32),
            near=near,
            far=far,
            background=BACKGROUNDS[self.options.background],
            files=tuple(self.files),
        )


def read_blender(scene_dir, options: SceneOptions = SceneOptions()) -> Scene:
    """A NeRF-synthetic / Blender scene: ``transforms_{split}.json`` for each of ``options.splits``
    (``camera_angle_x``, frames of ``file_path`` without extension and a 4x4 ``transform_matrix``),
    the RGBA images composited on the background. The box is the fixed [-1.5, 1.5]^3, near/far 2 and 6.
    A frame whose image is missing is an error naming the file."""
    root = Path(scene_dir)
    views = Views(options)
    for split in options.splits:
        path = root / f"transforms_{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (a Blender scene has transforms_{{train,val,test}}.json)")
        meta = read_json(path)
        if "camera_angle_x" not in meta:
            raise DataError(f"{path}: no 'camera_angle_x' (a Blender scene's field of view)")
        for i, frame in enumerate(meta["frames"]):
            name = frame_file(frame, path, i)
            file = find_image(root, name)
            if file is None:
                raise FileNotFoundError(
                    f"{root / name}: image of frame {i} in {path} not found (also tried .png, .jpg)"
                )
            pose = frame_pose(frame, path, i)
            image = views.read(file)
            h, w = image.shape[:2]
            focal = focal_length(meta, "x", w, path)
            views.add(file, image, pose, (focal, focal, w / 2, h / 2))
    return views.scene(BLENDER_BBOX, *BLENDER_NEAR_FAR)


def ngp_bbox(meta: dict, path: Path) -> np.ndarray:
    """The world box instant-ngp renders: it maps a world point p to p * scale + offset (before
    cycling the axes: nerf_matrix_to_ngp) and keeps the cube of side aabb_scale centred on 0.5."""
    aabb = min(number(meta, "aabb_scale", path) if "aabb_scale" in meta else 1.0, NGP_MAX_AABB_SCALE)
    scale = number(meta, "scale", path) if "scale" in meta else NGP_SCALE
    try:
        offset = np.asarray(meta.get("offset", NGP_OFFSET), dtype=np.float64)
    except (TypeError, ValueError):
        offset = np.array([math.nan])  # refused below
    if aabb <= 0 or scale <= 0 or offset.shape != (3,) or not np.isfinite(offset).all():
        raise DataError(
            f"{path}: aabb_scale and scale must be positive and offset 3 numbers, got {aabb}, {scale}, {offset}"
        )
    return np.stack([(0.5 - aabb / 2 - offset) / scale, (0.5 + aabb / 2 - offset) / scale])  # (2, 3)


def camera_bbox(poses: np.ndarray) -> np.ndarray:
    """A cube for captures without instant-ngp's box: centred on the point nearest to every camera's
    optical axis (least squares), half as wide as the median camera distance to it. A heuristic for
    cameras that circle an object; pass aabb_scale/scale/offset for anything else."""
    origins, axes = poses[:, :3, 3], -poses[:, :3, 2]  # (N, 3) each: OpenGL cameras look down -z
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    project = np.eye(3) - axes[:, :, None] * axes[:, None, :]  # (N, 3, 3) onto the plane across each axis
    centre = np.linalg.lstsq(project.sum(0), (project @ origins[:, :, None]).sum(0)[:, 0], rcond=None)[0]
    half = 0.5 * float(np.median(np.linalg.norm(origins - centre, axis=1)))
    return np.stack([centre - half, centre + half])  # (2, 3)


def focal_length(meta: dict, axis: str, pixels: int, path: Path) -> float | None:
    """The focal length along ``axis`` ("x" or "y") in pixels: ``fl_<axis>``, else from the field of
    view ``camera_angle_<axis>`` over ``pixels``; None when the file gives neither."""
    if f"fl_{axis}" in meta:
        value = number(meta, f"fl_{axis}", path)
        if value <= 0:
            raise DataError(f"{path}: 'fl_{axis}' must be a positive number of pixels, got {value}")
        return value
    if f"camera_angle_{axis}" in meta:
        angle = number(meta, f"camera_angle_{axis}", path)
        if not 0 < angle < math.pi:
            raise DataError(f"{path}: 'camera_angle_{axis}' must be in (0, pi) radians, got {angle}")
        return 0.5 * pixels / math.tan(0.5 * angle)
    return None


def read_instant_ngp(scene_dir, options: SceneOptions = SceneOptions()) -> Scene:
    """An instant-ngp scene: ``transforms.json`` with ``fl_x``/``fl_y`` (or ``camera_angle_x``/``_y``),
    ``cx``, ``cy``, ``w``, ``h`` at the top or per frame. Distortion (k1, k2, p1, p2) is ignored with
    one log line; frames whose image file is missing are skipped and counted in one log line.

    The box comes from ``aabb_scale``/``scale``/``offset`` when any is given (instant-ngp's defaults
    for the others), otherwise from the cameras (``camera_bbox``). Rays run from 5 % of the box's
    diagonal to the farthest corner of the box."""
    path = Path(scene_dir) / "transforms.json"
    meta = read_json(path)
    views, missing = Views(options), []
    distortion = {k: meta.get(k) for k in DISTORTION if meta.get(k)}
    for i, frame in enumerate(meta["frames"]):
        name = frame_file(frame, path, i)
        file = find_image(path.parent, name)
        if file is None:
            missing.append(name)
            continue
        pose = frame_pose(frame, path, i)
        merged = {**meta, **frame}  # a frame's own intrinsics override the file's
        distortion |= {k: merged[k] for k in DISTORTION if merged.get(k)}
        image = views.read(file)
        h, w = image.shape[:2]
        if "w" in merged and "h" in merged and (merged["w"], merged["h"]) != (w, h):
            raise DataError(f"{file}: {w}x{h} pixels where {path} says {merged['w']}x{merged['h']}")
        fx = focal_length(merged, "x", w, path)
        if fx is None:
            raise DataError(f"{path}: frame {i}: no focal length (fl_x or camera_angle_x)")
        fy = focal_length(merged, "y", h, path) or fx
        cx = number(merged, "cx", path) if "cx" in merged else w / 2
        cy = number(merged, "cy", path) if "cy" in merged else h / 2
        views.add(file, image, pose, (fx, fy, cx, cy))
    if missing:
        log.warning(
            "%s: %d of %d frames skipped, their image is missing (first: %s)",
            path,
            len(missing),
            len(meta["frames"]),
            missing[0],
        )
    if not views.images:
        raise DataError(f"{path}: none of the {len(meta['frames'])} frames has an image file (first: {missing[0]})")
    if distortion:
        log.warning("%s: lens distortion %s ignored (pinhole cameras assumed)", path, distortion)
    poses = np.stack(views.poses)
    bbox = ngp_bbox(meta, path) if {"aabb_scale", "scale", "offset"} & meta.keys() else camera_bbox(poses)
    corners = np.stack(np.meshgrid(*bbox.T, indexing="ij"), -1).reshape(-1, 3)  # (8, 3)
    far = float(np.linalg.norm(poses[:, None, :3, 3] - corners[None], axis=-1).max())
    return views.scene(bbox, NEAR_FRACTION * float(np.linalg.norm(bbox[1] - bbox[0])), far)


def read_scene(scene_dir, options: SceneOptions = SceneOptions()) -> Scene:
    """The scene in ``scene_dir``: instant-ngp when it holds ``transforms.json``, else Blender."""
    root = Path(scene_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    if (root / "transforms.json").is_file():
        return read_instant_ngp(root, options)
    if any((root / f"transforms_{s}.json").is_file() for s in SPLITS):
        return read_blender(root, options)
    raise FileNotFoundError(f"{root}: no transforms.json (instant-ngp) or transforms_train.json (Blender) in it")
