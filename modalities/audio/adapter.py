"""Audio as AudioMAE sees it (Huang et al. 2022, "Masked Autoencoders that Listen"): a log-mel
filterbank (time, frequency) with one channel, cut into 16x16 patches by the grid adapter.

Token coordinates are (time, frequency) grid indices, so a clip of any length is embedded by the
same weights (AudioMAE's reference fixes a 64 x 8 grid). The mean and std of the filterbank on the
training split are the adapter's normalisation and travel with the encoder.
"""

from __future__ import annotations

from foundations.adapter import ModelDefaults
from foundations.grid import GridAdapter
from foundations.masking import MaskConfig


class AudioAdapter(GridAdapter):
    name = "audio"
    dims = 2
    # AudioMAE: unstructured random masking of 80 % of the patches. Per-patch normalised targets
    # (MAE's norm_pix_loss): on FSDD with a speaker held out, 3000 steps of a mini encoder gave
    # probe features of 0.47-0.55 balanced accuracy (blocks 1 to 4) with them, 0.35-0.42 without
    defaults = ModelDefaults(MaskConfig("random", 0.8), norm_target=True)
