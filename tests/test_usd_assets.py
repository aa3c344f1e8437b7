"""USD / USDZ written here with usd-core's own writer (and usdzip packaging) render like their glTF
twin: mask IoU >= 0.995, mean colour difference <= 3/255; the USDZ's texture is read from inside the
archive. Without usd-core the message names the package."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tools.assets_gen import box, smooth_texture
from tools.gltf_build import GltfBuilder

import rendering

from conftest import load_without


def scene():
    """A textured box and a factor-only box beside it (quads as USD has them, triangles for glTF)."""
    v, f, uv = box((1.0, 0.7, 0.5))
    return v, f, uv  # uv: v up (USD's st convention)


def write_gltf_twin(path: Path, texture) -> Path:
    v, f, uv = scene()
    g = GltfBuilder()
    tex = g.texture(texture)
    g.node(mesh=g.mesh([g.triangles(v, f, g.material(pbrMetallicRoughness={"baseColorTexture": {"index": tex}}),
                                    TEXCOORD_0=np.c_[uv[:, 0], 1 - uv[:, 1]])]))
    g.node(mesh=g.mesh([g.triangles(v + [0, 0, 1.0], f, g.material(
        pbrMetallicRoughness={"baseColorFactor": [0.2, 0.5, 0.8, 1]}))]))
    return g.glb(path)


def write_usd(path: Path, texture_name: str, z_up: bool = False) -> Path:
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade
    v, f, uv = scene()
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z if z_up else UsdGeom.Tokens.y)
    root = UsdGeom.Xform.Define(stage, "/root")
    if z_up:  # the same object, stored Z-up: the reader turns it back
        root.AddRotateXOp().Set(90.0)
    stage.SetDefaultPrim(root.GetPrim())

    def mesh(name, offset):
        m = UsdGeom.Mesh.Define(stage, f"/root/{name}")
        m.CreatePointsAttr([Gf.Vec3f(*p) for p in (v + offset)])
        m.CreateFaceVertexCountsAttr([3] * len(f))
        m.CreateFaceVertexIndicesAttr(f.reshape(-1).tolist())
        return m
    textured = mesh("textured", [0, 0, 0])
    st = UsdGeom.PrimvarsAPI(textured.GetPrim()).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                                UsdGeom.Tokens.vertex)
    st.Set([Gf.Vec2f(*t) for t in uv])
    material = UsdShade.Material.Define(stage, "/root/textured_material")
    surface = UsdShade.Shader.Define(stage, "/root/textured_material/surface")
    surface.CreateIdAttr("UsdPreviewSurface")
    reader = UsdShade.Shader.Define(stage, "/root/textured_material/st_reader")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("st")
    image = UsdShade.Shader.Define(stage, "/root/textured_material/image")
    image.CreateIdAttr("UsdUVTexture")
    image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(texture_name)
    image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
    image.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(image.ConnectableAPI(), "rgb")
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    UsdShade.MaterialBindingAPI.Apply(textured.GetPrim()).Bind(material)
    plain = mesh("plain", [0, 0, 1.0])
    flat = UsdShade.Material.Define(stage, "/root/flat_material")
    flat_surface = UsdShade.Shader.Define(stage, "/root/flat_material/surface")
    flat_surface.CreateIdAttr("UsdPreviewSurface")
    flat_surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set(Gf.Vec3f(0.2, 0.5, 0.8))
    flat.CreateSurfaceOutput().ConnectToSource(flat_surface.ConnectableAPI(), "surface")
    UsdShade.MaterialBindingAPI.Apply(plain.GetPrim()).Bind(flat)
    stage.GetRootLayer().Save()
    return path


def assert_renders_like(path: Path, twin: Path) -> None:
    a = rendering.render_views(rendering.load_asset(twin), num_views=8, resolution=96)
    b = rendering.render_views(rendering.load_asset(path), num_views=8, resolution=96)
    ma, mb = a.mask.bool(), b.mask.bool()
    both = (ma & mb).numpy()
    iou = both.sum() / (ma | mb).sum().item()
    colour = np.abs(a.rgb.numpy()[both] - b.rgb.numpy()[both]).mean()
    pm = np.abs(a.point_map.numpy()[both] - b.point_map.numpy()[both]).mean()
    assert both.sum() > 8 * 1000
    assert iou >= 0.995, iou
    assert colour <= 3 / 255 and pm <= 3 / 255, (colour * 255, pm * 255)


def test_usda_and_z_up_usdc_render_like_their_gltf_twin(tmp_path):
    texture = smooth_texture(32, seed=8)
    texture.save(tmp_path / "wood.png")
    twin = write_gltf_twin(tmp_path / "twin.glb", texture)
    assert_renders_like(write_usd(tmp_path / "box.usda", "./wood.png"), twin)
    assert_renders_like(write_usd(tmp_path / "box_z.usdc", "./wood.png", z_up=True), twin)


def test_usdz_texture_read_from_the_archive(tmp_path):
    from pxr import Sdf, UsdUtils
    texture = smooth_texture(32, seed=8)
    work = tmp_path / "work"
    work.mkdir()
    texture.save(work / "wood.png")
    write_usd(work / "box.usdc", "wood.png")
    assert UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(work / "box.usdc")), str(tmp_path / "box.usdz"))
    (work / "wood.png").unlink()  # only the archive holds the texture now
    assert_renders_like(tmp_path / "box.usdz", write_gltf_twin(tmp_path / "twin.glb", texture))


def test_usd_missing_texture_and_missing_library_are_named(tmp_path):
    path = write_usd(tmp_path / "box.usda", "./gone.png")
    try:
        rendering.load_asset(path)
        raise AssertionError("a missing texture must be refused")
    except rendering.AssetError as e:
        assert "gone.png" in str(e)
    out = load_without("pxr", path)
    assert "REFUSED" in out.stdout and "pip install usd-core" in out.stdout, (out.stdout, out.stderr)
