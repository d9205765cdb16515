"""Adversarial samples to adapt a model to (the paper's "model enhancement" task).

:func:`generate` wraps the Adversarial Robustness Toolbox (ART 1.20): the model is deep-copied, put in
eval mode and wrapped in ``art.estimators.classification.PyTorchClassifier``; one of four evasion attacks
(FGSM, PGD, DeepFool, Carlini-Wagner L2) then perturbs the inputs. The result is an :class:`AdversarialSet`
holding the adversarial inputs next to the clean originals and the true labels, in the dataset's order, so
that re-adaption can use the clean image as the reference representation (paper Fig. 8).
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from deeparc_pl.fileio import atomic_write
from deeparc_pl.readapt.evaluate import Data, as_tensors, check_samples, output_classes

__all__ = ["AdversarialSet", "generate", "METHODS", "default_params"]

_FORMAT = "deeparc_pl.AdversarialSet"
_VERSION = 1

#: Known methods, with a one-line description each (see :func:`default_params` for the defaults).
METHODS: dict[str, str] = {
    "fgsm": "Fast Gradient Sign Method (Goodfellow et al. 2015), L_inf, one step",
    "pgd": "Projected Gradient Descent (Madry et al. 2018), L_inf, iterated with a random start",
    "deepfool": "DeepFool (Moosavi-Dezfooli et al. 2016), minimal L2 step past the nearest boundary",
    "cw": "Carlini-Wagner L2 (Carlini & Wagner 2017)",
}


def default_params(method: str, clip_values: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """The defaults :func:`generate` uses for ``method``.

    Sizes of perturbations are a fraction of the input range ``clip_max - clip_min`` so that the same
    defaults suit [0, 1] images and normalised ones: FGSM and PGD use ``eps = 0.1 * range`` (0.1 on
    [0, 1] images), PGD steps ``eps / 8`` for 20 iterations from one random start. DeepFool runs up to
    50 iterations with a 0.02 overshoot; C&W uses confidence 0, learning rate 0.1, 10 iterations per
    step and 5 binary search steps starting from trade-off constant 1 (ART's defaults, 0.01 and 0.01,
    barely move a small Fashion-MNIST model in 10 iterations). Values passed to
    :func:`generate` are absolute and replace these.
    """
    method = _check_method(method)
    span = float(clip_values[1]) - float(clip_values[0])
    if method == "fgsm":
        return {"eps": 0.1 * span, "batch_size": 128}
    if method == "pgd":
        eps = 0.1 * span
        return {"eps": eps, "eps_step": eps / 8, "max_iter": 20, "num_random_init": 1, "batch_size": 128}
    if method == "deepfool":
        return {"max_iter": 50, "epsilon": 0.02, "nb_grads": 10, "batch_size": 64}
    return {
        "confidence": 0.0,
        "learning_rate": 0.1,
        "max_iter": 10,
        "binary_search_steps": 5,
        "initial_const": 1.0,
        "batch_size": 64,
    }


def _check_method(method: str) -> str:
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"unknown attack method {method!r}; known methods: {', '.join(METHODS)}")
    return method.lower()


def _attack_class(method: str) -> Callable[..., Any]:
    from art.attacks.evasion import CarliniL2Method, DeepFool, FastGradientMethod, ProjectedGradientDescent

    return {
        "fgsm": FastGradientMethod,
        "pgd": ProjectedGradientDescent,
        "deepfool": DeepFool,
        "cw": CarliniL2Method,
    }[method]


def _plain(value: Any) -> Any:
    """Numbers, strings and tuples only, so that ``torch.load(weights_only=True)`` reads the params back."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    raise TypeError(f"attack parameter value {value!r} must be a number, string or tuple of them")


@dataclass
class AdversarialSet:
    """Adversarial inputs with their clean originals and true labels, in the source dataset's order."""

    x_adv: Tensor
    x: Tensor
    y: Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("x_adv", "x", "y"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"AdversarialSet.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.x_adv.shape != self.x.shape:
            raise ValueError(f"x_adv shape {tuple(self.x_adv.shape)} differs from x shape {tuple(self.x.shape)}")
        if len(self.y) != len(self.x):
            raise ValueError(f"{len(self.y)} labels for {len(self.x)} inputs")
        if len(self.x) == 0:
            raise ValueError("an AdversarialSet holds at least one sample")
        check_samples(self.x, self.y, "AdversarialSet (clean x)")
        check_samples(self.x_adv, self.y, "AdversarialSet (x_adv)")

    def __len__(self) -> int:
        return len(self.x)

    def as_dataset(self) -> TensorDataset:
        """``TensorDataset(x_adv, y)``: the adversarial samples to adapt to."""
        return TensorDataset(self.x_adv, self.y)

    def pairs(self) -> TensorDataset:
        """``TensorDataset(x, x_adv, y)``: each clean input next to its adversarial twin (the explicit reference)."""
        return TensorDataset(self.x, self.x_adv, self.y)

    def linf(self) -> Tensor:
        """Per-sample L_inf size of the perturbation."""
        return (self.x_adv - self.x).flatten(1).abs().amax(dim=1)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write atomically with ``torch.save``; refuses to replace an existing file unless ``overwrite``."""
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "method": self.method,
            "params": {str(k): _plain(v) for k, v in self.params.items()},
            "x_adv": self.x_adv.detach().cpu().contiguous(),
            "x": self.x.detach().cpu().contiguous(),
            "y": self.y.detach().cpu().contiguous(),
        }
        atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AdversarialSet":
        """Read a file written by :meth:`save` (``weights_only=True``); a corrupt or foreign file raises ``ValueError``."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no adversarial set at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors come in many types
            raise ValueError(f"{path} is not a readable AdversarialSet file: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an AdversarialSet file (no '{_FORMAT}' marker)")
        if payload.get("version") != _VERSION:
            raise ValueError(f"{path} has AdversarialSet version {payload.get('version')!r}; this code reads {_VERSION}")
        try:
            return cls(payload["x_adv"], payload["x"], payload["y"], payload["method"], dict(payload["params"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} holds a malformed AdversarialSet: {exc}") from exc


def _clip_values(dataset: Any, x: Tensor, given: Any) -> tuple[float, float]:
    if given is None:
        given = getattr(dataset, "clip_values", None)
    if given is None:
        lo, hi = float(x.min()), float(x.max())
    else:
        try:
            lo, hi = (float(v) for v in given)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"clip_values must be a (min, max) pair of numbers, got {given!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"clip_values must satisfy min < max (finite), got ({lo}, {hi})")
    return lo, hi


def generate(
    model: nn.Module,
    dataset: Data,
    method: str,
    *,
    batch_size: int | None = None,
    clip_values: tuple[float, float] | None = None,
    limit: int | None = None,
    seed: int = 0,
    **params: Any,
) -> AdversarialSet:
    """Adversarial samples for ``model`` on ``dataset`` with one of ``fgsm``, ``pgd``, ``deepfool``, ``cw``.

    Args:
        model: any classifier returning logits; it is deep-copied and put in eval mode, never changed.
        dataset: a torch Dataset of (x, y), a TensorDataset, a DataLoader or an ``(x, y)`` tuple of tensors.
        method: attack name (case-insensitive); see :data:`METHODS`.
        batch_size: attack batch size (default per method, see :func:`default_params`).
        clip_values: valid input range; default ``dataset.clip_values`` when present, else the min and max
            of the given inputs. Adversarial inputs never leave it.
        limit: attack only the first ``limit`` samples.
        seed: seeds numpy and torch for the attack (PGD's random start); the global RNG state is restored.
        **params: attack options, forwarded to the ART attack (e.g. ``eps``, ``eps_step``, ``max_iter``,
            ``confidence``, ``binary_search_steps``); they replace the defaults of :func:`default_params`.

    Returns:
        an :class:`AdversarialSet`; ``.params`` records every option used, clip values and seed included.
    """
    method = _check_method(method)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x, y = as_tensors(dataset, limit=limit)
    if not x.dtype.is_floating_point:
        raise TypeError(f"inputs must be floating point to be perturbed, got dtype {x.dtype}")
    check_samples(x, y, "the data to attack")  # before the clip range is read off the inputs
    clip = _clip_values(dataset, x, clip_values)

    options = default_params(method, clip)
    attack_cls = _attack_class(method)
    allowed = set(getattr(attack_cls, "attack_params", [])) - {"verbose", "targeted", "summary_writer"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for {method}; accepted: {sorted(allowed)}")
    options.update(params)
    nonfinite = [k for k, v in options.items() if isinstance(v, float) and not math.isfinite(v)]
    if nonfinite:
        raise ValueError(f"attack option(s) {nonfinite} must be finite numbers, got {[options[k] for k in nonfinite]}")
    if batch_size is not None:
        options["batch_size"] = batch_size
    if int(options["batch_size"]) < 1:
        raise ValueError(f"batch_size must be >= 1, got {options['batch_size']}")

    net = copy.deepcopy(model).eval()
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    classes = output_classes(net, x)
    check_samples(x, y, "the data to attack", classes)

    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=net,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=classes,
        clip_values=clip,
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    kwargs = dict(options)
    if method != "fgsm":
        kwargs["verbose"] = False
    attack = attack_cls(classifier, **kwargs)

    x_np = x.detach().cpu().numpy().astype(np.float32, copy=False)
    y_np = y.detach().cpu().numpy()
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            np.random.seed(seed)
            torch.manual_seed(seed)
            x_adv_np = attack.generate(x=x_np, y=y_np)
    finally:
        np.random.set_state(np_state)

    x_adv = torch.from_numpy(np.asarray(x_adv_np)).to(dtype=x.dtype).clamp_(clip[0], clip[1])
    record = {k: _plain(v) for k, v in options.items()}
    record.update({"clip_values": clip, "seed": int(seed), "limit": limit})
    return AdversarialSet(x_adv=x_adv, x=x.detach().cpu().clone(), y=y.detach().cpu().clone(), method=method, params=record)
