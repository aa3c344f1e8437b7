"""The released RefAny3D weight files, mapped onto ComfyUI's Flux (spec §3, §7).

Release formats (spec §7):

* ``default.safetensors`` (Reference-LoRA, adapter name ``"reference"``) and ``coord.safetensors``
  (Domain-LoRA, adapter name ``"domain"``): diffusers Flux LoRA keys
  ``transformer.<module>.lora_A.weight`` (r x in) and ``transformer.<module>.lora_B.weight``
  (out x r), no ``.alpha`` key (scale 1; when an ``.alpha`` key is present the scale is alpha / r).
* ``domain_embedder.pth``: a pickled state dict ``0.weight`` (2x256), ``1.weight`` (Dx256), ``1.bias``,
  ``3.weight`` (DxD), ``3.bias``. It is only ever read with ``torch.load(weights_only=True)``;
  :func:`convert_domain_embedder` writes the same tensors as ``.safetensors``, which is accepted too.

The diffusers module names are mapped onto ComfyUI's (BFL) Flux module paths; the q/k/v LoRAs of
a fused layer (``img_attn.qkv``, single-block ``linear1`` with its MLP slice) are kept as one
low-rank pair: their A factors stacked along the rank in ``down`` and their B factors placed in
their row slices of a full-height ``up`` (zeros elsewhere). Nothing is merged into the model's
weights: ``delta(x) = (x @ down.T) @ up.T`` is applied per token group by the transformer code.

This module is a plain library: it needs torch and safetensors only; ComfyUI's Flux class is
imported lazily by :func:`validate_adapter`.
"""
from __future__ import annotations

import copy
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

ADAPTER_NAMES = ("reference", "domain")
REFERENCE, DOMAIN = ADAPTER_NAMES
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

# Text-stream layers of diffusers' Flux: never adapted by RefAny3D (spec §3).
DOUBLE_TEXT_LAYERS = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                      "ff_context.net.0.proj", "ff_context.net.2", "norm1_context.linear",
                      "attn.norm_added_q", "attn.norm_added_k")
TOP_TEXT_LAYERS = ("context_embedder", "time_text_embed.text_embedder")

_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight|alpha)$")
_DOUBLE = re.compile(r"^transformer_blocks\.(?P<i>\d+)\.(?P<rest>.+)$")
_SINGLE = re.compile(r"^single_transformer_blocks\.(?P<i>\d+)\.(?P<rest>.+)$")
_COMFY_BLOCK = re.compile(r"^(?P<kind>double_blocks|single_blocks)\.(?P<i>\d+)\.")


class AdapterError(ValueError):
    """A RefAny3D weight file (or its pairing with a model) is not what the release defines."""


@dataclass(eq=False)  # identity comparison: the fields hold tensors
class RefAny3DAdapter:
    """The two RefAny3D LoRAs and the domain embedder, on ComfyUI's Flux module names.

    ``loras[name][module] = (down [R, in_features], up [out_features, R])`` for name in
    ("reference", "domain") and module a ComfyUI Flux path such as ``"double_blocks.3.img_attn.qkv"``,
    ``"single_blocks.0.linear1"`` or ``"img_in"``; ``delta(x) = (x @ down.T) @ up.T`` with the LoRA
    scale folded into ``up``. Fused layers get one pair: the q/k/v (and MLP) LoRAs stacked along R
    in ``down``; ``up`` is ``out_features`` tall with each LoRA's B in its row slice, zeros elsewhere.

    ``domain_embedder``: ``Sequential(Embedding(2,256), Linear(256,D), SiLU(), Linear(D,D))``;
    ``hidden_size``: D. ``files`` names the source of each part (for error messages) and
    ``parts[name][module]`` lists which diffusers parts a fused pair holds (e.g. ("q", "k", "v")).
    """
    loras: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]
    domain_embedder: torch.nn.Sequential
    hidden_size: int
    files: dict[str, str] = field(default_factory=dict)
    parts: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    _moved: dict = field(default_factory=dict, repr=False, compare=False)

    def to(self, device=None, dtype=None) -> "RefAny3DAdapter":
        """A copy on ``device`` in ``dtype`` (floating tensors only; the embedding table keeps its
        dtype only when ``dtype`` is None). Copies are cached per (device, dtype)."""
        device = torch.device(device) if device is not None else None
        key = (str(device), dtype)
        if key not in self._moved:
            def move(t: torch.Tensor) -> torch.Tensor:
                return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
            loras = {name: {m: (move(d), move(u)) for m, (d, u) in mods.items()} for name, mods in self.loras.items()}
            emb = copy.deepcopy(self.domain_embedder).to(device=device, dtype=dtype)
            self._moved[key] = RefAny3DAdapter(loras, emb, self.hidden_size, dict(self.files),
                                               copy.deepcopy(self.parts))
        return self._moved[key]

    def drop_copies(self) -> None:
        """Forget the copies made by :meth:`to` (e.g. to free GPU memory while the adapter stays cached)."""
        self._moved.clear()

    def modules(self, name: str) -> list[str]:
        """ComfyUI module paths adapted by adapter ``name``."""
        return sorted(self.loras.get(name, {}))

    def delta(self, name: str, module: str, x: torch.Tensor) -> torch.Tensor:
        """The LoRA output of adapter ``name`` on ``module`` for input ``x`` [..., in_features]."""
        down, up = self.loras[name][module]
        return (x @ down.to(x).T) @ up.to(x).T

    def domain_embedding(self, domain: int | torch.Tensor, dtype=None, device=None) -> torch.Tensor:
        """E(d) [..., D] for domain d (0 = RGB, 1 = point map)."""
        emb = self.domain_embedder
        p = next(emb.parameters())
        d = torch.as_tensor(domain, device=device or p.device, dtype=torch.long)
        out = emb(d.to(p.device))
        return out.to(device=device or out.device, dtype=dtype or out.dtype)

    def check_against(self, flux, require_all_layers: bool = False) -> "RefAny3DAdapter":
        """See :func:`validate_adapter`; returns self."""
        validate_adapter(self, flux, require_all_layers=require_all_layers)
        return self


# --------------------------------------------------------------------------------------------
# reading files safely

def _label(src, what: str) -> str:
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
        name, sd = _label(src, what), src.state_dict()
    elif isinstance(src, Mapping):
        name, sd = _label(src, what), src
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
    m = _DOUBLE.match(module)
    if m:
        rest = m["rest"]
        if rest in DOUBLE_LAYERS:
            target, part = DOUBLE_LAYERS[rest]
            return f"double_blocks.{int(m['i'])}.{target}", part
        if rest in DOUBLE_TEXT_LAYERS:
            raise AdapterError("a text-stream layer: RefAny3D never adapts the text stream")
        raise AdapterError("not a layer RefAny3D adapts in a double block "
                           f"(expected one of {', '.join(DOUBLE_LAYERS)})")
    m = _SINGLE.match(module)
    if m:
        rest = m["rest"]
        if rest in SINGLE_LAYERS:
            target, part = SINGLE_LAYERS[rest]
            return f"single_blocks.{int(m['i'])}.{target}", part
        raise AdapterError("not a layer RefAny3D adapts in a single block "
                           f"(expected one of {', '.join(SINGLE_LAYERS)})")
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


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _expected_in_out(module: str, part: str | None, d: int, mlp: int) -> tuple[int | None, int | None]:
    """(in, out) of one diffusers LoRA's factors for width D and MLP width M (None: not known
    without the model)."""
    leaf = module.split(".", 2)[-1] if _COMFY_BLOCK.match(module) else module
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


def _lora_pairs(sd: dict[str, torch.Tensor], label: str, what: str) -> dict[str, dict]:
    """diffusers module -> {"A", "B", "alpha", keys}; foreign and incomplete keys raise."""
    mods: dict[str, dict] = {}
    foreign: list[str] = []
    for key in sd:
        m = _LORA_KEY.match(key)
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
        entry[{"lora_A.weight": "A", "lora_B.weight": "B", "alpha": "alpha"}[m["kind"]]] = (key, sd[key])
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
            raise AdapterError(f"{what} file '{label}': '{ka}' {_fmt(a.shape)} and '{kb}' {_fmt(b.shape)} are not "
                               "a LoRA pair (expected floating A [r, in] and B [out, r] with the same r)")
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
    label = _label(src, what)
    sd = read_state_dict(src, what)
    mods = _lora_pairs(sd, label, what)
    d = int(hidden_size)
    mlp = _mlp_width(mods, d)
    grouped: dict[str, list] = {}
    for module, entry in sorted(mods.items()):
        target, part = map_diffusers_module(module)
        (ka, a), (kb, b) = entry["A"], entry["B"]
        rank = a.shape[0]
        exp_in, exp_out = _expected_in_out(target, part, d, mlp)
        if exp_in is not None and a.shape[1] != exp_in:
            raise AdapterError(f"{what} file '{label}': key '{ka}' has shape {_fmt(a.shape)}, expected "
                               f"{_fmt((rank, exp_in))} for a D={d} model (width from {width_source})")
        if exp_out is not None and b.shape[0] != exp_out:
            raise AdapterError(f"{what} file '{label}': key '{kb}' has shape {_fmt(b.shape)}, expected "
                               f"{_fmt((exp_out, rank))} for a D={d} model (width from {width_source})")
        scale = 1.0
        if "alpha" in entry:
            ak, alpha = entry["alpha"]
            if alpha.numel() != 1:
                raise AdapterError(f"{what} file '{label}': key '{ak}' must hold one number, has shape {_fmt(alpha.shape)}")
            scale = float(alpha.reshape(()).item()) / rank
            if not math.isfinite(scale):
                raise AdapterError(f"{what} file '{label}': key '{ak}' is not finite")
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
        raise AdapterError(f"{what} file '{label}': key '1.weight' has shape {_fmt(w1.shape)}, expected [D, {EMBED_DIM}]")
    d = int(w1.shape[0])
    expected = {"0.weight": (NUM_DOMAINS, EMBED_DIM), "1.weight": (d, EMBED_DIM), "1.bias": (d,),
                "3.weight": (d, d), "3.bias": (d,)}
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise AdapterError(f"{what} file '{label}': key '{k}' has shape {_fmt(sd[k].shape)}, "
                               f"expected {_fmt(shape)} (D={d} from '1.weight')")
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
    label = _label(src, "domain embedder")
    sd = _strip_common_prefix(read_state_dict(src, "domain embedder"))
    d = check_domain_embedder_state(sd, label)
    emb = make_domain_embedder(d)  # float32; RefAny3DAdapter.to() gives other dtypes
    with torch.no_grad():
        emb.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    emb.requires_grad_(False)
    return emb.eval()


def convert_domain_embedder(pth, out_safetensors) -> Path:
    """Writes the tensors of ``domain_embedder.pth`` (read with weights_only=True and validated) to
    ``out_safetensors``; returns its path."""
    import safetensors.torch
    label = _label(pth, "domain embedder")
    sd = _strip_common_prefix(read_state_dict(pth, "domain embedder"))
    check_domain_embedder_state(sd, label)
    out = Path(out_safetensors)
    out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: sd[k].contiguous() for k in DOMAIN_EMBEDDER_KEYS}, str(out),
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
    emb_label = _label(domain_embedder, "domain embedder")
    loras, parts, files = {}, {}, {"domain_embedder": emb_label}
    for name, src, what in ((REFERENCE, reference_lora, "Reference-LoRA"), (DOMAIN, domain_lora, "Domain-LoRA")):
        loras[name], parts[name] = load_lora(src, d, what=what, width_source=f"domain embedder '{emb_label}'")
        files[name] = _label(src, what)
    return RefAny3DAdapter(loras=loras, domain_embedder=emb, hidden_size=d, files=files, parts=parts)


def _unwrap_flux(model):
    """The comfy.ldm.flux.model.Flux inside a ModelPatcher / BaseModel / Flux."""
    from comfy.ldm.flux.model import Flux
    inner = model
    for attr in ("model", "diffusion_model"):
        if not isinstance(inner, Flux) and hasattr(inner, attr) and isinstance(getattr(inner, attr), torch.nn.Module):
            inner = getattr(inner, attr)
    if not isinstance(inner, Flux):
        raise AdapterError(f"RefAny3D needs a Flux model (comfy.ldm.flux.model.Flux); got {type(inner).__name__}")
    return inner


def _linear_shape(module) -> tuple[int, int] | None:
    w = getattr(module, "weight", None)
    i, o = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if i is None and w is not None and getattr(w, "ndim", 0) == 2:
        o, i = w.shape
    return (int(i), int(o)) if i is not None and o is not None else None


def validate_adapter(adapter: RefAny3DAdapter, flux, require_all_layers: bool = False) -> None:
    """Checks ``adapter`` against a ComfyUI Flux (``comfy.ldm.flux.model.Flux``, or a BaseModel /
    ModelPatcher holding one): widths, every module path, block indices, factor shapes. With
    ``require_all_layers`` every layer the release adapts must be present in both LoRAs.
    Raises AdapterError naming the file, the module and expected vs found shapes."""
    flux = _unwrap_flux(flux)
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
            m = _COMFY_BLOCK.match(module)
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
                raise AdapterError(f"LoRA file '{label}': module '{module}' has factors {_fmt(down.shape)} / "
                                   f"{_fmt(up.shape)}, not a low-rank pair")
            if down.shape[1] != fan_in:
                raise AdapterError(f"LoRA file '{label}': module '{module}' takes {down.shape[1]} input features "
                                   f"(lora_A {_fmt(down.shape)}), the model's layer takes {fan_in}")
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


# --------------------------------------------------------------------------------------------
# writers of the release formats (tests, demos)

def release_state_dicts(hidden_size: int, depth: int, depth_single: int, rank: int = 16, seed: int = 0,
                        zero: bool = False, in_channels: int = 64, mlp_ratio: float = 4.0,
                        dtype=torch.float32, scale: float = 0.5) -> dict[str, dict[str, torch.Tensor]]:
    """Random release-format state dicts: {"reference": ..., "domain": ..., "domain_embedder": ...}.

    LoRA A ~ N(0, 1/in), B ~ N(0, scale²/r) so each delta is of order ``scale`` for unit inputs.
    ``zero=True``: B factors and the embedder's last Linear are zero (as at the release's training
    start), so every LoRA delta and E(d) are exactly zero."""
    d = int(hidden_size)
    mlp = int(d * mlp_ratio)
    g = torch.Generator().manual_seed(int(seed))

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in ADAPTER_NAMES:
        sd = {}
        for module in release_modules(depth, depth_single):
            target, part = map_diffusers_module(module)
            fan_in, fan_out = _expected_in_out(target, part, d, mlp)
            fan_in = in_channels if fan_in is None else fan_in
            sd[f"transformer.{module}.lora_A.weight"] = randn(rank, fan_in, std=fan_in ** -0.5)
            b = randn(fan_out, rank, std=scale * rank ** -0.5)
            sd[f"transformer.{module}.lora_B.weight"] = torch.zeros_like(b) if zero else b
        out[name] = sd
    emb = {"0.weight": randn(NUM_DOMAINS, EMBED_DIM), "1.weight": randn(d, EMBED_DIM, std=EMBED_DIM ** -0.5),
           "1.bias": randn(d, std=0.1), "3.weight": randn(d, d, std=d ** -0.5), "3.bias": randn(d, std=0.1)}
    if zero:
        emb["3.weight"] = torch.zeros_like(emb["3.weight"])
        emb["3.bias"] = torch.zeros_like(emb["3.bias"])
    out["domain_embedder"] = emb
    return out


def save_release_files(folder, hidden_size: int, depth: int, depth_single: int, rank: int = 16, seed: int = 0,
                       zero: bool = False, **kwargs) -> dict[str, Path]:
    """Writes default.safetensors, coord.safetensors (diffusers LoRA keys for every adapted layer of
    a Flux of this size) and domain_embedder.pth (a pickled state dict, via torch.save) into
    ``folder``; returns {"reference", "domain", "domain_embedder"} -> path. Keyword arguments go to
    :func:`release_state_dicts` (in_channels, mlp_ratio, dtype, scale)."""
    import safetensors.torch
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sds = release_state_dicts(hidden_size, depth, depth_single, rank=rank, seed=seed, zero=zero, **kwargs)
    paths = {name: folder / RELEASE_FILES[name] for name in (*ADAPTER_NAMES, "domain_embedder")}
    for name in ADAPTER_NAMES:
        safetensors.torch.save_file(sds[name], str(paths[name]))
    torch.save(sds["domain_embedder"], str(paths["domain_embedder"]))
    return paths
