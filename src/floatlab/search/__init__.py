"""Search over discrete choices (per-layer bit widths, per-layer formats): no network knowledge."""

from floatlab.search.genetic import GeneticResult, budget_constraint, genetic_search

__all__ = ["GeneticResult", "budget_constraint", "genetic_search"]
