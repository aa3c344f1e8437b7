"""RefAny3D on a ComfyUI ModelPatcher: sampling with any ComfyUI sampler (docs/method.md §5).

Sampling design
---------------
* **One joined latent.** The two targets (RGB and point map, §5) are one ComfyUI LATENT of
  shape [B, 16, H, 2W]: the RGB latent in the left half, the point-map latent in the right half
  (``RefAny3DEmptyLatent`` makes it, ``RefAny3DSplitLatent`` splits it for core ``VAEDecode``).
  Both halves therefore start from independent noise and follow the same sigma schedule, and the
  stock ``KSampler``/``KSamplerAdvanced`` and ``SamplerCustomAdvanced`` (any sampler, any
  scheduler, any noise) work unchanged. For the resolution-dependent Flux shift of §5 use core
  ``ModelSamplingFlux`` with the width/height of ONE target (not the joined width).
* **A DIFFUSION_MODEL wrapper** (:class:`RefAny3DPatch`, added with ``add_wrapper_with_key`` on a
  clone of the user's ModelPatcher, so the shared model is never touched) replaces the inside of
  ``Flux.forward`` for that clone: it splits the joined latent, runs :func:`refany3d_forward` and
  joins the two velocities again. ComfyUI's own machinery stays in charge of everything else:
  weight loading/offloading, fp8, other LoRAs, cond/uncond batching, ``process_latent_in`` of the
  sampled latent, progress and Cancel (an interrupt raised between steps is never caught here).
* **Image guidance** (docs/method.md §5) is combined inside the step: a second pass with black references,
  ``v = v_empty + s·(v_ref − v_empty)`` for both targets (default s = 2.0; s = 1 skips the second
  pass). The two passes run batched in one call of :func:`refany3d_forward`. The black-reference
  pass is unmasked by default, as the release runs it ("unmasked (release)"), or masked.
* **References** are encoded once by the user's VAE (in the Apply node, :func:`encode_references`),
  put in the model's latent scale with ``process_latent_in`` (as core does for Kontext references),
  and the black images are encoded once too. They are stored in the wrapper, moved to the sampling
  device/dtype on first use.
* **Cached references** (§4, optional): the references' keys/values are computed at the first
  step and reused for every later step and for the guidance pass. The caches live in the wrapper,
  one per compute device (ComfyUI can run clones of the model on several devices, in threads; each
  cache is locked); an OUTER_SAMPLE wrapper empties them at the start and end of every sampling
  run, and entries are matched on the reference latents and pooled vector, so nothing leaks
  between prompts. Before the first entry is recorded its size is known and it is placed where it
  fits (:mod:`.cache`: on the device beside the loaded model, in CPU memory brought in block by
  block, or not cached); the decision is reported through ``notify`` (RefAny3D Apply shows it on
  its node).
* **Memory**: ComfyUI sizes the free memory it keeps for activations from the latent's area; a
  PREPARE_SAMPLING wrapper scales that estimate by the reference tokens and the guidance pass. The
  adapter's weights are an additional model of the clone (:mod:`.adapter`): ComfyUI loads, counts,
  offloads and unloads them with the model.
* Flux guidance (the guidance embedding) comes from the conditioning as usual; there is no text CFG
  pass unless the user sets cfg > 1 in the sampler (then cond and uncond are batched by ComfyUI).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch
from torch import Tensor

from .cache import NONE, Decision, MemoryBudget, ReferenceCache
from .errors import RefAny3DError
from .flux_check import check_flux, check_transformer_options
from .forward import refany3d_forward
from .provenance import record_sampled

WRAPPER_KEY = "refany3d"
#: the black-reference pass: True = with the group mask, False = every group sees every group
GUIDANCE_PASSES = {"unmasked (release)": False, "masked": True}
DEFAULT_GUIDANCE_PASS = "unmasked (release)"


def split_joined(x: Tensor, patch: int | None = None) -> tuple[Tensor, Tensor]:
    """[B, C, H, 2W] -> (RGB [B, C, H, W], point map [B, C, H, W]). With ``patch`` (sampling: Flux's 2),
    each half's width and the height must be multiples of it too."""
    if x.shape[-1] % 2:
        raise RefAny3DError(f"the RefAny3D latent must be the RGB and point-map latents side by side (even "
                            f"width); got width {x.shape[-1]}. Make it with RefAny3D Empty Latent.")
    w = x.shape[-1] // 2
    if patch and (w % patch or x.shape[-2] % patch):
        h = x.shape[-2]
        raise RefAny3DError(
            f"the RefAny3D latent is {2 * w}×{h} (latent pixels), so each half (RGB | point map) is {w}×{h}; Flux "
            f"packs {patch}×{patch} patches, so each half's width and the height must be multiples of {patch}: "
            f"one image of {8 * w}×{8 * h} px is not a multiple of {8 * patch} px. Make the latent with RefAny3D "
            f"Empty Latent (width and height of ONE image, multiples of {8 * patch}); a core empty latent is not "
            "two halves side by side.")
    return x[..., :w], x[..., w:]


def join(rgb: Tensor, point_map: Tensor) -> Tensor:
    return torch.cat([rgb, point_map], dim=-1)


class RefAny3DPatch:
    """The state of one RefAny3D Apply: the adapter's weights (a module ComfyUI's model management
    moves, see :mod:`.adapter`), reference latents (model scale, [N, 16, h, w]), black-reference
    latents, image guidance and mode, reference caches (one per compute device, placed within
    ``cache_budget``; ``notify(text, warning)`` hears every placement decision). Called by ComfyUI as
    the DIFFUSION_MODEL wrapper; :meth:`outer_sample` and :meth:`prepare_sampling` are the
    OUTER_SAMPLE and PREPARE_SAMPLING wrappers. Safe to call from several threads at once."""

    def __init__(self, adapter, refs_rgb: Tensor, refs_point_map: Tensor, black_rgb: Tensor | None = None,
                 black_point_map: Tensor | None = None, image_guidance: float = 2.0,
                 guidance_pass: str = DEFAULT_GUIDANCE_PASS, cache_references: bool = False, max_cached: int = 4,
                 cache_budget: MemoryBudget | None = None, notify: Callable[[str, bool], None] | None = None):
        if guidance_pass not in GUIDANCE_PASSES:
            raise RefAny3DError(f"guidance pass must be one of {list(GUIDANCE_PASSES)}, got '{guidance_pass}'")
        if not math.isfinite(float(image_guidance)):
            raise RefAny3DError(f"image guidance must be a finite number (the release uses 2.0), got {image_guidance}")
        if float(image_guidance) != 1.0 and (black_rgb is None or black_point_map is None):
            raise RefAny3DError("image guidance other than 1.0 needs the black-reference latents")
        self.adapter = adapter
        self.refs = (refs_rgb, refs_point_map)
        self.black = (black_rgb, black_point_map)
        self.image_guidance = float(image_guidance)
        self.guidance_masked = GUIDANCE_PASSES[guidance_pass]
        self.cache_references = bool(cache_references)
        self.max_cached = int(max_cached)
        self.cache_budget = cache_budget if cache_budget is not None else MemoryBudget()
        self.notify = notify
        self.caches: dict[str, ReferenceCache] = {}
        self._moved: dict = {}
        self._lock = threading.Lock()
        self.calls = 0

    def cache_for(self, device) -> ReferenceCache:
        """The reference cache of one compute device (made on first use)."""
        with self._lock:
            key = str(torch.device(device))
            if key not in self.caches:
                self.caches[key] = ReferenceCache(self.max_cached, self.cache_budget, self._decided)
            return self.caches[key]

    @property
    def cache(self) -> ReferenceCache:
        """The cache of the device ComfyUI samples on (the one most runs use)."""
        import comfy.model_management as mm
        return self.cache_for(mm.get_torch_device())

    def _decided(self, decision: Decision) -> None:
        if self.notify is not None:
            self.notify(decision.describe(), decision.placement == NONE)

    def clear_caches(self) -> None:
        with self._lock:
            caches = list(self.caches.values())
            self._moved.clear()
        for cache in caches:
            cache.clear()

    def _on(self, which: str, device, dtype) -> tuple[Tensor, Tensor]:
        """The reference (or black) latents on the sampling device, moved once per run."""
        key = (which, str(device), dtype)
        with self._lock:
            if key not in self._moved:
                pair = self.refs if which == "refs" else self.black
                self._moved[key] = tuple(t.to(device=device, dtype=dtype) for t in pair)
            return self._moved[key]

    def outer_sample(self, executor, *args, **kwargs):
        """OUTER_SAMPLE wrapper: a fresh reference cache for every sampling run; what the run returns
        (and its last denoised estimate, SamplerCustomAdvanced's ``denoised_output``) is recorded as
        sampled by RefAny3D (:mod:`.provenance`), so RefAny3D Split Latent can tell it from a plain
        Flux sampling of the joined latent. ComfyUI calls it as ``executor(noise, latent_image,
        sampler, sigmas, denoise_mask, callback, disable_pbar, seed, ...)``; only the callback is
        wrapped (to see the denoised estimates), everything else is passed on as given."""
        self.clear_caches()
        last: dict = {}
        args, kwargs = _watch_callback(args, kwargs, last)
        try:
            out = executor(*args, **kwargs)
        finally:
            self.clear_caches()
        record_sampled(out)
        x0 = last.get("x0")
        guider = getattr(executor, "class_obj", None)
        if isinstance(x0, Tensor) and not x0.is_nested and hasattr(guider, "model_patcher"):
            record_sampled(guider.model_patcher.model.process_latent_out(x0.cpu()))
        return out

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
        version); only the noise shape is changed, everything else is passed on as given. ComfyUI's
        estimate of one step's memory for that shape is kept for the cache's placement (what must
        stay free beside the cache)."""
        if len(args) > 1:
            args = (args[0], self.memory_shape(args[1]), *args[2:])
            shape = args[1]
        elif "noise_shape" in kwargs:
            kwargs["noise_shape"] = shape = self.memory_shape(kwargs["noise_shape"])
        else:
            shape = None
        model = args[0] if args else kwargs.get("model")
        if shape is not None and hasattr(getattr(model, "model", None), "memory_required"):
            try:
                self.cache_budget.step_memory = int(model.model.memory_required(shape))
            except Exception:  # an estimate only: a model that cannot give one keeps the last figure
                pass
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
        x_rgb, x_pm = split_joined(x, patch=getattr(flux, "patch_size", 2))
        b = x.shape[0]
        refs = [r[None].expand(b, *r.shape) for r in self._on("refs", x.device, x.dtype)]
        with self._lock:
            self.calls += 1
        options = dict(cached_references=self.cache_references,
                       reference_cache=self.cache_for(x.device) if self.cache_references else None,
                       transformer_options=transformer_options)
        if self.image_guidance == 1.0:
            return join(*refany3d_forward(flux, self.adapter, x_rgb, x_pm, refs[0], refs[1], timestep, context,
                                          y, guidance, masked=True, **options))
        black = [r[None].expand(b, *r.shape) for r in self._on("black", x.device, x.dtype)]

        def two(t):
            return None if t is None else torch.cat([t, t])
        v_rgb, v_pm = refany3d_forward(
            flux, self.adapter, two(x_rgb), two(x_pm), torch.cat([refs[0], black[0]]),
            torch.cat([refs[1], black[1]]), two(timestep), two(context), two(y), two(guidance),
            masked=[True] * b + [self.guidance_masked] * b, **options)
        s = self.image_guidance
        v_rgb = v_rgb[b:] + s * (v_rgb[:b] - v_rgb[b:])
        v_pm = v_pm[b:] + s * (v_pm[:b] - v_pm[b:])
        return join(v_rgb, v_pm)


def _watch_callback(args: tuple, kwargs: dict, last: dict) -> tuple[tuple, dict]:
    """The OUTER_SAMPLE arguments with the sampler callback (``callback(step, x0, x, total_steps)``,
    argument 6) wrapped so that ``last["x0"]`` holds the latest denoised estimate. No callback: unchanged."""
    if "callback" in kwargs:
        callback = kwargs["callback"]
    elif len(args) > 5:
        callback = args[5]
    else:
        return args, kwargs
    if not callable(callback):
        return args, kwargs

    def watched(*a, **k):
        if len(a) > 1:
            last["x0"] = a[1]
        return callback(*a, **k)
    if "callback" in kwargs:
        return args, dict(kwargs, callback=watched)
    return (*args[:5], watched, *args[6:]), kwargs


def check_model(model, adapter):
    """The boundary checks, once per Apply (and per training run): ``model`` is a FLUX.1 the loop
    knows without core patches the loop would drop, and ``adapter`` fits it. Returns the Flux module."""
    from .weights import validate_adapter
    flux = check_flux(model)
    check_transformer_options(model.model_options.get("transformer_options"), "RefAny3D Apply")
    validate_adapter(adapter, flux)
    return flux


def apply_refany3d(model, adapter, refs_rgb: Tensor, refs_point_map: Tensor, black_rgb: Tensor | None = None,
                   black_point_map: Tensor | None = None, image_guidance: float = 2.0,
                   guidance_pass: str = DEFAULT_GUIDANCE_PASS, cache_references: bool = False,
                   cache_budget: MemoryBudget | None = None, notify: Callable[[str, bool], None] | None = None):
    """A clone of ModelPatcher ``model`` that samples RefAny3D. ``refs_*``: reference latents in the
    model's scale (after ``process_latent_in``), [N, 16, h, w]; ``black_*`` likewise for the black
    references (needed when image_guidance != 1). Checks model and adapter (:func:`check_model`)."""
    check_model(model, adapter)
    return _patched_clone(model, adapter, refs_rgb, refs_point_map, black_rgb, black_point_map, image_guidance,
                          guidance_pass, cache_references, cache_budget, notify)


def apply_to_views(model, adapter, vae, reference_rgb: Tensor, reference_point_map: Tensor,
                   image_guidance: float = 2.0, guidance_pass: str = DEFAULT_GUIDANCE_PASS,
                   cache_references: bool = False, cache_budget: MemoryBudget | None = None,
                   notify: Callable[[str, bool], None] | None = None):
    """RefAny3D Apply: checks model and adapter, encodes the reference IMAGE batches once with ``vae``
    (:func:`encode_references`) and returns the patched clone. ``cache_budget``: limits of the
    reference cache (None: what ComfyUI reports free); ``notify(text, warning)``: hears where the
    cache was placed."""
    check_model(model, adapter)
    refs = encode_references(model, vae, reference_rgb, reference_point_map, black=float(image_guidance) != 1.0)
    return _patched_clone(model, adapter, *refs, image_guidance, guidance_pass, cache_references, cache_budget,
                          notify)


def _patched_clone(model, adapter, refs_rgb, refs_point_map, black_rgb, black_point_map, image_guidance,
                   guidance_pass, cache_references, cache_budget=None, notify=None):
    """The clone with the three wrappers, and the adapter's weights as an additional model of it
    (``set_additional_models``): ComfyUI loads them onto the compute device with the model, counts
    them, and offloads and unloads them with it."""
    import comfy.patcher_extension as pe

    from .adapter import adapter_patcher
    weights = adapter_patcher(adapter, model)
    patch = RefAny3DPatch(weights.model, refs_rgb, refs_point_map, black_rgb, black_point_map, image_guidance,
                          guidance_pass, cache_references, cache_budget=cache_budget, notify=notify)
    m = model.clone()
    for kind in (pe.WrappersMP.DIFFUSION_MODEL, pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.PREPARE_SAMPLING):
        m.remove_wrappers_with_key(kind, WRAPPER_KEY)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, patch)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, patch.outer_sample)
    m.add_wrapper_with_key(pe.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, patch.prepare_sampling)
    m.set_additional_models(WRAPPER_KEY, [weights])
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
