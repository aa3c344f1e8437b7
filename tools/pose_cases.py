"""Decoder-like point maps for testing and benchmarking the camera read-out (rendering/pose.py).

A VAE does not give back the point map it was shown: the silhouette blends into the white
background over a few pixels, the colours carry a few levels of noise and some pixels come out
wrong. :func:`decoder_like` makes such a point map from an exact render; :func:`camera_for_coverage`
places a random camera so that the asset covers a chosen share of the picture (off-centre, often
cut by the frame); :func:`pose_assets` writes the shapes the read-out is judged on (a sphere, a
flat plate, a multi-part scene, a textured ellipsoid, a low-poly solid).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .assets_gen import GltfPart, box, low_poly, smooth_texture, uv_sphere, write_glb

MASK_THRESHOLD = 0.9  # RefAny3D Point Map To Mask's default: background where every channel ≥ 0.9


def pose_assets(folder: Path) -> dict:
    """name → rendering.Asset for the five test shapes (written as .glb files into ``folder``)."""
    import rendering
    folder = Path(folder)
    v, f, uv = uv_sphere(20, 40, radius=0.8)
    bv, bf, _ = box((0.5, 0.5, 0.5))
    pv, pf, _ = box((2.0, 0.06, 1.4))
    lv, lf = low_poly()
    parts = {
        "sphere": [GltfPart(v, f, factor=(0.7, 0.7, 0.7, 1.0))],
        "plate": [GltfPart(pv, pf, factor=(0.8, 0.8, 0.8, 1.0))],
        "multi": [GltfPart(v * 0.8, f, factor=(0.6, 0.3, 0.2, 1.0)),
                  GltfPart(bv, bf, factor=(0.1, 0.6, 0.2, 1.0), translation=(0.3, 0.9, 0.0)),
                  GltfPart(bv, bf, factor=(0.2, 0.2, 0.8, 1.0), translation=(-0.7, -0.5, 0.4))],
        "textured": [GltfPart(v * [1.0, 0.7, 1.3], f, uv=np.c_[uv[:, 0], 1 - uv[:, 1]], texture=smooth_texture(32))],
        "lowpoly": [GltfPart(lv, lf, factor=(0.5, 0.5, 0.5, 1.0))],
    }
    return {name: rendering.load_asset(write_glb(folder / f"{name}.glb", p)) for name, p in parts.items()}


def _look(eye: np.ndarray, target: np.ndarray, fov: float):
    from rendering.camera import look_at
    return look_at(torch.tensor(eye, dtype=torch.float64), fov, target=tuple(float(t) for t in target))


def camera_for_coverage(asset, rng, width: int, height: int, coverage: float):
    """A camera at a random yaw, pitch (±60°) and vertical fov (20–70°) from which ``asset`` covers about
    ``coverage`` of a ``width`` × ``height`` picture, shifted off the centre by up to a third of the
    frame (so larger objects are often cut by its border). Returns (camera, distance)."""
    from rendering.pose import render_at
    yaw, pitch, fov = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(-60, 60)), rng.uniform(20, 70)
    direction = np.array([math.cos(pitch) * math.cos(yaw), math.sin(pitch), math.cos(pitch) * math.sin(yaw)])
    probe = 6.0
    m = render_at(asset, _look(probe * direction, np.zeros(3), fov), max(8, width // 4), max(8, height // 4)).mask[0]
    share = float(m.mean())
    dist = max(2.2, probe * math.sqrt(share / coverage)) if share > 0 else probe
    cam = _look(dist * direction, np.zeros(3), fov)
    half = dist * math.tan(math.radians(fov) / 2)
    shift = rng.uniform(-1 / 3, 1 / 3, 2) * [half * width / height, half]
    target = cam.rotation[0].numpy() * shift[0] + cam.rotation[1].numpy() * shift[1]
    return _look(dist * direction + target, target, fov), dist


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """[H, W, C] blurred with a Gaussian of ``sigma`` pixels (edges replicated)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    k = torch.tensor(k / k.sum(), dtype=torch.float32)
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[:, None]
    t = torch.nn.functional.pad(t, (radius, radius, 0, 0), mode="replicate")
    t = torch.nn.functional.conv2d(t, k.view(1, 1, 1, -1))
    t = torch.nn.functional.pad(t, (0, 0, radius, radius), mode="replicate")
    t = torch.nn.functional.conv2d(t, k.view(1, 1, -1, 1))
    return t[:, 0].permute(1, 2, 0).numpy().astype(np.float64)


def decoder_like(rng, point_map, mask, soft_px: float = 2.0, noise: float = 4 / 255, wrong: float = 0.1):
    """An exact point map ([H, W, 3], white background) as a VAE might decode it: a soft silhouette
    (the picture blurred within ``soft_px`` pixels of the object's outline, so its colours blend into
    the white over about that width each side), Gaussian colour noise of ``noise``, and a share
    ``wrong`` of the object's pixels replaced by random colours. Returns the point map and its mask by
    RefAny3D Point Map To Mask's rule (float arrays)."""
    pm = np.asarray(point_map, dtype=np.float64)
    m = np.asarray(mask) > 0.5
    if soft_px > 0:
        near = _within(m, soft_px) & _within(~m, soft_px)
        pm = np.where(near[..., None], gaussian_blur(pm, soft_px / 2), pm)
    pm = np.clip(pm + rng.normal(0, noise, pm.shape), 0, 1)
    bad = m & (rng.random(m.shape) < wrong)
    pm[bad] = rng.random((int(bad.sum()), 3))
    return pm, (~(pm >= MASK_THRESHOLD).all(axis=-1)).astype(np.float32)


def _within(region: np.ndarray, px: float) -> np.ndarray:
    """Pixels within ``px`` (chessboard distance, rounded up) of ``region``."""
    r = int(math.ceil(px))
    t = torch.from_numpy(region.astype(np.float32))[None, None]
    return torch.nn.functional.max_pool2d(t, 2 * r + 1, stride=1, padding=r)[0, 0].numpy() > 0


@dataclass
class PoseCase:
    asset: str
    camera: object
    distance: float
    width: int
    height: int
    coverage: float  # share of the picture the exact render covers
    point_map: np.ndarray  # decoder-like
    mask: np.ndarray
    exact_point_map: np.ndarray
    exact_mask: np.ndarray


SIZES = ((320, 240), (240, 320), (384, 256), (256, 256))
COVERAGES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)


def decoder_like_cases(assets: dict, per_asset: int, seed: int = 0) -> list[PoseCase]:
    """``per_asset`` cases for every asset: sizes, coverages and edge softness (1–3 px) cycled, cameras random."""
    from rendering.pose import render_at
    rng = np.random.default_rng(seed)
    cases = []
    for a_i, (name, asset) in enumerate(assets.items()):
        for i in range(per_asset):
            w, h = SIZES[(i + a_i) % len(SIZES)]
            coverage = COVERAGES[(i * 3 + a_i) % len(COVERAGES)]
            cam, dist = camera_for_coverage(asset, rng, w, h, coverage)
            view = render_at(asset, cam, w, h)
            exact_pm, exact_m = view.point_map[0].numpy(), view.mask[0].numpy()
            pm, m = decoder_like(rng, exact_pm, exact_m, soft_px=1 + (i % 3))
            cases.append(PoseCase(name, cam, dist, w, h, float(exact_m.mean()), pm, m, exact_pm, exact_m))
    return cases


def rotation_error_deg(a, b) -> float:
    r = np.asarray(a.rotation, float).T @ np.asarray(b.rotation, float)
    return math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1)))
