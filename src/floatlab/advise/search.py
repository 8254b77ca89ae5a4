"""Choosing one option per layer under a budget: the solver sees a plain cost table (HAWQ-v3's
split of sensitivity measurement from the solver), never a network.

A :class:`Problem` has ``n`` *decisions* (a layer, or a group of tied layers that must take one
option), each with the same ordered option list; ``cost[i][k]`` and ``loss[i][k]`` are what
decision ``i`` adds to the total cost and to the predicted loss (the sum of per-layer
sensitivities: an assumption, which the advisor checks end to end) when it takes option ``k``.
A solution is a tuple of option indices whose total cost is at most ``budget``.

Solvers, all returning a :class:`Solution`:

* :func:`solve_milp`: the exact integer program (``scipy.optimize.milp``, HiGHS): binary
  ``x[i,k]``, one option per decision, total cost <= budget, minimize total loss;
* :func:`solve_greedy`: start from every decision's least-loss option; while over budget, make the
  downgrade with the least loss increase per unit of cost saved; then spend what is left on the
  upgrades with the most loss saved per unit of cost;
* :func:`solve_genetic`: :func:`floatlab.search.genetic.genetic_search` (MetaQuantNet's
  population/parents/mutation/crossover, constraint rejection before evaluation) maximizing
  ``-loss``, seeded with the greedy solution and the cheapest assignment; never over budget.

:func:`random_assignments` draws controls of about the same budget: a random order of
decisions, each upgraded from its cheapest option to a random option that still fits.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from collections.abc import Sequence


class BudgetError(ValueError):
    """A budget no assignment meets, or one every assignment meets (nothing to choose)."""


@dataclass
class Problem:
    """``cost[i][k]``, ``loss[i][k]`` of decision ``i`` taking option ``k``; ``budget`` on the
    summed cost; ``names``: one label per decision; ``options``: the option labels."""

    cost: list[list[float]]
    loss: list[list[float]]
    budget: float
    names: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.cost:
            raise ValueError("the problem has no decision (no quantizable layer)")
        k = len(self.cost[0])
        if k == 0 or any(len(c) != k for c in self.cost) or len(self.loss) != len(self.cost) \
                or any(len(l) != k for l in self.loss):
            raise ValueError("cost and loss must be tables of the same shape (decisions x options)")
        for row in (*self.cost, *self.loss):
            if not all(math.isfinite(v) for v in row):
                raise ValueError("cost and loss must be finite numbers")
        if not self.names:
            self.names = [str(i) for i in range(len(self.cost))]
        if not self.options:
            self.options = [str(j) for j in range(k)]

    @property
    def size(self) -> int:
        return len(self.cost)

    def total_cost(self, sol: Sequence[int]) -> float:
        return sum(self.cost[i][k] for i, k in enumerate(sol))

    def total_loss(self, sol: Sequence[int]) -> float:
        return sum(self.loss[i][k] for i, k in enumerate(sol))

    def cheapest(self) -> tuple[int, ...]:
        """Every decision at its cheapest option (ties: the least loss)."""
        return tuple(min(range(len(c)), key=lambda k: (c[k], l[k])) for c, l in zip(self.cost, self.loss))

    def richest(self) -> tuple[int, ...]:
        """Every decision at its least-loss option (ties: the cheapest)."""
        return tuple(min(range(len(c)), key=lambda k: (l[k], c[k])) for c, l in zip(self.cost, self.loss))

    def check_budget(self, scale: float = 1.0, unit: str = "") -> None:
        """Raise :class:`BudgetError` when no assignment fits the budget or the least-loss one
        already does; the message gives the range that is possible (costs divided by ``scale``)."""
        lo, hi = self.total_cost(self.cheapest()) / scale, self.total_cost(self.richest()) / scale
        b = self.budget / scale
        if b < lo - 1e-12:
            raise BudgetError(f"budget {b:.6g}{unit} is below the cheapest assignment ({lo:.6g}{unit}: every layer "
                              f"in its cheapest format); possible budgets: {lo:.6g} to {hi:.6g}{unit}")
        if b >= hi:
            raise BudgetError(f"budget {b:.6g}{unit} is at or above the richest assignment ({hi:.6g}{unit}: every "
                              f"layer in its least-sensitive format), so there is nothing to choose; useful budgets: "
                              f"{lo:.6g} to {hi:.6g}{unit}")


@dataclass
class Solution:
    """``choice``: one option index per decision; ``loss``/``cost`` its totals; ``solver``;
    ``seconds``: wall time; ``extra``: solver details (genetic: evaluations, rejected)."""

    choice: tuple[int, ...]
    loss: float
    cost: float
    solver: str
    seconds: float
    extra: dict = field(default_factory=dict)


def _solution(p: Problem, choice, solver: str, t0: float, **extra) -> Solution:
    choice = tuple(int(k) for k in choice)
    cost = p.total_cost(choice)
    if cost > p.budget * (1 + 1e-9) + 1e-9:
        raise RuntimeError(f"{solver} returned an assignment over budget ({cost} > {p.budget}): a floatlab bug")
    return Solution(choice, p.total_loss(choice), cost, solver, time.time() - t0, extra)


def solve_milp(p: Problem, *, time_limit: float = 60.0) -> Solution:
    """The optimal assignment by integer programming (``scipy.optimize.milp``). Raises
    :class:`BudgetError` when none fits and ``RuntimeError`` when HiGHS stops without a solution."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    t0 = time.time()
    n, k = p.size, len(p.options)
    # the loss scaled to O(1) too: proxy sensitivities (~1e-7) sit below HiGHS's absolute
    # tolerances, where it would stop at a worse assignment than greedy's and call it optimal
    c = np.asarray(p.loss, dtype=float).reshape(-1)
    c = c - np.asarray(p.loss, dtype=float).min(axis=1).repeat(k)      # per decision: a constant, same argmin
    c = c / max(float(np.abs(c).max()), 1e-300)
    one = np.zeros((n, n * k))
    for i in range(n):
        one[i, i * k:(i + 1) * k] = 1
    # cost scaled to O(1) so HiGHS's feasibility tolerance acts on a sensible scale
    scale = max(abs(p.budget), 1e-300)
    cons = [LinearConstraint(one, 1, 1),
            LinearConstraint(np.asarray(p.cost, dtype=float).reshape(1, -1) / scale, -np.inf, p.budget / scale)]
    res = milp(c, constraints=cons, integrality=np.ones(n * k), bounds=Bounds(0, 1),
               options={"time_limit": time_limit, "mip_rel_gap": 0.0})
    if res.x is None:
        if res.status == 2:
            raise BudgetError("no assignment fits the budget")
        raise RuntimeError(f"the integer program stopped without a solution: {res.message}")
    choice = np.asarray(res.x).reshape(n, k).argmax(1)
    sol = _solution(p, choice, "milp", t0, status=res.message)
    if sol.cost > p.budget:                     # HiGHS's tolerance let a hair over: repair greedily
        sol = _solution(p, _downgrade(p, list(choice)), "milp", t0, status=res.message + " (repaired)")
    return sol


def _downgrade(p: Problem, choice: list[int]) -> list[int]:
    total = p.total_cost(choice)
    while total > p.budget:
        best = None
        for i, k in enumerate(choice):
            for j in range(len(p.options)):
                saved = p.cost[i][k] - p.cost[i][j]
                if saved <= 0:
                    continue
                rate = (p.loss[i][j] - p.loss[i][k]) / saved
                if best is None or rate < best[0]:
                    best = (rate, i, j)
        if best is None:
            raise BudgetError("no assignment fits the budget")
        _, i, j = best
        total += p.cost[i][j] - p.cost[i][choice[i]]
        choice[i] = j
    return choice


def _upgrade(p: Problem, choice: list[int]) -> list[int]:
    total = p.total_cost(choice)
    while True:
        best = None
        for i, k in enumerate(choice):
            for j in range(len(p.options)):
                gain = p.loss[i][k] - p.loss[i][j]
                extra = p.cost[i][j] - p.cost[i][k]
                if gain <= 0 or total + extra > p.budget:
                    continue
                rate = gain / extra if extra > 0 else math.inf
                if best is None or rate > best[0]:
                    best = (rate, i, j)
        if best is None:
            return choice
        _, i, j = best
        total += p.cost[i][j] - p.cost[i][choice[i]]
        choice[i] = j


def solve_greedy(p: Problem) -> Solution:
    """Downgrade from the least-loss assignment by the smallest loss per cost saved until the
    budget holds, then upgrade by the largest loss saved per cost while it still holds."""
    t0 = time.time()
    return _solution(p, _upgrade(p, _downgrade(p, list(p.richest()))), "greedy", t0)


def solve_genetic(p: Problem, *, population: int = 40, parents: int = 10, mutation: float | None = None,
                  crossover: float = 0.5, generations: int = 60, seed: int = 0) -> Solution:
    """MetaQuantNet-style genetic search (:func:`floatlab.search.genetic.genetic_search`) of the
    least total loss within the budget. Defaults here: population 40, parents 10, mutation
    ``1/decisions`` per position (at least 0.02), crossover 0.5, 60 generations, seed 0; the
    initial population holds the greedy solution and the cheapest assignment, the rest random
    assignments within budget. Children over budget are rejected before they are scored."""
    from floatlab.search.genetic import genetic_search

    t0 = time.time()
    rate = mutation if mutation is not None else max(0.02, 1.0 / p.size)
    choices = [list(range(len(p.options)))] * p.size
    rng = random.Random(seed)
    initial = [p.cheapest(), solve_greedy(p).choice]
    initial += [random_fill(p, rng) for _ in range(max(0, population - len(initial)))]
    res = genetic_search(choices, lambda c: -p.total_loss(c), constraint=lambda c: p.total_cost(c) <= p.budget,
                         population=population, parents=parents, mutation=rate, crossover=crossover,
                         generations=generations, initial=initial, seed=seed)
    return _solution(p, res.best, "genetic", t0, evaluations=len(res.scores), rejected=res.rejected,
                     population=population, parents=parents, mutation=rate, crossover=crossover,
                     generations=generations)


def random_fill(p: Problem, rng: random.Random) -> tuple[int, ...]:
    """A random assignment within budget: decisions in random order, each moved from its cheapest
    option to a random option that still fits."""
    choice = list(p.cheapest())
    total = p.total_cost(choice)
    for i in rng.sample(range(p.size), p.size):
        fits = [j for j in range(len(p.options)) if total - p.cost[i][choice[i]] + p.cost[i][j] <= p.budget]
        j = rng.choice(fits)
        total += p.cost[i][j] - p.cost[i][choice[i]]
        choice[i] = j
    return tuple(choice)


def random_assignments(p: Problem, count: int, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` random assignments within budget (:func:`random_fill`), seeded."""
    rng = random.Random(seed)
    return [random_fill(p, rng) for _ in range(count)]


SOLVERS = {"milp": solve_milp, "greedy": solve_greedy, "genetic": solve_genetic}
