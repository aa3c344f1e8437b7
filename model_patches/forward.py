"""One evaluation of the RefAny3D transformer on ComfyUI's Flux (docs/method.md §2–§4).

:func:`refany3d_forward` runs its own loop over the blocks of a ``comfy.ldm.flux.model.Flux`` (the
FLUX.1 layout) because RefAny3D needs what the stock ``forward_orig`` cannot give: one modulation
vector per token group, the two LoRAs applied per token group, and the group attention mask. It is
a pure function of its inputs and an optional :class:`~.cache.ReferenceCache`.

The model and the adapter are validated once, where they enter (RefAny3D Apply:
:func:`~.flux_check.check_flux`, :func:`~.weights.validate_adapter`); here only the tensors'
shapes are checked, since they change with every call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .attention import group_attention
from .blocks import BlockContext, double_block, final_layer, single_block
from .cache import NO_CACHE, ReferenceCache
from .errors import RefAny3DError, RefAny3DInputError
from .modulation import REF_GUIDANCE, REF_TIMESTEP, modulation_vectors
from .routing import routed_linear
from .groups import REF_COLUMN_SHIFT, TARGETS
from .tokens import image_tokens, layout_of, rope, sequence_ids, unpatchify


def refany3d_forward(flux, adapter, x_rgb: Tensor, x_point_map: Tensor, refs_rgb: Tensor, refs_point_map: Tensor,
                     timestep: Tensor, context: Tensor, pooled: Tensor | None, guidance: Tensor | None,
                     *, masked=True, cached_references: bool = False, reference_cache: ReferenceCache | None = None,
                     transformer_options: dict | None = None, ref_timestep: float | None = REF_TIMESTEP,
                     ref_guidance: float | None = REF_GUIDANCE, ref_column_shift: int = REF_COLUMN_SHIFT,
                     attention=group_attention, capture: dict | None = None,
                     checkpoint: bool = False) -> tuple[Tensor, Tensor]:
    """The velocities of the target groups (``groups.py``), ``(v_rgb, v_point_map)``, each B×16×H×W in
    ``x_rgb``'s dtype.

    Inputs (ComfyUI layout, latents in the model's scale, i.e. after ``process_latent_in``):

    * ``flux``: ``comfy.ldm.flux.model.Flux`` (FLUX.1). ``adapter``: anything with ``loras[name][module]
      = (down [R, in], up [out, R])``, ``domain_embedder`` and ``hidden_size`` (a ``RefAny3DAdapter``);
      its tensors are used where they are, cast to the activations' dtype and device on use.
    * ``x_rgb``, ``x_point_map``: noisy target latents B×16×H×W; ``refs_rgb``, ``refs_point_map``:
      reference latents B×N×16×h×w (N may be 0).
    * ``timestep`` [B] (sigma), ``context`` B×L×C (T5 tokens), ``pooled`` B×P or None, ``guidance`` [B] or None.

    Options: ``masked``: True (the §4 group mask), False (every group sees every group: the release's
    black-reference pass), or one bool per sample. ``cached_references``: the cached variant (references
    attend only to references), reusing keys/values from ``reference_cache`` when given.
    ``transformer_options``: ComfyUI's dict (attention overrides; copied, never changed).
    ``ref_timestep`` / ``ref_guidance``: the references' t and guidance (None: the targets').
    ``ref_column_shift``: RoPE column shift of the references. ``attention``: the group-attention
    function (tests pass a dense-mask oracle). ``capture``: filled with every group's hidden states
    after the last block. ``checkpoint``: gradient checkpointing (training): every double and single
    block runs under ``torch.utils.checkpoint`` (non-reentrant) and is recomputed in the backward pass;
    the cached variant is refused with it (a training forward never reuses references' keys/values).
    """
    if checkpoint and (cached_references or reference_cache is not None):
        raise RefAny3DError("cached references are an inference-only option: they cannot be used in training "
                            "(with gradient checkpointing); train with cached_references=False")
    flags = check_inputs(flux, adapter, x_rgb, x_point_map, refs_rgb, refs_point_map, timestep, context, pooled,
                         guidance, masked)
    dtype, device, p = x_rgb.dtype, x_rgb.device, flux.patch_size
    isolated = bool(cached_references)
    plan = NO_CACHE
    if isolated and reference_cache is not None and refs_rgb.shape[1] > 0:
        key = (id(flux), id(adapter), dtype, str(device), int(ref_column_shift), ref_timestep, ref_guidance)
        plan = reference_cache.plan(refs_rgb, refs_point_map, pooled, [key + (f,) for f in flags],
                                    shape=cache_shape(flux, refs_rgb, dtype, device))
    latents = dict(x_rgb=x_rgb, x_point_map=x_point_map, refs_rgb=refs_rgb, refs_point_map=refs_point_map)
    lay = layout_of(latents, context.shape[1], p, refs_in_sequence=plan.refs_in_sequence)

    img = routed_linear(flux.img_in, image_tokens(latents, lay, p), lay.image_segments(), adapter, "img_in")
    txt = flux.txt_in(context.to(dtype))
    vecs = modulation_vectors(flux, adapter, timestep, guidance, pooled, img.dtype, ref_timestep, ref_guidance)
    pe = rope(flux, sequence_ids(lay, col_shift=ref_column_shift, device=device))
    opts = dict(transformer_options or {})
    ctx = BlockContext(adapter, lay, vecs, pe, flags, isolated, opts, cache=plan, attention=attention)

    interrupted = _interrupt_check()
    run = _checkpointed if checkpoint else _direct
    opts["total_blocks"], opts["block_type"] = len(flux.double_blocks), "double"
    for i, block in enumerate(flux.double_blocks):
        interrupted()
        opts["block_index"] = i
        img, txt = run(double_block, block, img, txt, ctx, f"double_blocks.{i}")
    if img.dtype == torch.float16:
        img = torch.nan_to_num(img, nan=0.0, posinf=65504, neginf=-65504)
    x = torch.cat((txt, img), 1)
    opts["total_blocks"], opts["block_type"] = len(flux.single_blocks), "single"
    for i, block in enumerate(flux.single_blocks):
        interrupted()
        opts["block_index"] = i
        x = run(single_block, block, x, ctx, f"single_blocks.{i}")
    plan.commit()
    if capture is not None:
        capture.update({g: x[:, a:b] for g, a, b in lay.sequence_segments()})

    h, w = x_rgb.shape[-2:]
    segments = {g: (a, b) for g, a, b in lay.sequence_segments()}
    return tuple(unpatchify(final_layer(flux, x[:, slice(*segments[g.name])], vecs[g.name]), h, w, p)
                 for g in TARGETS)


def cache_shape(flux, refs_rgb: Tensor, dtype, device) -> dict:
    """What one reference-cache entry holds for this model and these references (see
    :class:`~.cache.CacheSize`): per block K and V of the 2·N·m reference tokens, per head."""
    p = flux.patch_size
    n, h, w = refs_rgb.shape[1], refs_rgb.shape[-2], refs_rgb.shape[-1]
    return dict(blocks=len(flux.double_blocks) + len(flux.single_blocks), heads=flux.num_heads,
                tokens=2 * n * (h // p) * (w // p), head_dim=flux.hidden_size // flux.num_heads, dtype=dtype,
                device=device)


def _direct(fn, *args):
    return fn(*args)


def _checkpointed(fn, *args):
    """``fn(*args)`` with its activations recomputed in the backward pass instead of kept."""
    from torch.utils.checkpoint import checkpoint
    return checkpoint(fn, *args, use_reentrant=False)


def _interrupt_check():
    """ComfyUI's Cancel, checked between blocks so a long step stops promptly (raises
    InterruptProcessingException; never caught here)."""
    import comfy.model_management as mm
    return mm.throw_exception_if_processing_interrupted


def check_inputs(flux, adapter, x_rgb, x_pm, refs_rgb, refs_pm, timestep, context, pooled, guidance,
                 masked) -> list[bool]:
    """Shapes that fit together and fit the model; returns the per-sample mask flags."""
    from comfy.ldm.flux.model import Flux
    if not isinstance(flux, Flux):
        raise RefAny3DInputError(f"RefAny3D needs ComfyUI's Flux transformer (comfy.ldm.flux.model.Flux), "
                                 f"got {type(flux).__name__}")
    if int(adapter.hidden_size) != int(flux.hidden_size):
        raise RefAny3DInputError(f"the RefAny3D adapter is {adapter.hidden_size} wide but the Flux model's "
                                 f"hidden size is {flux.hidden_size}")
    c, p = flux.params.in_channels, flux.patch_size
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
    flags = [bool(masked)] * b if isinstance(masked, bool) else [bool(f) for f in masked] \
        if not isinstance(masked, str) else None
    if flags is None or len(flags) != b:
        raise RefAny3DInputError(f"mask must be True/False or one bool per sample ({b}), got {masked!r}")
    return flags
