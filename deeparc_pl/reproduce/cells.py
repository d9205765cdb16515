"""A resumable store of experiment cells: one JSON file per finished cell, keyed by its configuration.

A reproduction is a grid of independent cells (one trained model, one attack, one probe...). Each
cell's result is written atomically the moment it finishes, under ``<folder>/<key>.json`` where the
key is a stable hash of the cell's configuration. A rerun skips every cell whose file exists, so an
interrupted run resumes where it stopped, and changing any setting of a cell gives it a new key.

The set of finished cells is read ONCE when the store is opened. Under DDP every rank therefore makes
the same skip decisions even while rank 0 is writing new files; only ``write=True`` stores write.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..fileio import json_safe, write_json

__all__ = ["cell_key", "CellStore", "run_cells", "FORMAT"]

FORMAT = "deeparc_pl.reproduce.cell/v1"


def _canonical(config: Mapping[str, Any]) -> str:
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a cell configuration must be plain JSON (dicts, lists, str, finite numbers): {exc}") from None


def cell_key(config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit key for a configuration (independent of dict order)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"a cell configuration must be a mapping, got {type(config).__name__}")
    return hashlib.sha256(_canonical(config).encode("utf-8")).hexdigest()[:16]


class CellStore:
    """Finished cells of one experiment, one JSON file each, in ``folder``.

    ``computed`` counts the cells this store computed, ``reused`` those it found finished.
    """

    def __init__(self, folder: str | Path, write: bool = True) -> None:
        self.folder = Path(folder)
        self.write = bool(write)
        if self.write:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._finished = {p.stem for p in self.folder.glob("*.json")} if self.folder.exists() else set()
        self.computed = 0
        self.reused = 0

    def path(self, config: Mapping[str, Any]) -> Path:
        return self.folder / f"{cell_key(config)}.json"

    def is_finished(self, config: Mapping[str, Any]) -> bool:
        """Whether the cell was finished when the store was opened (or computed by this store)."""
        return cell_key(config) in self._finished

    def load(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The stored record {format, key, config, result, seconds} of a finished cell."""
        path = self.path(config)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyError(f"cell {cell_key(config)} is not finished (no {path})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); delete it to recompute the cell") from None
        if record.get("format") != FORMAT:
            raise ValueError(f"{path} is not a reproduce cell (format {record.get('format')!r})")
        return record

    def compute(self, config: Mapping[str, Any], fn: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """The cell's result: read back if finished, else ``fn()`` (then stored atomically)."""
        key = cell_key(config)
        if key in self._finished:
            try:
                result = self.load(config)["result"]
                self.reused += 1
                return result
            except (KeyError, ValueError):
                pass  # vanished or unreadable: compute it again
        start = time.perf_counter()
        result = json_safe(dict(fn()))
        seconds = time.perf_counter() - start
        record = {"format": FORMAT, "key": key, "config": dict(config), "result": result, "seconds": round(seconds, 3)}
        try:  # fail loudly on non-JSON results before anything is written
            json.dumps(record, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the result of cell {key} is not plain JSON: {exc}") from None
        if self.write:
            write_json(self.folder / f"{key}.json", record, overwrite=True)
        self._finished.add(key)
        self.computed += 1
        return result

    def records(self) -> list[dict[str, Any]]:
        """Every cell file in the folder (finished by any run), in file-name order."""
        out = []
        for p in sorted(self.folder.glob("*.json")) if self.folder.exists() else []:
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
            if rec.get("format") == FORMAT:
                out.append(rec)
        return out


def run_cells(
    store: CellStore,
    cells: Iterable[tuple[Mapping[str, Any], Callable[[], Mapping[str, Any]]]],
    description: str = "cells",
    progress: bool = True,
    on_result: Callable[[Mapping[str, Any], dict[str, Any], bool], None] | None = None,
) -> list[dict[str, Any]]:
    """Compute (or read back) each ``(config, fn)`` cell in order, with a progress line per cell.

    ``on_result(config, result, computed)`` is called after each cell (e.g. to log it to W&B).
    """
    cells = list(cells)
    results = []
    from rich.console import Console

    console = Console()
    for i, (config, fn) in enumerate(cells, start=1):
        finished = store.is_finished(config)
        label = ", ".join(f"{k}={v}" for k, v in config.items() if k in _LABEL_KEYS)
        if progress and not finished:
            console.print(f"[bold]{description}[/bold] {i}/{len(cells)} computing ({label})")
            console.file.flush()
        start = time.perf_counter()
        before = store.computed
        result = store.compute(config, fn)
        computed = store.computed > before
        if progress and computed:
            console.print(f"[bold]{description}[/bold] {i}/{len(cells)} done in {time.perf_counter() - start:.1f}s")
            console.file.flush()
        if on_result is not None:
            on_result(config, result, computed)
        results.append(result)
    return results  # the totals are printed once, by ReproduceSession.announce


_LABEL_KEYS = ("kind", "model", "fraction", "classes", "seed", "attack", "variant", "method", "task")
