"""USD / USDA / USDC / USDZ read with Pixar's usd-core (optional: imported only here, and a
missing install is an AssetError naming the package).

Every visible UsdGeom.Mesh of the stage (instance proxies included, guide geometry left out) in
its world transform; polygons split into fans; ``orientation = "leftHanded"`` and mirroring
transforms reverse the winding. A Z-up stage is turned to Y-up (the frame glTF and the release
use). Base colour from the bound UsdPreviewSurface's ``diffuseColor``: a UsdUVTexture (its ``st``
primvar, wrap modes, texels sRGB) or a constant (linear, shown as its sRGB encoding); without a
material, the ``displayColor`` primvar as stored. ``opacityThreshold`` > 0 makes the surface a
cut-out like glTF's alphaMode MASK. Textures inside a .usdz are read from the archive; a texture
file beside a .usd must stay inside the asset's folder.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .colors import linear_to_srgb
from .errors import AssetError
from .sidecars import decode_texture, reference_path, short

USD_EXTENSIONS = (".usd", ".usda", ".usdc", ".usdz")
USD_PACKAGE = "usd-core"
WRAP = {"repeat": 10497, "mirror": 33648, "clamp": 33071, "black": 33071, "useMetadata": 10497}
Z_UP_TO_Y_UP = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # (x, y, z) -> (x, z, -y)


def import_usd():
    try:
        from pxr import Usd, UsdGeom, UsdShade
    except ImportError:
        raise AssetError(f"reading USD files needs Pixar's USD library: pip install {USD_PACKAGE} (into "
                         "ComfyUI's Python), then load the asset again; or export it as GLB") from None
    return Usd, UsdGeom, UsdShade


def read_usd(path: Path) -> tuple[list, list[str]]:
    """(parts, warnings) of a USD stage."""
    Usd, UsdGeom, UsdShade = import_usd()
    try:
        stage = Usd.Stage.Open(str(path))
    except Exception as e:  # pxr raises Tf errors of its own types
        raise AssetError(f"could not read {path.name}: not a valid USD file, damaged or truncated "
                         f"({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__})") from None
    if stage is None:
        raise AssetError(f"could not read {path.name}: not a valid USD file")
    z_up = UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z
    cache = UsdGeom.XformCache(Usd.TimeCode.Default())
    textures = TextureFiles(path)
    parts, warnings = [], []
    for prim in Usd.PrimRange.Stage(stage, Usd.TraverseInstanceProxies()):
        if not prim.IsA(UsdGeom.Mesh):
            continue
        imageable = UsdGeom.Imageable(prim)
        if imageable.ComputeVisibility() == UsdGeom.Tokens.invisible or \
                imageable.ComputePurpose() == UsdGeom.Tokens.guide:
            continue
        world = np.array(cache.GetLocalToWorldTransform(prim), dtype=np.float64).T  # column-vector form
        part = mesh_part(UsdGeom.Mesh(prim), world, z_up, UsdShade, textures, warnings)
        if part is not None:
            parts.append(part)
    if not parts:
        raise AssetError(f"{path.name} contains no visible mesh with faces: nothing to render")
    return parts, warnings


def mesh_part(mesh, world: np.ndarray, z_up: bool, UsdShade, textures, warnings):
    from .loading import Part
    points = np.asarray(mesh.GetPointsAttr().Get() or [], dtype=np.float64).reshape(-1, 3)
    counts = np.asarray(mesh.GetFaceVertexCountsAttr().Get() or [], dtype=np.int64)
    indices = np.asarray(mesh.GetFaceVertexIndicesAttr().Get() or [], dtype=np.int64)
    name = str(mesh.GetPath())
    if len(points) == 0 or len(counts) == 0:
        return None
    if counts.sum() != len(indices) or (indices.size and (indices.min() < 0 or indices.max() >= len(points))):
        raise AssetError(f"the USD mesh {short(name)} is damaged: its face-vertex counts and indices do not match "
                         "its points")
    corners = fan_triangles(counts)  # [f, 3] indices into the face-vertex list
    if mesh.GetOrientationAttr().Get() == "leftHanded":
        corners = corners[:, [0, 2, 1]]
    v = points[indices] @ world[:3, :3].T + world[:3, 3]
    if np.linalg.det(world[:3, :3]) < 0:
        corners = corners[:, [0, 2, 1]]
    if z_up:
        v = v @ Z_UP_TO_Y_UP.T
    n = len(v)
    colour = surface_colour(mesh, UsdShade, textures, counts, indices, warnings)
    if colour.get("texture") is not None:
        return Part(v, corners, np.ones((n, 3), np.float32), colour["uv"], colour["texture"], (1.0, 1.0, 1.0),
                    wrap=colour["wrap"], alpha=colour.get("alpha"), cutoff=colour.get("cutoff"))
    rgb = colour.get("rgb")
    if rgb is None:
        rgb = np.full((n, 3), 0.5, np.float32)
    return Part(v, corners, np.broadcast_to(rgb, (n, 3)).astype(np.float32),
                alpha=colour.get("alpha"), cutoff=colour.get("cutoff"))


def fan_triangles(counts: np.ndarray) -> np.ndarray:
    """Polygons (face-vertex counts) split into fans: [f, 3] positions in the face-vertex list."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    tris = counts - 2
    keep = tris > 0
    first = np.repeat(starts[keep], tris[keep])
    k = np.arange(tris[keep].sum()) - np.repeat(np.cumsum(tris[keep]) - tris[keep], tris[keep])
    return np.stack([first, first + k + 1, first + k + 2], axis=1)


def primvar_per_corner(primvar, counts: np.ndarray, indices: np.ndarray) -> np.ndarray | None:
    """A primvar's values for every face-vertex (faceVarying, vertex/varying, uniform, constant)."""
    if primvar is None or not primvar.HasValue():
        return None
    values = np.asarray(primvar.ComputeFlattened(), dtype=np.float64)
    if values.size == 0:
        return None
    values = values.reshape(len(values), -1)
    interp = primvar.GetInterpolation()
    if interp == "faceVarying" and len(values) == len(indices):
        return values
    if interp in ("vertex", "varying") and len(values) > indices.max():
        return values[indices]
    if interp == "uniform" and len(values) == len(counts):
        return np.repeat(values, counts, axis=0)
    return np.broadcast_to(values[0], (len(indices), values.shape[1]))


def surface_colour(mesh, UsdShade, textures, counts, indices, warnings) -> dict:
    from pxr import UsdGeom
    primvars = UsdGeom.PrimvarsAPI(mesh.GetPrim())
    material = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()[0]
    shader = None
    if material:
        output = material.GetSurfaceOutput()
        source = output.GetConnectedSources()[0] if output and output.HasConnectedSource() else []
        if source:
            shader = UsdShade.Shader(source[0].source.GetPrim())
    if shader is None or shader.GetIdAttr().Get() != "UsdPreviewSurface":
        display = primvar_per_corner(primvars.GetPrimvar("displayColor"), counts, indices)
        return {"rgb": None if display is None else np.clip(display[:, :3], 0, 1)}
    out: dict = {}
    threshold = shader.GetInput("opacityThreshold")
    cutoff = float(threshold.Get()) if threshold and threshold.Get() is not None else 0.0
    if cutoff > 0:
        opacity = shader.GetInput("opacity")
        out["cutoff"] = cutoff
        out["alpha"] = np.full(len(indices), float(opacity.Get()) if opacity and opacity.Get() is not None else 1.0,
                               np.float32)
    diffuse = shader.GetInput("diffuseColor")
    connected = diffuse.GetConnectedSources()[0] if diffuse and diffuse.HasConnectedSource() else []
    if connected:
        texture = UsdShade.Shader(connected[0].source.GetPrim())
        if texture.GetIdAttr().Get() == "UsdUVTexture":
            out.update(texture_colour(texture, primvars, UsdShade, textures, counts, indices, warnings))
            if "texture" in out:
                return out
    value = diffuse.Get() if diffuse else None
    factor = np.asarray(value if value is not None else (0.18, 0.18, 0.18), dtype=np.float64)  # the schema's default
    out["rgb"] = linear_to_srgb(torch.from_numpy(factor)).numpy().astype(np.float32)
    return out


def texture_colour(texture, primvars, UsdShade, textures, counts, indices, warnings) -> dict:
    file_input = texture.GetInput("file")
    asset_path = file_input.Get() if file_input else None
    if asset_path is None or not asset_path.path:
        return {}
    st_name = "st"
    st_input = texture.GetInput("st")
    if st_input and st_input.HasConnectedSource():
        reader = UsdShade.Shader(st_input.GetConnectedSources()[0][0].source.GetPrim())
        varname = reader.GetInput("varname")
        if varname and varname.Get():
            st_name = str(varname.Get())
    uv = primvar_per_corner(primvars.GetPrimvar(st_name), counts, indices)
    if uv is None:
        warnings.append(f"a texture ({asset_path.path}) has no '{st_name}' UVs on {texture.GetPath()}: that part "
                        "shows a flat colour")
        return {}
    wrap = tuple(WRAP.get(str((texture.GetInput(k).Get() if texture.GetInput(k) else None) or "useMetadata"), 10497)
                 for k in ("wrapS", "wrapT"))
    return {"texture": textures.open(asset_path), "uv": uv[:, :2].astype(np.float32), "wrap": wrap}


class TextureFiles:
    """Texture images named by a stage: from inside a .usdz, or files beside a .usd."""

    def __init__(self, path: Path):
        self.path = path
        self.cache: dict[str, object] = {}

    def open(self, asset_path):
        resolved = str(asset_path.resolvedPath or "")
        key = resolved or asset_path.path
        if key not in self.cache:
            data = self.read(asset_path.path, resolved)
            self.cache[key] = decode_texture(data, f"the texture '{short(asset_path.path)}' of {self.path.name}")
        return self.cache[key]

    def read(self, written: str, resolved: str) -> bytes:
        inner = re.match(r"^(.*)\[(.+)\]$", resolved)
        if inner or self.path.suffix.lower() == ".usdz":
            member = inner.group(2) if inner else written.lstrip("./")
            try:
                with zipfile.ZipFile(self.path) as archive:
                    return archive.read(member)
            except (KeyError, zipfile.BadZipFile, OSError):
                raise AssetError(f"{self.path.name} names the texture '{short(written)}', which is not in the "
                                 "archive: package it again (usdzip)") from None
        target = reference_path(self.path.parent, written, self.path.name, "texture")
        try:
            return target.read_bytes()
        except OSError:
            raise AssetError(f"{self.path.name} names the texture '{short(written)}', which is missing: it was looked "
                             f"for as '{target.name}' in the folder {target.parent}. Upload it there") from None
