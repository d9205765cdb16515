"""Configuration for every command: documented defaults, merged with a recipe and key=value overrides.

Precedence (omegaconf merge): built-in defaults < ``--config recipe.yaml`` < ``key=value`` dotlist.
Each key carries a one-line help text, printed by ``deeparc COMMAND --help``. A key that no command
declares is refused, with the closest known keys; one that only another command declares is ignored
with a warning on the command line and silently in a recipe (recipes and override lists are shared
by the commands of one experiment); open namespaces are
``trainer.*`` (any Lightning ``Trainer`` argument) and keys under a dict-valued key such as
``attack.params``. Values must have the type of their default (an int for an int, a number for a
float, true/false for a bool), and counts in :data:`POSITIVE` must be at least 1.
"""
from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["SHARED_KEYS", "POSITIVE", "command_keys", "keys_for", "build_config", "describe_keys"]

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

#: Counts where 0 would silently mean "everything" or nothing at all.
POSITIVE: frozenset[str] = frozenset({
    "data.batch_size", "cka.batch_size", "cka.passes", "cka.samples", "attack.limit", "readapt.samples",
    "readapt.batch_size", "sewing.samples", "latency.batch_size",
})
#: Keys that hold a list (a bare string would be read letter by letter).
LISTS: frozenset[str] = frozenset({"model.layers"})
#: Keys whose int default stands for a wider type (Lightning takes devices=auto or a list of ids).
LOOSE: frozenset[str] = frozenset({"trainer.devices"})


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


def _open_keys(keys: Mapping[str, tuple[Any, str]]) -> list[str]:
    return [k for k, (v, _) in keys.items() if isinstance(v, dict)]


def _leaves(tree: Any, known: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted keys of a nested dict, not descending below a declared key (its value may be a dict)."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in known:
            yield from _leaves(value, known, path + ".")
        else:
            yield path


def _is_known(key: str, known: Mapping[str, Any], open_keys: Sequence[str]) -> bool:
    return key in known or key.startswith("trainer.") or any(key.startswith(o + ".") for o in open_keys)


def _unknown(tree: dict, known: Mapping[str, Any]) -> list[str]:
    open_keys = _open_keys(known)
    return [k for k in _leaves(tree, known) if not _is_known(k, known, open_keys)]


def _check_known(tree: dict, known: Mapping[str, Any], where: str, hint: str) -> None:
    unknown = _unknown(tree, known)
    if unknown:
        near = {k: difflib.get_close_matches(k, list(known), n=2) for k in unknown}
        detail = "; ".join(f"{k!r}" + (f" (did you mean {' or '.join(v)}?)" if v else "") for k, v in near.items())
        raise ValueError(f"unknown key(s) in {where}: {detail}. {hint}")


def _all_keys() -> dict[str, tuple[Any, str]]:
    from .main import COMMANDS

    merged: dict[str, tuple[Any, str]] = {}
    for command in COMMANDS:
        merged.update(keys_for(command))
    return merged


def _load_recipe(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"no recipe at {path}")
    if path.is_dir():
        raise ValueError(f"recipe {path} is a folder, not a YAML file")
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # yaml parse errors and omegaconf errors alike
        raise ValueError(f"recipe {path} is not valid YAML: {exc}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ValueError(f"recipe {path} must be a mapping of keys (key: value), got a {type(tree).__name__}")
    return tree


def _parse_overrides(overrides: Sequence[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"overrides must be key=value, got {item!r}")
        try:
            one = OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False)
        except Exception as exc:
            raise ValueError(f"cannot read the override {item!r}: {exc}") from None
        tree = OmegaConf.to_container(OmegaConf.merge(tree, one), resolve=False)  # type: ignore[assignment]
    return tree


def _number(value: Any) -> Any:
    """A string that reads as a number (e.g. from ``${oc.env:VAR}``) as that number; else the value."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _check_value(key: str, value: Any, default: Any) -> None:
    if key in LOOSE or value is None:
        return
    if key in LISTS and not (isinstance(value, (list, tuple)) or OmegaConf.is_list(value)):
        raise ValueError(f"{key} must be a list, e.g. {key}='[{value},...]', got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool) or key in POSITIVE:
        value = _number(value)
    if key in POSITIVE:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an integer of at least 1, got {value!r}")
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:  # strings, lists, None-defaulted keys: checked where they are used
        return
    if not ok:
        raise ValueError(f"{key} must be {kind}, got {value!r}")


def build_config(command: str, config_path: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults for ``command`` < recipe file < dotlist overrides, checked key by key (module doc)."""
    keys, every = keys_for(command), _all_keys()
    layers: list[Any] = [OmegaConf.create(_nest({k: v for k, (v, _) in keys.items()}))]
    if config_path:
        path = Path(config_path)
        recipe = _load_recipe(path)
        _check_known(recipe, every, f"recipe {path}", "No command declares it; see `deeparc COMMAND --help`.")
        layers.append(OmegaConf.create(recipe))
    dot = _parse_overrides(overrides)
    _check_known(dot, every, "the command line", f"See `deeparc {command} --help` for the keys it takes.")
    foreign = _unknown(dot, keys)
    if foreign:
        warnings.warn(f"`deeparc {command}` does not use {foreign} (keys of other commands): ignored", stacklevel=2)
    layers.append(OmegaConf.create(dot))
    try:
        cfg = OmegaConf.merge(*layers)
    except Exception as exc:  # e.g. a scalar given where a group of keys is expected
        raise ValueError(f"the configuration does not fit the keys of `deeparc {command}`: {exc}") from None
    for key, (default, _) in keys.items():
        _check_value(key, OmegaConf.select(cfg, key), default)
    return cfg  # type: ignore[return-value]


def describe_keys(command: str) -> str:
    rows = [f"  {k:<28} {str(v):<14} {h}" for k, (v, h) in keys_for(command).items()]
    return "keys (key=value; default shown):\n" + "\n".join(rows)
