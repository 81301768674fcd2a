"""Modality adapters: one file each, behind the contract in ``foundations.adapter``.

``ADAPTERS`` maps an adapter's name to (adapter class, config class). Adding a modality adds one
line here.
"""

from __future__ import annotations

from modalities.image2d import Image2DAdapter, Image2DConfig
from modalities.pointcloud import PointCloudAdapter, PointCloudConfig
from modalities.volume import VolumeAdapter, VolumeConfig


class UltrasoundAdapter(Image2DAdapter):
    """B-mode ultrasound: grey 2-D frames; readers and sector handling live in ultrasound.py."""

    name = "ultrasound"


ADAPTERS = {
    "image2d": (Image2DAdapter, Image2DConfig),
    "ultrasound": (UltrasoundAdapter, Image2DConfig),
    "pointcloud": (PointCloudAdapter, PointCloudConfig),
    "volume": (VolumeAdapter, VolumeConfig),
}


def build_adapter(config: dict, dim: int):
    """{"name": ..., **config fields} -> adapter instance."""
    fields = dict(config)
    name = fields.pop("name")
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; known: {sorted(ADAPTERS)}")
    adapter_cls, config_cls = ADAPTERS[name]
    return adapter_cls(config_cls(**fields), dim)
