"""Configuration for every command: documented defaults, merged with a recipe and key=value overrides.

Precedence (omegaconf merge): built-in defaults < ``--config recipe.yaml`` < ``key=value`` dotlist.
Each key carries a one-line help text, printed by ``deeparc COMMAND --help``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["SHARED_KEYS", "command_keys", "keys_for", "build_config", "describe_keys"]

# key -> (default, help)
SHARED_KEYS: dict[str, tuple[Any, str]] = {
    "seed": (0, "global seed (Lightning seed_everything)"),
    "out": ("out", "output folder; each command writes under it"),
    "logger": ("csv", "csv (default) or wandb (offline unless WANDB_MODE=online; no account needed)"),
    "model.name": (None, "zoo name (see `deeparc models`) or 'package.module:Class' built without arguments"),
    "model.weights": (None, "state dict, Lightning checkpoint or deeparc checkpoint; loaded on CPU, weights_only"),
    "model.layers": (None, "list of module names to tap; default: the zoo model's layers or a rule for common shapes"),
    "data.name": ("digits", "digits (built in, no files), mnist, fashion_mnist or cifar10"),
    "data.dir": (None, "folder holding the data set's standard files (IDX .gz or cifar-10-batches-py)"),
    "data.fraction": (1.0, "share of the training file kept, stratified by class (paper: data size)"),
    "data.classes": (None, "first k classes, or a list of class ids (paper: task scale)"),
    "data.batch_size": (128, "batch size for training and evaluation"),
    "data.val_split": (0.1, "share of training data held out for validation"),
    "data.augment": (False, "random crop (and flip for cifar10) on the training set"),
    "data.test_size": (None, "keep only the first N test samples (file order)"),
    "trainer.max_epochs": (5, "epochs of training (passed to Lightning)"),
    "trainer.accelerator": ("auto", "Lightning accelerator: cpu, gpu, auto"),
    "trainer.devices": (1, "Lightning devices; with trainer.strategy=ddp for many GPUs"),
    "trainer.strategy": ("auto", "Lightning strategy (auto, ddp, ddp_spawn, ...)"),
    "trainer.precision": ("32-true", "Lightning precision"),
    "trainer.enable_progress_bar": (True, "progress bars on long work"),
    "trainer.log_every_n_steps": (10, "Lightning logging interval"),
}

def command_keys(command: str) -> dict[str, tuple[Any, str]]:
    """The keys a command adds: its CLI module's ``KEYS`` dict (key -> (default, help))."""
    from .main import command_module

    module = command_module(command)
    return dict(getattr(module, "KEYS", {}) or {})


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def keys_for(command: str) -> dict[str, tuple[Any, str]]:
    return {**SHARED_KEYS, **command_keys(command)}


def build_config(command: str, config_path: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults for ``command`` < recipe file < dotlist overrides."""
    base = OmegaConf.create(_nest({k: v for k, (v, _) in keys_for(command).items()}))
    layers = [base]
    if config_path:
        path = Path(config_path)
        if not path.exists():
            raise FileNotFoundError(f"no recipe at {path}")
        layers.append(OmegaConf.load(path))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    layers.append(OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.merge(*layers)


def describe_keys(command: str) -> str:
    rows = [f"  {k:<28} {str(v):<14} {h}" for k, (v, h) in keys_for(command).items()]
    return "keys (key=value; default shown):\n" + "\n".join(rows)
