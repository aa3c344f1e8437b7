"""FBX: an ASCII FBX 7.4 written here (ufbx has no writer; the format is documented text) renders
like its glTF twin (mask IoU >= 0.995, mean colour difference <= 3/255), its texture read from a
file beside it; without ufbx the message names the package."""
from __future__ import annotations


import numpy as np
from tools.assets_gen import box, smooth_texture
from tools.gltf_build import GltfBuilder

import rendering

from conftest import load_without

def fbx_ascii(v, polys, uv, uv_index, diffuse=(0.2, 0.5, 0.8), texture=None):
    """An FBX 7.4 ASCII document: one mesh (polygons), one material, optionally a texture file."""
    poly = []
    for p in polys:
        poly += list(p[:-1]) + [-(p[-1] + 1)]
    def fmt(a):
        return ",".join(f"{x:.9g}" for x in np.asarray(a).reshape(-1))
    tex_obj = tex_con = ""
    if texture:
        tex_obj = f'''	Texture: 4000, "Texture::tex", "" {{
		Type: "TextureVideoClip"
		Version: 202
		TextureName: "Texture::tex"
		FileName: "{texture}"
		RelativeFilename: "{texture}"
	}}
'''
        tex_con = '	C: "OP",4000,3000, "DiffuseColor"\n'
    return f'''; FBX 7.4.0 project file
FBXHeaderExtension:  {{
	FBXHeaderVersion: 1003
	FBXVersion: 7400
}}
GlobalSettings:  {{
	Version: 1000
	Properties70:  {{
		P: "UpAxis", "int", "Integer", "",1
		P: "UpAxisSign", "int", "Integer", "",1
		P: "FrontAxis", "int", "Integer", "",2
		P: "FrontAxisSign", "int", "Integer", "",1
		P: "CoordAxis", "int", "Integer", "",0
		P: "CoordAxisSign", "int", "Integer", "",1
		P: "UnitScaleFactor", "double", "Number", "",1
	}}
}}
Objects:  {{
	Geometry: 1000, "Geometry::mesh", "Mesh" {{
		Vertices: *{v.size} {{
			a: {fmt(v)}
		}}
		PolygonVertexIndex: *{len(poly)} {{
			a: {",".join(map(str, poly))}
		}}
		LayerElementUV: 0 {{
			Version: 101
			Name: "UVMap"
			MappingInformationType: "ByPolygonVertex"
			ReferenceInformationType: "IndexToDirect"
			UV: *{uv.size} {{
				a: {fmt(uv)}
			}}
			UVIndex: *{len(uv_index)} {{
				a: {",".join(map(str, uv_index))}
			}}
		}}
		LayerElementMaterial: 0 {{
			Version: 101
			Name: ""
			MappingInformationType: "AllSame"
			ReferenceInformationType: "IndexToDirect"
			Materials: *1 {{
				a: 0
			}}
		}}
		Layer: 0 {{
			Version: 100
			LayerElement:  {{
				Type: "LayerElementUV"
				TypedIndex: 0
			}}
			LayerElement:  {{
				Type: "LayerElementMaterial"
				TypedIndex: 0
			}}
		}}
	}}
	Model: 2000, "Model::mesh", "Mesh" {{
		Version: 232
		Properties70:  {{
			P: "Lcl Translation", "Lcl Translation", "", "A",0.5,0,0
		}}
	}}
	Material: 3000, "Material::mat", "" {{
		Version: 102
		ShadingModel: "lambert"
		Properties70:  {{
			P: "DiffuseColor", "Color", "", "A",{fmt(diffuse)}
		}}
	}}
{tex_obj}}}
Connections:  {{
	C: "OO",1000,2000
	C: "OO",2000,0
	C: "OO",3000,2000
{tex_con}}}
'''


def quads():
    v, f, uv = box((1.0, 0.7, 0.5))  # 24 vertices, one quad per side split (a, b, c), (a, c, d)
    polys = [[4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3] for k in range(6)]  # the box's quads, as FBX keeps them
    return v, f, uv, polys


def test_fbx_renders_like_its_gltf_twin(tmp_path):
    v, f, uv, polys = quads()
    texture = smooth_texture(32, seed=12)
    texture.save(tmp_path / "wood.png")
    # exporters write the texture's path on their own machine: it is found by its name beside the FBX
    (tmp_path / "box.fbx").write_text(fbx_ascii(v, polys, uv, [i for p in polys for i in p],
                                                texture="C:/Users/artist/maps/wood.png"))
    g = GltfBuilder()
    mat = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": g.texture(texture)}})
    g.node(mesh=g.mesh([g.triangles(v, f, mat, TEXCOORD_0=np.c_[uv[:, 0], 1 - uv[:, 1]])]), translation=[0.5, 0, 0])
    twin = g.glb(tmp_path / "twin.glb")
    a = rendering.render_views(rendering.load_asset(twin), num_views=8, resolution=96)
    b = rendering.render_views(rendering.load_asset(tmp_path / "box.fbx"), num_views=8, resolution=96)
    ma, mb = a.mask.bool(), b.mask.bool()
    both = (ma & mb).numpy()
    assert both.sum() > 8 * 1000
    assert both.sum() / (ma | mb).sum().item() >= 0.995
    assert np.abs(a.rgb.numpy()[both] - b.rgb.numpy()[both]).mean() <= 3 / 255
    assert np.abs(a.point_map.numpy()[both] - b.point_map.numpy()[both]).mean() <= 3 / 255


def test_fbx_missing_texture_and_missing_library_are_named(tmp_path):
    v, f, uv, polys = quads()
    path = tmp_path / "box.fbx"
    path.write_text(fbx_ascii(v, polys, uv, [i for p in polys for i in p], texture="gone.png"))
    try:
        rendering.load_asset(path)
        raise AssertionError("a missing texture must be refused")
    except rendering.AssetError as e:
        assert "gone.png" in str(e)
    out = load_without("ufbx", path)
    assert "REFUSED" in out.stdout and "pip install ufbx" in out.stdout, (out.stdout, out.stderr)
