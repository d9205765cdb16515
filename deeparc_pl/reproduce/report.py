"""Tables and figures of a reproduction: mean ± std over seeds, Markdown + JSON, PNG plots, W&B.

Everything here turns finished cells into files; nothing is computed on a model. Output files are
written atomically and never over existing ones unless ``overwrite``.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..fileio import check_writable, refuse_existing, write_json, write_text

__all__ = [
    "mean_std",
    "fmt_mean_std",
    "aggregate",
    "markdown_table",
    "Report",
    "RunLogger",
    "line_plot",
    "check_outputs",
]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value); NaNs are dropped."""
    arr = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fmt_mean_std(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    if float(mean).is_integer() and (math.isnan(std) or std == 0) and abs(mean) >= 1:
        return f"{int(mean)}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def aggregate(rows: Sequence[Mapping[str, Any]], by: Sequence[str], values: Sequence[str]) -> list[dict[str, Any]]:
    """Group ``rows`` by the ``by`` columns (first-seen order) and give each value's mean, std and n.

    Each output row holds the ``by`` columns, ``n`` and for every value ``v``: ``v_mean``, ``v_std``.
    """
    groups: "OrderedDict[tuple, list[Mapping[str, Any]]]" = OrderedDict()
    for row in rows:
        missing = [k for k in (*by, *values) if k not in row]
        if missing:
            raise KeyError(f"row lacks columns {missing}: {sorted(row)}")
        groups.setdefault(tuple(_hashable(row[k]) for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(by, key))
        agg["n"] = len(members)
        for v in values:
            m, s = mean_std(float("nan") if r[v] is None else float(r[v]) for r in members)
            agg[f"{v}_mean"] = m
            agg[f"{v}_std"] = s
        out.append(agg)
    return out


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _cell(v: Any, digits: int) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3,
                   pair_std: bool = True) -> str:
    """A GitHub Markdown table; with ``pair_std`` every ``x_mean``/``x_std`` pair shows as ``x: m ± s``."""
    if not rows:
        return "_(no rows)_\n"
    cols = list(columns) if columns else list(rows[0])
    shown: list[tuple[str, str | None]] = []  # (header, std column or None)
    for c in cols:
        if pair_std and c.endswith("_std") and c[:-4] + "_mean" in cols:
            continue
        if pair_std and c.endswith("_mean") and c[:-5] + "_std" in cols:
            shown.append((c, c[:-5] + "_std"))
        else:
            shown.append((c, None))
    header = [h[:-5] if s else h for h, s in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = []
        for h, s in shown:
            if s is not None:
                cells.append(fmt_mean_std(float(row.get(h, float("nan"))), float(row.get(s, float("nan"))), digits))
            else:
                cells.append(_cell(row.get(h), digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_outputs(paths: Iterable[str | Path], overwrite: bool) -> None:
    """Fail before any work if a report file exists and ``overwrite`` is off (cells are always kept)."""
    refuse_existing(paths, overwrite, "pass --overwrite to rewrite the report (finished cells are reused either way)")


class Report:
    """Sections of Markdown text and named tables, written as ``<name>.md`` and ``<name>.json``."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = [f"# {title}\n"]
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.data: dict[str, Any] = {}

    def text(self, markdown: str) -> None:
        self.parts.append(markdown.rstrip() + "\n")

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], title: str | None = None,
              columns: Sequence[str] | None = None, digits: int = 3) -> None:
        self.tables[name] = [dict(r) for r in rows]
        self.parts.append(f"## {title or name}\n\n" + markdown_table(rows, columns, digits))

    def figure(self, path: str | Path, caption: str) -> None:
        self.parts.append(f"![{caption}]({Path(path).name})\n\n_{caption}_\n")

    def markdown(self) -> str:
        return "\n".join(self.parts)

    def write(self, folder: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
        folder = Path(folder)
        md = write_text(folder / f"{name}.md", self.markdown(), overwrite=overwrite)
        js = write_json(folder / f"{name}.json", _jsonable({"title": self.title, "tables": self.tables, **self.data}),
                        overwrite=overwrite)
        return md, js


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


class RunLogger:
    """Logs cells and tables to Weights & Biases (``kind="wandb"``, offline unless WANDB_MODE=online).

    ``kind="csv"`` logs nothing extra: the cell files and the JSON tables are the record.
    """

    def __init__(self, kind: str, folder: str | Path, name: str, config: Mapping[str, Any] | None = None,
                 enabled: bool = True) -> None:
        if kind not in ("csv", "wandb"):
            raise ValueError(f"logger must be 'csv' or 'wandb', got {kind!r}")
        self.kind = kind
        self.run = None
        if kind == "wandb" and enabled:
            import wandb

            logs = Path(folder) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            mode = os.environ.get("WANDB_MODE", "offline")
            self.run = wandb.init(project="deeparc_pl", name=name, dir=str(logs), mode=mode,
                                  config=dict(config or {}), reinit="finish_previous")
        self.step = 0

    def log_cell(self, config: Mapping[str, Any], result: Mapping[str, Any], computed: bool) -> None:
        if self.run is None:
            return
        scalars = {f"cell/{k}": v for k, v in {**config, **result}.items()
                   if isinstance(v, (int, float, str, bool)) and not isinstance(v, bool)}
        scalars["cell/computed"] = int(computed)
        self.run.log(scalars, step=self.step)
        self.step += 1

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if self.run is None or not rows:
            return
        import wandb

        cols = list(dict.fromkeys(c for r in rows for c in r))
        data = []
        for r in rows:
            data.append([str(v) if isinstance(v, (list, tuple, dict, bool)) or v is None else v
                         for v in (r.get(c) for c in cols)])
        for j in range(len(cols)):  # a column mixing numbers and text is logged as text
            if len({isinstance(row[j], str) for row in data}) > 1:
                for row in data:
                    row[j] = str(row[j])
        self.run.log({f"table/{name}": wandb.Table(columns=cols, data=data, allow_mixed_types=True)}, step=self.step)
        self.step += 1

    def log_image(self, name: str, path: str | Path) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({f"figure/{name}": wandb.Image(str(path))}, step=self.step)
        self.step += 1

    def log_tables(self, prefix: str, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Every table of a report, as ``{prefix}/{name}``."""
        for name, rows in tables.items():
            self.log_table(f"{prefix}/{name}", rows)

    def log_figures(self, folder: str | Path, files: Sequence[str]) -> None:
        """Each of ``files`` that exists under ``folder``, named by its stem."""
        for name in files:
            if (Path(folder) / name).exists():
                self.log_image(Path(name).stem, Path(folder) / name)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def line_plot(
    path: str | Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    hline: float | None = None,
    hline_label: str = "",
    ylim: tuple[float, float] | None = None,
    ax=None,
    overwrite: bool = False,
) -> Path | None:
    """One line (with std error bars) per series; an optional horizontal reference line.

    With ``ax`` given, draws into it and returns None (the caller saves the figure).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        check_writable(path, overwrite)
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, (xs, ys, err) in series.items():
        if err is not None and any(e and not math.isnan(e) for e in err):
            ax.errorbar(list(xs), list(ys), yerr=list(err), marker="o", ms=3, capsize=2, label=label)
        else:
            ax.plot(list(xs), list(ys), marker="o", ms=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="red", lw=0.9, ls="--", label=hline_label or None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1 or hline_label:
        ax.legend(fontsize=7)
    if own:
        from ..architecture.plots import save_figure

        return save_figure(fig, path, overwrite)
    return None
