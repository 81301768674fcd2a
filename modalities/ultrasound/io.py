"""Reading ultrasound: images (PNG/JPEG/BMP/TIFF) through Pillow, cine loops (mp4/avi/mov/mpeg)
through the video modality's decord reader; every frame becomes grey in [0, 1]."""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from modalities.common import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CLIP_EXTENSIONS = (".mp4", ".avi", ".mov", ".mpeg", ".mpg")
MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS: a quarter GiB as 24-bit colour


def read_image(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Grey image (H, W) float32 in [0, 1]; 8- and 16-bit files, grey or colour. An image of more
    than ``max_pixels`` pixels is refused from its header, before any pixel is decoded."""
    # Pillow's own guard (Image.MAX_IMAGE_PIXELS) only warns up to twice its limit and then names
    # the doubled figure; it is lifted while the exact check below, on the header, takes its place
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:  # parses the header; pixels are decoded by load()
            width, height = im.size
            if width * height <= max_pixels:
                im.load()
                arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if width * height > max_pixels:
        raise DataError(
            f"{path}: {width}x{height} image, {width * height:,} pixels, over the --max-pixels limit of {max_pixels:,}"
        )
    scale = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0
    arr = arr.astype(np.float32) / scale
    if arr.ndim == 3:
        arr = arr[..., :3].mean(-1)  # colour overlays (Doppler, annotations) -> luminance
    return arr


def read_clip(path, n_frames: int) -> np.ndarray:
    """``n_frames`` grey frames (T, H, W) float32 in [0, 1], spread evenly over the clip, read as the
    video modality reads (decord, MPEG program streams in order, errors naming the file)."""
    from modalities.video.io import frame_count
    from modalities.video.io import read_clip as read_frames

    total = frame_count(path)
    idx = np.linspace(0, total - 1, min(n_frames, total)).round().astype(int)
    return read_frames(path, idx.tolist()).numpy().astype(np.float32).mean(-1) / 255.0
