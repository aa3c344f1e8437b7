"""Which latents a RefAny3D-patched model sampled (docs/method.md §5, "Joint latent").

A joined latent sampled by a plain Flux (no RefAny3D Apply in front of the sampler) "succeeds": two
unrelated pictures side by side. To make that loud, the OUTER_SAMPLE wrapper of every RefAny3D model
records a fingerprint of what the sampler returns (and of the last denoised estimate, which
SamplerCustomAdvanced hands out as ``denoised_output``), and RefAny3D Split Latent asks
:func:`sampled_by_refany3d` about the latent it gets.

The fingerprint is the shape and a hash of the values rounded to float16, so it survives what core
samplers do after sampling (``.to(intermediate_device, intermediate_dtype)``: a copy to the CPU,
optionally to float16). Only fingerprints are kept (the newest :data:`MAX_RECORDS`), never tensors.

``JOINED_KEY`` marks the LATENT dict RefAny3D Empty Latent makes; core samplers copy the input dict's
keys to their output, so the mark reaches RefAny3D Split Latent.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch
from torch import Tensor

#: LATENT dict key set by RefAny3D Empty Latent (value True); core samplers copy it to their output.
JOINED_KEY = "refany3d_joined"
MAX_RECORDS = 512

_records: OrderedDict[tuple, None] = OrderedDict()
_lock = threading.Lock()


def fingerprint(t) -> tuple | None:
    """(shape, hash of the values as float16) of a plain floating-point tensor, else None."""
    if not isinstance(t, Tensor) or t.is_nested or t.layout != torch.strided or not t.is_floating_point():
        return None
    values = t.detach().to(device="cpu", dtype=torch.float16).contiguous()
    digest = hashlib.blake2b(values.view(torch.int16).numpy().tobytes(), digest_size=16).hexdigest()
    return tuple(t.shape), digest


def record_sampled(t) -> None:
    """Remembers ``t`` as a latent that a RefAny3D model sampled."""
    key = fingerprint(t)
    if key is None:
        return
    with _lock:
        _records[key] = None
        _records.move_to_end(key)
        while len(_records) > MAX_RECORDS:
            _records.popitem(last=False)


def sampled_by_refany3d(t) -> bool:
    """Whether ``t`` (or a copy of it on another device or in float16) came out of a RefAny3D sampling run."""
    key = fingerprint(t)
    with _lock:
        return key is not None and key in _records
