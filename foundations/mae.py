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

Two decoders (``DecoderConfig.kind``):
  self   MAE's: self-attention over the visible latents and the queries together.
  cross  CrossMAE's (Fu et al., "Rethinking Patch Dependence for Masked Autoencoders", TMLR 2025):
         each query (mask token + position) attends to the encoder's tokens only, never to another
         query, so predicting a quarter of the tokens (``MaskConfig.predict_ratio``) costs a quarter;
         with ``mix`` every decoder block reads its own learned mix of the encoder's input and
         block outputs (CrossMAE's weighted feature maps, ``Linear(depth + 1 -> decoder depth)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
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
    kind: str = "self"  # self (MAE) | cross (CrossMAE)
    mix: bool = False  # cross: each block reads a learned mix of every encoder block's output
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
        if self.kind not in ("self", "cross"):
            raise ValueError(f"DecoderConfig.kind must be self or cross, got {self.kind!r}")
        if self.mix and self.kind != "cross":
            raise ValueError("DecoderConfig.mix needs kind='cross'")


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


class CrossBlock(nn.Module):
    """CrossMAE's decoder block, pre-norm: the queries attend to the encoder's tokens (keys and
    values projected from the encoder's width), then an MLP. x: (B, M, Dd), y: (B, L, De)."""

    def __init__(self, dim: int, enc_dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(enc_dim, 2 * dim), nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B, M, D = x.shape
        q = self.q(self.norm1(x)).view(B, M, self.heads, -1).transpose(1, 2)  # (B, h, M, hd)
        k, v = (t.transpose(1, 2) for t in self.kv(y).view(B, y.shape[1], 2, self.heads, -1).unbind(2))
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, M, D))
        return x + self.mlp(self.norm2(x))


class Decoder(nn.Module):
    def __init__(
        self, enc_dim: int, cfg: DecoderConfig, pos_kind: str, coord_dim: int, target_dim: int, enc_depth: int = 0
    ):
        super().__init__()
        self.cfg = cfg
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        pos_kind = pos_kind if cfg.pos_grid is None else "table"
        self.pos_embed = PosEmbed(pos_kind, coord_dim, cfg.dim, cfg.pos_grid, cfg.pos_resize)
        eps = cfg.norm_eps
        if cfg.kind == "self":
            self.embed = nn.Linear(enc_dim, cfg.dim)
            self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, eps=eps) for _ in range(cfg.depth))
        else:
            blocks = (CrossBlock(cfg.dim, enc_dim, cfg.heads, cfg.mlp_ratio, eps) for _ in range(cfg.depth))
            self.blocks = nn.ModuleList(blocks)
        if cfg.mix:  # the encoder's input and its enc_depth block outputs -> one mix per decoder block
            self.mix = nn.Linear(enc_depth + 1, cfg.depth, bias=False)
            self.mix_norms = nn.ModuleList(nn.LayerNorm(enc_dim, eps=eps) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=eps)
        self.pred = nn.Linear(cfg.dim, target_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        if cfg.mix:
            nn.init.normal_(self.mix.weight, std=(enc_depth + 1) ** -0.5)

    def forward(self, latent, coords, ids_keep, ids_pred, n_prefix: int) -> torch.Tensor:
        """latent: (B, n_prefix + Nv, De), or with ``mix`` every encoder stage's (B, n_prefix + Nv,
        De, depth + 1); coords: (B, N, k), ids_keep: (B, Nv), ids_pred: (B, M) -> (B, M, P)."""
        B, M = ids_pred.shape
        query = self.mask_token.expand(B, M, -1) + self.pos_embed(coords, ids_pred).to(latent.dtype)
        if self.cfg.kind == "cross":
            mixed = self.mix(latent) if self.cfg.mix else None  # (B, L, De, decoder depth)
            for i, blk in enumerate(self.blocks):
                query = blk(query, latent if mixed is None else self.mix_norms[i](mixed[..., i]))
            return self.pred(self.norm(query))  # (B, M, P)
        x = self.embed(latent)  # (B, n_prefix + Nv, Dd)
        prefix, vis = x[:, :n_prefix], x[:, n_prefix:]
        vis = vis + self.pos_embed(coords, ids_keep).to(vis.dtype)
        x = torch.cat([prefix, vis, query], dim=1)  # (B, n_prefix + Nv + M, Dd)
        x = run_blocks(self.blocks, x, grad_checkpointing=False)
        return self.pred(self.norm(x[:, -M:]))  # (B, M, P)


class MaskedAutoencoder(nn.Module):
    def __init__(self, adapter, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(adapter, cfg.encoder)
        self.decoder = Decoder(
            cfg.encoder.dim, cfg.decoder, adapter.pos_embed, adapter.coord_dim, adapter.target_dim, cfg.encoder.depth
        )

    @property
    def adapter(self):
        return self.encoder.adapter

    def forward_encoder(self, x, generator=None, plan: MaskPlan | None = None):
        coords = self.adapter.coords(x)  # (B, N, k)
        plan = plan or make_mask(self.cfg.mask, coords, generator)
        tokens = self.adapter.embed(x, plan.ids_keep).tokens  # (B, Nv, D): the visible tokens only
        if not self.cfg.decoder.mix:
            return self.encoder.forward_tokens(tokens, coords, plan.ids_keep), coords, plan  # (B, p + Nv, D)
        stages = dict.fromkeys(range(self.cfg.encoder.depth))  # 0: the blocks' input, then blocks 1 to depth - 1
        # the last stage after the encoder's final norm (CrossMAE's is before it), which the decoder
        # then trains like the rest: it is part of every feature this encoder gives later
        last = self.encoder.forward_tokens(tokens, coords, plan.ids_keep, hidden=stages)
        return torch.stack([*stages.values(), last], dim=-1), coords, plan  # (B, p + Nv, D, depth + 1)

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
    def predict_hidden(self, x, valid=None, seed: int = 0) -> MAEOutput:
        """A forward pass, masked as ``seed`` draws, whose decoder predicts every hidden token
        (``predict_ratio`` trains on a subset; a figure shows them all)."""
        device = next(self.parameters()).device
        x = self.adapter.tokenize(x)
        plan = make_mask(self.cfg.mask, self.adapter.coords(x), torch.Generator(device=device).manual_seed(seed))
        return self(x, valid, plan=plan._replace(ids_pred=None))

    @torch.no_grad()
    def reconstruct(self, x, valid=None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows of MAE's figures in the input space (the adapter's ``unpatchify``): the input,
        the masked input (hidden tokens zeroed) and the reconstruction with visible tokens pasted
        back. Every hidden token is predicted, whatever share ``predict_ratio`` trains on.
        Predictions of per-token normalised targets are mapped back to raw units."""
        x = self.adapter.tokenize(x)
        out = self.predict_hidden(x, valid, seed)
        target, P = out.target, out.target.shape[-1]
        pred = out.pred.float()
        if self.cfg.norm_target:
            w = None if out.weights is None else gather_tokens(out.weights, out.ids_pred)
            pred = self.adapter.denormalize_prediction(pred, gather_tokens(target, out.ids_pred), w)
        full = target.clone().scatter(1, out.ids_pred[..., None].expand(-1, -1, P), pred.to(target.dtype))
        masked = target * (~out.mask)[..., None]
        return tuple(self.adapter.unpatchify(t, x) for t in (target, masked, full))
