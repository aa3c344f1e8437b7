"""Procedural test assets, all generated in code (nothing fetched).

Meshes (numpy), a minimal glTF 2.0 / GLB writer that gives the tests full control over nodes,
transforms, materials (baseColorFactor, textures of any PNG mode), UVs and vertex colours, and
writers for OBJ+MTL, PLY, STL and damaged files.
"""
from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# ---------------------------------------------------------------- meshes


def uv_sphere(n_lat: int, n_lon: int, radius: float = 1.0):
    """UV sphere, poles on ±Y, vertices at ±X/±Z on the equator when n_lon % 4 == 0.

    Returns vertices [V,3] float64, faces [F,3] int64 (F = 2 n_lat n_lon, poles included as
    degenerate rows of zero-area faces) and uv [V,2] (u along longitude, v = 1 at +Y).
    """
    th = np.linspace(0.0, np.pi, n_lat + 1)
    ph = np.linspace(0.0, 2 * np.pi, n_lon + 1)  # seam duplicated so that UVs do not wrap
    t, p = np.meshgrid(th, ph, indexing="ij")
    st, ct = np.sin(t), np.cos(t)
    st[0], st[-1], ct[0], ct[-1] = 0.0, 0.0, 1.0, -1.0  # exact poles
    sp, cp = np.sin(p), np.cos(p)
    sp[:, -1], cp[:, -1] = sp[:, 0], cp[:, 0]  # exact seam
    v = radius * np.stack([st * cp, ct, st * sp], -1).reshape(-1, 3)
    uv = np.stack([p / (2 * np.pi), 1 - t / np.pi], -1).reshape(-1, 2)
    i = np.arange(n_lat)[:, None]
    j = np.arange(n_lon)[None, :]
    w = n_lon + 1
    a, b, c, d = i * w + j, i * w + j + 1, (i + 1) * w + j, (i + 1) * w + j + 1
    f = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])  # outward
    return v, f.astype(np.int64), uv


def sphere_with_faces(n_faces: int):
    """A UV sphere with about n_faces faces (square grid)."""
    n = max(4, int(round(np.sqrt(n_faces / 2))))
    return uv_sphere(n, n)


def box(size=(2.0, 2.0, 2.0), center=(0.0, 0.0, 0.0)):
    """Axis-aligned box, 24 vertices (one quad per side, own UVs), 12 faces; returns v, f, uv."""
    sx, sy, sz = np.asarray(size, dtype=np.float64) / 2
    quads = [  # corners in order (bl, br, tr, tl) seen from outside
        [(1, -1, 1), (1, -1, -1), (1, 1, -1), (1, 1, 1)],  # +X
        [(-1, -1, -1), (-1, -1, 1), (-1, 1, 1), (-1, 1, -1)],  # -X
        [(-1, 1, 1), (1, 1, 1), (1, 1, -1), (-1, 1, -1)],  # +Y
        [(-1, -1, -1), (1, -1, -1), (1, -1, 1), (-1, -1, 1)],  # -Y
        [(-1, -1, 1), (1, -1, 1), (1, 1, 1), (-1, 1, 1)],  # +Z
        [(1, -1, -1), (-1, -1, -1), (-1, 1, -1), (1, 1, -1)],  # -Z
    ]
    v = np.array(quads, dtype=np.float64).reshape(-1, 3) * [sx, sy, sz] + np.asarray(center)
    f = np.array([[4 * k, 4 * k + 1, 4 * k + 2] for k in range(6)] + [[4 * k, 4 * k + 2, 4 * k + 3] for k in range(6)])
    uv = np.tile(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64), (6, 1))
    return v, f.astype(np.int64), uv


def marked_quad():
    """A square in the plane x = 0 facing +X, textured so that, seen from +X with +Y up, the image
    appears upright and unmirrored: image top-left at (y=+1, z=+1). UVs glTF-style (v down)."""
    v = np.array([[0, 1, 1], [0, 1, -1], [0, -1, -1], [0, -1, 1]], dtype=np.float64)
    f = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64)
    uv_gltf = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    return v, f, uv_gltf


def flat_card(width: float = 2.0, height: float = 1.0):
    """A flat rectangle in the plane z = 0 (two faces, UVs glTF-style): seen edge-on from the +X and
    -X sides, i.e. by the views at 0° and 180° of the orbit."""
    w, h = width / 2, height / 2
    v = np.array([[-w, h, 0], [w, h, 0], [w, -h, 0], [-w, -h, 0]], dtype=np.float64)
    f = np.array([[0, 3, 2], [0, 2, 1]], dtype=np.int64)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    return v, f, uv


def low_poly():
    """Large triangles: an octahedron-like shape with uneven extents."""
    v = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1.4, 0], [0, -0.7, 0], [0, 0, 0.9], [0, 0, -1.2]])
    f = np.array([[0, 2, 4], [4, 2, 1], [1, 2, 5], [5, 2, 0], [0, 4, 3], [4, 1, 3], [1, 5, 3], [5, 0, 3]])
    return v, f.astype(np.int64)


# ---------------------------------------------------------------- textures

QUADRANT_COLOURS = {"top_left": (255, 0, 0), "top_right": (0, 255, 0),
                    "bottom_left": (0, 0, 255), "bottom_right": (255, 255, 0)}


def marked_texture(size: int = 64) -> Image.Image:
    """Four coloured quadrants plus a black 'F' in the top-left one (readable, chiral)."""
    img = Image.new("RGB", (size, size))
    d = ImageDraw.Draw(img)
    h = size // 2
    d.rectangle([0, 0, h - 1, h - 1], fill=QUADRANT_COLOURS["top_left"])
    d.rectangle([h, 0, size - 1, h - 1], fill=QUADRANT_COLOURS["top_right"])
    d.rectangle([0, h, h - 1, size - 1], fill=QUADRANT_COLOURS["bottom_left"])
    d.rectangle([h, h, size - 1, size - 1], fill=QUADRANT_COLOURS["bottom_right"])
    u = size // 16
    d.rectangle([2 * u, 2 * u, 3 * u - 1, 7 * u - 1], fill=(0, 0, 0))  # F stem
    d.rectangle([2 * u, 2 * u, 6 * u - 1, 3 * u - 1], fill=(0, 0, 0))  # F top bar
    d.rectangle([2 * u, 4 * u, 5 * u - 1, 5 * u - 1], fill=(0, 0, 0))  # F middle bar
    return img


def smooth_texture(size: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colourful RGB texture (bilinear-friendly: gentle gradients)."""
    y, x = np.mgrid[0:size, 0:size] / size
    r = 0.5 + 0.5 * np.sin(2 * np.pi * (x + seed * 0.1))
    g = 0.5 + 0.5 * np.cos(2 * np.pi * y)
    b = 0.5 + 0.5 * np.sin(2 * np.pi * (x + y))
    return Image.fromarray((np.stack([r, g, b], -1) * 255).round().astype(np.uint8))


def texture_in_mode(mode: str, size: int = 32) -> tuple[Image.Image, np.ndarray]:
    """A texture stored in PIL mode ``mode`` ('L', 'LA', 'RGBA', 'P', 'I;16', 'RGB') and the
    [H,W,3] float RGB (0..1) it stands for."""
    y, x = np.mgrid[0:size, 0:size]
    grey = ((x * 7 + y * 3) % 256).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(grey, "L"), np.repeat(grey[..., None], 3, 2) / 255
    if mode == "LA":
        la = np.stack([grey, np.full_like(grey, 128)], -1)
        return Image.fromarray(la, "LA"), np.repeat(grey[..., None], 3, 2) / 255
    if mode == "I;16":
        g16 = grey.astype(np.uint16) * 257
        return Image.fromarray(g16), np.repeat(grey[..., None], 3, 2) / 255
    rgb = np.stack([grey, 255 - grey, (x * 8 % 256).astype(np.uint8)], -1)
    if mode == "RGBA":
        rgba = np.concatenate([rgb, np.full_like(grey, 60)[..., None]], -1)
        return Image.fromarray(rgba, "RGBA"), rgb / 255
    if mode == "P":
        palette_img = Image.fromarray(rgb, "RGB").quantize(colors=64)
        return palette_img, np.asarray(palette_img.convert("RGB")) / 255
    return Image.fromarray(rgb, "RGB"), rgb / 255


def huge_png(path, width: int, height: int) -> Path:
    """A valid 1-bit greyscale PNG of width x height pixels (all black), streamed: a few kB on disk
    and in memory however many pixels it has (e.g. a texture over Pillow's decompression-bomb limit)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = bytearray()
    for _ in range(height):
        idat += z.compress(row)
    idat += z.flush()
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))
    return path


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- glTF writer


@dataclass
class GltfPart:
    """One mesh primitive placed by one node."""

    vertices: np.ndarray  # [V,3]
    faces: np.ndarray  # [F,3]
    uv: np.ndarray | None = None  # [V,2] glTF convention (v down, (0,0) = image top-left)
    colors: np.ndarray | None = None  # [V,3|4] float 0..1 (COLOR_0)
    texture: Image.Image | bytes | None = None  # bytes: stored as they are (damaged or huge images)
    factor: tuple | None = None  # baseColorFactor RGBA (linear)
    matrix: np.ndarray | None = None  # 4x4 node transform (world = matrix @ local)
    translation: tuple | None = None
    rotation: tuple | None = None  # quaternion x,y,z,w
    scale: tuple | None = None
    children: list = field(default_factory=list)  # extra GltfPart under this node (transforms compose)
    primitives: list = field(default_factory=list)  # extra GltfPart geometry as more primitives of this mesh


def write_glb(path, parts: list[GltfPart]) -> Path:
    """Write a GLB with one node (and one mesh) per part; returns the path."""
    gltf, blob = build_gltf(parts)
    js = json.dumps(gltf).encode()
    js += b" " * (-len(js) % 4)
    blob += b"\0" * (-len(blob) % 4)
    out = struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js) + 8 + len(blob))
    out += struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(blob), 0x004E4942) + blob
    path = Path(path)
    path.write_bytes(out)
    return path


def write_gltf(path, parts: list[GltfPart]) -> Path:
    """Write a .gltf with an external .bin and external .png textures beside it."""
    path = Path(path)
    gltf, blob = build_gltf(parts, external_images=path.parent, stem=path.stem)
    bin_name = path.stem + ".bin"
    (path.parent / bin_name).write_bytes(blob)
    gltf["buffers"] = [{"uri": bin_name, "byteLength": len(blob)}]
    path.write_text(json.dumps(gltf))
    return path


def build_gltf(parts, external_images: Path | None = None, stem: str = "asset"):
    gltf = {"asset": {"version": "2.0", "generator": "refany3d-tests"}, "scenes": [{"nodes": []}], "scene": 0,
            "nodes": [], "meshes": [], "accessors": [], "bufferViews": [], "materials": []}
    blob = bytearray()

    def add_view(data: bytes, target=None) -> int:
        while len(blob) % 4:
            blob.append(0)
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target:
            view["target"] = target
        blob.extend(data)
        gltf["bufferViews"].append(view)
        return len(gltf["bufferViews"]) - 1

    def add_accessor(arr: np.ndarray, kind: str, ctype: int, target=None, minmax=False) -> int:
        acc = {"bufferView": add_view(arr.tobytes(), target), "componentType": ctype,
               "count": int(arr.shape[0]), "type": kind}
        if minmax:
            acc["min"] = arr.min(0).tolist()
            acc["max"] = arr.max(0).tolist()
        gltf["accessors"].append(acc)
        return len(gltf["accessors"]) - 1

    def add_primitive(part: GltfPart) -> dict:
        attrs = {"POSITION": add_accessor(np.asarray(part.vertices, np.float32), "VEC3", 5126, 34962, True)}
        if part.uv is not None:
            attrs["TEXCOORD_0"] = add_accessor(np.asarray(part.uv, np.float32), "VEC2", 5126, 34962)
        if part.colors is not None:
            c = np.asarray(part.colors, np.float32)
            attrs["COLOR_0"] = add_accessor(c, "VEC4" if c.shape[1] == 4 else "VEC3", 5126, 34962)
        prim = {"attributes": attrs,
                "indices": add_accessor(np.asarray(part.faces, np.uint32).reshape(-1), "SCALAR", 5125, 34963)}
        if part.texture is not None or part.factor is not None:
            pbr = {"metallicFactor": 0.0}
            if part.factor is not None:
                pbr["baseColorFactor"] = [float(x) for x in part.factor]
            if part.texture is not None:
                gltf.setdefault("images", [])
                gltf.setdefault("textures", [])
                gltf.setdefault("samplers", [{"magFilter": 9729, "minFilter": 9729}])
                data = part.texture if isinstance(part.texture, bytes) else png_bytes(part.texture)
                if external_images is not None:
                    name = f"{stem}_tex{len(gltf['images'])}.png"
                    (external_images / name).write_bytes(data)
                    gltf["images"].append({"uri": name})
                else:
                    gltf["images"].append({"bufferView": add_view(data), "mimeType": "image/png"})
                gltf["textures"].append({"source": len(gltf["images"]) - 1, "sampler": 0})
                pbr["baseColorTexture"] = {"index": len(gltf["textures"]) - 1}
            gltf["materials"].append({"pbrMetallicRoughness": pbr})
            prim["material"] = len(gltf["materials"]) - 1
        return prim

    def add_part(part: GltfPart) -> int:
        gltf["meshes"].append({"primitives": [add_primitive(part)] + [add_primitive(p) for p in part.primitives]})
        node = {"mesh": len(gltf["meshes"]) - 1}
        if part.matrix is not None:
            node["matrix"] = np.asarray(part.matrix, np.float64).T.reshape(-1).tolist()  # column-major
        for key in ("translation", "rotation", "scale"):
            if getattr(part, key) is not None:
                node[key] = [float(x) for x in getattr(part, key)]
        gltf["nodes"].append(node)
        index = len(gltf["nodes"]) - 1
        if part.children:
            node["children"] = [add_part(c) for c in part.children]
        return index

    for part in parts:
        gltf["scenes"][0]["nodes"].append(add_part(part))
    if not gltf["materials"]:
        del gltf["materials"]
    return gltf, bytes(blob)


def part_world_transform(part: GltfPart) -> np.ndarray:
    """4x4 local transform of a node as glTF composes it (matrix, else T * R * S)."""
    if part.matrix is not None:
        return np.asarray(part.matrix, np.float64)
    m = np.eye(4)
    if part.scale is not None:
        m = np.diag([*part.scale, 1.0]) @ m
    if part.rotation is not None:
        x, y, z, w = part.rotation
        r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        rot = np.eye(4)
        rot[:3, :3] = r
        m = rot @ m
    if part.translation is not None:
        t = np.eye(4)
        t[:3, 3] = part.translation
        m = t @ m
    return m


def flatten_parts(parts: list[GltfPart], parent: np.ndarray | None = None):
    """[(part, world 4x4)] for every part of a part tree."""
    parent = np.eye(4) if parent is None else parent
    out = []
    for p in parts:
        world = parent @ part_world_transform(p)
        out.append((p, world))
        out.extend(flatten_parts(p.children, world))
    return out


# ---------------------------------------------------------------- other formats and damaged files


def write_obj(path, vertices, faces, uv_gltf=None, texture: Image.Image | None = None, diffuse=None) -> Path:
    """OBJ (+MTL, + PNG map_Kd) with OBJ UVs (v up)."""
    path = Path(path)
    lines = []
    if texture is not None or diffuse is not None:
        mtl = path.with_suffix(".mtl")
        kd = diffuse if diffuse is not None else (1.0, 1.0, 1.0)
        mtl_lines = ["newmtl m0", f"Kd {kd[0]} {kd[1]} {kd[2]}"]
        if texture is not None:
            tex_name = path.stem + "_kd.png"
            texture.save(path.parent / tex_name)
            mtl_lines.append(f"map_Kd {tex_name}")
        mtl.write_text("\n".join(mtl_lines) + "\n")
        lines += [f"mtllib {mtl.name}", "usemtl m0"]
    lines += [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in np.asarray(vertices, float)]
    if uv_gltf is not None:
        lines += [f"vt {u:.9g} {1 - v:.9g}" for u, v in np.asarray(uv_gltf, float)]
        lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
    else:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ply(path, vertices, faces, colors_u8=None) -> Path:
    """Binary little-endian PLY with optional uint8 vertex colours."""
    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces, np.int32)
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {len(v)}",
            "property float x", "property float y", "property float z"]
    if colors_u8 is not None:
        head += ["property uchar red", "property uchar green", "property uchar blue"]
    head += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    if colors_u8 is not None:
        vt = np.zeros(len(v), dtype=[("p", "<f4", 3), ("c", "u1", 3)])
        vt["p"], vt["c"] = v, np.asarray(colors_u8, np.uint8)
    else:
        vt = v
    ft = np.zeros(len(f), dtype=[("n", "u1"), ("i", "<i4", 3)])
    ft["n"], ft["i"] = 3, f
    path = Path(path)
    path.write_bytes(("\n".join(head) + "\n").encode() + vt.tobytes() + ft.tobytes())
    return path


def write_stl(path, vertices, faces) -> Path:
    tri = np.asarray(vertices, np.float32)[np.asarray(faces)]
    rec = np.zeros(len(tri), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")])
    rec["v"] = tri
    path = Path(path)
    path.write_bytes(b"\0" * 80 + struct.pack("<I", len(tri)) + rec.tobytes())
    return path


def textured_box_glb(path) -> Path:
    v, f, uv = box()
    return write_glb(path, [GltfPart(v, f, uv=uv, texture=smooth_texture(32))])


def truncated_copy(src, dst, keep: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def corrupt_glb(path) -> Path:
    """Right GLB magic and header, garbage JSON chunk."""
    js = b"{ this is not json ]"
    js += b" " * (-len(js) % 4)
    data = struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js)) + struct.pack("<II", len(js), 0x4E4F534A) + js
    Path(path).write_bytes(data)
    return Path(path)
