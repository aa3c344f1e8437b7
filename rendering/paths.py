"""Safe resolution of user-given names inside a folder (ComfyUI's input or output folder, a dataset folder).

One rule for every path a user names: what is judged is the *name*. An absolute name, a drive, a ``..``
that leaves the folder or a NUL character is refused, with a message that repeats the name and nothing
about the server's other files. Links that are inside the folder (a linked file, a linked sub-folder: a
studio's asset library, a dataset on another disk) are followed wherever they point, as core ComfyUI
does: whoever can put a link into the folder chose what it points to.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import AssetError


def name_parts(name, where: str = "ComfyUI's input folder", what: str = "file", error=AssetError) -> tuple[str, ...]:
    """The parts of a relative ``name`` (split on / and \\), or ``error`` for a name that is not a string,
    holds a NUL, is absolute or has a drive, or has a '..' part: only things inside ``where`` can be used."""
    if not isinstance(name, str):
        raise error(f"the {what} name must be text, got {type(name).__name__}")
    if "\x00" in name:
        raise error(f"the {what} name {name.replace(chr(0), '␀')!r} contains a NUL character (␀): a name cannot "
                    "hold one; retype it")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise error(f"'{name}' is an absolute path: only a {what} inside {where} can be used (link an outside "
                    f"{what} into it to use it)")
    parts = tuple(p for p in PureWindowsPath(name).parts if p not in ("", "."))  # splits on both / and \
    if ".." in parts:
        raise error(f"'{name}' leaves {where} ('..'): only a {what} inside it can be used (link an outside "
                    f"{what} into it to use it)")
    return parts


def join_inside(name, folder, where: str = "ComfyUI's input folder", what: str = "file", error=AssetError) -> Path:
    """``folder``/``name`` after :func:`name_parts` (links kept; existence not checked)."""
    return Path(folder).absolute().joinpath(*name_parts(name, where, what, error))


def resolve_in_folder(name: str, folder) -> Path:
    """Path of ``name`` inside ``folder`` (links kept, so that the files an asset names are looked up
    beside it); AssetError for an empty name, '..', absolute paths, missing files."""
    if not name or not str(name).strip():
        raise AssetError("no 3D file chosen: upload one (it goes to input/3d) or connect a MESH")
    name = str(name)
    candidate = join_inside(name, folder)
    if not candidate.exists():
        if candidate.is_symlink():
            raise AssetError(f"'{name}' is a link whose target is missing")
        raise AssetError(f"3D file not found in the input folder: {name}")
    if not candidate.is_file():
        raise AssetError(f"'{name}' is not a file")
    return candidate
