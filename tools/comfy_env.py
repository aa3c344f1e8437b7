"""The one place that lets a script or test import ComfyUI's own modules in-process.

ComfyUI is not an installable package: its folder goes on ``sys.path``, its command-line parsing is
switched off, and CPU mode is set before anything imports ``comfy.model_management`` (on a machine
without CUDA; pass ``cpu=False`` to keep ComfyUI's own device choice).
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
    """Makes ``import comfy…`` work here; returns the ComfyUI folder. ``cpu``: None = CPU mode unless
    CUDA is available, True/False to force it. Call before the first import of comfy.model_management."""
    comfy_dir = Path(comfy_dir) if comfy_dir else default_comfy_dir()
    if not (comfy_dir / "comfy").is_dir():
        raise FileNotFoundError(f"no ComfyUI at {comfy_dir}: run `make setup` or set COMFYUI_DIR")
    if str(comfy_dir) not in sys.path:
        sys.path.append(str(comfy_dir))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = (not cuda_available()) if cpu is None else bool(cpu)
    return comfy_dir
