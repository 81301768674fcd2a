"""Time one 3-D MAE pretraining step (forward, loss, backward, AdamW) of this core against MONAI's
``MaskedAutoEncoderViT`` at the same configuration, and compare their memory.

    ./mae.sh exec python benchmarks/volume_step.py [--batch 4] [--rounds 5]

Configuration (the issue's): 1 channel, 96^3 volume, 16^3 patches (216 tokens), hidden 768, 12
layers, 12 heads, MLP 3072, mask 0.75; decoder 384 wide, 4 layers, 12 heads, MLP 1536 for both
(MONAI's default decoder width and depth; MONAI's default MLP of 512 is raised to the ViT-B
ratio so that both run the same network). Loss: MSE on the hidden patches for both.

A third model is this core's fast configuration: CrossMAE's decoder of the same width and depth
(each block reading a learned mix of the encoder's blocks) predicting a quarter of the patches.

All run interleaved in one process (round-robin, same inputs, same threads); samples/s is the
median over rounds. Memory: on a GPU the peak allocated per step; on a CPU, which has no
allocator statistics, the activations saved for backward (parameters excluded, each storage
counted once) plus parameters, gradients and AdamW's two moments.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from einops import rearrange
from timing import interleaved, matmul_peak, memory_bytes, training_step

from foundations.mae import DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from foundations.vit import EncoderConfig
from modalities.volume.adapter import VolumeAdapter, volume_config

SIZE, PATCH, RATIO = 96, 16, 0.75
ENCODER = EncoderConfig(dim=768, depth=12, heads=12, mlp_ratio=4.0)
DECODER = DecoderConfig(dim=384, depth=4, heads=12, mlp_ratio=4.0)
FAST_PREDICT = 0.25  # the fast configuration's predict_ratio


def ours(enc: EncoderConfig, dec: DecoderConfig, fast: bool = False) -> torch.nn.Module:
    """This core; ``fast``: CrossMAE's decoder (same width and depth) predicting a quarter of the patches."""
    adapter = VolumeAdapter(volume_config(1, [PATCH] * 3, [SIZE] * 3), enc.dim)
    if fast:
        dec = dataclasses.replace(dec, kind="cross", mix=True)
    mask = MaskConfig("random", RATIO, predict_ratio=FAST_PREDICT if fast else None)
    return MaskedAutoencoder(adapter, MAEConfig(enc, dec, mask, norm_target=False))


def theirs(enc: EncoderConfig, dec: DecoderConfig) -> torch.nn.Module:
    from monai.networks.nets import MaskedAutoEncoderViT

    return MaskedAutoEncoderViT(
        in_channels=1,
        img_size=SIZE,
        patch_size=PATCH,
        hidden_size=enc.dim,
        mlp_dim=int(enc.dim * enc.mlp_ratio),
        num_layers=enc.depth,
        num_heads=enc.heads,
        masking_ratio=RATIO,
        decoder_hidden_size=dec.dim,
        decoder_mlp_dim=int(dec.dim * dec.mlp_ratio),
        decoder_num_layers=dec.depth,
        decoder_num_heads=dec.heads,
    )


def model_flops(batch: int, enc: EncoderConfig, dec: DecoderConfig, who: str) -> float:
    """Matmul FLOPs of one training step (x3 for forward and backward, less the input gradient of
    the patch embedding). ours: the visible patches embedded, the encoder on them, the decoder on
    all tokens, predictions for the hidden ones; monai: every patch embedded and predicted; fast:
    as ours, with a cross decoder whose m queries read the visible tokens."""
    n = (SIZE // PATCH) ** 3
    n_vis = n - int(round(n * RATIO))
    patch_dim = PATCH**3

    def layers(tokens, dim, depth, mlp_ratio):  # qkv + proj = 8 n d^2, mlp = 4 r n d^2, attention 4 n^2 d
        return depth * ((8 + 4 * mlp_ratio) * tokens * dim**2 + 4 * tokens**2 * dim)

    embed = 2 * (n if who == "monai" else n_vis) * patch_dim * enc.dim
    fwd = embed + layers(n_vis, enc.dim, enc.depth, enc.mlp_ratio)
    if who == "fast":
        m = round(n * FAST_PREDICT)  # q, proj, mlp on the queries; keys and values from the encoder; scores
        per_block = (4 + 4 * dec.mlp_ratio) * m * dec.dim**2 + 4 * n_vis * enc.dim * dec.dim + 4 * m * n_vis * dec.dim
        fwd += dec.depth * per_block + 2 * m * dec.dim * patch_dim
    else:
        predicted = n if who == "monai" else n - n_vis
        fwd += 2 * n_vis * enc.dim * dec.dim + layers(n, dec.dim, dec.depth, dec.mlp_ratio)
        fwd += 2 * predicted * dec.dim * patch_dim
    return (3 * fwd - embed) * batch


def loss_of(model, batch: dict, is_ours: bool) -> torch.Tensor:
    if is_ours:
        return model(batch).loss
    pred, mask = model(batch["image"])  # (B, N, P) for every patch, (B, N) 1 = hidden
    target = rearrange(batch["image"], "b c (x p) (y q) (z r) -> b (x y z) (p q r c)", p=PATCH, q=PATCH, r=PATCH)
    return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


def step_fn(model, batch, is_ours: bool):
    return training_step(model, lambda: loss_of(model, batch, is_ours))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; one step of each per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--monai-mlp",
        action="store_true",
        help="MONAI's default MLP widths (512 in encoder and decoder) for both models instead of 4 x width",
    )
    args = p.parse_args()
    enc, dec = ENCODER, DECODER
    if args.monai_mlp:
        enc, dec = dataclasses.replace(enc, mlp_ratio=512 / enc.dim), dataclasses.replace(dec, mlp_ratio=512 / dec.dim)
    torch.manual_seed(0)
    device = torch.device(args.device)
    batch = {
        "image": torch.rand(args.batch, 1, SIZE, SIZE, SIZE, device=device),
        "spacing": torch.ones(args.batch, 3, device=device),
    }
    models = {"ours": ours(enc, dec), "monai": theirs(enc, dec), "fast": ours(enc, dec, fast=True)}
    models = {k: m.to(device).train() for k, m in models.items()}
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    memory = {k: memory_bytes(m, lambda m=m, k=k: loss_of(m, batch, k != "monai"), device) for k, m in models.items()}
    steps = {k: step_fn(m, batch, k != "monai") for k, m in models.items()}
    seconds = interleaved(steps, args.rounds, args.warmup, torch.cuda.synchronize if device.type == "cuda" else None)
    rate = {k: args.batch / s for k, s in seconds.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    kind = "allocator peak" if device.type == "cuda" else "saved activations + 4 x params"
    print(f"torch {torch.__version__}, {where}; batch {args.batch}, {SIZE}^3, patch {PATCH}^3, mask {RATIO}")
    flops = {k: model_flops(args.batch, enc, dec, k) for k in models}
    if device.type == "cpu":
        peak, step_s = matmul_peak(), seconds["ours"]
        print(
            f"ours: {flops['ours'] / 1e9:.0f} GFLOP/step at {flops['ours'] / step_s / 1e9:.0f} GFLOP/s = "
            f"{flops['ours'] / step_s / peak:.0%} of this CPU's fp32 matmul peak ({peak / 1e9:.0f} GFLOP/s): the "
            f"most any implementation of these FLOPs could gain is {peak * step_s / flops['ours']:.2f}x"
        )
    print(
        f"{'model':<8}{'params M':>10}{'GFLOP':>8}{'samples/s':>11}{'activ MiB':>11}{'peak MiB':>10}   (peak: {kind})"
    )
    for k in models:
        act, peak = memory[k]
        print(
            f"{k:<8}{n_params[k] / 1e6:>10.1f}{flops[k] / 1e9:>8.0f}{rate[k]:>11.2f}{act / 2**20:>11.0f}"
            f"{peak / 2**20:>10.0f}"
        )
    ratio = {i: memory["ours"][i] / memory["monai"][i] for i in (0, 1)}
    print(
        f"ours/monai: speed {rate['ours'] / rate['monai']:.2f}x, "
        f"activation memory {ratio[0]:.2f}x, peak memory {ratio[1]:.2f}x; fast/monai: speed "
        f"{rate['fast'] / rate['monai']:.2f}x"
    )


if __name__ == "__main__":
    main()
