"""Files that are whole or absent: written to a temporary name beside the target, flushed to
disk, then renamed over it (``os.replace`` is atomic on POSIX and Windows), so that a run killed
mid-write, or a full disk, leaves the previous file rather than half of a new one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path) -> Iterator[Path]:
    """``with replacing(p) as tmp: write tmp`` -> ``p`` is replaced by the finished ``tmp``; an error
    inside the block leaves ``p`` as it was and removes ``tmp``."""
    path = Path(path)
    stem, dot, extension = path.name.partition(".")  # the extension stays last: writers pick formats by it
    tmp = path.with_name(f".{stem}.{os.getpid()}.tmp{dot}{extension}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)
