"""The genetic search: finds the optimum of a separable problem under a budget, never scores a
candidate that breaks the constraint, is reproducible, and refuses bad input."""

import pytest

from floatlab.search import budget_constraint, genetic_search

BITS = [1, 2, 4, 8]


def test_finds_best_policy_under_budget_and_never_scores_a_rejected_one():
    # 6 layers of different sizes; value of a bit width falls off with size (a toy sensitivity table)
    sizes = [10, 200, 200, 50, 400, 10]
    gain = [5.0, 1.0, 1.2, 3.0, 0.5, 4.0]
    costs = [{b: b * n for b in BITS} for n in sizes]
    budget = 4 * sum(sizes)                            # average 4 bits
    allowed = budget_constraint(costs, budget)
    seen = []

    def score(cand):
        assert allowed(cand), "a candidate breaking the constraint was scored"
        seen.append(cand)
        return sum(g * min(b, 8) ** 0.5 for g, b in zip(gain, cand))

    r = genetic_search([BITS] * 6, score, constraint=allowed, generations=30, seed=1)
    assert len(seen) == len(set(seen)) == len(r.scores)              # each scored once
    # exhaustive optimum (4^6 = 4096 candidates)
    import itertools
    best = max((c for c in itertools.product(BITS, repeat=6) if allowed(c)), key=score)
    assert r.score == pytest.approx(score(best))
    assert r.history == sorted(r.history) and r.rejected > 0
    again = genetic_search([BITS] * 6, score, constraint=allowed, generations=30, seed=1)
    assert again.best == r.best and again.history == r.history


def test_bad_input():
    with pytest.raises(ValueError, match="at least one option"):
        genetic_search([[1, 2], []], lambda c: 0)
    with pytest.raises(ValueError, match="parents"):
        genetic_search([[1, 2]], lambda c: 0, parents=0)
    with pytest.raises(ValueError, match="breaks the constraint"):
        genetic_search([[1, 2]], lambda c: 0, constraint=lambda c: c[0] == 1, initial=[(2,)])
    with pytest.raises(ValueError, match="no candidate satisfying"):
        genetic_search([[1, 2]], lambda c: 0, constraint=lambda c: False, max_tries=10)
