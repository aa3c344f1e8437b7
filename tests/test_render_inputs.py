"""Loading every supported format, colour sources and colour spaces, texture modes, and a clear
AssetError for every kind of bad input (issue 3)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tools.assets_gen import (
    GltfPart,
    box,
    corrupt_glb,
    marked_quad,
    texture_in_mode,
    textured_box_glb,
    truncated_copy,
    uv_sphere,
    write_glb,
    write_obj,
    write_ply,
    write_stl,
)
from conftest import ROOT

import rendering
from rendering import AssetError


def front_colour(path, res=32):
    """Colour at the centre of view 0 (looking at the +X side)."""
    views = rendering.render_views(rendering.load_asset(path), num_views=1, resolution=res)
    return views.rgb[0, res // 2, res // 2].numpy()


def srgb(x):
    x = np.asarray(x, float)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


# ------------------------------------------------------------------ formats and colour rules


def test_factor_only_material_shows_srgb_encoding_of_factor(tmp_path):
    v, f, _ = box()
    factor = np.array([51, 128, 230]) / 255
    path = write_glb(tmp_path / "f.glb", [GltfPart(v, f, factor=(*factor, 1.0))])
    assert np.abs(front_colour(path) - srgb(factor)).max() < 1e-5


def test_texture_times_factor_in_linear_light_without_uint8_overflow(tmp_path):
    from PIL import Image
    v, f, uv = marked_quad()
    tex = Image.new("RGB", (8, 8), (200, 100, 50))
    factor = np.array([255, 128, 64]) / 255
    path = write_glb(tmp_path / "t.glb", [GltfPart(v, f, uv=uv, texture=tex, factor=(*factor, 1.0))])
    texel = np.array([200, 100, 50]) / 255
    lin = np.where(texel <= 0.04045, texel / 12.92, ((texel + 0.055) / 1.055) ** 2.4)
    assert np.abs(front_colour(path) - srgb(lin * factor)).max() < 1e-5


def test_vertex_colours_multiply_the_texture_and_vertex_colours_over_grey(tmp_path):
    from PIL import Image
    v, f, uv = marked_quad()
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    both = write_glb(tmp_path / "both.glb", [GltfPart(v, f, uv=uv, texture=red, colors=np.tile([0.5, 1.0, 0], (4, 1)))])
    assert np.allclose(front_colour(both), [0.5, 0, 0])  # glTF: COLOR_0 × texture × factor
    vc = write_glb(tmp_path / "vc.glb", [GltfPart(v, f, colors=np.tile([0, 0, 1.0], (4, 1)))])
    assert np.allclose(front_colour(vc), [0, 0, 1])
    plain = write_glb(tmp_path / "plain.glb", [GltfPart(v, f)])
    assert np.allclose(front_colour(plain), [0.5, 0.5, 0.5])


def test_obj_mtl_diffuse_used_as_stored_and_ply_stl_load(tmp_path):
    v, f, _ = box()
    obj = write_obj(tmp_path / "a.obj", v, f, diffuse=(0.2, 0.4, 0.6))
    assert np.allclose(front_colour(obj), [0.2, 0.4, 0.6], atol=1 / 255)
    colours = np.tile([10, 200, 30], (len(v), 1))
    ply = write_ply(tmp_path / "a.ply", v, f, colours)
    assert np.allclose(front_colour(ply), np.array([10, 200, 30]) / 255, atol=1e-6)
    stl = write_stl(tmp_path / "a.stl", v, f)
    assert np.allclose(front_colour(stl), [0.5, 0.5, 0.5])
    for path in (obj, ply, stl):
        asset = rendering.load_asset(path)
        assert asset.num_faces == 12
        vmin, vmax = asset.bounds()
        assert torch.allclose(vmin, torch.tensor([-1.0] * 3, dtype=torch.float64))


def test_scene_transforms_are_applied_and_textures_stay_per_part(tmp_path):
    v, f, uv = box((1.0, 1.0, 1.0))
    from PIL import Image
    parts = [GltfPart(v, f, uv=uv, texture=Image.new("RGB", (4, 4), (255, 0, 0)), translation=(3, 0, 0)),
             GltfPart(v, f, uv=uv, texture=Image.new("RGB", (4, 4), (0, 0, 255)), scale=(1, 2, 1),
                      children=[GltfPart(v, f, translation=(0, 0, 5))])]
    asset = rendering.load_asset(write_glb(tmp_path / "s.glb", parts))
    vmin, vmax = asset.bounds()
    assert vmin.tolist() == pytest.approx([-0.5, -1.0, -0.5])
    assert vmax.tolist() == pytest.approx([3.5, 1.0, 5.5])  # child: parent scale, then its own offset
    assert len(asset.textures) == 2 and asset.num_faces == 36
    assert [t.image.shape for t in asset.textures] == [(4, 4, 3), (4, 4, 3)]  # no atlas


def test_mesh_with_several_primitives_keeps_each_material(tmp_path):
    from PIL import Image
    v, f, uv = box((1.0, 1.0, 1.0))
    second = GltfPart(v + [0, 0, 2], f, uv=uv, texture=Image.new("RGB", (4, 4), (0, 0, 255)))
    third = GltfPart(v + [0, 0, -2], f, factor=(1.0, 0.0, 0.0, 1.0))
    part = GltfPart(v, f, uv=uv, texture=Image.new("RGB", (4, 4), (0, 255, 0)), primitives=[second, third])
    asset = rendering.load_asset(write_glb(tmp_path / "prims.glb", [part]))
    assert asset.num_faces == 36 and len(asset.textures) == 2
    views = rendering.render_views(asset, num_views=1, resolution=64)
    rgb, m = views.rgb[0].numpy(), views.mask[0].numpy() > 0
    colours = {tuple(c) for c in np.round(rgb[m] * 255).astype(int)}
    assert {(0, 255, 0), (0, 0, 255), (255, 0, 0)} <= colours


def test_point_map_colours_are_per_axis(tmp_path):
    v, f, _ = box((4.0, 2.0, 1.0), (10.0, 0.0, 0.0))
    asset = rendering.asset_from_mesh(v, f)
    c = asset.point_map_colors()
    assert c.min(0).values.tolist() == [0, 0, 0] and c.max(0).values.tolist() == [1, 1, 1]
    centre, scale = asset.normalisation()
    assert centre.tolist() == [10.0, 0.0, 0.0] and scale == 0.5


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_texture_modes_greyscale_rgba_palette_16bit(tmp_path, mode):
    img, expected = texture_in_mode(mode)
    assert img.mode == mode
    got = rendering.texture_to_uint8(img)
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8
    assert np.abs(got / 255 - expected).max() <= 0.5 / 255 + 1e-9
    v, f, uv = marked_quad()
    asset = rendering.load_asset(write_glb(tmp_path / "m.glb", [GltfPart(v, f, uv=uv, texture=img)]))
    assert np.abs(asset.textures[0].image.numpy() / 255 - expected).max() <= 0.5 / 255 + 1e-9
    views = rendering.render_views(asset, num_views=1, resolution=32)
    assert torch.isfinite(views.rgb).all() and views.mask.sum() > 100


def test_asset_from_core_mesh_layout():
    v, f, _ = uv_sphere(8, 16)
    asset = rendering.asset_from_mesh(torch.tensor(v, dtype=torch.float32)[None], torch.tensor(f)[None])
    assert asset.num_faces == len(f) and asset.uv is None and asset.textures == []
    views = rendering.render_views(asset, num_views=2, resolution=32)
    assert views.rgb.shape == (2, 32, 32, 3) and views.point_map.shape == (2, 32, 32, 3)
    assert views.mask.shape == (2, 32, 32) and views.depth.shape == (2, 32, 32)
    assert torch.allclose(views.rgb[views.mask > 0], torch.tensor(0.5))


def test_progress_callback_and_cancel():
    v, f, _ = box()
    asset = rendering.asset_from_mesh(v, f)
    seen = []
    default = rendering.render_views(asset, resolution=16, progress=lambda d, t: seen.append((d, t)))
    assert len(default.cameras) == 8  # release preset by default: frame 7 of 60 is view 1
    assert default.cameras[1].eye.tolist() == pytest.approx([4 * np.cos(np.radians(42)), 0, 4 * np.sin(np.radians(42))])
    seen = []
    rendering.render_views(asset, num_views=5, resolution=16, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 5) for i in range(1, 6)]

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        rendering.render_views(asset, num_views=5, resolution=16, progress=cancel)


# ------------------------------------------------------------------ bad input: one clear error each


def test_missing_file(tmp_path):
    with pytest.raises(AssetError, match="not found"):
        rendering.load_asset(tmp_path / "nope.glb")


def test_names_leaving_the_input_folder_are_refused_links_inside_it_are_followed(tmp_path):
    inp = tmp_path / "input"
    (inp / "3d").mkdir(parents=True)
    good = textured_box_glb(inp / "3d" / "ok.glb")
    outside = textured_box_glb(tmp_path / "secret.glb")
    assert rendering.resolve_in_folder("3d/ok.glb", inp) == good
    with pytest.raises(AssetError, match=r"\.\."):
        rendering.resolve_in_folder("3d/../../secret.glb", inp)
    with pytest.raises(AssetError, match=r"\.\."):
        rendering.resolve_in_folder("..\\secret.glb", inp)
    with pytest.raises(AssetError, match="absolute"):
        rendering.resolve_in_folder(str(outside), inp)
    with pytest.raises(AssetError, match="absolute"):
        rendering.resolve_in_folder("C:\\models\\x.glb", inp)
    # links the user put inside the input folder work wherever they point (a studio's asset library)
    os.symlink(outside, inp / "3d" / "link.glb")
    assert rendering.resolve_in_folder("3d/link.glb", inp) == inp / "3d" / "link.glb"
    os.symlink(tmp_path, inp / "3d" / "dirlink")
    assert rendering.resolve_in_folder("3d/dirlink/secret.glb", inp).resolve() == outside.resolve()
    assert rendering.load_asset(rendering.resolve_in_folder("3d/dirlink/secret.glb", inp)).num_faces == 12
    os.symlink(tmp_path / "gone.glb", inp / "3d" / "dangling.glb")
    with pytest.raises(AssetError, match="link whose target is missing"):
        rendering.resolve_in_folder("3d/dangling.glb", inp)
    with pytest.raises(AssetError, match="not found"):
        rendering.resolve_in_folder("3d/missing.glb", inp)
    with pytest.raises(AssetError, match="no 3D file"):
        rendering.resolve_in_folder("", inp)
    with pytest.raises(AssetError, match="NUL"):
        rendering.resolve_in_folder("3d/a\x00.glb", inp)


def test_asset_sources_cover_every_named_file_even_missing_ones(tmp_path):
    """The cache key of Load Asset (issue 10, case 4): the .mtl, its textures, .bin and images count,
    and a file missing now counts too, so that uploading it later changes the key."""
    from PIL import Image
    from tools.assets_gen import marked_texture, write_gltf
    v, f, uv = box()
    obj = write_obj(tmp_path / "a.obj", v, f, uv, texture=Image.new("RGB", (4, 4), (255, 0, 0)))
    assert rendering.asset_sources(obj) == [obj, tmp_path / "a.mtl", tmp_path / "a_kd.png"]
    key = rendering.sources_key(obj)
    texture = (tmp_path / "a_kd.png").read_bytes()
    (tmp_path / "a_kd.png").unlink()
    assert rendering.asset_sources(obj)[-1] == tmp_path / "a_kd.png"  # still listed
    missing = rendering.sources_key(obj)
    assert missing != key and "a_kd.png|missing" in missing
    (tmp_path / "a_kd.png").write_bytes(texture)
    assert rendering.sources_key(obj) != missing
    (tmp_path / "a.mtl").unlink()  # its textures are unknown until it is back
    assert rendering.asset_sources(obj) == [obj, tmp_path / "a.mtl"]
    q = write_gltf(tmp_path / "q.gltf", [GltfPart(*marked_quad()[:2], uv=marked_quad()[2], texture=marked_texture(16))])
    assert rendering.asset_sources(q) == [q, tmp_path / "q.bin", tmp_path / "q_tex0.png"]
    glb = textured_box_glb(tmp_path / "b.glb")
    assert rendering.asset_sources(glb) == [glb]


def test_named_files_leaving_the_asset_folder_are_refused_by_name(tmp_path):
    from PIL import Image
    from tools.assets_gen import marked_texture, write_gltf
    v, f, uv = box()
    (tmp_path / "lib").mkdir()
    obj = write_obj(tmp_path / "lib" / "a.obj", v, f, uv, texture=Image.new("RGB", (4, 4), (255, 0, 0)))
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    for name in ("../outside.png", str(tmp_path / "outside.png"), "..\\outside.png", "C:\\tex\\outside.png"):
        (tmp_path / "lib" / "a.mtl").write_text(f"newmtl m0\nmap_Kd {name}\n")
        with pytest.raises(AssetError, match=re.escape(f"'{name}', which is outside the asset's folder")):
            rendering.load_asset(obj)
    (tmp_path / "lib" / "a.mtl").write_text("newmtl m0\nmap_Kd sub/../a_kd.png\n")  # stays inside: fine
    assert len(rendering.load_asset(obj).textures) == 1
    obj.write_text(obj.read_text().replace("mtllib a.mtl", "mtllib ../a.mtl"))
    with pytest.raises(AssetError, match="material library '../a.mtl'"):
        rendering.load_asset(obj)
    q = write_gltf(tmp_path / "lib" / "q.gltf", [GltfPart(*marked_quad()[:2], uv=marked_quad()[2],
                                                          texture=marked_texture(16))])
    tree = json.loads(q.read_text())
    tree["buffers"][0]["uri"] = "%2E%2E/q.bin"  # percent-encoded '..'
    q.write_text(json.dumps(tree))
    with pytest.raises(AssetError, match="buffer '%2E%2E/q.bin', which is outside"):
        rendering.load_asset(q)


def test_links_beside_the_asset_are_followed_wherever_they_point(tmp_path):
    """A studio library whose every file is a link: trimesh's own resolver refuses the .mtl and the
    texture (they resolve outside the folder) and renders grey; here they are read."""
    from PIL import Image
    v, f, uv = box()
    (tmp_path / "library").mkdir()
    (tmp_path / "input").mkdir()
    write_obj(tmp_path / "library" / "c.obj", v, f, uv, texture=Image.new("RGB", (4, 4), (0, 0, 255)))
    for name in ("c.obj", "c.mtl", "c_kd.png"):
        os.symlink(tmp_path / "library" / name, tmp_path / "input" / name)
    asset = rendering.load_asset(tmp_path / "input" / "c.obj")
    assert len(asset.textures) == 1 and asset.textures[0].image[0, 0].tolist() == [0, 0, 255]


def test_texture_problems_are_errors_naming_the_file(tmp_path):
    from PIL import Image
    from tools.assets_gen import huge_png, png_bytes
    v, f, uv = box()
    (tmp_path / "input" / "3d").mkdir(parents=True)
    obj = write_obj(tmp_path / "input" / "3d" / "a.obj", v, f, uv, texture=Image.new("RGB", (64, 64), (9, 9, 9)))
    good = (tmp_path / "input" / "3d" / "a_kd.png").read_bytes()
    (tmp_path / "input" / "3d" / "a_kd.png").unlink()
    with pytest.raises(AssetError, match=r"texture 'a_kd.png', which is missing: .* in the folder input/3d\."):
        rendering.load_asset(obj, root=tmp_path / "input")
    huge_png(tmp_path / "input" / "3d" / "a_kd.png", 15_000, 12_000)
    limit = 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(AssetError, match=f"15,000 × 12,000 = 180,000,000 pixels, over the limit of {limit:,}"):
        rendering.load_asset(obj)
    (tmp_path / "input" / "3d" / "a_kd.png").write_bytes(b"not an image at all")
    with pytest.raises(AssetError, match="texture 'a_kd.png' of a.mtl is not an image"):
        rendering.load_asset(obj)
    (tmp_path / "input" / "3d" / "a_kd.png").write_bytes(good[: len(good) // 2])  # decoded only when used
    with pytest.raises(AssetError, match=r"a.obj \(a_kd.png\) cannot be decoded"):
        rendering.load_asset(obj)
    bomb = write_glb(tmp_path / "bomb.glb", [GltfPart(v, f, uv=uv, texture=huge_png(tmp_path / "h.png", 20_000,
                                                                                         10_000).read_bytes())])
    with pytest.raises(AssetError, match="base-colour image 0 of bomb.glb is 20,000 × 10,000"):
        rendering.load_asset(bomb)
    junk = write_glb(tmp_path / "junk.glb", [GltfPart(v, f, uv=uv, texture=b"\x89PNG garbage")])
    with pytest.raises(AssetError, match="base-colour image 0 of junk.glb is not an image"):
        rendering.load_asset(junk)
    fine = write_glb(tmp_path / "fine.glb", [GltfPart(v, f, uv=uv, texture=png_bytes(Image.new("RGB", (4, 4))))])
    assert len(rendering.load_asset(fine).textures) == 1


def test_texture_without_uvs_is_a_warning_in_the_description(tmp_path):
    from PIL import Image
    v, f, _ = box()
    obj = write_obj(tmp_path / "n.obj", v, f, None, texture=Image.new("RGB", (4, 4), (255, 0, 0)),
                    diffuse=(0.2, 0.4, 0.6))
    asset = rendering.load_asset(obj)
    assert len(asset.warnings) == 1 and "no UV coordinates" in asset.warnings[0] and "n_kd.png" in asset.warnings[0]
    assert asset.description().splitlines()[0] == "n.obj: 12 faces, 24 vertices"
    assert asset.description().splitlines()[1].startswith("WARNING: n.obj: ")
    assert np.allclose(front_colour(obj), [0.2, 0.4, 0.6], atol=1 / 255)
    assert rendering.load_asset(write_obj(tmp_path / "t.obj", v, f, box()[2], texture=Image.new("RGB", (4, 4)))).warnings == []


def test_blank_views_are_named_and_all_blank_is_an_error():
    from tools.assets_gen import flat_card
    card = rendering.asset_from_mesh(*flat_card()[:2])
    with pytest.raises(AssetError, match=r"all 2 views are blank: .* view 0 \(0°\), view 1 \(180°\)"):
        rendering.check_coverage(rendering.render_views(card, num_views=2, resolution=32))
    views = rendering.render_views(card, num_views=4, resolution=32)
    assert rendering.blank_views(views) == [0, 2]
    assert "2 of 4 views are blank (nothing of the asset is visible): view 0 (0°), view 2 (180°)" in \
        rendering.check_coverage(views)
    # the advice works: a card lying flat is blank in every view at pitch 0 and seen in all at pitch 20
    v, f, _ = flat_card()
    rug = rendering.asset_from_mesh(v[:, [0, 2, 1]], f)
    with pytest.raises(AssetError, match="all 8 views are blank"):
        rendering.check_coverage(rendering.render_views(rug, num_views=8, resolution=32))
    assert rendering.check_coverage(rendering.render_views(rug, num_views=8, resolution=32, pitch=20.0)) is None
    box_asset = rendering.asset_from_mesh(*box()[:2])
    assert rendering.check_coverage(rendering.render_views(box_asset, num_views=2, resolution=32)) is None


def test_corrupt_truncated_and_empty_glb(tmp_path):
    with pytest.raises(AssetError, match="not a valid GLB"):
        rendering.load_asset(corrupt_glb(tmp_path / "corrupt.glb"))
    good = textured_box_glb(tmp_path / "good.glb")
    for keep in (0.3, 0.9):
        with pytest.raises(AssetError, match="damaged or truncated"):
            rendering.load_asset(truncated_copy(good, tmp_path / f"cut{keep}.glb", keep))
    (tmp_path / "empty.glb").write_bytes(b"")
    with pytest.raises(AssetError, match="empty"):
        rendering.load_asset(tmp_path / "empty.glb")
    (tmp_path / "junk.glb").write_bytes(b"\x00" * 100)
    with pytest.raises(AssetError, match="junk.glb"):
        rendering.load_asset(tmp_path / "junk.glb")


def test_gltf_with_missing_texture_or_buffer_file(tmp_path):
    from tools.assets_gen import marked_texture, write_gltf
    v, f, uv = marked_quad()
    path = write_gltf(tmp_path / "q.gltf", [GltfPart(v, f, uv=uv, texture=marked_texture(16))])
    assert len(rendering.load_asset(path).textures) == 1
    (tmp_path / "q_tex0.png").unlink()
    with pytest.raises(AssetError, match="q_tex0.png"):
        rendering.load_asset(path)
    (tmp_path / "q.bin").unlink()
    with pytest.raises(AssetError, match="q.bin"):
        rendering.load_asset(path)
    (tmp_path / "bad.gltf").write_text("{not json")
    with pytest.raises(AssetError, match="not a valid GLTF"):
        rendering.load_asset(tmp_path / "bad.gltf")


def test_unsupported_extension(tmp_path):
    (tmp_path / "a.fbx").write_bytes(b"x")
    with pytest.raises(AssetError, match="FBX"):
        rendering.load_asset(tmp_path / "a.fbx")
    (tmp_path / "a.txt").write_bytes(b"x")
    with pytest.raises(AssetError, match="unsupported"):
        rendering.load_asset(tmp_path / "a.txt")


def test_scene_without_faces(tmp_path):
    with pytest.raises(AssetError, match="no triangle faces"):
        rendering.load_asset(write_glb(tmp_path / "nothing.glb", []))
    v, _, _ = box()
    points = write_ply(tmp_path / "points.ply", v, np.zeros((0, 3), int))
    with pytest.raises(AssetError, match="no triangle faces"):
        rendering.load_asset(points)
    with pytest.raises(AssetError, match="no faces"):
        rendering.asset_from_mesh(v, np.zeros((0, 3), int))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_vertices(tmp_path, bad):
    v, f, _ = box()
    v[3, 1] = bad
    with pytest.raises(AssetError, match="NaN or infinite"):
        rendering.asset_from_mesh(v, f)
    with pytest.raises(AssetError, match="NaN or infinite"):
        rendering.load_asset(write_glb(tmp_path / "bad.glb", [GltfPart(v, f)]))


def test_bad_mesh_arrays():
    v, f, _ = box()
    with pytest.raises(AssetError, match=r"\[V, 3\]"):
        rendering.asset_from_mesh(v[:, :2], f)
    with pytest.raises(AssetError, match=r"\[F, 3\]"):
        rendering.asset_from_mesh(v, f[:, :2])
    with pytest.raises(AssetError, match="indices"):
        rendering.asset_from_mesh(v, f + 100)
    with pytest.raises(AssetError, match="zero size"):
        rendering.asset_from_mesh(np.zeros((3, 3)), [[0, 1, 2]])
    with pytest.raises(AssetError, match="whole numbers"):
        rendering.asset_from_mesh(v, f + 0.5)


def test_flat_asset_renders_without_division_by_zero(tmp_path):
    v, f, uv = marked_quad()  # zero extent along X
    asset = rendering.load_asset(write_glb(tmp_path / "flat.glb", [GltfPart(v, f, uv=uv)]))
    views = rendering.render_views(asset, num_views=8, resolution=32)
    assert torch.isfinite(views.point_map).all() and torch.isfinite(views.rgb).all()
    m = views.mask[0] > 0
    assert m.sum() > 100
    assert torch.allclose(views.point_map[0][m][:, 0], torch.tensor(0.5))  # flat axis: constant 0.5
    assert views.point_map[0][m][:, 1].min() < 0.1 and views.point_map[0][m][:, 1].max() > 0.9
    line = rendering.asset_from_mesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]])  # flat on 2 axes
    assert torch.isfinite(rendering.render_views(line, num_views=2, resolution=16).point_map).all()


@pytest.mark.parametrize("n", [0, -1, 65, 100])
def test_number_of_views_outside_1_to_64(n):
    v, f, _ = box()
    with pytest.raises(AssetError, match="between 1 and 64"):
        rendering.render_views(rendering.asset_from_mesh(v, f), num_views=n, resolution=16)


def test_release_preset_limits_and_unknown_preset():
    v, f, _ = box()
    a = rendering.asset_from_mesh(v, f)
    with pytest.raises(AssetError, match="even"):
        rendering.render_views(a, num_views=61, resolution=16)
    assert rendering.render_views(a, num_views=64, preset="even", resolution=16).rgb.shape[0] == 64
    with pytest.raises(AssetError, match="preset"):
        rendering.render_views(a, num_views=2, preset="spiral", resolution=16)


@pytest.mark.parametrize("res", [500, 8, 0, 520.0, 8192])
def test_resolution_the_vae_cannot_take(res):
    v, f, _ = box()
    with pytest.raises(AssetError, match="multiple of 16"):
        rendering.render_views(rendering.asset_from_mesh(v, f), num_views=1, resolution=res)


def test_camera_options_out_of_range():
    v, f, _ = box()
    a = rendering.asset_from_mesh(v, f)
    with pytest.raises(AssetError, match="pitch"):
        rendering.render_views(a, num_views=1, resolution=16, pitch=90.0)
    with pytest.raises(AssetError, match="radius"):
        rendering.render_views(a, num_views=1, resolution=16, radius=1.5)
    with pytest.raises(AssetError, match="field of view"):
        rendering.render_views(a, num_views=1, resolution=16, fov=0.0)
    for name in ("pitch", "y_rotation", "radius", "fov"):
        with pytest.raises(AssetError, match=name):
            rendering.render_views(a, num_views=1, resolution=16, **{name: float("nan")})
    with pytest.raises(AssetError, match="whole number"):
        rendering.render_views(a, num_views=2.5, resolution=16)
    # numpy numbers, as they come out of other code, are fine
    out = rendering.render_views(a, num_views=np.int64(2), resolution=np.int32(16), pitch=np.float32(10))
    assert out.rgb.shape == (2, 16, 16, 3)


def test_too_many_faces_says_why(monkeypatch):
    import rendering.views
    v, f, _ = box()
    monkeypatch.setattr(rendering.views, "MAX_FACES", 10)
    with pytest.raises(AssetError, match="decimate"):
        rendering.render_views(rendering.asset_from_mesh(v, f), num_views=1, resolution=16)


def test_two_million_faces_render_within_memory_budget(tmp_path):
    """A 2M-face mesh renders in bounded memory: run in a fresh process and read its peak RSS."""
    script = textwrap.dedent(f"""
        import resource, sys, time
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        import torch
        import rendering
        from tools.assets_gen import sphere_with_faces
        v, f, _ = sphere_with_faces(2_000_000)
        asset = rendering.asset_from_mesh(v, f)
        del v, f
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        views = rendering.render_views(asset, num_views=2, resolution=256)
        dt = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        m = views.mask[0]
        print(asset.num_faces, int(m.sum()), (peak - base) // 1024, round(dt, 2))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    faces, covered, extra_mb, seconds = out.stdout.split()
    assert int(faces) >= 2_000_000
    r_px = 128 * np.tan(np.arcsin(1 / 4)) / np.tan(np.radians(22.5))  # silhouette of the unit sphere
    assert abs(int(covered) - np.pi * r_px ** 2) / int(covered) < 0.01
    assert int(extra_mb) < 1000, f"rendering took {extra_mb} MB beyond the asset"
    print(f"2M faces: {extra_mb} MB beyond the asset, {seconds} s for 2 views")
