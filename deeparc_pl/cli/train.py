"""``deeparc train``: train a classifier and write a checkpoint every later command takes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from torch import nn

from ..fileio import refuse_existing
from ..training import Classifier
from .common import console, is_primary, make_datamodule, make_model, make_trainer, plain

__all__ = ["run", "train_model", "KEYS", "HELP"]

HELP = "train a zoo or user model on a data set and write a checkpoint"
KEYS = {
    "train.optimizer": ("sgd", "sgd (momentum, cosine decay; the authors' recipe) or adam"),
    "train.lr": (0.05, "learning rate"),
    "train.momentum": (0.9, "SGD momentum"),
    "train.weight_decay": (5e-4, "L2 weight decay"),
    "checkpoint": (None, "where to write the trained checkpoint (default: {out}/model.ckpt)"),
}


def train_model(cfg: DictConfig, dm: Any, model: nn.Module, epochs: int | None = None) -> dict[str, float]:
    """Fit ``model`` in place with the ``train.*`` keys; return test metrics."""
    t = cfg.get("train") or {}
    task = Classifier(
        model,
        num_classes=dm.num_classes,
        optimizer=str(t.get("optimizer", "sgd")),
        lr=float(t.get("lr", 0.05)),
        momentum=float(t.get("momentum", 0.9)),
        weight_decay=float(t.get("weight_decay", 5e-4)),
    )
    extra = {"max_epochs": int(epochs)} if epochs is not None else {}
    trainer = make_trainer(cfg, "train", **extra)
    trainer.fit(task, datamodule=dm)
    results = trainer.test(task, datamodule=dm, verbose=False)
    model.eval()
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def run(cfg: DictConfig, overwrite: bool = False) -> Path:
    from ..models.checkpoint import save_checkpoint

    pl.seed_everything(int(cfg.seed), workers=True)
    dm = make_datamodule(cfg)
    if not cfg.model.name and not cfg.model.weights:
        raise ValueError("deeparc train needs model.name (a zoo name, see `deeparc models`, or package.module:Class)")
    path = Path(str(cfg.get("checkpoint") or Path(str(cfg.out)) / "model.ckpt"))
    if is_primary():  # DDP ranks >= 1 start after rank 0 may have written: they only compute
        refuse_existing([path], overwrite, "pass --overwrite to replace it, or checkpoint=<another path>")
    model, _ = make_model(cfg, dm)
    metrics = train_model(cfg, dm, model)
    if not is_primary():
        return path
    save_checkpoint(path, model, info={"data": str(cfg.data.name), "classes": dm.num_classes, **metrics}, overwrite=overwrite,
                    layers=plain(cfg.model.layers))
    console.print(f"[bold]test accuracy[/bold] {metrics.get('test_acc', float('nan')):.4f}  ->  checkpoint {path}")
    return path
