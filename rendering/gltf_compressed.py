"""Compressed glTF data: KHR_draco_mesh_compression, EXT_meshopt_compression, KHR_texture_basisu.

Decoders come from PyPI and are imported only when a file uses them (``DECODERS``): DracoPy for
Draco, meshopt (wheels for Python 3.11 and newer) for EXT_/KHR_meshopt_compression, alktx2 (Basis
Universal; wheels for Python 3.11+ on Linux x86_64 and Windows x64) for KHR_texture_basisu. Without
its decoder a compressed part is read through its uncompressed fallback where the file has one, and
refused naming the package to install where it has none: never rendered without that part.

* Draco: the primitive's compressed bufferView is decoded with DracoPy and its attributes (found
  by the unique ids the extension names) and triangle indices stand in for the primitive's accessors.
* meshopt: each compressed bufferView is decoded (mode ATTRIBUTES, TRIANGLES or INDICES; filter
  NONE, OCTAHEDRAL, QUATERNION, EXPONENTIAL, and COLOR for KHR_meshopt_compression) into exactly
  the bytes its parent bufferView describes, and every accessor reads those bytes as usual. The
  parent's own buffer (the fallback, often a placeholder without data) is then never read.
* KTX2 (KHR_texture_basisu, or a KTX2 file as a texture's plain ``source``): a texture's PNG/JPEG
  ``source`` is preferred (it is the author's image, not a lossy transcode); a KTX2 image is
  transcoded to RGBA8 by alktx2 and read like any other image.
"""
from __future__ import annotations

import importlib

import numpy as np

from .errors import AssetError
from .gltf_document import GltfDocument
from .sidecars import decode_texture

#: extension: (module, what to pip install)
DECODERS = {"KHR_draco_mesh_compression": ("DracoPy", "DracoPy"),
            "EXT_meshopt_compression": ("meshopt", "meshopt (its wheels need Python 3.11 or newer)"),
            "KHR_meshopt_compression": ("meshopt", "meshopt (its wheels need Python 3.11 or newer)"),
            "KHR_texture_basisu": ("alktx2", "alktx2 (wheels for Python 3.11+ on Linux x86_64 and Windows x64)")}
KTX2_MAGIC = b"\xabKTX 20\xbb\r\n\x1a\n"
MESHOPT = ("EXT_meshopt_compression", "KHR_meshopt_compression")
MESHOPT_MODES = ("ATTRIBUTES", "TRIANGLES", "INDICES")
MESHOPT_FILTERS = {"EXT_meshopt_compression": ("NONE", "OCTAHEDRAL", "QUATERNION", "EXPONENTIAL"),
                   "KHR_meshopt_compression": ("NONE", "OCTAHEDRAL", "QUATERNION", "EXPONENTIAL", "COLOR")}


def install_hint(extension: str) -> str:
    return f"pip install {DECODERS[extension][1]} into ComfyUI's Python, then load it again"


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
    module = DECODERS[extension][0]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AssetError(f"{doc.name}: {what} is compressed with {extension}, and its decoder is not installed: "
                         f"{install_hint(extension)}") from None


def has_fallback(doc: GltfDocument, prim: dict) -> bool:
    """Whether the primitive's own accessors hold uncompressed data (a file may carry both)."""
    position = (prim.get("attributes") or {}).get("POSITION")
    try:
        return "bufferView" in doc.item("accessors", position, "accessor")
    except AssetError:
        return False


def decode_compressed_primitives(doc: GltfDocument) -> None:
    """Decode every Draco primitive into ``doc.decoded`` (its accessors' values); give every meshopt
    bufferView its decoder (or, without the package, check that its fallback holds data)."""
    prepare_meshopt_views(doc)
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


def meshopt_views(doc: GltfDocument) -> dict[int, tuple[str, dict]]:
    """bufferView index -> (extension name, its JSON) for every meshopt-compressed view."""
    out = {}
    for index, view in enumerate(doc.items("bufferViews")):
        ext = (view.get("extensions") if isinstance(view, dict) else None) or {}
        for name in MESHOPT:
            if name in ext:
                if not isinstance(ext[name], dict):
                    raise AssetError(f"{doc.name} is damaged: the {name} part of bufferView {index} is not an object")
                out[index] = (name, ext[name])
                break
    return out


def buffer_has_data(doc: GltfDocument, index) -> bool:
    """Whether buffer ``index`` holds bytes a reader without the decoder can use: a URI, or the GLB's
    BIN chunk when it is buffer 0 and not marked as a meshopt fallback placeholder."""
    buffers = doc.items("buffers")
    if not isinstance(index, int) or not 0 <= index < max(len(buffers), 1):
        return False
    buffer = buffers[index] if buffers and isinstance(buffers[index], dict) else {}
    if isinstance(buffer.get("uri"), str) and buffer["uri"]:
        return True
    marked = any(((buffer.get("extensions") or {}).get(name) or {}).get("fallback") for name in MESHOPT)
    return index == 0 and doc.bin_chunk is not None and not marked


def prepare_meshopt_views(doc: GltfDocument) -> None:
    views = meshopt_views(doc)
    if not views:
        return
    if decoder_available("EXT_meshopt_compression"):
        module = importlib.import_module("meshopt")
        for index, (name, ext) in views.items():
            doc.view_decoders[index] = lambda i=index, n=name, e=ext: decode_meshopt_view(doc, module, i, n, e)
        return
    for index, (name, _) in views.items():
        if not buffer_has_data(doc, doc.items("bufferViews")[index].get("buffer", 0)):
            require_decoder(doc, name, f"bufferView {index}")


def meshopt_layout(doc: GltfDocument, index: int, name: str, ext: dict) -> tuple[int, int, str, str | None]:
    """(count, byteStride, mode, filter or None) of a meshopt view, checked against the extension's
    validity rules; AssetError naming the bufferView otherwise."""
    view = doc.item("bufferViews", index, "bufferView")
    count, stride, mode, filt = ext.get("count"), ext.get("byteStride"), ext.get("mode"), ext.get("filter", "NONE")

    def damaged(what: str) -> AssetError:
        return AssetError(f"{doc.name} is damaged: the {name} data of bufferView {index} {what}")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (count, stride)):
        raise damaged(f"has count {count!r} and byteStride {stride!r}")
    if mode not in MESHOPT_MODES:
        raise damaged(f"has the unknown mode {mode!r}")
    if filt not in MESHOPT_FILTERS[name]:
        raise damaged(f"has the unknown filter {filt!r}")
    if view.get("byteLength") != count * stride:
        raise damaged(f"decodes to {count} × {stride} bytes, but the bufferView is {view.get('byteLength')!r} bytes")
    if view.get("byteStride") not in (None, stride):
        raise damaged(f"has byteStride {stride}, the bufferView {view.get('byteStride')}")
    rules = {"ATTRIBUTES": stride % 4 == 0 and stride <= 256, "TRIANGLES": stride in (2, 4) and count % 3 == 0,
             "INDICES": stride in (2, 4)}
    if not rules[mode] or (mode != "ATTRIBUTES" and filt != "NONE"):
        raise damaged(f"has mode {mode}, filter {filt}, byteStride {stride} and count {count}, which that mode "
                      "does not allow")
    if (filt in ("OCTAHEDRAL", "COLOR") and stride not in (4, 8)) or (filt == "QUATERNION" and stride != 8):
        raise damaged(f"has filter {filt} with byteStride {stride}, which that filter does not allow")
    return count, stride, mode, None if filt == "NONE" else filt


def decode_meshopt_view(doc: GltfDocument, module, index: int, name: str, ext: dict) -> bytes:
    """The bytes of a meshopt-compressed bufferView, as its parent bufferView lays them out."""
    count, stride, mode, filt = meshopt_layout(doc, index, name, ext)
    data = doc.buffer(ext.get("buffer"))
    offset, length = ext.get("byteOffset", 0), ext.get("byteLength")
    if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0 \
            or offset + length > len(data):
        raise AssetError(f"{doc.name} is damaged: the {name} data of bufferView {index} lies outside its buffer")
    try:
        values = module.decode_gltf_buffer(bytes(data[offset:offset + length]), count, stride, mode, filt)
    except (ValueError, RuntimeError, MemoryError) as e:  # the decoder's word for damaged data
        raise AssetError(f"{doc.name} is damaged: the {name} data of bufferView {index} cannot be decoded "
                         f"({type(e).__name__}: {e})") from None
    out = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
    if len(out) != count * stride:
        raise AssetError(f"{doc.name}: the {name} data of bufferView {index} decoded to {len(out)} bytes, "
                         f"not {count * stride}")
    return out


def open_texture_image(doc: GltfDocument, texture: dict, index: int):
    """The PIL image of a texture: its ``source``, else the source of EXT_texture_webp (Pillow reads
    WebP), else the KTX2 source of KHR_texture_basisu; KTX2 images decoded with alktx2."""
    ext = texture.get("extensions") or {}
    for source in (texture, ext.get("EXT_texture_webp"), ext.get("KHR_texture_basisu")):
        if isinstance(source, dict) and "source" in source:
            return open_image(doc, source["source"], index)
    raise AssetError(f"{doc.name} is damaged: texture {index} names no image")


def open_image(doc: GltfDocument, image: int, texture: int):
    data = doc.image_bytes(image)
    if data[:len(KTX2_MAGIC)] != KTX2_MAGIC:
        return decode_texture(data, f"the {doc.image_label(image)} of {doc.name}")
    what = f"texture {texture} of {doc.name}"
    try:
        alktx2 = importlib.import_module("alktx2")
    except ImportError:
        raise AssetError(f"{what} is a KTX2 / Basis Universal image (KHR_texture_basisu) with no PNG or JPEG "
                         f"fallback, and its decoder is not installed: {install_hint('KHR_texture_basisu')}; or "
                         "export the asset with PNG or JPEG textures") from None
    return decode_ktx2(alktx2, data, what)


def decode_ktx2(alktx2, data: bytes, what: str):
    """A KTX2 image transcoded to RGBA8 (checked against Pillow's pixel limit before it is)."""
    from PIL import Image

    def damaged(e: Exception) -> AssetError:
        return AssetError(f"the KTX2 / Basis Universal image (KHR_texture_basisu) of {what} cannot be decoded "
                          f"({type(e).__name__}: {e}): export the asset with PNG or JPEG textures")
    try:
        info = alktx2.inspect_ktx2(data)
        pixels = int(info["width"]) * int(info["height"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:  # the transcoder's word for damaged data
        raise damaged(e) from None
    if Image.MAX_IMAGE_PIXELS and pixels > 2 * Image.MAX_IMAGE_PIXELS:
        raise AssetError(f"the KTX2 image of {what} is over the size limit of the image library (Pillow): "
                         "downscale it (8192 × 8192 is plenty for a reference view)")
    try:
        png, _ = alktx2.decode_ktx2_to_bytes(data, format="png")
    except (RuntimeError, ValueError) as e:
        raise damaged(e) from None
    return decode_texture(png, f"the KTX2 image of {what}")
