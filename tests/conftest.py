import os
from pathlib import Path

import pytest
import torch

from foundations.mae import DecoderConfig, MAEConfig
from foundations.masking import MaskConfig
from foundations.vit import EncoderConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAE_SHARED_DATA", ROOT.parent / "shared" / "data"))

TINY_ENCODER = EncoderConfig(dim=32, depth=2, heads=2)
TINY_MAE = MAEConfig(TINY_ENCODER, DecoderConfig(dim=32, depth=1, heads=2), MaskConfig(ratio=0.75))


@pytest.fixture
def shared() -> Path:
    """The real sample data; its absence is a failure, never a silent skip."""
    if not SHARED.is_dir():
        pytest.fail(f"shared sample data not found at {SHARED}; set MAE_SHARED_DATA")
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
