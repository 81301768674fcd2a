"""Volume datasets: records from the standard layouts (class folders or labels.csv of NIfTI,
Decathlon / nnU-Net image-label pairs, MedMNIST-3D arrays), the built-in synthetic set, prepared
volumes seen through random crops, the figures, and the domain the recipe trains on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset
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
from modalities.shards import OnFirstUse, ShardStream, is_shards, open_shards, read_index, samples_in, split_shards
from modalities.volume.adapter import volume_config
from modalities.volume.io import (
    EXTENSIONS,
    MAX_VOXELS,
    NIFTI_EXTENSIONS,
    check_voxels,
    has_extension,
    read_label,
    read_volume,
    strip_extension,
    to_meta,
)
from modalities.volume.transforms import INTENSITY, PipelineConfig, ToSample, pipeline, spacing_mm


def triple(kind):
    """ "96" or "96,96,32" (or "96x96x32") -> a 3-tuple of ``kind``."""

    def parse(text) -> tuple:
        values = [kind(v) for v in text.replace("x", ",").split(",")] if isinstance(text, str) else text
        values = list(values) if isinstance(values, (list, tuple)) else [kind(values)]
        return tuple(values * 3 if len(values) == 1 else values)

    return parse


def four_d(text):
    return text if text in ("stack", None) else int(text)


@dataclass(frozen=True)
class VolumeOptions:
    task: str = field(
        default="classify",
        metadata={
            "choices": ("classify", "segment"),
            "help": "classify: linear probe and fine-tuning on volume labels; segment: UNETR on label volumes "
            "(probe = frozen encoder), Dice by sliding windows over whole held-out volumes",
        },
    )
    window: str | None = field(
        default=None,
        metadata={
            "choices": INTENSITY,
            "help": "intensity preset: CT windows in HU (abdomen -175..250, lung -1350..150, brain 0..80, "
            "wide -1000..1000) scaled to 0..1; mri = z-score of non-zero voxels per channel; unit = "
            "min-max to 0..1. Unset: mri for NIfTI, unit for arrays",
        },
    )
    spacing: tuple[float, float, float] | None = field(
        default=None,
        metadata={
            "parse": triple(float),
            "help": "resample to this voxel spacing in mm, e.g. 1.5 or 1,1,3; unset keeps the file's",
        },
    )
    roi: tuple[int, int, int] = field(
        default=(64, 64, 64), metadata={"parse": triple(int), "help": "crop size in voxels, e.g. 96 or 96,96,32"}
    )
    patch: tuple[int, int, int] = field(
        default=(16, 16, 16), metadata={"parse": triple(int), "help": "patch size in voxels, e.g. 16 or 16,16,4"}
    )
    crops: int = field(default=2, metadata={"aliases": ("--samples",), "help": "random crops per volume and epoch"})
    crop_foreground: bool = field(default=True, metadata={"help": "crop away the background around the body"})
    volume_4d: str | int | None = field(
        default=None,
        metadata={
            "parse": four_d,
            "help": "4-D files (DWI, fMRI): 'stack' their volumes as channels, or an index N to select one",
        },
    )
    classes: int = field(default=2, metadata={"help": "segmentation classes, background included"})
    mix_2d: float = field(default=0.0, metadata={"help": "fraction of pretraining batches that are 2-D slices"})
    synthetic_per_class: int = field(default=64, metadata={"help": "built-in synthetic volumes per class"})
    synthetic_size: int = field(default=64, metadata={"help": "side of the built-in synthetic volumes"})
    max_voxels: int = field(
        default=MAX_VOXELS,
        metadata={
            "help": "most voxels a volume file may hold, all channels and 4-D volumes together (2**28: 1 GiB "
            "as float32); larger headers are refused before any voxel is read"
        },
    )

    def __post_init__(self):
        for name, parse in (("spacing", triple(float)), ("roi", triple(int)), ("patch", triple(int))):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, parse(getattr(self, name)))
        if self.task not in ("classify", "segment"):
            raise ValueError(f"VolumeOptions.task must be classify or segment, got {self.task!r}")
        if not 0.0 <= self.mix_2d < 1.0:
            raise ValueError(f"VolumeOptions.mix_2d must be in [0, 1), got {self.mix_2d}")
        if self.crops < 1:
            raise ValueError(f"VolumeOptions.crops must be >= 1, got {self.crops}")
        if self.max_voxels < 1:
            raise ValueError(f"VolumeOptions.max_voxels must be >= 1, got {self.max_voxels}")
        volume_config(1, self.patch, self.roi)  # validates patch and roi

    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(self.roi, self.window, self.spacing, crop_foreground=self.crop_foreground)


class VolumeDataset(torch.utils.data.Dataset):
    """Prepared volumes, each seen ``repeat`` times per epoch through a random (or fixed) transform."""

    def __init__(self, items: list[dict], transform=None, repeat: int = 1, slices: bool = False):
        self.items, self.transform, self.repeat, self.to_sample = items, transform, repeat, ToSample(slices)
        labels = [it["label"] for it in items]
        self.class_ids = [int(y) for y in labels] if all(isinstance(y, int) for y in labels) else None

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def reseed(self, seed: int) -> None:
        """MONAI's random transforms draw from their own generators (``foundations.train.Seeded``)."""
        if self.transform is not None:
            self.transform.set_random_state(seed)

    def __getitem__(self, i: int) -> dict:
        return self.prepare(dict(self.items[i % len(self.items)]))

    def prepare(self, d: dict) -> dict:
        """A prepared record {"image", "label", "name"} -> the item, through the transform."""
        # "is not None": bool(Compose) calls len(), which flattens it into a new Compose whose
        # init re-seeds every random transform from fresh entropy (MONAI 1.x)
        d = self.transform(d) if self.transform is not None else d
        return self.to_sample(d[0] if isinstance(d, list) else d)  # MONAI's sampling crops return a list


class VolumeStream(VolumeDataset):
    """The ``decode`` of a ``ShardStream`` of volumes: a shard sample (``write_shards``) -> its item,
    through the transform; reseeded by the stream per item."""

    def __call__(self, sample: dict) -> dict:
        return self.prepare(from_shard(sample))


class Mixed(ConcatDataset):
    """3-D crops and 2-D slices in one dataset (``--mix-2d``), reseeded together."""

    def reseed(self, seed: int) -> None:
        for part in self.datasets:
            part.reseed(seed)


def preprocess(
    records: list[dict],
    cfg: PipelineConfig,
    segment: bool,
    n_classes: int,
    four_d,
    skip_bad,
    progress,
    max_voxels: int = MAX_VOXELS,
):
    """Read and prepare each record {"image": path or array, "label": class index, label path or
    -1, "name"} once; bad files (more than ``max_voxels`` among them) raise a ``DataError`` naming
    them, or are skipped and listed."""
    select, stack = (None, True) if four_d == "stack" else (four_d, False)
    transform = pipeline(cfg, "prepare", segment)

    def read(rec: dict) -> dict:
        image = rec["image"]
        if isinstance(image, np.ndarray):
            image = to_meta(check_voxels(image, rec["name"]), np.eye(4), rec["name"])  # arrays: 1 mm voxels
        else:
            image = read_volume(image, select, stack, max_voxels)
        label = read_label(rec["label"], image, n_classes, max_voxels) if segment else rec["label"]
        try:
            item = transform({"image": image, "label": label})
        except Exception as e:  # MONAI wraps failures in RuntimeError; name the file
            raise DataError(f"{rec['name']}: preprocessing failed ({e})") from e
        return {**item, "name": str(rec["name"])}

    records = tqdm(records, desc="reading volumes", disable=not progress, leave=False)
    return read_each(records, read, skip_bad, name=lambda rec: str(rec["name"]))


LABEL_SUFFIXES = ("_seg-manual", "_seg")  # BIDS-style derivatives, as in the Spinal Cord Toolbox data


def find_pairs(root: Path) -> list[dict]:
    """Image/label NIfTI pairs: ``imagesTr/`` + ``labelsTr/`` (Medical Segmentation Decathlon;
    an nnU-Net ``_0000`` channel suffix on images is allowed), or files with a sibling
    ``<name>_seg-manual`` / ``<name>_seg`` label anywhere below ``root``."""
    pairs = []
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        labels = {
            strip_extension(p.name): p for p in (root / "labelsTr").iterdir() if has_extension(p, NIFTI_EXTENSIONS)
        }
        for image in sorted(
            p
            for p in (root / "imagesTr").iterdir()
            if has_extension(p, NIFTI_EXTENSIONS) and not p.name.startswith(".")
        ):
            stem = strip_extension(image.name)
            label = labels.get(stem) or labels.get(stem.removesuffix("_0000"))
            if label is None:
                raise DataError(f"{image}: no label in {root / 'labelsTr'} with the same name")
            pairs.append({"image": image, "label": label, "name": str(image)})
        return pairs
    for image in sorted(root.rglob("*")):
        stem = strip_extension(image.name)
        if not has_extension(image, NIFTI_EXTENSIONS) or stem.endswith(LABEL_SUFFIXES) or "_seg" in stem:
            continue
        label = next(
            (
                image.with_name(stem + s + e)
                for s in LABEL_SUFFIXES
                for e in NIFTI_EXTENSIONS
                if image.with_name(stem + s + e).is_file()
            ),
            None,
        )
        if label is not None:
            pairs.append({"image": image, "label": label, "name": str(image)})
    return pairs


def medmnist_records(path: Path) -> tuple[list[dict], list[str]]:
    """Records of a MedMNIST-3D style .npz: ``{split}_images`` N x D x H x W, ``{split}_labels``."""
    try:
        arrays = np.load(path, allow_pickle=False)
        splits = [k.removesuffix("_images") for k in arrays.files if k.endswith("_images")]
        records = []
        for split in splits:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
            if images.ndim != 4 or len(images) != len(labels):
                raise DataError(
                    f"{path}: {split}_images must be N x D x H x W with one label each, "
                    f"got {images.shape} and {labels.shape}"
                )
            records += [
                {
                    "image": images[i][None].astype(np.float32),
                    "label": int(labels[i]),
                    "name": f"{path.name}:{split}[{i}]",
                    "split": split,
                }
                for i in range(len(images))
            ]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not a readable MedMNIST-style .npz ({type(e).__name__}: {e})") from e
    if not records:
        raise DataError(f"{path}: no {{split}}_images arrays")
    return records, [str(c) for c in sorted({r["label"] for r in records})]


def find_records(root, segment: bool) -> tuple[list[dict], list[str]]:
    """Records and class names of a dataset folder (or .npz file); see the recipe's --help."""
    root = Path(root)
    npz = [root] if root.name.endswith(".npz") else sorted(root.glob("*.npz")) if root.is_dir() else []
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if segment:
        pairs = find_pairs(root)
        if not pairs:
            raise DataError(
                f"{root}: no image/label pairs; expected imagesTr/ + labelsTr/, "
                "or <name>_seg.nii.gz beside <name>.nii.gz"
            )
        return pairs, []
    if len(npz) == 1:
        return medmnist_records(npz[0])
    if (root / "labels.csv").is_file() or any(p.is_dir() for p in root.iterdir()):
        samples = discover(root, EXTENSIONS)
        classes = require_classes([s.label for s in samples], root)
        return [
            {"image": s.path, "label": classes.index(s.label), "name": str(s.path), "split": s.split} for s in samples
        ], classes
    files = sorted(p for p in root.iterdir() if has_extension(p))
    if not files:
        raise DataError(f"{root}: no volumes ({', '.join(EXTENSIONS)}), labels.csv or class folders")
    return [{"image": p, "label": -1, "name": str(p)} for p in files], []  # unlabelled: pretraining only


SYNTHETIC_CLASSES = ["few", "many"]


def synthetic_records(n_per_class: int, size: int, seed: int) -> list[dict]:
    """MONAI's synthetic volumes (noisy spheres with their segmentation); the class is how many
    spheres a volume holds: 3 ("few") or 9 ("many")."""
    from monai.data import create_test_image_3d

    rs = np.random.RandomState(seed)
    records = []
    for i in range(2 * n_per_class):
        cls = i % 2
        image, seg = create_test_image_3d(
            size,
            size,
            size,
            num_objs=(3, 9)[cls],
            rad_max=size // 6,
            rad_min=size // 12,
            noise_max=0.1,
            num_seg_classes=1,
            random_state=rs,
        )
        records.append(
            {
                "image": image[None].astype(np.float32),
                "label": cls,
                "seg": (seg > 0).astype(np.float32),
                "name": f"synthetic_{i:04d}",
            }
        )
    return records


def raw_features(dataset: VolumeDataset, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's raw-input baseline: every volume of the evaluation view (the centre crop, its
    intensities as the encoder gets them) area-downsampled to ``side``^3 voxels -> (N, C * side**3),
    with the class indices (N,)."""
    feats = [F.adaptive_avg_pool3d(dataset[i]["x"]["image"], side).flatten() for i in range(len(dataset))]
    return torch.stack(feats), torch.tensor(dataset.class_ids)


@torch.no_grad()
def render_slices(mae, x: dict, valid=None) -> torch.Tensor:
    """Middle axial slices of input / masked input / reconstruction, one column per volume,
    in radiological view; scaled by the input's range -> (3 * Y, B * X) in [0, 1]."""
    rows = [r[:, 0, :, :, r.shape[-1] // 2].transpose(-1, -2).flip(-2) for r in mae.reconstruct(x, valid)]
    lo, hi = rows[0].amin(), rows[0].amax()
    rows = [((r - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) for r in rows]
    return torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)


KNOWN_CARDS = {
    "adrenalmnist3d_64": "data_cards/adrenalmnist3d.md",
    "sct_testing_data": "data_cards/sct_spinal_cord.md",
    "mni152_nilearn": "data_cards/mni152.md",
}


def volume_card(root) -> str:
    card = data_card(root, KNOWN_CARDS)
    return "data_cards/decathlon_layout.md" if card.startswith("user") and (Path(root) / "imagesTr").is_dir() else card


def segmentation_classes(root, n_classes: int) -> list[str]:
    """Class names from dataset.json "labels" when present (the Decathlon's {"1": "spleen"} or
    nnU-Net v2's {"spleen": 1}), else background, label_1 ... label_{n-1}."""
    table = Path(root) / "dataset.json" if root else None
    if table is not None and table.is_file():
        try:
            labels = json.loads(table.read_text()).get("labels", {})
            labels.items()
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise DataError(f"{table}: not a dataset.json with a 'labels' object ({e})") from None
        names = {int(k): v for k, v in labels.items() if str(k).isdigit()}
        names |= {int(v): k for k, v in labels.items() if not str(k).isdigit() and isinstance(v, int)}
        if names:
            return [names.get(i, f"label_{i}") for i in range(max(n_classes, max(names) + 1))]
    return ["background", *(f"label_{i}" for i in range(1, n_classes))]


def plan(source: DataSource, opts: VolumeOptions) -> tuple[list[dict], list[dict], list[str], str, PipelineConfig]:
    """The records of the training and held-out splits, the class names, the data card and the
    preparation (its intensity resolved: mri for files, unit for arrays), before anything is read.

    Held-out data, in order: ``eval_data``; the .npz file's val/test split; 20 % of the files
    (stratified by class, fixed seed)."""
    segment = opts.task == "segment"
    if source.data is None:
        records = synthetic_records(opts.synthetic_per_class, opts.synthetic_size, source.seed)
        records = [{**r, "label": r["seg"]} if segment else r for r in records]
        classes, card = SYNTHETIC_CLASSES, "data_cards/synthetic_volumes.md"
    else:
        records, classes = find_records(source.data, segment)
        card = volume_card(source.data)
    if segment:
        classes = ["background", "sphere"] if source.data is None else segmentation_classes(source.data, opts.classes)
    pipe = opts.pipeline()
    if pipe.intensity is None:
        arrays = isinstance(records[0]["image"], np.ndarray)
        pipe = dataclasses.replace(pipe, intensity="unit" if arrays else "mri")
    if source.eval_data is not None:
        more, more_classes = find_records(source.eval_data, segment)
        if not segment:
            check_held_out_classes(more_classes, classes, source.eval_data, source.data)
            more = [{**r, "label": classes.index(more_classes[r["label"]])} if r["label"] >= 0 else r for r in more]
        return records, more, classes, card, pipe
    labels = ["all" if segment else str(r["label"]) for r in records]
    splits = [r.get("split") for r in records]
    train_idx, held_idx = held_out_split(labels, [str(r["name"]) for r in records], splits, source.seed)
    return [records[i] for i in train_idx], [records[i] for i in held_idx], classes, card, pipe


def build_domain(source: DataSource, opts: VolumeOptions) -> DomainData:
    """Datasets, adapter config and data card for the volumes recipe (``opts.task`` classify|segment):
    the splits of ``plan``, or shards (``modalities.shards.is_shards``), streamed for pretraining.
    ``mix_2d``: the fraction of pretraining batches that are 2-D slices of the training volumes
    instead of 3-D crops."""
    if is_shards(source.data):
        return shard_domain(source, opts)
    segment = opts.task == "segment"
    train_records, held_records, classes, card, pipe = plan(source, opts)

    def read(recs):
        return preprocess(
            recs, pipe, segment, len(classes), opts.volume_4d, source.skip_bad_files, source.progress, opts.max_voxels
        )

    (train, skipped), (held, skipped_held) = read(train_records), read(held_records)
    if not train or not held:
        raise DataError(
            f"{source.data or 'synthetic set'}: need readable volumes on both sides "
            f"({len(train)} train, {len(held)} held out)"
        )
    channels = {it["image"].shape[0] for it in train + held}
    if len(channels) > 1:
        raise DataError(f"{source.data}: volumes have different channel counts {sorted(channels)}")
    spacings = torch.stack([spacing_mm(it["image"]) for it in train])

    pretrain = VolumeDataset(train, pipeline(pipe, "pretrain", segment, source.seed), repeat=opts.crops)
    batch_groups = None
    if opts.mix_2d:
        n_slices = round(len(pretrain) * opts.mix_2d / (1 - opts.mix_2d))
        repeat = max(1, math.ceil(n_slices / len(train)))
        slices = VolumeDataset(train, pipeline(pipe, "slices", segment, source.seed), repeat=repeat, slices=True)
        batch_groups = [0] * len(pretrain) + [1] * len(slices)
        pretrain = Mixed([pretrain, slices])
    return assemble(
        opts,
        pipe,
        source.seed,
        pretrain,
        lambda: train,
        lambda: held,
        classes,
        channels.pop(),
        card,
        batch_groups,
        {
            "train_volumes": len(train),
            "eval_volumes": len(held),
            "spacing_min_mm": spacings.min(0).values.tolist(),
            "spacing_max_mm": spacings.max(0).values.tolist(),
            "slices_2d_fraction": opts.mix_2d,
            "skipped_files": len(skipped) + len(skipped_held),
            "skipped": skipped + skipped_held,
        },
    )


def assemble(opts, pipe, seed, pretrain, train, held, classes, channels, card, batch_groups, info) -> DomainData:
    """The recipe's ``DomainData``; ``train`` and ``held`` return the prepared records of the splits,
    called when a stage first needs them (``OnFirstUse``)."""
    segment = opts.task == "segment"
    centre = pipeline(pipe, "eval", segment)
    finetune = pipeline(pipe, "segment" if segment else "pretrain", segment, seed)
    return DomainData(
        pretrain=pretrain,
        finetune=OnFirstUse(lambda: VolumeDataset(train(), finetune, repeat=opts.crops)),
        train_eval=OnFirstUse(lambda: VolumeDataset(train(), centre)),
        # segmentation: whole volumes
        held_out=OnFirstUse(lambda: VolumeDataset(held()) if segment else VolumeDataset(held(), centre)),
        held_out_recon=OnFirstUse(lambda: VolumeDataset(held(), centre)),
        classes=classes,
        adapter={"name": "volume", **asdict(volume_config(channels, opts.patch, pipe.roi))},
        data_card=card,
        render=render_slices,
        raw_features=None if segment else raw_features,
        batch_groups=batch_groups,
        preprocessing=asdict(pipe),
        info={"classes": classes, **info},
    )


# The options a prepared volume depends on: shards written with them are read only with them
SHARD_OPTIONS = ("task", "window", "spacing", "roi", "crop_foreground", "volume_4d", "classes", "max_voxels")


def as_json(value):
    return json.loads(json.dumps(value))  # tuples as lists, as the index holds them


def write_shards(source: DataSource, opts: VolumeOptions, write: Callable[[str, Iterable[dict]], list]) -> dict:
    """Read and prepare each volume of ``plan``'s splits (``preprocess``: orientation, spacing,
    foreground, intensity) and hand them to ``write(split, samples)``, one volume in memory at a
    time; a sample is the prepared image (float32), its affine, the label volume (``--task
    segment``, uint8) and {label, name}. -> what the index of the shards records of the data."""
    if source.data is None:
        raise DataError("--data: the folder to convert is required")
    segment = opts.task == "segment"
    train, held, classes, card, pipe = plan(source, opts)
    skipped, channels, spacings = [], set(), []

    def samples(records: list[dict], split: str) -> Iterator[dict]:
        shuffled = random.Random(source.seed).sample(records, len(records))  # a stream reads them in order
        for rec in tqdm(shuffled, desc=f"writing {split}", disable=None if source.progress else True):
            args = (pipe, segment, len(classes), opts.volume_4d, source.skip_bad_files, False)
            items, bad = preprocess([rec], *args, opts.max_voxels)
            skipped.extend(bad)
            for it in items:
                image = it["image"]
                channels.add(image.shape[0])
                if split == "train":
                    spacings.append(spacing_mm(image))
                sample = {
                    "image.npy": image.numpy().astype(np.float32),
                    "affine.npy": image.affine.numpy(),
                    "json": {"label": -1 if segment else int(it["label"]), "name": it["name"]},
                }
                if segment:
                    sample["label.npy"] = torch.as_tensor(it["label"]).numpy().astype(np.uint8)
                yield sample

    written = {"train": write("train", samples(train, "train")), "test": write("test", samples(held, "test"))}
    if len(channels) != 1:
        raise DataError(f"{source.data}: volumes have different channel counts {sorted(channels)}")
    spacings = torch.stack(spacings)
    return {
        "classes": classes,
        "channels": channels.pop(),
        "options": {k: as_json(getattr(opts, k)) for k in SHARD_OPTIONS},
        "preprocessing": asdict(pipe),
        "spacing_mm": [spacings.min(0).values.tolist(), spacings.max(0).values.tolist()],
        "data_card": card,
        "splits": written,
        "skipped": skipped,
    }


def from_shard(sample: dict) -> dict:
    """A shard sample -> the prepared record {"image", "label", "name"} it was written from."""
    meta = sample["json"]
    image = to_meta(sample["image.npy"], sample["affine.npy"], meta["name"])
    label = (
        to_meta(sample["label.npy"].astype(np.float32), sample["affine.npy"], meta["name"])
        if "label.npy" in sample
        else meta["label"]
    )
    return {"image": image, "label": label, "name": meta["name"]}


def shard_domain(source: DataSource, opts: VolumeOptions) -> DomainData:
    """Shards written by ``write_shards``: pretraining streams 3-D crops of the training split (one
    per volume and pass: ``--crops`` and ``--mix-2d`` concern folders); the probe and fine-tuning read
    the splits into memory when they start."""
    index, shards = open_shards(source.data, "volumes", opts)
    where = source.data
    if opts.mix_2d:
        raise DataError(f"{where}: --mix-2d needs a folder of volumes; shards stream 3-D crops")
    held = read_index(source.eval_data)[1] if source.eval_data else split_shards(source.data, index, "test")
    if not held:
        raise DataError(f"{where}: no held-out shards (test split) beside these; pass --eval-data")
    segment, pipe = opts.task == "segment", PipelineConfig.saved(index["preprocessing"])

    def records(chosen) -> list[dict]:
        return [from_shard(s) for s in ShardStream(chosen, None, source.seed, source.skip_bad_files).samples()]

    stream = ShardStream(
        shards, VolumeStream([], pipeline(pipe, "pretrain", segment, source.seed)), source.seed, source.skip_bad_files
    )
    low, high = index["spacing_mm"]
    return assemble(
        opts,
        pipe,
        source.seed,
        stream,
        functools.cache(lambda: records(shards)),  # read once for the probe and fine-tuning
        functools.cache(lambda: records(held)),
        index["classes"],
        index["channels"],
        index["data_card"],
        None,
        {
            "shards": len(shards),
            "train_volumes": samples_in(shards),
            "eval_volumes": samples_in(held),
            "spacing_min_mm": low,
            "spacing_max_mm": high,
        },
    )
