"""glTF 2.0 features, each in a small file written here, rendered and compared with a ray caster
written here (numpy, no code shared with rendering/): the expected geometry and colours are
computed in this file from the glTF 2.0 spec's formulas and the data the test wrote.

Bars: mask IoU >= 0.999; point map within 2/255 and RGB within 3/255 on >= 99.9 % of the pixels
both call object.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from tools.assets_gen import box, smooth_texture, uv_sphere
from tools.gltf_build import GltfBuilder

import rendering

RES = 96
CLAMP, MIRROR, REPEAT = 33071, 33648, 10497

# ------------------------------------------------------------------ the oracle's camera (docs/method.md §1.4)


def thetas(n=8):
    return [2 * math.pi * (i * (60 // n)) / 60 for i in range(n)]


def rays(theta, res):
    eye = 4.0 * np.array([math.cos(theta), 0.0, math.sin(theta)])
    fwd = -eye / 4.0
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    t = ((np.arange(res) + 0.5) / res * 2 - 1) * math.tan(math.radians(22.5))
    px, py = np.meshgrid(t, -t)
    return eye, (px[..., None] * right + py[..., None] * up + fwd).reshape(-1, 3)


def srgb(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def wrap_coordinate(c, mode):
    """glTF sampler wrap of a texture coordinate (OpenGL semantics), before the texel lookup."""
    if mode == REPEAT:
        return c - np.floor(c)
    if mode == MIRROR:
        m = np.mod(c, 2.0)
        return np.where(m <= 1.0, m, 2.0 - m)
    return c


def sample(img, uv, wrap):
    """Bilinear lookup at glTF UVs ((0, 0) = top-left); img [h, w, c] uint8 -> [n, c] in 0..1."""
    h, w = img.shape[:2]
    x = wrap_coordinate(uv[:, 0], wrap[0]) * w - 0.5
    y = wrap_coordinate(uv[:, 1], wrap[1]) * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def at(yy, xx):
        yy = np.mod(yy, h) if wrap[1] == REPEAT else np.clip(yy, 0, h - 1)
        xx = np.mod(xx, w) if wrap[0] == REPEAT else np.clip(xx, 0, w - 1)
        return img[yy, xx].astype(np.float64)
    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy) / 255


class Surface:
    """World triangles [F, 3, 3] with what the spec says about their colour."""

    def __init__(self, tris, uv=None, color0=None, texture=None, wrap=(REPEAT, REPEAT), factor=None,
                 material=True, cutoff=None):
        self.tris = np.asarray(tris, float)
        self.uv = None if uv is None else np.asarray(uv, float)  # [F, 3, 2] glTF UVs
        self.color0 = None if color0 is None else np.asarray(color0, float)  # [F, 3, 4]
        self.texture = None if texture is None else np.asarray(texture.convert("RGBA"))
        self.wrap, self.material, self.cutoff = wrap, material, cutoff
        self.factor = np.array([1.0, 1, 1, 1]) if factor is None else np.asarray(factor, float)

    def colour(self, f, b):
        """(rgb [n, 3], alpha [n]) at faces f with barycentrics b [n, 3]."""
        n = len(f)
        c0 = (self.color0[f] * b[:, :, None]).sum(1) if self.color0 is not None else np.ones((n, 4))
        if not self.material:
            return (c0[:, :3] if self.color0 is not None else np.full((n, 3), 0.5)), np.ones(n)
        alpha = self.factor[3] * c0[:, 3]
        if self.texture is not None:
            t = sample(self.texture, (self.uv[f] * b[:, :, None]).sum(1), self.wrap)
            rgb = t[:, :3] if np.all(self.factor[:3] == 1) else srgb(linear(t[:, :3]) * self.factor[:3])
            return rgb * c0[:, :3], alpha * t[:, 3]
        return srgb(self.factor[:3])[None] * c0[:, :3], alpha


def ray_cast(surfaces, res=RES):
    """[(rgb, point map, mask)] per release view: nearest drawn hit per pixel-centre ray."""
    tris = np.concatenate([s.tris for s in surfaces])
    owner = np.concatenate([np.full(len(s.tris), i) for i, s in enumerate(surfaces)])
    local = np.concatenate([np.arange(len(s.tris)) for s in surfaces])
    vmin, vmax = tris.reshape(-1, 3).min(0), tris.reshape(-1, 3).max(0)
    centre, scale = (vmin + vmax) / 2, 2 / (vmax - vmin).max()
    nt = (tris - centre) * scale
    out = []
    for theta in thetas():
        eye, d = rays(theta, res)
        e1, e2 = nt[:, 1] - nt[:, 0], nt[:, 2] - nt[:, 0]
        p = np.cross(d[:, None], e2[None])  # [R, F, 3]
        det = (e1[None] * p).sum(-1)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1 / np.where(ok, det, 1), 0)
        tv = eye[None] - nt[:, 0]  # [F, 3]
        u = (tv[None] * p).sum(-1) * inv
        q = np.cross(tv, e1)  # [F, 3]
        v = (d @ q.T) * inv
        t = (e2 * q).sum(-1)[None] * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        t = np.where(hit, t, np.inf)
        rgb, pm, mask = np.ones((res * res, 3)), np.ones((res * res, 3)), np.zeros(res * res, bool)
        todo = np.arange(res * res)
        while len(todo):
            best = np.argmin(t[todo], axis=1)
            tt = t[todo, best]
            todo, best, tt = todo[np.isfinite(tt)], best[np.isfinite(tt)], tt[np.isfinite(tt)]
            if not len(todo):
                break
            b = np.stack([1 - u[todo, best] - v[todo, best], u[todo, best], v[todo, best]], 1)
            colour, alpha = np.zeros((len(todo), 3)), np.ones(len(todo))
            for i, s in enumerate(surfaces):
                sel = owner[best] == i
                if sel.any():
                    colour[sel], alpha[sel] = s.colour(local[best[sel]], b[sel])
            cut = np.array([surfaces[o].cutoff or 0.0 for o in owner[best]])
            drawn = alpha >= cut
            pix = todo[drawn]
            rgb[pix] = colour[drawn]
            pm[pix] = ((eye + tt[drawn, None] * d[pix]) / scale + centre - vmin) / (vmax - vmin)
            mask[pix] = True
            t[todo[~drawn], best[~drawn]] = np.inf
            todo = todo[~drawn]
        out.append((rgb, pm, mask))
    return out


def compare(views, expected):
    inter = union = both_n = pm_ok = rgb_ok = 0
    for k, (rgb, pm, mask) in enumerate(expected):
        ours = views.mask[k].numpy().reshape(-1) > 0
        inter += (ours & mask).sum()
        union += (ours | mask).sum()
        both = ours & mask
        both_n += both.sum()
        pm_ok += (np.abs(views.point_map[k].numpy().reshape(-1, 3)[both] - pm[both]).max(1) <= 2 / 255).sum()
        rgb_ok += (np.abs(views.rgb[k].numpy().reshape(-1, 3)[both] - rgb[both]).max(1) <= 3 / 255).sum()
    return inter / union, pm_ok / both_n, rgb_ok / both_n, both_n


def assert_renders_as(path, surfaces, min_pixels=8 * 300):
    asset = rendering.load_asset(path)
    views = rendering.render_views(asset, num_views=8, resolution=RES)
    iou, pm, rgb, n = compare(views, ray_cast(surfaces))
    assert n >= min_pixels, n
    assert iou >= 0.999 and pm >= 0.999 and rgb >= 0.999, (iou, pm, rgb)
    return asset, views


def assert_same_views(a, b):
    """Two renders agree by the same bars (a quantized or compressed file and its float twin)."""
    inter = (a.mask.bool() & b.mask.bool()).sum().item()
    union = (a.mask.bool() | b.mask.bool()).sum().item()
    both = (a.mask.bool() & b.mask.bool()).numpy()
    pm = np.abs(a.point_map.numpy()[both] - b.point_map.numpy()[both]).max(1)
    rgb = np.abs(a.rgb.numpy()[both] - b.rgb.numpy()[both]).max(1)
    assert inter / union >= 0.999, inter / union
    assert (pm <= 2 / 255).mean() >= 0.999 and (rgb <= 3 / 255).mean() >= 0.999


# ------------------------------------------------------------------ geometry written here


def transform(m, v):
    return np.asarray(v, float) @ m[:3, :3].T + m[:3, 3]


def quat(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    s = math.sin(math.radians(deg) / 2)
    return [*(axis * s), math.cos(math.radians(deg) / 2)]


def trs(t=(0, 0, 0), r=(0, 0, 0, 1), s=(1, 1, 1)):
    """T · R · S from the spec's quaternion formula (x, y, z, w)."""
    x, y, z, w = r
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(s)
    m[:3, 3] = t
    return m


def textured_box(size=(1.0, 0.8, 0.6)):
    v, f, uv = box(size)
    return v, f, np.c_[uv[:, 0], 1 - uv[:, 1]]  # glTF UVs


def rgba_texture(size=32, seed=0, holes=False):
    img = np.asarray(smooth_texture(size, seed=seed).convert("RGB"))
    alpha = np.full(img.shape[:2], 255, np.uint8)
    if holes:  # a smooth alpha ramp: cut where it is below the cutoff
        yy, xx = np.mgrid[0:size, 0:size]
        alpha = np.clip(128 + 127 * np.sin(xx / size * 2 * math.pi * 2) * np.cos(yy / size * 2 * math.pi), 0, 255)
    from PIL import Image
    return Image.fromarray(np.dstack([img, alpha.astype(np.uint8)]), "RGBA")


# ------------------------------------------------------------------ accessors


def write_box(path, quantized=False, signed_positions=False):
    """A textured box with vertex colours; quantized: KHR_mesh_quantization layouts."""
    v, f, uv = textured_box()
    rng = np.random.default_rng(1)
    colors = np.c_[rng.uniform(0.5, 1, (len(v), 3)), np.ones(len(v))]
    g = GltfBuilder()
    tex = g.texture(rgba_texture(32, 3).convert("RGB"))
    mat = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": tex}, "baseColorFactor": [0.8, 1, 0.6, 1]})
    node = {}
    if not quantized:
        prim = g.triangles(v, f, mat, TEXCOORD_0=uv, COLOR_0=colors)
    elif signed_positions:  # int8 normalized positions, -128 included (reads as -1, the spec's max())
        q = np.round(v / np.abs(v).max() * 127)
        q[0, 0] = -128
        v = np.maximum(q / 127, -1) * np.abs(v).max()
        prim = {"attributes": {"POSITION": g.accessor(q / 127, 5120, normalized=True, stride=4),
                               "TEXCOORD_0": g.accessor(uv, 5121, normalized=True),
                               "COLOR_0": g.accessor(colors, 5121, normalized=True)},
                "indices": g.accessor(f.reshape(-1), 5121), "material": mat}
        node = {"scale": [float(np.abs(textured_box()[0]).max())] * 3}
        uv, colors = np.round(uv * 255) / 255, np.round(colors * 255) / 255
    else:  # int16 positions scaled by the node, uint16 normalized UVs, uint8 normalized colours
        prim = {"attributes": {"POSITION": g.accessor(np.round(v * 1000), 5122, stride=8),
                               "TEXCOORD_0": g.accessor(uv, 5123, normalized=True),
                               "COLOR_0": g.accessor(colors, 5121, normalized=True)},
                "indices": g.accessor(f.reshape(-1), 5123), "material": mat}
        node = {"scale": [0.001] * 3}
        uv, colors = np.round(uv * 65535) / 65535, np.round(colors * 255) / 255
    g.node(mesh=g.mesh([prim]), **node)
    g.tree["extensionsUsed"] = ["KHR_mesh_quantization"]
    g.tree["extensionsRequired"] = ["KHR_mesh_quantization"]
    g.glb(path)
    return Surface(v[f], uv[f], colors[f], rgba_texture(32, 3), factor=[0.8, 1, 0.6, 1])


@pytest.mark.parametrize("signed", [False, True])
def test_quantized_accessors_render_as_the_spec_and_equal_their_float_twin(tmp_path, signed):
    surface = write_box(tmp_path / "q.glb", quantized=True, signed_positions=signed)
    _, quantized = assert_renders_as(tmp_path / "q.glb", [surface])
    if not signed:  # int8 positions move the corners by up to 1/254 of the size: no float twin
        write_box(tmp_path / "f.glb")
        floats = rendering.render_views(rendering.load_asset(tmp_path / "f.glb"), num_views=8, resolution=RES)
        assert_same_views(quantized, floats)


def test_sparse_accessors_substitute_values(tmp_path):
    v, f, _ = box((1.0, 1.0, 1.0))
    moved = np.array([0, 5, 9])
    new = v[moved] * np.array([1.6, 1.3, 1.0])
    g = GltfBuilder()
    base = g.accessor(np.asarray(v, np.float32), minmax=True)
    position = g.sparse(base, len(v), "VEC3", moved, new)
    # a morph target with no bufferView: zeros except the sparse values
    delta = np.array([[0.0, 0.4, 0.0]])
    target = g.sparse(None, len(v), "VEC3", [2], delta)
    prim = {"attributes": {"POSITION": position}, "indices": g.accessor(f.reshape(-1), 5125),
            "material": g.material(pbrMetallicRoughness={"baseColorFactor": [0.2, 0.6, 0.9, 1]}),
            "targets": [{"POSITION": target}]}
    g.node(mesh=g.mesh([prim], weights=[0.5]))
    g.glb(tmp_path / "s.glb")
    expected = np.array(v, float)
    expected[moved] = new
    expected[2] += 0.5 * delta[0]
    assert_renders_as(tmp_path / "s.glb", [Surface(expected[f], factor=[0.2, 0.6, 0.9, 1])])


# ------------------------------------------------------------------ modes


def test_triangle_strips_and_fans(tmp_path):
    g = GltfBuilder()
    # a strip across a wavy ribbon and a fan around a cone's apex
    xs = np.linspace(-1, 1, 9)
    strip_v = np.array([[x, y, 0.2 * math.sin(3 * x)] for x in xs for y in (-0.3, 0.3)])
    fan_v = np.array([[0, 0.9, 0]] + [[0.5 * math.cos(a), 0.4, 0.5 * math.sin(a)]
                                      for a in np.linspace(0, 2 * math.pi, 13)])
    mat = g.material(pbrMetallicRoughness={"baseColorFactor": [0.9, 0.3, 0.1, 1]})
    g.node(mesh=g.mesh([g.triangles(strip_v, np.arange(len(strip_v)), mat, mode=5, COLOR_0=np.c_[
        np.linspace(0, 1, len(strip_v)), np.full(len(strip_v), 0.5), np.linspace(1, 0, len(strip_v))]),
        g.triangles(fan_v, np.arange(len(fan_v)), mat, mode=6)]))
    g.glb(tmp_path / "m.glb")
    n = len(strip_v)
    strip = [(i, i + 1 + i % 2, i + 2 - i % 2) for i in range(n - 2)]  # glTF 2.0 §3.7.2.1
    fan = [(i + 1, i + 2, 0) for i in range(len(fan_v) - 2)]
    c = np.c_[np.linspace(0, 1, n), np.full(n, 0.5), np.linspace(1, 0, n), np.ones(n)]
    strip = np.array(strip)
    assert_renders_as(tmp_path / "m.glb", [
        Surface(strip_v[strip], color0=c[strip], factor=[0.9, 0.3, 0.1, 1]),
        Surface(fan_v[np.array(fan)], factor=[0.9, 0.3, 0.1, 1])])


def test_points_and_lines_are_named_not_drawn(tmp_path):
    v, f, _ = box()
    g = GltfBuilder()
    g.node(mesh=g.mesh([g.triangles(v, [0, 1, 1, 2], mode=1), g.triangles(v, np.arange(8), mode=0)]))
    g.glb(tmp_path / "lines.glb")
    with pytest.raises(rendering.AssetError, match="LINES.*POINTS|no triangle faces.*LINES"):
        rendering.load_asset(tmp_path / "lines.glb")
    g.node(mesh=g.mesh([g.triangles(v, f)]))
    g.glb(tmp_path / "mixed.glb")
    asset = rendering.load_asset(tmp_path / "mixed.glb")
    assert asset.num_faces == len(f)
    assert any("LINES" in w for w in asset.warnings) and any("POINTS" in w for w in asset.warnings)


# ------------------------------------------------------------------ nodes, instancing, morphing, skins


def test_node_hierarchy_matrix_trs_and_mirroring(tmp_path):
    v, f, uv = textured_box((0.6, 0.4, 0.3))
    g = GltfBuilder()
    tex = g.texture(rgba_texture(32, 5).convert("RGB"))
    mat = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": tex}})
    mesh = g.mesh([g.triangles(v, f, mat, TEXCOORD_0=uv)])
    parent = trs((0.2, 0.1, 0), quat((0, 1, 0), 35), (1.2, 1, 1))
    child = trs((0.7, 0.2, 0.1), quat((1, 0, 1), 50), (-1, 1, 1))  # mirrored
    matrix_child = np.eye(4)
    matrix_child[:3, :3] = np.diag([0.8, 1.3, 0.9]) @ trs(r=quat((0, 0, 1), 20))[:3, :3]
    matrix_child[:3, 3] = (-0.6, -0.3, 0.2)
    c1 = g.node(root=False, mesh=mesh, translation=[0.7, 0.2, 0.1], rotation=quat((1, 0, 1), 50), scale=[-1, 1, 1])
    c2 = g.node(root=False, mesh=mesh, matrix=matrix_child.T.reshape(-1).tolist())
    g.node(mesh=mesh, translation=[0.2, 0.1, 0], rotation=quat((0, 1, 0), 35), scale=[1.2, 1, 1], children=[c1, c2])
    g.glb(tmp_path / "h.glb")
    tex_img = rgba_texture(32, 5)
    surfaces = [Surface(transform(m, v)[f], uv[f], texture=tex_img)
                for m in (parent, parent @ child, parent @ matrix_child)]
    asset, _ = assert_renders_as(tmp_path / "h.glb", surfaces)
    assert asset.closed_orientation() == 1  # the mirrored copy's winding was flipped: all shells outward


def test_gpu_instancing_draws_every_instance(tmp_path):
    v, f, _ = box((0.4, 0.4, 0.4))
    g = GltfBuilder()
    mesh = g.mesh([g.triangles(v, f, g.material(pbrMetallicRoughness={"baseColorFactor": [0.1, 0.8, 0.3, 1]}))])
    t = np.array([[-1, 0, 0], [0, 0.5, 0], [1, 0, 0.3]], float)
    r = np.array([quat((0, 1, 0), 0), quat((0, 0, 1), 30), quat((1, 1, 0), 60)])
    s = np.array([[1, 1, 1], [0.5, 2, 1], [1, 1, 1.5]], float)
    g.node(mesh=mesh, translation=[0, 0.2, 0], extensions={"EXT_mesh_gpu_instancing": {"attributes": {
        "TRANSLATION": g.accessor(t.astype(np.float32)), "ROTATION": g.accessor(r.astype(np.float32)),
        "SCALE": g.accessor(s.astype(np.float32))}}})
    g.tree["extensionsUsed"] = ["EXT_mesh_gpu_instancing"]
    g.glb(tmp_path / "i.glb")
    node = trs((0, 0.2, 0))
    surfaces = [Surface(transform(node @ trs(t[i], r[i], s[i]), v)[f], factor=[0.1, 0.8, 0.3, 1]) for i in range(3)]
    asset, _ = assert_renders_as(tmp_path / "i.glb", surfaces)
    assert asset.num_faces == 3 * len(f)


@pytest.mark.parametrize("node_weights", [None, [0.0, 1.0]])
def test_morph_targets_at_default_weights(tmp_path, node_weights):
    v, f, _ = uv_sphere(12, 24, radius=0.5)
    d1 = np.c_[v[:, 0] * 0.8, np.zeros(len(v)), np.zeros(len(v))]  # stretch along x
    d2 = np.c_[np.zeros(len(v)), np.maximum(v[:, 1], 0) * 1.2, np.zeros(len(v))]  # raise the top
    g = GltfBuilder()
    prim = g.triangles(v, f, g.material(pbrMetallicRoughness={"baseColorFactor": [0.9, 0.9, 0.2, 1]}))
    prim["targets"] = [{"POSITION": g.accessor(d1.astype(np.float32))}, {"POSITION": g.accessor(d2.astype(np.float32))}]
    extra = {} if node_weights is None else {"weights": node_weights}
    g.node(mesh=g.mesh([prim], weights=[0.5, 0.25]), **extra)
    g.glb(tmp_path / "m.glb")
    w = node_weights or [0.5, 0.25]
    expected = v + w[0] * d1 + w[1] * d2
    assert_renders_as(tmp_path / "m.glb", [Surface(expected[f], factor=[0.9, 0.9, 0.2, 1])])


def test_skinned_mesh_in_its_joints_rest_pose_ignoring_its_node_transform(tmp_path):
    v, f, _ = box((0.4, 1.6, 0.4))
    g = GltfBuilder()
    j1 = g.node(root=False, translation=[0, 0.8, 0], rotation=quat((0, 0, 1), 40))
    j0 = g.node(translation=[0.3, -0.2, 0], rotation=quat((0, 1, 0), 20), children=[j1])
    ibm = [np.linalg.inv(trs((0, 0, 0))), np.linalg.inv(trs((0, 0.8, 0)))]  # bind: j0 at origin, j1 at y = 0.8
    upper = (v[:, 1] > 0).astype(float)
    weights = np.c_[1 - 0.8 * upper, 0.8 * upper, np.zeros(len(v)), np.zeros(len(v))]
    joints = np.tile([0, 1, 0, 0], (len(v), 1))
    prim = g.triangles(v, f, g.material(pbrMetallicRoughness={"baseColorFactor": [0.7, 0.2, 0.9, 1]}),
                       JOINTS_0=g.accessor(joints, 5121), WEIGHTS_0=weights)
    skin = g.add("skins", {"joints": [j0, j1],
                           "inverseBindMatrices": g.accessor(np.array([m.T.reshape(-1) for m in ibm], np.float32),
                                                             kind="MAT4")})
    g.node(mesh=g.mesh([prim]), skin=skin, translation=[5, 0, 0], scale=[3, 3, 3])  # must be ignored
    g.glb(tmp_path / "skin.glb")
    w0 = trs((0.3, -0.2, 0), quat((0, 1, 0), 20))
    w1 = w0 @ trs((0, 0.8, 0), quat((0, 0, 1), 40))
    expected = weights[:, :1] * transform(w0 @ ibm[0], v) + weights[:, 1:2] * transform(w1 @ ibm[1], v)
    assert_renders_as(tmp_path / "skin.glb", [Surface(expected[f], factor=[0.7, 0.2, 0.9, 1])])


# ------------------------------------------------------------------ base colour


@pytest.mark.parametrize("wrap", [(CLAMP, MIRROR), (MIRROR, REPEAT), (REPEAT, CLAMP)])
def test_texcoord_set_texture_transform_and_wrap_modes(tmp_path, wrap):
    v, f, uv = textured_box()
    uv1 = uv * 2.4 - 0.7  # outside 0..1: the wrap modes show
    g = GltfBuilder()
    tex = g.texture(rgba_texture(16, 7).convert("RGB"), wrap)
    tt = {"offset": [0.15, -0.1], "rotation": 0.3, "scale": [1.2, 0.8]}
    mat = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": tex, "texCoord": 1,
                                                                "extensions": {"KHR_texture_transform": tt}}})
    g.node(mesh=g.mesh([g.triangles(v, f, mat, TEXCOORD_0=np.zeros_like(uv), TEXCOORD_1=uv1)]))
    g.tree["extensionsUsed"] = ["KHR_texture_transform"]
    g.glb(tmp_path / "t.glb")
    c, s = math.cos(0.3), math.sin(0.3)
    m = np.array([[1, 0, 0.15], [0, 1, -0.1], [0, 0, 1]]) @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) \
        @ np.diag([1.2, 0.8, 1])  # the extension's T · R · S
    uvt = (np.c_[uv1, np.ones(len(uv1))] @ m.T)[:, :2]
    assert_renders_as(tmp_path / "t.glb", [Surface(v[f], uvt[f], texture=rgba_texture(16, 7), wrap=wrap)])


def test_color0_times_texture_times_factor_and_default_materials(tmp_path):
    v, f, uv = textured_box((0.5, 0.5, 0.5))
    rng = np.random.default_rng(4)
    c0 = np.c_[rng.uniform(0.3, 1, (len(v), 3)), np.ones(len(v))]
    g = GltfBuilder()
    tex = g.texture(rgba_texture(32, 9).convert("RGB"))
    textured = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": tex}, "baseColorFactor": [1, 0.7, 0.5, 1]})
    white = g.material(pbrMetallicRoughness={})  # neither factor nor texture: the spec's factor 1 = white
    bare = g.material()  # no pbrMetallicRoughness at all: white too
    offsets = {"textured": (-0.8, 0, 0), "white": (0, 0, 0.1), "bare": (0.8, 0, 0), "none": (0, 0.7, 0),
               "none_c0": (0, -0.7, 0)}
    g.node(mesh=g.mesh([g.triangles(v + offsets["textured"], f, textured, TEXCOORD_0=uv, COLOR_0=c0)]))
    g.node(mesh=g.mesh([g.triangles(v + offsets["white"], f, white)]))
    g.node(mesh=g.mesh([g.triangles(v + offsets["bare"], f, bare, COLOR_0=c0)]))
    g.node(mesh=g.mesh([g.triangles(v + offsets["none"], f)]))
    g.node(mesh=g.mesh([g.triangles(v + offsets["none_c0"], f, COLOR_0=c0)]))
    g.glb(tmp_path / "c.glb")
    surfaces = [Surface((v + offsets["textured"])[f], uv[f], c0[f], rgba_texture(32, 9), factor=[1, 0.7, 0.5, 1]),
                Surface((v + offsets["white"])[f]),
                Surface((v + offsets["bare"])[f], color0=c0[f]),
                Surface((v + offsets["none"])[f], material=False),
                Surface((v + offsets["none_c0"])[f], color0=c0[f], material=False)]
    _, views = assert_renders_as(tmp_path / "c.glb", surfaces)
    assert (views.rgb.numpy() >= 254.5 / 255).all(-1).sum() > (views.mask.numpy() == 0).sum()  # white parts drawn


def test_alpha_mask_cut_outs_show_what_lies_behind(tmp_path):
    g = GltfBuilder()
    card_v = np.array([[-0.9, -0.7, 0], [0.9, -0.7, 0], [0.9, 0.7, 0], [-0.9, 0.7, 0]], float)
    card_f = np.array([[0, 1, 2], [0, 2, 3]])
    card_uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], float)
    card_c0 = np.array([[1, 1, 1, 1], [1, 1, 1, 0.7], [1, 1, 1, 1], [1, 1, 1, 1]], float)
    holes = rgba_texture(32, 11, holes=True)
    tex = g.texture(holes)
    cut = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": tex}, "baseColorFactor": [1, 1, 1, 0.9]},
                     alphaMode="MASK", alphaCutoff=0.4, doubleSided=True)
    g.node(mesh=g.mesh([g.triangles(card_v, card_f, cut, TEXCOORD_0=card_uv, COLOR_0=card_c0)]))
    # a second card behind it, and a box behind both
    g.node(mesh=g.mesh([g.triangles(card_v * 0.8 + [0, 0, -0.4], card_f, cut, TEXCOORD_0=card_uv * 1.5)]))
    bv, bf, _ = box((0.6, 0.6, 0.6), center=(0, 0, -0.9))
    g.node(mesh=g.mesh([g.triangles(bv, bf, g.material(pbrMetallicRoughness={"baseColorFactor": [0.2, 0.4, 1, 1]}))]))
    g.glb(tmp_path / "cut.glb")
    assert_renders_as(tmp_path / "cut.glb", [
        Surface(card_v[card_f], card_uv[card_f], card_c0[card_f], holes, factor=[1, 1, 1, 0.9], cutoff=0.4),
        Surface((card_v * 0.8 + [0, 0, -0.4])[card_f], (card_uv * 1.5)[card_f], texture=holes,
                factor=[1, 1, 1, 0.9], cutoff=0.4),
        Surface(bv[bf], factor=[0.2, 0.4, 1, 1])])


# ------------------------------------------------------------------ extensions


def test_required_extension_refused_by_name_used_one_warned(tmp_path):
    v, f, _ = box()
    g = GltfBuilder()
    g.node(mesh=g.mesh([g.triangles(v, f)]))
    g.tree["extensionsUsed"] = ["VENDOR_magic_geometry"]
    g.glb(tmp_path / "used.glb")
    asset = rendering.load_asset(tmp_path / "used.glb")
    assert any("VENDOR_magic_geometry" in w for w in asset.warnings)
    assert "VENDOR_magic_geometry" in asset.description()
    g.tree["extensionsRequired"] = ["VENDOR_magic_geometry"]
    g.glb(tmp_path / "required.glb")
    with pytest.raises(rendering.AssetError, match="requires the glTF extension VENDOR_magic_geometry"):
        rendering.load_asset(tmp_path / "required.glb")


def test_ktx2_textures_are_refused_by_name(tmp_path):
    v, f, uv = textured_box()
    g = GltfBuilder()
    image = g.add("images", {"bufferView": g.view(b"\xabKTX 20\xbb\r\n\x1a\n" + bytes(64)), "mimeType": "image/ktx2"})
    tex = g.add("textures", {"extensions": {"KHR_texture_basisu": {"source": image}}})
    mat = g.material(pbrMetallicRoughness={"baseColorTexture": {"index": tex}})
    g.node(mesh=g.mesh([g.triangles(v, f, mat, TEXCOORD_0=uv)]))
    g.tree["extensionsUsed"] = ["KHR_texture_basisu"]
    g.glb(tmp_path / "ktx.glb")
    with pytest.raises(rendering.AssetError, match="KHR_texture_basisu"):
        rendering.load_asset(tmp_path / "ktx.glb")
    # a texture whose plain ``source`` is a KTX2 image (seen in the wild): named as KTX2, not as a bad image
    g.tree["textures"][tex] = {"source": image}
    g.glb(tmp_path / "ktx_source.glb")
    with pytest.raises(rendering.AssetError, match="KTX2"):
        rendering.load_asset(tmp_path / "ktx_source.glb")


def test_meshopt_without_fallback_data_is_refused_by_name(tmp_path):
    v, f, _ = box()
    g = GltfBuilder()
    g.node(mesh=g.mesh([g.triangles(v, f)]))
    view = g.tree["bufferViews"][g.tree["accessors"][0]["bufferView"]]
    view["buffer"] = 1  # the compressed data lives in buffer 0; buffer 1 is the fallback with no data
    view["extensions"] = {"EXT_meshopt_compression": {"buffer": 0, "byteLength": 10, "byteStride": 12,
                                                      "mode": "ATTRIBUTES", "count": len(v)}}
    g.tree["extensionsUsed"] = g.tree["extensionsRequired"] = ["EXT_meshopt_compression"]
    path = g.glb(tmp_path / "meshopt.glb")
    import json
    import struct
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    tree = json.loads(data[20:20 + length])
    tree["buffers"].append({"byteLength": 1 << 20, "extensions": {"EXT_meshopt_compression": {"fallback": True}}})
    js = json.dumps(tree).encode()
    js += b" " * (-len(js) % 4)
    rest = data[20 + length:]
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, 20 + len(js) + len(rest)) + struct.pack("<II", len(js), 0x4E4F534A)
                     + js + rest)
    with pytest.raises(rendering.AssetError, match="EXT_meshopt_compression"):
        rendering.load_asset(path)
