"""refany3d_forward on tiny random ComfyUI Flux models, in-process (issue 4, "Must show" 1, 2, 3, 5, 6).

Every reference computation here is built from ComfyUI's own parts, independently of
the module under test: stock ``Flux.forward_orig`` (item 1), and for item 3 stock
Double/SingleStreamBlocks of models whose weights ComfyUI itself merged with the LoRAs routed to
a group (``comfy.lora.load_lora`` + ``ModelPatcher.add_patches`` + ``patch_model``), with the group
mask applied as a dense additive matrix through ComfyUI's ``optimized_attention_override`` hook.
"""
from __future__ import annotations

import pytest
import torch

from tools import tiny_models as tiny
from model_patches import (
    GROUPS,
    REFERENCE_POINT_MAP,
    REFERENCE_RGB,
    TARGET_POINT_MAP,
    TARGET_RGB,
    TEXT,
    RefAny3DInputError,
    ReferenceCache,
    refany3d_forward,
)
from model_patches import load_adapter
from tools.dense_attention import dense_attention
from tools.release_files import release_state_dicts

D, HEADS, CTX, POOLED = 32, 2, 24, 12
DEPTH, DEPTH_SINGLE = 2, 2
#: float32 throughout: newer ComfyUI runs RoPE through comfy-kitchen, which has no float64 path.
F32 = torch.float32
#: Two float32 evaluations that differ only in how the work is split (batch rows, attention blocks,
#: cached keys) or in the order of additions (merged vs routed LoRAs) agree to this; a wrong route,
#: mask or modulation moves the outputs by more than 1e-3.
ATOL = 1e-5


def make_flux(depth=DEPTH, depth_single=DEPTH_SINGLE, seed=0, dtype=F32):
    return tiny.build_flux(hidden_size=D, num_heads=HEADS, depth=depth, depth_single_blocks=depth_single,
                           context_in_dim=CTX, vec_in_dim=POOLED, seed=seed, dtype=dtype)


def release_sds(depth=DEPTH, depth_single=DEPTH_SINGLE, seed=1, zero=False):
    return release_state_dicts(D, depth, depth_single, rank=4, seed=seed, zero=zero, scale=0.5)


def make_adapter(sds):
    return load_adapter(sds["reference"], sds["domain"], sds["domain_embedder"])


def inputs(b=2, n_views=2, h=4, w=6, rh=4, rw=4, txt=3, seed=0, dtype=F32):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).to(dtype)
    return dict(x_rgb=r(b, 16, h, w), x_point_map=r(b, 16, h, w), refs_rgb=r(b, n_views, 16, rh, rw),
                refs_point_map=r(b, n_views, 16, rh, rw), timestep=torch.rand(b, generator=g).to(dtype) * 0.9 + 0.05,
                context=r(b, txt, CTX), pooled=r(b, POOLED), guidance=torch.full((b,), 3.5, dtype=dtype))


@pytest.fixture(scope="module")
def model():
    return make_flux()


@pytest.fixture(scope="module")
def adapter():
    return make_adapter(release_sds())


def fwd(flux, adapter, inp, **options):
    with torch.no_grad():
        return refany3d_forward(flux, adapter, **inp, **options)


# ---------------------------------------------------------------------------------------------
# shared helpers: spec ids and tokens, written from the spec table, not from the module under test

def pack(x):
    """[B, C, H, W] -> [B, (H/2)(W/2), C·4] as comfy's Flux.process_img packs it."""
    from einops import rearrange
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def unpack(t, h, w):
    from einops import rearrange
    return rearrange(t, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, w=w // 2, ph=2, pw=2)


def spec_ids(h, w, shift=0):
    rows, cols = h // 2, w // 2
    return torch.tensor([[0.0, r, c - shift] for r in range(rows) for c in range(cols)])


def spec_sequence(inp):
    """Image tokens in spec order (target RGB, target point map, RGB views, point-map views), their
    RoPE ids, and (group, start, stop) per group."""
    b, n, _, rh, rw = inp["refs_rgb"].shape
    h, w = inp["x_rgb"].shape[-2:]
    toks = [pack(inp["x_rgb"]), pack(inp["x_point_map"])]
    ids = [spec_ids(h, w), spec_ids(h, w)]
    for key in ("refs_rgb", "refs_point_map"):
        for i in range(n):
            toks.append(pack(inp[key][:, i]))
            ids.append(spec_ids(rh, rw, shift=32))
    nt, m = (h // 2) * (w // 2), (rh // 2) * (rw // 2)
    bounds = [(TARGET_RGB, 0, nt), (TARGET_POINT_MAP, nt, 2 * nt), (REFERENCE_RGB, 2 * nt, 2 * nt + n * m),
              (REFERENCE_POINT_MAP, 2 * nt + n * m, 2 * nt + 2 * n * m)]
    return torch.cat(toks, 1), torch.cat(ids, 0), bounds


# ---------------------------------------------------------------------------------------------
# 1. consistency with stock ComfyUI Flux

def test_equals_stock_flux_when_adapters_zeroed_mask_open_and_modulation_shared(model):
    flux = model.model.diffusion_model
    zero = make_adapter(release_sds(zero=True))
    inp = inputs()
    v_rgb, v_pm = fwd(flux, zero, inp, masked=False, ref_timestep=None, ref_guidance=None)
    img, ids, bounds = spec_sequence(inp)
    b, h, w = inp["x_rgb"].shape[0], *inp["x_rgb"].shape[-2:]
    txt_ids = torch.zeros(b, inp["context"].shape[1], 3)
    with torch.no_grad():
        out = flux.forward_orig(img, ids[None].expand(b, -1, -1), inp["context"], txt_ids, inp["timestep"],
                                inp["pooled"], inp["guidance"], transformer_options={})
    nt = bounds[0][2]
    torch.testing.assert_close(v_rgb, unpack(out[:, :nt], h, w), rtol=0, atol=ATOL)
    torch.testing.assert_close(v_pm, unpack(out[:, nt:2 * nt], h, w), rtol=0, atol=ATOL)
    # and each of the ingredients the test switched off does change the result
    shared = dict(ref_timestep=None, ref_guidance=None)
    for ad, options in ((make_adapter(release_sds()), dict(masked=False, **shared)),  # LoRAs, E(d)
                        (zero, dict(masked=True, **shared)),                         # the mask
                        (zero, dict(masked=False))):                                 # refs at t=0, g=1
        moved = fwd(flux, ad, inp, **options)
        assert (moved[0] - v_rgb).abs().max() > 1e-3 and (moved[1] - v_pm).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# 3. routing (and modulation, mask, RoPE) against ComfyUI's merged-LoRA path

ROUTED = {TEXT: (), TARGET_RGB: (), TARGET_POINT_MAP: ("domain",), REFERENCE_RGB: ("reference",),
          REFERENCE_POINT_MAP: ("reference", "domain")}


def merged_flux(sds, names, seed=0):
    """A tiny Flux whose weights ComfyUI merged with the given release-format LoRAs (strength 1)."""
    import comfy.lora
    patcher = make_flux(seed=seed)
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    for name in names:
        patches = comfy.lora.load_lora(sds[name], key_map)
        assert len(patches) == len(sds[name]) // 2, "ComfyUI did not map every release LoRA key"
        patcher.add_patches(patches, 1.0)
    patcher.patch_model(device_to=torch.device("cpu"))
    return patcher.model.diffusion_model


def spec_vectors(flux, sds, inp):
    """Per-group modulation vectors from the spec (§2), with the domain embedder's raw tensors."""
    from comfy.ldm.flux.layers import timestep_embedding
    e = sds["domain_embedder"]

    def E(d):
        h = torch.nn.functional.silu(e["0.weight"][d].float() @ e["1.weight"].float().T + e["1.bias"].float())
        return h @ e["3.weight"].float().T + e["3.bias"].float()

    def vec(t, g):
        v = flux.time_in(timestep_embedding(t, 256).to(F32)) + flux.guidance_in(timestep_embedding(g, 256).to(F32))
        return v + flux.vector_in(inp["pooled"])
    b = inp["timestep"].shape[0]
    vt, v0 = vec(inp["timestep"], inp["guidance"]), vec(torch.zeros(b, dtype=F32), torch.ones(b, dtype=F32))
    return {TEXT: vt, TARGET_RGB: vt + E(0), TARGET_POINT_MAP: vt + E(1), REFERENCE_RGB: v0 + E(0),
            REFERENCE_POINT_MAP: v0 + E(1)}


def spec_allow(lt, bounds, n_views, masked=True):
    """[L, L] bool: docs/method.md §4's table, written out per (query group, key group)."""
    owner = ["text"] * lt
    for g, a, b in bounds:
        per = (b - a) // (n_views if g in (REFERENCE_RGB, REFERENCE_POINT_MAP) else 1)
        owner += [(g, (i - a) // per if g in (REFERENCE_RGB, REFERENCE_POINT_MAP) else None) for i in range(a, b)]
    owner = [o if isinstance(o, tuple) else (o, None) for o in owner]

    def sees(q, k):
        if not masked:
            return True
        (gq, vq), (gk, vk) = q, k
        if gq in (TEXT, TARGET_RGB):
            return True
        if gq == TARGET_POINT_MAP:
            return gk != TEXT
        if gk in (REFERENCE_RGB, REFERENCE_POINT_MAP):
            return vq == vk
        return True
    return torch.tensor([[sees(q, k) for k in owner] for q in owner])


class DenseAttention:
    """optimized_attention_override: captures q/k/v (after RoPE) or returns a given attention output."""

    def __init__(self):
        self.captured = None
        self.result = None

    def __call__(self, func, q, k, v, heads, **kwargs):
        if self.result is None:
            self.captured = (q, k, v)
            return torch.zeros(q.shape[0], q.shape[2], q.shape[1] * q.shape[3], dtype=q.dtype)
        return self.result


def reference_forward(models, sds, inp, masked=True):
    """The RefAny3D forward composed from stock ComfyUI blocks: group g's tokens always go through
    ``models[g]`` (weights merged by ComfyUI with the LoRAs routed to g) with g's modulation vector;
    attention is dense over the assembled q/k/v with the spec mask. Returns per-group final hidden
    states and the two velocities."""
    base = models[TEXT]
    img, ids, bounds = spec_sequence(inp)
    b, lt = inp["context"].shape[:2]
    n_views = inp["refs_rgb"].shape[1]
    vecs = spec_vectors(base, sds, inp)
    pe = base.pe_embedder(torch.cat([torch.zeros(lt, 3), ids])[None])
    allow = spec_allow(lt, bounds, n_views, masked)
    bias = torch.zeros(allow.shape, dtype=F32).masked_fill(~allow, float("-inf"))
    img_bounds = bounds
    seq_bounds = [(TEXT, 0, lt)] + [(g, a + lt, e + lt) for g, a, e in bounds]

    def pick(outs, bnds):
        return torch.cat([outs[g][:, a:e] for g, a, e in bnds], 1)

    def attend(q, k, v):
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return o.transpose(1, 2).reshape(b, q.shape[2], -1)

    def run_block(kind, i, call):
        """``call(block, vec, opts)`` for every group's model and block; returns per-group outputs.
        First pass captures each model's q/k/v, second pass feeds it the dense masked attention."""
        hook = DenseAttention()
        opts = {"optimized_attention_override": hook}
        qkv = {}
        for g in GROUPS:
            call(getattr(models[g], kind)[i], vecs[g], opts)
            qkv[g] = hook.captured
        q, k, v = (torch.cat([qkv[g][j][:, :, a:e] for g, a, e in seq_bounds], 2) for j in range(3))
        hook.result = attend(q, k, v)
        return {g: call(getattr(models[g], kind)[i], vecs[g], opts) for g in GROUPS}

    x_img = pick({g: models[g].img_in(img) for g in GROUPS}, img_bounds)
    txt = base.txt_in(inp["context"])
    for i in range(len(base.double_blocks)):
        def call_double(blk, vec, opts, x_img=x_img, txt=txt):
            return blk(img=x_img.clone(), txt=txt.clone(), vec=vec, pe=pe, transformer_options=opts)
        outs = run_block("double_blocks", i, call_double)
        x_img = pick({g: o[0] for g, o in outs.items()}, img_bounds)
        txt = outs[TEXT][1]
    x = torch.cat([txt, x_img], 1)
    for i in range(len(base.single_blocks)):
        def call_single(blk, vec, opts, x=x):
            return blk(x.clone(), vec=vec, pe=pe, transformer_options=opts)
        x = pick(run_block("single_blocks", i, call_single), seq_bounds)
    hidden = {g: x[:, a:e] for g, a, e in seq_bounds}
    h, w = inp["x_rgb"].shape[-2:]
    v_rgb = unpack(base.final_layer(hidden[TARGET_RGB], vecs[TARGET_RGB]), h, w)
    v_pm = unpack(base.final_layer(hidden[TARGET_POINT_MAP], vecs[TARGET_POINT_MAP]), h, w)
    return hidden, v_rgb, v_pm


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_every_group_matches_comfyui_merged_lora_models(masked):
    sds = release_sds(seed=3)
    adapter = make_adapter(sds)
    models = {}
    by_route = {}
    for g, names in ROUTED.items():
        if names not in by_route:
            by_route[names] = merged_flux(sds, names)
        models[g] = by_route[names]
    inp = inputs(seed=4)
    with torch.no_grad():
        hidden, v_rgb, v_pm = reference_forward(models, sds, inp, masked)
        capture = {}
        got = refany3d_forward(models[TEXT], adapter, **inp, masked=masked, capture=capture)
    # merged weights (W + BA, rounded once) and routed deltas (Wx + B(Ax)) differ in float32 rounding
    # only: compare to ATOL (a wrong route differs by ~1e-1).
    for g in GROUPS:
        torch.testing.assert_close(capture[g], hidden[g], rtol=0, atol=ATOL, msg=lambda m, g=g: f"group {g}: {m}")
    torch.testing.assert_close(got[0], v_rgb, rtol=0, atol=ATOL)
    torch.testing.assert_close(got[1], v_pm, rtol=0, atol=ATOL)
    # each route matters: with the adapters swapped between groups the result is far off
    swapped = make_adapter(dict(sds, reference=sds["domain"], domain=sds["reference"]))
    with torch.no_grad():
        wrong = refany3d_forward(models[TEXT], swapped, **inp, masked=masked)
    assert (wrong[1] - v_pm).abs().max() > 1e-2
    # the routes are not interchangeable: a model merged with another route gives other values
    assert (models[REFERENCE_RGB].double_blocks[0].img_attn.qkv.weight
            - models[TARGET_RGB].double_blocks[0].img_attn.qkv.weight).abs().max() > 1e-3


def test_blockwise_equals_dense_mask_in_every_mode(model, adapter):
    flux = model.model.diffusion_model
    inp = inputs(b=3, seed=5)
    for masked in (True, False, [True, False, True]):
        for cached in (False, True):
            a = fwd(flux, adapter, inp, masked=masked, cached_references=cached)
            d = fwd(flux, adapter, inp, masked=masked, cached_references=cached, attention=dense_attention)
            for x, y in zip(a, d):
                torch.testing.assert_close(x, y, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# 2. the mask: a blocked group's inputs never reach the receivers that must not see them

def one_block_models():
    """Depth 1 double + 0 single, and 0 double + 1 single: a group's hidden state after the only
    block depends on exactly the groups it attends to (and on its own modulation)."""
    out = []
    for depth, single in ((1, 0), (0, 1)):
        flux = make_flux(depth=depth, depth_single=single, seed=7).model.diffusion_model
        out.append((flux, make_adapter(release_sds(depth, single, seed=8))))
    return out


def run_capture(flux, adapter, inp, **options):
    capture = {}
    v = fwd(flux, adapter, inp, capture=capture, **options)
    return v, capture


@pytest.mark.parametrize("which", [0, 1], ids=["double_block", "single_block"])
def test_text_never_reaches_the_target_point_map(which):
    flux, adapter = one_block_models()[which]
    inp = inputs(seed=9)
    other = dict(inp, context=inp["context"] + torch.randn_like(inp["context"]))
    (v1, c1), (v2, c2) = run_capture(flux, adapter, inp), run_capture(flux, adapter, other)
    assert torch.equal(v1[1], v2[1]) and torch.equal(c1[TARGET_POINT_MAP], c2[TARGET_POINT_MAP])
    assert (v1[0] - v2[0]).abs().max() > 1e-4  # the RGB target does see the text
    # unmasked (release guidance pass): it does
    (u1, _), (u2, _) = run_capture(flux, adapter, inp, masked=False), run_capture(flux, adapter, other, masked=False)
    assert (u1[1] - u2[1]).abs().max() > 1e-4


@pytest.mark.parametrize("which", [0, 1], ids=["double_block", "single_block"])
def test_views_never_see_each_other(which):
    flux, adapter = one_block_models()[which]
    inp = inputs(n_views=3, seed=10)
    n = inp["refs_rgb"].shape[1]
    m = (inp["refs_rgb"].shape[-2] // 2) * (inp["refs_rgb"].shape[-1] // 2)
    refs_rgb, refs_pm = inp["refs_rgb"].clone(), inp["refs_point_map"].clone()
    refs_rgb[:, 1] += torch.randn_like(refs_rgb[:, 1])
    refs_pm[:, 1] += torch.randn_like(refs_pm[:, 1])
    other = dict(inp, refs_rgb=refs_rgb, refs_point_map=refs_pm)
    _, c1 = run_capture(flux, adapter, inp)
    _, c2 = run_capture(flux, adapter, other)
    for g in (REFERENCE_RGB, REFERENCE_POINT_MAP):
        a, b = c1[g].reshape(-1, n, m, D), c2[g].reshape(-1, n, m, D)
        assert torch.equal(a[:, 0], b[:, 0]) and torch.equal(a[:, 2], b[:, 2]), g
        assert (a[:, 1] - b[:, 1]).abs().max() > 1e-4
    # the pair sees itself: changing only view 1's point map changes view 1's RGB tokens
    other_pm = dict(inp, refs_point_map=refs_pm)
    _, c3 = run_capture(flux, adapter, other_pm)
    assert (c3[REFERENCE_RGB].reshape(-1, n, m, D)[:, 1] - c1[REFERENCE_RGB].reshape(-1, n, m, D)[:, 1]).abs().max() > 1e-4
    # unmasked: views do see each other
    _, u1 = run_capture(flux, adapter, inp, masked=False)
    _, u2 = run_capture(flux, adapter, other, masked=False)
    assert (u1[REFERENCE_RGB].reshape(-1, n, m, D)[:, 0] - u2[REFERENCE_RGB].reshape(-1, n, m, D)[:, 0]).abs().max() > 1e-4


def test_targets_and_text_never_reach_cached_references(model, adapter):
    flux = model.model.diffusion_model
    inp = inputs(seed=11)
    other = dict(inp, x_rgb=inp["x_rgb"] + 1, x_point_map=-inp["x_point_map"], context=inp["context"] * 2,
                 timestep=inp["timestep"] * 0.5, guidance=inp["guidance"] + 1)
    for masked in (True, False):
        caches = [ReferenceCache(), ReferenceCache()]
        fwd(flux, adapter, inp, masked=masked, cached_references=True, reference_cache=caches[0])
        fwd(flux, adapter, other, masked=masked, cached_references=True, reference_cache=caches[1])
        assert len(caches[0]) == len(caches[1]) == 2
        for e1, e2 in zip(caches[0].entries, caches[1].entries):
            assert len(e1.kv) == DEPTH + DEPTH_SINGLE
            for (k1, v1), (k2, v2) in zip(e1.kv, e2.kv):
                assert torch.equal(k1, k2) and torch.equal(v1, v2)
    # without the cached variant the references do see the targets
    _, c1 = run_capture(flux, adapter, inp)
    _, c2 = run_capture(flux, adapter, other)
    assert (c1[REFERENCE_RGB] - c2[REFERENCE_RGB]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# 5. batches

def take(inp, idx):
    return {k: v[idx] for k, v in inp.items()}


def test_batch_of_two_equals_two_single_runs(model, adapter):
    flux = model.model.diffusion_model
    inp = inputs(b=2, seed=12)
    for options in ({}, {"masked": False}, {"cached_references": True}):
        both = fwd(flux, adapter, inp, **options)
        for i in range(2):
            one = fwd(flux, adapter, take(inp, slice(i, i + 1)), **options)
            for x, y in zip(both, one):
                torch.testing.assert_close(x[i:i + 1], y, rtol=0, atol=ATOL)


def test_cond_uncond_and_mixed_mask_batches_equal_separate_calls(model, adapter):
    flux = model.model.diffusion_model
    cond, uncond = inputs(b=1, seed=13), inputs(b=1, seed=14)
    uncond = dict(uncond, x_rgb=cond["x_rgb"], x_point_map=cond["x_point_map"], timestep=cond["timestep"])
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
    together = fwd(flux, adapter, both)
    for i, single in enumerate((cond, uncond)):
        for x, y in zip(together, fwd(flux, adapter, single)):
            torch.testing.assert_close(x[i:i + 1], y, rtol=0, atol=ATOL)
    # the masked reference pass and the unmasked black-reference pass in one call
    black = dict(cond, refs_rgb=torch.zeros_like(cond["refs_rgb"]), refs_point_map=torch.zeros_like(cond["refs_rgb"]))
    pair = {k: torch.cat([cond[k], black[k]]) for k in cond}
    mixed = fwd(flux, adapter, pair, masked=[True, False])
    for x, y in zip(mixed, fwd(flux, adapter, cond, masked=True)):
        torch.testing.assert_close(x[:1], y, rtol=0, atol=ATOL)
    for x, y in zip(mixed, fwd(flux, adapter, black, masked=False)):
        torch.testing.assert_close(x[1:], y, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# 6. cached == uncached

def test_cached_references_equal_uncached_when_the_mask_already_isolates_them(model, adapter):
    flux = model.model.diffusion_model
    inp = inputs(b=2, seed=15)
    for masked in (True, False, [False, True]):
        plain = fwd(flux, adapter, inp, masked=masked, cached_references=True)  # isolated refs, no cache
        cache = ReferenceCache()
        first = fwd(flux, adapter, inp, masked=masked, cached_references=True, reference_cache=cache)
        assert (cache.hits, cache.misses, len(cache)) == (0, 1, 2)
        for step in (0.3, 0.7):  # later steps reuse the cache and skip the reference tokens
            later_inp = dict(inp, timestep=torch.full_like(inp["timestep"], step))
            later = fwd(flux, adapter, later_inp, masked=masked, cached_references=True, reference_cache=cache)
            ref = fwd(flux, adapter, later_inp, masked=masked, cached_references=True)
            for x, y in zip(later, ref):
                torch.testing.assert_close(x, y, rtol=0, atol=ATOL)
        assert cache.hits == 2 and cache.misses == 1
        for x, y in zip(first, plain):
            torch.testing.assert_close(x, y, rtol=0, atol=ATOL)


def test_cache_is_keyed_on_references_and_pooled(model, adapter):
    flux = model.model.diffusion_model
    inp = inputs(b=1, seed=16)
    cache = ReferenceCache(max_entries=2)
    fwd(flux, adapter, inp, cached_references=True, reference_cache=cache)
    changed = [dict(inp, refs_rgb=inp["refs_rgb"] + 1e-3), dict(inp, pooled=inp["pooled"] + 1e-3)]
    for other in changed:
        a = fwd(flux, adapter, other, cached_references=True, reference_cache=cache)
        b = fwd(flux, adapter, other, cached_references=True)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=ATOL)
    assert cache.misses == 3 and cache.hits == 0 and len(cache) == 2  # least recently used dropped
    # a batch of identical samples is served by one entry
    cache.clear()
    twice = {k: torch.cat([v, v]) for k, v in inp.items()}
    first = fwd(flux, adapter, twice, cached_references=True, reference_cache=cache)
    assert len(cache) == 1
    again = fwd(flux, adapter, twice, cached_references=True, reference_cache=cache)
    assert cache.hits == 1
    for x, y in zip(first, again):
        torch.testing.assert_close(x[0], x[1], rtol=0, atol=ATOL)
        torch.testing.assert_close(y, x, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# inputs

def test_bad_inputs_give_clear_errors(model, adapter):
    flux = model.model.diffusion_model
    inp = inputs(b=1)
    cases = [
        (dict(x_point_map=inp["x_point_map"][..., :4]), "target latents must both be"),
        (dict(refs_point_map=inp["refs_point_map"][:, :1]), "reference latents must both be"),
        (dict(refs_rgb=inp["refs_rgb"][..., :3], refs_point_map=inp["refs_point_map"][..., :3]), "multiples of 2"),
        (dict(timestep=torch.zeros(2)), "timestep must have shape (1,)"),
        (dict(context=inp["context"][0]), "context must be 1×L×C"),
    ]
    for change, message in cases:
        with pytest.raises(RefAny3DInputError, match=".*" + message.replace("(", r"\(").replace(")", r"\)")):
            fwd(flux, adapter, dict(inp, **change))
    wide = make_adapter(release_state_dicts(2 * D, DEPTH, DEPTH_SINGLE, rank=4))
    with pytest.raises(RefAny3DInputError, match="adapter is 64 wide but the Flux model's hidden size is 32"):
        fwd(flux, wide, inp)
    with pytest.raises(RefAny3DInputError, match="needs ComfyUI's Flux transformer"):
        fwd(torch.nn.Linear(2, 2), adapter, inp)
    with pytest.raises(RefAny3DInputError, match="mask must be True/False or one bool per sample"):
        fwd(flux, adapter, inp, masked="open")


def test_cancel_is_checked_between_blocks(model, adapter):
    import comfy.model_management as mm
    flux = model.model.diffusion_model
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            fwd(flux, adapter, inputs(b=1))
    finally:
        mm.interrupt_current_processing(False)
    fwd(flux, adapter, inputs(b=1))


def test_bf16_model_runs_in_its_own_dtype_and_matches_stock_bf16():
    """bf16 weights: the forward computes in bf16 (LoRA deltas and E(d) in the activation dtype) and,
    zeroed/open/shared as in test 1, equals ComfyUI's own bf16 Flux exactly. (A random tiny model is
    chaotic: stock ComfyUI's bf16 and float32 outputs differ by ~25% here, so no float32 comparison.)"""
    flux16 = make_flux(dtype=torch.bfloat16).model.diffusion_model
    inp = {k: (v.to(torch.bfloat16) if k != "timestep" else v.float()) for k, v in inputs(b=2).items()}
    img, ids, bounds = spec_sequence(inp)
    with torch.no_grad():
        stock = flux16.forward_orig(img, ids[None].expand(2, -1, -1), inp["context"], torch.zeros(2, 3, 3),
                                    inp["timestep"], inp["pooled"], inp["guidance"], transformer_options={})
    zero = make_adapter(release_sds(zero=True))
    v = fwd(flux16, zero, inp, masked=False, ref_timestep=None, ref_guidance=None)
    nt = bounds[0][2]
    assert v[0].dtype == torch.bfloat16
    assert torch.equal(v[0], unpack(stock[:, :nt], 4, 6)) and torch.equal(v[1], unpack(stock[:, nt:2 * nt], 4, 6))
    adapter = make_adapter(release_sds())
    for cached in (False, True):
        out = fwd(flux16, adapter, inp, cached_references=cached, reference_cache=ReferenceCache() if cached else None)
        assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in out)
