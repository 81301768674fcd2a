"""Video clips as VideoMAE sees them (Tong et al. 2022): (C, T, H, W) clips cut into tubelets of
2 frames x 16 x 16 pixels by the grid adapter with three spatial axes.

Token coordinates are (t, y, x) tubelet indices, so clips of any length and any size are embedded
by the same weights without interpolating a position table (Hugging Face's VideoMAE fixes H and
W). Masking hides 90 % of the tubes (one 2-D mask repeated over time), VideoMAE's default: a
tube hidden at one step and visible at the next could be copied across time.
"""

from __future__ import annotations

from foundations.adapter import ModelDefaults
from foundations.grid import GridAdapter
from foundations.masking import MaskConfig


class VideoAdapter(GridAdapter):
    name = "video"
    # VideoMAE: tube masking at 0.9, per-patch normalised targets (its norm_pix loss over each
    # tubelet's channels and pixels)
    defaults = ModelDefaults(MaskConfig("tube", 0.9, tube_axis=0), norm_target=True)
