"""Reading point clouds: open3d for .ply/.pcd/.xyz/.pts clouds and .off/.obj/.stl meshes (sampled
uniformly or by Poisson disk), NumPy for .npy/.npz/.txt arrays and MedMNIST-style split arrays.
Every cloud is xyz, centred on its centroid and scaled into the unit sphere; the scale is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modalities.common import DataError

CLOUD_EXTENSIONS = (".ply", ".pcd", ".xyz", ".pts")
MESH_EXTENSIONS = (".off", ".obj", ".stl")
ARRAY_EXTENSIONS = (".npy", ".npz", ".txt")
EXTENSIONS = CLOUD_EXTENSIONS + MESH_EXTENSIONS + ARRAY_EXTENSIONS
MAX_POINTS = 10_000_000  # in one cloud file: 240 MB as float64 xyz while it is read


def check_point_count(n: int, source, max_points: int) -> None:
    if n > max_points:
        raise DataError(f"{source}: {n:,} points, over the --max-points limit of {max_points:,}")


def check_cloud(points: np.ndarray, source, max_points: int = MAX_POINTS) -> np.ndarray:
    """xyz (N, 3) float32 of ``points`` (N, 3+; further columns dropped), rejecting what no model
    should see: no points, more than ``max_points``, NaN/inf, all points equal."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise DataError(f"{source}: expected points (N, 3+), got shape {points.shape}")
    if len(points) == 0:
        raise DataError(f"{source}: empty point cloud (no points)")
    check_point_count(len(points), source, max_points)
    if not np.isfinite(points).all():
        raise DataError(f"{source}: NaN or infinite coordinates")
    if np.ptp(points[:, :3], axis=0).max() < 1e-9:
        raise DataError(f"{source}: degenerate point cloud (all {len(points)} points equal)")
    if np.abs(points[:, :3]).max() > np.finfo(np.float32).max:
        raise DataError(f"{source}: coordinates beyond float32's range (up to {np.abs(points[:, :3]).max():.3g})")
    return points[:, :3].astype(np.float32)


def read_cloud(path, n_points: int = 2048, sampling: str = "uniform", max_points: int = MAX_POINTS) -> np.ndarray:
    """Points (N, 3) float32 from a cloud, mesh or array file (xyz; further columns are dropped).

    Meshes are sampled to ``n_points`` ("uniform" area-weighted, or "poisson" disk). A cloud of
    more than ``max_points`` is refused: a ``.npy`` from its header, before the points are read;
    other formats once read (open3d and np.loadtxt give no count beforehand).
    """
    import open3d as o3d  # imported here: open3d loads slowly and only point clouds need it

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if suffix in ARRAY_EXTENSIONS:
        try:
            if suffix == ".npz":
                with np.load(path) as z:
                    key = "points" if "points" in z.files else z.files[0]
                    points = z[key]
            elif suffix == ".npy":
                points = np.load(path, mmap_mode="r")  # the header only, so far
                check_point_count(len(points) if points.ndim else 0, path, max_points)
            else:
                points = np.loadtxt(path, ndmin=2)
            points = np.array(points, dtype=np.float64)
        except (OSError, ValueError, IndexError, EOFError) as e:  # EOFError: a 0-byte .npy
            raise DataError(f"{path}: cannot read array ({e or 'empty or cut-short file'})") from None
        return check_cloud(points, path, max_points)
    if suffix in MESH_EXTENSIONS or suffix == ".ply":
        mesh = o3d.io.read_triangle_mesh(str(path))
        if mesh.has_triangles():
            if sampling not in ("uniform", "poisson"):
                raise ValueError(f"sampling must be 'uniform' or 'poisson', got {sampling!r}")
            pcd = (
                mesh.sample_points_uniformly(n_points)
                if sampling == "uniform"
                else mesh.sample_points_poisson_disk(n_points)
            )
            return check_cloud(np.asarray(pcd.points), path)  # n_points sampled: the limit is on files
        if suffix in MESH_EXTENSIONS:
            raise DataError(f"{path}: no triangles (unreadable or empty mesh)")
    if suffix not in CLOUD_EXTENSIONS:
        raise DataError(f"{path}: unsupported point-cloud format {suffix!r}; known: {', '.join(EXTENSIONS)}")
    pcd = o3d.io.read_point_cloud(str(path))  # open3d warns and returns an empty cloud on bad files
    if not pcd.has_points():
        raise DataError(f"{path}: empty point cloud (no points, or an unreadable {suffix} file)")
    return check_cloud(np.asarray(pcd.points), path, max_points)


def normalize_cloud(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre on the centroid and scale into the unit sphere -> (points, centre, scale)."""
    centre = points.mean(0)
    scale = float(np.linalg.norm(points - centre, axis=1).max())
    return (points - centre) / scale, centre, scale


def load_npz_splits(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MedMNIST-style arrays: ``{split}_points`` (N, P, 3+) with ``{split}_labels`` -> {split: (points, labels)}."""
    try:
        with np.load(path) as z:
            splits = {
                k[: -len("_points")]: (z[k], z[k[: -len("_points")] + "_labels"].reshape(-1))
                for k in z.files
                if k.endswith("_points")
            }
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: cannot read {{split}}_points / {{split}}_labels arrays ({e})") from None
    if not splits:
        raise DataError(f"{path}: no '{{split}}_points' arrays")
    return splits
