"""What a weight is worth: per-layer scores, higher = keep. Pure functions of one weight tensor."""
from __future__ import annotations

import torch

__all__ = ["magnitude", "lamp"]


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|w|``: the classic magnitude criterion (Han et al., 2015)."""
    return weight.detach().abs()


def lamp(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score (Lee et al., ICLR 2021): with the layer's weights sorted by ``|w|`` ascending,
    ``score(u) = w_u^2 / sum_{v >= u} w_v^2``. Scores are comparable across layers, so one global
    threshold on them yields the layer-adaptive allocation of the paper. Zero weights score 0.
    """
    sq = weight.detach().to(torch.float64).pow(2).flatten()
    sorted_sq, order = torch.sort(sq)
    tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])  # sum_{v >= u}
    normed = torch.where(tail > 0, sorted_sq / tail.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(tail))
    out = torch.empty_like(sq)
    out[order] = normed
    return out.view_as(weight)
