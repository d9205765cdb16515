"""Find pruners: entry points of the group ``deeparc_pl.pruners`` plus in-process registrations.

Plugins are discovered lazily (Lightning / timm style): :func:`available` reads only package metadata;
a plugin's module is imported when :func:`get` asks for it. A name claimed twice -- by two
distributions, or by a distribution and :func:`register_pruner` -- is an error naming both claimants
when that name is asked for (and a warning when pruners are listed), never a silent override; the
other pruners stay usable. A plugin that fails to import or to build is an error naming it.
"""
from __future__ import annotations

import warnings
from importlib import metadata
from typing import Any, Callable, TypeVar, Union

from deeparc_pl.pruners.protocol import Pruner

__all__ = ["GROUP", "DuplicatePrunerError", "available", "get", "register_pruner", "unregister_pruner", "names_of", "clashes",
           "PrunerLoadError"]

GROUP = "deeparc_pl.pruners"

# In-process registrations (timm's register_model idea); explicit and inspectable via available().
_REGISTERED: dict[str, type] = {}

T = TypeVar("T", bound=type)


class DuplicatePrunerError(ValueError):
    """Two sources register the same pruner name."""


class PrunerLoadError(ImportError):
    """An installed pruner plugin failed to import or to build (the message names it and its source)."""


def _source(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name if dist is not None else '<unknown distribution>'} ({ep.value})"


def _scan() -> tuple[dict[str, metadata.EntryPoint], dict[str, str]]:
    """Installed entry points by name, and the names claimed twice (name -> why), without raising:
    a clash disables only the name it is about, never the other pruners."""
    found: dict[str, metadata.EntryPoint] = {}
    clashes: dict[str, str] = {}
    for ep in metadata.entry_points(group=GROUP):
        prev = found.get(ep.name)
        if prev is None:
            found[ep.name] = ep
        elif _source(prev) != _source(ep):
            clashes[ep.name] = (f"pruner name {ep.name!r} is registered twice in entry-point group {GROUP!r}: "
                                f"by {_source(prev)} and by {_source(ep)}; uninstall or rename one")
    for name in sorted(set(found) & set(_REGISTERED)):
        clashes.setdefault(name, f"pruner name {name!r} is registered both by {_source(found[name])} and in-process "
                                 f"by {_REGISTERED[name].__module__}.{_REGISTERED[name].__qualname__}")
    return found, clashes


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return _scan()[0]


def clashes() -> dict[str, str]:
    """Pruner names claimed by two sources, each with the reason; ``get`` refuses exactly these."""
    return _scan()[1]


def available() -> list[str]:
    """Sorted names of all installed and registered pruners (imports no plugin code); a name claimed
    twice is listed (``get`` refuses it, naming both sources) and warned about."""
    found, clash = _scan()
    for why in clash.values():
        warnings.warn(why, stacklevel=2)
    return sorted(set(found) | set(_REGISTERED))


def get(name: str) -> Pruner:
    """Instantiate the pruner registered as ``name`` with no arguments; its ``name`` is that name."""
    if not isinstance(name, str):
        raise TypeError(f"pruner name must be a str, got {type(name).__name__}")
    eps, clash = _scan()
    if name in clash:
        raise DuplicatePrunerError(clash[name])
    source = "registered in-process"
    if name in _REGISTERED:
        cls = _REGISTERED[name]
    elif name in eps:
        source = f"from {_source(eps[name])}"
        try:
            cls = eps[name].load()
        except Exception as exc:  # a broken plugin: name it, leave the others usable
            raise PrunerLoadError(f"pruner {name!r} from {_source(eps[name])} failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
    else:
        raise KeyError(f"unknown pruner {name!r}; installed pruners: {', '.join(available()) or '(none)'}")
    if not callable(cls):
        raise TypeError(f"entry point for pruner {name!r} is not a class or factory: {cls!r}")
    try:
        pruner = cls()
    except Exception as exc:
        raise PrunerLoadError(f"pruner {name!r} {source} ({cls!r}) could not be built with no arguments: "
                           f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(pruner, Pruner):
        raise TypeError(
            f"pruner {name!r} ({cls!r}) does not follow the Pruner protocol (needs `name` and `prune(model, sparsity)`)"
        )
    if getattr(pruner, "name", None) != name:  # e.g. a subclass of a built-in registered under its own name
        try:
            pruner.name = name  # reports label the rows with the name the user asked for
        except AttributeError:
            pass
    return pruner


def register_pruner(name: Union[str, T, None] = None) -> Union[T, Callable[[T], T]]:
    """Class decorator registering an in-process pruner, by ``name`` or the class's ``name`` attribute::

        @register_pruner("random")
        class RandomPruner(ScoredPruner): ...

    Registering a name that is already taken raises :class:`DuplicatePrunerError`.
    """

    def deco(cls: T) -> T:
        key = name if isinstance(name, str) else getattr(cls, "name", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"cannot register {cls!r}: give a name or set a `name` class attribute")
        if key in _REGISTERED:
            prev = _REGISTERED[key]
            raise DuplicatePrunerError(
                f"pruner name {key!r} already registered in-process by {prev.__module__}.{prev.__qualname__}"
            )
        eps = _entry_points()
        if key in eps:
            raise DuplicatePrunerError(f"pruner name {key!r} is already provided by {_source(eps[key])}")
        _REGISTERED[key] = cls
        return cls

    if isinstance(name, type):  # used bare: @register_pruner
        cls, name = name, None
        return deco(cls)
    return deco


def unregister_pruner(name: str) -> None:
    """Undo :func:`register_pruner` (tests, notebooks)."""
    try:
        del _REGISTERED[name]
    except KeyError:
        raise KeyError(f"no in-process pruner named {name!r}; registered: {sorted(_REGISTERED)}") from None


def names_of(spec: Any) -> list[str]:
    """Pruner names from one name, a comma-separated string or a list; each must be installed (an
    unknown one lists the installed ones before any work starts)."""
    names = [n.strip() for n in spec.split(",") if n.strip()] if isinstance(spec, str) else spec
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"pruner must be a plugin name or a list of names, got {spec!r}")
    for n in names:
        get(n)
    return list(names)
