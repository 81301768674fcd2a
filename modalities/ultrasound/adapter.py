"""B-mode ultrasound: grey 2-D frames, and cine loops as (1, T, H, W) tubes, through the grid adapter
with the modality's pretraining defaults. Readers, sector detection and datasets live beside this
file (cine loops are read by the video recipe's ``--ultrasound``)."""

from __future__ import annotations

from foundations.adapter import ModelDefaults
from foundations.masking import MaskConfig
from modalities.image.adapter import ImageAdapter
from modalities.video.adapter import VideoAdapter


class UltrasoundAdapter(ImageAdapter):
    name = "ultrasound"
    # Per-patch normalised targets leave mostly speckle, which no model can predict: reconstruct
    # dataset-normalised pixels, whose echogenicity is predictable.
    defaults = ModelDefaults(MaskConfig("random", 0.75, block_tokens=8), norm_target=False)


class CineAdapter(VideoAdapter):
    name = "ultrasound_cine"
    # tubelets masked and pooled as video's (tubes at 0.9), targets as for frames: not per-patch
    # normalised, since speckle is not predictable
    defaults = ModelDefaults(MaskConfig("tube", 0.9, tube_axis=0), norm_target=False)
