"""Tiny random models in ComfyUI's own formats, for tests, benchmarks and the demo's wiring check.

* :func:`build_flux` / :func:`build_flux_module`: a small Flux built the way ComfyUI builds one
  (``comfy.supported_models.Flux(unet_config).get_model`` + ``load_model_weights`` +
  ``ModelPatcher``) with random weights of a sane scale; nothing is zero-initialised, so the
  modulations and the final layer matter.
* :func:`write_flux_checkpoint`: a 3072-wide Flux with one double and one single block in the
  BFL/ComfyUI key format that the stock UNETLoader detects and loads (written in seconds: the
  random values come from small pre-drawn pools).
* :func:`write_taesd_vae`: a random 16-channel TAESD-format VAE that the stock VAELoader loads
  (8x down/up-sampling, like the Flux VAE).

ComfyUI's ``comfy`` package must be importable (on sys.path, in CPU mode where there is no GPU);
it is imported inside the functions so that importing this module costs nothing.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

FLUX_REAL = dict(hidden_size=3072, num_heads=24, axes_dim=[16, 56, 56], context_in_dim=4096, vec_in_dim=768)


def default_axes_dim(head_dim: int) -> list[int]:
    """RoPE axes (index, row, col) for a head size, in Flux's proportions (16/56/56 of 128), all even."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head size {head_dim} must be even and at least 6")
    first = max(2, 2 * round(head_dim / 16))
    rest = head_dim - first
    row = 2 * ((rest // 2) // 2)
    return [first, row, rest - row]


def flux_unet_config(hidden_size: int = 64, num_heads: int = 2, depth: int = 1, depth_single_blocks: int = 1,
                     context_in_dim: int = 32, vec_in_dim: int | None = 16, axes_dim: list[int] | None = None,
                     guidance_embed: bool = True, in_channels: int = 16, mlp_ratio: float = 4.0,
                     theta: int = 10000, qkv_bias: bool = True) -> dict:
    """The unet_config ComfyUI's model detection would give for such a Flux."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    axes = list(axes_dim) if axes_dim is not None else default_axes_dim(hidden_size // num_heads)
    cfg = {"image_model": "flux", "in_channels": in_channels, "out_channels": in_channels, "patch_size": 2,
           "vec_in_dim": vec_in_dim, "context_in_dim": context_in_dim, "hidden_size": hidden_size,
           "mlp_ratio": mlp_ratio, "num_heads": num_heads, "depth": depth, "depth_single_blocks": depth_single_blocks,
           "axes_dim": axes, "theta": theta, "qkv_bias": qkv_bias, "guidance_embed": guidance_embed}
    return {**cfg, **_flux1_detection_extras()}


def _flux1_detection_extras() -> dict:
    """The keys that this ComfyUI's model detection adds for a FLUX.1 checkpoint beyond the classic
    ones (newer versions: ``txt_ids_dims=[]``, ``yak_mlp``/``txt_norm`` False), limited to the fields
    its ``FluxParams`` has, so the config builds on every supported version."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams
    fields = {f.name for f in dataclasses.fields(FluxParams)}
    extras = {"txt_ids_dims": [], "yak_mlp": False, "txt_norm": False}
    return {k: v for k, v in extras.items() if k in fields}


def _param_kind(key: str, shape) -> tuple[str, float]:
    """(kind, scale) of the random values for one Flux parameter."""
    if key.endswith((".scale", "_norm.weight")):  # RMSNorm of q/k (BFL ".scale"; newer ComfyUI ".weight")
        return "ones", 0.1
    if key.endswith(".bias"):
        return "normal", 0.05
    if len(shape) == 2:
        fan_in = shape[1]
        gain = 0.5 if ("mod.lin" in key or "modulation" in key) else 1.0
        return "normal", gain / math.sqrt(fan_in)
    return "normal", 0.1


def random_flux_state_dict(unet_config: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random weights for every parameter of a ComfyUI Flux with ``unet_config`` (BFL key names)."""
    shapes = flux_parameter_shapes(unet_config)
    g = torch.Generator().manual_seed(int(seed))
    sd = {}
    for key, shape in shapes.items():
        kind, scale = _param_kind(key, shape)
        t = torch.randn(*shape, generator=g) * scale
        if kind == "ones":
            t = t + 1.0
        sd[key] = t.to(dtype)
    return sd


def flux_parameter_shapes(unet_config: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of ComfyUI's Flux for ``unet_config`` (built on the meta device)."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    cfg = {k: v for k, v in unet_config.items() if k != "dtype"}
    with torch.device("meta"):
        model = Flux(**cfg, device="meta", dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    return {_bfl_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


def _bfl_key(key: str) -> str:
    """The released (BFL) name of a Flux parameter: q/k RMSNorm weights are ``…_norm.scale`` there,
    while newer ComfyUI names its own module's parameter ``…_norm.weight`` (and converts on load)."""
    return key[:-len(".weight")] + ".scale" if key.endswith(("query_norm.weight", "key_norm.weight")) else key


def build_flux(hidden_size: int = 64, num_heads: int = 2, depth: int = 1, depth_single_blocks: int = 1,
               context_in_dim: int = 32, vec_in_dim: int | None = 16, axes_dim: list[int] | None = None,
               guidance_embed: bool = True, seed: int = 0, dtype=torch.float32, **config):
    """A ComfyUI ModelPatcher around a tiny random Flux (``patcher.model.diffusion_model`` is the
    ``comfy.ldm.flux.model.Flux``), built as comfy.sd.load_diffusion_model builds one."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    unet_config = flux_unet_config(hidden_size, num_heads, depth, depth_single_blocks, context_in_dim, vec_in_dim,
                                   axes_dim, guidance_embed, **config)
    sd = random_flux_state_dict(unet_config, seed=seed, dtype=dtype)
    model_config = comfy.supported_models.Flux(unet_config)
    model_config.set_inference_dtype(dtype, None)
    sd = model_config.process_unet_state_dict(sd)  # released key names -> this ComfyUI's, as its loader does
    model = model_config.get_model(sd, "")
    offload = mm.unet_offload_device()
    model = model.to(offload)
    model.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=offload)


def build_sd15():
    """A real (tiny, random) non-Flux ComfyUI model: an SD1.5-type UNet in a ModelPatcher on the CPU."""
    import comfy.model_patcher
    import comfy.supported_models
    cfg = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
           "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32, "num_res_blocks": [1],
           "transformer_depth": [1], "channel_mult": [1], "transformer_depth_middle": 1,
           "use_linear_in_transformer": False, "context_dim": 32, "num_heads": 2, "transformer_depth_output": [1, 1],
           "use_temporal_attention": False, "use_temporal_resblock": False, "num_head_channels": -1}
    config = comfy.supported_models.SD15(cfg)
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_patcher.ModelPatcher(config.get_model({}, ""), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def build_flux_module(*args, **kwargs):
    """The bare ``comfy.ldm.flux.model.Flux`` of :func:`build_flux` (same arguments)."""
    return build_flux(*args, **kwargs).model.diffusion_model


# --------------------------------------------------------------------------------------------
# a stock-loadable 3072-wide Flux checkpoint

_ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_POOL = 4_194_301  # prime: pool repeats never line up with rows


def _write_safetensors_from_pools(path: Path, shapes: dict[str, tuple[int, ...]], seed: int, dtype,
                                  metadata: dict[str, str] | None = None) -> None:
    """Writes a safetensors file whose tensors are filled from a few random pools (one per
    (kind, scale)), cycled from a random start: fast for hundreds of millions of values."""
    esize = torch.tensor([], dtype=dtype).element_size()
    header: dict = {"__metadata__": metadata or {}}
    offset = 0
    for key, shape in shapes.items():
        n = math.prod(shape) * esize
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(int(seed))
    pools: dict = {}
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape in shapes.items():
            kind, scale = _param_kind(key, shape)
            pkey = (kind, round(scale, 8))
            if pkey not in pools:
                p = torch.randn(_POOL, generator=g) * scale + (1.0 if kind == "ones" else 0.0)
                pools[pkey] = p.to(dtype).view(torch.uint8).numpy()
            pool = pools[pkey]
            left = math.prod(shape) * esize
            start = int(torch.randint(0, _POOL, (), generator=g)) * esize
            while left:
                chunk = pool[start:start + left]
                f.write(chunk.tobytes())
                left -= len(chunk)
                start = 0


def write_flux_checkpoint(path, seed: int = 0, depth: int = 1, depth_single_blocks: int = 1,
                          dtype=torch.bfloat16) -> Path:
    """A 3072-wide FLUX.1-dev-shaped diffusion model (24 heads, context 4096, pooled 768, guidance
    embedding) with ``depth`` double and ``depth_single_blocks`` single blocks and random weights, in
    the BFL/ComfyUI key format the stock UNETLoader detects as Flux. bf16: about 1.1 GB for 1 + 1 blocks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = flux_unet_config(depth=depth, depth_single_blocks=depth_single_blocks, **FLUX_REAL)
    shapes = flux_parameter_shapes(cfg)
    tmp = path.with_name(path.name + ".part")
    _write_safetensors_from_pools(tmp, shapes, seed, dtype,
                                  metadata={"refany3d": "random tiny Flux for tests", "seed": str(seed)})
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------
# a random TAESD-format VAE with 16 latent channels

def random_taesd_state_dict(latent_channels: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """taesd_encoder.* / taesd_decoder.* weights (ComfyUI's comfy/taesd layout) with random values,
    plus vae_scale / vae_shift set as ComfyUI sets them for Flux's TAESD (0.3611, 0.1159)."""
    import comfy.taesd.taesd
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in comfy.taesd.taesd.TAESD(latent_channels=latent_channels).state_dict().items()}
    g = torch.Generator().manual_seed(int(seed))
    sd = {}
    for key, shape in shapes.items():
        if len(shape) == 4:  # conv: fan-in scaled, residual-safe
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = torch.randn(*shape, generator=g) * math.sqrt(1.0 / fan_in)
        elif len(shape) == 1:
            sd[key] = torch.randn(*shape, generator=g) * 0.05
        else:
            sd[key] = torch.zeros(shape)
    # last decoder conv: a visible image around mid grey
    last_bias = max((k for k in sd if k.startswith("taesd_decoder.") and k.endswith(".bias")),
                    key=lambda k: int(k.split(".")[1]))
    sd[last_bias] = sd[last_bias] + 0.5
    sd["vae_scale"] = torch.tensor(0.3611)
    sd["vae_shift"] = torch.tensor(0.1159)
    return sd


def write_taesd_vae(path, seed: int = 0, latent_channels: int = 16) -> Path:
    """A random TAESD-format VAE (one .safetensors file with taesd_encoder.* and taesd_decoder.*
    keys) that ComfyUI's VAELoader loads from models/vae/; 16 latent channels like Flux's VAE."""
    import safetensors.torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = random_taesd_state_dict(latent_channels, seed)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
                                metadata={"refany3d": "random TAESD-format VAE for tests"})
    return path


#: File names of the stock-loadable tiny models shared by the tests and the demo's wiring check.
TINY_UNET_NAME = "refany3d_tiny_flux.safetensors"
TINY_VAE_NAME = "refany3d_tiny_taesd.safetensors"


def provide_stock_models(models_dir) -> tuple[str, str]:
    """The 3072-wide tiny Flux in ``models_dir/diffusion_models`` and the TAESD VAE in
    ``models_dir/vae``, written once and reused; returns their names for UNETLoader and VAELoader."""
    models_dir = Path(models_dir)
    unet = models_dir / "diffusion_models" / TINY_UNET_NAME
    if not unet.exists():
        write_flux_checkpoint(unet, seed=0)
    vae = models_dir / "vae" / TINY_VAE_NAME
    if not vae.exists():
        write_taesd_vae(vae, seed=0)
    return unet.name, vae.name
