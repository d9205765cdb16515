"""Critical-module location (paper Section II-C-1): where do the hard samples deviate?

For every semantic module, the representations at the module's output (its last layer) of the target
set D' are compared with those of the reference set D:

* ``mode="explicit"`` (paired samples in the same order, e.g. adversarial images and their clean
  originals): deviation = 1 - linear CKA (plain biased full-batch CKA in float64, as the authors'
  location code did on 1,000 samples);
* ``mode="implicit"`` (no pairs, e.g. a repair set): per-class Gaussians fitted to D's outputs (only the
  samples the model predicts correctly, by default), in at most ``dim`` PCA directions of D (one global scale)
  with Ledoit-Wolf shrinkage; deviation = mean negative log-likelihood of D' under its class's Gaussian,
  minus D's own mean NLL, per dimension. The paper writes the density itself, which ranks backwards;
  subtracting D's own NLL cancels the log-determinant, which otherwise differs between modules by the
  arbitrary scale of their activations, so values of different modules are comparable.

``rank_by="increment"`` (the authors' code) ranks modules by how much the deviation grows over the
previous module (the first module: over the raw inputs' deviation, or over 0 with ``baseline="zero"``);
``rank_by="absolute"`` by the deviation itself.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..modes import evaluating
from ..architecture.semantic import SemanticArchitecture
from ..taps import LayerNameError, LayerTaps
from .deviation import GaussianReference, flatten
from .evaluate import as_tensors, check_sets

__all__ = ["locate", "module_deviations", "module_outputs", "MODES", "RANKINGS"]

MODES = ("explicit", "implicit")
RANKINGS = ("increment", "absolute")


def _device_of(model: nn.Module) -> torch.device:
    return next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))


@torch.no_grad()
def module_outputs(
    model: nn.Module, layers: Sequence[str], x: Tensor, batch_size: int = 256
) -> tuple[list[Tensor], Tensor]:
    """Flattened float32 outputs (on CPU) of ``layers`` for inputs ``x``, and the predicted classes.

    Eval mode, no grad; the model's training flag is restored and nothing else changes.
    """
    device = _device_of(model)
    feats: list[list[Tensor]] = [[] for _ in layers]
    preds: list[Tensor] = []
    try:
        taps = LayerTaps(model, list(layers))
    except LayerNameError as exc:
        raise LayerNameError(f"the model ({type(model).__name__}) does not have the architecture's layers: {exc}") from None
    with evaluating(model), taps:
        for i in range(0, len(x), batch_size):
            out = model(x[i : i + batch_size].to(device))
            preds.append(out.argmax(dim=1).cpu())
            for k, o in enumerate(taps.outputs):
                feats[k].append(flatten(o).float().cpu())
    return [torch.cat(f) for f in feats], torch.cat(preds)


def _check(architecture: SemanticArchitecture, mode: str, rank_by: str) -> None:
    if not isinstance(architecture, SemanticArchitecture):
        raise TypeError(f"architecture must be a SemanticArchitecture, got {type(architecture).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if rank_by not in RANKINGS:
        raise ValueError(f"rank_by must be one of {RANKINGS}, got {rank_by!r}")


def module_deviations(
    model: nn.Module,
    architecture: SemanticArchitecture,
    reference: Any,
    target: Any,
    mode: str = "explicit",
    limit: int | None = 1000,
    dim: int = 64,
    correct_only: bool = True,
    batch_size: int = 256,
    include_input: bool = False,
    reference_model: nn.Module | None = None,
) -> list[float]:
    """Deviation of ``target`` from ``reference`` at each module's output, in module order.

    ``include_input=True`` prepends the deviation of the raw inputs themselves.
    """
    _check(architecture, mode, "increment")
    x_ref, y_ref = as_tensors(reference, limit=limit)
    try:
        x_tgt, y_tgt = as_tensors(target, limit=limit)
    except ValueError as exc:
        raise ValueError(f"the target set D' is empty or invalid: {exc}") from None
    check_sets(model, x_ref, y_ref, x_tgt, y_tgt)
    outputs = [m[-1] for m in architecture.modules]
    ref_feats, ref_pred = module_outputs(model if reference_model is None else reference_model, outputs, x_ref, batch_size)
    tgt_feats, _ = module_outputs(model, outputs, x_tgt, batch_size)
    if include_input:
        ref_feats = [flatten(x_ref).float()] + ref_feats
        tgt_feats = [flatten(x_tgt).float()] + tgt_feats
    if mode == "explicit":
        from ..similarity.functional import linear_cka

        if len(x_ref) != len(x_tgt):
            raise ValueError(
                f"explicit deviation needs paired sets of equal size, got {len(x_ref)} reference and {len(x_tgt)} "
                "target samples (use mode='implicit' for unpaired sets)"
            )
        if len(x_ref) < 3:
            raise ValueError(f"explicit deviation needs at least 3 paired samples, got {len(x_ref)}")
        return [float(1.0 - linear_cka(r, t)) for r, t in zip(ref_feats, tgt_feats)]
    keep = (ref_pred == y_ref.cpu()) if correct_only else torch.ones(len(y_ref), dtype=torch.bool)
    if int(keep.sum()) < 3:
        warnings.warn(
            f"only {int(keep.sum())} reference samples are predicted correctly; fitting the Gaussians on all "
            f"{len(y_ref)}", RuntimeWarning, stacklevel=2,
        )
        keep = torch.ones(len(y_ref), dtype=torch.bool)
    devs = []
    for r, t in zip(ref_feats, tgt_feats):
        gauss = GaussianReference.fit(r[keep], y_ref[keep], dim=dim)
        devs.append(float(gauss.deviation(t, y_tgt)))
    return devs


def rank(deviations: Sequence[float], rank_by: str = "increment", start: float = 0.0) -> list[tuple[int, float]]:
    """(module, score) most critical first; ``increment`` scores are d_k - d_{k-1} with d_{-1} = ``start``."""
    if rank_by not in RANKINGS:
        raise ValueError(f"rank_by must be one of {RANKINGS}, got {rank_by!r}")
    if rank_by == "increment":
        scores = [d - (deviations[k - 1] if k else start) for k, d in enumerate(deviations)]
    else:
        scores = list(deviations)
    return sorted(((k, float(s)) for k, s in enumerate(scores)), key=lambda t: (-t[1], t[0]))


def locate(
    model: nn.Module,
    architecture: SemanticArchitecture,
    reference: Any,
    target: Any,
    mode: str = "explicit",
    rank_by: str = "increment",
    limit: int | None = 1000,
    dim: int = 64,
    correct_only: bool = True,
    batch_size: int = 256,
    baseline: str = "input",
    reference_model: nn.Module | None = None,
) -> list[tuple[int, float]]:
    """Every module once as (index, score), most critical first.

    ``reference`` (D) and ``target`` (D') are Datasets, DataLoaders or ``(x, y)`` tensors; the first
    ``limit`` samples of each are used. The score is the deviation increment or the deviation itself
    (``rank_by``); see the module docstring for the two modes. The model is not modified.

    ``baseline`` is what the first module's increment is measured from: ``"input"`` (default) the
    deviation of the raw inputs (hard samples often differ already as images, and without it module 0
    would be charged with that), ``"zero"`` the authors' 0.

    ``reference_model`` (optional) computes D's representations instead of ``model``: the model before
    it was damaged, when it is known (repairing a mutant). Then the deviation before the damaged module
    is 0 by construction and the damage is located where it happens; with ``model`` alone, the samples
    that fail are also the less typical ones, and that selection bias grows towards the output.
    """
    _check(architecture, mode, rank_by)
    if baseline not in ("input", "zero"):
        raise ValueError(f"baseline must be 'input' or 'zero', got {baseline!r}")
    use_input = baseline == "input" and rank_by == "increment"
    devs = module_deviations(model, architecture, reference, target, mode, limit, dim, correct_only, batch_size,
                             include_input=use_input, reference_model=reference_model)
    if use_input:
        return rank(devs[1:], rank_by, start=devs[0])
    return rank(devs, rank_by)
