"""Modular re-adaption as LightningModules: train one located module, or everything, on D u D'.

>>> task = ModularRepair(mutant, architecture, module=2, reference=(x_ok, y_ok), target=(x_bad, y_bad))
>>> pl.Trainer(max_epochs=10).fit(task)          # no dataloader: the task builds its own over D u D'
>>> repaired = task.model                        # a trained copy; ``mutant`` is untouched

Loss (paper Eq. 5): ``alpha * CE(D u D') + beta * Dev(D')`` where ``Dev`` is measured at the module's
output, differentiably:

* ``"cka"`` (enhance default, paired): 1 - linear CKA between the module outputs of the adversarial
  samples in the batch and the ORIGINAL model's module outputs of their clean originals;
* ``"mse"``: paired (enhance): MSE to the original model's clean representation (the authors' code,
  with alpha = beta = 0.5); unpaired (repair): MSE to the class mean of D's representations;
* ``"nll"`` (repair default): the per-class Gaussian NLL of :class:`~deeparc_pl.readapt.deviation.GaussianReference`
  fitted on the original model's outputs of the correctly predicted part of D (per dimension, minus D's own NLL).

The references are computed once at the start of training, from the model as handed in. The modular
tasks freeze every parameter outside the module (the leaves between the previous module's last layer
and this module's last layer), keep frozen leaves in eval mode (batch norm keeps its statistics), run
the frozen prefix under no_grad and, with ``cache_prefix=True`` (inputs never change, no augmentation),
compute it once and cache its output per sample (:mod:`~deeparc_pl.readapt.prefix_cache`).
``FullFinetune`` is the same loop training every parameter.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..architecture.semantic import SemanticArchitecture
from ..taps import LayerTaps
from .deviation import GaussianReference, cka_deviation, flatten, mse_deviation
from .evaluate import as_tensors, check_sets
from .freezing import ModuleSpan, freeze_outside, module_span, set_frozen_eval, trace_model
from .locate import module_outputs
from .prefix_cache import PrefixCache, build_prefix_cache

__all__ = ["ReadaptTask", "ModularEnhance", "ModularRepair", "FullFinetune", "DEVIATIONS"]

DEVIATIONS = ("cka", "mse", "nll", "none")


def _as_pair(data: Any, what: str) -> tuple[Tensor, Tensor]:
    if data is None:
        raise ValueError(f"{what} is missing")
    try:
        x, y = as_tensors(data)
    except ValueError as exc:
        raise ValueError(f"{what} is empty or invalid: {exc}") from None
    return x, y


class ReadaptTask(pl.LightningModule):
    """Shared loop of :class:`ModularEnhance`, :class:`ModularRepair` and :class:`FullFinetune`.

    ``reference`` is D (samples the model handles), ``target`` is D' (samples to adapt to); both are
    Datasets, DataLoaders or ``(x, y)`` tensors. An object with ``x_adv``, ``x`` and ``y`` (an
    ``AdversarialSet``) as ``target`` with ``reference=None`` means D = its clean ``x``, D' = ``x_adv``.
    """

    paired: bool = False
    modular: bool = True
    default_deviation: str = "nll"

    def __init__(
        self,
        model: nn.Module,
        architecture: SemanticArchitecture | None,
        module: int | None,
        reference: Any,
        target: Any,
        alpha: float = 1.0,
        beta: float = 1.0,
        deviation: str | None = None,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        cache_prefix: bool = True,
        dim: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if alpha == 0 and beta == 0:
            raise ValueError("alpha and beta are both 0: the loss alpha*CE + beta*Dev would be 0")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        deviation = self.default_deviation if deviation is None else str(deviation).lower()
        if deviation not in DEVIATIONS:
            raise ValueError(f"deviation must be one of {DEVIATIONS}, got {deviation!r}")
        if beta == 0:
            deviation = "none"
        if deviation == "cka" and not self.paired:
            raise ValueError("deviation='cka' needs paired samples (enhancement); use 'nll' or 'mse' for repair")
        if hasattr(target, "x_adv") and reference is None:
            reference, target = (target.x, target.y), (target.x_adv, target.y)
        x_ref, y_ref = _as_pair(reference, "the reference set D")
        x_tgt, y_tgt = _as_pair(target, "the target set D'")
        x_ref, x_tgt = x_ref.float(), x_tgt.float()  # training runs in float32 (uint8/half/double inputs too)
        check_sets(model, x_ref, y_ref, x_tgt, y_tgt)
        y_ref, y_tgt = y_ref.long(), y_tgt.long()
        if self.paired and len(x_ref) != len(x_tgt):
            raise ValueError(
                f"enhancement pairs each target sample with its clean original: got {len(x_ref)} reference and "
                f"{len(x_tgt)} target samples"
            )
        needs_module = self.modular or deviation != "none"
        if needs_module and architecture is None:
            raise ValueError("an architecture and a module index are needed (modular training or a deviation term)")
        if architecture is not None and not isinstance(architecture, SemanticArchitecture):
            raise TypeError(f"architecture must be a SemanticArchitecture, got {type(architecture).__name__}")

        self.save_hyperparameters(ignore=["model", "architecture", "reference", "target"])
        self._source = {"model": model, "architecture": architecture, "reference": reference, "target": target}
        self.model = copy.deepcopy(model)
        self.alpha, self.beta, self.deviation = float(alpha), float(beta), deviation
        self.span: ModuleSpan | None = None
        self._frozen_leaves: list[str] = []
        self._prefix_leaves: list[str] = []
        if architecture is not None and module is not None:
            trace = trace_model(self.model, architecture, x_ref[:2])
            self.span = module_span(self.model, architecture, module, trace)
            if self.span.start >= 0:
                self._prefix_leaves = trace.leaves_between(-1, self.span.start)
            if self.modular:
                inside = set(self.span.leaves)
                self._frozen_leaves = [leaf for leaf in trace.order if leaf not in inside]
        elif needs_module:
            raise ValueError("module is None: pass the index of the module to train (see deeparc_pl.locate)")
        if self.modular:
            assert self.span is not None
            if not self.span.parameters:
                raise ValueError(f"module {module} owns no parameters: nothing to train")
            trainable, total = freeze_outside(self.model, self.span.parameters)
        else:
            trainable, total = freeze_outside(self.model, [n for n, _ in self.model.named_parameters()])
        self.trainable_params, self.total_params = int(trainable), int(total)
        self.trainable_share = trainable / max(total, 1)

        n_ref, n_tgt = len(x_ref), len(x_tgt)
        self._x = torch.cat([x_ref, x_tgt])
        self._y = torch.cat([y_ref, y_tgt])
        self._n_ref = n_ref
        self._flag = torch.cat([torch.zeros(n_ref, dtype=torch.bool), torch.ones(n_tgt, dtype=torch.bool)])
        pair = torch.full((n_ref + n_tgt,), -1, dtype=torch.long)
        if self.paired:
            pair[n_ref:] = torch.arange(n_tgt)
        self._pair = pair
        self._prepared = False
        self._cache: PrefixCache | None = None
        self._ref_repr: Tensor | None = None
        self._class_means: Tensor | None = None
        self._gauss: GaussianReference | None = None
        self.setup_seconds = 0.0
        self.epoch_seconds: list[float] = []
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(
            int(max(int(self._y.max()) + 1, getattr(model, "num_classes", 0) or 0)), average="micro"
        )
        self.train()  # trainable part in train mode, frozen leaves in eval

    # -- data ------------------------------------------------------------------------------------
    @property
    def dataset(self) -> TensorDataset:
        """D u D' as (x, y, sample index, is_target) rows: D first, then D'."""
        return TensorDataset(self._x, self._y, torch.arange(len(self._x)), self._flag)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(int(self.hparams.seed))
        return DataLoader(self.dataset, batch_size=int(self.hparams.batch_size), shuffle=True, generator=gen,
                          num_workers=int(self.hparams.num_workers))

    # -- modes -----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "ReadaptTask":
        super().train(mode)
        if mode and self._frozen_leaves:
            set_frozen_eval(self.model, self._frozen_leaves)
        return self

    def apply_frozen_modes(self) -> None:
        """Frozen leaves back to eval mode (``model.train()`` resets them)."""
        if self._frozen_leaves:
            set_frozen_eval(self.model, self._frozen_leaves)

    # -- one-time preparation ----------------------------------------------------------------------
    def _param_device(self) -> torch.device:
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    @torch.no_grad()
    def prepare(self) -> None:
        """Compute the references (and the prefix cache) from the model as handed in; idempotent."""
        if self._prepared:
            return
        start = time.perf_counter()
        device = self._param_device()
        x_ref, y_ref = self._x[: self._n_ref], self._y[: self._n_ref]
        if self.deviation != "none":
            assert self.span is not None
            (h_ref,), pred = module_outputs(self.model, [self.span.output], x_ref, int(self.hparams.batch_size))
            keep = pred == y_ref
            if int(keep.sum()) < 3:
                keep = torch.ones_like(keep)
            if self.paired:
                self._ref_repr = h_ref.to(device)
            elif self.deviation == "mse":
                pooled = h_ref[keep].mean(dim=0)
                n_cls = int(self._y.max()) + 1
                means = pooled.repeat(n_cls, 1)
                for c in range(n_cls):
                    sel = keep & (y_ref == c)
                    if sel.any():
                        means[c] = h_ref[sel].mean(dim=0)
                self._class_means = means.to(device)
            elif self.deviation == "nll":
                self._gauss = GaussianReference.fit(h_ref[keep], y_ref[keep], dim=int(self.hparams.dim)).to(device)
        self.apply_frozen_modes()
        if self.modular and self.hparams.cache_prefix and self.span is not None and self.span.boundary is not None:
            self._cache = build_prefix_cache(self.model, self.span.boundary, self._prefix_leaves, self._x,
                                             batch_size=int(self.hparams.batch_size), device=device)
        self._prepared = True
        self.setup_seconds = time.perf_counter() - start

    @property
    def cached(self) -> bool:
        return self._cache is not None

    # -- loss ------------------------------------------------------------------------------------
    def _dev(self, h: Tensor, y: Tensor, index: Tensor) -> Tensor:
        if self.deviation == "cka":
            assert self._ref_repr is not None
            if len(h) < 3:
                return h.new_zeros(())
            return cka_deviation(h, self._ref_repr[self._pair[index.cpu()].to(h.device)])
        if self.deviation == "mse":
            if self.paired:
                assert self._ref_repr is not None
                return mse_deviation(h, self._ref_repr[self._pair[index.cpu()].to(h.device)])
            assert self._class_means is not None
            return mse_deviation(h, self._class_means[y.clamp_max(len(self._class_means) - 1)])
        assert self._gauss is not None
        return self._gauss.deviation(h, y)

    def _forward(self, x: Tensor, index: Tensor, use_cache: bool) -> Tensor:
        # Without the cache the frozen prefix still builds no graph: its parameters do not require
        # grad and neither does the input, so autograd records nothing before the module.
        if use_cache and self._cache is not None:
            return self._cache.forward(x, index)
        return self.model(x)

    def compute_loss(self, batch: Any, use_cache: bool = True) -> dict[str, Tensor]:
        """Loss terms of one batch of :attr:`dataset` rows (``prepare()`` must have run)."""
        self.prepare()
        x, y, index, flag = batch
        need_dev = self.deviation != "none" and bool(flag.any())
        taps = LayerTaps(self.model, [self.span.output], keep_graph=True) if need_dev else contextlib.nullcontext()
        with taps:
            logits = self._forward(x, index, use_cache)
            h = taps.outputs[0] if need_dev else None
        ce = F.cross_entropy(logits, y)
        loss = self.alpha * ce
        dev = logits.new_zeros(())
        if need_dev:
            dev = self._dev(flatten(h)[flag], y[flag], index[flag])
            loss = loss + self.beta * dev
        return {"loss": loss, "ce": ce, "dev": dev, "logits": logits}

    # -- Lightning hooks ---------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # Lightning keeps the modes it was handed (the copy may be in eval mode): train the trainable
        # part, frozen leaves in eval (``train()`` is overridden to re-apply that).
        self.prepare()
        self.train()

    def on_train_epoch_start(self) -> None:
        self.train()
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        if torch.cuda.is_available() and self._param_device().type == "cuda":
            torch.cuda.synchronize()
        self.epoch_seconds.append(time.perf_counter() - self._epoch_t0)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        out = self.compute_loss(batch)
        self.train_acc(out["logits"], batch[1])
        self.log("train_loss", out["loss"], prog_bar=True)
        self.log("train_ce", out["ce"])
        self.log("train_dev", out["dev"])
        self.log("train_acc", self.train_acc, prog_bar=True, on_step=False, on_epoch=True)
        self.log("trainable_params", float(self.trainable_params), on_step=False, on_epoch=True)
        self.log("trainable_share", float(self.trainable_share), on_step=False, on_epoch=True)
        return out["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=float(hp.lr), momentum=float(hp.momentum), weight_decay=float(hp.weight_decay))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @property
    def train_seconds(self) -> float:
        """One-time preparation (references, prefix cache) plus every epoch."""
        return self.setup_seconds + sum(self.epoch_seconds)


class ModularEnhance(ReadaptTask):
    """Fit new samples paired with clean originals (e.g. adversarial) by training one module.

    ``reference`` = the clean originals, ``target`` = the new samples, same order (or pass an
    ``AdversarialSet`` as ``target`` with ``reference=None``). Deviation ``"cka"`` (default) or ``"mse"``.
    """

    paired = True
    default_deviation = "cka"


class ModularRepair(ReadaptTask):
    """Repair a model failing on ``target`` (D') while keeping ``reference`` (D), training one module.

    Deviation ``"nll"`` (default: per-class Gaussians of D's correctly predicted representations) or ``"mse"``.
    """

    paired = False
    default_deviation = "nll"


class FullFinetune(ReadaptTask):
    """The same loop and loss training every parameter (the baseline of Table III).

    ``paired=True`` treats the sets like :class:`ModularEnhance` (for ``"cka"`` / paired ``"mse"``).
    """

    modular = False

    def __init__(self, model: nn.Module, architecture: SemanticArchitecture | None, module: int | None,
                 reference: Any, target: Any, paired: bool = False, **kwargs: Any) -> None:
        self.paired = bool(paired)
        if "deviation" not in kwargs or kwargs["deviation"] is None:
            kwargs["deviation"] = "cka" if self.paired else "nll"
        super().__init__(model, architecture, module, reference, target, **kwargs)

    @classmethod
    def from_task(cls, task: ReadaptTask, **overrides: Any) -> "FullFinetune":
        """The full-training twin of a modular task: same model as handed in, data, loss and settings."""
        hp = {k: v for k, v in dict(task.hparams).items() if k in {
            "alpha", "beta", "deviation", "lr", "momentum", "weight_decay", "batch_size", "dim", "num_workers", "seed"}}
        hp["deviation"] = task.deviation
        hp.update(overrides)
        src = task._source
        module = task.span.index if task.span is not None else None
        return cls(src["model"], src["architecture"], module, src["reference"], src["target"], paired=task.paired, **hp)
