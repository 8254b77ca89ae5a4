"""The numerical-methods packages (emulation, linalg, faults, interop) stay numerics: they import
nothing of networks, models, training, reports or screens (same graph as test_architecture)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_house", Path(__file__).with_name("test_architecture.py"))
_house = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_house)

METHODS_PACKAGES = {"emulation", "linalg", "faults", "interop"}


def test_numerical_methods_know_nothing_of_networks_screens_or_reports():
    graph = _house.import_graph()
    assert {"emulation", "linalg"} <= set(graph)
    for pkg in METHODS_PACKAGES & set(graph):
        bad = graph[pkg] & _house.OUTSIDE_NUMERICS
        assert not bad, f"{pkg} imports {sorted(bad)}"
    assert _house._cycle(graph) is None
