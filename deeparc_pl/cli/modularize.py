"""``deeparc modularize``: model + data -> semantic architecture (the README's main job)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from ..architecture.callback import CKACallback
from ..architecture.partition import threshold_sweep as parse_sweep
from ..architecture.plots import plot_modularity_sweep, plot_module_sizes, plot_similarity
from ..data.samplers import ShuffledPasses
from ..fileio import refuse_existing, write_json
from ..models.checkpoint import model_spec
from ..similarity.layout import prefer_channels_last
from ..training import Classifier
from .common import (console, is_primary, make_datamodule, make_model, make_trainer, out_dir, plain, print_table,
                     refuse_spawning)
from .train import train_model

__all__ = ["run", "parse_sweep", "cka_loader", "obtain_model", "refuse_outputs", "outputs", "KEYS", "HELP"]

HELP = "layer similarity (CKA) + semantic modules -> architecture.json, similarity.png, modules.png"
KEYS = {
    "threshold": (0.99, "similarity threshold th_s in (0, 1]"),
    "thresholds": (None, "sweep 'start:stop:step' (e.g. 0.90:0.99:0.01): modularity per threshold + plot"),
    "method": ("progressive", "progressive (Algorithm 1), adjacent (authors' code) or optimal (exact Eq. 4)"),
    "cka.estimator": ("minibatch", "minibatch (unbiased HSIC_1, default), exact or paper (Eq. 1-2 as printed)"),
    "cka.batch_size": (256, "batch size of the CKA passes (authors: 256)"),
    "cka.passes": (1, "shuffled passes over the data (authors: 10)"),
    "cka.split": ("test", "which split feeds the CKA: test, train or val"),
    "cka.samples": (None, "use only the first N samples of that split"),
    "cka.channels_last": (None, "run a channels-last copy of a conv model for the CKA passes "
                                "(default: on CPU, where it is faster; false: the model as given)"),
    "default.epochs": (4, "built-in default: epochs to train the demo model when no weights are given"),
}

DEFAULT_MODEL = "resnet20"


def demo_checkpoint(cfg: DictConfig) -> Path | None:
    """Where the on-the-fly model is written when no ``model.weights`` are given (else None)."""
    return None if cfg.model.weights else Path(str(cfg.out)) / "model.ckpt"


def refuse_outputs(cfg: DictConfig, outputs: list[Path], overwrite: bool) -> None:
    """Before any work: no output file, nor the demo model's checkpoint, may exist without --overwrite.

    An existing ``model.ckpt`` in ``out`` with no ``model.weights`` would otherwise end up beside
    results computed from a different, freshly trained model."""
    if not is_primary():  # DDP ranks >= 1 start after rank 0 may have written: they only compute
        return
    demo = demo_checkpoint(cfg)
    if demo is not None and demo.exists() and not overwrite:
        raise FileExistsError(
            f"{demo} already exists and no model.weights were given, so a new demo model would be trained beside "
            f"it; pass model.weights={demo} to use it, --overwrite to replace it, or another out="
        )
    refuse_existing(outputs, overwrite, "pass --overwrite to replace them, or another out=")


def obtain_model(cfg: DictConfig, dm: Any, overwrite: bool = False):
    """The model to analyse: loaded from ``model.weights``, or trained on the fly (built-in default)
    and written to ``out/model.ckpt`` (refused up front by :func:`refuse_outputs` if it exists)."""
    if cfg.model.weights:
        model, _ = make_model(cfg, dm)
        return model
    path = demo_checkpoint(cfg)
    if not cfg.model.name:
        cfg.model.name = DEFAULT_MODEL
    model, _ = make_model(cfg, dm)
    epochs = int(cfg.get("default", {}).get("epochs", 4))
    console.print(f"[bold]no model.weights given:[/bold] training {cfg.model.name} on {cfg.data.name} for {epochs} epochs")
    metrics = train_model(cfg, dm, model, epochs=epochs)
    console.print(f"test accuracy of the trained model: {metrics.get('test_acc', float('nan')):.4f}")
    from ..models.checkpoint import save_checkpoint

    if is_primary():
        out_dir(cfg, "modularize")
        save_checkpoint(path, model, info={"data": str(cfg.data.name), **metrics}, overwrite=overwrite)
        console.print(f"wrote {path}")
    return model


def cka_loader(cfg: DictConfig, dm: Any) -> DataLoader:
    dm.setup("fit")
    dm.setup("test")
    split = str(cfg.cka.split)
    sets = {"test": dm.test_set, "train": dm.train_set, "val": dm.val_set}
    if split not in sets:
        raise ValueError(f"cka.split must be one of {sorted(sets)}, got {split!r}")
    ds = sets[split]
    if cfg.cka.samples:
        ds = Subset(ds, range(min(int(cfg.cka.samples), len(ds))))
    if len(ds) == 0:
        raise ValueError(f"the {split} split is empty")
    sampler = ShuffledPasses(ds, passes=int(cfg.cka.passes), seed=int(cfg.seed))
    return DataLoader(ds, batch_size=int(cfg.cka.batch_size), sampler=sampler)


def check(cfg: DictConfig) -> None:
    """Refuse bad settings before any training or forward pass."""
    from ..architecture.partition import check_method, validate_threshold
    from ..similarity.functional import check_estimator

    validate_threshold(cfg.threshold)
    check_method(str(cfg.method))
    check_estimator(str(cfg.cka.estimator))
    for th in parse_sweep(plain(cfg.get("thresholds"))):
        validate_threshold(th)


def outputs(cfg: DictConfig) -> list[Path]:
    out = Path(str(cfg.out))
    files = [out / "architecture.json", out / "similarity.png", out / "modules.png"]
    if parse_sweep(plain(cfg.get("thresholds"))):
        files += [out / "sweep.json", out / "modularity.png"]
    return files


def run(cfg: DictConfig, overwrite: bool = False) -> Path:
    check(cfg)
    refuse_spawning(cfg, "modularize", "the architecture measured by the CKA callback")
    refuse_outputs(cfg, outputs(cfg), overwrite)
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = make_datamodule(cfg)
    model = obtain_model(cfg, dm, overwrite)
    loader = cka_loader(cfg, dm)
    callback = CKACallback(
        layers=plain(cfg.model.layers), threshold=float(cfg.threshold), method=str(cfg.method),
        estimator=str(cfg.cka.estimator), stages=("predict",),
    )
    trainer = make_trainer(cfg, "modularize", callbacks=[callback])
    probe = torch.stack([loader.dataset[i][0] for i in range(min(4, len(loader.dataset)))])
    runner = prefer_channels_last(model, probe, plain(cfg.cka.get("channels_last")), trainer.strategy.root_device)
    trainer.predict(Classifier(runner, num_classes=dm.num_classes), dataloaders=loader, return_predictions=False)
    arch = callback.architecture
    arch.meta.update({"model": str(cfg.model.name or model_spec(model)["name"]), "weights": str(cfg.model.weights or ""),
                      "data": str(cfg.data.name), "split": str(cfg.cka.split), "batch_size": int(cfg.cka.batch_size),
                      "passes": int(cfg.cka.passes), "seed": int(cfg.seed), "channels_last": runner is not model})
    if trainer.global_rank != 0:
        return Path(str(cfg.out))
    out = out_dir(cfg, "modularize")
    arch.save(out / "architecture.json", overwrite=overwrite)
    plot_similarity(arch, out / "similarity.png", overwrite=overwrite)
    plot_module_sizes(arch, out / "modules.png", overwrite=overwrite)
    print_table(f"semantic architecture of {arch.meta['model']} ({arch.num_layers} layers)", arch.summary_rows())
    console.print(
        f"[bold]modules[/bold] {arch.num_modules} ({arch.num_multi_layer_modules} multi-layer)   "
        f"[bold]modularity Y[/bold] {arch.modularity:.3f}   threshold {arch.threshold} ({arch.method}, {arch.estimator})"
    )
    sweep = parse_sweep(plain(cfg.get("thresholds")))
    if sweep:
        rows = []
        for th in sweep:
            a = arch.repartition(threshold=th)
            rows.append({"threshold": th, "modularity": a.modularity, "modules": a.num_modules,
                         "multi_layer_modules": a.num_multi_layer_modules})
        print_table("modularity by threshold", rows)
        write_json(out / "sweep.json", rows, overwrite=overwrite)
        plot_modularity_sweep([r["threshold"] for r in rows], [r["modularity"] for r in rows],
                              out / "modularity.png", overwrite=overwrite)
    console.print(f"wrote {out / 'architecture.json'}, {out / 'similarity.png'}, {out / 'modules.png'}")
    return out / "architecture.json"
