"""A genetic algorithm over per-position choices, for MetaQuantNet's bit policies and the
per-layer format advisor alike: it sees a list of options per position, a score callback and a
constraint, never a network.

A candidate is a tuple with one option per position (``choices[i]`` lists position ``i``'s
options). Each generation keeps the ``parents`` best candidates scored so far (elitism) and fills
the population with children: uniform crossover of two parents drawn at random (each position from
either parent, with probability ``crossover`` of mixing at all, else a copy of the first), then
each position mutated to a random option with probability ``mutation``. A child that breaks the
constraint is rejected *before* it is scored (redrawn up to ``max_tries`` times), and no candidate
is scored twice (scores are cached). The initial population is ``initial`` (checked against the
constraint) completed by random candidates that satisfy it.

Defaults (those of MetaQuantNet's search, Wang et al. 2020, scaled to small CPU budgets):
population 20, parents 5, mutation 0.1 per position, crossover 0.5, 10 generations, seed 0.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field


@dataclass
class GeneticResult:
    """``best`` candidate and its ``score``; ``history``: the best score after each generation;
    ``scores``: every candidate scored (candidate -> score); ``rejected``: children refused by the
    constraint before scoring."""

    best: tuple
    score: float
    history: list[float] = field(default_factory=list)
    scores: dict[tuple, float] = field(default_factory=dict)
    rejected: int = 0


def budget_constraint(costs: Sequence[dict], budget: float) -> Callable[[tuple], bool]:
    """A constraint from a cost table: ``costs[i][option]`` is the cost of ``option`` at position
    ``i``; a candidate is allowed when its total cost is at most ``budget``."""
    return lambda cand: sum(costs[i][c] for i, c in enumerate(cand)) <= budget + 1e-12


def genetic_search(choices: Sequence[Sequence[Hashable]], score: Callable[[tuple], float], *,
                   constraint: Callable[[tuple], bool] | None = None, population: int = 20,
                   parents: int = 5, mutation: float = 0.1, crossover: float = 0.5,
                   generations: int = 10, initial: Sequence[Sequence] = (), seed: int = 0,
                   max_tries: int = 1000) -> GeneticResult:
    """Maximize ``score(candidate)`` over candidates allowed by ``constraint`` (see the module
    docstring for the algorithm and its defaults).

    Raises:
        ValueError: empty ``choices`` or an empty option list, ``parents`` not in
            ``1..population``, a rate outside ``[0, 1]``, an initial candidate of the wrong length,
            with an unknown option or breaking the constraint, or no allowed candidate found in
            ``max_tries`` random draws.
    """
    choices = [list(c) for c in choices]
    if not choices or any(not c for c in choices):
        raise ValueError("choices must list at least one option for each of at least one position")
    if not 1 <= parents <= population:
        raise ValueError(f"parents must be in 1..population ({population}), got {parents}")
    for name, v in (("mutation", mutation), ("crossover", crossover)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    ok = constraint or (lambda cand: True)
    rng = random.Random(seed)
    scores: dict[tuple, float] = {}
    rejected = 0

    def evaluate(cand: tuple) -> None:
        if cand not in scores:
            scores[cand] = float(score(cand))

    def random_allowed() -> tuple:
        for _ in range(max_tries):
            cand = tuple(rng.choice(c) for c in choices)
            if ok(cand):
                return cand
        raise ValueError(f"no candidate satisfying the constraint in {max_tries} random draws")

    pop = []
    for cand in initial:
        cand = tuple(cand)
        if len(cand) != len(choices) or any(c not in choices[i] for i, c in enumerate(cand)):
            raise ValueError(f"initial candidate {cand} does not pick one listed option per position")
        if not ok(cand):
            raise ValueError(f"initial candidate {cand} breaks the constraint")
        pop.append(cand)
    while len(pop) < population:
        pop.append(random_allowed())
    for cand in pop:
        evaluate(cand)
    history = []
    for _ in range(generations):
        elite = sorted(scores, key=lambda c: -scores[c])[:parents]
        children: list[tuple] = []
        tries = 0
        while len(children) < population - len(elite) and tries < max_tries * population:
            tries += 1
            a, b = rng.choice(elite), rng.choice(elite)
            if rng.random() < crossover:
                child = [a[i] if rng.random() < 0.5 else b[i] for i in range(len(choices))]
            else:
                child = list(a)
            for i in range(len(child)):
                if rng.random() < mutation:
                    child[i] = rng.choice(choices[i])
            child = tuple(child)
            if not ok(child):
                rejected += 1
                continue
            children.append(child)
        for cand in children:
            evaluate(cand)
        history.append(max(scores.values()))
    best = max(scores, key=lambda c: scores[c])
    return GeneticResult(best, scores[best], history, scores, rejected)
