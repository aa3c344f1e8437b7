"""Per-group modulation (docs/method.md §2): each token group drives adaLN with its own vector.

Text and targets use Flux's ``time(t) + guidance(g) + vector(pooled)``; the references the same at
t = 0 and guidance 1.0; every image group adds its domain embedding E(0) (RGB) or E(1) (point map),
as the table of groups (``groups.py``) says.
Each block's modulation layer turns every group's vector into named shift / scale / gate values,
as ComfyUI's ``Modulation`` does for one vector.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .groups import TOKEN_GROUPS, REF_GUIDANCE, REF_TIMESTEP, REFERENCE_ROLE
from .routing import routed_linear

__all__ = ["REF_GUIDANCE", "REF_TIMESTEP", "GroupMod", "ModulationOut", "domain_embeddings", "flux_vector", "gated",
           "group_modulation", "modulate", "modulation_vectors"]


@dataclass
class ModulationOut:
    """adaLN values of one group, each [B, 1, D] (as ``comfy.ldm.flux.layers.ModulationOut``)."""
    shift: Tensor
    scale: Tensor
    gate: Tensor


#: ``{group: ModulationOut}`` for one half of a block's modulation
GroupMod = dict[str, ModulationOut]


def flux_vector(flux, timestep: Tensor, guidance: Tensor | None, pooled: Tensor | None, dtype) -> Tensor:
    """Flux's conditioning vector ``time(t) + guidance(g) + vector(pooled)`` [B, D], as ``forward_orig``
    computes it."""
    from comfy.ldm.flux.layers import timestep_embedding
    vec = flux.time_in(timestep_embedding(timestep, 256).to(dtype))
    if flux.params.guidance_embed and guidance is not None:
        vec = vec + flux.guidance_in(timestep_embedding(guidance, 256).to(dtype))
    if flux.vector_in is not None:
        if pooled is None:
            pooled = torch.zeros((timestep.shape[0], flux.params.vec_in_dim), device=vec.device, dtype=dtype)
        vec = vec + flux.vector_in(pooled[:, :flux.params.vec_in_dim].to(dtype))
    return vec


def domain_embeddings(adapter, dtype, device) -> Tensor:
    """E(0), E(1) of the adapter's domain embedder: [2, D] in ``dtype`` on ``device``."""
    embedder = adapter.domain_embedder
    table = embedder[0].weight
    return embedder(torch.arange(2, device=table.device)).to(device=device, dtype=dtype)


def modulation_vectors(flux, adapter, timestep: Tensor, guidance: Tensor | None, pooled: Tensor | None,
                       dtype, ref_timestep: float | None = REF_TIMESTEP,
                       ref_guidance: float | None = REF_GUIDANCE) -> dict[str, Tensor]:
    """Each group's own modulation vector [B, D] (:data:`~.groups.TOKEN_GROUPS`): the reference groups at
    t = ``ref_timestep`` and g = ``ref_guidance`` (None: the targets' values), the others at the
    sampler's t and g, plus E(d) for a group with a domain."""
    v_t = flux_vector(flux, timestep, guidance, pooled, dtype)
    t_ref = timestep if ref_timestep is None else torch.full_like(timestep, float(ref_timestep))
    if ref_guidance is None:
        g_ref = guidance
    elif guidance is not None:
        g_ref = torch.full_like(guidance, float(ref_guidance))
    else:
        g_ref = torch.full(timestep.shape, float(ref_guidance), device=timestep.device, dtype=torch.float32)
    v_ref = flux_vector(flux, t_ref, g_ref, pooled, dtype)
    e = domain_embeddings(adapter, v_t.dtype, v_t.device)
    vecs = {}
    for g in TOKEN_GROUPS:
        v = v_ref if g.role == REFERENCE_ROLE else v_t
        vecs[g.name] = v if g.domain is None else v + e[g.domain]
    return vecs


def group_modulation(lin, vecs: dict[str, Tensor], groups: Sequence[str], adapter, path: str,
                     double: bool) -> tuple[GroupMod, ...]:
    """``lin(silu(vec_g))`` (+ the LoRAs routed to g) for every group, split like ComfyUI's
    ``Modulation``: (mod1, mod2) for a double block, (mod,) for a single block."""
    v = torch.stack([vecs[g] for g in groups], dim=1)  # [B, G, D]
    out = routed_linear(lin, torch.nn.functional.silu(v), [(g, i, i + 1) for i, g in enumerate(groups)], adapter, path)
    chunks = out.chunk(6 if double else 3, dim=-1)  # each [B, G, D]
    halves = [chunks[:3], chunks[3:]] if double else [chunks]
    return tuple({g: ModulationOut(*(c[:, i:i + 1] for c in half)) for i, g in enumerate(groups)} for half in halves)


def modulate(x: Tensor, segments, mod: GroupMod) -> Tensor:
    """adaLN on each group's tokens: ``x·(1 + scale_g) + shift_g``."""
    return torch.cat([torch.addcmul(mod[g].shift, x[:, a:b], 1 + mod[g].scale) for g, a, b in segments], dim=1)


def gated(y: Tensor, segments, mod: GroupMod) -> Tensor:
    """``y·gate_g`` on each group's tokens."""
    return torch.cat([y[:, a:b] * mod[g].gate for g, a, b in segments], dim=1)
