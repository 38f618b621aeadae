"""Every tolerance of the test suite, in one place (per dtype where it matters)."""

import math

# round-off level comparisons
EXACT = {"float64": 1e-12, "float32": 2e-6}

# reduction factors: SPEC section 3 accuracy requirement
FACTORS_REL = 1e-8

# ODE against closed forms and independent solutions
ODE_CLOSED_FORM_REL = 1e-8
ODE_INDEPENDENT_REL = 1e-6


def monte_carlo_rel(runs: int, d: float, z: float = 5.0, bias: float = 4.0) -> float:
    """Relative tolerance for a mean risk over ``runs`` runs at dimension ``d``.

    Per-run risk fluctuates with relative std ~ sqrt(2/d) (a sum of d weakly dependent terms);
    the mean of ``runs`` runs has relative std sqrt(2/(d runs)); the SGD-vs-ODE bias is O(1/d).
    ``z`` standard errors (5: false alarms ~1e-6 per comparison) plus ``bias / d``.
    """
    return z * math.sqrt(2.0 / (d * runs)) + bias / d
