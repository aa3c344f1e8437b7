"""RefAny3D on a ComfyUI ModelPatcher: sampling with any ComfyUI sampler (spec §5).

Sampling design
---------------
* **One joined latent.** The two targets (RGB and point map, spec §5) are one ComfyUI LATENT of
  shape [B, 16, H, 2W]: the RGB latent in the left half, the point-map latent in the right half
  (``RefAny3DEmptyLatent`` makes it, ``RefAny3DSplitLatent`` splits it for core ``VAEDecode``).
  Both halves therefore start from independent noise and follow the same sigma schedule, and the
  stock ``KSampler``/``KSamplerAdvanced`` and ``SamplerCustomAdvanced`` (any sampler, any
  scheduler, any noise) work unchanged. For the resolution-dependent Flux shift of spec §5 use core
  ``ModelSamplingFlux`` with the width/height of ONE target (not the joined width).
* **A DIFFUSION_MODEL wrapper** (:class:`RefAny3DPatch`, added with ``add_wrapper_with_key`` on a
  clone of the user's ModelPatcher, so the shared model is never touched) replaces the inside of
  ``Flux.forward`` for that clone: it splits the joined latent, runs :func:`refany3d_forward` and
  joins the two velocities again. ComfyUI's own machinery stays in charge of everything else:
  weight loading/offloading, fp8, other LoRAs, cond/uncond batching, ``process_latent_in`` of the
  sampled latent, progress and Cancel (an interrupt raised between steps is never caught here).
* **Image guidance** (spec §5) is combined inside the step: a second pass with black references,
  ``v = v_empty + s·(v_ref − v_empty)`` for both targets (default s = 2.0; s = 1 skips the second
  pass). The two passes run batched in one call of :func:`refany3d_forward`. The black-reference
  pass is unmasked by default, as the release runs it ("unmasked (release)"), or masked.
* **References** are encoded once by the user's VAE (in the Apply node, :func:`encode_references`),
  put in the model's latent scale with ``process_latent_in`` (as core does for Kontext references),
  and the black images are encoded once too. They are stored in the wrapper, moved to the sampling
  device/dtype on first use.
* **Cached references** (spec §4, optional): the references' keys/values are computed at the first
  step and reused for every later step and for the guidance pass. The cache lives in the wrapper;
  an OUTER_SAMPLE wrapper empties it at the start and end of every sampling run, and entries are
  matched on the reference latents and pooled vector, so nothing leaks between prompts.
* **Memory**: ComfyUI sizes the free memory it keeps for activations from the latent's area; a
  PREPARE_SAMPLING wrapper scales that estimate by the reference tokens and the guidance pass.
* Flux guidance (the guidance embedding) comes from the conditioning as usual; there is no text CFG
  pass unless the user sets cfg > 1 in the sampler (then cond and uncond are batched by ComfyUI).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .transformer import MASKED, UNMASKED, RefAny3DInputError, ReferenceCache, refany3d_forward

WRAPPER_KEY = "refany3d"
GUIDANCE_PASSES = {"unmasked (release)": UNMASKED, "masked": MASKED}
DEFAULT_GUIDANCE_PASS = "unmasked (release)"


class RefAny3DError(ValueError):
    """A clear, user-facing error of the RefAny3D model patch."""


#: Optional FluxParams fields whose non-default value marks a Flux variant (FLUX.2/Klein: global
#: modulation, SiLU MLP, no biases; Ovis: yak MLP, text norm; LongCat: text RoPE ids) that the
#: RefAny3D loop does not know. FLUX.1 keeps every one at its default (``txt_ids_dims``: empty).
#: Fields that a newer ComfyUI adds are judged the same way: any non-default value is refused.
FLUX1_REQUIRED_PARAMS = {"in_channels", "out_channels", "vec_in_dim", "context_in_dim", "hidden_size", "mlp_ratio",
                         "num_heads", "depth", "depth_single_blocks", "axes_dim", "theta", "patch_size", "qkv_bias",
                         "guidance_embed", "txt_ids_dims"}


def _variant_markers(params) -> list[str]:
    """Names (and values) of the FluxParams fields that are not FLUX.1's."""
    import dataclasses
    marks = []
    if list(getattr(params, "txt_ids_dims", None) or []):
        marks.append(f"txt_ids_dims={list(params.txt_ids_dims)}")
    if len(params.axes_dim) != 3:
        marks.append(f"axes_dim={list(params.axes_dim)}")
    if not dataclasses.is_dataclass(params):
        return marks
    for f in dataclasses.fields(params):
        if f.name in FLUX1_REQUIRED_PARAMS:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # a new required field: FLUX.1 detection would not know it either
            marks.append(f"{f.name}={getattr(params, f.name)!r}")
            continue
        if getattr(params, f.name) != default:
            marks.append(f"{f.name}={getattr(params, f.name)!r}")
    return marks


def _layout_problems(flux) -> list[str]:
    """What in the module tree differs from the FLUX.1 blocks the RefAny3D loop runs."""
    import torch.nn as nn
    problems = []
    if getattr(flux, "txt_norm", None) is not None:
        problems.append("a text norm (txt_norm)")
    for i, block in enumerate(flux.double_blocks):
        mlp = getattr(block, "img_mlp", None)
        if not all(hasattr(block, a) for a in ("img_mod", "txt_mod", "img_attn", "txt_attn", "img_norm1",
                                                "img_norm2", "txt_norm1", "txt_norm2", "txt_mlp")):
            problems.append(f"double block {i} has no per-block modulation or a different set of layers")
        elif not (isinstance(mlp, nn.Sequential) and len(mlp) == 3 and isinstance(mlp[1], nn.GELU)):
            problems.append(f"double block {i} has a {type(mlp).__name__} MLP, not FLUX.1's Linear-GELU-Linear")
        if problems:
            break
    for i, block in enumerate(flux.single_blocks):
        if getattr(block, "modulation", None) is None or getattr(block, "yak_mlp", False):
            problems.append(f"single block {i} has no per-block modulation or a yak MLP")
        elif getattr(block, "mlp_hidden_dim_first", block.mlp_hidden_dim) != block.mlp_hidden_dim or \
                not isinstance(block.mlp_act, nn.GELU):
            problems.append(f"single block {i} has a gated MLP, not FLUX.1's GELU MLP")
        if problems:
            break
    return problems


def unwrap_flux(model):
    """The ``comfy.ldm.flux.model.Flux`` inside a ModelPatcher when it is a FLUX.1 whose block layout
    the RefAny3D loop knows, or a RefAny3DError that says what differs."""
    import comfy.model_base
    from comfy.ldm.flux.model import Flux
    base = getattr(model, "model", None)
    inner = getattr(base, "diffusion_model", None)
    if not isinstance(base, comfy.model_base.Flux) or not isinstance(inner, Flux):
        kind = type(base).__name__ if base is not None else type(model).__name__
        raise RefAny3DError(f"RefAny3D needs a FLUX.1 model (FLUX.1-dev); the MODEL input is a {kind} model")
    if type(base) is not comfy.model_base.Flux:
        raise RefAny3DError(f"RefAny3D needs a FLUX.1 model (FLUX.1-dev); this is a {type(base).__name__} "
                            "variant of Flux that it does not support")
    marks = _variant_markers(inner.params)
    if marks:
        raise RefAny3DError("RefAny3D needs a FLUX.1 model (FLUX.1-dev); this Flux is a variant the RefAny3D "
                            f"transformer does not know ({', '.join(marks)}), so it refuses to run rather than "
                            "paint a wrong picture")
    fan_in = getattr(inner.img_in, "in_features", None)
    if inner.params.in_channels != 16 or (fan_in is not None and fan_in != 16 * inner.patch_size ** 2):
        raise RefAny3DError(f"RefAny3D needs FLUX.1-dev's 16-channel input; this Flux takes {fan_in} input features "
                            "per token (a Fill/Depth/Canny-type variant), which the RefAny3D weights do not fit")
    problems = _layout_problems(inner)
    if problems:
        raise RefAny3DError("RefAny3D needs a FLUX.1 model (FLUX.1-dev); this Flux's blocks differ from FLUX.1's "
                            f"({'; '.join(problems)}), which the RefAny3D transformer does not support")
    return inner


#: transformer_options["patches"] keys that stock Flux applies inside its own blocks or forward
#: (ComfyUI v0.3.75 … current) and the RefAny3D loop does not: refused rather than silently dropped.
#: Keys of hooks that Flux never calls (UNet block and cross-attention patches, other DiTs' hooks)
#: are ignored, as stock Flux ignores them.
NOT_FLUX_PATCHES = {"input_block_patch", "input_block_patch_after_skip", "middle_block_patch", "middle_patch",
                    "middle_block_after_patch", "output_block_patch", "attn2_patch", "attn2_output_patch",
                    "emb_patch", "forward_timestep_embed_patch", "double_block", "noise_refiner"}
PATCH_NAMES = {
    "attn1_patch": "an attention patch (attn1_patch; e.g. from TomePatchModel, HyperTile, FluxKVCache or a "
                   "model-patch/IP-adapter node)",
    "attn1_output_patch": "an attention-output patch (attn1_output_patch; e.g. from Normalized Attention Guidance "
                          "(NAGuidance), HyperTile or TomePatchModel)",
    "post_input": "a post-input patch (post_input; e.g. from FluxKVCache or a USO/model-patch node)",
}


def unsupported_features(transformer_options: dict | None) -> list[str]:
    """What in ComfyUI's ``transformer_options`` would change stock Flux's output but is not applied by the
    RefAny3D block loop: attention and post-input patches, block replacements, RoPE options."""
    opts = transformer_options or {}
    found = []
    for key, value in (opts.get("patches") or {}).items():
        if value and key not in NOT_FLUX_PATCHES:
            found.append(PATCH_NAMES.get(key, f"a model patch '{key}'"))
    replaced = (opts.get("patches_replace") or {}).get("dit") or {}
    if replaced:
        blocks = ", ".join(f"{kind} {i}" for kind, i in sorted(replaced, key=str)[:4])
        found.append(f"block replacements (patches_replace dit: {blocks}{', …' if len(replaced) > 4 else ''}; "
                     "e.g. from a caching/speed-up or PuLID-type node)")
    if opts.get("rope_options"):
        found.append("RoPE options (rope_options, from ScaleROPE)")
    return found


def check_transformer_options(transformer_options: dict | None, where: str) -> None:
    """A RefAny3DError naming every unsupported core feature in ``transformer_options``."""
    found = unsupported_features(transformer_options)
    if found:
        raise RefAny3DError(f"{where}: the model carries {'; '.join(found)}. RefAny3D runs its own loop over "
                            "Flux's blocks and does not apply these, so the result would silently differ; remove "
                            "the node(s) that add them between the model loader and the sampler")


def split_joined(x: Tensor) -> tuple[Tensor, Tensor]:
    """[B, C, H, 2W] -> (RGB [B, C, H, W], point map [B, C, H, W])."""
    if x.shape[-1] % 2:
        raise RefAny3DError(f"the RefAny3D latent must be the RGB and point-map latents side by side (even "
                            f"width); got width {x.shape[-1]}. Make it with RefAny3D Empty Latent.")
    w = x.shape[-1] // 2
    return x[..., :w], x[..., w:]


def join(rgb: Tensor, point_map: Tensor) -> Tensor:
    return torch.cat([rgb, point_map], dim=-1)


class RefAny3DPatch:
    """The state of one RefAny3D Apply: adapter, reference latents (model scale, [N, 16, h, w]),
    black-reference latents, image guidance and mode, reference cache. Called by ComfyUI as the
    DIFFUSION_MODEL wrapper; :meth:`outer_sample` is the OUTER_SAMPLE wrapper."""

    def __init__(self, adapter, refs_rgb: Tensor, refs_point_map: Tensor, black_rgb: Tensor | None = None,
                 black_point_map: Tensor | None = None, image_guidance: float = 2.0,
                 guidance_pass: str = DEFAULT_GUIDANCE_PASS, cache_references: bool = False, max_cached: int = 4):
        if guidance_pass not in GUIDANCE_PASSES and guidance_pass not in (MASKED, UNMASKED):
            raise RefAny3DError(f"guidance pass must be one of {list(GUIDANCE_PASSES)}, got '{guidance_pass}'")
        if float(image_guidance) != 1.0 and (black_rgb is None or black_point_map is None):
            raise RefAny3DError("image guidance other than 1.0 needs the black-reference latents")
        self.adapter = adapter
        self.refs = (refs_rgb, refs_point_map)
        self.black = (black_rgb, black_point_map)
        self.image_guidance = float(image_guidance)
        self.guidance_mode = GUIDANCE_PASSES.get(guidance_pass, guidance_pass)
        self.cache_references = bool(cache_references)
        self.cache = ReferenceCache(max_entries=max_cached)
        self._moved: dict = {}
        self.calls = 0

    def _on(self, which: str, device, dtype) -> tuple[Tensor, Tensor]:
        key = (which, str(device), dtype)
        if key not in self._moved:
            pair = self.refs if which == "refs" else self.black
            self._moved[key] = tuple(t.to(device=device, dtype=dtype) for t in pair)
        return self._moved[key]

    def outer_sample(self, executor, *args, **kwargs):
        """OUTER_SAMPLE wrapper: a fresh reference cache for every sampling run."""
        self.cache.clear()
        self._moved.clear()
        try:
            return executor(*args, **kwargs)
        finally:
            self.cache.clear()
            self._moved.clear()

    def memory_shape(self, noise_shape) -> list[int]:
        """The latent shape whose memory estimate matches one RefAny3D step: ComfyUI estimates
        activation memory from the latent's area, which here also has to cover the reference tokens
        and the batched black-reference pass. The batch is scaled by that factor."""
        shape = list(noise_shape)
        if len(shape) != 4:
            return shape
        target_area = shape[-2] * shape[-1]  # both targets (joined)
        n, _, h, w = self.refs[0].shape
        area = target_area + 2 * n * h * w
        passes = 1 if self.image_guidance == 1.0 else 2
        shape[0] = max(1, -(-shape[0] * passes * area // max(target_area, 1)))
        return shape

    def prepare_sampling(self, executor, *args, **kwargs):
        """PREPARE_SAMPLING wrapper: ComfyUI loads the model with room for RefAny3D's activations.
        ComfyUI calls it as ``executor(model, noise_shape, conds, ...)`` (keyword options vary by
        version); only the noise shape is changed, everything else is passed on as given."""
        if len(args) > 1:
            args = (args[0], self.memory_shape(args[1]), *args[2:])
        elif "noise_shape" in kwargs:
            kwargs["noise_shape"] = self.memory_shape(kwargs["noise_shape"])
        return executor(*args, **kwargs)

    def __call__(self, executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                 transformer_options=None, **kwargs):
        """DIFFUSION_MODEL wrapper: ``(executor, x, timestep, context, y, guidance, ref_latents, control,
        transformer_options, **kw)`` as ``Flux.forward`` passes them; x is the joined latent."""
        flux = executor.class_obj
        if control is not None:
            raise RefAny3DError("ControlNets are not supported together with RefAny3D")
        if ref_latents is not None:
            raise RefAny3DError("Kontext-style reference latents (ReferenceLatent) cannot be combined with RefAny3D")
        if kwargs.get("attention_mask") is not None:
            raise RefAny3DError("a text attention mask in the conditioning is not supported together with RefAny3D")
        check_transformer_options(transformer_options, "RefAny3D (sampling)")
        x_rgb, x_pm = split_joined(x)
        b = x.shape[0]
        refs = [r[None].expand(b, *r.shape) for r in self._on("refs", x.device, x.dtype)]
        self.calls += 1
        options = dict(cached_references=self.cache_references,
                       reference_cache=self.cache if self.cache_references else None,
                       transformer_options=transformer_options)
        try:
            if self.image_guidance == 1.0:
                return join(*refany3d_forward(flux, self.adapter, x_rgb, x_pm, refs[0], refs[1], timestep, context,
                                              y, guidance, masked=True, **options))
            black = [r[None].expand(b, *r.shape) for r in self._on("black", x.device, x.dtype)]

            def two(t):
                return None if t is None else torch.cat([t, t])
            v_rgb, v_pm = refany3d_forward(
                flux, self.adapter, two(x_rgb), two(x_pm), torch.cat([refs[0], black[0]]),
                torch.cat([refs[1], black[1]]), two(timestep), two(context), two(y), two(guidance),
                masked=[MASKED] * b + [self.guidance_mode] * b, **options)
        except RefAny3DInputError as e:
            raise RefAny3DError(str(e)) from None
        s = self.image_guidance
        v_rgb = v_rgb[b:] + s * (v_rgb[:b] - v_rgb[b:])
        v_pm = v_pm[b:] + s * (v_pm[:b] - v_pm[b:])
        return join(v_rgb, v_pm)


def apply_refany3d(model, adapter, refs_rgb: Tensor, refs_point_map: Tensor, black_rgb: Tensor | None = None,
                   black_point_map: Tensor | None = None, image_guidance: float = 2.0,
                   guidance_pass: str = DEFAULT_GUIDANCE_PASS, cache_references: bool = False):
    """A clone of ModelPatcher ``model`` that samples RefAny3D. ``refs_*``: reference latents in the
    model's scale (after ``process_latent_in``), [N, 16, h, w]; ``black_*`` likewise for the black
    references (needed when image_guidance != 1). Validates the model and the adapter."""
    from .weights import AdapterError, validate_adapter
    import comfy.patcher_extension as pe
    flux = unwrap_flux(model)
    check_transformer_options(model.model_options.get("transformer_options"), "RefAny3D Apply")
    try:
        validate_adapter(adapter, flux)
    except AdapterError as e:
        raise RefAny3DError(str(e)) from None
    patch = RefAny3DPatch(adapter, refs_rgb, refs_point_map, black_rgb, black_point_map, image_guidance,
                          guidance_pass, cache_references)
    m = model.clone()
    m.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    m.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    m.remove_wrappers_with_key(pe.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, patch)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, patch.outer_sample)
    m.add_wrapper_with_key(pe.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, patch.prepare_sampling)
    return m


def check_reference_images(rgb: Tensor, point_map: Tensor, multiple: int = 16) -> None:
    """RGB and point-map reference IMAGE batches ([N, H, W, C]) must pair up and suit the VAE."""
    for name, img in (("reference_rgb", rgb), ("reference_point_map", point_map)):
        if img.ndim != 4 or img.shape[-1] not in (3, 4):
            raise RefAny3DError(f"{name} must be an IMAGE batch N×H×W×3, got shape {tuple(img.shape)}")
    if rgb.shape[0] != point_map.shape[0]:
        raise RefAny3DError(f"reference_rgb has {rgb.shape[0]} views but reference_point_map has "
                            f"{point_map.shape[0]}: they must be the same views, in the same order")
    if rgb.shape[1:3] != point_map.shape[1:3]:
        raise RefAny3DError(f"reference_rgb views are {rgb.shape[2]}×{rgb.shape[1]} but reference_point_map views "
                            f"are {point_map.shape[2]}×{point_map.shape[1]}: they must have the same size")
    h, w = rgb.shape[1:3]
    if h % multiple or w % multiple:
        raise RefAny3DError(f"reference views are {w}×{h}; width and height must be multiples of {multiple} for "
                            "the Flux VAE and 2×2 patches (the release uses 512×512)")


def encode_references(model, vae, rgb: Tensor, point_map: Tensor, black: bool = True):
    """Encodes the reference views once with ``vae`` and puts them in the model's latent scale.
    Returns (refs_rgb, refs_point_map, black_rgb, black_point_map), each [N, 16, h, w] (black ones
    None when ``black`` is False); the black image is encoded once and repeated for the N views."""
    import comfy.model_management as mm
    check_reference_images(rgb, point_map)
    base = model.model
    try:
        lat_rgb = vae.encode(rgb[..., :3])
        lat_pm = vae.encode(point_map[..., :3])
        lat_black = vae.encode(torch.zeros_like(rgb[:1, ..., :3])) if black else None
    except Exception as e:
        if isinstance(e, mm.InterruptProcessingException):  # Cancel (an Exception in older ComfyUI)
            raise
        raise RefAny3DError(f"the VAE could not encode the reference views ({type(e).__name__}: {e})") from None
    c = base.diffusion_model.params.in_channels
    if lat_rgb.ndim != 4 or lat_rgb.shape[1] != c:
        raise RefAny3DError(f"the VAE gives {lat_rgb.shape[1] if lat_rgb.ndim == 4 else '?'}-channel latents but "
                            f"the Flux model takes {c}: use the Flux VAE (ae.safetensors)")
    if lat_rgb.shape[-2] % 2 or lat_rgb.shape[-1] % 2:
        raise RefAny3DError(f"the VAE gives {lat_rgb.shape[-1]}×{lat_rgb.shape[-2]} latents; they must be even "
                            "for Flux's 2×2 patches (use reference views in multiples of 16 px)")
    out = [base.process_latent_in(lat_rgb).float().cpu(), base.process_latent_in(lat_pm).float().cpu()]
    if black:
        b = base.process_latent_in(lat_black).float().cpu().repeat(rgb.shape[0], 1, 1, 1)
        out += [b, b.clone()]
    else:
        out += [None, None]
    return tuple(out)
