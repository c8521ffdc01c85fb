#!/usr/bin/env sh
# srdistill quickstart: the whole job on built-in material, CPU-friendly (2 min 7 s on a quiet 2-core machine).
#   1. distill the bundled DCTLSA x4 teacher into a small Compact student on the built-in photos
#   2. eval teacher vs student vs bicubic on the built-in validation photos, with a comparison picture
#   3. export the student to a verified ONNX file
#   4. upscale a sample image with that ONNX file
# Usage: sh examples/quickstart.sh [OUTPUT_DIR]     (default: ./srdistill-quickstart)
set -eu
OUT="${1:-srdistill-quickstart}"
mkdir -p "$OUT"
TEACHER="$(python -m srdistill.assets teacher)"
VAL="$(python -m srdistill.assets val)"
SAMPLE="$(python -m srdistill.assets sample)"
STEPS="${SRDISTILL_QUICKSTART_STEPS:-1000}"

echo "== 1/4 distill: bundled DCTLSA x4 teacher -> Compact 32 ch / 8 convs ($STEPS steps, built-in photos)"
# the recipe bench/kd_methods.py chose for a student of another family: output distillation,
# alpha 0.5 (a student of the teacher's own family would also start from the teacher: --init auto)
srdistill distill "$TEACHER" --student-arch compact --student-width 32 --student-depth 8 \
  --steps "$STEPS" --batch-size 16 --patch-size 32 --lr 1e-3 --alpha 0.5 --val-every 500 \
  --out "$OUT/student.safetensors" --overwrite

echo "== 2/4 eval: teacher vs student vs bicubic (Y-PSNR/SSIM, params, FLOPs, latency)"
srdistill eval "$TEACHER" "$OUT/student.safetensors" --data "$VAL" \
  --comparison "$OUT/comparison.png" --overwrite

echo "== 3/4 export: verified ONNX"
srdistill export "$OUT/student.safetensors" -o "$OUT/student.onnx" --overwrite

echo "== 4/4 upscale: $(basename "$SAMPLE") with the exported student"
srdistill upscale "$SAMPLE" -m "$OUT/student.onnx" -o "$OUT/" --overwrite

echo
echo "Outputs:"
echo "  student model      $OUT/student.safetensors (loads in spandrel / chaiNNer / ComfyUI)"
echo "  training log       $OUT/student.train.jsonl   resumable checkpoint $OUT/student.ckpt"
echo "  comparison image   $OUT/comparison.png"
echo "  ONNX model         $OUT/student.onnx"
echo "  upscaled sample    $OUT/$(basename "${SAMPLE%.*}")_x4.png"
