"""RQ3, model restructure: iterative pruning with and without DeepArc layer reduction (Table II).

Takes the keys of ``deeparc compress`` (``pruner``, ``deeparc``, ``tolerance``, ``step``,
``max_rounds``, ``finetune.*``, ``reduce.*``, ``sewing.*``, ``latency.*``), so its recipes run here
too: ``deeparc reproduce rq3 --config recipes/rq3_cpu.yaml seeds=[0,1,2]``. Per seed one subject
model (``model.name`` trained on ``data.*``, or ``model.weights``) is trained and modularized; each
(pruner, with/without DeepArc) run of :func:`deeparc_pl.restructure.compress.compress` is one cell.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..terminal import console, plain
from .report import Report, aggregate
from .rq2 import load_subject, subject_cell, subject_configs
from .session import ReproduceSession
from .subjects import lazy_data

__all__ = ["run_rq3", "rq3_configs", "subject_section", "plot_rounds", "PAPER_TABLE_II"]

VERSION = 1
OUTPUTS = ("rq3.md", "rq3.json", "table2_rounds.png")
#: Table II of the paper (ResNet on CIFAR-10): pruner -> (compression rate %, iterations, accuracy %),
#: without and with DeepArc.
PAPER_TABLE_II = {
    "lamp": ((13.01, 8, 93.24), (13.90, 7, 92.99)),
    "global": ((13.43, 9, 93.77), (14.53, 7, 92.65)),
    "uniform_plus": ((26.23, 5, 91.81), (27.14, 5, 92.36)),
    "erk": ((26.23, 5, 87.29), (29.79, 4, 89.11)),
}


def _settings(cfg: DictConfig) -> dict[str, Any]:
    return {
        "tolerance": float(cfg.tolerance),
        "target_sparsity": None if cfg.target_sparsity is None else float(cfg.target_sparsity),
        "step": float(cfg.step), "finetune_epochs": int(cfg.finetune.epochs), "lr": float(cfg.finetune.lr),
        "optimizer": str(cfg.finetune.optimizer), "max_rounds": int(cfg.max_rounds),
        "reduce_k": None if cfg.reduce.k is None else int(cfg.reduce.k),
        "reduce_modules": plain(cfg.reduce.modules),
        "sewing": {"samples": int(cfg.sewing.samples), "epochs": int(cfg.sewing.epochs), "lr": float(cfg.sewing.lr)},
        "latency_repeats": int(cfg.latency.repeats), "latency_batch_size": int(cfg.latency.batch_size),
    }


def subject_section(cfg: DictConfig) -> DictConfig:
    """The subject model of RQ3/RQ4: ``model.name`` (default resnet20) or ``model.weights`` on ``data.*``."""
    return OmegaConf.create({"model": str(cfg.model.name or "resnet20"), "weights": cfg.model.weights,
                             "fraction": float(cfg.data.fraction), "classes": plain(cfg.data.classes)})


def rq3_configs(cfg: DictConfig, subject: dict[str, Any]) -> list[dict[str, Any]]:
    from ..pruners import names_of as pruner_names

    mode = str(cfg.deeparc)
    if mode not in ("both", "with", "without"):
        raise ValueError(f"deeparc must be both, with or without, got {mode!r}")
    flags = {"both": [False, True], "with": [True], "without": [False]}[mode]
    return [{"rq": "rq3", "version": VERSION, "kind": "compress", "subject": subject, "seed": subject["seed"],
             "method": name, "deeparc": flag, "settings": _settings(cfg)}
            for name in pruner_names(plain(cfg.pruner)) for flag in flags]


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tuning runs in the rank-0 process only (other DDP ranks stop after the subject models)."""
    kw = {k: v for k, v in plain(cfg.trainer).items() if k != "max_epochs"}
    kw.setdefault("enable_progress_bar", False)
    if int(kw.get("devices", 1) or 1) != 1 or str(kw.get("strategy", "auto")).startswith("ddp"):
        kw.update(devices=1, strategy="auto")
    return kw


def _compress_cell(cfg: DictConfig, config: dict[str, Any], subject_result: dict[str, Any], folder: Path,
                   dm: Any) -> dict[str, Any]:
    from ..restructure.compress import compress

    model, arch = load_subject(folder, subject_result)
    s = dict(config["settings"])
    res = compress(model, config["method"], dm, arch if config["deeparc"] else None, trainer_kwargs=_trainer_kwargs(cfg),
                   seed=int(config["seed"]), log=console.print, **s)
    out = res.to_dict()
    out["label"] = res.label
    return out


def _table2(derived: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[list[dict], list[dict]]:
    rows = []
    for c, r in derived:
        cost = r.get("cost") or {}
        rows.append({"pruner": c["method"], "deeparc": c["deeparc"], "seed": c["seed"],
                     "remaining_pct": 100 * r["remaining"], "rounds": r["rounds"], "test_acc_pct": 100 * r["final_acc"],
                     "original_acc_pct": 100 * r["original_acc"], "seconds": r["seconds"],
                     "layers_removed": len((r.get("reduction") or {}).get("removed", []) or []),
                     "params_nonzero": cost.get("params_nonzero", float("nan")),
                     "mmacs_nonzero": cost.get("macs_nonzero", float("nan")) / 1e6,
                     "latency_ms": cost.get("latency_ms", float("nan"))})
    agg = aggregate(rows, ["pruner", "deeparc"], ["remaining_pct", "rounds", "test_acc_pct", "original_acc_pct",
                                                  "seconds", "layers_removed", "params_nonzero", "mmacs_nonzero",
                                                  "latency_ms"])
    for row in agg:
        paper = PAPER_TABLE_II.get(row["pruner"])
        if paper:
            rate, iters, acc = paper[1 if row["deeparc"] else 0]
            row.update({"paper_rate_pct": rate, "paper_rounds": iters, "paper_acc_pct": acc})
    deltas = []
    by = {(r["pruner"], r["seed"], r["deeparc"]): r for r in rows}
    for (p, s, flag), r in by.items():
        if flag and (p, s, False) in by:
            base = by[(p, s, False)]
            deltas.append({"pruner": p, "seed": s, "d_remaining_pct": r["remaining_pct"] - base["remaining_pct"],
                           "d_rounds": r["rounds"] - base["rounds"], "d_acc_pct": r["test_acc_pct"] - base["test_acc_pct"],
                           "d_seconds": r["seconds"] - base["seconds"]})
    dagg = aggregate(deltas, ["pruner"], ["d_remaining_pct", "d_rounds", "d_acc_pct", "d_seconds"]) if deltas else []
    return agg, dagg


def plot_rounds(derived: list[tuple[dict[str, Any], dict[str, Any]]], path: Path, overwrite: bool = False) -> Path:
    """Test accuracy against remaining weights, round by round, per pruner (solid: plain, dashed:
    DeepArc reduction first; x: a rejected round). The first seed of each pruner is drawn."""
    from ..architecture.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors: dict[str, Any] = {}
    drawn: set[tuple[str, bool]] = set()
    step = 0.2
    for c, r in derived:
        key = (c["method"], bool(c["deeparc"]))
        if key in drawn:
            continue
        drawn.add(key)
        color = colors.setdefault(c["method"], f"C{len(colors)}")
        step = float(c["settings"]["step"])
        hist = r.get("history") or []
        start = r.get("start_remaining")
        if start is None:  # cells written before start_remaining was recorded
            start = hist[0]["remaining"] / (1.0 - step) if hist and c["deeparc"] else 1.0
        kept = [(100 * start, 100 * r["start_acc"])] + [(100 * h["remaining"], 100 * h["test_acc"])
                                                         for h in hist if h["accepted"]]
        style = "--" if c["deeparc"] else "-"
        ax.plot(*zip(*kept), style, marker="o", ms=3, color=color,
                label=f"{c['method']}{' + DeepArc' if c['deeparc'] else ''}")
        for h in hist:
            if not h["accepted"]:
                ax.plot([100 * h["remaining"]], [100 * h["test_acc"]], "x", color=color, ms=7)
    if derived:
        floor = 100 * (derived[0][1]["original_acc"] - float(derived[0][0]["settings"]["tolerance"]))
        ax.axhline(floor, color="grey", lw=0.8, ls=":", label="tolerance floor")
    ax.invert_xaxis()
    ax.set_xlabel("remaining prunable weights (% of the original)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Iterative pruning, {100 * step:.0f} % of the remaining weights per round")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path, overwrite)


def run_rq3(cfg: DictConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compute missing cells, then write ``rq3.md`` and ``rq3.json`` under ``{out}/rq3``."""
    with ReproduceSession(cfg, "rq3", OUTPUTS, overwrite) as session:
        folder, logger = session.folder, session.logger
        subj_cfgs = subject_configs(cfg, "rq3", subject_section(cfg), None if cfg.data.test_size is None
                                    else int(cfg.data.test_size))
        subj_res = session.subjects(cfg, subj_cfgs, subject_cell, progress)
        if session.rank != 0:
            return session.counts()
        cells = []
        for sc, sr in zip(subj_cfgs, subj_res):
            dm_for = lazy_data(cfg, sc)
            for dc in rq3_configs(cfg, sc):
                cells.append((dc, (lambda dc=dc, sr=sr, dm_for=dm_for: _compress_cell(cfg, dc, sr, folder, dm_for()))))
        results = session.run(cells, progress=progress)
        derived = [(c, r) for (c, _), r in zip(cells, results)]
        table, deltas = _table2(derived)
        report = Report(f"RQ3: compression with and without DeepArc ({subj_cfgs[0]['model']} on {cfg.data.name})")
        report.text(f"{len(subj_cfgs)} subject model(s); every round prunes {100 * float(cfg.step):.0f} % of the "
                    f"remaining weights and fine-tunes {cfg.finetune.epochs} epoch(s); a round is rejected when test "
                    f"accuracy falls more than {cfg.tolerance} below the original. remaining_pct is the paper's "
                    "'compression rate' (nonzero share of the original prunable weights).")
        report.table("table2", table, "Table II: compression with/without DeepArc (mean ± std over seeds; paper_* "
                     "columns: the paper's ResNet/CIFAR-10 numbers)")
        if deltas:
            report.table("deltas", deltas, "With minus without DeepArc, paired by seed (paper: iterations -1 on "
                         "average, 6.75 -> 5.75)")
        plot_rounds(derived, folder / OUTPUTS[2], overwrite)
        report.figure(folder / OUTPUTS[2], "Test accuracy against remaining weights, round by round (x: rejected)")
        report.data["cells"] = session.cell_counts(len(subj_cfgs) + len(cells))
        logger.log_tables("rq3", report.tables)
        logger.log_image("rq3/rounds", folder / OUTPUTS[2])
        md, js = report.write(folder, "rq3", overwrite=overwrite)
    session.announce(md, js)
    return {**session.counts(), "report": report}
