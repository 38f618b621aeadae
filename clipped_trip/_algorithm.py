"""The algorithm contract (SPEC section 13): what every clipping method provides to the drivers.

An algorithm is a frozen object holding its hyperparameters (``lr``, ``clip`` and its own). The
drivers (:func:`simulate`, :func:`solve_ode`, :func:`simulate_sde`, :func:`sweep`) ask it for

* ``kernel()``: a small hashable object (static to the compiled program) with the stochastic
  update in JAX: ``init_state(model)``, ``step(noise, model, sched, key, e, state)`` and
  ``records(model, e, state)``; ``sched`` holds this step's values of the per-step tables;
* ``step_tables(n_steps, D)``: those per-step tables (numbers stay length 1: sweeps share one
  program); ``sweep_axes``: the tables a sweep may vary;
* ``deterministic(problem, **options)``: the deterministic equivalent, an object with the ODE's
  state pytree, its right-hand side as a sum of terms, the one-step map of E[v], and the SDE's
  factors;
* ``describe()``: JSON-friendly parameters for result sidecars.

Each algorithm lives in one file holding its stochastic update and its deterministic terms side
by side.
"""

from __future__ import annotations

__all__ = ["Algorithm", "as_algorithm"]


class Algorithm:
    """Base class of the package's algorithms (see the module docstring for the contract)."""

    #: names of per-step tables a sweep may vary (e.g. ("lr", "clip"))
    sweep_axes: tuple = ()

    def kernel(self):  # pragma: no cover - interface
        raise NotImplementedError

    def step_tables(self, n_steps: int, D: float) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def deterministic(self, problem, **options):  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def samples_per_step(self) -> int:
        return 1


def as_algorithm(lr_or_algorithm, clip, where: str, lr=None):
    """The v0.1 shorthand ``f(problem, lr, clip)`` is ``f(problem, ClippedSGD(lr, clip))``.

    ``lr`` is the v0.1 keyword (``f(problem, lr=0.5, clip=1.0)``).
    """
    from ._clipped_sgd import ClippedSGD

    if lr is not None:
        if lr_or_algorithm is not None:
            raise ValueError(f"{where}: give either an algorithm or lr=, not both")
        lr_or_algorithm = lr
    if lr_or_algorithm is None:
        raise ValueError(f"{where}: give an algorithm (e.g. ClippedSGD(lr, clip)) or lr")
    if isinstance(lr_or_algorithm, Algorithm):
        if clip is not None:
            raise ValueError(
                f"{where}: clip is part of the algorithm; pass it to the algorithm "
                "(e.g. ClippedSGD(lr, clip)), not to the driver"
            )
        return lr_or_algorithm
    return ClippedSGD(lr_or_algorithm, clip)
