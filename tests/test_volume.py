"""Volumes: readers and their checks, every MONAI pipeline preset, millimetre coordinates, the
shared 2-D/3-D encoder."""

import dataclasses
import gzip
import json
import struct

import nibabel as nib
import numpy as np
import pytest
import torch

from foundations.vit import Encoder
from modalities.common import DataError, DataSource
from modalities.volume.adapter import VolumeAdapter, volume_config
from modalities.volume.data import (
    VolumeDataset,
    VolumeOptions,
    build_domain,
    find_pairs,
    find_records,
    preprocess,
    segmentation_classes,
)
from modalities.volume.io import read_label, read_volume
from modalities.volume.transforms import INTENSITY, WINDOWS, PipelineConfig, pipeline, to_batch
from tests.conftest import TINY_ENCODER, peak_while_refusing

SCT = "medical3d/sct_testing_data"


def write_nifti(path, data, zooms=(1.0, 1.0, 1.0), affine=None):
    affine = np.diag([*zooms, 1.0, 1.0, 1.0][:3] + [1.0]) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_zooms(tuple(zooms) + img.header.get_zooms()[3:])
    nib.save(img, path)
    return path


def spacing_of(meta) -> list[float]:
    from monai.data.utils import affine_to_spacing

    return affine_to_spacing(meta.affine, r=3).tolist()


# ----------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_read_volume__nifti_values_and_spacing(tmp_path, ext):
    data = np.random.rand(6, 5, 4).astype(np.float32)
    vol = read_volume(write_nifti(tmp_path / f"a{ext}", data, (2.0, 1.0, 3.0)))
    assert vol.shape == (1, 6, 5, 4)
    np.testing.assert_allclose(vol[0].numpy(), data)
    assert spacing_of(vol) == pytest.approx([2.0, 1.0, 3.0])


def test_read_volume__npy_is_one_millimetre(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    vol = read_volume(tmp_path / "v.npy")
    assert vol.shape == (1, 3, 4, 5) and vol[0, 2, 3, 4] == 59 and spacing_of(vol) == [1.0, 1.0, 1.0]


def test_read_volume__4d_needs_an_explicit_choice(tmp_path):
    data = np.stack([np.full((4, 4, 3), t, np.float32) for t in range(5)], axis=-1)  # (4, 4, 3, 5)
    path = write_nifti(tmp_path / "dwi.nii.gz", data, (1.0, 1.0, 2.0))
    with pytest.raises(DataError, match=r"dwi.nii.gz.*4-D file \(5 volumes"):
        read_volume(path)
    assert read_volume(path, select=3).shape == (1, 4, 4, 3) and read_volume(path, select=3).max() == 3
    stacked = read_volume(path, stack=True)
    assert stacked.shape == (5, 4, 4, 3) and stacked[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="volume 7 selected, but the file has 5"):
        read_volume(path, select=7)


def test_read_volume__real_files(shared):
    t1 = read_volume(shared / "medical3d/mni152_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    assert t1.shape == (1, 197, 233, 189) and spacing_of(t1) == pytest.approx([1.0, 1.0, 1.0])
    t2s = read_volume(shared / SCT / "t2s/t2s.nii.gz")
    assert t2s.shape == (1, 49, 54, 9) and spacing_of(t2s) == pytest.approx([0.5, 0.5, 7.5], rel=1e-4)
    fmri = read_volume(shared / SCT / "fmri/fmri.nii.gz", select=0)
    assert fmri.shape == (1, 68, 68, 6)


def test_find_pairs__spinal_cord_toolbox_layout(shared):
    pairs = {p["image"].name: p["label"].name for p in find_pairs(shared / SCT)}
    assert pairs["t2.nii.gz"] == "t2_seg-manual.nii.gz"  # manual wins over other segmentations
    assert pairs["t1w.nii.gz"] == "t1w_seg-manual.nii.gz" and pairs["t2s.nii.gz"] == "t2s_seg.nii.gz"
    assert not any("_seg" in name for name in pairs)


def test_find_pairs__decathlon_layout(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for case in ("la_003", "la_007"):
        write_nifti(tmp_path / "imagesTr" / f"{case}_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
        write_nifti(tmp_path / "labelsTr" / f"{case}.nii.gz", np.zeros((4, 4, 4), np.uint8))
    pairs = find_pairs(tmp_path)
    assert [(p["image"].name, p["label"].name) for p in pairs] == [
        ("la_003_0000.nii.gz", "la_003.nii.gz"),
        ("la_007_0000.nii.gz", "la_007.nii.gz"),
    ]


@pytest.mark.parametrize(
    "labels", [{"0": "background", "1": "left_kidney", "2": "spleen"}, {"background": 0, "left_kidney": 1, "spleen": 2}]
)
def test_segmentation_classes__from_decathlon_and_nnunet_dataset_json(tmp_path, labels):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    assert segmentation_classes(tmp_path, 2) == ["background", "left_kidney", "spleen"]  # the file sets the count
    assert segmentation_classes(tmp_path / "elsewhere", 3) == ["background", "label_1", "label_2"]


@pytest.mark.parametrize("text", ['{"labels": {"1": "spleen"', '["labels"]', '{"labels": ["spleen"]}'])
def test_segmentation_classes__malformed_dataset_json_is_named(tmp_path, text):
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(DataError, match=r"dataset.json: not a dataset.json with a 'labels' object"):
        segmentation_classes(tmp_path, 2)


def test_find_records__adrenalmnist3d_npz(shared):
    records, classes = find_records(shared / "medical3d/adrenalmnist3d_64", segment=False)
    assert classes == ["0", "1"] and len(records) == 1188 + 98
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 98 and val[0]["image"].shape == (1, 64, 64, 64)
    assert sorted({r["label"] for r in records}) == [0, 1]


def test_find_records__labels_csv_of_nifti(tmp_path):
    for name in ("p1.nii.gz", "p2.nii", "p3.nii.gz"):
        write_nifti(tmp_path / name, np.zeros((4, 4, 4), np.float32))
    (tmp_path / "labels.csv").write_text("path,label\np1.nii.gz,tumour\np2.nii,normal\np3.nii.gz,tumour\n")
    records, classes = find_records(tmp_path, segment=False)
    assert classes == ["normal", "tumour"]
    assert [(r["image"].name, r["label"]) for r in records] == [("p1.nii.gz", 1), ("p2.nii", 0), ("p3.nii.gz", 1)]


def test_find_records__flat_folder_is_unlabelled(shared):
    records, classes = find_records(shared / "medical3d/mni152_nilearn", segment=False)
    assert classes == [] and len(records) == 3 and {r["label"] for r in records} == {-1}


# --------------------------------------------------------------------------------------- bad input
def test_bad__corrupt_and_truncated_nifti(tmp_path):
    (tmp_path / "noise.nii.gz").write_bytes(gzip.compress(np.random.bytes(2000)))
    with pytest.raises(DataError, match="noise.nii.gz: not a readable NIfTI"):
        read_volume(tmp_path / "noise.nii.gz")
    cut = write_nifti(tmp_path / "cut.nii", np.random.rand(20, 20, 20).astype(np.float32))
    cut.write_bytes(cut.read_bytes()[:20000])  # header intact, voxel data cut short
    with pytest.raises(DataError, match=r"cut.nii: truncated, 20,000 bytes where the header needs 32,352 \(352-byte"):
        read_volume(cut)
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(cut.read_bytes()))  # no size to compare: read and fail
    with pytest.raises(DataError, match="cut.nii.gz: cannot read the voxel data") as e:
        read_volume(tmp_path / "cut.nii.gz")
    assert "\n" not in str(e.value)


def header_claiming(path, shape):
    """A NIfTI file of 4 x 4 x 4 voxels whose header claims ``shape`` (nibabel would not write it)."""
    write_nifti(path.with_name("small.nii"), np.zeros((4, 4, 4), np.float32))
    raw = bytearray(path.with_name("small.nii").read_bytes())
    raw[40:56] = struct.pack("<8h", len(shape), *shape, *[1] * (7 - len(shape)))  # dim[0..7]
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_bad__header_over_max_voxels_is_refused_before_reading(tmp_path, name):
    path = header_claiming(tmp_path / name, (512, 512, 512))  # 2**27 voxels in a file of a few hundred bytes
    records = [{"image": path, "label": 0, "name": str(path)}]
    cfg = PipelineConfig(roi=(8, 8, 8), intensity="unit")
    peak = peak_while_refusing(
        lambda: preprocess(records, cfg, False, 2, None, False, progress=False, max_voxels=2**24),
        match=rf"{name}: 134,217,728 voxels \(shape \(512, 512, 512\)\), over the --max-voxels limit of 16,777,216",
    )
    assert peak < 2**20  # nibabel would allocate the 512 MB the header claims before finding no data
    items, skipped = preprocess(records, cfg, False, 2, None, True, progress=False, max_voxels=2**24)
    assert items == [] and "--max-voxels" in skipped[0][1]
    assert VolumeOptions().max_voxels == 2**28
    with pytest.raises(DataError, match=r"giant.nii.gz: 1,073,741,824 voxels .* limit of 268,435,456"):
        read_volume(header_claiming(tmp_path / "giant.nii.gz", (1024, 1024, 1024)))  # the default limit


def test_bad__npy_over_max_voxels_is_refused_from_its_header(tmp_path):
    np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.float32, (2, 128, 128, 128)).flush()  # 16 MB
    peak = peak_while_refusing(
        lambda: read_volume(tmp_path / "big.npy", max_voxels=2**22 - 1),
        match=r"big.npy: 4,194,304 voxels \(shape \(2, 128, 128, 128\)\), over the --max-voxels limit of 4,194,303",
    )
    assert peak < 2**20  # reading the array would take 16 MB
    assert read_volume(tmp_path / "big.npy", max_voxels=2**22).shape == (2, 128, 128, 128)  # the limit is inclusive


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 1)])
def test_bad__2d_file_where_3d_is_expected(tmp_path, shape):
    path = write_nifti(tmp_path / "slice.nii.gz", np.zeros(shape, np.float32), (1.0,) * len(shape))
    with pytest.raises(DataError, match="slice.nii.gz: a 2-D image"):
        read_volume(path)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_bad__non_finite_voxels(tmp_path, value):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = value
    with pytest.raises(DataError, match="bad.nii.gz: 1 NaN or infinite voxels"):
        read_volume(write_nifti(tmp_path / "bad.nii.gz", data))


@pytest.mark.parametrize("zoom", [0.0, -1.0])
def test_bad__non_positive_spacing_in_header(tmp_path, zoom):
    path = write_nifti(tmp_path / "flat.nii", np.zeros((4, 4, 4), np.float32))
    raw = bytearray(path.read_bytes())
    raw[84:88] = struct.pack("<f", zoom)  # pixdim[2] patched in the file: nibabel refuses to write it
    path.write_bytes(raw)
    with pytest.raises(DataError, match="flat.nii: voxel spacing .* must be positive"):
        read_volume(path)


def test_bad__label_shape_and_values(tmp_path):
    image = read_volume(write_nifti(tmp_path / "img.nii.gz", np.zeros((6, 6, 4), np.float32)))
    wrong = write_nifti(tmp_path / "wrong.nii.gz", np.zeros((6, 6, 5), np.uint8))
    with pytest.raises(DataError, match=r"wrong.nii.gz: label shape \(6, 6, 5\) differs from its image \(6, 6, 4\)"):
        read_label(wrong, image, 2)
    labels = np.zeros((6, 6, 4), np.uint8)
    labels[0, 0, 0] = 3
    outside = write_nifti(tmp_path / "outside.nii.gz", labels)
    with pytest.raises(DataError, match=r"outside.nii.gz: label values \[3.0\] outside the class set 0..1"):
        read_label(outside, image, 2)
    assert read_label(outside, image, 4).max() == 3


def test_bad__label_on_another_grid_than_its_image(tmp_path):
    affine = np.array([[1.0, 0, 0, -10], [0, 1.0, 0, 20], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    image = read_volume(write_nifti(tmp_path / "img.nii.gz", np.zeros((6, 6, 4), np.float32), affine=affine))
    labels = np.zeros((6, 6, 4), np.uint8)
    shifted = affine + np.array([[0, 0, 0, 2.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # 2 mm along x
    path = write_nifti(tmp_path / "shifted_seg.nii.gz", labels, affine=shifted)
    with pytest.raises(
        DataError,
        match=r"shifted_seg.nii.gz: label on another grid than its image: voxel-to-world affines differ by up to "
        r"2 mm in origin and 0 mm per voxel in spacing/direction",
    ):
        read_label(path, image, 2)
    stretched = write_nifti(tmp_path / "stretched_seg.nii.gz", labels, affine=affine @ np.diag([1, 1, 1.5, 1]))
    with pytest.raises(DataError, match=r"stretched_seg.nii.gz: .* 0 mm in origin and 1 mm per voxel"):
        read_label(stretched, image, 2)
    rounded = write_nifti(tmp_path / "rounded_seg.nii.gz", labels, affine=affine + 2e-4)  # float32 rounding, as in SCT
    assert read_label(rounded, image, 2).shape == (1, 6, 6, 4)
    assert read_label(labels, image, 2).shape == (1, 6, 6, 4)  # an array takes the image's grid


def test_bad__skip_bad_files_keeps_the_good_ones(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", np.random.rand(8, 8, 8).astype(np.float32))
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    records = [{"image": p, "label": 0, "name": str(p)} for p in (good, tmp_path / "bad.nii.gz")]
    cfg = PipelineConfig(roi=(8, 8, 8), intensity="unit")
    with pytest.raises(DataError, match="bad.nii.gz"):
        preprocess(records, cfg, False, 2, None, skip_bad=False, progress=False)
    items, skipped = preprocess(records, cfg, False, 2, None, skip_bad=True, progress=False)
    assert [it["name"] for it in items] == [str(good)] and skipped[0][0] == str(tmp_path / "bad.nii.gz")


# -------------------------------------------------------------------------------------- transforms
def prepared(data, cfg, zooms=(1.0, 1.0, 1.0), affine=None, label=None, tmp_path=None):
    path = write_nifti(tmp_path / "v.nii.gz", data, zooms, affine)
    rec = {"image": path, "label": -1 if label is None else label, "name": "v"}
    return preprocess([rec], cfg, label is not None, 2, None, skip_bad=False, progress=False)[0][0]


@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_pipeline__ct_windows(tmp_path, window):
    lo, hi = WINDOWS[window]
    hu = np.linspace(-1500, 1500, 16 * 16 * 16, dtype=np.float32).reshape(16, 16, 16)
    cfg = PipelineConfig(roi=(16, 16, 16), intensity=window, crop_foreground=False)
    out = prepared(hu, cfg, tmp_path=tmp_path)["image"][0].numpy()
    np.testing.assert_allclose(out, np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_pipeline__mri_normalises_non_zero_voxels_per_channel(tmp_path):
    data = np.zeros((16, 16, 16), np.float32)
    data[4:12, 4:12, 4:12] = np.random.rand(8, 8, 8) * 300 + 100
    cfg = PipelineConfig(roi=(16, 16, 16), intensity="mri", crop_foreground=False)
    out = prepared(data, cfg, tmp_path=tmp_path)["image"][0].numpy()
    inside = out[4:12, 4:12, 4:12]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-3 and (out[data == 0] == 0).all()


def test_pipeline__unit_scales_to_zero_one(tmp_path):
    cfg = PipelineConfig(roi=(8, 8, 8), intensity="unit", crop_foreground=False)
    out = prepared(np.random.rand(8, 8, 8).astype(np.float32) * 255, cfg, tmp_path=tmp_path)["image"]
    assert out.min() == 0 and out.max() == pytest.approx(1.0)


def test_pipeline__orientation_to_ras(tmp_path):
    data = np.zeros((8, 8, 8), np.float32)
    data[0, 0, 0] = 1  # first voxel of an LPS volume: right, anterior -> last along x and y in RAS
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    cfg = PipelineConfig(roi=(8, 8, 8), intensity="unit", crop_foreground=False)
    out = prepared(data, cfg, affine=lps, tmp_path=tmp_path)["image"]
    assert out[0, 7, 7, 0] == 1 and (torch.diag(out.affine)[:3] > 0).all()


def test_pipeline__resample_to_target_spacing(tmp_path):
    cfg = PipelineConfig(roi=(8, 8, 8), intensity="unit", spacing=(1.0, 1.0, 1.0), crop_foreground=False)
    out = prepared(np.random.rand(8, 8, 4).astype(np.float32), cfg, (2.0, 2.0, 4.0), tmp_path=tmp_path)["image"]
    # 8 voxels 2 mm apart span 14 mm between the first and last centre: 15 voxels at 1 mm
    assert out.shape[1:] == (15, 15, 13) and spacing_of(out) == pytest.approx([1.0, 1.0, 1.0])


def test_pipeline__crop_foreground_then_pad_to_roi(tmp_path):
    data = np.zeros((40, 40, 40), np.float32)
    data[10:30, 12:20, 5:35] = 1.0
    out = prepared(data, PipelineConfig(roi=(16, 16, 16), intensity="unit"), tmp_path=tmp_path)["image"]
    assert out.shape[1:] == (20, 16, 30)  # y (8 voxels of body) padded up to the roi


def test_pipeline__random_crops_slices_and_centre(tmp_path):
    cfg = PipelineConfig(roi=(16, 16, 8), intensity="unit", crop_foreground=False)
    item = prepared(np.random.rand(24, 20, 12).astype(np.float32), cfg, (1.0, 1.0, 2.0), tmp_path=tmp_path)
    crops = VolumeDataset([item], pipeline(cfg, "pretrain"), repeat=3)
    assert len(crops) == 3 and {tuple(crops[i]["x"]["image"].shape) for i in range(3)} == {(1, 16, 16, 8)}
    slices = VolumeDataset([item], pipeline(cfg, "slices"), slices=True)
    assert slices[0]["x"]["image"].shape == (1, 16, 16)
    centre = VolumeDataset([item], pipeline(cfg, "eval"))[0]
    assert centre["x"]["image"].shape == (1, 16, 16, 8)
    torch.testing.assert_close(centre["x"]["spacing"], torch.tensor([1.0, 1.0, 2.0]))


def test_pipeline__segmentation_crops_keep_label_aligned_and_find_the_foreground(tmp_path):
    data = np.zeros((48, 48, 48), np.float32)
    data[30:36, 10:16, 20:26] = 1.0  # a small structure; label == image so alignment is visible
    path = write_nifti(tmp_path / "v.nii.gz", data + 0.01)
    label = write_nifti(tmp_path / "v_seg.nii.gz", data.astype(np.uint8))
    cfg = PipelineConfig(roi=(16, 16, 16), intensity="unit", crop_foreground=False)
    items, _ = preprocess([{"image": path, "label": label, "name": "v"}], cfg, True, 2, None, False, progress=False)
    crops = VolumeDataset(items, pipeline(cfg, "segment", segment=True), repeat=40)
    with_foreground = 0
    for i in range(len(crops)):
        s = crops[i]
        assert torch.equal((s["x"]["image"] > 0.5).long(), s["y"])
        with_foreground += int(s["y"].any())
    assert with_foreground >= 12  # half the crops are centred on the label: far above its volume share


def test_to_batch__new_files_prepared_as_the_encoder_was_trained(tmp_path):
    saved = json.loads(json.dumps(dataclasses.asdict(PipelineConfig((16, 16, 8), "wide", (1.0, 1.0, 2.0)))))
    cfg = PipelineConfig.saved({**saved, "samples": 2})  # an encoder's info["preprocessing"] (format 1 had samples)
    a = write_nifti(tmp_path / "a.nii.gz", np.full((20, 18, 6), 1000.0, np.float32), (1.0, 1.0, 3.0))
    b = write_nifti(tmp_path / "b.nii", np.full((12, 30, 9), -1000.0, np.float32), (2.0, 1.0, 2.0))
    batch = to_batch([a, b], cfg)
    assert batch["image"].shape == (2, 1, 16, 16, 8)
    assert batch["image"][0].max() == 1.0 and batch["image"][1].max() == 0.0  # the wide window
    torch.testing.assert_close(batch["spacing"], torch.tensor([[1.0, 1.0, 2.0]] * 2))


# ------------------------------------------------------------------------------- adapter, encoder
def test_coordinates__are_millimetres_shared_across_spacings():
    iso = VolumeAdapter(volume_config(1, (16, 16, 16), (32, 32, 32)), 32)
    thick = VolumeAdapter(volume_config(1, (16, 16, 4), (32, 32, 8)), 32)
    a = iso.embed({"image": torch.rand(1, 1, 32, 32, 32), "spacing": torch.tensor([[1.0, 1.0, 1.0]])}).coords
    b = thick.embed({"image": torch.rand(1, 1, 32, 32, 8), "spacing": torch.tensor([[1.0, 1.0, 4.0]])}).coords
    torch.testing.assert_close(a, b)  # 16 mm patches either way: the same frame
    assert a[0, :2].tolist() == [[8.0, 8.0, 8.0], [8.0, 8.0, 24.0]]  # patch centres, z fastest
    c = iso.embed({"image": torch.rand(1, 1, 32, 32, 32), "spacing": torch.tensor([[0.5, 2.0, 3.0]])}).coords
    torch.testing.assert_close(c, a * torch.tensor([0.5, 2.0, 3.0]))


def test_shared_encoder__the_same_weights_embed_2d_and_3d():
    adapter = VolumeAdapter(volume_config(1, (8, 8, 4), (16, 16, 8)), TINY_ENCODER.dim)
    encoder = Encoder(adapter, TINY_ENCODER)
    spacing = torch.tensor([[1.0, 1.0, 2.0], [0.8, 0.8, 3.0]])
    image = torch.rand(2, 1, 16, 16)
    as_volume = image[..., None].expand(-1, -1, -1, -1, 4)  # the slice repeated through the patch depth
    flat = adapter.embed({"image": image, "spacing": spacing})
    deep = adapter.embed({"image": as_volume, "spacing": spacing})
    torch.testing.assert_close(flat.tokens, deep.tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flat.coords, deep.coords)
    out2d = encoder({"image": image, "spacing": spacing})
    out3d = encoder({"image": torch.rand(2, 1, 16, 16, 8), "spacing": spacing})
    assert out2d.tokens.shape == (2, 4, 32) and out3d.tokens.shape == (2, 8, 32)
    out2d.features.sum().backward()  # a 2-D batch alone trains every weight: no unused parameters
    assert [n for n, p in encoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_adapter__2d_targets_round_trip_and_bad_shapes():
    adapter = VolumeAdapter(volume_config(1, (8, 8, 4), (16, 16, 8)), 32)
    x = {"image": torch.rand(2, 1, 16, 24), "spacing": torch.ones(2, 3)}
    torch.testing.assert_close(adapter.unpatchify(adapter.targets(x).values, x), x["image"])
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        adapter.embed({"image": torch.rand(1, 1, 16, 16, 6), "spacing": torch.ones(1, 3)})
    with pytest.raises(ValueError, match="expected 3-D grids"):
        adapter.embed({"image": torch.rand(1, 2, 16, 16, 8), "spacing": torch.ones(1, 3)})


def test_intensity_presets_are_all_tested():
    tested = {*WINDOWS, "mri", "unit"}
    assert tested == set(INTENSITY)


def test_find_records__a_single_class_folder_is_refused(tmp_path):
    (tmp_path / "tumour").mkdir()
    write_nifti(tmp_path / "tumour" / "a.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(DataError, match="only one class \\('tumour'\\); probing and fine-tuning need at least two"):
        find_records(tmp_path, segment=False)
    (tmp_path / "normal").mkdir()
    write_nifti(tmp_path / "normal" / "b.nii.gz", np.zeros((8, 8, 8), np.float32))
    assert find_records(tmp_path, segment=False)[1] == ["normal", "tumour"]


# ------------------------------------------------------------------------------- probe baseline
def test_raw_features__centre_crops_area_downsampled_to_16_cubed(tmp_path):
    """MedMNIST-style arrays of 32^3 voxels, ramps along x (class 0) or z (class 1): after the
    unit scaling (ramp / 31) each of the 16^3 features is the mean of two ramp steps,
    (2k + 0.5) / 31 at k along the ramp's axis."""
    ramp = np.arange(32, dtype=np.float32)
    along_x, along_z = np.broadcast_to(ramp[:, None, None], (32,) * 3), np.broadcast_to(ramp, (32,) * 3)
    images = np.stack([along_x, along_z, along_x, along_z]).astype(np.uint8)
    np.savez(
        tmp_path / "ramps.npz",
        train_images=images,
        train_labels=np.array([[0], [1], [0], [1]]),
        val_images=images[:2],
        val_labels=np.array([[0], [1]]),
    )
    opts = VolumeOptions(roi=(32, 32, 32), patch=(16, 16, 16), crop_foreground=False)
    data = build_domain(DataSource(str(tmp_path / "ramps.npz"), progress=False), opts)
    steps = torch.tensor([(2 * k + 0.5) / 31 for k in range(16)])
    expected = [steps[:, None, None].expand(16, 16, 16).flatten(), steps.expand(16, 16, 16).flatten()]
    for dataset in (data.train_eval, data.held_out):
        features, targets = data.raw_features(dataset)
        assert features.shape == (len(dataset), 16**3) and targets.tolist() == dataset.class_ids
        for row, y in zip(features, targets, strict=True):
            torch.testing.assert_close(row, expected[y])


def test_raw_features__none_for_segmentation_and_the_centre_crop_for_the_synthetic_set():
    small = {"synthetic_per_class": 3, "synthetic_size": 24, "roi": (16, 16, 16), "patch": (8, 8, 8)}
    assert build_domain(DataSource(progress=False), VolumeOptions(task="segment", **small)).raw_features is None
    data = build_domain(DataSource(progress=False), VolumeOptions(**small))
    features, targets = data.raw_features(data.held_out)
    assert features.shape == (len(data.held_out), 16**3) and targets.tolist() == data.held_out.class_ids
    torch.testing.assert_close(features[0], data.held_out[0]["x"]["image"].flatten())  # a 16^3 crop: kept as it is
