"""The raw glTF 2.0 document: JSON, buffers, accessors and images, read as the spec defines them.

Accessors of every component type (normalized integers mapped to [0, 1] / [-1, 1] by the spec's
formulas, ``byteStride``, sparse substitution, accessors without a bufferView as zeros), buffers
from the GLB BIN chunk, data URIs or files beside the asset (named files checked by
``sidecars.reference_path``, so nothing outside the asset's folder is read); a bufferView given a
decoder (``view_decoders``, set by ``gltf_compressed.py`` for meshopt) is read as the bytes it
decodes to. Every broken layout
is an AssetError naming what is broken; nothing here knows about meshes or materials.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import AssetError
from .sidecars import GLB_BIN, GLB_JSON, GLB_MAGIC, data_uri_bytes, decode_texture, reference_path, short

COMPONENT_TYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32,
                   5126: np.float32}
#: normalized integers: c / (2^bits - 1) unsigned, max(c / (2^(bits-1) - 1), -1) signed (glTF 2.0 §3.11)
NORMALIZE_DIVISOR = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}
MAX_VALUES = 1 << 30  # components in one accessor
ELEMENT_SIZE = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


class GltfDocument:
    """One .gltf or .glb file: its JSON tree and lazily read buffers."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.name
        self.bin_chunk: bytes | None = None
        self.kind = self.path.suffix[1:].upper()
        if self.path.suffix.lower() == ".glb":
            self.tree = self._read_glb()
        else:
            self.tree = self._parse_json(self.path.read_bytes())
        self._buffers: dict[int, bytes] = {}
        self.decoded: dict[int, np.ndarray] = {}  # accessor -> values decoded from a compressed primitive
        #: bufferView -> a function giving its bytes (EXT_meshopt_compression): called once, when first read
        self.view_decoders: dict[int, Callable[[], bytes]] = {}
        self._decoded_views: dict[int, bytes] = {}

    # ---------------------------------------------------------------- file layout

    def _parse_json(self, data: bytes) -> dict:
        try:
            tree = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise AssetError(f"could not read {self.name}: not a valid {self.kind} file, damaged or truncated "
                             f"(its JSON: {e})") from e
        if not isinstance(tree, dict):
            raise AssetError(f"could not read {self.name}: not a valid {self.kind} file (its JSON is not an object)")
        asset = tree.get("asset")
        version = str(asset.get("version", "")) if isinstance(asset, dict) else ""
        if not version.startswith("2."):
            raise AssetError(f"{self.name} is glTF version '{version or 'unknown'}': only glTF 2.0 is read "
                             "(re-export it from a current tool)")
        return tree

    def _read_glb(self) -> dict:
        data = self.path.read_bytes()
        if len(data) < 20:
            raise AssetError(f"could not read {self.name}: not a valid GLB file (only {len(data)} bytes)")
        magic, version, length = struct.unpack_from("<III", data, 0)
        if magic != GLB_MAGIC:
            raise AssetError(f"could not read {self.name}: not a valid GLB file (no 'glTF' header)")
        if version != 2:
            raise AssetError(f"{self.name} is a GLB of version {version}: only glTF 2.0 is read")
        if length > len(data):
            raise AssetError(f"could not read {self.name}: not a valid GLB file, damaged or truncated "
                             f"({len(data):,} of {length:,} bytes)")
        offset, tree = 12, None
        while offset + 8 <= length:
            size, kind = struct.unpack_from("<II", data, offset)
            body = data[offset + 8:offset + 8 + size]
            if len(body) < size:
                raise AssetError(f"could not read {self.name}: not a valid GLB file, damaged or truncated "
                                 "(a chunk ends early)")
            if kind == GLB_JSON and tree is None:
                tree = self._parse_json(body)
            elif kind == GLB_BIN and self.bin_chunk is None:
                self.bin_chunk = body
            offset += 8 + size + (-size % 4)
        if tree is None:
            raise AssetError(f"could not read {self.name}: the GLB has no JSON chunk")
        return tree

    def items(self, key: str) -> list:
        value = self.tree.get(key)
        return value if isinstance(value, list) else []

    def item(self, key: str, index, what: str | None = None) -> dict:
        """tree[key][index] as a dict, or AssetError naming the missing reference."""
        values = self.items(key)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(values) \
                or not isinstance(values[index], dict):
            raise AssetError(f"{self.name} is damaged: {what or key[:-1]} {index!r} does not exist "
                             f"(the file has {len(values)} {key})")
        return values[index]

    def read_named_file(self, uri: str, kind: str) -> bytes:
        target = reference_path(self.path.parent, uri, self.name, kind, url=True)
        try:
            return target.read_bytes()
        except OSError as e:
            raise AssetError(f"{self.name} names the {kind} '{short(uri)}', which cannot be read "
                             f"({type(e).__name__}: {e.strerror or e})") from None

    def buffer(self, index: int) -> bytes:
        if index not in self._buffers:
            buffers = self.items("buffers")
            if not buffers and index == 0 and self.bin_chunk is not None:
                buffers = [{}]
            if not 0 <= index < len(buffers):
                raise AssetError(f"{self.name} is damaged: buffer {index} does not exist")
            buf = buffers[index] if isinstance(buffers[index], dict) else {}
            uri = buf.get("uri")
            if isinstance(uri, str) and uri.startswith("data:"):
                data = data_uri_bytes(uri)
                if data is None:
                    raise AssetError(f"buffer {index} of {self.name} is a data URI that is not valid base64")
            elif isinstance(uri, str) and uri:
                data = self.read_named_file(uri, "buffer")
            elif self.bin_chunk is not None and index == 0:
                data = self.bin_chunk
            else:
                raise AssetError(f"{self.name} is damaged: buffer {index} has no data (no URI and no GLB BIN chunk)")
            declared = buf.get("byteLength")
            if isinstance(declared, int) and len(data) < declared:
                raise AssetError(f"buffer {index} of {self.name} is truncated: {len(data):,} of {declared:,} bytes")
            self._buffers[index] = data
        return self._buffers[index]

    def view_bytes(self, index) -> tuple[memoryview, int | None]:
        """(bytes of bufferView ``index``, its byteStride or None); a compressed view's decoded bytes."""
        view = self.item("bufferViews", index, "bufferView")
        stride = view.get("byteStride")
        if index in self.view_decoders:
            if index not in self._decoded_views:
                self._decoded_views[index] = self.view_decoders[index]()
            return memoryview(self._decoded_views[index]), int(stride) if stride else None
        data = self.buffer(view.get("buffer", 0))
        offset, length = int(view.get("byteOffset", 0)), int(view.get("byteLength", -1))
        if offset < 0 or length < 0 or offset + length > len(data):
            raise AssetError(f"{self.name} is damaged: bufferView {index} lies outside its buffer")
        return memoryview(data)[offset:offset + length], int(stride) if stride else None

    # ---------------------------------------------------------------- accessors

    def accessor(self, index, normalize: bool = True) -> np.ndarray:
        """Accessor ``index`` as an array [count, components] (2-D even for SCALAR); normalized
        integers become float64 by the spec's formulas (when ``normalize``), sparse values are
        substituted, a missing bufferView reads as zeros."""
        acc = self.item("accessors", index, "accessor")
        if index in self.decoded:
            values = self.decoded[index]
            ctype = acc.get("componentType")
            if normalize and acc.get("normalized") and ctype in NORMALIZE_DIVISOR and values.dtype.kind in "iu":
                return np.maximum(values.astype(np.float64) / NORMALIZE_DIVISOR[ctype], -1.0)
            return values
        ctype, kind, count = acc.get("componentType"), acc.get("type"), acc.get("count")
        if ctype not in COMPONENT_TYPES or kind not in ELEMENT_SIZE or not isinstance(count, int) or count < 0:
            raise AssetError(f"{self.name} is damaged: accessor {index} has componentType {ctype!r}, "
                             f"type {kind!r}, count {count!r}")
        dtype, width = np.dtype(COMPONENT_TYPES[ctype]).newbyteorder("<"), ELEMENT_SIZE[kind]
        if count * width > MAX_VALUES:
            raise AssetError(f"{self.name}: accessor {index} holds {count:,} elements, more than can be loaded")
        if "bufferView" in acc:
            values = self._strided(acc["bufferView"], int(acc.get("byteOffset", 0)), count, dtype,
                                   width, f"accessor {index}", matrix_columns(kind, dtype.itemsize))
        else:
            values = np.zeros((count, width), dtype=dtype)
        if isinstance(acc.get("sparse"), dict):
            values = self._apply_sparse(values, acc["sparse"], dtype, width, index)
        if normalize and acc.get("normalized") and ctype in NORMALIZE_DIVISOR:
            values = np.maximum(values.astype(np.float64) / NORMALIZE_DIVISOR[ctype], -1.0)
        return values

    def _strided(self, view_index, offset: int, count: int, dtype: np.dtype, width: int, label: str,
                 columns: tuple[int, int] | None = None) -> np.ndarray:
        data, stride = self.view_bytes(view_index)
        element = dtype.itemsize * width if columns is None else columns[0] * columns[1]
        stride = stride or element
        if count and (offset < 0 or offset + stride * (count - 1) + element > len(data)):
            raise AssetError(f"{self.name} is damaged: {label} reads past the end of bufferView {view_index}")
        if count == 0:
            return np.zeros((0, width), dtype=dtype)
        if columns is not None:  # MAT2/MAT3 of 1- or 2-byte components: each column padded to 4 bytes
            n_cols, col_bytes = columns
            rows = width // n_cols
            raw = np.ndarray((count, n_cols, rows), dtype=dtype, buffer=data, offset=offset,
                             strides=(stride, col_bytes, dtype.itemsize))
            return raw.reshape(count, width).copy()
        return np.ndarray((count, width), dtype=dtype, buffer=data, offset=offset,
                          strides=(stride, dtype.itemsize)).copy()

    def _apply_sparse(self, values, sparse: dict, dtype, width: int, index) -> np.ndarray:
        n = sparse.get("count")
        ind, val = sparse.get("indices") or {}, sparse.get("values") or {}
        itype = ind.get("componentType")
        if not isinstance(n, int) or n < 1 or itype not in (5121, 5123, 5125) or "bufferView" not in ind \
                or "bufferView" not in val:
            raise AssetError(f"{self.name} is damaged: the sparse part of accessor {index} is incomplete")
        where = self._strided(ind["bufferView"], int(ind.get("byteOffset", 0)), n,
                              np.dtype(COMPONENT_TYPES[itype]).newbyteorder("<"), 1,
                              f"sparse indices of accessor {index}")[:, 0].astype(np.int64)
        new = self._strided(val["bufferView"], int(val.get("byteOffset", 0)), n, dtype, width,
                            f"sparse values of accessor {index}")
        if n and (where.min() < 0 or where.max() >= len(values)):
            raise AssetError(f"{self.name} is damaged: sparse indices of accessor {index} exceed its count")
        values = values.copy()
        values[where] = new
        return values

    # ---------------------------------------------------------------- images

    def image_bytes(self, index) -> bytes:
        image = self.item("images", index, "image")
        uri = image.get("uri")
        if isinstance(uri, str) and uri.startswith("data:"):
            data = data_uri_bytes(uri)
            if data is None:
                raise AssetError(f"image {index} of {self.name} is a data URI that is not valid base64")
            return data
        if isinstance(uri, str) and uri:
            return self.read_named_file(uri, "image")
        if "bufferView" in image:
            return bytes(self.view_bytes(image["bufferView"])[0])
        raise AssetError(f"{self.name} is damaged: image {index} has neither a URI nor a bufferView")

    def image_label(self, index) -> str:
        image = self.items("images")[index] if 0 <= index < len(self.items("images")) else {}
        name = image.get("uri") if isinstance(image.get("uri"), str) and not image["uri"].startswith("data:") \
            else image.get("name")
        return f"image {index}" + (f" ('{short(str(name))}')" if name else "")

    def open_image(self, index):
        """The PIL image of images[index], decoded now."""
        return decode_texture(self.image_bytes(index), f"the {self.image_label(index)} of {self.name}")


def matrix_columns(kind: str, itemsize: int) -> tuple[int, int] | None:
    """(columns, bytes per column) for matrix accessors whose columns are padded to 4 bytes."""
    if kind == "MAT2" and itemsize == 1:
        return 2, 4
    if kind == "MAT3" and itemsize in (1, 2):
        return 3, 4 if itemsize == 1 else 8
    return None
