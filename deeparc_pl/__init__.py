"""deeparc_pl: DeepArc (Ren et al., ICSE 2023) on PyTorch Lightning.

The data path reads top to bottom: model -> layer taps -> similarity -> architecture ->
restructure / re-adapt -> report. Public names are imported lazily so that ``import deeparc_pl``
stays cheap and a missing optional piece never breaks the rest.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LayerTaps": "deeparc_pl.taps",
    "LayerTrace": "deeparc_pl.taps",
    "linear_cka": "deeparc_pl.similarity.functional",
    "CKAMatrix": "deeparc_pl.similarity.metric",
    "CKACallback": "deeparc_pl.architecture.callback",
    "partition": "deeparc_pl.architecture.partition",
    "SemanticArchitecture": "deeparc_pl.architecture.semantic",
    "modularize": "deeparc_pl.architecture.modularize",
    "reduce_layers": "deeparc_pl.restructure.reduction",
    "compress": "deeparc_pl.restructure.compress",
    "sparsity": "deeparc_pl.pruners.masks",
    "mutate": "deeparc_pl.readapt.mutants",
    "MutationTargetError": "deeparc_pl.readapt.mutants",
    "locate": "deeparc_pl.readapt.locate",
    "ModularEnhance": "deeparc_pl.readapt.tasks",
    "ModularRepair": "deeparc_pl.readapt.tasks",
    "FullFinetune": "deeparc_pl.readapt.tasks",
    "ReadaptTask": "deeparc_pl.readapt.tasks",
    "Classifier": "deeparc_pl.training",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


_SUBPACKAGES = {"models", "data", "similarity", "architecture", "restructure", "pruners", "readapt", "reproduce", "attacks", "taps"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"deeparc_pl.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deeparc_pl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
