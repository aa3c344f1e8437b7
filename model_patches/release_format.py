"""The release's weight-file formats (docs/method.md §7): file names, diffusers key layout, the mapping of
diffusers Flux module names onto ComfyUI's (BFL) module paths, and safe reading of the files.

* ``default.safetensors`` (Reference-LoRA, adapter name ``"reference"``) and ``coord.safetensors``
  (Domain-LoRA, ``"domain"``): diffusers Flux LoRA keys ``transformer.<module>.lora_A.weight``
  (r x in) and ``transformer.<module>.lora_B.weight`` (out x r); no ``.alpha`` key (scale 1; with an
  ``.alpha`` key the scale is alpha / r).
* ``domain_embedder.pth``: a pickled state dict ``0.weight`` (2x256), ``1.weight`` (Dx256), ``1.bias``,
  ``3.weight`` (DxD), ``3.bias``, only ever read with ``torch.load(weights_only=True)``; its
  ``.safetensors`` copy is accepted too.

The mapping is the pack's own small table rather than ``comfy.utils.flux_to_diffusers``: it needs no
model config, names the exact file, key and shape in every error, and the tests check it against
ComfyUI's own LoRA loader (``comfy.lora``) on every run.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import AdapterError

RELEASE_FILES = {"reference": "default.safetensors", "domain": "coord.safetensors",
                 "domain_embedder": "domain_embedder.pth"}
EMBED_DIM = 256  # Embedding(2, 256)
NUM_DOMAINS = 2
DOMAIN_EMBEDDER_KEYS = ("0.weight", "1.weight", "1.bias", "3.weight", "3.bias")

# diffusers module (inside a block) -> (ComfyUI module inside the block, part of a fused layer or None)
DOUBLE_LAYERS = {
    "norm1.linear": ("img_mod.lin", None),
    "attn.to_q": ("img_attn.qkv", "q"),
    "attn.to_k": ("img_attn.qkv", "k"),
    "attn.to_v": ("img_attn.qkv", "v"),
    "attn.to_out.0": ("img_attn.proj", None),
    "ff.net.2": ("img_mlp.2", None),
}
SINGLE_LAYERS = {
    "norm.linear": ("modulation.lin", None),
    "attn.to_q": ("linear1", "q"),
    "attn.to_k": ("linear1", "k"),
    "attn.to_v": ("linear1", "v"),
    "proj_mlp": ("linear1", "mlp"),
    "proj_out": ("linear2", None),
}
TOP_LAYERS = {"x_embedder": ("img_in", None)}
FUSED_PARTS = {"q": 0, "k": 1, "v": 2, "mlp": 3}  # order of the row slices in the fused weight

# Text-stream layers of diffusers' Flux: never adapted by RefAny3D (docs/method.md §3).
DOUBLE_TEXT_LAYERS = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                      "ff_context.net.0.proj", "ff_context.net.2", "norm1_context.linear",
                      "attn.norm_added_q", "attn.norm_added_k")
TOP_TEXT_LAYERS = ("context_embedder", "time_text_embed.text_embedder")

LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight|alpha)$")
_DOUBLE = re.compile(r"^transformer_blocks\.(?P<i>\d+)\.(?P<rest>.+)$")
_SINGLE = re.compile(r"^single_transformer_blocks\.(?P<i>\d+)\.(?P<rest>.+)$")
COMFY_BLOCK = re.compile(r"^(?P<kind>double_blocks|single_blocks)\.(?P<i>\d+)\.")


# --------------------------------------------------------------------------------------------
# reading files safely

def source_label(src, what: str) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.path.basename(os.fspath(src)) or os.fspath(src)
    return f"<{what} state dict>"


def read_state_dict(src, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict of tensors from a path (.safetensors, or a pickle read with weights_only=True),
    a mapping or a torch module. Anything that is not a flat ``{str: Tensor}`` mapping raises AdapterError."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = path.name
        if not path.is_file():
            raise AdapterError(f"{what} file not found: {path}")
        if path.suffix.lower() == ".safetensors":
            import safetensors.torch
            try:
                sd = safetensors.torch.load_file(str(path), device="cpu")
            except Exception as e:  # SafetensorError, OSError, ...
                raise AdapterError(f"{what} file '{name}' is not a readable .safetensors file: {e}") from None
        else:
            try:
                sd = torch.load(str(path), weights_only=True, map_location="cpu")
            except pickle.UnpicklingError as e:
                found = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+|Unsupported operand \d+)", str(e))
                reason = found.group(1) if found else type(e).__name__
                raise AdapterError(
                    f"refused to load {what} file '{name}': it is not a plain pickled state dict of tensors "
                    f"(torch.load(weights_only=True) stopped at: {reason}). A pickle carrying Python objects or "
                    "code is never run. Use the released file, or a .safetensors copy of it.") from None
            except Exception as e:  # truncated / not a torch file
                raise AdapterError(f"{what} file '{name}' could not be read as a torch state dict: "
                                   f"{type(e).__name__}: {e}") from None
    elif isinstance(src, torch.nn.Module):
        name, sd = source_label(src, what), src.state_dict()
    elif isinstance(src, Mapping):
        name, sd = source_label(src, what), src
    else:
        raise AdapterError(f"{what}: expected a file path or a state dict, got {type(src).__name__}")
    if not isinstance(sd, Mapping):
        raise AdapterError(f"{what} file '{name}' holds a {type(sd).__name__}, not a state dict of tensors")
    bad = [(k, type(v).__name__) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(f"'{k}' ({t})" for k, t in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise AdapterError(f"{what} file '{name}' holds values that are not tensors: {shown}")
    return dict(sd)


# --------------------------------------------------------------------------------------------
# name mapping

def map_diffusers_module(module: str) -> tuple[str, str | None]:
    """ComfyUI module path and fused part for a diffusers Flux module name (without the
    ``transformer.`` prefix). Raises AdapterError (with the reason) for a layer RefAny3D does not adapt."""
    for pattern, layers, text_layers, blocks, kind in (
            (_DOUBLE, DOUBLE_LAYERS, DOUBLE_TEXT_LAYERS, "double_blocks", "a double block"),
            (_SINGLE, SINGLE_LAYERS, (), "single_blocks", "a single block")):
        m = pattern.match(module)
        if not m:
            continue
        if m["rest"] in layers:
            target, part = layers[m["rest"]]
            return f"{blocks}.{int(m['i'])}.{target}", part
        if m["rest"] in text_layers:
            raise AdapterError("a text-stream layer: RefAny3D never adapts the text stream")
        raise AdapterError(f"not a layer RefAny3D adapts in {kind} (expected one of {', '.join(layers)})")
    if module in TOP_LAYERS:
        return TOP_LAYERS[module]
    if any(module == t or module.startswith(t + ".") for t in TOP_TEXT_LAYERS):
        raise AdapterError("a text-stream layer: RefAny3D never adapts the text stream")
    raise AdapterError("not a layer of diffusers' Flux transformer that RefAny3D adapts")


def release_modules(depth: int, depth_single: int) -> list[str]:
    """Every diffusers module name the release adapts, for a Flux of the given depths."""
    mods = list(TOP_LAYERS)
    mods += [f"transformer_blocks.{i}.{k}" for i in range(depth) for k in DOUBLE_LAYERS]
    mods += [f"single_transformer_blocks.{i}.{k}" for i in range(depth_single) for k in SINGLE_LAYERS]
    return mods


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def expected_in_out(module: str, part: str | None, d: int, mlp: int) -> tuple[int | None, int | None]:
    """(in, out) of one diffusers LoRA's factors for width D and MLP width M (None: not known
    without the model)."""
    leaf = module.split(".", 2)[-1] if COMFY_BLOCK.match(module) else module
    if leaf == "img_in":
        return None, d
    if leaf == "img_mod.lin":
        return d, 6 * d
    if leaf == "modulation.lin":
        return d, 3 * d
    if leaf in ("img_attn.qkv", "linear1"):
        return d, (mlp if part == "mlp" else d)
    if leaf == "img_attn.proj":
        return d, d
    if leaf == "img_mlp.2":
        return mlp, d
    if leaf == "linear2":
        return d + mlp, d
    return None, None
