"""Name -> factory registry for the model zoo (timm-style ``register_model`` decorator).

A factory is registered either under an exact name (``"vgg16"``) or under a regular-expression
family (``r"resnet(?P<depth>\\d+)"`` shown as ``"resnet{6k+2}"``). The family's named groups are
passed to the factory as keyword arguments (digits become ``int``), so one factory serves every
depth and the factory itself says which depths are valid.

``build`` stamps ``zoo_name``, ``num_classes``, ``in_channels`` and ``image_size`` on the model so a
checkpoint can rebuild the architecture, and checks that the model lists its ``layer_names``.
The module-level ``MODELS`` registry is the one the package uses; it is only changed by explicit
``register_model`` / ``unregister`` calls. Tests and experiments can use a private ``ModelRegistry``.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Optional, Union

from torch import nn

__all__ = ["ModelRegistry", "MODELS", "register_model", "build", "available"]

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    label: str  # what ``available()`` shows: the exact name or the family label
    factory: Factory
    pattern: Optional["re.Pattern[str]"] = None  # None for an exact name


def _check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


class ModelRegistry:
    """Exact names and regex families of model factories; exact names win over families."""

    def __init__(self) -> None:
        self._exact: dict[str, _Entry] = {}
        self._families: list[_Entry] = []

    # -- registration ----------------------------------------------------------------------------
    def register(
        self,
        name: Optional[Union[str, Factory]] = None,
        *,
        pattern: Optional[str] = None,
        label: Optional[str] = None,
    ) -> Union[Factory, Callable[[Factory], Factory]]:
        """Decorator: ``@register``, ``@register("name")`` or ``@register(pattern=..., label=...)``.

        Bare ``@register`` uses the function's name. A family needs a ``pattern`` (matched against the
        whole, lower-cased model name) and a human ``label`` such as ``"wrn{6N+4}_{width}"``.
        """
        if callable(name):  # bare decorator
            return self.register()(name)
        if name is not None and pattern is not None:
            raise ValueError("register either an exact name or a pattern, not both")

        def deco(fn: Factory) -> Factory:
            if not callable(fn):
                raise TypeError(f"a model factory must be callable, got {type(fn).__name__}")
            if pattern is not None:
                if not label:
                    raise ValueError(f"family {pattern!r} needs a label, e.g. 'resnet{{6k+2}}'")
                if any(e.pattern is not None and e.pattern.pattern == pattern for e in self._families):
                    raise ValueError(f"model family {pattern!r} is already registered")
                self._families.append(_Entry(label, fn, re.compile(pattern)))
            else:
                key = (name if name is not None else fn.__name__).strip().lower()
                if not key:
                    raise ValueError("a model name must be a non-empty string")
                if key in self._exact:
                    raise ValueError(f"model {key!r} is already registered")
                self._exact[key] = _Entry(label or key, fn)
            return fn

        return deco

    def unregister(self, name_or_label: str) -> None:
        """Remove an exact name or a family (by its label); KeyError if it is not registered."""
        key = name_or_label.strip().lower()
        if key in self._exact:
            del self._exact[key]
            return
        for i, entry in enumerate(self._families):
            if entry.label == name_or_label:
                del self._families[i]
                return
        raise KeyError(f"no model or family named {name_or_label!r}; known: {self.available()}")

    # -- lookup ----------------------------------------------------------------------------------
    def available(self) -> list[str]:
        """Exact names and family labels, sorted."""
        return sorted([e.label for e in self._exact.values()] + [e.label for e in self._families])

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self._resolve(name)
        except ValueError:
            return False
        return True

    def _resolve(self, name: str) -> tuple[_Entry, dict[str, object]]:
        key = name.strip().lower()
        if key in self._exact:
            return self._exact[key], {}
        for entry in self._families:
            assert entry.pattern is not None
            match = entry.pattern.fullmatch(key)
            if match:
                groups = {k: int(v) if v and v.isdigit() else v for k, v in match.groupdict().items()}
                return entry, groups
        near = difflib.get_close_matches(key, list(self._exact), n=3, cutoff=0.5)
        hint = f" (did you mean {near}?)" if near else ""
        raise ValueError(f"unknown model {name!r}{hint}; known models and families: {self.available()}")

    def build(self, name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        """A freshly initialised model; see the module docstring for what is stamped on it."""
        if not isinstance(name, str):
            raise TypeError(f"model name must be a str, got {type(name).__name__}")
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(image_size, "image_size")
        entry, groups = self._resolve(name)
        sizes = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
        model = entry.factory(**sizes, **groups)
        if not isinstance(model, nn.Module):
            raise TypeError(f"factory for {name!r} returned {type(model).__name__}, not an nn.Module")
        layer_names = getattr(model, "layer_names", None)
        if not isinstance(layer_names, list) or not layer_names:
            raise TypeError(f"zoo model {name!r} must set a non-empty list attribute `layer_names`")
        modules = dict(model.named_modules())
        missing = [n for n in layer_names if n not in modules or n == ""]
        if missing:
            raise ValueError(f"zoo model {name!r} lists layer names that are not submodules: {missing}")
        model.zoo_name = name.strip().lower()
        model.num_classes = num_classes
        model.in_channels = in_channels
        model.image_size = image_size
        return model


MODELS = ModelRegistry()


def register_model(
    name: Optional[Union[str, Factory]] = None,
    *,
    pattern: Optional[str] = None,
    label: Optional[str] = None,
) -> Union[Factory, Callable[[Factory], Factory]]:
    """Register a factory in the package registry ``MODELS`` (see ``ModelRegistry.register``)."""
    return MODELS.register(name, pattern=pattern, label=label)


def build(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build a zoo model by name, e.g. ``build("resnet110", 10)`` or ``build("wrn16_2", 10, 1, 28)``."""
    return MODELS.build(name, num_classes, in_channels, image_size)


def available() -> list[str]:
    """Known model names and families, e.g. ``["mlp", "mlp{depth}_{width}", "resnet{6k+2}", ...]``."""
    return MODELS.available()
