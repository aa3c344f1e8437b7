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
        js = json.dumps(tree).encode()
        js += b" " * (-len(js) % 4)
        out = struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js) + (8 + len(blob) if blob else 0))
        out += struct.pack("<II", len(js), 0x4E4F534A) + js
        if blob:
            out += struct.pack("<II", len(blob), 0x004E4942) + blob
        path = Path(path)
        path.write_bytes(out)
        return path
