"""Subject models of the reproduction: data for one cell, training with Lightning, the CKA partition.

Shared by every research question so that "a ResNet trained on k classes of a fraction of the data"
means the same in RQ1 and RQ2. Training uses ``Classifier`` and a ``pl.Trainer`` built from the
``trainer.*`` keys (so ``trainer.devices=4 trainer.strategy=ddp`` scales it out); the similarity pass
runs on one process with ``deeparc_pl.modularize``.
"""
from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..terminal import plain

__all__ = ["data_settings", "train_settings", "cka_settings", "make_data", "fit_subject", "measure_architecture",
           "count_parameters", "split_of", "seed_list"]


def data_settings(cfg: DictConfig) -> dict[str, Any]:
    """The data keys that change a result (the folder does not), for cell configurations."""
    d = cfg.data
    return {"name": str(d.name), "batch_size": int(d.batch_size), "val_split": float(d.val_split),
            "augment": bool(d.augment), "test_size": None if d.test_size is None else int(d.test_size)}


def train_settings(cfg: DictConfig) -> dict[str, Any]:
    t = cfg.get("train") or {}
    return {"epochs": int(cfg.trainer.max_epochs), "optimizer": str(t.get("optimizer", "sgd")),
            "lr": float(t.get("lr", 0.05)), "momentum": float(t.get("momentum", 0.9)),
            "weight_decay": float(t.get("weight_decay", 5e-4))}


def cka_settings(cfg: DictConfig) -> dict[str, Any]:
    c = cfg.cka
    return {"estimator": str(c.estimator), "batch_size": int(c.batch_size), "passes": int(c.passes),
            "split": str(c.split), "samples": None if c.samples is None else int(c.samples),
            "threshold": float(cfg.threshold), "method": str(cfg.method)}


def lazy_data(cfg: DictConfig, subject: dict[str, Any]) -> Callable[[], Any]:
    """A zero-argument function that makes the subject's data module on first call and reuses it
    (cells that are all reused never load the data)."""
    holder: dict[str, Any] = {}

    def get() -> Any:
        if "dm" not in holder:
            holder["dm"] = make_data(cfg, subject["fraction"], subject["classes"], subject["seed"])
        return holder["dm"]

    return get


def make_data(cfg: DictConfig, fraction: float, classes: Any, seed: int):
    """An ``ImageDataModule`` for one cell, set up for fit and test."""
    from ..data import ImageDataModule

    d = cfg.data
    dm = ImageDataModule(str(d.name), data_dir=d.dir, batch_size=int(d.batch_size), fraction=float(fraction),
                         classes=plain(classes), augment=bool(d.augment), val_split=float(d.val_split), seed=int(seed),
                         test_size=None if d.test_size is None else int(d.test_size))
    dm.setup("fit")
    dm.setup("test")
    return dm


def _device(cfg: DictConfig) -> torch.device:
    acc = str(cfg.trainer.get("accelerator", "auto"))
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def fit_subject(cfg: DictConfig, model: nn.Module, dm: Any, seed: int) -> dict[str, float]:
    """Train ``model`` in place on ``dm`` with the ``train.*`` and ``trainer.*`` keys; test metrics."""
    from ..training import Classifier

    s = train_settings(cfg)
    pl.seed_everything(int(seed), workers=True, verbose=False)
    task = Classifier(model, num_classes=dm.num_classes, optimizer=s["optimizer"], lr=s["lr"],
                      momentum=s["momentum"], weight_decay=s["weight_decay"])
    kwargs = dict(plain(cfg.trainer))
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_model_summary", False)
    trainer = pl.Trainer(logger=False, **kwargs)
    trainer.fit(task, datamodule=dm)
    results = trainer.test(task, datamodule=dm, verbose=False)
    model.cpu().eval()
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    metrics["global_rank"] = int(trainer.global_rank)
    return metrics


def split_of(dm: Any, split: str):
    sets = {"test": "test_set", "train": "train_set", "val": "val_set"}
    if split not in sets:
        raise ValueError(f"split must be one of {sorted(sets)}, got {split!r}")
    ds = getattr(dm, sets[split], None)
    if ds is None:
        raise ValueError(f"the data module has no {split} split after setup()")
    return ds


def measure_architecture(cfg: DictConfig, model: nn.Module, dm: Any, seed: int):
    """The semantic architecture of ``model`` from ``cka.*`` settings (shuffled passes, fixed seed)."""
    from ..architecture.modularize import modularize
    from ..data.samplers import ShuffledPasses

    c = cka_settings(cfg)
    ds = split_of(dm, c["split"])
    if c["samples"]:
        ds = Subset(ds, range(min(c["samples"], len(ds))))
    if len(ds) == 0:
        raise ValueError(f"the {c['split']} split is empty")
    loader = DataLoader(ds, batch_size=c["batch_size"], sampler=ShuffledPasses(ds, passes=c["passes"], seed=int(seed)))
    device = _device(cfg)
    net = model.to(device)
    try:
        arch = modularize(net, loader, layers=plain(cfg.model.layers), threshold=c["threshold"], method=c["method"],
                          estimator=c["estimator"], device=device, channels_last=plain(cfg.cka.get("channels_last")))
    finally:
        model.cpu()
    return arch


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def seed_list(cfg: DictConfig) -> list[int]:
    """``seeds`` as a list of ints (default: ``[seed]``)."""
    seeds = plain(cfg.seeds)
    if seeds is None:
        seeds = [int(cfg.seed)]
    if isinstance(seeds, int):
        seeds = [seeds]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty")
    return seeds

