"""Modality adapters, one package each, behind the contract in ``foundations.adapter``.

``ADAPTERS`` maps an adapter's name to (adapter class, config class); adding a modality adds one
line here. Importing this module imports only the adapters (the core and torch): readers and
datasets live in each package's ``io`` and ``data`` modules and load when a recipe uses them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from foundations import adapter, checkpoint
from foundations.grid import GridConfig
from modalities import hub
from modalities.audio.adapter import AudioAdapter
from modalities.image.adapter import ImageAdapter
from modalities.nerf.adapter import NerfAdapter, NerfConfig
from modalities.pointcloud.adapter import PointCloudAdapter, PointCloudConfig
from modalities.ultrasound.adapter import CineAdapter, UltrasoundAdapter
from modalities.video.adapter import VideoAdapter
from modalities.volume.adapter import VolumeAdapter

ADAPTERS = {
    "image2d": (ImageAdapter, GridConfig),
    "ultrasound": (UltrasoundAdapter, GridConfig),
    "pointcloud": (PointCloudAdapter, PointCloudConfig),
    "volume": (VolumeAdapter, GridConfig),
    "audio": (AudioAdapter, GridConfig),
    "video": (VideoAdapter, GridConfig),
    "ultrasound_cine": (CineAdapter, GridConfig),
    "nerf": (NerfAdapter, NerfConfig),
}


def build_adapter(config: dict, dim: int, version: int | None = None):
    """{"name": ..., **config fields} -> adapter instance of this registry."""
    return adapter.build_adapter(ADAPTERS, config, dim, version)


def is_foreign(path) -> bool:
    """Whether ``path`` is another library's checkpoint (a weights file or a Hugging Face model
    directory) rather than a directory this suite wrote."""
    from modalities.convert import hugging_face_type  # imported here: it imports this module

    path = Path(path)
    return path.is_file() or hugging_face_type(path) is not None


def load_encoder(
    path, device: str | torch.device = "cpu", *, modality: str | None = None, grey: bool = False, download: bool = False
):
    """A pretrained encoder of any modality, in one call: a directory this suite wrote
    (``foundations.checkpoint.load_encoder`` with this registry), or another library's checkpoint
    converted on the fly (``modalities.convert``: timm, MAE, Hugging Face ViTMAE / VideoMAE, VideoMAE,
    AudioMAE) behind the adapter ``modality`` (default: the source's), its stem folded to one
    channel with ``grey``. ``path`` may be a Hub id (``org/name``), read from the local Hugging Face
    cache, or fetched into it with ``download``."""
    from modalities.convert import convert

    path = hub.resolve(path, download)
    if not is_foreign(path):
        return checkpoint.load_encoder(path, ADAPTERS, device)
    return convert(path, modality=modality, grey=grey).to(device)
