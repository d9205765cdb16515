"""RQ2, modularization semantics: what layers of one module share.

Per seed, one subject model is trained (or loaded from ``rq2.weights``) and modularized. Then, as
separate resumable cells:

* ``accuracy``: train and test accuracy of the variants that remove k intra-module layers (Algorithm 2
  order), duplicate k of them, or remove k inter-module layers (single-layer modules, model order) -
  Fig. 12 and Fig. 15;
* ``attack`` (one per method): N adversarial samples of the original model m0; the accuracy of each
  intra-module variant on them is the robustness change 1 - M/N (M: samples that still fool it) -
  Fig. 13;
* ``probe``: linear-probe accuracy of every layer and the intra/inter |difference| table - Table I.

The model of a subject cell is stored under ``{out}/rq2/models/`` so later cells (and reruns) reuse it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Subset

from ..terminal import plain
from .probe import layer_features, pair_differences, probe_accuracies
from .report import Report, RunLogger, aggregate, line_plot
from .subjects import (cka_settings, count_parameters, data_settings, fit_subject, lazy_data, make_data,
                       measure_architecture, seed_list, train_settings)
from .session import ReproduceSession

__all__ = ["subject_configs", "subject_cell", "load_subject", "rq2_subject_configs", "variant_families", "run_rq2", "summarize_rq2", "PAPER_TABLE_I"]

VERSION = 1
OUTPUTS = ("rq2.md", "rq2.json", "fig12_accuracy_intra.png", "fig13_robustness.png", "fig15_intra_vs_inter.png",
           "probe_per_layer.png")
#: Table I of the paper: mean |difference| of linear expressiveness (intra, inter) per model and data set.
PAPER_TABLE_I = {
    ("Wide-ResNet38", "MNIST"): (0.044, 0.217), ("Wide-ResNet38", "FMNIST"): (0.017, 0.123),
    ("Wide-ResNet38", "CIFAR-10"): (0.077, 0.246), ("ResNet110", "MNIST"): (0.026, 0.161),
    ("ResNet110", "FMNIST"): (0.015, 0.104), ("ResNet110", "CIFAR-10"): (0.012, 0.220),
    ("VGGNet19", "MNIST"): (0.063, 0.252), ("VGGNet19", "FMNIST"): (0.056, 0.130),
    ("VGGNet19", "CIFAR-10"): (0.002, 0.201),
}


# -- variants ------------------------------------------------------------------------------------
def variant_families() -> dict[str, tuple[Callable[..., nn.Module], Callable[..., list[str]]]]:
    """family -> (fn(model, arch, k) building a new model, fn(model, arch) listing its candidate layers)."""
    from ..restructure import variants as v

    return {"intra_remove": (v.remove_intra_module_layers, v.intra_module_candidates),
            "intra_add": (v.duplicate_layers, v.intra_module_candidates),
            "inter_remove": (v.remove_inter_module_layers, v.inter_module_candidates)}


def _variants(model: nn.Module, arch: Any, family: str, cap: int | None) -> list[tuple[int, nn.Module]]:
    """(k, variant) for k = 1 .. the number of shape-compatible layers of the family (at most ``cap``)."""
    build_variant, candidates = variant_families()[family]
    n = len(candidates(model, arch))
    if cap is not None:
        n = min(n, cap)
    return [(k, build_variant(model, arch, k)) for k in range(1, n + 1)]


# -- helpers -------------------------------------------------------------------------------------
def _subset_tensors(ds: Any, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples (all with None) as tensors, without training augmentation when the
    data set can give them so (``ArrayDataset.tensors()``)."""
    from ..readapt.evaluate import as_tensors

    if hasattr(ds, "tensors") and callable(ds.tensors):
        x, y = ds.tensors()
        return (x, y) if n is None else (x[: int(n)], y[: int(n)])
    if n is not None:
        ds = Subset(ds, range(min(int(n), len(ds))))
    return as_tensors(ds)


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from ..readapt.evaluate import accuracy

    return accuracy(model, (x, y))


def _wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from ..readapt.evaluate import predict

    pred, labels = predict(model, (x, y))
    return pred != labels


def load_subject(folder: Path, result: dict[str, Any]):
    from ..architecture.semantic import SemanticArchitecture
    from ..models.checkpoint import load_model, read_checkpoint

    path = folder / result["checkpoint"]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing but its subject cell is finished; delete the cell files of rq2 "
                                f"under {folder / 'cells'} that name it to retrain")
    saved = read_checkpoint(path)["model"].get("name")  # written by subject_cell: a zoo name, or a class the
    model, _ = load_model(path, {"name": saved})        # user named (model.name) to get it loaded there
    arch = SemanticArchitecture.from_dict(result["architecture"], str(path))
    return model, arch


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


# -- cells ---------------------------------------------------------------------------------------
def subject_configs(cfg: DictConfig, rq: str, section: Any, eval_test_samples: int | None = None
                    ) -> list[dict[str, Any]]:
    """One subject model per seed from a section with ``model``, ``weights``, ``fraction``, ``classes``."""
    common = {"rq": rq, "version": VERSION, "kind": "subject", "model": str(section.model),
              "weights": None if not section.get("weights") else str(section.weights),
              "fraction": float(section.get("fraction", 1.0)), "classes": plain(section.get("classes")),
              "data": data_settings(cfg), "cka": cka_settings(cfg), "layers": plain(cfg.model.layers),
              "eval_test_samples": eval_test_samples}
    if not common["weights"]:
        common["train"] = train_settings(cfg)
    return [{**common, "seed": s} for s in seed_list(cfg)]


def rq2_subject_configs(cfg: DictConfig) -> list[dict[str, Any]]:
    return subject_configs(cfg, "rq2", cfg.rq2, _int_or_none(cfg.rq2.eval_test_samples))


def subject_cell(cfg: DictConfig, config: dict[str, Any], folder: Path, write: bool) -> dict[str, Any]:
    """Train (or load) and modularize one subject model; its checkpoint goes to ``folder/models``."""
    from ..models import build
    from ..models.checkpoint import load_model, save_checkpoint
    from .cells import cell_key

    import pytorch_lightning as pl

    dm = make_data(cfg, config["fraction"], config["classes"], config["seed"])
    pl.seed_everything(int(config["seed"]), workers=True, verbose=False)
    if config["weights"]:
        spec = {"num_classes": dm.num_classes, "in_channels": dm.in_channels, "image_size": dm.image_size}
        if cfg.model.get("name"):  # a checkpoint of a user class loads only when the class is named
            spec = {"name": str(cfg.model.name)}
        model, _ = load_model(config["weights"], spec)
        metrics = {"test_acc": float("nan")}
    else:
        model = build(config["model"], dm.num_classes, dm.in_channels, dm.image_size)
        metrics = fit_subject(cfg, model, dm, config["seed"])
    arch = measure_architecture(cfg, model, dm, config["seed"])
    rel = Path("models") / f"{cell_key(config)}.ckpt"
    if write:
        save_checkpoint(folder / rel, model, info={"data": str(cfg.data.name), "seed": config["seed"]}, overwrite=True)
    x, y = _subset_tensors(dm.test_set, config.get("eval_test_samples"))
    return {"checkpoint": str(rel), "architecture": arch.to_dict(), "modularity": float(arch.modularity),
            "params": count_parameters(model), "test_acc": _acc(model, x, y),
            "trainer_test_acc": float(metrics.get("test_acc", float("nan")))}


def _accuracy_cell(cfg: DictConfig, subject: dict[str, Any], family: str, folder: Path, dm: Any) -> dict[str, Any]:
    model, arch = load_subject(folder, subject)
    xtr, ytr = _subset_tensors(dm.train_set, _int_or_none(cfg.rq2.eval_train_samples))
    xte, yte = _subset_tensors(dm.test_set, _int_or_none(cfg.rq2.eval_test_samples))
    cap = _int_or_none(cfg.rq2.get(f"max_{family}"))
    rows = [{"k": 0, "train_acc": _acc(model, xtr, ytr), "test_acc": _acc(model, xte, yte),
             "params": count_parameters(model)}]
    for k, variant in _variants(model, arch, family, cap):
        rows.append({"k": k, "train_acc": _acc(variant, xtr, ytr), "test_acc": _acc(variant, xte, yte),
                     "params": count_parameters(variant)})
    return {"family": family, "rows": rows}


def _attack_cell(cfg: DictConfig, subject: dict[str, Any], method: str, folder: Path, dm: Any, seed: int
                 ) -> dict[str, Any]:
    from ..readapt.attacks import generate

    model, arch = load_subject(folder, subject)
    n = int(cfg.rq2.attack_samples)
    x, y = _subset_tensors(dm.test_set, n)
    params = dict(plain((cfg.rq2.get("attack_params") or {}).get(method)) or {})
    adv = generate(model, (x, y), method, seed=seed, clip_values=getattr(dm, "clip_values", None), **params)
    with torch.no_grad():
        logits = model.eval()(adv.x_adv)
    top2 = logits.topk(2, dim=1).values
    margin = float((top2[:, 0] - top2[:, 1]).mean())
    fooled = _wrong(model, adv.x_adv, adv.y)

    def row(k: int, net: nn.Module) -> dict[str, Any]:
        wrong = _wrong(net, adv.x_adv, adv.y)
        return {"k": k, "accuracy": float(1 - wrong.float().mean()),
                "recovered": float(1 - wrong[fooled].float().mean()) if fooled.any() else float("nan")}

    rows = [row(0, model)]
    for family, sign in (("intra_remove", -1), ("intra_add", 1)):
        cap = _int_or_none(cfg.rq2.get(f"max_{family}"))
        for k, variant in _variants(model, arch, family, cap):
            rows.append(row(sign * k, variant))
    rows.sort(key=lambda r: r["k"])
    return {"attack": method, "samples": len(adv), "fooled_m0": int(fooled.sum()),
            "clean_acc": _acc(model, x, y), "margin_top2": margin,
            "linf_mean": float(adv.linf().mean()), "rows": rows}


def _probe_cell(cfg: DictConfig, subject: dict[str, Any], folder: Path, dm: Any, seed: int) -> dict[str, Any]:
    model, arch = load_subject(folder, subject)
    p = cfg.rq2.probe
    xtr, ytr = _subset_tensors(dm.train_set, int(p.train_samples))
    xte, yte = _subset_tensors(dm.test_set, int(p.test_samples))
    names, ftr = layer_features(model, xtr, arch.layer_names, pool=int(p.pool))
    _, fte = layer_features(model, xte, arch.layer_names, pool=int(p.pool))
    accs = probe_accuracies(ftr, ytr.numpy(), fte, yte.numpy(), c=float(p.C), max_iter=int(p.max_iter), seed=seed)
    acc_key = str(p.score)
    diffs = pair_differences([a[acc_key] for a in accs], arch.module_indices)
    return {"layers": names, "accuracy": accs, "score": acc_key, "modules": arch.module_indices, **diffs}


def _derived_configs(cfg: DictConfig, subject_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    base = {"rq": "rq2", "version": VERSION, "subject": subject_cfg, "seed": subject_cfg["seed"]}
    r = cfg.rq2
    out = []
    for family in ("intra_remove", "intra_add", "inter_remove"):
        out.append({**base, "kind": "accuracy", "variant": family,
                    "cap": _int_or_none(r.get(f"max_{family}")),
                    "eval": [_int_or_none(r.eval_train_samples), _int_or_none(r.eval_test_samples)]})
    for method in [str(m) for m in plain(r.attacks) or []]:
        out.append({**base, "kind": "attack", "attack": method, "samples": int(r.attack_samples),
                    "params": plain((r.get("attack_params") or {}).get(method)),
                    "caps": [_int_or_none(r.get("max_intra_remove")), _int_or_none(r.get("max_intra_add"))]})
    if r.probe.enabled:
        out.append({**base, "kind": "probe", "probe": plain(r.probe)})
    return out


# -- summary -------------------------------------------------------------------------------------
def summarize_rq2(cfg: DictConfig, subjects: list[dict[str, Any]], derived: list[tuple[dict, dict]], folder: Path,
                  logger: RunLogger | None = None, overwrite: bool = False) -> Report:
    seeds = [c["seed"] for c, _ in derived]
    report = Report(f"RQ2: modularization semantics ({cfg.rq2.model} on {cfg.data.name})")
    srows = [{"seed": s["seed"], "modularity": s["result"]["modularity"], "test_acc": s["result"]["test_acc"],
              "modules": len(s["result"]["architecture"]["modules"]),
              "multi_layer_modules": sum(len(m) > 1 for m in s["result"]["architecture"]["modules"]),
              "params": s["result"]["params"]} for s in subjects]
    report.text(f"{len(subjects)} subject model(s) (seeds {sorted(set(seeds))}), threshold {cfg.threshold} "
                f"({cfg.method}). Accuracies on the first {cfg.rq2.eval_train_samples} train / "
                f"{cfg.rq2.eval_test_samples} test samples; attacks on the first {cfg.rq2.attack_samples} test samples.")
    report.table("subjects", srows, "Subject models")
    first = subjects[0]["result"]["architecture"] if subjects else None
    if first:
        report.text("Modules of seed %d: %s" % (subjects[0]["seed"], "; ".join(
            f"[{m[0]}..{m[-1]}]" if len(m) > 1 else m[0] for m in first["modules"])))

    # Fig. 12 / 15: accuracy by variant
    acc_rows = []
    for c, res in derived:
        if c["kind"] != "accuracy":
            continue
        sign = 1 if c["variant"] == "intra_add" else -1
        for r in res["rows"]:
            acc_rows.append({"variant": c["variant"] if r["k"] else "original", "k": sign * r["k"],
                             "seed": c["seed"], "train_acc": r["train_acc"], "test_acc": r["test_acc"],
                             "params": r["params"]})
    intra = [r for r in acc_rows if r["variant"] in ("intra_remove", "intra_add", "original")]
    intra_agg = sorted(aggregate(_dedupe(intra), ["k"], ["train_acc", "test_acc"]), key=lambda r: r["k"])
    report.table("accuracy_intra", intra_agg,
                 "Fig. 12: accuracy after removing (k < 0) or duplicating (k > 0) intra-module layers (Algorithm 2 order)")
    if intra_agg:
        ks = [r["k"] for r in intra_agg]
        line_plot(folder / OUTPUTS[2], {
            "train": (ks, [r["train_acc_mean"] for r in intra_agg], [r["train_acc_std"] for r in intra_agg]),
            "test": (ks, [r["test_acc_mean"] for r in intra_agg], [r["test_acc_std"] for r in intra_agg])},
            "k (intra-module layers removed < 0 < duplicated)", "accuracy", title="Fig. 12", ylim=(0, 1.02),
            overwrite=overwrite)
        report.figure(folder / OUTPUTS[2], "Fig. 12: train/test accuracy of intra-module variants")
    inter = [r for r in acc_rows if r["variant"] in ("inter_remove", "intra_remove", "original")]
    series = {}
    cmp_rows = []
    for fam in ("intra_remove", "inter_remove"):
        rows = [dict(r, k=-r["k"]) for r in inter if r["variant"] in (fam, "original")]
        agg = sorted(aggregate(_dedupe(rows), ["k"], ["test_acc"]), key=lambda r: r["k"])
        series[fam.replace("_remove", "-module removed")] = ([r["k"] for r in agg], [r["test_acc_mean"] for r in agg],
                                                           [r["test_acc_std"] for r in agg])
        cmp_rows += [{"family": fam, **r} for r in agg]
    report.table("intra_vs_inter", cmp_rows, "Fig. 15: test accuracy removing k intra- versus inter-module layers")
    if cmp_rows:
        line_plot(folder / OUTPUTS[4], series, "layers removed k", "test accuracy", title="Fig. 15",
                  ylim=(0, 1.02), overwrite=overwrite)
        report.figure(folder / OUTPUTS[4], "Fig. 15: removing intra- versus inter-module layers")

    # Fig. 13: robustness
    att_rows, att_summary = [], []
    for c, res in derived:
        if c["kind"] != "attack":
            continue
        att_summary.append({"attack": res["attack"], "seed": c["seed"], "samples": res["samples"],
                            "fooled_m0": res.get("fooled_m0"),
                            "m0_adv_acc": res["rows"][[r["k"] for r in res["rows"]].index(0)]["accuracy"],
                            "margin_top2": res["margin_top2"], "linf_mean": res["linf_mean"]})
        for r in res["rows"]:
            att_rows.append({"attack": res["attack"], "k": r["k"], "seed": c["seed"], "robustness_change": r["accuracy"],
                             "recovered_of_fooled": r.get("recovered")})
    if att_rows:
        agg = aggregate(att_rows, ["attack", "k"], ["robustness_change", "recovered_of_fooled"])
        report.table("robustness", sorted(agg, key=lambda r: (r["attack"], r["k"])),
                     "Fig. 13: robustness change 1 - M/N on the N adversarial samples of the original model (k = 0: m0); "
                     "recovered_of_fooled: the same restricted to the samples that fool m0")
        report.table("attacks", aggregate(att_summary, ["attack"], ["fooled_m0", "m0_adv_acc", "margin_top2", "linf_mean"]),
                     "Attacks on m0 (accuracy of m0 on them; mean top-2 logit margin, paper: DeepFool 2.38, FGSM 9.4, PGD 25)")
        series = {}
        for method in dict.fromkeys(r["attack"] for r in agg):
            pts = sorted((r for r in agg if r["attack"] == method), key=lambda r: r["k"])
            series[method] = ([r["k"] for r in pts], [r["robustness_change_mean"] for r in pts],
                              [r["robustness_change_std"] for r in pts])
        line_plot(folder / OUTPUTS[3], series, "k (intra-module layers removed < 0 < duplicated)",
                  "accuracy on m0's adversarial samples (1 - M/N)", title="Fig. 13", ylim=(0, 1.02), overwrite=overwrite)
        report.figure(folder / OUTPUTS[3], "Fig. 13: robustness change of intra-module variants")

    # Table I
    probes = [(c, res) for c, res in derived if c["kind"] == "probe"]
    if probes:
        per_seed = [{"seed": c["seed"], "p_intra": res["intra"]["mean"], "p_inter": res["inter"]["mean"],
                     "intra_pairs": res["intra"]["pairs"], "inter_pairs": res["inter"]["pairs"]} for c, res in probes]
        t1 = aggregate(per_seed, [], ["p_intra", "p_inter"])
        for row in t1:
            row["model"] = str(cfg.rq2.model)
            row["data"] = str(cfg.data.name)
            row["intra_pairs"] = "/".join(str(p["intra_pairs"]) for p in per_seed)  # per seed: modules differ
            row["inter_pairs"] = "/".join(str(p["inter_pairs"]) for p in per_seed)
        report.table("table1", [{k: r[k] for k in ("model", "data", "n", "p_intra_mean", "p_intra_std", "p_inter_mean",
                                                   "p_inter_std", "intra_pairs", "inter_pairs")} for r in t1],
                     f"Table I: mean |difference| of linear-probe {probes[0][1]['score']} between layer pairs "
                     "(paper: intra 0.002-0.077, inter 0.104-0.252; cells average 0.035 vs 0.184)")
        layer_rows = []
        for c, res in probes:
            for i, (name, a) in enumerate(zip(res["layers"], res["accuracy"])):
                layer_rows.append({"layer": i, "name": name, "seed": c["seed"], "probe_train_acc": a["train_acc"],
                                   "probe_test_acc": a["test_acc"]})
        lagg = aggregate(layer_rows, ["layer", "name"], ["probe_train_acc", "probe_test_acc"])
        report.table("probe_per_layer", lagg, "Linear-probe accuracy per layer")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..architecture.plots import save_figure

        fig, ax = plt.subplots(figsize=(7, 3.4))
        line_plot(None, {"probe test acc": ([r["layer"] for r in lagg], [r["probe_test_acc_mean"] for r in lagg],
                                            [r["probe_test_acc_std"] for r in lagg])},
                  "layer", "linear-probe accuracy", title="Linear expressiveness per layer (shaded: multi-layer "
                  f"modules of seed {probes[0][0]['seed']})", ax=ax)
        for mod in probes[0][1]["modules"]:
            if len(mod) > 1:
                ax.axvspan(mod[0] - 0.4, mod[-1] + 0.4, color="tab:blue", alpha=0.12)
        save_figure(fig, folder / OUTPUTS[5], overwrite)
        report.figure(folder / OUTPUTS[5], "Linear-probe accuracy per layer")
        report.data["table1"] = t1
    if logger is not None:
        logger.log_tables("rq2", report.tables)
        logger.log_figures(folder, OUTPUTS[2:])
    return report


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The original model appears once per family and seed: keep one row per (seed, k=0)."""
    seen = set()
    out = []
    for r in rows:
        if r["k"] == 0:
            key = r["seed"]
            if key in seen:
                continue
            seen.add(key)
        out.append(r)
    return out


# -- driver --------------------------------------------------------------------------------------
def run_rq2(cfg: DictConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compute missing cells, then write ``rq2.md``, ``rq2.json`` and the figures under ``{out}/rq2``."""
    with ReproduceSession(cfg, "rq2", OUTPUTS, overwrite) as session:
        folder = session.folder
        subj_cfgs = rq2_subject_configs(cfg)
        subj_res = session.subjects(cfg, subj_cfgs, subject_cell, progress)
        if session.rank != 0:  # only training is distributed; evaluation runs on rank 0
            return session.counts()
        cells = []
        for sc, sr in zip(subj_cfgs, subj_res):
            dm_for = lazy_data(cfg, sc)
            for dc in _derived_configs(cfg, sc):
                if dc["kind"] == "accuracy":
                    fn = (lambda dc=dc, sr=sr, dm_for=dm_for: _accuracy_cell(cfg, sr, dc["variant"], folder, dm_for()))
                elif dc["kind"] == "attack":
                    fn = (lambda dc=dc, sr=sr, dm_for=dm_for: _attack_cell(cfg, sr, dc["attack"], folder, dm_for(),
                                                                            dc["seed"]))
                else:
                    fn = (lambda dc=dc, sr=sr, dm_for=dm_for: _probe_cell(cfg, sr, folder, dm_for(), dc["seed"]))
                cells.append((dc, fn))
        results = session.run(cells, progress=progress)
        subjects = [{"seed": c["seed"], "result": r} for c, r in zip(subj_cfgs, subj_res)]
        report = summarize_rq2(cfg, subjects, [(c, r) for (c, _), r in zip(cells, results)], folder, session.logger,
                               overwrite)
        report.data["cells"] = session.cell_counts(len(subj_cfgs) + len(cells))
        md, js = report.write(folder, "rq2", overwrite=overwrite)
    session.announce(md, js, "figures")
    return {**session.counts(), "report": report}
