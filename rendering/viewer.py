"""Core's Load 3D viewer camera (socket LOAD3D_CAMERA) ⇄ the pack's Camera in the rendering frame.

Core's viewer is three.js in ComfyUI's frontend. Its ``camera_info`` is the orbit camera's state:
``position`` and ``target`` ({x, y, z}, the viewer's world), ``zoom``, ``cameraType``
("perspective" / "orthographic") and, in newer frontends, ``fov`` (vertical, degrees) and more.
The camera looks from ``position`` at ``target`` with +Y up and no roll (orbit controls), like the
pack's look-at cameras; a zoom z narrows the vertical field of view to 2·atan(tan(fov/2) / z).

Where the viewer puts the model (two frames, ``VIEWER_FRAMES``):

* ``fitted``: the model scaled so its largest bounding-box side is 5, centred on X and Z and resting
  on the ground (its lowest point at y = 0). Frontend 1.32 (the one ComfyUI 0.3.75 ships) does this
  to every model it loads; frontend 1.48 (ComfyUI 0.31) does it when "fit to viewer" is pressed.
* ``file``: the file's own coordinates, untouched: frontend 1.48 until "fit to viewer" is pressed.

The pack's rendering frame is n = (p − c)·2/L (c the bounding-box centre, L its largest side;
docs/method.md §1.3), so both viewer frames are v = a·n + b: ``fitted``: a = 2.5, b = (0, 2.5·h, 0)
with h the asset's half height in the rendering frame; ``file``: a = L/2, b = c. Exact for glTF/GLB
and OBJ files whose meshes carry no rotation in their node transforms (three.js bounds a rotated
mesh by its turned box, a little larger than the vertices' box).
"""
from __future__ import annotations

import math

import torch

from .camera import Camera, look_at
from .errors import AssetError

VIEWER_FRAMES = ("fitted", "file")
FIT_SIZE = 5.0  # the viewer's largest side after fitting
DEFAULT_VIEWER_FOV = 35.0  # the viewer's default vertical field of view (degrees)


def viewer_frame(asset, frame: str) -> tuple[float, torch.Tensor]:
    """(a, b [3] float64): viewer point = a · rendering-frame point + b."""
    if frame == "fitted":
        half_height = float(asset.normalised_vertices()[:, 1].max())
        return FIT_SIZE / 2, torch.tensor([0.0, FIT_SIZE / 2 * half_height, 0.0], dtype=torch.float64)
    if frame == "file":
        centre, scale = asset.normalisation()
        return 1.0 / scale, centre.double()
    raise AssetError(f"unknown viewer frame '{frame}' (use one of {', '.join(VIEWER_FRAMES)})")


def _xyz(value, what: str) -> torch.Tensor:
    if isinstance(value, dict):
        try:
            value = [value["x"], value["y"], value["z"]]
        except KeyError:
            raise AssetError(f"the viewer camera's {what} needs x, y and z, got keys {sorted(value)}") from None
    try:
        t = torch.tensor([float(v) for v in value], dtype=torch.float64)
    except (TypeError, ValueError):
        raise AssetError(f"the viewer camera's {what} must be three numbers, got {value!r}") from None
    if t.shape != (3,) or not bool(torch.isfinite(t).all()):
        raise AssetError(f"the viewer camera's {what} must be three finite numbers, got {value!r}")
    return t


def load3d_to_camera(info, asset, frame: str = "fitted", fov: float | None = None) -> Camera:
    """The pack's Camera (rendering frame) of a Load 3D ``camera_info``. ``fov``: the viewer's vertical
    field of view when the info does not carry one (older frontends; default 35°)."""
    if not isinstance(info, dict):
        raise AssetError(f"a Load 3D camera is a dict (camera_info of core's Load 3D), got {type(info).__name__}")
    kind = info.get("cameraType", "perspective")
    if kind != "perspective":
        raise AssetError(f"the viewer camera is '{kind}': only a perspective camera can be used; switch the "
                         "Load 3D viewer to perspective")
    for key in ("position", "target"):
        if key not in info:
            raise AssetError(f"the viewer camera has no '{key}' (keys: {sorted(info)}): connect core Load 3D's "
                             "camera_info")
    try:
        fov = float(info.get("fov") or (fov if fov is not None else DEFAULT_VIEWER_FOV))
        zoom = float(1.0 if info.get("zoom") is None else info["zoom"])
    except (TypeError, ValueError):
        raise AssetError(f"the viewer camera's fov and zoom must be numbers, got {info.get('fov')!r}, "
                         f"{info.get('zoom')!r}") from None
    if not (math.isfinite(fov) and 0.0 < fov < 180.0 and math.isfinite(zoom) and zoom > 0):
        raise AssetError(f"the viewer camera's field of view ({fov}°) and zoom ({zoom}) must be 0–180° and positive")
    a, b = viewer_frame(asset, frame)
    eye = (_xyz(info["position"], "position") - b) / a
    target = (_xyz(info["target"], "target") - b) / a
    if float((target - eye).norm()) < 1e-9:
        raise AssetError("the viewer camera's position and target coincide")
    vfov = math.degrees(2 * math.atan(math.tan(math.radians(fov) / 2) / zoom))
    return look_at(eye, vfov, target=tuple(target.tolist()))


def camera_to_load3d(camera: Camera, asset, frame: str = "fitted") -> dict:
    """A Load 3D ``camera_info`` (perspective, zoom 1) showing the asset as ``camera`` does. The orbit
    target is the point of the view axis nearest the asset's centre."""
    a, b = viewer_frame(asset, frame)
    forward = camera.rotation[2].double()
    eye = camera.eye.double()
    along = max(float(-(eye @ forward)), 1e-3)
    target = eye + along * forward

    def point(p):
        v = a * p + b
        return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}
    return {"position": point(eye), "target": point(target), "zoom": 1, "cameraType": "perspective",
            "fov": float(camera.fov)}
