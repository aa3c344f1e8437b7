"""Visibility and barycentrics from PyTorch3D's mesh rasterizer: the optional "pytorch3d" backend.

The pack's own renderer finds the visible face per pixel with its z-buffer rasterizer and then
intersects the pixel's ray with that face exactly. This backend hands both steps to PyTorch3D
(``MeshRasterizer`` with ``FoVPerspectiveCameras``, perspective-correct barycentrics, one face per
pixel, no blur); colours, point maps and textures then follow the pack's own rules
(:meth:`rendering.views.Shader.surface`), so the two backends differ only where rasterization does.

Camera: the pack's camera space is x right, y up, z forward; PyTorch3D's view space is x left,
y up, z forward. Vertices are taken to the pack's camera space, x is negated, and PyTorch3D gets
an identity view transform with the same vertical fov, near and far planes. With that, PyTorch3D's
pixel (i, j) centre is the pack's (row 0 at the top, column 0 on the left).

PyTorch3D is a compiled extension built for one torch: it is imported only when this backend is
chosen, and a missing or mismatched build gives an error that says what to install.
"""
from __future__ import annotations

import torch

from .errors import AssetError

#: the PyPI build this pack is tested with, and the torch it was compiled for
PYTORCH3D_PACKAGE = "easypytorch3d==0.7.9.post1"
PYTORCH3D_TORCH = "2.11"


def require_pytorch3d():
    """The ``pytorch3d`` modules this backend uses, or an AssetError saying exactly what to install."""
    try:
        from pytorch3d.renderer import FoVPerspectiveCameras, MeshRasterizer, RasterizationSettings
        from pytorch3d.structures import Meshes
    except ImportError as e:
        raise AssetError(
            f"the 'pytorch3d' rendering backend needs PyTorch3D, which does not load here ({e}). Its PyPI build "
            f"`pip install {PYTORCH3D_PACKAGE}` is compiled for torch {PYTORCH3D_TORCH}.x (this ComfyUI has torch "
            f"{torch.__version__}); use the 'pack' backend otherwise: it gives the same views") from None
    return FoVPerspectiveCameras, MeshRasterizer, RasterizationSettings, Meshes


def pytorch3d_available() -> bool:
    """Whether PyTorch3D loads here (installed and built for this torch)."""
    try:
        require_pytorch3d()
        return True
    except AssetError:
        return False


class PyTorch3DRasterizer:
    """Per view: face index, barycentrics and depth of every pixel, from PyTorch3D."""

    def __init__(self, verts: torch.Tensor, faces: torch.Tensor, resolution: int, device: torch.device):
        self._cameras_cls, rasterizer_cls, settings_cls, self._meshes_cls = require_pytorch3d()
        self.verts = verts.to(device=device, dtype=torch.float32)  # [V, 3] rendering frame
        self.faces = faces.to(device=device, dtype=torch.int64)  # [F, 3]
        self.device = device
        # bin_size 0: the naive rasterizer, exact for any mesh size (no per-bin face limit)
        self.settings = settings_cls(image_size=resolution, blur_radius=0.0, faces_per_pixel=1,
                                     perspective_correct=True, cull_backfaces=False, bin_size=0)
        self.rasterizer_cls = rasterizer_cls

    def view(self, cam) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(face [H·W] int64, -1 = background; barycentrics [H·W, 3] float32; depth [H·W] float32)."""
        from .camera import FAR, NEAR
        rotation = cam.rotation.to(device=self.device, dtype=torch.float32)
        eye = cam.eye.to(device=self.device, dtype=torch.float32)
        view = (self.verts - eye) @ rotation.T  # pack camera space: x right, y up, z forward
        view = view * torch.tensor([-1.0, 1.0, 1.0], device=self.device)  # PyTorch3D: x left
        mesh = self._meshes_cls(verts=[view], faces=[self.faces])
        identity = torch.eye(3, device=self.device)[None]
        cameras = self._cameras_cls(znear=NEAR, zfar=FAR, fov=cam.fov, degrees=True, aspect_ratio=1.0,
                                    R=identity, T=torch.zeros(1, 3, device=self.device), device=self.device)
        fragments = self.rasterizer_cls(cameras=cameras, raster_settings=self.settings)(mesh)
        face = fragments.pix_to_face[0, ..., 0].reshape(-1)
        bary = fragments.bary_coords[0, ..., 0, :].reshape(-1, 3)
        depth = fragments.zbuf[0, ..., 0].reshape(-1)
        return face, bary, depth
