"""B-mode ultrasound frames: grey 2-D images through the grid adapter, with the modality's
pretraining defaults. Readers, sector detection and datasets live beside this file."""

from __future__ import annotations

from foundations.adapter import ModelDefaults
from foundations.masking import MaskConfig
from modalities.image.adapter import ImageAdapter


class UltrasoundAdapter(ImageAdapter):
    name = "ultrasound"
    # Per-patch normalised targets leave mostly speckle, which no model can predict: reconstruct
    # dataset-normalised pixels, whose echogenicity is predictable.
    defaults = ModelDefaults(MaskConfig("random", 0.75, block_tokens=8), norm_target=False)
