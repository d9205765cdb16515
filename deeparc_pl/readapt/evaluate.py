"""Small shared helpers for re-adaption: turn data into tensors, and score a model on it.

Every task in :mod:`deeparc_pl.readapt` (attacks, mutants, repair) needs "the accuracy of this model on
that data" measured the same way: eval mode, no grad, batched, the model's training flag restored.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..modes import evaluating

__all__ = ["as_tensors", "check_samples", "check_sets", "output_classes", "accuracy", "predict"]

Data = Union[Dataset, DataLoader, Sequence[Tensor]]


def _pair(item: Any, where: str) -> tuple[Tensor, Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(f"{where} must yield (x, y) pairs, got {type(item).__name__}")
    x, y = item[0], item[1]
    return torch.as_tensor(x), torch.as_tensor(y)


def as_tensors(data: Data, limit: int | None = None, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Collect ``(x, y)`` tensors from a Dataset, a DataLoader or an ``(x, y)`` tuple, in order.

    ``limit`` keeps the first N samples. Raises ``ValueError`` on empty data.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    elif isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise TypeError("TensorDataset must hold at least (x, y) tensors")
        x, y = data.tensors[0], data.tensors[1]
    elif isinstance(data, DataLoader):
        xs, ys = [], []
        n = 0
        for batch in data:
            bx, by = _pair(batch, "the DataLoader")
            xs.append(bx)
            ys.append(by)
            n += len(bx)
            if limit is not None and n >= limit:
                break
        if not xs:
            raise ValueError("the data is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    elif isinstance(data, Dataset):
        try:
            size = len(data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise TypeError("the dataset must have a length (map-style Dataset)") from exc
        if size == 0:
            raise ValueError("the dataset is empty")
        if limit is not None and limit < size:
            data = Subset(data, range(limit))
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=_collate)
        return as_tensors(loader, limit=limit)
    else:
        raise TypeError(
            "data must be a torch Dataset, a DataLoader or an (x, y) tuple of tensors, "
            f"got {type(data).__name__}"
        )
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) == 0:
        raise ValueError("the data is empty")
    return x, y


def output_classes(model: nn.Module, x: Tensor) -> int:
    """How many classes ``model`` scores: the width of its logits on two samples (eval mode, no grad)."""
    with evaluating(model), torch.no_grad():
        out = model(x[:2].to(_device_of(model)))
    if not isinstance(out, Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape (batch, classes), got {shape}")
    return int(out.shape[1])


def check_samples(x: Tensor, y: Tensor, what: str = "the data", num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """Refuse inputs with NaN/inf and labels that are not class indices (of ``num_classes``, when known).

    Caught here, a NaN would otherwise train a NaN model or rank modules by NaN without an error,
    and a label of 99 would fail only deep inside the loss, in the middle of training.
    """
    if x.dtype.is_floating_point or x.is_complex():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{what}: the inputs contain {bad} NaN/inf values")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex() or y.ndim != 1:
        raise TypeError(f"{what}: labels must be a 1-D tensor of integer class indices, got {y.dtype} {tuple(y.shape)}")
    if len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            limit = f"in 0 .. {num_classes - 1}" if num_classes is not None else "(>= 0)"
            raise ValueError(f"{what}: labels must be class indices {limit}, got values from {lo} to {hi}")
    return x, y


def check_sets(model: nn.Module, x_ref: Tensor, y_ref: Tensor, x_tgt: Tensor, y_tgt: Tensor) -> None:
    """:func:`check_samples` on the reference set D and the target set D', against ``model``'s classes."""
    classes = output_classes(model, x_ref)
    check_samples(x_ref, y_ref, "the reference set D", classes)
    check_samples(x_tgt, y_tgt, "the target set D'", classes)


def _collate(items: Iterable[Any]) -> tuple[Tensor, Tensor]:
    pairs = [_pair(it, "the dataset") for it in items]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, data: Data, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Predicted classes (argmax of the outputs) and true labels, on CPU, in data order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = as_tensors(data, batch_size=batch_size)
    device = _device_of(model)
    with evaluating(model):
        preds = [model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(preds), y.cpu()


def accuracy(model: nn.Module, data: Data, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (eval mode, no grad; the training flag is restored)."""
    pred, y = predict(model, data, batch_size=batch_size)
    if y.dtype.is_floating_point or y.ndim != 1:
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype} shape {tuple(y.shape)}")
    return float((pred == y).float().mean())
