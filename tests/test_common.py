"""What every modality's data shares: layouts, leak-free splits, the skip-bad-file loop, data cards."""

import numpy as np
import pytest
from PIL import Image

from modalities.common import (
    DataError,
    check_held_out_classes,
    data_card,
    discover,
    held_out_split,
    read_each,
    require_classes,
    stratified_split,
)

EXTS = (".png", ".mp4")


def test_discover__class_folders_and_bad_layouts(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "data" / cls / "sub").mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "data" / cls / "sub" / "x.png")
    assert sorted(s.label for s in discover(tmp_path / "data", EXTS)) == ["a", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no data found"):
        discover(tmp_path / "empty", EXTS)
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "missing", EXTS)
    with pytest.raises(DataError, match="only one class"):
        require_classes(["a", "a"], tmp_path)
    (tmp_path / "data" / "labels.csv").write_text("path,label\na/sub/x.png,a\nb/nope.png,b\n")
    with pytest.raises(DataError, match=r"labels.csv, line 3: file .*nope.png does not exist"):
        discover(tmp_path / "data", EXTS)


def test_stratified_split__sources_stay_together_and_classes_on_both_sides():
    labels = ["a"] * 20 + ["b"] * 10
    sources = [f"clip{i // 5}" for i in range(30)]  # 6 clips of 5 frames
    train, held = stratified_split(labels, sources, 0.3, seed=0)
    assert sorted(train + held) == list(range(30))
    assert not {sources[i] for i in train} & {sources[i] for i in held}
    assert {labels[i] for i in held} == {"a", "b"} == {labels[i] for i in train}


def test_held_out_split__the_datas_own_test_split_first_then_val_then_stratified():
    labels, sources = ["a", "b"] * 5, [str(i) for i in range(10)]
    splits = ["train", "val", "test", "train", "val", "train", "test", "train", "train", "train"]
    assert held_out_split(labels, sources, splits, seed=0) == ([0, 1, 3, 4, 5, 7, 8, 9], [2, 6])
    no_test = [s if s != "test" else "train" for s in splits]
    assert held_out_split(labels, sources, no_test, seed=0)[1] == [1, 4]
    assert held_out_split(labels, sources, [None] * 10, seed=0) == stratified_split(labels, sources, 0.2, seed=0)


def test_check_held_out_classes__unknown_class_named():
    check_held_out_classes(["a", "b"], ["a", "b", "c"], "eval/", "train/")
    with pytest.raises(DataError, match=r"eval/: classes \['d'\] do not occur in the training data train/"):
        check_held_out_classes(["a", "d"], ["a", "b"], "eval/", "train/")


def test_read_each__stops_at_the_first_bad_item_or_skips_and_lists_it():
    def read(x):
        if x < 0:
            raise DataError(f"item {x}: negative")
        return 2 * x

    with pytest.raises(DataError, match="item -1: negative"):
        read_each([1, -1, 3], read, skip_bad=False)
    assert read_each([1, -1, 3], read, skip_bad=True) == ([2, 6], [("-1", "item -1: negative")])


def test_data_card__known_folder_or_one_above_it_else_a_note(tmp_path):
    known = {"busi_256": "data_cards/busi.md"}
    assert data_card(tmp_path / "busi_256" / "train", known) == "data_cards/busi.md"
    assert data_card(tmp_path / "mine", known) == f"user data at {tmp_path / 'mine'}"


@pytest.mark.parametrize(
    "row,message",
    [
        ("a/x.png", "line 3: empty label cell"),  # a missing cell
        (",b", "line 3: empty path cell"),
        ("../outside.png,b", "line 3: ../outside.png points outside the data folder"),
        ("a/notes.txt,b", r"line 3: a/notes.txt is not a file this recipe reads \(.png, .mp4\)"),
    ],
)
def test_discover__labels_csv_rows_that_cannot_be_used_are_named(tmp_path, row, message):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    for name in ("a/x.png", "a/notes.txt", "outside.png"):
        (tmp_path / "data" / name if name != "outside.png" else tmp_path / name).write_bytes(b"x")
    (data / "labels.csv").write_text(f"path,label\na/x.png,a\n{row}\n")
    with pytest.raises(DataError, match=message):
        discover(data, EXTS)
