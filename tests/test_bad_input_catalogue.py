"""The bad-input catalogue: every way a careless or hostile user was seen to get a quiet wrong result,
each as a test through the real server (or the real client), each checking three things: the message
says what is wrong and what to do, the server keeps serving, and nothing is written half-way.

To add a case: put it in the section of its area, use ``private`` (a server of its own, so expected
tracebacks stay out of the shared server's log) and end with ``still_serving(server)``.
"""
from __future__ import annotations

import pytest
from tools.comfy_server import ComfyServer

from conftest import COMFY_DIR, TEST_NODES


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    """A ComfyUI server of this module's own, with the pack and the test-only nodes."""
    with ComfyServer(tmp_path_factory.mktemp("comfy-bad-input"), COMFY_DIR, extra_custom_nodes=[TEST_NODES]) as server:
        yield server


def still_serving(server) -> None:
    """The server answers and runs a small render graph after the bad input."""
    from tools.demo_asset import write_demo_asset
    name = "still_serving_box.glb"
    path = server.input_dir / "3d" / name
    if not path.exists():
        write_demo_asset(path)
    graph = {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": f"3d/{name}"}},
             "render": {"class_type": "RefAny3DRenderViews",
                        "inputs": {"asset": ["asset", 0], "num_views": 1, "preset": "release", "resolution": 32,
                                   "pitch": 0.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}},
             "preview": {"class_type": "PreviewImage", "inputs": {"images": ["render", 0]}}}
    result = server.run(graph, timeout=300)
    assert result.status == "success", result.error_text()


# ============================================================================ client (cases 1, 2, 8)


# ============================================================================ weights and latents (cases 3, 9)


# ============================================================================ assets and views (cases 4, 5, 6, 7)


def assets_graph(asset_file: str, views: int = 1, res: int = 32, **render) -> dict:
    """Load 3D Asset -> Render Views -> Save Image (rgb) and Mask To Image -> Save Image (mask)."""
    inputs = {"asset": ["load", 0], "num_views": views, "preset": "release", "resolution": res, "pitch": 0.0,
              "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}
    inputs.update(render)
    return {"load": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset_file}},
            "render": {"class_type": "RefAny3DRenderViews", "inputs": inputs},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["render", 0], "filename_prefix": "catalogue/rgb"}},
            "mask": {"class_type": "MaskToImage", "inputs": {"mask": ["render", 2]}},
            "save_mask": {"class_type": "SaveImage",
                          "inputs": {"images": ["mask", 0], "filename_prefix": "catalogue/mask"}}}


def assets_outputs(server) -> set:
    """Every file under the server's output folder (to show that a refused run wrote nothing)."""
    return {p for p in server.output_dir.rglob("*") if p.is_file()}


def assets_colour(server, result):
    """Mean RGB (0..255) of the asset's pixels in the first saved view (mask from the mask output)."""
    import numpy as np
    from PIL import Image
    rgb = np.asarray(Image.open(server.output_files(result, "save")[0]).convert("RGB"), dtype=np.float64)
    mask = np.asarray(Image.open(server.output_files(result, "save_mask")[0]).convert("L")) > 127
    assert mask.sum() > 50, "the asset does not show in the view"
    return rgb[mask].mean(axis=0)


def assets_refused(server, graph, *words, before=None):
    """Run ``graph``; it must fail at Load/Render with an AssetError whose message holds ``words``,
    and write nothing. Returns the message."""
    before = assets_outputs(server) if before is None else before
    result = server.run(graph, timeout=300)
    assert result.status == "error", f"expected a clear error, got {result.status}"
    message = result.error["exception_message"]
    assert result.error["exception_type"].endswith("AssetError"), result.error_text()
    for word in words:
        assert word in message, f"{word!r} not in the message: {message}"
    assert not result.outputs.get("save") and assets_outputs(server) == before, "a refused run wrote files"
    return message


def assets_tint(rgb):
    from PIL import Image
    return Image.new("RGB", (8, 8), rgb)


def test_case4_a_replaced_or_later_uploaded_texture_or_mtl_is_seen_at_the_next_run(private, tmp_path):
    """Case 4: Load Asset's cache key covers the .mtl and the textures, not only the .obj."""
    from tools.assets_gen import box, write_obj
    server = private
    folder = server.input_dir / "3d" / "case4"
    folder.mkdir(parents=True)
    v, f, uv = box()
    write_obj(folder / "crate.obj", v, f, uv, texture=assets_tint((220, 30, 30)))
    graph = assets_graph("3d/case4/crate.obj")
    first = server.run(graph, timeout=300)
    assert first.status == "success", first.error_text()
    assert abs(assets_colour(server, first) - [220, 30, 30]).max() < 3
    # the user uploads a new texture under the same name; the .obj is unchanged
    assets_tint((30, 30, 220)).save(tmp_path / "crate_kd.png")
    assert server.upload(tmp_path / "crate_kd.png", subfolder="3d/case4") == "3d/case4/crate_kd.png"
    second = server.run(graph, timeout=300)
    assert second.status == "success", second.error_text()
    assert abs(assets_colour(server, second) - [30, 30, 220]).max() < 3, "the old texture was served from cache"

    # an .obj uploaded alone: a clear error; uploading its .mtl, then its texture, is seen at once
    write_obj(tmp_path / "barrel.obj", v, f, uv, texture=assets_tint((30, 200, 30)))
    server.upload(tmp_path / "barrel.obj", subfolder="3d/case4")
    graph = assets_graph("3d/case4/barrel.obj")
    assets_refused(server, graph, "barrel.mtl", "missing", "input/3d/case4")
    server.upload(tmp_path / "barrel.mtl", subfolder="3d/case4")
    assets_refused(server, graph, "barrel_kd.png", "missing", "input/3d/case4")
    server.upload(tmp_path / "barrel_kd.png", subfolder="3d/case4")
    done = server.run(graph, timeout=300)
    assert done.status == "success", done.error_text()
    assert abs(assets_colour(server, done) - [30, 200, 30]).max() < 3
    still_serving(server)


def test_case5_a_texture_the_mtl_names_but_is_missing_is_an_error_naming_file_and_folder(private):
    """Case 5a: it rendered white on white (Kd 1 1 1, no texture) without a word."""
    from tools.assets_gen import box, write_obj
    server = private
    folder = server.input_dir / "3d" / "case5a"
    folder.mkdir(parents=True)
    v, f, uv = box()
    write_obj(folder / "vase.obj", v, f, uv, texture=assets_tint((200, 120, 40)))
    (folder / "vase_kd.png").unlink()
    message = assets_refused(server, assets_graph("3d/case5a/vase.obj"), "'vase_kd.png'", "vase.mtl", "missing",
                             "input/3d/case5a", "Upload it there")
    assert str(server.base_dir) not in message  # the folder as the user knows it, not the server's path
    still_serving(server)


def test_case5_a_texture_over_the_decompression_bomb_limit_is_an_error_naming_size_and_limit(private):
    """Case 5b: Pillow refused the texture inside trimesh, which dropped it: grey without a word."""
    from PIL import Image
    from tools.assets_gen import box, huge_png, write_obj
    server = private
    folder = server.input_dir / "3d" / "case5b"
    folder.mkdir(parents=True)
    v, f, uv = box()
    write_obj(folder / "poster.obj", v, f, uv, texture=assets_tint((1, 2, 3)))
    huge_png(folder / "poster_kd.png", 20_000, 10_000)  # 200 Mpx, a few kB on disk
    limit = 2 * Image.MAX_IMAGE_PIXELS
    assets_refused(server, assets_graph("3d/case5b/poster.obj"), "'poster_kd.png'", "20,000 × 10,000",
                   "200,000,000 pixels", f"{limit:,} pixels", "Downscale")
    still_serving(server)


def test_case5_a_gltf_texture_uri_outside_the_folder_is_an_error_naming_the_uri(private):
    """Case 5c: trimesh refused the URI (right) and rendered grey (silently)."""
    import json
    from tools.assets_gen import GltfPart, marked_quad, marked_texture, write_gltf
    server = private
    folder = server.input_dir / "3d" / "case5c"
    folder.mkdir(parents=True)
    v, f, uv = marked_quad()
    path = write_gltf(folder / "sign.gltf", [GltfPart(v, f, uv=uv, texture=marked_texture(16))])
    (folder / "sign_tex0.png").rename(server.base_dir / "outside.png")  # exists, outside the input folder
    for uri in ("../../../outside.png", str(server.base_dir / "outside.png"), "file:///etc/hostname"):
        tree = json.loads(path.read_text())
        tree["images"][0]["uri"] = uri
        path.write_text(json.dumps(tree))
        assets_refused(server, assets_graph("3d/case5c/sign.gltf"), f"'{uri}'", "outside the asset's folder",
                       "refused")
    still_serving(server)


def test_case5_a_texture_without_uvs_renders_flat_with_a_warning_in_log_node_and_description(private):
    """Case 5d: a texture the mesh cannot place (no UVs) still gives a useful render (shape, point map,
    flat colour), so it is a loud warning, not an error."""
    from tools.assets_gen import box, write_obj
    server = private
    folder = server.input_dir / "3d" / "case5d"
    folder.mkdir(parents=True)
    v, f, _ = box()
    write_obj(folder / "stool.obj", v, f, None, texture=assets_tint((200, 0, 0)), diffuse=(0.2, 0.4, 0.6))
    result = server.run(assets_graph("3d/case5d/stool.obj"), timeout=300)
    assert result.status == "success", result.error_text()
    assert abs(assets_colour(server, result) - [51, 102, 153]).max() < 3  # the Kd colour
    ui_text = "\n".join(result.outputs["load"]["text"])  # the node's UI output (the asset's description)
    on_node = "\n".join(result.node_texts("load"))  # the text the frontend shows on the node
    for text in (ui_text, on_node, server.log_text()):
        assert "stool.obj" in text and "no UV coordinates" in text and "stool_kd.png" in text, text[-2000:]
    assert "WARNING" in ui_text and "WARNING" in on_node
    still_serving(server)


def test_case6_blank_views_warn_by_name_and_all_blank_is_an_error(private):
    """Case 6: a flat card is seen edge-on at 0° and 180° (the 2-view release preset)."""
    from tools.assets_gen import GltfPart, flat_card, write_glb
    server = private
    v, f, _ = flat_card()
    write_glb(server.input_dir / "3d" / "case6_card.glb", [GltfPart(v, f, factor=(0.8, 0.1, 0.1, 1.0))])
    message = assets_refused(server, assets_graph("3d/case6_card.glb", views=2), "all 2 views are blank",
                             "view 0 (0°)", "view 1 (180°)", "pitch", "'even' preset")
    assert "more views" in message
    # 4 views: 90° and 270° see it, 0° and 180° do not: the run goes on, loudly
    result = server.run(assets_graph("3d/case6_card.glb", views=4), timeout=300)
    assert result.status == "success", result.error_text()
    ui_text = "\n".join(result.outputs["render"]["text"])
    on_node = "\n".join(result.node_texts("render"))
    for text in (ui_text, on_node, server.log_text()):
        assert "2 of 4 views are blank" in text and "view 0 (0°), view 2 (180°)" in text, text[-2000:]
        assert "pitch" in text and "more views" in text
    assert len(server.output_files(result, "save")) == 4
    still_serving(server)


def test_case7_linked_files_and_linked_folders_in_input_work_names_leaving_it_do_not(private):
    """Case 7: a studio library linked into input/3d was listed, then refused at validation."""
    import os
    import re

    from tools.assets_gen import box, textured_box_glb, write_obj
    from tools.comfy_http import PromptRejected
    server = private
    library = server.base_dir / "studio_library"  # outside ComfyUI's input folder
    (library / "props").mkdir(parents=True)
    textures = server.base_dir / "studio_textures"
    textures.mkdir()
    textured_box_glb(library / "lamp.glb")
    v, f, uv = box()
    write_obj(library / "props" / "crate.obj", v, f, uv, texture=assets_tint((240, 200, 10)))
    # the texture itself is a link into another folder of the studio
    (library / "props" / "crate_kd.png").rename(textures / "crate_yellow.png")
    os.symlink(textures / "crate_yellow.png", library / "props" / "crate_kd.png")
    os.symlink(library / "lamp.glb", server.input_dir / "3d" / "case7_lamp.glb")  # a linked file
    os.symlink(library, server.input_dir / "3d" / "case7_studio", target_is_directory=True)  # a linked folder

    spec = server.object_info("RefAny3DLoadAsset")["RefAny3DLoadAsset"]["input"]["optional"]["asset_file"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]  # v0.3.75 / v0.31 layouts
    assert {"3d/case7_lamp.glb", "3d/case7_studio/lamp.glb", "3d/case7_studio/props/crate.obj"} <= set(options)
    for name in ("3d/case7_lamp.glb", "3d/case7_studio/lamp.glb"):
        result = server.run(assets_graph(name), timeout=300)
        assert result.status == "success", result.error_text()
    result = server.run(assets_graph("3d/case7_studio/props/crate.obj"), timeout=300)
    assert result.status == "success", result.error_text()
    assert abs(assets_colour(server, result) - [240, 200, 10]).max() < 3  # .mtl and linked texture read

    # what stays refused is a name that leaves the folder
    before = assets_outputs(server)
    for name, word in (("3d/../../studio_library/lamp.glb", "('..')"), ("3d/case7_studio/../../../x.glb", "('..')"),
                       (str(library / "lamp.glb"), "absolute")):
        with pytest.raises(PromptRejected, match=re.escape(word)):
            server.submit(assets_graph(name))
    assert assets_outputs(server) == before
    still_serving(server)




# ============================================================================ friction (case 10)
