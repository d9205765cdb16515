"""Real image data: IDX (MNIST, Fashion-MNIST) and CIFAR-10 readers, and a Lightning data module.

The readers need only numpy; ``ImageDataModule`` (Lightning) is imported on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from .cifar import read_cifar10, write_cifar10_batch
from .idx import read_idx
from .sources import DATASETS, get_spec, load_arrays

__all__ = ["read_idx", "read_cifar10", "write_cifar10_batch", "ImageDataModule", "ArrayDataset", "ShuffledPasses",
           "DATASETS", "get_spec", "load_arrays"]

_LAZY = {"ImageDataModule": "datamodule", "ArrayDataset": "datamodule", "ShuffledPasses": "samplers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
