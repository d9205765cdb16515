"""Structured (channel) pruning with torch-pruning: channels are really removed, so the parameter
count and compute shrink. Couplings such as residual additions are resolved by torch-pruning's
dependency graph, which needs an example input.

Here ``sparsity`` means the share of prunable weights (``nn.Conv2d`` / ``nn.Linear`` weights)
*removed* relative to the model handed to :meth:`StructuredPruner.prune`. torch-pruning takes a
per-layer *channel* ratio, so the ratio is found by bisection to match that weight share.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch_pruning as tp
from torch import nn

from deeparc_pl.pruners.masks import copy_model, make_permanent, prunable_layers
from deeparc_pl.pruners.protocol import PruningReport, check_sparsity

__all__ = ["StructuredPruner", "infer_example_inputs", "replay_pruning_history"]

Example = Union[torch.Tensor, Sequence[torch.Tensor]]


def infer_example_inputs(model: nn.Module, example_inputs: Optional[Example] = None) -> Example:
    """``example_inputs`` if given, else a ``(1, in_channels, H, W)`` tensor from the model's
    ``in_channels`` and ``image_size`` attributes (zoo models carry both)."""
    if example_inputs is not None:
        return example_inputs
    c, size = getattr(model, "in_channels", None), getattr(model, "image_size", None)
    if c is None or size is None:
        raise ValueError(
            f"{type(model).__name__} has no `in_channels` / `image_size` attributes to build an example "
            "input for torch-pruning's dependency graph; pass example_inputs=... to StructuredPruner"
        )
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    p = next(model.parameters(), None)
    return torch.randn(1, int(c), int(h), int(w), device=p.device if p is not None else "cpu")


def _forward(model: nn.Module, x: Example) -> Any:
    return model(*x) if isinstance(x, (list, tuple)) else model(x)


def _classifier(model: nn.Module, x: Example) -> str:
    """Name of the last Conv2d/Linear to run: its outputs are the model's outputs and must not shrink."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, i, o, name=n: order.append(name)) for n, m in prunable_layers(model)
    ]
    try:
        with torch.no_grad():
            _forward(model, x)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("no nn.Conv2d / nn.Linear ran on the example input")
    return order[-1]


def _n_weights(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.numel() for n, m in prunable_layers(model)}


class StructuredPruner:
    """Channel pruning via ``tp.pruner.BasePruner`` + ``tp.importance.MagnitudeImportance``.

    Args:
        example_inputs: input for graph tracing; inferred from ``in_channels`` / ``image_size`` if omitted.
        p: norm of the magnitude importance (2 = L2 of each channel group).
        global_pruning: rank channel groups across layers instead of per layer.
        round_to: keep channel counts a multiple of this.
        tolerance: stop the ratio search once the removed weight share is this close to the target.
        max_iter: most pruning trials of the ratio search (each traces the model once).
    """

    name = "structured"

    def __init__(
        self,
        example_inputs: Optional[Example] = None,
        *,
        p: int = 2,
        global_pruning: bool = False,
        round_to: Optional[int] = None,
        tolerance: float = 0.005,
        max_iter: int = 10,
    ) -> None:
        self.example_inputs = example_inputs
        self.p = p
        self.global_pruning = global_pruning
        self.round_to = round_to
        self.tolerance = tolerance
        self.max_iter = max_iter
        self.report: Optional[PruningReport] = None

    def _run(
        self, model: nn.Module, x: Example, ratio: float, keep: str
    ) -> tuple[nn.Module, tp.pruner.BasePruner]:
        out = copy_model(model)
        was_training = out.training
        out.eval()  # tracing must not update BatchNorm statistics
        pruner = tp.pruner.BasePruner(
            out,
            x,
            importance=tp.importance.MagnitudeImportance(p=self.p),
            pruning_ratio=ratio,
            global_pruning=self.global_pruning,
            ignored_layers=[out.get_submodule(keep)],
            round_to=self.round_to,
        )
        pruner.step()
        out.train(was_training)
        return out, pruner

    def prune(self, model: nn.Module, sparsity: float) -> nn.Module:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        target = check_sparsity(sparsity)
        base = make_permanent(model)  # masks would confuse the dependency graph; works on a copy
        x = infer_example_inputs(base, self.example_inputs)
        before = _n_weights(base)
        total = sum(before.values())
        if total == 0:
            raise ValueError("model has no prunable layers (nn.Conv2d / nn.Linear)")

        def removed(m: nn.Module) -> float:
            return 1.0 - sum(_n_weights(m).values()) / total

        was_training = base.training
        keep = _classifier(base.eval(), x)
        base.train(was_training)
        best, history, best_ratio, best_got = copy_model(base), [], 0.0, 0.0
        lo, hi = 0.0, 0.99
        widest = max(getattr(m, "out_channels", getattr(m, "out_features", 1)) for _, m in prunable_layers(base))
        resolution = 0.5 / widest  # finer ratio steps cannot change any channel count
        mid = 1.0 - (1.0 - target) ** 0.5  # first guess: both dimensions of inner layers shrink
        for _ in range(self.max_iter if target > 0 else 0):
            if abs(best_got - target) <= self.tolerance or hi - lo < resolution:
                break
            cand, cand_pruner = self._run(base, x, mid, keep)
            got = removed(cand)
            if abs(got - target) < abs(best_got - target):
                best, best_got, best_ratio = cand, got, mid
                history = list(cand_pruner.pruning_history())
            lo, hi = (mid, hi) if got < target else (lo, mid)
            mid = (lo + hi) / 2
        after = _n_weights(best)
        self.report = PruningReport(
            method=self.name,
            target=target,
            global_sparsity=best_got,
            layer_sparsity={n: 1.0 - after[n] / before[n] for n in before},
            extra={
                "channel_ratio": best_ratio,
                "pruning_history": history,
                "weights_before": total,
                "weights_after": sum(after.values()),
                "params_before": sum(p.numel() for p in base.parameters()),
                "params_after": sum(p.numel() for p in best.parameters()),
            },
        )
        return best


def replay_pruning_history(
    model: nn.Module, history: Sequence[tuple], example_inputs: Optional[Example] = None
) -> nn.Module:
    """Re-create a structurally pruned architecture on a fresh (unpruned) copy of ``model`` from
    ``report.extra["pruning_history"]``, so that the pruned ``state_dict`` can be loaded into it."""
    out = copy_model(model)
    was_training = out.training
    out.eval()
    x = infer_example_inputs(out, example_inputs)
    graph = tp.DependencyGraph().build_dependency(out, example_inputs=x)
    graph.load_pruning_history([tuple(h) for h in history])
    out.train(was_training)
    return out
