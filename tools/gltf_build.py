"""A small glTF 2.0 writer for tests and benchmarks: any accessor layout (component types,
normalized integers, byteStride, sparse), any node / mesh / material JSON, written as GLB.

Unlike ``tools.assets_gen.write_glb`` (one float layout), this builds exactly the file a test
describes, so each glTF feature can be written on its own.
"""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np

CTYPE = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
NORMALIZED_MAX = {5120: 127, 5121: 255, 5122: 32767, 5123: 65535}
KIND = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}


class GltfBuilder:
    def __init__(self):
        self.tree: dict = {"asset": {"version": "2.0", "generator": "refany3d-tests"}, "scene": 0,
                           "scenes": [{"nodes": []}], "nodes": [], "meshes": [], "accessors": [],
                           "bufferViews": []}
        self.blob = bytearray()
        self.fallback_length = 0  # bytes of the meshopt placeholder buffer (buffer 1), when one is used
        self.meshopt_name = "EXT_meshopt_compression"

    def add(self, key: str, item: dict) -> int:
        self.tree.setdefault(key, []).append(item)
        return len(self.tree[key]) - 1

    def view(self, data: bytes, stride: int | None = None) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        view = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if stride:
            view["byteStride"] = stride
        self.blob.extend(data)
        return self.add("bufferViews", view)

    @staticmethod
    def encode(values, ctype: int, normalized: bool) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if normalized:
            values = np.round(values * NORMALIZED_MAX[ctype])
        return values.astype(np.dtype(CTYPE[ctype]).newbyteorder("<"))

    def accessor(self, values, ctype: int = 5126, normalized: bool = False, stride: int | None = None,
                 minmax: bool = False, kind: str | None = None) -> int:
        """values [n, k] (or [n]) stored as ``ctype`` (normalized: values in 0..1 / -1..1 scaled)."""
        values = np.asarray(values)
        values = values.reshape(len(values), -1)
        data = self.encode(values, ctype, normalized)
        raw = data.tobytes()
        if stride:  # each element padded to ``stride`` bytes
            element = data.itemsize * data.shape[1]
            raw = b"".join(raw[i * element:(i + 1) * element] + b"\xAB" * (stride - element) for i in range(len(data)))
        acc = {"bufferView": self.view(raw, stride), "componentType": ctype, "count": len(values),
               "type": kind or KIND[values.shape[1]]}
        if normalized:
            acc["normalized"] = True
        if minmax:
            acc["min"] = values.min(0).tolist()
            acc["max"] = values.max(0).tolist()
        return self.add("accessors", acc)

    def sparse(self, base: int | None, count: int, kind: str, indices, values, ctype: int = 5126,
               index_ctype: int = 5123) -> int:
        """An accessor with sparse substitution; base None: no bufferView (zeros)."""
        values = np.asarray(values)
        values = values.reshape(len(values), -1)
        acc = {"componentType": ctype, "count": count, "type": kind,
               "sparse": {"count": len(indices),
                          "indices": {"bufferView": self.view(self.encode(indices, index_ctype, False).tobytes()),
                                      "componentType": index_ctype},
                          "values": {"bufferView": self.view(self.encode(values, ctype, False).tobytes())}}}
        if base is not None:
            acc["bufferView"] = self.tree["accessors"][base]["bufferView"]
        return self.add("accessors", acc)

    def meshopt_accessor(self, values, ctype: int = 5126, normalized: bool = False, mode: str = "ATTRIBUTES",
                         filter: str = "NONE", stride: int | None = None, bits: int = 12, fallback: bool = False,
                         minmax: bool = False, kind: str | None = None) -> int:
        """An accessor whose bufferView is compressed with meshopt's own encoder (``mode``, ``filter``
        with ``bits`` of precision). The parent bufferView lies in the placeholder buffer 1 (no data,
        marked ``fallback``), or, with ``fallback=True``, holds the decoded bytes in buffer 0 for
        readers without the decoder. OCTAHEDRAL takes unit vectors [n, 3], QUATERNION unit
        quaternions [n, 4] (xyzw), EXPONENTIAL and COLOR floats."""
        import meshopt
        values = np.asarray(values, dtype=np.float64)
        values = values.reshape(len(values), -1)
        rows = self.meshopt_rows(meshopt, values, ctype, normalized, filter, stride, bits)
        count, row = rows.shape[0], rows.shape[1] if rows.ndim == 2 else rows.dtype.itemsize
        encoded = meshopt.encode_gltf_buffer(rows, mode)
        plain = meshopt.decode_gltf_buffer(encoded, count, row, mode, None if filter == "NONE" else filter)
        ext = {"buffer": 0, "byteOffset": self.view_offset(encoded), "byteLength": len(encoded), "byteStride": row,
               "count": count, "mode": mode}
        if filter != "NONE":
            ext["filter"] = filter
        if fallback:
            view = self.tree["bufferViews"][self.view(np.ascontiguousarray(plain).tobytes())]
        else:
            view = {"buffer": 1, "byteOffset": self.fallback_length, "byteLength": count * row}
            self.fallback_length += count * row + (-count * row % 4)
            self.tree["bufferViews"].append(view)
        if mode == "ATTRIBUTES":
            view["byteStride"] = row
        view["extensions"] = {self.meshopt_name: ext}
        acc = {"bufferView": self.tree["bufferViews"].index(view), "componentType": ctype, "count": count,
               "type": kind or KIND[values.shape[1] if filter != "OCTAHEDRAL" else 3]}
        if normalized:
            acc["normalized"] = True
        if minmax:
            acc["min"], acc["max"] = values.min(0).tolist(), values.max(0).tolist()
        return self.add("accessors", acc)

    def meshopt_rows(self, meshopt, values, ctype, normalized, filter, stride, bits) -> np.ndarray:
        """The rows meshopt's encoder takes: filtered floats, or the plain elements padded to ``stride``."""
        if filter == "OCTAHEDRAL":
            return meshopt.encode_filter_oct(np.c_[values[:, :3], np.ones(len(values))], stride or 4, bits)
        if filter == "QUATERNION":
            return meshopt.encode_filter_quat(values, 8, bits)
        if filter == "EXPONENTIAL":
            return meshopt.encode_filter_exp(values, bits)
        if filter == "COLOR":
            return meshopt.encode_filter_color(np.c_[values, np.ones((len(values), 4 - values.shape[1]))],
                                               stride or 4, bits)
        data = self.encode(values, ctype, normalized)
        if values.shape[1] == 1:
            return data[:, 0].copy()
        raw = data.view(np.uint8).reshape(len(data), -1)
        pad = (stride or raw.shape[1]) - raw.shape[1]
        return np.ascontiguousarray(np.c_[raw, np.zeros((len(raw), pad), np.uint8)]) if pad else raw

    def view_offset(self, data: bytes) -> int:
        """Append ``data`` to buffer 0 (4-byte aligned); its offset."""
        while len(self.blob) % 4:
            self.blob.append(0)
        offset = len(self.blob)
        self.blob.extend(data)
        return offset

    def image(self, image, mime: str = "image/png") -> int:
        buf = io.BytesIO()
        image.save(buf, format="PNG" if mime == "image/png" else "JPEG")
        return self.add("images", {"bufferView": self.view(buf.getvalue()), "mimeType": mime})

    def texture(self, image, wrap=(10497, 10497)) -> int:
        sampler = self.add("samplers", {"magFilter": 9729, "minFilter": 9729, "wrapS": wrap[0], "wrapT": wrap[1]})
        return self.add("textures", {"source": self.image(image), "sampler": sampler})

    def material(self, **material) -> int:
        return self.add("materials", material)

    def mesh(self, primitives: list[dict], **extra) -> int:
        return self.add("meshes", {"primitives": primitives, **extra})

    def node(self, root: bool = True, **node) -> int:
        index = self.add("nodes", node)
        if root:
            self.tree["scenes"][0]["nodes"].append(index)
        return index

    def triangles(self, vertices, faces, material: int | None = None, mode: int = 4, **attributes) -> dict:
        """A primitive from float vertices and an index list (faces flattened as given)."""
        prim = {"attributes": {"POSITION": self.accessor(np.asarray(vertices, np.float32), minmax=True)},
                "indices": self.accessor(np.asarray(faces).reshape(-1), 5125), "mode": mode}
        for name, values in attributes.items():
            prim["attributes"][name] = values if isinstance(values, int) else self.accessor(np.asarray(values, np.float32))
        if material is not None:
            prim["material"] = material
        return prim

    def glb(self, path) -> Path:
        tree = dict(self.tree)
        blob = bytes(self.blob) + b"\0" * (-len(self.blob) % 4)
        if blob:
            tree["buffers"] = [{"byteLength": len(blob)}]
        if self.fallback_length:
            tree["buffers"].append({"byteLength": self.fallback_length,
                                    "extensions": {self.meshopt_name: {"fallback": True}}})
        js = json.dumps(tree).encode()
        js += b" " * (-len(js) % 4)
        out = struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js) + (8 + len(blob) if blob else 0))
        out += struct.pack("<II", len(js), 0x4E4F534A) + js
        if blob:
            out += struct.pack("<II", len(blob), 0x004E4942) + blob
        path = Path(path)
        path.write_bytes(out)
        return path
