"""Iterative compression with and without DeepArc layer reduction (paper RQ3, Table II).

One round = prune ``step`` (20 %) of the weights still there with a pruner plugin, fine-tune with a
Lightning ``Trainer`` + ``Classifier``, evaluate on the test split. The remaining share after r
rounds is (1 - step)^r of the starting model's prunable weights (0.8, 0.64, ... as in the pruners'
reference code). A round is rejected, and the loop stops with the previous model, when its test
accuracy falls more than ``tolerance`` below the ORIGINAL model's; the loop also stops at
``target_sparsity`` (against the ORIGINAL prunable count) or after ``max_rounds``.

With an architecture, the model is first reduced (``reduce_layers``, sewing layers fitted on the
training data), then the same loop runs with the same step, tolerance and fine-tuning budget.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from ..architecture.semantic import SemanticArchitecture
from ..fileio import check_writable, write_json, write_text
from ..models.edits import get_edits, record_edit
from ..pruners.masks import copy_model, is_masked, prunable_layers
from .cost import ModelCost, count_parameters, count_prunable, measure_cost
from .reduction import reduce

__all__ = [
    "RoundRecord",
    "CompressionResult",
    "compress",
    "compare_compression",
    "evaluate",
    "example_batch",
    "finetune",
    "record_pruning",
    "report_rows",
    "report_markdown",
    "write_report",
]

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,  # decisions use the test split, as in the paper; no validation pass needed
    "accelerator": "cpu",
    "devices": 1,
}


@dataclass
class RoundRecord:
    """One pruning round. ``remaining``/``sparsity`` are against the ORIGINAL prunable weight count;
    ``asked`` is the sparsity the pruner was asked for, relative to the model it was handed."""

    round: int
    asked: float
    remaining: float
    sparsity: float
    test_acc: float
    accepted: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CompressionResult:
    """The outcome of one compression run (``deeparc=True``: layer reduction first)."""

    pruner: str
    deeparc: bool
    model: nn.Module
    original_acc: float
    start_acc: float
    final_acc: float
    rounds: int
    stop_reason: str
    history: list[RoundRecord] = field(default_factory=list)
    reduction: dict[str, Any] | None = None
    original_prunable: int = 0
    original_params: int = 0
    cost: ModelCost | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    start_remaining: float = 1.0  # prunable share of the original left after layer reduction (1.0 without)

    @property
    def label(self) -> str:
        return f"{self.pruner}+deeparc" if self.deeparc else self.pruner

    @property
    def within_tolerance(self) -> bool:
        """Whether the final model is within ``tolerance`` of the original accuracy (a DeepArc run whose
        reduction alone falls below it, with no round recovering, is not)."""
        return self.final_acc >= self.original_acc - float(self.settings.get("tolerance", 0.0)) - 1e-12

    @property
    def remaining(self) -> float:
        """Nonzero prunable weights of the final model / prunable weights of the ORIGINAL model."""
        return count_prunable(self.model)[1] / self.original_prunable if self.original_prunable else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pruner": self.pruner,
            "deeparc": self.deeparc,
            "original_acc": self.original_acc,
            "start_acc": self.start_acc,
            "final_acc": self.final_acc,
            "rounds": self.rounds,
            "stop_reason": self.stop_reason,
            "within_tolerance": self.within_tolerance,
            "remaining": self.remaining,
            "sparsity": 1.0 - self.remaining,
            "original_prunable": self.original_prunable,
            "original_params": self.original_params,
            "history": [r.to_dict() for r in self.history],
            "reduction": self.reduction,
            "cost": self.cost.to_dict() if self.cost else None,
            "settings": dict(self.settings),
            "seconds": self.seconds,
            "start_remaining": self.start_remaining,
        }


# -- Lightning glue -------------------------------------------------------------------------------
def _trainer(trainer_kwargs: Mapping[str, Any] | None, **overrides: Any) -> pl.Trainer:
    kwargs = {**TRAINER_DEFAULTS, **dict(trainer_kwargs or {}), **overrides}
    return pl.Trainer(**kwargs)


def _num_classes(model: nn.Module, datamodule: Any) -> int:
    n = getattr(model, "num_classes", None) or getattr(datamodule, "num_classes", None)
    if not n:
        raise ValueError("cannot tell the number of classes: give the model or the data module a num_classes attribute")
    return int(n)


def evaluate(model: nn.Module, datamodule: Any, trainer_kwargs: Mapping[str, Any] | None = None) -> float:
    """Test accuracy of ``model`` on ``datamodule``'s test split (Lightning ``Trainer.test``)."""
    from ..training import Classifier

    task = Classifier(model, num_classes=_num_classes(model, datamodule))
    kwargs = {k: v for k, v in dict(trainer_kwargs or {}).items() if k != "max_epochs"}
    results = _trainer(kwargs).test(task, datamodule=datamodule, verbose=False)
    model.eval()
    if not results or "test_acc" not in results[0]:
        raise RuntimeError("the test loop returned no test_acc (is the test split empty?)")
    return float(results[0]["test_acc"])


def finetune(
    model: nn.Module,
    datamodule: Any,
    epochs: int = 1,
    lr: float = 0.01,
    optimizer: str = "sgd",
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Fine-tune ``model`` IN PLACE for ``epochs`` (Lightning ``Trainer.fit``; masks stay in force)."""
    from ..training import Classifier

    if epochs <= 0:
        return model
    task = Classifier(model, num_classes=_num_classes(model, datamodule), optimizer=optimizer, lr=lr)
    model.train()  # batch norm learns again; Lightning keeps the modes it is handed
    _trainer(trainer_kwargs, max_epochs=int(epochs)).fit(task, datamodule=datamodule)
    model.eval()
    return model


# -- pruning bookkeeping --------------------------------------------------------------------------
def example_batch(datamodule: Any, batch_size: int = 1) -> torch.Tensor:
    datamodule.setup("test")
    for batch in datamodule.test_dataloader():
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if len(x) >= batch_size:
            return x[:batch_size].detach().cpu()
        return torch.cat([x] * math.ceil(batch_size / len(x)))[:batch_size].detach().cpu()
    raise ValueError("the test split is empty")


def record_pruning(model: nn.Module, pruner: Any, example: torch.Tensor) -> nn.Module:
    """Record what ``pruner`` just did to ``model`` (its output) so a checkpoint can replay it.

    Structured pruning (a report with ``pruning_history``) becomes a ``torch_pruning`` edit with the
    input shape; masks become a ``masks`` edit naming the masked layers not recorded yet.
    """
    report = getattr(pruner, "report", None)
    extra = getattr(report, "extra", None) or {}
    if extra.get("pruning_history") is not None:
        history = [[str(n), bool(out), [int(i) for i in idx]] for n, out, idx in extra["pruning_history"]]
        if history:
            record_edit(model, {"kind": "torch_pruning", "input_shape": list(example.shape[1:]), "history": history})
        return model
    masked = [n for n, m in prunable_layers(model) if is_masked(m)]
    done = {n for e in get_edits(model) if e.get("kind") == "masks" for n in e.get("layers", [])}
    new = [n for n in masked if n not in done]
    if new:
        record_edit(model, {"kind": "masks", "layers": new})
    return model


def _get_pruner(pruner: Any) -> Any:
    if isinstance(pruner, str):
        from ..pruners import get

        return get(pruner)
    if not hasattr(pruner, "prune") or not hasattr(pruner, "name"):
        raise TypeError(f"pruner must be a plugin name or an object with .name and .prune(model, sparsity), got {pruner!r}")
    return pruner


def _validate(tolerance: float, target_sparsity: float | None, step: float, max_rounds: int) -> None:
    if not 0 < step < 1:  # also refuses NaN
        raise ValueError(f"step must lie in (0, 1) (share of remaining weights pruned per round), got {step}")
    if not 0 <= tolerance < float("inf"):
        raise ValueError(f"tolerance must be a finite number >= 0 (accuracy, e.g. 0.01 = 1 point), got {tolerance}")
    if target_sparsity is not None and not 0 < target_sparsity < 1:
        raise ValueError(f"target_sparsity must lie in (0, 1), got {target_sparsity}")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ValueError(f"max_rounds must be an int >= 0, got {max_rounds!r}")


def _sewing_data(datamodule: Any) -> Any:
    datamodule.setup("fit")
    data = getattr(datamodule, "train_set", None)
    return data if data is not None else datamodule.train_dataloader()


# -- the loop -------------------------------------------------------------------------------------
def compress(
    model: nn.Module,
    pruner: Any,
    datamodule: Any,
    architecture: SemanticArchitecture | None = None,
    *,
    tolerance: float = 0.01,
    target_sparsity: float | None = None,
    step: float = 0.2,
    finetune_epochs: int = 1,
    lr: float = 0.01,
    optimizer: str = "sgd",
    max_rounds: int = 20,
    reduce_k: int | None = None,
    reduce_modules: Sequence[int] | None = None,
    sewing: Mapping[str, Any] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    original_acc: float | None = None,
    seed: int = 0,
    measure: bool = True,
    latency_repeats: int = 30,
    latency_batch_size: int = 1,
    log: Any = None,
) -> CompressionResult:
    """Prune ``model`` round by round until accuracy or ``target_sparsity`` stops it (see module doc).

    ``pruner`` is a plugin name (``deeparc_pl.pruners.get``) or a ``Pruner``. With ``architecture``
    the model is first reduced (``reduce_k``/``reduce_modules`` as in ``reduce_layers``; ``sewing``
    options as its ``sewing_kw``). ``trainer_kwargs`` go to every Lightning ``Trainer`` (fine-tuning
    and testing; ``max_epochs`` is ``finetune_epochs``). ``original_acc`` skips re-testing the
    original. ``measure`` adds parameter counts, MACs and CPU latency (median of
    ``latency_repeats`` forwards of ``latency_batch_size`` samples). ``log`` is a callable taking
    one line of progress (e.g. ``print``). The input model is never modified.
    """
    _validate(tolerance, target_sparsity, step, max_rounds)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    plugin = _get_pruner(pruner)
    say = log or (lambda _line: None)
    t0 = time.perf_counter()
    example = example_batch(datamodule, latency_batch_size)
    if hasattr(plugin, "example_inputs") and getattr(plugin, "example_inputs") is None:
        plugin.example_inputs = example[:1]  # graph-tracing pruners (structured) need an input of the data's shape
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ValueError(f"the model has NaN/inf weights in {bad[:5]}: pruning scores would be meaningless")
    original = copy_model(model).cpu()
    original_prunable, _ = count_prunable(original)
    original_params, _ = count_parameters(original)
    if original_prunable == 0:
        raise ValueError("the model has no prunable weights (nn.Conv2d / nn.Linear)")
    if original_acc is None:
        original_acc = evaluate(copy_model(original), datamodule, trainer_kwargs)
        say(f"original test accuracy {original_acc:.4f}")
    floor = original_acc - tolerance

    reduction = None
    current = original
    start_acc = original_acc
    if architecture is not None:
        red = reduce(original, architecture, reduce_k, reduce_modules, data=_sewing_data(datamodule),
                     **{"seed": seed, **dict(sewing or {})})
        current, reduction = red.model, red.to_dict()
        start_acc = evaluate(copy_model(current), datamodule, trainer_kwargs)
        say(f"reduced: removed {len(red.removed)} layers {red.removed}, sewing {red.sewing_layers}; "
            f"test accuracy {start_acc:.4f}")

    start_prunable, _ = count_prunable(current)
    goal = None if target_sparsity is None else (1.0 - target_sparsity) * original_prunable  # weights to keep
    history: list[RoundRecord] = []
    stop = "max_rounds"
    if goal is not None and count_prunable(current)[1] <= goal:
        stop = "target_sparsity"
    else:
        for r in range(1, max_rounds + 1):
            t_round = time.perf_counter()
            keep = start_prunable * (1.0 - step) ** r
            final = goal is not None and keep <= goal
            if final:
                keep = goal
            total, _ = count_prunable(current)
            asked = min(max(1.0 - keep / total, 0.0), 1.0 - 1e-9)
            pruned = plugin.prune(copy_model(current), asked)  # a plugin pruning in place cannot touch `current`
            record_pruning(pruned, plugin, example)
            pl.seed_everything(seed + r, workers=True, verbose=False)
            finetune(pruned, datamodule, finetune_epochs, lr, optimizer, trainer_kwargs)
            acc = evaluate(pruned, datamodule, trainer_kwargs)
            remaining = count_prunable(pruned)[1] / original_prunable
            accepted = acc >= floor - 1e-12
            history.append(RoundRecord(r, asked, remaining, 1.0 - remaining, acc, accepted,
                                       time.perf_counter() - t_round))
            say(f"round {r}: asked sparsity {asked:.4f}, remaining {remaining:.4f} of the original weights, "
                f"test accuracy {acc:.4f} ({'kept' if accepted else 'rejected: below ' + format(floor, '.4f')})")
            if not accepted:
                stop = "tolerance"
                break
            current = pruned
            if final:
                stop = "target_sparsity"
                break
    accepted_rounds = [h for h in history if h.accepted]
    final_acc = accepted_rounds[-1].test_acc if accepted_rounds else start_acc
    current.eval()
    result = CompressionResult(
        pruner=str(plugin.name), deeparc=architecture is not None, model=current, original_acc=original_acc,
        start_acc=start_acc, final_acc=final_acc, rounds=len(accepted_rounds), stop_reason=stop, history=history,
        reduction=reduction, original_prunable=original_prunable, original_params=original_params,
        start_remaining=start_prunable / max(original_prunable, 1),
        settings={"tolerance": tolerance, "target_sparsity": target_sparsity, "step": step,
                  "finetune_epochs": finetune_epochs, "lr": lr, "optimizer": optimizer, "max_rounds": max_rounds,
                  "reduce_k": reduce_k, "reduce_modules": list(reduce_modules) if reduce_modules else None,
                  "seed": seed},
    )
    if measure:
        result.cost = measure_cost(current, example, original_prunable, latency_repeats)
    result.seconds = time.perf_counter() - t0
    return result


def compare_compression(
    model: nn.Module,
    pruner: Any,
    datamodule: Any,
    architecture: SemanticArchitecture | None,
    deeparc: str = "both",
    **kwargs: Any,
) -> list[CompressionResult]:
    """``compress`` without and/or with DeepArc (``deeparc``: both | without | with), same settings.

    The original model is tested once and shared. ``pruner`` may be a name (a fresh plugin per run).
    """
    if deeparc not in ("both", "with", "without"):
        raise ValueError(f"deeparc must be 'both', 'with' or 'without', got {deeparc!r}")
    if deeparc != "without" and architecture is None:
        raise ValueError("compression with DeepArc needs an architecture (deeparc_pl.modularize or architecture.json)")
    if kwargs.get("original_acc") is None:
        kwargs["original_acc"] = evaluate(copy_model(model), datamodule, kwargs.get("trainer_kwargs"))
    runs = [False, True] if deeparc == "both" else [deeparc == "with"]
    out = []
    for with_arc in runs:
        plugin = _get_pruner(pruner) if isinstance(pruner, str) else pruner
        out.append(compress(model, plugin, datamodule, architecture if with_arc else None, **kwargs))
    return out


# -- reports --------------------------------------------------------------------------------------
def report_rows(results: Iterable[CompressionResult], original: nn.Module | None = None,
                original_acc: float | None = None, original_cost: ModelCost | None = None) -> list[dict[str, Any]]:
    """One table row per result (plus the original model first when its numbers are given)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, rounds: Any, acc: float, ref_acc: float, cost: ModelCost | None, stop: str) -> dict[str, Any]:
        return {
            "method": name,
            "rounds": rounds,
            "remaining %": round(100 * cost.remaining, 2) if cost else None,
            "sparsity %": round(100 * cost.sparsity, 2) if cost else None,
            "test acc %": round(100 * acc, 2),
            "delta acc": round(100 * (acc - ref_acc), 2),
            "params (nonzero)": cost.params_nonzero if cost else None,
            "params (total)": cost.params_total if cost else None,
            "MMACs (dense)": round(cost.macs_dense / 1e6, 2) if cost else None,
            "MMACs (nonzero)": round(cost.macs_nonzero / 1e6, 2) if cost else None,
            "latency ms": round(cost.latency_ms, 3) if cost and cost.latency_ms is not None else None,
            "stop": stop,
        }

    results = list(results)
    if original_acc is not None:
        rows.append(row("original", 0, original_acc, original_acc, original_cost, "-"))
    for r in results:
        rows.append(row(r.label, r.rounds, r.final_acc, r.original_acc, r.cost, r.stop_reason))
    return rows


def report_markdown(rows: Sequence[Mapping[str, Any]], title: str = "Compression") -> str:
    if not rows:
        return f"## {title}\n\n(no results)\n"
    cols = list(rows[0])
    lines = [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    results: Sequence[CompressionResult],
    markdown_path: str | Path,
    json_path: str | Path,
    original_acc: float | None = None,
    original_cost: ModelCost | None = None,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Write the side-by-side table as Markdown and JSON (atomically; never over files unless asked)."""
    check_writable(markdown_path, overwrite)
    check_writable(json_path, overwrite)
    if original_acc is None and results:
        original_acc = results[0].original_acc
    rows = report_rows(results, original_acc=original_acc, original_cost=original_cost)
    title = "Compression with and without DeepArc"
    write_text(markdown_path, report_markdown(rows, title), overwrite=overwrite)
    write_json(json_path, {"meta": dict(meta or {}), "rows": rows,
                           "original": {"test_acc": original_acc,
                                        "cost": original_cost.to_dict() if original_cost else None},
                           "results": [r.to_dict() for r in results]}, overwrite=overwrite)
    return rows
