"""The rasterizer against independent oracles: analytic ray intersections (sphere, box) and an
Embree ray caster (trimesh + embreex) with colours computed here from the generating data
(not from rendering's loader), plus orientation of a texture with readable markings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tools.assets_gen import (
    QUADRANT_COLOURS,
    GltfPart,
    box,
    flatten_parts,
    low_poly,
    marked_quad,
    marked_texture,
    smooth_texture,
    uv_sphere,
    write_glb,
    write_gltf,
    write_obj,
)

import rendering

# ------------------------------------------------------------------ an independent camera model


def spec_camera(theta: float, pitch_deg: float, radius: float = 4.0):
    """eye and (right, up, forward) straight from docs/method.md §1.4, in numpy."""
    phi = math.radians(pitch_deg)
    eye = radius * np.array([math.cos(phi) * math.cos(theta), math.sin(phi), math.cos(phi) * math.sin(theta)])
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return eye, right, up, fwd


def spec_rays(theta, pitch_deg, res, fov=45.0):
    """Unit ray directions [res*res, 3] through pixel centres, row 0 at the top."""
    eye, right, up, fwd = spec_camera(theta, pitch_deg)
    t = (np.arange(res) + 0.5) / res * 2 - 1
    tan = math.tan(math.radians(fov) / 2)
    px, py = np.meshgrid(t * tan, -t * tan)  # x across columns, y down the rows
    d = px[..., None] * right + py[..., None] * up + fwd
    d = d.reshape(-1, 3)
    return eye, d / np.linalg.norm(d, axis=1, keepdims=True)


def release_thetas(n=8):
    return [2 * math.pi * (i * (60 // n)) / 60 for i in range(n)]


def srgb_encode(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def srgb_decode(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


# ------------------------------------------------------------------ analytic oracle


def test_release_preset_angles_and_default():
    assert rendering.view_angles(8) == pytest.approx([math.radians(d) for d in (0, 42, 84, 126, 168, 210, 252, 294)])
    assert rendering.view_angles(4, "even") == pytest.approx([0, math.pi / 2, math.pi, 3 * math.pi / 2])
    cam = rendering.orbit_camera(math.radians(42), pitch_deg=30)
    eye, right, up, fwd = spec_camera(math.radians(42), 30)
    assert cam.eye.numpy() == pytest.approx(eye)
    assert cam.rotation.numpy() == pytest.approx(np.stack([right, up, fwd]))


def sphere_hits(origin, dirs, centre, radius):
    """Nearest analytic hit distance [R] (nan = miss) and cos of the incidence angle."""
    oc = origin - centre
    b = dirs @ oc
    c = oc @ oc - radius ** 2
    disc = b * b - c
    t = np.where(disc >= 0, -b - np.sqrt(np.maximum(disc, 0)), np.nan)
    p = origin + t[:, None] * dirs
    n = (p - centre) / radius
    cos = -(n * dirs).sum(1)
    miss_dist = np.sqrt(np.maximum(c - b * b + radius ** 2, 0))  # distance from centre to the ray
    return t, cos, miss_dist


def test_sphere_point_map_and_silhouette_match_analytic_intersections():
    res = 96
    v, f, _ = uv_sphere(384, 768, radius=0.7)
    v = v + [0.3, -0.2, 0.5]  # off-centre in its own frame: normalisation must undo it
    asset = rendering.asset_from_mesh(v, f)
    views = rendering.render_views(asset, num_views=3, preset="even", resolution=res, pitch=20.0)
    vmin, vmax = v.min(0), v.max(0)
    centre, scale = (vmin + vmax) / 2, 2 / (vmax - vmin).max()
    for k, theta in enumerate([0, 2 * math.pi / 3, 4 * math.pi / 3]):
        eye, dirs = spec_rays(theta, 20.0, res)
        t, cos, dist = sphere_hits(eye, dirs, (np.array([0.3, -0.2, 0.5]) - centre) * scale, 0.7 * scale)
        inside = dist < 0.7 * scale
        mask = views.mask[k].numpy().reshape(-1) > 0
        clear = np.abs(dist - 0.7 * scale) > 2e-3  # not on the silhouette itself
        assert (mask[clear] == inside[clear]).all()
        assert inside.sum() > 500
        sel = inside & (cos > 0.5)
        p = eye + t[sel, None] * dirs[sel]
        expect = (p / scale + centre - vmin) / (vmax - vmin)
        got = views.point_map[k].numpy().reshape(-1, 3)[sel]
        assert np.abs(got - expect).max() <= 1e-4
        assert (views.point_map[k].numpy().reshape(-1, 3)[~mask] == 1).all()
        assert (views.rgb[k].numpy().reshape(-1, 3)[~mask] == 1).all()


def box_hits(origin, dirs, lo, hi):
    """Slab test: entry distance [R] (nan = miss) and the margin of the hit from the box edges."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - origin) / dirs
        t2 = (hi - origin) / dirs
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = tmax >= tmin
    t = np.where(hit, tmin, np.nan)
    return t, tmax - tmin


@pytest.mark.parametrize("preset,pitch", [("release", 0.0), ("even", -35.0)])
def test_box_point_map_and_silhouette_match_analytic_intersections(preset, pitch):
    res = 80
    size, centre0 = np.array([2.0, 1.2, 0.8]), np.array([5.0, 1.0, -3.0])
    v, f, _ = box(size, centre0)
    asset = rendering.asset_from_mesh(v, f)
    n = 8 if preset == "release" else 5
    views = rendering.render_views(asset, num_views=n, preset=preset, resolution=res, pitch=pitch)
    scale = 2 / size.max()
    lo, hi = -size / 2 * scale, size / 2 * scale
    thetas = release_thetas(8) if preset == "release" else [2 * math.pi * i / n for i in range(n)]
    for k, theta in enumerate(thetas):
        eye, dirs = spec_rays(theta, pitch, res)
        t, span = box_hits(eye, dirs, lo, hi)
        inside = ~np.isnan(t)
        mask = views.mask[k].numpy().reshape(-1) > 0
        p = eye + np.nan_to_num(t)[:, None] * dirs
        # margin of the hit point from the box's edges (both of its other coordinates)
        rel = np.abs(p) / hi
        margin = np.sort(1 - rel, axis=1)[:, 1]
        clear = ~inside | (margin > 1e-4)
        clear &= ~(np.isnan(t) & (np.abs(span) < 1e-4))
        assert (mask[clear] == inside[clear]).all(), k
        expect = (p / scale + size / 2) / size  # asset frame -> per-axis [0, 1]
        got = views.point_map[k].numpy().reshape(-1, 3)
        sel = inside & mask
        assert np.abs(got[sel] - expect[sel]).max() <= 1e-4
        depth = views.depth[k].numpy().reshape(-1)
        cos = dirs[sel] @ spec_camera(theta, pitch)[3]
        assert np.abs(depth[sel] - t[sel] * cos).max() < 1e-4


def test_view_zero_sees_plus_x_with_plus_y_up():
    v, f, _ = box((1.0, 1.0, 1.0))
    views = rendering.render_views(rendering.asset_from_mesh(v, f), num_views=8, resolution=64)
    pm, m = views.point_map[0].numpy(), views.mask[0].numpy() > 0
    assert np.allclose(pm[m][:, 0], 1.0, atol=1e-5)  # only the +X face is visible
    rows, cols = np.nonzero(m)
    top, bottom = pm[rows.min(), 32, 1], pm[rows.max(), 32, 1]
    assert top > 0.95 and bottom < 0.05  # +Y up: row 0 is the top
    left, right = pm[32, cols.min(), 2], pm[32, cols.max(), 2]
    assert left > 0.95 and right < 0.05  # looking along -X with +Y up, +Z is on the left
    # view 1 (θ = 42°) sees the +Z side too, and it lies to the left of the +X side
    pm1 = views.point_map[1].numpy()
    z_side = np.isclose(pm1[..., 2], 1.0, atol=1e-5) & (views.mask[1].numpy() > 0)
    x_side = np.isclose(pm1[..., 0], 1.0, atol=1e-5) & (views.mask[1].numpy() > 0)
    assert z_side.sum() > 50 and x_side.sum() > 50
    assert np.nonzero(z_side)[1].mean() < np.nonzero(x_side)[1].mean()


def test_y_rotation_rotates_point_map_frame():
    v, f, _ = box((1.0, 1.0, 1.0))
    asset = rendering.asset_from_mesh(v, f)
    base = rendering.render_views(asset, num_views=2, resolution=32)
    rot = rendering.render_views(asset, num_views=2, resolution=32, y_rotation=90.0)
    m = base.mask > 0
    c = base.point_map[m] * 2 - 1
    expect = torch.stack([c[:, 2], c[:, 1], -c[:, 0]], dim=1)  # R_y(90°) applied to [-1,1] coords
    assert torch.allclose(rot.point_map[m], ((expect + 1) / 2).clamp(0, 1), atol=1e-5)
    assert torch.equal(rot.rgb, base.rgb) and torch.equal(rot.mask, base.mask)


# ------------------------------------------------------------------ Embree oracle


def bilinear_gltf(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """glTF sampling done here: uv (0,0) = top-left of the image, repeat wrap, texel centres."""
    h, w = img.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = uv[:, 1] * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def at(yy, xx):
        return img[yy % h, xx % w].astype(np.float64)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bot = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bot * fy) / 255


def embree_oracle(parts: list[GltfPart], thetas, pitch, res):
    """Ray-cast the scene described by ``parts`` with Embree; colours from the parts' own data."""
    import trimesh
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    flat = flatten_parts(parts)
    verts, faces, owner, offset = [], [], [], 0
    for i, (p, world) in enumerate(flat):
        vw = np.c_[p.vertices, np.ones(len(p.vertices))] @ world.T
        verts.append(vw[:, :3])
        faces.append(np.asarray(p.faces) + offset)
        owner.append(np.full(len(p.faces), i))
        offset += len(p.vertices)
    vw, fw, owner = np.concatenate(verts), np.concatenate(faces), np.concatenate(owner)
    vmin, vmax = vw.min(0), vw.max(0)
    centre, scale = (vmin + vmax) / 2, 2 / (vmax - vmin).max()
    mesh = trimesh.Trimesh((vw - centre) * scale, fw, process=False)
    ray = RayMeshIntersector(mesh)
    local_faces = np.concatenate([np.asarray(p.faces) for p, _ in flat])
    out = []
    for theta in thetas:
        eye, dirs = spec_rays(theta, pitch, res)
        tri, ray_idx, loc = ray.intersects_id(np.repeat(eye[None], len(dirs), 0), dirs,
                                              multiple_hits=False, return_locations=True)
        rgb = np.ones((res * res, 3))
        pm = np.ones((res * res, 3))
        mask = np.zeros(res * res, bool)
        mask[ray_idx] = True
        p_asset = loc / scale + centre
        pm[ray_idx] = (p_asset - vmin) / (vmax - vmin)
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], loc)
        for i, (part, _) in enumerate(flat):
            sel = owner[tri] == i
            if not sel.any():
                continue
            lf = local_faces[tri[sel]]
            b = bary[sel][:, :, None]
            if part.texture is not None:
                uv = (np.asarray(part.uv)[lf] * b).sum(1)
                c = bilinear_gltf(np.asarray(part.texture.convert("RGB")), uv)
                if part.factor is not None and any(x != 1 for x in part.factor[:3]):
                    c = srgb_encode(srgb_decode(c) * np.asarray(part.factor[:3]))
            elif part.colors is not None:
                c = (np.asarray(part.colors)[:, :3][lf] * b).sum(1)
            elif part.factor is not None:
                c = np.broadcast_to(srgb_encode(np.asarray(part.factor[:3], float)), (sel.sum(), 3))
            else:
                c = np.full((sel.sum(), 3), 0.5)
            rgb[ray_idx[sel]] = c
        out.append((rgb.reshape(res, res, 3), pm.reshape(res, res, 3), mask.reshape(res, res)))
    return out


def rotation_quat(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    s = math.sin(math.radians(deg) / 2)
    return (*(axis * s), math.cos(math.radians(deg) / 2))


def u8(x):
    """Colours as 8-bit steps, exactly representable after trimesh's uint8 storage."""
    return np.round(np.asarray(x) * 255) / 255


def scene_single_textured():
    v, f, uv = uv_sphere(48, 96)
    uv_gltf = np.c_[uv[:, 0], 1 - uv[:, 1]]
    return [GltfPart(v, f, uv=uv_gltf, texture=smooth_texture(64))]


def scene_multi_part():
    rng = np.random.default_rng(3)
    bv, bf, buv = box((1.0, 0.6, 0.8))
    sv, sf, _ = uv_sphere(24, 48, radius=0.5)
    lv, lf = low_poly()
    child_v, child_f, child_uv = box((0.3, 0.3, 0.3))
    return [
        GltfPart(bv, bf, uv=np.c_[buv[:, 0], 1 - buv[:, 1]], texture=smooth_texture(32, seed=2),
                 factor=tuple(u8([0.6, 1.0, 0.3])) + (1.0,), translation=(0.9, 0.1, 0.0),
                 rotation=rotation_quat((0, 1, 0), 30),
                 children=[GltfPart(child_v, child_f, uv=child_uv, texture=marked_texture(32),
                                    translation=(0.0, 0.6, 0.0), scale=(1.0, 2.0, 1.0))]),
        GltfPart(sv, sf, colors=u8(rng.random((len(sv), 3))), translation=(-0.8, 0.0, 0.3)),
        GltfPart(lv * 0.5, lf, factor=tuple(u8([0.2, 0.5, 0.9])) + (1.0,), translation=(0.0, -0.7, -0.6),
                 matrix=None, scale=(1.5, 1.0, 1.0)),
        GltfPart(lv * 0.3, lf, translation=(0.0, 0.9, -0.8)),  # no material: mid grey
    ]


def scene_low_poly():
    lv, lf = low_poly()
    return [GltfPart(lv, lf, factor=(1.0, 1.0, 1.0, 1.0),
                     colors=u8(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1.0]])))]


def compare_with_oracle(views, oracle):
    inter = union = 0
    pm_ok = pm_n = rgb_ok = 0
    for k, (rgb, pm, mask) in enumerate(oracle):
        ours = views.mask[k].numpy() > 0
        inter += (ours & mask).sum()
        union += (ours | mask).sum()
        both = ours & mask
        pm_err = np.abs(views.point_map[k].numpy()[both] - pm[both]).max(axis=1)
        rgb_err = np.abs(views.rgb[k].numpy()[both] - rgb[both]).max(axis=1)
        pm_ok += (pm_err <= 1 / 255).sum()
        rgb_ok += (rgb_err <= 2 / 255).sum()
        pm_n += both.sum()
    iou = inter / union
    return iou, pm_ok / pm_n, rgb_ok / pm_n, pm_n


@pytest.mark.parametrize("scene,pitch,fmt", [
    ("single_textured", 0.0, "glb"),
    ("multi_part", 0.0, "glb"),
    ("multi_part", -25.0, "gltf"),
    ("low_poly", 35.0, "glb"),
])
def test_matches_embree_ray_caster(tmp_path, scene, pitch, fmt):
    parts = {"single_textured": scene_single_textured, "multi_part": scene_multi_part,
             "low_poly": scene_low_poly}[scene]()
    path = (write_glb if fmt == "glb" else write_gltf)(tmp_path / f"scene.{fmt}", parts)
    asset = rendering.load_asset(path)
    res = 128
    views = rendering.render_views(asset, num_views=8, resolution=res, pitch=pitch)
    oracle = embree_oracle(parts, release_thetas(8), pitch, res)
    iou, pm_frac, rgb_frac, n = compare_with_oracle(views, oracle)
    assert n > 8 * 1500
    assert iou >= 0.9999, iou
    assert pm_frac >= 0.999, pm_frac
    assert rgb_frac >= 0.99, rgb_frac


def test_back_face_skipping_gives_the_same_image():
    v, f, uv = uv_sphere(40, 80)
    asset = rendering.asset_from_mesh(v, f)
    assert asset.closed_orientation() == 1
    flipped = rendering.asset_from_mesh(v, f[:, ::-1].copy())
    assert flipped.closed_orientation() == -1
    open_mesh = rendering.asset_from_mesh(v, f[: len(f) // 2])
    assert open_mesh.closed_orientation() == 0
    for a in (asset, flipped):
        on = rendering.render_views(a, num_views=3, resolution=64, pitch=10.0, cull_back_faces=True)
        off = rendering.render_views(a, num_views=3, resolution=64, pitch=10.0, cull_back_faces=False)
        assert torch.equal(on.mask, off.mask) and torch.equal(on.point_map, off.point_map)


def test_chunking_does_not_change_the_result(monkeypatch):
    v, f, _ = uv_sphere(30, 60)
    lv, lf = low_poly()
    verts = np.concatenate([v * 0.5, lv + [0.8, 0, 0]])
    faces = np.concatenate([f, lf + len(v)])
    asset = rendering.asset_from_mesh(verts, faces)
    cam = rendering.orbit_camera(0.3, 10.0)
    cam_v = cam.to_camera(asset.normalised_vertices()).float()
    full = rendering.rasterize(cam_v, asset.faces, cam.focal, 64)
    chunked = rendering.rasterize(cam_v, asset.faces, cam.focal, 64, face_chunk=97, max_candidates=50)
    assert torch.equal(full, chunked)
    assert (full >= 0).sum() > 500
    from rendering import views as views_module
    whole = rendering.render_views(asset, num_views=2, resolution=64)
    monkeypatch.setattr(views_module, "SHADE_CHUNK", 77)
    pieces = rendering.render_views(asset, num_views=2, resolution=64)
    for a, b in zip((whole.rgb, whole.point_map, whole.mask, whole.depth),
                    (pieces.rgb, pieces.point_map, pieces.mask, pieces.depth)):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_renders_like_cpu(tmp_path):
    parts = scene_multi_part()
    asset = rendering.load_asset(write_glb(tmp_path / "s.glb", parts))
    cpu = rendering.render_views(asset, num_views=8, resolution=128)
    gpu = rendering.render_views(asset, num_views=8, resolution=128, device="cuda")
    assert (cpu.mask != gpu.mask).float().mean() < 1e-4
    both = (cpu.mask > 0) & (gpu.mask > 0)
    assert (cpu.point_map[both] - gpu.point_map[both]).abs().max() < 1e-4
    assert ((cpu.rgb[both] - gpu.rgb[both]).abs().max(dim=1).values <= 2 / 255).float().mean() > 0.999


# ------------------------------------------------------------------ orientation of readable markings


def check_marked_view(rgb: np.ndarray):
    """rgb [H,W,3] of the marked quad seen from +X filling the middle of the frame."""
    h = rgb.shape[0]
    m = (rgb < 0.99).any(axis=2)
    rows, cols = np.nonzero(m)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    qh, qw = (r1 - r0) // 4, (c1 - c0) // 4
    spots = {"top_left": (r0 + qh, c0 + qw), "top_right": (r0 + qh, c1 - qw),
             "bottom_left": (r1 - qh, c0 + qw), "bottom_right": (r1 - qh, c1 - qw)}
    for name, (r, c) in spots.items():
        got = np.round(rgb[r, c] * 255)
        # the F marking sits inside the top-left quadrant: sample beside it
        if name == "top_left":
            got = np.round(rgb[r0 + 3 * (r1 - r0) // 8, c0 + 3 * (c1 - c0) // 8] * 255)
        assert np.abs(got - QUADRANT_COLOURS[name]).max() <= 2, (name, got)
    # the F: its stem is on the left, its top bar at the top (an unmirrored, upright F)
    side = c1 - c0 + 1
    u = side / 16
    black = (rgb.max(axis=2) < 0.1)
    stem = black[int(r0 + 4.5 * u), int(c0 + 2.5 * u)]
    mirrored_stem = black[int(r0 + 4.5 * u), int(c1 - 2.5 * u)]
    top_bar_right = black[int(r0 + 2.5 * u), int(c0 + 5.5 * u)]
    bottom_bar_right = black[int(r1 - 2.5 * u), int(c0 + 5.5 * u)]
    assert stem and not mirrored_stem and top_bar_right and not bottom_bar_right
    assert h > 0


@pytest.mark.parametrize("fmt", ["glb", "gltf", "obj"])
def test_marked_texture_renders_unmirrored_and_upright(tmp_path, fmt):
    v, f, uv = marked_quad()
    tex = marked_texture(64)
    if fmt == "obj":
        path = write_obj(tmp_path / "quad.obj", v, f, uv_gltf=uv, texture=tex)
    else:
        path = (write_glb if fmt == "glb" else write_gltf)(tmp_path / f"quad.{fmt}", [GltfPart(v, f, uv=uv, texture=tex)])
    views = rendering.render_views(rendering.load_asset(path), num_views=1, resolution=128)
    check_marked_view(views.rgb[0].numpy())
