"""Time one grid-MAE pretraining step at NeRF-MAE's input (160^3 voxels, RGB + alpha) with token
dropping against the same encoder run on every token, hidden ones replaced by a mask token, as
NeRF-MAE's Swin does (Irshad et al., ECCV 2024), and compare their memory.

    ./mae.sh exec python benchmarks/nerf_step.py [--preset mini] [--patch 8] [--batch 1] [--rounds 3]

Models (same encoder preset, same nerf adapter, same block masks of 75 %, same loss):
  nodrop   every token through the encoder, hidden ones as one learned mask token (SimMIM, NeRF-MAE),
           then a linear head per hidden token to its voxels: the lightest decoder such a model has
  ours     the visible tokens only through the encoder, MAE's decoder predicting every hidden token
  fast     as ours, with the pretraining default decoder (CrossMAE's, blocks mixed, predicting a quarter)

NeRF-MAE cuts 160^3 grids into 4^3 patches (64,000 tokens); full attention over as many on a CPU
takes minutes a step without dropping, so the default here is 8^3 patches (8,000 tokens, 2,000
visible). Samples/s is the median over interleaved rounds; memory as ``timing.memory_bytes``.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from timing import interleaved, memory_bytes, training_step
from torch import nn

from foundations.mae import DECODER_PRESETS, MAEConfig, MaskedAutoencoder
from foundations.masking import make_mask
from foundations.vit import PRESETS, gather_tokens
from modalities import build_adapter
from modalities.nerf.adapter import NerfAdapter, NerfConfig

SIZE = 160  # NeRF-MAE's grid


class NoDrop(nn.Module):
    """The peer: every token through the encoder, the hidden ones as a learned mask token, a linear
    head from each hidden token to its voxels (mask tokens as SimMIM and NeRF-MAE use them)."""

    def __init__(self, mae: MaskedAutoencoder):
        super().__init__()
        self.mae = mae  # its encoder, adapter, mask drawing and loss; its decoder is not used
        self.mask_token = nn.Parameter(torch.zeros(1, 1, mae.cfg.encoder.dim))
        self.head = nn.Linear(mae.cfg.encoder.dim, mae.adapter.target_dim)

    def forward(self, x: dict) -> torch.Tensor:
        adapter, encoder = self.mae.adapter, self.mae.encoder
        x = adapter.tokenize(x)
        coords = adapter.coords(x)  # (B, N, 3)
        plan = make_mask(self.mae.cfg.mask, coords)
        tokens = adapter.embed(x).tokens  # (B, N, D): every token
        tokens = torch.where(plan.mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        out = encoder.forward_tokens(tokens, coords)[:, encoder.n_prefix :]  # (B, N, D)
        pred = self.head(gather_tokens(out, plan.ids_hide))  # (B, N_hide, P)
        target, weights = adapter.targets(x)
        return self.mae.forward_loss(target, weights, pred, plan.ids_hide)


def build(preset: str, patch: int, decoder: str) -> MaskedAutoencoder:
    config = {"name": "nerf", **dataclasses.asdict(NerfConfig(patch=(patch,) * 3, size=(SIZE,) * 3))}
    adapter = build_adapter(config, PRESETS[preset].dim)
    mask = NerfAdapter.defaults.mask
    dec = DECODER_PRESETS[preset]
    if decoder == "fast":
        dec, mask = dataclasses.replace(dec, kind="cross", mix=True), dataclasses.replace(mask, predict_ratio=0.25)
    return MaskedAutoencoder(adapter, MAEConfig(PRESETS[preset], dec, mask, norm_target=False))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mini", choices=list(PRESETS))
    p.add_argument("--patch", type=int, default=8, help="voxels per patch side (NeRF-MAE: 4)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; one step of each per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if SIZE % args.patch:
        p.error(f"--patch must divide {SIZE}, got {args.patch}")
    torch.manual_seed(0)
    device = torch.device(args.device)
    image = torch.rand(args.batch, 4, SIZE, SIZE, SIZE, device=device)
    image[:, 3] = (image[:, 3] > 0.9).float()  # a tenth of the voxels occupied
    batch = {"image": image, "spacing": torch.full((args.batch, 3), 2 / SIZE, device=device)}
    models = {"nodrop": NoDrop(build(args.preset, args.patch, "self")), "ours": build(args.preset, args.patch, "self")}
    models["fast"] = build(args.preset, args.patch, "fast")
    models = {k: m.to(device).train() for k, m in models.items()}
    losses = {k: (lambda m=m: m(batch)) if k == "nodrop" else (lambda m=m: m(batch).loss) for k, m in models.items()}
    memory = {k: memory_bytes(models[k], losses[k], device) for k in models}
    steps = {k: training_step(models[k], losses[k]) for k in models}
    seconds = interleaved(steps, args.rounds, args.warmup, torch.cuda.synchronize if device.type == "cuda" else None)
    tokens = (SIZE // args.patch) ** 3
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    kind = "allocator peak" if device.type == "cuda" else "saved activations + 4 x params"
    print(
        f"torch {torch.__version__}, {where}; {args.preset} encoder, batch {args.batch}, {SIZE}^3 x 4 channels, "
        f"patch {args.patch}^3: {tokens} tokens, 75 % hidden in blocks"
    )
    header = f"{'model':<8}{'params M':>10}{'s/step':>9}{'samples/s':>11}{'activ MiB':>11}{'peak MiB':>10}"
    print(f"{header}   (peak: {kind})")
    for k, m in models.items():
        act, peak = memory[k]
        n = sum(q.numel() for q in m.parameters() if q.requires_grad) / 1e6
        rate = args.batch / seconds[k]
        print(f"{k:<8}{n:>10.2f}{seconds[k]:>9.2f}{rate:>11.3f}{act / 2**20:>11.0f}{peak / 2**20:>10.0f}")
    for k in ("ours", "fast"):
        print(
            f"{k}/nodrop: speed {seconds['nodrop'] / seconds[k]:.2f}x, activation memory "
            f"{memory[k][0] / memory['nodrop'][0]:.2f}x, peak memory {memory[k][1] / memory['nodrop'][1]:.2f}x"
        )


if __name__ == "__main__":
    main()
