"""``CKACallback``: measure the layer-similarity matrix during a Lightning validation or predict
loop, on any number of devices, and publish the semantic architecture at the end of the epoch.

It lives in ``architecture/`` (not ``similarity/``) because it publishes an architecture: the
similarity package stays free of partition logic and nothing imports upward."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from ..distributed import SPAWNING_STRATEGIES, PaddingTracker, padding_mask  # noqa: F401 (padding_mask: re-export)
from ..similarity.functional import check_estimator
from ..similarity.stream import MIN_BATCH, ActivationStream
from ..taps import check_layer_list
from .partition import check_method, validate_threshold
from .semantic import SemanticArchitecture

__all__ = ["CKACallback", "padding_mask", "STAGES"]


#: The loops the callback can listen to.
STAGES = ("validate", "predict")


def _unwrap(pl_module: pl.LightningModule, attr: str | None) -> nn.Module:
    if attr:
        inner = getattr(pl_module, attr, None)
        if not isinstance(inner, nn.Module):
            raise AttributeError(
                f"CKACallback(model_attr={attr!r}): {type(pl_module).__name__} has no nn.Module attribute {attr!r}"
            )
        return inner
    inner = getattr(pl_module, "model", None)
    return inner if isinstance(inner, nn.Module) else pl_module


class CKACallback(pl.Callback):
    """Stream tapped activations of the validation (or predict) loop into a ``CKAMatrix``.

    >>> cb = CKACallback(layers=None, threshold=0.99)
    >>> pl.Trainer(callbacks=[cb]).validate(Classifier(model), datamodule=dm)
    >>> cb.architecture.modules

    ``layers`` are module names of the wrapped network (``pl_module.model`` when present, else
    the LightningModule itself; ``model_attr`` names another attribute). During ``fit`` it runs on
    every validation epoch (``every_n_epochs``) so modules can be watched forming; ``history``
    keeps (epoch, modularity, number of modules). Under DDP the metric's sum states are reduced
    across processes and padded duplicates are dropped, so the matrix equals one process's.
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        threshold: float = 0.99,
        method: str = "progressive",
        estimator: str = "minibatch",
        stages: Sequence[str] = ("validate", "predict"),
        every_n_epochs: int = 1,
        model_attr: str | None = None,
        log_heatmap: bool = True,
    ) -> None:
        check_layer_list(layers)
        if model_attr is not None and (not isinstance(model_attr, str) or not model_attr):
            raise TypeError(f"model_attr must be the name of an attribute of your LightningModule, got {model_attr!r}")
        self.layers = list(layers) if layers is not None else None
        self.threshold = validate_threshold(threshold)
        self.method = check_method(method)
        self.estimator = check_estimator(estimator)
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"stages must be some of {list(STAGES)}, got {list(stages)}")
        self.stages = stages
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)
        self.model_attr = model_attr
        self.log_heatmap = log_heatmap
        self.similarity: np.ndarray | None = None
        self.architecture = None
        self.history: list[dict[str, Any]] = []
        self._stream: ActivationStream | None = None
        self._padding = PaddingTracker()

    # -- state for resumption ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    # -- shared plumbing -----------------------------------------------------------------------
    def _active(self, trainer: pl.Trainer, stage: str) -> bool:
        if stage not in self.stages or trainer.sanity_checking:
            return False
        return stage != "validate" or trainer.current_epoch % max(self.every_n_epochs, 1) == 0 or not trainer.training

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stream = ActivationStream(_unwrap(pl_module, self.model_attr), self.layers, self.estimator)
        self._stream.to(pl_module.device).__enter__()
        self._padding.reset()

    def _batch(self, trainer: pl.Trainer, batch: Any, dataloader: Any, dataloader_idx: int) -> None:
        if self._stream is None:
            return
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        n = int(x.shape[0])
        self._stream.update(self._padding.mask(dataloader, dataloader_idx, n, x.device))

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.__exit__(None, None, None)
        try:  # the metric's states are summed over every process first, so all ranks agree here
            sim = stream.compute().detach().cpu().numpy()
        except ValueError as exc:
            if "empty data" not in str(exc):
                raise
            raise ValueError(
                f"CKACallback: no {stage} batch was large enough for the {self.estimator!r} estimator "
                f"(this process skipped {stream.skipped_samples} samples; it needs at least "
                f"{MIN_BATCH[self.estimator]} per batch)"
            ) from None
        self.similarity = sim
        self.architecture = SemanticArchitecture.from_similarity(
            stream.names, sim, self.threshold, self.method, self.estimator,
            meta={"stage": stage, "epoch": int(trainer.current_epoch), "skipped_samples": stream.skipped_samples},
        )
        record = {
            "epoch": int(trainer.current_epoch),
            "modularity": self.architecture.modularity,
            "num_modules": self.architecture.num_modules,
        }
        self.history.append(record)
        self._log(trainer, record)

    @rank_zero_only
    def _log(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({"cka/modularity": record["modularity"], "cka/num_modules": record["num_modules"]},
                               step=trainer.global_step)
            if self.log_heatmap and type(logger).__name__ == "WandbLogger":
                from .plots import plot_similarity

                path = Path(tempfile.mkdtemp()) / "similarity.png"
                plot_similarity(self.architecture, path)
                logger.log_image(key="cka/similarity", images=[str(path)], step=trainer.global_step)

    def _loader(self, trainer: pl.Trainer, stage: str, dataloader_idx: int) -> Any:
        loaders = trainer.val_dataloaders if stage == "validate" else trainer.predict_dataloaders
        if isinstance(loaders, (list, tuple)):
            return loaders[dataloader_idx]
        return loaders

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        method = str(getattr(trainer.strategy, "_start_method", "") or "")
        if any(word in method for word in SPAWNING_STRATEGIES):
            raise RuntimeError(
                f"CKACallback cannot return its result from a {type(trainer.strategy).__name__} run with start "
                f"method {method!r}: the loops run in worker processes and the architecture would stay there. "
                "Use strategy='ddp' (one process per device, launched like the calling script)."
            )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer, "validate"):
            self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(trainer, batch, self._loader(trainer, "validate", dataloader_idx), dataloader_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "validate")

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer, "predict"):
            self._start(trainer, pl_module)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(trainer, batch, self._loader(trainer, "predict", dataloader_idx), dataloader_idx)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "predict")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._stream is not None:
            self._stream.__exit__(None, None, None)
            self._stream = None
