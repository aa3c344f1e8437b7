#!/usr/bin/env bash
# The whole test suite on every leg (each ComfyUI version in its own venv with the torch it needs),
# one after the other, then one summary line per leg. Exit status: non-zero if any leg failed
# (pytest's 5, "no test ran", counts as a failure).
#
#   scripts/test.sh                  legs v0.3.75 and v0.31.0
#   scripts/test.sh v0.31.0          one leg
#   COMFYUI_DIR=… scripts/test.sh    the "custom" leg: your own ComfyUI
#   extra pytest arguments: PYTEST_ARGS="-k render -x" scripts/test.sh
#
# On the v0.31.0 leg the frontend tests run once more with the newest comfyui-frontend-package on
# PyPI (installed beside the leg in .legs/v0.31.0/frontend-latest/, the leg's pinned one stays; the
# server gets it as --front-end-root). FRONTEND_LATEST=0 skips that run.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  legs=("$@")
elif [ -n "${COMFYUI_DIR:-}" ]; then
  legs=(custom)
else
  legs=(v0.3.75 v0.31.0)
fi

summary=()
status=0
for leg in "${legs[@]}"; do
  bash scripts/setup.sh "$leg" || { summary+=("[test] $leg: set-up failed"); status=1; continue; }
  py=.legs/$leg/venv/bin/python
  if [ "$leg" = "${legs[0]}" ]; then
    $py -m ruff check . || { summary+=("[test] ruff: lint errors"); status=1; }
  fi
  comfy=$(cat ".legs/$leg/venv/.refany3d-comfyui-dir")
  versions=$($py - "$comfy" <<'PY'
import re, sys, pathlib, torch
f = pathlib.Path(sys.argv[1]) / "comfyui_version.py"
m = re.search(r'__version__\s*=\s*"([^"]+)"', f.read_text()) if f.exists() else None
print(f"ComfyUI {m.group(1) if m else 'v0.3.x (no comfyui_version.py)'}, torch {torch.__version__}, "
      f"Python {sys.version.split()[0]}")
PY
)
  echo "[test] === leg $leg: $versions ==="
  log=.legs/$leg/pytest.log
  start=$(date +%s)
  # shellcheck disable=SC2086
  $py -m pytest tests ${PYTEST_ARGS:-} 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  counts=$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')
  summary+=("[test] leg $leg ($versions): ${counts:-no pytest summary} — exit $rc, $(( $(date +%s) - start ))s")
  [ "$rc" = 0 ] || status=1
  if [ "$leg" = v0.31.0 ] && [ "${FRONTEND_LATEST:-1}" != 0 ]; then
    target=.legs/$leg/frontend-latest
    if $py -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$target" comfyui-frontend-package; then
      fe=$($py -c "import sys; sys.path.insert(0, '$target'); from importlib.metadata import version; print(version('comfyui-frontend-package'))" 2>/dev/null || echo '?')
      echo "[test] === leg $leg, newest frontend on PyPI: comfyui-frontend-package $fe ==="
      start=$(date +%s)
      # shellcheck disable=SC2086
      REFANY3D_FRONTEND_ROOT=$PWD/$target/comfyui_frontend_package/static $py -m pytest tests/test_frontend.py ${PYTEST_ARGS:-} 2>&1 | tee "$log.frontend-latest"
      rc=${PIPESTATUS[0]}
      counts=$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$log.frontend-latest" | tail -1 | sed -E 's/^=+ //; s/ =+$//')
      summary+=("[test] leg $leg with comfyui-frontend-package $fe: ${counts:-no pytest summary} — exit $rc, $(( $(date +%s) - start ))s")
      [ "$rc" = 0 ] || status=1
    else
      summary+=("[test] leg $leg: the newest comfyui-frontend-package could not be installed"); status=1
    fi
  fi
done
printf '%s\n' "${summary[@]}"
exit $status
