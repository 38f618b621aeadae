"""Result containers: Monte Carlo risk paths (SGD, SDE) and deterministic ODE paths."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "RiskPaths",
    "ODEResult",
    "mark_divergence",
    "divergence_limit",
    "DIVERGENCE_FACTOR",
    "risk_scale",
]

#: a run has diverged when its risk passes DIVERGENCE_FACTOR x risk_scale and stays above
DIVERGENCE_FACTOR = 1e6


def risk_scale(initial_risk: float, noise=None) -> float:
    """The risk scale of a problem: max(R0, E[eps^2]) (scale^2 for laws of infinite variance).

    Every run that converges stays within a modest factor of this: unclipped SGD (gamma < 2)
    tends to gamma E[eps^2] / (2 (2 - gamma)) whatever the spectrum (the ODE's fixed point), which
    exceeds 1e6 E[eps^2] only for gamma > 2 - 1e-6, and it approaches it at a rate ~ (2 - gamma),
    so within any feasible horizon it is not reached; clipped SGD never diverges (its drift grows
    like sqrt(R) against a noise bounded by c^2).
    """
    ref = float(initial_risk) if math.isfinite(initial_risk) else 0.0
    if noise is not None:
        m2 = float(noise.second_moment)
        if not math.isfinite(m2):
            m2 = float(getattr(noise, "scale", 1.0)) ** 2
        ref = max(ref, m2)
    return max(ref, 1e-300)


def divergence_limit(threshold, initial_risk: float, noise=None) -> float:
    """The level L above which a run counts as diverged (if it stays above; see mark_divergence).

    Default L = 1e6 x max(R0, E[eps^2]) (:func:`risk_scale`; scale^2 stands for E[eps^2] for laws
    of infinite variance); ``threshold`` (a number > 0) overrides it. The same rule serves
    simulate, sweep, simulate_sde, simulate_reduced and solve_ode. Numbers behind the factor:
    unclipped Gaussian SGD (std 0.5, R0 = 0.5) at gamma = 3 passes 1e8 by t = 10 and grows
    without bound, while at gamma = 1.9 the stationary level is gamma E[eps^2] / (2 (2 - gamma))
    = 9.5 E[eps^2]: 5 orders of magnitude below L.
    """
    from . import _validate as V

    if threshold is None:
        return DIVERGENCE_FACTOR * risk_scale(initial_risk, noise)
    return V.positive("divergence_threshold", threshold)


def mark_paths(risk, stats: dict, t, threshold):
    """:func:`mark_divergence` on the risk, the population risk (if recorded) diverging with it:
    (risk, diverged, when, stats)."""
    risk, diverged, when = mark_divergence(risk, t, threshold)
    if "population_risk" in stats:
        stats["population_risk"] = np.where(np.isinf(risk), np.inf, stats["population_risk"])
    return risk, diverged, when, stats


def mark_divergence(risk: np.ndarray, t: np.ndarray, threshold: float):
    """Mark diverged runs (the one rule shared by every simulator and the ODE).

    A run has diverged from the first record time ``t_i`` such that its risk is above
    ``threshold`` (see :func:`divergence_limit`) at ``t_i`` and at every later record (it exceeds
    a level no convergent run reaches and stays there), or from its first non-finite risk (an
    overflowed state never recovers). A run that passes the level and comes back (e.g. a large
    kick of heavy-tailed noise) is not diverged and keeps its values.

    Returns (risk with +inf from the divergence on, never NaN; diverged mask; divergence time or
    NaN). Works on any leading shape; the last axis is time.
    """
    risk = np.array(risk, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    nonfinite = ~np.isfinite(risk)
    sticky = np.maximum.accumulate(nonfinite, axis=-1)  # overflow never recovers
    with np.errstate(invalid="ignore"):
        above = nonfinite | (risk > threshold)
    # above at this record and at every later one: reverse cumulative AND
    stays = np.flip(np.minimum.accumulate(np.flip(above, axis=-1), axis=-1), axis=-1)
    after = sticky | stays
    risk[after] = np.inf
    diverged = after[..., -1] if risk.shape[-1] else np.zeros(risk.shape[:-1], bool)
    first = np.argmax(after, axis=-1)
    when = np.where(diverged, t[first] if t.size else np.nan, np.nan)
    return risk, diverged, when


def _never(shape):
    return np.full(shape, np.inf)


@dataclass(frozen=True, eq=False)
class RiskPaths:
    """Risk of many runs at record times.

    Attributes:
        t: record times (1-D, time unit k / D).
        risk: shape (..., runs, len(t)); +inf from a run's divergence on (never NaN).
        diverged: shape (..., runs), True where the run diverged (see :func:`mark_divergence`).
        divergence_time: shape (..., runs), first record time of the divergence (NaN otherwise).
        params: the parameters that produced it (JSON-friendly). ``params["infinite_mean_from"]``
            (a time, or a nested list per sweep cell with None for "never"), when present, is the
            time after which the *expected* risk is infinite (a step without clipping under noise
            of infinite variance: the ODE and the SDE diverge there at once); ``mean`` is +inf
            after it, whatever the finite sample says.
        samples: examples used up to each record time (batch x steps), where known.
        stats: further recorded statistics, each shaped like ``risk``: "clip" (the threshold
            of adaptive rules), "bias" (<m, e>) and "population_risk" (R + <m, e>^2 / 2) for
            non-centred data (SPEC 10); see :meth:`stat`.
    """

    t: np.ndarray
    risk: np.ndarray
    diverged: np.ndarray
    divergence_time: np.ndarray
    params: dict = field(default_factory=dict)
    samples: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return int(self.risk.shape[-2])

    def stat(self, name: str) -> np.ndarray:
        """A recorded statistic (runs x len(t), like ``risk``); ValueError naming those there."""
        if name == "risk":
            return self.risk
        if name not in self.stats:
            have = ", ".join(["risk", *sorted(self.stats)])
            raise ValueError(f"no statistic {name!r} was recorded here (recorded: {have})")
        return np.asarray(self.stats[name])

    @property
    def population_risk(self) -> np.ndarray:
        """R + <m, e>^2 / 2 per run (SPEC 10; equal to ``risk`` for centred data)."""
        return self.stats.get("population_risk", self.risk)

    @property
    def bias(self) -> np.ndarray:
        """The bias statistic <m, e> per run (zeros for centred data)."""
        return self.stats.get("bias", np.zeros_like(self.risk))

    def stat_mean(self, name: str) -> np.ndarray:
        """Mean over runs of a statistic, non-finite values left out (NaN where none is finite,
        e.g. the threshold of AutoClip before its first step)."""
        v = self.stat(name)
        ok = np.isfinite(v)
        n = ok.sum(axis=-2)
        return np.where(n > 0, np.where(ok, v, 0.0).sum(axis=-2) / np.maximum(n, 1), np.nan)

    def stat_band(self, name: str, coverage: float = 0.8):
        """(lower, upper) quantile band of a statistic over runs."""
        lo = (1 - coverage) / 2
        v = np.asarray(self.stat(name), dtype=np.float64)
        big = np.finfo(np.float64).max
        # NaN = not defined yet (AutoClip's threshold before its first step): left out, and NaN
        # where no run has a value, as stat_mean; +inf counts as the largest value
        v = np.where(np.isposinf(v), big, np.where(np.isneginf(v), -big, v))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            q = np.nanquantile(v, [lo, 1 - lo], axis=-2)
        q = np.where(q > 1e300, np.inf, np.where(q < -1e300, -np.inf, q))
        return q[0], q[1]

    def infinite_mean_from(self) -> np.ndarray:
        """Per cell (shape risk.shape[:-2]): time after which E[risk] is infinite (inf: never)."""
        raw = self.params.get("infinite_mean_from") if isinstance(self.params, dict) else None
        shape = self.risk.shape[:-2]
        if raw is None:
            return _never(shape)
        arr = np.array(raw, dtype=object)
        out = np.where(arr == None, np.inf, arr).astype(np.float64)  # noqa: E711
        return np.broadcast_to(out, shape).copy()

    def _infinite_mask(self):
        """(..., len(t)) True where the expected risk is infinite."""
        start = self.infinite_mean_from()
        return np.asarray(self.t)[(None,) * start.ndim] > start[..., None]

    def _finite_runs(self, exclude_diverged):
        if not exclude_diverged:
            return self.risk
        # all runs of a cell diverged: nothing is excluded there (the statistic is +inf)
        every = self.diverged.all(axis=-1, keepdims=True)
        drop = self.diverged & ~every
        return np.where(drop[..., None], np.nan, self.risk)

    def mean(self, exclude_diverged: bool = False) -> np.ndarray:
        """Mean risk over runs: +inf if any run diverged (unless ``exclude_diverged``), +inf where
        every run diverged, and +inf where the expected risk is infinite (``infinite_mean_from``).
        Never NaN, no warnings."""
        r = self._finite_runs(exclude_diverged)
        keep = ~np.isnan(r)
        n = keep.sum(axis=-2)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(keep, r, 0.0).sum(axis=-2)
            m = np.where(n > 0, s / np.maximum(n, 1), np.inf)
        return np.where(self._infinite_mask(), np.inf, m)

    def quantiles(self, qs=(0.1, 0.5, 0.9), exclude_diverged: bool = False) -> np.ndarray:
        """Quantiles over runs, shape (len(qs), ..., len(t)); diverged runs count as +inf (or are
        left out with ``exclude_diverged``, unless all of them diverged: then +inf)."""
        r = self._finite_runs(exclude_diverged)
        f = np.nanquantile if exclude_diverged else np.quantile
        big = np.finfo(np.float64).max
        # +inf as the largest float: no inf - inf (NaN, warnings) inside the interpolation; a
        # quantile whose bracket reaches a diverged run is +inf
        q = f(np.where(np.isposinf(r), big, r), np.asarray(qs), axis=-2)
        return np.where(q > 1e300, np.inf, q)

    def band(self, coverage: float = 0.8, exclude_diverged: bool = False):
        """(lower, upper) quantile band holding ``coverage`` of the runs (0.8: 10% and 90%)."""
        lo = (1 - coverage) / 2
        q = self.quantiles((lo, 1 - lo), exclude_diverged)
        return q[0], q[1]

    def std_error(self) -> np.ndarray:
        """Standard error of the mean over runs (+inf where a run is infinite, never NaN)."""
        r = self.risk
        bad = ~np.isfinite(r).all(axis=-2)
        with np.errstate(invalid="ignore", over="ignore"):
            se = np.where(np.isfinite(r), r, 0.0).std(axis=-2, ddof=1) / np.sqrt(self.runs)
        se = np.where(bad, np.inf, np.nan_to_num(se, nan=0.0))
        return np.where(self._infinite_mask(), np.inf, se)

    def divergence_report(self) -> str:
        n = int(self.diverged.sum())
        start = self.infinite_mean_from()
        inf_note = ""
        if np.isfinite(start).any():
            inf_note = (
                f"expected risk infinite from t = {float(np.min(start)):.4g} on (no clipping, "
                "noise of infinite variance: the mean over runs diverges; the ODE and SDE do too)"
            )
        if n == 0:
            return inf_note or "no run diverged"
        first = np.nanmin(self.divergence_time)
        text = (
            f"{n} of {self.diverged.size} runs diverged (risk above the divergence level and "
            f"growing; first at t = {first:.4g})"
        )
        return f"{text}; {inf_note}" if inf_note else text


@dataclass(frozen=True, eq=False)
class ODEResult:
    """Deterministic risk curve from the ODE (SPEC section 4).

    Attributes:
        t, risk: 1-D arrays (risk +inf from the divergence on, never NaN).
        lr_path, clip_path: the effective learning rate and clip threshold along the path (for
            risk-dependent schedules these are what ``simulate`` needs as time schedules). After a
            divergence they hold their last finite value (never NaN): the schedule the solve
            last used.
        diverged, divergence_time: whether (and from which record time) the risk diverged.
        stats: further predicted statistics (1-D, like ``risk``): "bias" (<m, E e>) and
            "population_risk" for non-centred data (SPEC 10), "mean_clip" for the fast
            quantile rule (E_pi[c]), ...
    """

    t: np.ndarray
    risk: np.ndarray
    lr_path: np.ndarray
    clip_path: np.ndarray
    diverged: bool = False
    divergence_time: float = float("nan")
    params: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    @property
    def population_risk(self) -> np.ndarray:
        """R + <m, E e>^2 / 2 (SPEC 10; equal to ``risk`` for centred data)."""
        return self.stats.get("population_risk", self.risk)

    @property
    def bias(self) -> np.ndarray:
        """The predicted bias statistic <m, E e> (zeros for centred data)."""
        return self.stats.get("bias", np.zeros_like(self.risk))

    def time_schedules(self):
        """(lr, clip) as ``(times, values)`` schedules that ``simulate`` accepts."""
        return (self.t, self.lr_path), (self.t, self.clip_path)
