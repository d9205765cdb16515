"""Under-performing model mutants to repair (the paper's "model repair" task, Section IV-D).

The paper mutates a trained model "by progressively replacing its model weights with random values until
its training accuracy drops by about 10 %, 30 % and 50 %". :func:`mutate` makes that reproducible:

* the mutable entries are the ``weight`` tensors of every Conv and Linear layer (biases, norms and
  buffers are left alone, so the mutant's architecture and statistics stay those of the input);
* one seeded generator gives every entry a random key in [0, 1) and a replacement value drawn from
  ``N(0, std(tensor))`` (each tensor's own spread, so replaced weights look plausible);
* replacing "the entries whose key is below ``p``" is a nested family of mutations: raising ``p`` only
  adds replaced entries, so accuracy falls nearly monotonically in ``p``. An exponential then binary
  search on ``p`` finds a mutant whose accuracy on ``dataset`` is ``base - drop`` within ``tolerance``.

Same seed, model and data -> the identical mutant. The returned model carries ``mutation_info``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from deeparc_pl.readapt.evaluate import Data, accuracy, as_tensors, check_samples, output_classes

__all__ = ["mutate", "mutable_weights", "MutationTargetError"]


class MutationTargetError(ValueError):
    """The requested accuracy drop cannot be reached on this model and data."""


def mutable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, weight)`` of every Conv/Linear layer, in module order: what :func:`mutate` may replace."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(
            getattr(module, "weight", None), Tensor
        ):
            out.append((f"{name}.weight" if name else "weight", module.weight))
    return out


def _plan(weights: list[tuple[str, Tensor]], seed: int) -> list[tuple[Tensor, Tensor]]:
    """Per tensor: a key in [0, 1) and a replacement value for every entry, from one seeded generator."""
    gen = torch.Generator().manual_seed(int(seed))
    plan = []
    for _, w in weights:
        w_cpu = w.detach().float().cpu()
        std = float(w_cpu.std()) if w_cpu.numel() > 1 else float(w_cpu.abs().max())
        std = std if std > 0 else 1.0
        keys = torch.rand(w_cpu.shape, generator=gen)
        values = torch.randn(w_cpu.shape, generator=gen) * std
        plan.append((keys, values))
    return plan


def _apply(base: nn.Module, plan: list[tuple[Tensor, Tensor]], fraction: float) -> tuple[nn.Module, int]:
    """A copy of ``base`` with the entries whose key < ``fraction`` replaced; returns it and the count."""
    mutant = copy.deepcopy(base)
    count = 0
    with torch.no_grad():
        for (_, w), (keys, values) in zip(mutable_weights(mutant), plan):
            mask = keys < fraction
            count += int(mask.sum())
            w.copy_(torch.where(mask, values, w.detach().float().cpu()).to(dtype=w.dtype, device=w.device))
    return mutant, count


_Found = tuple  # (distance to target, fraction, mutant, mutated count, accuracy)


def _search(
    base: nn.Module,
    plan: list[tuple[Tensor, Tensor]],
    data: tuple[Tensor, Tensor],
    target: float,
    tolerance: float,
    total: int,
    max_evals: int,
    batch_size: int,
) -> tuple[_Found, int, bool]:
    """Exponential then binary search on the replaced fraction; returns (closest, evaluations, reachable)."""
    evals = 0
    best: _Found | None = None

    def score(fraction: float) -> float:
        nonlocal evals, best
        mutant, count = _apply(base, plan, fraction)
        acc = accuracy(mutant, data, batch_size=batch_size)
        evals += 1
        if best is None or abs(acc - target) < best[0]:
            best = (abs(acc - target), fraction, mutant, count, acc)
        return acc

    # Exponential search for a bracket: acc(lo) above the band, acc(hi) below it.
    lo, hi = 0.0, None
    fraction = 1.0 / total
    while evals < max_evals:
        acc = score(fraction)
        if abs(acc - target) <= tolerance:
            break
        if acc < target:
            hi = fraction
            break
        lo = fraction
        if fraction >= 1.0:
            assert best is not None
            return (best[0], best[1], best[2], best[3], acc), evals, False
        fraction = min(1.0, fraction * 4)
    assert best is not None
    # Binary search inside the bracket (geometric midpoints: accuracy moves on a log scale of p).
    while best[0] > tolerance and evals < max_evals and hi is not None:
        mid = (lo * hi) ** 0.5 if lo > 0 else hi / 2
        if not lo < mid < hi:
            break
        if score(mid) > target:
            lo = mid
        else:
            hi = mid
        if (hi - lo) * total < 1:
            break
    return best, evals, True


def mutate(
    model: nn.Module,
    dataset: Data,
    drop: float,
    tolerance: float = 0.02,
    seed: int = 0,
    *,
    batch_size: int = 256,
    limit: int | None = None,
    max_evals: int = 30,
    max_attempts: int = 4,
) -> nn.Module:
    """A new model whose accuracy on ``dataset`` is ``drop`` below ``model``'s, within ``tolerance``.

    Args:
        model: a trained classifier returning logits; never changed.
        dataset: the data the accuracy is measured on (the paper uses the training data).
        drop: absolute accuracy drop in (0, 1), e.g. 0.1, 0.3, 0.5.
        tolerance: accepted distance between the mutant's accuracy and ``base - drop``.
        seed: seeds which entries are replaced and by what; same seed -> identical mutant.
        batch_size: evaluation batch size. limit: use only the first ``limit`` samples.
        max_evals: at most this many accuracy evaluations per search attempt.
        max_attempts: when accuracy jumps over the tolerance band (one replaced conv weight can move
            accuracy by several points), retry with plans derived from ``seed`` (``seed + a * 1000003``).

    Returns:
        the mutant (eval mode), with ``mutant.mutation_info`` = dict(seed, drop, tolerance,
        base_accuracy, target_accuracy, accuracy, attempt, fraction, mutated, total, evaluations).

    Raises:
        ValueError: bad ``drop``/``tolerance``, empty data or a model without Conv/Linear weights;
        MutationTargetError (a ValueError): the target is below chance or the search cannot meet it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0.0 < drop < 1.0:
        raise ValueError(f"drop must be a number in (0, 1), got {drop!r}")
    if not isinstance(tolerance, (int, float)) or not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be a number in (0, 1), got {tolerance!r}")
    if max_evals < 2 or max_attempts < 1:
        raise ValueError(f"need max_evals >= 2 and max_attempts >= 1, got {max_evals} and {max_attempts}")
    x, y = as_tensors(dataset, limit=limit, batch_size=batch_size)
    check_samples(x, y, "the data", output_classes(model, x))
    data = (x, y)

    base = copy.deepcopy(model).eval()
    weights = mutable_weights(base)
    total = sum(w.numel() for _, w in weights)
    if total == 0:
        raise ValueError("the model has no Conv/Linear weights to mutate")

    base_acc = accuracy(base, data, batch_size=batch_size)
    target = base_acc - float(drop)
    chance = float(torch.bincount(y.reshape(-1).long()).max()) / len(y)  # a constant predictor's accuracy
    if target < chance - tolerance:
        raise MutationTargetError(
            f"cannot drop accuracy by {drop}: the model scores {base_acc:.4f}, so the target {target:.4f} "
            f"is below chance level {chance:.4f} (most frequent class)"
        )

    evals, result = 0, None
    for attempt in range(max_attempts):
        # Attempt 0 uses ``seed`` itself; later attempts derive fresh plans from it, so the result
        # stays a function of ``seed`` alone.
        plan = _plan(weights, int(seed) + attempt * 1_000_003)
        found, used, reachable = _search(base, plan, data, target, tolerance, total, max_evals, batch_size)
        evals += used
        if not reachable:
            raise MutationTargetError(
                f"replacing every Conv/Linear weight leaves accuracy at {found[4]:.4f}, above the target "
                f"{target:.4f} +- {tolerance}; ask for a smaller drop"
            )
        if result is None or found[0] < result[0]:
            result = found
        if result[0] <= tolerance:
            break
    assert result is not None
    dist, fraction, mutant, count, acc = result
    if dist > tolerance:
        raise MutationTargetError(
            f"no mutant within {tolerance} of target accuracy {target:.4f} after {evals} evaluations over "
            f"{max_attempts} attempts (closest: {acc:.4f}); accuracy jumps too much between neighbouring "
            "mutants on this data: use more samples, a larger tolerance or another seed"
        )
    mutant.mutation_info = {
        "seed": int(seed),
        "drop": float(drop),
        "tolerance": float(tolerance),
        "base_accuracy": base_acc,
        "target_accuracy": target,
        "accuracy": acc,
        "attempt": attempt,
        "fraction": fraction,
        "mutated": count,
        "total": total,
        "evaluations": evals,
    }
    return mutant.eval()
