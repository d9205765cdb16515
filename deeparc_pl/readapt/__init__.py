"""Re-adaption (paper Section III-C / IV-D): samples to adapt to, and the modular fine-tuning itself.

Kept light on purpose: names are imported on first use, so ``import deeparc_pl.readapt`` does not load
ART or anything heavy. Submodules: ``attacks`` (adversarial samples through ART), ``mutants``
(under-performing models to repair), ``evaluate`` (shared accuracy helper), ``deviation`` and
``locate`` (critical-module location), ``freezing`` and ``prefix_cache`` (train one module, cache the
frozen prefix), ``tasks`` (the Lightning tasks), ``report`` (Table III rows).
"""
from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "generate": "deeparc_pl.readapt.attacks",
    "AdversarialSet": "deeparc_pl.readapt.attacks",
    "mutate": "deeparc_pl.readapt.mutants",
    "MutationTargetError": "deeparc_pl.readapt.mutants",
    "accuracy": "deeparc_pl.readapt.evaluate",
    "locate": "deeparc_pl.readapt.locate",
    "GaussianReference": "deeparc_pl.readapt.deviation",
    "ModularEnhance": "deeparc_pl.readapt.tasks",
    "ModularRepair": "deeparc_pl.readapt.tasks",
    "FullFinetune": "deeparc_pl.readapt.tasks",
    "ReadaptTask": "deeparc_pl.readapt.tasks",
    "DEVIATIONS": "deeparc_pl.readapt.tasks",
    "check_samples": "deeparc_pl.readapt.evaluate",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
