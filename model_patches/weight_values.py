"""Value checks of RefAny3D weight files: every value finite and of a sane magnitude, checked once when a
file is loaded, so a damaged file is an error naming the file and the key instead of a black picture."""
from __future__ import annotations

import torch

from .errors import AdapterError


#: The largest magnitude a value in a RefAny3D weight file may have. Trained LoRA factors and the domain
#: embedder's weights are of order 1 (the release's are below 10); a file past this bound is damaged or is
#: not a RefAny3D file, and would give a black picture instead of an error. Generous on purpose.
MAX_ABS_WEIGHT = 1e4
#: float dtype -> (integer dtype of its size, mask of the bits without the sign)
_MAGNITUDE_BITS = {torch.float16: (torch.int16, 0x7FFF), torch.bfloat16: (torch.int16, 0x7FFF),
                   torch.float32: (torch.int32, 0x7FFFFFFF), torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF)}
_CHECKED_DTYPES = tuple(_MAGNITUDE_BITS)


def _within_bound(v: torch.Tensor) -> bool:
    """Every value of ``v`` finite and |value| <= MAX_ABS_WEIGHT, in one integer pass: an IEEE float's bits
    without the sign order like its magnitude, and inf/NaN have the largest ones. (A float min/max is
    many times slower on the CPU for bfloat16 and float16, the release's dtypes.)"""
    int_dtype, mask = _MAGNITUDE_BITS[v.dtype]
    bound = torch.tensor(MAX_ABS_WEIGHT, dtype=v.dtype).view(int_dtype)
    return bool(((v.contiguous().view(int_dtype) & mask).max() <= bound).item())


def check_weight_values(sd: dict[str, torch.Tensor], label: str, what: str) -> None:
    """Every floating-point tensor of one file finite and within ±MAX_ABS_WEIGHT, checked once when
    the file is loaded (one integer pass per tensor, about 0.1 s for the release's files; details only for a
    bad one). Raises AdapterError naming the file, the key and what was found."""
    for key, t in sd.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue  # non-floating tensors are refused by the format checks, with their own message
        v = t.detach()
        if v.dtype not in _CHECKED_DTYPES:
            v = v.float()  # float8 and other storage types: widened (exactly) to float32
        if _within_bound(v):
            continue
        bad = ~torch.isfinite(v)
        n_nan, n_bad = int(torch.isnan(v).sum()), int(bad.sum())
        if n_bad:
            kinds = ", ".join(k for k, n in (("NaN", n_nan), ("inf", n_bad - n_nan)) if n)
            where = f" among {v.numel()} (first at index {_index(bad)})" if v.ndim else ""
            raise AdapterError(
                f"{what} file '{label}': key '{key}' holds {n_bad} non-finite value(s) ({kinds}){where}: the file "
                "is damaged (or was saved from a diverged training run) and would give a black picture. Use the "
                "released file again.")
        peak = v.abs().max()
        where = f" (at index {_index(v.abs() == peak)})" if v.ndim else ""
        raise AdapterError(
            f"{what} file '{label}': key '{key}' holds a value of magnitude {float(peak):.3g}{where}; RefAny3D "
            f"weights are of order 1 and at most {MAX_ABS_WEIGHT:g} is accepted: the file is damaged or is not a "
            "RefAny3D weight file. Use the released file again.")


def _index(hits: torch.Tensor) -> list[int]:
    return [int(i) for i in hits.nonzero()[0]]


def real_dtype(t: torch.Tensor) -> torch.Tensor:
    """A LoRA factor in a dtype that promotes and computes: float8 storage is widened to float32."""
    return t if t.dtype in _CHECKED_DTYPES else t.float()
