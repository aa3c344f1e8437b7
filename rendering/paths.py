"""Safe resolution of user-given file names inside a folder (ComfyUI's input folder)."""
from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import AssetError


def resolve_in_folder(name: str, folder) -> Path:
    """Path of ``name`` inside ``folder``; AssetError for '../', absolute paths, symlinks out, missing files."""
    if not name or not str(name).strip():
        raise AssetError("no 3D file chosen: upload one (it goes to input/3d) or connect a MESH")
    name = str(name)
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise AssetError(f"'{name}' is an absolute path: only files inside ComfyUI's input folder can be loaded")
    parts = PureWindowsPath(name).parts  # splits on both / and \
    if ".." in parts:
        raise AssetError(f"'{name}' leaves ComfyUI's input folder ('..'): only files inside it can be loaded")
    root = Path(folder).resolve()
    candidate = root / name
    real = candidate.resolve()
    if not real.is_relative_to(root):
        raise AssetError(f"'{name}' is a link that points outside ComfyUI's input folder: refused")
    if not real.exists():
        raise AssetError(f"3D file not found in the input folder: {name}")
    if not real.is_file():
        raise AssetError(f"'{name}' is not a file")
    return real
