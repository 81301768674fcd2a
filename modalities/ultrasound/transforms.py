"""The imaged sector and augmentation of B-mode frames.

- The imaged sector (the fan) is found per source: threshold the brightest projection of its
  frames, close small gaps, keep the largest connected component (MONAI) and take its convex hull.
  The reconstruction loss is kept inside it, so burnt-in text and black borders do not count.
- Augmentation keeps speckle intact: random resized crop, horizontal flip, gain and gamma. No
  blur and no additive noise, which would change the speckle statistics the encoder learns from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import KeepLargestConnectedComponent
from skimage.morphology import convex_hull_image
from torchvision import tv_tensors
from torchvision.transforms import v2


def detect_sector(frames: torch.Tensor, threshold: float = 0.04) -> torch.Tensor:
    """frames: (T, H, W) in [0, 1] -> (H, W) bool mask of the imaged region."""
    bright = frames.amax(0)[None, None]  # (1, 1, H, W): a pixel imaged in any frame
    mask = (bright > threshold).float()
    k = max(3, (min(bright.shape[-2:]) // 40) | 1)  # closing size scales with the image
    mask = F.max_pool2d(mask, k, 1, k // 2)
    mask = -F.max_pool2d(-mask, k, 1, k // 2)  # dilate then erode = closing
    mask = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False)(mask[0])[0]
    if not mask.any():
        return torch.ones(bright.shape[-2:], dtype=torch.bool)
    # A scan sector is convex, and dark (anechoic) lesions on its edge must stay inside it: take the
    # convex hull (scikit-image; MONAI has no hull transform).
    return torch.from_numpy(convex_hull_image(np.asarray(mask) > 0))


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
