"""Table III of the paper: one row per training approach (modular vs full) of a re-adaption run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..fileio import write_json, write_text

__all__ = ["COLUMNS", "table_row", "markdown_table", "write_report"]

#: column key -> header (paper Table III plus what the paper leaves out)
COLUMNS: dict[str, str] = {
    "task": "Re-adaption",
    "approach": "Training",
    "drop": "Dropped acc.",
    "module": "Module",
    "trained_params": "Trained size",
    "trained_share": "Share",
    "acc_before": "Original acc. (adapted set)",
    "acc_after": "Retraining acc. (adapted set)",
    "heldout_before": "Held-out before",
    "heldout_after": "Held-out after",
    "clean_before": "Clean test before",
    "clean_after": "Clean test after",
    "train_seconds": "Training time (s)",
    "epoch_seconds": "s / epoch",
    "cached": "Prefix cached",
}


def _size(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def table_row(task: str, approach: str, readapt: Any, **metrics: Any) -> dict[str, Any]:
    """A row from a fitted :class:`~deeparc_pl.readapt.tasks.ReadaptTask` plus measured accuracies."""
    epochs = list(getattr(readapt, "epoch_seconds", []))
    row = {
        "task": task,
        "approach": approach,
        "drop": metrics.pop("drop", None),
        "module": readapt.span.index if (readapt.modular and readapt.span is not None) else "all",
        "trained_params": int(readapt.trainable_params),
        "trained_share": round(float(readapt.trainable_share), 4),
        "train_seconds": round(float(readapt.train_seconds), 2),
        "epoch_seconds": round(sum(epochs) / len(epochs), 3) if epochs else None,
        "cached": bool(getattr(readapt, "cached", False)),
    }
    for key, value in metrics.items():
        row[key] = round(float(value), 4) if isinstance(value, float) else value
    return {k: row.get(k) for k in COLUMNS if k in row}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "/"
    if key == "trained_params":
        return _size(int(value))
    if isinstance(value, float):
        return f"{value:.4f}" if key not in ("train_seconds", "epoch_seconds") else f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    keys = [k for k in COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(COLUMNS[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_report(folder: str | Path, name: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any],
                 overwrite: bool = False) -> tuple[Path, Path]:
    """``{name}.md`` (the table and how it was made) and ``{name}.json``; atomic, never clobbering."""
    folder = Path(folder)
    text = f"# {meta.get('title', name)}\n\n" + markdown_table(rows)
    details = {k: v for k, v in meta.items() if k != "title"}
    if details:
        text += "\n" + "\n".join(f"- {k}: {v}" for k, v in details.items()) + "\n"
    md = write_text(folder / f"{name}.md", text, overwrite=overwrite)
    js = write_json(folder / f"{name}.json", {"rows": list(rows), "meta": meta}, overwrite=overwrite)
    return md, js
