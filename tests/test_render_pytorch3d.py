"""The optional "pytorch3d" rendering backend (issue 13): PyTorch3D's rasterizer as a second,
independent oracle for the pack's renderer, and as a node option through the real server.

On the ComfyUI v0.31.0 leg the test venv has PyTorch3D (easypytorch3d, built for its torch 2.11);
on the v0.3.75 leg it does not, and the tests there check the clear message instead.
"""
from __future__ import annotations

import numpy as np
import pytest
from tools.assets_gen import GltfPart, box, smooth_texture, uv_sphere, write_glb, write_ply

import rendering

from rendering.pytorch3d_backend import pytorch3d_available

HAVE_PYTORCH3D = pytorch3d_available()
needs_pytorch3d = pytest.mark.skipif(not HAVE_PYTORCH3D, reason="PyTorch3D is installed on the v0.31.0 leg only")


def textured_sphere(tmp_path):
    v, f, uv = uv_sphere(24, 48, radius=0.8)
    return write_glb(tmp_path / "textured.glb", [GltfPart(v, f, uv=np.c_[uv[:, 0], 1 - uv[:, 1]],
                                                          texture=smooth_texture(64))])


def multi_part(tmp_path):
    v, f, uv = uv_sphere(16, 32, radius=0.6)
    bv, bf, _ = box((0.5, 0.3, 0.7))
    return write_glb(tmp_path / "scene.glb", [
        GltfPart(v, f, uv=np.c_[uv[:, 0], 1 - uv[:, 1]], texture=smooth_texture(32, seed=1)),
        GltfPart(bv, bf, factor=(0.1, 0.6, 0.2, 1.0), translation=(0.0, 0.8, 0.2), rotation=(0.0, 0.38, 0.0, 0.92)),
        GltfPart(bv, bf, factor=(0.8, 0.2, 0.1, 1.0), translation=(0.7, -0.4, 0.0))])


def vertex_colours(tmp_path):
    v, f, _ = uv_sphere(20, 40, radius=1.0)
    colours = ((v - v.min(0)) / np.ptp(v, 0) * 255).round().astype(np.uint8)
    return write_ply(tmp_path / "colours.ply", v * [1.0, 0.6, 0.8], f, colors_u8=colours)


@needs_pytorch3d
@pytest.mark.parametrize("make", [textured_sphere, multi_part, vertex_colours])
@pytest.mark.parametrize("resolution", [64, 128])
def test_pytorch3d_and_the_pack_render_the_same_views(tmp_path, make, resolution):
    asset = rendering.load_asset(make(tmp_path))
    kwargs = dict(num_views=8, resolution=resolution, pitch=15.0, y_rotation=30.0)
    pack = rendering.render_views(asset, **kwargs)
    p3d = rendering.render_views(asset, **kwargs, backend="pytorch3d")
    union = ((pack.mask + p3d.mask) > 0).sum()
    assert float((pack.mask * p3d.mask).sum() / union) >= 0.999
    both = (pack.mask * p3d.mask) > 0
    assert int(both.sum()) > 8 * resolution ** 2 // 10  # the object fills a good part of every view
    point_map = (pack.point_map - p3d.point_map).abs().amax(-1)[both]
    rgb = (pack.rgb - p3d.rgb).abs().amax(-1)[both]
    assert float((point_map <= 2 / 255).float().mean()) >= 0.999
    assert float((rgb <= 3 / 255).float().mean()) >= 0.999
    assert float((pack.depth - p3d.depth).abs()[both].max()) < 1e-3
    assert np.array_equal(pack.rgb[~both].numpy(), p3d.rgb[~both].numpy())  # white background in both


@pytest.mark.skipif(HAVE_PYTORCH3D, reason="PyTorch3D is installed here: the message is for where it is not")
def test_missing_pytorch3d_says_what_to_install(tmp_path):
    asset = rendering.load_asset(textured_sphere(tmp_path))
    with pytest.raises(rendering.AssetError, match=r"needs PyTorch3D.*pip install easypytorch3d==0\.7\.9\.post1.*"
                                                   r"torch 2\.11.*use the 'pack' backend"):
        rendering.render_views(asset, num_views=1, resolution=32, backend="pytorch3d")


def test_unknown_backend_is_refused(tmp_path):
    asset = rendering.load_asset(textured_sphere(tmp_path))
    with pytest.raises(rendering.AssetError, match="rendering backend must be one of pack, pytorch3d, got 'opengl'"):
        rendering.render_views(asset, num_views=1, resolution=32, backend="opengl")


# --------------------------------------------------------------------------------------------- server

def render_graph(asset_name: str, backend: str) -> dict:
    return {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": f"3d/{asset_name}"}},
            "render": {"class_type": "RefAny3DRenderViews",
                       "inputs": {"asset": ["asset", 0], "num_views": 2, "preset": "release", "resolution": 64,
                                  "pitch": 0.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0, "backend": backend}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["render", 1], "filename_prefix": f"p3d_{backend}"}}}


@needs_pytorch3d
def test_render_views_with_pytorch3d_feeds_refany3d_apply(comfy, tmp_path):
    from test_transformer_comfy import graph, provide_models, upload_asset
    sub, asset = provide_models(comfy.models_dir), upload_asset(comfy, tmp_path)
    g = graph(sub, asset, steps=1)
    g["render"]["inputs"]["backend"] = "pytorch3d"
    result = comfy.run(g, timeout=600)
    assert result.status == "success", result.error_text()
    assert len(comfy.output_files(result, "save_rgb")) == 1
    # the same point-map references as the default backend, saved through the server
    runs = {b: comfy.run(render_graph(asset.split("/", 1)[1], b), timeout=300) for b in ("pack", "pytorch3d")}
    images = {}
    from PIL import Image
    for b, run in runs.items():
        assert run.status == "success", run.error_text()
        images[b] = [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in comfy.output_files(run, "save")]
    for a, b in zip(images["pack"], images["pytorch3d"]):
        assert (np.abs(a - b).max(-1) <= 2).mean() >= 0.999


@pytest.mark.skipif(HAVE_PYTORCH3D, reason="PyTorch3D is installed here: the message is for where it is not")
def test_choosing_pytorch3d_without_it_is_a_clear_error_and_the_default_still_works(comfy, tmp_path):
    from test_transformer_comfy import upload_asset
    asset = upload_asset(comfy, tmp_path).split("/", 1)[1]
    result = comfy.run(render_graph(asset, "pytorch3d"), timeout=300)
    assert result.status == "error" and result.error["node_type"] == "RefAny3DRenderViews"
    assert "pip install easypytorch3d==0.7.9.post1" in result.error_text() and "'pack' backend" in result.error_text()
    assert comfy.run(render_graph(asset, "pack"), timeout=300).status == "success"
