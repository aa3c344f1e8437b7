"""Compressed glTF: a Draco file written here with DracoPy's own encoder renders like its
uncompressed twin (Draco quantises positions and UVs: mask IoU >= 0.995, mean colour difference
<= 3/255); without the decoder the message names the package to install."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from tools.assets_gen import smooth_texture, uv_sphere
from tools.gltf_build import GltfBuilder

import rendering

DRACO_POSITION, DRACO_COLOR, DRACO_TEX_COORD = 0, 2, 3  # draco::GeometryAttribute::Type


def sphere_data():
    v, f, uv = uv_sphere(24, 48)
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


def test_draco_renders_like_its_uncompressed_twin(tmp_path):
    plain, draco = write_twins(tmp_path)
    a = rendering.render_views(rendering.load_asset(plain), num_views=8, resolution=128)
    b = rendering.render_views(rendering.load_asset(draco), num_views=8, resolution=128)
    ma, mb = a.mask.bool(), b.mask.bool()
    iou = (ma & mb).sum().item() / (ma | mb).sum().item()
    both = (ma & mb).numpy()
    colour = np.abs(a.rgb.numpy()[both] - b.rgb.numpy()[both]).mean()
    assert both.sum() > 8 * 3000
    assert iou >= 0.995, iou
    assert colour <= 3 / 255, colour * 255


def test_draco_without_its_decoder_names_the_package(tmp_path):
    _, draco = write_twins(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["DracoPy"] = None  # as if it were not installed: importing it raises ImportError
        import rendering
        try:
            rendering.load_asset({str(draco)!r})
        except rendering.AssetError as e:
            print("REFUSED", e)
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "pip install DracoPy" in out.stdout, out.stdout
    assert "zero size" not in out.stdout and "blank" not in out.stdout
