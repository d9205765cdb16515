"""A channels-last copy of a convolutional network, for the CKA forward passes on CPU.

On CPU, oneDNN runs convolutions on channels-last (NHWC) tensors without the reorders it makes for
the default NCHW layout: a CIFAR ResNet-56's forward passes took ~0.75x the time (benchmarks/RESULTS.md).
The Gram matrices do not depend on the layout (:func:`~deeparc_pl.similarity.functional.gram`
flattens in memory order), so ``modularize`` runs such a copy by default and the user's model is
left as it was given. The copy is checked against the user's model on a few samples of the first
batch; anything that fails there (a ``.view`` that needs NCHW, a custom op) falls back to the model
as given, with a warning.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..modes import evaluating

__all__ = ["wants_channels_last", "channels_last_copy", "to_channels_last", "agrees", "prefer_channels_last"]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def wants_channels_last(model: nn.Module, device: torch.device | str, choice: bool | None) -> bool:
    """``choice`` if given; by default (None) only for a model with 2-D convolutions run on CPU."""
    if choice is not None:
        return bool(choice)
    return torch.device(device).type == "cpu" and any(isinstance(m, _CONVS) for m in model.modules())


def channels_last_copy(model: nn.Module) -> nn.Module | None:
    """A deep copy of ``model`` in eval mode with its 4-D parameters channels-last; None (and a
    warning) when the model cannot be deep-copied. ``model`` itself is not touched."""
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:  # a user's module may hold uncopyable state
        warnings.warn(f"running the model as given: it cannot be copied to channels-last ({exc})", stacklevel=3)
        return None
    return clone.eval().to(memory_format=torch.channels_last)


def to_channels_last(x: Any) -> Any:
    """A 4-D input in channels-last layout; anything else unchanged."""
    if isinstance(x, Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def agrees(fast: nn.Module, model: nn.Module, x: Tensor, samples: int = 4) -> str | None:
    """None if ``fast`` (channels-last) and ``model`` give the same output on the first ``samples``
    inputs of ``x`` (float tolerance; every tensor of a tuple / list / dict output), else why not.
    Both must be in eval mode."""
    probe = x[:samples]
    try:
        with torch.no_grad():
            a, b = fast(to_channels_last(probe)), model(probe)
    except Exception as exc:
        return f"the channels-last copy failed: {type(exc).__name__}: {exc}"
    a_leaves, b_leaves = _tensors(a), _tensors(b)
    if len(a_leaves) != len(b_leaves):
        return f"it returns {len(a_leaves)} tensors, the model {len(b_leaves)}"
    for a, b in zip(a_leaves, b_leaves):
        if a.shape != b.shape:
            return f"its output has shape {tuple(a.shape)}, the model's {tuple(b.shape)}"
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return "its integer output differs from the model's"
            continue
        scale = float(b.detach().abs().max()) if b.numel() else 0.0
        if not torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4 * max(1.0, scale), equal_nan=True):
            return f"its output differs from the model's by {float((a.float() - b.float()).abs().max()):.3g}"
    return None


def _tensors(out: Any) -> list[Tensor]:
    """The tensors in a model's output (a tensor, or tuples / lists / dicts of them), in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for key in out for t in _tensors(out[key])]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def prefer_channels_last(
    model: nn.Module, probe: Tensor, choice: bool | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """The module to run the CKA passes with: a channels-last copy of ``model`` when wanted
    (:func:`wants_channels_last`) and when it agrees with ``model`` on ``probe`` (a batch of
    inputs); otherwise ``model`` itself, with a warning saying why. ``model``'s mode is restored."""
    if not wants_channels_last(model, device, choice):
        return model
    fast = channels_last_copy(model)
    if fast is None:
        return model
    with evaluating(model):
        why = agrees(fast, model, probe)
    if why is not None:
        warnings.warn(f"running the model as given, not channels-last: {why}", stacklevel=2)
        return model
    return fast
