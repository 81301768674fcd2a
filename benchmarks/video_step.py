"""Time one video MAE pretraining step (forward, backward, AdamW) of this core with the video
adapter against Hugging Face ``transformers``' ``VideoMAEForPreTraining`` at the same
configuration, and this core's VideoMAE V2 dual masking (``decode="running_cell"``) against its
plain decoder (``decode="hidden"``).

    ./mae.sh exec pip install -e ".[bench]"      # transformers: a benchmark-only extra
    ./mae.sh exec python benchmarks/video_step.py [--models small base] [--batch 2] [--rounds 3]

Configuration (VideoMAE's Kinetics pretraining): 16 frames at 224 x 224, tubelets of 2 x 16 x 16
(8 x 14 x 14 = 1568 tokens), tube masking at 0.9 (176 of the 196 tubes hidden, the same 2-D mask
at all 8 steps: 160 visible tokens, 1408 hidden), ViT-S/16 or ViT-B/16 encoder (MLP ratio 4, qkv
bias), decoder 384 wide, 4 layers, 6 heads, MLP 1536 (VideoMAE's), per-patch normalised targets
(norm_pix_loss), loss on the hidden tokens only. Attention is ``F.scaled_dot_product_attention``
in both: ours always, HF's VideoMAE through ``attn_implementation="sdpa"`` (it declares sdpa
support; the script checks ``model.config._attn_implementation`` and prints it).

HF's model takes the mask as ``bool_masked_pos`` (B, N), the same count hidden in every sample;
it gets a tube mask drawn once per sample (one 2-D mask repeated over the 8 steps), so both see
160 tokens in the encoder and decode 1568. Ours draws its tube mask inside every step, as it
trains. With ``running_cell`` the decoder sees the 160 visible tokens plus half of the hidden ones
(704, on VideoMAE V2's running cell) and predicts those 704: 864 decoder tokens instead of 1568.

The models differ only where VideoMAE's reference code differs from this core's ViT: HF's
attention has no key bias (VideoMAE's ``qv_bias``; a key bias shifts every score of a query by
one constant and cannot change the softmax) and its encoder-to-decoder projection has no bias;
both normalise targets per tubelet and channel (VideoMAE's norm-pix). Both position embeddings
are fixed sin-cos without parameters (HF: a table of the 1568 positions; ours: computed from the
(t, y, x) tubelet indices), so the parameter counts differ exactly by the missing biases; the
script prints both counts and checks that.

All three run interleaved in one process (round-robin, same input, same threads), so machine
noise hits them alike; clips/s is the median over rounds. On a CPU shared with other work, set
``OMP_NUM_THREADS=1``: with more threads than free cores every parallel op waits on a descheduled
thread, which makes steps several times slower and their ratios measures of op counts, not of
work (on a 2-core machine under a load of 5, two threads ran 4x slower than one). Model FLOPs count the matmuls of the
workload (tubelet embedding of every token, encoder on visible tokens, encoder-to-decoder
projection, decoder on visible + predicted tokens, prediction of the predicted tokens only, as
both HF and ours predict hidden tokens only), x3 for forward and backward except the embedding,
x2 (the input needs no gradient); ``torch.utils.flop_counter`` agrees to the FLOP once attention
(4 n^2 d a layer, which it does not count on CPU) is added. The fraction is against this
machine's fp32 matmul throughput measured in the same run.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved, matmul_peak, training_step

from foundations.mae import DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig, hidden_count
from foundations.vit import PRESETS
from modalities import build_adapter

FRAMES, IMAGE, TUBELET, PATCH, RATIO = 16, 224, 2, 16, 0.9
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the video recipe and HF use
DECODER = DecoderConfig(dim=384, depth=4, heads=6)  # VideoMAE's decoder (and HF's default)
STEPS, SIDE = FRAMES // TUBELET, IMAGE // PATCH  # 8 steps of 14 x 14 tubes
TOKENS, TUBES = STEPS * SIDE * SIDE, SIDE * SIDE
HIDDEN = hidden_count(TUBES, RATIO) * STEPS  # 1408 (176 tubes x 8)
VISIBLE = TOKENS - HIDDEN  # 160


def ours(preset: str, decode: str = "hidden") -> torch.nn.Module:
    adapter = build_adapter(
        {
            "name": "video",
            "channels": 3,
            "patch": [TUBELET, PATCH, PATCH],
            "mean": list(MEAN),
            "std": list(STD),
            "size": [FRAMES, IMAGE, IMAGE],
        },
        PRESETS[preset].dim,
    )
    mask = MaskConfig("tube", RATIO, tube_axis=0, decode=decode)
    return MaskedAutoencoder(adapter, MAEConfig(PRESETS[preset], DECODER, mask, norm_target=True))


def theirs(preset: str) -> torch.nn.Module:
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    enc = PRESETS[preset]
    cfg = VideoMAEConfig(
        image_size=IMAGE,
        patch_size=PATCH,
        num_channels=3,
        num_frames=FRAMES,
        tubelet_size=TUBELET,
        hidden_size=enc.dim,
        num_hidden_layers=enc.depth,
        num_attention_heads=enc.heads,
        intermediate_size=int(enc.mlp_ratio * enc.dim),
        qv_bias=True,
        use_mean_pooling=False,  # keeps the encoder's final LayerNorm, as VideoMAE's pretraining encoder and ours
        decoder_hidden_size=DECODER.dim,
        decoder_num_hidden_layers=DECODER.depth,
        decoder_num_attention_heads=DECODER.heads,
        decoder_intermediate_size=int(DECODER.mlp_ratio * DECODER.dim),
        norm_pix_loss=True,
        attn_implementation="sdpa",
    )
    return VideoMAEForPreTraining(cfg)


def tube_mask(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, N) bool, True = hidden: per sample the same random 2-D mask at every time step, in HF's
    (and our adapter's) token order (t, y, x)."""
    scores = torch.rand(batch, TUBES, generator=generator)
    hide = torch.zeros(batch, TUBES, dtype=torch.bool)
    hide.scatter_(1, scores.argsort(1)[:, : HIDDEN // STEPS], True)
    return hide.repeat(1, STEPS)  # (B, STEPS * TUBES)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_flops(preset: str, batch: int, predicted: int) -> float:
    """Matmul FLOPs of one training step (x3 = forward + backward) with ``predicted`` tokens
    reconstructed (all hidden ones: 1408; running cell: 704)."""
    enc, dec = PRESETS[preset], DECODER

    def layers(tokens, dim, depth):  # qkv + proj + mlp = 24 n d^2, attention scores and mix = 4 n^2 d
        return depth * (24 * tokens * dim**2 + 4 * tokens**2 * dim)

    tubelet = TUBELET * PATCH * PATCH * 3
    embed = 2 * TOKENS * tubelet * enc.dim  # tubelet embedding of every token, hidden ones too
    rest = (
        layers(VISIBLE, enc.dim, enc.depth)
        + 2 * VISIBLE * enc.dim * dec.dim
        + layers(VISIBLE + predicted, dec.dim, dec.depth)
        + 2 * predicted * dec.dim * tubelet
    )
    return (2 * embed + 3 * rest) * batch  # the embedding's backward has no input gradient to compute


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small", "base"], choices=["small", "base"])
    p.add_argument("--batch", type=int, nargs="+", default=[2], help="clips per step: one value, or one per model")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; one step of each per round")
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    if len(args.batch) not in (1, len(args.models)):
        p.error("--batch takes one value or one per model")
    batches = args.batch * len(args.models) if len(args.batch) == 1 else args.batch
    torch.manual_seed(0)
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(
        f"{TOKENS} tokens ({STEPS} x {SIDE} x {SIDE}), {VISIBLE} visible, {HIDDEN} hidden; "
        f"running cell reconstructs {HIDDEN // 2}"
    )
    rows = []
    for preset, batch in zip(args.models, batches, strict=True):
        gen = torch.Generator().manual_seed(0)
        clips = torch.rand(batch, 3, FRAMES, IMAGE, IMAGE, generator=gen)  # ours: (B, C, T, H, W) in [0, 1]
        frames = ((clips - torch.tensor(MEAN).view(3, 1, 1, 1)) / torch.tensor(STD).view(3, 1, 1, 1)).transpose(1, 2)
        frames = frames.contiguous()  # HF: (B, T, C, H, W), ImageNet-normalised (it un-normalises for targets)
        mask = tube_mask(batch, gen)
        models = {
            "ours": ours(preset).train(),
            "hf": theirs(preset).train(),
            "rc": ours(preset, "running_cell").train(),
        }
        attn = models["hf"].config._attn_implementation
        ours_n, hf_n = count(models["ours"]), count(models["hf"])
        enc = PRESETS[preset]
        # HF lacks the key biases of every layer and the bias of the encoder-to-decoder projection
        missing = enc.depth * enc.dim + DECODER.depth * DECODER.dim + DECODER.dim
        print(
            f"ViT-{preset[0].upper()}: parameters ours {ours_n:,}, HF {hf_n:,}: {ours_n - hf_n:,} more in ours "
            f"({'=' if ours_n - hf_n == missing else '!='} {missing:,} key and projection biases); "
            f"HF attention {attn}"
        )
        steps = {
            "ours": training_step(models["ours"], lambda m=models["ours"], x=clips: m(x).loss),
            "hf": training_step(
                models["hf"], lambda m=models["hf"], x=frames, k=mask: m(pixel_values=x, bool_masked_pos=k).loss
            ),
            "rc": training_step(models["rc"], lambda m=models["rc"], x=clips: m(x).loss),
        }
        seconds = interleaved(steps, args.rounds, args.warmup)
        flops = {"ours": model_flops(preset, batch, HIDDEN), "rc": model_flops(preset, batch, HIDDEN // 2)}
        flops["hf"] = flops["ours"]
        rate = {k: batch / s for k, s in seconds.items()}
        frac = {k: flops[k] / s / peak for k, s in seconds.items()}
        rows.append((preset, batch, rate, flops, frac))
        del models, steps

    print(
        f"{'model':<7}{'batch':>6}{'ours/s':>9}{'HF/s':>9}{'ours/HF':>9}{'rc/s':>9}{'rc gain':>9}"
        f"{'GFLOP':>8}{'rc GFLOP':>10}{'ours %pk':>10}{'HF %pk':>8}{'rc %pk':>8}"
    )
    for preset, batch, rate, flops, frac in rows:
        print(
            f"ViT-{preset[0].upper():<3}{batch:>6}{rate['ours']:>9.3f}{rate['hf']:>9.3f}"
            f"{rate['ours'] / rate['hf']:>9.2f}{rate['rc']:>9.3f}{rate['rc'] / rate['ours']:>9.2f}"
            f"{flops['ours'] / 1e9:>8.0f}{flops['rc'] / 1e9:>10.0f}"
            f"{frac['ours']:>10.1%}{frac['hf']:>8.1%}{frac['rc']:>8.1%}"
        )
    print("clips/s per step (forward, backward, AdamW); rc = ours with decode='running_cell', gain = rc/s / ours/s")


if __name__ == "__main__":
    main()
