"""``modularize``: model + data -> ``SemanticArchitecture`` in one call (paper section II-A)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..modes import evaluating
from ..similarity.layout import prefer_channels_last, to_channels_last
from ..similarity.stream import ActivationStream
from .semantic import SemanticArchitecture

__all__ = ["modularize", "similarity_matrix"]


def _progress(enabled: bool):
    """A rich progress bar, or nothing."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True)


def similarity_matrix(
    model: nn.Module,
    dataloader: Iterable[Any],
    layers: Sequence[str] | None = None,
    estimator: str = "minibatch",
    passes: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = False,
    channels_last: bool | None = None,
) -> tuple[list[str], torch.Tensor, dict[str, Any]]:
    """Stream ``dataloader`` through ``model`` and return (layer names, CKA matrix, stats).

    The model is put in eval mode for the passes (batch norm in inference mode, as the authors
    did) and its mode is restored after; nothing else about it changes. ``passes`` iterates the
    loader again (a shuffling loader gives new batches each pass). ``channels_last`` (default: on
    CPU for a convolutional model) runs a channels-last copy of the model instead, which is faster
    on CPU and gives the same matrix up to float rounding (~1e-7; :mod:`~deeparc_pl.similarity.layout`); ``False`` runs the
    model as given (e.g. when a second copy of its weights does not fit in memory).
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    stream = ActivationStream(model, layers, estimator)  # validates the layer names; no hooks yet
    runner = model
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)  # e.g. a float64 model
    try:
        total = len(dataloader) * passes if hasattr(dataloader, "__len__") else None  # type: ignore[arg-type]
    except TypeError:
        total = None
    samples, hooked = 0, False
    with evaluating(model):
        with contextlib.ExitStack() as scope, torch.no_grad(), _progress(progress) as bar:
            task = bar.add_task("CKA", total=total) if bar is not None else None
            for _ in range(passes):
                for batch in dataloader:
                    x = batch[0] if isinstance(batch, (tuple, list)) else batch
                    x = x.to(device, dtype=dtype if x.is_floating_point() and dtype is not None else None)
                    if not hooked:  # first batch: pick the module to run, then hook it
                        runner = prefer_channels_last(model, x, channels_last, device)
                        if runner is not model:
                            stream = ActivationStream(runner, stream.names, estimator)
                        scope.enter_context(stream.to(device))
                        hooked = True
                    runner(to_channels_last(x) if runner is not model else x)
                    stream.update()
                    samples += int(x.shape[0])
                    if bar is not None:
                        bar.advance(task)
    if samples == 0:
        raise ValueError("the data loader is empty: no batch reached the model")
    if stream.batches == 0:
        raise ValueError(f"no batch was large enough for the {estimator!r} estimator (all {samples} samples skipped)")
    stats = {"samples": samples - stream.skipped_samples, "skipped_samples": stream.skipped_samples,
             "batches": stream.batches, "passes": passes, "channels_last": runner is not model}
    return stream.names, stream.compute().detach().cpu(), stats


def modularize(
    model: nn.Module,
    dataloader: Iterable[Any],
    layers: Sequence[str] | None = None,
    threshold: float = 0.99,
    method: str = "progressive",
    estimator: str = "minibatch",
    passes: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = False,
    meta: dict[str, Any] | None = None,
    channels_last: bool | None = None,
) -> SemanticArchitecture:
    """The semantic architecture of ``model`` on the data in ``dataloader``.

    ``estimator="minibatch"`` (default) is the unbiased HSIC_1 minibatch CKA of Nguyen et al.
    (2021), the authors' choice: its value depends on the batches, so feed shuffled batches of a
    fixed seed (e.g. ``DataLoader(ds, 256, sampler=ShuffledPasses(ds, passes=10, seed=0))``) for
    reproducible, representative results. ``exact`` keeps every activation (small data only);
    ``paper`` is Eq. 1-2 as printed. The model is never modified; on CPU a channels-last copy of a
    convolutional model runs the passes (``channels_last``, see :func:`similarity_matrix`).
    """
    from .partition import validate_threshold

    validate_threshold(threshold)
    names, sim, stats = similarity_matrix(model, dataloader, layers, estimator, passes, device, progress,
                                          channels_last)
    info = {"model": getattr(model, "zoo_name", type(model).__name__), **stats, **(meta or {})}
    return SemanticArchitecture.from_similarity(names, sim.numpy(), threshold, method, estimator, info)
