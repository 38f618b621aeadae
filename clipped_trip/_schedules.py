"""Learning-rate and clipping schedules (SPEC section 2 units: time t = k / D).

A schedule is one of
* a number (constant); for the clip, ``None`` or ``inf`` means no clipping;
* a callable of time ``f(t)`` (called with a numpy array of times, or element-wise if it cannot);
* a pair ``(times, values)`` of arrays: piecewise linear in t, held constant outside the grid;
* for the clip in ``solve_ode`` only: a :class:`RiskSchedule`, a function of the current risk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _validate as V

__all__ = ["RiskSchedule", "time_schedule_values"]


@dataclass(frozen=True)
class RiskSchedule:
    """Clip threshold as a function of the current risk, c = clip_of_risk(R).

    With ``compensate=True`` the learning rate is divided by mu_c(R) (SPEC section 5: the
    compensated rate of the optimal and heuristic schedules). Read ``solve_ode(...).clip_path`` and
    ``.lr_path`` to turn the result into time schedules for ``simulate``.
    """

    clip_of_risk: Callable
    compensate: bool = False
    name: str = "risk-schedule"

    def clip(self, risk):
        c = np.asarray(self.clip_of_risk(np.asarray(risk, dtype=np.float64)), dtype=np.float64)
        if np.any(np.isnan(c)) or np.any(c <= 0):
            raise ValueError(f"{self.name}: clip_of_risk must return values > 0 (inf allowed)")
        return c


def _call_vectorised(f, t):
    try:
        out = np.asarray(f(t), dtype=np.float64)
        if out.shape == t.shape:
            return out
        if out.ndim == 0:
            return np.full(t.shape, float(out))
    except Exception:  # noqa: BLE001 - fall back to element-wise calls for scalar-only callables
        pass
    try:
        return np.array([float(f(float(ti))) for ti in t], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            "a schedule callable must return one number per time (a scalar, or an array shaped "
            "like its argument)"
        ) from None


def time_schedule_values(
    name: str, schedule, t, *, allow_inf: bool = False, allow_none: bool = False
) -> np.ndarray:
    """Evaluate a schedule at the times ``t`` and validate the values (> 0)."""
    t = np.asarray(t, dtype=np.float64)
    if schedule is None:
        if not allow_none:
            raise ValueError(
                f"{name} must be given (a number > 0, a callable of t or (times, values))"
            )
        return np.full(t.shape, math.inf)
    if isinstance(schedule, RiskSchedule):
        raise ValueError(
            f"{name}: a RiskSchedule works in solve_ode only; for simulate pass "
            "the ODE's time schedules (result.lr_path / result.clip_path with result.t)"
        )
    if callable(schedule):
        values = _call_vectorised(schedule, t)
    elif _is_table(schedule):
        grid = V.vector(f"{name} times", schedule[0])
        vals = np.asarray(schedule[1], dtype=np.float64)
        if vals.shape != grid.shape:
            raise ValueError(
                f"{name}: times and values must have the same length, "
                f"got {grid.size} and {vals.size}"
            )
        if np.any(np.diff(grid) <= 0):
            raise ValueError(f"{name} times must be strictly increasing")
        values = np.interp(t, grid, vals)
    else:
        if isinstance(schedule, (tuple, list, np.ndarray)) and np.ndim(schedule) > 0:
            raise ValueError(
                f"{name}: a schedule is a number, a callable of t, or (times, values) as two 1-D "
                f"arrays of one length (tuple, list or a 2 x N array); got shape "
                f"{np.shape(schedule) if np.ndim(schedule) < 3 else 'nested'}"
            )
        value = V.real(name, schedule, lo=0.0, lo_open=True, allow_inf=allow_inf)
        return np.full(t.shape, value)
    bad = np.isnan(values) | (values <= 0) | (np.isinf(values) & (not allow_inf))
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name} must be > 0{' (inf allowed)' if allow_inf else ' and finite'} "
            f"at every time; got {values[i]} at t = {t[i]:.6g}"
        )
    return values


def _is_table(schedule) -> bool:
    """(times, values) as a tuple or list of two 1-D arrays, or a 2 x N array."""
    if isinstance(schedule, (tuple, list)) and len(schedule) == 2:
        return np.ndim(schedule[0]) == 1 and np.ndim(schedule[1]) == 1
    return isinstance(schedule, np.ndarray) and schedule.ndim == 2 and schedule.shape[0] == 2


def is_constant(schedule) -> bool:
    return schedule is None or isinstance(schedule, (int, float, np.floating, np.integer))
