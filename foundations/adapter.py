"""The contract between a modality adapter and the modality-agnostic core.

An adapter owns everything that knows about pixels, voxels, samples or points: it turns a batch
of raw inputs ``x`` into tokens with coordinates, gives the reconstruction targets, and maps a
prediction back to the input space. The core only ever sees what these methods return.

    tokenize(x)           -> x'                   once-per-batch work that embed and targets share
                                                  (point grouping); grids return x unchanged
    embed(x')             -> Tokens(tokens (B, N, D), coords (B, N, k))
    targets(x', valid)    -> Targets(values (B, N, P), weights (B, N, P) or None)
    unpatchify(values, x')-> x-shaped tensor      (inverse of ``targets`` on full token sets)
    loss(pred, target, w) -> scalar               (default: masked MSE; point clouds use Chamfer)
    baselines(target, w)  -> {name: pred}         trivial predictions a trained model should beat
    pool(tokens, x')      -> (B, pooled_dim(D))   the encoder's mean features (default: mean of all)

``valid`` is an optional element mask of the input's shape (1 = counts in the loss), e.g. the
imaged sector of an ultrasound frame. Coordinates may be grid indices, physical positions or
continuous centres; ``pos_embed`` says whether the core embeds them with fixed sin-cos or a
learned MLP. Every adapter has a frozen dataclass ``config`` that round-trips through JSON, and
``defaults``: the masking and model choices its modality trains best with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from foundations.losses import masked_mse, normalize_target
from foundations.masking import MaskConfig


class Tokens(NamedTuple):
    tokens: torch.Tensor  # (B, N, D)
    coords: torch.Tensor  # (B, N, k) float


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x: (B, N, C), ids: (B, M) -> (B, M, C)."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Targets(NamedTuple):
    values: torch.Tensor  # (B, N, P)
    weights: torch.Tensor | None  # (B, N, P) in [0, 1], or None = all ones


@dataclass(frozen=True)
class ModelDefaults:
    """What a modality pretrains with unless the user says otherwise."""

    mask: MaskConfig = field(default_factory=MaskConfig)
    norm_target: bool = True  # MAE's norm_pix_loss; off where per-patch targets are mostly noise
    encoder: dict = field(default_factory=dict)  # EncoderConfig fields, e.g. a cls token and its pooling


class Adapter(nn.Module):
    """Base class of modality adapters; subclasses set the class attributes and the methods."""

    name: ClassVar[str]  # key in modalities.ADAPTERS
    coord_dim: int  # k
    target_dim: int  # P
    pos_embed: ClassVar[str] = "sincos"  # "sincos" for grids, "mlp" for continuous coordinates
    defaults: ClassVar[ModelDefaults] = ModelDefaults()

    def __init__(self, config, dim: int):
        super().__init__()
        self.config, self.dim = config, dim

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        """Config fields saved by checkpoint format ``version`` -> this version's fields."""
        return fields

    def tokenize(self, x):
        return x

    def coords(self, x) -> torch.Tensor:
        """(B, N, k) coordinates of every token of ``x``, before any embedding (masks are drawn on them)."""
        return self.embed(x).coords

    def embed(self, x, ids: torch.Tensor | None = None) -> Tokens:
        """Tokens of ``x`` (B, N, D), or with ``ids`` (B, M) only those (B, M, D), which a modality
        may embed alone (the visible ones, cheaper); coords always of every token (B, N, k)."""
        raise NotImplementedError

    def targets(self, x, valid: torch.Tensor | None = None) -> Targets:
        raise NotImplementedError

    def unpatchify(self, values: torch.Tensor, like):
        raise NotImplementedError

    def normalize_target(self, target, weights=None) -> torch.Tensor:
        """MAE's norm_pix targets: (B, M, P) normalised per token, unless a modality normalises
        finer (video: per channel)."""
        return normalize_target(target, weights)[0]

    def denormalize_prediction(self, pred, target, weights=None) -> torch.Tensor:
        """Predictions (B, M, P) of ``normalize_target(target)`` -> the units of ``target``."""
        _, mean, std = normalize_target(target, weights)
        return pred * std + mean

    def loss(self, pred, target, weights=None, norm_target: bool = False) -> torch.Tensor:
        """pred, target: (B, M, P) for the M predicted tokens -> scalar."""
        if norm_target:
            target = self.normalize_target(target, weights)
        return masked_mse(pred, target, weights)

    def baselines(self, target, weights=None, norm_target: bool = False) -> dict[str, torch.Tensor]:
        """Trivial predictions of ``target`` (B, M, P), in the units the loss compares."""
        return {"zero": torch.zeros_like(target)}

    def pool(self, tokens: torch.Tensor, x) -> torch.Tensor:
        """(B, N, D) final tokens of inputs ``x`` -> (B, pooled_dim(D)) features: their mean, unless
        the token layout has an axis worth keeping (a spectrogram's frequency bands)."""
        return tokens.mean(1)

    def pooled_dim(self, dim: int) -> int:
        return dim

    def config_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self.config)}


def build_adapter(registry: dict, config: dict, dim: int, version: int | None = None) -> Adapter:
    """{"name": ..., **config fields} -> adapter instance, from ``registry`` {name: (adapter class,
    config class)}; ``version``: the checkpoint format the fields were saved in, upgraded here."""
    fields = dict(config)
    name = fields.pop("name", None)
    if name not in registry:
        raise ValueError(f"unknown adapter {name!r}; known: {sorted(registry)}")
    adapter_cls, config_cls = registry[name]
    if version is not None:
        fields = adapter_cls.upgrade(fields, version)
    return adapter_cls(config_cls(**fields), dim)
