"""Hugging Face Hub ids (``org/name``, e.g. ``facebook/vit-mae-base``) as local folders, through the
Hub's own cache (``huggingface_hub.snapshot_download``; ``HF_HUB_CACHE`` or ``HF_HOME`` choose the
folder, ``~/.cache/huggingface/hub`` by default).

Nothing is downloaded unless asked (``download=True``, a recipe's ``--download``): a model already
in the cache is used offline, and one that is not stops with one line saying so.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from foundations.checkpoint import CheckpointError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name; a path that exists wins over it


def resolve(name, download: bool = False, cache_dir=None) -> Path:
    """An existing path (or anything that cannot be a Hub id) as it is; a Hub id -> the folder of its
    snapshot in the cache, fetched first with ``download``."""
    path = Path(name)
    if path.exists() or not HUB_ID.fullmatch(str(name)):
        return path
    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        return Path(snapshot_download(str(name), local_files_only=not download, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:
        if not download:
            raise CheckpointError(
                f"{name}: no such file or directory, and no Hub model of that id in the Hugging Face cache "
                f"{cache}; --download fetches it"
            ) from None
        reason = str(e).splitlines()[0]  # the Hub could not be reached
        raise CheckpointError(f"{name}: not in the Hugging Face cache {cache} and not fetched ({reason})") from None
    except (OSError, ValueError) as e:  # not on the Hub, gated, or an id the Hub refuses
        raise CheckpointError(f"{name}: cannot fetch it from the Hub ({str(e).splitlines()[0]})") from None
