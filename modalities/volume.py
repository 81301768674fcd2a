"""3-D medical volumes (CT, MRI) and 2-D slices through one shared encoder.

Reading: NIfTI through nibabel (header and voxel checks, explicit 4-D handling) and ``.npy``/
``.npz`` arrays (MedMNIST-3D style ``{split}_images`` N x D x H x W). Preprocessing: MONAI
dictionary transforms (``pipeline``), cached by ``monai.data.CacheDataset`` up to the first random
transform.

Tokens: non-overlapping ``p0 x p1 x p2`` patches (anisotropic allowed, e.g. 16x16x4 for thick
slices) embedded by a strided Conv3d. Coordinates are the physical patch centres in millimetres,
``(index + 0.5) * patch * spacing``, so volumes of different voxel spacing share one positional
frame. A batch is ``{"image": (B, C, X, Y, Z), "spacing": (B, 3)}`` in array axis order (RAS after
``Orientationd``).

2-D images ``{"image": (B, C, X, Y), ...}`` are one-slice volumes extended through the patch depth
(in the spirit of Uni4Eye, Cai et al. 2022): their stem is the same Conv3d kernel summed over its
last axis, which is exactly the 3-D embedding of the slice repeated ``p2`` times. The transformer
and every weight are shared, and a 2-D batch uses every parameter, so DDP sees no unused ones.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from foundations.adapter import Adapter, Targets, Tokens
from foundations.losses import normalize_target
from modalities.samples import DataError

log = logging.getLogger(__name__)
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
ARRAY_EXTENSIONS = (".npy", ".npz")
EXTENSIONS = NIFTI_EXTENSIONS + ARRAY_EXTENSIONS


# ----------------------------------------------------------------------------------------- adapter
@dataclass(frozen=True)
class VolumeConfig:
    channels: int = 1
    patch: tuple[int, int, int] = (16, 16, 16)  # voxels per patch along the array axes
    roi: tuple[int, int, int] = (64, 64, 64)  # crop size it was trained at; any multiple of patch works

    def __post_init__(self):
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
        object.__setattr__(self, "roi", tuple(int(r) for r in self.roi))
        if self.channels < 1:
            raise ValueError(f"VolumeConfig.channels must be >= 1, got {self.channels}")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"VolumeConfig.patch must be three positive ints, got {self.patch}")
        if len(self.roi) != 3 or any(r % p for r, p in zip(self.roi, self.patch, strict=True)):
            raise ValueError(f"VolumeConfig.roi {self.roi} must be three multiples of the patch {self.patch}")


class VolumeAdapter(Adapter):
    name = "volume"
    coord_dim = 3
    pos_embed = "sincos"

    def __init__(self, config: VolumeConfig, dim: int):
        super().__init__(config, dim)
        self.target_dim = math.prod(config.patch) * config.channels
        self.proj = nn.Conv3d(config.channels, dim, kernel_size=config.patch, stride=config.patch)
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))  # as a linear layer (MAE)
        nn.init.zeros_(self.proj.bias)

    def _image(self, x: dict) -> torch.Tensor:
        image = x["image"]
        C, patch = self.config.channels, self.config.patch
        if image.ndim not in (4, 5) or image.shape[1] != C:
            raise ValueError(f"expected volumes (B, {C}, X, Y, Z) or slices (B, {C}, X, Y), got {tuple(image.shape)}")
        size = image.shape[2:]
        if any(s % p for s, p in zip(size, patch, strict=False)):
            raise ValueError(f"input size {tuple(size)} is not a multiple of the patch {patch[: len(size)]}")
        return image

    def embed(self, x: dict) -> Tokens:
        image = self._image(x)
        if image.ndim == 5:
            t = self.proj(image)  # (B, D, gx, gy, gz)
        else:  # a slice = a one-slice volume repeated through the patch depth: the kernel summed over z
            t = F.conv2d(image, self.proj.weight.sum(-1), self.proj.bias, stride=self.config.patch[:2])[..., None]
        B, _, *grid = t.shape
        index = torch.stack(torch.meshgrid(*(torch.arange(g, device=t.device) for g in grid), indexing="ij"), -1)
        patch_mm = torch.tensor(self.config.patch, device=t.device) * x["spacing"].to(t.device).float()  # (B, 3)
        coords = (index.view(1, -1, 3) + 0.5) * patch_mm[:, None]  # (B, N, 3) patch centres in mm
        return Tokens(t.flatten(2).transpose(1, 2), coords)

    def patchify(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> (B, N, p0*p1*p2*C); slices are repeated through the patch depth."""
        if image.ndim == 4:
            image = image[..., None].expand(*image.shape, self.config.patch[2])
        p, q, r = self.config.patch
        return rearrange(image, "b c (x p) (y q) (z r) -> b (x y z) (p q r c)", p=p, q=q, r=r)

    def targets(self, x: dict, valid: torch.Tensor | None = None) -> Targets:
        values = self.patchify(self._image(x))
        return Targets(values, None if valid is None else self.patchify(valid.to(values.dtype)))

    def unpatchify(self, values: torch.Tensor, like=None) -> torch.Tensor:
        """(B, N, p0*p1*p2*C) -> (B, C, X, Y, Z) of the size of ``like`` (a batch, or a spatial size;
        default: the config's roi). For a batch of slices the patch depth is averaged away."""
        image = like["image"] if isinstance(like, dict) else None
        size = tuple(image.shape[2:]) if image is not None else tuple(like or self.config.roi)
        p, q, r = self.config.patch
        x, y = size[0] // p, size[1] // q
        z = size[2] // r if len(size) == 3 else 1
        out = rearrange(values, "b (x y z) (p q r c) -> b c (x p) (y q) (z r)", x=x, y=y, z=z, p=p, q=q, r=r)
        return out.mean(-1) if len(size) == 2 else out

    def denormalize(self, image: torch.Tensor) -> torch.Tensor:
        return image  # intensities are normalised by the MONAI pipeline, not by the adapter

    def baselines(self, target, weights=None, norm_target: bool = False) -> dict[str, torch.Tensor]:
        """``batch_mean``: every voxel at the mean of the hidden voxels (zero in per-patch
        normalised units); ``patch_mean``: each patch flat at its own true mean (an oracle)."""
        zero = torch.zeros_like(target)
        if norm_target:
            return {"batch_mean": zero, "patch_mean": zero}
        _, mean, _ = normalize_target(target, weights)  # (B, M, 1)
        return {"batch_mean": zero + target.mean(), "patch_mean": mean.expand_as(target)}


# ----------------------------------------------------------------------------------------- reading
def has_extension(path, extensions=EXTENSIONS) -> bool:
    return str(path).lower().endswith(tuple(extensions))


def check_voxels(array: np.ndarray, source) -> np.ndarray:
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise DataError(f"{source}: {bad} NaN or infinite voxels")
    return array


def read_nifti(path, select: int | None = None, stack: bool = False):
    """(C, X, Y, Z) float32 array and its 4x4 affine from a NIfTI file.

    A 4-D file (DWI, fMRI) needs an explicit choice: ``select`` one volume (index along the 4th
    axis) or ``stack`` all of them as channels. A trailing axis of length 1 is dropped.

    nibabel is used directly rather than through MONAI's ``LoadImage``: the checks below need the
    raw header (nibabel's load replaces zero or negative spacing silently) and the 4-D decision
    must come before any channel handling; MONAI takes over from the MetaTensor this returns.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(path)
        shape = img.shape
        with nib.openers.ImageOpener(path) as f:  # nibabel's load "fixes" zero or negative spacing: read it raw
            raw = type(img.header).from_fileobj(f, check=False)
        zooms = [float(z) for z in raw["pixdim"][1:4]] + np.linalg.norm(img.affine[:3, :3], axis=0).tolist()
    except Exception as e:  # nibabel raises many types for bad headers
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or shape[2] == 1:
        raise DataError(f"{path}: a 2-D image (shape {img.shape}) where a 3-D volume is expected")
    if len(shape) > 4:
        raise DataError(f"{path}: {len(shape)}-D data (shape {img.shape}) is not supported")
    if len(shape) == 4 and select is None and not stack:
        raise DataError(
            f"{path}: a 4-D file ({shape[3]} volumes, shape {img.shape}); choose one with --volume-4d N "
            "or stack them as channels with --volume-4d stack"
        )
    if len(shape) == 4 and select is not None and not -shape[3] <= select < shape[3]:
        raise DataError(f"{path}: volume {select} selected, but the file has {shape[3]} volumes")
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{path}: voxel spacing {tuple(zooms[:3])} in the header must be positive")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3] + (-1,))
    except Exception as e:  # truncated or corrupt data block (EOFError, zlib.error, ValueError, ...)
        raise DataError(f"{path}: cannot read the voxel data ({type(e).__name__}: {e})") from e
    data = np.moveaxis(data, -1, 0)  # (C, X, Y, Z)
    if len(shape) == 4 and not stack:
        data = data[select : select + 1 if select != -1 else None]
    return check_voxels(data, path), img.affine


def to_meta(array: np.ndarray, affine, source):
    """A MONAI MetaTensor (what MONAI's spatial transforms need: the affine travels with it)."""
    from monai.data import MetaTensor

    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array)),
        affine=torch.as_tensor(affine, dtype=torch.float64),
        meta={"filename_or_obj": str(source)},
    )


def read_volume(path, select: int | None = None, stack: bool = False):
    """A (C, X, Y, Z) MetaTensor from a NIfTI file or a single ``.npy`` array (1 mm spacing)."""
    path = Path(path)
    if has_extension(path, NIFTI_EXTENSIONS):
        array, affine = read_nifti(path, select, stack)
    elif path.name.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False).astype(np.float32)
        except Exception as e:
            raise DataError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise DataError(f"{path}: expected a 3-D array (X, Y, Z) or (C, X, Y, Z), got shape {array.shape}")
        array, affine = check_voxels(array, path), np.eye(4)
    else:
        raise DataError(f"{path}: unsupported volume format; known: {', '.join(EXTENSIONS)}")
    return to_meta(array, affine, path)


def read_label(path, image, n_classes: int):
    """A segmentation label volume (1, X, Y, Z), from a file or an (X, Y, Z) array, that matches
    ``image`` and holds only classes 0 .. n_classes - 1."""
    label = (
        to_meta(path[None].astype(np.float32), image.affine, "label array")
        if isinstance(path, np.ndarray)
        else read_volume(path)
    )
    if label.shape[1:] != image.shape[1:] or label.shape[0] != 1:
        raise DataError(f"{path}: label shape {tuple(label.shape[1:])} differs from its image {tuple(image.shape[1:])}")
    values = torch.unique(label)
    bad = [v.item() for v in values if v != v.round() or not 0 <= v < n_classes]
    if bad:
        raise DataError(f"{path}: label values {bad[:5]} outside the class set 0..{n_classes - 1}")
    return label


# ------------------------------------------------------------------------------------- transforms
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
    samples: int = 2  # random crops per volume and epoch

    def __post_init__(self):
        object.__setattr__(self, "roi", tuple(int(r) for r in self.roi))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                raise ValueError(f"PipelineConfig.spacing must be three positive mm values, got {self.spacing}")
        if self.intensity is not None and self.intensity not in INTENSITY:
            raise ValueError(f"PipelineConfig.intensity must be one of {INTENSITY}, got {self.intensity!r}")


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


def pipeline(cfg: PipelineConfig, mode: str, segment: bool = False):
    """MONAI dictionary transforms for ``mode``:

    - "prepare": deterministic (orientation, spacing, crop to foreground, intensity, pad to roi)
    - "pretrain": a random crop of roi, flips, 90-degree rotations
    - "slices": a random 2-D slice (X, Y) of roi size, flips
    - "segment": a crop centred on label or background with equal odds, flips, rotations

    Datasets draw ``samples`` crops per volume and epoch (``VolumeDataset.repeat``).
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
        return T.Compose([crop, *augment, T.RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1))])
    if mode == "slices":
        crop = T.RandSpatialCropd(keys, roi_size=(*cfg.roi[:2], 1), random_size=False)
        return T.Compose([crop, *augment[:2]])
    if mode == "segment":
        crop = T.RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=cfg.roi, pos=1, neg=1, num_samples=1, allow_smaller=True
        )
        return T.Compose(
            [crop, T.SpatialPadd(keys, cfg.roi), *augment, T.RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1))]
        )
    if mode == "eval":
        return T.ResizeWithPadOrCropd(keys, spatial_size=cfg.roi)
    raise ValueError(f"unknown pipeline mode {mode!r}")


# ---------------------------------------------------------------------------------------- datasets
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


class VolumeDataset(torch.utils.data.Dataset):
    """Prepared volumes, each seen ``repeat`` times per epoch through a random (or fixed) transform."""

    def __init__(self, items: list[dict], transform=None, repeat: int = 1, slices: bool = False):
        self.items, self.transform, self.repeat, self.to_sample = items, transform, repeat, ToSample(slices)
        labels = [it["label"] for it in items]
        self.targets = [int(y) for y in labels] if all(isinstance(y, int) for y in labels) else None

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, i: int) -> dict:
        d = dict(self.items[i % len(self.items)])
        d = self.transform(d) if self.transform else d
        return self.to_sample(d[0] if isinstance(d, list) else d)  # MONAI's sampling crops return a list


def prepare(
    records: list[dict], cfg: PipelineConfig, segment: bool, n_classes: int, four_d=None, skip_bad=False, progress=True
):
    """Read and preprocess each record {"image": path or array, "label": class index, label path
    or -1, "name"} once; bad files raise a ``DataError`` naming them, or are skipped and listed."""
    from tqdm.auto import tqdm

    select, stack = (None, True) if four_d == "stack" else (four_d, False)
    transform = pipeline(cfg, "prepare", segment)
    items, skipped = [], []
    for rec in tqdm(records, desc="reading volumes", disable=not progress, leave=False):
        try:
            image = rec["image"]
            if isinstance(image, np.ndarray):
                image = to_meta(check_voxels(image, rec["name"]), np.eye(4), rec["name"])  # arrays: 1 mm voxels
            else:
                image = read_volume(image, select, stack)
            label = read_label(rec["label"], image, n_classes) if segment else rec["label"]
            try:
                item = transform({"image": image, "label": label})
            except Exception as e:  # MONAI wraps failures in RuntimeError; name the file
                raise DataError(f"{rec['name']}: preprocessing failed ({e})") from e
        except DataError as e:
            if not skip_bad:
                raise
            log.warning("skipping bad file: %s", e)
            skipped.append((str(rec["name"]), str(e)))
            continue
        items.append({**item, "name": str(rec["name"])})
    return items, skipped


def to_batch(paths, cfg: PipelineConfig, select: int | None = None, stack: bool = False) -> dict:
    """NIfTI or .npy files -> an encoder batch {"image": (B, C, *roi), "spacing": (B, 3)}, prepared
    as in training (pass ``PipelineConfig(**encoder.info["preprocessing"])``) and centre-cropped."""
    from monai import transforms as T

    centre = T.Compose([pipeline(cfg, "prepare"), pipeline(cfg, "eval")])
    samples = [ToSample()(centre({"image": read_volume(p, select, stack), "label": -1})) for p in paths]
    return {k: torch.stack([s["x"][k] for s in samples]) for k in ("image", "spacing")}


# --------------------------------------------------------------------------------------- discovery
LABEL_SUFFIXES = ("_seg-manual", "_seg")  # BIDS-style derivatives, as in the Spinal Cord Toolbox data


def strip_extension(name: str) -> str:
    for ext in EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def find_pairs(root: Path) -> list[dict]:
    """Image/label NIfTI pairs: ``imagesTr/`` + ``labelsTr/`` (Medical Segmentation Decathlon;
    an nnU-Net ``_0000`` channel suffix on images is allowed), or files with a sibling
    ``<name>_seg-manual`` / ``<name>_seg`` label anywhere below ``root``."""
    pairs = []
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        labels = {
            strip_extension(p.name): p for p in (root / "labelsTr").iterdir() if has_extension(p, NIFTI_EXTENSIONS)
        }
        for image in sorted(
            p
            for p in (root / "imagesTr").iterdir()
            if has_extension(p, NIFTI_EXTENSIONS) and not p.name.startswith(".")
        ):
            stem = strip_extension(image.name)
            label = labels.get(stem) or labels.get(stem.removesuffix("_0000"))
            if label is None:
                raise DataError(f"{image}: no label in {root / 'labelsTr'} with the same name")
            pairs.append({"image": image, "label": label, "name": str(image)})
        return pairs
    for image in sorted(root.rglob("*")):
        stem = strip_extension(image.name)
        if not has_extension(image, NIFTI_EXTENSIONS) or stem.endswith(LABEL_SUFFIXES) or "_seg" in stem:
            continue
        label = next(
            (
                image.with_name(stem + s + e)
                for s in LABEL_SUFFIXES
                for e in NIFTI_EXTENSIONS
                if image.with_name(stem + s + e).is_file()
            ),
            None,
        )
        if label is not None:
            pairs.append({"image": image, "label": label, "name": str(image)})
    return pairs


def medmnist_records(path: Path) -> tuple[list[dict], list[str]]:
    """Records of a MedMNIST-3D style .npz: ``{split}_images`` N x D x H x W, ``{split}_labels``."""
    try:
        arrays = np.load(path, allow_pickle=False)
        splits = [k.removesuffix("_images") for k in arrays.files if k.endswith("_images")]
        records = []
        for split in splits:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
            if images.ndim != 4 or len(images) != len(labels):
                raise DataError(
                    f"{path}: {split}_images must be N x D x H x W with one label each, "
                    f"got {images.shape} and {labels.shape}"
                )
            records += [
                {
                    "image": images[i][None].astype(np.float32),
                    "label": int(labels[i]),
                    "name": f"{path.name}:{split}[{i}]",
                    "split": split,
                }
                for i in range(len(images))
            ]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not a readable MedMNIST-style .npz ({type(e).__name__}: {e})") from e
    if not records:
        raise DataError(f"{path}: no {{split}}_images arrays")
    return records, [str(c) for c in sorted({r["label"] for r in records})]


def find_records(root, segment: bool) -> tuple[list[dict], list[str]]:
    """Records and class names of a dataset folder (or .npz file); see the recipe's --help."""
    from modalities.samples import discover

    root = Path(root)
    npz = [root] if root.name.endswith(".npz") else sorted(root.glob("*.npz")) if root.is_dir() else []
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if segment:
        pairs = find_pairs(root)
        if not pairs:
            raise DataError(
                f"{root}: no image/label pairs; expected imagesTr/ + labelsTr/, "
                "or <name>_seg.nii.gz beside <name>.nii.gz"
            )
        return pairs, []
    if len(npz) == 1:
        return medmnist_records(npz[0])
    if (root / "labels.csv").is_file() or any(p.is_dir() for p in root.iterdir()):
        samples = discover(root, EXTENSIONS)
        classes = sorted({s.label for s in samples})
        return [
            {"image": s.path, "label": classes.index(s.label), "name": str(s.path), "split": s.split} for s in samples
        ], classes
    files = sorted(p for p in root.iterdir() if has_extension(p))
    if not files:
        raise DataError(f"{root}: no volumes ({', '.join(EXTENSIONS)}), labels.csv or class folders")
    return [{"image": p, "label": -1, "name": str(p)} for p in files], []  # unlabelled: pretraining only


SYNTHETIC_CLASSES = ["few", "many"]


def synthetic_records(n_per_class: int, size: int, seed: int) -> list[dict]:
    """MONAI's synthetic volumes (noisy spheres with their segmentation); the class is how many
    spheres a volume holds: 3 ("few") or 9 ("many")."""
    from monai.data import create_test_image_3d

    rs = np.random.RandomState(seed)
    records = []
    for i in range(2 * n_per_class):
        cls = i % 2
        image, seg = create_test_image_3d(
            size,
            size,
            size,
            num_objs=(3, 9)[cls],
            rad_max=size // 6,
            rad_min=size // 12,
            noise_max=0.1,
            num_seg_classes=1,
            random_state=rs,
        )
        records.append(
            {
                "image": image[None].astype(np.float32),
                "label": cls,
                "seg": (seg > 0).astype(np.float32),
                "name": f"synthetic_{i:04d}",
            }
        )
    return records


# ------------------------------------------------------------------------------------------ figures
@torch.no_grad()
def render_slices(mae, x: dict, valid=None) -> torch.Tensor:
    """Middle axial slices of input / masked input / reconstruction, one column per volume,
    in radiological view; scaled by the input's range -> (3 * Y, B * X) in [0, 1]."""
    rows = [r[:, 0, :, :, r.shape[-1] // 2].transpose(-1, -2).flip(-2) for r in mae.reconstruct(x, valid)]
    lo, hi = rows[0].amin(), rows[0].amax()
    rows = [((r - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) for r in rows]
    return torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)


# ------------------------------------------------------------------------------------------ domain
KNOWN_CARDS = {
    "adrenalmnist3d_64": "data_cards/adrenalmnist3d.md",
    "sct_testing_data": "data_cards/sct_spinal_cord.md",
    "mni152_nilearn": "data_cards/mni152.md",
}


def data_card(root) -> str:
    root = Path(root)
    for part in (root, *root.parents):
        if part.name in KNOWN_CARDS:
            return KNOWN_CARDS[part.name]
    if (root / "imagesTr").is_dir():
        return "data_cards/decathlon_layout.md"
    return f"user data at {root}"


def segmentation_classes(root, n_classes: int) -> list[str]:
    """Class names from dataset.json "labels" when present (the Decathlon's {"1": "spleen"} or
    nnU-Net v2's {"spleen": 1}), else background, label_1 ... label_{n-1}."""
    import json

    table = Path(root) / "dataset.json" if root else None
    if table is not None and table.is_file():
        labels = json.loads(table.read_text()).get("labels", {})
        names = {int(k): v for k, v in labels.items() if str(k).isdigit()}
        names |= {int(v): k for k, v in labels.items() if not str(k).isdigit() and isinstance(v, int)}
        if names:
            return [names.get(i, f"label_{i}") for i in range(max(n_classes, max(names) + 1))]
    return ["background", *(f"label_{i}" for i in range(1, n_classes))]


def needs_labels(args, data, acc, out, encoder_dir):
    raise DataError(
        f"{args.data}: the volumes have no labels (no labels.csv, class folders or label files); use --stage pretrain"
    )


def build_domain(
    data=None,
    eval_data=None,
    task: str = "classify",
    pipe: PipelineConfig | None = None,
    patch=(16, 16, 16),
    n_classes: int = 2,
    four_d=None,
    mix_2d: float = 0.0,
    synthetic_per_class: int = 64,
    synthetic_size: int = 64,
    mask=None,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
):
    """Datasets, adapter config and data card for the volumes recipe (``task`` classify|segment).

    Held-out data, in order: ``eval_data``; the .npz file's val/test split; 20 % of the files
    (stratified by class, fixed seed). ``mix_2d``: the fraction of pretraining batches that are
    2-D slices of the training volumes instead of 3-D crops.
    """
    from torch.utils.data import ConcatDataset

    from foundations.masking import MaskConfig
    from foundations.recipe import DomainData
    from modalities.samples import check_held_out_classes, held_out_split

    segment = task == "segment"
    if task not in ("classify", "segment"):
        raise ValueError(f"task must be classify or segment, got {task!r}")
    if not 0.0 <= mix_2d < 1.0:
        raise ValueError(f"mix_2d must be in [0, 1), got {mix_2d}")
    if data is None:
        records = synthetic_records(synthetic_per_class, synthetic_size, seed)
        records = [{**r, "label": r["seg"]} if segment else r for r in records]
        classes, card = SYNTHETIC_CLASSES, "data_cards/synthetic_volumes.md"
    else:
        records, classes = find_records(data, segment)
        card = data_card(data)
    if segment:
        classes = ["background", "sphere"] if data is None else segmentation_classes(data, n_classes)
    pipe = pipe or PipelineConfig()
    if pipe.intensity is None:
        arrays = isinstance(records[0]["image"], np.ndarray)
        pipe = dataclasses.replace(pipe, intensity="unit" if arrays else "mri")

    def read(recs):
        return prepare(recs, pipe, segment, len(classes), four_d, skip_bad, progress)

    if eval_data is not None:
        more, more_classes = find_records(eval_data, segment)
        if not segment:
            check_held_out_classes(more_classes, classes, eval_data, data)
            more = [{**r, "label": classes.index(more_classes[r["label"]])} if r["label"] >= 0 else r for r in more]
        (train, skipped), (held, skipped_held) = read(records), read(more)
    else:
        labels = ["all" if segment else str(r["label"]) for r in records]
        splits = [r.get("split") for r in records]
        train_idx, held_idx = held_out_split(labels, [str(r["name"]) for r in records], splits, seed)
        (train, skipped), (held, skipped_held) = (
            read([records[i] for i in train_idx]),
            read([records[i] for i in held_idx]),
        )
    if not train or not held:
        raise DataError(
            f"{data or 'synthetic set'}: need readable volumes on both sides ({len(train)} train, {len(held)} held out)"
        )
    channels = {it["image"].shape[0] for it in train + held}
    if len(channels) > 1:
        raise DataError(f"{data}: volumes have different channel counts {sorted(channels)}")
    config = VolumeConfig(channels.pop(), tuple(patch), pipe.roi)
    spacings = torch.stack([spacing_mm(it["image"]) for it in train])

    pretrain = VolumeDataset(train, pipeline(pipe, "pretrain", segment), repeat=pipe.samples)
    groups = None
    if mix_2d:
        n_slices = round(len(pretrain) * mix_2d / (1 - mix_2d))
        slices = VolumeDataset(
            train, pipeline(pipe, "slices", segment), repeat=max(1, math.ceil(n_slices / len(train))), slices=True
        )
        groups = [0] * len(pretrain) + [1] * len(slices)
        pretrain = ConcatDataset([pretrain, slices])
    centre = pipeline(pipe, "eval", segment)
    stages = {}
    if segment:
        from modalities.segmentation import segmentation_stage

        stages = {"probe": segmentation_stage(freeze=True), "finetune": segmentation_stage(freeze=False)}
    elif not classes:
        stages = {"probe": needs_labels, "finetune": needs_labels}
    return DomainData(
        pretrain=pretrain,
        finetune=VolumeDataset(
            train, pipeline(pipe, "segment" if segment else "pretrain", segment), repeat=pipe.samples
        ),
        train_eval=VolumeDataset(train, centre),
        eval=VolumeDataset(held) if segment else VolumeDataset(held, centre),
        recon_eval=VolumeDataset(held, centre),
        classes=classes,
        adapter={"name": "volume", **asdict(config)},
        mask=mask or MaskConfig("random", 0.75),
        data_card=card,
        render=render_slices,
        norm_target=False,  # intensities are normalised by the pipeline; per-patch targets are mostly noise
        groups=groups,
        stages=stages,
        preprocessing=asdict(pipe),
        info={
            "train_volumes": len(train),
            "eval_volumes": len(held),
            "classes": classes,
            "spacing_min_mm": spacings.min(0).values.tolist(),
            "spacing_max_mm": spacings.max(0).values.tolist(),
            "slices_2d_fraction": mix_2d,
            "skipped_files": len(skipped) + len(skipped_held),
            "skipped": skipped + skipped_held,
        },
    )
