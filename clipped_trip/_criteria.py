"""When clipping helps: CCC, CSC, the optimal threshold and the ready-made schedules (SPEC section 5).

References: arXiv 2406.11733, clipping comparison criterion (CCC), clipping stability criterion
(CSC), Theorem 3 (optimal clipping schedule), v2's heuristic schedule c = kappa sqrt(2R + Var).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import CubicSpline

from . import _validate as V
from ._factors import reduction_factors
from ._noise import NoiseLaw
from ._schedules import RiskSchedule

__all__ = ["ccc", "csc", "critical_lr", "optimal_clip", "max_ccc", "max_ccc_schedule",
           "heuristic_schedule", "tune_kappa"]

_GOLDEN = (math.sqrt(5) - 1) / 2


def _total(noise, risk):
    """2R + E[eps^2], the unclipped nu (inf for infinite-variance noise)."""
    return 2.0 * np.asarray(risk, dtype=np.float64) + noise.second_moment


def _no_clip(clip):
    return np.isinf(np.inf if clip is None else np.asarray(clip, dtype=np.float64))


def ccc(noise: NoiseLaw, risk, clip):
    """Clipping comparison criterion mu^2 (2R + Var) / nu; > 1 means clipping is faster.

    Infinite where the noise variance is (Cauchy): any clipping beats divergent unclipped SGD.
    References: arXiv 2406.11733, CCC; SPEC section 5.
    """
    mu, nu = reduction_factors(noise, risk, clip)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(nu > 0, mu * mu * _total(noise, risk) / nu, np.inf)
    return np.where(_no_clip(clip), 1.0, value)


def csc(noise: NoiseLaw, risk, clip):
    """Clipping stability criterion mu / G with G = nu / (2R + Var); > 1: clipping stabilises.

    References: arXiv 2406.11733, CSC; SPEC section 5.
    """
    mu, nu = reduction_factors(noise, risk, clip)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(nu > 0, mu * _total(noise, risk) / nu, np.inf)
    return np.where(_no_clip(clip), 1.0, value)


def critical_lr(noise: NoiseLaw, risk, clip):
    """Largest stable learning rate with the factors frozen at ``risk``: 2 mu / G (2 unclipped).

    References: arXiv 2406.11733, stability of clipped SGD; SPEC section 5.
    """
    return 2.0 * csc(noise, risk, clip)


def _ratio(noise, risk, clip):
    mu, nu = reduction_factors(noise, risk, clip)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nu > 0, mu * mu / nu, 0.0)


def _reference_scale(noise, risk):
    m2 = noise.second_moment
    noise_scale = math.sqrt(m2) if math.isfinite(m2) else getattr(noise, "_scale", 1.0)
    return np.sqrt(2.0 * np.asarray(risk, dtype=np.float64) + noise_scale ** 2)


def optimal_clip(noise: NoiseLaw, risk, *, decades: float = 4.0, grid: int = 81,
                 iterations: int = 80):
    """c*(R) = argmax_c mu_c(R)^2 / nu_c(R), broadcasting over ``risk``.

    inf where no finite threshold beats no clipping (e.g. Gaussian noise for every R). Method: a
    log grid of ``grid`` points spanning +-``decades`` around sqrt(2R + scale^2), then golden-section
    search on log c around the best grid point (vectorised over R).
    """
    if not isinstance(noise, NoiseLaw):
        raise ValueError(f"noise must be a NoiseLaw, got {type(noise).__name__}")
    R = np.atleast_1d(np.asarray(risk, dtype=np.float64))
    if np.any(~np.isfinite(R)) or np.any(R < 0):
        raise ValueError("risk must be finite and >= 0 everywhere")
    shape = np.shape(risk)
    R = R.ravel()
    log_ref = np.log(_reference_scale(noise, R))
    offsets = np.linspace(-decades, decades, grid) * math.log(10)
    log_c = log_ref[:, None] + offsets[None, :]
    vals = _ratio(noise, R[:, None], np.exp(log_c))
    best = np.argmax(vals, axis=1)
    rows = np.arange(R.size)
    lo = log_c[rows, np.maximum(best - 1, 0)]
    hi = log_c[rows, np.minimum(best + 1, grid - 1)]
    # golden-section search on [lo, hi] (the grid maximum brackets the optimum)
    x1 = hi - _GOLDEN * (hi - lo)
    x2 = lo + _GOLDEN * (hi - lo)
    f1, f2 = _ratio(noise, R, np.exp(x1)), _ratio(noise, R, np.exp(x2))
    for _ in range(iterations):
        left = f1 >= f2  # the maximum lies in [lo, x2]
        hi, lo = np.where(left, x2, hi), np.where(left, lo, x1)
        x_new = np.where(left, hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo))
        f_new = _ratio(noise, R, np.exp(x_new))
        x1, x2, f1, f2 = (np.where(left, x_new, x2), np.where(left, x1, x_new),
                          np.where(left, f_new, f2), np.where(left, f1, f_new))
        if np.all(hi - lo < 1e-10):
            break
    c_star = np.exp(0.5 * (lo + hi))
    best_ratio = _ratio(noise, R, c_star)
    unclipped = 1.0 / _total(noise, R)  # 0 for infinite variance
    at_edge = best == grid - 1
    no_gain = (best_ratio <= unclipped * (1 + 1e-10)) | (at_edge & np.isfinite(noise.second_moment))
    c_star = np.where(no_gain, np.inf, c_star)
    return c_star.reshape(shape) if shape else float(c_star[0])


def max_ccc(noise: NoiseLaw, risk):
    """max over c of CCC(R, c) (1 where no finite c beats no clipping); with the maximiser.

    Returns (max_ccc, c_star), broadcasting over ``risk``.
    """
    c_star = np.asarray(optimal_clip(noise, risk))
    value = np.where(np.isinf(c_star), 1.0, ccc(noise, risk, np.where(np.isinf(c_star), 1.0, c_star)))
    return value, c_star


class _TabulatedClip:
    """c*(R) interpolated in (log R, log c) from a table; inf where the table says inf."""

    def __init__(self, noise, r_min, r_max, per_decade):
        n = int(math.ceil(per_decade * math.log10(r_max / r_min))) + 1
        self.log_r = np.linspace(math.log(r_min), math.log(r_max), n)
        c = optimal_clip(noise, np.exp(self.log_r))
        self.infinite = np.isinf(c)
        self.log_c = np.log(np.where(self.infinite, 1.0, c))
        self.noise = noise
        # smooth in log R where c* is finite throughout, so mu(R, c*(R)) stays smooth for the ODE
        self.spline = None if self.infinite.any() else CubicSpline(self.log_r, self.log_c)

    def __call__(self, risk):
        R = np.asarray(risk, dtype=np.float64)
        x = np.log(np.maximum(R, 1e-300))
        inside = (x >= self.log_r[0]) & (x <= self.log_r[-1])
        if self.spline is not None:
            out = np.exp(self.spline(np.clip(x, self.log_r[0], self.log_r[-1])))
        else:
            out = np.exp(np.interp(x, self.log_r, self.log_c))
        # an interval touching an inf entry is inf (no finite optimum there)
        j = np.clip(np.searchsorted(self.log_r, x), 1, self.log_r.size - 1)
        out = np.where(self.infinite[j] | self.infinite[j - 1], np.inf, out)
        if np.any(~inside):  # outside the table: optimise directly (rare)
            out = np.where(inside, out, optimal_clip(self.noise, np.where(inside, 1.0, R)))
        return out


def max_ccc_schedule(noise: NoiseLaw, *, r_min: float = 1e-8, r_max: float = 1e4,
                     per_decade: int = 24) -> RiskSchedule:
    """The optimal schedule (Theorem 3): c*(R) = argmax mu^2/nu with learning rate gamma / mu.

    c*(R) is tabulated once on a log grid of risks and interpolated, so an ODE solve has no
    optimiser inside its steps. Risks outside [r_min, r_max] are optimised directly.
    """
    r_min = V.positive("r_min", r_min)
    r_max = V.real("r_max", r_max, lo=r_min, lo_open=True)
    return RiskSchedule(_TabulatedClip(noise, r_min, r_max, per_decade), compensate=True,
                        name="max-CCC schedule")


def heuristic_schedule(noise: NoiseLaw, kappa: float) -> RiskSchedule:
    """v2's heuristic: c(R) = kappa sqrt(2R + Var eps), learning rate gamma / mu (finite Var only)."""
    kappa = V.positive("kappa", kappa)
    m2 = noise.second_moment
    if not math.isfinite(m2):
        raise ValueError("heuristic_schedule needs finite noise variance; use max_ccc_schedule")
    return RiskSchedule(lambda R: kappa * np.sqrt(2.0 * R + m2), compensate=True,
                        name=f"heuristic(kappa={kappa:g})")


def tune_kappa(problem, lr, T, kappas=None, **ode_kwargs):
    """Pick kappa of the heuristic schedule by the final ODE risk. Returns (best, kappas, finals)."""
    from ._ode import solve_ode

    kappas = np.linspace(0.1, 5.0, 50) if kappas is None else np.asarray(kappas, dtype=np.float64)
    finals = np.array([solve_ode(problem, lr, heuristic_schedule(problem.noise, k), T,
                                 n_records=2, **ode_kwargs).risk[-1] for k in kappas])
    return float(kappas[int(np.argmin(finals))]), kappas, finals
