"""The token groups' places in the sequence (``Layout``), patchify / unpatchify and RoPE positions
(docs/method.md §2), all read from the table of groups in ``groups.py``.

====================  ====================  ==========
group                 tokens                ids
====================  ====================  ==========
text                  L (T5 tokens)         0, 0, 0
target (each)         n = (H/2)(W/2)        0, r, c
reference (each)      m = (h/2)(w/2) a view 0, r, c-32
====================  ====================  ==========
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .groups import (DOMAINS, GROUPS, IMAGE_GROUPS, REF_COLUMN_SHIFT, REFERENCE_POINT_MAP, REFERENCE_RGB,
                     REFERENCE_ROLE, REFERENCES, TARGET_POINT_MAP, TARGET_RGB, TARGET_ROLE, TARGETS, TEXT, TEXT_ROLE,
                     TOKEN_GROUPS)

__all__ = ["DOMAINS", "GROUPS", "IMAGE_GROUPS", "REF_COLUMN_SHIFT", "REFERENCE_POINT_MAP", "REFERENCE_RGB",
           "TARGET_POINT_MAP", "TARGET_RGB", "TEXT", "Layout", "grid_ids", "image_tokens", "layout_of", "patchify",
           "rope", "sequence_ids", "unpatchify"]


@dataclass(frozen=True)
class Layout:
    """Sizes of the token groups of one call. ``tgt`` = n tokens per target, ``views`` = N, ``ref`` = m
    tokens per reference view, ``refs_in_sequence``: whether the reference tokens are computed in this
    call (False when their keys/values come from a reference cache)."""
    txt: int
    tgt: int
    tgt_hw: tuple[int, int]
    views: int
    ref: int
    ref_hw: tuple[int, int]
    refs_in_sequence: bool = True

    @property
    def prefix(self) -> int:
        """Text + every target (the tokens before the references)."""
        return self.txt + len(TARGETS) * self.tgt

    def size(self, group) -> int:
        """Number of tokens of ``group`` (a :class:`~.groups.TokenGroup`) in the keys."""
        return {TEXT_ROLE: self.txt, TARGET_ROLE: self.tgt, REFERENCE_ROLE: self.views * self.ref}[group.role]

    def segments(self, refs: bool) -> list[tuple[str, int, int]]:
        """(group, start, stop) over text + image tokens, the reference groups only when ``refs``."""
        segs, at = [], 0
        for g in TOKEN_GROUPS:
            n = self.size(g)
            if not g.per_view or (refs and n):
                segs.append((g.name, at, at + n))
            at += n
        return segs

    def key_segments(self) -> list[tuple[str, int, int]]:
        """:meth:`segments` of the attention keys: the references are there, computed or cached."""
        return self.segments(refs=True)

    def sequence_segments(self) -> list[tuple[str, int, int]]:
        """(group, start, stop) over the tokens computed in this call, text + image (single blocks)."""
        return self.segments(refs=self.refs_in_sequence)

    def image_segments(self, offset: int = 0) -> list[tuple[str, int, int]]:
        """(group, start, stop) of the image-stream tokens, ``offset`` added (e.g. the text length)."""
        return [(g, a - self.txt + offset, b - self.txt + offset) for g, a, b in self.sequence_segments()
                if g != TEXT]


def layout_of(latents: dict[str, Tensor], txt_tokens: int, patch: int, refs_in_sequence: bool = True) -> Layout:
    """The layout for the groups' latents (targets [B, C, H, W], references [B, N, C, h, w])."""
    h, w = latents[TARGETS[0].latent].shape[-2:]
    refs = latents[REFERENCES[0].latent]
    n, rh, rw = refs.shape[1], *refs.shape[-2:]
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


def image_tokens(latents: dict[str, Tensor], lay: Layout, patch: int) -> Tensor:
    """The image stream in sequence order, each image group's tokens from ``latents[group.latent]``
    (targets [B, C, H, W], references [B, N, C, h, w], the latter only when computed):
    [B, 2n (+ 2Nm), C·p·p] in the first target's dtype."""
    dtype = latents[TARGETS[0].latent].dtype
    parts = []
    for g in (g for g in TOKEN_GROUPS if g.latent):
        x = latents[g.latent]
        if not g.per_view:
            parts.append(patchify(x.to(dtype), patch))
        elif lay.refs_in_sequence and lay.views:
            b, n = x.shape[:2]
            views = x.to(dtype).reshape(b * n, *x.shape[2:])
            parts.append(patchify(views, patch).reshape(b, n * lay.ref, -1))
    return torch.cat(parts, dim=1)


def grid_ids(rows: int, cols: int, col_shift: int = 0, axes: int = 3, device=None) -> Tensor:
    """RoPE ids (0, r, c - col_shift) of a rows×cols token grid, row-major, float32 [rows·cols, axes]."""
    ids = torch.zeros(rows, cols, axes, dtype=torch.float32, device=device)
    ids[..., 1] = torch.arange(rows, dtype=torch.float32, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, dtype=torch.float32, device=device)[None, :] - col_shift
    return ids.reshape(rows * cols, axes)


def sequence_ids(layout: Layout, axes: int = 3, col_shift: int = REF_COLUMN_SHIFT, device=None) -> Tensor:
    """RoPE ids of the tokens computed in this call, in order (text zeros; targets (0,r,c); every
    reference view (0,r,c-32)): [L, axes]. Reference ids are left out when the references come from
    a cache."""
    tgt = grid_ids(*layout.tgt_hw, axes=axes, device=device)
    parts = []
    for g in TOKEN_GROUPS:
        if g.role == TEXT_ROLE:
            parts.append(torch.zeros(layout.txt, axes, dtype=torch.float32, device=device))
        elif g.role == TARGET_ROLE:
            parts.append(tgt)
        elif layout.refs_in_sequence and layout.views:
            ref = grid_ids(*layout.ref_hw, col_shift=col_shift, axes=axes, device=device)
            parts += [ref] * layout.views
    return torch.cat(parts, dim=0)


def rope(flux, ids: Tensor) -> Tensor:
    """Flux's RoPE frequencies for ids [L, axes] -> [1, 1, L, d/2, 2, 2] (broadcast over batch and heads)."""
    return flux.pe_embedder(ids[None])
