"""Is this a FLUX.1 the RefAny3D loop knows, and does the graph add core features the loop does not apply?

Checked once, where a model enters (RefAny3D Apply, the start of a training run), and the
transformer options once per sampling step (nodes after Apply can add patches):

* :func:`check_flux`: the ``comfy.ldm.flux.model.Flux`` inside a ModelPatcher when it is a FLUX.1 with
  the block layout :mod:`.blocks` runs; every Flux variant (FLUX.2/Klein, Chroma, LongCat, Ovis,
  Fill/Depth/Canny inputs, any unknown ``FluxParams`` option) is refused by name.
* :func:`check_transformer_options`: attention / post-input patches, block replacements and RoPE
  options, which stock Flux applies inside its own blocks and this loop does not, are refused by name.
"""
from __future__ import annotations

from .errors import RefAny3DError

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


def check_flux(model):
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
