"""Layer reduction (paper section II-B): keep each multi-layer module's first layer, drop the rest.

Order (paper Algorithm 2): modules in model order, each from its last layer back to its second.
Removed layers form contiguous spans (one per module). A span whose input shape equals its
output shape becomes ``nn.Identity``; otherwise a ``Sewing`` layer replaces the span's first layer
(the others become identity) and is fitted locally to map what it receives onto the ORIGINAL
model's output of the span's last layer. Every change is recorded (``deeparc_pl.models.edits``),
so a saved checkpoint rebuilds the reduced model without code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, Sized

import torch
from torch import nn

from ..architecture.semantic import SemanticArchitecture
from ..modes import copy_modes
from ..pruners.masks import copy_model
from ..models.edits import apply_edit, get_submodule
from ..taps import LayerTaps, resolve_layer_names
from .sewing import SewingFit, as_loader, collect_pairs, fit_sewing

__all__ = ["reduction_plan", "contiguous_spans", "Span", "Reduction", "reduce", "reduce_layers", "example_input", "layer_shapes"]

SEWING_DEFAULTS = {"epochs": 5, "lr": 1e-2, "samples": 2048, "batch_size": 128, "seed": 0, "device": "cpu",
                   "method": "auto"}


def _check_architecture(architecture: Any) -> SemanticArchitecture:
    if not isinstance(architecture, SemanticArchitecture):
        raise TypeError(f"architecture must be a SemanticArchitecture, got {type(architecture).__name__}")
    return architecture


def _select_modules(architecture: SemanticArchitecture, modules: Sequence[int] | None) -> list[int]:
    n = architecture.num_modules
    if modules is None:
        return list(range(n))
    if isinstance(modules, (int, str)):
        modules = [modules]  # type: ignore[list-item]
    chosen: list[int] = []
    for m in modules:
        if isinstance(m, bool) or not isinstance(m, int):
            raise TypeError(f"modules must be module indices (ints), got {m!r}")
        if not -n <= m < n:
            raise ValueError(f"module index {m} out of range: the architecture has {n} modules (0..{n - 1})")
        m = m % n
        if len(architecture.modules[m]) < 2:
            multi = [i for i, mod in enumerate(architecture.modules) if len(mod) > 1]
            raise ValueError(f"module {m} has a single layer, nothing to remove; multi-layer modules: {multi}")
        if m not in chosen:
            chosen.append(m)
    return sorted(chosen)


def reduction_plan(
    architecture: SemanticArchitecture, k: int | None = None, modules: Sequence[int] | None = None
) -> list[str]:
    """Layer names in the order Algorithm 2 removes them (only the first ``k``; only ``modules``).

    ``modules`` are indices into ``architecture.modules`` (each must be a multi-layer module).
    """
    architecture = _check_architecture(architecture)
    order: list[str] = []
    for idx in _select_modules(architecture, modules):
        mod = architecture.modules[idx]
        order.extend(reversed(mod[1:]))
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {k!r}")
        if not 0 <= k <= len(order):
            raise ValueError(f"k={k} is out of range: the chosen modules hold {len(order)} removable layers")
        order = order[:k]
    return order


def contiguous_spans(architecture: SemanticArchitecture, removed: Iterable[str]) -> list[list[str]]:
    """Group removed layers into runs of consecutive layers (model order)."""
    pos = {n: i for i, n in enumerate(architecture.layer_names)}
    idx = sorted(pos[n] for n in removed)
    spans: list[list[str]] = []
    for i in idx:
        if spans and pos[spans[-1][-1]] == i - 1:
            spans[-1].append(architecture.layer_names[i])
        else:
            spans.append([architecture.layer_names[i]])
    return spans


def example_input(model: nn.Module, data: Any = None, example: torch.Tensor | None = None) -> torch.Tensor:
    """One input batch for tracing: ``example``, else a sample of ``data``, else zeros sized from the zoo."""
    if example is not None:
        if not isinstance(example, torch.Tensor):
            raise TypeError(f"example must be a tensor, got {type(example).__name__}")
        return example
    if data is not None:
        if isinstance(data, Sized) and len(data) == 0:
            raise ValueError("the data for reduce_layers is empty")
        for batch in as_loader(data, batch_size=2):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            return x[:2]
        raise ValueError("the data for reduce_layers is empty: it yielded no batch")
    if getattr(model, "in_channels", None) and getattr(model, "image_size", None):
        return torch.zeros(2, int(model.in_channels), int(model.image_size), int(model.image_size))
    raise ValueError(
        f"cannot tell the input shape of {type(model).__name__}: pass data=... or example=<input batch>"
    )


def layer_shapes(model: nn.Module, layers: Sequence[str], example: torch.Tensor) -> dict[str, tuple[tuple, tuple]]:
    """{layer: (per-sample input shape, per-sample output shape)} from one traced forward pass."""
    trace = LayerTaps(model, list(layers)).trace(example)
    return {n: (tuple(i), tuple(o)) for n, i, o in zip(trace.names, trace.input_shapes, trace.output_shapes)}


def _check_kept_inputs(reduced: nn.Module, layers: Sequence[str], removed: Sequence[str],
                       shapes: dict[str, tuple[tuple, tuple]], x: torch.Tensor, spans: Sequence["Span"]) -> None:
    """Every kept layer must receive what it received before. If not, something that is not a tapped
    layer (a pooling module, a functional call in ``forward``) ran between the removed layers and now
    runs after their replacement, which silently computes something else."""
    kept = [n for n in layers if n not in set(removed)]
    where = "; ".join(f"{s.layers}" for s in spans)
    try:
        now = layer_shapes(reduced, kept, x)
    except RuntimeError as exc:
        raise ValueError(f"the model with layers {where} removed no longer runs ({exc}); something between those "
                         "layers that is not tapped (a pooling op, a functional call) changes the shape: remove "
                         "fewer layers (modules=...) or tap that operation") from None
    for name in kept:
        if now[name][0] != shapes[name][0]:
            raise ValueError(
                f"after removing {where}, layer {name!r} would receive shape {now[name][0]} instead of "
                f"{shapes[name][0]}: something between the removed layers that is not tapped (a pooling op, a "
                "functional call) changes the shape; remove fewer layers (modules=...) or tap that operation"
            )


@dataclass
class Span:
    """A run of removed layers and how it was replaced."""

    layers: list[str]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kind: str  # "identity" | "sewing"
    fit: SewingFit | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
                "kind": self.kind, "fit": self.fit.to_dict() if self.fit else None}


@dataclass
class Reduction:
    """A reduced model with the plan that made it."""

    model: nn.Module
    removed: list[str]
    spans: list[Span] = field(default_factory=list)

    @property
    def sewing_layers(self) -> list[str]:
        return [s.layers[0] for s in self.spans if s.kind == "sewing"]

    def to_dict(self) -> dict[str, Any]:
        return {"removed": list(self.removed), "spans": [s.to_dict() for s in self.spans]}


def reduce(
    model: nn.Module,
    architecture: SemanticArchitecture,
    k: int | None = None,
    modules: Sequence[int] | None = None,
    data: Any = None,
    example: torch.Tensor | None = None,
    **sewing_kw: Any,
) -> Reduction:
    """``reduce_layers`` with its report (removed layers, spans, sewing losses)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    architecture = _check_architecture(architecture)
    unknown = set(sewing_kw) - set(SEWING_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown sewing options {sorted(unknown)}; known: {sorted(SEWING_DEFAULTS)}")
    opts = {**SEWING_DEFAULTS, **sewing_kw}
    resolve_layer_names(model, architecture.layer_names)
    removed = reduction_plan(architecture, k, modules)
    reduced = copy_model(model)
    if not removed:
        return Reduction(reduced, [], [])
    x = example_input(model, data, example)
    shapes = layer_shapes(model, architecture.layer_names, x)
    spans: list[Span] = []
    for run in contiguous_spans(architecture, removed):
        span = Span(run, shapes[run[0]][0], shapes[run[-1]][1], "identity")
        if span.in_shape != span.out_shape:
            span.kind = "sewing"
            try:
                apply_edit(reduced, {"kind": "sewing", "layer": run[0], "in_shape": list(span.in_shape),
                                     "out_shape": list(span.out_shape)})
            except ValueError as exc:
                raise ValueError(f"cannot remove layers {run} of module {architecture.module_of(run[0])}: {exc} "
                                 "(tap only the blocks whose outputs feed each other, e.g. not a Flatten or the head)") from None
            rest = run[1:]
        else:
            rest = run
        for name in rest:
            apply_edit(reduced, {"kind": "identity", "layer": name})
        spans.append(span)
    _check_kept_inputs(reduced, architecture.layer_names, removed, shapes, x, spans)
    sewing_spans = [s for s in spans if s.kind == "sewing"]
    if sewing_spans and data is None:
        raise ValueError(
            f"layers {[s.layers for s in sewing_spans]} change the tensor shape "
            f"({sewing_spans[0].in_shape} -> {sewing_spans[0].out_shape}): a sewing layer must be trained, "
            "pass data=<DataLoader or Dataset of training inputs>"
        )
    device = torch.device(opts["device"])
    loader = as_loader(data, batch_size=int(opts["batch_size"]), seed=int(opts["seed"])) if sewing_spans else None
    if sewing_spans:
        original = model
        reduced.to(device)
        needs_move = any(p.device != device for p in model.parameters())
        if needs_move:  # never move the caller's model: work on a copy
            original = copy_model(model).to(device)
        for span in sewing_spans:  # in model order, so each sees the earlier sewing layers' output
            inputs, targets = collect_pairs(reduced, original, span.layers[0], span.layers[-1], loader,
                                            int(opts["samples"]), device)
            sewing = get_submodule(reduced, span.layers[0]).cpu()
            span.fit = fit_sewing(sewing, inputs, targets, epochs=int(opts["epochs"]), lr=float(opts["lr"]),
                                  batch_size=int(opts["batch_size"]), seed=int(opts["seed"]),
                                  layer=span.layers[0], target_layer=span.layers[-1], method=str(opts["method"]))
            sewing.to(device)
        first = next(model.parameters(), None)
        reduced.to(first.device if first is not None else "cpu")
    copy_modes(model, reduced)
    return Reduction(reduced, removed, spans)


def reduce_layers(
    model: nn.Module,
    architecture: SemanticArchitecture,
    k: int | None = None,
    modules: Sequence[int] | None = None,
    data: Any = None,
    example: torch.Tensor | None = None,
    **sewing_kw: Any,
) -> nn.Module:
    """A NEW model with the redundant layers of ``architecture``'s multi-layer modules removed.

    ``k`` removes only the first k layers of the Algorithm 2 order; ``modules`` restricts the
    reduction to those module indices. ``data`` (a DataLoader or Dataset of training inputs) is
    needed when a span changes the tensor shape, to fit its sewing layer; ``sewing_kw`` tunes
    that fit (``fit_sewing``): ``method`` (auto: exact least squares, then Adam refinement),
    ``epochs`` (5), ``lr`` (0.01), ``samples`` (2048 cached pairs), ``batch_size`` (128),
    ``seed``, ``device``. ``example`` is an input batch for the shape trace
    (default: from ``data`` or the zoo model's sizes). The input model is never modified.
    """
    return reduce(model, architecture, k, modules, data, example, **sewing_kw).model
