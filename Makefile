# RefAny3D for ComfyUI — development commands. See README.md.
#   make demo / make run / make bench   use the current ComfyUI leg (v0.31.0), or yours with COMFYUI_DIR=…
#   make test                           the whole suite on ComfyUI v0.3.75 and v0.31.0 (or COMFYUI_DIR's)
#   make test-fast                      the inner loop: one leg, no server, frontend, fuzz or slow tests
SHELL := /bin/bash
PORT ?= 8188
LEG := $(if $(COMFYUI_DIR),custom,v0.31.0)
PY := .legs/$(LEG)/venv/bin/python
COMFY = $$(cat .legs/$(LEG)/venv/.refany3d-comfyui-dir)

.PHONY: setup setup-all run test test-fast demo lint bench

setup:
	@bash scripts/setup.sh $(LEG)

setup-all:
	@if [ -n "$(COMFYUI_DIR)" ]; then bash scripts/setup.sh custom; \
	else bash scripts/setup.sh v0.3.75 && bash scripts/setup.sh v0.31.0; fi

run: setup
	@cd "$(COMFY)" && exec $(CURDIR)/$(PY) main.py --listen 127.0.0.1 --port $(PORT) \
	  $$($(CURDIR)/$(PY) -c "import torch; print('' if torch.cuda.is_available() else '--cpu')")

test:
	@bash scripts/test.sh

test-fast: setup
	@$(PY) -m pytest tests -q -m "not server and not frontend and not fuzz and not slow"

demo: setup
	@$(PY) -m tools.demo

lint: setup
	@$(PY) -m ruff check .

bench: setup
	@for b in benchmarks/bench_*.py; do m=$${b%.py}; echo "== $$b"; $(PY) -m $${m//\//.} || exit 1; done
