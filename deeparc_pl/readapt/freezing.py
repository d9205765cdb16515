"""Which leaf modules and parameters form one semantic module, and how to freeze the rest.

A semantic module ``k`` is a run of consecutive tapped layers. Its *leaves* are every leaf module that
runs after the previous module's last layer returned, up to the end of module ``k``'s last layer, as
seen by one traced forward pass (:meth:`deeparc_pl.taps.LayerTrace.leaves_between`): module 0 holds
the stem, and the head after the last layer belongs to no module (it stays frozen).

Freezing here only sets ``requires_grad=False`` and keeps frozen leaves in eval mode (batch norm uses
and keeps its running statistics, dropout is off): Lightning's ``BaseFinetuning.freeze_module`` would
also set ``track_running_stats=False`` on batch norm, which changes how the module computes in train
mode, so it is not reused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..architecture.semantic import SemanticArchitecture
from ..taps import LayerNameError, LayerTaps, LayerTrace

__all__ = ["ModuleSpan", "module_span", "trace_model", "check_module_index", "freeze_outside", "set_frozen_eval"]


def check_module_index(architecture: SemanticArchitecture, module: int) -> int:
    if isinstance(module, bool) or not isinstance(module, int):
        raise TypeError(f"module must be an int index, got {type(module).__name__} {module!r}")
    if not 0 <= module < architecture.num_modules:
        raise ValueError(
            f"module {module} is not in the architecture: it has {architecture.num_modules} modules "
            f"(valid indices 0..{architecture.num_modules - 1})"
        )
    return module


def trace_model(model: nn.Module, architecture: SemanticArchitecture, example: torch.Tensor) -> LayerTrace:
    """Trace ``model`` at the architecture's layers; a clear error when the model lacks them."""
    try:
        taps = LayerTaps(model, architecture.layer_names)
    except LayerNameError as exc:
        raise LayerNameError(
            f"the model ({type(model).__name__}) does not have the architecture's layers: {exc}"
        ) from None
    return taps.trace(example)


@dataclass(frozen=True)
class ModuleSpan:
    """Module ``index`` = layers ``start+1 .. end`` (``start = -1``: from the input)."""

    index: int
    start: int
    end: int
    boundary: str | None  # the layer whose output feeds the module (None for module 0)
    output: str  # the module's last layer
    leaves: tuple[str, ...]
    parameters: tuple[str, ...]  # fully qualified parameter names of the module


def module_span(model: nn.Module, architecture: SemanticArchitecture, module: int, trace: LayerTrace) -> ModuleSpan:
    check_module_index(architecture, module)
    idx = architecture.module_indices[module]
    start, end = idx[0] - 1, idx[-1]
    leaves = tuple(trace.leaves_between(start, end))
    param_names = set(n for n, _ in model.named_parameters())
    params = tuple(n for n in trace.parameter_names_between(start, end) if n in param_names)
    return ModuleSpan(
        index=module,
        start=start,
        end=end,
        boundary=architecture.layer_names[start] if start >= 0 else None,
        output=architecture.layer_names[end],
        leaves=leaves,
        parameters=params,
    )


def freeze_outside(model: nn.Module, trainable: set[str] | tuple[str, ...]) -> tuple[int, int]:
    """``requires_grad`` only for the named parameters; returns (trainable, total) parameter counts."""
    trainable = set(trainable)
    known = {n for n, _ in model.named_parameters()}
    unknown = trainable - known
    if unknown:
        raise KeyError(f"parameters {sorted(unknown)[:5]} are not in the model")
    n_train = n_total = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
        n_total += p.numel()
        n_train += p.numel() if name in trainable else 0
    return n_train, n_total


def set_frozen_eval(model: nn.Module, frozen_leaves: list[str] | tuple[str, ...]) -> None:
    """Put the frozen leaves in eval mode (run it after every ``model.train()``)."""
    modules = dict(model.named_modules())
    for name in frozen_leaves:
        modules[name].eval()
