"""The algorithm contract (SPEC section 13): what every clipping method provides to the drivers.

An algorithm is a frozen object holding its hyperparameters (``lr``, ``clip`` and its own). The
drivers (:func:`simulate`, :func:`solve_ode`, :func:`simulate_sde`, :func:`sweep`) ask it for

* ``kernel()``: a small hashable object (static to the compiled program) with the stochastic
  update in JAX: ``init_state(model, sched0)``, ``step(noise, model, sched, key, e, state)`` and
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

__all__ = ["Algorithm", "as_algorithm", "EquivalentBase"]


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

    def check_problem(self, problem) -> None:
        """Raise ValueError if the stochastic update is not defined on ``problem`` (the
        simulators call it; e.g. value clipping needs the data's own coordinates)."""


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


class EquivalentBase:
    """Shared pieces of a deterministic equivalent with a learning-rate schedule: ``lr_at``,
    ``h_bound`` (gamma lambda_max / D over the horizon), the diagonal noise scale and ``paths``."""

    shifted = False

    def __init__(self, alg, problem):
        import numpy as np

        from ._schedules import is_constant, time_schedule_values

        self.alg, self.noise = alg, problem.noise
        self.lam, self.D = problem.eigenvalues, problem.D
        self.lr = alg.lr
        self.lr_const = (
            time_schedule_values("lr", self.lr, np.zeros(1))[0] if is_constant(self.lr) else None
        )
        self.e0 = problem.initial_error
        self._lam2_half_D = self.lam * self.lam / (2.0 * self.D)

    def lr_at(self, t):
        import numpy as np

        from ._schedules import time_schedule_values

        if self.lr_const is not None:
            return self.lr_const
        return float(time_schedule_values("lr", self.lr, np.array([t]))[0])

    def h_bound(self, t_end):
        import numpy as np

        from ._schedules import time_schedule_values

        lr = self.lr_const
        if lr is None:
            lr = float(time_schedule_values("lr", self.lr, np.linspace(0.0, t_end, 257)).max())
        return lr * float(self.lam.max()) / self.D

    def paths(self, t, risk):
        """(lr, clip) along the path; clip NaN here (adaptive rules record it as a statistic)."""
        import numpy as np

        from ._schedules import time_schedule_values

        return time_schedule_values("lr", self.lr, t), np.full(np.shape(t), np.nan)
