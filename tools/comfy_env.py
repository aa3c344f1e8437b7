"""Where a script or test finds ComfyUI (``COMFYUI_DIR``, or the leg's venv marker), and ``use_comfy()``,
which imports it in-process through the pack's one bootstrap, ``training.comfyui`` (its folder on
``sys.path``, its command-line parsing off, CPU mode on a machine without CUDA; pass ``cpu=False`` to keep
ComfyUI's own device choice).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent


def default_comfy_dir() -> Path:
    """The ComfyUI of the running venv: COMFYUI_DIR when set, else the one `scripts/setup.sh` recorded
    in this venv (each test leg has its own venv and ComfyUI), else the current leg's folder."""
    if os.environ.get("COMFYUI_DIR"):
        return Path(os.environ["COMFYUI_DIR"]).resolve()
    marker = Path(sys.prefix) / ".refany3d-comfyui-dir"
    if marker.exists():
        return Path(marker.read_text().strip())
    return PACK_ROOT / ".legs" / "v0.31.0" / "ComfyUI"


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def use_comfy(comfy_dir: str | Path | None = None, cpu: bool | None = None) -> Path:
    """Makes ``import comfy…`` work here (``training.comfyui``, the pack's one bootstrap) with ``comfy_dir``,
    else :func:`default_comfy_dir`; returns the ComfyUI folder. ``cpu``: None = CPU mode unless CUDA is
    available, True/False to force it. Call before the first import of comfy.model_management."""
    from training.comfyui import use_comfyui
    comfy_dir = Path(comfy_dir) if comfy_dir else default_comfy_dir()
    try:
        return use_comfyui(comfy_dir, cpu)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}: run `make setup` or set COMFYUI_DIR") from None
