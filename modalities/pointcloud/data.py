"""Point-cloud datasets: Point-MAE / PointNet++ augmentation, in-memory clouds, the built-in open3d
shapes, folders in the standard layouts and their shards (``python -m tasks.shards --modality
pointcloud``), the domain the recipe trains on, and its picture.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from modalities.common import (
    DataError,
    DataSource,
    DomainData,
    check_held_out_classes,
    data_card,
    discover,
    held_out_split,
    read_each,
    require_classes,
)
from modalities.pointcloud.adapter import PointCloudConfig
from modalities.pointcloud.io import (
    EXTENSIONS,
    MAX_POINTS,
    check_cloud,
    load_npz_splits,
    normalize_cloud,
    read_cloud,
)
from modalities.shards import OnFirstUse, ShardStream, is_shards, open_shards, read_index, samples_in, split_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointCloudOptions:
    points: int = field(default=1024, metadata={"help": "points per cloud"})
    n_groups: int = field(default=64, metadata={"aliases": ("--groups",), "help": "tokens: FPS centres per cloud"})
    group_size: int = field(default=32, metadata={"help": "points per group (kNN)"})
    sampling: str = field(
        default="uniform", metadata={"help": "mesh surface sampling", "choices": ("uniform", "poisson")}
    )
    votes: int = field(default=1, metadata={"help": "test-time voting over augmented views"})
    pointnet_width: int = field(default=128, metadata={"help": "group encoder width (256 = Point-MAE's)"})
    shapes_per_class: int = field(default=40, metadata={"help": "built-in shapes per class"})
    max_points: int = field(
        default=MAX_POINTS,
        metadata={
            "help": "most points a cloud may hold; more is bad input (a .npy is checked from its header, before "
            "reading; other formats once read)"
        },
    )

    def __post_init__(self):
        if self.votes < 1:
            raise ValueError(f"PointCloudOptions.votes must be >= 1, got {self.votes}")
        if self.max_points < 1:
            raise ValueError(f"PointCloudOptions.max_points must be >= 1, got {self.max_points}")
        PointCloudConfig(self.points, self.n_groups, self.group_size, pointnet_width=self.pointnet_width)  # validates


@dataclass(frozen=True)
class PointCloudAugment:
    """Point-MAE / PointNet++ augmentations on a unit-sphere cloud (N, C)."""

    scale: tuple[float, float] = (2 / 3, 3 / 2)  # per axis
    translate: float = 0.2
    rotate_up: bool = True  # random rotation about the up axis
    up_axis: int = 2
    jitter: float = 0.01  # Gaussian sigma, clipped at 5 sigma
    dropout: float = 0.5  # up to this fraction of points replaced by the first point

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        p = points.clone()
        xyz = p[:, :3]
        if self.rotate_up:
            a = torch.rand(()) * 2 * torch.pi
            c, s = torch.cos(a), torch.sin(a)
            i, j = [ax for ax in range(3) if ax != self.up_axis]
            xi, xj = xyz[:, i].clone(), xyz[:, j].clone()
            xyz[:, i], xyz[:, j] = c * xi - s * xj, s * xi + c * xj
        xyz.mul_(torch.empty(3).uniform_(*self.scale)).add_(torch.empty(3).uniform_(-self.translate, self.translate))
        if self.jitter:
            xyz.add_((torch.randn_like(xyz) * self.jitter).clamp(-5 * self.jitter, 5 * self.jitter))
        if self.dropout:
            drop = torch.rand(len(p)) < torch.rand(()) * self.dropout
            p[drop] = p[0].clone()
        return p


class CloudDataset(Dataset):
    """Unit-sphere clouds in memory; items {"x": (n_points, C), "y": class index}.

    Each item draws ``n_points`` points (a fresh random subset when augmenting, a fixed one per
    item otherwise; with replacement when a cloud has fewer points).
    """

    def __init__(self, clouds: list[torch.Tensor], labels: list[str], classes, n_points: int, augment=None):
        self.clouds, self.labels, self.classes = clouds, labels, list(classes)
        self.n_points, self.augment = n_points, augment

    def __len__(self):
        return len(self.clouds)

    @property
    def class_ids(self) -> list[int]:
        return [self.classes.index(label) for label in self.labels]

    def subset(self, indices, augment=None) -> CloudDataset:
        return CloudDataset(
            [self.clouds[i] for i in indices], [self.labels[i] for i in indices], self.classes, self.n_points, augment
        )

    def __getitem__(self, i):
        gen = None if self.augment else torch.Generator().manual_seed(i)
        return cloud_item(self.clouds[i], self.classes.index(self.labels[i]), self.n_points, self.augment, gen)


def cloud_item(cloud: torch.Tensor, label: int, n_points: int, augment, gen: torch.Generator | None = None) -> dict:
    """A stored cloud (P, 3) -> {"x": (n_points, 3), "y"}: ``n_points`` of its points drawn with
    ``gen`` (None: the global generator; with replacement when it has fewer), then augmented."""
    if len(cloud) >= n_points:
        pick = torch.randperm(len(cloud), generator=gen)[:n_points]
    else:
        pick = torch.randint(len(cloud), (n_points,), generator=gen)
    points = cloud[pick]
    return {"x": augment(points) if augment else points, "y": label}


# ------------------------------------------------------------------------------ raw-input baseline
def shape_distribution(points: torch.Tensor, bins: int = 32, most: int = 2048) -> torch.Tensor:
    """Osada et al. 2002's D2 shape distribution of a cloud (P, 3+), which is blind to rotation:
    the histogram of the distances between all pairs of points (of ``most`` points drawn with a
    fixed seed from a larger cloud) over [0, 2] in units of the cloud's largest distance from its
    centroid, so blind to scale too; then the histogram of every point's distance to the centroid
    over [0, 1] in the same unit. -> (2 * bins,), each histogram summing to 1."""
    xyz = points[:, :3].double()
    radius = (xyz - xyz.mean(0)).norm(dim=1)  # (P,)
    unit = radius.max().clamp_min(1e-12)
    if len(xyz) > most:
        xyz = xyz[torch.randperm(len(xyz), generator=torch.Generator().manual_seed(0))[:most]]
    # no pair is further apart than two radii; the clamps keep rounding inside the last bin
    pairs = torch.histc((torch.pdist(xyz) / unit).clamp(0, 2), bins, 0, 2)  # of P (P - 1) / 2 distances
    centre = torch.histc((radius / unit).clamp(0, 1), bins, 0, 1)
    return torch.cat([pairs / pairs.sum(), centre / centre.sum()]).float()


def raw_features(dataset: CloudDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's raw-input baseline: the shape distribution (``shape_distribution``) of every
    cloud of the evaluation view -> (N, 64), with the class indices (N,)."""
    feats = [shape_distribution(dataset[i]["x"]) for i in range(len(dataset))]
    return torch.stack(feats), torch.tensor(dataset.class_ids)


# -------------------------------------------------------------------------------------- data sets
SHAPE_CLASSES = (
    "arrow",
    "box",
    "cone",
    "cylinder",
    "icosahedron",
    "mobius",
    "octahedron",
    "sphere",
    "tetrahedron",
    "torus",
)


def make_shape(name: str, rng: np.random.Generator, n_points: int) -> np.ndarray:
    """One labelled shape from open3d's mesh primitives: random anisotropic scale, random rotation,
    surface sampling, Gaussian noise; returned in the unit sphere."""
    import open3d as o3d

    g = o3d.geometry.TriangleMesh
    mesh = {
        "arrow": lambda: g.create_arrow(0.3, 0.5, 1.2, 0.8),
        "box": lambda: g.create_box(1.0, 1.0, 1.0),
        "cone": lambda: g.create_cone(0.6, 1.5),
        "cylinder": lambda: g.create_cylinder(0.5, 1.5),
        "icosahedron": lambda: g.create_icosahedron(1.0),
        "mobius": lambda: g.create_mobius(
            length_split=60, width_split=8, twists=1, radius=1.0, flatness=1.0, width=0.6, scale=1.0
        ),
        "octahedron": lambda: g.create_octahedron(1.0),
        "sphere": lambda: g.create_sphere(1.0, resolution=20),
        "tetrahedron": lambda: g.create_tetrahedron(1.0),
        "torus": lambda: g.create_torus(1.0, 0.35),
    }[name]()
    mesh.compute_vertex_normals()
    mesh.vertices = o3d.utility.Vector3dVector(np.asarray(mesh.vertices) * rng.uniform(0.7, 1.3, 3))
    mesh.rotate(g.get_rotation_matrix_from_xyz(rng.uniform(-np.pi, np.pi, 3)), center=(0, 0, 0))
    o3d.utility.random.seed(int(rng.integers(2**31)))  # open3d's sampler has its own generator
    points = np.asarray(mesh.sample_points_uniformly(n_points).points)
    points = points + rng.normal(0, 0.01 * np.ptp(points, axis=0).max(), points.shape)
    return normalize_cloud(points.astype(np.float32))[0]


def shapes_dataset(n_per_class: int, n_points: int, seed: int = 0) -> CloudDataset:
    rng = np.random.default_rng(seed)
    clouds, labels = [], []
    for _ in range(n_per_class):
        for name in SHAPE_CLASSES:
            clouds.append(torch.from_numpy(make_shape(name, rng, n_points)))
            labels.append(name)
    return CloudDataset(clouds, labels, SHAPE_CLASSES, n_points)


def cloud_items(data, n_points: int, sampling: str, max_points: int = MAX_POINTS) -> list[tuple]:
    """The clouds of a folder (labels.csv, <class>/ or <class>/<split>/ layouts, or *.npz split
    arrays) before any is read: (name, read, label, split) each, ``read()`` giving its checked
    points (meshes sampled to ``n_points``); clouds of more than ``max_points`` are bad input."""
    data = Path(data)
    npz = [data] if data.suffix == ".npz" else sorted(data.glob("*.npz")) if data.is_dir() else []
    if npz and not (data / "labels.csv").is_file():
        return [
            (name := f"{path}[{split}][{i}]", partial(check_cloud, p, name, max_points), str(int(y)), split)
            for path in npz
            for split, (points, ids) in load_npz_splits(path).items()
            for i, (p, y) in enumerate(zip(points, ids, strict=True))
        ]
    return [
        (str(s.path), partial(read_cloud, s.path, n_points, sampling, max_points), s.label, s.split)
        for s in discover(data, EXTENSIONS)
    ]


def unit_cloud(item: tuple) -> np.ndarray:
    """A ``cloud_items`` entry read, centred and scaled into the unit sphere: (P, 3) float32."""
    return normalize_cloud(item[1]())[0]


def load_clouds(
    data, n_points: int, sampling: str, skip_bad: bool, progress: bool = True, max_points: int = MAX_POINTS
):
    """Read every cloud of ``cloud_items``.

    Returns (clouds, labels, splits, skipped); clouds are unit-sphere float tensors.
    """
    items = cloud_items(data, n_points, sampling, max_points)
    items = tqdm(items, desc="reading point clouds", disable=None if progress else True)
    done, skipped = read_each(items, lambda it: (unit_cloud(it), it[2], it[3]), skip_bad, name=lambda it: it[0])
    resampled = sum(len(points) < n_points for points, _, _ in done)
    if resampled:
        log.warning("%d clouds had fewer than %d points and are resampled with replacement", resampled, n_points)
    clouds = [torch.from_numpy(points) for points, _, _ in done]
    return clouds, [label for _, label, _ in done], [split for _, _, split in done], skipped


KNOWN_CARDS = {
    "modelnet10_pcd_subset": "data_cards/modelnet10.md",
    "adrenalmnist3d_surface_points": "data_cards/adrenalmnist3d_points.md",
}


def build_domain(source: DataSource, opts: PointCloudOptions) -> DomainData:
    """Datasets, adapter config and data card for the point-cloud recipe; shards
    (``modalities.shards.is_shards``) are streamed for pretraining.

    Held-out data, in order: ``eval_data``; the file's own test/val split; a stratified 20 % split.
    """
    if is_shards(source.data):
        return shard_domain(source, opts)
    skipped = []
    n = opts.points
    if source.data is None:
        full = shapes_dataset(opts.shapes_per_class, n, source.seed)
        card, splits = "data_cards/shapes.md", [None] * len(full)
    else:
        clouds, labels, splits, skipped = load_clouds(
            source.data, n, opts.sampling, source.skip_bad_files, source.progress, opts.max_points
        )
        if not clouds:
            raise DataError(f"{source.data}: no readable point clouds")
        full = CloudDataset(clouds, labels, require_classes(labels, source.data), n)
        card = data_card(source.data, KNOWN_CARDS)
    if source.eval_data is not None:
        more, more_labels, _, more_skipped = load_clouds(
            source.eval_data, n, opts.sampling, source.skip_bad_files, source.progress, opts.max_points
        )
        check_held_out_classes(more_labels, full.classes, source.eval_data, source.data)
        train, held = full, CloudDataset(more, more_labels, full.classes, n)
        skipped += more_skipped
    else:
        train_idx, eval_idx = held_out_split(full.labels, [str(i) for i in range(len(full))], splits, source.seed)
        train, held = full.subset(train_idx), full.subset(eval_idx)
    info = {"train_clouds": len(train), "eval_clouds": len(held), "skipped_files": len(skipped), "skipped": skipped}
    return assemble(opts, train.subset(range(len(train)), MILD), train, held, full.classes, card, info)


# Point-MAE's ModelNet protocol for pretraining and fine-tuning: scale and translate only; rotation and
# point dropout cost aligned shapes (ModelNet10 fine-tuned 60 steps: 0.50 held out with them, 0.72 without)
MILD = PointCloudAugment(rotate_up=False, jitter=0.0, dropout=0.0)


def assemble(opts: PointCloudOptions, pretrain, train, held, classes, card, info) -> DomainData:
    """The recipe's ``DomainData`` from its pretraining set, the training split's evaluation view
    ``train`` and the held-out split; the views made of them are built when first used, so that a
    pretraining-only run on shards never reads the splits."""
    adapter = PointCloudConfig(opts.points, opts.n_groups, opts.group_size, pointnet_width=opts.pointnet_width)
    return DomainData(
        pretrain=pretrain,
        finetune=OnFirstUse(lambda: train.subset(range(len(train)), MILD)),
        train_eval=train,
        held_out=held,
        classes=classes,
        adapter={"name": "pointcloud", **asdict(adapter)},
        data_card=card,
        render=render_reconstruction,
        raw_features=raw_features,
        # one dataset, fresh draws each pass
        held_out_views=[OnFirstUse(lambda: held.subset(range(len(held)), MILD))] * (opts.votes - 1),
        info={"classes": classes, **info},
    )


# The options the stored clouds depend on (meshes are sampled to --points by --sampling): shards
# written with them are read only with them
SHARD_OPTIONS = ("points", "sampling", "max_points")


def readable_clouds(items: list[tuple], skipped: list) -> list[tuple]:
    """The ``cloud_items`` that read; the others, logged, go to ``skipped``."""

    def check(item: tuple) -> tuple:
        unit_cloud(item)
        return item

    done, bad = read_each(items, check, True, name=lambda it: it[0])
    skipped += bad
    return done


def write_shards(source: DataSource, opts: PointCloudOptions, write: Callable[[str, Iterable[dict]], list]) -> dict:
    """Read ``source.data`` as the recipe reads it and hand each split's clouds to ``write(split,
    samples)``, one cloud in memory at a time: the training split as ``train``, the held-out one
    (``eval_data``, else the data's own test/val split, else the recipe's stratified 20 %) as
    ``test``. A sample is the unit-sphere cloud (P, 3) float32 and {label, name, order: its place in
    the recipe's split}. -> what the index of the shards records of the data.

    Under ``skip_bad_files`` every cloud is read twice: the recipe splits the clouds that read, so
    those are found before anything is written."""
    find = partial(cloud_items, n_points=opts.points, sampling=opts.sampling, max_points=opts.max_points)
    items, held = find(source.data), [] if source.eval_data is None else find(source.eval_data)
    skipped = []
    if source.skip_bad_files:
        items, held = readable_clouds(items, skipped), readable_clouds(held, skipped)
    if not items:
        raise DataError(f"{source.data}: no readable point clouds")
    classes = require_classes([label for _, _, label, _ in items], source.data)
    if source.eval_data is not None:
        check_held_out_classes([label for _, _, label, _ in held], classes, source.eval_data, source.data)
        splits = {"train": items, "test": held}
    else:
        labels, own = [label for _, _, label, _ in items], [split for *_, split in items]
        train_idx, eval_idx = held_out_split(labels, [str(i) for i in range(len(items))], own, source.seed)
        splits = {"train": [items[i] for i in train_idx], "test": [items[i] for i in eval_idx]}

    def samples(split: str, chosen: list[tuple]) -> Iterator[dict]:
        shuffled = random.Random(source.seed).sample(range(len(chosen)), len(chosen))  # a stream reads them in order
        for k in tqdm(shuffled, desc=f"writing {split}", disable=None if source.progress else True):
            name, _, label, _ = chosen[k]
            yield {"points.npy": unit_cloud(chosen[k]), "json": {"label": label, "name": name, "order": k}}

    return {
        "classes": classes,
        "options": {k: getattr(opts, k) for k in SHARD_OPTIONS},
        "data_card": data_card(source.data, KNOWN_CARDS),
        "splits": {split: write(split, samples(split, chosen)) for split, chosen in splits.items()},
        "skipped": skipped,
    }


def shard_item(sample: dict, classes: list[str], n_points: int, augment) -> dict:
    """A shard sample -> its pretraining item, drawn as ``CloudDataset`` draws it."""
    label = classes.index(sample["json"]["label"])
    return cloud_item(torch.from_numpy(sample["points.npy"]), label, n_points, augment)


def shard_domain(source: DataSource, opts: PointCloudOptions) -> DomainData:
    """Shards written by ``write_shards``: pretraining streams the training split (``ShardStream``);
    the probe and fine-tuning read the labelled splits into memory when they start."""
    index, shards = open_shards(source.data, "pointcloud", opts)
    where = source.data
    held = read_index(source.eval_data)[1] if source.eval_data else split_shards(source.data, index, "test")
    if not held:
        raise DataError(f"{where}: no held-out shards (test split) beside these; pass --eval-data")
    classes, n = index["classes"], opts.points

    def clouds(chosen) -> CloudDataset:
        samples = ShardStream(chosen, None, source.seed, source.skip_bad_files).samples()
        # in the recipe's order: the evaluation view draws the points of item i with seed i
        samples = sorted(samples, key=lambda sample: sample["json"]["order"])
        labels = [sample["json"]["label"] for sample in samples]
        return CloudDataset([torch.from_numpy(sample["points.npy"]) for sample in samples], labels, classes, n)

    return assemble(
        opts,
        ShardStream(
            shards, partial(shard_item, classes=classes, n_points=n, augment=MILD), source.seed, source.skip_bad_files
        ),
        OnFirstUse(lambda: clouds(shards)),
        OnFirstUse(lambda: clouds(held)),
        classes,
        index["data_card"],
        {"shards": len(shards), "train_clouds": samples_in(shards), "eval_clouds": samples_in(held)},
    )


# ---------------------------------------------------------------------------------------- picture
def splat(points: torch.Tensor, size: int = 96) -> torch.Tensor:
    """Orthographic x-y view of (P, 3) unit-sphere points, brighter when nearer (+z): (size, size)."""
    img = torch.zeros(size * size)
    xy = ((points[:, :2].clamp(-1, 1) + 1) / 2 * (size - 1)).round().long()
    shade = (0.35 + 0.65 * (points[:, 2].clamp(-1, 1) + 1) / 2).float()
    img.scatter_reduce_(0, (size - 1 - xy[:, 1]) * size + xy[:, 0], shade, reduce="amax")
    return img.view(size, size)


@torch.no_grad()
def render_reconstruction(mae, x: torch.Tensor, valid=None, seed: int = 0) -> torch.Tensor:
    """Rows: the cloud / its visible groups / visible plus predicted hidden groups: (3*S, B*S)."""
    adapter = mae.adapter
    patches = adapter.tokenize(x)
    out = mae.predict_hidden(patches, seed=seed)
    target = out.target.clone()  # (B, G, k*3)
    full = target.scatter(1, out.ids_pred[..., None].expand(-1, -1, target.shape[-1]), out.pred.to(target.dtype))
    visible = adapter.unpatchify(target, patches).view(len(x), target.shape[1], -1, 3)
    keep = (~out.mask)[..., None, None].expand_as(visible)
    rows = [
        [splat(c) for c in x[..., :3].cpu()],
        [splat(v[k].view(-1, 3)) for v, k in zip(visible.cpu(), keep.cpu(), strict=True)],
        [splat(c) for c in adapter.unpatchify(full, patches).cpu()],
    ]
    return torch.cat([torch.cat(r, dim=1) for r in rows], dim=0)
