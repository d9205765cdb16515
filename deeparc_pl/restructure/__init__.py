"""Model restructure (paper section II-B, RQ2, RQ3): layer reduction with sewing layers, RQ2
variants, and iterative compression with and without DeepArc.

>>> from deeparc_pl.restructure import reduce_layers, reduction_plan
>>> reduced = reduce_layers(model, architecture, data=train_set)   # a new model

The iterative compression loop is ``deeparc_pl.compress`` (module ``deeparc_pl.restructure.compress``;
the package does not re-export the function under the module's name, to keep the two apart).
"""
from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "reduce_layers": "reduction",
    "reduce": "reduction",
    "reduction_plan": "reduction",
    "Reduction": "reduction",
    "Span": "reduction",
    "fit_sewing": "sewing",
    "SewingFit": "sewing",
    "remove_intra_module_layers": "variants",
    "remove_inter_module_layers": "variants",
    "duplicate_layers": "variants",
    "intra_module_candidates": "variants",
    "inter_module_candidates": "variants",
    "compare_compression": "compress",
    "CompressionResult": "compress",
    "RoundRecord": "compress",
    "write_report": "compress",
    "measure_cost": "cost",
    "ModelCost": "cost",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
