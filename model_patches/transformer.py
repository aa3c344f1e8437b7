"""The RefAny3D transformer: one evaluation of ComfyUI's Flux with RefAny3D's token groups (spec §2–§4).

:func:`refany3d_forward` runs its own loop over the blocks of a ``comfy.ldm.flux.model.Flux``
(FLUX.1 layout) because RefAny3D needs three things the stock ``forward_orig`` cannot give:

* one modulation vector per token group (spec §2), driving adaLN shift/scale/gate in every double
  and single block and the final layer;
* the two LoRAs applied per token group on the adapted layers (spec §3), never merged;
* the group attention mask (spec §4), computed block-wise: each query group attends to the key
  groups it may see with ComfyUI's ``optimized_attention`` (no L×L mask is ever built).

Every base weight is used through ComfyUI's own modules (``block.img_attn.qkv(x)``, …), so comfy's
weight casting, fp8 handling, lowvram and LoRAs patched onto the base model by ComfyUI keep working;
the RefAny3D LoRA deltas are computed in the activation dtype and added per token group.

Token sequence (spec §2), in this order, with its RoPE ids (index, row, col):

====================  ====================  =========  ========  ========  ======================
group                 tokens                ids        timestep  guidance  LoRAs (spec §3)
====================  ====================  =========  ========  ========  ======================
text                  L (T5 tokens)         0, 0, 0    t         g         none (text stream)
target_rgb            n = (H/2)(W/2)        0, r, c    t         g         none; domain E(0)
target_point_map      n                     0, r, c    t         g         Domain; domain E(1)
reference_rgb i       m = (h/2)(w/2) each   0, r, c-32 0         1.0       Reference; E(0)
reference_point_map i m each                0, r, c-32 0         1.0       Reference + Domain; E(1)
====================  ====================  =========  ========  ========  ======================
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: The release shifts reference columns by -32 tokens (the width of a 512 px reference), whatever
#: the target size (spec §2).
REF_COLUMN_SHIFT = 32
#: References are evaluated at t = 0 with Flux guidance 1.0 (spec §2).
REF_TIMESTEP = 0.0
REF_GUIDANCE = 1.0

TEXT, TARGET_RGB, TARGET_POINT_MAP, REFERENCE_RGB, REFERENCE_POINT_MAP = (
    "text", "target_rgb", "target_point_map", "reference_rgb", "reference_point_map")
GROUPS = (TEXT, TARGET_RGB, TARGET_POINT_MAP, REFERENCE_RGB, REFERENCE_POINT_MAP)
IMAGE_GROUPS = GROUPS[1:]
#: LoRA routing per token group (spec §3): adapter names of RefAny3DAdapter.loras.
ROUTES = {TEXT: (), TARGET_RGB: (), TARGET_POINT_MAP: ("domain",),
          REFERENCE_RGB: ("reference",), REFERENCE_POINT_MAP: ("reference", "domain")}
#: Domain of each image group (0 = RGB, 1 = point map); text has none.
DOMAINS = {TARGET_RGB: 0, TARGET_POINT_MAP: 1, REFERENCE_RGB: 0, REFERENCE_POINT_MAP: 1}

MASKED, UNMASKED = "masked", "unmasked"


class RefAny3DInputError(ValueError):
    """Inputs of refany3d_forward that do not fit together or do not fit the model."""


# --------------------------------------------------------------------------------------------
# token groups and positions

@dataclass(frozen=True)
class Layout:
    """Sizes of the token groups of one call. ``views`` = N, ``ref`` = m tokens per reference view,
    ``refs_in_sequence``: whether the reference tokens are computed in this call (False when their
    keys/values come from a :class:`ReferenceCache`)."""
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


def grid_ids(rows: int, cols: int, col_shift: int = 0, axes: int = 3, device=None) -> Tensor:
    """RoPE ids (0, r, c - col_shift) of a rows×cols token grid, row-major, float32 [rows·cols, axes]."""
    ids = torch.zeros(rows, cols, axes, dtype=torch.float32, device=device)
    ids[..., 1] = torch.arange(rows, dtype=torch.float32, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, dtype=torch.float32, device=device)[None, :] - col_shift
    return ids.reshape(rows * cols, axes)


def sequence_ids(layout: Layout, axes: int = 3, col_shift: int = REF_COLUMN_SHIFT, device=None) -> Tensor:
    """RoPE ids of the whole sequence in spec order (text zeros; both targets (0,r,c); every
    reference view (0,r,c-32)): [L, axes]. Reference ids are left out when the references come
    from a cache."""
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


# --------------------------------------------------------------------------------------------
# modulation vectors

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
    """E(0), E(1) of the adapter's domain embedder: [2, D]."""
    return adapter.domain_embedder(torch.arange(2, device=device)).to(dtype)


def modulation_vectors(flux, adapter, timestep: Tensor, guidance: Tensor | None, pooled: Tensor | None,
                       dtype, ref_timestep: float | None = REF_TIMESTEP,
                       ref_guidance: float | None = REF_GUIDANCE) -> dict[str, Tensor]:
    """Each group's own modulation vector [B, D] (spec §2): Flux's ``time(t) + guidance(g) +
    vector(pooled)``, the references at t = ``ref_timestep`` and g = ``ref_guidance`` (None: the
    targets' values), plus the domain embedding E(d) for the image groups."""
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
    return {TEXT: v_t, TARGET_RGB: v_t + e[0], TARGET_POINT_MAP: v_t + e[1],
            REFERENCE_RGB: v_ref + e[0], REFERENCE_POINT_MAP: v_ref + e[1]}


# --------------------------------------------------------------------------------------------
# LoRA routing and per-group adaLN

def routed_linear(layer, x: Tensor, segments, adapter, path: str) -> Tensor:
    """``layer(x)`` (ComfyUI's module: base weight, casts, fp8, ComfyUI-patched LoRAs) plus, on each
    segment (group, start, stop) of dim 1, the RefAny3D LoRAs routed to that group for ``path``."""
    out = layer(x)
    for group, a, b in segments:
        for name in ROUTES[group]:
            pair = adapter.loras.get(name, {}).get(path)
            if pair is not None:
                down, up = pair
                out[:, a:b] += (x[:, a:b] @ down.T) @ up.T
    return out


def group_modulation(lin, vecs: dict[str, Tensor], groups: Sequence[str], adapter, path: str,
                     chunks: int) -> dict[str, list[Tensor]]:
    """adaLN parameters of each group: ``lin(silu(vec_g))`` (+ routed LoRA) split into ``chunks``
    tensors [B, 1, D] (shift, scale, gate, ...)."""
    v = torch.stack([vecs[g] for g in groups], dim=1)  # [B, G, D]
    out = routed_linear(lin, torch.nn.functional.silu(v), [(g, i, i + 1) for i, g in enumerate(groups)], adapter, path)
    parts = out.chunk(chunks, dim=-1)
    return {g: [p[:, i:i + 1] for p in parts] for i, g in enumerate(groups)}


def modulate(x: Tensor, segments, mods: dict[str, list[Tensor]], shift: int, scale: int) -> Tensor:
    """adaLN: ``x·(1 + scale_g) + shift_g`` on each group's tokens."""
    return torch.cat([torch.addcmul(mods[g][shift], x[:, a:b], 1 + mods[g][scale]) for g, a, b in segments], dim=1)


def gated(y: Tensor, segments, mods: dict[str, list[Tensor]], gate: int) -> Tensor:
    """``y·gate_g`` on each group's tokens."""
    return torch.cat([y[:, a:b] * mods[g][gate] for g, a, b in segments], dim=1)


# --------------------------------------------------------------------------------------------
# block-wise group attention

def _attend(q: Tensor, k: Tensor, v: Tensor, transformer_options) -> Tensor:
    """ComfyUI's optimized attention on [B, H, Lq, d] × [B, H, Lk, d] -> [B, Lq, H·d]."""
    import comfy.ldm.flux.math as flux_math
    return flux_math.optimized_attention(q, k, v, q.shape[1], skip_reshape=True, transformer_options=transformer_options)


def _pairs(t: Tensor, views: int, m: int) -> Tensor:
    """Reference tokens [B, H, 2·N·m, d] (all RGB views, then all point-map views) -> one pair
    (RGB view i, point-map view i) per batch row: [B·N, H, 2m, d]."""
    b, h, _, d = t.shape
    return t.reshape(b, h, 2, views, m, d).permute(0, 3, 1, 2, 4, 5).reshape(b * views, h, 2 * m, d)


def _unpairs(o: Tensor, b: int, views: int, m: int) -> Tensor:
    """Inverse of :func:`_pairs` on attention outputs [B·N, 2m, C] -> [B, 2·N·m, C]."""
    c = o.shape[-1]
    return o.reshape(b, views, 2, m, c).permute(0, 2, 1, 3, 4).reshape(b, 2 * views * m, c)


def _attention_one_mode(q, k, v, lay: Layout, masked: bool, isolated_refs: bool, opts) -> Tensor:
    """Group attention for a batch that shares one mode. q covers the tokens computed in this call
    (text, targets[, references]); k/v also hold cached reference keys when the references are
    not in the sequence."""
    P, T, n = lay.prefix, lay.txt, lay.tgt
    refs_q = lay.refs_in_sequence and lay.views > 0
    if not masked and not isolated_refs:
        return _attend(q, k, v, opts)  # everything sees everything (release guidance pass)
    outs = []
    if masked:
        outs.append(_attend(q[:, :, :T + n], k, v, opts))                          # text, target RGB -> all
        outs.append(_attend(q[:, :, T + n:P], k[:, :, T:], v[:, :, T:], opts))     # target point map -> all but text
    else:
        outs.append(_attend(q[:, :, :P], k, v, opts))
    if refs_q:
        qr, kr, vr = q[:, :, P:], k[:, :, P:], v[:, :, P:]
        if not masked:  # isolated refs, unmasked: the references see each other only
            outs.append(_attend(qr, kr, vr, opts))
        else:
            b, N, m = q.shape[0], lay.views, lay.ref
            kp, vp = _pairs(kr, N, m), _pairs(vr, N, m)
            if not isolated_refs:  # view i -> text, targets, its own pair
                def shared(t):
                    s = t[:, :, :P]
                    return s[:, None].expand(b, N, *s.shape[1:]).reshape(b * N, *s.shape[1:])
                kp, vp = torch.cat([shared(k), kp], dim=2), torch.cat([shared(v), vp], dim=2)
            outs.append(_unpairs(_attend(_pairs(qr, N, m), kp, vp, opts), b, N, m))
    return torch.cat(outs, dim=1)


def group_attention(q: Tensor, k: Tensor, v: Tensor, lay: Layout, masked: Sequence[bool], isolated_refs: bool,
                    transformer_options) -> Tensor:
    """Spec §4 attention, block-wise. q/k/v [B, H, L, d] with RoPE applied, in sequence order;
    ``masked[b]``: the group mask for sample b (False: every group sees every group, the release's
    guidance pass); ``isolated_refs``: the cached variant (references see only references: their
    own pair when masked). Returns [B, Lq, H·d]."""
    runs = []  # contiguous runs of samples sharing a mode: slices, no copies
    for i, f in enumerate(masked):
        if runs and runs[-1][2] == f:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, f])
    if len(runs) == 1:
        return _attention_one_mode(q, k, v, lay, runs[0][2], isolated_refs, transformer_options)
    return torch.cat([_attention_one_mode(q[a:b], k[a:b], v[a:b], lay, f, isolated_refs, transformer_options)
                      for a, b, f in runs], dim=0)


def dense_group_mask(lay: Layout, masked: bool = True, isolated_refs: bool = False, device=None) -> Tensor:
    """The same rule as a full [L, L] boolean matrix (True = query row may attend key column).
    For tests and the naive benchmark only: :func:`group_attention` never builds it."""
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
        raise RefAny3DInputError("dense attention needs the reference tokens in the sequence (no cache)")
    masks = []
    for f in masked:
        allow = dense_group_mask(lay, f, isolated_refs, device=q.device)
        masks.append(torch.zeros(allow.shape, dtype=q.dtype, device=q.device).masked_fill(~allow, float("-inf")))
    return _attend_masked(q, k, v, torch.stack(masks)[:, None], transformer_options)


def _attend_masked(q, k, v, mask, transformer_options):
    import comfy.ldm.flux.math as flux_math
    return flux_math.optimized_attention(q, k, v, q.shape[1], skip_reshape=True, mask=mask,
                                         transformer_options=transformer_options)


# --------------------------------------------------------------------------------------------
# reference cache (spec §4, cached variant)

@dataclass
class _CacheEntry:
    refs_rgb: Tensor
    refs_pm: Tensor
    pooled: Tensor | None
    key: tuple
    kv: list = field(default_factory=list)  # per block (k [1,H,2Nm,d], v [1,H,2Nm,d])

    @staticmethod
    def _same(a: Tensor | None, b: Tensor | None) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)

    def same_sample(self, refs_rgb: Tensor, refs_pm: Tensor, pooled: Tensor | None, key: tuple) -> bool:
        return (self.key == key and self._same(self.refs_rgb, refs_rgb) and self._same(self.refs_pm, refs_pm)
                and self._same(self.pooled, pooled))


class ReferenceCache:
    """Keys/values of the reference tokens in every block, per sample (cached variant, spec §4).

    With isolated references (they attend only to references), their hidden states depend only on
    the reference latents, the pooled vector (their modulation) and the model, never on the step:
    they are computed once and reused for every later step and for the image-guidance pass (black
    references get their own entry). An entry is found again only when the reference latents and
    the pooled vector are equal to the stored ones (torch.equal) and model, adapter, dtype, device,
    mask mode and RoPE shift are the same. At most ``max_entries`` samples are kept (least recently
    used dropped). Call :meth:`clear` to free the memory (the sampling wrapper does at every run)."""

    def __init__(self, max_entries: int = 4):
        self.max_entries = int(max_entries)
        self.entries: list[_CacheEntry] = []
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, refs_rgb: Tensor, refs_pm: Tensor, pooled: Tensor | None, key: tuple) -> _CacheEntry | None:
        for i, e in enumerate(self.entries):
            if e.same_sample(refs_rgb, refs_pm, pooled, key):
                self.entries.append(self.entries.pop(i))
                return e
        return None

    def add(self, entry: _CacheEntry) -> None:
        self.entries.append(entry)
        while len(self.entries) > self.max_entries:
            self.entries.pop(0)


# --------------------------------------------------------------------------------------------
# blocks

@dataclass
class _Ctx:
    """What every block of one call needs."""
    adapter: object
    lay: Layout
    vecs: dict
    pe: Tensor
    masked: list
    isolated_refs: bool
    opts: dict
    cached: list | None = None       # per sample, the cache entry whose reference keys/values are used
    store: dict | None = None        # sample index -> new cache entry to fill with its reference k/v
    block: int = 0                   # index of the current block (double blocks, then single blocks)
    dense: bool = False              # one full additive L×L mask instead of block-wise attention


def _heads(t: Tensor, parts: int, heads: int) -> tuple[Tensor, ...]:
    """[B, L, parts·H·d] -> parts tensors [B, H, L, d]."""
    return tuple(t.view(t.shape[0], t.shape[1], parts, heads, -1).permute(2, 0, 3, 1, 4))


def _attention(q, k, v, ctx: _Ctx) -> Tensor:
    """RoPE, the reference-cache bookkeeping, then :func:`group_attention`."""
    from comfy.ldm.flux.math import apply_rope
    q, k = apply_rope(q, k, ctx.pe)
    lay = ctx.lay
    i, ctx.block = ctx.block, ctx.block + 1
    if ctx.store:
        for s, entry in ctx.store.items():
            entry.kv.append((k[s:s + 1, :, lay.prefix:].clone(), v[s:s + 1, :, lay.prefix:].clone()))
    if ctx.cached is not None:
        k, v = _with_cached(k, ctx.cached, i, 0), _with_cached(v, ctx.cached, i, 1)
    if ctx.dense:
        return dense_attention(q, k, v, lay, ctx.masked, ctx.isolated_refs, ctx.opts)
    return group_attention(q, k, v, lay, ctx.masked, ctx.isolated_refs, ctx.opts)


def _with_cached(t: Tensor, entries: list, block: int, j: int) -> Tensor:
    """Own keys (j=0) or values (j=1) [B, H, L, d] followed by each sample's cached reference ones."""
    if all(e is entries[0] for e in entries):  # one entry serves the whole batch: no per-sample copies
        cached = entries[0].kv[block][j].expand(t.shape[0], -1, -1, -1)
    else:
        cached = torch.cat([e.kv[block][j] for e in entries])
    return torch.cat([t, cached], dim=2)


def double_block(block, img: Tensor, txt: Tensor, ctx: _Ctx, path: str) -> tuple[Tensor, Tensor]:
    """One DoubleStreamBlock with per-group adaLN and routed LoRAs on the image stream."""
    segs = ctx.lay.image_segments()
    groups = [g for g, _, _ in segs]
    mod = group_modulation(block.img_mod.lin, ctx.vecs, groups, ctx.adapter, f"{path}.img_mod.lin", 6)
    txt_mod1, txt_mod2 = block.txt_mod(ctx.vecs[TEXT])
    heads = block.num_heads

    img_qkv = routed_linear(block.img_attn.qkv, modulate(block.img_norm1(img), segs, mod, 0, 1), segs, ctx.adapter,
                            f"{path}.img_attn.qkv")
    img_q, img_k, img_v = _heads(img_qkv, 3, heads)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    txt_qkv = block.txt_attn.qkv(torch.addcmul(txt_mod1.shift, block.txt_norm1(txt), 1 + txt_mod1.scale))
    txt_q, txt_k, txt_v = _heads(txt_qkv, 3, heads)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)

    attn = _attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                      torch.cat((txt_v, img_v), dim=2), ctx)
    txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]

    img = img + gated(routed_linear(block.img_attn.proj, img_attn, segs, ctx.adapter, f"{path}.img_attn.proj"),
                      segs, mod, 2)
    h = block.img_mlp[1](block.img_mlp[0](modulate(block.img_norm2(img), segs, mod, 3, 4)))
    img = img + gated(routed_linear(block.img_mlp[2], h, segs, ctx.adapter, f"{path}.img_mlp.2"), segs, mod, 5)

    txt = txt + block.txt_attn.proj(txt_attn) * txt_mod1.gate
    txt = txt + block.txt_mlp(torch.addcmul(txt_mod2.shift, block.txt_norm2(txt), 1 + txt_mod2.scale)) * txt_mod2.gate
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt


def single_block(block, x: Tensor, ctx: _Ctx, path: str) -> Tensor:
    """One SingleStreamBlock over text + image tokens: per-group adaLN; routed LoRAs on image groups
    (text passes through the same layers without LoRA)."""
    segs = ctx.lay.sequence_segments()
    mod = group_modulation(block.modulation.lin, ctx.vecs, [g for g, _, _ in segs], ctx.adapter,
                           f"{path}.modulation.lin", 3)
    h = routed_linear(block.linear1, modulate(block.pre_norm(x), segs, mod, 0, 1), segs, ctx.adapter, f"{path}.linear1")
    qkv, mlp = torch.split(h, [3 * block.hidden_size, block.mlp_hidden_dim_first], dim=-1)
    q, k, v = _heads(qkv, 3, block.num_heads)
    q, k = block.norm(q, k, v)
    attn = _attention(q, k, v, ctx)
    out = routed_linear(block.linear2, torch.cat((attn, block.mlp_act(mlp)), 2), segs, ctx.adapter, f"{path}.linear2")
    x = x + gated(out, segs, mod, 2)
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


def final_layer(flux, x: Tensor, vec: Tensor) -> Tensor:
    """Flux's final layer (adaLN with this group's vector, then the linear): [B, n, D] -> [B, n, 64]."""
    fl = flux.final_layer
    shift, scale = fl.adaLN_modulation(vec[:, None, :]).chunk(2, dim=-1)
    return fl.linear(torch.addcmul(shift, fl.norm_final(x), 1 + scale))


# --------------------------------------------------------------------------------------------
# checks

def _check(flux, adapter, x_rgb, x_pm, refs_rgb, refs_pm, timestep, context, pooled, guidance) -> None:
    from comfy.ldm.flux.model import Flux
    if not isinstance(flux, Flux):
        raise RefAny3DInputError(f"RefAny3D needs ComfyUI's Flux transformer (comfy.ldm.flux.model.Flux), "
                                 f"got {type(flux).__name__}")
    if flux.params.global_modulation or len(flux.params.axes_dim) != 3:
        raise RefAny3DInputError("RefAny3D needs a FLUX.1 transformer (per-block modulation, 3 RoPE axes); "
                                 "this Flux variant is not supported")
    if int(adapter.hidden_size) != int(flux.hidden_size):
        raise RefAny3DInputError(f"the RefAny3D adapter is {adapter.hidden_size} wide but the Flux model's "
                                 f"hidden size is {flux.hidden_size}")
    c = flux.params.in_channels
    p = flux.patch_size
    if x_rgb.ndim != 4 or x_rgb.shape != x_pm.shape:
        raise RefAny3DInputError(f"target latents must both be B×{c}×H×W of the same shape, got "
                                 f"{tuple(x_rgb.shape)} and {tuple(x_pm.shape)}")
    b, cc, h, w = x_rgb.shape
    if cc != c or h % p or w % p:
        raise RefAny3DInputError(f"target latents must be B×{c}×H×W with H, W multiples of {p}, got {tuple(x_rgb.shape)}")
    if refs_rgb.ndim != 5 or refs_rgb.shape != refs_pm.shape:
        raise RefAny3DInputError(f"reference latents must both be B×N×{c}×h×w of the same shape, got "
                                 f"{tuple(refs_rgb.shape)} and {tuple(refs_pm.shape)}")
    rb, _, rc, rh, rw = refs_rgb.shape
    if rb != b or rc != c or rh % p or rw % p:
        raise RefAny3DInputError(f"reference latents must be {b}×N×{c}×h×w with h, w multiples of {p}, got "
                                 f"{tuple(refs_rgb.shape)}")
    if timestep.shape != (b,):
        raise RefAny3DInputError(f"timestep must have shape ({b},), got {tuple(timestep.shape)}")
    if guidance is not None and guidance.shape != (b,):
        raise RefAny3DInputError(f"guidance must have shape ({b},), got {tuple(guidance.shape)}")
    if context.ndim != 3 or context.shape[0] != b:
        raise RefAny3DInputError(f"context must be {b}×L×C, got {tuple(context.shape)}")
    if pooled is not None and (pooled.ndim != 2 or pooled.shape[0] != b):
        raise RefAny3DInputError(f"pooled must be {b}×P, got {tuple(pooled.shape)}")


def _interrupt_check():
    """ComfyUI's Cancel, checked between blocks so a long step stops promptly (raises
    InterruptProcessingException; never caught here)."""
    try:
        import comfy.model_management as mm
        return mm.throw_exception_if_processing_interrupted
    except ImportError:  # pragma: no cover - comfy is always there in practice
        return lambda: None


def _masked_flags(masked, b: int) -> list[bool]:
    if isinstance(masked, str):
        if masked not in (MASKED, UNMASKED):
            raise RefAny3DInputError(f"mask must be '{MASKED}' or '{UNMASKED}', got '{masked}'")
        return [masked == MASKED] * b
    if isinstance(masked, bool):
        return [masked] * b
    flags = [bool(f) if not isinstance(f, str) else f == MASKED for f in masked]
    if len(flags) != b:
        raise RefAny3DInputError(f"one mask mode per sample expected ({b}), got {len(flags)}")
    return flags


# --------------------------------------------------------------------------------------------
# the forward

def refany3d_forward(flux, adapter, x_rgb: Tensor, x_point_map: Tensor, refs_rgb: Tensor, refs_point_map: Tensor,
                     timestep: Tensor, context: Tensor, pooled: Tensor | None, guidance: Tensor | None,
                     *, masked=True, cached_references: bool = False, reference_cache: ReferenceCache | None = None,
                     transformer_options: dict | None = None, ref_timestep: float | None = REF_TIMESTEP,
                     ref_guidance: float | None = REF_GUIDANCE, ref_column_shift: int = REF_COLUMN_SHIFT,
                     attention: str = "blockwise", capture: dict | None = None) -> tuple[Tensor, Tensor]:
    """One evaluation of the RefAny3D transformer on ComfyUI's Flux (spec §2–§4).

    Arguments (ComfyUI layout, latents already in the model's scale, i.e. after ``process_latent_in``):

    * ``flux``: ``comfy.ldm.flux.model.Flux`` (FLUX.1: per-block modulation, 3 RoPE axes).
    * ``adapter``: ``RefAny3DAdapter`` (``loras["reference"|"domain"][module] = (down [R,in], up [out,R])``,
      ``domain_embedder``, ``hidden_size``); moved to the activations' device and dtype here.
    * ``x_rgb``, ``x_point_map``: noisy target latents B×16×H×W (H, W even).
    * ``refs_rgb``, ``refs_point_map``: reference latents B×N×16×h×w (N may be 0).
    * ``timestep`` [B] (sigma in [0,1]; ×1000 inside the embedding), ``context`` B×L×C (T5 tokens),
      ``pooled`` B×P or None, ``guidance`` [B] (Flux guidance) or None.

    Options (keyword only):

    * ``masked``: True / "masked" (spec §4 group mask, default), False / "unmasked" (every group sees
      every group: the release's black-reference guidance pass), or one of those per sample, so a
      masked reference pass and an unmasked guidance pass run batched in one call.
    * ``cached_references``: spec §4's cached variant: references attend only to references (their
      own RGB/point-map pair when masked; all references when unmasked), so their keys/values do
      not depend on the step. With a ``reference_cache`` (:class:`ReferenceCache`) they are computed
      once and reused while the references and pooled vector stay the same.
    * ``transformer_options``: ComfyUI's dict, passed to ``optimized_attention`` (attention overrides).
    * ``ref_timestep`` / ``ref_guidance``: the references' t and Flux guidance (spec: 0 and 1.0;
      None = the targets' values). ``ref_column_shift``: RoPE column shift of references (spec: 32).
    * ``attention``: "blockwise" (default) or "dense" (one full L×L additive mask; tests/benchmarks).
    * ``capture``: a dict filled with each group's hidden states after the last block
      ({group: [B, tokens, D]}).

    Returns ``(v_rgb, v_point_map)``, each B×16×H×W, in the input dtype.

    The computation dtype is ``x_rgb``'s (ComfyUI hands the model its compute dtype); every other
    input is cast to it. ComfyUI's ``optimized_attention_override`` is honoured; block-replace
    patches (``patches_replace["dit"]``), ``post_input`` patches and ControlNet residuals of the
    stock ``forward_orig`` are not applied (this loop replaces it). ComfyUI's Cancel is checked
    between blocks.
    """
    opts = dict(transformer_options or {})  # ComfyUI's dict, copied: block_index etc. are set per call
    _check(flux, adapter, x_rgb, x_point_map, refs_rgb, refs_point_map, timestep, context, pooled, guidance)
    dtype, device = x_rgb.dtype, x_rgb.device
    adapter = adapter.to(device=device, dtype=dtype)
    b, _, h, w = x_rgb.shape
    _, N, _, rh, rw = refs_rgb.shape
    p = flux.patch_size
    flags = _masked_flags(masked, b)
    isolated = bool(cached_references)
    if attention not in ("blockwise", "dense"):
        raise RefAny3DInputError(f"attention must be 'blockwise' or 'dense', got '{attention}'")

    # reference cache lookup: all samples must hit to skip the reference tokens
    cache_key = (id(flux), id(adapter), dtype, str(device), int(ref_column_shift), ref_timestep, ref_guidance)
    hits, found = None, [None] * b
    if isolated and reference_cache is not None and N > 0:
        found = [reference_cache.find(refs_rgb[i], refs_point_map[i], None if pooled is None else pooled[i],
                                      cache_key + (flags[i],)) for i in range(b)]
        if all(e is not None for e in found):
            hits = found
            reference_cache.hits += 1
        else:
            reference_cache.misses += 1

    lay = Layout(txt=context.shape[1], tgt=(h // p) * (w // p), tgt_hw=(h // p, w // p), views=N,
                 ref=(rh // p) * (rw // p), ref_hw=(rh // p, rw // p), refs_in_sequence=hits is None)
    segs = lay.image_segments()

    # tokens: targets, then (if computed) all RGB views, all point-map views
    parts = [patchify(x_rgb, p), patchify(x_point_map.to(dtype), p)]
    if lay.refs_in_sequence and N:
        parts += [patchify(refs_rgb.to(dtype).reshape(b * N, -1, rh, rw), p).reshape(b, N * lay.ref, -1),
                  patchify(refs_point_map.to(dtype).reshape(b * N, -1, rh, rw), p).reshape(b, N * lay.ref, -1)]
    img = routed_linear(flux.img_in, torch.cat(parts, dim=1), segs, adapter, "img_in")
    txt = flux.txt_in(context.to(dtype))
    vecs = modulation_vectors(flux, adapter, timestep, guidance, pooled, img.dtype, ref_timestep, ref_guidance)
    pe = rope(flux, sequence_ids(lay, col_shift=ref_column_shift, device=device))

    store = None
    if isolated and reference_cache is not None and N > 0 and hits is None:
        store = {}  # one new entry per distinct sample not cached yet
        for i in range(b):
            key = cache_key + (flags[i],)
            if found[i] is None and not any(
                    _CacheEntry.same_sample(e, refs_rgb[i], refs_point_map[i], None if pooled is None else pooled[i], key)
                    for e in store.values()):
                store[i] = _CacheEntry(refs_rgb[i].clone(), refs_point_map[i].clone(),
                                       None if pooled is None else pooled[i].clone(), key)
    ctx = _Ctx(adapter, lay, vecs, pe, flags, isolated, opts, cached=hits, store=store, dense=attention == "dense")

    interrupted = _interrupt_check()
    opts["total_blocks"] = len(flux.double_blocks)
    for i, block in enumerate(flux.double_blocks):
        interrupted()
        opts["block_index"], opts["block_type"] = i, "double"
        img, txt = double_block(block, img, txt, ctx, f"double_blocks.{i}")
    if img.dtype == torch.float16:
        img = torch.nan_to_num(img, nan=0.0, posinf=65504, neginf=-65504)
    x = torch.cat((txt, img), 1)
    opts["total_blocks"] = len(flux.single_blocks)
    for i, block in enumerate(flux.single_blocks):
        interrupted()
        opts["block_index"], opts["block_type"] = i, "single"
        x = single_block(block, x, ctx, f"single_blocks.{i}")
    img = x[:, lay.txt:]

    for entry in (store or {}).values():
        reference_cache.add(entry)
    if capture is not None:
        capture[TEXT] = x[:, :lay.txt]
        for g, a, bb in segs:
            capture[g] = img[:, a:bb]

    n = lay.tgt
    v_rgb = final_layer(flux, img[:, :n], vecs[TARGET_RGB])
    v_pm = final_layer(flux, img[:, n:2 * n], vecs[TARGET_POINT_MAP])
    return unpatchify(v_rgb, h, w, p), unpatchify(v_pm, h, w, p)
