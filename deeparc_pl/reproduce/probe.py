"""Linear expressiveness of each layer (paper RQ2.2, Table I): a linear classifier on its output.

Each tapped layer's output is average-pooled to ``pool x pool`` (or kept if already flat), flattened,
standardised, and fed to a scikit-learn logistic regression fitted on training samples and scored on
held-out test samples. The pairwise |difference| of these accuracies inside modules versus across
modules is the paper's P_intra / P_inter comparison.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..modes import evaluating
from ..taps import LayerTaps

__all__ = ["layer_features", "probe_accuracies", "pair_differences"]


@torch.no_grad()
def layer_features(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None, pool: int = 2,
                   batch_size: int = 256) -> tuple[list[str], list[np.ndarray]]:
    """Per layer, an (n, d) array of pooled, flattened outputs of ``model`` on ``x`` (eval mode)."""
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    with evaluating(model), LayerTaps(model, layers) as taps:
        names = taps.names
        chunks: list[list[np.ndarray]] = [[] for _ in names]
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
            for j, out in enumerate(taps.outputs):
                if out.ndim == 4:
                    out = F.adaptive_avg_pool2d(out, pool)
                chunks[j].append(out.flatten(1).float().cpu().numpy())
    return names, [np.concatenate(c) for c in chunks]


def probe_accuracies(train_feats: Sequence[np.ndarray], y_train: np.ndarray, test_feats: Sequence[np.ndarray],
                     y_test: np.ndarray, c: float = 1.0, max_iter: int = 300, seed: int = 0) -> list[dict[str, float]]:
    """Train/test accuracy of a logistic-regression probe per layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_feats) != len(test_feats):
        raise ValueError(f"{len(train_feats)} train feature sets but {len(test_feats)} test ones")
    out = []
    for xtr, xte in zip(train_feats, test_feats):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on tiny probes
            clf.fit(xtr, y_train)
        out.append({"train_acc": float(clf.score(xtr, y_train)), "test_acc": float(clf.score(xte, y_test)),
                    "dims": int(xtr.shape[1])})
    return out


def pair_differences(acc: Sequence[float], modules: Sequence[Sequence[int]]) -> dict[str, Any]:
    """|acc_i - acc_j| over all intra-module pairs (same module) and inter-module pairs (different ones).

    Returns mean, std and count of each set; a set with no pairs has NaN mean.
    """
    owner = {i: k for k, mod in enumerate(modules) for i in mod}
    n = len(acc)
    if sorted(owner) != list(range(n)):
        raise ValueError(f"modules must cover the {n} layers exactly once, got {modules}")
    intra, inter = [], []
    for i, j in itertools.combinations(range(n), 2):
        (intra if owner[i] == owner[j] else inter).append(abs(acc[i] - acc[j]))

    def stats(v: list[float]) -> dict[str, float]:
        if not v:
            return {"mean": float("nan"), "std": float("nan"), "pairs": 0}
        return {"mean": float(np.mean(v)), "std": float(np.std(v)), "pairs": len(v)}

    return {"intra": stats(intra), "inter": stats(inter)}
