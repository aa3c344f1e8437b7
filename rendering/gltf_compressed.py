"""Compressed glTF data: KHR_draco_mesh_compression, EXT_meshopt_compression, KHR_texture_basisu.

Draco needs DracoPy from PyPI, imported only when a file uses it (``DECODERS``). meshopt and
KTX2 are read through their uncompressed fallback where the file has one. A compressed part
without a fallback is refused, naming the package to install or the extension: never rendered
without that part. Draco: the primitive's compressed bufferView is decoded with
DracoPy and its attributes (found by the unique ids the extension names) and triangle indices
stand in for the primitive's accessors.
"""
from __future__ import annotations

import importlib

import numpy as np

from .errors import AssetError
from .gltf_document import GltfDocument

DECODERS = {"KHR_draco_mesh_compression": ("DracoPy", "DracoPy")}  # extension: (module, PyPI package)


def decoder_available(extension: str) -> bool:
    module = DECODERS.get(extension, (None,))[0]
    if module is None:
        return False
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require_decoder(doc: GltfDocument, extension: str, what: str):
    module, package = DECODERS[extension]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AssetError(f"{doc.name}: {what} is compressed with {extension}, and its decoder is not installed: "
                         f"pip install {package} (into ComfyUI's Python), then load it again") from None


def has_fallback(doc: GltfDocument, prim: dict) -> bool:
    """Whether the primitive's own accessors hold uncompressed data (a file may carry both)."""
    position = (prim.get("attributes") or {}).get("POSITION")
    try:
        return "bufferView" in doc.item("accessors", position, "accessor")
    except AssetError:
        return False


def decode_compressed_primitives(doc: GltfDocument) -> None:
    """Decode every Draco primitive into ``doc.decoded`` (its accessors' values); meshopt views are
    refused unless their fallback buffer holds data."""
    check_meshopt_views(doc)
    for m, mesh in enumerate(doc.items("meshes")):
        for p, prim in enumerate((mesh or {}).get("primitives") or []):
            draco = ((prim or {}).get("extensions") or {}).get("KHR_draco_mesh_compression")
            if not isinstance(draco, dict):
                continue
            if not decoder_available("KHR_draco_mesh_compression") and has_fallback(doc, prim):
                continue
            draco_module = require_decoder(doc, "KHR_draco_mesh_compression", f"mesh {m} primitive {p}")
            decode_draco(doc, draco_module, prim, draco, f"mesh {m} primitive {p}")


def decode_draco(doc: GltfDocument, draco_module, prim: dict, ext: dict, label: str) -> None:
    data = bytes(doc.view_bytes(ext.get("bufferView"))[0])
    try:
        mesh = draco_module.decode(data)
    except Exception as e:  # the decoder raises its own types for damaged data
        raise AssetError(f"{doc.name}: the Draco data of {label} cannot be decoded ({type(e).__name__}: {e})") from None
    for name, unique_id in (ext.get("attributes") or {}).items():
        accessor = (prim.get("attributes") or {}).get(name)
        if accessor is None:
            continue
        attribute = mesh.get_attribute_by_unique_id(unique_id)
        if attribute is None:
            raise AssetError(f"{doc.name}: the Draco data of {label} lacks its {name} attribute (id {unique_id})")
        values = np.asarray(attribute["data"])
        values = values.reshape(len(values), -1)
        doc.decoded[accessor] = values
    if "indices" in prim:
        faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 1)
        doc.decoded[prim["indices"]] = faces


def check_meshopt_views(doc: GltfDocument) -> None:
    for view in doc.items("bufferViews"):
        ext = ((view or {}).get("extensions") or {})
        name = "EXT_meshopt_compression" if "EXT_meshopt_compression" in ext else \
            "KHR_meshopt_compression" if "KHR_meshopt_compression" in ext else None
        if name is None:
            continue
        buffer = doc.items("buffers")[view.get("buffer", 0)] if doc.items("buffers") else {}
        fallback_only = ((buffer or {}).get("extensions") or {}).get(name, {}).get("fallback")
        if fallback_only or not ((buffer or {}).get("uri") or doc.bin_chunk):
            raise AssetError(f"{doc.name}: its geometry is compressed with {name} (e.g. by gltfpack), which this "
                             "reader does not decode yet: export it without meshopt compression (gltfpack without "
                             "-c/-cc) or as plain GLB")


def open_texture_image(doc: GltfDocument, texture: dict, index: int):
    """The PIL image of a texture: its ``source``, else the source of EXT_texture_webp (Pillow reads
    WebP); a KTX2 image (KHR_texture_basisu) without a fallback is refused naming the decoder."""
    ext = texture.get("extensions") or {}
    if "source" in texture:
        return doc.open_image(texture["source"])
    webp = ext.get("EXT_texture_webp")
    if isinstance(webp, dict) and "source" in webp:
        return doc.open_image(webp["source"])
    basisu = ext.get("KHR_texture_basisu")
    if isinstance(basisu, dict) and "source" in basisu:
        raise AssetError(f"{doc.name}: texture {index} is a KTX2 / Basis Universal image (KHR_texture_basisu) with no "
                         "PNG or JPEG fallback, which this reader does not decode: export the asset with PNG or "
                         "JPEG textures")
    raise AssetError(f"{doc.name} is damaged: texture {index} names no image")
