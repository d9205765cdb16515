"""Every public name the package and its lazy subpackages advertise really imports."""
from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["deeparc_pl", "deeparc_pl.readapt", "deeparc_pl.restructure",
                                     "deeparc_pl.similarity", "deeparc_pl.pruners", "deeparc_pl.data"])
def test_every_advertised_name_resolves(package):
    module = importlib.import_module(package)
    names = [n for n in getattr(module, "__all__", []) if n != "__version__"]
    assert names, package
    for name in names:
        assert getattr(module, name) is not None, f"{package}.{name}"
