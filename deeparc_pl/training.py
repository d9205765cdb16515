"""``Classifier``: the one LightningModule that trains, evaluates and predicts with any classifier."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F

from .distributed import PaddingTracker

__all__ = ["Classifier"]


class Classifier(pl.LightningModule):
    """Wrap any ``nn.Module`` that maps images to logits.

    SGD with momentum and cosine decay over ``trainer.max_epochs`` (the authors' recipe), or Adam.
    Accuracy is a torchmetrics metric, so it is reduced correctly under DDP, and validation and test
    accuracy skip the repeated samples a ``DistributedSampler`` pads the last batches with, so they
    equal one process's.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.model = model
        num_classes = num_classes or getattr(model, "num_classes", None)
        if not num_classes:
            raise ValueError("num_classes is unknown: pass Classifier(model, num_classes=...)")
        self.save_hyperparameters(ignore=["model"])
        metric = torchmetrics.classification.MulticlassAccuracy
        self.train_acc = metric(num_classes, average="micro")
        self.val_acc = metric(num_classes, average="micro")
        self.test_acc = metric(num_classes, average="micro")
        self._padding = PaddingTracker()

    def on_train_epoch_start(self) -> None:
        # Lightning keeps sub-module modes as it finds them; a loaded model may sit in eval mode.
        self.model.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_validation_epoch_start(self) -> None:
        self._padding.reset()

    def on_test_epoch_start(self) -> None:
        self._padding.reset()

    def _real(self, stage: str, dataloader_idx: int, n: int, device: torch.device) -> torch.Tensor | None:
        """Mask of this batch's real samples (None: all real) under a padded ``DistributedSampler``."""
        if stage == "train" or self._trainer is None:
            return None
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        return self._padding.mask(loader, dataloader_idx, n, device)

    def _step(self, batch: Any, stage: str, metric: torchmetrics.Metric, dataloader_idx: int = 0) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        keep = self._real(stage, dataloader_idx, int(y.shape[0]), y.device)
        if keep is None:
            metric.update(logits, y)
        elif bool(keep.any()):
            metric.update(logits[keep], y[keep])
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train", sync_dist=stage != "train")
        self.log(f"{stage}_acc", metric, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "val", self.val_acc, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "test", self.test_acc, dataloader_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if hp.optimizer == "adam":
            return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=False)
        epochs = max(int(self.trainer.max_epochs or 1), 1) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
