"""The modality-agnostic masked-autoencoder core: tokens in, encoders out."""

from foundations.checkpoint import CheckpointError, load_encoder, save_pretrained
from foundations.mae import DECODER_PRESETS, DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from foundations.vit import PRESETS, Encoder, EncoderConfig

__all__ = [
    "PRESETS",
    "DECODER_PRESETS",
    "CheckpointError",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
    "MAEConfig",
    "MaskConfig",
    "MaskedAutoencoder",
    "load_encoder",
    "save_pretrained",
]
