"""What a compressed model costs: weights (dense and nonzero), multiply-accumulates, CPU latency.

Counts read the *effective* weights: a module pruned with ``torch.nn.utils.prune`` holds
``weight_orig`` and ``weight_mask``, and its weight is their product, whether or not a forward
pass has run since the last ``load_state_dict``. Timings and MACs are taken on a copy whose masks
are folded into plain weights (``finalize``), which is how a pruned model is deployed.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "PRUNABLE_TYPES",
    "effective_weight",
    "prunable_modules",
    "count_prunable",
    "count_parameters",
    "finalize",
    "count_macs",
    "measure_latency",
    "ModelCost",
    "measure_cost",
]

from ..pruners.masks import PRUNABLE_TYPES, effective_weight, make_permanent
from ..pruners.masks import prunable_layers as prunable_modules


def count_prunable(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) prunable weights (Conv2d and Linear weights)."""
    total = nonzero = 0
    for _, m in prunable_modules(model):
        w = effective_weight(m).detach()
        total += w.numel()
        nonzero += int(torch.count_nonzero(w))
    return total, nonzero


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) parameters, masks folded in (``weight_orig`` counts as the weight)."""
    total = nonzero = 0
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(m, name[: -len("_orig")] + "_mask"):
                p = p * getattr(m, name[: -len("_orig")] + "_mask")
            total += p.numel()
            nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def finalize(model: nn.Module) -> nn.Module:
    """A copy with every pruning mask made permanent (plain ``weight`` tensors, no hooks), in eval mode."""
    out = make_permanent(model)
    out.eval()
    return out


def count_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(dense, nonzero) multiply-accumulates of one forward pass on ONE sample of ``example``.

    Dense MACs come from ``torch_pruning.utils.count_ops_and_params`` (every layer type it knows);
    nonzero MACs count, for Conv2d and Linear only, the multiplies by a nonzero weight, plus the
    dense MACs of every other layer, i.e. what a sparse kernel would execute.
    """
    import torch_pruning as tp

    model = finalize(model).cpu()
    example = example.cpu()
    with torch.no_grad():
        dense, _ = tp.utils.count_ops_and_params(model, example_inputs=example[:1])
    saved: dict[str, tuple[int, int]] = {}
    handles = []

    def hook(name: str):
        def fn(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            w = mod.weight.detach()
            positions = out[0].numel() // (w.shape[0])  # output positions per output channel/feature
            saved[name] = (w.numel() * positions, int(torch.count_nonzero(w)) * positions)

        return fn

    for name, m in prunable_modules(model):
        handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    nonzero = dense - sum(d for d, _ in saved.values()) + sum(nz for _, nz in saved.values())
    return int(dense), int(max(nonzero, 0))


def measure_latency(model: nn.Module, example: torch.Tensor, repeats: int = 30, warmup: int = 10) -> float:
    """Median wall time (milliseconds) of ``repeats`` timed CPU forward passes on ``example``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model = finalize(model).cpu()
    example = example.cpu()
    times = []
    with torch.inference_mode():
        for _ in range(max(warmup, 0)):
            model(example)
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


@dataclass
class ModelCost:
    """Sizes of one model; ``remaining``/``sparsity`` are against a reference prunable count."""

    prunable_total: int
    prunable_nonzero: int
    params_total: int
    params_nonzero: int
    macs_dense: int
    macs_nonzero: int
    latency_ms: float | None
    remaining: float
    sparsity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_cost(
    model: nn.Module,
    example: torch.Tensor,
    reference_prunable: int | None = None,
    latency_repeats: int = 30,
) -> ModelCost:
    """Every cost of ``model``; ``example`` is one input batch (its size sets the latency batch).

    ``reference_prunable`` is the ORIGINAL model's prunable weight count (default: this model's),
    so ``remaining`` = nonzero prunable weights / reference and ``sparsity`` = 1 - remaining.
    ``latency_repeats=0`` skips the timing.
    """
    p_total, p_nonzero = count_prunable(model)
    total, nonzero = count_parameters(model)
    dense, sparse = count_macs(model, example)
    latency = measure_latency(model, example, latency_repeats) if latency_repeats > 0 else None
    ref = int(reference_prunable or p_total)
    remaining = p_nonzero / ref if ref else 0.0
    return ModelCost(p_total, p_nonzero, total, nonzero, dense, sparse, latency, remaining, 1.0 - remaining)
