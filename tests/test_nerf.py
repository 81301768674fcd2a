"""Radiance grids as tokens: the nerf adapter's NeRF-MAE loss weights, density to opacity, the
built-in procedural set and its pictures, the layouts of --data (grids, posed-image scenes, shards),
voxel labels for --task segment, the recipe's own --stage bake."""

import dataclasses
import itertools
import json
import re
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from foundations.mae import MaskedAutoencoder
from modalities import build_adapter
from modalities.common import DataError, DataSource
from modalities.nerf.adapter import NerfConfig
from modalities.nerf.bake import save_grid
from modalities.nerf.data import (
    GridDataset,
    NerfOptions,
    bake_scenes,
    build_domain,
    composite,
    find_scenes,
    opacity,
    pad_to,
    prepare,
    read_grids,
)
from modalities.nerf.mesh import PRIMITIVES, procedural_scene
from modalities.shards import ShardStream, parse_size, read_index
from modalities.volume.data import VolumeOptions
from tasks.options import build_parser, parse
from tasks.shards import convert
from tests.conftest import TINY_MAE


def nerf_adapter(**fields):
    return build_adapter({"name": "nerf", "patch": [2, 2, 2], "size": [4, 4, 4], **fields}, 32)


def test_targets__colour_counts_where_occupied_opacity_wherever_valid():
    adapter = nerf_adapter(colour_weight=2.0, opacity_weight=0.5)
    image = torch.rand(1, 4, 4, 4, 4)
    image[:, 3] = 0.0
    image[:, 3, 0, 0, 0] = 0.9  # one occupied voxel, in the first patch
    valid = torch.ones(1, 1, 4, 4, 4)
    valid[..., 3] = 0  # the last z layer is padding
    x = {"image": image, "spacing": torch.full((1, 3), 0.1)}
    values, weights = adapter.targets(x, valid)
    back = adapter.unpatchify(weights, x)  # (1, 4, X, Y, Z) weights in the grid's layout
    assert torch.equal(adapter.unpatchify(values, x), image)  # values in [0, 1] as they are
    assert back[0, :3, 0, 0, 0].tolist() == [2.0, 2.0, 2.0] and back[0, :3].sum() == 6.0  # only the occupied voxel
    assert torch.equal(back[0, 3], 0.5 * valid[0, 0])  # opacity everywhere but padding


def test_mae_loss__equals_a_voxel_by_voxel_reference():
    """NeRF-MAE's loss written out voxel by voxel: over the hidden valid voxels of each grid, colour
    error x colour weight where alpha > 0.01, opacity error x opacity weight, divided by the weights'
    sum; the mean over grids. The model's loss must be the same number."""
    adapter = nerf_adapter(colour_weight=2.0, opacity_weight=0.5)
    torch.manual_seed(0)
    image = torch.rand(2, 4, 4, 4, 4)
    image[:, 3] = (image[:, 3] > 0.6) * image[:, 3]  # about 40 % occupied
    valid = torch.ones(2, 1, 4, 4, 4)
    valid[1, :, 3] = 0  # the second grid's last x layer is padding
    x = {"image": image, "spacing": torch.full((2, 3), 0.1)}
    mae = MaskedAutoencoder(adapter, dataclasses.replace(TINY_MAE, norm_target=False))
    out = mae(x, valid, generator=torch.Generator().manual_seed(0))
    full = torch.zeros(2, 8, adapter.target_dim)  # every token's prediction, zero where visible
    full.scatter_(1, out.ids_pred[..., None].expand_as(out.pred), out.pred)
    pred = adapter.unpatchify(full, x)  # (2, 4, 4, 4, 4) in the grid's layout
    hidden = adapter.unpatchify(out.mask.float()[..., None].expand(-1, -1, adapter.target_dim), x)[:, 0]
    per_grid = []
    for b in range(2):
        error = weight = 0.0
        for i, j, k in itertools.product(range(4), repeat=3):
            if not hidden[b, i, j, k] or not valid[b, 0, i, j, k]:
                continue
            terms = [(3, 0.5)] + ([(c, 2.0) for c in range(3)] if image[b, 3, i, j, k] > 0.01 else [])
            for c, w in terms:
                error += w * float(pred[b, c, i, j, k] - image[b, c, i, j, k]) ** 2
                weight += w
        per_grid.append(error / max(weight, 1.0))
    assert out.mask.sum() == 12  # 6 of the 8 tokens a grid hidden: a real mix of hidden and visible
    assert float(out.loss) == pytest.approx(sum(per_grid) / 2, rel=1e-5)


def test_config__bad_values_name_the_field():
    with pytest.raises(ValueError, match="4 channels"):
        NerfConfig(channels=3)
    with pytest.raises(ValueError, match="occupied"):
        NerfConfig(occupied=1.5)


def test_opacity__is_one_minus_transmittance_over_a_voxel():
    sigma = np.array([0.0, 1.0, 10.0, -3.0])
    np.testing.assert_allclose(opacity(sigma, (0.5, 0.5, 0.5)), [0.0, 1 - np.exp(-0.5), 1 - np.exp(-5.0), 0.0])


def test_composite__the_front_voxel_hides_what_is_behind():
    rgba = torch.zeros(4, 1, 1, 3)
    rgba[:3, 0, 0, 0], rgba[:3, 0, 0, 2] = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    rgba[3, 0, 0, 0], rgba[3, 0, 0, 2] = 0.5, 1.0  # half-transparent red in front of opaque green
    pixel = composite(rgba)[:, 0, 0]
    torch.testing.assert_close(pixel, torch.tensor([0.5, 0.5, 0.0]))
    assert torch.equal(composite(torch.zeros(4, 2, 2, 2))[:, 0, 0], torch.ones(3))  # empty: the white background


def test_pad_to__pads_the_far_corner_with_invalid_voxels():
    grid = {"rgbsigma": np.ones((3, 4, 2, 4), np.float32), "valid": np.ones((3, 4, 2)), "voxel_size": [0.1] * 3}
    item = pad_to(prepare(grid, "g", 0), (4, 4, 4))
    assert item["image"].shape == (4, 4, 4, 4) and item["valid"].sum() == 3 * 4 * 2
    assert item["valid"][0, 3].sum() == 0 and item["valid"][0, :, :, 2:].sum() == 0


def test_build_domain__procedural_scenes_split_and_train_through_the_mae():
    data = build_domain(DataSource(seed=1), NerfOptions(grid=16, scenes=20))
    assert len(data.pretrain) + len(data.held_out) == 20 and data.classes[0] == "box"
    item = data.pretrain[0]
    assert item["x"]["image"].shape == (4, 16, 16, 16) and item["valid"].shape == (1, 16, 16, 16)
    assert 0 < data.info["occupied_fraction"] < 0.5  # sparse scenes in an empty box
    adapter = build_adapter(data.adapter, 32)
    batch = [data.held_out[i] for i in range(2)]
    x = {k: torch.stack([b["x"][k] for b in batch]) for k in ("image", "spacing")}
    mae = MaskedAutoencoder(adapter, TINY_MAE)
    assert torch.isfinite(mae(x, torch.stack([b["valid"] for b in batch])).loss)
    assert data.render(mae, x).shape == (4 * 48, 4 * 32, 3)  # 3 rows of 2 grids of 16^3, 4 pixels a voxel


def test_grid_dataset__augmentation_moves_colour_opacity_and_valid_together():
    image = torch.zeros(4, 4, 4, 4)
    image[:, 0, 1, 2] = 1.0  # one white opaque voxel
    valid = torch.zeros(1, 4, 4, 4)
    valid[0, 0, 1, 2] = 1.0
    data = GridDataset([{"image": image, "valid": valid, "spacing": torch.ones(3), "label": 0}], augment=True)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        item = data[0]
        where = item["x"]["image"][3].nonzero().tolist()
        assert len(where) == 1 and item["valid"][0].nonzero().tolist() == where
        assert (item["x"]["image"][:, where[0][0], where[0][1], where[0][2]] == 1).all()
        seen.add(tuple(where[0]))
    assert len(seen) > 2 and all(z == 2 for _, _, z in seen)  # moved about, never along the up axis


def test_build_domain__segment_task_yields_voxel_labels_of_empty_and_the_kinds():
    data = build_domain(DataSource(seed=1), NerfOptions(grid=16, scenes=10, task="segment"))
    assert data.classes == ["empty", *PRIMITIVES] and data.raw_features is None
    item = data.finetune[0]
    assert item["y"].shape == (16, 16, 16) and item["y"].dtype == torch.long
    np.testing.assert_array_equal(item["y"] > 0, item["x"]["image"][3] > 0.5)  # solid objects, labelled
    assert isinstance(data.held_out[0]["y"], torch.Tensor) and isinstance(data.pretrain[0]["y"], int)


def test_build_domain__grids_without_labels_cannot_be_segmented(tmp_path):
    for kind in ("a", "b"):
        (tmp_path / kind).mkdir()
        grid = procedural_scene(seed=len(kind), grid=8)
        save_grid(tmp_path / kind / "labelled.npz", grid, {})
        save_grid(tmp_path / kind / "plain.npz", {k: v for k, v in grid.items() if k != "labels"}, {})
    with pytest.raises(DataError, match=r"plain.npz: no labels array; --task segment needs voxel labels"):
        build_domain(DataSource(data=str(tmp_path)), NerfOptions(task="segment"))
    assert build_domain(DataSource(data=str(tmp_path)), NerfOptions()).classes == ["a", "b"]


def test_read_grids__npz_files_in_the_folder_itself_are_unlabelled(tmp_path):
    for i in range(3):
        save_grid(tmp_path / f"{i}.npz", procedural_scene(seed=i, grid=8), {})
    items, classes, skipped, _ = read_grids(tmp_path, skip_bad=False)
    assert len(items) == 3 and classes == [] and {it["label"] for it in items} == {-1} and not skipped
    (tmp_path / "a").mkdir()
    save_grid(tmp_path / "a" / "x.npz", procedural_scene(seed=5, grid=8), {})
    with pytest.raises(DataError, match="both in the folder .* and in class folders"):
        read_grids(tmp_path, skip_bad=False)


def test_read_grids__an_empty_grid_is_bad_data_and_one_smaller_than_a_patch_is_padded(tmp_path):
    for kind in ("a", "b"):
        (tmp_path / kind).mkdir()
        for i in range(5):
            save_grid(tmp_path / kind / f"{i}.npz", procedural_scene(seed=i + 10 * len(kind), grid=8), {})
    small = np.full((3, 3, 3, 4), 0.5, np.float32)  # sigma 0.5 over voxels of 1: alpha 0.39, occupied
    box = np.array([[0, 0, 0], [3, 3, 3]], np.float32)
    grid = {"rgbsigma": small, "valid": np.ones((3, 3, 3)), "bbox": box, "voxel_size": np.ones(3)}
    save_grid(tmp_path / "a" / "small.npz", grid, {})
    empty = {**procedural_scene(seed=0, grid=8)}
    empty["rgbsigma"] = empty["rgbsigma"] * np.array([1, 1, 1, 0], np.float32)  # no density anywhere
    save_grid(tmp_path / "b" / "empty.npz", empty, {})
    with pytest.raises(DataError, match=r"empty.npz: no occupied voxel \(alpha > 0.01 nowhere\)"):
        read_grids(tmp_path, skip_bad=False)
    data = build_domain(DataSource(data=str(tmp_path), skip_bad_files=True), NerfOptions(patch=4))
    assert data.info["skipped_files"] == 1 and data.info["grid_size"] == [8, 8, 8]
    grids = [*data.train_eval.items, *data.held_out.items]
    padded = next(it for it in grids if it["name"].endswith("small.npz"))
    assert padded["image"].shape == (4, 8, 8, 8) and padded["valid"].sum() == 27
    assert padded["valid"][0, :3, :3, :3].all()


def scene_folder(path, transforms="transforms_train.json"):
    path.mkdir(parents=True)
    (path / transforms).write_text("{}")


def test_find_scenes__class_folders_of_scenes_or_scenes_alone(tmp_path):
    scene_folder(tmp_path / "labelled" / "chair" / "one")
    scene_folder(tmp_path / "labelled" / "chair" / "two", "transforms.json")
    scene_folder(tmp_path / "labelled" / "ship" / "three")
    (tmp_path / "labelled" / "ship" / "notes").mkdir()  # no transforms file: not a scene
    found = [(c, p.name) for c, p in find_scenes(tmp_path / "labelled")]
    assert found == [("chair", "one"), ("chair", "two"), ("ship", "three")]
    scene_folder(tmp_path / "flat" / "lego")
    scene_folder(tmp_path / "flat" / "fox", "transforms.json")
    assert [(c, p.name) for c, p in find_scenes(tmp_path / "flat")] == [("", "fox"), ("", "lego")]
    assert find_scenes(tmp_path / "flat" / "lego") == [("", tmp_path / "flat" / "lego")]  # a scene itself
    assert find_scenes(tmp_path / "labelled" / "ship" / "notes") == []  # e.g. a folder of grids
    scene_folder(tmp_path / "labelled" / "lone")
    with pytest.raises(DataError, match=r"scene folders \(lone\) beside class folders of scenes \(chair/\)"):
        find_scenes(tmp_path / "labelled")


def test_bake_scenes__a_broken_scene_stops_naming_its_file_or_is_skipped_and_grids_there_are_kept(tmp_path):
    scene_folder(tmp_path / "scenes" / "kept")  # its grid is already there: never read
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "kept.npz").write_bytes(b"baked before")
    scene_folder(tmp_path / "scenes" / "broken")
    broken = tmp_path / "scenes" / "broken" / "transforms_train.json"
    broken.write_text('{"camera_angle_x": 0.7, "frames": [')
    with pytest.raises(DataError, match="malformed JSON") as info:
        bake_scenes(tmp_path / "scenes", tmp_path / "grids", NerfOptions(), overwrite=False, skip_bad=False)
    assert str(info.value).startswith(str(broken)) and "\n" not in str(info.value)
    scene_folder(tmp_path / "scenes" / "lost")  # a frame without its image: bad data too, not a crash
    frame = {"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist()}
    (tmp_path / "scenes" / "lost" / "transforms_train.json").write_text(
        json.dumps({"camera_angle_x": 0.7, "frames": [frame]})
    )
    figures = bake_scenes(tmp_path / "scenes", tmp_path / "grids", NerfOptions(), overwrite=False, skip_bad=True)
    assert (figures["baked_scenes"], figures["cached_scenes"], figures["skipped_scenes"]) == (0, 1, 2)
    again = bake_scenes(tmp_path / "scenes", tmp_path / "grids", NerfOptions(), overwrite=True, skip_bad=True)
    assert (again["cached_scenes"], again["skipped_scenes"]) == (0, 3)  # "kept" read this time: no frames in it
    with pytest.raises(DataError, match="lost/train/r_0: image of frame 0 in .* not found"):
        bake_scenes(tmp_path / "scenes" / "lost", tmp_path / "grids", NerfOptions(), overwrite=False, skip_bad=False)
    with pytest.raises(DataError, match="--stage bake needs --data"):
        bake_scenes(None, tmp_path / "grids", NerfOptions(), overwrite=False, skip_bad=False)


def test_nerf_options__bad_values_name_the_field():
    for fields, pattern in [
        ({"task": "detect"}, "task must be classify or segment, got 'detect'"),
        ({"bake_grid": 2}, "bake_grid 2 is too small"),
        ({"bake_steps": 0}, "bake_steps must be positive, got 0"),
        ({"bake_downscale": 0}, "bake_downscale must be a positive integer, got 0"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            NerfOptions(**fields)


def test_parse__bake_is_a_stage_of_the_nerf_recipe_only(capsys):
    assert parse("nerf", "", NerfOptions, argv=["--stage", "bake"]).run.stages == ()
    assert parse("nerf", "", NerfOptions, argv=["--stage", "bake,pretrain"]).run.stages == ("pretrain",)
    assert "bake: posed-image scenes" in build_parser("nerf", "", NerfOptions).format_help()
    with pytest.raises(SystemExit):
        parse("volumes", "", VolumeOptions, argv=["--stage", "bake"])
    assert "--stage bake: choose all or from pretrain,probe,finetune,prune,extract, comma" in capsys.readouterr().err


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """Two classes of five procedural 8^3 grids as ``save_grid`` writes them (float16, voxel labels),
    and a 10^3 grid in float32 that no float16 holds, written as another tool might."""
    root = tmp_path_factory.mktemp("grids")
    for k, kind in enumerate(("a", "b")):
        (root / kind).mkdir()
        for i in range(5):
            save_grid(root / kind / f"{i}.npz", procedural_scene(seed=i + 10 * k, grid=8), {})
    scene = procedural_scene(seed=99, grid=10)
    arrays = {k: scene[k] for k in ("valid", "bbox", "voxel_size", "labels")}
    np.savez(root / "b" / "fine.npz", rgbsigma=scene["rgbsigma"] * np.float32(0.999), meta=np.array("{}"), **arrays)
    return root


def shard_domain_of(grids, out, opts: NerfOptions):
    convert("nerf", DataSource(str(grids)), opts, out, parse_size("8kB"))
    return build_domain(DataSource(str(out)), opts)


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_shards__hold_the_grids_the_recipe_reads_from_the_folder(grids, tmp_path, task):
    opts = NerfOptions(patch=4, task=task)
    loose = build_domain(DataSource(str(grids)), opts)
    shards = shard_domain_of(grids, tmp_path, opts)
    assert len(read_index(str(tmp_path))[1]) > 2  # several shards of at most 8 kB
    assert (shards.classes, shards.adapter) == (loose.classes, loose.adapter)
    assert {k: shards.info[k] for k in ("grid_size", "train_grids", "eval_grids", "voxel_size_min")} == {
        k: loose.info[k] for k in ("grid_size", "train_grids", "eval_grids", "voxel_size_min")
    }
    assert shards.info["occupied_fraction"] == pytest.approx(loose.info["occupied_fraction"], rel=1e-6)
    for split in ("train_eval", "held_out"):
        a = {it["name"]: it for it in getattr(loose, split).items}
        b = {it["name"]: it for it in getattr(shards, split).items}
        assert a.keys() == b.keys() and len(a) >= 2
        for name in a:
            keys = ("image", "valid", "spacing", "label", *(("voxels",) if task == "segment" else ()))
            assert all(torch.equal(torch.as_tensor(a[name][k]), torch.as_tensor(b[name][k])) for k in keys), name
    assert type(shards.finetune[0]["y"]) is type(loose.finetune[0]["y"])  # the class, or the voxels' labels
    index = read_index(str(tmp_path))[0]
    every = [(tmp_path / s["url"], s["nsamples"]) for listed in index["splits"].values() for s in listed]
    stored = {s["json"]["name"]: s["rgbsigma.npy"].dtype for s in ShardStream(every, None, 0, False).samples()}
    assert len(stored) == 11 and stored.pop(str(grids / "b" / "fine.npz")) == np.float32  # float16 would round it
    assert set(stored.values()) == {np.dtype(np.float16)}  # as save_grid wrote them


def test_shards__the_stream_gives_the_folder_pretraining_items(grids, tmp_path):
    loose = build_domain(DataSource(str(grids)), NerfOptions(patch=4))
    shards = shard_domain_of(grids, tmp_path, NerfOptions(patch=4))
    batch = next(iter(DataLoader(shards.pretrain.split(0, 1, 2), batch_size=2)))
    assert batch["x"]["image"].shape == (2, 4, 12, 12, 12) and batch["valid"].shape == (2, 1, 12, 12, 12)
    names = [it["name"] for it in loose.pretrain.items]
    for seed, sample in enumerate(
        itertools.islice(ShardStream(read_index(str(tmp_path))[1], None, 0, False).samples(), 4)
    ):
        torch.manual_seed(seed)  # the same draws: the same flips and turns
        a = shards.pretrain.decode(sample)
        torch.manual_seed(seed)
        b = loose.pretrain[names.index(sample["json"]["name"])]
        assert (
            torch.equal(a["x"]["image"], b["x"]["image"]) and torch.equal(a["valid"], b["valid"]) and a["y"] == b["y"]
        )


def test_shards__a_damaged_grid_is_named_by_shard_and_member_or_skipped(grids, tmp_path):
    shard_domain_of(grids, tmp_path, NerfOptions(patch=4))
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith(".rgbsigma.npy"))
    with open(shard, "r+b") as f:
        f.seek(member.offset_data)
        f.write(bytes(16))  # no .npy header
    named = rf"{re.escape(str(shard))}: member {member.name}"
    data = build_domain(DataSource(str(tmp_path)), NerfOptions(patch=4))
    with pytest.raises(DataError, match=named):
        list(DataLoader(data.pretrain.split(0, 1, 1), batch_size=1))
    with pytest.raises(DataError, match=named):
        len(data.train_eval)
    skipping = build_domain(DataSource(str(tmp_path), skip_bad_files=True), NerfOptions(patch=4))
    assert len(skipping.train_eval) == data.info["train_grids"] - 1  # the probe reads the others
    assert len(list(DataLoader(skipping.pretrain.split(0, 1, 1), batch_size=1))) == data.info["train_grids"]


def test_shards__options_and_posed_scenes_are_checked(grids, tmp_path):
    shard_domain_of(grids, tmp_path / "shards", NerfOptions(patch=4))
    with pytest.raises(DataError, match=r"written with --task classify; run with those or convert again"):
        build_domain(DataSource(str(tmp_path / "shards")), NerfOptions(patch=4, task="segment"))
    padded = build_domain(DataSource(str(tmp_path / "shards")), NerfOptions(patch=8))
    assert padded.info["grid_size"] == [16, 16, 16]  # the largest grid, 10^3, padded when read
    assert find_scenes(tmp_path / "shards" / "train-{000000..000001}.tar") == []  # the recipe asks: grids, no scenes
    scene_folder(tmp_path / "scenes" / "chair" / "one")
    with pytest.raises(DataError, match=r"scenes: posed-image scenes; bake them first"):
        convert("nerf", DataSource(str(tmp_path / "scenes")), NerfOptions(), tmp_path / "out", parse_size("1MB"))
