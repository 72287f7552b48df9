#!/usr/bin/env bash
# The wheels the GPU kit needs that the GPU machine's image lacks, fetched where the package index is reachable,
# for CPython 3.12 on manylinux x86_64 (the image's Python), into an ignored folder the kit installs from with
# `pip install --no-index` (benchmarks/gpu_check.sh; docs/validation.md, "Running the kit on a lent GPU").
#
#   benchmarks/gpu_wheels.sh [DIR]          # default gpu-wheels/ (git-ignored); PYTHON=... picks the pip
#
# What the kit imports that the image lacks (its package list: numpy, networkx, matplotlib, safetensors 0.8,
# tqdm, imageio, pyyaml, huggingface-hub 1.33, transformers, filelock, regex, requests, pillow, packaging, zipp,
# psutil, prometheus-client are there; simpy and diffusers are not):
#   simpy      the simulator (every prediction the kit prints);            no dependencies
#   diffusers  the Wan VAE (AutoencoderKLWan, steps 3 and 4);              its dependencies are in the image,
#              except importlib_metadata, which it imports only on Python < 3.8: not carried.
# Pinned to the versions the rehearsal ran with (diffusers 0.42.1 wants huggingface-hub >= 1.32 and
# safetensors >= 0.8: the image's). Both are pure Python (py3-none-any), so the same folder installs here too.
# Writes DIR/*.whl, DIR/requirements.txt (what was fetched) and DIR/SHA256SUMS; prints the folder's size, which
# must stay under the device tool's 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-gpu-wheels}"
PY="${PYTHON:-python3}"
WHEELS=(simpy==4.1.2 diffusers==0.42.1)
LIMIT_MIB=64

rm -rf "$DIR"
mkdir -p "$DIR"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DIR" "${WHEELS[@]}"
printf '%s\n' "${WHEELS[@]}" > "$DIR/requirements.txt"
(cd "$DIR" && sha256sum ./*.whl > SHA256SUMS)
count=$(find "$DIR" -name '*.whl' | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: expected ${#WHEELS[@]} wheels in $DIR, found $count" >&2
  exit 1
fi
bytes=$(du -sb "$DIR" | cut -f1)
ls -l "$DIR"
echo "gpu_wheels: $count wheels, $((bytes / 1024)) KiB in $DIR (the device tool carries at most ${LIMIT_MIB} MiB in all)"
if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "gpu_wheels: $DIR is larger than the ${LIMIT_MIB} MiB the device tool carries" >&2
  exit 1
fi
