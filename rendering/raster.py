"""A z-buffer triangle rasterizer in plain PyTorch (CPU or CUDA, nothing to compile).

Sampling happens at pixel centres. Each face tests the pixel centres of its screen bounding box:
faces whose box holds one centre (most faces of a dense mesh) are tested directly; the others
are bucketed by power-of-two box sizes, so a big triangle does not make every small one
enumerate a big grid. Inside tests use the three edge functions (a centre on an edge counts as
inside, so shared edges leave no cracks); the depth test keeps, per pixel, the largest 1/z (the
nearest point) with one ``scatter_reduce`` on a packed ``(1/z bits << 32) | face id`` key.
Memory is bounded by processing faces and candidates in chunks. The result is the visible face
per pixel; barycentrics are then computed by exact ray/triangle intersection (views.py), which
makes them perspective-correct.
"""
from __future__ import annotations

import torch

from .camera import FAR, NEAR
from .errors import AssetError

FACE_CHUNK = 1 << 20  # faces set up at once
MAX_CANDIDATES = 1 << 22  # (face, pixel) pairs tested at once


def screen_coords(cam_vertices: torch.Tensor, focal: float, width: int, height: int | None = None):
    """Project camera-space vertices [V,3] -> (u [V], v [V], 1/z [V]) in pixel-centre units.

    Pixel (i, j) covers u in [j - 0.5, j + 0.5), v in [i - 0.5, i + 0.5): its centre is at
    (u, v) = (j, i); v grows downwards (row 0 = top). ``focal`` is 1 / tan(vertical fov / 2); the
    optical axis passes through the image centre; pixels are square.
    """
    height = width if height is None else height
    iz = 1.0 / cam_vertices[:, 2]
    s = iz * (focal * height / 2)
    u = cam_vertices[:, 0] * s + (width / 2 - 0.5)
    v = (height / 2 - 0.5) - cam_vertices[:, 1] * s
    return u, v, iz


def split_faces(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[F, 3] int -> three contiguous [F] int32 corner index columns (fast gathers)."""
    if faces.shape[0] and int(faces.max()) >= 2 ** 31:
        raise AssetError("the asset has too many vertices (2^31 or more) to render")
    cols = faces.to(torch.int32).t()
    return cols[0].contiguous(), cols[1].contiguous(), cols[2].contiguous()


def rasterize(cam_vertices: torch.Tensor, faces, focal: float, resolution: int,
              cull: int = 0, face_chunk: int = FACE_CHUNK, max_candidates: int = MAX_CANDIDATES,
              height: int | None = None, behind: torch.Tensor | None = None,
              with_depth: bool = False):
    """Visible face per pixel: [H*W] int64 face index, -1 where no face covers the pixel centre.
    The image is ``resolution`` pixels wide and ``height`` (default: ``resolution``) high.

    cam_vertices: [V, 3] float32 camera coordinates (x right, y up, z forward); faces: [F, 3]
    int, or the columns from split_faces. Every vertex must lie between the near and far planes
    (render_views ensures it).
    cull: 0 tests every face; +1 skips faces wound clockwise as seen from the camera (back faces
    of an outward-wound closed mesh), -1 skips counter-clockwise ones (see topology.py).
    behind: [H*W] float32 1/z per pixel: only surface points strictly farther (smaller 1/z) are
    kept (the next layer of a depth peel; +inf keeps everything, -inf nothing).
    with_depth: also return the visible point's 1/z per pixel ([H*W] float32).
    """
    s, h_img = resolution, resolution if height is None else height
    cols = split_faces(faces) if isinstance(faces, torch.Tensor) else faces
    z = cam_vertices[:, 2]
    if not bool(((z > NEAR) & (z < FAR)).all()):
        raise AssetError(f"part of the asset lies outside the camera's depth range {NEAR}..{FAR}")
    x, y, iz = screen_coords(cam_vertices.float(), focal, s, h_img)
    xy = torch.stack([x, y], dim=1).view(torch.float64).view(-1)  # [V] packed (u, v) pairs
    zbuf = torch.full((s * h_img,), -1, dtype=torch.int64, device=cam_vertices.device)
    for start in range(0, cols[0].shape[0], face_chunk):
        corner = [c[start:start + face_chunk] for c in cols]  # 3 x [f] int32
        pts = [torch.index_select(xy, 0, c).view(torch.float32).view(-1, 2) for c in corner]
        fx = [p[:, 0] for p in pts]  # 3 x [f] corner u (strided views)
        fy = [p[:, 1] for p in pts]
        x0, x1, y0, y1 = bounding_boxes(fx, fy, s, h_img)
        w = x1.sub_(x0)  # box width - 1 (x1, y1 are not needed any more)
        h = y1.sub_(y0)
        keep = (w >= 0) & (h >= 0)
        if cull:
            keep &= front_facing(fx, fy, cull)
        small = (w <= 1) & (h <= 1)
        small &= keep
        sel = small.nonzero().squeeze(1)  # boxes of at most 2 x 2 pixel centres: tested directly
        if sel.numel():
            fiz = [iz.index_select(0, c.index_select(0, sel)) for c in corner]
            scatter_small(zbuf, sel + start, [v[sel] for v in fx], [v[sel] for v in fy], fiz,
                          x0[sel], y0[sel], w[sel], h[sel], s, cull, behind)
        many = (keep & ~small).nonzero().squeeze(1)
        if many.numel():
            fiz = torch.stack([iz[c[many]] for c in corner], dim=1)
            bx, by = x0[many], y0[many]
            coef = plane_coefficients(torch.stack([v[many] - bx for v in fx], dim=1),
                                      torch.stack([v[many] - by for v in fy], dim=1), fiz)
            scatter_boxes(zbuf, many + start, x0[many].long(), y0[many].long(),
                          w[many].long() + 1, h[many].long() + 1, coef, s, max_candidates, behind)
    face = torch.where(zbuf >= 0, zbuf & 0xFFFFFFFF, torch.full_like(zbuf, -1))
    if with_depth:
        return face, (zbuf >> 32).to(torch.int32).view(torch.float32)
    return face


def bounding_boxes(fx, fy, s: int, h_img: int | None = None):
    """Pixel-centre range of each face's screen box: (x0, x1, y0, y1) [f] float, clipped to the
    s x h_img image; x0 > x1 or y0 > y1 when the box holds no pixel centre."""
    h_img = s if h_img is None else h_img
    x0 = torch.minimum(fx[0], fx[1])
    torch.minimum(x0, fx[2], out=x0).ceil_().clamp_(min=0)
    x1 = torch.maximum(fx[0], fx[1])
    torch.maximum(x1, fx[2], out=x1).floor_().clamp_(max=s - 1)
    y0 = torch.minimum(fy[0], fy[1])
    torch.minimum(y0, fy[2], out=y0).ceil_().clamp_(min=0)
    y1 = torch.maximum(fy[0], fy[1])
    torch.maximum(y1, fy[2], out=y1).floor_().clamp_(max=h_img - 1)
    return x0, x1, y0, y1


def front_facing(fx, fy, cull: int):
    """[f] bool: faces that survive back-face skipping (see rasterize's ``cull``)."""
    # twice the signed area in y-down pixel space: negative = counter-clockwise in y-up
    area = (fx[1] - fx[0]) * (fy[2] - fy[0])
    area.sub_((fy[1] - fy[0]) * (fx[2] - fx[0]))
    return area < 0 if cull > 0 else area > 0


def edge(ax, ay, bx, by, px, py):
    """Edge function of a->b at p (positive on the left in y-down pixel space)."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def scatter_small(zbuf, face_ids, fx, fy, fiz, x0, y0, w, h, s: int, cull: int = 0, behind=None) -> None:
    """Faces [k] whose box holds at most 2 x 2 pixel centres: test each centre, z-test the inside ones.

    fx, fy: 3 x [k] corner positions (pixel-centre units); fiz: 3 x [k] corner 1/z; x0, y0: first
    centre of the box; w, h: box size minus one (0 or 1); cull: the faces' known winding, if any.
    """
    x_0, x_1, x_2 = fx
    y_0, y_1, y_2 = fy
    # edge functions at the first centre and their steps per pixel in x and y
    e = [edge(x_1, y_1, x_2, y_2, x0, y0), edge(x_2, y_2, x_0, y_0, x0, y0), edge(x_0, y_0, x_1, y_1, x0, y0)]
    step_x = [y_1 - y_2, y_2 - y_0, y_0 - y_1]
    step_y = [x_2 - x_1, x_0 - x_2, x_1 - x_0]
    area = e[0] + e[1] + e[2]  # twice the signed area (edge functions sum to it anywhere)
    # orient every face like a counter-clockwise one (area < 0), so that inside = all edges <= 0
    if not cull:
        sign = torch.sign(area).neg_()  # 0 for degenerate faces: never inside
        e = [x * sign for x in e]
        step_x = [x * sign for x in step_x]
        step_y = [x * sign for x in step_y]
        area = area * sign  # -|area|; the 1/z interpolation below is unchanged by the flip
        valid = sign != 0
    elif cull < 0:  # only clockwise faces were kept
        e = [-x for x in e]
        step_x = [-x for x in step_x]
        step_y = [-x for x in step_y]
        area = -area
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        ev = [e[i] + (dx * step_x[i] + dy * step_y[i]) if dx or dy else e[i] for i in range(3)]
        inside = (ev[0] <= 0) & (ev[1] <= 0) & (ev[2] <= 0)
        if not cull:
            inside &= valid
        if dx:
            inside &= w >= 1
        if dy:
            inside &= h >= 1
        sel = inside.nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        izv = (ev[0][sel] * fiz[0][sel] + ev[1][sel] * fiz[1][sel] + ev[2][sel] * fiz[2][sel]) / area[sel]
        pix = (y0[sel].long() + dy) * s + x0[sel].long() + dx
        depth_test(zbuf, pix, izv, face_ids[sel], behind)


def depth_test(zbuf, pix, izv, face_ids, behind=None) -> None:
    """Keep the largest 1/z per pixel: zbuf[pix] = max(zbuf[pix], (bits(1/z) << 32) | face);
    with ``behind``, only points with 1/z < behind[pix]."""
    if behind is not None:
        keep = (izv < behind[pix]).nonzero().squeeze(1)
        pix, izv, face_ids = pix[keep], izv[keep], face_ids[keep]
    bits = izv.contiguous().view(torch.int32).to(torch.int64)
    zbuf.scatter_reduce_(0, pix, (bits << 32) | face_ids, reduce="amax")


def plane_coefficients(vx, vy, fiz):
    """[k, 4, 3] (a, b, c) of value = a*px + b*py + c for the three barycentrics and 1/z.

    vx, vy, fiz: [k, 3] vertex positions (relative to the face's box origin) and 1/z. Faces with
    zero screen area get all-negative barycentric planes (never inside).
    """
    ax, ay = vx[:, [1, 2, 0]], vy[:, [1, 2, 0]]
    bx, by = vx[:, [2, 0, 1]], vy[:, [2, 0, 1]]
    ea = ay - by
    eb = bx - ax
    ec = (by - ay) * ax - (bx - ax) * ay
    area = ec[:, 0] + ea[:, 0] * vx[:, 0] + eb[:, 0] * vy[:, 0]  # edge 1->2 at vertex 0
    bad = area == 0
    inv = (1.0 / torch.where(bad, torch.ones_like(area), area))[:, None]
    bary = torch.stack([ea * inv, eb * inv, ec * inv], dim=2)  # [k, 3 planes, 3 coefficients]
    if bool(bad.any()):
        bary[bad] = torch.tensor([0.0, 0.0, -1.0], device=bary.device)
    izc = (bary * fiz[:, :, None]).sum(dim=1, keepdim=True)  # [k, 1, 3]
    return torch.cat([bary, izc], dim=1)


def scatter_boxes(zbuf, face_ids, x0, y0, w, h, coef, s: int, max_candidates: int, behind=None) -> None:
    """Test every pixel centre in each face's w x h box and z-test the inside ones."""
    bucket = ceil_log2(w) * 16 + ceil_log2(h)
    order = torch.argsort(bucket)
    keys, counts = torch.unique_consecutive(bucket[order], return_counts=True)
    dev = zbuf.device
    start = 0
    for key, count in zip(keys.tolist(), counts.tolist()):
        sel = order[start:start + count]
        start += count
        bw, bh = 1 << (key // 16), 1 << (key % 16)
        k = bw * bh
        dx = torch.arange(bw, device=dev).repeat(bh)  # [k]
        dy = torch.arange(bh, device=dev).repeat_interleave(bw)  # [k]
        cx = dx.float()  # pixel centres relative to the box's first centre
        cy = dy.float()
        step = max(1, max_candidates // k)
        for i in range(0, count, step):
            g = sel[i:i + step]
            c = coef[g]  # [g, 4, 3]
            vals = c[:, None, :, 0] * cx[None, :, None] + c[:, None, :, 1] * cy[None, :, None] + c[:, None, :, 2]
            inside = (vals[..., :3] >= 0).all(dim=2)  # [g, k]
            inside &= (dx[None, :] < w[g, None]) & (dy[None, :] < h[g, None])
            gi, ki = inside.nonzero(as_tuple=True)
            if gi.numel() == 0:
                continue
            pix = (y0[g][gi] + dy[ki]) * s + x0[g][gi] + dx[ki]
            depth_test(zbuf, pix, vals[gi, ki, 3], face_ids[g][gi], behind)


def ceil_log2(n: torch.Tensor) -> torch.Tensor:
    """Smallest e with 2**e >= n, for integer n >= 1 (frexp of n - 1 gives it exactly)."""
    return torch.frexp((n - 1).double()).exponent.long()
