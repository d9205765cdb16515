"""``deeparc models`` and ``deeparc pruners``: what is available."""
from __future__ import annotations

from omegaconf import DictConfig

from .common import console

HELP_MODELS = "list the model zoo"
HELP_PRUNERS = "list the installed pruner plugins (entry-point group deeparc_pl.pruners)"


def run_models(cfg: DictConfig, overwrite: bool = False) -> None:
    from ..models import available

    for name in available():
        console.print(name)


def run_pruners(cfg: DictConfig, overwrite: bool = False) -> None:
    from ..pruners import available

    for name in available():
        console.print(name)
