"""Is the mesh a set of closed, consistently oriented shells? Then back faces can be skipped.

For a closed surface seen from outside, the nearest surface along any ray is where the ray
enters a shell: a front face when every shell is wound outward (a back face when every shell is
wound inward). Skipping the other half of the faces halves the rasterizer's work and gives the
same image. Vertices are welded by position first (UV seams duplicate vertices), to within
about 1e-6 of the asset's size: a gap that narrow cannot change a rendered pixel.
"""
from __future__ import annotations

import numpy as np
import torch

WELD_LEVELS = 1 << 20  # weld grid: about 1e-6 of the asset's largest side


def closed_orientation(vertices: torch.Tensor, faces: torch.Tensor) -> int:
    """+1 if every connected shell is closed and wound outward (positive volume), -1 if every
    shell is closed and wound inward, 0 otherwise (open, non-manifold, mixed or unknown)."""
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
    except ImportError:
        return 0
    v = vertices.detach().cpu().numpy().astype(np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    step = max(float((hi - lo).max()), 1e-30) / WELD_LEVELS
    q = np.round((v - lo) / step).astype(np.int64)  # [V, 3] in 0..2^20: 21 bits per axis
    _, weld = np.unique((q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2], return_inverse=True)
    f = weld.reshape(-1)[faces.detach().cpu().numpy()]  # [F, 3] welded indices
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    if len(f) == 0:
        return 0
    n = int(weld.max()) + 1
    a = f.reshape(-1)
    b = f[:, [1, 2, 0]].reshape(-1)
    codes = a.astype(np.int64) * n + b
    codes.sort()
    if np.any(codes[1:] == codes[:-1]):
        return 0  # a directed edge used twice: inconsistent winding or non-manifold
    reverse = b.astype(np.int64) * n + a
    reverse.sort()
    if not np.array_equal(codes, reverse):
        return 0  # some edge has no opposite: the surface is open
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    vw = np.zeros((n, 3), dtype=np.float64)
    vw[weld.reshape(-1)] = v - (lo + hi) / 2
    tri = vw[f]
    vol = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2]))  # 6 x signed volume
    shell_vol = np.bincount(label[f[:, 0]], weights=vol)
    used = np.unique(label[f[:, 0]])
    shell_vol = shell_vol[used]
    if np.all(shell_vol > 0):
        return 1
    if np.all(shell_vol < 0):
        return -1
    return 0
