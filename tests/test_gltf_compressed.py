"""Compressed glTF: a Draco file written here with DracoPy's own encoder, meshopt files written
with meshopt's own encoder (every mode and filter of EXT_meshopt_compression, float and
KHR_mesh_quantization layouts) and a KTX2 texture written with alktx2's Basis Universal encoder
render like their uncompressed twins (the codecs quantise: mask IoU >= 0.995, mean colour
difference <= 3/255, <= 8/255 for ETC1S textures); without the decoder the message names the
package to install (or the fallback is read), and damaged compressed data is refused naming the
bufferView."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from tools.assets_gen import smooth_texture, uv_sphere
from tools.gltf_build import GltfBuilder

import rendering
from rendering.gltf_compressed import decode_compressed_primitives
from rendering.gltf_document import GltfDocument

from conftest import load_without

DRACO_POSITION, DRACO_COLOR, DRACO_TEX_COORD = 0, 2, 3  # draco::GeometryAttribute::Type


def sphere_data(n_lat: int = 24, n_lon: int = 48):
    v, f, uv = uv_sphere(n_lat, n_lon)
    rng = np.random.default_rng(2)
    colors = rng.uniform(0.6, 1.0, (len(v), 3))
    return v, f, np.c_[uv[:, 0], 1 - uv[:, 1]], colors


def write_twins(folder: Path) -> tuple[Path, Path]:
    import DracoPy
    v, f, uv, colors = sphere_data()
    texture = smooth_texture(64, seed=5)
    plain = GltfBuilder()
    mat = plain.material(pbrMetallicRoughness={"baseColorTexture": {"index": plain.texture(texture)}})
    plain.node(mesh=plain.mesh([plain.triangles(v, f, mat, TEXCOORD_0=uv, COLOR_0=colors)]))
    plain.glb(folder / "plain.glb")

    data = DracoPy.encode(v, f, quantization_bits=14, tex_coord=uv, tex_coord_quantization_bits=12,
                          colors=np.round(colors * 255).astype(np.uint8), preserve_order=True)
    ids = {a["attribute_type"]: a["unique_id"] for a in DracoPy.decode(data).attributes}
    g = GltfBuilder()
    mat = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": g.texture(texture)}})
    view = g.view(data)

    def empty(count, kind, ctype=5126, normalized=False):
        acc = {"componentType": ctype, "count": count, "type": kind}
        if normalized:
            acc["normalized"] = True
        return g.add("accessors", acc)
    prim = {"attributes": {"POSITION": empty(len(v), "VEC3"), "TEXCOORD_0": empty(len(v), "VEC2"),
                           "COLOR_0": empty(len(v), "VEC3", 5121, True)},
            "indices": empty(f.size, "SCALAR", 5125), "material": mat,
            "extensions": {"KHR_draco_mesh_compression": {"bufferView": view, "attributes": {
                "POSITION": ids[DRACO_POSITION], "TEXCOORD_0": ids[DRACO_TEX_COORD], "COLOR_0": ids[DRACO_COLOR]}}}}
    g.tree["accessors"][prim["attributes"]["POSITION"]].update(min=v.min(0).tolist(), max=v.max(0).tolist())
    g.node(mesh=g.mesh([prim]))
    g.tree["extensionsUsed"] = g.tree["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    g.glb(folder / "draco.glb")
    return folder / "plain.glb", folder / "draco.glb"


def assert_renders_alike(plain: Path, compressed: Path, min_pixels: int = 8 * 3000, max_colour: float = 3 / 255):
    a = rendering.render_views(rendering.load_asset(plain), num_views=8, resolution=128)
    b = rendering.render_views(rendering.load_asset(compressed), num_views=8, resolution=128)
    ma, mb = a.mask.bool(), b.mask.bool()
    iou = (ma & mb).sum().item() / (ma | mb).sum().item()
    both = (ma & mb).numpy()
    colour = np.abs(a.rgb.numpy()[both] - b.rgb.numpy()[both]).mean()
    assert both.sum() > min_pixels
    assert iou >= 0.995, iou
    assert colour <= max_colour, colour * 255


def test_draco_renders_like_its_uncompressed_twin(tmp_path):
    assert_renders_alike(*write_twins(tmp_path))


def test_draco_without_its_decoder_names_the_package(tmp_path):
    _, draco = write_twins(tmp_path)
    out = load_without("DracoPy", draco)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "pip install DracoPy" in out.stdout, out.stdout
    assert "zero size" not in out.stdout and "blank" not in out.stdout


# ---------------------------------------------------------------- EXT_meshopt_compression

INSTANCES = 3


def instance_transforms():
    """Three instances side by side, each turned about its own axis (unit quaternions, xyzw)."""
    translation = np.array([[-2.4, 0.0, 0.3], [0.0, 0.5, -0.2], [2.4, -0.1, 0.1]])
    axes = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.3, 0.9, 0.3]])
    angles = np.array([0.7, -0.9, 2.1])
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    rotation = np.c_[axes * np.sin(angles / 2)[:, None], np.cos(angles / 2)]
    return translation, rotation


def ground():
    """A coloured upright panel behind the spheres (RGBA vertex colours), as triangles."""
    xx, yy = np.meshgrid(np.linspace(-3.5, 3.5, 6), np.linspace(-1.2, 1.2, 6))
    v = np.c_[xx.ravel(), yy.ravel(), np.full(xx.size, -1.6)]
    quads = [(i * 6 + j, i * 6 + j + 1, (i + 1) * 6 + j + 1, (i + 1) * 6 + j) for i in range(5) for j in range(5)]
    f = np.array([t for a, b, c, d in quads for t in ((a, c, b), (a, d, c))])
    colors = np.c_[0.2 + 0.6 * (v[:, 0] + 3.5) / 7, 0.3 + 0.5 * (v[:, 1] + 1.2) / 2.4, np.full(len(v), 0.4), np.ones(len(v))]
    return v, f, colors


def write_meshopt_twins(folder: Path, quantized: bool, fallback: bool = False, name: str = "meshopt"):
    """(plain, compressed) GLBs of the same scene. float: textured spheres drawn by
    EXT_mesh_gpu_instancing (TRANSLATION with the EXPONENTIAL filter, ROTATION with QUATERNION) and
    a vertex-coloured ground (indices in INDICES mode); quantized (KHR_mesh_quantization): one
    sphere with uint16 positions under a dequantizing node, uint16 UVs and indices. Both: normals
    with the OCTAHEDRAL filter, sphere indices in TRIANGLES mode."""
    v, f, uv, _ = sphere_data()
    normals = v / np.linalg.norm(v, axis=1, keepdims=True)
    texture = smooth_texture(64, seed=7)
    gv, gf, gcolors = ground()
    translation, rotation = instance_transforms()
    files = []
    for compressed in (False, True):
        g = GltfBuilder()
        mat = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": g.texture(texture)}})

        def acc(values, ctype=5126, normalized=False, mode="ATTRIBUTES", filter="NONE", stride=None, bits=12,
                kind=None, minmax=False, g=g, compressed=compressed):
            if compressed:
                return g.meshopt_accessor(values, ctype, normalized, mode, filter, stride, bits, fallback,
                                          minmax=minmax, kind=kind)
            if filter == "OCTAHEDRAL":  # the twin stores the exact vector
                values, ctype, normalized, stride = values, 5126, False, None
            if filter in ("QUATERNION", "EXPONENTIAL"):
                ctype, normalized = 5126, False
            return g.accessor(values, ctype, normalized, stride=stride, minmax=minmax, kind=kind)
        if quantized:
            lo, hi = v.min(0), v.max(0)
            q = np.round((v - lo) / (hi - lo) * 65535)
            sphere = {"attributes": {"POSITION": acc(q, 5123, stride=8, minmax=True),
                                     "NORMAL": acc(normals, 5120, True, filter="OCTAHEDRAL", bits=8),
                                     "TEXCOORD_0": acc(uv, 5123, True)},
                      "indices": acc(f.reshape(-1), 5123, mode="TRIANGLES"), "material": mat}
            g.node(mesh=g.mesh([sphere]), translation=lo.tolist(), scale=((hi - lo) / 65535).tolist())
            g.tree["extensionsUsed"] = ["KHR_mesh_quantization"]
        else:
            sphere = {"attributes": {"POSITION": acc(v, minmax=True),
                                     "NORMAL": acc(normals, 5122, True, filter="OCTAHEDRAL", stride=8, bits=14),
                                     "TEXCOORD_0": acc(uv)},
                      "indices": acc(f.reshape(-1), 5125, mode="TRIANGLES"), "material": mat}
            instancing = {"attributes": {"TRANSLATION": acc(translation, filter="EXPONENTIAL", bits=20),
                                         "ROTATION": acc(rotation, 5122, True, filter="QUATERNION", bits=16)}}
            g.node(mesh=g.mesh([sphere]), extensions={"EXT_mesh_gpu_instancing": instancing})
            floor = {"attributes": {"POSITION": acc(gv, minmax=True), "COLOR_0": acc(gcolors, 5121, True)},
                     "indices": acc(gf.reshape(-1), 5123, mode="INDICES")}
            g.node(mesh=g.mesh([floor]))
            g.tree["extensionsUsed"] = ["EXT_mesh_gpu_instancing"]
        if compressed:
            g.tree["extensionsUsed"].append(g.meshopt_name)
            if not fallback:
                g.tree["extensionsRequired"] = [g.meshopt_name]
        if quantized:
            g.tree["extensionsRequired"] = g.tree.get("extensionsRequired", []) + ["KHR_mesh_quantization"]
        files.append(g.glb(folder / f"{name}-{'compressed' if compressed else 'plain'}.glb"))
    return files[0], files[1], normals


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "quantized"])
def test_meshopt_renders_like_its_uncompressed_twin(tmp_path, quantized):
    plain, compressed, normals = write_meshopt_twins(tmp_path, quantized)
    tree = GltfDocument(compressed).tree
    filters = {e.get("filter", "NONE") for view in tree["bufferViews"]
               for e in [(view.get("extensions") or {}).get("EXT_meshopt_compression")] if e}
    modes = {e["mode"] for view in tree["bufferViews"] for e in [(view.get("extensions") or {}).get("EXT_meshopt_compression")] if e}
    assert tree["buffers"][1] == {"byteLength": tree["buffers"][1]["byteLength"],
                                  "extensions": {"EXT_meshopt_compression": {"fallback": True}}}
    if not quantized:
        assert filters == {"NONE", "OCTAHEDRAL", "QUATERNION", "EXPONENTIAL"}
        assert modes == {"ATTRIBUTES", "TRIANGLES", "INDICES"}
    assert_renders_alike(plain, compressed, min_pixels=8 * (2500 if quantized else 1200))


def test_meshopt_octahedral_normals_decode_to_the_unit_vectors(tmp_path):
    """Normals do not change the unlit views, so they are checked directly: the decoded accessor holds
    the unit normals (within the 8 bits the encoder kept), which the octahedral bytes themselves are not."""
    _, compressed, normals = write_meshopt_twins(tmp_path, quantized=True)
    doc = GltfDocument(compressed)
    decode_compressed_primitives(doc)
    index = doc.tree["meshes"][0]["primitives"][0]["attributes"]["NORMAL"]
    decoded = doc.accessor(index)
    assert decoded.shape == (len(normals), 3)
    assert np.abs(decoded - normals).max() < 0.03
    view = doc.tree["accessors"][index]["bufferView"]
    encoded = doc.tree["bufferViews"][view]["extensions"]["EXT_meshopt_compression"]
    assert encoded["filter"] == "OCTAHEDRAL" and encoded["byteStride"] == 4


def test_meshopt_damaged_data_is_refused_naming_the_buffer_view(tmp_path):
    _, compressed, _ = write_meshopt_twins(tmp_path, quantized=False)
    tree = GltfDocument(compressed).tree
    position = tree["accessors"][tree["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["bufferView"]
    ext = tree["bufferViews"][position]["extensions"]["EXT_meshopt_compression"]
    data = bytearray(compressed.read_bytes())
    bin_start = 12 + 8 + int.from_bytes(data[12:16], "little") + 8
    broken = {"truncated": {**ext, "byteLength": ext["byteLength"] // 2},
              "header": None,
              "count": {**ext, "count": ext["count"] + 1},
              "mode": {**ext, "mode": "TRIANGLE_STRIP"},
              "filter": {**ext, "filter": "QUATERNION"}}
    for what, new in broken.items():
        if new is None:  # the bitstream's header byte overwritten
            damaged = bytearray(data)
            damaged[bin_start + ext["byteOffset"]] = 0x00
            path = tmp_path / f"{what}.glb"
            path.write_bytes(bytes(damaged))
        else:
            path = rewrite_json(compressed, tmp_path / f"{what}.glb",
                                lambda t, n=new: t["bufferViews"][position]["extensions"].update(EXT_meshopt_compression=n))
        with pytest.raises(rendering.AssetError) as refused:
            rendering.load_asset(path)
        assert f"bufferView {position}" in str(refused.value) and "damaged" in str(refused.value), (what, refused.value)


def rewrite_json(source: Path, target: Path, change) -> Path:
    """A GLB with its JSON chunk changed by ``change(tree)`` and the same BIN chunk."""
    data = source.read_bytes()
    length = int.from_bytes(data[12:16], "little")
    tree = json.loads(data[20:20 + length])
    change(tree)
    js = json.dumps(tree).encode()
    js += b" " * (-len(js) % 4)
    rest = data[20 + length:]
    target.write_bytes(struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js) + len(rest))
                       + struct.pack("<II", len(js), 0x4E4F534A) + js + rest)
    return target


def test_meshopt_without_its_decoder_names_the_package_or_reads_the_fallback(tmp_path):
    plain, required, _ = write_meshopt_twins(tmp_path, quantized=False)
    _, with_fallback, _ = write_meshopt_twins(tmp_path, quantized=False, fallback=True, name="fallback")
    out = load_without("meshopt", required, then=f"""
        a, b = rendering.load_asset({str(plain)!r}), rendering.load_asset({str(with_fallback)!r})
        same = a.vertices.shape == b.vertices.shape and bool((a.vertices - b.vertices).abs().max() < 1e-3)
        print("FALLBACK", same, b.warnings)
    """)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "pip install meshopt" in out.stdout and "3.11" in out.stdout, out.stdout
    assert "EXT_meshopt_compression" in out.stdout
    assert "FALLBACK True []" in out.stdout, out.stdout
    # with the decoder, the file with a fallback reads its compressed data and renders like the twin
    assert_renders_alike(plain, with_fallback, min_pixels=8 * 1200)


# ---------------------------------------------------------------- KHR_texture_basisu (KTX2)

def write_ktx2_twins(folder: Path, fallback: bool = False, sphere: tuple[int, int] = (24, 48)) -> tuple[Path, Path]:
    """(PNG-textured, KTX2-textured) spheres; the KTX2 is ETC1S from alktx2's Basis Universal encoder.
    Without ``fallback`` the texture is given only through KHR_texture_basisu (extension required);
    with it, the texture also names the PNG as its ``source`` (extension merely used)."""
    import io

    import alktx2
    v, f, uv, _ = sphere_data(*sphere)
    texture = smooth_texture(128, seed=3)
    png = io.BytesIO()
    texture.save(png, format="PNG")
    ktx2 = alktx2.encode_bytes_to_ktx2(png.getvalue(), mime="image/png", codec="etc1s", quality=255, srgb=True)
    files = []
    for kind in ("png", "ktx2"):
        g = GltfBuilder()
        if kind == "png":
            tex = g.texture(texture)
        else:
            image = g.add("images", {"bufferView": g.view(ktx2), "mimeType": "image/ktx2"})
            tex = g.add("textures", {"extensions": {"KHR_texture_basisu": {"source": image}}})
            if fallback:
                g.tree["textures"][tex]["source"] = g.image(texture)
            g.tree["extensionsUsed"] = ["KHR_texture_basisu"]
            if not fallback:
                g.tree["extensionsRequired"] = ["KHR_texture_basisu"]
        mat = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": tex}})
        g.node(mesh=g.mesh([g.triangles(v, f, mat, TEXCOORD_0=uv)]))
        files.append(g.glb(folder / f"{kind}{'-fallback' if fallback else ''}.glb"))
    return files[0], files[1]


def test_ktx2_texture_renders_like_its_png_twin(tmp_path):
    plain, ktx2 = write_ktx2_twins(tmp_path)
    assert b"KHR_texture_basisu" in ktx2.read_bytes() and b"image/png" not in ktx2.read_bytes()
    assert_renders_alike(plain, ktx2, max_colour=8 / 255)


def test_ktx2_without_its_decoder_names_the_package_or_reads_the_fallback(tmp_path):
    _, required = write_ktx2_twins(tmp_path)
    _, with_fallback = write_ktx2_twins(tmp_path, fallback=True)
    out = load_without("alktx2", required, then=f"""
        asset = rendering.load_asset({str(with_fallback)!r})
        print("FALLBACK", len(asset.textures), asset.warnings)
    """)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "pip install alktx2" in out.stdout and "PNG or JPEG" in out.stdout, out.stdout
    assert "FALLBACK 1 []" in out.stdout, out.stdout


def test_damaged_ktx2_is_refused_naming_the_texture(tmp_path):
    _, ktx2 = write_ktx2_twins(tmp_path)
    data = bytearray(ktx2.read_bytes())
    at = data.find(b"\xabKTX 20\xbb")
    data[at + 80:at + 200] = bytes(120)  # the level index and format descriptor zeroed
    damaged = tmp_path / "damaged.glb"
    damaged.write_bytes(bytes(data))
    with pytest.raises(rendering.AssetError, match="KHR_texture_basisu.*texture 0 of damaged.glb|texture 0 of damaged.glb.*KTX2"):
        rendering.load_asset(damaged)
