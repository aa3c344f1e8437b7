"""glTF 2.0 (.gltf / .glb) read as the spec says, into the loader's parts.

The raw document is ``gltf_document.py``, the scene's geometry ``gltf_scene.py``, the base colour
``gltf_material.py``, the compressed-data extensions ``gltf_compressed.py``. This module ties them
together: extensions checked first (a required one the reader cannot honour is refused by name),
then every triangle primitive placed and coloured.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import AssetError
from .gltf_compressed import decode_compressed_primitives, decoder_available, open_texture_image
from .gltf_document import GltfDocument
from .gltf_material import MaterialReader, check_extensions
from .gltf_scene import placed_primitives


def read_gltf(path: Path) -> tuple[list, list[str]]:
    """(parts, warnings) of a .gltf/.glb; AssetError when it has no triangles or cannot be read right."""
    try:
        return read_document(GltfDocument(path))
    except AssetError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError, IndexError, OverflowError, struct.error,
            np.linalg.LinAlgError) as e:  # a field of the wrong type or shape somewhere in the JSON
        kind = Path(path).suffix[1:].upper()
        raise AssetError(f"could not read {Path(path).name}: not a valid {kind} file, damaged or truncated "
                         f"({type(e).__name__}: {e})") from e
    except MemoryError as e:
        raise AssetError(f"{Path(path).name} is too large to load in the memory available") from e


def read_document(doc: GltfDocument) -> tuple[list, list[str]]:
    warnings = check_extensions(doc, decoder_available)
    decode_compressed_primitives(doc)
    notes: list[str] = []
    materials = MaterialReader(doc, open_texture_image, notes)
    parts = [materials.part(placed) for placed in placed_primitives(doc, notes)]
    if not parts:
        reason = f" ({'; '.join(notes)})" if notes else ""
        raise AssetError(f"{doc.name} contains no triangle faces: nothing to render{reason}")
    return parts, warnings + notes
