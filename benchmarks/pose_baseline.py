"""The camera read-out as it was before issue 19 (benchmark baseline only, never imported by the pack):
the RANSAC PnP sweep over 28 focal steps with a fixed inlier threshold, a one-pixel silhouette ring
dropped, and the joint refinement kept whenever its focal is positive. Compared side by side with
rendering.pose.read_pose in benchmarks/bench_pose.py."""
from __future__ import annotations

import math

import numpy as np
import torch

from rendering.camera import Camera
from rendering.errors import AssetError
from rendering.pose import PoseReadout, _as_array, _cv2, decode_points, render_at

MIN_POINTS = 50
MAX_SOLVE_POINTS = 3000
MAX_REFINE_POINTS = 20000
FOV_RANGE = (5.0, 120.0)
FOCAL_STEPS = 28
INLIER_SHARE = 0.02
ERROR_SCALE_PCT = 8.0


def _erode(mask: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(~mask).float()[None, None]
    return mask & (torch.nn.functional.max_pool2d(t, 3, stride=1, padding=1)[0, 0].numpy() == 0)


def read_pose_baseline(point_map, mask, asset, y_rotation: float = 0.0, seed: int = 0) -> PoseReadout:
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
    _score_baseline(out, asset, m > 0.5, pm, rows, cols, world, y_rotation)
    return out


def _score_baseline(out: PoseReadout, asset, mask: np.ndarray, pm: np.ndarray, rows, cols,
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
