"""The one place that makes ComfyUI's own ``comfy`` package importable in a process ComfyUI did not start
(the command line, scripts, tests, benchmarks; ``tools/comfy_env.py`` calls it too).

ComfyUI is not an installable package: its folder goes on ``sys.path``, its own argument parsing is switched
off, and CPU mode is set before anything imports ``comfy.model_management``. Inside ComfyUI ``comfy`` is
already imported and nothing is changed.
"""
from __future__ import annotations

import sys
from pathlib import Path


def loaded_comfyui() -> Path | None:
    """The folder of the ComfyUI already imported in this process, else None."""
    comfy = sys.modules.get("comfy")
    return Path(comfy.__path__[0]).resolve().parent if comfy is not None else None


def use_comfyui(folder, cpu: bool | None = None) -> Path:
    """Makes ``import comfy…`` work with the ComfyUI in ``folder``; returns the folder in use. ``cpu``: None =
    CPU mode unless CUDA is available, True/False to force it. Call before the first import of
    ``comfy.model_management``; once ``comfy`` is imported, the ComfyUI already loaded is kept."""
    loaded = loaded_comfyui()
    if loaded is not None:
        return loaded
    folder = Path(folder)
    if not (folder / "comfy" / "model_management.py").is_file():
        raise FileNotFoundError(f"no ComfyUI at {folder} (the folder with main.py and comfy/)")
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    import torch
    comfy.cli_args.args.cpu = (not torch.cuda.is_available()) if cpu is None else bool(cpu)
    return folder
