"""NeRF grids: posed-scene readers, the voxel renderer against closed forms, baking (learning a known
grid, held-out views never trained on, the real lego sample), the .npz layout, meshes to grids."""

import json
import math
import time

import numpy as np
import open3d as o3d
import pytest
import torch
from PIL import Image

from modalities.common import DataError
from modalities.nerf.bake import (
    BakeConfig,
    VoxelField,
    bake,
    load_grid,
    main,
    psnr,
    render_views,
    save_grid,
    split_views,
)
from modalities.nerf.cameras import Scene, SceneOptions, pixel_rays, read_scene
from modalities.nerf.mesh import PRIMITIVES, SOLID_OPTICAL_DEPTH, procedural_scene, voxelize_meshes

LEGO = "nerf/nerf_synthetic_lego"
BOX = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def write_png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL camera-to-world: the camera's -z points from ``eye`` at ``target``."""
    z = np.asarray(eye, float) - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    c2w[:3, 3] = eye
    return c2w


def orbit(n: int, radius: float = 3.5) -> np.ndarray:
    """(n, 4, 4) cameras on a sphere (a Fibonacci spiral), all looking at the origin."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    eyes = radius * np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    return np.stack([look_at(e) for e in eyes])


def rendered_scene(grid: dict, views: int, size: int) -> Scene:
    """Views of ``grid`` rendered by the baker's own renderer from an orbit, on a white background."""
    poses = torch.tensor(orbit(views), dtype=torch.float32)
    intrinsics = torch.tensor([[1.2 * size, 1.2 * size, size / 2, size / 2]]).expand(views, 4)
    blank = Scene(torch.zeros(views, size, size, 3), poses, intrinsics, torch.tensor(BOX), 0.5, 8.0, 1.0)
    images = render_views(VoxelField.from_grid(grid["rgbsigma"], grid["bbox"]), blank, torch.arange(views), 96, 0)
    return Scene(images, poses, intrinsics, torch.tensor(BOX), 0.5, 8.0, 1.0)


def trivial_psnr(scene: Scene, every: int) -> float:
    """The better of two predictors that know no geometry: the mean training image, the background."""
    train, held = split_views(len(scene.images), every)
    truth = scene.images[held]
    mean = scene.images[train].mean(0).expand_as(truth)
    return max(psnr(mean, truth), psnr(torch.full_like(truth, scene.background), truth))


def blender_scene(root, size=8, frames=2, angle=0.9272952180016122) -> list[np.ndarray]:  # 2 atan(1/2)
    """transforms_train.json and RGBA PNGs train/r_i.png (pixel (0, 0) half transparent red)."""
    poses = orbit(frames)
    for i in range(frames):
        rgba = np.full((size, size, 4), 255, dtype=np.uint8)
        rgba[0, 0] = (255, 0, 0, 128)
        write_png(root / "train" / f"r_{i}.png", rgba)
    meta = {
        "camera_angle_x": angle,
        "frames": [{"file_path": f"./train/r_{i}", "transform_matrix": p.tolist()} for i, p in enumerate(poses)],
    }
    (root / "transforms_train.json").write_text(json.dumps(meta))
    return list(poses)


def ngp_scene(root, frames=3, missing=(), **extra) -> list[np.ndarray]:
    """transforms.json (fl_x 10, fl_y 12, cx 3.5, cy 4.5, 8x8, k1 0.1) with RGB JPEG-free PNG frames."""
    poses = orbit(frames)
    for i in range(frames):
        if i not in missing:
            write_png(root / "images" / f"{i:04d}.png", np.full((8, 8, 3), 40 * i, dtype=np.uint8))
    meta = {"fl_x": 10.0, "fl_y": 12.0, "cx": 3.5, "cy": 4.5, "w": 8, "h": 8, "k1": 0.1, **extra}
    meta["frames"] = [{"file_path": f"images/{i:04d}.png", "transform_matrix": p.tolist()} for i, p in enumerate(poses)]
    (root / "transforms.json").write_text(json.dumps(meta))
    return list(poses)


# -------------------------------------------------------------------------------------------- readers
def test_read_blender__intrinsics_poses_and_compositing(tmp_path):
    poses = blender_scene(tmp_path)
    scene = read_scene(tmp_path)
    assert scene.images.shape == (2, 8, 8, 3)
    torch.testing.assert_close(scene.intrinsics[1], torch.tensor([8.0, 8.0, 4.0, 4.0]))  # 0.5 W / tan(angle / 2)
    np.testing.assert_allclose(scene.c2w.numpy(), np.stack(poses), atol=1e-6)
    a = 128 / 255
    torch.testing.assert_close(scene.images[0, 0, 0], torch.tensor([1.0, 1 - a, 1 - a]))  # red over white
    assert scene.images[0, 1:].eq(1).all()
    assert scene.bbox.tolist() == [[-1.5] * 3, [1.5] * 3] and (scene.near, scene.far) == (2.0, 6.0)
    black = read_scene(tmp_path, SceneOptions(background="black"))
    torch.testing.assert_close(black.images[0, 0, 0], torch.tensor([a, 0.0, 0.0]))
    assert black.background == 0.0


def test_read_blender__downscale_averages_pixels_and_scales_intrinsics(tmp_path):
    blender_scene(tmp_path)
    scene = read_scene(tmp_path, SceneOptions(downscale=2))
    assert scene.images.shape == (2, 4, 4, 3)
    torch.testing.assert_close(scene.intrinsics[0], torch.tensor([4.0, 4.0, 2.0, 2.0]))
    full = read_scene(tmp_path).images
    torch.testing.assert_close(scene.images[0, 0, 0], full[0, :2, :2].mean((0, 1)))


def test_read_blender__missing_image_names_the_file(tmp_path):
    blender_scene(tmp_path, frames=3)
    (tmp_path / "train" / "r_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"train/r_1: image of frame 1 in .*transforms_train.json not found"):
        read_scene(tmp_path)


def test_read_instant_ngp__intrinsics_box_and_skipped_frames(tmp_path, caplog):
    poses = ngp_scene(tmp_path, frames=4, missing=(2,), aabb_scale=2, scale=0.5, offset=[0.5, 0.25, 0.5])
    with caplog.at_level("WARNING"):
        scene = read_scene(tmp_path)
    assert len(scene.images) == 3 and scene.files[-1].endswith("0003.png")
    np.testing.assert_allclose(scene.c2w.numpy(), np.stack([poses[0], poses[1], poses[3]]), atol=1e-6)
    torch.testing.assert_close(scene.intrinsics, torch.tensor([[10.0, 12.0, 3.5, 4.5]]).expand(3, 4))
    assert scene.images[1].eq(40 / 255).all()
    # instant-ngp keeps p * scale + offset within 0.5 +- aabb_scale / 2
    torch.testing.assert_close(scene.bbox, torch.tensor([[-2.0, -1.5, -2.0], [2.0, 2.5, 2.0]]))
    assert "1 of 4 frames skipped, their image is missing (first: images/0002.png)" in caplog.text
    assert "distortion {'k1': 0.1} ignored" in caplog.text
    assert caplog.text.count("distortion") == 1


def test_read_instant_ngp__box_from_cameras_without_aabb(tmp_path):
    ngp_scene(tmp_path, frames=6)  # an orbit of radius 3.5 around the origin, no aabb_scale/scale/offset
    scene = read_scene(tmp_path)
    torch.testing.assert_close(scene.bbox, torch.tensor([[-1.75] * 3, [1.75] * 3]), atol=1e-4, rtol=0)
    assert scene.near > 0 and scene.far > 3.5


def test_pixel_rays__opengl_convention():
    c2w, intrinsics = torch.eye(4)[None].expand(3, 4, 4), torch.tensor([[2.0, 2.0, 4.0, 4.0]]).expand(3, 4)
    origins, dirs = pixel_rays(c2w, intrinsics, torch.tensor([4.0, 0.0, 8.0]), torch.tensor([4.0, 0.0, 8.0]))
    torch.testing.assert_close(dirs[0], torch.tensor([0.0, 0.0, -1.0]))  # the principal point: straight ahead
    assert dirs[1, 0] < 0 and dirs[1, 1] > 0  # the top-left corner: left and up
    assert dirs[2, 0] > 0 and dirs[2, 1] < 0
    assert origins.eq(0).all() and torch.allclose(dirs.norm(dim=1), torch.ones(3))


def corrupt(tmp_path, what: str):
    """Scene folder with one defect; returns (folder, error type, pattern the message must match)."""
    if what == "no transforms":
        (tmp_path / "train").mkdir()
        return tmp_path, FileNotFoundError, r"no transforms.json \(instant-ngp\) or transforms_train.json"
    if what == "malformed json":
        blender_scene(tmp_path)
        (tmp_path / "transforms_train.json").write_text('{"camera_angle_x": 0.7, "frames": [')
        return tmp_path / "transforms_train.json", DataError, "malformed JSON"
    if what == "no frames":
        (tmp_path / "transforms.json").write_text('{"fl_x": 10}')
        return tmp_path / "transforms.json", DataError, "no 'frames' list"
    if what == "image of another size":
        blender_scene(tmp_path)
        write_png(tmp_path / "train" / "r_1.png", np.zeros((8, 6, 4)))
        return tmp_path / "train" / "r_1.png", DataError, "6x8 pixels where .*r_0.png has 8x8"
    if what == "image unlike its json":
        ngp_scene(tmp_path, w=16)
        return tmp_path / "images" / "0000.png", DataError, "8x8 pixels where .*transforms.json says 16x8"
    if what == "not an image":
        blender_scene(tmp_path)
        (tmp_path / "train" / "r_0.png").write_bytes(b"not a png")
        return tmp_path / "train" / "r_0.png", DataError, "not a readable image"
    if what == "bad pose":
        blender_scene(tmp_path)
        meta = json.loads((tmp_path / "transforms_train.json").read_text())
        meta["frames"][1]["transform_matrix"] = np.eye(3).tolist()
        (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
        return tmp_path / "transforms_train.json", DataError, r"frame 1: transform_matrix must be a finite 4x4"
    if what == "zero focal length":
        ngp_scene(tmp_path, fl_x=0.0)
        return tmp_path / "transforms.json", DataError, "'fl_x' must be a positive number of pixels, got 0.0"
    if what == "zero field of view":
        blender_scene(tmp_path, angle=0.0)
        return tmp_path / "transforms_train.json", DataError, r"'camera_angle_x' must be in \(0, pi\) radians, got 0.0"
    if what == "no image at all":
        ngp_scene(tmp_path, frames=2, missing=(0, 1))
        return tmp_path / "transforms.json", DataError, "none of the 2 frames has an image file"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what",
    [
        "no transforms",
        "malformed json",
        "no frames",
        "image of another size",
        "image unlike its json",
        "not an image",
        "bad pose",
        "zero focal length",
        "zero field of view",
        "no image at all",
    ],
)
def test_read_scene__bad_input_is_one_line_naming_the_file(tmp_path, what):
    named, error, pattern = corrupt(tmp_path, what)
    with pytest.raises(error, match=pattern) as info:
        read_scene(tmp_path)
    message = str(info.value)
    assert message.startswith(str(named)) and "\n" not in message


# ------------------------------------------------------------------------------------------- renderer
def test_render__constant_density_attenuates_as_beer_lambert():
    """Constant sigma over a chord of length L: alpha = 1 - exp(-sigma L), colour c alpha + background (1 - alpha)."""
    grid = np.zeros((8, 8, 8, 4), dtype=np.float32)
    grid[...] = (0.2, 0.5, 0.7, 0.7)
    field = VoxelField.from_grid(grid, BOX)
    origins = torch.tensor([[-3.0, 0.3, -0.4], [-3.0, -3.0, 0.2], [0.0, 0.0, 0.0]])
    dirs = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    out = field.render(origins, dirs, 64, background=1.0)
    alpha = 1 - torch.exp(-0.7 * torch.tensor([2.0, 2 * math.sqrt(2), 1.0]))  # chords: across, diagonal, from inside
    torch.testing.assert_close(out.opacity, alpha, atol=1e-5, rtol=0)
    expected = torch.tensor([0.2, 0.5, 0.7]) * alpha[:, None] + (1 - alpha[:, None])
    torch.testing.assert_close(out.rgb, expected, atol=1e-4, rtol=0)


def test_render__the_nearer_half_hides_the_farther():
    """Constant sigma, red for x < 0 and blue beyond, seen along +x and -x. Expected colour by fine
    quadrature of c(x) sigma T(x), T = exp(-sigma * depth), c(x) the sigmoid of the logits
    interpolated linearly between voxel centres (constant beyond the outer ones)."""
    n, sigma = 16, 1.0
    red, blue = np.array([0.9, 0.1, 0.2]), np.array([0.1, 0.2, 0.9])
    grid = np.zeros((n, n, n, 4), dtype=np.float32)
    grid[: n // 2, ..., :3], grid[n // 2 :, ..., :3], grid[..., 3] = red, blue, sigma
    field = VoxelField.from_grid(grid, BOX)
    origins, dirs = torch.tensor([[-3.0, 0.1, -0.2], [3.0, 0.1, -0.2]]), torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]])
    out = field.render(origins, dirs, 2000, background=1.0)
    x = np.linspace(-1, 1, 200_001)[:-1] + 1 / 200_000  # midpoints
    centres = -1 + (np.arange(n) + 0.5) * 2 / n
    logits = np.log(grid[:, 0, 0, :3] / (1 - grid[:, 0, 0, :3]))  # (n, 3) along x
    colour = 1 / (1 + np.exp(-np.stack([np.interp(x, centres, logits[:, c]) for c in range(3)], 1)))
    expected = []
    for depth in (x + 1, 1 - x):  # entering at x = -1, at x = +1
        weight = sigma * np.exp(-sigma * depth) * (2 / len(x))
        expected.append((weight[:, None] * colour).sum(0) + math.exp(-2 * sigma))
    torch.testing.assert_close(out.rgb, torch.tensor(np.stack(expected), dtype=torch.float32), atol=1e-3, rtol=0)
    assert out.rgb[0, 0] > 0.5 > out.rgb[1, 0]  # red in front from the left, blue from the right


def test_render__empty_grid_and_missed_rays_show_the_background():
    field = VoxelField.from_grid(np.zeros((8, 8, 8, 4)), BOX)
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 5.0, 3.0]])  # into the box; past it
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    for background in (0.0, 1.0):
        out = field.render(origins, dirs, 32, background)
        assert out.rgb.eq(background).all() and out.opacity.abs().max() < 1e-6


def test_render__grid_axes_are_world_axes():
    """A blob at +x only: rays along z hit it at x = 0.5, miss it at y = 0.5 (xyz vs zyx order)."""
    grid = np.zeros((8, 8, 8, 4), dtype=np.float32)
    grid[5:7, 3:5, 3:5] = (0.5, 0.5, 0.5, 20.0)
    field = VoxelField.from_grid(grid, BOX)
    origins = torch.tensor([[0.5, 0.0, 3.0], [0.0, 0.5, 3.0], [-3.0, 0.0, 0.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    opacity = field.render(origins, dirs, 128, 1.0).opacity
    assert opacity[0] > 0.99 and opacity[1] < 0.01 and opacity[2] > 0.99


# ---------------------------------------------------------------------------------------------- files
def test_save_grid__round_trip_without_pickle(tmp_path):
    grid = procedural_scene(seed=1, grid=12)
    save_grid(tmp_path / "g.npz", grid, {"kind": grid["kind"]})
    with np.load(tmp_path / "g.npz", allow_pickle=False) as z:
        assert z["rgbsigma"].dtype == np.float16 and z["valid"].dtype == np.uint8 and z["meta"].shape == ()
    back = load_grid(tmp_path / "g.npz")
    np.testing.assert_allclose(back["rgbsigma"], grid["rgbsigma"], rtol=1e-3, atol=1e-3)
    for key in ("valid", "bbox", "voxel_size", "labels"):
        np.testing.assert_array_equal(back[key], grid[key])
    assert back["meta"] == {"kind": grid["kind"]}
    field = VoxelField.from_grid(back["rgbsigma"], back["bbox"])  # the renderer's grid gives back the file's
    np.testing.assert_allclose(field.to_grid()["rgbsigma"], back["rgbsigma"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda a: a.pop("bbox"), "no bbox array"),
        (lambda a: a.update(rgbsigma=np.zeros((4, 4, 4, 3), np.float16)), r"rgbsigma of shape \(4, 4, 4, 3\)"),
        (lambda a: a.update(valid=np.ones((4, 4, 5), np.uint8)), r"valid of shape \(4, 4, 5\), expected \(4, 4, 4\)"),
        (lambda a: a.update(labels=np.ones((4, 4), np.uint8)), r"labels of shape \(4, 4\)"),
        (lambda a: a.update(meta=np.array("{not json")), "meta is not JSON"),
        (lambda a: a["rgbsigma"].__setitem__((1, 2, 3, 0), np.nan), "1 NaN or infinite values in rgbsigma"),
        (lambda a: a.update(voxel_size=np.zeros(3, np.float32)), r"voxel_size \[0.0, 0.0, 0.0\] positive"),
        (lambda a: a.update(bbox=np.array(BOX[::-1], np.float32)), r"bbox .* must be finite with max > min"),
    ],
)
def test_load_grid__bad_files_are_one_line_naming_the_file(tmp_path, change, pattern):
    arrays = {
        "rgbsigma": np.zeros((4, 4, 4, 4), np.float16),
        "valid": np.ones((4, 4, 4), np.uint8),
        "bbox": np.array(BOX, np.float32),
        "voxel_size": np.full(3, 0.5, np.float32),
        "meta": np.array("{}"),
    }
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=pattern) as info:
        load_grid(tmp_path / "bad.npz")
    assert str(info.value).startswith(str(tmp_path / "bad.npz")) and "\n" not in str(info.value)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable .npz grid"):
        load_grid(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="absent.npz: file not found"):
        load_grid(tmp_path / "absent.npz")


@pytest.mark.parametrize(
    "field, value",
    [
        ("grid", 0),
        ("steps", -1),
        ("samples", 1),
        ("tv_density", -1.0),
        ("sh_decay", -0.1),
        ("sh_degree", 2),
        ("held_out_every", 1),
        ("upsample_at", (0.5, 0.2)),
        ("upsample_at", (0.0,)),
        ("mask_threshold", 1.0),
        ("pictures", -1),
    ],
)
def test_bake_config__bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BakeConfig(**{field: value})


# --------------------------------------------------------------------------------------------- baking
def test_bake__learns_a_known_grid_on_held_out_views():
    """Views of a procedural grid rendered by the same renderer: the bake must predict the two
    held-out views far better than anything that ignores geometry."""
    scene = rendered_scene(procedural_scene(seed=3, grid=16, count=3), views=16, size=16)
    cfg = BakeConfig(grid=16, steps=300, rays=256, samples=32, upsample_at=(0.3,), pictures=1)
    result = bake(scene, cfg, progress=False)
    f = result.figures
    assert (f["train_views"], f["held_out_views"], f["held_out_frames"]) == (14, 2, [0, 8])
    for name in ("psnr", "grid_psnr"):  # the field, and the view-independent grid it stores
        assert f[name] > trivial_psnr(scene, 8) + 5, (f, trivial_psnr(scene, 8))
    assert f["ssim"] > 0.8 and f["grid_ssim"] > 0.8
    assert result.grid["rgbsigma"].shape == (16, 16, 16, 4) and np.isfinite(result.grid["rgbsigma"]).all()
    assert len(result.pictures) == 1 and result.pictures[0][1].shape == (16, 48, 3)  # field | grid | truth
    steps, seconds, curve = zip(*f["curve"], strict=True)  # held-out PSNR against training time
    assert steps == tuple(range(30, 301, 30)) and list(seconds) == sorted(seconds) and seconds[-1] <= f["seconds"]
    assert curve[-1] > curve[0] + 5 and abs(curve[-1] - f["psnr"]) < 1.5, f["curve"]  # 8192 pixels vs whole views


def test_bake__never_trains_on_held_out_views():
    """Held-out images of NaN: one training step on them would make the grid NaN."""
    scene = rendered_scene(procedural_scene(seed=0, grid=8, count=2), views=9, size=8)
    poisoned = scene.images.clone()
    poisoned[split_views(9, 4)[1]] = math.nan
    scene = Scene(poisoned, scene.c2w, scene.intrinsics, scene.bbox, scene.near, scene.far, scene.background)
    result = bake(
        scene, BakeConfig(grid=8, steps=40, rays=512, samples=16, held_out_every=4, upsample_at=(0.5,)), progress=False
    )
    assert result.figures["held_out_frames"] == [0, 4, 8]
    assert np.isfinite(result.grid["rgbsigma"]).all()


def test_cli__help_explains_itself(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    for words in ("transforms_train.json", "transforms.json", "held-out", "--grid", "--downscale", "load_grid"):
        assert words in text


def test_cli__a_folder_without_scene_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "g.npz"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no transforms.json" in err
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path / "g.npz"), "--sh-degree", "3"])


@pytest.mark.e2e
def test_bake_lego__beats_the_mean_image_and_round_trips(shared, tmp_path):
    out = tmp_path / "lego.npz"
    args = ["--downscale", "4", "--grid", "32", "--steps", "150", "--rays", "1024", "--samples", "64", "--lr", "1"]
    assert main([str(shared / LEGO), str(out), *args, "--pictures", "2", "--no-progress"]) == 0
    grid = load_grid(out)  # allow_pickle=False inside
    meta = grid["meta"]
    scene = read_scene(shared / LEGO, SceneOptions(downscale=4))
    assert (meta["train_views"], meta["held_out_views"]) == (87, 13)
    for name in ("psnr", "grid_psnr"):
        assert meta[name] > trivial_psnr(scene, 8) + 5, (meta, trivial_psnr(scene, 8))
    assert meta["ssim"] > 0.7 and meta["grid_ssim"] > 0.7
    assert meta["psnr"] - meta["grid_psnr"] < 1.5  # the view-independent colour stored is most of the colour
    assert grid["rgbsigma"].shape == (32, 32, 32, 4) and grid["valid"].all()
    assert 0 < (grid["rgbsigma"][..., 3] > 1).mean() < 0.5  # an object, not fog and not nothing
    pictures = sorted(tmp_path.glob("lego_held_out_*.png"))
    assert [p.name for p in pictures] == ["lego_held_out_000.png", "lego_held_out_008.png"]
    assert Image.open(pictures[0]).size == (150, 50)
    assert len(meta["curve"]) == 10 and meta["curve"][-1][0] == 150


# --------------------------------------------------------------------------------------------- meshes
def test_voxelize_meshes__sphere_volume_colour_and_density():
    sphere = o3d.geometry.TriangleMesh.create_sphere(radius=0.6, resolution=40)
    sphere.paint_uniform_color((0.2, 0.4, 0.6))
    grid = voxelize_meshes([sphere], BOX, grid=32)
    sigma = grid["rgbsigma"][..., 3]
    inside = sigma > 0
    assert inside.mean() == pytest.approx(4 / 3 * math.pi * 0.6**3 / 8, rel=0.05)
    np.testing.assert_allclose(grid["rgbsigma"][inside][:, :3], np.tile((0.2, 0.4, 0.6), (inside.sum(), 1)), atol=1e-5)
    assert sigma[inside] == pytest.approx(SOLID_OPTICAL_DEPTH / (2 / 32))
    assert "labels" not in grid and grid["voxel_size"].tolist() == [2 / 32] * 3


def test_voxelize_meshes__vertex_colours_at_the_nearest_surface_point(tmp_path):
    """A unit box whose red is its vertices' x: a voxel's red is the x of its nearest surface point,
    which is no farther from the voxel than the nearest face."""
    box = o3d.geometry.TriangleMesh.create_box()
    x = np.asarray(box.vertices)[:, :1]
    box.vertex_colors = o3d.utility.Vector3dVector(np.concatenate([x, np.zeros_like(x), 1 - x], 1))
    o3d.io.write_triangle_mesh(str(tmp_path / "box.ply"), box)
    grid = voxelize_meshes([tmp_path / "box.ply"], ((-0.5,) * 3, (1.5,) * 3), grid=16)
    centres = -0.5 + (np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1) + 0.5) * 2 / 16
    inside = grid["rgbsigma"][..., 3] > 0
    assert inside.sum() == 8**3
    p = centres[inside]
    distance = np.minimum(p, 1 - p).min(1)
    red = grid["rgbsigma"][inside][:, 0]
    assert (np.abs(red - p[:, 0]) <= distance + 1e-5).all() and red.min() < 0.1 and red.max() > 0.9


def test_voxelize_meshes__bad_mesh_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.ply: file not found"):
        voxelize_meshes([tmp_path / "absent.ply"], BOX, grid=8)
    (tmp_path / "empty.ply").write_text("ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(DataError, match="empty.ply: no triangles"):
        voxelize_meshes([tmp_path / "empty.ply"], BOX, grid=8)


def test_procedural_scene__labels_hold_both_kinds_fast_and_seeded():
    procedural_scene(seed=0, grid=8)  # open3d's first call initialises it
    start = time.perf_counter()
    scene = procedural_scene(seed=5, grid=32, kinds=("box", "torus"), count=2)
    assert time.perf_counter() - start < 0.5
    assert sorted(scene["objects"]) == ["box", "torus"] and scene["kind"] in ("box", "torus")
    assert set(np.unique(scene["labels"]).tolist()) == {0, 1, 5}  # empty, box, torus
    np.testing.assert_array_equal(scene["labels"] > 0, scene["rgbsigma"][..., 3] > 0)
    counts = {k: (scene["labels"] == 1 + PRIMITIVES.index(k)).sum() for k in ("box", "torus")}
    assert scene["kind"] == max(counts, key=counts.get)
    again = procedural_scene(seed=5, grid=32, kinds=("box", "torus"), count=2)
    np.testing.assert_array_equal(again["rgbsigma"], scene["rgbsigma"])
