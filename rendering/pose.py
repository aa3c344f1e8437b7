"""Where is the object? The camera that explains a point map, read back with OpenCV.

Every object pixel of a point map says which point of the asset it shows (docs/method.md §1.2:
colour = per-axis normalised asset coordinate), so a generated point map plus its asset is a set of
2D–3D correspondences, and the camera that "took" the picture follows from them:

1. decode: colour → asset point → rendering frame (docs/method.md §1.3), after undoing the point-map
   ``y_rotation`` the references used (§1.8);
2. focal search: the focal length is unknown (a generated photo is not taken with the reference
   camera), so RANSAC PnP (``cv2.solvePnPRansac``) runs over a log-spaced range of focal lengths
   with the principal point at the image centre, and the focal with the most inliers wins;
3. refinement: focal, rotation and translation jointly by least squares on the inliers
   (``cv2.calibrateCamera`` with the principal point, aspect ratio and zero distortion fixed);
4. check: the asset is re-rendered at that camera (:func:`render_at`) and compared with the mask
   and the point map.

The camera comes back in the pack's conventions (:class:`~rendering.camera.Camera`: rendering frame,
x right, y up, z forward, vertical fov, principal point at the image centre, square pixels) and as a
JSON-ready dict (:meth:`PoseReadout.to_json`) with the OpenCV convention and the glTF/Blender one.
OpenCV (``opencv-python-headless``) is imported inside :func:`read_pose`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .asset import Asset
from .camera import FAR, NEAR, Camera
from .errors import AssetError

MIN_POINTS = 50          # correspondences the solver needs (far more than the 6 of a DLT: noise)
MAX_SOLVE_POINTS = 3000  # correspondences used by the RANSAC focal search (a fixed random subset)
MAX_REFINE_POINTS = 20000  # inliers used by the joint refinement (a fixed random subset)
FOV_RANGE = (5.0, 120.0)  # vertical field of view searched, degrees
FOCAL_STEPS = 28
#: 2D-3D pairs whose reprojection error is below this share of the image's larger side are inliers
INLIER_SHARE = 0.02
#: median 3D error (in % of the asset's size) at which the geometry term of the score reaches 0
ERROR_SCALE_PCT = 8.0


@dataclass
class PoseReadout:
    """The camera read from one point map, and how well it explains it.

    ``camera``: the pack's Camera (rendering frame); ``width``/``height``: the picture's size;
    ``focal_px``: focal length in pixels (both axes); ``principal``: (cx, cy) in pixels, OpenCV
    convention (pixel centres at integers), always the image centre; ``rotation_cv``/``translation_cv``:
    world (rendering frame) → OpenCV camera (x right, y down, z forward).

    Scores: ``inlier_ratio``: share of the correspondences within the inlier threshold;
    ``reprojection_px``: median reprojection error of the inliers; ``iou``: mask of the picture vs
    mask of the asset re-rendered at the camera; ``median_error_pct``: median 3D distance between
    the point each pixel claims and the point the re-render shows there, in % of the asset's
    bounding-box diagonal; ``score`` = iou² × max(0, 1 − median_error_pct / 8), in [0, 1]: 1 means the
    picture shows exactly this asset's geometry from one camera. (The inlier ratio is reported but left
    out of the score: it falls with the noise of a decoded point map while a wrong asset can keep it
    high; silhouette overlap and 3D error separate the two.)
    """
    camera: Camera
    width: int
    height: int
    focal_px: float
    principal: tuple[float, float]
    rotation_cv: np.ndarray
    translation_cv: np.ndarray
    points: int
    inlier_ratio: float
    reprojection_px: float
    iou: float = 0.0
    median_error_pct: float = 100.0
    score: float = 0.0
    rerender: object = field(default=None, repr=False)  # Views of the asset at this camera (1 view)
    frame: tuple = field(default=None, repr=False)  # (centre [3], scale): rendering frame = (p - centre) * scale

    def to_json(self) -> dict:
        """The camera in the OpenCV convention and the glTF/Blender one, in the asset's own units.

        ``opencv``: K (3×3), R (3×3) and t (3) with x_cam = R·p + t for asset points p, camera x right,
        y down, z forward. ``gltf``: ``camera_to_world`` (4×4, column vector convention) of a camera
        looking down its −Z with +Y up, as glTF and Blender place cameras, and ``yfov`` in radians.
        ``pack``: the same camera in the pack's rendering frame (eye, rows right/up/forward, vertical
        fov in degrees)."""
        centre, scale = (np.asarray(self.frame[0], float), float(self.frame[1]))
        k = [[self.focal_px, 0.0, self.principal[0]], [0.0, self.focal_px, self.principal[1]], [0.0, 0.0, 1.0]]
        # rendering frame X = (p - centre) * scale: x_cam = R (p - centre) scale + t
        r = np.asarray(self.rotation_cv, float)
        t_asset = (scale * (-(r @ centre)) + np.asarray(self.translation_cv, float)) / scale
        eye = np.asarray(self.camera.eye, float) / scale + centre
        r_gl = np.diag([1.0, 1.0, -1.0]) @ np.asarray(self.camera.rotation, float)  # world -> camera (-Z forward)
        cam_to_world = np.eye(4)
        cam_to_world[:3, :3] = r_gl.T
        cam_to_world[:3, 3] = eye
        return {
            "width": self.width, "height": self.height,
            "opencv": {"K": k, "R": r.tolist(), "t": t_asset.tolist(), "dist": [0.0] * 5},
            "gltf": {"camera_to_world": cam_to_world.tolist(), "yfov": math.radians(self.camera.fov),
                     "aspectRatio": self.width / self.height, "znear": NEAR / scale, "zfar": FAR / scale},
            "pack": {"eye": [float(v) for v in self.camera.eye], "rotation": np.asarray(self.camera.rotation).tolist(),
                     "fov_deg": self.camera.fov, "frame_centre": centre.tolist(), "frame_scale": scale},
            "scores": {"score": self.score, "iou": self.iou, "median_error_pct": self.median_error_pct,
                       "inlier_ratio": self.inlier_ratio, "reprojection_px": self.reprojection_px,
                       "points": self.points},
        }


def render_at(asset: Asset, camera: Camera, width: int, height: int, y_rotation: float = 0.0, device=None):
    """The asset rendered by the pack's renderer at ``camera`` (rendering frame, principal point at the
    image centre) into a ``width`` × ``height`` picture: Views with one view (rgb, point_map, mask, depth)."""
    from .raster import rasterize
    from .views import Shader, Views
    if width < 1 or height < 1:
        raise AssetError(f"render size must be positive, got {width}×{height}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    verts = asset.normalised_vertices()
    cam_v = camera.to_camera(verts)
    visible = (cam_v[:, 2] > NEAR) & (cam_v[:, 2] < FAR)
    shader = Shader(asset, verts, y_rotation, device)
    n = width * height
    rgb, point_map = torch.ones(n, 3), torch.ones(n, 3)
    mask, depth = torch.zeros(n), torch.zeros(n)
    if bool(visible.all()):
        face = rasterize(cam_v.float().to(device), shader.face_cols, camera.focal, width, height=height)
        pix = (face >= 0).nonzero().squeeze(1)
        if pix.numel():
            c, pm, t = shader.shade(pix, face[pix], camera, width, height)
            pix = pix.cpu()
            rgb[pix], point_map[pix], mask[pix], depth[pix] = c.cpu(), pm.cpu(), 1.0, t.cpu()
    elif not bool(visible.any()):
        pass  # the asset is entirely behind the camera or beyond the far plane: an empty picture
    else:  # parts cross the near plane: the rasterizer needs every vertex in range
        raise AssetError("the camera is inside the asset or too close to it to render (part of the asset lies "
                         f"nearer than {NEAR} or beyond {FAR} in the rendering frame)")
    return Views(rgb.view(1, height, width, 3), point_map.view(1, height, width, 3), mask.view(1, height, width),
                 depth.view(1, height, width), [camera])


def _as_array(x, name: str, ndim: int) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != ndim:
        raise AssetError(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise AssetError(f"{name} holds NaN or infinite values")
    return a


def decode_points(point_map: np.ndarray, asset: Asset, y_rotation: float = 0.0) -> np.ndarray:
    """Point-map colours [..., 3] in [0, 1] → points in the rendering frame [..., 3] (float64)."""
    pm = point_map
    if y_rotation % 360:
        a = math.radians(y_rotation)
        rot = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
        pm = ((pm * 2 - 1) @ rot + 1) / 2  # the references used ((pm * 2 - 1) @ rot.T + 1) / 2
    vmin, vmax = (t.numpy() for t in asset.bounds())
    centre, scale = asset.normalisation()
    return (vmin + pm * (vmax - vmin) - centre.numpy()) * scale


def _erode(mask: np.ndarray) -> np.ndarray:
    """``mask`` without the pixels that touch the background (3×3 neighbourhood)."""
    t = torch.from_numpy(~mask).float()[None, None]
    return mask & (torch.nn.functional.max_pool2d(t, 3, stride=1, padding=1)[0, 0].numpy() == 0)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise AssetError("reading the camera from a point map needs OpenCV: pip install opencv-python-headless "
                         "(in the Python that runs ComfyUI)") from None
    return cv2


def read_pose(point_map, mask, asset: Asset, y_rotation: float = 0.0, seed: int = 0) -> PoseReadout:
    """The camera that best explains ``point_map`` ([H, W, 3] colours in [0, 1]) over ``mask`` ([H, W],
    object where > 0.5), for ``asset``; ``y_rotation``: the point-map rotation the references used.
    Returns a :class:`PoseReadout` with the re-render and the scores. A point map of another asset
    is not an error: it gets a low score. Bad input (shapes, too few object pixels) raises AssetError."""
    cv2 = _cv2()
    pm = _as_array(point_map, "the point map", 3)
    m = _as_array(mask, "the mask", 2)
    if pm.shape[-1] < 3:
        raise AssetError(f"the point map must have 3 channels, got shape {tuple(pm.shape)}")
    pm = pm[..., :3]
    h, w = m.shape
    if pm.shape[:2] != (h, w):
        raise AssetError(f"the point map is {pm.shape[1]}×{pm.shape[0]} but the mask is {w}×{h}: they must be the "
                         "same picture's")
    if pm.min() < -1e-3 or pm.max() > 1 + 1e-3:
        raise AssetError("point-map colours must lie in 0..1 (a decoded IMAGE), got values "
                         f"{pm.min():.3g}..{pm.max():.3g}")
    inside = (m > 0.5) & (pm < 0.999).any(axis=-1)  # object pixels (white = background)
    # silhouette pixels of a decoded point map are blends with the white background: leave them out
    # of the solve when enough remain
    core = _erode(inside)
    rows, cols = np.nonzero(core if core.sum() >= max(MIN_POINTS, inside.sum() // 4) else inside)
    if rows.size < MIN_POINTS:
        raise AssetError(f"the mask covers {rows.size} object pixel(s); reading the camera needs at least "
                         f"{MIN_POINTS}: is the object in the picture, and is the mask the point map's?")
    world = decode_points(pm[rows, cols], asset, y_rotation)
    image = np.stack([cols, rows], axis=1).astype(np.float64)  # OpenCV (x, y), pixel centres at integers
    principal = ((w - 1) / 2, (h - 1) / 2)
    threshold = max(2.0, INLIER_SHARE * max(w, h))
    rng = np.random.default_rng(seed)
    sub = rng.choice(rows.size, size=min(rows.size, MAX_SOLVE_POINTS), replace=False)

    def intrinsics(f):
        return np.array([[f, 0, principal[0]], [0, f, principal[1]], [0, 0, 1]], dtype=np.float64)

    def ransac(f, idx):
        ok, rvec, tvec, inl = cv2.solvePnPRansac(world[idx], image[idx], intrinsics(f), None,
                                                 iterationsCount=200, reprojectionError=threshold,
                                                 confidence=0.999, flags=cv2.SOLVEPNP_SQPNP)
        return (rvec, tvec, 0 if inl is None else len(inl)) if ok else (None, None, 0)

    def robust_cost(f, rvec, tvec, idx):
        proj, _ = cv2.projectPoints(world[idx], rvec, tvec, intrinsics(f), None)
        err = np.linalg.norm(proj.reshape(-1, 2) - image[idx], axis=1)
        return float(np.minimum(err, threshold).mean())

    best = None
    for fov in np.geomspace(*FOV_RANGE, FOCAL_STEPS):
        f = (h / 2) / math.tan(math.radians(fov) / 2)
        rvec, tvec, n_in = ransac(f, sub)
        if rvec is None:
            continue
        cost = robust_cost(f, rvec, tvec, sub)
        if best is None or (n_in, -cost) > (best[3], -best[4]):
            best = (f, rvec, tvec, n_in, cost)
    if best is None:
        raise AssetError("no camera explains this point map (OpenCV's PnP found no solution): is it a point map "
                         "of this asset?")
    f, rvec, tvec = best[:3]
    # all correspondences, inliers of the best candidate, then joint least squares on them
    proj, _ = cv2.projectPoints(world, rvec, tvec, intrinsics(f), None)
    inliers = np.linalg.norm(proj.reshape(-1, 2) - image, axis=1) < threshold
    if inliers.sum() >= MIN_POINTS:
        chosen = np.flatnonzero(inliers)
        if chosen.size > MAX_REFINE_POINTS:
            chosen = rng.choice(chosen, size=MAX_REFINE_POINTS, replace=False)
        flags = (cv2.CALIB_USE_INTRINSIC_GUESS | cv2.CALIB_FIX_PRINCIPAL_POINT | cv2.CALIB_FIX_ASPECT_RATIO
                 | cv2.CALIB_ZERO_TANGENT_DIST | cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2 | cv2.CALIB_FIX_K3)
        try:
            _, k, _, rvecs, tvecs = cv2.calibrateCamera(
                [world[chosen].astype(np.float32)], [image[chosen].astype(np.float32)], (w, h), intrinsics(f),
                np.zeros(5), rvecs=[rvec], tvecs=[tvec], flags=flags,
                criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10))
            if np.isfinite(k).all() and k[0, 0] > 0:
                f, rvec, tvec = float(k[0, 0]), rvecs[0], tvecs[0]
        except cv2.error:
            pass  # keep the RANSAC solution
        proj, _ = cv2.projectPoints(world, rvec, tvec, intrinsics(f), None)
        err = np.linalg.norm(proj.reshape(-1, 2) - image, axis=1)
        inliers = err < threshold
    else:
        err = np.linalg.norm(proj.reshape(-1, 2) - image, axis=1)
    r_cv = cv2.Rodrigues(rvec)[0]
    t_cv = np.asarray(tvec, float).reshape(3)
    rotation = np.diag([1.0, -1.0, 1.0]) @ r_cv  # rows right, up, forward
    eye = -r_cv.T @ t_cv
    camera = Camera(eye=torch.tensor(eye, dtype=torch.float64), rotation=torch.tensor(rotation, dtype=torch.float64),
                    fov=math.degrees(2 * math.atan((h / 2) / f)))
    centre, scale = asset.normalisation()
    out = PoseReadout(camera, w, h, float(f), principal, r_cv, t_cv, int(rows.size), float(inliers.mean()),
                      float(np.median(err[inliers])) if inliers.any() else float("inf"),
                      frame=(centre.numpy(), float(scale)))
    score_against_render(out, asset, m > 0.5, pm, rows, cols, world, y_rotation)
    return out


def score_against_render(out: PoseReadout, asset: Asset, mask: np.ndarray, pm: np.ndarray, rows, cols,
                         world: np.ndarray, y_rotation: float) -> None:
    """Fills ``out.rerender``, ``iou``, ``median_error_pct`` and ``score`` (see :class:`PoseReadout`)."""
    try:
        views = render_at(asset, out.camera, out.width, out.height, y_rotation=y_rotation)
    except AssetError:
        return  # a camera inside the asset: nothing to compare, the score stays 0
    out.rerender = views
    rendered = views.mask[0].numpy() > 0.5
    union = (rendered | mask).sum()
    out.iou = float((rendered & mask).sum() / union) if union else 0.0
    seen = rendered[rows, cols]
    if seen.any():
        there = decode_points(views.point_map[0].numpy().astype(np.float64)[rows[seen], cols[seen]], asset, y_rotation)
        vmin, vmax = (t.numpy() for t in asset.bounds())
        size = float(np.linalg.norm((vmax - vmin) * float(asset.normalisation()[1])))
        out.median_error_pct = float(np.median(np.linalg.norm(there - world[seen], axis=1)) / size * 100)
    out.score = out.iou ** 2 * max(0.0, 1.0 - out.median_error_pct / ERROR_SCALE_PCT)
