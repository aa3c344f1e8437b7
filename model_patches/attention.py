"""Group attention, block-wise (docs/method.md §4): each query group attends only to the key groups
the mask allows (the ``sees`` column of the table in ``groups.py``), with ComfyUI's
``optimized_attention``; no L×L mask is ever built.

=======================  ============================================================
query group              key groups
=======================  ============================================================
text, target RGB         everything
target point map         everything but text
reference view i         text, targets, and its own RGB / point-map pair (view i)
=======================  ============================================================

Unmasked (the release's black-reference guidance pass): every group sees every group. With
isolated references (the cached variant) the references see only references: their own pair when
masked, all references when unmasked.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .groups import GROUP, REFERENCES
from .tokens import Layout


def _reference_sees() -> frozenset[str]:
    """The groups a reference view sees besides its own views of the reference groups. The block-wise
    evaluation below takes one such set for every reference group, which sees every reference group."""
    sees = {frozenset(g.sees) for g in REFERENCES}
    refs = {g.name for g in REFERENCES}
    if len(sees) != 1 or not refs <= next(iter(sees)):
        raise NotImplementedError("the reference groups must all see the same groups, every reference group among them")
    return next(iter(sees)) - refs


REFERENCE_SEES = _reference_sees()


def attend(q: Tensor, k: Tensor, v: Tensor, transformer_options) -> Tensor:
    """ComfyUI's optimized attention on [B, H, Lq, d] × [B, H, Lk, d] -> [B, Lq, H·d] (honours
    ``transformer_options["optimized_attention_override"]``)."""
    import comfy.ldm.flux.math as flux_math
    return flux_math.optimized_attention(q, k, v, q.shape[1], skip_reshape=True, transformer_options=transformer_options)


def view_pairs(t: Tensor, views: int, m: int, groups: int = len(REFERENCES)) -> Tensor:
    """Reference tokens [B, H, R·N·m, d] (all views of each reference group in turn) -> the R groups of
    one view together per batch row (RGB view i, point-map view i): [B·N, H, R·m, d]."""
    b, h, _, d = t.shape
    return t.reshape(b, h, groups, views, m, d).permute(0, 3, 1, 2, 4, 5).reshape(b * views, h, groups * m, d)


def from_view_pairs(o: Tensor, b: int, views: int, m: int, groups: int = len(REFERENCES)) -> Tensor:
    """Inverse of :func:`view_pairs` on attention outputs [B·N, R·m, C] -> [B, R·N·m, C]."""
    c = o.shape[-1]
    return o.reshape(b, views, groups, m, c).permute(0, 2, 1, 3, 4).reshape(b, groups * views * m, c)


def key_ranges(names, key_segments) -> list[tuple[int, int]]:
    """The (start, stop) ranges of the key groups ``names``, neighbours joined."""
    ranges = []
    for g, a, b in key_segments:
        if g in names and b > a:
            if ranges and ranges[-1][1] == a:
                ranges[-1] = (ranges[-1][0], b)
            else:
                ranges.append((a, b))
    return ranges


def keys_in(t: Tensor, ranges) -> Tensor:
    """The tokens of ``t`` [B, H, L, d] in ``ranges`` (the tensor itself when they are all of it)."""
    if ranges == [(0, t.shape[2])]:
        return t
    return torch.cat([t[:, :, a:b] for a, b in ranges], dim=2) if len(ranges) != 1 else t[:, :, slice(*ranges[0])]


def _masked_shared(q, k, v, lay: Layout, opts) -> list[Tensor]:
    """The group mask for the text and target queries: consecutive query groups that see the same key
    groups attend together."""
    keys, runs = lay.key_segments(), []
    for g, a, b in lay.segments(refs=False):
        ranges = key_ranges(GROUP[g].sees, keys)
        if runs and runs[-1][2] == ranges and runs[-1][1] == a:
            runs[-1][1] = b
        else:
            runs.append([a, b, ranges])
    return [attend(q[:, :, a:b], keys_in(k, r), keys_in(v, r), opts) for a, b, r in runs]


def _one_mode(q, k, v, lay: Layout, masked: bool, isolated_refs: bool, opts) -> Tensor:
    """Group attention for a batch that shares one mode. q covers the tokens computed in this call
    (text, targets[, references]); k/v also hold cached reference keys when the references are not
    in the sequence."""
    P = lay.prefix
    refs_q = lay.refs_in_sequence and lay.views > 0
    if not masked and not isolated_refs:
        return attend(q, k, v, opts)  # everything sees everything (release guidance pass)
    outs = _masked_shared(q, k, v, lay, opts) if masked else [attend(q[:, :, :P], k, v, opts)]
    if refs_q:
        qr, kr, vr = q[:, :, P:], k[:, :, P:], v[:, :, P:]
        if not masked:  # isolated refs, unmasked: the references see each other only
            outs.append(attend(qr, kr, vr, opts))
        else:
            b, N, m = q.shape[0], lay.views, lay.ref
            kp, vp = view_pairs(kr, N, m), view_pairs(vr, N, m)
            shared = [] if isolated_refs else key_ranges(REFERENCE_SEES, lay.key_segments())
            if shared:  # view i -> what the table lets it see, and its own views
                def expand(t):
                    s = keys_in(t, shared)
                    return s[:, None].expand(b, N, *s.shape[1:]).reshape(b * N, *s.shape[1:])
                kp, vp = torch.cat([expand(k), kp], dim=2), torch.cat([expand(v), vp], dim=2)
            outs.append(from_view_pairs(attend(view_pairs(qr, N, m), kp, vp, opts), b, N, m))
    return torch.cat(outs, dim=1)


def group_attention(q: Tensor, k: Tensor, v: Tensor, lay: Layout, masked: Sequence[bool], isolated_refs: bool,
                    transformer_options) -> Tensor:
    """q/k/v [B, H, L, d] with RoPE applied, in sequence order; ``masked[b]``: the group mask for
    sample b (False: every group sees every group); ``isolated_refs``: the cached variant. Samples
    sharing a mode run together (contiguous slices, no copies). Returns [B, Lq, H·d]."""
    runs = []
    for i, f in enumerate(masked):
        if runs and runs[-1][2] == f:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, f])
    if len(runs) == 1:
        return _one_mode(q, k, v, lay, runs[0][2], isolated_refs, transformer_options)
    return torch.cat([_one_mode(q[a:b], k[a:b], v[a:b], lay, f, isolated_refs, transformer_options)
                      for a, b, f in runs], dim=0)
