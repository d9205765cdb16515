"""``CKAMatrix``: the L x L linear-CKA matrix between layers as a torchmetrics ``Metric``.

Accumulates over batches and processes (DDP) with the reductions torchmetrics already knows:

* ``"minibatch"`` / ``"paper"``: a fixed (L, L) float64 ``hsic`` state summed over batches and
  ranks (``dist_reduce_fx="sum"``), plus ``batches`` and ``samples`` counts. Memory is flat in the
  number of samples. The minibatch value depends on how samples are grouped into batches.
* ``"exact"``: every sample's flattened features must be kept (list states, ``"cat"``), so memory
  grows with n (n * sum of layer widths, plus L n^2 float64 at compute); meant for at most a few
  thousand samples.

``update`` and ``compute`` call the pure functions of :mod:`deeparc_pl.similarity.functional`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from deeparc_pl.similarity.functional import (
    MIN_SAMPLES,
    check_estimator,
    cka_from_hsic,
    cka_matrix,
    flatten_features,
    grams,
    hsic_terms,
    layer_names,
)

__all__ = ["CKAMatrix"]


class CKAMatrix(Metric):
    """Linear CKA between every pair of ``L`` layers, accumulated over batches.

    >>> metric = CKAMatrix(["layer1.0", "layer2.0", "layer3.0"])
    >>> for x, _ in loader:
    ...     with LayerTaps(model, metric.names) as taps:
    ...         model(x)
    ...     metric.update(taps.outputs)
    >>> sim = metric.compute()  # (3, 3) float64, diagonal 1

    Args:
        names: the layers' names (used in error messages), or their number.
        estimator: ``"minibatch"`` (default, unbiased HSIC_1 summed over batches), ``"paper"``
            (uncentered Grams, DeepArc Eq. 1-2) or ``"exact"`` (full-sample centered CKA).
        kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    hsic: Tensor
    batches: Tensor
    samples: Tensor

    def __init__(self, names: Sequence[str] | int, estimator: str = "minibatch", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(names, bool) or not isinstance(names, (int, Sequence)) or isinstance(names, str):
            raise TypeError(f"names must be a sequence of layer names or their number, got {names!r}")
        count = names if isinstance(names, int) else len(names)
        self.names: list[str] = layer_names(count, None if isinstance(names, int) else names)
        if count < 2:
            raise ValueError(f"CKA compares layers: need at least 2 layers, got {count} ({self.names})")
        if len(set(self.names)) != count:
            raise ValueError(f"layer names repeat: {sorted({n for n in self.names if self.names.count(n) > 1})}")
        self.estimator = check_estimator(estimator)
        self.add_state("samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        if estimator == "exact":
            for i in range(count):
                self.add_state(f"features_{i}", [], dist_reduce_fx="cat")
        else:
            self.add_state("hsic", torch.zeros(count, count, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("batches", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _masked(self, features: Sequence[Tensor], keep: Tensor | None) -> list[Tensor] | None:
        if isinstance(features, Tensor) or not isinstance(features, Sequence):
            raise TypeError("features must be a sequence (list/tuple) of per-layer tensors of shape (n, ...)")
        features = list(features)
        if len(features) != len(self.names):
            raise ValueError(f"expected features of {len(self.names)} layers {self.names}, got {len(features)}")
        if keep is None:
            return features
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.ndim != 1:
            raise TypeError("keep must be a 1-D bool tensor over the batch's samples")
        for f, name in zip(features, self.names):
            if not isinstance(f, Tensor) or f.ndim == 0 or f.shape[0] != keep.shape[0]:
                shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(f"layer {name!r}: keep has {keep.shape[0]} entries but the features are {shape}")
        if bool(keep.all()):
            return features
        if not bool(keep.any()):
            return None  # nothing kept: the batch contributes nothing
        keep = keep.to(features[0].device)
        return [f[keep] for f in features]

    @torch.no_grad()
    def update(
        self,
        features: Sequence[Tensor] | None = None,
        keep: Tensor | None = None,
        layer_grams: Sequence[Tensor] | None = None,
    ) -> None:
        """Add one batch: ``features[i]`` is layer i's output (n, ...); ``keep`` masks samples out.
        Or pass ``layer_grams=`` the per-layer (n, n) Grams already computed (see :meth:`_add_grams`).

        A batch with every sample masked out is skipped. minibatch: each (kept) batch needs n >= 4.
        """
        if layer_grams is not None:
            if features is not None:
                raise ValueError("pass features or layer_grams, not both")
            self._add_grams(layer_grams, keep)
            return
        if features is None:
            raise ValueError("update needs the layers' features (or layer_grams=)")
        feats = self._masked(features, keep)
        if feats is None:
            if self.estimator == "exact":  # a batch of DDP padding only: keep this rank's list states
                for i, (f, name) in enumerate(zip(features, self.names)):  # non-empty and 2-D for the gather
                    getattr(self, f"features_{i}").append(flatten_features(f, name)[:0].clone())
            return
        if self.estimator == "exact":
            n = None
            flat = []
            for f, name in zip(feats, self.names):
                x = flatten_features(f, name)
                if n is not None and x.shape[0] != n:
                    detail = ", ".join(f"{nm!r}: {int(g.shape[0])}" for nm, g in zip(self.names, feats))
                    raise ValueError(f"all layers must have the same number of samples; got {detail}")
                n = x.shape[0]
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"layer {name!r}: features contain {int((~torch.isfinite(x)).sum())} NaN/inf values")
                flat.append(x.clone())
            if n == 0:
                return
            for i, x in enumerate(flat):
                getattr(self, f"features_{i}").append(x)
        else:
            g = grams(feats, self.estimator, self.names)
            self._accumulate(g)
            n = g.shape[1]
        self.samples += n

    def _accumulate(self, stacked: Tensor) -> None:
        self.hsic += hsic_terms(stacked, self.estimator).to(self.hsic.device)
        self.batches += 1

    def update_grams(self, layer_grams: Sequence[Tensor], keep: Tensor | None = None) -> None:
        """``update(layer_grams=..., keep=keep)``: see :meth:`_add_grams`."""
        self.update(keep=keep, layer_grams=layer_grams)

    def _add_grams(self, layer_grams: Sequence[Tensor], keep: Tensor | None = None) -> None:
        """Add one batch from per-layer (n, n) Gram matrices computed elsewhere, e.g. inside forward
        hooks so that no layer's activations outlive its own hook (see ``ActivationStream``).

        ``layer_grams[i]`` is layer i's Gram of its flattened features, as :func:`gram` makes it:
        centered over the batch for ``minibatch`` (HSIC_1 ignores any constant shift of the features,
        so a sub-batch's Gram is the matching sub-block) and raw for ``paper``. Not for ``exact``.
        """
        if self.estimator == "exact":
            raise ValueError("the exact estimator keeps features, not Grams: call update(features)")
        if isinstance(layer_grams, Tensor) and layer_grams.ndim == 3:
            layer_grams = list(layer_grams)
        layer_grams = list(layer_grams)
        if len(layer_grams) != len(self.names):
            raise ValueError(f"expected Grams of {len(self.names)} layers {self.names}, got {len(layer_grams)}")
        sizes = [tuple(g.shape) for g in layer_grams]
        if any(len(sz) != 2 or sz[0] != sz[1] for sz in sizes) or len(set(sizes)) != 1:
            detail = ", ".join(f"{nm!r}: {sz}" for nm, sz in zip(self.names, sizes))
            raise ValueError(f"all layers must have square Grams over the same samples; got {detail}")
        if keep is not None:
            if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.shape != (sizes[0][0],):
                raise ValueError(f"keep must be a bool tensor of {sizes[0][0]} entries")
            if not bool(keep.any()):
                return
            if not bool(keep.all()):
                idx = keep.nonzero().flatten().to(layer_grams[0].device)
                layer_grams = [g.index_select(0, idx).index_select(1, idx) for g in layer_grams]
        n = int(layer_grams[0].shape[0])
        need = MIN_SAMPLES[self.estimator]
        if n < need:
            raise ValueError(f"estimator {self.estimator!r} needs at least {need} samples per batch, got n = {n}")
        self._accumulate(torch.stack([g.to(torch.float64) for g in layer_grams]))
        self.samples += n

    def compute(self) -> Tensor:
        """The (L, L) float64 CKA matrix; ValueError on empty data."""
        if self.estimator == "exact":
            stored = [getattr(self, f"features_{i}") for i in range(len(self.names))]
            if isinstance(stored[0], list) and not stored[0]:
                raise ValueError("CKAMatrix.compute(): empty data, update() was never called with samples")
            feats = [dim_zero_cat(s) for s in stored]
            if feats[0].shape[0] < MIN_SAMPLES["exact"]:
                raise ValueError(f"exact CKA needs at least 2 samples in all, got {feats[0].shape[0]}")
            return cka_matrix(feats, "exact", self.names)
        if int(self.batches) == 0:
            raise ValueError("CKAMatrix.compute(): empty data, update() was never called with samples")
        return cka_from_hsic(self.hsic, self.names)
