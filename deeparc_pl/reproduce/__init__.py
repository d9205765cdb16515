"""Reproduce the paper's research questions end to end (``deeparc reproduce rq1|rq2|rq3|rq4``).

Each research question is a grid of independent *cells* (a trained model, an attack, a probe, a
compression run...) stored one JSON file each under ``{out}/<rq>/cells/`` as they finish
(:class:`~deeparc_pl.reproduce.cells.CellStore`), so interrupted runs resume. Reports (Markdown, JSON,
PNG) are drawn from the finished cells by :mod:`~deeparc_pl.reproduce.report`.

Modules: ``cells`` (resumable store), ``regression`` (Eq. 6), ``subjects`` (train + modularize one
subject model), ``probe`` (linear expressiveness), ``report`` (tables, plots, W&B), ``rq1``..``rq4``.
Names are imported on first use so ``import deeparc_pl.reproduce`` stays cheap.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "CellStore": "deeparc_pl.reproduce.cells",
    "cell_key": "deeparc_pl.reproduce.cells",
    "run_cells": "deeparc_pl.reproduce.cells",
    "fit_eq6": "deeparc_pl.reproduce.regression",
    "encode_levels": "deeparc_pl.reproduce.regression",
    "PAPER_EQ6": "deeparc_pl.reproduce.regression",
    "RELEASED_CODE_FIT": "deeparc_pl.reproduce.regression",
    "run_rq1": "deeparc_pl.reproduce.rq1",
    "run_rq2": "deeparc_pl.reproduce.rq2",
    "run_rq3": "deeparc_pl.reproduce.rq3",
    "run_rq4": "deeparc_pl.reproduce.rq4",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
