"""Labelled video files in the layouts the benchmarks ship in, so that each loads as downloaded:
UCF101's split lists (Soomro et al. 2012), Kinetics' CSVs (Kay et al. 2017), Something-Something
v2's JSON (Goyal et al. 2017), else the project's ``labels.csv`` or one folder per class
(``modalities.common.discover``). Layouts read lists and file names only; no clip is decoded here.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

from modalities.common import DataError, Sample, data_card, discover
from modalities.video.io import EXTENSIONS

log = logging.getLogger(__name__)

UCF_LISTS = ("", "ucfTrainTestlist")  # where classInd.txt and the split lists may lie, below root
UCF_VIDEOS = "UCF-101"  # the archive's folder of <class>/<clip>.avi
UCF_GROUP = re.compile(r"^(?P<group>.+_g\d+)_c\d+$")  # v_ApplyEyeMakeup_g08_c01: group 8, clip 1
KINETICS_LISTS = ("", "annotations")  # where the CSVs may lie, below root (CVDF's copy: annotations/)
KINETICS_CSVS = {"train.csv": "train", "validate.csv": "val", "val.csv": "val", "test.csv": "test"}
KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end", "label")
SSV2_LABELS = ("", "labels")  # where labels.json, train.json and validation.json may lie, below root
SSV2_VIDEOS = "20bn-something-something-v2"
SSV2_JSONS = {"train.json": "train", "validation.json": "val"}

LAYOUT_CARDS = {
    "ucf101": "data_cards/ucf101.md",
    "kinetics": "data_cards/kinetics400.md",
    "ssv2": "data_cards/ssv2.md",
    "synthetic": "data_cards/video_motion_synthetic.md",
}
GENERIC_LAYOUTS = ("labels.csv", "class folders")
# generic layouts known by folder name: the POCUS subset, or its clips-only copy (data_cards/pocus_clips.md)
KNOWN_CARDS = {"pocus_ccby_subset": "data_cards/pocus_clips.md", "pocus_clips": "data_cards/pocus_clips.md"}


def find_videos(root, split: int = 1) -> tuple[list[Sample], str]:
    """Labelled videos under ``root`` and the name of their layout, the first that fits:

    - ``ucf101``: ``classInd.txt`` with ``trainlist0N.txt`` / ``testlist0N.txt`` (N = ``split``)
      in root or root/ucfTrainTestlist/, videos in root or root/UCF-101/; the group is the long
      video a clip was cut from (``v_<Class>_gXX``), which UCF101 keeps on one side of a split;
    - ``kinetics``: ``train.csv`` / ``validate.csv`` / ``val.csv`` / ``test.csv`` (youtube_id,
      time_start, time_end, label) in root or root/annotations/, videos
      ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere below root; missing videos are logged
      and left out, none found at all is an error; the group is the YouTube video;
    - ``ssv2``: ``labels.json`` with ``train.json`` / ``validation.json`` in root or root/labels/,
      videos ``<id>.webm`` in root or root/20bn-something-something-v2/; the class is the template
      without its brackets;
    - ``labels.csv`` or ``class folders``: ``modalities.common.discover``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    ucf = next((root / d for d in UCF_LISTS if (root / d / "classInd.txt").is_file()), None)
    if ucf is not None:
        return _ucf101(root, ucf, split), "ucf101"
    kinetics = next((root / d for d in KINETICS_LISTS if any((root / d / n).is_file() for n in KINETICS_CSVS)), None)
    if kinetics is not None:
        return _kinetics(root, kinetics), "kinetics"
    ssv2 = next((root / d for d in SSV2_LABELS if (root / d / "labels.json").is_file()), None)
    if ssv2 is not None:
        return _ssv2(root, ssv2), "ssv2"
    return discover(root, EXTENSIONS), "labels.csv" if (root / "labels.csv").is_file() else "class folders"


def video_card(layout: str, root=None) -> str:
    """The data card of a layout (``find_videos``' second value, or ``synthetic``); for the generic
    layouts, the card of a known folder (by its name or one above it), else a note naming it."""
    if layout in LAYOUT_CARDS:
        return LAYOUT_CARDS[layout]
    if layout not in GENERIC_LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {[*LAYOUT_CARDS, *GENERIC_LAYOUTS]}")
    return data_card(root, KNOWN_CARDS) if root is not None else "user data"


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped line) of every non-blank line; UCF101's lists end lines with CRLF."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _inside(path: Path, root: Path, where: str) -> Path:
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{where}: {path} points outside the data folder {root}")
    return path


def _ucf101(root: Path, lists: Path, split: int) -> list[Sample]:
    table = lists / "classInd.txt"
    classes: dict[int, str] = {}
    for n, line in _text_lines(table):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{table}, line {n}: expected '<index> <class>', found {line!r}")
        if int(parts[0]) in classes or parts[1] in classes.values():
            raise DataError(f"{table}, line {n}: class index or name repeated in {line!r}")
        classes[int(parts[0])] = parts[1]
    if not classes:
        raise DataError(f"{table}: no classes")
    # case-blind: the archive spells one folder HandstandPushups and its files v_HandStandPushups_*
    by_name = {name.lower(): name for name in classes.values()}
    videos = root / UCF_VIDEOS if (root / UCF_VIDEOS).is_dir() else root
    samples = []
    for split_name, list_name in (("train", f"trainlist{split:02d}.txt"), ("test", f"testlist{split:02d}.txt")):
        table = lists / list_name
        if not table.is_file():
            found = sorted(p.name for p in lists.glob("*list0*.txt"))
            raise DataError(f"{table}: no such split list for split {split}; {lists} holds {found}")
        for n, line in _text_lines(table):
            where = f"{table}, line {n}"
            parts = line.split()
            if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                raise DataError(f"{where}: expected '<class>/<file> [<class index>]', found {line!r}")
            name = Path(parts[0])
            path = _inside(videos / name, root, where)
            folder = name.parts[0] if len(name.parts) > 1 else None
            label = by_name.get(folder.lower()) if folder else None
            if folder and label is None:
                raise DataError(f"{where}: class {folder!r} is not in {lists / 'classInd.txt'}")
            if len(parts) == 2:
                indexed = classes.get(int(parts[1]))
                if indexed is None:
                    raise DataError(f"{where}: class index {parts[1]} is not in {lists / 'classInd.txt'}")
                if label not in (None, indexed):
                    raise DataError(f"{where}: class index {parts[1]} is {indexed!r}, the folder says {folder!r}")
                label = indexed
            if label is None:
                raise DataError(f"{where}: {name} names no class (no <class>/ folder, no class index)")
            if not path.is_file():
                raise DataError(f"{where}: file {path} does not exist")
            group = UCF_GROUP.match(name.stem)
            samples.append(Sample(path, label, split_name, group["group"] if group else None))
    if not samples:
        raise DataError(f"{lists}: split {split} lists no videos")
    n_test = sum(s.split == "test" for s in samples)
    log.info("UCF101 split %d: %d train, %d test clips", split, len(samples) - n_test, n_test)
    return samples


def _kinetics(root: Path, lists: Path) -> list[Sample]:
    on_disk: dict[str, Path] = {}  # file name without extension -> path, anywhere below root
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in EXTENSIONS and path.is_file():
            on_disk.setdefault(path.stem, path)
    samples, listed = [], 0
    for name, split in KINETICS_CSVS.items():
        table = lists / name
        if not table.is_file():
            continue
        with table.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [c.strip() for c in next(reader, [])]
            absent = [c for c in KINETICS_COLUMNS if c not in header]
            if absent == ["label"] and split == "test":
                log.warning("%s: no label column (an unlabelled test set); left out", table)
                continue
            if absent:
                raise DataError(f"{table}: a Kinetics list needs columns {', '.join(KINETICS_COLUMNS)}; found {header}")
            col = {c: header.index(c) for c in KINETICS_COLUMNS}
            missing, rows = [], 0
            for row in reader:
                if not row:
                    continue
                where = f"{table}, line {reader.line_num}"
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
                youtube_id, start, end, label = (row[col[c]].strip() for c in KINETICS_COLUMNS)
                try:
                    stem = f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"
                except ValueError:
                    raise DataError(f"{where}: time_start {start!r} or time_end {end!r} is not a number") from None
                if not youtube_id or not label:
                    raise DataError(f"{where}: empty {'youtube_id' if not youtube_id else 'label'} cell")
                rows += 1
                path = on_disk.get(stem) or on_disk.get(youtube_id)  # some copies drop the times
                if path is None:
                    missing.append(stem)
                else:
                    samples.append(Sample(path, label, split, youtube_id))
        listed += rows
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            # Kinetics videos leave YouTube over time: every copy misses some; the rest is usable
            log.warning("%s: %d of %d listed videos are missing, left out: %s", table, len(missing), rows, shown)
    if not samples:
        raise DataError(
            f"{root}: none of the {listed} videos listed in its Kinetics CSVs was found below it "
            f"(expected <youtube_id>_<start:06d>_<end:06d> with one of {', '.join(EXTENSIONS)})"
        )
    return samples


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def _ssv2(root: Path, lists: Path) -> list[Sample]:
    table = lists / "labels.json"
    templates = _json(table)
    if not isinstance(templates, dict) or not templates:
        raise DataError(f"{table}: expected a non-empty object {{template: class id}}")
    videos = root / SSV2_VIDEOS if (root / SSV2_VIDEOS).is_dir() else root
    samples = []
    for name, split in SSV2_JSONS.items():
        path = lists / name
        if not path.is_file():
            continue
        items = _json(path)
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a list of {{id, label, template, placeholders}} objects")
        for i, item in enumerate(items):
            where = f"{path}, item {i}"
            if not isinstance(item, dict) or not isinstance(item.get("template"), str) or "id" not in item:
                raise DataError(f"{where}: needs the keys 'id' and 'template' (a string), found {item!r:.80}")
            # labels.json spells "Pushing [something] from left to right" without the brackets
            label = item["template"].replace("[", "").replace("]", "")
            if label not in templates:
                raise DataError(f"{where}: template {label!r} is not in {table}")
            # <id>.webm as shipped; VideoMAE's preparation re-encodes to <id>.mp4
            candidates = [_inside(videos / f"{item['id']}{ext}", root, where) for ext in (".webm", ".mp4")]
            video = next((c for c in candidates if c.is_file()), None)
            if video is None:
                raise DataError(f"{where}: file {candidates[0]} does not exist")
            samples.append(Sample(video, label, split))
    if not samples:
        raise DataError(f"{lists}: labels.json without train.json or validation.json beside it")
    return samples
