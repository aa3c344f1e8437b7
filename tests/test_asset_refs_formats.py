"""The client's upload finds a USD layer's or an FBX's companion files (textures, referenced
layers) or refuses before sending; a USDZ travels alone."""
from __future__ import annotations

import pytest
from test_usd_assets import write_usd
from tools.asset_refs import AssetInputError, collect
from tools.assets_gen import smooth_texture


@pytest.mark.parametrize("name", ["box.usda", "box.usdc"])
def test_usd_layer_sends_its_textures_and_layers(tmp_path, name):
    (tmp_path / "maps").mkdir()
    smooth_texture(16).save(tmp_path / "maps" / "wood.png")
    layer = write_usd(tmp_path / name, "./maps/wood.png")
    (tmp_path / "scene.usda").write_text(f'#usda 1.0\ndef "scene" (references = @./{name}@) {{}}\n')
    bundle = collect(tmp_path / "scene.usda")
    assert set(bundle.files) == {"scene.usda", name, "maps/wood.png"}
    assert set(collect(layer).files) == {name, "maps/wood.png"}
    (tmp_path / "maps" / "wood.png").unlink()
    with pytest.raises(AssetInputError, match="wood.png"):
        collect(tmp_path / "scene.usda")


def test_usd_naming_a_file_outside_its_folder_is_refused_and_usdz_travels_alone(tmp_path):
    (tmp_path / "a.usda").write_text('#usda 1.0\ndef "x" (references = @../secret.usda@) {}\n')
    with pytest.raises(AssetInputError, match="outside the asset's folder"):
        collect(tmp_path / "a.usda")
    (tmp_path / "b.usdz").write_bytes(b"PK\x03\x04" + bytes(60))
    assert list(collect(tmp_path / "b.usdz").files) == ["b.usdz"]


def test_fbx_sends_the_textures_beside_it_and_refuses_a_missing_one(tmp_path):
    from test_fbx_assets import fbx_ascii, quads
    v, _, uv, polys = quads()
    smooth_texture(16).save(tmp_path / "wood.png")
    path = tmp_path / "box.fbx"
    text = fbx_ascii(v, polys, uv, [i for p in polys for i in p], texture="C:\\\\Users\\\\artist\\\\maps\\\\wood.png")
    path.write_text(text)
    assert set(collect(path).files) == {"box.fbx", "wood.png"}
    (tmp_path / "wood.png").unlink()
    with pytest.raises(AssetInputError, match="wood.png"):
        collect(path)
