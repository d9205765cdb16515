"""Run a network from a layer boundary, with the frozen prefix computed once and cached.

Modular training leaves everything before the trained module frozen. When the inputs do not change
between epochs (no augmentation), the prefix output at the *boundary* layer (the previous module's
last layer) is the same every epoch, so it is computed once per sample and each step runs only the
module and what follows it.

How a model is "run from layer i" without knowing its code (:class:`PrefixRunner`):

* capture: a forward hook on the boundary layer stores its output and raises a private exception,
  so nothing after the boundary runs (under ``no_grad``);
* resume: for one call, every prefix leaf's ``forward`` is replaced by the identity (it costs nothing
  and builds no graph) and the boundary layer's ``forward`` returns the cached tensor; the rest of the
  model's own ``forward`` runs as written.

Limits: this is correct when the prefix leaves are used only before the boundary (no module shared
with the suffix), their outputs reach the suffix only through the boundary layer, and the model's own
code between prefix leaves accepts the raw input (element-wise ops, additions of same-shaped tensors,
``Sequential``): true for the zoo models (ResNet, WRN, VGG, MLP) and most chain-like networks.
:meth:`PrefixRunner.verify` checks it on real data before use; :func:`build_prefix_cache` returns
``None`` (and the task falls back to the plain forward pass) when the check fails.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..modes import evaluating

__all__ = ["PrefixRunner", "PrefixCache", "build_prefix_cache"]


class _BoundaryReached(Exception):
    """Raised inside the forward pass once the boundary layer has returned (private)."""

    def __init__(self, output: Tensor):
        super().__init__("boundary reached")
        self.output = output


def _identity(*args: Any, **kwargs: Any) -> Any:
    if not args:
        raise TypeError("a skipped prefix leaf was called without a positional input")
    return args[0]


class PrefixRunner:
    """Split ``model`` at the output of the layer ``boundary``; ``prefix_leaves`` run before it."""

    def __init__(self, model: nn.Module, boundary: str, prefix_leaves: Sequence[str]):
        modules = dict(model.named_modules())
        if boundary not in modules:
            raise KeyError(f"no layer {boundary!r} in {type(model).__name__}")
        missing = [n for n in prefix_leaves if n not in modules]
        if missing:
            raise KeyError(f"prefix leaves {missing[:5]} are not modules of {type(model).__name__}")
        self.model = model
        self.boundary = boundary
        self.prefix_leaves = list(prefix_leaves)

    def _modules(self) -> dict[str, nn.Module]:
        return dict(self.model.named_modules())

    @torch.no_grad()
    def capture(self, x: Tensor) -> Tensor:
        """The boundary layer's output for input ``x`` (nothing after it runs; no graph)."""
        layer = self._modules()[self.boundary]

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            raise _BoundaryReached(out)

        handle = layer.register_forward_hook(hook)
        try:
            self.model(x)
        except _BoundaryReached as stop:
            out = stop.output
        else:
            raise RuntimeError(f"layer {self.boundary!r} did not run in the forward pass")
        finally:
            handle.remove()
        if not isinstance(out, Tensor):
            raise TypeError(f"layer {self.boundary!r} returns {type(out).__name__}; only tensors can be cached")
        return out.detach()

    @contextlib.contextmanager
    def resume(self, boundary_output: Tensor) -> Iterator[None]:
        """Within the block, ``model(x)`` skips the prefix and continues from ``boundary_output``."""
        modules = self._modules()
        patched: list[nn.Module] = []
        try:
            for name in self.prefix_leaves:
                if name == self.boundary:
                    continue
                modules[name].forward = _identity  # type: ignore[method-assign]
                patched.append(modules[name])
            layer = modules[self.boundary]
            layer.forward = lambda *a, **k: boundary_output  # type: ignore[method-assign]
            patched.append(layer)
            yield
        finally:
            for m in patched:
                if "forward" in m.__dict__:
                    del m.forward

    def forward_from(self, x: Tensor, boundary_output: Tensor) -> Any:
        """``model(x)`` computed from the cached boundary output (``x`` only flows through skipped code)."""
        with self.resume(boundary_output):
            return self.model(x)

    @torch.no_grad()
    def verify(self, x: Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
        """Does the split reproduce ``model(x)`` in eval mode? Never raises; modes are restored."""
        try:
            with evaluating(self.model):
                full = self.model(x)
                resumed = self.forward_from(x, self.capture(x))
            return isinstance(full, Tensor) and full.shape == resumed.shape and torch.allclose(full, resumed, rtol=rtol, atol=atol)
        except Exception:  # any failure means the model cannot be split this way
            return False


class PrefixCache:
    """Boundary outputs of a fixed set of inputs, indexed by sample position."""

    def __init__(self, runner: PrefixRunner, values: Tensor):
        self.runner = runner
        self.values = values

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def lookup(self, index: Tensor) -> Tensor:
        return self.values[index.to(self.values.device)]

    def forward(self, x: Tensor, index: Tensor) -> Any:
        """The model's output for the samples at ``index`` (``x`` are their inputs)."""
        return self.runner.forward_from(x, self.lookup(index).to(x.device))


def build_prefix_cache(
    model: nn.Module,
    boundary: str,
    prefix_leaves: Sequence[str],
    inputs: Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    check: bool = True,
) -> PrefixCache | None:
    """Compute and store the boundary output of every row of ``inputs`` (in order) on ``device``.

    The prefix runs as the model is now (the caller puts frozen leaves in eval mode first). Returns
    ``None`` with a warning when ``check`` finds the model cannot be split at ``boundary``.
    """
    runner = PrefixRunner(model, boundary, prefix_leaves)
    dev = next((p.device for p in model.parameters()), torch.device("cpu")) if device is None else torch.device(device)
    if check and not runner.verify(inputs[: min(len(inputs), 8)].to(dev)):
        warnings.warn(
            f"{type(model).__name__} cannot be run from layer {boundary!r} (the prefix is not a clean "
            "chain); training without the prefix cache",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    chunks = [runner.capture(inputs[i : i + batch_size].to(dev)) for i in range(0, len(inputs), batch_size)]
    return PrefixCache(runner, torch.cat(chunks))
