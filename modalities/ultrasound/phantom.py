"""A B-mode ultrasound phantom, so the ultrasound recipe runs with no download.

Each image follows the standard simulation chain of speckle (e.g. Jensen, "Field II", 1996, and
the fully developed speckle model of Burckhardt 1978):
  1. tissue echogenicity map in polar (depth x beam) coordinates, with a lesion by class;
  2. complex Gaussian scatterers with that variance, convolved with a Gaussian point-spread
     function (axial and lateral widths), which gives Rayleigh-distributed speckle;
  3. envelope |.|, depth attenuation with partial time-gain compensation;
  4. log compression to a 50 dB dynamic range;
  5. scan conversion of the polar lines into a convex-probe sector (the imaged fan).

Labels (``PHANTOM_CLASSES``): ``normal`` (no lesion), ``cyst`` (round anechoic lesion with
posterior acoustic enhancement), ``solid`` (lobulated hypoechoic mass with posterior shadowing).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PHANTOM_CLASSES = ("cyst", "normal", "solid")


def _psf(sigma_axial: float, sigma_lateral: float) -> np.ndarray:
    z = np.arange(-6, 7)[:, None]
    x = np.arange(-6, 7)[None, :]
    return np.exp(-(z**2) / (2 * sigma_axial**2) - x**2 / (2 * sigma_lateral**2)) * np.exp(1j * 0.8 * z)


def _echo_map(rng: np.random.Generator, label: str, depth: int, beams: int) -> np.ndarray:
    z, a = np.meshgrid(np.linspace(0, 1, depth), np.linspace(-1, 1, beams), indexing="ij")
    skin = rng.uniform(0.08, 0.18)  # a brighter subcutaneous layer, then parenchyma
    echo = np.where(z < skin, 2.0, 1.0) * (1 + 0.25 * np.sin(2 * np.pi * (rng.uniform(1, 3) * z + rng.uniform())))
    if label == "normal":
        return echo
    cz, ca, r = rng.uniform(0.35, 0.7), rng.uniform(-0.5, 0.5), rng.uniform(0.09, 0.16)
    theta = np.arctan2(z - cz, (a - ca) / 2)
    if label == "solid":  # lobulated border: radius modulated by angle
        r = r * (1 + 0.25 * np.sin(rng.integers(3, 7) * theta + rng.uniform(0, 2 * np.pi)))
    dist = np.sqrt((z - cz) ** 2 + ((a - ca) / 2) ** 2)
    inside = dist < r
    below = (z > cz) & (np.abs(a - ca) / 2 < r * 0.8) & ~inside
    # echogenicity scales scatterer power: 1e-4 is -40 dB (anechoic), 0.02 is -17 dB
    if label == "cyst":
        echo = np.where(inside, 1e-4, echo) * np.where(below, 2.0, 1.0)
    else:
        echo = np.where(inside, 0.02, echo) * np.where(below, 0.1, 1.0)
    return echo


def phantom_image(rng: np.random.Generator, label: str, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """One phantom frame: (image (1, size, size) float in [0, 1], sector (1, size, size) bool)."""
    if label not in PHANTOM_CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; known: {PHANTOM_CLASSES}")
    depth, beams = int(size * 1.25), size
    echo = _echo_map(rng, label, depth, beams)
    scatter = (rng.standard_normal((depth, beams)) + 1j * rng.standard_normal((depth, beams))) * np.sqrt(echo)
    psf = _psf(rng.uniform(0.8, 1.4), rng.uniform(1.0, 2.0))
    shape = (depth + psf.shape[0] - 1, beams + psf.shape[1] - 1)
    rf = np.fft.ifft2(np.fft.fft2(scatter, shape) * np.fft.fft2(psf, shape))[6 : 6 + depth, 6 : 6 + beams]
    env = np.abs(rf) * np.exp(-rng.uniform(0.3, 0.8) * np.linspace(0, 1, depth))[:, None]  # net attenuation
    db = 20 * np.log10(env / env.max() + 1e-12)
    polar = torch.from_numpy(np.clip((db + 50) / 50, 0, 1)).float()  # (depth, beams)

    # scan conversion: apex above the top edge, half-angle ~35 degrees, radii r0..r1 (image units)
    half_angle, apex = np.deg2rad(rng.uniform(30, 40)), -0.25
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(-0.5, 0.5, size), indexing="ij")
    r = torch.sqrt(xx**2 + (yy - apex) ** 2)
    th = torch.atan2(xx, yy - apex)
    r0, r1 = -apex + 0.02, 1.0 - apex - 0.02
    u = th / half_angle  # beam position in [-1, 1]
    v = (r - r0) / (r1 - r0) * 2 - 1  # depth position in [-1, 1]
    sector = (u.abs() <= 1) & (v.abs() <= 1)
    grid = torch.stack([u, v], dim=-1)[None]  # (1, size, size, 2), x = beam, y = depth
    image = F.grid_sample(polar[None, None], grid, align_corners=True)[0] * sector
    return image.clamp(0, 1), sector[None]


def phantom_dataset(n_per_class: int, size: int = 128, seed: int = 0):
    """Deterministic list of (image, sector, label) triples, ``n_per_class`` of each class."""
    rng = np.random.default_rng(seed)
    return [(*phantom_image(rng, label, size), label) for _ in range(n_per_class) for label in PHANTOM_CLASSES]
