#!/usr/bin/env bash
# Pretraining ViT-L/16 with sharded parameters (recipes/accelerate/fsdp.yaml: FSDP2, one unit per
# transformer block, bf16) and activation checkpointing on every GPU of this machine: 20 steps with a
# checkpoint at 10, a resume that must find the finished run, and the saved encoder loaded whole.
# tests/test_fsdp.py checks the same pieces on CPU processes; this is the part that needs GPUs.
#
#   ./mae.sh exec bash benchmarks/gpu_fsdp.sh [OUT]
#
# Without a CUDA device it says so and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
if ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "benchmarks/gpu_fsdp.sh: no CUDA device on this machine; run it where there is one" >&2
  exit 2
fi
out=${1:-runs/gpu_fsdp}
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
run=("$python" -m accelerate.commands.launch --config_file recipes/accelerate/fsdp.yaml --num_processes "$gpus"
  recipes/ultrasound.py --stage pretrain --preset large --grad-checkpointing --max-steps 20 --checkpoint-every 10
  --batch-size 64 --image-size 224 --phantom-per-class 256 --out "$out")
"${run[@]}" --overwrite
"${run[@]}" --resume | grep "resumed from"  # the finished run is found, not started again
"$python" - "$out" <<'PY'
import sys, torch
from modalities import load_encoder
encoder = load_encoder(f"{sys.argv[1]}/encoder")
print(f"saved encoder: {encoder.cfg.depth} blocks of width {encoder.cfg.dim}, "
      f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.0f} M parameters, loaded whole")
print(f"peak GPU memory of this check: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
PY
