"""The deterministic equivalent of an algorithm: its ODE (or one-step map), solved (SPEC 4, 8).

The algorithm supplies the state pytree (for clipped SGD y_i = lambda_i v_i = lambda_i e_i^2 / 2,
so that R = sum_i y_i) and the right-hand side as a sum of terms, e.g. for batch-1 clipping

    dy_i/dt = -2 gamma(t) mu_c(R) lambda_i y_i + gamma(t)^2 lambda_i^2 nu_c(R) / (2 D)

which is SPEC's dv_i/dt = -2 gamma mu lambda_i v_i + gamma^2 lambda_i nu / (2D) times lambda_i.
This module flattens the state, integrates it and records the algorithm's statistics (the risk).
Near the critical batch size (h = gamma mu lambda_max / D not small) no ODE is right at O(1):
``method="map"`` iterates the one-step map of E[v] (SPEC 8A.4), chosen automatically there.

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

import warnings

from . import _validate as V
from ._algorithm import as_algorithm
from ._engine import requested_times
from ._problem import Problem
from ._results import ODEResult, divergence_limit, mark_divergence, risk_scale
from ._schedules import is_constant

__all__ = ["solve_ode", "MAP_THRESHOLD"]

#: h = gamma lambda_max / D (an upper bound of eta mu lambda_max) above which method="auto" uses
#: the one-step map for batch > 1: there the leading ODE is off by ~h relative (SPEC 8A.4)
MAP_THRESHOLD = 0.05


class _Layout:
    """A dict of 1-D arrays <-> one flat vector (a trailing time axis is allowed on unpack)."""

    def __init__(self, state0: dict):
        self.keys = sorted(state0)
        self.sizes = [np.size(state0[k]) for k in self.keys]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    def pack(self, state) -> np.ndarray:
        return np.concatenate([np.ravel(state[k]) for k in self.keys])

    def unpack(self, vec) -> dict:
        return {k: vec[self.offsets[i] : self.offsets[i + 1]] for i, k in enumerate(self.keys)}


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


def _integrate(rhs, y0, t_rec, method, rtol, atol, threshold, obs_of):
    """Step a scipy OdeSolver, recording ``obs_of`` (the statistics, risk first: (n_stats, k) for
    k states) of its dense output at the record times.

    Returns (statistics: shape (n_stats, n_done), record times done). Stops early when the risk
    passes ``threshold`` (divergence). Only the statistics are kept: memory O(d), not
    O(d n_records).
    """
    risk_of = lambda vec: obs_of(vec)[0]  # noqa: E731
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
    sums = []  # one (n_stats,) column per record
    i = 0
    while i < t_rec.size and t_rec[i] <= 0.0:
        sums.append(obs_of(y0)[:, 0])
        i += 1

    def done():
        n_stats = obs_of(y0).shape[0]
        out = np.array(sums).T if sums else np.zeros((n_stats, 0))
        return out, t_rec[: len(sums)]

    if i < t_rec.size:
        try:
            solver = solver_cls(rhs, 0.0, y0, float(t_rec[-1]), rtol=rtol, atol=atol)
        except _Overflow:
            return done()
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
                dense = solver.dense_output()(t_rec[i:j]).reshape(y0.size, j - i)
                sums.extend(list(obs_of(dense).T))
                i = j
            if not float(risk_of(solver.y)[0]) < threshold:  # also catches NaN
                break
            if solver.status == "finished" and i < t_rec.size:
                sums.extend([obs_of(solver.y)[:, 0]] * (t_rec.size - i))
                i = t_rec.size
    return done()


def _iterate_map(eq, layout, y0, steps, threshold, obs_of):
    """The one-step map from step 0 to steps[-1], the statistics recorded at ``steps``."""
    out = np.full((obs_of(y0).shape[0], steps.size), np.inf)
    state = layout.unpack(y0)
    k = 0
    for i, target in enumerate(steps):
        while k < target:
            try:
                state = eq.map_step(k, state)
            except OverflowError:
                return out
            k += 1
            R = float(obs_of(layout.pack(state))[0, 0])
            if not R < threshold:
                return out
        out[:, i] = obs_of(layout.pack(state))[:, 0]
    return out


MAX_ODE_STEPS = 2e5  # ~12 right-hand sides per step: ~1e6 evaluations, a minute or so


def _check_ode_work(eq, alg, t_req, method, d, max_steps):
    """Refuse solves that would run for hours (e.g. T = 1e12), with the estimate."""
    limit = MAX_ODE_STEPS if max_steps is None else V.positive("max_steps", max_steps)
    T = float(t_req[-1])
    if method.lower() == "map":
        est = T * eq.D
    elif method.lower() == "rk4":
        return  # fixed steps: the caller chose dt
    else:
        try:  # the stiffness gamma mu lambda_max / D where the equivalent bounds mu
            h = eq.h_bound(T, with_mu=True)
        except TypeError:
            h = eq.h_bound(T)
        est = T * 2.0 * h * eq.D / 3.0 + 100.0
    if not est <= limit:
        raise ValueError(
            f"solve_ode: T = {T:.3g} needs about {est:.3g} solver steps (x d = {d}: "
            f"{est * d:.3g} operations), above the limit {limit:.3g}; use a shorter horizon T, "
            "or pass max_steps= to allow it"
        )


def _hold_last(*paths):
    """Forward-fill NaN with the last finite value (inf where none came before): after a
    divergence lr_path / clip_path hold the schedule's last value, never NaN."""
    out = []
    for p in paths:
        p = np.array(p, dtype=np.float64)
        ok = ~np.isnan(p)
        idx = np.where(ok, np.arange(p.size), 0)
        np.maximum.accumulate(idx, out=idx)
        filled = p[idx]
        filled[np.maximum.accumulate(ok) == 0] = np.inf
        out.append(filled)
    return out


def solve_ode(
    problem: Problem,
    algorithm=None,
    clip=None,
    T=None,
    times=None,
    *,
    lr=None,
    n_records: int = 201,
    method: str = "auto",
    rtol: float = 1e-10,
    atol: float | None = None,
    dt: float | None = None,
    use_table: bool = True,
    second_order: bool = False,
    divergence_threshold: float | None = None,
    cache: dict | None = None,
    max_steps: float | None = None,
) -> ODEResult:
    """Solve the deterministic equivalent (risk ODE, or one-step map) of an algorithm.

    ``solve_ode(problem, ClippedSGD(lr, clip, batch=B, clip_mode=...), T=...)``; the v0.1 form
    ``solve_ode(problem, lr, clip, ...)`` is ``ClippedSGD(lr, clip)``.

    Args:
        problem: the :class:`Problem`.
        algorithm: an algorithm object, or the learning rate gamma (a number > 0, a callable of
            t, or (times, values)) with ``clip``: None (no clipping), a number, a callable of t,
            (times, values), or a :class:`RiskSchedule` (e.g. ``max_ccc_schedule``).
        T: the horizon (time t = steps / D).
        times: record times (repeated times are allowed); default ``n_records`` even points on
            [0, T].
        n_records: the number of record times when ``times`` is not given.
        method: "auto" (default: "map" for batch > 1 when h = gamma lambda_max / D exceeds
            ``MAP_THRESHOLD`` = 0.05, else DOP853), "map" (iterate the one-step map of E[v],
            SPEC 8A.2 / 8B.3, at integer steps: the deterministic equivalent near the critical
            batch size), "DOP853" or any ``scipy.integrate.solve_ivp`` method, or "rk4" (fixed
            step ``dt``, default 1e-3).
        rtol: relative tolerance for solve_ivp.
        atol: absolute tolerance (default rtol * 1e-6 * R0 / d; the noise's scale for R0 = 0).
        use_table: tabulate the factors in R when they depend on R alone (fast); False evaluates
            them directly.
        second_order: keep the O(h) second-order term (SPEC 8A.3): right stationary risk and
            stability boundary, but no better transient; the map is preferable.
        divergence_threshold: the divergence level L (default 1e6 max(R0, E[eps^2]), the rule
            shared with the simulators, see :func:`clipped_trip._results.divergence_limit`): the
            path is diverged from the first record above L after which it stays above L; it is
            +inf from there on. Where nu is infinite (no clipping, noise of infinite variance)
            the ODE diverges at t = 0+: from the first record after 0.
        max_steps: refuse a solve estimated to take more solver steps than this (default 2e5:
            hours); the estimate is T x 2 gamma_max lambda_max / 3 (the explicit stability
            limit), or T x D for the map.
        cache: a dict you own, passed to several solves of one problem: factor tables are
            shared between them (e.g. an lr grid at a fixed clip and batch).

    Returns:
        :class:`ODEResult` with ``t`` (for the map: the record times rounded to steps / D),
        ``risk``, ``lr_path``, ``clip_path``, ``diverged``; ``params["method"]`` says which
        method ran.

    References: arXiv 2406.11733, the ODE for the risk of C-HSGD (Sec. 3); SPEC sections 4, 8.
    """
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a Problem, got {type(problem).__name__}")
    alg = as_algorithm(algorithm, clip, "solve_ode", lr)
    for name, flag in (("use_table", use_table), ("second_order", second_order)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if cache is not None and not isinstance(cache, dict):
        raise ValueError(f"cache must be a dict (or None), got {type(cache).__name__}")
    if not isinstance(method, str):
        raise ValueError(
            f"method must be 'auto', 'map', 'rk4' or a scipy OdeSolver name, got {method!r}"
        )
    t_req = requested_times(T, times, n_records)
    rtol = V.positive("rtol", rtol)
    D, d = problem.D, problem.d
    chosen = method
    eq = alg.deterministic(problem, use_table=use_table, second_order=second_order, cache=cache)
    h = eq.h_bound(float(t_req[-1]))
    big_h = alg.samples_per_step() > 1 and h > MAP_THRESHOLD
    if method.lower() == "auto":
        chosen = "map" if big_h else "DOP853"
    elif big_h and method.lower() != "map":
        warnings.warn(
            f"h = gamma lambda_max / D = {h:.3g} is not small (batch {alg.samples_per_step()}): "
            "no continuous-time ODE is right at O(1) here; method='map' is (SPEC 8A.4)",
            stacklevel=2,
        )
    if chosen.lower() == "map":  # the map needs the Stein curvature kap as well
        eq = alg.deterministic(problem, use_table=use_table, for_map=True, cache=cache)
    state0 = eq.state0()
    layout = _Layout(state0)
    y0 = layout.pack(state0)

    stat_names = list(eq.observe(state0))  # "risk" first

    def obs_of(vec):
        """(n_stats, k) statistics of a flat state (d_state,) or states (d_state, k)."""
        obs = eq.observe(layout.unpack(vec))
        k = 1 if np.ndim(vec) == 1 else np.shape(vec)[1]
        return np.stack([np.broadcast_to(np.asarray(obs[n], np.float64), (k,)) for n in stat_names])

    def risk_of(vec):
        return eq.observe(layout.unpack(vec))["risk"]

    R0 = float(risk_of(y0))
    threshold = divergence_limit(divergence_threshold, R0, problem.noise)
    # integrate past the level: the result is marked by the rule shared with the simulators
    # (above the level and staying there), so a path that comes back is not cut short
    cap = max(threshold, 1e250) if divergence_threshold is None else threshold * 1e12
    _check_ode_work(eq, alg, t_req, chosen, d, max_steps)
    if chosen.lower() == "map":
        steps = np.rint(t_req * D).astype(np.int64)
        if steps[-1] > 10**8:
            raise ValueError(f"method='map': T * D = {steps[-1]} steps is too many (max 1e8)")
        t_rec = steps / D
        recorded = _iterate_map(eq, layout, y0, steps, cap, obs_of)
        chosen = "map"
    else:
        t_rec, inverse = np.unique(t_req, return_inverse=True)

        def rhs(t, vec):
            state = layout.unpack(vec)
            R = float(eq.observe(state)["risk"])
            if not math.isfinite(R) or R > cap:
                return np.zeros_like(vec)
            try:
                return layout.pack(eq.rates(t, state))
            except OverflowError:
                raise _Overflow(t) from None

        start = 0.0
        if chosen.lower() == "rk4":
            step = 1e-3 if dt is None else V.positive("dt", dt)
            grid = np.concatenate([[start], t_rec]) if t_rec[0] > start else t_rec
            try:
                Y = _rk4(rhs, y0, grid, step)
            except _Overflow:
                Y = np.full((y0.size, grid.size), np.inf)
                Y[:, 0] = y0
            if t_rec[0] > start:
                Y = Y[:, 1:]
            sums = obs_of(Y)
        else:
            # start at the optimum (R0 = 0): scale the tolerance by the noise instead
            ref = R0 if R0 > 0 else risk_scale(R0, problem.noise)
            atol = rtol * 1e-6 * ref / d if atol is None else V.positive("atol", atol)
            Yr, ok_t = _integrate(rhs, y0, t_rec, chosen, rtol, atol, cap, obs_of)
            sums = np.full((len(stat_names), t_rec.size), np.inf)
            sums[:, : ok_t.size] = Yr[:, : ok_t.size]
        recorded = np.asarray(sums, dtype=np.float64)[:, inverse]
        t_rec = t_req
    risk = recorded[0]
    risk, diverged, div_time = mark_divergence(np.asarray(risk, dtype=np.float64), t_rec, threshold)
    stats = {n: np.where(np.isinf(risk), np.inf, recorded[i]) for i, n in enumerate(stat_names)}
    stats.pop("risk")
    for i, n in enumerate(stat_names):  # signed statistics (the bias <m, e>) keep their sign
        if n == "bias":
            stats[n] = np.nan_to_num(recorded[i], nan=0.0)
    diverged, div_time = bool(diverged), float(div_time)
    lr_path, clip_path = _hold_last(*eq.paths(t_rec, risk))
    desc = alg.describe()
    params = {
        "kind": "ode",
        "method": chosen,
        "rtol": rtol,
        "T": float(t_rec[-1]),
        "clip": getattr(alg.clip, "name", alg.clip if is_constant(alg.clip) else "time schedule"),
        "algorithm": desc,
        "h": h,
        "second_order": bool(second_order),
        "problem": problem.describe(),
    }
    if "clip" in stats:  # adaptive thresholds: the predicted c(t) (E_pi[c] in a fast regime)
        clip_path = np.where(np.isinf(risk), clip_path, stats.pop("clip"))
    return ODEResult(t_rec, risk, lr_path, clip_path, diverged, div_time, params, stats=stats)
