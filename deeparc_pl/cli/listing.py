"""``deeparc models`` and ``deeparc pruners``: what is available."""
from __future__ import annotations

from omegaconf import DictConfig

from .common import console


def run_models(cfg: DictConfig, overwrite: bool = False) -> None:
    from ..models import available

    for name in available():
        console.print(name)


def run_pruners(cfg: DictConfig, overwrite: bool = False) -> None:
    from ..pruners import available

    for name in available():
        console.print(name)
