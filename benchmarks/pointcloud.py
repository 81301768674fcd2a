"""Point-cloud figures, measured in one run on this machine.

1. Tokenization throughput (clouds/s) of FPS + kNN + grouping, for this project's batched
   PyTorch tokenizer against open3d's farthest-point down-sampling plus a KD-tree neighbour
   search per centre, at 1024 and 8192 points, G = 64 and 128 centres, k = 32, batch 32.
   Interleaved rounds, median time.
2. One pretraining step (forward, backward, AdamW) at Point-MAE's configuration: 1024 points,
   64 groups of 32, width 384, depth 12, decoder depth 4, mask 0.6, batch 32; the mini-PointNet
   on the visible groups only (this suite) against on every group (Point-MAE), interleaved.

    ./mae.sh exec python benchmarks/pointcloud.py [--rounds 3]
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import open3d as o3d
import torch
from timing import interleaved, training_step

from foundations.adapter import Tokens, gather_tokens
from foundations.mae import DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from foundations.vit import EncoderConfig
from modalities.pointcloud.adapter import PointCloudAdapter, PointCloudConfig
from modalities.pointcloud.tokenizer import group_points


def open3d_tokenize(clouds: np.ndarray, n_groups: int, k: int) -> list[np.ndarray]:
    """The open3d path: per cloud, FPS down-sampling then a KD-tree kNN query per centre."""
    out = []
    for pts in clouds:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        centres = np.asarray(pcd.farthest_point_down_sample(n_groups).points)
        tree = o3d.geometry.KDTreeFlann(pcd)
        idx = np.stack([np.asarray(tree.search_knn_vector_3d(c, k)[1]) for c in centres])
        out.append(pts[idx] - centres[:, None])
    return out


def tokenization(rounds: int, batch: int = 32, k: int = 32) -> dict[tuple[int, int], float]:
    """Prints the table; returns our seconds per batch for each (points, G)."""
    print(f"tokenization, batch {batch}, k {k} (clouds/s, median of {rounds} interleaved rounds)")
    print(f"{'points':>7}{'G':>5}{'ours':>10}{'open3d':>10}{'ratio':>8}")
    ours = {}
    for n in (1024, 8192):
        clouds = np.random.default_rng(0).normal(size=(batch, n, 3))
        tensor = torch.from_numpy(clouds).float()
        for g in (64, 128):
            runs = {"ours": partial(group_points, tensor, g, k), "open3d": partial(open3d_tokenize, clouds, g, k)}
            seconds = interleaved(runs, rounds)
            ours[n, g] = seconds["ours"]
            rate = {name: batch / s for name, s in seconds.items()}
            print(f"{n:>7}{g:>5}{rate['ours']:>10.1f}{rate['open3d']:>10.1f}{rate['ours'] / rate['open3d']:>8.2f}")
    return ours


class FullEmbedding(PointCloudAdapter):
    """Point-MAE's order: every group through the mini-PointNet, then the visible ones kept."""

    def embed(self, x, ids=None) -> Tokens:
        tokens, coords = super().embed(x)
        return Tokens(tokens if ids is None else gather_tokens(tokens, ids), coords)


def pretrain_step(rounds: int, batch: int = 32) -> float:
    """Seconds of a step embedding the visible groups only (this suite) and every group (Point-MAE)."""
    steps = {}
    for name, adapter_cls in (("visible", PointCloudAdapter), ("all", FullEmbedding)):
        torch.manual_seed(0)
        adapter = adapter_cls(PointCloudConfig(n_points=1024, n_groups=64, group_size=32), 384)
        mae = MaskedAutoencoder(
            adapter,
            MAEConfig(
                EncoderConfig(dim=384, depth=12, heads=6, cls_token=True),
                DecoderConfig(dim=384, depth=4, heads=6),
                MaskConfig("random", 0.6),
                norm_target=False,
            ),
        )
        clouds = torch.randn(batch, 1024, 3)
        steps[name] = training_step(mae, lambda m=mae, c=clouds: m(c).loss)
    seconds = interleaved(steps, rounds)
    print(f"pretraining step at Point-MAE's configuration, batch {batch}:")
    for name, t in seconds.items():
        print(f"  {name:<8} groups embedded: {t:.2f} s, {batch / t:.1f} clouds/s")
    print(f"  visible-only embedding: {seconds['all'] / seconds['visible']:.2f}x the full-embedding step")
    return seconds["visible"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, open3d {o3d.__version__}")
    tokenize = tokenization(args.rounds)[1024, 64]
    step = pretrain_step(args.rounds)
    print(f"tokenizing the step's batch (1024 points, 64 groups) is {100 * tokenize / step:.1f}% of the step")


if __name__ == "__main__":
    main()
