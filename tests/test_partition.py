"""Partition rules on matrices built so that the answer is known."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from deeparc_pl import partition
from deeparc_pl.architecture.partition import eq4_objective, module_similarity


def block_matrix(sizes, inside=0.995, outside=0.5, decay=0.0):
    n = sum(sizes)
    sim = np.full((n, n), outside)
    start = 0
    for s in sizes:
        sim[start : start + s, start : start + s] = inside
        start += s
    if decay:
        idx = np.arange(n)
        sim = sim - decay * np.abs(idx[:, None] - idx[None, :]) / n
    np.fill_diagonal(sim, 1.0)
    return sim


@pytest.mark.parametrize("method", ["progressive", "adjacent", "optimal"])
def test_block_matrix_gives_the_blocks(method):
    sizes = [1, 4, 1, 1, 3, 2]
    got = partition(block_matrix(sizes), 0.99, method)
    expected, start = [], 0
    for s in sizes:
        expected.append(list(range(start, start + s)))
        start += s
    assert got == expected


def test_progressive_and_adjacent_differ_as_documented():
    # adjacent sims: 0.995, 0.995, 0.985, then a drop. Mean-adjacent (Alg. 1) keeps layer 3
    # because (0.995 + 0.995 + 0.985)/3 = 0.9917 >= 0.99; the code's rule cuts at 0.985.
    n = 5
    sim = np.full((n, n), 0.3)
    np.fill_diagonal(sim, 1.0)
    for i, v in enumerate([0.995, 0.995, 0.985, 0.2]):
        sim[i, i + 1] = sim[i + 1, i] = v
    assert partition(sim, 0.99, "progressive") == [[0, 1, 2, 3], [4]]
    assert partition(sim, 0.99, "adjacent") == [[0, 1, 2], [3], [4]]


def test_adjacent_does_not_close_past_the_end():
    sim = block_matrix([3, 1])  # last layer alone must stay a single-layer module
    assert partition(sim, 0.99, "adjacent")[-1] == [3]


def _all_partitions(n):
    for cuts in itertools.product([0, 1], repeat=n - 1):
        mods, cur = [], [0]
        for i, c in enumerate(cuts, start=1):
            if c:
                mods.append(cur)
                cur = [i]
            else:
                cur.append(i)
        mods.append(cur)
        yield mods


@pytest.mark.parametrize("seed", range(12))
def test_optimal_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    a = rng.uniform(0.0, 1.0, (n, n))
    sim = (a + a.T) / 2
    # make some adjacent pairs very similar so multi-layer modules are feasible
    for i in range(n - 1):
        if rng.random() < 0.6:
            sim[i, i + 1] = sim[i + 1, i] = rng.uniform(0.9, 1.0)
    np.fill_diagonal(sim, 1.0)
    th = 0.9
    feasible = [
        p for p in _all_partitions(n) if all(len(m) == 1 or module_similarity(sim, m) >= th for m in p)
    ]
    best = max(eq4_objective(sim, p) for p in feasible)
    got = partition(sim, th, "optimal")
    assert all(len(m) == 1 or module_similarity(sim, m) >= th for m in got)
    assert eq4_objective(sim, got) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, float("nan")])
def test_threshold_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="threshold"):
        partition(np.eye(3), bad)


@pytest.mark.parametrize("bad", [True, "high", None])
def test_threshold_that_is_not_a_number(bad):
    with pytest.raises(TypeError, match="threshold must be a number"):
        partition(np.eye(3), bad)


def test_bad_matrices():
    with pytest.raises(ValueError, match="at least 2 layers"):
        partition(np.ones((1, 1)), 0.9)
    with pytest.raises(ValueError, match="square"):
        partition(np.ones((2, 3)), 0.9)
    with pytest.raises(ValueError, match="non-finite"):
        partition(np.array([[1.0, np.nan], [np.nan, 1.0]]), 0.9)
    with pytest.raises(ValueError, match="unknown partition method"):
        partition(np.eye(3), 0.9, "greedy")
