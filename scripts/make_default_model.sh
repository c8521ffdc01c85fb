#!/usr/bin/env bash
# Reproduces srdistill's bundled default x4 model (src/srdistill/assets/models/default_x4.*).
# Needs the real teacher and training images: SHARED points at a folder holding
#   weights/DCTLSA_x4.pt (zengkun301/DCTLSA pretrained/X4.pt) and data/train/{T91,BSD200,General100}.
# The exact command is also stored in the model's metadata (srdistill.config.command).
# The shipped weights came from a CPU run (2 cores) that trained steps 1-1701 under an 8,000-step
# cosine schedule, was stopped with SIGTERM and resumed with --steps 4000 (the LR-image rounding
# also changed to MATLAB's uint8 behaviour in between), so expect the same quality within a few
# hundredths of a dB rather than bit-identical weights. On a GPU, raise STEPS.
set -euo pipefail
SHARED="${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}"
STEPS="${STEPS:-4000}"
OUT="${OUT:-default_x4.safetensors}"
srdistill distill "$SHARED/weights/DCTLSA_x4.pt" \
  --student-arch compact --student-width 32 --student-depth 8 \
  --data "$SHARED/data/train" --val "$(python -m srdistill.assets val)" \
  --steps "$STEPS" --batch-size 16 --patch-size 32 --lr 1e-3 --alpha 0.5 \
  --val-every 1000 --checkpoint-every 250 --seed 0 --teacher-cache-dir "${CACHE:-teacher-cache}" \
  -o "$OUT" "$@"
srdistill export "$OUT" -o "${OUT%.safetensors}.onnx" --overwrite
