"""The in-memory 3D asset: one flattened triangle mesh with its base-colour sources.

Conventions (docs/method.md §1):
* ``vertices`` are in the asset's own frame, every scene transform applied.
* Point-map colour of a point p: ``(p - vmin) / (vmax - vmin)`` per axis over all vertices;
  an axis with zero extent (flat asset) gets the constant 0.5 instead of a division by zero.
* Rendering frame: centred at the bounding-box centre, scaled by ``2 / largest side``.
* Base colour per face: ``textures[face_texture[f]]`` sampled at the UV (texture × factor) times
  the per-vertex ``colors`` (glTF COLOR_0, ones without it), or, for faces with
  ``face_texture == -1``, the per-vertex display colour ``colors``.
* Cut-outs (glTF alphaMode MASK): a surface point of a face with ``face_cutoff`` c > 0 is not
  drawn where alpha = interpolated ``alpha`` × texel alpha is below c; what lies behind shows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import AssetError

MID_GREY = 0.5


@dataclass
class Texture:
    """One base-colour texture with its glTF factor."""

    image: torch.Tensor  # [H, W, 3] uint8, sRGB-encoded texels, row 0 = top of the image
    factor: torch.Tensor  # [3] float32, linear-light baseColorFactor (ones = no factor)
    wrap: tuple = (10497, 10497)  # glTF sampler wrapS, wrapT: REPEAT, CLAMP_TO_EDGE (33071), MIRRORED_REPEAT (33648)
    alpha: torch.Tensor | None = None  # [H, W] uint8 texel alpha, kept only for alphaMode MASK materials

    def has_factor(self) -> bool:
        return bool((self.factor != 1.0).any())


@dataclass
class Asset:
    """A triangle mesh ready to render; build it with ``load_asset`` or ``asset_from_mesh``."""

    vertices: torch.Tensor  # [V, 3] float32, asset frame
    faces: torch.Tensor  # [F, 3] int64, indices into vertices
    colors: torch.Tensor  # [V, 3] float32 in [0, 1]: display colour of untextured faces
    uv: torch.Tensor | None = None  # [V, 2] float32, OpenGL/trimesh convention (v up)
    face_texture: torch.Tensor | None = None  # [F] int64, index into textures or -1
    textures: list[Texture] = field(default_factory=list)
    name: str = ""
    alpha: torch.Tensor | None = None  # [V] float32 alpha (glTF factor × COLOR_0) where some face is a cut-out
    face_cutoff: torch.Tensor | None = None  # [F] float32 alphaMode MASK cutoff (0 = opaque face), or None
    warnings: list[str] = field(default_factory=list)  # what the loader could not honour (the asset still renders)
    _orientation: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        validate_geometry(self.vertices, self.faces)
        if self.colors.shape != self.vertices.shape:
            raise AssetError(f"colours must be one RGB per vertex, got {tuple(self.colors.shape)}")
        if self.textures and (self.uv is None or self.face_texture is None):
            raise AssetError("a textured asset needs UVs and a per-face texture index")

    @property
    def has_cut_outs(self) -> bool:
        return self.face_cutoff is not None and bool((self.face_cutoff > 0).any())

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    def description(self) -> str:
        """A few lines for the user: name, size, textures, then each warning."""
        textures = ""
        if self.textures:
            sizes = ", ".join(f"{t.image.shape[1]}×{t.image.shape[0]}" for t in self.textures[:4])
            more = ", …" if len(self.textures) > 4 else ""
            textures = f", {len(self.textures)} texture{'s' if len(self.textures) > 1 else ''} ({sizes}{more})"
        lines = [f"{self.name or 'asset'}: {self.num_faces:,} faces, {self.num_vertices:,} vertices{textures}"]
        return "\n".join(lines + [f"WARNING: {w}" for w in self.warnings])

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(vmin [3], vmax [3]) float64 over all vertices."""
        v = self.vertices.double()
        return v.min(dim=0).values, v.max(dim=0).values

    def point_map_colors(self) -> torch.Tensor:
        """[V, 3] float32 point-map colour of every vertex (docs/method.md §1.2)."""
        return point_map_coords(self.vertices.double(), *self.bounds()).float()

    def normalisation(self) -> tuple[torch.Tensor, float]:
        """(centre [3] float64, scale): rendering frame = (p - centre) * scale (docs/method.md §1.3)."""
        vmin, vmax = self.bounds()
        return (vmin + vmax) / 2, 2.0 / float((vmax - vmin).max())

    def normalised_vertices(self) -> torch.Tensor:
        """[V, 3] float64 vertices in the rendering frame (inside [-1, 1]^3)."""
        centre, scale = self.normalisation()
        return (self.vertices.double() - centre) * scale

    def closed_orientation(self) -> int:
        """+1/-1 if made of closed shells all wound outward/inward, else 0 (cached)."""
        if self._orientation is None:
            from .topology import closed_orientation
            self._orientation = closed_orientation(self.vertices, self.faces)
        return self._orientation


def point_map_coords(p: torch.Tensor, vmin: torch.Tensor, vmax: torch.Tensor) -> torch.Tensor:
    """[..., 3] point-map colour of points p (asset frame); flat axes give 0.5."""
    extent = vmax - vmin
    flat = extent <= 0
    c = (p - vmin) / torch.where(flat, torch.ones_like(extent), extent)
    return torch.where(flat, torch.full_like(c, 0.5), c)


def validate_geometry(vertices: torch.Tensor, faces: torch.Tensor) -> None:
    """Raise AssetError unless vertices [V,3] / faces [F,3] make a renderable mesh."""
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise AssetError(f"vertices must have shape [V, 3], got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise AssetError(f"faces must be triangles with shape [F, 3], got {tuple(faces.shape)}")
    if faces.shape[0] == 0 or vertices.shape[0] == 0:
        raise AssetError("the asset has no faces: nothing to render (point clouds and lines are not supported)")
    if faces.dtype.is_floating_point or faces.dtype == torch.bool:
        raise AssetError(f"face indices must be integers, got {faces.dtype}")
    if int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]:
        raise AssetError(f"face indices must lie in 0..{vertices.shape[0] - 1}, "
                         f"got {int(faces.min())}..{int(faces.max())}")
    bad = ~torch.isfinite(vertices).all(dim=1)
    if bool(bad.any()):
        raise AssetError(f"the asset has {int(bad.sum())} vertices with NaN or infinite coordinates")
    used = vertices[faces.reshape(-1)].double()
    extent = used.max(dim=0).values - used.min(dim=0).values
    if not bool(torch.isfinite(vertices.double().max(0).values - vertices.double().min(0).values).all()):
        raise AssetError("the asset's coordinates are too large to handle (its size overflows)")
    if not bool((extent > 0).any()):
        raise AssetError("the asset has zero size: all its vertices are at the same point")


def as_tensor(x, dtype: torch.dtype, name: str) -> torch.Tensor:
    """numpy array / tensor / nested list -> CPU tensor of dtype."""
    try:
        t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise AssetError(f"{name} is not a numeric array: {e}") from e
    if t.dtype == torch.bool or t.is_complex():
        raise AssetError(f"{name} must be numeric, got {t.dtype}")
    return t.to(dtype)


def asset_from_mesh(vertices, faces, colors=None, name: str = "mesh") -> Asset:
    """Asset from plain arrays: vertices [V,3], faces [F,3], optional colours [V,3] in 0..1.

    Untextured: faces show ``colors`` or mid grey. Accepts torch tensors or numpy arrays; a
    leading batch dimension of 1 (core ComfyUI MESH layout [1,V,3]/[1,F,3]) is dropped.
    """
    v = as_tensor(vertices, torch.float32, "vertices")
    f = faces.detach().cpu() if isinstance(faces, torch.Tensor) else torch.from_numpy(np.asarray(faces))
    if f.dtype.is_floating_point:
        if not bool(torch.isfinite(f).all()) or bool((f != f.round()).any()):
            raise AssetError("face indices must be whole numbers")
    f = f.to(torch.int64)
    if v.ndim == 3 and v.shape[0] == 1:
        v = v[0]
    if f.ndim == 3 and f.shape[0] == 1:
        f = f[0]
    validate_geometry(v, f)
    if colors is None:
        c = torch.full_like(v, MID_GREY)
    else:
        c = as_tensor(colors, torch.float32, "colors")
        if c.ndim == 3 and c.shape[0] == 1:
            c = c[0]
        if c.ndim != 2 or c.shape[0] != v.shape[0] or c.shape[1] not in (3, 4):
            raise AssetError(f"colors must have shape [V, 3] or [V, 4], got {tuple(c.shape)}")
        c = c[:, :3].clamp(0, 1)
    return Asset(vertices=v.contiguous(), faces=f.contiguous(), colors=c.contiguous(), name=name)
