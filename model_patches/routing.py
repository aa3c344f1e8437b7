"""The two RefAny3D LoRAs, routed by token group (docs/method.md §3).

The Reference-LoRA acts on the reference views' tokens, the Domain-LoRA on every point-map token
(target and references); text and the target RGB see neither (the table in ``groups.py``). Nothing
is merged into the model: each adapted layer runs as ComfyUI's own module (base weight, casts, fp8,
LoRAs ComfyUI patched onto the base model) and the routed low-rank deltas are added on each group's
rows.
"""
from __future__ import annotations

from torch import Tensor

from .groups import TOKEN_GROUPS

#: adapter names (keys of ``adapter.loras``) applied to each token group (the table's ``loras``)
ROUTES = {g.name: g.loras for g in TOKEN_GROUPS}


def lora_delta(x: Tensor, down: Tensor, up: Tensor) -> Tensor:
    """``(x @ down.T) @ up.T`` in ``x``'s dtype and device (a no-op cast when the factors are there)."""
    return (x @ down.to(x).T) @ up.to(x).T


def routed_linear(layer, x: Tensor, segments, adapter, path: str) -> Tensor:
    """``layer(x)`` plus, on each segment (group, start, stop) of dim 1, the RefAny3D LoRAs routed to
    that group for the module ``path`` (e.g. ``"double_blocks.3.img_attn.qkv"``)."""
    out = layer(x)
    for group, a, b in segments:
        for name in ROUTES[group]:
            pair = adapter.loras.get(name, {}).get(path)
            if pair is not None:
                out[:, a:b] += lora_delta(x[:, a:b], *pair)
    return out
