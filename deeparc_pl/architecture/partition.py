"""Partition consecutive layers into semantic modules from a layer-similarity matrix.

Three rules (paper section II-A; see README "Partition methods"):

* ``progressive`` -- Algorithm 1 as printed: a layer joins the current module unless the module's
  mean adjacent similarity (Eq. 3) with the layer added falls below the threshold.
* ``adjacent`` -- the authors' released code: a layer joins iff its similarity to the previous layer
  is strictly greater than the threshold. This is the rule that reproduces the paper's ResNet-110
  example. Unlike that code, the last module is NOT closed one past the end.
* ``optimal`` -- the exact maximum of Eq. 4, read as: sum over modules of sim_module (Eq. 3, 0 for a
  single layer) minus the sum of sim_layer over UNORDERED pairs of layers in different modules,
  subject to sim_module >= threshold for every multi-layer module. The cross-module sum equals the
  sum over all pairs minus the within-module sums, so the objective separates over consecutive
  segments and dynamic programming finds the optimum in O(n^2) (the paper calls it NP-complete,
  which holds for arbitrary, not consecutive, groupings).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["partition", "METHODS", "module_similarity", "eq4_objective", "validate_similarity", "validate_threshold",
           "threshold_sweep", "check_method"]


def validate_threshold(threshold: float) -> float:
    """Thresholds are similarities: they must lie in (0, 1] (a bool is not a threshold)."""
    if isinstance(threshold, (bool, np.bool_)):
        raise TypeError(f"threshold must be a number in (0, 1], got the bool {threshold!r}")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be a number in (0, 1], got {threshold!r}") from None
    if not (0.0 < t <= 1.0) or np.isnan(t):
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
    return t


def validate_similarity(similarity: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """A square, finite layer-similarity matrix over at least two layers, as float64."""
    sim = np.asarray(similarity.detach().cpu() if hasattr(similarity, "detach") else similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be a square (n, n) matrix, got shape {sim.shape}")
    if sim.shape[0] < 2:
        raise ValueError(f"need at least 2 layers to partition, got {sim.shape[0]}")
    if not np.isfinite(sim).all():
        bad = np.argwhere(~np.isfinite(sim))[0].tolist()
        raise ValueError(f"similarity matrix has a non-finite entry at {bad}")
    return sim


def module_similarity(sim: np.ndarray, module: Sequence[int]) -> float:
    """Eq. 3: mean similarity of adjacent layers in a module (0 for a single layer)."""
    if len(module) < 2:
        return 0.0
    return float(np.mean([sim[a, b] for a, b in zip(module[:-1], module[1:])]))


def eq4_objective(sim: np.ndarray, modules: Sequence[Sequence[int]]) -> float:
    """Eq. 4's objective for a partition: sum of sim_module minus cross-module pair similarity."""
    owner = {i: k for k, mod in enumerate(modules) for i in mod}
    n = sim.shape[0]
    cross = sum(sim[i, j] for i in range(n) for j in range(i + 1, n) if owner[i] != owner[j])
    return sum(module_similarity(sim, m) for m in modules) - float(cross)


def _progressive(sim: np.ndarray, th: float) -> list[list[int]]:
    modules: list[list[int]] = []
    current: list[int] = []
    for layer in range(sim.shape[0]):
        if not current:
            current = [layer]
        elif module_similarity(sim, current + [layer]) < th:
            modules.append(current)
            current = [layer]
        else:
            current.append(layer)
    modules.append(current)
    return modules


def _adjacent(sim: np.ndarray, th: float) -> list[list[int]]:
    modules: list[list[int]] = [[0]]
    for layer in range(1, sim.shape[0]):
        if sim[layer - 1, layer] > th:
            modules[-1].append(layer)
        else:
            modules.append([layer])
    return modules


def _optimal(sim: np.ndarray, th: float) -> list[list[int]]:
    n = sim.shape[0]
    sym = (sim + sim.T) / 2.0
    upper = np.triu(sym, k=1)
    # within[a][b] = sum of sim over pairs i<j inside a..b (inclusive), via 2-D prefix sums.
    pref = np.zeros((n + 1, n + 1))
    pref[1:, 1:] = upper.cumsum(0).cumsum(1)

    def within(a: int, b: int) -> float:
        return pref[b + 1, b + 1] - pref[a, b + 1] - pref[b + 1, a] + pref[a, a]

    adj = np.array([sim[i, i + 1] for i in range(n - 1)])
    adj_pref = np.concatenate([[0.0], np.cumsum(adj)])
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    back = np.zeros(n + 1, dtype=int)
    for end in range(1, n + 1):  # segment [start, end-1]
        for start in range(end - 1, -1, -1):
            size = end - start
            if size == 1:
                gain = 0.0
            else:
                mean_adj = (adj_pref[end - 1] - adj_pref[start]) / (size - 1)
                if mean_adj < th:
                    continue
                gain = mean_adj + within(start, end - 1)
            cand = best[start] + gain
            if cand > best[end] + 1e-12:
                best[end] = cand
                back[end] = start
    modules: list[list[int]] = []
    end = n
    while end > 0:
        start = back[end]
        modules.append(list(range(start, end)))
        end = start
    return modules[::-1]


METHODS: dict[str, Callable[[np.ndarray, float], list[list[int]]]] = {
    "progressive": _progressive,
    "adjacent": _adjacent,
    "optimal": _optimal,
}


def partition(similarity, threshold: float = 0.99, method: str = "progressive") -> list[list[int]]:
    """Split layers 0..n-1 into consecutive modules (lists of layer indices)."""
    th = validate_threshold(threshold)
    sim = validate_similarity(similarity)
    return METHODS[check_method(method)](sim, th)


def check_method(method: str) -> str:
    """Return ``method`` if it is a partition rule, else raise ValueError listing them."""
    if method not in METHODS:
        raise ValueError(f"unknown partition method {method!r}; choose one of {sorted(METHODS)}")
    return method


def threshold_sweep(spec: Any) -> list[float]:
    """'0.90:0.99:0.01' -> [0.90, 0.91, ..., 0.99] (inclusive); a list is taken as is."""
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)) or hasattr(spec, "__iter__") and not isinstance(spec, str):
        return [float(v) for v in spec]
    parts = str(spec).split(":")
    if len(parts) != 3:
        raise ValueError(f"thresholds must be 'start:stop:step', got {spec!r}")
    start, stop, step = (float(p) for p in parts)
    if step <= 0 or stop < start:
        raise ValueError(f"thresholds {spec!r}: need start <= stop and step > 0")
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 10) for i in range(count)]
