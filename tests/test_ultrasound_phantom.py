import numpy as np
import pytest
import torch

from modalities.ultrasound.phantom import PHANTOM_CLASSES, phantom_dataset, phantom_image


def test_phantom__deterministic_by_seed():
    a, b = phantom_dataset(2, 64, seed=5), phantom_dataset(2, 64, seed=5)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], phantom_dataset(2, 64, seed=6)[0][0])


def test_phantom__classes_differ_in_dark_area():
    rng = np.random.default_rng(0)

    def dark_fraction(label):  # share of the fan darker than 0.3, averaged over images
        vals = []
        for _ in range(8):
            img, sector = phantom_image(rng, label, 96)
            vals.append((img[sector] < 0.3).float().mean().item())
        return np.mean(vals)

    normal, cyst, solid = (dark_fraction(c) for c in ("normal", "cyst", "solid"))
    assert cyst > normal + 0.02 and solid > normal + 0.01


def test_phantom__speckle_is_rayleigh_like():
    img, sector = phantom_image(np.random.default_rng(1), "normal", 128)
    values = img[sector]
    assert 0.2 < values.mean() < 0.9 and values.std() > 0.05  # textured, not flat, not saturated


def test_phantom__unknown_class_raises():
    with pytest.raises(ValueError, match="unknown phantom class"):
        phantom_image(np.random.default_rng(0), "tumour")
    assert len(PHANTOM_CLASSES) == 3
