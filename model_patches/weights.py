"""The released RefAny3D weights as a :class:`~.adapter.RefAny3DAdapter` on ComfyUI's Flux (docs/method.md §3, §7).

The q/k/v LoRAs of a fused layer (``img_attn.qkv``, single-block ``linear1`` with its MLP slice) are
kept as one low-rank pair: their A factors stacked along the rank in ``down`` and their B factors
placed in their row slices of a full-height ``up`` (zeros elsewhere). Nothing is merged into the
model's weights. A plain library: torch and safetensors; ComfyUI's Flux class is imported inside
:func:`validate_adapter`.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .adapter import ADAPTER_NAMES, DOMAIN, REFERENCE, RefAny3DAdapter
from .errors import AdapterError
from .files import replacing
from .weight_values import MAX_ABS_WEIGHT, check_weight_values, real_dtype
from .release_format import (COMFY_BLOCK, LORA_KEY, DOMAIN_EMBEDDER_KEYS, EMBED_DIM, FUSED_PARTS, NUM_DOMAINS,
                             RELEASE_FILES, expected_in_out, fmt_shape, map_diffusers_module, read_state_dict,
                             release_modules, source_label)

__all__ = ["AdapterError", "MAX_ABS_WEIGHT", "RELEASE_FILES", "RefAny3DAdapter", "check_weight_values",
           "convert_domain_embedder", "load_adapter", "load_domain_embedder", "load_lora", "validate_adapter"]

def _lora_pairs(sd: dict[str, torch.Tensor], label: str, what: str) -> dict[str, dict]:
    """diffusers module -> {"A", "B", "alpha", keys}; foreign and incomplete keys raise."""
    mods: dict[str, dict] = {}
    foreign: list[str] = []
    for key in sd:
        m = LORA_KEY.match(key)
        if not m:
            foreign.append(f"'{key}' (not a diffusers LoRA key: expected "
                           "'transformer.<module>.lora_A.weight' / '.lora_B.weight' / '.alpha')")
            continue
        module = m["module"]
        if module.startswith("transformer."):
            module = module[len("transformer."):]
        try:
            map_diffusers_module(module)
        except AdapterError as e:
            foreign.append(f"'{key}' ({e})")
            continue
        entry = mods.setdefault(module, {})
        kind = {"lora_A.weight": "A", "lora_B.weight": "B", "alpha": "alpha"}[m["kind"]]
        if kind in entry:
            raise AdapterError(f"{what} file '{label}': keys '{entry[kind][0]}' and '{key}' are the same LoRA weight "
                               "(with and without the 'transformer.' prefix): the file holds two LoRAs for one layer")
        entry[kind] = (key, sd[key])
    if foreign:
        shown = "; ".join(foreign[:4]) + (f"; and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise AdapterError(f"{what} file '{label}' has keys that do not belong to a RefAny3D LoRA: {shown}")
    if not mods:
        raise AdapterError(f"{what} file '{label}' holds no LoRA weights "
                           "(no 'transformer.<module>.lora_A.weight' / '.lora_B.weight' keys)")
    for module, entry in sorted(mods.items()):
        for need, other in (("A", "B"), ("B", "A")):
            if need not in entry:
                have = entry[other][0] if other in entry else entry["alpha"][0]
                key = f"transformer.{module}.lora_{need}.weight"
                raise AdapterError(f"{what} file '{label}': key '{key}' is missing (the file has '{have}')")
        (ka, a), (kb, b) = entry["A"], entry["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or not a.is_floating_point() or not b.is_floating_point():
            raise AdapterError(f"{what} file '{label}': '{ka}' {fmt_shape(a.shape)} and '{kb}' {fmt_shape(b.shape)} are not "
                               "a LoRA pair (expected floating A [r, in] and B [out, r] with the same r)")
        if a.shape[0] == 0:
            raise AdapterError(f"{what} file '{label}': '{ka}' {fmt_shape(a.shape)} and '{kb}' {fmt_shape(b.shape)} have "
                               "rank 0: not a LoRA (the release's rank is 16)")
    return mods


def _mlp_width(mods: dict[str, dict], d: int) -> int:
    """The single-block MLP width M from the file (proj_mlp out, ff.net.2 in, proj_out in - D), else 4·D."""
    for module, entry in mods.items():
        if module.endswith(".proj_mlp"):
            return int(entry["B"][1].shape[0])
        if module.endswith(".ff.net.2"):
            return int(entry["A"][1].shape[1])
        if module.startswith("single_transformer_blocks.") and module.endswith(".proj_out"):
            return int(entry["A"][1].shape[1]) - d
    return 4 * d


def load_lora(src, hidden_size: int, what: str = "LoRA", width_source: str = "the domain embedder"):
    """One release LoRA file (path or state dict) mapped onto ComfyUI Flux modules.

    Returns ``(pairs, parts)``: ``pairs[module] = (down, up)`` as in :class:`RefAny3DAdapter`,
    ``parts[module]`` the diffusers parts it holds."""
    label = source_label(src, what)
    sd = read_state_dict(src, what)
    mods = _lora_pairs(sd, label, what)
    check_weight_values(sd, label, what)
    d = int(hidden_size)
    mlp = _mlp_width(mods, d)
    grouped: dict[str, list] = {}
    for module, entry in sorted(mods.items()):
        target, part = map_diffusers_module(module)
        (ka, a), (kb, b) = entry["A"], entry["B"]
        a, b = real_dtype(a), real_dtype(b)
        rank = a.shape[0]
        exp_in, exp_out = expected_in_out(target, part, d, mlp)
        if exp_in is not None and a.shape[1] != exp_in:
            raise AdapterError(f"{what} file '{label}': key '{ka}' has shape {fmt_shape(a.shape)}, expected "
                               f"{fmt_shape((rank, exp_in))} for a D={d} model (width from {width_source})")
        if exp_out is not None and b.shape[0] != exp_out:
            raise AdapterError(f"{what} file '{label}': key '{kb}' has shape {fmt_shape(b.shape)}, expected "
                               f"{fmt_shape((exp_out, rank))} for a D={d} model (width from {width_source})")
        scale = 1.0
        if "alpha" in entry:
            ak, alpha = entry["alpha"]
            if alpha.numel() != 1 or alpha.is_complex():
                raise AdapterError(f"{what} file '{label}': key '{ak}' must hold one real number, has "
                                   f"{alpha.dtype} of shape {fmt_shape(alpha.shape)}")
            value = float(alpha.reshape(()).item())
            if not math.isfinite(value) or abs(value) > MAX_ABS_WEIGHT:
                raise AdapterError(f"{what} file '{label}': key '{ak}' holds {value:g}; a LoRA alpha must be a finite "
                                   f"number of magnitude at most {MAX_ABS_WEIGHT:g} (scale = alpha / rank)")
            scale = value / rank
        grouped.setdefault(target, []).append((part, a, b, scale, ka))
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    parts: dict[str, tuple[str, ...]] = {}
    for target, items in grouped.items():
        dtype = items[0][1].dtype
        for _, a, b, _, _ in items:
            dtype = torch.promote_types(dtype, torch.promote_types(a.dtype, b.dtype))
        if items[0][0] is None:
            (_, a, b, scale, _), = items
            up = b.to(dtype) if scale == 1.0 else b.to(dtype) * scale
            pairs[target] = (a.to(dtype).contiguous(), up.contiguous())
            parts[target] = ()
            continue
        items.sort(key=lambda it: FUSED_PARTS[it[0]])
        single = target.startswith("single_blocks.")
        out_total = 3 * d + (mlp if single else 0)
        rank_total = sum(a.shape[0] for _, a, _, _, _ in items)
        down = torch.cat([a.to(dtype) for _, a, _, _, _ in items], dim=0)
        up = torch.zeros(out_total, rank_total, dtype=dtype)
        col = 0
        for part, a, b, scale, _ in items:
            row = FUSED_PARTS[part] * d
            r = a.shape[0]
            up[row:row + b.shape[0], col:col + r] = b.to(dtype) * scale
            col += r
        pairs[target] = (down.contiguous(), up)
        parts[target] = tuple(it[0] for it in items)
    return pairs, parts


# --------------------------------------------------------------------------------------------
# domain embedder

def make_domain_embedder(hidden_size: int, dtype=torch.float32) -> torch.nn.Sequential:
    """An (uninitialised) ``Sequential(Embedding(2,256), Linear(256,D), SiLU(), Linear(D,D))``."""
    return torch.nn.Sequential(torch.nn.Embedding(NUM_DOMAINS, EMBED_DIM, dtype=dtype),
                               torch.nn.Linear(EMBED_DIM, hidden_size, dtype=dtype), torch.nn.SiLU(),
                               torch.nn.Linear(hidden_size, hidden_size, dtype=dtype))


def check_domain_embedder_state(sd: dict[str, torch.Tensor], label: str) -> int:
    """Validates the domain embedder's keys and shapes; returns D."""
    what = "domain embedder"
    # tolerate one common prefix such as "domain_embedder." or "module."
    missing = [k for k in DOMAIN_EMBEDDER_KEYS if k not in sd]
    extra = sorted(set(sd) - set(DOMAIN_EMBEDDER_KEYS))
    if missing or extra:
        raise AdapterError(
            f"{what} file '{label}' does not have the release's keys {list(DOMAIN_EMBEDDER_KEYS)}: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and extra else "") + (f"unexpected {extra[:6]}" if extra else ""))
    for k in DOMAIN_EMBEDDER_KEYS:
        if not sd[k].is_floating_point():
            raise AdapterError(f"{what} file '{label}': key '{k}' holds {sd[k].dtype}, not floating-point weights")
    w1 = sd["1.weight"]
    if w1.ndim != 2:
        raise AdapterError(f"{what} file '{label}': key '1.weight' has shape {fmt_shape(w1.shape)}, expected [D, {EMBED_DIM}]")
    d = int(w1.shape[0])
    expected = {"0.weight": (NUM_DOMAINS, EMBED_DIM), "1.weight": (d, EMBED_DIM), "1.bias": (d,),
                "3.weight": (d, d), "3.bias": (d,)}
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise AdapterError(f"{what} file '{label}': key '{k}' has shape {fmt_shape(sd[k].shape)}, "
                               f"expected {fmt_shape(shape)} (D={d} from '1.weight')")
    return d


def _strip_common_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if set(sd) == set(DOMAIN_EMBEDDER_KEYS) or not sd:
        return sd
    firsts = {k.split(".", 1)[0] for k in sd if "." in k}
    if len(firsts) == 1 and all("." in k for k in sd):
        prefix = firsts.pop() + "."
        stripped = {k[len(prefix):]: v for k, v in sd.items()}
        if set(stripped) == set(DOMAIN_EMBEDDER_KEYS):
            return stripped
    return sd


def load_domain_embedder(src) -> torch.nn.Sequential:
    """The domain embedder from ``domain_embedder.pth`` (weights_only), its .safetensors form, or a state dict."""
    label = source_label(src, "domain embedder")
    sd = _strip_common_prefix(read_state_dict(src, "domain embedder"))
    d = check_domain_embedder_state(sd, label)
    check_weight_values(sd, label, "domain embedder")
    emb = make_domain_embedder(d)  # float32; RefAny3DAdapter.to() gives other dtypes
    with torch.no_grad():
        emb.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    emb.requires_grad_(False)
    return emb.eval()


def convert_domain_embedder(pth, out_safetensors) -> Path:
    """Writes the tensors of ``domain_embedder.pth`` (read with weights_only=True and validated) to
    ``out_safetensors``; returns its path."""
    import safetensors.torch
    label = source_label(pth, "domain embedder")
    sd = _strip_common_prefix(read_state_dict(pth, "domain embedder"))
    check_domain_embedder_state(sd, label)
    check_weight_values(sd, label, "domain embedder")
    out = Path(out_safetensors)
    with replacing(out) as tmp:  # never half a file; the mode the umask gives
        safetensors.torch.save_file({k: sd[k].contiguous() for k in DOMAIN_EMBEDDER_KEYS}, str(tmp),
                                    metadata={"format": "pt", "refany3d": "domain_embedder"})
    return out


# --------------------------------------------------------------------------------------------
# the adapter

def load_adapter(reference_lora, domain_lora, domain_embedder) -> RefAny3DAdapter:
    """The three release files (paths or already-loaded state dicts) as a :class:`RefAny3DAdapter`.

    ``reference_lora``: default.safetensors (Reference-LoRA); ``domain_lora``: coord.safetensors
    (Domain-LoRA); ``domain_embedder``: domain_embedder.pth or its .safetensors form. The width D
    comes from the domain embedder and every LoRA shape is checked against it; check against a
    model with :func:`validate_adapter`. Raises AdapterError with the file, key and shapes."""
    emb = load_domain_embedder(domain_embedder)
    d = emb[1].out_features
    emb_label = source_label(domain_embedder, "domain embedder")
    loras, parts, files = {}, {}, {"domain_embedder": emb_label}
    for name, src, what in ((REFERENCE, reference_lora, "Reference-LoRA"), (DOMAIN, domain_lora, "Domain-LoRA")):
        loras[name], parts[name] = load_lora(src, d, what=what, width_source=f"domain embedder '{emb_label}'")
        files[name] = source_label(src, what)
    return RefAny3DAdapter(loras=loras, domain_embedder=emb, hidden_size=d, files=files, parts=parts)


def _linear_shape(module) -> tuple[int, int] | None:
    w = getattr(module, "weight", None)
    i, o = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if i is None and w is not None and getattr(w, "ndim", 0) == 2:
        o, i = w.shape
    return (int(i), int(o)) if i is not None and o is not None else None


def validate_adapter(adapter: RefAny3DAdapter, flux, require_all_layers: bool = False) -> None:
    """Checks ``adapter`` against a ComfyUI Flux (``comfy.ldm.flux.model.Flux``): widths, every module
    path, block indices, factor shapes. With ``require_all_layers`` every layer the release adapts
    must be present in both LoRAs. Raises AdapterError naming the file, the module and expected vs
    found shapes. Called once where the adapter meets the model (RefAny3D Apply)."""
    from comfy.ldm.flux.model import Flux
    if not isinstance(flux, Flux):
        raise AdapterError(f"the RefAny3D adapter needs a Flux model (comfy.ldm.flux.model.Flux) to be checked "
                           f"against; got {type(flux).__name__}")
    files = adapter.files or {}
    emb_file = files.get("domain_embedder", "domain embedder")
    d_model = int(flux.hidden_size)
    if adapter.hidden_size != d_model:
        raise AdapterError(f"the RefAny3D files are for a D={adapter.hidden_size} wide Flux (domain embedder "
                           f"'{emb_file}'), but the model's hidden size is {d_model}")
    emb = adapter.domain_embedder
    if (emb[0].weight.shape != (NUM_DOMAINS, EMBED_DIM) or emb[1].weight.shape != (d_model, EMBED_DIM)
            or emb[3].weight.shape != (d_model, d_model)):
        raise AdapterError(f"domain embedder '{emb_file}' does not match the model's hidden size {d_model}")
    counts = {"double_blocks": len(flux.double_blocks), "single_blocks": len(flux.single_blocks)}
    for name in ADAPTER_NAMES:
        if name not in adapter.loras:
            raise AdapterError(f"the adapter has no '{name}' LoRA")
        label = files.get(name, f"{name} LoRA")
        for module, (down, up) in sorted(adapter.loras[name].items()):
            m = COMFY_BLOCK.match(module)
            if m and int(m["i"]) >= counts[m["kind"]]:
                raise AdapterError(f"LoRA file '{label}': module '{module}' is block {m['i']} but the model has "
                                   f"{counts[m['kind']]} {m['kind']}; these files are for a deeper model")
            try:
                target = flux.get_submodule(module)
            except AttributeError:
                raise AdapterError(f"LoRA file '{label}': module '{module}' does not exist in this Flux model") from None
            shape = _linear_shape(target)
            if shape is None:
                raise AdapterError(f"LoRA file '{label}': module '{module}' of the model is not a linear layer")
            fan_in, fan_out = shape
            if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
                raise AdapterError(f"LoRA file '{label}': module '{module}' has factors {fmt_shape(down.shape)} / "
                                   f"{fmt_shape(up.shape)}, not a low-rank pair")
            if down.shape[1] != fan_in:
                raise AdapterError(f"LoRA file '{label}': module '{module}' takes {down.shape[1]} input features "
                                   f"(lora_A {fmt_shape(down.shape)}), the model's layer takes {fan_in}")
            if up.shape[0] != fan_out:
                raise AdapterError(f"LoRA file '{label}': module '{module}' gives {up.shape[0]} output features "
                                   f"(lora_B rows), the model's layer gives {fan_out}")
        if require_all_layers:
            want = {}
            for mod in release_modules(counts["double_blocks"], counts["single_blocks"]):
                target, part = map_diffusers_module(mod)
                want.setdefault(target, []).append((mod, part))
            have = adapter.parts.get(name, {})
            missing = [mod for target, items in want.items() for mod, part in items
                       if target not in adapter.loras[name] or (part is not None and part not in have.get(target, ()))]
            if missing:
                raise AdapterError(f"LoRA file '{label}' has no LoRA for {len(missing)} adapted layer(s) of this model, "
                                   f"e.g. {', '.join('transformer.' + m for m in missing[:4])}")
