"""RefAny3D Load 3D Asset -> Render Views inside the real headless ComfyUI: upload through
/upload/image to input/3d, run through /prompt, read the saved images back."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh
from tools.assets_gen import GltfPart, box, corrupt_glb, smooth_texture, uv_sphere, write_glb
from tools.comfy_http import PromptRejected
from PIL import Image


@pytest.fixture(scope="module")
def asset_name(comfy, tmp_path_factory):
    """A textured sphere plus a coloured box, uploaded like the UI's upload button does."""
    d = tmp_path_factory.mktemp("render-comfy")
    v, f, uv = uv_sphere(32, 64, radius=0.8)
    bv, bf, _ = box((0.5, 0.5, 0.5))
    parts = [GltfPart(v, f, uv=np.c_[uv[:, 0], 1 - uv[:, 1]], texture=smooth_texture(64)),
             GltfPart(bv, bf, factor=(0.1, 0.6, 0.2, 1.0), translation=(0.0, 0.9, 0.0))]
    name = comfy.upload(write_glb(d / "refany3d_test_asset.glb", parts), subfolder="3d")
    assert name == "3d/refany3d_test_asset.glb"
    assert (comfy.input_dir / "3d" / "refany3d_test_asset.glb").is_file()
    return name


def render_graph(asset_file, res=128, views=8, **extra):
    render = {"asset": ["1", 0], "num_views": views, "preset": "release", "resolution": res, "pitch": 0.0,
              "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}
    render.update(extra)
    return {
        "1": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset_file}},
        "2": {"class_type": "RefAny3DRenderViews", "inputs": render},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "refany3d/rgb"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "refany3d/pm"}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "refany3d/mask"}},
    }


def load(paths):
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255 for p in paths])


def test_schema_tooltips_and_upload_widget(comfy):
    info = comfy.object_info()
    load_node, render = info["RefAny3DLoadAsset"], info["RefAny3DRenderViews"]
    assert load_node["category"] == "RefAny3D/asset" and render["category"] == "RefAny3D/render"
    assert load_node["input"]["optional"]["asset_file"][1].get("file_upload") is True
    assert load_node["input"]["optional"]["mesh"][0] == "MESH"
    assert render["output"] == ["IMAGE", "IMAGE", "MASK"]
    assert render["input"]["required"]["preset"][1]["default"] == "release"
    assert render["input"]["required"]["num_views"][1]["default"] == 8
    assert render["input"]["required"]["resolution"][1]["default"] == 512
    for node in (load_node, render, info["RefAny3DAssetToMesh"]):
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), name


def test_load_render_save_end_to_end(comfy, asset_name):
    res, n = 128, 8
    result = comfy.run(render_graph(asset_name, res, n), timeout=300)
    assert result.status == "success", result.error_text()
    rgb = load(comfy.output_files(result, "3"))
    pm = load(comfy.output_files(result, "4"))
    mask = load(comfy.output_files(result, "6"))[..., 0] > 0.5
    assert rgb.shape == pm.shape == (n, res, res, 3) and mask.shape == (n, res, res)
    for k in range(n):
        m = mask[k]
        assert (rgb[k][~m] == 1).all() and (pm[k][~m] == 1).all()  # pure white background
        assert 0.1 < m.mean() < 0.6
        rows, cols = np.nonzero(m)
        # object centred: the bounding box of the normalised asset projects around the image centre
        assert abs((rows.min() + rows.max()) / 2 - res / 2) < res * 0.1
        assert abs((cols.min() + cols.max()) / 2 - res / 2) < res * 0.1
        assert (pm[k][m] >= 0).all() and (pm[k][m] <= 1).all()
        assert (rgb[k][m] < 0.99).any(axis=1).mean() > 0.9  # coloured, not background
    # point-map channels span the bounding box over the orbit
    obj = pm[mask]
    assert obj.min(axis=0).max() < 0.15 and obj.max(axis=0).min() > 0.85
    # view 0 looks at +X: the middle of view 0 has R near 1
    assert pm[0, res // 2, res // 2, 0] > 0.9
    # progress reported per view for the render node
    prog = [p for p in result.progress() if p.get("node") == "2"]
    assert prog and prog[-1]["value"] == prog[-1]["max"] == n


def test_mesh_input_and_asset_to_mesh(comfy, asset_name):
    graph = render_graph(asset_name, 64, 2)
    graph["7"] = {"class_type": "RefAny3DAssetToMesh", "inputs": {"asset": ["1", 0], "normalised": True}}
    graph["8"] = {"class_type": "SaveGLB", "inputs": {"mesh": ["7", 0], "filename_prefix": "mesh/refany3d"}}
    graph["9"] = {"class_type": "RefAny3DLoadAsset", "inputs": {"mesh": ["7", 0]}}  # no file: the MESH is used
    graph["10"] = {"class_type": "RefAny3DRenderViews", "inputs": dict(graph["2"]["inputs"], asset=["9", 0])}
    graph["11"] = {"class_type": "MaskToImage", "inputs": {"mask": ["10", 2]}}
    graph["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "refany3d/mesh_mask"}}
    result = comfy.run(graph, timeout=300)
    assert result.status == "success", result.error_text()
    glbs = comfy.output_files(result, "8", key="3d")
    assert len(glbs) == 1 and glbs[0].is_file()
    mesh = trimesh.load(glbs[0], force="mesh", process=False)
    assert len(mesh.faces) == 2 * 32 * 64 + 12
    assert np.allclose(np.abs(mesh.bounds).max(), 1.0, atol=1e-5)  # the normalised [-1, 1] frame
    # the MESH-built asset has the same silhouettes as the file it came from
    a = load(comfy.output_files(result, "6"))
    b = load(comfy.output_files(result, "12"))
    assert np.array_equal(a, b)


def test_cancel_stops_the_render(comfy, asset_name):
    client = comfy.client
    sent = []

    def on_message(msg):
        data = msg.get("data") or {}
        if msg.get("type") == "progress" and data.get("node") == "2" and not sent:
            sent.append(True)
            client.interrupt()

    graph = render_graph(asset_name, 1024, 60, preset="even")
    result = client.run(graph, timeout=300, on_message=on_message)
    assert sent and result.status == "interrupted"
    prog = [m["data"] for m in result.messages if m.get("type") == "progress" and m["data"].get("node") == "2"]
    assert prog[-1]["value"] < 60


def test_bad_inputs_get_clear_errors(comfy, tmp_path, asset_name):
    with pytest.raises(PromptRejected, match="input folder"):
        comfy.submit(render_graph("3d/../../secret.glb"))
    with pytest.raises(PromptRejected, match="absolute"):
        comfy.submit(render_graph("/etc/passwd"))
    with pytest.raises(PromptRejected, match="bigger than max of 4096"):
        comfy.submit(render_graph(asset_name, res=5000))
    odd = comfy.run(render_graph(asset_name, res=500), timeout=120)  # only an API caller can send it
    assert odd.status == "error" and "multiple of 16" in odd.error["exception_message"]
    with pytest.raises(PromptRejected):
        comfy.submit(render_graph(asset_name, views=65))
    missing = comfy.run(render_graph("3d/not_there.glb"), timeout=120)
    assert missing.status == "error" and "not found" in missing.error["exception_message"]
    nothing = render_graph(asset_name)
    nothing["1"]["inputs"] = {}
    none = comfy.run(nothing, timeout=120)
    assert none.status == "error" and "no 3D file chosen" in none.error["exception_message"]
    bad = comfy.upload(corrupt_glb(tmp_path / "broken.glb"), subfolder="3d")
    broken = comfy.run(render_graph(bad), timeout=120)
    assert broken.status == "error"
    assert "broken.glb" in broken.error["exception_message"] and "not a valid GLB" in broken.error["exception_message"]
    assert broken.error["exception_type"].endswith("AssetError")
