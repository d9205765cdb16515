"""Local training of a sewing layer (paper section II-B).

A sewing layer stands where a removed span of layers began. Its training data are pairs
(input the sewing layer receives in the REDUCED model, output of the span's last layer in the
ORIGINAL model), so an earlier sewing layer's imperfection is seen and compensated by a later
one. The pairs are cached once (forward passes stop as soon as the wanted tensor is seen), then
the sewing layer alone is fitted with an L2 (mean squared error) loss; nothing else is trained.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..modes import evaluating, modes_of, restore_modes
from ..models.edits import get_submodule
from ..models.sewing import Sewing

__all__ = ["SewingFit", "as_loader", "capture", "collect_pairs", "fit_sewing", "solve_sewing", "recalibrate_batchnorm"]


@dataclass
class SewingFit:
    """How one sewing layer was fitted: mean squared error before and after, and per epoch."""

    layer: str
    target_layer: str
    samples: int
    loss_before: float
    loss_after: float
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("layer", "target_layer", "samples", "loss_before", "loss_after", "losses")}


class _Stop(Exception):
    """Raised inside a hook to end a forward pass once the wanted tensor is captured."""


def as_loader(data: DataLoader | Dataset | Iterable[Any], batch_size: int = 128, seed: int = 0) -> Iterable[Any]:
    """A DataLoader as is; a Dataset wrapped in a seeded shuffling DataLoader."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset):
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
    if isinstance(data, Iterable):
        return data
    raise TypeError(f"data must be a DataLoader or a Dataset, got {type(data).__name__}")


def _inputs(batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a batch must be a tensor or (inputs, targets, ...), got {type(x).__name__}")
    return x


def _batches(data: Iterable[Any], samples: int) -> Iterator[torch.Tensor]:
    seen = 0
    for batch in data:
        x = _inputs(batch)
        if seen + len(x) > samples:
            x = x[: samples - seen]
        if len(x):
            yield x
        seen += len(x)
        if seen >= samples:
            return


def capture(model: nn.Module, name: str, x: torch.Tensor, what: str = "output") -> torch.Tensor:
    """The input (``what="input"``) or output of submodule ``name`` on ``x``, in eval mode, no grad.

    The forward pass is cut short right after the tensor is seen; the model's mode is restored.
    """
    if what not in ("input", "output"):
        raise ValueError(f"what must be 'input' or 'output', got {what!r}")
    module = get_submodule(model, name)
    box: list[torch.Tensor] = []

    def pre(_m: nn.Module, inp: Any) -> None:
        box.append(inp[0].detach())
        raise _Stop

    def post(_m: nn.Module, _inp: Any, out: Any) -> None:
        box.append((out[0] if isinstance(out, (tuple, list)) else out).detach())
        raise _Stop

    handle = module.register_forward_pre_hook(pre) if what == "input" else module.register_forward_hook(post)
    try:
        with evaluating(model), torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise RuntimeError(f"submodule {name!r} did not run in a forward pass of {type(model).__name__}")
    return box[0]


def collect_pairs(
    reduced: nn.Module,
    original: nn.Module,
    sewing_layer: str,
    target_layer: str,
    data: Iterable[Any],
    samples: int = 2048,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs of ``sewing_layer`` in ``reduced``, outputs of ``target_layer`` in ``original``), on CPU."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    xs, ys = [], []
    for x in _batches(data, samples):
        x = x.to(device)
        xs.append(capture(reduced, sewing_layer, x, "input").cpu())
        ys.append(capture(original, target_layer, x, "output").cpu())
    if not xs:
        raise ValueError("the data for the sewing layer is empty")
    inputs, targets = torch.cat(xs), torch.cat(ys)
    for tensor, what in ((inputs, f"the input of {sewing_layer!r} in the reduced model"),
                         (targets, f"the output of {target_layer!r} in the original model")):
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:  # a sewing layer fitted to NaN would make the whole reduced model output NaN
            raise ValueError(f"{what} has {bad} NaN/inf values on the sewing data: cannot fit the sewing layer")
    return inputs, targets


def recalibrate_batchnorm(module: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> None:
    """Recompute BN running statistics of ``module`` as exact averages over ``inputs``."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    modes = modes_of(module)
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        module.train()
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                chunk = inputs[i : i + batch_size]
                if len(chunk) > 1:
                    module(chunk)
    finally:
        for m, mom in zip(norms, saved):
            m.momentum = mom
        restore_modes(modes)


def _mse(module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            out = module(inputs[i : i + batch_size])
            total += float(F.mse_loss(out, targets[i : i + batch_size], reduction="sum"))
            count += targets[i : i + batch_size].numel()
    return total / max(count, 1)


def _affine_features(sewing: Sewing, inputs: torch.Tensor) -> torch.Tensor:
    """What the sewing layer's linear map sees, one row per output position."""
    if hasattr(sewing, "linear"):
        return inputs.reshape(len(inputs), -1)
    with torch.no_grad():
        z = sewing.pool(inputs)
        stride = sewing.conv.stride
        z = z[:, :, :: stride[0], :: stride[1]]
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def solve_sewing(sewing: Sewing, inputs: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-6) -> None:
    """Set ``sewing`` IN PLACE to the exact least-squares (L2) fit of ``targets`` from ``inputs``.

    A ``Sewing`` layer in eval mode is affine (pooling, 1x1 convolution or linear, batch norm), so
    the minimiser of the mean squared error has a closed form: ridge-regularised normal equations
    in float64. Batch norm is set to the identity map plus the fitted bias.
    """
    feats = _affine_features(sewing, inputs).double()
    if hasattr(sewing, "linear"):
        ys = targets.reshape(len(targets), -1).double()
    else:
        ys = targets.permute(0, 2, 3, 1).reshape(-1, targets.shape[1]).double()
    if feats.shape[0] != ys.shape[0]:
        raise ValueError(f"sewing input {tuple(inputs.shape)} does not map onto targets {tuple(targets.shape)}")
    ones = torch.ones(len(feats), 1, dtype=feats.dtype)
    a = torch.cat([feats, ones], dim=1)
    gram = a.T @ a
    gram += ridge * torch.trace(gram) / gram.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype)
    coef = torch.linalg.solve(gram, a.T @ ys)  # (features + 1, outputs)
    weight, bias = coef[:-1].T.float(), coef[-1].float()
    with torch.no_grad():
        if hasattr(sewing, "linear"):
            sewing.linear.weight.copy_(weight)
            sewing.linear.bias.copy_(bias)
            return
        sewing.conv.weight.copy_(weight.reshape(sewing.conv.weight.shape))
        bn = sewing.bn
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(float((1.0 + bn.eps) ** 0.5))
        bn.bias.copy_(bias)


def fit_sewing(
    sewing: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    epochs: int = 20,
    lr: float = 1e-2,
    batch_size: int = 128,
    seed: int = 0,
    layer: str = "",
    target_layer: str = "",
    method: str = "auto",
) -> SewingFit:
    """Fit ``sewing`` IN PLACE so that ``sewing(inputs) ~ targets`` under the L2 (mean squared) loss.

    ``method``: ``"lstsq"`` solves a ``Sewing`` layer exactly (``solve_sewing``) and then runs
    ``epochs`` of Adam with batch norm frozen, keeping the better of the two; ``"adam"`` trains
    from the current weights with Adam (batch norm in training mode, recalibrated at the end);
    ``"auto"`` (default) is lstsq for a ``Sewing`` layer and adam for any other module. The layer
    is left in eval mode. Returns the loss (eval mode) before and after, and per epoch.
    """
    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if method == "auto":
        method = "lstsq" if isinstance(sewing, Sewing) else "adam"
    if method not in ("lstsq", "adam"):
        raise ValueError(f"method must be 'auto', 'lstsq' or 'adam', got {method!r}")
    if method == "lstsq" and not isinstance(sewing, Sewing):
        raise TypeError(f"method='lstsq' needs a Sewing layer, got {type(sewing).__name__}")
    sewing.eval()
    before = _mse(sewing, inputs, targets, batch_size)
    if method == "lstsq":
        solve_sewing(sewing, inputs, targets)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(sewing.parameters(), lr=lr if method == "adam" else lr * 0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    best = _mse(sewing, inputs, targets, batch_size)
    best_state = {k: v.clone() for k, v in sewing.state_dict().items()}
    losses: list[float] = [best] if method == "lstsq" else []
    sewing.train(method == "adam")
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=gen)
        running, steps = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            loss = F.mse_loss(sewing(inputs[idx]), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            steps += 1
        sched.step()
        losses.append(running / max(steps, 1))
    if method == "adam":
        recalibrate_batchnorm(sewing, inputs)
    sewing.eval()
    after = _mse(sewing, inputs, targets, batch_size)
    if method == "lstsq" and after > best:  # gradient steps only ever refine the exact fit
        sewing.load_state_dict(best_state)
        after = best
    return SewingFit(layer, target_layer, len(inputs), before, after, losses)
