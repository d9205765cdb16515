"""Linear CKA (Kornblith et al. 2019) between all pairs of layers, as pure functions.

Three estimators share one interface (``estimator`` in :data:`ESTIMATORS`):

* ``"exact"``: full-sample centered linear CKA, ``<HK_iH, HK_jH>_F`` normalised; needs every sample
  at once (memory grows with n).
* ``"minibatch"`` (default): the unbiased HSIC_1 estimator (Song et al. 2012; Nguyen, Raghu &
  Kornblith 2021) per batch, HSIC summed over batches, then normalised. Memory is flat in the number
  of samples, but the value depends on how samples are grouped into batches (it converges to the
  exact CKA as batches and data grow; shuffle the data).
* ``"paper"``: DeepArc's Eq. 1-2 as printed: cosine of the UNCENTERED Grams ``K = X X^T``, summed
  over batches.

Per batch each layer's Gram is computed once (float32 ``X X^T`` on the flattened, batch-centered
activations for minibatch, uncentered for paper, float64 for exact and float64 inputs), then all
L x L pairs come from two small float64 matrix
products (:func:`hsic_terms`). A batch's contribution is additive, which is what lets
:class:`~deeparc_pl.similarity.metric.CKAMatrix` keep a fixed (L, L) state and sum it across processes.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "ESTIMATORS",
    "MIN_SAMPLES",
    "check_estimator",
    "layer_names",
    "flatten_features",
    "gram",
    "grams",
    "hsic_terms",
    "cka_from_hsic",
    "cka_matrix",
    "linear_cka",
]

ESTIMATORS: tuple[str, ...] = ("exact", "minibatch", "paper")
#: The fewest samples each estimator is defined for (minibatch: per batch, it divides by n - 3).
MIN_SAMPLES: dict[str, int] = {"exact": 2, "minibatch": 4, "paper": 1}


def check_estimator(estimator: str) -> str:
    """Return ``estimator`` if known, else raise ValueError listing the valid ones."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown CKA estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
    return estimator


def layer_names(count: int, names: Sequence[str] | None = None) -> list[str]:
    """The names used in error messages: ``names`` if given (checked against ``count``), else indices."""
    if names is None:
        return [f"#{i}" for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"got {count} layers of features but {len(names)} names: {names}")
    return names


def flatten_features(x: Tensor, name: str = "#0") -> Tensor:
    """``x`` of shape (n, ...) as an (n, d) view (no copy when contiguous); checks the type."""
    if not isinstance(x, Tensor):
        raise TypeError(f"layer {name!r}: features must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError(f"layer {name!r}: features need a batch dimension (n, ...), got a scalar")
    if x.is_complex():
        raise TypeError(f"layer {name!r}: features must be real numbers, got dtype {x.dtype}")
    x = x.detach()
    if not x.is_floating_point():
        x = x.to(torch.float32)
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise ValueError(f"layer {name!r}: features have no elements per sample (shape {tuple(x.shape)})")
    return x


def _memory_order(x: Tensor) -> Tensor:
    """A channels-last activation as the same tensor with its channel axis moved last (a view).

    A Gram matrix ``X X^T`` does not depend on the order of the features, so flattening in memory
    order gives the same Gram as flattening (n, C, H, W) order, without the copy that ``reshape``
    makes of a channels-last tensor. Only for a single Gram: features concatenated across batches
    (the exact estimator) must all be flattened alike and use :func:`flatten_features` directly.
    """
    if not isinstance(x, Tensor) or x.is_contiguous():
        return x
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1)
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x.permute(0, 2, 3, 4, 1)
    return x


def _raise_nonfinite(x: Tensor, name: str) -> None:
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"layer {name!r}: features contain {bad} NaN/inf values")


def gram(
    x: Tensor, name: str = "#0", float64: bool = False, center: bool = False, scratch: Tensor | None = None
) -> Tensor:
    """Linear-kernel Gram ``X X^T`` (n, n) in float64 of one layer's flattened features.

    The product runs in float32 (fast) unless ``float64`` or the features are float64; the result is
    cast to float64 for everything downstream. ``center`` subtracts the per-batch feature mean first:
    centered and unbiased HSIC are unchanged by it (exactly, in real arithmetic), and it removes the
    large common part of ReLU activations that would otherwise cost float32 digits (deviation from a
    float64 reference drops from ~1e-6 to ~1e-9 on a ResNet-56). NaN/inf features raise ValueError
    naming the layer; they are detected on the Gram's diagonal (a sum of squares), so the check needs
    no extra pass over the activations. A float32 overflow falls back to float64.

    ``scratch``, a 1-D tensor of the features' dtype and device with at least ``x.numel()`` elements,
    receives the centered copy instead of a fresh allocation (a streaming caller reuses one buffer
    for every layer and batch; measured ~40 ms of ~300 ms per ResNet-56 batch on CPU). Its contents
    are garbage afterwards.
    """
    x = flatten_features(_memory_order(x), name)
    dtype = torch.float64 if (float64 or x.dtype == torch.float64) else torch.float32
    xc = x.to(dtype)
    if center:
        mean = xc.mean(dim=0, keepdim=True)
        if (scratch is not None and scratch.dtype == dtype and scratch.device == xc.device
                and scratch.ndim == 1 and scratch.numel() >= xc.numel()):
            xc = torch.sub(xc, mean, out=scratch[: xc.numel()].view(xc.shape))
        else:
            xc = xc - mean
    g = torch.mm(xc, xc.t())
    if not bool(torch.isfinite(g.diagonal()).all()):
        _raise_nonfinite(x, name)
        xc = x.to(torch.float64)  # finite values whose squares overflow float32
        if center:
            xc = xc - xc.mean(dim=0, keepdim=True)
        g = torch.mm(xc, xc.t())
        if not bool(torch.isfinite(g.diagonal()).all()):
            raise ValueError(f"layer {name!r}: the Gram matrix X X^T overflows even in float64")
    return g.to(torch.float64)


def grams(
    features: Sequence[Tensor],
    estimator: str = "minibatch",
    names: Sequence[str] | None = None,
) -> Tensor:
    """The (L, n, n) float64 stack of each layer's Gram for one batch, after validating the batch.

    For "minibatch" and "exact" the features are centered over the batch first (both estimators are
    invariant to it, and it keeps float32 accurate); "paper" uses the raw features, as printed.
    """
    check_estimator(estimator)
    if isinstance(features, Tensor) or not isinstance(features, Sequence):
        raise TypeError("features must be a sequence (list/tuple) of per-layer tensors of shape (n, ...)")
    names = layer_names(len(features), names)
    if len(features) < 2:
        raise ValueError(f"CKA compares layers: need at least 2 layers, got {len(features)} ({names})")
    sizes = []
    for f, name in zip(features, names):
        if not isinstance(f, Tensor):
            raise TypeError(f"layer {name!r}: features must be a torch.Tensor, got {type(f).__name__}")
        if f.ndim == 0:
            raise ValueError(f"layer {name!r}: features need a batch dimension (n, ...), got a scalar")
        sizes.append(int(f.shape[0]))
    if len(set(sizes)) != 1:
        detail = ", ".join(f"{n!r}: {s}" for n, s in zip(names, sizes))
        raise ValueError(f"all layers must have the same number of samples; got {detail}")
    n = sizes[0]
    need = MIN_SAMPLES[estimator]
    if n < need:
        why = " (the unbiased HSIC_1 estimator divides by n - 3)" if estimator == "minibatch" else ""
        raise ValueError(
            f"estimator {estimator!r} needs at least {need} samples per batch{why}; "
            f"layer {names[0]!r} has n = {n}"
        )
    f64, center = estimator == "exact", estimator != "paper"
    out = torch.empty((len(features), n, n), dtype=torch.float64)
    for i, (f, name) in enumerate(zip(features, names)):
        out[i] = gram(f, name, float64=f64, center=center)
    return out


def hsic_terms(grams: Tensor, estimator: str = "minibatch") -> Tensor:
    """One batch's additive (L, L) float64 HSIC contribution for all layer pairs.

    ``grams`` is (L, n, n) (see :func:`grams`). minibatch: unbiased HSIC_1 with zero-diagonal Grams
    ``K~``: ``[tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))``; paper:
    ``<K_i, K_j>_F``; exact: ``<HK_iH, HK_jH>_F / (n-1)^2``. Each is one (L, n^2) @ (n^2, L)
    product (plus an (L, n) @ (n, L) one for minibatch).
    """
    check_estimator(estimator)
    if grams.ndim != 3 or grams.shape[1] != grams.shape[2]:
        raise ValueError(f"grams must have shape (L, n, n), got {tuple(grams.shape)}")
    g = grams.to(torch.float64)
    num, n = g.shape[0], g.shape[1]
    if n < MIN_SAMPLES[estimator]:
        raise ValueError(f"estimator {estimator!r} needs at least {MIN_SAMPLES[estimator]} samples, got n = {n}")
    if estimator == "paper":
        flat = g.reshape(num, n * n)
        return flat @ flat.t()
    if estimator == "exact":
        # H K H without forming H: subtract row and column means, add back the grand mean.
        row = g.mean(dim=2, keepdim=True)
        col = g.mean(dim=1, keepdim=True)
        centered = g - row - col + g.mean(dim=(1, 2), keepdim=True)
        flat = centered.reshape(num, n * n)
        return (flat @ flat.t()) / float((n - 1) ** 2)
    if g is grams:
        g = g.clone()  # never modify the caller's tensor
    g.diagonal(dim1=1, dim2=2).zero_()
    flat = g.reshape(num, n * n)
    trace = flat @ flat.t()  # tr(K~_i K~_j) = <K~_i, K~_j>_F (Grams are symmetric)
    ones = g.sum(dim=2)  # K~_i 1, shape (L, n)
    total = ones.sum(dim=1)  # 1' K~_i 1
    cross = ones @ ones.t()  # 1' K~_i K~_j 1
    hsic = trace + torch.outer(total, total) / ((n - 1) * (n - 2)) - cross * (2.0 / (n - 2))
    return hsic / (n * (n - 3))


def cka_from_hsic(hsic: Tensor, names: Sequence[str] | None = None) -> Tensor:
    """Normalise summed HSIC to CKA: ``hsic_ij / sqrt(hsic_ii hsic_jj)``; symmetric, diagonal exactly 1.

    A layer whose self-HSIC is not positive has a constant representation over the samples, where
    CKA is undefined: ValueError naming it.
    """
    if hsic.ndim != 2 or hsic.shape[0] != hsic.shape[1]:
        raise ValueError(f"hsic must be a square (L, L) matrix, got shape {tuple(hsic.shape)}")
    h = hsic.to(torch.float64)
    names = layer_names(h.shape[0], names)
    diag = h.diagonal()
    if not bool(torch.isfinite(h).all()):
        raise ValueError("HSIC matrix has NaN/inf entries (overflowing activations?)")
    bad = [f"{names[i]!r} ({float(diag[i]):.3g})" for i in range(len(names)) if not float(diag[i]) > 0.0]
    if bad:
        raise ValueError(
            f"layers {', '.join(bad)} have non-positive self-HSIC: their representation is constant "
            "over the samples, so CKA with them is undefined"
        )
    scale = diag.sqrt()
    cka = h / torch.outer(scale, scale)
    cka = (cka + cka.t()) / 2
    cka.fill_diagonal_(1.0)
    return cka


def cka_matrix(
    features: Sequence[Tensor],
    estimator: str = "minibatch",
    names: Sequence[str] | None = None,
) -> Tensor:
    """(L, L) float64 CKA between every pair of layers for ONE set of features (one batch).

    For many batches use :class:`~deeparc_pl.similarity.metric.CKAMatrix`, which sums
    :func:`hsic_terms` over batches (minibatch/paper) or keeps the samples (exact).
    """
    g = grams(features, estimator, names)
    return cka_from_hsic(hsic_terms(g, estimator), layer_names(len(features), names))


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Exact full-sample centered linear CKA of two representations of the same n >= 2 samples.

    ``x`` (n, ...) and ``y`` (n, ...) are flattened per sample; computed in float64; returns a
    float64 scalar in [0, 1], with ``linear_cka(x, x) == 1``.
    """
    return cka_matrix([x, y], "exact", names=["x", "y"])[0, 1]
