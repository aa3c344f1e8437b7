"""sRGB transfer functions (IEC 61966-2-1), on tensors of values in [0, 1]."""
from __future__ import annotations

import torch


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """Decode sRGB-encoded values to linear light (same shape)."""
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    """Encode linear-light values as sRGB (same shape)."""
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)
