"""Orbit cameras of docs/method.md §1.4-1.5: perspective, fov 45°, near 0.1, far 100, up +Y."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch

from .errors import AssetError

NEAR = 0.1
FAR = 100.0
RELEASE_FRAMES = 60  # the release renders a 60-frame orbit video and keeps N of its frames
PRESETS = ("release", "even")
MAX_VIEWS = 64


@dataclass
class Camera:
    """A look-at camera; camera coordinates: x right, y up, z forward (depth > 0 in front)."""

    eye: torch.Tensor  # [3] float64, world position
    rotation: torch.Tensor  # [3, 3] float64, rows = right, up, forward (world -> camera)
    fov: float  # vertical field of view, degrees (aspect 1)

    @property
    def focal(self) -> float:
        """1 / tan(fov / 2): NDC per unit of x/z."""
        return 1.0 / math.tan(math.radians(self.fov) / 2)

    def to_camera(self, p: torch.Tensor) -> torch.Tensor:
        """[..., 3] world points -> camera coordinates (same dtype as p)."""
        r = self.rotation.to(p)
        return (p - self.eye.to(p)) @ r.T


def whole_number(value, what: str) -> int:
    """value as an int (ints, numpy ints, integral floats); AssetError otherwise."""
    if isinstance(value, bool):
        raise AssetError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise AssetError(f"{what} must be a whole number, got {value!r}") from None


def look_at(eye: torch.Tensor, fov: float, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> Camera:
    eye = eye.double()
    forward = torch.tensor(target, dtype=torch.float64) - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, torch.tensor(up, dtype=torch.float64))
    if float(right.norm()) < 1e-9:
        raise AssetError("the camera looks straight along +Y/-Y: use a pitch strictly between -90 and 90 degrees")
    right = right / right.norm()
    true_up = torch.linalg.cross(right, forward)
    return Camera(eye=eye, rotation=torch.stack([right, true_up, forward]), fov=fov)


def view_angles(num_views: int, preset: str = "release") -> list[float]:
    """Orbit angles θ (radians) of the views.

    release: frames k = i * floor(60 / N) of a 60-frame orbit (0°, 42°, … for N = 8);
    even: θ = 2π i / N.
    """
    num_views = whole_number(num_views, "number of views")
    if not 1 <= num_views <= MAX_VIEWS:
        raise AssetError(f"number of views must be between 1 and {MAX_VIEWS}, got {num_views}")
    if preset == "release":
        if num_views > RELEASE_FRAMES:
            raise AssetError(f"the release preset picks views from a {RELEASE_FRAMES}-frame orbit: "
                             f"at most {RELEASE_FRAMES} views (got {num_views}); use the 'even' preset")
        step = RELEASE_FRAMES // num_views
        return [2 * math.pi * (i * step) / RELEASE_FRAMES for i in range(num_views)]
    if preset == "even":
        return [2 * math.pi * i / num_views for i in range(num_views)]
    raise AssetError(f"unknown view preset '{preset}' (use one of {', '.join(PRESETS)})")


def orbit_camera(theta: float, pitch_deg: float = 0.0, radius: float = 4.0, fov: float = 45.0) -> Camera:
    """eye = (r cosφ cosθ, r sinφ, r cosφ sinθ), looking at the origin, up +Y."""
    if not (math.isfinite(radius) and radius > 0):
        raise AssetError(f"camera radius must be a positive number, got {radius}")
    if not -90.0 < pitch_deg < 90.0:
        raise AssetError(f"pitch must be strictly between -90 and 90 degrees, got {pitch_deg}")
    if not 0.0 < fov < 180.0:
        raise AssetError(f"field of view must be between 0 and 180 degrees, got {fov}")
    phi = math.radians(pitch_deg)
    eye = radius * torch.tensor([math.cos(phi) * math.cos(theta), math.sin(phi),
                                 math.cos(phi) * math.sin(theta)], dtype=torch.float64)
    return look_at(eye, fov)


def orbit_cameras(num_views: int = 8, preset: str = "release", pitch: float = 0.0,
                  radius: float = 4.0, fov: float = 45.0) -> list[Camera]:
    return [orbit_camera(t, pitch, radius, fov) for t in view_angles(num_views, preset)]


def target_camera(yaw: float, pitch: float, fov: float = 45.0, fill: float = 0.6, x: float = 0.0, y: float = 0.0,
                  aspect: float = 1.0) -> Camera:
    """A camera chosen by the numbers an artist thinks in, in the rendering frame (asset inside [-1, 1]³).

    ``yaw``/``pitch`` (degrees): the side the asset is seen from, as the orbit views (yaw 0 = from +X,
    yaw 90 = from +Z, pitch > 0 = from above); ``fov``: vertical field of view (degrees); ``fill``: the
    share of the picture's height the asset's bounding sphere spans (0..1); ``x``/``y`` (-1..1, right
    and up): where in the picture the asset's centre appears, in shares of the half picture (0, 0 = the
    centre; the view is turned, without roll, so it lands there exactly); ``aspect``: picture width / height."""
    for name, v in (("yaw", yaw), ("pitch", pitch), ("fov", fov), ("fill", fill), ("x", x), ("y", y),
                    ("aspect", aspect)):
        if not math.isfinite(v):
            raise AssetError(f"{name} must be a finite number, got {v}")
    if not -90.0 < pitch < 90.0:
        raise AssetError(f"pitch must be strictly between -90 and 90 degrees, got {pitch}")
    if not 1.0 <= fov <= 170.0:
        raise AssetError(f"field of view must be between 1 and 170 degrees, got {fov}")
    if not 0.0 < fill <= 1.0:
        raise AssetError(f"fill must be more than 0 and at most 1 (the share of the picture's height), got {fill}")
    if not (-1.0 <= x <= 1.0 and -1.0 <= y <= 1.0):
        raise AssetError(f"the asset's place in the picture must lie within -1..1 on both axes, got ({x}, {y})")
    if not aspect > 0:
        raise AssetError(f"aspect must be positive, got {aspect}")
    t = math.tan(math.radians(fov) / 2)
    radius = math.sqrt(3.0)  # bounding sphere of [-1, 1]³
    distance = radius * math.sqrt(1.0 + 1.0 / (fill * t) ** 2)
    if distance - radius <= NEAR:
        raise AssetError(f"fill {fill} at a field of view of {fov}° puts the camera inside the asset: use a smaller fill")
    centred = orbit_camera(math.radians(yaw), pitch, radius=distance, fov=fov)
    if x == 0.0 and y == 0.0:
        return centred
    # turn the view (no roll: up stays +Y) until the centre, straight ahead before, appears at (x, y)
    aim = [x, y]
    camera = centred
    for _ in range(50):
        direction = centred.rotation.T @ torch.tensor([-aim[0] * t * aspect, -aim[1] * t, 1.0], dtype=torch.float64)
        camera = look_at(centred.eye, fov, target=tuple((centred.eye + direction).tolist()))
        seen = camera.to_camera(torch.zeros(1, 3, dtype=torch.float64))[0]
        got = (float(seen[0] / seen[2]) / (t * aspect), float(seen[1] / seen[2]) / t)
        if max(abs(got[0] - x), abs(got[1] - y)) < 1e-9:
            break
        aim = [aim[0] + (x - got[0]), aim[1] + (y - got[1])]
    return camera


def camera_distance(camera: Camera, target: Camera) -> dict:
    """How far ``camera`` is from ``target`` (both in the rendering frame): ``rotation_deg``, the angle of
    the turn between their orientations; ``position_pct``, the distance between their eyes in % of the
    target's distance to the asset's centre; ``fov_deg``, the difference of their vertical fields of view."""
    turn = camera.rotation.double().T @ target.rotation.double()
    cos = max(-1.0, min(1.0, (float(torch.trace(turn)) - 1.0) / 2.0))
    reach = max(float(target.eye.double().norm()), 1e-12)
    return {"rotation_deg": math.degrees(math.acos(cos)),
            "position_pct": 100.0 * float((camera.eye.double() - target.eye.double()).norm()) / reach,
            "fov_deg": float(camera.fov - target.fov)}
