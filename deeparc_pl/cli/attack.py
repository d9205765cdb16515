"""``deeparc attack``: adversarial samples for a model, written to a file ``enhance`` reads."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from .common import console, is_primary, make_datamodule, plain, print_table

__all__ = ["run", "split_tensors", "KEYS", "HELP"]

HELP = "adversarial samples (fgsm, pgd, deepfool, cw) for a model, written to a file"
KEYS = {
    "attack.method": ("fgsm", "fgsm, pgd, deepfool or cw (Carlini-Wagner L2), through ART"),
    "attack.params": ({}, "attack options, e.g. attack.params.eps=0.05 (absolute; defaults scale with the input range)"),
    "attack.limit": (1000, "attack the first N samples of the split (paper: 1,000)"),
    "attack.split": ("train", "which split to attack: train, val or test"),
    "attack.file": (None, "where to write the set (default: {out}/adversarial_{method}_{split}.pt)"),
    "default.epochs": (4, "built-in default: epochs to train the demo model when no model.weights are given"),
}


def split_tensors(dm: Any, split: str, limit: int | None = None):
    """``(x, y)`` of a data module split, normalised, no augmentation, first ``limit`` samples."""
    dm.setup("fit")
    dm.setup("test")
    sets = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}
    if split not in sets:
        raise ValueError(f"split must be one of {sorted(sets)}, got {split!r}")
    ds = sets[split]
    if ds is None or len(ds) == 0:
        raise ValueError(f"the {split} split is empty")
    x, y = ds.tensors() if hasattr(ds, "tensors") else _as(ds)
    if limit:
        x, y = x[: int(limit)], y[: int(limit)]
    return x, y


def _as(ds: Any):
    from ..readapt.evaluate import as_tensors

    return as_tensors(ds)


def run(cfg: DictConfig, overwrite: bool = False) -> Path:
    from ..readapt.attacks import generate
    from ..readapt.evaluate import accuracy
    from .modularize import obtain_model, refuse_outputs

    a = cfg.attack
    path = Path(str(a.file)) if a.file else Path(str(cfg.out)) / f"adversarial_{a.method}_{a.split}.pt"
    refuse_outputs(cfg, [path], overwrite)
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = make_datamodule(cfg)
    model = obtain_model(cfg, dm, overwrite)
    x, y = split_tensors(dm, str(a.split), a.limit)
    params = dict(plain(a.params) or {})
    adv = generate(model, (x, y), str(a.method), clip_values=tuple(dm.clip_values), seed=int(cfg.seed), **params)
    if not is_primary():  # DDP ranks >= 1 (when the demo model was trained on several devices) only compute
        return path
    adv.save(path, overwrite=overwrite)
    print_table(f"{a.method} on {len(adv)} {a.split} samples", [{
        "samples": len(adv),
        "clean_acc": accuracy(model, (adv.x, adv.y)),
        "adversarial_acc": accuracy(model, (adv.x_adv, adv.y)),
        "mean_linf": float(adv.linf().mean()),
    }])
    console.print(f"wrote {path}")
    return path
