"""Structural edits a model carries, recorded as plain data so a checkpoint can replay them.

An edited model (layers removed, a sewing layer, pruning masks, channels removed by torch-pruning)
keeps the list of its edits in ``model.deeparc_edits``. Saving stores the list beside the state
dict; loading rebuilds the base architecture, replays the edits, then loads the weights, so no
arbitrary code is ever unpickled.
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .sewing import Sewing

__all__ = ["get_edits", "record_edit", "apply_edit", "apply_edits", "set_submodule", "get_submodule"]

EDITS_ATTR = "deeparc_edits"


def get_edits(model: nn.Module) -> list[dict[str, Any]]:
    return list(getattr(model, EDITS_ATTR, []))


def record_edit(model: nn.Module, edit: dict[str, Any]) -> None:
    setattr(model, EDITS_ATTR, get_edits(model) + [dict(edit)])


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"{type(model).__name__} has no submodule {name!r}") from None


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = get_submodule(model, parent_name) if parent_name else model
    if not hasattr(parent, child):
        raise KeyError(f"{type(model).__name__} has no submodule {name!r}")
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and child.isdigit():
        parent[int(child)] = module
    else:
        setattr(parent, child, module)


def _apply_masks(model: nn.Module, edit: dict[str, Any]) -> None:
    from torch.nn.utils import prune

    for name in edit["layers"]:
        module = get_submodule(model, name)
        if not hasattr(module, "weight_mask"):
            prune.identity(module, "weight")


def _apply_torch_pruning(model: nn.Module, edit: dict[str, Any]) -> None:
    import torch
    import torch_pruning as tp

    example = torch.zeros(1, *edit["input_shape"])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    graph.load_pruning_history(edit["history"])


def apply_edit(model: nn.Module, edit: dict[str, Any]) -> nn.Module:
    """Replay one recorded edit IN PLACE on ``model`` (used on freshly built models only)."""
    kind = edit.get("kind")
    if kind == "identity":
        set_submodule(model, edit["layer"], nn.Identity())
    elif kind == "sewing":
        set_submodule(model, edit["layer"], Sewing(edit["in_shape"], edit["out_shape"]))
    elif kind == "duplicate":
        original = get_submodule(model, edit["layer"])
        set_submodule(model, edit["layer"], nn.Sequential(original, copy.deepcopy(original)))
    elif kind == "masks":
        _apply_masks(model, edit)
    elif kind == "torch_pruning":
        _apply_torch_pruning(model, edit)
    else:
        raise ValueError(f"unknown model edit {kind!r} in {edit}")
    record_edit(model, edit)
    return model


def apply_edits(model: nn.Module, edits: list[dict[str, Any]]) -> nn.Module:
    for edit in edits:
        apply_edit(model, edit)
    return model
