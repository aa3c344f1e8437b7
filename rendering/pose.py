"""Where is the object? The camera that explains a point map, read back with OpenCV.

Every object pixel of a point map says which point of the asset it shows (docs/method.md §1.2:
colour = per-axis normalised asset coordinate), so a generated point map plus its asset is a set of
2D–3D correspondences, and the camera that "took" the picture follows from them. A point map as a
VAE decodes it is not exact (a silhouette blended into the white background over a few pixels,
colour noise, scattered wrong pixels), so:

1. clean: the colour noise is measured (robust deviation from a 5×5 median); where there is some,
   wrong pixels (beyond 3× the noise) are dropped and the rest averaged over 3×3 pixels, each mean
   placed at the centroid of the pixels it averaged (exact on a locally linear point map); noise-free
   input is used as it is. Decode: colour → asset
   point → rendering frame (docs/method.md §1.3), after undoing the references' ``y_rotation`` (§1.8);
2. focal steps: the focal length is unknown (a generated photo is not taken with the reference
   camera): RANSAC PnP (``cv2.solvePnPRansac``, SQPnP) at a few log-spaced focal lengths on the deep
   pixels (away from the silhouette), the principal point at the image centre; the inlier threshold is
   a share of the object's size in pixels, not of the picture's;
3. refinement: the best steps refined jointly (focal, rotation, translation: Levenberg–Marquardt on a
   Cauchy loss, in numpy with the analytic Jacobian), then, from the best of them, a golden-section
   search of the focal (the pose re-fitted at each) and a last joint refinement on more points; each
   result is kept only when it is valid (focal in the searched range, every point in front of the
   camera) and lowers the robust loss;
4. the edge, measured: the silhouette's rings (1, 2, … pixels in) whose reprojection error exceeds the
   deep pixels' are the blend with the background; they are left out (also of the denoising windows)
   and the camera solved again;
5. check: the asset is re-rendered at that camera (:func:`render_at`, Render Views' own drawing) and
   compared with the mask (the measured blend band left out), the point map's 3D points and its colours.

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
SEARCH_POINTS = 1000     # correspondences used by the focal search (a fixed random subset)
REFINE_POINTS = 4000     # correspondences used by the last joint refinement (a fixed random subset)
FOV_RANGE = (5.0, 120.0)  # vertical field of view searched, degrees
FOCAL_STEPS = 7          # coarse focal steps; the joint refinement finds the focal between them
RANSAC_ITERATIONS = 60
REFINE_CANDIDATES = 2    # best focal steps refined
POSE_ITERATIONS = 4      # Levenberg–Marquardt steps re-fitting the pose at each focal of the search
FOCAL_TOLERANCE = 5e-3   # the focal search stops when its bracket is this narrow (log focal)
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
#: median point-map colour difference (worst channel, 0..1) at which the colour term of the score reaches 0
COLOUR_ERROR_SCALE = 0.15


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
    point the re-render shows there, in % of the asset's bounding-box diagonal; ``colour_error``: median
    over those pixels of the largest per-channel difference of the point-map colours (0..1: each axis
    in units of the asset's extent along it, so a thin asset's thin axis counts as much as the others);
    ``score`` = iou² × max(0, 1 − median_error_pct / 8) × max(0, 1 − colour_error / 0.15), in [0, 1]: 1
    means the picture shows exactly this asset's geometry from one camera. (The inlier ratio is reported
    but left out of the score: it falls with the noise of a decoded point map while a wrong asset can keep
    it high. The colour term catches another asset whose silhouette and 3D points happen to fit, e.g. a
    sphere's point map read as a flat plate: every decoded point lies within the plate's thin box.)
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
    colour_error: float = 1.0
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
                       "colour_error": self.colour_error,
                       "inlier_ratio": self.inlier_ratio, "reprojection_px": self.reprojection_px,
                       "points": self.points},
        }


def render_at(asset: Asset, camera: Camera, width: int, height: int, y_rotation: float = 0.0, device=None):
    """The asset rendered by the pack's renderer at ``camera`` (rendering frame, principal point at the
    image centre) into a ``width`` × ``height`` picture: Views with one view (rgb, point_map, mask, depth).
    Visibility is RefAny3D Render Views' (:func:`~rendering.views.visible_faces`: cut-outs of alphaMode
    MASK materials peeled to what lies behind them), so the picture is the one Render Views draws."""
    from .views import Shader, Views, visible_faces
    if width < 1 or height < 1:
        raise AssetError(f"render size must be positive, got {width}×{height}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    shader = Shader(asset, asset.normalised_vertices(), y_rotation, device)
    cam_v = camera.to_camera(shader.verts.float())  # float32, as Render Views projects
    visible = (cam_v[:, 2] > NEAR) & (cam_v[:, 2] < FAR)
    n = width * height
    rgb, point_map = torch.ones(n, 3), torch.ones(n, 3)
    mask, depth = torch.zeros(n), torch.zeros(n)
    if bool(visible.all()):
        face = visible_faces(shader, camera, cam_v, width, height=height)
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


def _denoised(cv2, pm: np.ndarray, depth: np.ndarray, blend: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """The point map with the decoder's colour noise and scattered wrong pixels averaged away over 3×3
    windows, using only the object's pixels beyond the silhouette's ``blend`` band. Wrong pixels are those
    further from the 5×5 median than 3× the measured noise. The mean of the others is the point map at
    their centroid (exactly so where the point map is locally linear; a small window keeps the bias of
    its curvature small), which moves off the window's centre where the window reaches the blend band,
    the background or wrong pixels: so each mean comes with its position. (A median alone is pulled
    towards mid-grey by the wrong pixels; a window reaching into the blend, towards the background's
    white.) Returns the point map, the position shift [H, W, 2] ((x, y) pixels, 0 where left as it is:
    too few good pixels around) and the measured noise (robust standard deviation of a colour, 0..1)."""
    h, w = depth.shape
    shift = np.zeros((h, w, 2), np.float32)
    rows, cols = np.nonzero(depth >= blend + 1)
    if rows.size == 0:
        return pm, shift, 0.0
    # the work is done on the object's box widened by the 5×5 window's reach and one more pixel, so every
    # window around a pixel used lies inside it (or meets the picture's border, as it would uncropped):
    # the same numbers as on the whole picture, at the cost of the object's size, not the picture's
    crop = (slice(max(rows.min() - 3, 0), rows.max() + 4), slice(max(cols.min() - 3, 0), cols.max() + 4))
    depth_c = depth[crop]
    inner = depth_c >= blend + 1 + 2 * math.sqrt(2)  # the whole 5×5 median window lies beyond the blend band
    if not inner.any():
        return pm, shift, 0.0
    img = pm[crop].astype(np.float32)
    median = cv2.medianBlur(img, 5)
    dev = np.abs(img - median).max(axis=-1)
    sigma = 1.4826 * float(np.median(dev[inner]))
    good = ((dev <= 3 * max(sigma, NOISE_FLOOR)) & (depth_c >= blend + 1)).astype(np.float32)
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32)[crop[1]], np.arange(h, dtype=np.float32)[crop[0]]),
                    axis=-1)  # pixel positions in the whole picture

    def window_sum(x):
        return cv2.boxFilter(x, -1, (3, 3), normalize=False, borderType=cv2.BORDER_REFLECT)

    weight = window_sum(good)
    keep = (depth_c >= blend + 1) & (weight >= 3)
    out = pm.copy()
    out[crop][keep] = (window_sum(img * good[..., None]) / np.maximum(weight, 1)[..., None])[keep]
    shift[crop][keep] = (window_sum(grid * good[..., None]) / np.maximum(weight, 1)[..., None] - grid)[keep]
    return out, shift, sigma


class _Solver:
    """PnP with an unknown focal (principal point at the centre, square pixels) on one set of 2D-3D pairs.
    A camera is (focal, rvec, tvec), world → OpenCV camera. Projections, losses and the Levenberg–Marquardt
    steps are numpy on the pairs (the Python binding of cv2.projectPoints always computes its Jacobian:
    ten times slower); OpenCV failures of the RANSAC start become None so the caller can say what went
    wrong."""

    def __init__(self, cv2, world, image, principal, focal_range, scale_px):
        self.cv2, self.world, self.image, self.principal = cv2, world, image, np.asarray(principal, float)
        self.focal_range, self.c = focal_range, scale_px

    def on(self, idx) -> "_Solver":
        """The same solver on the pairs ``idx`` only (sliced once, not at every evaluation)."""
        return _Solver(self.cv2, self.world[idx], self.image[idx], self.principal, self.focal_range, self.c)

    def k(self, f):
        return np.array([[f, 0, self.principal[0]], [0, f, self.principal[1]], [0, 0, 1]], dtype=np.float64)

    def _camera_points(self, cam):
        f, rvec, tvec = cam
        return self.world @ self.cv2.Rodrigues(np.asarray(rvec, float))[0].T + np.ravel(tvec)

    def residuals(self, cam) -> np.ndarray:
        """[n, 2] projection minus pixel."""
        pc = self._camera_points(cam)
        return cam[0] * pc[:, :2] / pc[:, 2:] + self.principal - self.image

    def errors(self, cam) -> np.ndarray:
        return np.linalg.norm(self.residuals(cam), axis=1)

    def cost(self, cam) -> float:
        """Mean Cauchy loss of the reprojection errors (scale ``c`` pixels): robust to wrong pixels."""
        res = self.residuals(cam) / self.c
        return float(np.mean(np.log1p((res * res).sum(1))))

    def valid(self, cam) -> bool:
        """Focal inside the searched range, every point in front of the camera."""
        f = cam[0]
        if not (np.isfinite(f) and self.focal_range[0] / 1.05 <= f <= self.focal_range[1] * 1.05):
            return False
        return bool((self._camera_points(cam)[:, 2] > NEAR).all())

    def ransac(self, f, threshold, seed):
        self.cv2.setRNGSeed(seed)
        try:
            ok, rvec, tvec, inl = self.cv2.solvePnPRansac(
                self.world, self.image, self.k(f), None, iterationsCount=RANSAC_ITERATIONS,
                reprojectionError=threshold, confidence=0.999, flags=self.cv2.SOLVEPNP_SQPNP)
        except self.cv2.error:
            return None
        return (f, rvec.reshape(3), tvec.reshape(3)) if ok and inl is not None else None

    def refine(self, cam, iterations=20, fit_focal=True):
        """Levenberg–Marquardt on the Cauchy loss (iteratively reweighted Gauss–Newton) of rotation (a small
        rotation applied in front), translation and, with ``fit_focal``, log focal, from ``cam``; returns
        the better of start and result by that loss, and its loss."""
        world, image = self.world, self.image
        f, r, t = cam[0], self.cv2.Rodrigues(np.asarray(cam[1], float))[0], np.ravel(cam[2]).astype(float)
        best, lam, n = self.cost(cam), 1e-3, 7 if fit_focal else 6
        for _ in range(iterations):
            rx = world @ r.T
            pc = rx + t
            iz = 1.0 / pc[:, 2]
            xy = pc[:, :2] * iz[:, None]
            res = f * xy + self.principal - image
            w = 1.0 / (1.0 + (res * res).sum(1) / self.c ** 2)
            # d(camera point)/d(small rotation ω) = ω × rx, d/dt = I; d(projection)/d(camera point) =
            # f/z [[1, 0, -x], [0, 1, -y]]; d(projection)/d(log f) = f·(x, y)
            px, py, pz = rx.T  # the rotated point
            x, y, fz = xy[:, 0], xy[:, 1], f * iz
            zero = np.zeros_like(x)
            ju = np.stack([-x * py * fz, (pz + x * px) * fz, -py * fz, fz, zero, -x * fz, f * x], axis=1)
            jv = np.stack([-(pz + y * py) * fz, y * px * fz, px * fz, zero, fz, -y * fz, f * y], axis=1)
            j = np.concatenate([ju, jv])[:, :n]
            jw = j * np.concatenate([w, w])[:, None]
            a = jw.T @ j
            g = jw.T @ np.concatenate([res[:, 0], res[:, 1]])
            improved = False
            for _ in range(6):
                try:
                    step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-9), -g)
                except np.linalg.LinAlgError:
                    break
                trial = (f * math.exp(min(step[6], 5.0)) if fit_focal else f,
                         self.cv2.Rodrigues(self.cv2.Rodrigues(step[:3])[0] @ r)[0].reshape(3), t + step[3:6])
                c = self.cost(trial)
                if c < best:
                    f, r, t = trial[0], self.cv2.Rodrigues(trial[1])[0], trial[2]
                    converged, best, lam, improved = best - c < 1e-6 * best, c, max(lam / 10, 1e-7), True
                    break
                lam *= 10
            if not improved or converged:
                break
        return (f, self.cv2.Rodrigues(r)[0].reshape(3), t), best

    def pose_at(self, f, cam):
        """The pose for focal ``f``, refined from ``cam``'s on the robust loss."""
        return self.refine((f, cam[1], cam[2]), iterations=POSE_ITERATIONS, fit_focal=False)[0]

    def focal_search(self, cam, span=1.6, tolerance=FOCAL_TOLERANCE):
        """Golden-section search of the focal (log scale, within ``span``× of ``cam``'s) for the lowest
        robust loss, the pose re-fitted at each focal (from the nearest focal tried): the loss is very
        flat along focal-and-distance, where a joint least-squares step stalls."""
        tried = []  # (log focal, loss, camera)

        def loss(x):
            near = min(tried, key=lambda e: abs(e[0] - x))[2] if tried else cam
            c = self.pose_at(math.exp(x), near)
            tried.append((x, self.cost(c) if self.valid(c) else math.inf, c))
            return tried[-1][1]

        g = (math.sqrt(5) - 1) / 2
        lo, hi = math.log(cam[0] / span), math.log(cam[0] * span)
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        fa, fb = loss(a), loss(b)
        while hi - lo > tolerance:
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - g * (hi - lo)
                fa = loss(a)
            else:
                lo, a, fa = a, b, fb
                b = lo + g * (hi - lo)
                fb = loss(b)
        best = min(tried, key=lambda e: e[1])
        return best[2] if math.isfinite(best[1]) else cam


def _subset(rng, idx: np.ndarray, n: int) -> np.ndarray:
    return idx if idx.size <= n else np.sort(rng.choice(idx, n, replace=False))


def _polish(fine: _Solver, cam, search, final):
    """The focal search on the pairs ``search``, then the joint refinement on the (more) pairs ``final``,
    kept only when the camera stays valid and the robust loss falls. Returns (camera, loss) or
    (None, inf) when no valid camera came out."""
    cam = fine.on(search).focal_search(cam)
    fine = fine.on(final)
    got, cost = fine.refine(cam)
    if fine.valid(got) and cost < fine.cost(cam):
        cam = got
    return (cam, fine.cost(cam)) if fine.valid(cam) else (None, math.inf)


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


def _checked_input(point_map, mask) -> tuple[np.ndarray, np.ndarray]:
    """The point map ([H, W, 3] float64) and its object pixels ([H, W] bool), or AssetError for bad input."""
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
    return pm, inside


def _focal_steps(steps: _Solver, height: int, threshold: float, seed: int) -> list:
    """RANSAC PnP at FOCAL_STEPS log-spaced focal lengths: the valid cameras, best (lowest robust loss) first."""
    candidates = []
    for i, fov in enumerate(np.geomspace(*FOV_RANGE, FOCAL_STEPS)):
        cam = steps.ransac((height / 2) / math.tan(math.radians(fov) / 2), threshold, seed + i)
        if cam is not None and steps.valid(cam):
            candidates.append((steps.cost(cam), i, cam))
    if not candidates:
        raise AssetError("no camera explains this point map (no focal length gave a camera with the asset in front "
                         "of it): is it a point map of this asset, with the y_rotation the references used?")
    return [c[2] for c in sorted(candidates, key=lambda c: c[:2])]


def _best_refined(starts: _Solver, fine: _Solver, candidates: list, search, final):
    """The best candidates refined jointly (``starts``: the denoised points), then the focal search and a
    last joint refinement from the best of them (``fine``); each step kept only when the camera is valid
    and the robust loss is lower."""
    refined = []
    for cam in candidates[:REFINE_CANDIDATES]:
        got, cost = starts.refine(cam)
        if starts.valid(got) and cost < starts.cost(cam):
            cam = got
        if starts.valid(cam):
            refined.append((starts.cost(cam), len(refined), cam))
    cam = _polish(fine, min(refined)[2], search, final)[0] if refined else None
    if cam is None:
        raise AssetError("no camera explains this point map (every camera found puts part of the asset behind it): "
                         "is it a point map of this asset, with the y_rotation the references used?")
    return cam


def _blend_width(err: np.ndarray, ring: np.ndarray, core: np.ndarray) -> int:
    """The silhouette's blend with the background, measured: the deepest ring [d, d + 1) pixels in (up to
    MAX_BLEND_PX) whose median reprojection error exceeds the deep pixels'; 0 when none does."""
    deep = ring >= MAX_BLEND_PX + 1
    reference = float(np.median(err[deep if deep.sum() >= MIN_POINTS else core]))
    blend = 0
    for d in range(1, MAX_BLEND_PX + 1):
        ring_d = (ring >= d) & (ring < d + 1)
        if ring_d.sum() >= 5 and float(np.median(err[ring_d])) > EDGE_FACTOR * reference + EDGE_MARGIN_PX:
            blend = d
    return blend


def _readout(cv2, cam, err: np.ndarray, threshold: float, w: int, h: int, points: int, frame: AssetFrame,
             blend: int) -> PoseReadout:
    """The PoseReadout of an OpenCV camera (focal, rvec, tvec), its inlier scores from the errors ``err``
    of the pixels used (the re-render scores still to come)."""
    f, rvec, tvec = cam
    inliers = err < threshold
    r_cv = cv2.Rodrigues(np.asarray(rvec, float))[0]
    t_cv = np.asarray(tvec, float).reshape(3)
    rotation = np.diag([1.0, -1.0, 1.0]) @ r_cv  # rows right, up, forward
    eye = -r_cv.T @ t_cv
    camera = Camera(eye=torch.tensor(eye, dtype=torch.float64), rotation=torch.tensor(rotation, dtype=torch.float64),
                    fov=math.degrees(2 * math.atan((h / 2) / f)))
    return PoseReadout(camera, w, h, float(f), ((w - 1) / 2, (h - 1) / 2), r_cv, t_cv, points,
                       float(inliers.mean()), float(np.median(err[inliers])) if inliers.any() else float("inf"),
                       frame=(frame.centre, frame.scale), blend_px=blend)


def _read_pose(cv2, point_map, mask, asset: Asset, y_rotation: float, seed: int) -> PoseReadout:
    """The camera that best explains ``point_map`` ([H, W, 3] colours in [0, 1]) over ``mask`` ([H, W],
    object where > 0.5), for ``asset``; ``y_rotation``: the point-map rotation the references used.
    Returns a :class:`PoseReadout` with the re-render and the scores. A point map of another asset
    is not an error: it gets a low score. Bad input (shapes, too few object pixels, no camera at all)
    raises AssetError."""
    pm, inside = _checked_input(point_map, mask)
    h, w = inside.shape
    depth = _depth_in_mask(cv2, inside)
    rows, cols = np.nonzero(inside)
    ring = depth[rows, cols]
    frame = AssetFrame.of(asset)
    image = np.stack([cols, rows], axis=1).astype(np.float64)  # OpenCV (x, y), pixel centres at integers
    threshold = max(MIN_THRESHOLD_PX, INLIER_SHARE * math.sqrt(rows.size))  # scaled to the object's size in pixels

    def solver(colours, shift):
        focal_range = tuple((h / 2) / math.tan(math.radians(v) / 2) for v in FOV_RANGE[::-1])
        return _Solver(cv2, decode_points(colours, frame, y_rotation), image + shift[rows, cols],
                       ((w - 1) / 2, (h - 1) / 2), focal_range, threshold / 2)

    # points as decoded carry the decoder's noise, which biases a least-squares focal (errors in the 3D
    # points): where noise is measured, the denoised points are solved; exact input stays as it is
    denoised, shift, noise = _denoised(cv2, pm, depth)
    noisy = noise > NOISE_FLOOR
    colours = (denoised if noisy else pm)[rows, cols]
    coarse = solver(denoised[rows, cols], shift)
    fine = coarse if noisy else solver(colours, np.zeros_like(shift))
    rng = np.random.default_rng(seed)
    # 1. the deep core: pixels far enough from the silhouette to be free of the blend with the background
    core_depth = next((d for d in range(MAX_BLEND_PX + 1, 1, -1)
                       if (ring >= d).sum() >= max(MIN_POINTS, rows.size // 3)), 1)
    core = np.flatnonzero(ring >= core_depth)
    # 2. coarse focal steps; 3. joint refinement, focal search and last refinement from the best of them
    candidates = _focal_steps(coarse.on(_subset(rng, core, SOLVE_POINTS)), h, threshold, seed)
    search = _subset(rng, core, SEARCH_POINTS)
    cam = _best_refined(coarse.on(search), fine, candidates, search, _subset(rng, core, REFINE_POINTS))
    # 4. the edge, measured, left out (of the solve and of the denoising windows), the camera solved again
    blend = _blend_width(fine.errors(cam), ring, core)
    used = np.flatnonzero(ring >= blend + 1)  # rings [d, d + 1) up to the blend's left out
    if used.size < MIN_POINTS:
        used = core
    elif not np.array_equal(used, core):
        if noisy and blend:
            denoised, shift, _ = _denoised(cv2, pm, depth, blend)
            colours = denoised[rows, cols]
            fine = solver(colours, shift)
        got, _ = _polish(fine, cam, _subset(rng, used, SEARCH_POINTS), _subset(rng, used, REFINE_POINTS))
        if got is not None:
            cam = got
    # 5. the scores
    out = _readout(cv2, cam, fine.on(used).errors(cam), threshold, w, h, int(rows.size), frame, blend)
    score_against_render(cv2, out, asset, frame, inside, rows[used], cols[used], fine.world[used], y_rotation,
                         colours[used])
    return out


def score_against_render(cv2, out: PoseReadout, asset: Asset, frame: AssetFrame, mask: np.ndarray, rows, cols, world: np.ndarray,
                         y_rotation: float, colours: np.ndarray) -> None:
    """Fills ``out.rerender``, ``iou``, ``median_error_pct``, ``colour_error`` and ``score`` (see
    :class:`PoseReadout`); ``rows``/``cols``/``world``/``colours``: the pixels used, their points and colours."""
    try:
        views = render_at(asset, out.camera, out.width, out.height, y_rotation=y_rotation)
    except AssetError:
        return  # a camera inside the asset: nothing to compare, the score stays 0
    out.rerender = views
    rendered = views.mask[0].numpy() > 0.5
    both, either = rendered & mask, rendered | mask
    if out.blend_px:  # the measured blend band around the re-rendered silhouette is left out of the overlap
        near_in = rendered & (_depth_in_mask(cv2, rendered) < out.blend_px + 1)
        band = near_in | (~rendered & (_depth_in_mask(cv2, ~rendered) < out.blend_px + 1))
        both, either = both & ~band, either & ~band
    out.iou = float(both.sum() / either.sum()) if either.any() else 0.0
    seen = rendered[rows, cols]
    if seen.any():
        drawn = views.point_map[0].numpy().astype(np.float64)[rows[seen], cols[seen]]
        there = decode_points(drawn, frame, y_rotation)
        out.median_error_pct = float(np.median(np.linalg.norm(there - world[seen], axis=1)) / frame.size * 100)
        out.colour_error = float(np.median(np.abs(drawn - colours[seen]).max(axis=1)))
    out.score = (out.iou ** 2 * max(0.0, 1.0 - out.median_error_pct / ERROR_SCALE_PCT)
                 * max(0.0, 1.0 - out.colour_error / COLOUR_ERROR_SCALE))
