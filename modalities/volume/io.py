"""Reading volumes: NIfTI through nibabel (header and voxel checks, explicit 4-D handling) and
``.npy`` arrays, as MONAI MetaTensors (the affine travels with the voxels)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from modalities.common import DataError

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
ARRAY_EXTENSIONS = (".npy", ".npz")
EXTENSIONS = NIFTI_EXTENSIONS + ARRAY_EXTENSIONS


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


def strip_extension(name: str) -> str:
    for ext in EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def save_labels(path: Path, labels: torch.Tensor, affine) -> None:
    """A label volume as uint8 NIfTI with ``affine``."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(labels.cpu().numpy().astype("uint8"), torch.as_tensor(affine).cpu().numpy()), path)
