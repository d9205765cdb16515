"""Deviation of a set of representations from a reference (paper Section II-C, Eq. 5).

Two families, each with a differentiable float32 torch version for the training loss:

* **explicit** (paired samples, e.g. adversarial images and their clean originals, in the same order):
  ``1 - linear CKA`` of the two sets' representations (:func:`cka_deviation`), or the mean squared
  error to the reference representation (:func:`mse_deviation`, the authors' code).
* **implicit** (no pairs, e.g. a repair set): per-class Gaussians fitted to the reference set's
  representations (:class:`GaussianReference`), projected to at most ``dim`` PCA directions of the
  reference and covariance-regularised by Ledoit-Wolf shrinkage so the density is well-posed with
  few samples. The deviation is the mean *negative log-likelihood* of the target samples under their
  class's Gaussian. The paper writes the density ``P(x)`` itself as ``Dev(x)``, which is *largest*
  for typical samples and so ranks backwards; the NLL is the corrected reading (see the paper's NOTES.md in ../shared/paper/).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["flatten", "cka", "cka_deviation", "mse_deviation", "GaussianReference"]


def flatten(x: Tensor) -> Tensor:
    """(n, ...) -> (n, features); a 1-D tensor is taken as n samples of one feature."""
    if x.ndim == 0:
        raise ValueError("a representation needs a sample dimension, got a scalar")
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)


def cka(x: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
    """Biased full-batch linear CKA of two representations of the same n samples, differentiable.

    Float32-friendly: computed from the n x n Gram matrices of the batch-centered features, so the
    cost is O(n^2 d) whatever the feature width. Matches :func:`deeparc_pl.similarity.functional.linear_cka`
    (exact float64) up to rounding. Returns 0 when either side is constant.
    """
    x, y = flatten(x), flatten(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"CKA needs at least 2 samples, got {x.shape[0]}")
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    k = x @ x.T
    l = y @ y.T
    hsic = (k * l).sum()
    norm = torch.sqrt((k * k).sum() * (l * l).sum())
    return hsic / norm.clamp_min(eps)


def cka_deviation(target: Tensor, reference: Tensor) -> Tensor:
    """Explicit deviation ``1 - CKA(target, reference)`` of paired samples (0 for identical sets)."""
    return 1.0 - cka(target, reference)


def mse_deviation(target: Tensor, reference: Tensor) -> Tensor:
    """Mean squared error between paired representations (the authors' enhancement loss term)."""
    t, r = flatten(target), flatten(reference)
    if t.shape != r.shape:
        raise ValueError(f"paired representations differ in shape: {tuple(t.shape)} vs {tuple(r.shape)}")
    return torch.mean((t - r) ** 2)


@dataclass
class GaussianReference:
    """Per-class Gaussians of reference representations in a fixed low-dimensional PCA space.

    Covariances are Ledoit-Wolf shrunk, by default one within-class covariance shared by all classes.

    ``mean`` (d,) and ``basis`` (features, k) project a flattened representation ``z`` to
    ``(z - mean) @ basis`` (PCA directions, one global scale); ``class_means`` (C, k), ``precisions`` (C, k, k) and ``logdets`` (C,)
    describe each class's Gaussian (Ledoit-Wolf shrunk covariance). Classes missing from the reference
    use the pooled Gaussian of all reference samples (the row whose ``classes`` entry is -1).

    What the PCA space leaves out is not ignored (a damaged layer mostly adds energy in directions D
    never uses): the squared norm of the residual outside the space, divided by D's mean, is one more
    coordinate of the NLL (probabilistic-PCA style, isotropic residual).
    """

    mean: Tensor
    basis: Tensor
    classes: list[int]
    class_means: Tensor
    precisions: Tensor
    logdets: Tensor
    components: Tensor | None = None  # (features, k) orthonormal PCA directions, for the residual
    residual_var: float = 0.0  # mean squared norm of D's residual outside the PCA space (0: none)
    baseline: float = 0.0  # mean NLL of the reference set itself (makes modules comparable)

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    @classmethod
    def fit(cls, features: Tensor, labels: Tensor, dim: int = 64, covariance: str = "tied") -> "GaussianReference":
        """Fit on reference representations ``features`` (n, ...) with integer class ``labels`` (n,).

        ``covariance="tied"`` (default) shares one shrunk within-class covariance between the classes
        (class means differ); ``"class"`` fits one shrunk covariance per class (needs many samples).
        """
        if covariance not in ("tied", "class"):
            raise ValueError(f"covariance must be 'tied' or 'class', got {covariance!r}")
        from sklearn.covariance import LedoitWolf

        z = flatten(features).detach().to(torch.float64).cpu()
        y = torch.as_tensor(labels).detach().cpu().long()
        if z.shape[0] != y.shape[0]:
            raise ValueError(f"{z.shape[0]} representations but {y.shape[0]} labels")
        if z.shape[0] < 3:
            raise ValueError(f"a Gaussian reference needs at least 3 samples, got {z.shape[0]}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        mean = z.mean(dim=0)
        zc = z - mean
        k = int(min(dim, zc.shape[0] - 1, zc.shape[1]))
        # PCA basis from the top right-singular vectors (randomised for wide features).
        if zc.shape[1] > 4 * k and zc.shape[1] > 512:
            _, s, v = torch.svd_lowrank(zc, q=min(k + 10, min(zc.shape)), niter=4)
        else:
            _, s, vh = torch.linalg.svd(zc, full_matrices=False)
            v = vh.T
        basis = v[:, :k]
        components = basis.clone()
        p = zc @ basis
        residual = zc - p @ basis.T
        residual_var = float(residual.pow(2).sum(dim=1).mean())
        if residual_var <= 1e-12 * float(zc.pow(2).sum(dim=1).mean() + 1e-30):
            residual_var = 0.0
        # one global scale (not per-direction whitening, which would blow up the weakest directions);
        # shrinkage then lifts the small-variance directions towards the mean variance
        scale = p.pow(2).mean().sqrt().clamp_min(1e-12)
        basis = basis / scale
        p = zc @ basis
        pn = p.numpy()
        yn = y.numpy()
        classes = sorted(int(c) for c in np.unique(yn))
        means, covs = [], []
        kept: list[int] = []
        if covariance == "tied":
            # one within-class covariance for all classes (as Mahalanobis OOD detectors do): well-posed
            # even with a handful of samples per class
            centers = {c: pn[yn == c].mean(axis=0) for c in classes}
            resid = pn - np.stack([centers[int(c)] for c in yn])
            tied = LedoitWolf(assume_centered=True).fit(resid).covariance_
            for c in classes:
                means.append(centers[c])
                covs.append(tied)
                kept.append(c)
        else:
            for c in classes:
                pc = pn[yn == c]
                if pc.shape[0] >= 2:
                    lw = LedoitWolf().fit(pc)
                    means.append(lw.location_)
                    covs.append(lw.covariance_)
                    kept.append(c)
        pooled = LedoitWolf().fit(pn)  # classes absent from the reference
        means.append(pooled.location_)
        covs.append(pooled.covariance_)
        kept.append(-1)
        precs, logdets = [], []
        for cov in covs:
            cov = cov + 1e-6 * np.eye(k)
            _, logdet = np.linalg.slogdet(cov)
            precs.append(torch.from_numpy(np.linalg.inv(cov)))
            logdets.append(float(logdet))
        means = [torch.from_numpy(np.asarray(m)) for m in means]
        ref = cls(
            mean=mean.float(),
            basis=basis.float(),
            classes=kept,
            class_means=torch.stack(means).float(),
            precisions=torch.stack(precs).float(),
            logdets=torch.tensor(logdets, dtype=torch.float32),
            components=components.float() if residual_var > 0 else None,
            residual_var=residual_var,
        )
        ref.baseline = float(ref.nll(z.float(), y).mean())
        return ref

    def to(self, device: torch.device | str) -> "GaussianReference":
        return GaussianReference(
            self.mean.to(device), self.basis.to(device), list(self.classes), self.class_means.to(device),
            self.precisions.to(device), self.logdets.to(device),
            None if self.components is None else self.components.to(device), self.residual_var, self.baseline,
        )

    def _rows(self, labels: Tensor) -> Tensor:
        pooled = self.classes.index(-1)
        lut = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor([lut.get(int(c), pooled) for c in labels.tolist()], dtype=torch.long, device=self.mean.device)

    def nll(self, features: Tensor, labels: Tensor) -> Tensor:
        """Per-sample negative log-likelihood under the sample's class Gaussian (differentiable)."""
        z = flatten(features)
        if z.shape[1] != self.mean.shape[0]:
            raise ValueError(f"representations have {z.shape[1]} features, the reference {self.mean.shape[0]}")
        rows = self._rows(torch.as_tensor(labels))
        zc = z.to(self.basis.dtype) - self.mean
        p = zc @ self.basis
        d = p - self.class_means[rows]
        maha = torch.einsum("ni,nij,nj->n", d, self.precisions[rows], d)
        nll = 0.5 * (maha + self.logdets[rows] + self.dim * math.log(2 * math.pi))
        if self.components is not None and self.residual_var > 0:
            inside = zc @ self.components
            res2 = (zc.pow(2).sum(dim=1) - inside.pow(2).sum(dim=1)).clamp_min(0.0)
            nll = nll + 0.5 * res2 / self.residual_var
        return nll

    @property
    def coordinates(self) -> int:
        """PCA directions plus the residual coordinate (when there is one)."""
        return self.dim + (1 if self.components is not None and self.residual_var > 0 else 0)

    def deviation(self, features: Tensor, labels: Tensor) -> Tensor:
        """Mean NLL per coordinate, relative to the reference's own mean NLL (0 = as typical as D)."""
        return (self.nll(features, labels).mean() - self.baseline) / self.coordinates
