"""Homogenized SGD (C-HSGD) of any algorithm, Euler-Maruyama in the eigenbasis (SPEC section 4).

    dX_i = -gamma mu lambda_i X_i dt + gamma sqrt(nu_eff / D) sqrt(lambda_i) dB_i

with the algorithm's factors (mu, nu_eff) (batch 1: SPEC 3; per-example batch B: nu / B; clip of
the mean: mu_B, nu_B of SPEC 8B, functions of R and z = (B + 1) G / (2 D R), G = ||K X||^2). They
are read inside the jitted loop from a table: in log R (48 points per decade, linear in
(log R, log mu / log nu)) for a constant or risk-dependent clip, in (log R, log c) for a clip that
varies in time, and in (log R, z) for clip of the mean. The table error (~1e-5) is far below the
Monte Carlo error of any run count.

Value clipping and signSGD (SPEC 12) bring per-coordinate factors: their equivalents give tables
in (log R, log theta_i) and the drift / noise weights of each coordinate (``sde_tables``).

References: arXiv 2406.11733, homogenized SGD for clipped SGD (C-HSGD), Sec. 3; SPEC 8, 12.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._algorithm import as_algorithm
from ._engine import (
    check_noise_range,
    SliceClock,
    at_step,
    check_memory,
    check_run_args,
    check_work,
    chunk_items,
    chunk_size,
    out_of_memory_as_value_error,
    resolve_dtype,
    run_keys,
    run_segmented,
    steps_of,
)
from ._problem import Problem
from ._results import RiskPaths, mark_divergence, mark_paths
from ._schedules import RiskSchedule, is_constant, time_schedule_values

__all__ = ["simulate_sde"]

_PER_DECADE = 48


def _risk_grid(problem):
    m2 = problem.noise.second_moment
    ref = max(problem.initial_risk, m2 if math.isfinite(m2) else 1.0, 1e-300)
    lo, hi = 1e-10 * ref, 1e6 * ref
    return np.linspace(math.log(lo), math.log(hi), int(_PER_DECADE * math.log10(hi / lo)) + 1)


def _log_table(mu, nu):
    tiny = 1e-300
    return np.log(np.maximum(mu, tiny)), np.log(np.maximum(nu, tiny))


def _interp_extrap(x, xp, fp):
    """Linear interpolation in the table, linear extrapolation (end slopes) outside it.

    The tables are log f against log R; outside the grid the factors follow power laws (mu and nu
    tend to constants as R -> 0 with noise, nu = 2R exactly without; mu ~ R^-1/2, nu -> c^2 as
    R -> inf), so the end slopes continue them instead of freezing the factors (a frozen
    nu(R_min) stalled noiseless runs near 1e-11 R0)."""
    inside = jnp.interp(x, xp, fp)
    lo = fp[0] + (x - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    hi = fp[-1] + (x - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return jnp.where(x < xp[0], lo, jnp.where(x > xp[-1], hi, inside))


def _factor_fn(inputs, mode):
    log_r, tab_mu, tab_nu, log_c = (inputs[k] for k in ("log_r", "tab_mu", "tab_nu", "log_c"))
    m2, inv_B, z_scale = inputs["m2"], inputs["inv_B"], inputs["z_scale"]

    def bilinear(x, y, grid_y):
        # in log R: linear extrapolation from the end cells (see _interp_extrap)
        i, fx = _cell_extrapolated(log_r, x)
        j, fy = _cell(grid_y, y)
        return (
            jnp.exp(_bilinear(tab_mu, i, j, fx, fy)),
            jnp.exp(_bilinear(tab_nu, i, j, fx, fy)),
        )

    def factors(R, G, c):
        x = jnp.log(jnp.maximum(R, 1e-300))
        unclipped_nu = (2.0 * R + m2) * inv_B
        if mode == "unclipped":
            return jnp.ones_like(R), unclipped_nu
        if mode == "risk":  # tables in log R only
            return (
                jnp.exp(_interp_extrap(x, log_r, tab_mu)),
                jnp.exp(_interp_extrap(x, log_r, tab_nu)),
            )
        if mode == "shift":  # clip of the mean: (log R, z), z = (B + 1) G / (2 D R)
            z = z_scale * G / jnp.maximum(R, 1e-300)
            return bilinear(x, z, log_c)
        if mode == "coordinate":  # per-coordinate factors: (log R, y_i), y_i fixed (SPEC 12)
            return bilinear(x, inputs["y"], log_c)
        # mode == "time": bilinear in (log R, log c); steps whose clip is inf are unclipped
        mu, nu = bilinear(x, jnp.log(c), log_c)
        unclipped = jnp.isinf(c)
        return jnp.where(unclipped, 1.0, mu), jnp.where(unclipped, unclipped_nu, nu)

    return factors


@partial(jax.jit, static_argnames=("mode",))
def _sde_slice(inputs, rows, keys, x, bounds, mode):
    """One slice of one chunk of runs: advance x (chunk, d) over the segments ``bounds``.

    inputs: lam, sqrt_lam, inv_D, dt, the factor tables (log_r, tab_mu, tab_nu, log_c or z
    grid), m2 and inv_B (unclipped nu_eff); rows: per-run step tables {lr, clip}. Step k of a run
    uses fold_in(run key, k): slices do not change a bit.
    """
    lam, sqrt_lam = inputs["lam"], inputs["sqrt_lam"]
    inv_D, dt = inputs["inv_D"], inputs["dt"]
    factors = _factor_fn(inputs, mode)
    d = lam.shape[0]
    # drift lambda_i and noise sqrt(lambda_i) weights, unless the algorithm gives its own
    # (signSGD: sqrt(lambda_i) and 1)
    w_drift = inputs.get("drift_weights", lam)
    w_noise = inputs.get("noise_weights", sqrt_lam)

    def one_run(rows, key, x):
        def step(k, x):
            lx = lam * x
            R = 0.5 * jnp.dot(lx, x)
            G = jnp.dot(lx, lx) if mode == "shift" else R
            mu, nu = factors(R, G, at_step(rows["clip"], k))
            lr = at_step(rows["lr"], k)
            if mode in ("risk", "shift"):  # clip row [1]: compensated learning rate gamma / mu
                lr = jnp.where(rows["clip"][0] > 0.5, lr / mu, lr)
            xi = jax.random.normal(jax.random.fold_in(key, k), (d,), x.dtype)
            x_new = x - lr * mu * w_drift * x * dt + lr * jnp.sqrt(nu * inv_D * dt) * w_noise * xi
            if "dp" in inputs:  # static: only DP-SGD runs this
                c = inputs["dp_clip"] if "dp_clip" in inputs else at_step(rows["clip"], k)
                xi2 = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, k), 1), (d,))
                x_new = x_new + lr * inputs["dp"] * c * jnp.sqrt(dt) * xi2.astype(x.dtype)
            return x_new

        def interval(x, bound):
            x = jax.lax.fori_loop(bound[0], bound[1], step, x)
            return x, 0.5 * jnp.dot(lam * x, x)

        return jax.lax.scan(interval, x, bounds)

    return jax.vmap(one_run)(rows, keys, x)


@dataclass(frozen=True, eq=False)
class _SdeRun:
    """The checked run settings of one simulate_sde call: built once, read by every SDE path
    (the tables path, the non-centred one, quantile tracking) so that none repeats the list."""

    t: np.ndarray  # the record times asked for
    steps: np.ndarray  # their step indices (times rounded to multiples of dt)
    n_steps: int
    dt: float
    runs: int
    seed: int
    first_run: int
    chunk: int
    dtype_: object  # the resolved dtype of the arrays
    threshold: float
    progress: object
    dtype: object  # as the caller gave it (written into params)

    def chunks(self):
        """The run keys, and each chunk's cells and runs (one cell)."""
        keys = run_keys(self.seed, self.first_run, self.runs)
        cell_of, run_of = chunk_items(1, self.runs, self.chunk)
        return keys, cell_of, run_of

    def segmented(self, problem, call, init, n_chunks):
        """run_segmented over the chunks, with the progress clock and the out-of-memory message
        of simulate_sde."""
        clock = SliceClock(
            n_chunks * self.n_steps, 8e-9 * self.chunk * problem.d, self.progress, "simulate_sde"
        )
        with out_of_memory_as_value_error("simulate_sde", "runs, n_records, d or T / dt"):
            return run_segmented(call, init, self.steps, n_chunks, clock)

    def paths(self, problem, alg, advance, start):
        """Run every chunk from ``start()`` with ``advance(keys, carry, bounds) -> (carry,
        records)`` (records a dict: "risk" and named statistics) and return the result:
        divergence marked, the population risk diverging with the risk."""
        keys, cell_of, run_of = self.chunks()
        records = self.segmented(
            problem,
            lambda ci, carry, bounds: advance(keys[run_of[ci]], carry, bounds),
            lambda ci: start(),
            len(cell_of),
        )
        t = self.steps * self.dt
        risk = records.pop("risk")[: self.runs]
        stats = {k: v[: self.runs] for k, v in records.items()}
        risk, diverged, when, stats = mark_paths(risk, stats, t, self.threshold)
        return RiskPaths(t, risk, diverged, when, self.params(alg, problem, t), stats=stats)

    def deterministic_path(self, problem, alg):
        """The ODE on a dense grid of [0, T] (not only the record times: a table window built
        from the records alone misses what happens between them)."""
        from ._ode import solve_ode

        t_end = max(float(self.steps[-1]) * self.dt, self.dt)
        return solve_ode(problem, alg, times=np.linspace(0.0, t_end, 201))

    def params(self, alg, problem, t) -> dict:
        """The JSON-friendly parameters of an SDE result (every SDE path writes the same)."""
        desc = alg.describe()
        return {
            "kind": "sde",
            "lr": desc.get("lr"),
            "clip": desc.get("clip"),
            "algorithm": desc,
            "dt": self.dt,
            "T": float(t[-1]),
            "runs": self.runs,
            "seed": self.seed,
            "first_run": self.first_run,
            "dtype": str(self.dtype),
            "problem": problem.describe(),
        }


def simulate_sde(
    problem: Problem,
    algorithm=None,
    clip=None,
    T=None,
    runs: int = 16,
    seed: int = 0,
    dt: float = 0.01,
    times=None,
    *,
    lr=None,
    n_records: int = 101,
    dtype="float32",
    first_run: int = 0,
    divergence_threshold=None,
    run_chunk: int | None = None,
    progress=None,
    max_work=None,
) -> RiskPaths:
    """Homogenized SGD (C-HSGD) of an algorithm by Euler-Maruyama with step ``dt`` (t = k / D).

    Same arguments and result type as :func:`simulate` (an algorithm, or the v0.1 form
    ``lr, clip``); the clip may also be a :class:`RiskSchedule` here (evaluated at each run's own
    risk). Record times are rounded to multiples of ``dt``. Clip of the mean at batch > 1 takes a
    constant or risk-dependent clip. Divergence: the rule of :func:`simulate` (level
    ``divergence_threshold``, default 1e6 max(R0, E[eps^2])); without clipping under noise of
    infinite variance nu is infinite and every run diverges at once (from the first record
    after t = 0), as the ODE does. ``progress``, ``max_work``, the memory check and Ctrl-C: as
    in :func:`simulate`.

    References: arXiv 2406.11733, C-HSGD (Sec. 3); SPEC sections 4 and 8.
    """
    alg = as_algorithm(algorithm, clip, "simulate_sde", lr)
    runs, first_run, threshold = check_run_args(
        problem, Problem, runs, first_run, divergence_threshold
    )
    dt = V.positive("dt", dt)
    chunk = chunk_size(problem.d, run_chunk)
    dtype_ = resolve_dtype(dtype)
    check_noise_range(problem.noise, dtype_)
    if times is None:
        T = V.positive("T", T)
        n_records = V.count("n_records", n_records, lo=2)
        check_memory(
            "simulate_sde",
            {
                "records (padded runs x records)": (32.0 * -(-runs // chunk) * chunk + 48)
                * n_records
            },
            "runs or n_records",
        )
        t = np.linspace(0.0, T, n_records)
    else:
        t = np.asarray(V.vector("times", times), dtype=np.float64)
        if np.any(t < 0) or np.any(np.diff(t) < 0):
            raise ValueError("times must be >= 0 and non-decreasing")
    gaps = np.diff(t)
    if np.any((gaps > 0) & (gaps < dt * (1 - 1e-9))):
        raise ValueError(
            f"dt = {dt:g} must not exceed the gaps between record times (smallest "
            f"{gaps[gaps > 0].min():.3g}); use a smaller dt or fewer records"
        )
    steps, n_steps = steps_of(t, None, "T / dt", step=dt)
    n_steps = max(n_steps, 1)
    lr, clip = alg.lr, alg.clip
    n_items = -(-runs // chunk) * chunk
    scheduled = not (is_constant(lr) and (is_constant(clip) or isinstance(clip, RiskSchedule)))
    knots = n_steps if scheduled else 1
    itemsize = jnp.dtype(dtype_).itemsize
    check_memory(
        "simulate_sde",
        {
            "records (padded runs x records)": 4.0 * 8 * n_items * t.size,
            "per-chunk working set (chunk x d)": 8.0 * chunk * problem.d * itemsize,
            "schedule tables (steps)": (3 * 8.0 + 2.0 * itemsize * chunk) * knots,
            "problem arrays": 8.0 * 6 * problem.d,
        },
        "runs, n_records, d or T / dt (a larger dt)",
    )
    check_work("simulate_sde", float(n_items) * n_steps * problem.d, max_work, "runs, T / dt or d")
    step_t = np.arange(n_steps) * dt if scheduled else np.zeros(1)
    run = _SdeRun(
        t, steps, n_steps, dt, runs, seed, first_run, chunk, dtype_, threshold, progress, dtype
    )
    eq = alg.deterministic(problem, use_table=False)
    if getattr(eq, "bias_sde", False):  # non-centred data / perturbation (SPEC 10)
        return _simulate_bias_sde(problem, alg, eq, run)
    if getattr(eq, "quantile_sde", False):  # quantile tracking, slow regime (SPEC 11A.a)
        return _simulate_quantile_sde(problem, alg, eq, run)
    if getattr(eq, "no_sde", None):
        raise ValueError(eq.no_sde)
    lr_tab = (
        time_schedule_values("lr", lr, np.zeros(1))
        if is_constant(lr)
        else time_schedule_values("lr", lr, step_t)
    )
    noise = problem.noise
    log_r = _risk_grid(problem)
    weights = {}
    if getattr(eq, "own_sde_tables", False):
        mode, clip_tab, z_scale = "coordinate", np.zeros(1), 0.0
        log_r, log_c, tab_mu, tab_nu, weights = _coordinate_tables(eq, log_r)
    else:
        mode, log_r, log_c, tab_mu, tab_nu, clip_tab, z_scale = _clip_tables(
            problem, alg, eq, log_r, step_t
        )
    f = lambda a: jnp.asarray(a, dtype_)  # noqa: E731
    lam = problem.eigenvalues
    inputs = {
        "lam": f(lam),
        "sqrt_lam": f(np.sqrt(lam)),
        "x0": f(problem.initial_error),
        "inv_D": f(1.0 / problem.D),
        "dt": f(dt),
        "tables": {"lr": f(lr_tab[None, :]), "clip": f(clip_tab[None, :])},
        "log_r": f(log_r),
        "tab_mu": f(tab_mu),
        "tab_nu": f(tab_nu),
        "log_c": f(log_c),
        "m2": f(noise.second_moment),
        "inv_B": f(1.0 / alg.samples_per_step()),
        "z_scale": f(z_scale),
        **{k: f(v) for k, v in weights.items()},  # coordinate mode only
    }
    sigma_dp = float(getattr(eq, "sigma_dp", 0.0))
    if sigma_dp > 0:  # DP-SGD: dX_i += gamma (sigma c / B) dB'_i (SPEC 9.1), c of this step
        inputs["dp"] = f(sigma_dp / alg.samples_per_step())
        if mode == "risk":
            inputs["dp_clip"] = f(time_schedule_values("clip", clip, np.zeros(1))[0])
    keys, cell_of, run_of = run.chunks()
    tables = inputs.pop("tables")
    rows_of = {}

    def init(ci):
        rows_of.clear()
        rows_of[ci] = {k: v[cell_of[ci]] for k, v in tables.items()}
        return jnp.broadcast_to(inputs["x0"], (chunk, problem.d))

    def call(ci, x, bounds):
        return _sde_slice(inputs, rows_of[ci], keys[run_of[ci]], x, bounds, mode)

    risk = run.segmented(problem, call, init, len(cell_of))[None, :runs]
    t = steps * dt  # the times actually simulated (record times rounded to multiples of dt)
    risk, diverged, when = mark_divergence(np.asarray(risk, dtype=np.float64)[0], t, threshold)
    return RiskPaths(t, risk, diverged, when, run.params(alg, problem, t))


def _clip_tables(problem, alg, eq, log_r, step_t):
    """The factor tables of a norm-clipped algorithm: (mode, log_r, log_c, tab_mu, tab_nu,
    clip_tab, z_scale), mode "unclipped", "risk" (constant or risk-dependent clip), "shift"
    (clip of the mean) or "time" (a clip schedule in time)."""
    clip = alg.clip
    if eq.shifted and not (is_constant(clip) and (clip is None or math.isinf(float(clip)))):
        # clip-of-mean factors are costly: 16 per decade (error ~2e-4) over 1e-4 .. 1e3 of the
        # reference risk; the table is extrapolated beyond (the factors flatten out there)
        ref = math.exp(log_r[0]) / 1e-10
        log_r = log_r[::3]
        log_r = log_r[(log_r >= math.log(1e-4 * ref)) & (log_r <= math.log(1e3 * ref))]
    R_grid = np.exp(log_r)
    log_c = np.zeros(2)
    clip_tab = np.ones(1)
    z_scale = 0.0
    if is_constant(clip) and (clip is None or math.isinf(float(clip))):
        mode = "unclipped"
        tab_mu = tab_nu = np.zeros(1)
    elif is_constant(clip) or isinstance(clip, RiskSchedule):
        if isinstance(clip, RiskSchedule):
            c_of_r = clip.clip(R_grid)
            clip_tab = np.array([1.0 if clip.compensate else 0.0])
        else:
            c_of_r = np.full(R_grid.shape, time_schedule_values("clip", clip, np.zeros(1))[0])
            clip_tab = np.array([0.0])
        if eq.shifted:
            mode = "shift"
            log_c = np.unique(np.concatenate([eq.z_nodes, eq.z_range]))  # the z grid
            if log_c.size < 2:
                log_c = np.array([log_c[0], log_c[0] * (1 + 1e-3) + 1e-12])
            z_scale = (alg.batch + 1) / (2.0 * problem.D)  # G = sum (lam x)^2 = ||K X||^2
            zz = np.broadcast_to(log_c[None, :], (R_grid.size, log_c.size))
            cc = np.broadcast_to(c_of_r[:, None], zz.shape)
            rr = np.broadcast_to(R_grid[:, None], zz.shape)
            tab_mu, tab_nu = _log_table(*eq.sde_factors(rr, cc, zz))
        else:
            mode = "risk"
            tab_mu, tab_nu = _log_table(*eq.sde_factors(R_grid, c_of_r, 0.0))
    else:
        if eq.shifted:
            raise ValueError(
                "simulate_sde: clip of the mean at batch > 1 takes a constant or risk-dependent "
                "clip; for a time schedule use simulate or solve_ode"
            )
        mode = "time"
        clip_tab = time_schedule_values("clip", clip, step_t, allow_inf=True)
        finite = clip_tab[np.isfinite(clip_tab)]
        if finite.size == 0:  # inf at every step: plain SGD's factors
            finite = np.ones(1)
        c_lo, c_hi = finite.min(), finite.max()
        # a single finite value: widen the grid so that float32 still resolves its width
        margin = 1e-9 if math.log(c_hi / c_lo) > 1e-6 else 1e-2
        log_c = np.linspace(
            math.log(c_lo) - margin,
            math.log(c_hi) + margin,
            max(2, int(_PER_DECADE * math.log10(c_hi / c_lo)) + 2),
        )
        tab_mu, tab_nu = _log_table(*eq.sde_factors(R_grid[:, None], np.exp(log_c)[None, :], 0.0))
    return mode, log_r, log_c, tab_mu, tab_nu, clip_tab, z_scale


def _coordinate_tables(eq, log_r):
    """Factors the equivalent tabulates itself (value clipping and signSGD, SPEC 12; the fast
    quantile rule, SPEC 11A.b): tables on (log R, y), each coordinate's y_i, its drift and noise
    weights. 24 nodes per decade of R (linear in log-log: error ~3e-4, far below the Monte Carlo
    error of any run count)."""
    tabs = eq.sde_tables(log_r[::2] if log_r.size > 4 else log_r)
    tab_mu, tab_nu = _log_table(tabs["mu"], tabs["nu"])
    weights = {k: tabs[k] for k in ("y", "drift_weights", "noise_weights")}
    return tabs["log_r"], tabs["grid"], tab_mu, tab_nu, weights


# ---------------------------------------------------------------------------------------------
# non-centred data and the perturbation (SPEC 10): the mean drift m kappa(r, R) joins the SDE
# ---------------------------------------------------------------------------------------------
_R_NODES_PER_DECADE = 24
_BIAS_NODES = 41


def _bias_tables(eq, lr, c, R_lo, R_hi, r_lo, r_hi):
    """log mu, kappa, log nu1, log nu0 on a (log R, r) grid (bilinear inside the loop; the
    table error, ~1e-4, is far below the Monte Carlo error)."""
    log_r = np.linspace(
        math.log(R_lo), math.log(R_hi), int(_R_NODES_PER_DECADE * math.log10(R_hi / R_lo)) + 2
    )
    r_grid = np.linspace(r_lo, r_hi, _BIAS_NODES)
    RR, rr = np.meshgrid(np.exp(log_r), r_grid, indexing="ij")
    mu, kap, nu1, nu0 = eq._bias_factors(eq.noise, rr, RR, c, eq.delta)
    tiny = 1e-300
    return (
        log_r,
        r_grid,
        {
            "log_mu": np.log(np.maximum(mu, tiny)),
            "kappa": kap,
            "log_nu1": np.log(np.maximum(nu1, tiny)),
            "log_nu0": np.log(np.maximum(nu0, tiny)),
        },
    )


def _cell(grid, x):
    """The cell of ``grid`` holding x and x's position in it, clipped to [0, 1] (the factors
    freeze beyond the table)."""
    i = jnp.clip(jnp.searchsorted(grid, x) - 1, 0, grid.size - 2)
    return i, jnp.clip((x - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0)


def _cell_extrapolated(grid, x):
    """As :func:`_cell`, the position not clipped: linear extrapolation from the end cells."""
    i = jnp.clip(jnp.searchsorted(grid, x) - 1, 0, grid.size - 2)
    return i, (x - grid[i]) / (grid[i + 1] - grid[i])


def _bilinear(tab, i, j, fx, fy):
    return (
        (1 - fx) * (1 - fy) * tab[i, j]
        + fx * (1 - fy) * tab[i + 1, j]
        + (1 - fx) * fy * tab[i, j + 1]
        + fx * fy * tab[i + 1, j + 1]
    )


@jax.jit
def _sde_bias_slice(inputs, keys, x, bounds):
    """Euler-Maruyama for dX = -gamma (mu K X + m kappa) dt
    + gamma sqrt((lambda nu1 + k^2 nu0) / (D B) [+ DP]) dB, factors at (R, r = <m, X>)."""
    lam, m = inputs["lam"], inputs["m"]
    lr, dt, inv_D = inputs["lr"], inputs["dt"], inputs["inv_D"]
    log_r, r_grid = inputs["log_r"], inputs["r_grid"]
    d = lam.shape[0]

    def table(name, i, j, fx, fy):
        return _bilinear(inputs[name], i, j, fx, fy)

    def one_run(key, x):
        def step(k, x):
            R = 0.5 * jnp.dot(lam * x, x)
            r = jnp.dot(m, x)
            i, fx = _cell(log_r, jnp.log(jnp.maximum(R, 1e-300)))
            j, fy = _cell(r_grid, r)
            mu = jnp.exp(table("log_mu", i, j, fx, fy))
            kap = table("kappa", i, j, fx, fy)
            nu1 = jnp.exp(table("log_nu1", i, j, fx, fy))
            nu0 = jnp.exp(table("log_nu0", i, j, fx, fy))
            var = (lam * nu1 + inputs["k2"] * nu0) * inv_D * inputs["inv_B"] + inputs["dp2"]
            xi = jax.random.normal(jax.random.fold_in(key, k), (d,), x.dtype)
            return x - lr * (mu * lam * x + m * kap) * dt + lr * jnp.sqrt(var * dt) * xi

        def interval(x, bound):
            x = jax.lax.fori_loop(bound[0], bound[1], step, x)
            R = 0.5 * jnp.dot(lam * x, x)
            r = jnp.dot(m, x)
            return x, {"risk": R, "bias": r, "population_risk": R + 0.5 * r * r}

        return jax.lax.scan(interval, x, bounds)

    return jax.vmap(one_run)(keys, x)


def _simulate_bias_sde(problem, alg, eq, run: _SdeRun):
    if not (is_constant(alg.lr) and is_constant(alg.clip)):
        raise ValueError(
            "simulate_sde: with data_mean or perturbation, lr and clip must be constant numbers"
        )

    lr = float(time_schedule_values("lr", alg.lr, np.zeros(1))[0])
    c = float(
        time_schedule_values("clip", alg.clip, np.zeros(1), allow_inf=True, allow_none=True)[0]
    )
    # the (R, r) window from the deterministic path, widened for the runs' spread
    ode = run.deterministic_path(problem, alg)
    R_ok = ode.risk[np.isfinite(ode.risk)]
    ref = max(float(R_ok.max()), 1e-12)
    R_lo, R_hi = max(float(R_ok.min()), 1e-8 * ref) / 100.0, ref * 100.0
    r_path = ode.bias[np.isfinite(ode.bias)]
    spread = 0.5 * (float(np.ptp(r_path)) + math.sqrt(ref)) + 1e-6
    log_r, r_grid, tabs = _bias_tables(
        eq, lr, c, R_lo, R_hi, float(r_path.min()) - spread, float(r_path.max()) + spread
    )
    f = lambda a: jnp.asarray(a, run.dtype_)  # noqa: E731
    B = alg.samples_per_step()
    sigma = float(getattr(eq, "sigma_dp", 0.0))
    dp2 = (sigma * c / B) ** 2 if sigma > 0 else 0.0  # DP-SGD: gamma (sigma c / B) dB' per coord
    inputs = {
        "lam": f(problem.eigenvalues),
        "m": f(eq.m),
        "lr": f(lr),
        "dt": f(run.dt),
        "inv_D": f(1.0 / problem.D),
        "inv_B": f(1.0 / B),
        "k2": f(eq.k * eq.k),
        "dp2": f(dp2),
        "log_r": f(log_r),
        "r_grid": f(r_grid),
        **{k: f(v) for k, v in tabs.items()},
    }
    x0 = f(problem.initial_error)
    return run.paths(
        problem,
        alg,
        lambda keys, x, bounds: _sde_bias_slice(inputs, keys, x, bounds),
        lambda: jnp.broadcast_to(x0, (run.chunk, problem.d)),
    )


# ---------------------------------------------------------------------------------------------
# quantile tracking, slow regime (SPEC 11A.a): u = log c is each run's own state
# ---------------------------------------------------------------------------------------------
_LOG_C_PER_DECADE = 48


@jax.jit
def _sde_quantile_slice(inputs, keys, carry, bounds):
    """Euler-Maruyama for (X, u): dX = -gamma mu K X dt + gamma sqrt(nu / D) sqrt(K) dB,
    du = -eta (mu - q) dt + eta sqrt(mu (1 - mu) / D) dB', factors at (R, c = e^u)."""
    lam, sqrt_lam = inputs["lam"], inputs["sqrt_lam"]
    lr, dt, inv_D = inputs["lr"], inputs["dt"], inputs["inv_D"]
    eta, q = inputs["eta"], inputs["q"]
    log_r, log_c = inputs["log_r"], inputs["log_c"]
    d = lam.shape[0]

    def one_run(key, carry):
        def step(k, carry):
            x, u = carry
            R = jnp.maximum(0.5 * jnp.dot(lam * x, x), 1e-300)
            i, fx = _cell_extrapolated(log_r, jnp.log(R))
            j, fy = _cell_extrapolated(log_c, u)
            # log mu, log nu are near-linear in (log R, u) at both ends (power laws); mu <= 1
            mu = jnp.minimum(jnp.exp(_bilinear(inputs["tab_mu"], i, j, fx, fy)), 1.0)
            nu = jnp.exp(_bilinear(inputs["tab_nu"], i, j, fx, fy))
            key_k = jax.random.fold_in(key, k)
            xi = jax.random.normal(key_k, (d,), x.dtype)
            zeta = jax.random.normal(jax.random.fold_in(key_k, 1), (), x.dtype)
            x = x - lr * mu * lam * x * dt + lr * jnp.sqrt(nu * inv_D * dt) * sqrt_lam * xi
            spread = jnp.sqrt(jnp.maximum(mu * (1.0 - mu), 0.0) * inv_D * dt)
            return x, u - eta * (mu - q) * dt + eta * spread * zeta

        def interval(carry, bound):
            carry = jax.lax.fori_loop(bound[0], bound[1], step, carry)
            x, u = carry
            return carry, {"risk": 0.5 * jnp.dot(lam * x, x), "clip": jnp.exp(u)}

        return jax.lax.scan(interval, carry, bounds)

    return jax.vmap(one_run)(keys, carry)


def _simulate_quantile_sde(problem, alg, eq, run: _SdeRun):
    if not is_constant(alg.lr):
        raise ValueError("simulate_sde: QuantileClipSGD's SDE takes a constant lr")
    from ._factors import reduction_factors

    lr = float(time_schedule_values("lr", alg.lr, np.zeros(1))[0])
    if eq.eta * run.dt > 0.25:  # Euler on u: stiffness eta d(mu)/du <= eta / 2
        raise ValueError(
            f"dt = {run.dt:g} is too coarse for the threshold of QuantileClipSGD (eta = clip_lr "
            f"D = {eq.eta:.4g}): need dt <= {0.25 / eq.eta:.3g} (eta dt <= 0.25)"
        )
    # the (R, log c) window from the deterministic path, widened for the runs' spread; beyond
    # it the factors are extrapolated linearly in (log R, u) (power laws), never frozen
    ode = run.deterministic_path(problem, alg)
    ok = np.isfinite(ode.risk)
    R_ok, u_ok = ode.risk[ok], np.log(np.asarray(ode.clip_path)[ok])
    ref = max(float(R_ok.max()), 1e-12)
    # the whole path (a noiseless run goes to R ~ 1e-35: the table must follow it there)
    R_lo, R_hi = max(float(R_ok.min()), 1e-280) / 100.0, ref * 100.0
    log_r = np.linspace(
        math.log(R_lo), math.log(R_hi), int(_R_NODES_PER_DECADE * math.log10(R_hi / R_lo)) + 2
    )
    u_lo, u_hi = float(u_ok.min()) - 2.0, float(u_ok.max()) + 2.0
    log_c = np.linspace(u_lo, u_hi, int(_LOG_C_PER_DECADE * (u_hi - u_lo) / math.log(10)) + 2)
    mu, nu = reduction_factors(problem.noise, np.exp(log_r)[:, None], np.exp(log_c)[None, :])
    tab_mu, tab_nu = _log_table(mu, nu)
    f = lambda a: jnp.asarray(a, run.dtype_)  # noqa: E731
    lam = problem.eigenvalues
    inputs = {
        "lam": f(lam),
        "sqrt_lam": f(np.sqrt(lam)),
        "lr": f(lr),
        "dt": f(run.dt),
        "inv_D": f(1.0 / problem.D),
        "eta": f(eq.eta),
        "q": f(alg.quantile),
        "log_r": f(log_r),
        "log_c": f(log_c),
        "tab_mu": f(tab_mu),
        "tab_nu": f(tab_nu),
    }
    x0, u0 = f(problem.initial_error), f(math.log(alg.clip))
    return run.paths(
        problem,
        alg,
        lambda keys, carry, bounds: _sde_quantile_slice(inputs, keys, carry, bounds),
        lambda: (jnp.broadcast_to(x0, (run.chunk, problem.d)), jnp.broadcast_to(u0, (run.chunk,))),
    )
