"""Vision-Transformer encoder over token sets (Dosovitskiy et al. 2021; MAE, He et al. 2022).

The encoder takes an adapter's tokens and coordinates, adds a positional embedding computed from
the coordinates, keeps only the visible tokens when a mask plan is given, and runs pre-norm
blocks with fused qkv and ``F.scaled_dot_product_attention``. timm provides the MLP, DropPath and
LayerScale; attention is written here so that SDPA is always the kernel (timm's Attention picks
its kernel from an environment switch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from foundations.adapter import gather_tokens
from foundations.pos_embed import RESIZE, PosEmbed

POOLS = ("mean", "avg", "max", "cls", "cls+max")


@dataclass(frozen=True)
class EncoderConfig:
    dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    cls_token: bool = False
    # features: mean (as the adapter pools) | avg (the mean of all patch tokens: timm's "avg", MAE's
    # and VideoMAE's fine-tuning) | max | cls | cls+max (Point-MAE's head)
    pool: str = "mean"
    layer_scale: float | None = None  # init value of LayerScale, None = off
    grad_checkpointing: bool = False
    norm_eps: float = 1e-6  # LayerNorm epsilon (MAE, timm); Hugging Face's ViTMAE uses 1e-12
    pos_grid: tuple[int, ...] | None = None  # a position table over this grid (imported encoders)
    pos_resize: str = "bicubic"  # how the table meets other grids: bicubic | bicubic-antialias | sinusoid
    final_norm: bool = True  # a LayerNorm on the output tokens (fine-tuned MAE and VideoMAE have none)
    fc_norm: bool = False  # a LayerNorm on the pooled features (MAE's and VideoMAE's fine-tuning)

    def __post_init__(self):
        if self.pos_grid is not None:  # JSON gives a list
            object.__setattr__(self, "pos_grid", tuple(self.pos_grid))
        if self.pos_resize not in RESIZE:
            raise ValueError(f"EncoderConfig.pos_resize must be one of {RESIZE}, got {self.pos_resize!r}")
        for name in ("dim", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"EncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 0:  # 0: no blocks, as left when pruning removes them all (foundations.prune)
            raise ValueError(f"EncoderConfig.depth must be >= 0, got {self.depth}")
        if self.dim % self.heads:
            raise ValueError(f"EncoderConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.pool not in POOLS:
            raise ValueError(f"EncoderConfig.pool must be one of {POOLS}, got {self.pool!r}")
        if "cls" in self.pool and not self.cls_token:
            raise ValueError(f"EncoderConfig.pool={self.pool!r} needs cls_token=True")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"EncoderConfig.drop_path must be in [0, 1), got {self.drop_path}")


PRESETS = {
    "micro": EncoderConfig(dim=64, depth=2, heads=2),  # smoke runs and tests on a laptop CPU
    "mini": EncoderConfig(dim=128, depth=4, heads=4),  # real data on a CPU in minutes
    "tiny": EncoderConfig(dim=192, depth=12, heads=3),
    "small": EncoderConfig(dim=384, depth=12, heads=6),
    "base": EncoderConfig(dim=768, depth=12, heads=12),
    "large": EncoderConfig(dim=1024, depth=24, heads=16),
}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
        # split before moving heads forward: the backward then stacks the gradients straight into
        # qkv's layout (a permute of the fused tensor first costs a copy per layer there)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # 3 x (B, h, N, hd)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, hd)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(LS(Attn(LN x))), then the same with the MLP."""

    def __init__(self, dim, heads, mlp_ratio=4.0, drop_path=0.0, layer_scale=None, eps=1e-6):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool, hidden=None) -> torch.Tensor:
    """Run the blocks in turn; ``hidden``, a dict keyed by 1-based block numbers, receives the
    output of those blocks (UNETR-style decoders read intermediate layers), and under 0 the input."""
    if hidden is not None and 0 in hidden:
        hidden[0] = x
    for i, blk in enumerate(blocks, start=1):
        if grad_checkpointing and x.requires_grad:
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
        if hidden is not None and i in hidden:
            hidden[i] = x
    return x


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: truncated-normal linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class EncoderOutput(NamedTuple):
    features: torch.Tensor  # (B, feature_dim): the tokens pooled as EncoderConfig.pool says
    tokens: torch.Tensor  # (B, N, D): patch tokens after the final norm, if any (no cls)


class Encoder(nn.Module):
    """An adapter plus a ViT: raw inputs of one modality -> features and tokens."""

    def __init__(self, adapter, cfg: EncoderConfig):
        super().__init__()
        self.adapter, self.cfg = adapter, cfg
        if cfg.pos_grid is not None and getattr(adapter.config, "coords", "index") != "index":
            raise ValueError("a position table (EncoderConfig.pos_grid) needs grid-index coordinates")
        kind = adapter.pos_embed if cfg.pos_grid is None else "table"
        self.pos_embed = PosEmbed(kind, adapter.coord_dim, cfg.dim, cfg.pos_grid, cfg.pos_resize)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.cls_token else None
        dpr = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()  # stochastic depth rule
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, dpr[i], cfg.layer_scale, cfg.norm_eps) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(self.feature_dim, eps=cfg.norm_eps) if cfg.fc_norm else nn.Identity()
        for part in (self.pos_embed, self.blocks, self.norm, self.fc_norm):  # the adapter initialises itself
            part.apply(init_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @property
    def n_prefix(self) -> int:
        return int(self.cls_token is not None)

    @property
    def feature_dim(self) -> int:
        dims = {"mean": self.adapter.pooled_dim(self.cfg.dim), "cls+max": 2 * self.cfg.dim}
        return dims.get(self.cfg.pool, self.cfg.dim)

    def forward_tokens(self, tokens, coords, ids_keep=None, hidden=None) -> torch.Tensor:
        """tokens: (B, N, D), or (B, Nv, D) those of ids_keep already; coords: (B, N, k), ids_keep:
        (B, Nv) or None -> (B, n_prefix + Nv, D) normed (unless final_norm is off), cls first when
        present. ``hidden``: see ``run_blocks``."""
        gathered = ids_keep is None or tokens.shape[1] == ids_keep.shape[1]  # some token is always hidden
        x = tokens if gathered else gather_tokens(tokens, ids_keep)
        x = x + self.pos_embed(coords, ids_keep).to(x.dtype)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = run_blocks(self.blocks, x, self.cfg.grad_checkpointing, hidden)
        return self.norm(x)

    def hidden_states(self, x, layers) -> list[torch.Tensor]:
        """Patch tokens (B, N, D) after each block in ``layers`` (1-based, e.g. UNETR's 3, 6, 9, 12);
        the last block's come after the final norm."""
        tokens, coords = self.adapter.embed(self.adapter.tokenize(x))
        hidden = dict.fromkeys(layers)
        last = self.forward_tokens(tokens, coords, hidden=hidden)
        return [(last if i == len(self.blocks) else hidden[i])[:, self.n_prefix :] for i in layers]

    def forward(self, x) -> EncoderOutput:
        x = self.adapter.tokenize(x)
        tokens, coords = self.adapter.embed(x)
        out = self.forward_tokens(tokens, coords)
        patch = out[:, self.n_prefix :]  # (B, N, D)
        pooled = {
            "mean": lambda: self.adapter.pool(patch, x),  # (B, adapter.pooled_dim(D))
            "avg": lambda: patch.mean(1),
            "max": lambda: patch.amax(1),
            "cls": lambda: out[:, 0],
            "cls+max": lambda: torch.cat([out[:, 0], patch.amax(1)], dim=-1),
        }
        return EncoderOutput(self.fc_norm(pooled[self.cfg.pool]()), patch)
