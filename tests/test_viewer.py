"""Core's Load 3D viewer camera ⇄ the pack's camera (rendering/viewer.py), both ways.

The oracle is written here from the frontend's three.js code: how Load 3D places a model (scale so
the largest side is 5, centre X/Z, lowest point on y = 0) and how a three.js perspective camera
looking from ``position`` at ``target`` (+Y up) projects a point (NDC = zoom / tan(fov/2) · x / −z)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tools.assets_gen import box

import rendering
from rendering import AssetError
from rendering.camera import target_camera
from rendering.viewer import camera_to_load3d, load3d_to_camera

ASPECT = 4 / 3


@pytest.fixture(scope="module")
def asset():
    v, f, _ = box((0.5, 0.5, 0.5))
    # off-centre and not a cube: every term of the frame maps shows (x side 1.6, y 0.6, z 1.0)
    v = np.asarray(v, float) * [1.6, 0.6, 1.0] + [3.0, -2.0, 0.7]
    return rendering.asset_from_mesh(torch.tensor(v), torch.tensor(np.asarray(f)))


def viewer_points(asset, frame):
    """The asset's vertices where Load 3D shows them, per the frontend's placement code."""
    p = asset.vertices.double().numpy()
    if frame == "file":
        return p
    lo, hi = p.min(0), p.max(0)
    s = 5.0 / (hi - lo).max()
    scaled_lo, scaled_hi = lo * s, hi * s
    centre = (scaled_lo + scaled_hi) / 2
    return p * s - [centre[0], scaled_lo[1], centre[2]]


def three_ndc(info, points, fov=None):
    """three.js: camera.lookAt(target) from position with up +Y, PerspectiveCamera(fov, aspect), zoom."""
    pos = np.array([info["position"][k] for k in "xyz"], float)
    tgt = np.array([info["target"][k] for k in "xyz"], float)
    z = (pos - tgt) / np.linalg.norm(pos - tgt)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c = (points - pos) @ np.stack([x, y, z]).T
    f = info.get("zoom", 1) / math.tan(math.radians(info.get("fov", fov)) / 2)
    return np.c_[f / ASPECT * c[:, 0] / -c[:, 2], f * c[:, 1] / -c[:, 2]]


def pack_ndc(camera, asset):
    c = camera.to_camera(asset.normalised_vertices()).numpy()
    return np.c_[camera.focal / ASPECT * c[:, 0] / c[:, 2], camera.focal * c[:, 1] / c[:, 2]]


@pytest.mark.parametrize("frame", ["fitted", "file"])
@pytest.mark.parametrize("yaw,pitch,fov,fill,x,y", [(0, 0, 45, 0.6, 0, 0), (137, 30, 30, 0.4, 0.3, -0.2),
                                                     (-80, -50, 70, 0.9, -0.5, 0.6)])
def test_pack_camera_to_viewer_shows_every_point_at_the_same_place(asset, frame, yaw, pitch, fov, fill, x, y):
    cam = target_camera(yaw, pitch, fov, fill, x, y, aspect=ASPECT)
    info = camera_to_load3d(cam, asset, frame)
    assert info["cameraType"] == "perspective" and info["zoom"] == 1
    np.testing.assert_allclose(three_ndc(info, viewer_points(asset, frame)), pack_ndc(cam, asset), atol=1e-9)
    back = load3d_to_camera(info, asset, frame)
    torch.testing.assert_close(back.rotation, cam.rotation, atol=1e-9, rtol=0)
    torch.testing.assert_close(back.eye, cam.eye, atol=1e-9, rtol=0)
    assert math.isclose(back.fov, fov, abs_tol=1e-9)


@pytest.mark.parametrize("frame", ["fitted", "file"])
def test_viewer_camera_to_pack_shows_every_point_at_the_same_place(asset, frame):
    """A camera_info as the older frontend sends it (no fov: the viewer's own, given; zoom 2) and one
    as the newer sends it (fov inside, extra keys ignored)."""
    pts = viewer_points(asset, frame)
    middle = (pts.min(0) + pts.max(0)) / 2
    old = {"position": {"x": middle[0] + 6.0, "y": middle[1] + 4.0, "z": middle[2] - 7.0},
           "target": {"x": middle[0] + 0.3, "y": middle[1] - 0.2, "z": middle[2]}, "zoom": 2, "cameraType": "perspective"}
    cam = load3d_to_camera(old, asset, frame, fov=40.0)
    np.testing.assert_allclose(pack_ndc(cam, asset), three_ndc(old, pts, fov=40.0), atol=1e-9)
    new = dict(old, zoom=1, fov=28.0, aspect=1.5, near=0.01, far=1e4, quaternion={"x": 0, "y": 0, "z": 0, "w": 1})
    cam = load3d_to_camera(new, asset, frame)
    np.testing.assert_allclose(pack_ndc(cam, asset), three_ndc(new, pts), atol=1e-9)


def test_viewer_camera_bad_input_gets_clear_errors(asset):
    good = {"position": {"x": 5, "y": 5, "z": 5}, "target": {"x": 0, "y": 1, "z": 0}, "zoom": 1,
            "cameraType": "perspective"}
    for info, words in ((dict(good, cameraType="orthographic"), "only a perspective camera"),
                        ({"target": good["target"]}, "has no 'position'"),
                        (dict(good, position={"x": 1, "y": 2}), "needs x, y and z"),
                        (dict(good, target=[0, float("nan"), 0]), "three finite numbers"),
                        (dict(good, target=good["position"]), "coincide"),
                        (dict(good, zoom=-1), "must be 0–180° and positive"),
                        ("not a dict", "is a dict")):
        with pytest.raises(AssetError, match=words):
            load3d_to_camera(info, asset)
    with pytest.raises(AssetError, match="unknown viewer frame 'world'"):
        load3d_to_camera(good, asset, "world")


@pytest.mark.parametrize("frame", ["fitted", "file"])
def test_camera_round_trip_numbers_viewer_point_map_read_pose(asset, frame):
    """numbers → LOAD3D_CAMERA → the camera it names → point map rendered there → Read Pose: the same
    camera within 0.1° (rotation and field of view)."""
    from rendering import read_pose, render_at
    width, height = 256, 192
    cam = target_camera(-140.0, 25.0, 38.0, 0.7, 0.2, -0.1, aspect=width / height)
    info = camera_to_load3d(cam, asset, frame)
    held = load3d_to_camera(info, asset, frame)
    view = render_at(asset, held, width, height)
    got = read_pose(view.point_map[0], view.mask[0], asset).camera
    turn = cam.rotation.numpy().T @ got.rotation.numpy()
    assert math.degrees(math.acos(np.clip((np.trace(turn) - 1) / 2, -1, 1))) < 0.1
    assert abs(got.fov - 38.0) < 0.1


def test_camera_distance_names_the_turn_and_the_step():
    from rendering.camera import camera_distance, orbit_camera
    target = orbit_camera(0.0, 0.0, radius=4.0, fov=40.0)
    turned = orbit_camera(math.radians(10.0), 0.0, radius=4.0, fov=44.0)  # 10° round the asset, same distance
    d = camera_distance(turned, target)
    assert math.isclose(d["rotation_deg"], 10.0, abs_tol=1e-9) and math.isclose(d["fov_deg"], 4.0, abs_tol=1e-12)
    assert math.isclose(d["position_pct"], 100 * 2 * math.sin(math.radians(5.0)), rel_tol=1e-9)  # the chord
    assert camera_distance(target, target) == {"rotation_deg": 0.0, "position_pct": 0.0, "fov_deg": 0.0}
