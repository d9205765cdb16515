"""Lazy exports for package ``__init__`` files: names are imported on first use, so importing a
package stays cheap and never pulls in heavy optional machinery (ART, Lightning) by accident."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``; ``exports`` maps a public name to the module
    that defines it, absolute (``deeparc_pl.taps``) or relative to the package (``reduction``)."""
    names = sorted(exports)

    def _module(target: str) -> str:
        return target if target.startswith("deeparc_pl") else f"{package}.{target}"

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(_module(exports[name])), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
