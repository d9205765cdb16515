"""How many weights each layer keeps, given per-layer scores and a global budget.

Every allocator takes ``(weights, scores, alive, n_keep)`` -- lists aligned with the prunable layers --
and returns one integer per layer, never above the layer's alive count, summing to ``n_keep``.
Already-pruned weights (``alive == False``) carry score ``-inf`` and are never kept.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["global_threshold", "uniform_plus", "erk", "water_fill", "erk_factor"]


def _check_budget(alive: Sequence[torch.Tensor], n_keep: int) -> list[int]:
    caps = [int(a.sum()) for a in alive]
    if not 0 <= n_keep <= sum(caps):
        raise ValueError(f"cannot keep {n_keep} weights: only {sum(caps)} are alive")
    return caps


def global_threshold(
    weights: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], alive: Sequence[torch.Tensor], n_keep: int
) -> list[int]:
    """One threshold across layers: the ``n_keep`` highest scores overall survive (global magnitude
    with ``|w|`` scores, LAMP with LAMP scores)."""
    _check_budget(alive, n_keep)
    flat = torch.cat([s.flatten() for s in scores])
    owner = torch.cat([torch.full((s.numel(),), i, dtype=torch.long) for i, s in enumerate(scores)])
    if n_keep == 0:
        return [0] * len(scores)
    idx = torch.topk(flat, n_keep, sorted=False).indices
    return torch.bincount(owner[idx], minlength=len(scores)).tolist()


def _integerize(real: Sequence[float], caps: Sequence[int], n_keep: int) -> list[int]:
    """Round real-valued counts so they sum exactly to ``n_keep`` (largest remainders first)."""
    base = [min(c, int(math.floor(r + 1e-9))) for r, c in zip(real, caps)]
    short = n_keep - sum(base)
    order = sorted(range(len(real)), key=lambda i: real[i] - base[i], reverse=True)
    while short > 0:
        moved = False
        for i in order:
            if short and base[i] < caps[i]:
                base[i] += 1
                short -= 1
                moved = True
        if not moved:
            raise ValueError("budget exceeds the alive weights")  # guarded by _check_budget
    return base


def water_fill(factors: Sequence[float], caps: Sequence[int], n_keep: int) -> list[int]:
    """Keep ``eps * factor_l`` weights per layer, capped at ``caps[l]``, with one ``eps`` so the total is
    ``n_keep``. A layer that would overflow is kept whole and ``eps`` recomputed for the others, one layer
    at a time (largest overflow first), as in the reference LAMP code's ``_amounts_from_eps``."""
    if len(factors) != len(caps):
        raise ValueError("factors and caps must be aligned")
    if any(f < 0 for f in factors):
        raise ValueError("factors must be non-negative")
    if not 0 <= n_keep <= sum(caps):
        raise ValueError(f"cannot keep {n_keep} weights: only {sum(caps)} are alive")
    dense = [c == 0 for c in caps]  # kept whole (layers with nothing alive trivially so)
    while True:
        rest = n_keep - sum(c for c, d in zip(caps, dense) if d)
        free = [i for i, d in enumerate(dense) if not d]
        if not free:
            real = [float(c) for c in caps]
            break
        wsum = sum(factors[i] for i in free)
        weight = {i: (factors[i] if wsum > 0 else float(caps[i])) for i in free}
        eps = rest / sum(weight.values())
        worst = max(free, key=lambda i: eps * weight[i] / caps[i])
        if eps * weight[worst] / caps[worst] > 1.0:
            dense[worst] = True
            continue
        real = [float(caps[i]) if dense[i] else eps * weight[i] for i in range(len(caps))]
        break
    return _integerize(real, caps, n_keep)


def erk_factor(weight: torch.Tensor) -> float:
    """ERK survivor factor ``n_in + n_out + k_h + k_w`` (linear: ``n_in + n_out``), so that the layer's
    density ``factor / numel`` is proportional to the Erdős–Rényi-Kernel formula."""
    return float(sum(weight.shape))


def erk(
    weights: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], alive: Sequence[torch.Tensor], n_keep: int
) -> list[int]:
    """Erdős–Rényi-Kernel (Evci et al., 2020): density_l proportional to
    ``(n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)``; overflowing layers are made dense."""
    caps = _check_budget(alive, n_keep)
    return water_fill([erk_factor(w) for w in weights], caps, n_keep)


def uniform_plus(
    weights: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    alive: Sequence[torch.Tensor],
    n_keep: int,
    *,
    last_max_sparsity: float = 0.8,
) -> list[int]:
    """Uniform+ (Gale et al., 2019): every layer gets the same sparsity, except the first layer, kept
    dense when it is a convolution, and the last layer, pruned to at most ``last_max_sparsity``; the
    middle layers absorb the rest so the global budget is met."""
    caps = _check_budget(alive, n_keep)
    n = len(weights)
    numel = [w.numel() for w in weights]
    fixed: dict[int, int] = {}
    if weights[0].dim() == 4 and n > 1:
        fixed[0] = caps[0]
    free = [i for i in range(n) if i not in fixed]

    def fill(idx: list[int], budget: int) -> list[int]:
        if budget < 0 or budget > sum(caps[i] for i in idx):
            raise ValueError(
                f"uniform_plus cannot reach the target: {budget} weights to keep in layers {idx} "
                f"holding {sum(caps[i] for i in idx)} alive weights"
            )
        return water_fill([float(numel[i]) for i in idx], [caps[i] for i in idx], budget)

    rest = n_keep - sum(fixed.values())
    keep = dict(zip(free, fill(free, rest)))
    last = n - 1
    if last not in fixed and len(free) > 1:
        minimum = min(caps[last], int(round((1.0 - last_max_sparsity) * numel[last])))
        if keep[last] < minimum:
            fixed[last] = minimum
            middle = [i for i in free if i != last]
            keep = dict(zip(middle, fill(middle, n_keep - sum(fixed.values()))))
    keep.update(fixed)
    return [keep[i] for i in range(n)]
