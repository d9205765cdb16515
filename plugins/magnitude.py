"""Built-in unstructured magnitude pruners (Lee et al., ICLR 2021, "Layer-adaptive sparsity for the
magnitude-based pruning", and the baselines compared there).

Each pruner is a scorer + an allocator on top of :class:`deeparc_pl.pruners.ScoredPruner`:

================  ==========  ========================================================
name              score       per-layer budget
================  ==========  ========================================================
``lamp``          LAMP        one global threshold on scores
``global``        ``|w|``     one global threshold on magnitudes
``uniform_plus``  ``|w|``     same sparsity everywhere, first conv dense, last <= 80 %
``erk``           ``|w|``     density proportional to the ERK formula
================  ==========  ========================================================
"""
from __future__ import annotations

from typing import Sequence

import torch

from deeparc_pl.pruners import allocation, scoring
from deeparc_pl.pruners.protocol import ScoredPruner

__all__ = ["MagnitudePruner", "LAMPPruner", "GlobalPruner", "UniformPlusPruner", "ERKPruner"]


class MagnitudePruner(ScoredPruner):
    """``|w|`` scores; subclasses pick the allocation."""

    name = "magnitude"

    def score(self, weight: torch.Tensor) -> torch.Tensor:
        return scoring.magnitude(weight)


class GlobalPruner(MagnitudePruner):
    """Global magnitude pruning: the smallest ``|w|`` across all layers go first."""

    name = "global"

    def allocate(self, weights, scores, alive, n_keep) -> list[int]:
        return allocation.global_threshold(weights, scores, alive, n_keep)


class LAMPPruner(GlobalPruner):
    """LAMP: global threshold on layer-normalised scores ``w_u^2 / sum_{v>=u} w_v^2``."""

    name = "lamp"

    def score(self, weight: torch.Tensor) -> torch.Tensor:
        return scoring.lamp(weight)


class UniformPlusPruner(MagnitudePruner):
    """Uniform+ (Gale et al., 2019): uniform layer sparsity, first conv dense, last layer <= 80 %."""

    name = "uniform_plus"

    def __init__(self, last_max_sparsity: float = 0.8) -> None:
        super().__init__()
        if not 0.0 <= last_max_sparsity <= 1.0:
            raise ValueError(f"last_max_sparsity must lie in [0, 1], got {last_max_sparsity}")
        self.last_max_sparsity = float(last_max_sparsity)

    def allocate(self, weights: Sequence[torch.Tensor], scores, alive, n_keep) -> list[int]:
        return allocation.uniform_plus(weights, scores, alive, n_keep, last_max_sparsity=self.last_max_sparsity)


class ERKPruner(MagnitudePruner):
    """Erdős–Rényi-Kernel layer densities (Evci et al., 2020), magnitude pruning inside each layer."""

    name = "erk"

    def allocate(self, weights, scores, alive, n_keep) -> list[int]:
        return allocation.erk(weights, scores, alive, n_keep)
