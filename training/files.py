"""The atomic-write helper as ``training`` sees it: :mod:`model_patches.files` (one helper for the whole pack)."""
from __future__ import annotations

from ._pack import sibling

_files = sibling("model_patches.files")
current_umask, file_mode, dir_mode = _files.current_umask, _files.file_mode, _files.dir_mode
temp_file, temp_dir, replacing, replacing_dir = _files.temp_file, _files.temp_dir, _files.replacing, _files.replacing_dir
