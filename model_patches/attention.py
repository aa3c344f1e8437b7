"""Group attention, block-wise (docs/method.md §4): each query group attends only to the key groups
the mask allows, with ComfyUI's ``optimized_attention``; no L×L mask is ever built.

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

from .tokens import Layout


def attend(q: Tensor, k: Tensor, v: Tensor, transformer_options) -> Tensor:
    """ComfyUI's optimized attention on [B, H, Lq, d] × [B, H, Lk, d] -> [B, Lq, H·d] (honours
    ``transformer_options["optimized_attention_override"]``)."""
    import comfy.ldm.flux.math as flux_math
    return flux_math.optimized_attention(q, k, v, q.shape[1], skip_reshape=True, transformer_options=transformer_options)


def view_pairs(t: Tensor, views: int, m: int) -> Tensor:
    """Reference tokens [B, H, 2·N·m, d] (all RGB views, then all point-map views) -> one pair
    (RGB view i, point-map view i) per batch row: [B·N, H, 2m, d]."""
    b, h, _, d = t.shape
    return t.reshape(b, h, 2, views, m, d).permute(0, 3, 1, 2, 4, 5).reshape(b * views, h, 2 * m, d)


def from_view_pairs(o: Tensor, b: int, views: int, m: int) -> Tensor:
    """Inverse of :func:`view_pairs` on attention outputs [B·N, 2m, C] -> [B, 2·N·m, C]."""
    c = o.shape[-1]
    return o.reshape(b, views, 2, m, c).permute(0, 2, 1, 3, 4).reshape(b, 2 * views * m, c)


def _one_mode(q, k, v, lay: Layout, masked: bool, isolated_refs: bool, opts) -> Tensor:
    """Group attention for a batch that shares one mode. q covers the tokens computed in this call
    (text, targets[, references]); k/v also hold cached reference keys when the references are not
    in the sequence."""
    P, T, n = lay.prefix, lay.txt, lay.tgt
    refs_q = lay.refs_in_sequence and lay.views > 0
    if not masked and not isolated_refs:
        return attend(q, k, v, opts)  # everything sees everything (release guidance pass)
    outs = []
    if masked:
        outs.append(attend(q[:, :, :T + n], k, v, opts))                          # text, target RGB -> all
        outs.append(attend(q[:, :, T + n:P], k[:, :, T:], v[:, :, T:], opts))     # target point map -> all but text
    else:
        outs.append(attend(q[:, :, :P], k, v, opts))
    if refs_q:
        qr, kr, vr = q[:, :, P:], k[:, :, P:], v[:, :, P:]
        if not masked:  # isolated refs, unmasked: the references see each other only
            outs.append(attend(qr, kr, vr, opts))
        else:
            b, N, m = q.shape[0], lay.views, lay.ref
            kp, vp = view_pairs(kr, N, m), view_pairs(vr, N, m)
            if not isolated_refs:  # view i -> text, targets, its own pair
                def shared(t):
                    s = t[:, :, :P]
                    return s[:, None].expand(b, N, *s.shape[1:]).reshape(b * N, *s.shape[1:])
                kp, vp = torch.cat([shared(k), kp], dim=2), torch.cat([shared(v), vp], dim=2)
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
