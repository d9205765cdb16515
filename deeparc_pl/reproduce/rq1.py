"""RQ1, modularization prevalence: modularity Y versus model size, data size, task scale and threshold.

One cell = one ResNet of a given depth trained on a fraction of the training data restricted to the
first k classes, with one seed; its layer similarity matrix is stored in the cell, so the threshold
sweep (Fig. 11) repartitions the stored matrices without any new forward pass. The summary fits Eq. 6
(see :mod:`.regression` for the encoding) and draws Fig. 9, 10 and 11 with the line Y = 1/4.

``rq1.design``: ``full`` is the paper's factorial grid (models x fractions x classes x seeds);
``axes`` varies one variable at a time around the middle level of the others (1 + 3 (L - 1) cells per
seed for L levels), a cheap design that still identifies the three slopes.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig

from ..terminal import plain
from .regression import comparison_rows, encode_levels, fit_eq6, univariate_fit
from .report import Report, RunLogger, aggregate, line_plot
from .subjects import (cka_settings, count_parameters, data_settings, fit_subject, make_data, measure_architecture,
                       seed_list, train_settings)
from .session import ReproduceSession

__all__ = ["rq1_configs", "rq1_cell", "summarize_rq1", "run_rq1", "HIGH_MODULARITY", "stage_boundaries"]

VERSION = 1
HIGH_MODULARITY = 0.25
OUTPUTS = ("rq1.md", "rq1.json", "fig9_modularity_vs_variables.png", "fig10_module_sizes.png",
           "fig11_modularity_vs_threshold.png")


def _levels(cfg: DictConfig) -> tuple[list[str], list[float], list[int]]:
    r = cfg.rq1
    models = [str(m) for m in plain(r.models)]
    fractions = [float(f) for f in plain(r.fractions)]
    classes = [int(k) for k in plain(r.classes)]
    for name, vals in (("rq1.models", models), ("rq1.fractions", fractions), ("rq1.classes", classes)):
        if not vals:
            raise ValueError(f"{name} is empty")
        if len(set(vals)) != len(vals):
            raise ValueError(f"{name} repeats values: {vals}")
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"rq1.fractions must lie in (0, 1], got {fractions}")
    if any(k < 2 for k in classes):
        raise ValueError(f"rq1.classes must be >= 2 (first k classes), got {classes}")
    return models, sorted(fractions), sorted(classes)


def rq1_configs(cfg: DictConfig) -> list[dict[str, Any]]:
    """Every cell configuration of the grid, in run order (seed-major so partial runs are balanced)."""
    models, fractions, classes = _levels(cfg)
    design = str(cfg.rq1.design)
    if design == "full":
        points = list(itertools.product(models, fractions, classes))
    elif design == "axes":
        mid = (models[(len(models) - 1) // 2], fractions[(len(fractions) - 1) // 2], classes[(len(classes) - 1) // 2])
        points = [mid]
        for axis, levels in enumerate((models, fractions, classes)):
            for v in levels:
                p = list(mid)
                p[axis] = v
                if tuple(p) not in points:
                    points.append(tuple(p))
    else:
        raise ValueError(f"rq1.design must be 'full' or 'axes', got {design!r}")
    common = {"rq": "rq1", "version": VERSION, "data": data_settings(cfg), "train": train_settings(cfg),
              "cka": cka_settings(cfg), "layers": plain(cfg.model.layers)}
    return [{**common, "model": m, "fraction": f, "classes": k, "seed": s}
            for s in seed_list(cfg) for (m, f, k) in points]


def rq1_cell(cfg: DictConfig, config: dict[str, Any]) -> dict[str, Any]:
    """Train one subject model, measure its layer similarity; everything later figures need."""
    from ..models import build

    dm = make_data(cfg, config["fraction"], config["classes"], config["seed"])
    import pytorch_lightning as pl

    pl.seed_everything(int(config["seed"]), workers=True, verbose=False)
    model = build(config["model"], dm.num_classes, dm.in_channels, dm.image_size)
    metrics = fit_subject(cfg, model, dm, config["seed"])
    arch = measure_architecture(cfg, model, dm, config["seed"])
    return {
        "modularity": float(arch.modularity),
        "num_modules": int(arch.num_modules),
        "num_layers": int(arch.num_layers),
        "params": count_parameters(model),
        "test_acc": float(metrics.get("test_acc", float("nan"))),
        "train_samples": int(len(dm.train_set)),
        "cka_samples": int(arch.meta.get("samples", 0)),
        "layer_names": list(arch.layer_names),
        "modules": [list(m) for m in arch.module_indices],
        "similarity": np.round(arch.similarity, 6).tolist(),
    }


def stage_boundaries(layer_names: Sequence[str]) -> list[float]:
    """Positions between layers whose parent module differs (ResNet stages: ``layer1.*`` | ``layer2.*``)."""
    parents = [n.rsplit(".", 1)[0] if "." in n else n for n in layer_names]
    return [i - 0.5 for i in range(1, len(parents)) if parents[i] != parents[i - 1]]


def _architecture(result: dict[str, Any], threshold: float, method: str):
    from ..architecture.semantic import SemanticArchitecture

    return SemanticArchitecture.from_similarity(result["layer_names"], np.asarray(result["similarity"]), threshold, method)


def _thresholds(cfg: DictConfig) -> list[float]:
    from ..architecture.partition import threshold_sweep as parse_sweep

    return parse_sweep(plain(cfg.rq1.thresholds))


def summarize_rq1(cfg: DictConfig, records: list[tuple[dict[str, Any], dict[str, Any]]], folder: Path,
                  logger: RunLogger | None = None, overwrite: bool = False) -> Report:
    """Tables (cells, regression, threshold sweep) and Fig. 9-11 from finished cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..architecture.plots import save_figure

    models, fractions, classes = _levels(cfg)
    method = str(cfg.method)
    rows = []
    for config, result in records:
        rows.append({"model": config["model"], "params": result["params"], "fraction": config["fraction"],
                     "classes": config["classes"], "seed": config["seed"], "modularity": result["modularity"],
                     "modules": result["num_modules"], "layers": result["num_layers"], "test_acc": result["test_acc"]})
    report = Report(f"RQ1: modularization prevalence ({cfg.data.name})")
    n_cells = len(rows)
    high = sum(r["modularity"] >= HIGH_MODULARITY for r in rows)
    report.text(
        f"{n_cells} cells ({len(seed_list(cfg))} seed(s), design `{cfg.rq1.design}`), threshold {cfg.threshold} "
        f"({method}, {cfg.cka.estimator} CKA on {cfg.cka.samples or 'all'} {cfg.cka.split} samples, "
        f"{cfg.cka.passes} pass(es)), {cfg.trainer.max_epochs} epoch(s) of training. "
        f"High modularity (Y >= 1/4): {high} of {n_cells} cells."
    )
    per_cell = aggregate(rows, ["model", "params", "fraction", "classes"], ["modularity", "test_acc", "modules"])
    report.table("cells", per_cell, "Modularity Y per configuration (mean ± std over seeds)")

    # Eq. 6 on every measured point (seeds not averaged, as the paper's 1250 models)
    ms = encode_levels([r["model"] for r in rows], models, sort=False)
    ds = encode_levels([r["fraction"] for r in rows], fractions)
    ts = encode_levels([r["classes"] for r in rows], classes)
    y = np.array([r["modularity"] for r in rows])
    x = np.stack([ms, ds, ts], axis=1)
    fit = None
    try:
        fit = fit_eq6(x, y, encoding="levels: i-th of L levels -> (i+1)/L (MS by the listed model order)")
    except ValueError as exc:
        report.text(f"_Eq. 6 not fitted: {exc}_")
    if fit is not None:
        report.text(
            "## Eq. 6 (multiple linear regression)\n\n"
            f"Measured: **{fit.equation()}** (R² = {fit.r2:.3f}, n = {fit.n}).  \n"
            "Paper: Y = 0.78 MS - 0.10 DS - 0.16 TS + 0.31.  \n"
            "Authors' released results (NOTES): Y = 0.69 MS - 0.05 DS - 0.15 TS + 0.04.  \n"
            "Encoding: the i-th of a variable's L levels (i = 0 .. L-1) maps to (i+1)/L, from 1/L to 1 "
            "(MS: model list order "
            f"{models}; DS: fractions {fractions}; TS: first k classes {classes}). The encodings of the paper "
            "are unknown, so compare signs and ranking, not values."
        )
        report.table("eq6", comparison_rows(fit), "Eq. 6 coefficients beside the paper's")
        report.data["eq6"] = fit.to_dict()

    # Fig. 9: Y against each variable, averaged over the other two and the seeds
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    uni_rows = []
    for ax, (name, col, levels, enc) in zip(axes, (("MS", "model", models, ms), ("DS", "fraction", fractions, ds),
                                                   ("TS", "classes", classes, ts))):
        means, stds, xs = [], [], []
        for lv in levels:
            vals = [r["modularity"] for r in rows if r[col] == lv]
            if vals:
                xs.append((levels.index(lv) + 1) / len(levels))
                means.append(float(np.mean(vals)))
                stds.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
        slope, icpt = univariate_fit(enc, y)
        uni_rows.append({"variable": name, "levels": [str(v) for v in levels], "slope": slope, "intercept": icpt})
        line_plot(None, {f"Y by {name}": (xs, means, stds)}, f"{name} (encoded, levels {levels})", "modularity Y",
                  title=f"{name}: slope {slope:+.3f}", hline=HIGH_MODULARITY, hline_label="Y = 1/4", ylim=(0, 1.02), ax=ax)
        if not np.isnan(slope):
            lo, hi = float(min(enc)), float(max(enc))
            ax.plot([lo, hi], [icpt + slope * lo, icpt + slope * hi], color="gray", lw=0.8, ls=":", label="fit")
    fig.suptitle("Fig. 9: modularity Y versus model size, data size and task scale")
    fig.tight_layout()
    save_figure(fig, folder / OUTPUTS[2], overwrite)
    report.table("univariate", uni_rows, "Univariate slopes (Fig. 9)")
    report.figure(folder / OUTPUTS[2], "Fig. 9: Y versus MS, DS, TS (red: Y = 1/4)")

    # Fig. 10: module size by position, one panel per model
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        recs = [res for cfg_, res in records if cfg_["model"] == m]
        if not recs:
            continue
        for res in recs:
            starts = [mod[0] for mod in res["modules"]]
            sizes = [len(mod) for mod in res["modules"]]
            ax.scatter(starts, sizes, s=10, alpha=0.35, color="tab:blue")
        for b in stage_boundaries(recs[0]["layer_names"]):
            ax.axvline(b, color="red", lw=0.8, ls="--")
        ax.set_title(f"{m} ({len(recs)} cells)", fontsize=9)
        ax.set_xlabel("first layer of module")
        ax.set_ylabel("module size (layers)")
        ax.set_ylim(0, max(len(mod) for res in recs for mod in res["modules"]) + 1)
    fig.suptitle(f"Fig. 10: module size by position (th={cfg.threshold}; red: stage boundaries)")
    fig.tight_layout()
    save_figure(fig, folder / OUTPUTS[3], overwrite)
    report.figure(folder / OUTPUTS[3], "Fig. 10: module size by position")
    position_rows = []
    for m in models:
        recs = [res for cfg_, res in records if cfg_["model"] == m]
        if not recs:
            continue
        n = recs[0]["num_layers"]
        thirds = [0, 0, 0]
        for res in recs:
            for mod in res["modules"]:
                if len(mod) > 1:
                    for i in mod:
                        thirds[min(3 * i // n, 2)] += 1
        total = sum(thirds) or 1
        bounds = stage_boundaries(recs[0]["layer_names"])
        boundary_single = _boundary_single_share(recs, bounds)
        position_rows.append({"model": m, "multi_in_first_third": thirds[0] / total,
                              "multi_in_middle_third": thirds[1] / total, "multi_in_last_third": thirds[2] / total,
                              "stage_first_block_single": boundary_single})
    report.table("positions", position_rows,
                 "Where layers of multi-layer modules sit (share by third of depth); share of stage-entry blocks "
                 "that are single-layer modules")

    # Fig. 11: Y against threshold (repartition of the stored matrices)
    ths = _thresholds(cfg)
    sweep_rows = []
    series = {}
    for m in models:
        recs = [res for cfg_, res in records if cfg_["model"] == m]
        if not recs:
            continue
        means, stds = [], []
        for th in ths:
            vals = [_architecture(res, th, method).modularity for res in recs]
            mu = float(np.mean(vals))
            sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            means.append(mu)
            stds.append(sd)
            sweep_rows.append({"model": m, "threshold": th, "modularity_mean": mu, "modularity_std": sd, "n": len(vals)})
        series[m] = (ths, means, stds)
    if ths:
        line_plot(folder / OUTPUTS[4], series, "threshold th_s", "modularity Y", title="Fig. 11: Y versus threshold",
                  hline=HIGH_MODULARITY, hline_label="Y = 1/4", ylim=(0, 1.02), overwrite=overwrite)
        report.table("threshold_sweep", sweep_rows, "Modularity by threshold (Fig. 11; no new forward passes)")
        report.figure(folder / OUTPUTS[4], "Fig. 11: Y versus threshold")
    if logger is not None:
        logger.log_tables("rq1", report.tables)
        logger.log_figures(folder, OUTPUTS[2:])
        if fit is not None and logger.run is not None:
            logger.run.summary.update({f"eq6/{k}": v for k, v in {**fit.coef, "intercept": fit.intercept, "r2": fit.r2}.items()})
    return report


def _boundary_single_share(recs: list[dict[str, Any]], bounds: list[float]) -> float:
    """Share of stage-entry blocks (first block after a boundary) that form single-layer modules."""
    entries = [int(b + 0.5) for b in bounds]
    if not entries:
        return float("nan")
    hits = total = 0
    for res in recs:
        size_of = {i: len(mod) for mod in res["modules"] for i in mod}
        for e in entries:
            total += 1
            hits += size_of.get(e, 1) == 1
    return hits / total


def run_rq1(cfg: DictConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compute missing cells, then write ``rq1.md``, ``rq1.json`` and Fig. 9-11 under ``{out}/rq1``."""
    with ReproduceSession(cfg, "rq1", OUTPUTS, overwrite) as session:
        folder = session.folder
        configs = rq1_configs(cfg)
        results = session.run([(c, (lambda c=c: rq1_cell(cfg, c))) for c in configs], progress=progress)
        if session.rank != 0:
            return session.counts()
        report = summarize_rq1(cfg, list(zip(configs, results)), folder, session.logger, overwrite)
        report.data["cells"] = session.cell_counts(len(configs))
        md, js = report.write(folder, "rq1", overwrite=overwrite)
    session.announce(md, js, "figures")
    return {**session.counts(), "report": report}
