"""Pruning: a ``Pruner`` protocol, an entry-point registry of pruner plugins, and mask utilities.

>>> from deeparc_pl import pruners
>>> pruners.available()                      # doctest: +SKIP
['erk', 'global', 'lamp', 'structured', 'uniform_plus']
>>> pruned = pruners.get("lamp").prune(model, 0.9)   # doctest: +SKIP
"""
from deeparc_pl.pruners.masks import (
    apply_masks,
    layer_sparsity,
    make_permanent,
    prepare_for_masked_state_dict,
    prunable_layers,
    sparsity,
)
from deeparc_pl.pruners.protocol import Pruner, PruningReport, ScoredPruner
from deeparc_pl.pruners.registry import GROUP, DuplicatePrunerError, PrunerLoadError, clashes, available, get, names_of, register_pruner, unregister_pruner

__all__ = [
    "GROUP",
    "DuplicatePrunerError",
    "PrunerLoadError",
    "clashes",
    "Pruner",
    "PruningReport",
    "ScoredPruner",
    "apply_masks",
    "available",
    "get",
    "names_of",
    "layer_sparsity",
    "make_permanent",
    "prepare_for_masked_state_dict",
    "prunable_layers",
    "register_pruner",
    "sparsity",
    "unregister_pruner",
]
