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
    "critical_batch",
    "ccc",
    "csc",
    "critical_lr",
    "optimal_clip",
    "max_ccc",
    "max_ccc_schedule",
    "heuristic_schedule",
    "tune_kappa",
    "quantile_stationary_point",
    "value_clip_preconditioner",
]

_GOLDEN = (math.sqrt(5) - 1) / 2


def _total(noise, risk):
    """2R + E[eps^2], the unclipped nu (inf for infinite-variance noise)."""
    return 2.0 * np.asarray(risk, dtype=np.float64) + noise.second_moment


def _no_clip(clip):
    return np.isinf(np.inf if clip is None else np.asarray(clip, dtype=np.float64))


def ccc(noise: NoiseLaw, risk, clip, *, batch: int = 1, clip_mode: str = "per-example"):
    """Clipping comparison criterion mu^2 (2R + Var) / nu; > 1 means clipping is faster.

    Infinite where the noise variance is (Cauchy): any clipping beats divergent unclipped SGD.
    Mini-batches (SPEC 8B.4): per-example clipping keeps the batch-1 value at every ``batch``
    (its noise is nu / B, as unclipped SGD's is (2R + Var) / B); clip of the mean has
    CCC_B = mu_B^2 (2R + Var) / (B nu_B), which tends to 1 as the batch grows.
    References: arXiv 2406.11733, CCC; SPEC sections 5 and 8B.4.
    """
    batch = V.count("batch", batch)
    _check_mode(clip_mode)
    if clip_mode == "mean" and batch > 1:
        from ._batch_factors import mean_clip_ccc

        if np.all(_no_clip(clip)):
            return np.ones(np.shape(risk))
        return np.where(_no_clip(clip), 1.0, mean_clip_ccc(noise, risk, clip, batch))
    mu, nu = reduction_factors(noise, risk, clip)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(nu > 0, mu * mu * _total(noise, risk) / nu, np.inf)
    return np.where(_no_clip(clip), 1.0, value)


def _check_mode(clip_mode):
    if clip_mode not in ("per-example", "mean"):
        raise ValueError(f"clip_mode must be per-example or mean, got {clip_mode!r}")


def csc(noise: NoiseLaw, risk, clip):
    """Clipping stability criterion mu / G with G = nu / (2R + Var); > 1: clipping stabilises.

    References: arXiv 2406.11733, CSC; SPEC section 5.
    """
    mu, nu = reduction_factors(noise, risk, clip)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(nu > 0, mu * _total(noise, risk) / nu, np.inf)
    return np.where(_no_clip(clip), 1.0, value)


def critical_lr(
    noise: NoiseLaw,
    risk,
    clip,
    *,
    batch: int = 1,
    clip_mode: str = "per-example",
    eigenvalues=None,
):
    """Largest stable learning rate with the factors frozen at ``risk``.

    Without ``eigenvalues``: the leading ODE's bound 2 mu (2R + Var) / nu_eff (batch 1: 2 mu / G,
    the paper's; per-example batch B: B times that; clip of the mean: mu_B, nu_B). With the
    spectrum ``eigenvalues``: the stability boundary of the one-step map (SPEC 8A.4), which adds
    the per-mode limit |1 - eta mu lambda_max| < 1 and the O(h) terms: the exact boundary
    2 B D / (D + B + 1) for unclipped isotropic SGD, ~2B for B << D / lambda_max and
    ~2 D / (mu lambda_max) for B >> D / lambda_max. The noise factor is frozen as
    nu_eff = G_eff (2R + Var), the paper's linearisation (no feedback for infinite variance).

    References: arXiv 2406.11733, stability of clipped SGD; SPEC sections 5, 8A.4.
    """
    batch = V.count("batch", batch)
    _check_mode(clip_mode)
    mu, nu_eff, kap = _batch_factors_frozen(noise, risk, clip, batch, clip_mode, eigenvalues)
    total = _total(noise, risk)
    if eigenvalues is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            leading = np.where(nu_eff > 0, 2.0 * (mu * total / nu_eff), np.inf)
        return np.where(_no_clip(clip), 2.0 * batch, leading)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_eff = np.where(np.isfinite(total), nu_eff / total, 0.0)  # nu_eff = g_eff (2R + Var)
    lam = V.vector("eigenvalues", eigenvalues, nonneg=True)
    lam = lam[lam > 0]
    if lam.size == 0:
        raise ValueError("eigenvalues must have at least one positive entry")
    shape = np.shape(mu)
    out = np.array(
        [
            _map_boundary(lam, float(m), float(g), float(k), batch, clip_mode == "mean")
            for m, g, k in zip(*(np.ravel(np.broadcast_to(x, shape)) for x in (mu, g_eff, kap)))
        ]
    )
    return out.reshape(shape) if shape else float(out[0])


def _batch_factors_frozen(noise, risk, clip, batch, clip_mode, eigenvalues):
    """(mu, nu_eff, kap) at (risk, clip): per-example nu / B; clip of the mean mu_B, nu_B."""
    c = np.asarray(np.inf if clip is None else clip, dtype=np.float64)
    R = np.asarray(risk, dtype=np.float64)
    if clip_mode == "mean" and batch > 1 and not np.all(np.isinf(c)):
        from ._batch_factors import mean_clip_factors

        mu, nu = mean_clip_factors(noise, R, np.where(np.isinf(c), 1.0, c), batch)
        mu = np.where(np.isinf(c), 1.0, mu)
        nu = np.where(np.isinf(c), _total(noise, R) / batch, nu)
        kap = np.where(np.isinf(c), 2.0, np.nan)
        return mu, nu, kap
    mu, nu = reduction_factors(noise, R, c)
    kap = np.full(np.shape(mu), 2.0)
    if eigenvalues is not None and not np.all(np.isinf(c)):
        from ._batch_factors import stein_curvature

        kap = np.asarray(stein_curvature(noise, R, c), dtype=np.float64) * np.ones(np.shape(mu))
    return mu, nu / batch, kap


def _map_boundary(lam, mu, g_eff, kap, batch, mean_mode):
    """Largest gamma with the frozen-factor map of E[v] stable (bisection in log gamma).

    The map is v' = diag(a) v + eta^2 g_eff lambda (lambda . v): with a_i < 1 for all i it is
    stable iff sum_i eta^2 g_eff lambda_i^2 / (1 - a_i) < 1 (a positive rank-one update).
    """
    D = float(lam.sum())
    extra = 0.0 if (mean_mode and math.isnan(kap)) else (kap - mu * mu) / batch

    def stable(gamma):
        eta = gamma / D
        a = (1.0 - eta * mu * lam) ** 2 + eta * eta * lam * lam * extra
        if np.any(a >= 1.0):
            return False
        return float(np.sum(eta * eta * g_eff * lam * lam / (1.0 - a))) < 1.0

    hi = 2.0 * D / (mu * lam.max()) * 1.000001 + 1e-300  # beyond: the stiffest mode is unstable
    if stable(hi):
        return hi
    lo = hi * 1e-12
    if not stable(lo):
        return 0.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
        if hi / lo - 1 < 1e-12:
            break
    return lo


def critical_batch(problem, clip=None, *, risk=None, clip_mode: str = "per-example") -> float:
    """The batch beyond which a larger batch no longer buys proportionally fewer steps.

    The gradient noise scale (McCandlish et al. 2018, B_simple = tr(noise covariance) /
    |mean gradient|^2) of clipped SGD at the risk ``risk`` (default the initial risk): the
    per-example clipped gradient has mean mu K e and noise of trace D nu, so
        B* = D nu / (mu^2 G),   G = ||K e||^2 = 2 R tr(K^2) / tr(K)
    (G at equipartition, v_i equal, where SGD's noise balances its drift). Below B* the step
    count to a target falls like 1 / B at the same number of samples (the noise-limited learning
    rate grows like B); above it the curvature limit eta lambda_max < 2 takes over and samples
    grow like B. Unclipped: B* = D (2R + E eps^2) / G (inf for infinite variance). Clip of the
    mean: B* solves B = D B nu_B(B) / (mu_B(B)^2 G) (fixed-point iteration), which tends to the
    unclipped value as clipping becomes a deterministic rescaling at large B (SPEC 8B.4).

    References: SPEC section 8A.4 (critical batch); McCandlish, Kaplan, Amodei et al. 2018.
    """
    from ._problem import Problem

    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a Problem, got {type(problem).__name__}")
    _check_mode(clip_mode)
    R = (
        problem.initial_risk
        if risk is None
        else V.real("risk", risk, lo=0.0, hi=1e150, lo_open=True)
    )
    if clip is not None:
        V.positive("clip", clip, allow_inf=True)
    lam = problem.eigenvalues
    D = problem.D
    G = 2.0 * R * float(np.dot(lam, lam)) / D
    mu, nu = (float(x) for x in reduction_factors(problem.noise, R, clip))
    per_example = D * nu / (mu * mu * G) if mu > 0 else math.inf
    if clip_mode == "per-example" or _no_clip(clip) or not math.isfinite(per_example):
        return max(1.0, per_example)
    B = max(1.0, per_example)
    for _ in range(60):
        b = int(min(max(round(B), 1), 2**24))
        m, n, _ = _batch_factors_frozen(problem.noise, R, clip, b, "mean", None)
        new = D * b * float(n) / (float(m) ** 2 * G)
        if abs(new - B) <= 1e-6 * B:
            B = new
            break
        B = 0.5 * (B + new)
    return max(1.0, B)


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
    """c*(R) from a lazily built table in log R (inf where no finite c helps).

    c* jumps from a finite value to inf where clipping stops helping (three-point, Laplace,
    exponential noise...): the table splits its decades there, the jump located by bisection on
    ``optimal_clip`` to 1e-10 in log R, and splines each finite run on its own nodes.
    ``breaks(lo, hi)`` returns those jumps (brackets in log R) for tables of functions of c*(R).
    """

    def __init__(self, noise, per_decade):
        self.noise = noise
        self.table = LazyLogTable(lambda R: np.log(optimal_clip(noise, R)), per_decade)

    def __call__(self, risk):
        R = np.maximum(np.asarray(risk, dtype=np.float64), 1e-300)
        return np.exp(self.table(R)[:, 0]).reshape(R.shape)

    def breaks(self, lo, hi):
        return self.table.jumps(lo, hi)


def max_ccc_schedule(noise: NoiseLaw, *, per_decade: int = 12) -> RiskSchedule:
    """The optimal schedule (Theorem 3): c*(R) = argmax mu^2/nu with learning rate gamma / mu.

    c*(R) is optimised once per tabulated risk (``per_decade`` points per decade of R, built
    lazily as the risk path visits a decade) and interpolated by cubic splines in log R, so an
    ODE solve has no optimiser inside its steps. Interpolation errors in c* enter the ODE only at
    second order: nu / mu^2 is stationary at c*. Where c* jumps to inf (no finite clip helps) the
    jump is located by bisection on the optimiser and never interpolated across.
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


# ---------------------------------------------------------------------------------------------
# adaptive thresholds and value clipping (SPEC 11, 12)
# ---------------------------------------------------------------------------------------------
def quantile_stationary_point(noise, lr, quantile):
    """Where quantile tracking settles (SPEC 11A.a, slow regime): the risk R_inf and threshold
    c_inf with mu_{c_inf}(R_inf) = q (c_inf is the q-quantile of |w| at R_inf) and R_inf the
    fixed point of the risk ODE with those factors, R_inf = gamma nu_{c_inf}(R_inf) / (4 q)
    (constant lr; any spectrum: sum_i y_i = gamma nu / (4 mu) at the fixed point).

    Returns (c_inf, R_inf). In the fast regime the drift factor is q as well but the noise is
    E_pi[nu_c] (see :func:`clipped_trip._adaptive_factors.quantile_fast_factors`).

    References: SPEC section 11A; Andrew et al. 2021.
    """
    from scipy.optimize import brentq

    from ._adaptive_factors import quantile_clip

    gamma = V.positive("lr", lr)
    q = V.real("quantile", quantile, lo=0.0, hi=1.0)
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")

    def excess(log_R):
        R = math.exp(log_R)
        c = quantile_clip(noise, R, q)
        nu = float(reduction_factors(noise, R, c)[1])
        return math.log(gamma * nu / (4.0 * q)) - log_R

    lo, hi = math.log(1e-12), math.log(1e12)
    log_R = brentq(excess, lo, hi, xtol=1e-13, rtol=1e-13)
    R = math.exp(log_R)
    return float(quantile_clip(noise, R, q)), R


def value_clip_preconditioner(problem, clip_value, risk):
    """The effective spectrum of value clipping at risk R (SPEC 12): mu_i(R) lambda_i, the rate
    at which coordinate i contracts (plain SGD: lambda_i). Small theta_i = tau / sqrt(lambda_i):
    ~ 2 sqrt(2/pi) p_w(0) tau sqrt(lambda_i) (sign-like, sqrt(lambda) preconditioning).

    Returns an array like ``problem.eigenvalues``.

    References: SPEC section 12.
    """
    from ._value_factors import value_clip_factors

    mu, _ = value_clip_factors(problem.noise, risk, clip_value, problem.eigenvalues)
    return mu * problem.eigenvalues
