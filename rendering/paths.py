"""Safe resolution of user-given file names inside a folder (ComfyUI's input folder).

What is judged is the *name*: an absolute name or a ``..`` that leaves the folder is refused. Links
that are inside the folder (a linked file, a linked sub-folder: a studio's asset library) are
followed wherever they point, as core ComfyUI does: whoever can put a link into the input folder
chose what it points to.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import AssetError


def resolve_in_folder(name: str, folder) -> Path:
    """Path of ``name`` inside ``folder`` (links kept, so that the files an asset names are looked up
    beside it); AssetError for an empty name, '..', absolute paths, missing files."""
    if not name or not str(name).strip():
        raise AssetError("no 3D file chosen: upload one (it goes to input/3d) or connect a MESH")
    name = str(name)
    if "\x00" in name:
        raise AssetError("the file name contains a NUL character")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise AssetError(f"'{name}' is an absolute path: only files inside ComfyUI's input folder can be loaded")
    parts = PureWindowsPath(name).parts  # splits on both / and \
    if ".." in parts:
        raise AssetError(f"'{name}' leaves ComfyUI's input folder ('..'): only files inside it can be loaded")
    candidate = Path(folder).absolute().joinpath(*parts)
    if not candidate.exists():
        if candidate.is_symlink():
            raise AssetError(f"'{name}' is a link whose target is missing: {candidate.readlink()}")
        raise AssetError(f"3D file not found in the input folder: {name}")
    if not candidate.is_file():
        raise AssetError(f"'{name}' is not a file")
    return candidate
