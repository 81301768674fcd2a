"""Meshes to RGB + density grids in bake.py's layout, and the built-in procedural scenes of open3d
primitives (boxes, spheres, cylinders, cones, tori) with per-voxel labels.

A voxel belongs to a mesh when its centre is inside it by open3d's ``RaycastingScene.compute_occupancy``
(Embree ray casting, counting crossings: meshes must be watertight, as open3d's primitives are).
Its colour is the mesh's vertex colour interpolated (barycentric) at the nearest surface point, or
the mesh's given colour, or mid grey. Inside voxels get density SOLID_OPTICAL_DEPTH / voxel edge per
world unit, i.e. an optical depth of 50 across one voxel (alpha = 1 - e^-50: opaque at any
resolution); outside voxels are black with density 0. Where meshes overlap, the later one wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open3d as o3d

from modalities.common import DataError
from modalities.nerf.bake import grid_resolution

PRIMITIVES = ("box", "sphere", "cylinder", "cone", "torus")  # per-voxel label k + 1 is PRIMITIVES[k]
SOLID_OPTICAL_DEPTH = 50.0  # optical depth across one voxel edge inside a mesh
DEFAULT_COLOUR = (0.5, 0.5, 0.5)  # of a mesh with neither vertex colours nor a given colour
PROCEDURAL_BOX = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
PRIMITIVE_RADIUS = (0.3, 0.55)  # bounding-sphere radius of a procedural primitive, before the per-axis stretch
STRETCH = (0.7, 1.3)  # per-axis scale of a procedural primitive
SEPARATION = 0.8  # procedural primitives' centres are at least this times the sum of their radii apart (if possible)


def voxel_centres(bbox, resolution: tuple[int, int, int]) -> np.ndarray:
    """World positions (X, Y, Z, 3) float32 of the voxel centres of a grid over ``bbox`` (2, 3)."""
    lo, hi = (np.asarray(b, dtype=np.float64) for b in bbox)
    axes = [lo[a] + (np.arange(n) + 0.5) * (hi[a] - lo[a]) / n for a, n in enumerate(resolution)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).astype(np.float32)


def read_mesh(path) -> o3d.geometry.TriangleMesh:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    mesh = o3d.io.read_triangle_mesh(str(path))  # open3d warns and returns an empty mesh on bad files
    if not mesh.has_triangles():
        raise DataError(f"{path}: no triangles (unreadable or empty mesh)")
    return mesh


def surface_colours(mesh: o3d.geometry.TriangleMesh, scene, points: np.ndarray) -> np.ndarray:
    """Vertex colours (M, 3) of ``mesh`` interpolated at the surface point nearest to each of ``points`` (M, 3)."""
    nearest = scene.compute_closest_points(o3d.core.Tensor(points))
    triangles = np.asarray(mesh.triangles)[nearest["primitive_ids"].numpy()]  # (M, 3) vertex indices
    u, v = nearest["primitive_uvs"].numpy().T  # barycentric weights of the 2nd and 3rd vertex
    colours = np.asarray(mesh.vertex_colors)[triangles]  # (M, 3 vertices, 3 channels)
    return (1 - u - v)[:, None] * colours[:, 0] + u[:, None] * colours[:, 1] + v[:, None] * colours[:, 2]


def voxelize_meshes(
    meshes: Sequence,
    bbox,
    grid: int = 128,
    labels: Sequence[int] | None = None,
    colours: Sequence | None = None,
) -> dict:
    """Grid arrays of ``meshes`` (open3d TriangleMeshes or mesh files), ``grid`` voxels along the
    longest side of ``bbox`` (2, 3): rgbsigma (X, Y, Z, 4), valid, bbox, voxel_size and, with
    ``labels`` (one in 1..255 per mesh), labels (X, Y, Z) uint8, 0 where no mesh is. ``colours``
    (one RGB in [0, 1] per mesh) replace the meshes' vertex colours."""
    meshes = [read_mesh(m) if isinstance(m, str | Path) else m for m in meshes]
    for name, given in (("labels", labels), ("colours", colours)):
        if given is not None and len(given) != len(meshes):
            raise ValueError(f"{name}: one per mesh, got {len(given)} for {len(meshes)} meshes")
    if labels is not None and not all(1 <= k <= 255 for k in labels):
        raise ValueError(f"labels must be in 1..255 (0 is empty), got {list(labels)}")
    resolution = grid_resolution(bbox, grid)
    bbox = np.asarray(bbox, dtype=np.float32)
    voxel_size = (bbox[1] - bbox[0]) / np.array(resolution)
    centres = voxel_centres(bbox, resolution).reshape(-1, 3)  # (P, 3)
    rgb = np.zeros((len(centres), 3), dtype=np.float32)
    owner = np.zeros(len(centres), dtype=np.uint8)  # 1 + index of the mesh holding each voxel, 0 none
    for k, mesh in enumerate(meshes):
        lo, hi = mesh.get_min_bound(), mesh.get_max_bound()
        near = np.flatnonzero(((centres >= lo) & (centres <= hi)).all(1))  # only voxels in the mesh's box
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        inside = near[scene.compute_occupancy(o3d.core.Tensor(centres[near])).numpy() > 0.5]
        if colours is not None:
            rgb[inside] = colours[k]
        elif mesh.has_vertex_colors():
            rgb[inside] = surface_colours(mesh, scene, centres[inside])
        else:
            rgb[inside] = DEFAULT_COLOUR
        owner[inside] = k + 1
    sigma = np.where(owner > 0, SOLID_OPTICAL_DEPTH / voxel_size.mean(), 0).astype(np.float32)
    result = {
        "rgbsigma": np.concatenate([rgb, sigma[:, None]], 1).reshape(*resolution, 4),  # (X, Y, Z, 4)
        "valid": np.ones(resolution, dtype=np.uint8),
        "bbox": bbox,
        "voxel_size": voxel_size.astype(np.float32),
    }
    if labels is not None:
        result["labels"] = np.concatenate([[0], labels]).astype(np.uint8)[owner].reshape(resolution)
    return result


def make_primitive(kind: str) -> o3d.geometry.TriangleMesh:
    """An open3d primitive centred on the origin within the unit sphere."""
    mesh = {
        "box": lambda: o3d.geometry.TriangleMesh.create_box(),
        "sphere": lambda: o3d.geometry.TriangleMesh.create_sphere(resolution=12),
        "cylinder": lambda: o3d.geometry.TriangleMesh.create_cylinder(resolution=24),
        "cone": lambda: o3d.geometry.TriangleMesh.create_cone(resolution=24),
        "torus": lambda: o3d.geometry.TriangleMesh.create_torus(tube_radius=0.4, radial_resolution=24),
    }[kind]()
    mesh.translate(-mesh.get_axis_aligned_bounding_box().get_center())
    return mesh.scale(1 / np.linalg.norm(np.asarray(mesh.vertices), axis=1).max(), center=(0, 0, 0))


def procedural_scene(seed: int, grid: int = 32, kinds: Sequence[str] = PRIMITIVES, count: int | None = None) -> dict:
    """A scene of ``count`` (default 2 to 4, at random) open3d primitives of ``kinds`` in [-1, 1]^3,
    each stretched per axis, rotated, uniformly coloured at random and placed apart from the others;
    distinct kinds while ``kinds`` has enough. Returns ``voxelize_meshes``' arrays with labels (k + 1 for
    PRIMITIVES[k]), ``kind``: the kind holding the most voxels, and ``objects``: the kinds placed."""
    unknown = sorted(set(kinds) - set(PRIMITIVES))
    if unknown or not kinds:
        raise ValueError(f"kinds must be some of {', '.join(PRIMITIVES)}, got {list(kinds)}")
    rng = np.random.default_rng(seed)
    count = int(rng.integers(2, 5)) if count is None else count
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    chosen = [str(k) for k in rng.choice(list(kinds), count, replace=count > len(kinds))]
    meshes, centres, radii = [], [], []
    for kind in chosen:
        radius = rng.uniform(*PRIMITIVE_RADIUS)
        for _ in range(100):  # rejection sampling of a position apart from the others
            centre = rng.uniform(-1 + radius, 1 - radius, 3)
            if all(
                np.linalg.norm(centre - c) >= SEPARATION * (radius + r) for c, r in zip(centres, radii, strict=True)
            ):
                break
        mesh = make_primitive(kind)
        mesh.vertices = o3d.utility.Vector3dVector(np.asarray(mesh.vertices) * rng.uniform(*STRETCH, 3))
        mesh.rotate(o3d.geometry.get_rotation_matrix_from_xyz(rng.uniform(-np.pi, np.pi, 3)), center=(0, 0, 0))
        mesh.scale(radius / max(STRETCH[1], 1.0), center=(0, 0, 0))  # the stretched shape stays within radius
        mesh.translate(centre)
        mesh.paint_uniform_color(rng.uniform(0.1, 0.9, 3))
        meshes.append(mesh)
        centres.append(centre)
        radii.append(radius)
    labels = [PRIMITIVES.index(k) + 1 for k in chosen]
    result = voxelize_meshes(meshes, PROCEDURAL_BOX, grid, labels=labels)
    voxels = np.bincount(result["labels"].reshape(-1), minlength=len(PRIMITIVES) + 1)[1:]  # per kind
    return {**result, "kind": PRIMITIVES[int(voxels.argmax())], "objects": chosen}
