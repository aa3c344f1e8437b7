"""Release-format RefAny3D files with random values, for tests, benchmarks and the demo's wiring check:
``default.safetensors`` / ``coord.safetensors`` (diffusers LoRA keys for every layer the release adapts
in a Flux of the given size) and ``domain_embedder.pth`` (a pickled state dict), written exactly as the
release lays them out, so the pack's real loading code is what reads them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from model_patches.adapter import ADAPTER_NAMES
from model_patches.release_format import (EMBED_DIM, NUM_DOMAINS, RELEASE_FILES, expected_in_out,
                                          map_diffusers_module, release_modules)


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
            fan_in, fan_out = expected_in_out(target, part, d, mlp)
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
