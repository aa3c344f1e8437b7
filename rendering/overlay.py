"""A quick visual check of a camera read-out: the re-rendered silhouette over the photo."""
from __future__ import annotations

import torch

EDGE_COLOUR = (0.1, 1.0, 0.2)
FILL_COLOUR = (0.1, 0.6, 1.0)


def silhouette_edges(mask: torch.Tensor, width: int = 1) -> torch.Tensor:
    """[H, W] bool: pixels of ``mask`` (> 0.5) with a background neighbour within ``width`` pixels."""
    m = (mask > 0.5).float()[None, None]
    inner = -torch.nn.functional.max_pool2d(-m, 2 * width + 1, stride=1, padding=width)
    return (m - inner)[0, 0] > 0


def overlay(photo: torch.Tensor, mask: torch.Tensor, fill: float = 0.25) -> torch.Tensor:
    """[H, W, 3] photo with ``mask``'s area tinted and its outline drawn: [H, W, 3] float in 0..1."""
    out = photo[..., :3].clone().float()
    inside = mask > 0.5
    tint = torch.tensor(FILL_COLOUR, dtype=out.dtype)
    out[inside] = out[inside] * (1 - fill) + tint * fill
    width = max(1, round(max(mask.shape) / 256))
    out[silhouette_edges(mask, width)] = torch.tensor(EDGE_COLOUR, dtype=out.dtype)
    return out
