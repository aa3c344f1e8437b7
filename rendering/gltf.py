"""glTF 2.0 (.gltf / .glb) read as the spec says, into the loader's parts.

The raw document is ``gltf_document.py``, the scene's geometry ``gltf_scene.py``, the base colour
``gltf_material.py``, the compressed-data extensions ``gltf_compressed.py``. This module ties them
together: extensions checked first (a required one the reader cannot honour is refused by name),
then every triangle primitive placed and coloured.
"""
from __future__ import annotations

from pathlib import Path

from .errors import AssetError
from .gltf_compressed import decode_compressed_primitives, decoder_available, open_texture_image
from .gltf_document import GltfDocument
from .gltf_material import MaterialReader, check_extensions
from .gltf_scene import placed_primitives


def read_gltf(path: Path) -> tuple[list, list[str]]:
    """(parts, warnings) of a .gltf/.glb; AssetError when it has no triangles or cannot be read right."""
    doc = GltfDocument(path)
    warnings = check_extensions(doc, decoder_available)
    decode_compressed_primitives(doc)
    notes: list[str] = []
    materials = MaterialReader(doc, open_texture_image, notes)
    parts = [materials.part(placed) for placed in placed_primitives(doc, notes)]
    if not parts:
        reason = f" ({'; '.join(notes)})" if notes else ""
        raise AssetError(f"{doc.name} contains no triangle faces: nothing to render{reason}")
    return parts, warnings + notes
