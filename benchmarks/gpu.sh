#!/usr/bin/env bash
# A ViT-B/16 MAE pretraining step on a GPU in bf16 autocast (SDPA picks flash attention there),
# against transformers' ViTMAEForPreTraining, with model FLOPs utilisation ("ours %pk") against the
# device's bf16 peak: measured, or given (H100/H200 SXM dense bf16: --peak-tflops 989).
#
#   ./mae.sh exec bash benchmarks/gpu.sh [--batch 64] [--rounds 10] [--peak-tflops 989]
#
# Goal (issue 16): at least 40 % on an H100-class device. Without a CUDA device it says so and
# exits 2; everything after the script's name goes to benchmarks/pretrain_step.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
if ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "benchmarks/gpu.sh: no CUDA device on this machine; run it where there is one" >&2
  exit 2
fi
exec "$python" benchmarks/pretrain_step.py --device cuda --precision bf16 --models base --batch 64 --rounds 10 "$@"
