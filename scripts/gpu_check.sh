#!/usr/bin/env bash
# The GPU check (benchmarks/gpu.py) on a bare GPU machine: Python 3.12 and torch only, no network.
#
#   scripts/gpu_check.sh prepare   here, with network: fills .gpu_carry/ (git-ignored, ≤ 64 MiB) with
#                                  what the GPU machine lacks: ComfyUI v0.31.0's `comfy` package (the
#                                  .py files of the sha256-pinned release archive) and cp312 wheels
#   scripts/gpu_check.sh [run]     on the GPU machine, from the pack's folder: puts the carried wheels
#                                  that are not importable there on PYTHONPATH, unpacks ComfyUI, runs
#                                  `python -m benchmarks.gpu` and writes the table to $OUT (or .)
#
# Carried wheels (cp312, manylinux x86_64): numpy, Pillow (comfy.utils imports it), psutil,
# safetensors, einops, packaging, comfy-aimdo, and comfy-kitchen repacked as .tar.xz without its ROCm
# library (its CUDA kernels stay: ComfyUI's RoPE runs through them). ≈ 46 MiB in all. Not carried:
# scipy (35 MB; the renderer's closed-mesh check: without it back faces are not skipped, and the
# table says so).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${GPU_CARRY:-.gpu_carry}
PY=${PYTHON:-python3}
V031_SHA256=${V031_SHA256:-$(sed -n 's/^V031_SHA256=\([0-9a-f]*\).*/\1/p' scripts/setup.sh | head -1)}
WHEELS="numpy==2.4.6 pillow==13.0.0 tqdm psutil==7.2.2 safetensors==0.8.0 einops==0.8.2 packaging==26.4 comfy-aimdo==0.4.13
  comfy-kitchen==0.2.28"

prepare() {
  local tarball=${COMFYUI_V031_TARBALL:-../shared/comfyui/ComfyUI-v0.31.0.tar.gz}
  [ -f "$tarball" ] || { echo "no ComfyUI v0.31.0 archive: set COMFYUI_V031_TARBALL" >&2; exit 1; }
  if [ -n "$V031_SHA256" ]; then
    echo "$V031_SHA256  $tarball" | sha256sum -c --quiet - || { echo "sha256 mismatch: $tarball" >&2; exit 1; }
  fi
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/tmp"
  tar xzf "$tarball" -C "$CARRY/tmp"
  local top
  top=$(find "$CARRY/tmp" -mindepth 1 -maxdepth 1 -type d | head -1)
  (cd "$top" && find comfy -name '*.py' -print0 | tar czf "../../comfy-v0.31.0-py.tar.gz" --null -T - comfyui_version.py)
  rm -rf "$CARRY/tmp"
  # shellcheck disable=SC2086
  "${PIP_PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_12_x86_64 -d "$CARRY/wheels" $WHEELS
  # comfy-kitchen's CUDA library is 140 MB (42 MB deflated): repacked as .tar.xz (23 MB), ROCm library left out
  local ck
  ck=$(ls "$CARRY"/wheels/comfy_kitchen-*.whl)
  mkdir -p "$CARRY/tmp" && "${PIP_PYTHON:-python3}" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$ck" "$CARRY/tmp"
  rm -f "$CARRY/tmp/comfy_kitchen/backends/hip/_C.abi3.so" "$ck"
  tar cf - -C "$CARRY/tmp" . | xz -T0 -6 > "$CARRY/wheels/comfy_kitchen.tar.xz"
  rm -rf "$CARRY/tmp"
  du -ba "$CARRY" | sort -n | tail -12
  local total
  total=$(du -sb "$CARRY" | cut -f1)
  echo "carried: $((total / 1048576)) MiB (limit 64 MiB) in $CARRY/"
  [ "$total" -le $((64 * 1048576)) ] || { echo "too big to carry" >&2; exit 1; }
}

run() {
  local carry work site
  carry=$(cd "$CARRY" && pwd)
  mkdir -p "${GPU_RUN:-.gpu_run}" && work=$(cd "${GPU_RUN:-.gpu_run}" && pwd)  # outside the carried folder
  site=$work/site
  rm -rf "$site" "$work/ComfyUI" && mkdir -p "$site" "$work/ComfyUI"
  tar xzf "$carry/comfy-v0.31.0-py.tar.gz" -C "$work/ComfyUI"
  for whl in "$carry"/wheels/*.whl "$carry"/wheels/*.tar.xz; do
    [ -e "$whl" ] || continue
    local mod
    mod=$(basename "$whl" | cut -d- -f1 | cut -d. -f1 | tr 'A-Z' 'a-z')
    [ "$mod" = pillow ] && mod=PIL
    if "$PY" -c "import $mod" 2>/dev/null; then
      echo "[gpu_check] $mod: already installed"
    else
      "$PY" -c "import sys, tarfile, zipfile; a, d = sys.argv[1:]
if a.endswith('.whl'): zipfile.ZipFile(a).extractall(d)
else: tarfile.open(a, 'r:xz').extractall(d, filter='data')" "$whl" "$site"
      echo "[gpu_check] $mod: from $(basename "$whl")"
    fi
  done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export COMFYUI_DIR="$work/ComfyUI"
  local out=${OUT:-.}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  set -o pipefail
  timeout "${GPU_CHECK_TIMEOUT:-540}" "$PY" -u -m benchmarks.gpu --out "$out/gpu_check.md" "$@" 2>&1 \
    | tee "$out/gpu_check.log"
}

case "${1:-run}" in
  prepare) prepare ;;
  run) shift || true; run "$@" ;;
  *) run "$@" ;;
esac
