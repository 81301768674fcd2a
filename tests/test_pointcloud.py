import json
from dataclasses import replace

import numpy as np
import open3d as o3d
import pytest
import torch
from torch.utils.data import DataLoader

from modalities.common import DataError, DataSource
from modalities.pointcloud.adapter import PointCloudAdapter, PointCloudConfig, chamfer_distance
from modalities.pointcloud.data import (
    SHAPE_CLASSES,
    CloudDataset,
    PointCloudAugment,
    PointCloudOptions,
    build_domain,
    load_clouds,
    make_shape,
    raw_features,
    shape_distribution,
)
from modalities.pointcloud.io import check_cloud, normalize_cloud, read_cloud
from modalities.pointcloud.tokenizer import PointPatches, farthest_point_sample, group_points, knn
from modalities.shards import parse_size
from tasks.shards import convert
from tests.conftest import peak_while_refusing


def brute_fps(xyz: np.ndarray, n: int) -> list[int]:
    picks, dist = [0], np.full(len(xyz), np.inf)
    for _ in range(n - 1):
        dist = np.minimum(dist, ((xyz - xyz[picks[-1]]) ** 2).sum(1))
        picks.append(int(dist.argmax()))
    return picks


def brute_chamfer(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    ab = [min(((p - q) ** 2).sum() for q in b) for p in a]
    ba = [min(((p - q) ** 2).sum() for q in a) for p in b]
    if kind == "l2":
        return np.mean(ab) + np.mean(ba)
    return (np.mean(np.sqrt(ab)) + np.mean(np.sqrt(ba))) / 2


# ------------------------------------------------------------------------------------------ readers
@pytest.mark.parametrize("suffix", [".ply", ".pcd", ".xyz", ".pts"])
def test_read_cloud__open3d_formats(tmp_path, suffix):
    pts = np.random.default_rng(0).normal(size=(200, 3))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    o3d.io.write_point_cloud(str(tmp_path / f"c{suffix}"), pcd)
    np.testing.assert_allclose(read_cloud(tmp_path / f"c{suffix}"), pts, atol=1e-4)


def test_read_cloud__xyz_only_whatever_else_the_file_holds(tmp_path):
    pts = np.random.default_rng(0).normal(size=(50, 3))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pcd.normals = o3d.utility.Vector3dVector(np.tile([0.0, 0.0, 1.0], (50, 1)))
    o3d.io.write_point_cloud(str(tmp_path / "n.ply"), pcd)
    np.save(tmp_path / "rgb.npy", np.concatenate([pts, np.ones((50, 3))], axis=1))
    for name in ("n.ply", "rgb.npy"):
        np.testing.assert_allclose(read_cloud(tmp_path / name), pts, atol=1e-5)


@pytest.mark.parametrize("suffix", [".off", ".obj", ".stl"])
@pytest.mark.parametrize("sampling", ["uniform", "poisson"])
def test_read_cloud__meshes_sampled_on_the_surface(tmp_path, suffix, sampling):
    box = o3d.geometry.TriangleMesh.create_box(2.0, 1.0, 1.0)
    box.compute_vertex_normals()
    o3d.io.write_triangle_mesh(str(tmp_path / f"m{suffix}"), box)
    pts = read_cloud(tmp_path / f"m{suffix}", n_points=300, sampling=sampling)
    assert len(pts) == 300
    on_face = np.isclose(pts, 0, atol=1e-5) | np.isclose(pts, [2.0, 1.0, 1.0], atol=1e-5)
    assert on_face.any(axis=1).all()  # every point lies on a face of the box


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".txt"])
def test_read_cloud__arrays(tmp_path, suffix):
    pts = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)  # xyz + one channel, dropped
    path = tmp_path / f"a{suffix}"
    {
        ".npy": lambda: np.save(path, pts),
        ".npz": lambda: np.savez(path, points=pts),
        ".txt": lambda: np.savetxt(path, pts),
    }[suffix]()
    np.testing.assert_allclose(read_cloud(path), pts[:, :3], atol=1e-6)


@pytest.mark.parametrize(
    "case,match",
    [
        ("empty.xyz", "empty point cloud"),
        ("garbage.pcd", "empty point cloud"),
        ("garbage.stl", "no triangles"),
        ("nan.npy", "NaN or infinite"),
        ("same.npy", "degenerate point cloud"),
        ("flat.npy", r"expected points \(N, 3\+\)"),
        ("zero_bytes.npy", "cannot read array"),
        ("huge.npy", "coordinates beyond float32's range"),  # finite in float64, inf in float32
    ],
)
def test_read_cloud__bad_files_named(tmp_path, case, match):
    path = tmp_path / case
    if case == "empty.xyz":
        path.write_text("")
    elif case.startswith("garbage"):
        path.write_bytes(b"\x01\x02 not a cloud" * 10)
    elif case == "nan.npy":
        np.save(path, np.array([[0.0, 0.0, np.nan], [1.0, 1.0, 1.0]]))
    elif case == "same.npy":
        np.save(path, np.ones((20, 3)))
    elif case == "zero_bytes.npy":
        path.write_bytes(b"")
    elif case == "huge.npy":
        np.save(path, np.array([[0.0, 0.0, 1e300], [1.0, 1.0, 1.0]]))
    else:
        np.save(path, np.ones((20, 2)))
    with pytest.raises(DataError, match=rf"{case}: {match}"):
        read_cloud(path)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".txt", ".ply"])
def test_read_cloud__over_max_points_named(tmp_path, suffix):
    pts = np.random.default_rng(3).normal(size=(1500, 3))
    path = tmp_path / f"many{suffix}"
    {
        ".npy": lambda: np.save(path, pts),
        ".npz": lambda: np.savez(path, points=pts),
        ".txt": lambda: np.savetxt(path, pts),
        ".ply": lambda: o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))),
    }[suffix]()
    with pytest.raises(DataError, match=rf"many{suffix}: 1,500 points, over the --max-points limit of 1,499"):
        read_cloud(path, max_points=1499)
    assert len(read_cloud(path, max_points=1500)) == 1500  # the limit is inclusive


def test_read_cloud__npy_over_max_points_refused_from_its_header(tmp_path):
    np.lib.format.open_memmap(tmp_path / "scan.npy", "w+", np.float64, (1_000_000, 3)).flush()  # 24 MB
    peak = peak_while_refusing(
        lambda: read_cloud(tmp_path / "scan.npy", max_points=999_999),
        match=r"scan.npy: 1,000,000 points, over the --max-points limit of 999,999",
    )
    assert peak < 2**20  # reading the points would take 24 MB
    assert PointCloudOptions().max_points == 10_000_000


def test_normalize_cloud__unit_sphere_and_scale_kept():
    pts = np.random.default_rng(2).normal(size=(100, 3)) * 1e5 + 3e4
    out, centre, scale = normalize_cloud(pts)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-9)
    assert np.linalg.norm(out, axis=1).max() == pytest.approx(1.0)
    np.testing.assert_allclose(out * scale + centre, pts)


def test_dataset__fewer_points_resampled_with_replacement():
    cloud = torch.rand(10, 3)
    ds = CloudDataset([cloud], ["a"], ["a", "b"], n_points=32)
    x = ds[0]["x"]
    assert x.shape == (32, 3) and torch.equal(ds[0]["x"], x)  # fixed draw without augmentation
    assert all((cloud == p).all(1).any() for p in x)  # every point is one of the cloud's


# ---------------------------------------------------------------------------------------- tokenizer
def test_fps__matches_brute_force_and_covers():
    xyz = torch.rand(3, 300, 3)
    idx = farthest_point_sample(xyz, 16)
    for b in range(3):
        assert idx[b].tolist() == brute_fps(xyz[b].numpy(), 16)
    # coverage: every point lies within the FPS radius, and that radius beats random centres
    d = torch.cdist(xyz, xyz.gather(1, idx[..., None].expand(-1, -1, 3))).amin(2).amax(1)
    rand = torch.cdist(xyz, xyz[:, torch.randperm(300)[:16]]).amin(2).amax(1)
    assert (d <= rand + 1e-6).all()


def test_knn__exact_against_brute_force_and_chunking():
    pts, q = torch.rand(2, 500, 3), torch.rand(2, 20, 3)
    idx = knn(q, pts, 8)
    brute = ((q[:, :, None] - pts[:, None]) ** 2).sum(-1).argsort(-1)[..., :8]
    assert torch.equal(idx.sort(-1).values, brute.sort(-1).values)
    assert torch.equal(knn(q, pts, 8, max_elements=600), idx)  # one query at a time, same answer


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_chamfer__against_brute_force(kind):
    rng = np.random.default_rng(3)
    cases = [
        (rng.normal(size=(7, 3)), rng.normal(size=(5, 3))),
        (np.zeros((4, 3)), rng.normal(size=(4, 3))),  # duplicates
        (np.ones((1, 3)), rng.normal(size=(1, 3))),  # single-point groups
        (np.repeat(rng.normal(size=(2, 3)), 3, 0), rng.normal(size=(6, 3))),
    ]
    for a, b in cases:
        got = chamfer_distance(torch.tensor(a[None]), torch.tensor(b[None]), kind).item()
        assert got == pytest.approx(brute_chamfer(a, b, kind), rel=1e-6, abs=1e-9)
    a = torch.rand(1, 6, 3, dtype=torch.float64)
    assert chamfer_distance(a, a.flip(1), kind).item() == pytest.approx(0.0, abs=1e-5)


def test_group_points__centres_and_neighbourhoods():
    pts = torch.rand(2, 256, 3)
    g = group_points(pts, 16, 8)
    assert g.centres.shape == (2, 16, 3) and g.neighbourhoods.shape == (2, 16, 8, 3)
    absolute = g.neighbourhoods + g.centres[:, :, None]
    expect = pts.gather(1, g.index.view(2, -1, 1).expand(-1, -1, 3)).view(2, 16, 8, 3)
    torch.testing.assert_close(absolute, expect)
    assert (g.neighbourhoods[:, :, 0].abs() < 1e-6).all()  # the centre is its own nearest point


def test_adapter__embed_and_targets_read_one_explicit_tokenization():
    adapter = PointCloudAdapter(PointCloudConfig(n_points=128, n_groups=8, group_size=16), 32)
    x = torch.rand(2, 128, 3)
    patches = adapter.tokenize(x)
    assert isinstance(patches, PointPatches) and adapter.tokenize(patches) is patches  # idempotent
    tokens, coords = adapter.embed(patches)
    values, weights = adapter.targets(patches)
    assert tokens.shape == (2, 8, 32) and values.shape == (2, 8, 48) and weights is None
    torch.testing.assert_close(coords, patches.centres)
    torch.testing.assert_close(values, patches.neighbourhoods.flatten(2))
    torch.testing.assert_close(adapter.embed(x).tokens, tokens)  # raw clouds are tokenized the same way
    with pytest.raises(ValueError, match=r"expected points \(B, N, 3\)"):
        adapter.tokenize(torch.rand(2, 128, 6))


def test_adapter__visible_groups_alone_embed_as_all_then_gathered():
    # the mini-PointNet's LayerNorms see one group at a time: in training too (Point-MAE's BatchNorm
    # would take its statistics over the visible groups only)
    adapter = PointCloudAdapter(PointCloudConfig(n_points=128, n_groups=8, group_size=16), 32).train()
    patches = adapter.tokenize(torch.rand(4, 128, 3))
    ids = torch.stack([torch.randperm(8)[:3] for _ in range(4)])
    gathered = lambda t: t.gather(1, ids[..., None].expand(-1, -1, 32))  # noqa: E731
    visible = adapter.embed(patches, ids)
    assert visible.tokens.shape == (4, 3, 32) and torch.equal(visible.coords, patches.centres)
    torch.testing.assert_close(visible.tokens, gathered(adapter.embed(patches).tokens))


def test_adapter__baseline_is_the_group_centre():
    adapter = PointCloudAdapter(PointCloudConfig(n_points=64, n_groups=4, group_size=8), 32)
    target = adapter.targets(torch.rand(1, 64, 3)).values
    base = adapter.baselines(target)["group_centre"]
    k = 8
    expected = (target.view(-1, k, 3) ** 2).sum(-1).mean()  # centre -> points, squared
    nearest_to_centre = (target.view(-1, k, 3) ** 2).sum(-1).amin(-1).mean()
    assert adapter.loss(base, target).item() == pytest.approx((expected + nearest_to_centre).item(), rel=1e-5)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"n_groups": 0}, "n_groups"),
        ({"group_size": 5000}, "group_size"),
        ({"chamfer": "emd"}, "chamfer"),
    ],
)
def test_config__bad_values_raise(fields, match):
    with pytest.raises(ValueError, match=match):
        PointCloudConfig(**fields)


# ------------------------------------------------------------------------------ augmentation, data
def test_augment__rotation_about_up_keeps_height_and_radius():
    torch.manual_seed(0)
    pts = torch.rand(100, 3)
    aug = PointCloudAugment(scale=(1.0, 1.0), translate=0.0, jitter=0.0, dropout=0.0)
    out = aug(pts)
    torch.testing.assert_close(out[:, 2], pts[:, 2])
    torch.testing.assert_close(out[:, :2].norm(dim=1), pts[:, :2].norm(dim=1))
    assert not torch.allclose(out, pts)


def test_augment__dropout_replaces_points_with_the_first():
    torch.manual_seed(1)
    out = PointCloudAugment(rotate_up=False, scale=(1, 1), translate=0, jitter=0, dropout=0.9)(torch.rand(500, 3))
    assert (out == out[0]).all(1).sum() > 10


def test_shapes__every_class_is_a_unit_sphere_cloud():
    rng = np.random.default_rng(0)
    for name in SHAPE_CLASSES:
        pts = make_shape(name, rng, 256)
        assert pts.shape == (256, 3) and np.linalg.norm(pts, axis=1).max() == pytest.approx(1.0, abs=1e-5)
        check_cloud(pts, name)


def test_load_clouds__modelnet10_layout(shared):
    clouds, labels, splits, skipped = load_clouds(
        shared / "pointcloud" / "modelnet10_pcd_subset", 1024, "uniform", False, False
    )
    assert len(clouds) == 1000 and len(set(labels)) == 10 and set(splits) == {"train"} and not skipped
    radii = torch.stack([c.norm(dim=1).max() for c in clouds[::97]])
    torch.testing.assert_close(radii, torch.ones_like(radii))


def test_load_clouds__adrenal_npz_splits(shared):
    clouds, labels, splits, _ = load_clouds(
        shared / "pointcloud" / "adrenalmnist3d_surface_points", 1024, "uniform", False, False
    )
    assert (splits.count("train"), splits.count("val")) == (1188, 98) and set(labels) == {"0", "1"}


def test_load_clouds__class_split_folders_and_skip_bad(tmp_path):
    for cls in ("a", "b"):
        for split in ("train", "test"):
            (tmp_path / cls / split).mkdir(parents=True)
            np.save(tmp_path / cls / split / "x.npy", np.random.default_rng(0).normal(size=(30, 3)))
    np.save(tmp_path / "a" / "train" / "bad.npy", np.zeros((0, 3)))
    with pytest.raises(DataError, match="bad.npy: empty point cloud"):
        load_clouds(tmp_path, 64, "uniform", skip_bad=False, progress=False)
    clouds, labels, splits, skipped = load_clouds(tmp_path, 64, "uniform", skip_bad=True, progress=False)
    assert sorted(splits) == ["test", "test", "train", "train"] and len(skipped) == 1


def test_load_clouds__max_points_makes_big_clouds_bad_files(tmp_path):
    rng = np.random.default_rng(4)
    for cls in ("a", "b"):
        (tmp_path / "folders" / cls).mkdir(parents=True)
        np.save(tmp_path / "folders" / cls / "x.npy", rng.normal(size=(30, 3)))
    np.save(tmp_path / "folders" / "a" / "big.npy", rng.normal(size=(100, 3)))
    with pytest.raises(DataError, match=r"big.npy: 100 points, over the --max-points limit of 50"):
        load_clouds(tmp_path / "folders", 64, "uniform", skip_bad=False, progress=False, max_points=50)
    clouds, _, _, skipped = load_clouds(tmp_path / "folders", 64, "uniform", True, progress=False, max_points=50)
    assert len(clouds) == 2 and [name for name, _ in skipped] == [str(tmp_path / "folders" / "a" / "big.npy")]
    npz = tmp_path / "splits.npz"
    np.savez(npz, train_points=rng.normal(size=(2, 100, 3)), train_labels=np.array([0, 1]))  # MedMNIST style
    with pytest.raises(DataError, match=r"splits.npz\[train\]\[0\]: 100 points, over the --max-points limit of 50"):
        load_clouds(npz, 64, "uniform", skip_bad=False, progress=False, max_points=50)


# ------------------------------------------------------------------------------- probe baseline
def random_rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # (3, 3) orthogonal


def test_raw_features__cube_corners_edge_face_and_space_diagonals_12_12_4():
    """The 8 corners of a unit cube lie sqrt(3) / 2 from their centroid: in that unit the edges
    are 2 / sqrt(3) = 1.155 (bin 18 of 32 over [0, 2]), the face diagonals 1.633 (bin 26) and the
    space diagonals 2 (bin 31); every corner is 1 from the centroid (bin 31 of the second half)."""
    cube = torch.tensor([[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)])
    moved = (cube.double() @ random_rotation(0) * 7.5 + 3.0).float()  # rotated, scaled, shifted
    features, targets = raw_features(CloudDataset([cube, moved], ["box", "box"], ["a", "box"], n_points=8))
    pairs = torch.zeros(32)
    pairs[[18, 26, 31]] = torch.tensor([12.0, 12.0, 4.0]) / 28
    centre = torch.zeros(32)
    centre[31] = 1.0
    assert features.shape == (2, 64) and targets.tolist() == [1, 1]
    torch.testing.assert_close(features, torch.cat([pairs, centre]).expand(2, 64))


def test_raw_features__shape_distribution_blind_to_scale_rotation_and_point_order():
    cloud = torch.randn(256, 3) * torch.tensor([1.0, 0.5, 0.2])  # an ellipsoid: distances of every length
    moved = (cloud.double() @ random_rotation(1) * 0.01 - 5.0).float()[torch.randperm(256)]
    same, other = shape_distribution(cloud), shape_distribution(moved)
    assert same.shape == (64,) and torch.allclose(same[:32].sum(), torch.tensor(1.0))
    torch.testing.assert_close(other, same, atol=1e-4, rtol=0)  # a pair on a bin edge may round across it
    assert (same - shape_distribution(cloud * torch.tensor([1.0, 1.0, 3.0]))).abs().max() > 0.01  # shape matters


def test_raw_features__large_clouds_use_a_fixed_sample_of_points():
    cloud = torch.rand(3000, 3)  # a filled cube: its largest radius hardly varies between samples
    features = shape_distribution(cloud)
    torch.testing.assert_close(shape_distribution(cloud), features, atol=0, rtol=0)  # the same sample every time
    torch.testing.assert_close(features.view(2, 32).sum(1), torch.ones(2))
    every_pair = shape_distribution(cloud, most=3000)
    assert not torch.equal(features, every_pair)
    torch.testing.assert_close(features, every_pair, atol=0.005, rtol=0)  # a fair sample


def test_raw_features__wired_into_the_built_in_domain():
    opts = PointCloudOptions(points=64, n_groups=8, group_size=8, shapes_per_class=2)
    data = build_domain(DataSource(progress=False), opts)
    for dataset in (data.train_eval, data.held_out):
        features, targets = data.raw_features(dataset)
        assert features.shape == (len(dataset), 64) and targets.tolist() == dataset.class_ids
        torch.testing.assert_close(features[-1], shape_distribution(dataset[len(dataset) - 1]["x"]))


# ------------------------------------------------------------------------------------------ shards
SHARD_OPTS = PointCloudOptions(points=32, n_groups=4, group_size=8, pointnet_width=32)


def cloud_folder(root, bad: bool = False):
    """Three classes of six clouds of 20 to 80 points (under --points 32: drawn with replacement);
    with ``bad``, an empty cloud second in the first class, which shifts the positions after it."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("a", "b", "c")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            np.save(root / cls / f"{i}.npy", rng.normal(c, 1, (20 + 12 * i, 3)))
    if bad:
        np.save(root / "a" / "0_bad.npy", np.zeros((0, 3)))
    return root


@pytest.mark.parametrize("bad", [False, True], ids=["clean", "a_bad_file_skipped"])
def test_shards__hold_what_the_recipe_reads_from_the_folder(tmp_path, bad):
    source = DataSource(str(cloud_folder(tmp_path / "data", bad)), skip_bad_files=bad, progress=False)
    loose = build_domain(source, SHARD_OPTS)
    index = convert("pointcloud", source, SHARD_OPTS, tmp_path / "shards", parse_size("8kB"))
    shards = build_domain(replace(source, data=str(tmp_path / "shards")), SHARD_OPTS)
    assert len(index["splits"]["train"]) > 1 and len(index["skipped"]) == loose.info["skipped_files"] == bad
    assert (shards.classes, shards.adapter, shards.data_card) == (loose.classes, loose.adapter, loose.data_card)
    for split in ("train_eval", "held_out"):
        a, b = getattr(loose, split), getattr(shards, split)
        assert len(a) == len(b) >= 3 and a.labels == b.labels
        assert all(torch.equal(ca, cb) for ca, cb in zip(a.clouds, b.clouds, strict=True))
        for i in range(len(a)):  # the evaluation view draws item i's points with seed i: the same order
            assert torch.equal(a[i]["x"], b[i]["x"]) and a[i]["y"] == b[i]["y"]
        torch.testing.assert_close(shards.raw_features(b), loose.raw_features(a))


def test_shards__the_stream_draws_as_the_pretraining_set(tmp_path):
    source = DataSource(str(cloud_folder(tmp_path / "data")), progress=False)
    loose = build_domain(source, SHARD_OPTS)
    convert("pointcloud", source, SHARD_OPTS, tmp_path / "shards", parse_size("8kB"))
    stream = build_domain(DataSource(str(tmp_path / "shards")), SHARD_OPTS).pretrain
    batch = next(iter(DataLoader(stream.split(0, 1, 4), batch_size=4, num_workers=1)))
    assert batch["x"].shape == (4, *loose.pretrain[0]["x"].shape) == (4, 32, 3)
    for sample in list(stream.samples())[:3]:
        torch.manual_seed(7)
        expected = loose.pretrain[sample["json"]["order"]]
        torch.manual_seed(7)
        got = stream.decode(sample)
        assert torch.equal(got["x"], expected["x"]) and got["y"] == expected["y"]


def test_shards__read_with_other_options_or_recipe_is_a_clear_error(tmp_path):
    source = DataSource(str(cloud_folder(tmp_path / "data")), progress=False)
    convert("pointcloud", source, SHARD_OPTS, tmp_path / "shards", parse_size("1MB"))
    where = DataSource(str(tmp_path / "shards"))
    with pytest.raises(DataError, match=r"written with --points 32, --sampling uniform; run with those or convert"):
        build_domain(where, replace(SHARD_OPTS, points=64, sampling="poisson"))
    assert build_domain(where, replace(SHARD_OPTS, n_groups=8, votes=2)).held_out_views  # the model's own options
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    (tmp_path / "shards" / "index.json").write_text(json.dumps({**index, "modality": "audio"}))
    with pytest.raises(DataError, match=rf"{tmp_path / 'shards'}: shards of the audio recipe, not pointcloud"):
        build_domain(where, SHARD_OPTS)
