"""RQ4, model re-adaption: train one located module versus the whole model (Table III).

Per seed one subject model (``model.name`` trained on ``data.*``, or ``model.weights``; the recipes
of ``deeparc enhance``/``repair`` work here) is trained and modularized; its checkpoint and architecture
are then handed to ``deeparc enhance`` / ``deeparc repair`` (:mod:`deeparc_pl.cli.readapt`), one run
per cell, so the protocol is exactly that of those commands:

* ``enhance`` (one cell per attack in ``rq4.attacks``): adversarial samples of ``readapt.samples``
  training images, the critical module located on (clean, adversarial) pairs, ``ModularEnhance``
  versus ``FullFinetune`` with the same loss, data and epochs;
* ``repair`` (one cell per drop in ``rq4.drops`` and mutant in ``range(rq4.mutants)``): a mutant whose
  training accuracy is ``drop`` lower, ``ModularRepair`` versus ``FullFinetune``.

The ``readapt.*``, ``attack.params``, ``mutate.tolerance`` and ``locate.*`` keys of those commands
apply here too. Each cell's own report is kept under ``{out}/rq4/runs/<cell key>/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..terminal import console, plain
from .cells import cell_key
from .report import Report, aggregate
from .rq2 import subject_cell, subject_configs
from .rq3 import subject_section
from .session import ReproduceSession

__all__ = ["run_rq4", "rq4_configs", "plot_time_accuracy", "PAPER_TABLE_III"]

VERSION = 1
OUTPUTS = ("rq4.md", "rq4.json", "table3_time_accuracy.png")
#: The paper's averages over its three models (Table III and its text).
PAPER_TABLE_III = {"enhance_time_change_pct": -41.8, "repair_time_change_pct": -23.9, "repair_accuracy": 0.976}
_READAPT_KEYS = ("readapt", "locate")


def _readapt_settings(cfg: DictConfig) -> dict[str, Any]:
    out = {k: plain(cfg.get(k)) for k in _READAPT_KEYS if cfg.get(k) is not None}
    if cfg.get("mutate") is not None:
        out["mutate_tolerance"] = float(cfg.mutate.tolerance)
    return out


def rq4_configs(cfg: DictConfig, subject: dict[str, Any]) -> list[dict[str, Any]]:
    r = cfg.rq4
    base = {"rq": "rq4", "version": VERSION, "subject": subject, "seed": subject["seed"],
            "settings": _readapt_settings(cfg)}
    out = []
    params = dict(plain(r.get("attack_params")) or {})
    attack = cfg.get("attack")
    if attack is not None and attack.get("method") and attack.get("params"):  # `deeparc enhance` recipes
        params.setdefault(str(attack.method), plain(attack.params))
    for method in [str(m) for m in plain(r.attacks) or []]:
        out.append({**base, "kind": "enhance", "attack": method, "params": params.get(method) or {}})
    for drop in [float(d) for d in plain(r.drops) or []]:
        for m in range(int(r.mutants)):
            out.append({**base, "kind": "repair", "variant": f"drop{drop:g}", "drop": drop, "mutant": m})
    return out


def _command_config(cfg: DictConfig, config: dict[str, Any], subject: dict[str, Any], folder: Path,
                    run_dir: Path) -> DictConfig:
    """The configuration of one ``deeparc enhance|repair`` run on the cell's subject model."""
    from ..architecture.semantic import SemanticArchitecture
    from ..cli.config import build_config

    command = config["kind"]
    arch_path = folder / (str(Path(subject["checkpoint"]).with_suffix("")) + ".architecture.json")
    if not arch_path.exists():
        SemanticArchitecture.from_dict(subject["architecture"]).save(arch_path, overwrite=True)
    sub = config["subject"]
    overrides: dict[str, Any] = {
        "seed": int(config["seed"]), "out": str(run_dir), "logger": "csv",
        "model": {"name": None, "weights": str(folder / subject["checkpoint"]), "layers": sub.get("layers")},
        "data": {**{k: v for k, v in sub["data"].items()}, "dir": cfg.data.dir, "fraction": sub["fraction"],
                 "classes": sub["classes"]},
        # re-adaption runs in the rank-0 process only (other DDP ranks stop after the subject models)
        "trainer": {**{k: v for k, v in plain(cfg.trainer).items() if k not in ("max_epochs",)},
                    "devices": 1, "strategy": "auto"},
        "architecture": str(arch_path),
        **{k: v for k, v in config["settings"].items() if k in _READAPT_KEYS},
    }
    if command == "enhance":
        overrides["attack"] = {"method": config["attack"], "params": config["params"] or {}}
    else:
        overrides["mutate"] = {"drop": config["drop"], "seed": 1000 * int(config["seed"]) + int(config["mutant"]),
                               "tolerance": config["settings"].get("mutate_tolerance", 0.02)}
    base = build_config(command)
    return OmegaConf.merge(base, OmegaConf.create(overrides))


def _readapt_cell(cfg: DictConfig, config: dict[str, Any], subject: dict[str, Any], folder: Path) -> dict[str, Any]:
    import json

    from ..cli import readapt

    command = config["kind"]
    run_dir = folder / "runs" / cell_key(config)
    cell_cfg = _command_config(cfg, config, subject, folder, run_dir)
    try:
        readapt.run(cell_cfg, overwrite=True, command=command)
    except ValueError as exc:  # e.g. a weak subject cannot lose that much accuracy: recorded, not fatal
        if command != "repair":
            raise
        console.print(f"[yellow]repair skipped[/yellow]: {exc}")
        return {"skipped": str(exc)}
    data = json.loads((run_dir / f"readapt_{command}.json").read_text(encoding="utf-8"))
    return {"rows": data["rows"], "meta": data["meta"]}


def _tables(derived: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    enh, rep, times = [], [], []
    metrics = ["trained_params", "trained_share", "acc_before", "acc_after", "heldout_after", "clean_before",
               "clean_after", "train_seconds"]
    for c, r in derived:
        if r.get("skipped"):
            continue
        by = {row["approach"]: row for row in r["rows"]}
        for row in r["rows"]:
            flat = {"approach": row["approach"], "seed": c["seed"], "module": str(row.get("module")),
                    **{m: row.get(m) for m in metrics}}
            if c["kind"] == "enhance":
                enh.append({"attack": c["attack"], **flat})
            else:
                rep.append({"drop": c["drop"], "mutant": c["mutant"], **flat})
        if "full" in by and "modular" in by and by["full"]["train_seconds"]:
            times.append({"task": c["kind"], "seed": c["seed"],
                          "time_change_pct": 100 * (by["modular"]["train_seconds"] / by["full"]["train_seconds"] - 1),
                          "acc_after_modular": by["modular"]["acc_after"], "acc_after_full": by["full"]["acc_after"]})
    out: dict[str, list[dict[str, Any]]] = {}
    if enh:
        out["enhance"] = aggregate(enh, ["attack", "approach"], [m for m in metrics if m not in ("clean_before",)])
    if rep:
        out["repair"] = aggregate(rep, ["drop", "approach"], [m for m in metrics if m != "heldout_after"])
    if times:
        t = aggregate(times, ["task"], ["time_change_pct", "acc_after_modular", "acc_after_full"])
        for row in t:
            row["paper_time_change_pct"] = PAPER_TABLE_III[f"{row['task']}_time_change_pct"]
        out["time_change"] = t
    return out


def plot_time_accuracy(derived: list[tuple[dict[str, Any], dict[str, Any]]], path: Path,
                       overwrite: bool = False) -> Path | None:
    """Per cell, modular versus full: training seconds (left) and accuracy after on the adapted set (right)."""
    from ..architecture.plots import plt, save_figure

    labels, secs, accs = [], {"modular": [], "full": []}, {"modular": [], "full": []}
    for c, r in derived:
        by = {row["approach"]: row for row in r.get("rows", [])}
        if "modular" not in by or "full" not in by:
            continue
        what = c["attack"] if c["kind"] == "enhance" else f"repair {c['drop']:g}"
        labels.append(f"{what}\ns{c['seed']}" + (f" m{c['mutant']}" if c["kind"] == "repair" else ""))
        for k in ("modular", "full"):
            secs[k].append(float(by[k]["train_seconds"] or 0.0))
            accs[k].append(float(by[k]["acc_after"] if by[k]["acc_after"] is not None else float("nan")))
    if not labels:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.3 * len(labels) + 3), 3.6))
    width = 0.38
    pos = list(range(len(labels)))
    for ax, vals, ylabel in ((axes[0], secs, "training time (s)"), (axes[1], accs, "accuracy after (adapted set)")):
        ax.bar([p - width / 2 for p in pos], vals["modular"], width, label="modular (located module)")
        ax.bar([p + width / 2 for p in pos], vals["full"], width, label="full")
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    fig.suptitle("Table III: modular versus full re-adaption")
    return save_figure(fig, path, overwrite)


def run_rq4(cfg: DictConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compute missing cells, then write ``rq4.md`` and ``rq4.json`` under ``{out}/rq4``."""
    with ReproduceSession(cfg, "rq4", OUTPUTS, overwrite) as session:
        folder, logger = session.folder, session.logger
        subj_cfgs = subject_configs(cfg, "rq4", subject_section(cfg))
        subj_res = session.subjects(cfg, subj_cfgs, subject_cell, progress)
        if session.rank != 0:
            return session.counts()
        cells = [(dc, (lambda dc=dc, sr=sr: _readapt_cell(cfg, dc, sr, folder)))
                 for sc, sr in zip(subj_cfgs, subj_res) for dc in rq4_configs(cfg, sc)]
        results = session.run(cells, progress=progress)
        tables = _tables([(c, res) for (c, _), res in zip(cells, results)])
        ra = cfg.readapt
        report = Report(f"RQ4: modular versus full re-adaption ({subj_cfgs[0]['model']} on {cfg.data.name})")
        report.text(f"{len(subj_cfgs)} subject model(s); each cell is one `deeparc enhance|repair` run on the subject "
                    f"({ra.samples} training samples, {ra.epochs} epoch(s), lr {ra.lr}, loss {ra.alpha} CE + {ra.beta} "
                    "deviation; modular = the top-located module only, full = every parameter, same loss and data). "
                    "acc_* on the adapted set (enhance: clean + adversarial; repair: the training subset), "
                    "heldout_after: adversarial samples of test images, clean_*: test images. Time: the tasks' clock.")
        titles = {"enhance": "Table III, model enhancement", "repair": "Table III, model repair",
                  "time_change": "Training time, modular versus full (paper: enhancement -41.8 %, repair -23.9 %; "
                                 "repair accuracy 0.976 on average)"}
        for name, rows in tables.items():
            report.table(name, rows, titles[name])
        if plot_time_accuracy([(c, res) for (c, _), res in zip(cells, results)], folder / OUTPUTS[2], overwrite):
            report.figure(folder / OUTPUTS[2], "Training time and accuracy after, modular versus full, per cell")
            logger.log_image("rq4/time_accuracy", folder / OUTPUTS[2])
        skipped = [res for res in results if res.get("skipped")]
        if skipped:
            report.text("Skipped repair cells: " + "; ".join(s_["skipped"] for s_ in skipped))
        report.data["cells"] = session.cell_counts(len(subj_cfgs) + len(cells), skipped=len(skipped))
        logger.log_tables("rq4", report.tables)
        md, js = report.write(folder, "rq4", overwrite=overwrite)
    session.announce(md, js)
    return {**session.counts(), "report": report}
