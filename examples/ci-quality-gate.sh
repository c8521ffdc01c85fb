#!/usr/bin/env bash
# How a CI job uses srdistill: distill, gate on quality, export. Every step's exit code is checked;
# results are read from --json with python (jq works the same way).
#   exit codes: 0 ok, 1 failure, 2 bad usage, 3 quality gate not met
# Usage: TEACHER=teacher.safetensors DATA=DIV2K/HR VAL=Set5/HR MIN_PSNR=30.0 bash examples/ci-quality-gate.sh
set -uo pipefail
TEACHER="${TEACHER:-$(python -m srdistill.assets teacher)}"
DATA="${DATA:-$(python -m srdistill.assets train)}"
VAL="${VAL:-$(python -m srdistill.assets val)}"
MIN_PSNR="${MIN_PSNR:-29.5}"  # bicubic scores 29.34 dB on the built-in val photos
STEPS="${STEPS:-1000}"
OUT="${OUT:-ci-out}"
mkdir -p "$OUT"

srdistill distill "$TEACHER" --student-arch compact --student-width 32 --student-depth 8 --data "$DATA" \
  --steps "$STEPS" --batch-size 16 --out "$OUT/student.safetensors" --overwrite --json > "$OUT/distill.json"
rc=$?
if [ $rc -ne 0 ]; then echo "distill failed (exit $rc)" >&2; exit $rc; fi
python -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"distilled {d['student']['params']:,} params, {d['compression_ratio']:.1f}x smaller than the teacher\")" "$OUT/distill.json"

srdistill eval "$TEACHER" "$OUT/student.safetensors" --data "$VAL" --fail-under-psnr "$MIN_PSNR" --json > "$OUT/eval.json"
rc=$?
if [ $rc -eq 3 ]; then echo "quality gate: student PSNR below $MIN_PSNR dB" >&2; exit 3; fi
if [ $rc -ne 0 ]; then echo "eval failed (exit $rc)" >&2; exit $rc; fi

srdistill export "$OUT/student.safetensors" -o "$OUT/student.onnx" --overwrite --json > "$OUT/export.json"
rc=$?
if [ $rc -ne 0 ]; then echo "export failed (exit $rc)" >&2; exit $rc; fi
python -c "import json,sys; d=json.load(open(sys.argv[1])); print('export verified:', all(v['ok'] for v in d['verification']))" "$OUT/export.json"
echo "quality gate passed"
