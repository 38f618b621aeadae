"""The deterministic equivalent of clipped SGD: the risk ODE (SPEC section 4).

In the eigenbasis, with y_i = lambda_i v_i = lambda_i e_i^2 / 2 (so that R = sum_i y_i):

    dy_i/dt = -2 gamma(t) mu_c(R) lambda_i y_i + gamma(t)^2 lambda_i^2 nu_c(R) / (2 D)

which is SPEC's dv_i/dt = -2 gamma mu lambda_i v_i + gamma^2 lambda_i nu / (2D) times lambda_i.

Method: scipy's DOP853 (explicit, order 8, adaptive) by default, rtol 1e-10; any other
``solve_ivp`` method by name; ``method="rk4"`` is a fixed-step classical RK4 (used to check the
convergence order). When the clip is constant or a function of the risk, mu and nu depend on R
alone: they are tabulated per decade of R as the path reaches it (48 points per decade) and
interpolated by cubic splines in (log R, log mu / log nu), so no step calls the quadrature (the
tests check the result against direct evaluation to 1e-6).

References: arXiv 2406.11733, Theorem 1 and the ODE of Sec. 3 (deterministic equivalent).
"""

from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from ._factors import reduction_factors
from ._problem import Problem
from ._results import ODEResult, divergence_limit
from ._schedules import RiskSchedule, is_constant, time_schedule_values
from ._tables import LazyLogTable

__all__ = ["solve_ode"]


class _Coefficients:
    """gamma(t, R), c(t, R) and the factors (mu, nu) along the path."""

    def __init__(self, problem, lr, clip, use_table):
        self.noise = problem.noise
        self.lr = lr
        self.clip = clip
        self.lr_const = time_schedule_values("lr", lr, np.zeros(1))[0] if is_constant(lr) else None
        self.clip_const = (
            time_schedule_values("clip", clip, np.zeros(1), allow_inf=True, allow_none=True)[0]
            if is_constant(clip)
            else None
        )
        if not (is_constant(clip) or isinstance(clip, RiskSchedule)):
            time_schedule_values("clip", clip, np.zeros(1), allow_inf=True, allow_none=True)
        if not is_constant(lr):
            time_schedule_values("lr", lr, np.zeros(1))
        self.table = None
        if use_table and (self.clip_const is not None or isinstance(clip, RiskSchedule)):
            self.table = LazyLogTable(self._risk_only_factors, per_decade=48)

    def clip_at(self, t, R):
        if self.clip_const is not None:
            return self.clip_const
        if isinstance(self.clip, RiskSchedule):
            return float(self.clip.clip(R))
        return float(
            time_schedule_values("clip", self.clip, np.array([t]), allow_inf=True, allow_none=True)[
                0
            ]
        )

    def lr_at(self, t):
        if self.lr_const is not None:
            return self.lr_const
        return float(time_schedule_values("lr", self.lr, np.array([t]))[0])

    def _risk_only_factors(self, R):
        c = self.clip.clip(R) if isinstance(self.clip, RiskSchedule) else self.clip_const
        mu, nu = reduction_factors(self.noise, R, c)
        with np.errstate(divide="ignore"):
            return np.stack([np.log(mu), np.log(nu)], axis=-1)

    def factors(self, t, R):
        """(gamma_eff, mu, nu, c) at time t and risk R; gamma_eff includes any 1/mu compensation."""
        c = self.clip_at(t, R)
        mu = nu = None
        if self.table is not None and R > 0:
            log_mu, log_nu = self.table.scalar(R)
            if math.isfinite(log_mu) and math.isfinite(log_nu):
                mu, nu = math.exp(log_mu), math.exp(log_nu)
        if mu is None:  # R = 0, or factors that vanish or blow up: evaluate directly
            m, n = reduction_factors(self.noise, R, c)
            mu, nu = float(m), float(n)
        lr = self.lr_at(t)
        if isinstance(self.clip, RiskSchedule) and self.clip.compensate:
            lr = lr / mu
        return lr, mu, nu, c

    def paths(self, t, risk):
        """Effective learning rate and clip along a solved path (NaN where the risk is infinite)."""
        ok = np.isfinite(risk)
        lr_path = np.full(t.shape, np.nan)
        clip_path = np.full(t.shape, np.nan)
        if not ok.any():
            return lr_path, clip_path
        tt, R = t[ok], risk[ok]
        lr_path[ok] = time_schedule_values("lr", self.lr, tt)
        if isinstance(self.clip, RiskSchedule):
            c = self.clip.clip(R)
            if self.clip.compensate:
                lr_path[ok] /= reduction_factors(self.noise, R, c)[0]
        else:
            c = time_schedule_values("clip", self.clip, tt, allow_inf=True, allow_none=True)
        clip_path[ok] = c
        return lr_path, clip_path


def _rk4(f, y0, t_grid, dt):
    """Fixed-step classical RK4 between record times (steps of at most dt)."""
    ys = [y0]
    y = y0.copy()
    for a, b in zip(t_grid[:-1], t_grid[1:]):
        n = max(1, int(math.ceil((b - a) / dt - 1e-9)))
        h = (b - a) / n
        t = a
        for _ in range(n):
            k1 = f(t, y)
            k2 = f(t + h / 2, y + h / 2 * k1)
            k3 = f(t + h / 2, y + h / 2 * k2)
            k4 = f(t + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t += h
        ys.append(y.copy())
    return np.array(ys).T


class _Overflow(Exception):
    """The right-hand side is infinite: the risk diverges."""


def _integrate(rhs, y0, t_rec, method, rtol, atol, threshold):
    """Step a scipy OdeSolver, summing its dense output at the record times as it goes.

    Returns (risk components summed: shape (1, n_done), record times done). Stops early when the
    risk passes ``threshold`` (divergence). Only sums are kept: memory O(d), not O(d n_records).
    """
    import scipy.integrate  # deferred: keeps `import clipped_trip` light

    solver_cls = getattr(scipy.integrate, method, None) if isinstance(method, str) else None
    if (
        solver_cls is None
        or not isinstance(solver_cls, type)
        or not issubclass(solver_cls, scipy.integrate.OdeSolver)
    ):
        raise ValueError(
            f"method must be 'rk4' or a scipy OdeSolver name (DOP853, RK45, Radau, "
            f"BDF, LSODA), got {method!r}"
        )
    sums = []
    i = 0
    while i < t_rec.size and t_rec[i] <= 0.0:
        sums.append(float(y0.sum()))
        i += 1
    if i < t_rec.size:
        try:
            solver = solver_cls(rhs, 0.0, y0, float(t_rec[-1]), rtol=rtol, atol=atol)
        except _Overflow:
            return np.array(sums)[None, :], t_rec[: len(sums)]
        while i < t_rec.size:
            try:
                msg = solver.step()
            except _Overflow:  # infinite noise term (e.g. unclipped Cauchy): diverged
                break
            if solver.status == "failed":
                raise RuntimeError(f"ODE solver failed: {msg}")
            j = i
            while j < t_rec.size and t_rec[j] <= solver.t:
                j += 1
            if j > i:
                sums.extend(solver.dense_output()(t_rec[i:j]).sum(axis=0).tolist())
                i = j
            if not float(solver.y.sum()) < threshold:  # also catches NaN
                break
            if solver.status == "finished" and i < t_rec.size:
                sums.extend([float(solver.y.sum())] * (t_rec.size - i))
                i = t_rec.size
    return np.array(sums)[None, :], t_rec[: len(sums)]


def solve_ode(
    problem: Problem,
    lr,
    clip=None,
    T=None,
    times=None,
    *,
    n_records: int = 201,
    method: str = "DOP853",
    rtol: float = 1e-10,
    atol: float | None = None,
    dt: float | None = None,
    use_table: bool = True,
    divergence_threshold: float | None = None,
) -> ODEResult:
    """Solve the risk ODE of clipped SGD.

    Args:
        problem: the :class:`Problem`.
        lr: gamma: a number > 0, a callable of t, or (times, values).
        clip: None (no clipping), a number, a callable of t, (times, values), or a
            :class:`RiskSchedule` (clip as a function of the current risk, e.g.
            ``max_ccc_schedule``).
        T, times, n_records: horizon and record times (default ``n_records`` even points on [0, T]).
        method: "DOP853" (default), any ``scipy.integrate.solve_ivp`` method, or "rk4" (fixed step
            ``dt``, default 1e-3).
        rtol, atol: tolerances for solve_ivp (atol default rtol * 1e-6 * R0 / d).
        use_table: tabulate mu, nu in R when they depend on R alone (fast); False evaluates
            them directly.
        divergence_threshold: risk above this stops the solve and marks divergence
            (default 1e12 max(R0, 1)).

    Returns:
        :class:`ODEResult` with ``t``, ``risk``, ``lr_path``, ``clip_path``, ``diverged``.

    References: arXiv 2406.11733, the ODE for the risk of C-HSGD (Sec. 3); SPEC section 4.
    """
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a Problem, got {type(problem).__name__}")
    if times is None:
        T = V.positive("T", T)
        t_rec = np.linspace(0.0, T, V.count("n_records", n_records, lo=2))
    else:
        t_rec = np.asarray(V.vector("times", times), dtype=np.float64)
        if np.any(t_rec < 0) or np.any(np.diff(t_rec) <= 0):
            raise ValueError("times must be >= 0 and strictly increasing")
    rtol = V.positive("rtol", rtol)
    lam = problem.eigenvalues
    D, d = problem.D, problem.d
    e0 = problem.initial_error
    y0 = 0.5 * lam * e0 * e0
    R0 = float(y0.sum())
    threshold = divergence_limit(divergence_threshold, R0)
    coef = _Coefficients(problem, lr, clip, use_table)
    lam2_half_D = lam * lam / (2.0 * D)

    def rhs(t, y):
        R = float(y.sum())
        if not math.isfinite(R) or R > threshold:
            return np.zeros_like(y)
        g, mu, nu, _ = coef.factors(t, max(R, 0.0))
        if not (math.isfinite(nu) and math.isfinite(g)):
            raise _Overflow(t)
        return -2.0 * g * mu * lam * y + g * g * nu * lam2_half_D

    start = 0.0
    if method.lower() == "rk4":
        h = 1e-3 if dt is None else V.positive("dt", dt)
        grid = np.concatenate([[start], t_rec]) if t_rec[0] > start else t_rec
        try:
            Y = _rk4(rhs, y0, grid, h)
        except _Overflow:
            Y = np.full((d, grid.size), np.inf)
            Y[:, 0] = y0
        if t_rec[0] > start:
            Y = Y[:, 1:]
        ok_t = t_rec
    else:
        atol = rtol * 1e-6 * max(R0, 1e-300) / d if atol is None else V.positive("atol", atol)
        Y, ok_t = _integrate(rhs, y0, t_rec, method, rtol, atol, threshold)
    risk = np.full(t_rec.shape, np.inf)
    n_ok = ok_t.size
    risk[:n_ok] = Y.sum(axis=0)[:n_ok]
    bad = ~np.isfinite(risk) | (risk > threshold)
    diverged = bool(bad.any())
    div_time = float(t_rec[np.argmax(bad)]) if diverged else float("nan")
    risk[np.maximum.accumulate(bad)] = np.inf
    lr_path, clip_path = coef.paths(t_rec, risk)
    params = {
        "kind": "ode",
        "method": method,
        "rtol": rtol,
        "T": float(t_rec[-1]),
        "clip": getattr(clip, "name", clip if is_constant(clip) else "time schedule"),
        "problem": problem.describe(),
    }
    return ODEResult(t_rec, risk, lr_path, clip_path, diverged, div_time, params)
