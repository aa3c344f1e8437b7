"""Asset -> plain mesh arrays (for ComfyUI's core MESH, which core SaveGLB/Preview3D show)."""
from __future__ import annotations

import torch

from .asset import Asset


def asset_to_mesh_arrays(asset: Asset, normalised: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertices [V, 3] float32, faces [F, 3] int64); normalised=True gives the rendering frame."""
    v = asset.normalised_vertices().float() if normalised else asset.vertices.float()
    return v.contiguous(), asset.faces.long().contiguous()
