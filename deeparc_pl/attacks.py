"""``deeparc_pl.attacks``: the public home of adversarial-sample generation (see ``readapt/attacks.py``)."""
from .readapt.attacks import METHODS, AdversarialSet, default_params, generate

__all__ = ["generate", "AdversarialSet", "METHODS", "default_params"]
