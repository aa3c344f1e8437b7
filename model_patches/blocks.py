"""FLUX.1's double and single blocks with RefAny3D's token groups (docs/method.md §2–§4).

The code follows ``comfy/ldm/flux/layers.py`` (``DoubleStreamBlock.forward``,
``SingleStreamBlock.forward``, ``LastLayer.forward``) step by step and with the same names, so the
two can be read side by side. Three things differ: the image stream's adaLN values come per token
group (``img_mod1`` is ``{group: ModulationOut}``), the adapted layers run through
:func:`~.routing.routed_linear`, and attention is the group attention with the reference cache.
Every base weight is used through ComfyUI's own modules, so its weight casting, fp8 handling,
lowvram and LoRAs patched onto the base model keep working.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .attention import group_attention
from .cache import NO_CACHE, CachePlan
from .modulation import gated, group_modulation, modulate
from .routing import routed_linear
from .tokens import TEXT, Layout


@dataclass
class BlockContext:
    """What every block of one call needs."""
    adapter: object
    lay: Layout
    vecs: dict                     # group -> modulation vector [B, D]
    pe: Tensor                     # RoPE frequencies of the sequence
    masked: list                   # per sample: the group mask (True) or everything sees everything
    isolated_refs: bool            # the cached variant: references see only references
    transformer_options: dict
    cache: CachePlan = NO_CACHE
    attention: Callable = group_attention  # (q, k, v, lay, masked, isolated_refs, transformer_options)
    block: int = 0                 # index of the next attention call (double blocks, then single blocks)


def _heads(t: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """[B, L, 3·H·d] -> q, k, v, each [B, H, L, d]."""
    return tuple(t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4))


def attention(q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext) -> Tensor:
    """RoPE, the cached reference keys/values, then the group attention: [B, Lq, H·d]."""
    from comfy.ldm.flux.math import apply_rope
    q, k = apply_rope(q, k, ctx.pe)
    k, v = ctx.cache.keys_values(ctx.block, k, v, ctx.lay.prefix)
    ctx.block += 1
    return ctx.attention(q, k, v, ctx.lay, ctx.masked, ctx.isolated_refs, ctx.transformer_options)


def double_block(block, img: Tensor, txt: Tensor, ctx: BlockContext, path: str) -> tuple[Tensor, Tensor]:
    """One DoubleStreamBlock: per-group adaLN and routed LoRAs on the image stream, the text stream as stock."""
    segs = ctx.lay.image_segments()
    img_mod1, img_mod2 = group_modulation(block.img_mod.lin, ctx.vecs, [g for g, _, _ in segs], ctx.adapter,
                                          f"{path}.img_mod.lin", double=True)
    txt_mod1, txt_mod2 = block.txt_mod(ctx.vecs[TEXT])

    # prepare image for attention
    img_modulated = modulate(block.img_norm1(img), segs, img_mod1)
    img_qkv = routed_linear(block.img_attn.qkv, img_modulated, segs, ctx.adapter, f"{path}.img_attn.qkv")
    img_q, img_k, img_v = _heads(img_qkv, block.num_heads)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)

    # prepare txt for attention
    txt_modulated = torch.addcmul(txt_mod1.shift, block.txt_norm1(txt), 1 + txt_mod1.scale)
    txt_q, txt_k, txt_v = _heads(block.txt_attn.qkv(txt_modulated), block.num_heads)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)

    attn = attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                     torch.cat((txt_v, img_v), dim=2), ctx)
    txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]

    # calculate the img blocks
    img_proj = routed_linear(block.img_attn.proj, img_attn, segs, ctx.adapter, f"{path}.img_attn.proj")
    img = img + gated(img_proj, segs, img_mod1)
    img_hidden = block.img_mlp[1](block.img_mlp[0](modulate(block.img_norm2(img), segs, img_mod2)))
    img_mlp = routed_linear(block.img_mlp[2], img_hidden, segs, ctx.adapter, f"{path}.img_mlp.2")
    img = img + gated(img_mlp, segs, img_mod2)

    # calculate the txt blocks
    txt = txt + block.txt_attn.proj(txt_attn) * txt_mod1.gate
    txt = txt + block.txt_mlp(torch.addcmul(txt_mod2.shift, block.txt_norm2(txt), 1 + txt_mod2.scale)) * txt_mod2.gate
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt


def single_block(block, x: Tensor, ctx: BlockContext, path: str) -> Tensor:
    """One SingleStreamBlock over text + image tokens: per-group adaLN; routed LoRAs on the image
    groups (text passes through the same layers without LoRA)."""
    segs = ctx.lay.sequence_segments()
    (mod,) = group_modulation(block.modulation.lin, ctx.vecs, [g for g, _, _ in segs], ctx.adapter,
                              f"{path}.modulation.lin", double=False)
    hidden = routed_linear(block.linear1, modulate(block.pre_norm(x), segs, mod), segs, ctx.adapter, f"{path}.linear1")
    qkv, mlp = torch.split(hidden, [3 * block.hidden_size, block.mlp_hidden_dim_first], dim=-1)
    q, k, v = _heads(qkv, block.num_heads)
    q, k = block.norm(q, k, v)

    # compute attention
    attn = attention(q, k, v, ctx)

    # compute activation in mlp stream, cat again and run second linear layer
    output = routed_linear(block.linear2, torch.cat((attn, block.mlp_act(mlp)), 2), segs, ctx.adapter,
                           f"{path}.linear2")
    x = x + gated(output, segs, mod)
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


def final_layer(flux, x: Tensor, vec: Tensor) -> Tensor:
    """Flux's final layer with one group's vector: [B, n, D] -> [B, n, 64]."""
    fl = flux.final_layer
    shift, scale = fl.adaLN_modulation(vec[:, None, :]).chunk(2, dim=-1)
    return fl.linear(torch.addcmul(shift, fl.norm_final(x), 1 + scale))
