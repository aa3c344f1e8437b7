"""Token groups, their order in the sequence and their RoPE positions (docs/method.md §2).

====================  ====================  ==========  ========  ========  ======================
group                 tokens                ids         timestep  guidance  LoRAs (§3)
====================  ====================  ==========  ========  ========  ======================
text                  L (T5 tokens)         0, 0, 0     t         g         none (text stream)
target_rgb            n = (H/2)(W/2)        0, r, c     t         g         none; domain E(0)
target_point_map      n                     0, r, c     t         g         Domain; domain E(1)
reference_rgb i       m = (h/2)(w/2) each   0, r, c-32  0         1.0       Reference; E(0)
reference_point_map i m each                0, r, c-32  0         1.0       Reference + Domain; E(1)
====================  ====================  ==========  ========  ========  ======================
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TEXT, TARGET_RGB, TARGET_POINT_MAP, REFERENCE_RGB, REFERENCE_POINT_MAP = (
    "text", "target_rgb", "target_point_map", "reference_rgb", "reference_point_map")
GROUPS = (TEXT, TARGET_RGB, TARGET_POINT_MAP, REFERENCE_RGB, REFERENCE_POINT_MAP)
IMAGE_GROUPS = GROUPS[1:]
#: Domain of each image group (0 = RGB, 1 = point map); text has none.
DOMAINS = {TARGET_RGB: 0, TARGET_POINT_MAP: 1, REFERENCE_RGB: 0, REFERENCE_POINT_MAP: 1}

#: The release shifts reference columns by -32 tokens (the width of a 512 px reference), whatever
#: the target size (§2).
REF_COLUMN_SHIFT = 32


@dataclass(frozen=True)
class Layout:
    """Sizes of the token groups of one call. ``views`` = N, ``ref`` = m tokens per reference view,
    ``refs_in_sequence``: whether the reference tokens are computed in this call (False when their
    keys/values come from a reference cache)."""
    txt: int
    tgt: int
    tgt_hw: tuple[int, int]
    views: int
    ref: int
    ref_hw: tuple[int, int]
    refs_in_sequence: bool = True

    @property
    def prefix(self) -> int:
        """Text + both targets."""
        return self.txt + 2 * self.tgt

    def image_segments(self, offset: int = 0) -> list[tuple[str, int, int]]:
        """(group, start, stop) of the image-stream tokens, ``offset`` added (e.g. the text length)."""
        segs = [(TARGET_RGB, 0, self.tgt), (TARGET_POINT_MAP, self.tgt, 2 * self.tgt)]
        if self.refs_in_sequence and self.views:
            half = self.views * self.ref
            segs += [(REFERENCE_RGB, 2 * self.tgt, 2 * self.tgt + half),
                     (REFERENCE_POINT_MAP, 2 * self.tgt + half, 2 * self.tgt + 2 * half)]
        return [(g, a + offset, b + offset) for g, a, b in segs]

    def sequence_segments(self) -> list[tuple[str, int, int]]:
        """(group, start, stop) over the whole sequence text + image tokens (single blocks)."""
        return [(TEXT, 0, self.txt)] + self.image_segments(self.txt)


def layout_of(x_rgb: Tensor, refs_rgb: Tensor, txt_tokens: int, patch: int, refs_in_sequence: bool = True) -> Layout:
    """The layout for target latents [B, C, H, W] and reference latents [B, N, C, h, w]."""
    h, w = x_rgb.shape[-2:]
    n, rh, rw = refs_rgb.shape[1], *refs_rgb.shape[-2:]
    return Layout(txt=txt_tokens, tgt=(h // patch) * (w // patch), tgt_hw=(h // patch, w // patch), views=n,
                  ref=(rh // patch) * (rw // patch), ref_hw=(rh // patch, rw // patch),
                  refs_in_sequence=refs_in_sequence)


def patchify(x: Tensor, patch: int = 2) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C·p·p], as Flux's ``process_img`` packs latents."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5).reshape(
        b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: Tensor, h: int, w: int, patch: int = 2) -> Tensor:
    """Inverse of :func:`patchify` for an [B, H, W] latent grid of size h×w (in latent pixels)."""
    b, _, cpp = tokens.shape
    c = cpp // (patch * patch)
    return tokens.reshape(b, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_tokens(x_rgb: Tensor, x_point_map: Tensor, refs_rgb: Tensor, refs_point_map: Tensor, lay: Layout,
                 patch: int) -> Tensor:
    """The image stream in sequence order: target RGB, target point map, then (when computed) all RGB
    views and all point-map views: [B, 2n (+ 2Nm), C·p·p] in ``x_rgb``'s dtype."""
    dtype = x_rgb.dtype
    parts = [patchify(x_rgb, patch), patchify(x_point_map.to(dtype), patch)]
    if lay.refs_in_sequence and lay.views:
        b, n = refs_rgb.shape[:2]
        for refs in (refs_rgb, refs_point_map):
            views = refs.to(dtype).reshape(b * n, *refs.shape[2:])
            parts.append(patchify(views, patch).reshape(b, n * lay.ref, -1))
    return torch.cat(parts, dim=1)


def grid_ids(rows: int, cols: int, col_shift: int = 0, axes: int = 3, device=None) -> Tensor:
    """RoPE ids (0, r, c - col_shift) of a rows×cols token grid, row-major, float32 [rows·cols, axes]."""
    ids = torch.zeros(rows, cols, axes, dtype=torch.float32, device=device)
    ids[..., 1] = torch.arange(rows, dtype=torch.float32, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, dtype=torch.float32, device=device)[None, :] - col_shift
    return ids.reshape(rows * cols, axes)


def sequence_ids(layout: Layout, axes: int = 3, col_shift: int = REF_COLUMN_SHIFT, device=None) -> Tensor:
    """RoPE ids of the whole sequence in order (text zeros; both targets (0,r,c); every reference view
    (0,r,c-32)): [L, axes]. Reference ids are left out when the references come from a cache."""
    parts = [torch.zeros(layout.txt, axes, dtype=torch.float32, device=device)]
    tgt = grid_ids(*layout.tgt_hw, axes=axes, device=device)
    parts += [tgt, tgt]
    if layout.refs_in_sequence and layout.views:
        ref = grid_ids(*layout.ref_hw, col_shift=col_shift, axes=axes, device=device)
        parts += [ref] * (2 * layout.views)
    return torch.cat(parts, dim=0)


def rope(flux, ids: Tensor) -> Tensor:
    """Flux's RoPE frequencies for ids [L, axes] -> [1, 1, L, d/2, 2, 2] (broadcast over batch and heads)."""
    return flux.pe_embedder(ids[None])
