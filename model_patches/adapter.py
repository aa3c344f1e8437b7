"""The RefAny3D adapter: two LoRAs on FLUX.1's layers and the domain embedder (docs/method.md §2, §3).

* :class:`RefAny3DAdapter` is what RefAny3D Load Adapter outputs: the release files' tensors as
  loaded (CPU), on ComfyUI's Flux module names.
* :class:`AdapterWeights` is the same adapter as a ``torch.nn.Module`` in the model's compute dtype.
  RefAny3D Apply wraps it in a ``ModelPatcher`` registered as an additional model of the patched
  clone, so ComfyUI's model management loads it onto the compute device with the model, counts its
  memory, and offloads or unloads it with the model. No other device copy of the adapter exists.

Both offer the interface the forward uses: ``loras[name][module] = (down, up)``,
``domain_embedder``, ``hidden_size``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

ADAPTER_NAMES = ("reference", "domain")
REFERENCE, DOMAIN = ADAPTER_NAMES


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

    def modules(self, name: str) -> list[str]:
        """ComfyUI module paths adapted by adapter ``name``."""
        return sorted(self.loras.get(name, {}))


class LowRank(torch.nn.Module):
    """One adapted layer's LoRA factors: ``down`` [R, in], ``up`` [out, R]."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor):
        super().__init__()
        self.down = torch.nn.Parameter(down, requires_grad=False)
        self.up = torch.nn.Parameter(up, requires_grad=False)


class _FactorView(Mapping):
    """``{module path: (down, up)}`` read from the current parameters of one adapter's layers."""

    def __init__(self, layers: torch.nn.ModuleDict):
        self._layers = layers

    def __getitem__(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self._layers[path.replace(".", "__")]
        return layer.down, layer.up

    def get(self, path: str, default=None):
        key = path.replace(".", "__")
        if key not in self._layers:
            return default
        layer = self._layers[key]
        return layer.down, layer.up

    def __iter__(self):
        return (key.replace("__", ".") for key in self._layers)

    def __len__(self) -> int:
        return len(self._layers)


class AdapterWeights(torch.nn.Module):
    """A :class:`RefAny3DAdapter` as a module whose parameters ComfyUI's model management moves.

    ``loras[name][module]`` reads the module's parameters as they are now, so it follows the module
    wherever (and however) ComfyUI moves it; ``domain_embedder`` is a submodule."""

    def __init__(self, adapter: RefAny3DAdapter, dtype: torch.dtype | None = None):
        super().__init__()
        self.hidden_size = adapter.hidden_size
        self.files = dict(adapter.files)
        self.lora = torch.nn.ModuleDict()
        for name, modules in adapter.loras.items():
            self.lora[name] = torch.nn.ModuleDict({path.replace(".", "__"): LowRank(down.to(dtype=dtype),
                                                                                    up.to(dtype=dtype))
                                                   for path, (down, up) in modules.items()})
        self.domain_embedder = _embedder_copy(adapter.domain_embedder, dtype)

    @property
    def loras(self) -> dict[str, _FactorView]:
        return {name: _FactorView(layers) for name, layers in self.lora.items()}

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.state_dict().values())


def _embedder_copy(embedder: torch.nn.Sequential, dtype) -> torch.nn.Sequential:
    import copy
    out = copy.deepcopy(embedder)
    for p in out.parameters():
        p.requires_grad_(False)
    return out.to(dtype=dtype) if dtype is not None else out


def adapter_patcher(adapter: RefAny3DAdapter, model):
    """A ``ModelPatcher`` around :class:`AdapterWeights` for ModelPatcher ``model``: same load and offload
    devices, the model's compute dtype (its manual-cast dtype for fp8 weights)."""
    import comfy.model_patcher
    base = model.model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    if not dtype.is_floating_point or dtype.itemsize < 2:
        dtype = torch.float32
    return comfy.model_patcher.ModelPatcher(AdapterWeights(adapter, dtype), load_device=model.load_device,
                                            offload_device=model.offload_device)
