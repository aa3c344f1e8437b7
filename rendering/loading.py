"""Loading 3D files into an Asset, one texture per primitive kept as is.

glTF/GLB is read as the glTF 2.0 spec says by the pack's own reader (rendering/gltf.py); OBJ, PLY,
STL and OFF by trimesh. trimesh's own concatenation packs textured parts into an atlas and, with a baseColorFactor,
overflows uint8 in its material packing (trimesh 4.5-5.2); so each scene node's geometry is read
on its own here and only the geometry is concatenated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .asset import MID_GREY, Asset, Texture
from .colors import linear_to_srgb
from .errors import AssetError
from .sidecars import check_references, folder_resolver

SUPPORTED_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off", ".usd", ".usda", ".usdc", ".usdz", ".fbx")
UNSUPPORTED_HINT: dict[str, str] = {}


def import_trimesh():
    try:
        import trimesh
    except ImportError as e:
        raise AssetError("loading 3D files needs the Python package trimesh: pip install trimesh") from e
    return trimesh


@dataclass
class Part:
    """One primitive of the scene, transformed into the asset frame."""

    vertices: np.ndarray  # [v, 3] float64
    faces: np.ndarray  # [f, 3] int64
    colors: np.ndarray  # [v, 3] float32 display colour; with a texture, what the texture × factor is multiplied by
    uv: np.ndarray | None = None  # [v, 2] float32 (v up), set when texture is set
    texture: object = None  # PIL image of the base colour
    factor: tuple = (1.0, 1.0, 1.0)  # linear base-colour factor applied to the texture
    wrap: tuple = (10497, 10497)  # glTF sampler wrapS, wrapT (REPEAT, CLAMP_TO_EDGE 33071, MIRRORED_REPEAT 33648)
    alpha: np.ndarray | None = None  # [v] float32 alpha (factor × COLOR_0) of an alphaMode MASK material
    cutoff: float | None = None  # alphaCutoff of an alphaMode MASK material: points with alpha below it are not drawn


def load_asset(path, root=None) -> Asset:
    """Read a GLB/glTF/OBJ(+MTL)/PLY/STL/OFF/USD(A/C/Z)/FBX file into one Asset (scene transforms applied).

    Every file it names (material library, textures, buffers, images) must be present, inside the
    asset's folder, and readable: otherwise AssetError naming it (rendering/sidecars.py). ``root``
    (ComfyUI's input folder) only shortens the folders named in messages.
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise AssetError(f"3D file not found: {name}")
    if not path.is_file():
        raise AssetError(f"not a file: {name}")
    ext = path.suffix.lower()
    if ext in UNSUPPORTED_HINT:
        raise AssetError(f"{name}: {UNSUPPORTED_HINT[ext]}")
    if ext not in SUPPORTED_EXTENSIONS:
        raise AssetError(f"{name}: unsupported 3D file type '{ext}' (use one of {', '.join(SUPPORTED_EXTENSIONS)})")
    if path.stat().st_size == 0:
        raise AssetError(f"{name} is empty (0 bytes): the upload or export did not finish")
    if ext == ".gltf":
        check_gltf_json(path)
    check_references(path, root)
    if ext in (".gltf", ".glb"):
        from .gltf import read_gltf
        parts, warnings = read_gltf(path)
        return finish(parts, warnings, name)
    if ext in (".usd", ".usda", ".usdc", ".usdz"):
        from .usd import read_usd
        parts, warnings = read_usd(path)
        return finish(parts, warnings, name)
    if ext == ".fbx":
        from .fbx import read_fbx
        parts, warnings = read_fbx(path)
        return finish(parts, warnings, name)
    trimesh = import_trimesh()
    resolver = folder_resolver(path)
    try:
        if hasattr(trimesh, "load_scene"):  # trimesh >= 4.6
            scene = trimesh.load_scene(str(path), process=False, resolver=resolver)
        else:
            scene = trimesh.load(str(path), force="scene", process=False, resolver=resolver)
    except Exception as e:  # trimesh raises many types for damaged files
        raise AssetError(f"could not read {name}: not a valid {ext[1:].upper()} file, damaged or "
                         f"truncated ({type(e).__name__}: {e})") from e
    if resolver.problems:  # a named file trimesh asked for and would have dropped without a word
        raise AssetError(resolver.problems[0])
    warnings: list[str] = []
    try:
        parts = list(scene_parts(scene, warnings))
    except AssetError:
        raise
    except Exception as e:
        raise AssetError(f"could not read the meshes of {name} ({type(e).__name__}: {e})") from e
    if not parts:
        raise AssetError(f"{name} contains no triangle faces: nothing to render "
                         "(point clouds and lines are not supported)")
    return finish(parts, warnings, name)


def finish(parts: list[Part], warnings: list[str], name: str) -> Asset:
    asset = combine_parts(parts, name)
    asset.warnings = [f"{name}: {w}" for w in warnings]
    return asset


def check_gltf_json(path: Path) -> None:
    """A .gltf is JSON: say so plainly when it is not."""
    import json
    try:
        gltf = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise AssetError(f"could not read {path.name}: not a valid GLTF (JSON) file ({e})") from e
    if not isinstance(gltf, dict):
        raise AssetError(f"could not read {path.name}: not a valid GLTF file")


def scene_parts(scene, warnings: list[str] | None = None):
    """Yield a Part for every (node, triangle geometry) of a trimesh Scene; textures that cannot be
    placed (no UVs) are reported in ``warnings``."""
    trimesh = import_trimesh()
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        vertices = trimesh.transformations.transform_points(
            np.asarray(geom.vertices, dtype=np.float64), np.asarray(transform, dtype=np.float64))
        yield make_part(vertices, np.asarray(geom.faces, dtype=np.int64), geom.visual, warnings, geom_name)


def make_part(vertices: np.ndarray, faces: np.ndarray, visual, warnings: list[str] | None = None,
              label: str = "") -> Part:
    """Base colour of one primitive: texture x factor, else vertex colours, else factor, else grey."""
    n = len(vertices)
    grey = np.full((n, 3), MID_GREY, dtype=np.float32)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        material = visual.material
        uv = getattr(visual, "uv", None)
        image, factor, flat = material_colour(material)
        if image is not None and uv is not None and len(uv) == n:
            uv = np.nan_to_num(np.asarray(uv, dtype=np.float32)[:, :2], nan=0.0, posinf=0.0, neginf=0.0)
            return Part(vertices, faces, np.ones((n, 3), dtype=np.float32), uv, image, factor)
        if image is not None and warnings is not None:
            texture = image.info.get("file_path") if hasattr(image, "info") else None
            warnings.append(f"the part '{label}' has a base-colour texture{f' ({texture})' if texture else ''} but "
                            "no UV coordinates, so the texture cannot be placed: that part shows its flat colour "
                            "instead. Export the asset with UVs to see its texture.")
        colors = vertex_colours(visual, n)
        if colors is not None:
            return Part(vertices, faces, colors)
        return Part(vertices, faces, np.broadcast_to(flat, (n, 3)).astype(np.float32))
    if kind == "vertex":
        colors = vertex_colours(visual, n)
        return Part(vertices, faces, colors if colors is not None else grey)
    if kind == "face":
        fc = np.asarray(visual.face_colors, dtype=np.float32)[:, :3] / 255.0  # [f, 3]
        # one vertex per face corner so that every face keeps its own colour
        return Part(vertices[faces.reshape(-1)], np.arange(3 * len(faces)).reshape(-1, 3),
                    np.repeat(fc, 3, axis=0))
    return Part(vertices, faces, grey)


def material_colour(material):
    """(texture PIL image or None, linear factor (r,g,b), flat display colour [3] float32)."""
    factor = None
    image = None
    if hasattr(material, "baseColorTexture"):  # PBRMaterial (glTF)
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            factor = np.asarray(material.baseColorFactor, dtype=np.float64)[:3] / 255.0
        lin = factor if factor is not None else None
        if lin is None:
            flat = np.full(3, MID_GREY, dtype=np.float32)
        else:  # a factor-only material is shown as the sRGB encoding of its factor
            flat = linear_to_srgb(torch.from_numpy(lin)).numpy().astype(np.float32)
        return image, tuple(factor) if factor is not None else (1.0, 1.0, 1.0), flat
    # SimpleMaterial (OBJ/MTL): diffuse colour used as stored; map_Kd used as is
    image = getattr(material, "image", None)
    diffuse = getattr(material, "diffuse", None)
    if diffuse is not None:
        flat = np.asarray(diffuse, dtype=np.float32)[:3] / 255.0
    else:
        flat = np.full(3, MID_GREY, dtype=np.float32)
    return image, (1.0, 1.0, 1.0), flat


def vertex_colours(visual, n: int) -> np.ndarray | None:
    """[n, 3] float32 vertex colours in 0..1 if the visual carries real ones, else None."""
    colors = None
    if getattr(visual, "kind", None) == "vertex":
        colors = visual.vertex_colors
    else:
        attrs = getattr(visual, "vertex_attributes", None) or {}
        colors = attrs.get("color")
    if colors is None:
        return None
    colors = np.asarray(colors)
    if colors.ndim != 2 or len(colors) != n or colors.shape[1] < 3:
        return None
    if colors.dtype.kind == "f":
        return np.clip(np.nan_to_num(colors[:, :3]), 0, 1).astype(np.float32)
    return colors[:, :3].astype(np.float32) / 255.0


def texture_to_uint8(image) -> np.ndarray:
    """[H, W, 3] uint8 RGB texels from a PIL image of any mode (grey, RGBA, palette, 16-bit…).

    Alpha is ignored (the base colour is opaque); 16-bit values are rounded to 8 bits.
    """
    if image.width == 0 or image.height == 0:
        raise AssetError("a base-colour texture has zero size")
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(image).astype(np.float64) / 65535.0  # PNG 16-bit greyscale
        a = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.round(np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def texture_alpha(image) -> np.ndarray:
    """[H, W] uint8 alpha of a PIL image (255 where the image has no alpha)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info) \
            or (image.mode in ("RGB", "L") and "transparency" in image.info):
        return np.ascontiguousarray(np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., 3])
    return np.full((image.height, image.width), 255, dtype=np.uint8)


def decode_texture(image, name: str) -> np.ndarray:
    """texture_to_uint8, with a damaged image (it is decoded only here) as an AssetError."""
    from PIL import Image
    if not isinstance(image, Image.Image):  # e.g. a glTF whose baseColorTexture is not a texture reference
        raise AssetError(f"a material of {name} has a base-colour texture that is not an image "
                         f"({type(image).__name__}): the file is damaged; export it again")
    try:
        return texture_to_uint8(image)
    except AssetError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, TypeError) as e:
        texture = image.info.get("file_path") if hasattr(image, "info") else None
        raise AssetError(f"a base-colour texture of {name}{f' ({texture})' if texture else ''} cannot be decoded, "
                         f"damaged or truncated ({type(e).__name__}: {e}): save it again as PNG or JPEG") from e


def combine_parts(parts: list[Part], name: str) -> Asset:
    """Concatenate the parts' geometry; textures are kept one per (image, factor, wrap, cut-out)."""
    vertices, faces, colors, uvs, face_tex, alphas, cutoffs = [], [], [], [], [], [], []
    textures: list[Texture] = []
    tex_index: dict[tuple, int] = {}
    offset = 0
    cut_out = any(part.cutoff is not None for part in parts)
    for part in parts:
        n = len(part.vertices)
        vertices.append(part.vertices)
        faces.append(part.faces + offset)
        colors.append(np.asarray(part.colors, dtype=np.float32))
        if cut_out:
            alphas.append(np.ones(n, np.float32) if part.alpha is None else np.asarray(part.alpha, np.float32))
            cutoffs.append(np.full(len(part.faces), 0.0 if part.cutoff is None else part.cutoff, np.float32))
        if part.texture is not None:
            masked = part.cutoff is not None
            key = (id(part.texture), tuple(float(f) for f in part.factor), tuple(part.wrap), masked)
            if key not in tex_index:
                tex_index[key] = len(textures)
                alpha = torch.from_numpy(texture_alpha(part.texture)) if masked else None
                textures.append(Texture(torch.from_numpy(decode_texture(part.texture, name).copy()),
                                        torch.tensor(part.factor, dtype=torch.float32), tuple(part.wrap), alpha))
            uvs.append(part.uv)
            face_tex.append(np.full(len(part.faces), tex_index[key], dtype=np.int64))
        else:
            uvs.append(np.zeros((n, 2), dtype=np.float32))
            face_tex.append(np.full(len(part.faces), -1, dtype=np.int64))
        offset += n
    v = torch.from_numpy(np.concatenate(vertices)).float()
    f = torch.from_numpy(np.concatenate(faces)).long()
    c = torch.from_numpy(np.concatenate(colors)).float()
    cut = {}
    if cut_out:
        cut = {"alpha": torch.from_numpy(np.concatenate(alphas)), "face_cutoff": torch.from_numpy(np.concatenate(cutoffs))}
    if textures:
        uv = torch.from_numpy(np.concatenate(uvs).astype(np.float32))
        ft = torch.from_numpy(np.concatenate(face_tex))
        return Asset(v, f, c, uv=uv, face_texture=ft, textures=textures, name=name, **cut)
    return Asset(v, f, c, name=name, **cut)
