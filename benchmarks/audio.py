"""Audio figures, measured in one run on this machine.

1. Filterbank throughput: AudioMAE's kaldi fbank (128 mel bins, 10 ms shift) of 10 s clips at
   16 kHz, clips/s on one core (torch threads = 1), as data-loading workers compute it.
2. One pretraining step (forward, backward, AdamW) at AudioMAE's ViT-B configuration: 1024 x 128
   input, 16x16 patches (512 tokens), mask 0.8, decoder 512 x 8; samples/s with all cores.
3. Their ratio: how many cores of fbank workers keep one step's device busy (below 1: a single
   worker is enough; features are cached in memory when a dataset fits, as the recipe does).

    ./mae.sh exec python benchmarks/audio.py [--batch 4] [--rounds 3]
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved, training_step

from foundations.grid import GridConfig
from foundations.mae import DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import MaskConfig
from foundations.vit import PRESETS
from modalities.audio.adapter import AudioAdapter
from modalities.audio.io import fbank


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    waves = [torch.randn(160_000) * 0.1 for _ in range(8)]
    per_clip = interleaved({"fbank": lambda: [fbank(w, 16000) for w in waves]}, args.rounds)["fbank"] / len(waves)
    torch.set_num_threads(threads)

    adapter = AudioAdapter(GridConfig(1, (16, 16), (1024, 128), (-4.27,), (4.57,)), PRESETS["base"].dim)
    cfg = MAEConfig(PRESETS["base"], DecoderConfig(512, 8, 16), MaskConfig("random", 0.8), norm_target=False)
    mae = MaskedAutoencoder(adapter, cfg)
    x = torch.randn(args.batch, 1, 1024, 128)
    step = interleaved({"step": training_step(mae, lambda: mae(x).loss)}, args.rounds)["step"]

    fbank_rate, step_rate = 1 / per_clip, args.batch / step
    print(f"fbank, 10 s clips at 16 kHz, one core:      {fbank_rate:8.1f} clips/s ({1000 * per_clip:.1f} ms per clip)")
    print(
        f"pretraining step, ViT-B, 1024x128, mask 0.8: {step_rate:8.2f} samples/s "
        f"({threads} threads, batch {args.batch})"
    )
    print(f"fbank cores needed to feed the step:         {step_rate / fbank_rate:8.3f}")


if __name__ == "__main__":
    main()
