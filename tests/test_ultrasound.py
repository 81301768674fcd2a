import csv
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from modalities.common import (
    DataError,
    DataSource,
    Sample,
    discover,
    require_classes,
)
from modalities.ultrasound.data import UltrasoundOptions, build_domain, load_frames
from modalities.ultrasound.io import CLIP_EXTENSIONS, IMAGE_EXTENSIONS, read_clip, read_image
from modalities.ultrasound.phantom import phantom_image
from modalities.ultrasound.transforms import UltrasoundAugment, detect_sector, sector_geometry
from tests.conftest import peak_while_refusing

EXTS = IMAGE_EXTENSIONS + CLIP_EXTENSIONS
SMALL = UltrasoundOptions(image_size=32, patch=16)


def write_clip(path, n_frames=10, size=(48, 64)):
    """An H.264 clip whose frame i has brightness 20 * i."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if path.suffix == ".mp4" else "mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = *size, "yuv420p"
        for i in range(n_frames):
            frame = np.full((*size, 3), 20 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("suffix,mode", [(".png", "L"), (".bmp", "L"), (".tif", "L"), (".png", "RGB")])
def test_read_image__lossless_formats_exact(tmp_path, suffix, mode):
    grey = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    img = Image.fromarray(grey) if mode == "L" else Image.fromarray(np.stack([grey] * 3, -1))
    img.save(tmp_path / f"a{suffix}")
    out = read_image(tmp_path / f"a{suffix}")
    assert out.shape == (20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out, grey / 255.0, atol=1e-6)


def test_read_image__16_bit_and_jpeg(tmp_path):
    deep = np.arange(600, dtype=np.uint16).reshape(20, 30) * 100
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_image(tmp_path / "d.png"), deep / 65535.0, atol=1e-6)
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(tmp_path / "j.jpg", quality=95)
    assert abs(read_image(tmp_path / "j.jpg").mean() - 128 / 255) < 0.01


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_read_clip__frames_spread_over_the_clip(tmp_path, suffix):
    write_clip(tmp_path / f"c{suffix}")
    frames = read_clip(tmp_path / f"c{suffix}", 4)  # frames 0, 3, 6, 9
    assert frames.shape == (4, 48, 64)
    np.testing.assert_allclose(frames.mean((1, 2)), np.array([0, 60, 120, 180]) / 255, atol=0.03)


def png_claiming(path, width: int, height: int):
    """A grey 8 x 8 PNG whose header (IHDR) claims ``width`` x ``height``."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))  # Pillow checks the chunk's CRC
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("limit", [1000, 3000])  # 4096 pixels: over twice the limit (Pillow refuses), under (warns)
def test_read_image__over_max_pixels_named(tmp_path, limit):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(
        DataError, match=rf"big.png: 64x64 image, 4,096 pixels, over the --max-pixels limit of {limit:,}"
    ):
        read_image(tmp_path / "big.png", max_pixels=limit)
    assert read_image(tmp_path / "big.png", max_pixels=4096).shape == (64, 64)  # the limit is inclusive


def test_read_image__max_pixels_checked_from_the_header(tmp_path, monkeypatch):
    bomb = png_claiming(tmp_path / "bomb.png", 10_000, 10_000)
    peak = peak_while_refusing(
        lambda: read_image(bomb),
        match=r"bomb.png: 10000x10000 image, 100,000,000 pixels, over the --max-pixels limit of 89,478,485",
    )
    assert peak < 2**20
    assert UltrasoundOptions().max_pixels == Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default, left as it was
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a stricter Pillow limit elsewhere in the process
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "ok.png")
    assert read_image(tmp_path / "ok.png", max_pixels=5000).shape == (64, 64)  # the option decides
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_load_frames__max_pixels_makes_big_images_bad_files(tmp_path):
    for name, side in (("ok.png", 40), ("wide.png", 100)):
        Image.fromarray(np.full((side, side), 100, np.uint8)).save(tmp_path / name)
    samples = [Sample(tmp_path / n, "a") for n in ("ok.png", "wide.png")]
    opts = UltrasoundOptions(image_size=32, patch=16, max_pixels=40 * 40)
    with pytest.raises(
        DataError, match=r"wide.png: 100x100 image, 10,000 pixels, over the --max-pixels limit of 1,600"
    ):
        load_frames(samples, opts, skip_bad=False, progress=False)
    dataset, skipped, _ = load_frames(samples, opts, skip_bad=True, progress=False)
    assert len(dataset) == 1 and [p for p, _ in skipped] == [str(tmp_path / "wide.png")]


@pytest.mark.parametrize("name,reader", [("bad.png", read_image), ("bad.mp4", lambda p: read_clip(p, 4))])
def test_readers__corrupt_file_named_in_error(tmp_path, name, reader):
    (tmp_path / name).write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError, match=rf"{name}: cannot (read|open)"):
        reader(tmp_path / name)


def test_load_frames__skip_bad_files_counts_them(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((40, 40), 100 + i, np.uint8)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    samples = [Sample(tmp_path / n, "a") for n in ("ok0.png", "broken.png", "ok1.png")]
    with pytest.raises(DataError, match="broken.png"):
        load_frames(samples, SMALL, skip_bad=False, progress=False)
    dataset, skipped, _ = load_frames(samples, SMALL, skip_bad=True, progress=False)
    assert len(dataset) == 2 and [p for p, _ in skipped] == [str(tmp_path / "broken.png")]


def test_load_frames__image_smaller_than_a_patch(tmp_path):
    Image.fromarray(np.zeros((8, 40), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(DataError, match=r"thin.png: image is 8x40, smaller than one 16x16 patch"):
        load_frames([Sample(tmp_path / "thin.png", "a")], SMALL, skip_bad=False, progress=False)


def test_load_frames__nan_pixels_named(tmp_path):
    values = np.ones((32, 32), np.float32)
    values[4, 4] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    with pytest.raises(DataError, match="float.tif: contains NaN or infinite pixels"):
        load_frames([Sample(tmp_path / "float.tif", "a")], SMALL, skip_bad=False, progress=False)


def test_load_frames__clip_contributes_frames_from_one_source(tmp_path):
    write_clip(tmp_path / "c.mp4", n_frames=12)
    opts = UltrasoundOptions(image_size=32, frames_per_clip=5)
    dataset, _, _ = load_frames([Sample(tmp_path / "c.mp4", "a")], opts, skip_bad=False, progress=False)
    assert len(dataset) == 5 and len(set(dataset.sources)) == 1
    item = dataset[0]
    assert item["x"].shape == (1, 32, 32) and item["valid"].shape == (1, 32, 32)


def test_detect_sector__recovers_the_phantom_fan():
    image, sector = phantom_image(np.random.default_rng(1), "normal", 128)
    found = detect_sector(image)
    iou = (found & sector[0]).sum() / (found | sector[0]).sum()
    assert iou > 0.95


def test_detect_sector__excludes_burnt_in_text():
    image, sector = phantom_image(np.random.default_rng(2), "cyst", 128)
    image = image.clone()
    image[0, 2:6, 2:20] = 1.0  # a label in the black corner
    found = detect_sector(image)
    assert not found[2:6, 2:20].any() and found[sector[0]].float().mean() > 0.95


def test_sector_geometry__rectangle_in_black_borders_with_text_is_linear():
    """A linear frame: a rectangle inside black borders, text in the borders, and a shadow taking
    the rectangle's bottom-left corner (a convex hull would cut that corner off)."""
    rng = np.random.default_rng(4)
    frame = torch.zeros(160, 200)
    rect = torch.zeros(160, 200, dtype=torch.bool)
    rect[12:148, 30:170] = True
    frame[rect] = torch.from_numpy(rng.uniform(0.1, 0.9, int(rect.sum()))).float()
    frame[90:148, 30:80] = torch.from_numpy(rng.uniform(0.0, 0.02, (58, 50))).float()  # shadow on two edges
    frame[2:7, 2:24] = frame[154:158, 60:100] = frame[40:46, 176:196] = 1.0  # burnt-in text, in the borders
    found = sector_geometry(frame[None])
    assert found.geometry == "linear" and found.top_width == 1.0
    assert torch.equal(found.mask, rect) and torch.equal(detect_sector(frame[None]), rect)
    assert sector_geometry(phantom_image(np.random.default_rng(5), "normal", 128)[0]).geometry == "fan"


def test_augment__shapes_range_and_sector_follows_image():
    image, sector = phantom_image(np.random.default_rng(3), "solid", 160)
    torch.manual_seed(0)
    out, mask = UltrasoundAugment(size=64)(image, sector)
    assert out.shape == (1, 64, 64) and mask.shape == (1, 64, 64)
    assert 0 <= out.min() and out.max() <= 1
    assert out[~mask.bool()].mean() < 0.2 * out[mask.bool()].mean()  # the mask follows the crop and flip


def test_discover__busi_layout(shared):
    samples = discover(shared / "ultrasound" / "busi_256", EXTS)
    assert len(samples) == 520
    assert require_classes([s.label for s in samples], "busi") == ["benign", "malignant", "normal"]


def test_discover__pocus_layout_images_and_clips(shared):
    samples = discover(shared / "ultrasound" / "pocus_ccby_subset", EXTS)
    suffixes = [s.path.suffix.lower() for s in samples]
    assert len(samples) == 52 and sum(s in CLIP_EXTENSIONS for s in suffixes) == 44
    assert {s.label for s in samples} == {"regular", "covid", "viral_pneumonia", "bacterial_pneumonia"}


def test_build_domain__pocus_split_by_clip(shared):
    source = DataSource(str(shared / "ultrasound" / "pocus_ccby_subset"), progress=False)
    data = build_domain(source, UltrasoundOptions(image_size=64, frames_per_clip=2))
    train_sources, eval_sources = set(data.train_eval.sources), set(data.held_out.sources)
    assert train_sources and eval_sources and not train_sources & eval_sources
    assert data.adapter["name"] == "ultrasound" and 0 < data.adapter["mean"][0] < 1
    assert data.info["train_frames"] + data.info["eval_frames"] == 44 * 2 + 8


def geometry_by_source(folder: Path, frames_per_clip: int, monkeypatch) -> dict:
    """{file name: (Sector, the sector data loading stored)} through ``load_frames``, the path training
    takes (frames stored at 160 pixels, short side, for image_size 128); its ``sector_geometry``
    call is recorded rather than repeated."""
    import modalities.ultrasound.data as data_module

    samples, seen = discover(folder, EXTS), []

    def recording(frames):
        seen.append(sector_geometry(frames))
        return seen[-1]

    monkeypatch.setattr(data_module, "sector_geometry", recording)
    data, _, _ = load_frames(
        samples, UltrasoundOptions(frames_per_clip=frames_per_clip), skip_bad=False, progress=False
    )
    first = {source: i for i, source in reversed(list(enumerate(data.sources)))}
    return {s.path.name: (found, data.sectors[first[str(s.path)]]) for s, found in zip(samples, seen, strict=True)}


def box_fill(mask: torch.Tensor) -> float:
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float().mean().item()


# BUSI images cropped from a trapezoid (a linear array steered outwards), checked by eye: black top
# corners that take 17-29 % of the top rows, so fans. Two more show one small black corner, 15 % of
# the top: linear, and the rectangle's rule leaves the corner out (the mask fills 95-96 % of its box).
BUSI_TRAPEZOIDS = {f"malignant ({i}).png" for i in (65, 67, 76, 95, 101, 102)} | {"benign (82).png"}
BUSI_SMALL_CORNER = {"benign (84).png", "malignant (194).png"}


def test_sector_geometry__busi_is_linear_and_keeps_dark_tissue_on_the_border(shared, monkeypatch):
    found = geometry_by_source(shared / "ultrasound" / "busi_256", 1, monkeypatch)
    assert len(found) == 520
    # The largest connected part's convex hull (the detector before) kept 73 % of benign (77) (85 % of
    # its own box): its deep fall-off reaches the bottom and both bottom corners are dark. benign (188):
    # 44 %, the cyst cuts the tissue above it off from the largest part. Both are imaged throughout.
    for name in ("benign (77).png", "benign (188).png"):
        assert found[name][0].mask.all(), name
    assert {name for name, (s, _) in found.items() if s.geometry == "fan"} == BUSI_TRAPEZOIDS
    for name, (sector, stored) in found.items():
        assert torch.equal(stored, sector.mask), name  # stored with its source's frames
        if name in BUSI_TRAPEZOIDS:
            assert not (sector.mask[0, 0] and sector.mask[0, -1]), name
            continue
        assert box_fill(sector.mask) > (0.94 if name in BUSI_SMALL_CORNER else 0.97), name
        rows, cols = sector.mask.any(1).nonzero()[:, 0], sector.mask.any(0).nonzero()[:, 0]
        assert sector.mask[rows[-1], cols[0] : cols[-1] + 1].all(), name  # the bottom row whole: shadows stay


# Convex POCUS images cropped inside their fan: the frame is all tissue, a rectangle.
POCUS_CROPPED_IN_FAN = {"Cov_Oliviera_2020_Fig15A.jpg", "Cov_Oliviera_2020_Fig4A.jpg", "Cov_Oliviera_2020_Fig5A.jpg"}
POCUS_RIGHT_BORDER = {"Reg_Image_181206_crop.mp4", "Reg_Image_181432_crop.mp4"}  # linear, a black strip on the right


def test_sector_geometry__pocus_convex_fans_and_linear_probes(shared, monkeypatch):
    folder = shared / "ultrasound" / "pocus_ccby_subset"
    rows = csv.DictReader((folder / "labels.csv").read_text().splitlines())
    probe = {Path(row["path"]).name: row["probe"] for row in rows}
    found = geometry_by_source(folder, 2, monkeypatch)
    assert len(found) == 52 and sorted(probe.values()).count("linear") == 10
    for name, (sector, _) in found.items():
        mask = sector.mask
        h, w = mask.shape
        if probe[name] == "linear" or name in POCUS_CROPPED_IN_FAN:
            rows = mask.any(1)  # (a clip's last 3 rows black: left out)
            assert sector.geometry == "linear" and box_fill(mask) > 0.97, name
            assert mask[rows, 0].all() and mask[rows, -1].all() != (name in POCUS_RIGHT_BORDER), name
        else:  # both black top corners out (likebutterfly's fan leaves only the left one), its middle in
            assert sector.geometry == "fan" and mask[h // 3, w // 2] and not mask[0, 0], name
            assert mask[0, -1] == (name == "Cov_recommendations_likebutterfly_mov5.mov"), name


def test_read_clip__an_audio_only_mp4_is_named(tmp_path):
    from tests.test_video_io import audio_only

    path = audio_only(tmp_path / "sound.mp4")
    with pytest.raises(DataError, match="sound.mp4: no video stream"):
        read_clip(path, 4)


def test_raw_features__frames_area_downsampled_to_32_pixels(tmp_path):
    """Images of two grey levels, left half and right half, at the training size (so the
    evaluation view keeps their pixels): every row of 32 features is 16 of one level, then 16 of
    the other, in [0, 1] as the dataset scales them."""
    levels = {"a": [(10, 200), (60, 90)], "b": [(250, 0), (128, 128)]}
    for label, pairs in levels.items():
        (tmp_path / label).mkdir()
        for i, (left, right) in enumerate(pairs):
            image = np.full((64, 64), right, np.uint8)
            image[:, :32] = left
            Image.fromarray(image).save(tmp_path / label / f"{i}.png")
    data = build_domain(DataSource(str(tmp_path), progress=False), UltrasoundOptions(image_size=64, patch=16))
    for dataset in (data.train_eval, data.held_out):
        features, targets = data.raw_features(dataset)
        assert features.shape == (len(dataset), 32 * 32) and len(dataset) == 2
        assert targets.tolist() == dataset.class_ids
        for row, i in zip(features, range(len(dataset)), strict=True):
            left, right = levels[dataset.labels[i]][int(Path(dataset.sources[i]).stem)]
            expected = torch.tensor([left] * 16 + [right] * 16).repeat(32) / 255
            torch.testing.assert_close(row, expected)


def test_raw_features__phantom_frames_are_means_of_pixel_blocks():
    data = build_domain(DataSource(progress=False), UltrasoundOptions(image_size=64, patch=16, phantom_per_class=2))
    features, targets = data.raw_features(data.held_out)
    assert features.shape == (len(data.held_out), 1024) and targets.tolist() == data.held_out.class_ids
    x = data.held_out[0]["x"]  # (1, 64, 64): 32 x 32 blocks of 2 x 2 pixels
    torch.testing.assert_close(features[0], x.reshape(32, 2, 32, 2).mean((1, 3)).flatten())
