"""Every example in floatlab's docstrings runs and prints what it says (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import floatlab


def _modules_with_examples() -> list[str]:
    names = ["floatlab"]
    for info in pkgutil.walk_packages(floatlab.__path__, "floatlab."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as f:
                if ">>> " in f.read():
                    found.append(name)
    return found


MODULES = _modules_with_examples()


def test_examples_were_found():
    assert "floatlab.ops.api" in MODULES and "floatlab" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
