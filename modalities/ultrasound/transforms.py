"""The imaged sector and augmentation of B-mode frames.

- The imaged region is found per source (``sector_geometry``): the brightest projection of its
  frames, thresholded and closed, without small isolated blobs (text, markers). A region as wide at
  its top as anywhere is a linear-array rectangle, kept whole down to where its signal fades out;
  anything narrower at the top is a curvilinear or phased-array fan, kept as its convex hull. The
  reconstruction loss is kept inside it, so burnt-in text and black borders do not count, while
  dark tissue (shadowing, deep fall-off) does, also where it touches the frame's edge.
- Augmentation keeps speckle intact: random resized crop, horizontal flip, gain and gamma. No
  blur and no additive noise, which would change the speckle statistics the encoder learns from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import label
from skimage.morphology import convex_hull_image
from torchvision import tv_tensors
from torchvision.transforms import v2

LINEAR_TOP_WIDTH = 0.85  # top rows at least this share of the region's width: a linear (rectangular) frame
MIN_PART = 0.05  # a bright part smaller than this share of the largest one is text or a marker


class Sector(NamedTuple):
    """The imaged region of a source: ``mask`` (H, W) bool, ``geometry`` "linear" or "fan", and
    ``top_width``, the width of the region's top rows over its full width (what decided it)."""

    mask: torch.Tensor
    geometry: Literal["linear", "fan"]
    top_width: float


def _bright_parts(bright: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """(H, W) brightest projection -> (bool (H, W) of the bright parts, closing size k)."""
    mask = (bright > threshold).float()[None, None]
    k = max(3, (min(bright.shape) // 40) | 1)  # closing size scales with the image
    mask = F.max_pool2d(mask, k, 1, k // 2)
    mask = -F.max_pool2d(-mask, k, 1, k // 2)  # dilate then erode = closing
    # Not only the largest connected part: a dark lesion or shadow across the whole width splits the
    # tissue into two large parts. Text and markers are far smaller than the image (scikit-image's
    # labelling, sized in one bincount; MONAI's connected-component transforms keep only the largest).
    parts = label(mask[0, 0].numpy() > 0, connectivity=1)
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    keep = sizes >= MIN_PART * sizes.max()
    keep[0] = False
    return torch.from_numpy(keep[parts]), k


def _linear_region(bright_parts: torch.Tensor, k: int) -> torch.Tensor:
    """The rectangle of a linear frame: each row spans from the leftmost to the rightmost bright
    column of itself and every row above it (the region never narrows with depth, so a dark lesion,
    shadow or fall-off touching a side stays in, while a black top corner, a trapezoid's, stays out),
    down to the lowest bright row; if the bright part fades out there raggedly (fewer than half of the
    last k rows bright: deep fall-off) rather than ending on a clean edge (a black border strip
    below the image), it goes on to the frame's bottom."""
    h, w = bright_parts.shape
    cols = torch.arange(w)
    left = torch.where(bright_parts, cols, w).amin(1).cummin(0).values
    right = torch.where(bright_parts, cols, -1).amax(1).cummax(0).values
    region = (cols >= left[:, None]) & (cols <= right[:, None])  # empty above the first bright row
    bottom = int(bright_parts.any(1).nonzero().max()) + 1
    edge = region[max(0, bottom - k) : bottom]
    if bright_parts[max(0, bottom - k) : bottom][edge].float().mean() >= 0.5:
        region[bottom:] = False
    return region


def sector_geometry(frames: torch.Tensor, threshold: float = 0.04) -> Sector:
    """frames: (T, H, W) in [0, 1] -> the imaged region, its geometry and the measure that decided it.

    The rule: a linear array images a rectangle, whose top rows (skin, near field) are imaged across
    its whole width; a curvilinear or phased array images a fan that widens with depth, with black
    corners beside its apex or top arc. So the width of the bright region's top k rows (k the closing
    size, about 3 % of the image) over the region's full width decides: at least ``LINEAR_TOP_WIDTH``
    is linear, less is a fan. Dark tissue seldom reaches the top rows and then narrows them little,
    while a fan's black corners take 17-70 % of them. On the shared sample data: the 10 linear-probe
    POCUS sources, the 3 convex ones cropped inside their fan, and 513 of BUSI's 520 images are linear
    (top width 0.85-1, the lowest being BUSI images with one small black corner, which the
    rectangle's rule leaves out); the other 39 convex sources (0.31-0.83) and 7 BUSI images cropped
    from trapezoids (0.71-0.83) are fans. A comparison of widths rather than of the hull's fill of
    its bounding box: a rectangle with dark tissue cut out of two corners fills it no more than a
    cropped fan does, but its top stays wide.

    A linear frame's mask is the rectangle (see ``_linear_region``): dark tissue on its border stays
    in the loss. A fan's is the convex hull of the bright region (scikit-image; MONAI has no hull),
    which keeps dark lesions inside the fan, as before. Nothing bright: the whole frame, linear.
    """
    bright = frames.amax(0)  # a pixel imaged in any frame
    parts, k = _bright_parts(bright, threshold)
    if not parts.any():
        return Sector(torch.ones(bright.shape, dtype=torch.bool), "linear", 1.0)
    rows, cols = parts.any(1).nonzero()[:, 0], parts.any(0).nonzero()[:, 0]
    top = parts[rows[0] : rows[0] + k].any(0).nonzero()[:, 0]
    top_width = (top[-1] - top[0] + 1).item() / (cols[-1] - cols[0] + 1).item()
    if top_width >= LINEAR_TOP_WIDTH:
        return Sector(_linear_region(parts, k), "linear", top_width)
    return Sector(torch.from_numpy(convex_hull_image(parts.numpy())), "fan", top_width)


def detect_sector(frames: torch.Tensor, threshold: float = 0.04) -> torch.Tensor:
    """frames: (T, H, W) in [0, 1] -> (H, W) bool mask of the imaged region (``sector_geometry``)."""
    return sector_geometry(frames, threshold).mask


@dataclass(frozen=True)
class UltrasoundAugment:
    size: int = 128
    scale: tuple[float, float] = (0.5, 1.0)
    gain: tuple[float, float] = (0.8, 1.2)
    gamma: tuple[float, float] = (0.7, 1.4)

    def __call__(self, image: torch.Tensor, sector: torch.Tensor):
        """image, sector: (1, H, W) -> the same at (1, size, size)."""
        crop = v2.Compose(
            [v2.RandomResizedCrop(self.size, scale=self.scale, antialias=True), v2.RandomHorizontalFlip()]
        )
        image, sector = crop(tv_tensors.Image(image), tv_tensors.Mask(sector))
        gain = torch.empty(1).uniform_(*self.gain)
        gamma = torch.empty(1).uniform_(*self.gamma)
        image = (image.clamp(0, 1) ** gamma * gain).clamp(0, 1)
        return image.as_subclass(torch.Tensor), sector.as_subclass(torch.Tensor)


def resize_pair(image: torch.Tensor, sector: torch.Tensor, size: int):
    """The evaluation view: the whole frame resized to (size, size)."""
    image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    sector = F.interpolate(sector[None].float(), size=(size, size), mode="nearest")[0]
    return image.clamp(0, 1), sector
