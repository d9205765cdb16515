"""Model variants for RQ2 (dynamic semantics): remove or duplicate layers without any retraining.

Following the paper, only layers whose input shape equals their output shape are changed (no
sewing layer, no new neurons); the others are skipped. Orders:

* intra-module layers (removal and duplication): paper Algorithm 2, as ``reduction_plan``;
* inter-module layers (the single-layer modules, the "interfaces"): model order.

Each function returns a NEW model with its edits recorded (``deeparc_pl.models.edits``).
"""
from __future__ import annotations


import torch
from torch import nn

from ..architecture.semantic import SemanticArchitecture
from ..pruners.masks import copy_model
from ..models.edits import apply_edit
from ..taps import resolve_layer_names
from .reduction import example_input, layer_shapes, reduction_plan

__all__ = [
    "intra_module_candidates",
    "inter_module_candidates",
    "remove_intra_module_layers",
    "remove_inter_module_layers",
    "duplicate_layers",
]


def _compatible(model: nn.Module, architecture: SemanticArchitecture, order: list[str],
                example: torch.Tensor | None) -> list[str]:
    if not isinstance(architecture, SemanticArchitecture):
        raise TypeError(f"architecture must be a SemanticArchitecture, got {type(architecture).__name__}")
    resolve_layer_names(model, architecture.layer_names)
    if not order:
        return []
    shapes = layer_shapes(model, architecture.layer_names, example_input(model, None, example))
    return [n for n in order if shapes[n][0] == shapes[n][1]]


def intra_module_candidates(model: nn.Module, architecture: SemanticArchitecture,
                            example: torch.Tensor | None = None) -> list[str]:
    """Shape-preserving layers of multi-layer modules (all but each module's first), Algorithm 2 order."""
    return _compatible(model, architecture, reduction_plan(architecture), example)


def inter_module_candidates(model: nn.Module, architecture: SemanticArchitecture,
                            example: torch.Tensor | None = None) -> list[str]:
    """Shape-preserving layers of single-layer modules, in model order."""
    if not isinstance(architecture, SemanticArchitecture):
        raise TypeError(f"architecture must be a SemanticArchitecture, got {type(architecture).__name__}")
    order = [m[0] for m in architecture.modules if len(m) == 1]
    return _compatible(model, architecture, order, example)


def _take(candidates: list[str], k: int, what: str) -> list[str]:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {k!r}")
    if not 0 <= k <= len(candidates):
        raise ValueError(f"k={k} is out of range: there are {len(candidates)} shape-compatible {what} ({candidates})")
    return candidates[:k]


def _edited(model: nn.Module, layers: list[str], kind: str) -> nn.Module:
    out = copy_model(model)
    for name in layers:
        apply_edit(out, {"kind": kind, "layer": name})
    return out


def remove_intra_module_layers(model: nn.Module, architecture: SemanticArchitecture, k: int,
                               example: torch.Tensor | None = None) -> nn.Module:
    """The model with its first ``k`` shape-compatible intra-module layers (Algorithm 2 order) made identity."""
    layers = _take(intra_module_candidates(model, architecture, example), k, "intra-module layers")
    return _edited(model, layers, "identity")


def remove_inter_module_layers(model: nn.Module, architecture: SemanticArchitecture, k: int,
                               example: torch.Tensor | None = None) -> nn.Module:
    """The model with its first ``k`` shape-compatible single-layer-module layers (model order) made identity."""
    layers = _take(inter_module_candidates(model, architecture, example), k, "inter-module layers")
    return _edited(model, layers, "identity")


def duplicate_layers(model: nn.Module, architecture: SemanticArchitecture, k: int,
                     example: torch.Tensor | None = None) -> nn.Module:
    """The model with a copy of each of the first ``k`` shape-compatible intra-module layers
    (Algorithm 2 order) run right after the original (same weights)."""
    layers = _take(intra_module_candidates(model, architecture, example), k, "intra-module layers")
    return _edited(model, layers, "duplicate")
