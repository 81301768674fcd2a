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
from modalities.audio.adapter import AudioAdapter
from modalities.image.adapter import ImageAdapter
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
}


def build_adapter(config: dict, dim: int, version: int | None = None):
    """{"name": ..., **config fields} -> adapter instance of this registry."""
    return adapter.build_adapter(ADAPTERS, config, dim, version)


def load_encoder(path, device: str | torch.device = "cpu"):
    """A pretrained encoder of any modality, in one call: a directory this suite wrote
    (``foundations.checkpoint.load_encoder`` with this registry), or another library's checkpoint
    converted on the fly (``modalities.convert``: timm, MAE, Hugging Face ViTMAE)."""
    from modalities.convert import convert, hugging_face_type  # imported here: it imports this module

    path = Path(path)
    if not (path.is_file() or hugging_face_type(path)):
        return checkpoint.load_encoder(path, ADAPTERS, device)
    return convert(path).to(device)
