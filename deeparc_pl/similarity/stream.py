"""Stream tapped activations into a ``CKAMatrix`` batch by batch; shared by ``modularize`` and
``CKACallback`` so both compute the matrix the same way."""
from __future__ import annotations

import threading
import warnings
from typing import Sequence

import torch
from torch import nn

from ..taps import LayerTaps
from .functional import gram
from .metric import CKAMatrix

__all__ = ["ActivationStream", "MIN_BATCH"]

#: The unbiased HSIC estimator divides by n - 3.
MIN_BATCH = {"minibatch": 4, "paper": 1, "exact": 1}


class ActivationStream:
    """Taps ``layers`` of ``model`` and feeds each forward pass's outputs to a ``CKAMatrix``.

    Use as a context manager around the forward passes; call ``update()`` after each one. For the
    ``minibatch`` and ``paper`` estimators each layer's Gram matrix is computed inside its forward
    hook, while the activation is fresh in cache, and the activation itself is not kept: memory holds
    one (n, n) matrix per layer instead of every layer's activations (measured 1.12x the forward
    time instead of 1.34x on a ResNet-56, benchmarks/RESULTS.md). ``exact`` keeps the features.
    Batches smaller than the estimator allows (a ragged last batch of 1-3 samples for
    ``minibatch``) are skipped with a warning and counted in ``skipped_samples``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, estimator: str = "minibatch") -> None:
        self.grams_in_hooks = estimator in ("minibatch", "paper")
        self._center = estimator == "minibatch"
        self._scratch = threading.local()  # per thread: hooks may run concurrently (nn.DataParallel)
        self.taps = LayerTaps(model, layers, transform=self._gram if self.grams_in_hooks else None)
        self.names = self.taps.names
        if len(self.names) < 2:
            raise ValueError(f"need at least 2 layers to compare, got {self.names}")
        self.estimator = estimator
        self.metric = CKAMatrix(self.names, estimator=estimator)
        self.skipped_samples = 0
        self.batches = 0

    def _gram(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """The hook's transform: the layer's Gram, its centered copy written into one reused CPU
        buffer (grown to the largest layer) instead of a fresh allocation per layer and batch."""
        scratch = None
        if self._center and isinstance(out, torch.Tensor) and out.device.type == "cpu" and out.dtype == torch.float32:
            scratch = getattr(self._scratch, "buffer", None)
            if scratch is None or scratch.numel() < out.numel():
                scratch = self._scratch.buffer = torch.empty(out.numel(), dtype=torch.float32)
        return gram(out, name, center=self._center, scratch=scratch)

    def to(self, device: torch.device | str) -> "ActivationStream":
        self.metric = self.metric.to(device)
        return self

    def __enter__(self) -> "ActivationStream":
        self.taps.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.taps.remove()
        self._scratch = threading.local()  # let the buffer go with the hooks

    def update(self, keep: torch.Tensor | None = None) -> None:
        feats = self.taps.outputs
        if self.batches == 0 and self.taps.call_order != self.names:
            raise ValueError(
                f"list the layers in the order the model runs them (modules are runs of consecutive layers): "
                f"given {self.names}, the forward pass ran {self.taps.call_order}"
            )
        for name, f in zip(self.names, feats):
            if not isinstance(f, torch.Tensor):
                raise TypeError(f"layer {name!r} returned {type(f).__name__}, not a tensor; tap a module that returns one")
        n = int(keep.sum()) if keep is not None else int(feats[0].shape[0])
        if self.grams_in_hooks and len({tuple(f.shape) for f in feats}) > 1:
            detail = ", ".join(f"{nm!r}: {int(f.shape[0])}" for nm, f in zip(self.names, feats))
            raise ValueError(f"all layers must have the same number of samples; got {detail}")
        if n == 0 and keep is not None:  # a batch of DistributedSampler padding only: nothing skipped
            if not self.grams_in_hooks:
                self.metric.update(feats, keep=keep)  # (exact: records the feature sizes for the gather)
            return
        if n < MIN_BATCH.get(self.estimator, 1):
            self.skipped_samples += n
            warnings.warn(
                f"skipped a batch of {n} samples: the {self.estimator!r} estimator needs at least "
                f"{MIN_BATCH[self.estimator]} per batch",
                stacklevel=2,
            )
            return
        if self.grams_in_hooks:
            self.metric.update_grams(feats, keep=keep)
        else:
            self.metric.update(feats, keep=keep)
        self.batches += 1

    def compute(self) -> torch.Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        self.metric.reset()
        self.skipped_samples = 0
        self.batches = 0
