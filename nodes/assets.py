"""Asset nodes: RefAny3DLoadAsset (a 3D file from input/3d, or a core MESH) and
RefAny3DAssetToMesh (back to a core MESH that core SaveGLB / Preview3D show)."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.latest import Types, io

from ..rendering import (
    SUPPORTED_EXTENSIONS,
    AssetError,
    asset_from_mesh,
    load_asset,
    resolve_in_folder,
    sources_key,
)
from ..rendering.export import asset_to_mesh_arrays
from .notify import report
from .sockets import Asset

ASSET_SUBFOLDER = "3d"


def asset_files() -> list[str]:
    """Supported 3D files under input/3d, as '3d/…' names (what core Load3D lists and uploads to).

    Linked files and linked sub-folders are listed too (a studio's asset library linked into
    input/3d); a folder reached twice through links is walked once."""
    base = Path(folder_paths.get_input_directory())
    folder = base / ASSET_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    files, seen = [], set()
    for dirpath, subdirs, names in os.walk(folder, followlinks=True):
        try:
            real = os.path.realpath(dirpath)
        except OSError:
            continue
        if real in seen:
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs.sort()
        for name in names:
            p = Path(dirpath, name)
            if p.suffix.lower() in SUPPORTED_EXTENSIONS and p.is_file():
                files.append(p.relative_to(base).as_posix())
    return sorted(files)


def input_root(name: str) -> tuple[str, Path]:
    """(name without its ' [input]'-style annotation, the folder it is relative to)."""
    name, base = folder_paths.annotated_filepath(str(name))
    return name, Path(base if base is not None else folder_paths.get_input_directory())


def input_path(name: str) -> Path:
    """Safe path of an input-folder file name (an optional ' [input]'-style annotation allowed)."""
    name, base = input_root(name)
    return resolve_in_folder(name, base)


def path_problem(name: str) -> str | None:
    """A user-facing reason why ``name`` can never be loaded ('..', absolute), else None."""
    try:
        input_path(name)
    except AssetError as e:
        if "not found" in str(e) or "no 3D file" in str(e):
            return None  # may still be fine: a MESH can be connected instead
        return str(e)
    return None


class RefAny3DLoadAsset(io.ComfyNode):
    REQUIRES = {"trimesh": "trimesh"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        files = asset_files()
        return io.Schema(
            node_id="RefAny3DLoadAsset",
            display_name="RefAny3D Load 3D Asset",
            category="RefAny3D/asset",
            description=("Loads a 3D asset (GLB, glTF, OBJ+MTL, PLY, STL, USD/USDZ, FBX) from ComfyUI's input/3d folder, or takes a "
                         "core MESH, for RefAny3D's reference renders. Scene transforms are applied; each "
                         "part keeps its own texture and base-colour factor."),
            inputs=[
                io.Combo.Input("asset_file", options=files, default=files[0] if files else None,
                               upload=io.UploadType.model, optional=True,
                               tooltip="A 3D file in ComfyUI/input/3d (upload one with the button). Ignored when "
                                       "a mesh is connected."),
                io.Mesh.Input("mesh", optional=True,
                              tooltip="Optional core MESH (e.g. from a 3D generator). When connected it is used "
                                      "instead of the file; it renders untextured (mid grey)."),
            ],
            outputs=[Asset.Output(display_name="asset",
                                  tooltip="The loaded asset, for RefAny3D Render Views and RefAny3D Asset To Mesh.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, asset_file=None) -> bool | str:
        if asset_file:
            problem = path_problem(asset_file)
            if problem:
                return problem
        return True

    @classmethod
    def fingerprint_inputs(cls, asset_file=None, mesh=None):
        """Changes when the file or any file it names (material library, textures, buffers, images)
        changes, appears or goes away, so that uploading a missing texture is seen at the next run."""
        try:
            return f"{asset_file}\n{sources_key(input_path(asset_file))}"
        except (AssetError, OSError, TypeError, ValueError):
            return str(asset_file)

    @classmethod
    def execute(cls, asset_file=None, mesh=None) -> io.NodeOutput:
        if mesh is not None:
            asset = mesh_to_asset(mesh)
        else:
            name, root = input_root(asset_file or "")
            asset = load_asset(resolve_in_folder(name, root), root=root)
        text = report(cls.hidden.unique_id if cls.hidden else None, "Load 3D Asset", asset.description(),
                      warning=bool(asset.warnings))
        return io.NodeOutput(asset, ui=text)


def mesh_to_asset(mesh):
    vertices, faces = mesh.vertices, mesh.faces
    if vertices.ndim == 3 and vertices.shape[0] > 1:
        raise AssetError(f"the MESH holds a batch of {vertices.shape[0]} meshes: RefAny3D renders one asset; "
                         "split the batch first")
    return asset_from_mesh(vertices, faces, name="mesh")


class RefAny3DAssetToMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DAssetToMesh",
            display_name="RefAny3D Asset To Mesh",
            category="RefAny3D/asset",
            description=("The asset's geometry as a core MESH (no colours), so core Save GLB / Preview 3D can "
                         "show it in the UI."),
            inputs=[
                Asset.Input("asset", tooltip="An asset from RefAny3D Load 3D Asset."),
                io.Boolean.Input("normalised", default=True,
                                 tooltip="On: centred and scaled to the [-1, 1] cube RefAny3D renders (the "
                                         "frame of the reference views). Off: the asset's own coordinates."),
            ],
            outputs=[io.Mesh.Output(display_name="mesh", tooltip="Vertices [1, V, 3] and faces [1, F, 3].")],
        )

    @classmethod
    def execute(cls, asset, normalised=True) -> io.NodeOutput:
        v, f = asset_to_mesh_arrays(asset, normalised=normalised)
        return io.NodeOutput(Types.MESH(v[None], f[None]))


NODES = [RefAny3DLoadAsset, RefAny3DAssetToMesh]
