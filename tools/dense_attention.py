"""The naive group attention, a test oracle and benchmark baseline (never a runtime path): the §4 rule
as one full [L, L] mask and one attention call over the whole sequence. ``refany3d_forward(...,
attention=dense_attention)`` runs it in place of the block-wise ``group_attention``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from model_patches.tokens import Layout


def dense_group_mask(lay: Layout, masked: bool = True, isolated_refs: bool = False, device=None) -> Tensor:
    """The same rule as a full [L, L] boolean matrix (True = query row may attend key column).
    (``model_patches.attention.group_attention`` never builds it.)"""
    group = []  # per token: (kind, view)
    group += [("text", -1)] * lay.txt + [("rgb", -1)] * lay.tgt + [("pm", -1)] * lay.tgt
    if lay.refs_in_sequence:
        for _ in range(2):
            for i in range(lay.views):
                group += [("ref", i)] * lay.ref
    L = len(group)
    kind = torch.tensor([["text", "rgb", "pm", "ref"].index(g) for g, _ in group], device=device)
    view = torch.tensor([i for _, i in group], device=device)
    qk, kk = kind[:, None], kind[None, :]
    if not masked:
        allow = torch.ones(L, L, dtype=torch.bool, device=device)
    else:
        allow = torch.ones(L, L, dtype=torch.bool, device=device)
        allow &= ~((qk == 2) & (kk == 0))                                 # target point map: no text
        allow &= ~((qk == 3) & (kk == 3) & (view[:, None] != view[None, :]))  # views never see other views
    if isolated_refs:
        allow &= ~((qk == 3) & (kk != 3))                                 # references see only references
    return allow


def dense_attention(q: Tensor, k: Tensor, v: Tensor, lay: Layout, masked: Sequence[bool], isolated_refs: bool,
                    transformer_options) -> Tensor:
    """The naive version of :func:`group_attention`: one attention call over the whole sequence with
    an additive [B, 1, L, L] mask (0 / -inf) built from :func:`dense_group_mask`."""
    if k.shape[2] != q.shape[2]:
        raise ValueError("dense attention needs the reference tokens in the sequence (no cache)")
    masks = []
    for f in masked:
        allow = dense_group_mask(lay, f, isolated_refs, device=q.device)
        masks.append(torch.zeros(allow.shape, dtype=q.dtype, device=q.device).masked_fill(~allow, float("-inf")))
    return _attend_masked(q, k, v, torch.stack(masks)[:, None], transformer_options)


def _attend_masked(q, k, v, mask, transformer_options):
    import comfy.ldm.flux.math as flux_math
    return flux_math.optimized_attention(q, k, v, q.shape[1], skip_reshape=True, mask=mask,
                                         transformer_options=transformer_options)


