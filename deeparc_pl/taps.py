"""Layer taps: read the outputs of named layers of ANY ``nn.Module`` during a forward pass.

``LayerTaps`` is the single place where the rest of the package touches a user's network: it
resolves layer names (with helpful errors), hooks their outputs in layer order, and traces one
forward pass to find which leaf modules (and so which parameters) run between consecutive layers.
Hooks are removed on exit, also after an exception.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .modes import evaluating

__all__ = ["LayerTaps", "LayerTrace", "default_layer_names", "resolve_layer_names", "check_layer_list", "LayerNameError"]


class LayerNameError(KeyError, ValueError):
    """A layer name that does not name a submodule of the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


_TV_RESNET_BLOCK = re.compile(r"^layer\d+\.\d+$")


def default_layer_names(model: nn.Module) -> list[str]:
    """The layers of ``model`` when the user names none.

    Order of rules: a zoo model's own ``layer_names``; the blocks ``layerN.M`` of a torchvision-style
    ResNet; the children of an ``nn.Sequential``. Anything else must name its layers.
    """
    own = getattr(model, "layer_names", None)
    if own:
        return list(own)
    blocks = [n for n, _ in model.named_modules() if _TV_RESNET_BLOCK.match(n)]
    if blocks:
        return blocks
    if isinstance(model, nn.Sequential):
        return [n for n, _ in model.named_children()]
    raise ValueError(
        f"cannot infer the layers of {type(model).__name__}: pass layers=[module names], "
        f"e.g. {[n for n, _ in model.named_modules() if n][:6]}"
    )


def check_layer_list(layers: Any) -> None:
    """A bare string is not a list of layers (it would split into letters)."""
    if isinstance(layers, (str, bytes)):
        raise TypeError(f"layers must be a list of module names, got the string {layers!r} (did you mean [{layers!r}]?)")


def resolve_layer_names(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Check that every name is a submodule; raise ``LayerNameError`` naming the nearest real ones."""
    check_layer_list(layers)
    names = default_layer_names(model) if layers is None else [str(n) for n in layers]
    if not names:
        raise ValueError("no layers to tap: the list of layer names is empty")
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for name in names:
        if name in modules and name != "":
            continue
        if name in params:
            owner = name.rsplit(".", 1)[0] if "." in name else "(the model itself)"
            raise LayerNameError(
                f"layer {name!r} is a parameter, not a module; tap its module {owner!r} instead"
            )
        near = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
        raise LayerNameError(
            f"unknown layer {name!r} in {type(model).__name__}; nearest real module names: {near}"
        )
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"layer names repeat: {dup}")
    return names


@dataclass
class LayerTrace:
    """What one traced forward pass tells about the tapped layers.

    ``spans[i]`` are the leaf modules that run after layer ``i-1`` returned, up to and including
    the end of layer ``i`` (``spans[0]`` starts at the model input, so it includes the stem).
    ``head`` are the leaf modules after the last tapped layer. Shapes are per sample (no batch).
    """

    names: list[str]
    order: list[str]
    spans: list[list[str]]
    head: list[str]
    input_shapes: list[tuple[int, ...]]
    output_shapes: list[tuple[int, ...]]
    param_owners: dict[str, list[str]] = field(default_factory=dict)

    def leaves_between(self, start: int, end: int) -> list[str]:
        """Leaf modules that run after layer ``start`` returns up to the end of layer ``end``.

        ``start=-1`` means from the model input. Used to freeze or train exactly one module.
        """
        if not -1 <= start < end < len(self.names):
            raise IndexError(f"need -1 <= start < end < {len(self.names)}, got {start}, {end}")
        out: list[str] = []
        for span in self.spans[start + 1 : end + 1]:
            out.extend(span)
        return out

    def parameter_names_between(self, start: int, end: int) -> list[str]:
        """Fully qualified parameter names owned by the leaves between layers ``start`` and ``end``."""
        out: list[str] = []
        for leaf in self.leaves_between(start, end):
            out.extend(self.param_owners.get(leaf, []))
        return out


def _per_sample_shape(x: Any) -> tuple[int, ...]:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape[1:])
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return tuple(x[0].shape[1:])
    return ()


class LayerTaps:
    """Forward hooks on named layers; ``outputs`` lists what each returned, in layer order.

    >>> with LayerTaps(model, ["layer1.0", "layer2.0"]) as taps:
    ...     model(x)
    ...     first, second = taps.outputs

    Outputs are detached unless ``keep_graph=True`` (needed to train through a tapped output).
    A layer that runs twice in one forward pass (a duplicated block) reports its last call.
    ``transform(name, output)``, when given, reduces each output inside its hook (e.g. to a Gram
    matrix), so that no layer's activation outlives the layer that produced it.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        keep_graph: bool = False,
        transform: Callable[[str, Any], Any] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"LayerTaps needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.names: list[str] = resolve_layer_names(model, layers)
        self.keep_graph = keep_graph
        self.transform = transform
        self._store: dict[str, Any] = {}
        self._handles: list[Any] = []

    # -- hooks -----------------------------------------------------------------------------------
    def _hook(self, name: str):
        def fn(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not self.keep_graph:
                output = output.detach() if isinstance(output, torch.Tensor) else output
            self._store.pop(name, None)  # a module called twice reports its last call, in its last position
            self._store[name] = self.transform(name, output) if self.transform is not None else output

        return fn

    def _clear(self, *_: Any) -> None:
        self._store.clear()

    def __enter__(self) -> "LayerTaps":
        modules = dict(self.model.named_modules())
        self._store.clear()
        self._handles.append(self.model.register_forward_pre_hook(self._clear))
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def outputs(self) -> list[Any]:
        """The tapped outputs of the last forward pass, in layer order."""
        missing = [n for n in self.names if n not in self._store]
        if missing:
            raise RuntimeError(
                f"layers {missing} did not run in the last forward pass (run model(x) inside the "
                "`with LayerTaps(...)` block, and check that these modules are used by forward())"
            )
        return [self._store[n] for n in self.names]

    @property
    def call_order(self) -> list[str]:
        """The tapped layers in the order they returned in the last forward pass."""
        return list(self._store)

    def clear(self) -> None:
        self._store.clear()

    # -- tracing ---------------------------------------------------------------------------------
    def trace(self, example: torch.Tensor) -> LayerTrace:
        """Run one forward pass on ``example`` (in eval mode, no grad) and record the execution order.

        The model's training mode is restored afterwards; nothing else is changed.
        """
        model = self.model
        modules = dict(model.named_modules())
        tapped = set(self.names)
        order: list[str] = []
        events: list[tuple[str, str]] = []  # ("leaf", name) | ("end", layer)
        shapes_in: dict[str, tuple[int, ...]] = {}
        shapes_out: dict[str, tuple[int, ...]] = {}
        param_owners: dict[str, list[str]] = {}
        handles = []

        def leaf_pre(name: str):
            def fn(_m: nn.Module, _inp: Any) -> None:
                if name not in order:
                    order.append(name)
                    events.append(("leaf", name))

            return fn

        def layer_pre(name: str):
            def fn(_m: nn.Module, inp: Any) -> None:
                shapes_in.setdefault(name, _per_sample_shape(inp))

            return fn

        def layer_post(name: str):
            def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
                shapes_out.setdefault(name, _per_sample_shape(out))
                if not any(e == ("end", name) for e in events):
                    events.append(("end", name))

            return fn

        for name, mod in modules.items():
            own = [f"{name}.{p}" if name else p for p, _ in mod.named_parameters(recurse=False)]
            own += [f"{name}.{b}" if name else b for b, _ in mod.named_buffers(recurse=False)]
            is_leaf = len(list(mod.children())) == 0
            if name and (is_leaf or own):
                param_owners[name] = own
                handles.append(mod.register_forward_pre_hook(leaf_pre(name)))
            if name in tapped:
                handles.append(mod.register_forward_pre_hook(layer_pre(name)))
                handles.append(mod.register_forward_hook(layer_post(name)))
        try:
            with evaluating(model), torch.no_grad():
                model(example)
        finally:
            for h in handles:
                h.remove()

        spans: list[list[str]] = []
        current: list[str] = []
        ended: list[str] = []
        for kind, name in events:
            if kind == "leaf":
                current.append(name)
            else:
                ended.append(name)
                spans.append(current)
                current = []
        missing = [n for n in self.names if n not in shapes_out]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in a forward pass of {type(model).__name__}")
        if ended != self.names:
            raise ValueError(
                f"the layers do not run in the order given: given {self.names}, they ran as {ended}"
            )
        return LayerTrace(
            names=list(self.names),
            order=order,
            spans=spans,
            head=current,
            input_shapes=[shapes_in[n] for n in self.names],
            output_shapes=[shapes_out[n] for n in self.names],
            param_owners=param_owners,
        )
