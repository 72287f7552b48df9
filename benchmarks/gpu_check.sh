#!/usr/bin/env bash
# The GPU calibration kit, one shot: `cascade calibrate --gpu-kit` on the first GPU, under a time limit.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [extra cascade calibrate flags, e.g. --model wan2.1-14b]
#
# Needs torch with CUDA; the Wan VAE step needs diffusers (without it the kit runs with --no-vae and says so).
# No network: nothing is downloaded (random weights). Writes OUT_DIR/gpu-profile.json (the profile the
# simulator reads: --cost profile:OUT_DIR/gpu-profile.json), OUT_DIR/gpu-profile.json.report.json,
# OUT_DIR/card.txt (nvidia-smi) and OUT_DIR/kit.log; then the real-geometry generation check
# (benchmarks/bench_generate_real.py: 1.3B at 480x832 in bf16, text conditioning and the Wan VAE, random
# weights) into OUT_DIR/generate-real.log, under GPU_CHECK_GENERATE_LIMIT_S (default 240 s; 0 skips it).
# Exit status is the kit's (124: the time limit), or the generation check's when the kit passed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-check-$(date -u +%Y%m%d-%H%M%S)}"
shift || true
LIMIT_S="${GPU_CHECK_LIMIT_S:-480}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
{ nvidia-smi -L || true; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; } > "$OUT/card.txt" 2>&1
cat "$OUT/card.txt"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device (python: $PY)" >&2
  exit 2
fi
extra=()
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  echo "gpu_check: diffusers is not installed: the Wan VAE is not measured (pip install 'cascade-sched[vae]')" >&2
  extra+=(--no-vae)
fi
set +e
timeout --kill-after=20 "$LIMIT_S" "$PY" -m cascade_sched.cli calibrate --gpu-kit --out "$OUT/gpu-profile.json" \
  "${extra[@]}" "$@" 2>&1 | tee "$OUT/kit.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "gpu_check: stopped at the ${LIMIT_S} s limit; what was measured so far is in $OUT/kit.log" >&2
fi
GEN_LIMIT_S="${GPU_CHECK_GENERATE_LIMIT_S:-240}"
if [ "$rc" -eq 0 ] && [ "$GEN_LIMIT_S" -gt 0 ]; then
  set +e
  timeout --kill-after=20 "$GEN_LIMIT_S" "$PY" benchmarks/bench_generate_real.py --device cuda 2>&1 \
    | tee "$OUT/generate-real.log"
  rc=${PIPESTATUS[0]}
  set -e
fi
exit "$rc"
