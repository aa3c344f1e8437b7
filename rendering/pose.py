"""Where is the object? The camera that explains a point map, read back with OpenCV.

Every object pixel of a point map says which point of the asset it shows (docs/method.md §1.2:
colour = per-axis normalised asset coordinate), so a generated point map plus its asset is a set of
2D–3D correspondences, and the camera that "took" the picture follows from them. A point map as a
VAE decodes it is not exact (a silhouette blended into the white background over a few pixels,
colour noise, scattered wrong pixels), so:

1. clean: the colour noise is measured (robust deviation from a 5×5 median); where there is some,
   wrong pixels (beyond 3× the noise) are dropped and the rest averaged over 5×5 pixels, which keeps
   a locally linear point map as it is; noise-free input is used as it is. Decode: colour → asset
   point → rendering frame (docs/method.md §1.3), after undoing the references' ``y_rotation`` (§1.8);
2. focal steps: the focal length is unknown (a generated photo is not taken with the reference
   camera): RANSAC PnP (``cv2.solvePnPRansac``, SQPnP) at a few log-spaced focal lengths on the deep
   pixels (away from the silhouette), the principal point at the image centre; the inlier threshold is
   a share of the object's size in pixels, not of the picture's;
3. refinement: from the best steps, a golden-section search of the focal (the pose re-fitted at each)
   and a joint Levenberg–Marquardt refinement of focal, rotation and translation with a Cauchy loss;
   each result is kept only when it is valid (focal in the searched range, every point in front of the
   camera) and lowers the robust loss;
4. the edge, measured: the silhouette's rings (1, 2, … pixels in) whose reprojection error exceeds the
   deep pixels' are the blend with the background; they are left out and the camera solved again;
5. check: the asset is re-rendered at that camera (:func:`render_at`) and compared with the mask (the
   measured blend band left out) and the point map.

The camera comes back in the pack's conventions (:class:`~rendering.camera.Camera`: rendering frame,
x right, y up, z forward, vertical fov, principal point at the image centre, square pixels) and as a
JSON-ready dict (:meth:`PoseReadout.to_json`) with the OpenCV convention and the glTF/Blender one.
OpenCV (``opencv-python-headless``) is imported inside :func:`read_pose`; every OpenCV failure
becomes an AssetError.
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
SOLVE_POINTS = 400       # correspondences used by the RANSAC focal steps (a fixed random subset of the core)
REFINE_POINTS = 3000     # correspondences used by the joint refinement (a fixed random subset)
FOV_RANGE = (5.0, 120.0)  # vertical field of view searched, degrees
FOCAL_STEPS = 10         # coarse focal steps; the joint refinement finds the focal between them
RANSAC_ITERATIONS = 100
REFINE_CANDIDATES = 2    # best focal steps refined
#: inlier threshold = this share of the object's size in pixels (√ of its pixel count), at least MIN_THRESHOLD_PX
INLIER_SHARE = 0.03
MIN_THRESHOLD_PX = 1.5
#: widest silhouette blend looked for (pixels); a ring is blended when its median reprojection error
#: exceeds EDGE_FACTOR × the deep pixels' (+ EDGE_MARGIN_PX)
MAX_BLEND_PX = 6
EDGE_FACTOR = 1.5
EDGE_MARGIN_PX = 0.1
NOISE_FLOOR = 1.0 / 255  # colour noise below this is treated as none (the input is solved as it is)
#: median 3D error (in % of the asset's size) at which the geometry term of the score reaches 0
ERROR_SCALE_PCT = 8.0


@dataclass
class PoseReadout:
    """The camera read from one point map, and how well it explains it.

    ``camera``: the pack's Camera (rendering frame); ``width``/``height``: the picture's size;
    ``focal_px``: focal length in pixels (both axes); ``principal``: (cx, cy) in pixels, OpenCV
    convention (pixel centres at integers), always the image centre; ``rotation_cv``/``translation_cv``:
    world (rendering frame) → OpenCV camera (x right, y down, z forward).

    Scores: ``inlier_ratio``: share of the correspondences used within the inlier threshold;
    ``reprojection_px``: median reprojection error of the inliers; ``blend_px``: measured width of the
    silhouette's blend with the background (left out of the solve and of the IoU); ``iou``: mask of
    the picture vs mask of the asset re-rendered at the camera, outside that band;
    ``median_error_pct``: median 3D distance between the point each (cleaned) pixel claims and the
    point the re-render shows there, in % of the asset's bounding-box diagonal; ``score`` = iou² ×
    max(0, 1 − median_error_pct / 8), in [0, 1]: 1 means the
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
    blend_px: int = 0  # measured width of the silhouette's blend with the background, left out of the solve

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


@dataclass(frozen=True)
class AssetFrame:
    """The asset's bounds and normalisation, computed once (every decode needs them)."""
    vmin: np.ndarray
    vmax: np.ndarray
    centre: np.ndarray
    scale: float

    @classmethod
    def of(cls, asset: Asset) -> "AssetFrame":
        vmin, vmax = (t.numpy() for t in asset.bounds())
        return cls(vmin, vmax, (vmin + vmax) / 2, 2.0 / float((vmax - vmin).max()))

    @property
    def size(self) -> float:
        """The bounding box's diagonal in the rendering frame."""
        return float(np.linalg.norm((self.vmax - self.vmin) * self.scale))


def decode_points(point_map: np.ndarray, asset, y_rotation: float = 0.0) -> np.ndarray:
    """Point-map colours [..., 3] in [0, 1] → points in the rendering frame [..., 3] (float64); ``asset``:
    an Asset or its AssetFrame."""
    frame = asset if isinstance(asset, AssetFrame) else AssetFrame.of(asset)
    pm = point_map
    if y_rotation % 360:
        a = math.radians(y_rotation)
        rot = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
        pm = ((pm * 2 - 1) @ rot + 1) / 2  # the references used ((pm * 2 - 1) @ rot.T + 1) / 2
    return (frame.vmin + pm * (frame.vmax - frame.vmin) - frame.centre) * frame.scale


def _cv2():
    try:
        import cv2
    except ImportError:
        raise AssetError("reading the camera from a point map needs OpenCV: pip install opencv-python-headless "
                         "(in the Python that runs ComfyUI)") from None
    return cv2


def _depth_in_mask(cv2, inside: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of every object pixel to the nearest background pixel; the picture's
    border is not background (an object cut by the frame has no blended edge there)."""
    padded = np.pad(inside.astype(np.uint8), 1, constant_values=1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def _denoised(cv2, pm: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, float]:
    """The point map with the decoder's colour noise and scattered wrong pixels averaged away, where a
    5×5 window lies inside the object (elsewhere as it is). Wrong pixels are those further from the
    5×5 median than 3× the measured noise; the mean of the others over the window is unbiased on a
    locally linear point map (a median alone is pulled towards mid-grey by the wrong pixels). Returns
    the point map and the measured noise (robust standard deviation of a colour, 0..1)."""
    inner = depth >= 3
    if not inner.any():
        return pm, 0.0
    img = pm.astype(np.float32)
    median = cv2.medianBlur(img, 5)
    dev = np.abs(img - median).max(axis=-1)
    sigma = 1.4826 * float(np.median(dev[inner]))
    good = ((dev <= 3 * max(sigma, NOISE_FLOOR)) & (depth > 0)).astype(np.float32)
    weight = cv2.boxFilter(good, -1, (5, 5), normalize=False)
    mean = cv2.boxFilter(img * good[..., None], -1, (5, 5), normalize=False) / np.maximum(weight, 1)[..., None]
    keep = inner & (weight >= 5)
    out = pm.copy()
    out[keep] = mean[keep]
    return out, sigma


class _Solver:
    """PnP with an unknown focal (principal point at the centre, square pixels) on one set of 2D-3D pairs.
    All OpenCV failures become None (no camera from this attempt) so the caller can say what went wrong."""

    def __init__(self, cv2, world, image, principal, focal_range, scale_px):
        self.cv2, self.world, self.image, self.principal = cv2, world, image, principal
        self.focal_range, self.c = focal_range, scale_px

    def k(self, f):
        return np.array([[f, 0, self.principal[0]], [0, f, self.principal[1]], [0, 0, 1]], dtype=np.float64)

    def errors(self, cam, idx=slice(None)):
        f, rvec, tvec = cam
        proj, _ = self.cv2.projectPoints(self.world[idx], rvec, tvec, self.k(f), None)
        return np.linalg.norm(proj.reshape(-1, 2) - self.image[idx], axis=1)

    def cost(self, cam, idx=slice(None)) -> float:
        """Mean Cauchy loss of the reprojection errors (scale ``c`` pixels): robust to wrong pixels."""
        e = self.errors(cam, idx) / self.c
        return float(np.mean(np.log1p(e * e)))

    def valid(self, cam, idx=slice(None)) -> bool:
        """Focal inside the searched range, every point in front of the camera."""
        f, rvec, tvec = cam
        if not (np.isfinite(f) and self.focal_range[0] / 1.05 <= f <= self.focal_range[1] * 1.05):
            return False
        r = self.cv2.Rodrigues(rvec)[0]
        return bool(((self.world[idx] @ r[2]) + float(np.ravel(tvec)[2]) > NEAR).all())

    def ransac(self, f, idx, threshold, seed):
        self.cv2.setRNGSeed(seed)
        try:
            ok, rvec, tvec, inl = self.cv2.solvePnPRansac(
                self.world[idx], self.image[idx], self.k(f), None, iterationsCount=RANSAC_ITERATIONS,
                reprojectionError=threshold, confidence=0.999, flags=self.cv2.SOLVEPNP_SQPNP)
        except self.cv2.error:
            return None
        return (f, rvec.reshape(3), tvec.reshape(3)) if ok and inl is not None else None

    def pose_at(self, f, cam, idx, threshold):
        """The pose for focal ``f`` (least squares on the pairs within the threshold of ``cam``'s errors)."""
        e = self.errors((f, cam[1], cam[2]), idx)
        close = idx[e < max(3 * float(np.median(e)), threshold)]
        if close.size < MIN_POINTS:
            return (f, cam[1], cam[2])
        try:
            rvec, tvec = self.cv2.solvePnPRefineLM(self.world[close], self.image[close], self.k(f), None,
                                                   cam[1].reshape(3, 1).copy(), cam[2].reshape(3, 1).copy())
        except self.cv2.error:
            return (f, cam[1], cam[2])
        return (f, rvec.reshape(3), tvec.reshape(3))

    def focal_search(self, cam, idx, threshold, span=1.6, tolerance=2e-3):
        """Golden-section search of the focal (log scale, within ``span``× of ``cam``'s) for the lowest
        robust loss, the pose re-fitted at each focal: the loss is very flat along focal-and-distance,
        where a joint least-squares step stalls."""
        lo, hi = math.log(cam[0] / span), math.log(cam[0] * span)
        g = (math.sqrt(5) - 1) / 2
        seen = {}

        def loss(x):
            if x not in seen:
                near = min(seen.items(), key=lambda kv: abs(kv[0] - x))[1][1] if seen else cam
                c = self.pose_at(math.exp(x), near, idx, threshold)
                seen[x] = (self.cost(c, idx) if self.valid(c, idx) else math.inf, c)
            return seen[x][0]

        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        while hi - lo > tolerance:
            if loss(a) < loss(b):
                hi, b = b, a
                a = hi - g * (hi - lo)
            else:
                lo, a = a, b
                b = lo + g * (hi - lo)
        best = min(seen.values(), key=lambda v: v[0])
        return best[1] if math.isfinite(best[0]) else cam

    def refine(self, cam, idx, iterations=20):
        """Focal, rotation and translation jointly: Levenberg–Marquardt on the Cauchy loss (iteratively
        reweighted), starting from ``cam``; returns the better of start and result by that loss."""
        cv2, world, image = self.cv2, self.world[idx], self.image[idx]
        f, rvec, tvec = cam
        p = np.concatenate([rvec, tvec, [math.log(f)]])
        best = self.cost(cam, idx)
        lam = 1e-3
        for _ in range(iterations):
            f = math.exp(p[6])
            try:
                proj, jac = cv2.projectPoints(world, p[:3], p[3:6], self.k(f), None)
            except cv2.error:
                break
            res = (proj.reshape(-1, 2) - image)
            e2 = (res ** 2).sum(1) / self.c ** 2
            w = np.repeat(1.0 / (1.0 + e2), 2)
            j = np.concatenate([jac[:, :6], (jac[:, 6] + jac[:, 7])[:, None] * f], axis=1)
            a = (j * w[:, None]).T @ j
            g = (j * w[:, None]).T @ res.reshape(-1)
            improved = False
            for _ in range(6):
                try:
                    step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-9), -g)
                except np.linalg.LinAlgError:
                    break
                q = p + step
                trial = (math.exp(min(q[6], 30.0)), q[:3], q[3:6])
                c = self.cost(trial, idx)
                if c < best:
                    p, best, lam, improved = q, c, max(lam / 10, 1e-7), True
                    break
                lam *= 10
            if not improved or np.abs(step).max() < 1e-9:
                break
        return (math.exp(p[6]), p[:3].copy(), p[3:6].copy()), best


def _subset(rng, idx: np.ndarray, n: int) -> np.ndarray:
    return idx if idx.size <= n else np.sort(rng.choice(idx, n, replace=False))


def _polish(coarse: _Solver, fine: _Solver, cam, idx, threshold):
    """Joint refinement on the denoised points, then the focal search and joint refinement on the points
    as decoded; each step kept only when the camera stays valid and the robust loss falls. Returns
    (camera, loss) or (None, inf) when the start itself is not valid."""
    got, cost = coarse.refine(cam, idx)
    if coarse.valid(got, idx) and cost < coarse.cost(cam, idx):
        cam = got
    cam = fine.focal_search(cam, idx, threshold)
    got, cost = fine.refine(cam, idx)
    if fine.valid(got, idx) and cost < fine.cost(cam, idx):
        cam = got
    return (cam, fine.cost(cam, idx)) if fine.valid(cam, idx) else (None, math.inf)


def read_pose(point_map, mask, asset: Asset, y_rotation: float = 0.0, seed: int = 0) -> PoseReadout:
    """The camera that best explains ``point_map`` (see :func:`_read_pose`); any failure inside OpenCV
    becomes an AssetError that says what it means for the user."""
    cv2 = _cv2()
    try:
        return _read_pose(cv2, point_map, mask, asset, y_rotation, seed)
    except cv2.error:
        raise AssetError("OpenCV could not solve a camera for this point map (its points do not spread over the "
                         "asset as a picture of it would): is it a point map of this asset, with the y_rotation "
                         "the references used?") from None


def _read_pose(cv2, point_map, mask, asset: Asset, y_rotation: float, seed: int) -> PoseReadout:
    """The camera that best explains ``point_map`` ([H, W, 3] colours in [0, 1]) over ``mask`` ([H, W],
    object where > 0.5), for ``asset``; ``y_rotation``: the point-map rotation the references used.
    Returns a :class:`PoseReadout` with the re-render and the scores. A point map of another asset
    is not an error: it gets a low score. Bad input (shapes, too few object pixels, no camera at all)
    raises AssetError."""
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
    if inside.sum() < MIN_POINTS:
        raise AssetError(f"the mask covers {int(inside.sum())} object pixel(s); reading the camera needs at least "
                         f"{MIN_POINTS}: is the object in the picture, and is the mask the point map's?")
    depth = _depth_in_mask(cv2, inside)
    rows, cols = np.nonzero(inside)
    ring = depth[rows, cols]
    frame = AssetFrame.of(asset)
    image = np.stack([cols, rows], axis=1).astype(np.float64)  # OpenCV (x, y), pixel centres at integers
    principal = ((w - 1) / 2, (h - 1) / 2)
    size_px = math.sqrt(rows.size)  # the object's size in pixels: thresholds scale with it
    threshold = max(MIN_THRESHOLD_PX, INLIER_SHARE * size_px)
    focal_range = tuple((h / 2) / math.tan(math.radians(v) / 2) for v in FOV_RANGE[::-1])
    # points as decoded carry the decoder's noise, which biases a least-squares focal long (errors in the
    # 3D points): where noise is measured, the denoised points are solved; exact input stays as it is
    denoised, noise = _denoised(cv2, pm, depth)
    world = decode_points((denoised if noise > NOISE_FLOOR else pm)[rows, cols], frame, y_rotation)
    coarse = _Solver(cv2, decode_points(denoised[rows, cols], frame, y_rotation), image, principal, focal_range,
                     threshold / 2)
    fine = _Solver(cv2, world, image, principal, focal_range, threshold / 2)
    rng = np.random.default_rng(seed)

    # 1. the deep core: pixels far enough from the silhouette to be free of the blend with the background
    core_depth = next((d for d in range(MAX_BLEND_PX + 1, 1, -1)
                       if (ring >= d).sum() >= max(MIN_POINTS, rows.size // 3)), 1)
    core = np.flatnonzero(ring >= core_depth)
    sub = core if core.size <= SOLVE_POINTS else rng.choice(core, SOLVE_POINTS, replace=False)
    # 2. coarse focal steps, RANSAC PnP at each, the best few by robust loss
    candidates = []
    for i, fov in enumerate(np.geomspace(*FOV_RANGE, FOCAL_STEPS)):
        cam = coarse.ransac((h / 2) / math.tan(math.radians(fov) / 2), sub, threshold, seed + i)
        if cam is not None and coarse.valid(cam, sub):
            candidates.append((coarse.cost(cam, sub), i, cam))
    if not candidates:
        raise AssetError("no camera explains this point map (no focal length gave a camera with the asset in front "
                         "of it): is it a point map of this asset, with the y_rotation the references used?")
    candidates.sort(key=lambda c: c[:2])
    # 3. joint refinement of focal, rotation and translation from the best candidates, each step kept
    # only when the camera is valid and the robust loss is lower
    best = None
    for _, _, cam in candidates[:REFINE_CANDIDATES]:
        cam, cost = _polish(coarse, fine, cam, _subset(rng, core, REFINE_POINTS), threshold)
        if cam is not None and (best is None or cost < best[1]):
            best = (cam, cost)
    if best is None:
        raise AssetError("no camera explains this point map (every camera found puts part of the asset behind it): "
                         "is it a point map of this asset, with the y_rotation the references used?")
    cam = best[0]
    # 4. the edge, measured: the rings of the silhouette whose reprojection error exceeds the deep
    # pixels' are the blend with the background; the camera is solved again without them
    err = fine.errors(cam)
    deep = ring >= MAX_BLEND_PX + 1
    reference = float(np.median(err[deep if deep.sum() >= MIN_POINTS else core]))
    blend = 0
    for d in range(1, MAX_BLEND_PX + 1):
        ring_d = (ring >= d) & (ring < d + 1)
        if ring_d.sum() >= 5 and float(np.median(err[ring_d])) > EDGE_FACTOR * reference + EDGE_MARGIN_PX:
            blend = d
    used = np.flatnonzero(ring > blend)
    if used.size < MIN_POINTS:
        used = core
    elif not np.array_equal(used, core):
        got, _ = _polish(coarse, fine, cam, _subset(rng, used, REFINE_POINTS), threshold)
        if got is not None:
            cam = got
    err = fine.errors(cam)
    f, rvec, tvec = cam
    inliers = err[used] < threshold
    r_cv = cv2.Rodrigues(rvec)[0]
    t_cv = np.asarray(tvec, float).reshape(3)
    rotation = np.diag([1.0, -1.0, 1.0]) @ r_cv  # rows right, up, forward
    eye = -r_cv.T @ t_cv
    camera = Camera(eye=torch.tensor(eye, dtype=torch.float64), rotation=torch.tensor(rotation, dtype=torch.float64),
                    fov=math.degrees(2 * math.atan((h / 2) / f)))
    out = PoseReadout(camera, w, h, float(f), principal, r_cv, t_cv, int(rows.size), float(inliers.mean()),
                      float(np.median(err[used][inliers])) if inliers.any() else float("inf"),
                      frame=(frame.centre, frame.scale), blend_px=blend)
    score_against_render(cv2, out, asset, frame, inside, rows[used], cols[used], world[used], y_rotation)
    return out


def score_against_render(cv2, out: PoseReadout, asset: Asset, frame: AssetFrame, mask: np.ndarray, rows, cols, world: np.ndarray,
                         y_rotation: float) -> None:
    """Fills ``out.rerender``, ``iou``, ``median_error_pct`` and ``score`` (see :class:`PoseReadout`)."""
    try:
        views = render_at(asset, out.camera, out.width, out.height, y_rotation=y_rotation)
    except AssetError:
        return  # a camera inside the asset: nothing to compare, the score stays 0
    out.rerender = views
    rendered = views.mask[0].numpy() > 0.5
    both, either = rendered & mask, rendered | mask
    if out.blend_px:  # the measured blend band around the re-rendered silhouette is left out of the overlap
        near_in = rendered & (_depth_in_mask(cv2, rendered) <= out.blend_px)
        band = near_in | (~rendered & (_depth_in_mask(cv2, ~rendered) <= out.blend_px))
        both, either = both & ~band, either & ~band
    out.iou = float(both.sum() / either.sum()) if either.any() else 0.0
    seen = rendered[rows, cols]
    if seen.any():
        there = decode_points(views.point_map[0].numpy().astype(np.float64)[rows[seen], cols[seen]], frame, y_rotation)
        out.median_error_pct = float(np.median(np.linalg.norm(there - world[seen], axis=1)) / frame.size * 100)
    out.score = out.iou ** 2 * max(0.0, 1.0 - out.median_error_pct / ERROR_SCALE_PCT)
