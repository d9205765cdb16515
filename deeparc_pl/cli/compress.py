"""``deeparc compress``: iterative pruning with and without DeepArc layer reduction, side by side.

Reads a trained checkpoint (``model.weights``) and the data (``data.*``); takes the semantic
architecture from ``architecture`` (an ``architecture.json`` of ``deeparc modularize``) or
computes it on the test split. Writes ``{out}/compress.md``, ``{out}/compress.json`` and the final
models ``{out}/compressed/{pruner}[_deeparc].ckpt``, which every command loads again through
``model.weights`` (state dict + recorded edits, no code).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from .common import console, is_primary, make_datamodule, make_model, out_dir, plain, print_table
from .modularize import KEYS as MODULARIZE_KEYS
from .modularize import obtain_model, refuse_outputs

__all__ = ["run", "KEYS", "HELP", "pruner_names"]

HELP = "iterative pruning with and without DeepArc layer reduction, side by side"
KEYS = {
    "pruner": ("lamp", "pruner plugin name, or a list of names (see `deeparc pruners`)"),
    "deeparc": ("both", "both (side by side), with (layer reduction first) or without"),
    "tolerance": (0.01, "stop when a round's test accuracy falls more than this below the original (0.01 = 1 point)"),
    "target_sparsity": (None, "stop at this share of zero weights, against the ORIGINAL prunable weights"),
    "step": (0.2, "share of the remaining weights pruned per round (0.2: remaining 0.8, 0.64, ...)"),
    "max_rounds": (20, "at most this many pruning rounds"),
    "finetune.epochs": (1, "fine-tuning epochs after each pruning round"),
    "finetune.lr": (0.01, "fine-tuning learning rate (cosine decay over the round)"),
    "finetune.optimizer": ("sgd", "sgd or adam"),
    "architecture": (None, "architecture.json from `deeparc modularize`; null: compute it on cka.split"),
    "threshold": (0.99, "similarity threshold when the architecture is computed (or re-partitioned)"),
    "method": ("progressive", "partition rule when the architecture is computed: progressive, adjacent, optimal"),
    "repartition": (False, "re-partition a given architecture.json with threshold/method"),
    "cka.estimator": ("minibatch", "CKA estimator when the architecture is computed"),
    "cka.batch_size": (256, "batch size of the CKA passes"),
    "cka.passes": (1, "shuffled passes over the data for the CKA"),
    "cka.split": ("test", "split that feeds the CKA: test, train or val"),
    "cka.samples": (None, "use only the first N samples of that split for the CKA"),
    "cka.channels_last": MODULARIZE_KEYS["cka.channels_last"],
    "reduce.k": (None, "remove only the first k layers of the Algorithm 2 order"),
    "reduce.modules": (None, "reduce only these module indices"),
    "sewing.samples": (2048, "training samples cached to fit each sewing layer"),
    "sewing.epochs": (5, "Adam epochs refining the least-squares sewing fit"),
    "sewing.lr": (0.01, "learning rate of the sewing refinement"),
    "latency.repeats": (30, "timed CPU forward passes (median reported)"),
    "latency.batch_size": (1, "samples per timed forward pass"),
    "default.epochs": (4, "no model.weights: train model.name (default resnet20) this many epochs first"),
}


def pruner_names(spec: Any) -> list[str]:
    """The pruner names of ``pruner=`` (one name, 'a,b' or a list), each checked against the installed ones."""
    from ..pruners import names_of

    return names_of(plain(spec))


def _architecture(cfg: DictConfig, model: Any, dm: Any, out: Path, overwrite: bool):
    from ..architecture.semantic import SemanticArchitecture

    if cfg.architecture:
        arch = SemanticArchitecture.load(str(cfg.architecture))
        if cfg.get("repartition"):
            arch = arch.repartition(float(cfg.threshold), str(cfg.method))
        return arch
    from ..architecture.modularize import modularize
    from .modularize import cka_loader

    console.print(f"computing the semantic architecture on the {cfg.cka.split} split (threshold {cfg.threshold})")
    arch = modularize(model, cka_loader(cfg, dm), layers=plain(cfg.model.layers), threshold=float(cfg.threshold),
                      method=str(cfg.method), estimator=str(cfg.cka.estimator),
                      channels_last=plain(cfg.cka.get("channels_last")))
    arch.meta.update({"weights": str(cfg.model.weights or ""), "data": str(cfg.data.name), "split": str(cfg.cka.split)})
    if is_primary():  # DDP ranks >= 1 compute the same architecture and write nothing
        arch.save(out / "architecture.json", overwrite=overwrite)
    return arch


def run(cfg: DictConfig, overwrite: bool = False) -> Path:
    from ..models.checkpoint import save_checkpoint
    from ..restructure.compress import compare_compression, evaluate, example_batch, write_report
    from ..restructure.cost import measure_cost

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    pl.seed_everything(int(cfg.seed), workers=True)
    names = pruner_names(cfg.pruner)
    mode = str(cfg.deeparc)
    if mode not in ("both", "with", "without"):
        raise ValueError(f"deeparc must be both, with or without, got {mode!r}")
    out = out_dir(cfg, "compress")
    tags = {"both": ["", "_deeparc"], "with": ["_deeparc"], "without": [""]}[mode]
    targets = [out / "compress.md", out / "compress.json"]
    targets += [out / "compressed" / f"{n}{t}.ckpt" for n in names for t in tags]
    if mode != "without" and not cfg.architecture:
        targets.append(out / "architecture.json")
    refuse_outputs(cfg, targets, overwrite)  # before hours of work, not after

    dm = make_datamodule(cfg)
    if cfg.model.weights:
        model, _ = make_model(cfg, dm)
    else:
        model = obtain_model(cfg, dm, overwrite)
    model.eval()
    arch = _architecture(cfg, model, dm, out, overwrite) if mode != "without" else None
    if arch is not None:
        console.print(f"architecture: {arch.num_modules} modules, {arch.num_multi_layer_modules} multi-layer, "
                      f"removes {sum(len(m) - 1 for m in arch.multi_layer_modules)} layers")
    trainer_kwargs = {k: v for k, v in plain(cfg.trainer).items() if k != "max_epochs"}
    trainer_kwargs.setdefault("enable_progress_bar", False)
    original_acc = evaluate(model, dm, trainer_kwargs)
    example = example_batch(dm, int(cfg.latency.batch_size))
    original_cost = measure_cost(model, example, latency_repeats=int(cfg.latency.repeats))
    console.print(f"[bold]original[/bold] test accuracy {original_acc:.4f}, "
                  f"{original_cost.params_total} parameters, {original_cost.macs_dense / 1e6:.2f} MMACs")
    settings = dict(
        tolerance=float(cfg.tolerance),
        target_sparsity=None if cfg.target_sparsity is None else float(cfg.target_sparsity),
        step=float(cfg.step), finetune_epochs=int(cfg.finetune.epochs), lr=float(cfg.finetune.lr),
        optimizer=str(cfg.finetune.optimizer), max_rounds=int(cfg.max_rounds),
        reduce_k=None if cfg.reduce.k is None else int(cfg.reduce.k),
        reduce_modules=plain(cfg.reduce.modules),
        sewing={"samples": int(cfg.sewing.samples), "epochs": int(cfg.sewing.epochs), "lr": float(cfg.sewing.lr)},
        trainer_kwargs=trainer_kwargs, original_acc=original_acc, seed=int(cfg.seed),
        latency_repeats=int(cfg.latency.repeats), latency_batch_size=int(cfg.latency.batch_size),
    )
    results = []
    for name in names:
        console.rule(f"pruner {name}")
        runs = compare_compression(model, name, dm, arch, deeparc=mode, log=console.print, **settings)
        for res, tag in zip(runs, tags):
            path = out / "compressed" / f"{name}{tag}.ckpt"
            if not is_primary():
                continue
            save_checkpoint(path, res.model, overwrite=overwrite, layers=plain(cfg.model.layers), info={
                "data": str(cfg.data.name), "pruner": name, "deeparc": res.deeparc, "rounds": res.rounds,
                "test_acc": res.final_acc, "original_acc": original_acc, "sparsity": 1.0 - res.remaining})
            console.print(f"wrote {path}")
        results.extend(runs)
    meta = {"model": str(cfg.model.name or ""), "weights": str(cfg.model.weights or ""), "data": str(cfg.data.name),
            "pruners": names, "deeparc": mode, **{k: v for k, v in settings.items() if k not in ("trainer_kwargs",)},
            "architecture": str(cfg.architecture or (out / "architecture.json" if arch is not None else "")),
            "modules": [list(m) for m in arch.modules] if arch is not None else None}
    if not is_primary():
        return out / "compress.json"
    rows = write_report(results, out / "compress.md", out / "compress.json", original_acc=original_acc,
                        original_cost=original_cost, meta=meta, overwrite=overwrite)
    short = ["method", "rounds", "remaining %", "test acc %", "delta acc", "params (nonzero)", "MMACs (nonzero)",
             "latency ms", "stop"]
    print_table("compression (remaining: nonzero share of the ORIGINAL prunable weights)",
                [{k: r[k] for k in short} for r in rows])
    console.print(f"wrote {out / 'compress.md'}, {out / 'compress.json'}")
    return out / "compress.json"
