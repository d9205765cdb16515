"""Checkpoints every command reads and writes: architecture spec + recorded edits + state dict.

Loaded with ``torch.load(weights_only=True)`` onto the CPU, so a checkpoint never runs code: a
checkpoint of a user class (``package.module:Class``) is only rebuilt when the caller names that
class too (``model.name``), since importing it runs the user's module.
Besides our own format, ``load_weights`` takes a plain state dict or a Lightning checkpoint
(``state_dict`` with a ``model.`` prefix), saved on any device.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..fileio import atomic_write
from .edits import apply_edits, get_edits

__all__ = ["FORMAT", "model_spec", "build_from_spec", "save_checkpoint", "read_checkpoint", "load_model", "load_weights"]

FORMAT = "deeparc_pl.checkpoint/v1"


def model_spec(model: nn.Module) -> dict[str, Any]:
    """How to rebuild ``model``'s base architecture: a zoo name with its sizes, or an importable class."""
    if getattr(model, "zoo_name", None):
        return {
            "name": model.zoo_name,
            "num_classes": int(model.num_classes),
            "in_channels": int(model.in_channels),
            "image_size": int(model.image_size),
        }
    cls = type(model)
    return {"name": f"{cls.__module__}:{cls.__qualname__}"}


def import_class(path: str) -> type:
    """The ``nn.Module`` subclass named ``package.module:Class`` (nothing is called)."""
    module_name, _, qual = path.partition(":")
    if not module_name or not qual:
        raise ValueError(f"a user model is named 'package.module:Class', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for model {path!r}: {exc}") from None
    for part in qual.split("."):
        if not hasattr(obj, part):
            raise ImportError(f"module {module_name!r} has no attribute {qual!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise TypeError(f"{path} is a {type(obj).__name__}, not an nn.Module subclass")
    return obj


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    name = str(spec.get("name") or "")
    if not name:
        raise ValueError("model.name is not set: give a zoo name (see `deeparc models`) or 'package.module:Class'")
    if ":" in name:
        return import_class(name)()
    from . import build

    if spec.get("num_classes") is None:
        raise ValueError(f"zoo model {name!r} needs num_classes")
    return build(
        name,
        int(spec["num_classes"]),
        in_channels=int(spec.get("in_channels", 3)),
        image_size=int(spec.get("image_size", 32)),
    )


def save_checkpoint(
    path: str | Path, model: nn.Module, info: Mapping[str, Any] | None = None, overwrite: bool = False,
    layers: list[str] | None = None,
) -> Path:
    """Write ``model`` atomically; never over an existing file unless ``overwrite``.

    ``layers`` (default: the model's ``layer_names``) are the layers to tap, kept for later commands
    so a user model's ``model.layers`` need not be given again."""
    payload = {
        "format": FORMAT,
        "model": model_spec(model),
        "layers": list(layers or getattr(model, "layer_names", []) or []),
        "edits": get_edits(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "info": dict(info or {}),
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite)


def _torch_load(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, foreign pickle with code, ...
        raise ValueError(f"{path} is not a readable weights file (corrupt, or it holds code): {exc}") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read any supported weights file into {format, model, edits, state_dict, info}."""
    path = Path(path)
    data = _torch_load(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return _check_own_format(path, data)
    if isinstance(data, dict) and "state_dict" in data and "pytorch-lightning_version" in data:
        sd = data["state_dict"]
        if any(k.startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
        return {"format": "lightning", "model": {}, "edits": [], "state_dict": sd, "info": {}}
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"format": "state_dict", "model": {}, "edits": [], "state_dict": data, "info": {}}
    raise ValueError(
        f"{path} is not a deeparc_pl checkpoint, a Lightning checkpoint or a state dict "
        f"(found {type(data).__name__} with keys {list(data)[:5] if isinstance(data, dict) else '-'})"
    )


def _check_own_format(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """A file that claims our format but lacks a part is corrupt, not a fresh model."""
    expected = {"model": dict, "edits": list, "state_dict": dict}
    for key, kind in expected.items():
        if not isinstance(data.get(key), kind):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise ValueError(f"{path} is a corrupt deeparc_pl checkpoint: {key!r} should be a {kind.__name__}, {found}")
    if not all(isinstance(v, torch.Tensor) for v in data["state_dict"].values()):
        raise ValueError(f"{path} is a corrupt deeparc_pl checkpoint: its state_dict holds non-tensors")
    if not isinstance(data.get("info", {}), dict):
        raise ValueError(f"{path} is a corrupt deeparc_pl checkpoint: 'info' should be a dict")
    return data


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "weights") -> nn.Module:
    """Strict load with an error that says which keys differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit {type(model).__name__}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{source} does not fit {type(model).__name__}: {k} has shape {tuple(state_dict[k].shape)}, "
            f"model expects {tuple(own[k].shape)}"
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def load_model(weights: str | Path | None = None, spec: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """Build a model (from the checkpoint's spec, overridden by ``spec`` keys that are set) and load it.

    Returns ``(model, checkpoint_dict)``; with no ``weights`` the model is freshly initialised. A
    checkpoint of a user class needs ``spec["name"]`` to name the same class (see the module docstring).
    """
    ckpt: dict[str, Any] = {"format": None, "model": {}, "edits": [], "state_dict": None, "info": {}}
    if weights:
        ckpt = read_checkpoint(weights)
    merged = dict(ckpt.get("model") or {})
    saved_name = str(merged.get("name") or "")
    if ":" in saved_name and (spec or {}).get("name") != saved_name:
        raise ValueError(
            f"{weights} holds a model of the user class {saved_name!r}; importing it runs that module's code, "
            f"so it is only rebuilt when you name it too: pass model.name={saved_name}"
        )
    for k, v in (spec or {}).items():
        if v is None:
            continue
        if k in merged and merged[k] != v:
            raise ValueError(f"{weights} was saved with model.{k}={merged[k]!r}, but the configuration asks for {v!r}")
        merged[k] = v
    model = build_from_spec(merged)
    for i, edit in enumerate(list(ckpt.get("edits") or [])):
        try:
            apply_edits(model, [edit])
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{weights} is corrupt: its structural edit #{i} ({str(edit)[:80]}) cannot be replayed: "
                             f"{type(exc).__name__}: {exc}") from None
    if ckpt.get("state_dict") is not None:
        load_weights(model, ckpt["state_dict"], str(weights))
    return model, ckpt
