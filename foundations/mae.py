"""Masked autoencoder on token sets (He et al. 2022, "Masked Autoencoders Are Scalable Vision
Learners").

Stages, named as in the paper's reference implementation:
  masking         make_mask(coords) -> MaskPlan (foundations.masking)
  forward_encoder the encoder runs on visible tokens only
  forward_decoder a light decoder sees the visible latents plus one mask token per token it is
                  asked to predict (``ids_pred``, all hidden tokens by default), each with its
                  positional embedding, and returns predictions for those tokens only
  forward_loss    the adapter's loss on the predicted tokens (masked MSE, optionally on
                  per-token normalised targets = norm_pix_loss, with element weights)

Because the decoder is told which tokens to predict, a decoder that predicts a subset of the
hidden tokens (cheaper per step) needs no change to the encoder or the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from foundations.masking import MaskConfig, MaskPlan, make_mask
from foundations.pos_embed import PosEmbed
from foundations.vit import Block, Encoder, EncoderConfig, gather_tokens, init_weights, run_blocks


@dataclass(frozen=True)
class DecoderConfig:
    dim: int = 256
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6  # LayerNorm epsilon (Hugging Face's ViTMAE: 1e-12)
    pos_grid: tuple[int, ...] | None = None  # a position table over this grid (imported decoders)
    pos_resize: str = "bicubic"  # how that table meets other grids (foundations.pos_embed.RESIZE)

    def __post_init__(self):
        if self.pos_grid is not None:  # JSON gives a list
            object.__setattr__(self, "pos_grid", tuple(self.pos_grid))
        if self.dim % self.heads:
            raise ValueError(f"DecoderConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.depth < 1:
            raise ValueError(f"DecoderConfig.depth must be >= 1, got {self.depth}")


# Decoders sized for each encoder preset: MAE's 512 x 8 for base and up, lighter below.
DECODER_PRESETS = {
    "micro": DecoderConfig(dim=64, depth=1, heads=2),
    "mini": DecoderConfig(dim=128, depth=2, heads=4),
    "tiny": DecoderConfig(dim=128, depth=2, heads=4),
    "small": DecoderConfig(dim=256, depth=4, heads=8),
    "base": DecoderConfig(dim=512, depth=8, heads=16),
    "large": DecoderConfig(dim=512, depth=8, heads=16),
}


@dataclass(frozen=True)
class MAEConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    norm_target: bool = True  # MAE's norm_pix_loss


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (B, M, P) predictions for the tokens in ids_pred
    mask: torch.Tensor  # (B, N) bool, True = hidden
    ids_pred: torch.Tensor  # (B, M) which tokens pred holds
    target: torch.Tensor  # (B, N, P) raw (un-normalised) targets of every token
    weights: torch.Tensor | None  # (B, N, P) element weights of every token, or None


class Decoder(nn.Module):
    def __init__(self, enc_dim: int, cfg: DecoderConfig, pos_kind: str, coord_dim: int, target_dim: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(enc_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        pos_kind = pos_kind if cfg.pos_grid is None else "table"
        self.pos_embed = PosEmbed(pos_kind, coord_dim, cfg.dim, cfg.pos_grid, cfg.pos_resize)
        eps = cfg.norm_eps
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, eps=eps) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=eps)
        self.pred = nn.Linear(cfg.dim, target_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent, coords, ids_keep, ids_pred, n_prefix: int) -> torch.Tensor:
        """latent: (B, n_prefix + Nv, De), coords: (B, N, k), ids_keep: (B, Nv), ids_pred: (B, M)
        -> (B, M, P)."""
        x = self.embed(latent)  # (B, n_prefix + Nv, Dd)
        prefix, vis = x[:, :n_prefix], x[:, n_prefix:]
        vis = vis + self.pos_embed(coords, ids_keep).to(vis.dtype)
        B, M = ids_pred.shape
        query = self.mask_token.expand(B, M, -1) + self.pos_embed(coords, ids_pred).to(x.dtype)
        x = torch.cat([prefix, vis, query], dim=1)  # (B, n_prefix + Nv + M, Dd)
        x = run_blocks(self.blocks, x, grad_checkpointing=False)
        return self.pred(self.norm(x[:, -M:]))  # (B, M, P)


class MaskedAutoencoder(nn.Module):
    def __init__(self, adapter, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(adapter, cfg.encoder)
        self.decoder = Decoder(cfg.encoder.dim, cfg.decoder, adapter.pos_embed, adapter.coord_dim, adapter.target_dim)

    @property
    def adapter(self):
        return self.encoder.adapter

    def forward_encoder(self, x, generator=None, plan: MaskPlan | None = None):
        tokens, coords = self.adapter.embed(x)  # (B, N, D), (B, N, k)
        plan = plan or make_mask(self.cfg.mask, coords, generator)
        latent = self.encoder.forward_tokens(tokens, coords, plan.ids_keep)  # (B, p + Nv, D)
        return latent, coords, plan

    def forward_decoder(self, latent, coords, plan: MaskPlan, ids_pred=None):
        if ids_pred is None:
            ids_pred = plan.ids_hide if plan.ids_pred is None else plan.ids_pred
        return self.decoder(latent, coords, plan.ids_keep, ids_pred, self.encoder.n_prefix), ids_pred

    def forward_loss(self, target, weights, pred, ids_pred):
        t = gather_tokens(target, ids_pred)  # (B, M, P)
        w = None if weights is None else gather_tokens(weights, ids_pred)
        return self.adapter.loss(pred, t, w, self.cfg.norm_target)

    def forward(self, x, valid=None, generator=None, plan: MaskPlan | None = None) -> MAEOutput:
        """x: a batch of raw inputs; valid: optional element mask of x's shape; plan: which tokens
        to hide (default: drawn as the mask configuration says)."""
        x = self.adapter.tokenize(x)  # shared by embed and targets
        latent, coords, plan = self.forward_encoder(x, generator, plan)
        pred, ids_pred = self.forward_decoder(latent, coords, plan)
        target, weights = self.adapter.targets(x, valid)
        loss = self.forward_loss(target, weights, pred, ids_pred)
        return MAEOutput(loss, pred, plan.mask, ids_pred, target, weights)

    @torch.no_grad()
    def reconstruct(self, x, valid=None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows of MAE's figures in the input space (the adapter's ``unpatchify``): the input,
        the masked input (hidden tokens zeroed) and the reconstruction with visible tokens pasted
        back. Predictions of per-token normalised targets are mapped back to raw units."""
        device = next(self.parameters()).device
        x = self.adapter.tokenize(x)
        out = self(x, valid, generator=torch.Generator(device=device).manual_seed(seed))
        target, P = out.target, out.target.shape[-1]
        pred = out.pred.float()
        if self.cfg.norm_target:
            w = None if out.weights is None else gather_tokens(out.weights, out.ids_pred)
            pred = self.adapter.denormalize_prediction(pred, gather_tokens(target, out.ids_pred), w)
        full = target.clone().scatter(1, out.ids_pred[..., None].expand(-1, -1, P), pred.to(target.dtype))
        masked = target * (~out.mask)[..., None]
        return tuple(self.adapter.unpatchify(t, x) for t in (target, masked, full))
