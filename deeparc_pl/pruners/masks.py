"""How masks are applied, read and persisted.

The prunable weights of a model are the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear`` (biases and
normalisation layers never). Masks use ``torch.nn.utils.prune`` (``weight_orig * weight_mask``), so a
masked model trains with the mask in place; :func:`make_permanent` bakes the zeros in. Functions that
change a model work on a deep copy unless ``inplace=True``.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = [
    "PRUNABLE_TYPES",
    "prunable_layers",
    "effective_weight",
    "copy_model",
    "is_masked",
    "sparsity",
    "layer_sparsity",
    "topk_mask",
    "apply_masks",
    "make_permanent",
    "prepare_for_masked_state_dict",
]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Conv2d`` / ``nn.Linear`` in ``named_modules`` order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def is_masked(module: nn.Module) -> bool:
    """Whether ``module.weight`` is under a ``torch.nn.utils.prune`` mask."""
    return "weight_orig" in module._parameters and "weight_mask" in module._buffers


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with: ``weight_orig * weight_mask`` when masked."""
    if is_masked(module):
        return module.weight_orig * module.weight_mask
    return module.weight


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on masked models after a forward pass (their computed
    ``weight`` is a non-leaf tensor, which plain deepcopy refuses); the hook recomputes it on the
    next forward."""
    memo: dict[int, object] = {}
    for m in model.modules():
        w = m.__dict__.get("weight")
        if is_masked(m) and isinstance(w, torch.Tensor) and not w.is_leaf:
            memo[id(w)] = w.detach().clone()
    return copy.deepcopy(model, memo)


def _counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    out = {}
    with torch.no_grad():
        for name, m in prunable_layers(model):
            w = effective_weight(m)
            out[name] = (int((w == 0).sum()), w.numel())
    return out


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """``{module name: share of zero weights}`` for every prunable layer."""
    return {n: z / t for n, (z, t) in _counts(model).items()}


def sparsity(model: nn.Module) -> float:
    """Share of zero weights among all prunable weights (masked or not)."""
    counts = _counts(model).values()
    total = sum(t for _, t in counts)
    if total == 0:
        raise ValueError("model has no prunable layers (nn.Conv2d / nn.Linear)")
    return sum(z for z, _ in counts) / total


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 float mask keeping the ``k`` highest scores (``-inf`` scores are never kept when k allows)."""
    mask = torch.zeros(scores.numel(), dtype=torch.float32, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.flatten(), k, sorted=False).indices] = 1.0
    return mask.view_as(scores)


def _unmask(module: nn.Module) -> torch.Tensor:
    """Remove the prune parametrisation *without* baking the mask; returns the old mask."""
    old = module._buffers["weight_mask"]
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, prune.BasePruningMethod) and getattr(hook, "_tensor_name", None) == "weight":
            del module._forward_pre_hooks[key]
    orig = module._parameters.pop("weight_orig")
    del module._buffers["weight_mask"]
    if "weight" in module.__dict__:
        del module.__dict__["weight"]
    module.register_parameter("weight", orig)
    return old


def _apply_one(module: nn.Module, mask: torch.Tensor) -> None:
    w = effective_weight(module)
    if mask.shape != w.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(w.shape)}")
    mask = mask.detach().to(device=w.device, dtype=w.dtype)
    if is_masked(module):
        # torch's PruningContainer cannot combine custom_from_mask masks; combine them ourselves.
        mask = mask * _unmask(module).to(mask.dtype)
    prune.custom_from_mask(module, "weight", mask)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], *, inplace: bool = False) -> nn.Module:
    """Mask the named prunable layers with ``torch.nn.utils.prune.custom_from_mask``.

    A module that is already masked gets the *product* of its old and new masks (one parametrisation,
    not a stack). Returns the masked model (a deep copy unless ``inplace``).
    """
    layers = dict(prunable_layers(model))
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise KeyError(f"no prunable layer named {unknown}; prunable layers: {sorted(layers)}")
    out = model if inplace else copy_model(model)
    targets = dict(prunable_layers(out))
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask for {name!r} must be a tensor, got {type(mask).__name__}")
        _apply_one(targets[name], mask)
    return out


def make_permanent(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Bake every weight mask into a plain ``weight`` (``torch.nn.utils.prune.remove``)."""
    out = model if inplace else copy_model(model)
    for _, m in out.named_modules():
        if is_masked(m):
            prune.remove(m, "weight")
    return out


def prepare_for_masked_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, inplace: bool = False
) -> nn.Module:
    """Give ``model`` the mask parametrisation that ``state_dict`` was saved with, so that
    ``load_state_dict`` finds ``weight_orig`` / ``weight_mask`` keys. Typical use::

        model = prepare_for_masked_state_dict(build_model(), sd)
        model.load_state_dict(sd)
    """
    layers = dict(prunable_layers(model))
    names = sorted(k[: -len(".weight_mask")] for k in state_dict if k.endswith(".weight_mask"))
    missing = [n for n in names if n not in layers]
    if missing:
        raise KeyError(f"state_dict masks layers {missing} that are not prunable layers of the model")
    out = model if inplace else copy_model(model)
    targets = dict(prunable_layers(out))
    for name in names:
        if f"{name}.weight_orig" not in state_dict:
            raise KeyError(f"state_dict has {name}.weight_mask but no {name}.weight_orig")
        m = targets[name]
        if is_masked(m):
            _unmask(m)
        prune.custom_from_mask(m, "weight", state_dict[f"{name}.weight_mask"].to(m.weight.device))
    return out
