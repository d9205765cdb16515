"""What the commands print: one rank-aware rich console, tables, and omegaconf settings as plain Python.

Shared by ``cli/`` and ``reproduce/`` (which sits beside it and runs the same steps), so neither
imports the other for them. On DDP ranks >= 1 the console is quiet: Lightning re-runs the whole
command there, and rank 0 speaks for all.
"""
from __future__ import annotations

from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from .distributed import is_primary

__all__ = ["console", "print_table", "plain"]

console = Console(quiet=not is_primary())


def plain(node: Any) -> Any:
    """An omegaconf node as plain Python (lists, dicts, scalars)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def print_table(title: str, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    if not rows:
        return
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()])
    console.print(table)
