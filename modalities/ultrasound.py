"""B-mode ultrasound: readers, scan-sector detection, augmentation and datasets.

- Images (PNG/JPEG/BMP/TIFF) through Pillow, cine loops (mp4/avi/mov/mpeg) through decord's
  ``VideoReader``; every frame becomes grey in [0, 1]. A clip contributes ``frames_per_clip``
  frames spread evenly over its length, each a 2-D training sample; all frames of a clip stay on
  one side of a train/eval split.
- The imaged sector (the fan) is found per source: threshold the brightest projection of its
  frames, close small gaps, keep the largest connected component (MONAI) and take its convex hull.
  The reconstruction loss is kept inside it, so burnt-in text and black borders do not count.
- Augmentation keeps speckle intact: random resized crop, horizontal flip, gain and gamma. No
  blur and no additive noise, which would change the speckle statistics the encoder learns from.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import KeepLargestConnectedComponent
from PIL import Image, UnidentifiedImageError
from skimage.morphology import convex_hull_image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm

from foundations.masking import MaskConfig
from foundations.recipe import DomainData
from modalities.image2d import Image2DConfig, reconstruction_grid
from modalities.samples import (
    DataError,
    Sample,
    check_held_out_classes,
    discover,
    require_classes,
    stratified_split,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CLIP_EXTENSIONS = (".mp4", ".avi", ".mov", ".mpeg", ".mpg")
log = logging.getLogger(__name__)


def read_image(path) -> np.ndarray:
    """Grey image (H, W) float32 in [0, 1]; 8- and 16-bit files, grey or colour."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    scale = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0
    arr = arr.astype(np.float32) / scale
    if arr.ndim == 3:
        arr = arr[..., :3].mean(-1)  # colour overlays (Doppler, annotations) -> luminance
    return arr


def read_clip(path, n_frames: int) -> np.ndarray:
    """``n_frames`` grey frames (T, H, W) float32 in [0, 1], spread evenly over the clip."""
    import decord  # imported here: decord's import is slow and only clips need it

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        total = len(reader)
        if total == 0:
            raise DataError(f"{path}: clip has no frames")
        idx = np.linspace(0, total - 1, min(n_frames, total)).round().astype(int)
        frames = reader.get_batch(list(idx)).asnumpy()  # (T, H, W, 3) uint8
    except RuntimeError as e:  # decord's errors, DECORDError among them, are RuntimeErrors
        raise DataError(f"{path}: cannot read clip ({str(e).splitlines()[0]})") from None
    return frames.astype(np.float32).mean(-1) / 255.0


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


class FrameDataset(Dataset):
    """Grey frames in memory (uint8, short side ``store``), with their sectors and labels.

    Items: {"x": (1, S, S) float, "valid": (1, S, S) float, "y": long}; ``augment`` None gives
    the evaluation view.
    """

    def __init__(self, frames, sectors, labels, groups, classes, size: int, augment: UltrasoundAugment | None):
        self.frames, self.sectors, self.labels, self.groups = frames, sectors, labels, groups
        self.classes, self.size, self.augment = list(classes), size, augment

    def __len__(self):
        return len(self.frames)

    @property
    def targets(self) -> list[int]:
        return [self.classes.index(label) for label in self.labels]

    def subset(self, indices, augment: UltrasoundAugment | None) -> FrameDataset:
        pick = lambda seq: [seq[i] for i in indices]  # noqa: E731
        return FrameDataset(
            pick(self.frames),
            pick(self.sectors),
            pick(self.labels),
            pick(self.groups),
            self.classes,
            self.size,
            augment,
        )

    def __getitem__(self, i):
        image = self.frames[i].float()[None] / 255
        sector = self.sectors[i][None]
        image, sector = self.augment(image, sector) if self.augment else resize_pair(image, sector, self.size)
        return {"x": image, "valid": sector.float(), "y": self.classes.index(self.labels[i])}

    def statistics(self) -> tuple[float, float]:
        """Mean and std of the stored pixels inside the sectors (the adapter's normalisation)."""
        total, sq, n = 0.0, 0.0, 0
        for frame, sector in zip(self.frames, self.sectors, strict=True):
            v = frame[sector].double() / 255
            total, sq, n = total + v.sum().item(), sq + (v**2).sum().item(), n + v.numel()
        mean = total / max(n, 1)
        return mean, max((sq / max(n, 1) - mean**2), 1e-12) ** 0.5


def _store(frame: np.ndarray, short: int) -> torch.Tensor:
    """float (H, W) in [0, 1] -> uint8 with short side ``short`` (never upsampled)."""
    t = torch.from_numpy(frame)[None, None]
    h, w = frame.shape
    f = min(1.0, short / min(h, w))
    if f < 1.0:
        t = F.interpolate(t, size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
    return (t[0, 0] * 255).round().clamp(0, 255).to(torch.uint8)


def load_frames(
    samples: list[Sample],
    size: int,
    patch: int,
    frames_per_clip: int = 8,
    skip_bad: bool = False,
    classes=None,
    progress: bool = True,
):
    """Read every sample into a ``FrameDataset``; returns (dataset, skipped [(path, reason)])."""
    frames, sectors, labels, groups, skipped = [], [], [], [], []
    store = round(size * 1.25)
    for s in tqdm(samples, desc="reading ultrasound", disable=None if progress else True):  # None: TTY only
        try:
            suffix = s.path.suffix.lower()
            stack = read_clip(s.path, frames_per_clip) if suffix in CLIP_EXTENSIONS else read_image(s.path)[None]
            if min(stack.shape[-2:]) < patch:
                raise DataError(
                    f"{s.path}: image is {stack.shape[-2]}x{stack.shape[-1]}, smaller than one {patch}x{patch} patch"
                )
            if not np.isfinite(stack).all():
                raise DataError(f"{s.path}: contains NaN or infinite pixels")
        except DataError as e:
            if not skip_bad:
                raise
            log.warning("skipping bad file: %s", e)
            skipped.append((str(s.path), str(e)))
            continue
        stored = [_store(f, store) for f in stack]
        sector = detect_sector(torch.stack(stored).float() / 255)
        frames += stored
        sectors += [sector] * len(stored)
        labels += [s.label] * len(stored)
        groups += [str(s.path)] * len(stored)
    if not frames:
        raise DataError("no readable ultrasound images or clips among the given files")
    classes = classes or sorted(set(labels))
    return FrameDataset(frames, sectors, labels, groups, classes, size, None), skipped


def phantom_frames(n_per_class: int, size: int, seed: int = 0) -> FrameDataset:
    """The built-in phantom as a ``FrameDataset`` (see ultrasound_phantom.py)."""
    from modalities.ultrasound_phantom import PHANTOM_CLASSES, phantom_dataset

    items = phantom_dataset(n_per_class, round(size * 1.25), seed)
    frames = [(img[0] * 255).round().to(torch.uint8) for img, _, _ in items]
    sectors = [sec[0] for _, sec, _ in items]
    labels = [label for _, _, label in items]
    return FrameDataset(
        frames, sectors, labels, [f"phantom_{i}" for i in range(len(items))], PHANTOM_CLASSES, size, None
    )


# Data cards of the sets this module knows, by folder name (see data_cards/).
KNOWN_CARDS = {"busi_256": "data_cards/busi.md", "pocus_ccby_subset": "data_cards/pocus.md"}


def build_domain(
    data=None,
    eval_data=None,
    image_size: int = 128,
    patch: int = 16,
    frames_per_clip: int = 8,
    phantom_per_class: int = 160,
    mask: MaskConfig | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
) -> DomainData:
    """Datasets, adapter config and data card for the ultrasound recipe.

    With ``data`` None the built-in phantom is used; without ``eval_data`` a stratified split
    (20 %, grouped by source file, fixed seed) of ``data`` is held out.
    """
    exts = IMAGE_EXTENSIONS + CLIP_EXTENSIONS
    skipped = []
    if data is None:
        full = phantom_frames(phantom_per_class, image_size, seed)
        card = "data_cards/ultrasound_phantom.md"
    else:
        samples = discover(data, exts)
        require_classes([s.label for s in samples], data)
        full, skipped = load_frames(samples, image_size, patch, frames_per_clip, skip_bad, progress=progress)
        card = KNOWN_CARDS.get(Path(data).name, f"user data at {data}")
    if eval_data is None:
        train_idx, eval_idx = stratified_split(full.labels, full.groups, 0.2, seed)
        train, held = full.subset(train_idx, None), full.subset(eval_idx, None)
    else:
        train = full
        held, more = load_frames(
            discover(eval_data, exts),
            image_size,
            patch,
            frames_per_clip,
            skip_bad,
            classes=full.classes,
            progress=progress,
        )
        skipped += more
        check_held_out_classes(held.labels, full.classes, eval_data, data)
    mean, std = train.statistics()
    adapter = {
        "name": "ultrasound",
        **asdict(Image2DConfig(1, (patch, patch), (mean,), (std,), (image_size, image_size))),
    }
    info = {
        "train_frames": len(train),
        "eval_frames": len(held),
        "classes": full.classes,
        "skipped_files": len(skipped),
        "skipped": skipped,
    }
    everything = range(len(train))
    return DomainData(
        pretrain=train.subset(everything, UltrasoundAugment(image_size)),
        # milder crops for classification: a small crop can cut the lesion out
        finetune=train.subset(everything, UltrasoundAugment(image_size, scale=(0.8, 1.0))),
        train_eval=train,
        eval=held,
        classes=full.classes,
        adapter=adapter,
        mask=mask or MaskConfig(),
        data_card=card,
        render=reconstruction_grid,
        info=info,
        # Per-patch normalised targets leave mostly speckle, which no model can predict:
        # reconstruct dataset-normalised pixels, whose echogenicity is predictable.
        norm_target=False,
    )
