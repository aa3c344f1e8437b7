"""Writing files so that a crash never leaves half of one and modes follow the umask (the pack's one helper;
``training`` reaches it through ``training/files.py``).

Every file and folder the pack writes (release files, ``.pth``, training states, encodings, the reference
cache) is made under a temporary name beside its final place and moved there with ``os.replace``.
``tempfile`` makes its files owner-only (0600, folders 0700) whatever the umask; here they get the modes a
plain ``open`` / ``mkdir`` would give (0644 / 0755 under the usual umask 022), so other users of a shared
ComfyUI see what the umask lets them see.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the system tells it (Linux), else set and reset."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def temp_file(final: Path) -> Path:
    """An empty file beside ``final`` (a hidden temporary name), with the umask's mode."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, file_mode())
    return Path(tmp)


def temp_dir(final: Path, suffix: str = ".tmp") -> Path:
    """An empty folder beside ``final`` (a hidden temporary name), with the umask's mode."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent))
    os.chmod(tmp, dir_mode())
    return tmp


@contextlib.contextmanager
def replacing(final) -> Iterator[Path]:
    """``with replacing(path) as tmp: write(tmp)``: ``tmp`` becomes ``path`` when the block ends without an
    error; on an error it is removed and ``path`` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(final)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # again: a writer may have replaced the file (safetensors 0.8 does, as 0600)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def replacing_dir(final, suffix: str = ".tmp") -> Iterator[Path]:
    """As :func:`replacing` for a folder: ``final`` (if any) is replaced only once the new one is complete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(final, suffix)
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.{os.getpid()}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
