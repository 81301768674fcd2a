"""2-D images of any channel count and any size divisible by the patch (ViT patching): the grid
adapter with two spatial axes. Coordinates are (row, col) patch indices, so non-square inputs and
new resolutions need no interpolation."""

from __future__ import annotations

from foundations.grid import GridAdapter


class ImageAdapter(GridAdapter):
    name = "image2d"
    dims = 2

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        if version < 2 and "image_size" in fields:  # format 1: Image2DConfig
            fields = {("size" if k == "image_size" else k): v for k, v in fields.items()}
        return fields
