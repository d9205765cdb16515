"""What every ``deeparc reproduce rqN`` run shares: its folder, the refusal to overwrite a finished
report, the cell store and the logger (only rank 0 writes), and running cells through both."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from omegaconf import DictConfig

from ..terminal import console, plain
from ..distributed import process_rank
from .cells import CellStore, run_cells
from .report import RunLogger, check_outputs

__all__ = ["ReproduceSession"]

#: ``cell(cfg, config, folder, write)`` -> result: how a subject model's cell is computed (rq2's).
SubjectCell = Callable[[DictConfig, dict, Path, bool], dict]


class ReproduceSession:
    """``with ReproduceSession(cfg, "rq3", OUTPUTS, overwrite) as s:``: checks that no report file
    in ``OUTPUTS`` would be overwritten before any work, and closes the logger on the way out."""

    def __init__(self, cfg: DictConfig, rq: str, outputs: Iterable[str], overwrite: bool) -> None:
        self.rq = rq
        self.folder = Path(str(cfg.out)) / rq
        check_outputs([self.folder / p for p in outputs], overwrite)
        self.rank = process_rank()
        self.store = CellStore(self.folder / "cells", write=self.rank == 0)
        self.logger = RunLogger(str(cfg.logger), self.folder, f"reproduce-{rq}", plain(cfg), enabled=self.rank == 0)

    def __enter__(self) -> "ReproduceSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.finish()

    def run(self, cells: Sequence[tuple[dict, Callable[[], dict]]], label: str | None = None,
            progress: bool = True) -> list[dict]:
        """Each (config, compute) cell: its stored result, or computed, stored and logged."""
        return run_cells(self.store, cells, label or self.rq, progress, on_result=self.logger.log_cell)

    def subjects(self, cfg: DictConfig, configs: Sequence[dict], cell: SubjectCell, progress: bool = True) -> list[dict]:
        """The subject models' cells (trained or loaded, and modularized); rank 0 saves checkpoints."""
        write = self.rank == 0
        return self.run([(c, (lambda c=c: cell(cfg, c, self.folder, write))) for c in configs],
                        f"{self.rq} subjects", progress)

    def counts(self) -> dict[str, Any]:
        """What a run returns: the folder and how many cells were computed or reused."""
        return {"folder": self.folder, "computed": self.store.computed, "reused": self.store.reused}

    def announce(self, *written: Path | str) -> None:
        """One line on the terminal: cells computed and reused, and the files written."""
        console.print(f"{self.rq}: {self.store.computed} cells computed, {self.store.reused} reused; "
                      f"wrote {', '.join(str(w) for w in written)}")

    def cell_counts(self, total: int, **extra: Any) -> dict[str, Any]:
        """The ``cells`` entry of a report."""
        return {"total": total, "computed": self.store.computed, "reused": self.store.reused, **extra}
