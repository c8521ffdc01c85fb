#!/usr/bin/env bash
# The GPU check (issue 22, part 5): under 5 minutes on one NVIDIA GPU, unchanged on any machine with one.
#
#   scripts/device_check.sh            run it (needs CUDA); writes bench/results/gpu.json
#   scripts/device_check.sh --dry-run  print every command and check that each srdistill command line
#                                      parses (options, values, types) -- no GPU, nothing is run
#
# It distills the bundled DCTLSA teacher into a Compact 32/8 student on CUDA (AMP and channels-last are
# distill's defaults on CUDA; the teacher cache is built by the teacher on the GPU) for STEPS steps,
# times the step against a student-only step (--alpha 0: no teacher term), evals, exports (fp32 and
# fp16 ONNX), and upscales a 480x270 image to 1080p with torch, onnxruntime's CUDA provider and
# TensorRT's (each where installed), plus model-only timings of the same. Environment: STEPS (300),
# PYTHON (python), DEVICE_CHECK_OUT (a temporary folder). A wheels/ folder (e.g. the spandrel wheel)
# is installed first with pip, offline.
set -euo pipefail

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
STEPS="${STEPS:-300}"
if [ -n "${DEVICE_CHECK_OUT:-}" ]; then OUT="$DEVICE_CHECK_OUT"; mkdir -p "$OUT"
else OUT="$(mktemp -d -t srdistill-gpu.XXXXXX)"; [ "$DRY" = 1 ] && trap 'rm -rf "$OUT"' EXIT; fi
FAILED=0
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # runs from the checkout, installed or not
export PYTHONUNBUFFERED=1
T0=$(date +%s)
CHECKS="$OUT/commands.txt"
: > "$CHECKS"

say() { echo "== $*" >&2; }

# wheels carried with the checkout (the machine may have no network): install them offline
if compgen -G "wheels/*.whl" > /dev/null; then
  if [ "$DRY" = 1 ]; then
    echo "+ $PY -m pip install --no-index --find-links wheels wheels/*.whl"
  else
    "$PY" -m pip install -q --no-index --find-links wheels wheels/*.whl \
      || "$PY" -m pip install -q --no-deps wheels/*.whl
  fi
fi

# srdistill NAME ARGS...: run `srdistill ARGS` with its --json document saved to $OUT/NAME.json
# (in a dry run: print it and keep it for the parse check)
srd() {
  local name="$1"; shift
  echo "+ srdistill $*"
  if [ "$DRY" = 1 ]; then
    printf '%s\0' "$@" >> "$CHECKS"; printf '\n' >> "$CHECKS"
    return 0
  fi
  local t0 rc=0
  t0=$(date +%s%N)
  "$PY" -m srdistill "$@" > "$OUT/$name.json" || rc=$?
  echo "{\"seconds\": $(( ($(date +%s%N) - t0) / 1000000 ))e-3, \"exit_code\": $rc}" > "$OUT/$name.wall.json"
  if [ "$rc" != 0 ]; then say "FAILED ($rc): srdistill $1"; FAILED=1; fi
  return 0
}

# python NAME FILE: run a Python step written below (in a dry run: check that it compiles)
pystep() {
  local name="$1" file="$2"
  echo "+ $PY $file  # $name"
  if [ "$DRY" = 1 ]; then
    "$PY" -c "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')" "$file"
  else
    "$PY" "$file" "$OUT" || { say "FAILED: $name"; FAILED=1; }
  fi
}

has() {  # has PROVIDER: onnxruntime has that execution provider here
  [ "$DRY" = 1 ] && return 0
  "$PY" -c "import onnxruntime as o, sys; sys.exit('$1' not in o.get_available_providers())" 2>/dev/null
}

if [ "$DRY" = 0 ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/nvidia_smi.txt" || true
fi

TEACHER="$("$PY" -m srdistill.assets teacher)"
VAL="$("$PY" -m srdistill.assets val)"
SAMPLE="$("$PY" -m srdistill.assets sample)"
# the name of the runtime option: --runtime once the runtime layer is in, --backend before
if "$PY" -m srdistill upscale --help 2>/dev/null | grep -q -- "--runtime"; then RT=--runtime; ONNX_RT=onnxruntime
else RT=--backend; ONNX_RT=onnx; fi

common=(-a compact -w 32 -d 8 --steps "$STEPS" -b 16 -p 32 --device cuda --precision auto
        --val-every "$STEPS" --checkpoint-every "$STEPS" --overwrite --json --quiet)
say "distill on CUDA: output KD with the teacher cache, then student only"
srd distill_kd distill "$TEACHER" "${common[@]}" -o "$OUT/kd.safetensors"
srd distill_student_only distill "$TEACHER" "${common[@]}" --alpha 0 -o "$OUT/scratch.safetensors"

say "eval, export"
srd eval eval "$TEACHER" "$OUT/kd.safetensors" --data "$VAL" --device cuda --repeats 5 --json --quiet
srd export_fp32 export "$OUT/kd.safetensors" -o "$OUT/kd.onnx" --overwrite --json --quiet
srd export_fp16 export "$OUT/kd.safetensors" -o "$OUT/kd.fp16.onnx" --fp16 --overwrite --json --quiet

cat > "$OUT/make_input.py" <<'PYEOF'
import sys
from pathlib import Path
from PIL import Image
src, out = sys.argv[2], Path(sys.argv[1]) / "in"
out.mkdir(exist_ok=True)
Image.open(src).convert("RGB").resize((480, 270), Image.BICUBIC).save(out / "frame.png")
PYEOF
if [ "$DRY" = 1 ]; then pystep make_input "$OUT/make_input.py"; else
  echo "+ $PY make_input.py"; "$PY" "$OUT/make_input.py" "$OUT" "$SAMPLE"; fi

say "upscale 480x270 -> 1080p"
srd upscale_torch upscale "$OUT/in/frame.png" -m "$OUT/kd.safetensors" --device cuda "$RT" torch \
  -o "$OUT/up_torch.png" --tile 0 --overwrite --json
if has CUDAExecutionProvider; then
  srd upscale_onnxruntime_cuda upscale "$OUT/in/frame.png" -m "$OUT/kd.onnx" --device cuda "$RT" "$ONNX_RT" \
    -o "$OUT/up_ort.png" --tile 0 --overwrite --json
else say "onnxruntime has no CUDA provider here (onnxruntime-gpu not installed): skipped"; fi

cat > "$OUT/model_timing.py" <<'PYEOF'
"""Model-only 480x270 -> 1080p: torch fp32 / fp16 channels-last, onnxruntime CUDA, TensorRT EP."""
import json, statistics, sys, time
from pathlib import Path
import numpy as np
import torch
out = Path(sys.argv[1])
res = {}

def timed(fn, sync=lambda: None, n=20):
    for _ in range(3):
        fn()
    sync()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    return {"ms_median": round(1e3 * med, 3), "ms_min": round(1e3 * min(ts), 3),
            "output_mp_per_s": round(1920 * 1080 / 1e6 / med, 2)}

from srdistill.models.loading import load_model
m = load_model(out / "kd.safetensors").module.eval().cuda()
x = torch.rand(1, 3, 270, 480, device="cuda")
with torch.no_grad():
    res["torch fp32"] = timed(lambda: m(x), torch.cuda.synchronize)
    mh = m.half().to(memory_format=torch.channels_last)
    xh = x.half().to(memory_format=torch.channels_last)
    res["torch fp16 channels_last"] = timed(lambda: mh(xh), torch.cuda.synchronize)
try:
    import onnxruntime as ort
    xn = np.random.rand(1, 3, 270, 480).astype(np.float32)
    for label, prov in (("onnxruntime CUDA", "CUDAExecutionProvider"), ("TensorRT EP", "TensorrtExecutionProvider")):
        if prov not in ort.get_available_providers():
            res[label] = "not installed"
            continue
        try:
            opts = {"trt_fp16_enable": True} if prov.startswith("Tensorrt") else {}
            s = ort.InferenceSession(str(out / "kd.onnx"), providers=[(prov, opts), "CPUExecutionProvider"])
            t0 = time.perf_counter(); s.run(None, {"input": xn}); first = time.perf_counter() - t0
            res[label] = {**timed(lambda: s.run(None, {"input": xn})), "first_run_s": round(first, 2),
                          "providers": s.get_providers()}
        except Exception as e:  # recorded: the check goes on
            res[label] = f"failed: {str(e).splitlines()[0][:200]}"
except ImportError:
    res["onnxruntime"] = "not installed"
(out / "model_timing.json").write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=2))
PYEOF
say "model-only timings"
pystep model_timing "$OUT/model_timing.py"

cat > "$OUT/collect.py" <<'PYEOF'
"""Gather the steps' JSON documents into bench/results/gpu.json."""
import datetime, json, platform, sys
from pathlib import Path
out, dest, total = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

def load(name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):  # the step did not run, or failed before its JSON
        return None

kd, so = load("distill_kd"), load("distill_student_only")
doc = {"benchmark": "gpu", "date": datetime.date.today().isoformat(), "python": platform.python_version(),
       "nvidia_smi": (out / "nvidia_smi.txt").read_text().strip() if (out / "nvidia_smi.txt").exists() else None,
       "total_seconds": round(total, 1)}
try:
    import torch, onnxruntime
    doc.update(torch=torch.__version__, cuda=torch.version.cuda, onnxruntime=onnxruntime.__version__,
               onnxruntime_providers=onnxruntime.get_available_providers(),
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except ImportError:
    pass
if kd and so:
    doc["distill"] = {k: {"steps": d["steps"], "steps_per_second": d["steps_per_second"], "seconds": d["seconds"],
                          "device": d["device"], "precision": d["precision"], "teacher_cache": d.get("teacher_cache"),
                          "best": d.get("best")} for k, d in (("output_kd_cached", kd), ("student_only", so))}
    doc["distill"]["step_time_ratio_cached_over_student_only"] = round(
        so["steps_per_second"] / kd["steps_per_second"], 3)
doc["eval"], doc["export_fp32"], doc["export_fp16"] = load("eval"), load("export_fp32"), load("export_fp16")
doc["upscale"] = {k: load(k) for k in ("upscale_torch", "upscale_onnxruntime_cuda") if load(k)}
doc["model_only"] = load("model_timing")
doc["steps"] = {p.name[:-10]: json.loads(p.read_text()) for p in sorted(out.glob("*.wall.json"))}
dest.parent.mkdir(parents=True, exist_ok=True)
dest.write_text(json.dumps(doc, indent=2, default=str) + "\n")
print(f"wrote {dest}")
PYEOF

if [ "$DRY" = 1 ]; then
  pystep collect "$OUT/collect.py"
  # every srdistill command line above, parsed by the CLI itself (options, values and their types)
  "$PY" - "$CHECKS" <<'PYEOF'
import sys
import typer
from srdistill.cli import app
grp = typer.main.get_command(app)
lines = [ln for ln in open(sys.argv[1], "rb").read().split(b"\n") if ln]
bad = 0
for ln in lines:
    args = [a.decode() for a in ln.split(b"\0") if a]
    ctx0 = grp.make_context("srdistill", [args[0], "--help"], resilient_parsing=True)
    cmd = grp.get_command(ctx0, args[0])
    try:
        if cmd is None:
            raise ValueError(f"no such command {args[0]!r}")
        cmd.make_context(args[0], args[1:], parent=ctx0)
    except Exception as e:
        bad += 1
        print(f"does not parse: srdistill {' '.join(args)}\n  {type(e).__name__}: {e}", file=sys.stderr)
print(f"dry run: {len(lines) - bad} of {len(lines)} srdistill commands parse")
sys.exit(1 if bad else 0)
PYEOF
  exit $?
fi

echo "+ $PY collect.py"
"$PY" "$OUT/collect.py" "$OUT" "$ROOT/bench/results/gpu.json" "$(( $(date +%s) - T0 ))"
say "done in $(( $(date +%s) - T0 )) s; outputs in $OUT"
exit "$FAILED"
