"""Small exact checks of the renderer's building blocks: texel-centre bilinear lookup with the
glTF v flip, sRGB transfer, perspective-correct interpolation, pixel-centre sampling."""
from __future__ import annotations

import math

import numpy as np
import torch

import rendering
from rendering.colors import linear_to_srgb, srgb_to_linear
from rendering.views import pixel_rays, sample_bilinear


def test_bilinear_texel_centres_midpoints_wrap_and_v_flip():
    img = torch.arange(4 * 2 * 3, dtype=torch.uint8).reshape(4, 2, 3) * 10  # H=4 rows, W=2 columns
    f = img.float() / 255
    # texel centre of row 0 (top of the image) is v = 1 - 0.5/4 in the v-up UVs trimesh gives
    uv = torch.tensor([[0.25, 1 - 0.125], [0.75, 0.125], [0.5, 1 - 0.125], [0.0, 1 - 0.125], [0.25, 0.75]])
    got = sample_bilinear(img, uv)
    assert torch.allclose(got[0], f[0, 0])  # top-left texel
    assert torch.allclose(got[1], f[3, 1])  # bottom-right texel
    assert torch.allclose(got[2], (f[0, 0] + f[0, 1]) / 2)  # between two columns
    assert torch.allclose(got[3], (f[0, 0] + f[0, 1]) / 2)  # u = 0 wraps onto the last column
    assert torch.allclose(got[4], (f[0, 0] + f[1, 0]) / 2)  # between rows 0 and 1


def test_srgb_round_trip_and_known_values():
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-12)
    assert float(linear_to_srgb(torch.tensor(0.5, dtype=torch.float64))) == \
        np.float64(1.055 * 0.5 ** (1 / 2.4) - 0.055)
    assert float(srgb_to_linear(torch.tensor(0.04, dtype=torch.float64))) == 0.04 / 12.92


def test_interpolation_is_perspective_correct():
    """A long quad receding from the camera: the point map at each pixel centre is the exact
    ray/plane intersection; screen-space (affine) interpolation would be off by far more."""
    v = np.array([[-1.0, -0.2, 1.0], [-1.0, 0.2, 1.0], [1.0, 0.2, -1.0], [1.0, -0.2, -1.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    asset = rendering.asset_from_mesh(v, f)
    res = 64
    views = rendering.render_views(asset, num_views=1, resolution=res, radius=2.2)
    cam = views.cameras[0]
    dirs = torch.stack(pixel_rays(cam, torch.arange(res * res), res), -1).numpy()
    eye = cam.eye.numpy()
    # plane x + z = 0 (in the rendering frame, which equals the asset frame here)
    n = np.array([1.0, 0.0, 1.0])
    t = -(eye @ n) / (dirs @ n)
    p = eye + t[:, None] * dirs
    expect = (p - v.min(0)) / (v.max(0) - v.min(0))
    m = views.mask[0].numpy().reshape(-1) > 0
    got = views.point_map[0].numpy().reshape(-1, 3)
    assert m.sum() > 300
    assert np.abs(got[m] - expect[m]).max() < 1e-5
    # what affine screen-space interpolation would give differs clearly (so the test can tell)
    x_ndc = (np.nonzero(m)[0] % res + 0.5) / res * 2 - 1
    assert np.ptp(got[m][:, 0] - (x_ndc - x_ndc.min()) / np.ptp(x_ndc)) > 0.05


def test_pixel_centre_sampling_of_an_axis_aligned_square():
    """A square whose projected edges fall between pixel centres covers exactly the centres inside."""
    res = 32
    cam = rendering.orbit_camera(0.0)
    # a square in the plane x = 0 spanning exactly 10 pixel widths: centres j = 11..20 inside
    half = 5 / (res / 2) * 4 * math.tan(math.radians(22.5))
    v = np.array([[0, -half, -half], [0, -half, half], [0, half, half], [0, half, -half]], dtype=np.float64)
    verts = torch.tensor(v * 0.999999, dtype=torch.float32)
    face = rendering.rasterize(cam.to_camera(verts), torch.tensor([[0, 1, 2], [0, 2, 3]]), cam.focal, res)
    covered = (face >= 0).reshape(res, res).numpy()
    expect = np.zeros((res, res), bool)
    expect[11:21, 11:21] = True
    assert np.array_equal(covered, expect)
