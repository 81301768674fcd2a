"""Whole-or-absent files: a failed write leaves the old file, a finished one replaces it."""

import pytest

from foundations.files import replacing, write_text


def test_replacing__a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, '{"old": 1}')
    with pytest.raises(OSError, match="disk full"), replacing(path) as tmp:
        tmp.write_text('{"new": ')  # half written, then the disk fills
        raise OSError("disk full")
    assert path.read_text() == '{"old": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    write_text(path, '{"new": 2}')
    assert path.read_text() == '{"new": 2}' and len(list(tmp_path.iterdir())) == 1


def test_replacing__the_temporary_keeps_the_extension_writers_pick_formats_by(tmp_path):
    import nibabel as nib
    import numpy as np

    path = tmp_path / "case_pred.nii.gz"
    with replacing(path) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp)
    assert nib.load(path).shape == (2, 2, 2) and path.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as named
