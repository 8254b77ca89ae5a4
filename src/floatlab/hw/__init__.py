"""Hardware cost model: bits moved per value and relative MAC energy and area of every format
(see :mod:`floatlab.hw.cost`; relative numbers only, fitted to Horowitz ISSCC 2014, 45 nm).
Imports only :mod:`floatlab.formats`."""

from floatlab.hw.cost import (AREA, ENERGY, HOROWITZ_45NM, PSEUDO, REDUCTION, Coefficients, FormatCost, MacCost,
                              bits_moved, cost_table, fit, mac_cost)

__all__ = ["mac_cost", "cost_table", "bits_moved", "fit", "FormatCost", "MacCost", "Coefficients", "ENERGY", "AREA",
           "HOROWITZ_45NM", "PSEUDO", "REDUCTION"]
