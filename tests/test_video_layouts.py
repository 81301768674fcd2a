import logging
from pathlib import Path

import pytest

from modalities.common import DataError
from modalities.video.layouts import find_videos, video_card

CLASS_IND = "1 ApplyEyeMakeup\r\n2 Archery\r\n"  # the archive's lists end lines with CRLF


def touch(path: Path) -> Path:
    """An empty stand-in for a video: layouts read names and lists, never frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def ucf101(root: Path, lists: str = "ucfTrainTestlist", videos: str = "UCF-101") -> Path:
    """Two classes, two groups each; split 1 tests g01, split 2 tests g02 (UCF101 splits by group)."""
    for cls in ("ApplyEyeMakeup", "Archery"):
        for g in (1, 2):
            for c in (1, 2):
                touch(root / videos / cls / f"v_{cls}_g{g:02d}_c{c:02d}.avi")
    (root / lists).mkdir(parents=True, exist_ok=True)
    (root / lists / "classInd.txt").write_text(CLASS_IND)
    for split, (train_g, test_g) in {1: (2, 1), 2: (1, 2)}.items():
        train = [
            f"{cls}/v_{cls}_g{train_g:02d}_c{c:02d}.avi {i}"
            for i, cls in ((1, "ApplyEyeMakeup"), (2, "Archery"))
            for c in (1, 2)
        ]
        test = [f"{cls}/v_{cls}_g{test_g:02d}_c{c:02d}.avi" for cls in ("ApplyEyeMakeup", "Archery") for c in (1, 2)]
        (root / lists / f"trainlist{split:02d}.txt").write_text("\r\n".join(train) + "\r\n")
        (root / lists / f"testlist{split:02d}.txt").write_text("\r\n".join(test) + "\r\n")
    return root / lists


def test_find_videos__ucf101_lists_give_classes_splits_and_groups(tmp_path):
    ucf101(tmp_path)
    samples, layout = find_videos(tmp_path)
    assert layout == "ucf101"
    got = {(s.path.relative_to(tmp_path).as_posix(), s.label, s.split, s.group) for s in samples}
    assert ("UCF-101/Archery/v_Archery_g02_c01.avi", "Archery", "train", "v_Archery_g02") in got
    assert (
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi",
        "ApplyEyeMakeup",
        "test",
        "v_ApplyEyeMakeup_g01",
    ) in got
    assert len(got) == 8
    # a group (clips cut from one long video) never sits on both sides of the split
    sides = {(s.group, s.split) for s in samples}
    assert len(sides) == len({g for g, _ in sides}) == 4


def test_find_videos__ucf101_split_n_selects_its_lists(tmp_path):
    ucf101(tmp_path)
    test_groups = {n: {s.group for s in find_videos(tmp_path, split=n)[0] if s.split == "test"} for n in (1, 2)}
    assert test_groups == {1: {"v_ApplyEyeMakeup_g01", "v_Archery_g01"}, 2: {"v_ApplyEyeMakeup_g02", "v_Archery_g02"}}
    with pytest.raises(DataError, match=r"trainlist03.txt: no such split list for split 3"):
        find_videos(tmp_path, split=3)


def test_find_videos__ucf101_lists_and_videos_in_root(tmp_path):
    ucf101(tmp_path, lists="", videos="")
    samples, layout = find_videos(tmp_path)
    assert layout == "ucf101" and len(samples) == 8
    assert all(s.path.parent.parent == tmp_path for s in samples)


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("classInd.txt", "1 ApplyEyeMakeup\nArchery\n", r"classInd.txt, line 2: expected '<index> <class>'"),
        ("classInd.txt", "1 ApplyEyeMakeup\n1 Archery\n", r"classInd.txt, line 2: class index or name repeated"),
        (
            "trainlist01.txt",
            "Archery/v_Archery_g02_c01.avi 1 2\n",
            r"trainlist01.txt, line 1: expected '<class>/<file>",
        ),
        ("trainlist01.txt", "Bowling/v_Bowling_g02_c01.avi 3\n", r"trainlist01.txt, line 1: class 'Bowling' is not in"),
        ("trainlist01.txt", "Archery/v_Archery_g02_c01.avi 7\n", r"trainlist01.txt, line 1: class index 7 is not in"),
        (
            "trainlist01.txt",
            "Archery/v_Archery_g02_c01.avi 1\n",
            r"trainlist01.txt, line 1: class index 1 is 'ApplyEyeMakeup', the folder says 'Archery'",
        ),
        ("testlist01.txt", "v_Archery_g01_c01.avi\n", r"testlist01.txt, line 1: v_Archery_g01_c01.avi names no class"),
        (
            "testlist01.txt",
            "Archery/v_Archery_g09_c01.avi\n",
            r"testlist01.txt, line 1: file .*g09_c01.avi does not exi",
        ),
        ("testlist01.txt", "Archery/../../../x.avi\n", r"testlist01.txt, line 1: .*x.avi points outside the data"),
    ],
)
def test_find_videos__ucf101_bad_lists_name_file_and_line(tmp_path, file, text, message):
    lists = ucf101(tmp_path)
    (lists / file).write_text(text)
    with pytest.raises(DataError, match=message):
        find_videos(tmp_path)


def kinetics(root: Path) -> None:
    """validate.csv lists 2 clips, one missing; labels with commas come quoted; files below <split>/<label>/."""
    (root / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        '"massaging person\'s head, back",abc,14,24,train\n'
        "abseiling,def,0,10,train\n"
    )
    (root / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,ghi,3,13,val\nabseiling,gone,5,15,val\n"
    )
    touch(root / "train" / "massaging person's head, back" / "abc_000014_000024.mp4")
    touch(root / "train" / "abseiling" / "def_000000_000010.mp4")
    touch(root / "val" / "ghi_000003_000013.mkv")


def test_find_videos__kinetics_csvs_find_files_anywhere_and_count_the_missing(tmp_path, caplog):
    kinetics(tmp_path)
    with caplog.at_level(logging.WARNING):
        samples, layout = find_videos(tmp_path)
    assert layout == "kinetics"
    got = [(s.path.name, s.label, s.split, s.group) for s in samples]
    assert got == [
        ("abc_000014_000024.mp4", "massaging person's head, back", "train", "abc"),
        ("def_000000_000010.mp4", "abseiling", "train", "def"),
        ("ghi_000003_000013.mkv", "abseiling", "val", "ghi"),
    ]
    assert "validate.csv: 1 of 2 listed videos are missing, left out: gone_000005_000015" in caplog.text


def test_find_videos__kinetics_cvdf_copy_with_annotations_folder(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,abc,14,24,val\narchery,def,0,10,val\n"
    )
    touch(tmp_path / "val" / "abc_000014_000024.mp4")
    touch(tmp_path / "val" / "def.mp4")  # some copies name a clip by its YouTube id alone
    samples, layout = find_videos(tmp_path)
    assert layout == "kinetics"
    assert [(s.path.name, s.label, s.split) for s in samples] == [
        ("abc_000014_000024.mp4", "abseiling", "val"),
        ("def.mp4", "archery", "val"),
    ]


def test_find_videos__kinetics_all_missing_is_an_error(tmp_path):
    kinetics(tmp_path)
    for path in tmp_path.rglob("*_0000*"):
        path.unlink()
    with pytest.raises(DataError, match=r"none of the 4 videos listed in its Kinetics CSVs was found"):
        find_videos(tmp_path)


def test_find_videos__kinetics_unlabelled_test_csv_is_left_out(tmp_path, caplog):
    kinetics(tmp_path)
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nxyz,0,10,test\n")
    with caplog.at_level(logging.WARNING):
        samples, _ = find_videos(tmp_path)
    assert {s.split for s in samples} == {"train", "val"}
    assert "test.csv: no label column (an unlabelled test set); left out" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("youtube_id,start,end,label\nabc,14,24,x\n", r"train.csv: a Kinetics list needs columns youtube_id, time_"),
        ("label,youtube_id,time_start,time_end\nx,abc,14\n", r"train.csv, line 2: 3 fields, the header has 4"),
        ("label,youtube_id,time_start,time_end\nx,abc,a,24\n", r"train.csv, line 2: time_start 'a' or time_end"),
        ("label,youtube_id,time_start,time_end\n,abc,14,24\n", r"train.csv, line 2: empty label cell"),
    ],
)
def test_find_videos__kinetics_bad_csv_names_the_file(tmp_path, text, message):
    kinetics(tmp_path)
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        find_videos(tmp_path)


SSV2_LABELS = '{"Pushing something from left to right": "0", "Putting something on a surface": "1"}'


def ssv2(root: Path) -> Path:
    """The Qualcomm download: labels/ holds the JSON, 20bn-something-something-v2/ the videos."""
    (root / "labels").mkdir()
    (root / "labels" / "labels.json").write_text(SSV2_LABELS)
    (root / "labels" / "train.json").write_text(
        '[{"id": "7", "label": "pushing a cup from left to right", '
        '"template": "Pushing [something] from left to right", "placeholders": ["a cup"]},'
        ' {"id": "8", "label": "putting a pen on a table", "template": "Putting [something] on a surface",'
        ' "placeholders": ["a pen"]}]'
    )
    (root / "labels" / "validation.json").write_text('[{"id": 9, "template": "Putting [something] on a surface"}]')
    for i in (7, 8, 9):
        touch(root / "20bn-something-something-v2" / f"{i}.webm")
    return root / "labels"


def test_find_videos__ssv2_json_classes_are_templates_without_brackets(tmp_path):
    ssv2(tmp_path)
    samples, layout = find_videos(tmp_path)
    assert layout == "ssv2"
    assert [(s.path.name, s.label, s.split) for s in samples] == [
        ("7.webm", "Pushing something from left to right", "train"),
        ("8.webm", "Putting something on a surface", "train"),
        ("9.webm", "Putting something on a surface", "val"),
    ]


BAD_SSV2 = [
    ("labels.json", '{"Pushing something": "0",}', r"labels.json: not valid JSON \(.* at line 1, column 27\)"),
    ("labels.json", '["Pushing something"]', r"labels.json: expected a non-empty object \{template: class id\}"),
    ("train.json", '{"id": "7"}', r"train.json: expected a list of \{id, label, template, placeholders\}"),
    ("train.json", '[{"id": "7", "label": "x"}]', r"train.json, item 0: needs the keys 'id' and 'template'"),
    (
        "train.json",
        '[{"id": "7", "template": "Pulling [something]"}]',
        r"train.json, item 0: template 'Pulling something' is not in .*labels.json",
    ),
    (
        "validation.json",
        '[{"id": "10", "template": "Putting [something] on a surface"}]',
        r"validation.json, item 0: file .*10.webm does not exist",
    ),
    (
        "validation.json",
        '[{"id": "../../x", "template": "Putting [something] on a surface"}]',
        r"validation.json, item 0: .*x.webm points outside the data folder",
    ),
]


@pytest.mark.parametrize(("file", "text", "message"), BAD_SSV2)
def test_find_videos__ssv2_bad_json_names_the_file(tmp_path, file, text, message):
    lists = ssv2(tmp_path)
    (lists / file).write_text(text)
    with pytest.raises(DataError, match=message):
        find_videos(tmp_path)


def test_find_videos__otherwise_labels_csv_or_class_folders(tmp_path):
    for cls in ("left", "right"):
        touch(tmp_path / "folders" / cls / "a.mp4")
        touch(tmp_path / "folders" / cls / "notes.txt")
    samples, layout = find_videos(tmp_path / "folders")
    assert layout == "class folders" and [(s.path.name, s.label) for s in samples] == [
        ("a.mp4", "left"),
        ("a.mp4", "right"),
    ]
    touch(tmp_path / "table" / "clips" / "c.webm")
    (tmp_path / "table" / "labels.csv").write_text("path,label,group\nclips/c.webm,up,p1\n")
    samples, layout = find_videos(tmp_path / "table")
    assert layout == "labels.csv" and [(s.label, s.group) for s in samples] == [("up", "p1")]


def test_video_card__by_layout_then_by_known_folder(tmp_path):
    assert video_card("ucf101") == "data_cards/ucf101.md"
    assert video_card("kinetics") == "data_cards/kinetics400.md"
    assert video_card("ssv2") == "data_cards/ssv2.md"
    assert video_card("synthetic") == "data_cards/video_motion_synthetic.md"
    assert video_card("labels.csv", tmp_path / "pocus_ccby_subset") == "data_cards/pocus_clips.md"
    assert video_card("class folders", tmp_path) == f"user data at {tmp_path}"
    with pytest.raises(ValueError, match="layout='kinetic'"):
        video_card("kinetic")
    root = Path(__file__).resolve().parents[1]
    for layout in ("ucf101", "kinetics", "ssv2", "synthetic"):
        assert (root / video_card(layout)).is_file()
    assert (root / video_card("labels.csv", tmp_path / "pocus_ccby_subset")).is_file()
