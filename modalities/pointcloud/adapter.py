"""Point clouds in the spirit of Point-MAE (Pang et al. 2022, "Masked Autoencoders for Point Cloud
Self-supervised Learning"): a mini-PointNet embeds each group of the tokenizer to a token; token
coordinates are the continuous group centres, embedded by the core's learned-MLP position option.
The reconstruction target of a group is its k relative points; the loss is the Chamfer distance
between predicted and true groups (hidden groups only, as always in the core).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from foundations.adapter import Adapter, ModelDefaults, Targets, Tokens
from foundations.masking import MaskConfig
from modalities.pointcloud.tokenizer import PointPatches, group_points


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """a: (B, n, 3), b: (B, m, 3) -> (B,).

    l2: mean squared distance to the nearest neighbour, a->b plus b->a (Point-MAE's CD-L2);
    l1: the mean of the unsquared distances, a->b and b->a averaged (Point-MAE's CD-L1).
    """
    d = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)  # (B, n, m)
    ab, ba = d.amin(dim=2), d.amin(dim=1)  # (B, n), (B, m)
    if kind == "l2":
        return ab.mean(1) + ba.mean(1)
    if kind == "l1":
        return (ab.clamp_min(1e-12).sqrt().mean(1) + ba.clamp_min(1e-12).sqrt().mean(1)) / 2
    raise ValueError(f"chamfer kind must be 'l1' or 'l2', got {kind!r}")


class MiniPointNet(nn.Module):
    """Point-MAE's group encoder: shared per-point MLP, max-pool, concatenate the pooled feature
    to every point, second MLP, max-pool. ``width`` 256 gives Point-MAE's 128-256 / 512-512 layers.
    LayerNorm instead of BatchNorm keeps it independent of the batch (small CPU batches, DDP
    without SyncBatchNorm)."""

    def __init__(self, in_channels: int, dim: int, width: int = 256):
        super().__init__()
        w = width
        self.first = nn.Sequential(
            nn.Linear(in_channels, w // 2), nn.LayerNorm(w // 2), nn.GELU(), nn.Linear(w // 2, w)
        )
        self.second = nn.Sequential(nn.Linear(2 * w, 2 * w), nn.LayerNorm(2 * w), nn.GELU(), nn.Linear(2 * w, dim))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:  # (B, G, k, C) -> (B, G, D)
        f = self.first(groups)  # (B, G, k, 256)
        pooled = f.amax(dim=2, keepdim=True).expand_as(f)
        return self.second(torch.cat([pooled, f], dim=-1)).amax(dim=2)  # (B, G, D)


@dataclass(frozen=True)
class PointCloudConfig:
    n_points: int = 1024
    n_groups: int = 64  # tokens: FPS centres per cloud
    group_size: int = 32  # points per group (kNN)
    chamfer: str = "l2"
    pointnet_width: int = 256  # Point-MAE's; the per-point 2w x 2w layer dominates the cost on a CPU

    def __post_init__(self):
        if not 1 <= self.n_groups <= self.n_points:
            raise ValueError(f"PointCloudConfig.n_groups must be in [1, n_points], got {self.n_groups}")
        if not 1 <= self.group_size <= self.n_points:
            raise ValueError(f"PointCloudConfig.group_size must be in [1, n_points], got {self.group_size}")
        if self.chamfer not in ("l1", "l2"):
            raise ValueError(f"PointCloudConfig.chamfer must be 'l1' or 'l2', got {self.chamfer!r}")


class PointCloudAdapter(Adapter):
    name = "pointcloud"
    coord_dim = 3
    pos_embed = "mlp"
    defaults = ModelDefaults(
        MaskConfig("random", 0.6, block_tokens=64),  # block: one blob hides the share of 64 groups
        norm_target=False,  # Chamfer compares point sets; per-group normalisation does not apply
        encoder={"cls_token": True, "pool": "cls+max"},  # Point-MAE's classification features
    )

    def __init__(self, config: PointCloudConfig, dim: int):
        super().__init__(config, dim)
        self.target_dim = config.group_size * 3
        self.pointnet = MiniPointNet(3, dim, config.pointnet_width)

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        if version < 2:  # format 1: "groups" and "channels" (always 3 from the recipes)
            fields = {k: v for k, v in fields.items() if k not in ("groups", "channels")} | {
                "n_groups": fields["groups"]
            }
        return fields

    def tokenize(self, x) -> PointPatches:
        """x: (B, N, 3) -> FPS centres and kNN groups (once per batch: FPS is the costly part)."""
        if isinstance(x, PointPatches):
            return x
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"expected points (B, N, 3), got {tuple(x.shape)}")
        with torch.no_grad():
            return group_points(x.float(), self.config.n_groups, self.config.group_size)

    def coords(self, x) -> torch.Tensor:
        return self.tokenize(x).centres

    def embed(self, x, ids: torch.Tensor | None = None) -> Tokens:
        """With ``ids``, the mini-PointNet embeds those groups only (the visible ones: about half of
        Point-MAE's step embeds groups the encoder never sees); its LayerNorms see one group at a
        time, so this is exactly the full embedding gathered, in training too."""
        p = self.tokenize(x)
        groups = p.neighbourhoods  # (B, G, k, 3)
        if ids is not None:
            groups = groups.gather(1, ids[..., None, None].expand(-1, -1, *groups.shape[2:]))
        return Tokens(self.pointnet(groups), p.centres)

    def targets(self, x, valid=None) -> Targets:
        return Targets(self.tokenize(x).neighbourhoods.flatten(2), None)  # (B, G, k*3)

    def unpatchify(self, values: torch.Tensor, like) -> torch.Tensor:
        """(B, G, k*3) relative groups -> (B, G*k, 3) points in the cloud's frame."""
        centres = self.tokenize(like).centres
        B, G, _ = values.shape
        return (values.view(B, G, -1, 3) + centres[:, :, None]).reshape(B, -1, 3)

    def loss(self, pred, target, weights=None, norm_target: bool = False) -> torch.Tensor:
        k = self.config.group_size
        return chamfer_distance(
            pred.reshape(-1, k, 3).float(), target.reshape(-1, k, 3).float(), self.config.chamfer
        ).mean()

    def baselines(self, target, weights=None, norm_target: bool = False) -> dict[str, torch.Tensor]:
        return {"group_centre": torch.zeros_like(target)}  # every point of a group at its centre
