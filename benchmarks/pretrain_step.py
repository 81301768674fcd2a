"""Time one MAE pretraining step (forward, backward, AdamW) of this core against Hugging Face
``transformers``' ``ViTMAEForPreTraining`` (sdpa attention) at the same configuration.

    ./mae.sh exec pip install -e ".[bench]"      # transformers: a benchmark-only extra
    ./mae.sh exec python benchmarks/pretrain_step.py [--models small base] [--rounds 5] [--precision bf16]
    bash benchmarks/gpu.sh          # on a GPU: ViT-B/16 in bf16, model FLOPs utilisation

A third column is the suite's fast configuration at the same encoder: CrossMAE's decoder (the
same width and depth, queries attending to a learned mix of the encoder's stages) predicting a
quarter of the tokens (``predict_ratio`` 0.25 of 0.75 hidden), as CrossMAE trains.

All models run interleaved in one process (round-robin, same inputs, same threads), so machine
noise hits both alike; the figure is the median over rounds. Model FLOPs count the matmuls of the
MAE workload (patch embedding of every patch, encoder on visible tokens, decoder on all tokens,
prediction of every token), x3 for forward and backward; the fraction is against this machine's
matmul throughput in the run's precision (``--precision bf16``: autocast on both sides), measured
in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from timing import interleaved, matmul_peak, training_step

from foundations.mae import DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from foundations.vit import PRESETS
from modalities import build_adapter

CONFIGS = {"small": 16, "base": 8}  # preset -> batch size (as in the issue's peer figures)
IMAGE, PATCH, RATIO = 224, 16, 0.75
DECODER = DecoderConfig(dim=512, depth=8, heads=16)  # MAE's and HF's default decoder
FAST = dataclasses.replace(DECODER, kind="cross", mix=True), 0.25  # the decoder, and its predict_ratio


def ours(preset: str, fast: bool = False) -> torch.nn.Module:
    adapter = build_adapter(
        {
            "name": "image2d",
            "channels": 3,
            "patch": [PATCH, PATCH],
            "mean": [0.0] * 3,
            "std": [1.0] * 3,
            "size": [IMAGE, IMAGE],
        },
        PRESETS[preset].dim,
    )
    decoder, predict = FAST if fast else (DECODER, None)
    mask = MaskConfig("random", RATIO, predict_ratio=predict)
    return MaskedAutoencoder(adapter, MAEConfig(PRESETS[preset], decoder, mask, True))


def theirs(preset: str) -> torch.nn.Module:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    enc = PRESETS[preset]
    cfg = ViTMAEConfig(
        hidden_size=enc.dim,
        num_hidden_layers=enc.depth,
        num_attention_heads=enc.heads,
        intermediate_size=4 * enc.dim,
        image_size=IMAGE,
        patch_size=PATCH,
        num_channels=3,
        mask_ratio=RATIO,
        norm_pix_loss=True,
        decoder_hidden_size=DECODER.dim,
        decoder_num_hidden_layers=DECODER.depth,
        decoder_num_attention_heads=DECODER.heads,
        decoder_intermediate_size=4 * DECODER.dim,
        attn_implementation="sdpa",
    )
    model = ViTMAEForPreTraining(cfg)
    assert model.config._attn_implementation == "sdpa"
    return model


def model_flops(preset: str, batch: int, fast: bool = False) -> float:
    """Matmul FLOPs of one training step (x3 = forward + backward)."""
    enc, n, d = PRESETS[preset], (IMAGE // PATCH) ** 2, DECODER.dim
    n_vis = n - int(round(n * RATIO))

    def layers(tokens, dim, depth):  # qkv + proj + mlp = 24 n d^2, attention scores and mix = 4 n^2 d
        return depth * (24 * tokens * dim**2 + 4 * tokens**2 * dim)

    patch_dim = PATCH * PATCH * 3
    fwd = 2 * n * patch_dim * enc.dim + layers(n_vis, enc.dim, enc.depth)
    if fast:  # m queries: q, proj and mlp 20 m d^2; keys and values from the encoder 4 n_vis D d; scores 4 m n_vis d
        m = round(n * FAST[1])
        per_block = 20 * m * d**2 + 4 * (n_vis + 1) * enc.dim * d + 4 * m * (n_vis + 1) * d
        return 3 * batch * (fwd + DECODER.depth * per_block + 2 * m * d * patch_dim)
    fwd += 2 * n_vis * enc.dim * d + layers(n, d, DECODER.depth) + 2 * n * d * patch_dim
    return 3 * fwd * batch


def step_fn(model, images, is_ours: bool, bf16: bool):
    if is_ours:
        return training_step(model, lambda: model(images).loss, bf16)
    return training_step(model, lambda: model(pixel_values=images).loss, bf16)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; one step of each per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, both sides")
    p.add_argument("--device", default="cpu", help="cpu or cuda (SDPA then picks flash attention in bf16)")
    p.add_argument("--batch", type=int, help="batch size of every model (default: 16 for ViT-S, 8 for ViT-B)")
    p.add_argument(
        "--peak-tflops", type=float, help="the device's peak in this precision (H100 SXM bf16: 989); default: measured"
    )
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    torch.manual_seed(0)
    bf16, device = args.precision == "bf16", torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak(dtype=dtype, device=args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; {args.precision} matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(
        f"{'model':<8}{'batch':>6}{'ours/s':>10}{'HF/s':>10}{'ratio':>8}{'GFLOP/step':>12}{'ours %pk':>10}{'HF %pk':>9}"
        f"{'fast/s':>9}{'fast/HF':>9}{'fast GFLOP':>12}"
    )
    for preset in args.models:
        batch = args.batch or CONFIGS[preset]
        images = torch.rand(batch, 3, IMAGE, IMAGE, device=device)
        models = {"ours": ours(preset), "hf": theirs(preset), "fast": ours(preset, fast=True)}
        steps = {k: step_fn(m.to(device).train(), images, k != "hf", bf16) for k, m in models.items()}
        seconds = interleaved(steps, args.rounds, args.warmup, sync)
        flops = model_flops(preset, batch)
        rate = {k: batch / s for k, s in seconds.items()}
        frac = {k: flops / s / peak for k, s in seconds.items()}
        print(
            f"ViT-{preset[0].upper():<4}{batch:>6}{rate['ours']:>10.2f}{rate['hf']:>10.2f}"
            f"{rate['ours'] / rate['hf']:>8.2f}{flops / 1e9:>12.1f}{frac['ours']:>10.1%}{frac['hf']:>9.1%}"
            f"{rate['fast']:>9.2f}{rate['fast'] / rate['hf']:>9.2f}{model_flops(preset, batch, True) / 1e9:>12.1f}"
        )


if __name__ == "__main__":
    main()
