"""Turn a command's configuration into API objects (data module, model, trainer) and print results.

Everything here is glue: no algorithm lives in the CLI.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
from omegaconf import DictConfig
from torch import nn

from ..distributed import SPAWNING_STRATEGIES, is_primary
from ..terminal import console, plain, print_table

__all__ = ["console", "make_datamodule", "make_model", "make_trainer", "print_table", "out_dir", "plain", "is_primary",
           "refuse_spawning"]


def out_dir(cfg: DictConfig, command: str) -> Path:
    path = Path(str(cfg.out))
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_datamodule(cfg: DictConfig):
    from ..data import ImageDataModule

    d = cfg.data
    return ImageDataModule(
        str(d.name),
        data_dir=d.dir,
        batch_size=int(d.batch_size),
        fraction=float(d.fraction),
        classes=plain(d.classes),
        augment=bool(d.augment),
        val_split=float(d.val_split),
        seed=int(cfg.seed),
        test_size=d.test_size,
    )


def make_model(cfg: DictConfig, dm: Any) -> tuple[nn.Module, dict]:
    """Build (and load) the model named by ``model.*``, sized for the data module."""
    from ..models.checkpoint import load_model

    spec = {"name": cfg.model.name}
    if not cfg.model.name or ":" not in str(cfg.model.name):
        spec.update(num_classes=dm.num_classes, in_channels=dm.in_channels, image_size=dm.image_size)
    if cfg.model.weights and not cfg.model.name:
        spec = {k: v for k, v in spec.items() if k != "name"}
    model, ckpt = load_model(cfg.model.weights, spec)
    if not cfg.model.layers and ckpt.get("layers"):  # the layers chosen when the checkpoint was trained
        cfg.model.layers = list(ckpt["layers"])
    if cfg.model.layers:
        from ..taps import resolve_layer_names

        resolve_layer_names(model, list(plain(cfg.model.layers)))
    return model, ckpt


def refuse_spawning(cfg: DictConfig, command: str, why: str) -> None:
    """Commands whose results live in Python objects cannot use spawned workers (ddp_spawn)."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if any(word in strategy for word in SPAWNING_STRATEGIES):
        raise ValueError(f"deeparc {command} cannot run with trainer.strategy={strategy}: {why} would stay in the "
                         "worker processes; use trainer.strategy=ddp (Lightning re-runs the command on each device)")


def make_logger(cfg: DictConfig, command: str):
    kind = str(cfg.logger)
    save_dir = str(Path(str(cfg.out)) / "logs")
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=save_dir, name=command)
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", "offline")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        return WandbLogger(project="deeparc_pl", name=command, save_dir=save_dir,
                           offline=os.environ.get("WANDB_MODE") == "offline", config=plain(cfg))
    raise ValueError(f"logger must be 'csv' or 'wandb', got {kind!r}")


def make_trainer(cfg: DictConfig, command: str, callbacks: Sequence[pl.Callback] = (), **overrides: Any) -> pl.Trainer:
    kwargs = dict(plain(cfg.trainer))
    kwargs.update(overrides)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_model_summary", False)
    return pl.Trainer(logger=make_logger(cfg, command), callbacks=list(callbacks), **kwargs)
