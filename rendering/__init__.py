"""RefAny3D reference rendering: plain library (torch, numpy, trimesh, PIL; no ComfyUI imports).

load_asset(path) / asset_from_mesh(vertices, faces) -> Asset
render_views(asset, num_views=8, preset="release", resolution=512, ...) -> Views
"""
from .asset import Asset, Texture, asset_from_mesh, point_map_coords
from .camera import FAR, MAX_VIEWS, NEAR, PRESETS, Camera, orbit_camera, orbit_cameras, view_angles
from .coverage import blank_views, check_coverage
from .errors import AssetError
from .export import asset_to_mesh_arrays
from .loading import SUPPORTED_EXTENSIONS, load_asset, texture_to_uint8
from .paths import join_inside, name_parts, resolve_in_folder
from .pose import PoseReadout, read_pose, render_at
from .raster import rasterize
from .sidecars import asset_sources, sources_key
from .views import BACKENDS, RESOLUTION_MULTIPLE, Views, check_resolution, render_views

__all__ = [
    "BACKENDS", "FAR", "MAX_VIEWS", "NEAR", "PRESETS", "RESOLUTION_MULTIPLE", "SUPPORTED_EXTENSIONS",
    "Asset", "AssetError", "Camera", "PoseReadout", "Texture", "Views",
    "asset_from_mesh", "asset_sources", "asset_to_mesh_arrays", "blank_views", "check_coverage",
    "check_resolution", "load_asset",
    "orbit_camera", "orbit_cameras", "point_map_coords", "rasterize", "read_pose", "render_at", "render_views",
    "join_inside", "name_parts", "resolve_in_folder", "sources_key", "texture_to_uint8", "view_angles",
]
