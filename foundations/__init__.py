"""The modality-agnostic masked-autoencoder core: tokens in, encoders out.

Nothing here imports a modality or the recipe body: adapters are handed in (``load_encoder``
takes the registry, ``modalities.ADAPTERS``).
"""

from foundations.adapter import Adapter, ModelDefaults
from foundations.checkpoint import CheckpointError, load_encoder, save_pretrained
from foundations.grid import GridAdapter, GridConfig
from foundations.mae import DECODER_PRESETS, DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from foundations.vit import PRESETS, Encoder, EncoderConfig

__all__ = [
    "PRESETS",
    "DECODER_PRESETS",
    "Adapter",
    "CheckpointError",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
    "GridAdapter",
    "GridConfig",
    "MAEConfig",
    "MaskConfig",
    "MaskedAutoencoder",
    "ModelDefaults",
    "load_encoder",
    "save_pretrained",
]
