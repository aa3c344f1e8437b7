#!/usr/bin/env bash
# The whole test suite on every leg (each ComfyUI version in its own venv with the torch it needs),
# one after the other, then one summary line per leg. Exit status: non-zero if any leg failed
# (pytest's 5, "no test ran", counts as a failure).
#
#   scripts/test.sh                  legs v0.3.75 and v0.31.0
#   scripts/test.sh v0.31.0          one leg
#   COMFYUI_DIR=… scripts/test.sh    the "custom" leg: your own ComfyUI
#   extra pytest arguments: PYTEST_ARGS="-k render -x" scripts/test.sh
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
done
printf '%s\n' "${summary[@]}"
exit $status
