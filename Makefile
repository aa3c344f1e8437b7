# RefAny3D for ComfyUI — development commands. See README.md.
SHELL := /bin/bash
PY := .venv/bin/python
PORT ?= 8188
COMFY = $$(cat .venv/.refany3d-comfyui-dir)

.PHONY: setup run test demo lint bench

setup:
	@bash scripts/setup.sh

run: setup
	@cd "$(COMFY)" && exec $(CURDIR)/$(PY) main.py --listen 127.0.0.1 --port $(PORT) \
	  $$($(CURDIR)/$(PY) -c "import torch; print('' if torch.cuda.is_available() else '--cpu')")

test: setup
	@start=$$(date +%s); \
	$(PY) -m ruff check . && \
	$(PY) -m pytest tests; rc=$$?; \
	echo "[test] tests took $$(( $$(date +%s) - start ))s (exit $$rc)"; exit $$rc

demo: setup
	@$(PY) tools/demo.py

lint: setup
	@$(PY) -m ruff check .

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
