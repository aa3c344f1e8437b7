"""FBX (binary or ASCII) read with ufbx's Python bindings (optional: imported only here, and a
missing install is an AssetError naming the package).

ufbx converts the scene to right-handed Y-up (the frame glTF and the release use). Every mesh
instance in its node's geometry-to-world transform; polygons split into fans (a mirroring
transform reverses their winding). Base colour per material: the diffuse / base-colour texture
(texels sRGB; embedded content or a file beside the asset, never outside its folder), else the
material's colour (linear, shown as its sRGB encoding, times its factor), else the vertex colours
as stored, else mid grey.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .colors import linear_to_srgb
from .errors import AssetError
from .sidecars import decode_texture, reference_path, short

FBX_PACKAGE = "ufbx"


def import_ufbx():
    try:
        import ufbx
    except ImportError:
        raise AssetError(f"reading FBX files needs the ufbx library: pip install {FBX_PACKAGE} (into ComfyUI's "
                         "Python), then load the asset again; or export the asset as GLB") from None
    return ufbx


def read_fbx(path: Path) -> tuple[list, list[str]]:
    """(parts, warnings) of an FBX file."""
    ufbx = import_ufbx()
    try:
        scene = ufbx.load_file(str(path), target_axes=ufbx.axes_right_handed_y_up,
                               space_conversion=ufbx.SpaceConversion.MODIFY_GEOMETRY)
    except Exception as e:  # ufbx raises its own error types for damaged files
        raise AssetError(f"could not read {path.name}: not a valid FBX file, damaged or truncated "
                         f"({type(e).__name__}: {e})") from None
    images: dict[int, object] = {}
    parts, warnings = [], []
    for node in scene.nodes:
        if node.mesh is None or not node.visible:
            continue
        parts.extend(mesh_parts(node, path, images, warnings))
    if not parts:
        raise AssetError(f"{path.name} contains no mesh with faces: nothing to render")
    return parts, warnings


def matrix(m) -> np.ndarray:
    cols = [m.c0, m.c1, m.c2, m.c3]
    out = np.eye(4)
    for j, c in enumerate(cols):
        out[:3, j] = (c.x, c.y, c.z)
    return out


def mesh_parts(node, path: Path, images: dict, warnings: list[str]):
    from .loading import Part
    mesh = node.mesh
    positions = np.asarray(mesh.vertex_position.values, dtype=np.float64).reshape(-1, 3)
    corner_vertex = np.asarray(mesh.vertex_position.indices, dtype=np.int64)
    faces = [(f.index_begin, f.num_indices) for f in mesh.faces]
    if not faces or len(positions) == 0:
        return
    world = matrix(node.geometry_to_world)
    v = positions[corner_vertex] @ world[:3, :3].T + world[:3, 3]
    tris = fan_corners(faces)
    if np.linalg.det(world[:3, :3]) < 0:
        tris = tris[:, [0, 2, 1]]
    uv = None
    if mesh.vertex_uv.exists:
        uv = np.asarray(mesh.vertex_uv.values, dtype=np.float64).reshape(-1, 2)[
            np.asarray(mesh.vertex_uv.indices, dtype=np.int64)].astype(np.float32)
    colors = None
    if mesh.vertex_color.exists:
        colors = np.clip(np.asarray(mesh.vertex_color.values, dtype=np.float64).reshape(-1, 4)[
            np.asarray(mesh.vertex_color.indices, dtype=np.int64)][:, :3], 0, 1).astype(np.float32)
    face_material = np.asarray(mesh.face_material, dtype=np.int64) if len(mesh.materials) > 1 else None
    face_of_tri = np.repeat(np.arange(len(faces)), [max(n - 2, 0) for _, n in faces])
    n = len(v)
    for k in range(max(len(mesh.materials), 1)):
        sel = tris if face_material is None else tris[face_material[face_of_tri] == k]
        if len(sel) == 0:
            continue
        material = mesh.materials[k] if len(mesh.materials) else None
        texture, rgb = material_colour(material, path, images)
        if texture is not None and uv is not None:
            yield Part(v, sel, np.ones((n, 3), np.float32), uv, texture, (1.0, 1.0, 1.0))
            continue
        if texture is not None:
            warnings.append(f"the mesh '{node.name}' has a texture but no UVs: it shows its flat colour")
        if rgb is not None:
            yield Part(v, sel, np.broadcast_to(rgb, (n, 3)).astype(np.float32))
        else:
            yield Part(v, sel, colors if colors is not None else np.full((n, 3), 0.5, np.float32))


def fan_corners(faces: list[tuple[int, int]]) -> np.ndarray:
    out = [(b, b + i + 1, b + i + 2) for b, count in faces for i in range(count - 2)]
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def material_colour(material, path: Path, images: dict):
    """(texture PIL image or None, display colour [3] float32 or None) of an FBX material."""
    if material is None:
        return None, None
    base = material.pbr.base_color
    texture = base.texture if base.texture_enabled or base.texture is not None else None
    if texture is not None:
        return texture_image(texture, path, images), None
    if not base.has_value:
        return None, None
    c = base.value_vec4
    factor = material.pbr.base_factor.value_vec4.x if material.pbr.base_factor.has_value else 1.0
    linear = torch.tensor([c.x, c.y, c.z], dtype=torch.float64) * factor
    return None, linear_to_srgb(linear).numpy().astype(np.float32)


def texture_image(texture, path: Path, images: dict):
    key = texture.element_id
    if key not in images:
        data = bytes(texture.content) if texture.content else None
        name = texture.relative_filename or texture.filename
        if data is None:
            if not name:
                raise AssetError(f"{path.name}: a texture names no file and embeds none")
            written = str(name).replace("\\", "/")
            try:
                target = reference_path(path.parent, written, path.name, "texture")
            except AssetError:  # an absolute path or one leaving the folder: looked up by its name below
                target = None
            if target is None or not target.is_file():  # exporters write folders of their own machine
                target = reference_path(path.parent, written.rsplit("/", 1)[-1], path.name, "texture")
            try:
                data = target.read_bytes()
            except OSError:
                raise AssetError(f"{path.name} names the texture '{short(str(name))}', which is missing: it was "
                                 f"looked for as '{target.name}' in the folder {target.parent}. Upload it there, "
                                 "or export the FBX with embedded media") from None
        images[key] = decode_texture(data, f"the texture '{short(str(name))}' of {path.name}")
    return images[key]
