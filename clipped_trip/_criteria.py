"""When clipping helps: CCC, CSC, the optimal threshold and ready-made schedules (SPEC section 5).

References: arXiv 2406.11733, clipping comparison criterion (CCC), clipping stability criterion
(CSC), Theorem 3 (optimal clipping schedule), v2's heuristic schedule c = kappa sqrt(2R + Var).
"""

from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from ._factors import reduction_factors
from ._noise import NoiseLaw
from ._schedules import RiskSchedule
from ._tables import LazyLogTable

__all__ = [
    "ccc",
    "csc",
    "critical_lr",
    "optimal_clip",
    "max_ccc",
    "max_ccc_schedule",
    "heuristic_schedule",
    "tune_kappa",
]

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
    return np.sqrt(2.0 * np.asarray(risk, dtype=np.float64) + noise_scale**2)


def optimal_clip(
    noise: NoiseLaw,
    risk,
    *,
    decades: float = 4.0,
    grid: int = 41,
    iterations: int = 60,
    xtol: float = 1e-8,
):
    """c*(R) = argmax_c mu_c(R)^2 / nu_c(R), broadcasting over ``risk``.

    inf where no finite threshold beats no clipping (e.g. Gaussian noise for every R). Method: a
    log grid of ``grid`` points spanning +-``decades`` around sqrt(2R + scale^2), then golden-
    section search on log c around the best grid point (vectorised over R) to ``xtol`` in log c.
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
        x1, x2, f1, f2 = (
            np.where(left, x_new, x2),
            np.where(left, x1, x_new),
            np.where(left, f_new, f2),
            np.where(left, f1, f_new),
        )
        if np.all(hi - lo < xtol):
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
    value = np.where(
        np.isinf(c_star), 1.0, ccc(noise, risk, np.where(np.isinf(c_star), 1.0, c_star))
    )
    return value, c_star


class _TabulatedClip:
    """c*(R) from a lazily built table in log R (inf where no finite c helps)."""

    def __init__(self, noise, per_decade):
        self.noise = noise
        self.table = LazyLogTable(lambda R: np.log(optimal_clip(noise, R)), per_decade)

    def __call__(self, risk):
        R = np.maximum(np.asarray(risk, dtype=np.float64), 1e-300)
        return np.exp(self.table(R)[:, 0]).reshape(R.shape)


def max_ccc_schedule(noise: NoiseLaw, *, per_decade: int = 12) -> RiskSchedule:
    """The optimal schedule (Theorem 3): c*(R) = argmax mu^2/nu with learning rate gamma / mu.

    c*(R) is optimised once per tabulated risk (``per_decade`` points per decade of R, built
    lazily as the risk path visits a decade) and interpolated by cubic splines in log R, so an
    ODE solve has no optimiser inside its steps. Interpolation errors in c* enter the ODE only at
    second order: nu / mu^2 is stationary at c*.
    """
    if not isinstance(noise, NoiseLaw):
        raise ValueError(f"noise must be a NoiseLaw, got {type(noise).__name__}")
    per_decade = V.count("per_decade", per_decade, lo=2)
    return RiskSchedule(_TabulatedClip(noise, per_decade), compensate=True, name="max-CCC schedule")


def heuristic_schedule(noise: NoiseLaw, kappa: float) -> RiskSchedule:
    """v2's heuristic: c(R) = kappa sqrt(2R + Var eps), learning rate gamma / mu (finite Var)."""
    kappa = V.positive("kappa", kappa)
    m2 = noise.second_moment
    if not math.isfinite(m2):
        raise ValueError("heuristic_schedule needs finite noise variance; use max_ccc_schedule")
    return RiskSchedule(
        lambda R: kappa * np.sqrt(2.0 * R + m2), compensate=True, name=f"heuristic(kappa={kappa:g})"
    )


def tune_kappa(problem, lr, T, kappas=None, **ode_kwargs):
    """Pick the heuristic's kappa by the final ODE risk. Returns (best, kappas, finals)."""
    from ._ode import solve_ode

    kappas = np.linspace(0.1, 5.0, 50) if kappas is None else np.asarray(kappas, dtype=np.float64)
    finals = np.array(
        [
            solve_ode(
                problem, lr, heuristic_schedule(problem.noise, k), T, n_records=2, **ode_kwargs
            ).risk[-1]
            for k in kappas
        ]
    )
    return float(kappas[int(np.argmin(finals))]), kappas, finals
