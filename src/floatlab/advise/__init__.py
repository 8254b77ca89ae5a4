"""Per-layer format advice under a budget (bits, bytes or energy): sensitivities, solvers
(integer program, greedy, genetic), a recipe for ``floatlab ptq``, and an end-to-end check.

The solvers (:mod:`floatlab.advise.search`) see a plain cost table; the model-facing parts
(:mod:`floatlab.advise.sensitivity`, :mod:`floatlab.advise.advisor`) are imported on demand.
"""

from floatlab.advise.search import (SOLVERS, BudgetError, Problem, Solution, random_assignments, solve_genetic,
                                    solve_greedy, solve_milp)

__all__ = ["Problem", "Solution", "BudgetError", "SOLVERS", "solve_milp", "solve_greedy", "solve_genetic",
           "random_assignments"]
