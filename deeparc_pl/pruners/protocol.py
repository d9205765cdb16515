"""What a pruner is (the ``Pruner`` protocol), what it reports, and a composable base class.

A pruner is any object with a ``name`` and a ``prune(model, sparsity)`` method that returns a pruned
*copy* of ``model``; after the call, ``pruner.report`` describes the result (:class:`PruningReport`).
Unstructured mask pruners are built from three replaceable parts, kept in separate modules so a plugin
can reuse two and replace one: a *scorer* (:mod:`~deeparc_pl.pruners.scoring`, what a weight is worth),
an *allocator* (:mod:`~deeparc_pl.pruners.allocation`, how many weights each layer keeps) and the
mask machinery (:mod:`~deeparc_pl.pruners.masks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from deeparc_pl.pruners import masks as _masks

__all__ = ["Pruner", "PruningReport", "ScoredPruner", "check_sparsity"]


@dataclass(frozen=True)
class PruningReport:
    """Outcome of one ``prune`` call.

    ``layer_sparsity`` maps each prunable module name (``nn.Conv2d`` / ``nn.Linear``) to its share of
    zero weights (for structured pruning: the share of that layer's weights that were removed);
    ``global_sparsity`` is the same over all prunable weights; ``extra`` holds method-specific data.
    """

    method: str
    target: float
    global_sparsity: float
    layer_sparsity: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Pruner(Protocol):
    """The plugin contract: ``name`` plus ``prune(model, sparsity) -> pruned copy``.

    ``sparsity`` is the target share of zero weights among the prunable weights of the *result*
    (cumulative). The input model must stay untouched. After ``prune`` the attribute ``report`` holds a
    :class:`PruningReport`.
    """

    name: str

    def prune(self, model: nn.Module, sparsity: float) -> nn.Module: ...


def check_sparsity(sparsity: float) -> float:
    """Validate a target sparsity in [0, 1); bool and non-numbers are rejected."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a float in [0, 1), got {type(sparsity).__name__}")
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {s}")
    return s


class ScoredPruner:
    """Unstructured pruner = scorer + allocator + masks.

    Subclasses set ``name`` and override :meth:`score` (one layer's weights -> same-shaped scores,
    higher = more worth keeping) and/or :meth:`allocate` (how many weights each layer keeps). Within a
    layer the highest-scored alive weights are kept. Weights that are already zero count as pruned and
    can never be revived, so the result's zero set always contains the input's.
    """

    name: ClassVar[str] = "scored"

    def __init__(self) -> None:
        self.report: Optional[PruningReport] = None

    def score(self, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def allocate(
        self,
        weights: Sequence[torch.Tensor],
        scores: Sequence[torch.Tensor],
        alive: Sequence[torch.Tensor],
        n_keep: int,
    ) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def prune(self, model: nn.Module, sparsity: float) -> nn.Module:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        target = check_sparsity(sparsity)
        out = _masks.copy_model(model)
        layers = _masks.prunable_layers(out)
        if not layers:
            raise ValueError("model has no prunable layers (nn.Conv2d / nn.Linear)")
        weights = [_masks.effective_weight(m).detach() for _, m in layers]
        bad = [name for (name, _), w in zip(layers, weights) if not bool(torch.isfinite(w).all())]
        if bad:  # NaN scores sort arbitrarily: the sparsity asked for would silently not be met
            raise ValueError(f"layers {bad[:5]} have NaN/inf weights: cannot rank them for pruning")
        alive = [w != 0 for w in weights]
        total = sum(w.numel() for w in weights)
        n_alive = int(sum(int(a.sum()) for a in alive))
        n_keep = total - int(round(target * total))
        if n_keep > n_alive:
            raise ValueError(
                f"target sparsity {target:.4f} is below the model's current sparsity "
                f"{1 - n_alive / total:.4f}; pruning cannot revive weights"
            )
        scores = []
        for w, a in zip(weights, alive):
            s = self.score(w).to(torch.float64)
            if s.shape != w.shape:
                raise ValueError(f"{type(self).__name__}.score returned shape {tuple(s.shape)} for weight {tuple(w.shape)}")
            scores.append(s.masked_fill(~a, float("-inf")))
        keep = [int(k) for k in self.allocate(weights, scores, alive, n_keep)]
        if len(keep) != len(layers):
            raise ValueError(f"allocate returned {len(keep)} counts for {len(layers)} layers")
        new_masks = {}
        for (name, _), s, a, k in zip(layers, scores, alive, keep):
            if not 0 <= k <= int(a.sum()):
                raise ValueError(f"allocation keeps {k} weights in {name!r}, which has {int(a.sum())} alive")
            new_masks[name] = _masks.topk_mask(s, k)
        _masks.apply_masks(out, new_masks, inplace=True)
        self.report = PruningReport(
            method=self.name,
            target=target,
            global_sparsity=_masks.sparsity(out),
            layer_sparsity=_masks.layer_sparsity(out),
            extra={"kept": dict(zip((n for n, _ in layers), keep))},
        )
        return out
