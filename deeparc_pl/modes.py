"""Train/eval flags that come back exactly as the user left them, submodule by submodule.

``model.train(was_training)`` is not enough: it sets every submodule to the root's flag, so a user's
frozen BatchNorm or disabled Dropout inside a model in train mode would come back switched on.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["modes_of", "restore_modes", "kept_modes", "evaluating", "copy_modes"]


def modes_of(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Each submodule (the model included) with its own ``training`` flag."""
    return [(m, m.training) for m in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    """Put back flags saved by :func:`modes_of`, through each module's own ``train()`` (so overrides
    with side effects run); parents come before children, so every module ends with its own flag."""
    for module, flag in modes:
        if module.training != flag:
            module.train(flag)


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Whatever happens inside, every submodule's flag is restored on exit."""
    saved = modes_of(model)
    try:
        yield model
    finally:
        restore_modes(saved)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, every submodule's own flag restored on exit."""
    with kept_modes(model):
        model.eval()
        yield model


def copy_modes(source: nn.Module, target: nn.Module) -> nn.Module:
    """Give ``target``'s submodules the flags of ``source``'s submodules of the same name; the ones
    ``source`` lacks (e.g. inserted layers) take the flag of their nearest named ancestor."""
    flags = {name: m.training for name, m in source.named_modules()}
    for name, module in target.named_modules():
        key = name
        while key not in flags:
            key = key.rpartition(".")[0]
        module.training = flags[key]
    return target
