"""Reference views of an asset (docs/method.md §1): unlit RGB, point map, mask and depth per orbit view."""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .asset import Asset
from .camera import FAR, NEAR, Camera, orbit_cameras, whole_number
from .colors import linear_to_srgb, srgb_to_linear
from .errors import AssetError
from .raster import rasterize, split_faces

RESOLUTION_MULTIPLE = 16  # the Flux VAE (8x) packed in 2x2 patches
MAX_RESOLUTION = 4096
MAX_FACES = 50_000_000
AUTO_CULL_FACES = 50_000
SHADE_CHUNK = 1 << 20  # covered pixels shaded at once
MAX_PEEL_LAYERS = 32  # cut-out surfaces looked through per pixel (glTF alphaMode MASK)
CLAMP_TO_EDGE, MIRRORED_REPEAT, REPEAT = 33071, 33648, 10497
BACKENDS = ("pack", "pytorch3d")


@dataclass
class Views:
    """Rendered reference views; background is white (1, 1, 1) in rgb and point_map."""

    rgb: torch.Tensor  # [N, H, W, 3] float32 in [0, 1]
    point_map: torch.Tensor  # [N, H, W, 3] float32 in [0, 1]
    mask: torch.Tensor  # [N, H, W] float32, 1 = asset
    depth: torch.Tensor  # [N, H, W] float32 camera-space depth (distance along the view axis), 0 = background
    cameras: list[Camera]


def check_resolution(resolution) -> int:
    """The resolution as an int; AssetError unless it is a multiple of 16 in 16..4096."""
    message = (f"resolution must be a multiple of {RESOLUTION_MULTIPLE} between {RESOLUTION_MULTIPLE} and "
               f"{MAX_RESOLUTION} (the VAE needs it), got {resolution}")
    try:
        res = whole_number(resolution, "resolution")
    except AssetError:
        raise AssetError(message) from None
    if res < RESOLUTION_MULTIPLE or res > MAX_RESOLUTION or res % RESOLUTION_MULTIPLE:
        raise AssetError(message)
    return res


def render_views(asset: Asset, num_views: int = 8, preset: str = "release", resolution: int = 512,
                 pitch: float = 0.0, y_rotation: float = 0.0, radius: float = 4.0, fov: float = 45.0,
                 device=None, progress: Callable[[int, int], None] | None = None,
                 cull_back_faces: bool | None = None, backend: str = "pack") -> Views:
    """Render ``num_views`` orbit views of ``asset`` with the release's conventions (docs/method.md §1).

    progress(done, total) is called after each view (it may raise to cancel).
    Outputs live on the CPU; the work runs on ``device`` (default CPU).
    cull_back_faces: None = automatic (skip back faces when the asset has at least
    AUTO_CULL_FACES faces and is made of closed, consistently wound shells: same image, half
    the work); False = never; True = whenever the asset is closed and consistently wound.
    backend: "pack" (the pack's own rasterizer and exact ray/triangle step, pure PyTorch) or
    "pytorch3d" (visibility and barycentrics from PyTorch3D's rasterizer where it is installed;
    colours by the same rules): see rendering/pytorch3d_backend.py.
    """
    if backend not in BACKENDS:
        raise AssetError(f"rendering backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    resolution = check_resolution(resolution)
    if asset.num_faces > MAX_FACES:
        raise AssetError(f"the asset has {asset.num_faces:,} faces; at most {MAX_FACES:,} can be rendered "
                         "within memory: decimate it first")
    for name, value in (("pitch", pitch), ("y_rotation", y_rotation), ("radius", radius), ("fov", fov)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise AssetError(f"{name} must be a finite number, got {value!r}")
    cameras = orbit_cameras(num_views, preset, pitch, radius, fov)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "mps":  # no float64 on Apple GPUs: the exact intersection step needs it
        device = torch.device("cpu")
    verts = asset.normalised_vertices()  # [V, 3] float64
    reach = float(verts.norm(dim=1).max())
    if radius - reach <= NEAR or radius + reach >= FAR:
        raise AssetError(f"camera radius {radius} puts the asset (reaching {reach:.3f} from the centre after "
                         f"normalisation) outside the visible depth range {NEAR}..{FAR}: use a radius "
                         f"between {reach + NEAR:.2f} and {FAR - reach:.2f}")
    cull = 0
    if (cull_back_faces or (cull_back_faces is None and asset.num_faces >= AUTO_CULL_FACES)) \
            and not asset.has_cut_outs:  # a cut-out shows the inside of a closed shell
        cull = asset.closed_orientation()
    shader = Shader(asset, verts, y_rotation, device)
    s = resolution
    p3d = None
    if backend == "pytorch3d" and not shader.cut_out:  # cut-outs need the depth peel of the pack's rasterizer
        from .pytorch3d_backend import PyTorch3DRasterizer
        p3d = PyTorch3DRasterizer(shader.verts, shader.faces, s, device)
    n = len(cameras)
    rgb = torch.ones(n, s * s, 3)
    point_map = torch.ones(n, s * s, 3)
    mask = torch.zeros(n, s * s)
    depth = torch.zeros(n, s * s)
    verts32 = shader.verts.float()
    for i, cam in enumerate(cameras):
        if p3d is None:
            cam_v = cam.to_camera(verts32)  # [V, 3] float32
            face = visible_faces(shader, cam, cam_v, s, cull)  # [H*W]
        else:
            face, bary, z = p3d.view(cam)
        hit = (face >= 0).nonzero().squeeze(1)  # [P] covered pixels
        for start in range(0, hit.shape[0], SHADE_CHUNK):
            pix = hit[start:start + SHADE_CHUNK]
            if p3d is None:
                c, pm, t = shader.shade(pix, face[pix], cam, s)
            else:
                c, pm = shader.surface(face[pix], bary[pix].unbind(1))
                t = z[pix]
            pix = pix.cpu()
            rgb[i, pix] = c.cpu()
            point_map[i, pix] = pm.cpu()
            mask[i, pix] = 1.0
            depth[i, pix] = t.cpu()
        if progress is not None:
            progress(i + 1, n)
    return Views(rgb.view(n, s, s, 3), point_map.view(n, s, s, 3), mask.view(n, s, s), depth.view(n, s, s), cameras)


def visible_faces(shader: Shader, cam: Camera, cam_v: torch.Tensor, s: int, cull: int = 0,
                  height: int | None = None) -> torch.Tensor:
    """Visible face per pixel ([H*W], -1 = background): the rasterizer's nearest face, and where
    that point is cut out (alphaMode MASK), the next surface behind it (depth peeling)."""
    if not shader.cut_out:
        return rasterize(cam_v, shader.face_cols, cam.focal, s, cull=cull, height=height)
    face, iz = rasterize(cam_v, shader.face_cols, cam.focal, s, cull=cull, height=height, with_depth=True)
    for layer in range(MAX_PEEL_LAYERS + 1):
        pix = (face >= 0).nonzero().squeeze(1)
        dropped = pix[~shader.drawn(pix, face[pix], cam, s, height)]
        if dropped.numel() == 0:
            break
        if layer == MAX_PEEL_LAYERS:
            face[dropped] = -1
            break
        behind = torch.full_like(iz, -math.inf)
        behind[dropped] = iz[dropped]
        nxt, nxt_iz = rasterize(cam_v, shader.face_cols, cam.focal, s, cull=cull, height=height,
                                behind=behind, with_depth=True)
        face[dropped] = nxt[dropped]
        iz[dropped] = nxt_iz[dropped]
    return face


class Shader:
    """Per-pixel attributes of the visible faces: base colour, point map, depth."""

    def __init__(self, asset: Asset, verts: torch.Tensor, y_rotation: float, device: torch.device):
        self.device = device
        self.verts = verts.to(device)  # [V, 3] float64, rendering frame
        self.verts_t = self.verts.t().contiguous()  # [3, V]
        self.faces = asset.faces.to(device)  # [F, 3]
        self.face_cols = split_faces(self.faces)  # 3 x [F] int32
        uv = asset.uv if asset.uv is not None else torch.zeros(asset.num_vertices, 2)
        # per-vertex attributes interpolated together: point map 0:3, colour 3:6, uv 6:8, alpha 8 (cut-outs)
        attrs = [asset.point_map_colors(), asset.colors.float(), uv.float()]
        self.cut_out = asset.has_cut_outs
        if self.cut_out:
            attrs.append(asset.alpha.float()[:, None])
            self.face_cutoff = asset.face_cutoff.float().to(device)
        self.attrs = torch.cat(attrs, dim=1).to(device)
        self.face_texture = asset.face_texture.to(device) if asset.face_texture is not None else None
        self.textures = [(t.image.to(device), t.factor.to(device), t.has_factor(), t.wrap,
                          t.alpha.to(device) if t.alpha is not None else None) for t in asset.textures]
        a = math.radians(y_rotation)
        self.rot = None if y_rotation % 360 == 0 else torch.tensor(
            [[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]],
            dtype=torch.float32, device=device)

    def shade(self, pixels: torch.Tensor, faces: torch.Tensor, cam: Camera, s: int, height: int | None = None):
        """Covered pixels [P] (flat indices of an s-wide image) and their faces [P] -> rgb [P,3],
        point map [P,3], depth [P]."""
        corner = [c.index_select(0, faces) for c in self.face_cols]  # 3 x [P]
        tri = [[self.verts_t[d].index_select(0, c) for d in range(3)] for c in corner]  # [corner][xyz] -> [P]
        rays = pixel_rays(cam, pixels, s, height)  # 3 x [P] float64
        bary, t = ray_barycentrics([float(e) for e in cam.eye], rays, tri)  # 3 x [P], [P]
        rgb, pm = self.surface(faces, bary, corner)
        return rgb, pm, t.float()

    def interpolate(self, faces: torch.Tensor, bary, corner=None) -> torch.Tensor:
        """[P, 8 or 9] per-vertex attributes interpolated at the barycentrics (3 x [P])."""
        if corner is None:
            corner = [c.index_select(0, faces) for c in self.face_cols]
        return sum(b.float()[:, None] * self.attrs.index_select(0, c) for b, c in zip(bary, corner))

    def drawn(self, pixels: torch.Tensor, faces: torch.Tensor, cam: Camera, s: int,
              height: int | None = None) -> torch.Tensor:
        """[P] bool: the visible point is drawn (alphaMode MASK: alpha × texel alpha >= the cutoff)."""
        corner = [c.index_select(0, faces) for c in self.face_cols]
        tri = [[self.verts_t[d].index_select(0, c) for d in range(3)] for c in corner]
        bary, _ = ray_barycentrics([float(e) for e in cam.eye], pixel_rays(cam, pixels, s, height), tri)
        values = self.interpolate(faces, bary, corner)
        alpha = values[:, 8].clamp(0, 1)
        if self.textures:
            tex_id = self.face_texture[faces]
            for k, (_, _, _, wrap, texel_alpha) in enumerate(self.textures):
                if texel_alpha is None:
                    continue
                sel = (tex_id == k).nonzero().squeeze(1)
                if sel.numel():
                    alpha[sel] = alpha[sel] * sample_bilinear(texel_alpha[..., None], values[sel, 6:8], wrap)[:, 0]
        return alpha >= self.face_cutoff[faces]

    def surface(self, faces: torch.Tensor, bary, corner=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Faces [P] and barycentrics (3 x [P]) -> base colour [P, 3] and point map [P, 3]: attribute
        interpolation, y_rotation of the point-map frame, texture lookup and colour rules."""
        values = self.interpolate(faces, bary, corner)
        pm = values[:, 0:3].clamp(0, 1)
        if self.rot is not None:
            pm = (((pm * 2 - 1) @ self.rot.T + 1) / 2).clamp(0, 1)
        rgb = values[:, 3:6]
        if self.textures:
            tex_id = self.face_texture[faces]
            for k, (image, factor, has_factor, wrap, _) in enumerate(self.textures):
                sel = (tex_id == k).nonzero().squeeze(1)
                if sel.numel() == 0:
                    continue
                c = sample_bilinear(image, values[sel, 6:8], wrap)
                if has_factor:  # texels are sRGB, the factor is linear (docs/method.md §1.6)
                    c = linear_to_srgb(srgb_to_linear(c) * factor)
                rgb[sel] = c * rgb[sel]  # times the vertex colours (glTF COLOR_0; ones without)
        return rgb.clamp(0, 1), pm


def pixel_rays(cam: Camera, pixels: torch.Tensor, s: int, height: int | None = None) -> list[torch.Tensor]:
    """World ray directions (x, y, z: 3 x [P] float64) through the centres of flat pixel indices
    [P] of an s-wide, ``height``-high image (default square), scaled so that their camera-space z is
    1; row 0 is the top of the picture. Pixel (i, j) centre, in units of half the image height:
    x = (j + 0.5 - s / 2) / (h / 2), y = (h / 2 - i - 0.5) / (h / 2) (square: NDC)."""
    h = s if height is None else height
    x = ((pixels % s).double() + 0.5 - s / 2) * (2 / h)
    y = (h / 2 - (pixels // s).double() - 0.5) * (2 / h)
    x, y = x / cam.focal, y / cam.focal
    r = cam.rotation.tolist()  # rows: right, up, forward
    return [x * r[0][d] + y * r[1][d] + r[2][d] for d in range(3)]


def dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def ray_barycentrics(origin, dirs, tri):
    """Exact ray/triangle-plane intersection (Möller-Trumbore) in float64, coordinate-wise.

    origin: 3 floats; dirs: 3 x [P]; tri: [corner][coordinate] -> [P]. Returns barycentrics
    (3 x [P]) and the ray parameter t [P] (with camera-space z of dirs = 1, t is the camera-space
    depth). Being exact in 3D, the barycentrics are perspective-correct.
    """
    v0, v1, v2 = tri
    e1 = [v1[d] - v0[d] for d in range(3)]
    e2 = [v2[d] - v0[d] for d in range(3)]
    pvec = cross(dirs, e2)
    det = dot(e1, pvec)
    inv = 1.0 / torch.where(det == 0, torch.full_like(det, 1e-300), det)
    tvec = [origin[d] - v0[d] for d in range(3)]
    u = dot(tvec, pvec) * inv
    qvec = cross(tvec, e1)
    v = dot(dirs, qvec) * inv
    t = dot(e2, qvec) * inv
    return [1 - u - v, u, v], t


def wrap_index(i: torch.Tensor, n: int, mode: int) -> torch.Tensor:
    """Texel index wrapped into 0..n-1: REPEAT, CLAMP_TO_EDGE or MIRRORED_REPEAT (period 2n)."""
    if mode == CLAMP_TO_EDGE:
        return i.clamp(0, n - 1)
    if mode == MIRRORED_REPEAT:
        m = i.remainder(2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m)
    return i.remainder(n)


def sample_bilinear(image: torch.Tensor, uv: torch.Tensor, wrap=(REPEAT, REPEAT)) -> torch.Tensor:
    """Bilinear lookup: image [H, W, C] uint8, uv [P, 2] (v up) -> [P, C] in [0, 1]; ``wrap`` is the
    glTF sampler's (wrapS, wrapT), repeat by default.

    glTF/OpenGL UVs as trimesh gives them: u -> column, v is flipped when indexing rows
    (v = 1 is the top row of the image). Texel centres sit at (j + 0.5) / W.
    """
    h, w = image.shape[:2]
    x = uv[:, 0].double() * w - 0.5
    y = (1.0 - uv[:, 1].double()) * h - 0.5
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx = (x - x0f).float()[:, None]
    fy = (y - y0f).float()[:, None]
    x0i, y0i = x0f.long(), y0f.long()
    x0, x1 = wrap_index(x0i, w, wrap[0]), wrap_index(x0i + 1, w, wrap[0])
    y0, y1 = wrap_index(y0i, h, wrap[1]), wrap_index(y0i + 1, h, wrap[1])
    flat = image.reshape(h * w, -1)
    def texel(yy, xx):
        return flat[yy * w + xx].float()
    top = texel(y0, x0) * (1 - fx) + texel(y0, x1) * fx
    bottom = texel(y1, x0) * (1 - fx) + texel(y1, x1) * fx
    return (top * (1 - fy) + bottom * fy) / 255.0
