"""The shared recipe body: what it reads back from an output folder."""

import json
import logging

from tasks.run import read_metrics


def test_read_metrics__an_unreadable_file_is_set_aside_not_fatal(tmp_path, caplog):
    path = tmp_path / "metrics.json"
    assert read_metrics(path) == {}
    path.write_text(json.dumps({"pretrain/steps": 600}))
    assert read_metrics(path) == {"pretrain/steps": 600}
    path.write_text('{"pretrain/steps": 6')  # cut short by a kill mid-write (before writes were atomic)
    with caplog.at_level(logging.WARNING):
        assert read_metrics(path) == {}
    assert (tmp_path / "metrics.json.unreadable").read_text() == '{"pretrain/steps": 6'  # nothing lost
    assert not path.exists() and "metrics.json is unreadable" in caplog.text
