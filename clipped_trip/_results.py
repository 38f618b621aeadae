"""Result containers: Monte Carlo risk paths (SGD, SDE) and deterministic ODE paths."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RiskPaths", "ODEResult", "mark_divergence", "divergence_limit"]


def divergence_limit(threshold, initial_risk: float) -> float:
    """The risk above which a run counts as diverged: ``threshold`` or 1e12 max(R0, 1)."""
    from . import _validate as V

    if threshold is None:
        return 1e12 * max(initial_risk, 1.0)
    return V.positive("divergence_threshold", threshold)


def mark_divergence(risk: np.ndarray, t: np.ndarray, threshold: float):
    """Find runs whose risk overflowed (non-finite or above ``threshold``).

    Returns (risk, +inf from the first overflow on; diverged mask; first divergence time or NaN).
    Works on any leading shape; the last axis is time.
    """
    risk = np.array(risk, dtype=np.float64)
    bad = ~np.isfinite(risk) | (risk > threshold)
    after = np.maximum.accumulate(bad, axis=-1)
    risk[after] = np.inf
    diverged = after[..., -1]
    first = np.argmax(bad, axis=-1)
    when = np.where(diverged, np.asarray(t)[first], np.nan)
    return risk, diverged, when


@dataclass(frozen=True, eq=False)
class RiskPaths:
    """Risk of many runs at record times.

    Attributes:
        t: record times (1-D, time unit k / D).
        risk: shape (..., runs, len(t)); +inf from a run's divergence on.
        diverged: shape (..., runs), True where the risk overflowed.
        divergence_time: shape (..., runs), first record time at which it did (NaN otherwise).
        params: the parameters that produced it (JSON-friendly).
        samples: examples used up to each record time (batch x steps), where known.
    """

    t: np.ndarray
    risk: np.ndarray
    diverged: np.ndarray
    divergence_time: np.ndarray
    params: dict = field(default_factory=dict)
    samples: np.ndarray | None = None

    @property
    def runs(self) -> int:
        return int(self.risk.shape[-2])

    def _finite_runs(self, exclude_diverged):
        if not exclude_diverged:
            return self.risk
        return np.where(self.diverged[..., None], np.nan, self.risk)

    def mean(self, exclude_diverged: bool = False) -> np.ndarray:
        """Mean risk over runs (inf if any run diverged, unless ``exclude_diverged``)."""
        r = self._finite_runs(exclude_diverged)
        with np.errstate(invalid="ignore"):
            return np.nanmean(r, axis=-2) if exclude_diverged else r.mean(axis=-2)

    def quantiles(self, qs=(0.1, 0.5, 0.9), exclude_diverged: bool = False) -> np.ndarray:
        """Quantiles over runs, shape (len(qs), ..., len(t)); diverged runs count as +inf."""
        r = self._finite_runs(exclude_diverged)
        f = np.nanquantile if exclude_diverged else np.quantile
        return f(r, np.asarray(qs), axis=-2)

    def band(self, coverage: float = 0.8, exclude_diverged: bool = False):
        """(lower, upper) quantile band holding ``coverage`` of the runs (0.8: 10% and 90%)."""
        lo = (1 - coverage) / 2
        q = self.quantiles((lo, 1 - lo), exclude_diverged)
        return q[0], q[1]

    def std_error(self) -> np.ndarray:
        return self.risk.std(axis=-2, ddof=1) / np.sqrt(self.runs)

    def divergence_report(self) -> str:
        n = int(self.diverged.sum())
        if n == 0:
            return "no run diverged"
        first = np.nanmin(self.divergence_time)
        return (
            f"{n} of {self.diverged.size} runs diverged (risk overflowed; first at t = {first:.4g})"
        )


@dataclass(frozen=True, eq=False)
class ODEResult:
    """Deterministic risk curve from the ODE (SPEC section 4).

    Attributes:
        t, risk: 1-D arrays.
        lr_path, clip_path: the effective learning rate and clip threshold along the path (for
            risk-dependent schedules these are what ``simulate`` needs as time schedules).
        diverged, divergence_time: whether (and when) the risk overflowed.
    """

    t: np.ndarray
    risk: np.ndarray
    lr_path: np.ndarray
    clip_path: np.ndarray
    diverged: bool = False
    divergence_time: float = float("nan")
    params: dict = field(default_factory=dict)

    def time_schedules(self):
        """(lr, clip) as ``(times, values)`` schedules that ``simulate`` accepts."""
        return (self.t, self.lr_path), (self.t, self.clip_path)
