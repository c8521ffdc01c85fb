#!/usr/bin/env bash
# Reproduces srdistill's bundled default x4 model (src/srdistill/assets/models/default_x4.*).
# Needs the real teacher, training images and benchmark sets: SHARED points at a folder holding
#   weights/DCTLSA_x4.pt (zengkun301/DCTLSA pretrained/X4.pt), data/train/{T91,BSD200,General100}
#   and data/Set5/HR, data/Set14/HR (only scored, never trained on).
# The recipe is the one bench/kd_methods.py chose for a cross-family student: output distillation,
# alpha 0.5 constant (ECO and data upcycling did not beat it; teacher init needs the teacher's family).
# The shipped weights came from one uninterrupted CPU run of this script (STEPS=12000, --threads 1,
# 2-core machine, no GPU) with the teacher cache reused from the KD study; on a GPU, raise STEPS.
# The exact command is also stored in the model's metadata (srdistill.config.command).
set -euo pipefail
SHARED="${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}"
STEPS="${STEPS:-12000}"
PATCH="${PATCH:-32}"  # LR patch
# REPARAM=1: distill --reparam (bench/reparam.py: +0.3 dB Set5 at 2,000 steps); the shipped weights
# predate it, so the default reproduces them
REPARAM_FLAG=""; [ "${REPARAM:-0}" = 1 ] && REPARAM_FLAG="--reparam"
OUT="${OUT:-default_x4.safetensors}"
srdistill distill "$SHARED/weights/DCTLSA_x4.pt" \
  --student-arch compact --student-width 32 --student-depth 8 \
  --data "$SHARED/data/train" --val "$(python -m srdistill.assets val)" \
  --steps "$STEPS" --batch-size 16 --patch-size "$PATCH" --lr 1e-3 --alpha 0.5 $REPARAM_FLAG \
  --val-every 1000 --checkpoint-every 250 --seed 0 --teacher-cache-dir "${CACHE:-teacher-cache}" \
  -o "$OUT" "$@"
# the model card's numbers: scored the way papers score, stored in the file's metadata
srdistill eval "$SHARED/weights/DCTLSA_x4.pt" "$OUT" --data "$SHARED/data/Set5/HR" \
  --data "$SHARED/data/Set14/HR" --no-bench --json > "${OUT%.safetensors}.eval.json"
python "$(dirname "$0")/stamp_benchmarks.py" "$OUT" "${OUT%.safetensors}.eval.json"
srdistill export "$OUT" -o "${OUT%.safetensors}.onnx" --overwrite
