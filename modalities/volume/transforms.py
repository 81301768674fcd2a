"""MONAI dictionary transforms of volumes: deterministic preparation (orientation, spacing,
foreground crop, intensity preset, padding), random crops for pretraining, slices and
segmentation, the centre view, and the last step into the adapter's batch format."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modalities.volume.io import read_volume

# CT windows in HU (level +- width / 2), scaled to [0, 1]. Abdomen as in UNETR's BTCV preprocessing
# (Hatamizadeh et al. 2022); lung W1500/L-600, brain W80/L40 as in radiology practice.
WINDOWS = {"abdomen": (-175.0, 250.0), "lung": (-1350.0, 150.0), "brain": (0.0, 80.0), "wide": (-1000.0, 1000.0)}
INTENSITY = (*WINDOWS, "mri", "unit")  # mri: z-score of non-zero voxels per channel; unit: min-max


@dataclass(frozen=True)
class PipelineConfig:
    roi: tuple[int, int, int] = (64, 64, 64)
    intensity: str | None = None  # a CT window name, "mri" or "unit"; None: unit for arrays, mri for NIfTI
    spacing: tuple[float, float, float] | None = None  # resample to this spacing (mm); None keeps the file's
    orientation: str | None = "RAS"
    crop_foreground: bool = True

    def __post_init__(self):
        object.__setattr__(self, "roi", tuple(int(r) for r in self.roi))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                raise ValueError(f"PipelineConfig.spacing must be three positive mm values, got {self.spacing}")
        if self.intensity is not None and self.intensity not in INTENSITY:
            raise ValueError(f"PipelineConfig.intensity must be one of {INTENSITY}, got {self.intensity!r}")

    @classmethod
    def saved(cls, preprocessing: dict) -> PipelineConfig:
        """The config an encoder saved as ``preprocessing`` (format 1 also saved "samples", crops
        per volume, which do not concern new inputs)."""
        return cls(**{k: v for k, v in preprocessing.items() if k != "samples"})


def above_minimum(x):
    """Foreground for cropping: anything brighter than the darkest voxel (air in CT, 0 in MRI)."""
    return x > x.min()


def intensity_transform(name: str, keys=("image",)):
    from monai import transforms as T

    if name in WINDOWS:
        lo, hi = WINDOWS[name]
        return T.ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    if name == "mri":
        return T.NormalizeIntensityd(keys, nonzero=True, channel_wise=True)
    if name == "unit":
        return T.ScaleIntensityd(keys, minv=0.0, maxv=1.0)
    raise ValueError(f"intensity preset must be one of {INTENSITY}, got {name!r}")


def pipeline(cfg: PipelineConfig, mode: str, segment: bool = False, seed: int = 0):
    """MONAI dictionary transforms for ``mode``, random ones drawn from a generator seeded with
    ``seed`` (MONAI's own default is fresh OS entropy, which made runs differ):

    - "prepare": deterministic (orientation, spacing, crop to foreground, intensity, pad to roi)
    - "pretrain": a random crop of roi, flips, 90-degree rotations
    - "slices": a random 2-D slice (X, Y) of roi size, flips
    - "segment": a crop centred on label or background with equal odds, flips, rotations

    Datasets draw several crops per volume and epoch (``VolumeDataset.repeat``).
    - "eval": one centre crop (or pad) of roi
    """
    from monai import transforms as T

    keys = ("image", "label") if segment else ("image",)
    interp = ("bilinear", "nearest") if segment else "bilinear"
    augment = [T.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)]
    if mode == "prepare":
        steps = []
        if cfg.orientation:
            steps.append(T.Orientationd(keys, axcodes=cfg.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if cfg.spacing:
            steps.append(T.Spacingd(keys, pixdim=cfg.spacing, mode=interp, dtype=np.float32))
        if cfg.crop_foreground:
            steps.append(T.CropForegroundd(keys, source_key="image", select_fn=above_minimum, allow_smaller=True))
        steps += [intensity_transform(cfg.intensity), T.SpatialPadd(keys, spatial_size=cfg.roi)]
        return T.Compose(steps)
    if mode == "pretrain":
        crop = T.RandSpatialCropd(keys, roi_size=cfg.roi, random_size=False)
        return T.Compose([crop, *augment, T.RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1))]).set_random_state(seed)
    if mode == "slices":
        crop = T.RandSpatialCropd(keys, roi_size=(*cfg.roi[:2], 1), random_size=False)
        return T.Compose([crop, *augment[:2]]).set_random_state(seed)
    if mode == "segment":
        crop = T.RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=cfg.roi, pos=1, neg=1, num_samples=1, allow_smaller=True
        )
        steps = [crop, T.SpatialPadd(keys, cfg.roi), *augment, T.RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1))]
        return T.Compose(steps).set_random_state(seed)
    if mode == "eval":
        return T.ResizeWithPadOrCropd(keys, spatial_size=cfg.roi)
    raise ValueError(f"unknown pipeline mode {mode!r}")


def spacing_mm(volume) -> torch.Tensor:
    """(3,) voxel spacing of a MetaTensor, from its affine (so it follows every transform)."""
    from monai.data.utils import affine_to_spacing

    return affine_to_spacing(volume.affine, r=3).float()


class ToSample:
    """Last step of every pipeline: plain tensors in the batch format of ``VolumeAdapter``,
    ``{"x": {"image", "spacing"}, "y"}`` with y a class index, a label volume or -1 (unlabelled)."""

    def __init__(self, slices: bool = False):
        self.slices = slices

    def __call__(self, d: dict) -> dict:
        spacing = spacing_mm(d["image"])
        image, label = torch.as_tensor(d["image"]).float(), d["label"]
        y = torch.as_tensor(label).long() if isinstance(label, torch.Tensor) else torch.tensor(label)
        if self.slices:
            image, y = image[..., 0], y[..., 0] if y.ndim else y
        return {"x": {"image": image, "spacing": spacing}, "y": y}


def to_batch(paths, cfg: PipelineConfig, select: int | None = None, stack: bool = False) -> dict:
    """NIfTI or .npy files -> an encoder batch {"image": (B, C, *roi), "spacing": (B, 3)}, prepared
    as in training (pass ``PipelineConfig.saved(encoder.info["preprocessing"])``) and centre-cropped."""
    from monai import transforms as T

    centre = T.Compose([pipeline(cfg, "prepare"), pipeline(cfg, "eval")])
    items = [ToSample()(centre({"image": read_volume(p, select, stack), "label": -1})) for p in paths]
    return {k: torch.stack([it["x"][k] for it in items]) for k in ("image", "spacing")}
