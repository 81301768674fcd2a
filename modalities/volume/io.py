"""Reading volumes: NIfTI through nibabel (header and voxel checks, explicit 4-D handling) and
``.npy`` arrays, as MONAI MetaTensors (the affine travels with the voxels)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from foundations.files import replacing
from modalities.common import DataError

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
ARRAY_EXTENSIONS = (".npy", ".npz")
EXTENSIONS = NIFTI_EXTENSIONS + ARRAY_EXTENSIONS
MAX_VOXELS = 2**28  # voxels in one file, all channels and 4-D volumes together: 1 GiB as float32
AFFINE_TOLERANCE_MM = 1e-3  # a label's voxel-to-world map may differ from its image's by float rounding only


def has_extension(path, extensions=EXTENSIONS) -> bool:
    return str(path).lower().endswith(tuple(extensions))


def check_voxels(array: np.ndarray, source) -> np.ndarray:
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise DataError(f"{source}: {bad} NaN or infinite voxels")
    return array


def check_voxel_count(shape: tuple[int, ...], source, max_voxels: int) -> None:
    n = math.prod(shape)
    if n > max_voxels:
        raise DataError(f"{source}: {n:,} voxels (shape {tuple(shape)}), over the --max-voxels limit of {max_voxels:,}")


def read_nifti(path, select: int | None = None, stack: bool = False, max_voxels: int = MAX_VOXELS):
    """(C, X, Y, Z) float32 array and its 4x4 affine from a NIfTI file.

    A 4-D file (DWI, fMRI) needs an explicit choice: ``select`` one volume (index along the 4th
    axis) or ``stack`` all of them as channels. A trailing axis of length 1 is dropped. A header
    claiming more than ``max_voxels`` voxels (all volumes together), or an uncompressed file
    shorter than its header says, is refused before any voxel is read.

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
        offset, voxel_bytes = int(img.dataobj.offset), img.header.get_data_dtype().itemsize
    except Exception as e:  # nibabel raises many types for bad headers
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    # nibabel reads exactly the header's number of bytes, so this also bounds what a .nii.gz can
    # expand to, however much compressed data follows the header
    check_voxel_count(img.shape, path, max_voxels)
    n_voxels = math.prod(img.shape)
    if path.name.lower().endswith(".nii") and path.stat().st_size < offset + n_voxels * voxel_bytes:
        raise DataError(
            f"{path}: truncated, {path.stat().st_size:,} bytes where the header needs "
            f"{offset + n_voxels * voxel_bytes:,} ({offset}-byte header + {n_voxels:,} voxels x {voxel_bytes} bytes)"
        )
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
        message = " ".join(str(e).split())  # nibabel's can span lines
        raise DataError(f"{path}: cannot read the voxel data ({type(e).__name__}: {message})") from e
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


def read_volume(path, select: int | None = None, stack: bool = False, max_voxels: int = MAX_VOXELS):
    """A (C, X, Y, Z) MetaTensor from a NIfTI file or a single ``.npy`` array (1 mm spacing); more
    than ``max_voxels`` voxels are refused from the file's header."""
    path = Path(path)
    if has_extension(path, NIFTI_EXTENSIONS):
        array, affine = read_nifti(path, select, stack, max_voxels)
    elif path.name.lower().endswith(".npy"):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only, so far
        except Exception as e:
            raise DataError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
        check_voxel_count(array.shape, path, max_voxels)
        array = np.array(array, dtype=np.float32)  # read into memory
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise DataError(f"{path}: expected a 3-D array (X, Y, Z) or (C, X, Y, Z), got shape {array.shape}")
        array, affine = check_voxels(array, path), np.eye(4)
    else:
        raise DataError(f"{path}: unsupported volume format; known: {', '.join(EXTENSIONS)}")
    return to_meta(array, affine, path)


def read_label(path, image, n_classes: int, max_voxels: int = MAX_VOXELS):
    """A segmentation label volume (1, X, Y, Z), from a file or an (X, Y, Z) array, on the grid of
    ``image`` (same shape; a file's affine equal to the image's within ``AFFINE_TOLERANCE_MM``; an
    array takes the image's) holding only classes 0 .. n_classes - 1."""
    label = (
        to_meta(path[None].astype(np.float32), image.affine, "label array")
        if isinstance(path, np.ndarray)
        else read_volume(path, max_voxels=max_voxels)
    )
    if label.shape[1:] != image.shape[1:] or label.shape[0] != 1:
        raise DataError(f"{path}: label shape {tuple(label.shape[1:])} differs from its image {tuple(image.shape[1:])}")
    ours, theirs = (torch.as_tensor(a, dtype=torch.float64).numpy() for a in (label.affine, image.affine))
    if not np.allclose(ours, theirs, rtol=0, atol=AFFINE_TOLERANCE_MM):
        diff = np.abs(ours - theirs)
        raise DataError(
            f"{path}: label on another grid than its image: voxel-to-world affines differ by up to "
            f"{diff[:3, 3].max():.3g} mm in origin and {diff[:3, :3].max():.3g} mm per voxel in "
            f"spacing/direction (tolerance {AFFINE_TOLERANCE_MM} mm)"
        )
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

    image = nib.Nifti1Image(labels.cpu().numpy().astype("uint8"), torch.as_tensor(affine).cpu().numpy())
    with replacing(path) as tmp:
        nib.save(image, tmp)
