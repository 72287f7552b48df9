#!/usr/bin/env bash
# The GPU kit in one command, for a GPU machine lent for minutes with no network (docs/validation.md, "Running
# the kit on a lent GPU"): `cascade calibrate --gpu-kit` under a time budget, then its table.
#
#   benchmarks/gpu_check.sh [OUT] [--budget-s SECONDS] [--rehearse] [--wheels DIR] [kit flags ...]
#
#   OUT          the folder written (default gpu-check-DATE): gpu-report.json (rewritten after every step),
#                gpu-profile.json (the profile the simulator reads: --cost profile:OUT/gpu-profile.json),
#                gpu-table.md (`cascade validate --gpu-report`), kit.log, card.txt, wheels.log: six files, so
#                the device tool brings them all back from $OUT
#   --budget-s   seconds the kit may take (default 540): a step that would not fit is skipped, one that runs
#                out is cut; the kit is stopped 50 s past it whatever happens
#   --rehearse   every step on the CPU at tiny geometries, one repeat (what the test suite runs)
#   --wheels     the wheels benchmarks/gpu_wheels.sh fetched (default gpu-wheels/, or $GPU_WHEELS): installed
#                with `pip install --no-index` into a temporary folder put first on PYTHONPATH; without any, the
#                packages installed are used
#   kit flags    passed on to `cascade calibrate --gpu-kit`, e.g. --steps 1-3 (see its --help)
#
# The project is not installed: it runs from this folder on PYTHONPATH (`python -m apps.cli`), with PYTHON or
# .venv/bin/python or python3. Exit status: the kit's (1: a step failed; 124/137: stopped at the limit), or 2
# for bad arguments or a machine that cannot run it, said in one line.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
die() { echo "gpu_check: $*" >&2; exit 2; }

OUT=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT="$1"; shift; fi
BUDGET=540
REHEARSE=0
WHEELS="${GPU_WHEELS:-gpu-wheels}"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-s) [ $# -ge 2 ] || die "--budget-s needs a number of seconds"; BUDGET="$2"; shift 2 ;;
    --budget-s=*) BUDGET="${1#*=}"; shift ;;
    --rehearse) REHEARSE=1; shift ;;
    --wheels) [ $# -ge 2 ] || die "--wheels needs a folder"; WHEELS="$2"; shift 2 ;;
    --wheels=*) WHEELS="${1#*=}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
[[ "$BUDGET" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk "BEGIN{exit !($BUDGET > 0)}" \
  || die "--budget-s must be a positive number of seconds, got '$BUDGET'"
OUT="${OUT:-gpu-check-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" || die "cannot create the output folder '$OUT'"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || die "no Python at '$PY' (set PYTHON)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
{ nvidia-smi -L && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$OUT/card.txt" 2>&1 \
  || echo "no nvidia-smi here" > "$OUT/card.txt"

# The carried wheels: installed without the index into OUT/site, which goes first on PYTHONPATH.
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
SITE="$(mktemp -d)/site"
trap 'rm -rf "$(dirname "$SITE")"' EXIT
if [ ${#wheels[@]} -gt 0 ]; then
  "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --find-links "$WHEELS" --target "$SITE" "${wheels[@]}" > "$OUT/wheels.log" 2>&1 \
    || die "installing the wheels of '$WHEELS' without the index failed: see $OUT/wheels.log"
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  CASCADE_GPU_WHEELS="$(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')installed with --no-index from $WHEELS"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  CASCADE_GPU_WHEELS="none: no wheels in $WHEELS, the packages already installed"
  echo "no wheels in $WHEELS" > "$OUT/wheels.log"
fi
export CASCADE_GPU_WHEELS
echo "gpu_check: $CASCADE_GPU_WHEELS"
"$PY" -c "import torch, simpy" 2>/dev/null \
  || die "torch and simpy must import with $PY; simpy is not in the GPU image: run benchmarks/gpu_wheels.sh where the index is reachable and pass its folder (--wheels)"
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  echo "gpu_check: diffusers does not import: the Wan VAE is not measured (carry its wheel: benchmarks/gpu_wheels.sh)" >&2
  extra=(--no-vae "${extra[@]}")
fi
kit=(calibrate --gpu-kit --out "$OUT/gpu-profile.json" --report "$OUT/gpu-report.json" --budget-s "$BUDGET")
if [ "$REHEARSE" = 1 ]; then
  kit+=(--rehearse)
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  die "torch sees no CUDA device ($PY); --rehearse runs every step on the CPU instead"
fi
LIMIT=$(awk "BEGIN{print int($BUDGET + 50)}")
set +e
timeout --kill-after=15 "$LIMIT" "$PY" -m apps.cli "${kit[@]}" "${extra[@]}" 2>&1 | tee "$OUT/kit.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "gpu_check: the kit ran past ${LIMIT} s and was stopped; $OUT/gpu-report.json holds every finished step" >&2
fi
if [ -s "$OUT/gpu-report.json" ]; then
  "$PY" -m apps.cli validate --gpu-report "$OUT/gpu-report.json" > "$OUT/gpu-table.md" \
    && echo "gpu_check: wrote $OUT/gpu-table.md"
fi
exit "$rc"
