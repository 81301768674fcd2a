import struct
import zlib

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
from modalities.ultrasound.transforms import UltrasoundAugment, detect_sector
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
    dataset, skipped = load_frames(samples, opts, skip_bad=True, progress=False)
    assert len(dataset) == 1 and [p for p, _ in skipped] == [str(tmp_path / "wide.png")]


@pytest.mark.parametrize("name,reader", [("bad.png", read_image), ("bad.mp4", lambda p: read_clip(p, 4))])
def test_readers__corrupt_file_named_in_error(tmp_path, name, reader):
    (tmp_path / name).write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError, match=rf"{name}: cannot read"):
        reader(tmp_path / name)


def test_load_frames__skip_bad_files_counts_them(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((40, 40), 100 + i, np.uint8)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    samples = [Sample(tmp_path / n, "a") for n in ("ok0.png", "broken.png", "ok1.png")]
    with pytest.raises(DataError, match="broken.png"):
        load_frames(samples, SMALL, skip_bad=False, progress=False)
    dataset, skipped = load_frames(samples, SMALL, skip_bad=True, progress=False)
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
    dataset, _ = load_frames([Sample(tmp_path / "c.mp4", "a")], opts, skip_bad=False, progress=False)
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


def test_read_clip__an_audio_only_mp4_is_named(tmp_path):
    from tests.test_video_io import audio_only

    path = audio_only(tmp_path / "sound.mp4")
    with pytest.raises(DataError, match="sound.mp4: cannot read clip"):
        read_clip(path, 4)
