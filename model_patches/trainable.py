"""The model math of training RefAny3D (docs/method.md §6): the trainable adapter and the loss.

* :class:`TrainableAdapter`: both LoRAs as fp32 trainable factors under the release's diffusers module
  names (peft "gaussian" init, scale alpha / r) and the domain embedder (last Linear zero-initialised).
  It offers the interface :func:`~.forward.refany3d_forward` uses (``loras[name][path] = (down, up)``
  with fused q/k/v(/mlp) layers as one stacked pair exactly as :mod:`.weights` builds them,
  ``domain_embedder``, ``hidden_size``), differentiably, and writes itself back in the release format.
* :func:`training_loss`: the release's flow-matching loss with its dropouts; all randomness is keyed
  on (seed, step, sample index), so a sample's draw never depends on how samples are batched.
* :func:`structural_zeros` / :func:`learning_statistics`: the layers that can never learn (§6) and what
  the last backward taught the others.
* :func:`frozen_view`: the base model's weights as frozen aliases on the same storage (fp8 included) for
  the length of a training run, so weights ComfyUI made in inference mode can take part in a backward.

A plain library: torch only; ComfyUI is reached through :func:`~.forward.refany3d_forward` and
:func:`training_mode`, inside functions.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .adapter import ADAPTER_NAMES, RefAny3DAdapter
from .errors import RefAny3DError
from .forward import refany3d_forward
from .modulation import REF_TIMESTEP
from .release_format import FUSED_PARTS, expected_in_out, map_diffusers_module, release_modules
from .weights import make_domain_embedder

#: The release's recipe (docs/method.md §6).
RANK = 16
P_DROP_PROMPT = 0.1
P_DROP_REFERENCES = 0.1
TRAIN_GUIDANCE = 1.0


def _key(module: str) -> str:
    return module.replace(".", "__")


def _module(key: str) -> str:
    return key.replace("__", ".")


class _FusedView(Mapping):
    """``{ComfyUI module path: (down, up)}`` of one adapter, built on access from the current
    parameters (differentiable), fused as :func:`~.weights.load_lora` fuses them."""

    def __init__(self, owner: TrainableAdapter, name: str):
        self._owner, self._name = owner, name

    def __getitem__(self, path: str) -> tuple[Tensor, Tensor]:
        pair = self.get(path)
        if pair is None:
            raise KeyError(path)
        return pair

    def get(self, path: str, default=None):
        parts = self._owner.targets[self._name].get(path)
        return default if parts is None else self._owner.fused_pair(self._name, path)

    def __iter__(self):
        return iter(self._owner.targets[self._name])

    def __len__(self) -> int:
        return len(self._owner.targets[self._name])


class TrainableAdapter(torch.nn.Module):
    """Both RefAny3D LoRAs and the domain embedder as fp32 trainable parameters.

    ``lora_A[name][key]`` [r, in] and ``lora_B[name][key]`` [out, r] for every diffusers module
    (``key`` = the module name with "." as "__"); the delta is ``scale·(x·Aᵀ)·Bᵀ`` with
    ``scale = alpha / r``. Build with :meth:`for_flux` (fresh, the release's init) or
    :meth:`from_adapter` (from released weights)."""

    def __init__(self, hidden_size: int, mlp_width: int, modules: dict[str, list[str]],
                 shapes: dict[str, tuple[int, int]], rank: int = RANK, alpha: float | None = None):
        super().__init__()
        self.hidden_size, self.mlp_width, self.rank = int(hidden_size), int(mlp_width), int(rank)
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / self.rank
        self.lora_A, self.lora_B = torch.nn.ModuleDict(), torch.nn.ModuleDict()
        #: targets[name][ComfyUI path] = [(part, key)] in fused order
        self.targets: dict[str, dict[str, list[tuple[str | None, str]]]] = {}
        for name, mods in modules.items():
            self.lora_A[name], self.lora_B[name] = torch.nn.ParameterDict(), torch.nn.ParameterDict()
            self.targets[name] = {}
            for module in mods:
                fan_in, fan_out = shapes[module]
                self.lora_A[name][_key(module)] = torch.nn.Parameter(torch.zeros(self.rank, fan_in))
                self.lora_B[name][_key(module)] = torch.nn.Parameter(torch.zeros(fan_out, self.rank))
                target, part = map_diffusers_module(module)
                self.targets[name].setdefault(target, []).append((part, _key(module)))
            for items in self.targets[name].values():
                items.sort(key=lambda it: -1 if it[0] is None else FUSED_PARTS[it[0]])
        self.domain_embedder = make_domain_embedder(self.hidden_size)

    # ---- construction

    @classmethod
    def for_flux(cls, flux, rank: int = RANK, alpha: float | None = None, seed: int = 0) -> TrainableAdapter:
        """A fresh adapter for every layer the release adapts in ``flux`` (a ComfyUI FLUX.1):
        A ~ N(0, (1/r)²), B = 0 (peft "gaussian"), the embedder's last Linear zero (E(d) = 0)."""
        d = int(flux.hidden_size)
        mlp = int(d * flux.params.mlp_ratio)
        mods = release_modules(len(flux.double_blocks), len(flux.single_blocks))
        shapes = {}
        for module in mods:
            target, part = map_diffusers_module(module)
            fan_in, fan_out = expected_in_out(target, part, d, mlp)
            shapes[module] = (flux.img_in.in_features if fan_in is None else fan_in, fan_out)
        with torch.inference_mode(False):
            out = cls(d, mlp, {name: mods for name in ADAPTER_NAMES}, shapes, rank=rank, alpha=alpha)
            out.reset_parameters(seed)
        return out

    def reset_parameters(self, seed: int = 0) -> None:
        """The release's init: A ~ N(0, (1/r)²), B = 0; embedder with torch's default init, last Linear zero."""
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for name in self.lora_A:
                for key in sorted(self.lora_A[name]):
                    a = self.lora_A[name][key]
                    a.copy_(torch.randn(a.shape, generator=g) / self.rank)
                    self.lora_B[name][key].zero_()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed) + 1)
                for layer in self.domain_embedder:
                    if hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()
            self.domain_embedder[3].weight.zero_()
            self.domain_embedder[3].bias.zero_()

    @classmethod
    def from_adapter(cls, adapter: RefAny3DAdapter) -> TrainableAdapter:
        """Starts from released weights (a loaded :class:`RefAny3DAdapter`): the fused pairs split back
        into their diffusers parts, scale 1 (alpha = r, the file's scale already in B), fp32."""
        d = int(adapter.hidden_size)
        mods: dict[str, list[str]] = {}
        shapes: dict[str, tuple[int, int]] = {}
        values: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}
        rank, mlp = None, 4 * d
        for name in ADAPTER_NAMES:
            mods[name] = []
            for path, (down, up) in adapter.loras.get(name, {}).items():
                parts = adapter.parts.get(name, {}).get(path) or _default_parts(path)
                if path.startswith("single_blocks.") and parts:
                    mlp = up.shape[0] - 3 * d
                r = down.shape[0] // max(1, len(parts))
                if r * max(1, len(parts)) != down.shape[0] or (rank is not None and r != rank):
                    raise RefAny3DError(f"{name} LoRA: module '{path}' has rank {down.shape[0]} for parts {parts}; "
                                        "training needs one rank for every layer")
                rank = r
                for i, part in enumerate(parts or (None,)):
                    module = _diffusers_name(path, part)
                    a = down[i * r:(i + 1) * r]
                    row = 0 if part is None else FUSED_PARTS[part] * d
                    height = up.shape[0] if part is None else (mlp if part == "mlp" else d)
                    b = up[row:row + height, i * r:(i + 1) * r]
                    mods[name].append(module)
                    shapes[module] = (a.shape[1], b.shape[0])
                    values[(name, module)] = (a, b)
        with torch.inference_mode(False):
            out = cls(d, mlp, mods, shapes, rank=rank or RANK)
            with torch.no_grad():
                for (name, module), (a, b) in values.items():
                    out.lora_A[name][_key(module)].copy_(a.float())
                    out.lora_B[name][_key(module)].copy_(b.float())
                out.domain_embedder.load_state_dict({k: v.detach().float().clone() for k, v in
                                                     adapter.domain_embedder.state_dict().items()})
        return out

    # ---- the interface refany3d_forward uses

    @property
    def loras(self) -> dict[str, _FusedView]:
        return {name: _FusedView(self, name) for name in self.targets}

    def fused_pair(self, name: str, path: str) -> tuple[Tensor, Tensor]:
        """``(down, up)`` of ComfyUI module ``path``: A factors stacked along the rank, each scaled B in
        its row slice of a full-height ``up`` (zeros elsewhere), as :func:`~.weights.load_lora`."""
        items = self.targets[name][path]
        a_s = [self.lora_A[name][k] for _, k in items]
        b_s = [self.lora_B[name][k] for _, k in items]
        if items[0][0] is None:
            return a_s[0], b_s[0] * self.scale if self.scale != 1.0 else b_s[0]
        d = self.hidden_size
        out_total = 3 * d + (self.mlp_width if path.startswith("single_blocks.") else 0)
        rank_total = sum(a.shape[0] for a in a_s)
        up = b_s[0].new_zeros(out_total, rank_total)
        col = 0
        for (part, _), b in zip(items, b_s):
            row, r = FUSED_PARTS[part] * d, b.shape[1]
            up[row:row + b.shape[0], col:col + r] = b * self.scale if self.scale != 1.0 else b
            col += r
        return torch.cat(a_s, dim=0), up

    # ---- the release format

    def to_release_state_dicts(self, dtype: torch.dtype = torch.float32) -> dict[str, dict[str, Tensor]]:
        """``{"reference": ..., "domain": ..., "domain_embedder": ...}`` in the release's layout: diffusers
        keys ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` (scale folded into B, no alpha
        key) and the embedder's ``0.weight`` … ``3.bias``; detached CPU copies in ``dtype``."""
        out: dict[str, dict[str, Tensor]] = {}
        for name in self.lora_A:
            sd = {}
            for key in sorted(self.lora_A[name]):
                module = _module(key)
                sd[f"transformer.{module}.lora_A.weight"] = _export(self.lora_A[name][key], dtype)
                sd[f"transformer.{module}.lora_B.weight"] = _export(self.lora_B[name][key] * self.scale, dtype)
            out[name] = sd
        out["domain_embedder"] = {k: _export(v, dtype) for k, v in self.domain_embedder.state_dict().items()}
        return out


#: Layers of the last single block whose Reference-LoRA gets exactly zero gradient (docs/method.md §6): the
#: references' outputs of the last block never reach the targets, and their query only shapes those outputs.
STRUCTURAL_ZERO_LAYERS = ("attn.to_q", "proj_mlp", "proj_out")


def structural_zeros(adapter: TrainableAdapter) -> set[tuple[str, str]]:
    """``(adapter name, diffusers module)`` pairs that can never learn: the Reference-LoRA on the last single
    block's ``to_q``, ``proj_mlp`` and ``proj_out``."""
    prefix = "single_transformer_blocks."
    singles = [int(_module(k)[len(prefix):].split(".", 1)[0]) for k in adapter.lora_A["reference"]
               if _module(k).startswith(prefix)] if "reference" in adapter.lora_A else []
    if not singles:
        return set()
    last = max(singles)
    return {("reference", f"{prefix}{last}.{layer}") for layer in STRUCTURAL_ZERO_LAYERS
            if _key(f"{prefix}{last}.{layer}") in adapter.lora_A["reference"]}


def learning_statistics(adapter: TrainableAdapter) -> dict:
    """What the last backward taught, structural zeros left out: the gradient norm of the layers that can
    learn, how many of them got a non-zero gradient, and how many layers were left out."""
    skip = structural_zeros(adapter)
    layers = [(adapter.lora_A[name][key], adapter.lora_B[name][key]) for name in adapter.lora_A
              for key in adapter.lora_A[name] if (name, _module(key)) not in skip]

    def stats(params) -> Tensor:  # [Σ grad², max |grad|] of some parameters, fp32 on their device (no transfer yet)
        params = list(params)
        grads = [p.grad.detach().float() for p in params if p.grad is not None]
        if not grads:
            return params[0].new_zeros(2, dtype=torch.float32)
        return torch.stack([sum(g.pow(2).sum() for g in grads), torch.stack([g.abs().amax() for g in grads]).amax()])

    # one transfer for the whole adapter, not one per layer (a hot path: every training step)
    per_layer = torch.stack([stats(pair) for pair in layers]).tolist() if layers else []
    embedder = stats(adapter.domain_embedder.parameters()).tolist()
    return {"grad_norm": (sum(sq for sq, _ in per_layer) + embedder[0]) ** 0.5, "layers": len(layers),
            "layers_with_gradient": sum(peak > 0 for _, peak in per_layer), "structural_zeros": len(skip)}


def _export(t: Tensor, dtype) -> Tensor:
    return t.detach().to(device="cpu", dtype=dtype).contiguous().clone()


def _default_parts(path: str) -> tuple[str, ...]:
    if path.endswith(".img_attn.qkv"):
        return ("q", "k", "v")
    if path.endswith(".linear1"):
        return ("q", "k", "v", "mlp")
    return ()


def _diffusers_name(path: str, part: str | None) -> str:
    """The diffusers module of (ComfyUI path, fused part), the inverse of map_diffusers_module."""
    from .release_format import DOUBLE_LAYERS, SINGLE_LAYERS, TOP_LAYERS
    for name, spec in TOP_LAYERS.items():
        if spec == (path, part):
            return name
    kind, i, rest = path.split(".", 2)
    layers, prefix = (DOUBLE_LAYERS, "transformer_blocks") if kind == "double_blocks" else \
        (SINGLE_LAYERS, "single_transformer_blocks")
    for name, spec in layers.items():
        if spec == (rest, part):
            return f"{prefix}.{i}.{name}"
    raise RefAny3DError(f"'{path}' ({part}) is not a layer RefAny3D adapts")


# ------------------------------------------------------------------------------------------------
# the loss

#: ComfyUI's training flag (``comfy.model_management.in_training``); newer than v0.3.75, the pack's floor
TRAINING_FLAG = "in_training"
_NO_FLAG = object()


@contextlib.contextmanager
def training_mode():
    """ComfyUI's ``model_management.in_training`` set while inside (newer ComfyUI then runs RoPE in
    plain, differentiable torch instead of comfy-kitchen; older versions always do). Wrap the forward
    *and* the backward (checkpointed blocks are recomputed there) of every training step.

    The flag is optional: it is read in a ``try``/``except AttributeError`` (ComfyUI v0.3.75, the pack's
    floor, has none; it is added for the step and removed again) and written by name, so the reads and
    writes are a guarded use that tools predicting breakage across ComfyUI versions (comfy-import-guard)
    see as such."""
    import comfy.model_management as mm
    try:
        old = mm.in_training
    except AttributeError:  # ComfyUI without the flag
        old = _NO_FLAG
    setattr(mm, TRAINING_FLAG, True)
    try:
        yield
    finally:
        if old is _NO_FLAG:
            delattr(mm, TRAINING_FLAG)
        else:
            setattr(mm, TRAINING_FLAG, old)


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A tensor sharing ``t``'s storage that autograd may save (an inference-mode tensor may not be)."""
    if not t.is_inference():
        return t.detach()
    try:
        return torch.from_dlpack(torch.utils.dlpack.to_dlpack(t.detach()))
    except (RuntimeError, TypeError, BufferError):  # a dtype DLPack cannot carry: a copy
        return t.detach().clone()


@contextlib.contextmanager
def frozen_view(module: torch.nn.Module):
    """Inside: every parameter and buffer of ``module`` is a frozen stand-in on the same storage, usable in
    a backward pass even when ComfyUI created the weights in inference mode; afterwards the original
    Parameter objects (and their requires_grad) are back, so the shared model is unchanged."""
    saved = []
    try:
        with torch.inference_mode(False):
            for mod in module.modules():
                for name, p in list(mod._parameters.items()):
                    if p is not None:
                        saved.append((mod._parameters, name, p))
                        mod._parameters[name] = torch.nn.Parameter(_alias(p), requires_grad=False)
                for name, b in list(mod._buffers.items()):
                    if b is not None:
                        saved.append((mod._buffers, name, b))
                        mod._buffers[name] = _alias(b)
        yield module
    finally:
        for store, name, original in reversed(saved):
            store[name] = original


@dataclass
class Unconditional:
    """What the dropouts replace: the empty prompt's T5 tokens [L, C] (same L as the prompts) and
    pooled vector [P] or None, and the black reference's latent [16, h, w] (RGB and point-map views alike)."""
    context: Tensor
    pooled: Tensor | None
    black_reference: Tensor


@dataclass
class LossOut:
    loss: Tensor            # MSE(RGB) + MSE(point map), fp32, differentiable
    rgb: float
    point_map: float
    t: list[float]
    prompt_dropped: list[bool]
    references_dropped: list[bool]


def sample_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit seed for one sample's randomness at one step."""
    digest = hashlib.blake2b(f"refany3d:{int(seed)}:{int(step)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def training_loss(flux, adapter, batch: Mapping, seed: int, step: int, uncond: Unconditional | None = None, *,
                  p_drop_prompt: float = P_DROP_PROMPT, p_drop_references: float = P_DROP_REFERENCES,
                  checkpoint: bool = False, cached_references: bool = False, **forward_options) -> LossOut:
    """The release's loss on one batch (docs/method.md §6).

    ``batch``: ``x0_rgb``, ``x0_point_map`` B×16×H×W (latents in the model's scale), ``refs_rgb``,
    ``refs_point_map`` B×N×16×h×w, ``context`` B×L×C, ``pooled`` B×P (optional) and ``index`` (each
    sample's dataset index; default 0…B−1). Per sample, from a generator keyed on (seed, step, index):
    t = sigmoid(n), n ~ N(0, 1), shared by both targets; independent noise per target;
    x_t = (1 − t)·x0 + t·ε, target ε − x0; prompt → ``uncond`` with ``p_drop_prompt`` and all
    references → black with ``p_drop_references`` (independent draws). References at t = 0, Flux
    guidance 1.0 for every group. Call inside :func:`training_mode`."""
    if cached_references or forward_options.get("reference_cache") is not None:
        raise RefAny3DError("cached references are an inference-only option: they cannot be used in training; "
                            "train with cached_references=False")
    x0_rgb, x0_pm = batch["x0_rgb"], batch["x0_point_map"]
    refs_rgb, refs_pm = batch["refs_rgb"], batch["refs_point_map"]
    context, pooled = batch["context"], batch.get("pooled")
    b = x0_rgb.shape[0]
    index = [int(i) for i in batch.get("index", range(b))]
    if len(index) != b:
        raise RefAny3DError(f"batch['index'] has {len(index)} entries for {b} samples")
    if (p_drop_prompt > 0 or p_drop_references > 0) and uncond is None:
        raise RefAny3DError("dropout needs the empty prompt and the black reference (uncond)")
    t, eps_rgb, eps_pm, drop_p, drop_r = [], [], [], [], []
    for i in index:
        g = torch.Generator().manual_seed(sample_seed(seed, step, i))
        t.append(torch.sigmoid(torch.randn((), generator=g, dtype=torch.float32)))
        eps_rgb.append(torch.randn(x0_rgb.shape[1:], generator=g, dtype=torch.float32))
        eps_pm.append(torch.randn(x0_pm.shape[1:], generator=g, dtype=torch.float32))
        u = torch.rand(2, generator=g, dtype=torch.float32)
        drop_p.append(bool(u[0] < p_drop_prompt))
        drop_r.append(bool(u[1] < p_drop_references))
    dev = x0_rgb.device
    tt = torch.stack(t).to(dev)
    eps_rgb, eps_pm = torch.stack(eps_rgb).to(dev), torch.stack(eps_pm).to(dev)
    tb = tt.view(b, 1, 1, 1)
    x0r, x0p = x0_rgb.float(), x0_pm.float()
    xt_rgb, xt_pm = (1 - tb) * x0r + tb * eps_rgb, (1 - tb) * x0p + tb * eps_pm
    if any(drop_p):
        m = torch.tensor(drop_p, device=dev).view(b, 1, 1)
        context = torch.where(m, uncond.context.to(context).expand_as(context), context)
        if pooled is not None:
            empty = uncond.pooled if uncond.pooled is not None else torch.zeros_like(pooled[0])
            pooled = torch.where(m.view(b, 1), empty.to(pooled).expand_as(pooled), pooled)
    if any(drop_r):
        m = torch.tensor(drop_r, device=dev).view(b, 1, 1, 1, 1)
        black = uncond.black_reference.to(refs_rgb)
        refs_rgb = torch.where(m, black.expand_as(refs_rgb), refs_rgb)
        refs_pm = torch.where(m, black.expand_as(refs_pm), refs_pm)
    dtype = x0_rgb.dtype
    guidance = torch.full((b,), TRAIN_GUIDANCE, device=dev, dtype=torch.float32)
    v_rgb, v_pm = refany3d_forward(flux, adapter, xt_rgb.to(dtype), xt_pm.to(dtype), refs_rgb, refs_pm,
                                   tt.to(dtype), context, pooled, guidance, ref_timestep=REF_TIMESTEP,
                                   ref_guidance=TRAIN_GUIDANCE, checkpoint=checkpoint, **forward_options)
    l_rgb = torch.nn.functional.mse_loss(v_rgb.float(), eps_rgb - x0r)
    l_pm = torch.nn.functional.mse_loss(v_pm.float(), eps_pm - x0p)
    return LossOut(l_rgb + l_pm, float(l_rgb.detach()), float(l_pm.detach()), [float(x) for x in tt], drop_p, drop_r)

