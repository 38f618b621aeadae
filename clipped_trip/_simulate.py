"""Streaming clipped SGD on least squares, in the eigenbasis of K (SPEC sections 1-2).

Per step k (t = k / D), with e = x - x*:
    a = sqrt(lambda) * z, z ~ N(0, I_d);  w = <a, e> - eps;  g = w a
    e <- e - (gamma_k / D) * clip_{c_k sqrt(D)}(g)
Cost O(d) per step and memory O(d) per run plus the records: the data are never stored.

Engineering: one jitted program. Each (lr, clip) cell x run is an item; items are vmapped in chunks
of fixed size (``chunk_size``), chunks mapped one after another; per item a ``lax.scan`` over
record intervals, each a ``fori_loop`` over steps. The randomness of step k of run j is
``fold_in(fold_in(key(seed), j), k)``, so a run is bit-identical alone or inside a batch, and
whatever the record times. Learning rate and clip are traced arrays: a sweep never recompiles.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._clip import clip_factor
from ._problem import Problem
from ._results import RiskPaths, divergence_limit, mark_divergence
from ._schedules import RiskSchedule, is_constant, time_schedule_values

__all__ = ["simulate", "sweep", "trace_count", "record_grid"]

_TRACES = {"count": 0}
DEFAULT_RUN_CHUNK = None  # automatic: a power of two depending on d only (see chunk_size)
_CHUNK_ELEMENTS = 2**16  # runs x d per chunk: enough work per step to vectorise well


def chunk_size(width: int, requested=None) -> int:
    """Runs advanced together, one chunk after another, each chunk the same compiled program.

    It depends on the problem's width d only (2^16 / d rounded down to a power of two, within
    [16, 256]), never on the number of runs: XLA's reductions depend on the batch shape, so a
    fixed chunk is what makes a run bit-identical alone or inside any batch.
    """
    if requested is not None:
        return V.count("run_chunk", requested)
    target = max(1, _CHUNK_ELEMENTS // max(int(width), 1))
    return int(min(256, max(16, 2 ** int(math.floor(math.log2(target))))))


def trace_count() -> int:
    """How many times the simulator core has been traced (compiled); for tests and benchmarks."""
    return _TRACES["count"]


def resolve_dtype(dtype):
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (jnp.dtype("float32"), jnp.dtype("float64")):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if dt == jnp.dtype("float64") and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype float64 needs JAX's 64-bit mode: call "
            "jax.config.update('jax_enable_x64', True) first"
        )
    return dt


def record_grid(D: float, T, times, n_records):
    """Record times and the step index of each (k = round(t D)). Returns (t, steps, n_steps)."""
    if times is None:
        T = V.positive("T", T)
        n_records = V.count("n_records", n_records, lo=2)
        t = np.linspace(0.0, T, n_records)
    else:
        t = V.vector("times", times)
        if np.any(t < 0) or np.any(np.diff(t) < 0):
            raise ValueError("times must be >= 0 and non-decreasing")
        if T is not None:
            T = V.positive("T", T)
            if t[-1] > T * (1 + 1e-12):
                raise ValueError(f"times must be <= T = {T}, got max {t[-1]}")
    steps = np.rint(t * D).astype(np.int64)
    n_steps = int(steps[-1])
    if n_steps > 2**31 - 1:
        raise ValueError(f"T * D = {n_steps} steps exceeds 2^31 - 1; use a smaller T")
    return np.asarray(t, dtype=np.float64), steps, n_steps


def _step_table(name, schedule, n_steps, D, allow_inf):
    """A schedule as values per step (length 1 for constants, so sweeps share one program)."""
    if is_constant(schedule):
        return time_schedule_values(
            name, schedule, np.zeros(1), allow_inf=allow_inf, allow_none=allow_inf
        )
    t_steps = np.arange(max(n_steps, 1), dtype=np.float64) / D
    return time_schedule_values(name, schedule, t_steps, allow_inf=allow_inf, allow_none=allow_inf)


@partial(jax.jit, static_argnames=("noise", "chunk", "runs"))
def _simulate_core(
    sqrt_lam, e0, inv_D, sqrt_D, lr_tab, clip_tab, seed, first_run, bounds, noise, chunk, runs
):
    """risk[cell, run, record] for lr_tab/clip_tab of shape (cells, knots)."""
    _TRACES["count"] += 1  # Python side effect: runs once per trace, never at run time
    keys = _run_keys_traced(seed, first_run, runs)  # inside the program: no extra compile
    dtype = e0.dtype
    d = e0.shape[0]
    n_lr, n_clip = lr_tab.shape[1], clip_tab.shape[1]

    def one_run(lr_row, clip_row, key):
        def step(k, e):
            kz, ke = jax.random.split(jax.random.fold_in(key, k))
            a = sqrt_lam * jax.random.normal(kz, (d,), dtype)
            w = jnp.dot(a, e) - noise.sample(ke, (), dtype)
            g_norm = jnp.abs(w) * jnp.sqrt(jnp.dot(a, a))
            lr = lr_row[jnp.minimum(k, n_lr - 1)]
            c = clip_row[jnp.minimum(k, n_clip - 1)]
            scale = lr * inv_D * clip_factor(g_norm, c * sqrt_D) * w
            return e - scale * a

        def interval(e, bound):
            e = jax.lax.fori_loop(bound[0], bound[1], step, e)
            return e, 0.5 * jnp.dot(sqrt_lam * e, sqrt_lam * e)

        _, risks = jax.lax.scan(interval, e0, bounds)
        return risks

    return map_runs(one_run, lr_tab, clip_tab, keys, chunk)


def map_runs(one_run, lr_tab, clip_tab, run_keys, chunk):
    """one_run(lr_row, clip_row, key) over every (cell, run) pair: result (cells, runs, ...).

    Items are padded to whole chunks of ``chunk``; chunks run one after the other, each the same
    vmapped program (see ``chunk_size`` for why results do not depend on the batch).
    """
    n_cells, n_runs = lr_tab.shape[0], run_keys.shape[0]
    n_items = n_cells * n_runs
    n_chunks = -(-n_items // chunk)
    pad = n_chunks * chunk - n_items
    cell_of = jnp.concatenate([jnp.repeat(jnp.arange(n_cells), n_runs), jnp.zeros(pad, int)])
    run_of = jnp.concatenate([jnp.tile(jnp.arange(n_runs), n_cells), jnp.zeros(pad, int)])
    items = (lr_tab[cell_of], clip_tab[cell_of], run_keys[run_of])
    items = jax.tree.map(lambda x: x.reshape((n_chunks, chunk) + x.shape[1:]), items)
    out = jax.lax.map(lambda it: jax.vmap(one_run)(*it), items)
    out = out.reshape((n_chunks * chunk,) + out.shape[2:])[:n_items]
    return out.reshape((n_cells, n_runs) + out.shape[1:])


def _run_keys_traced(seed, first_run, runs):
    base = jax.random.key(seed)
    ids = first_run + jnp.arange(runs, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(ids)


_keys = jax.jit(_run_keys_traced, static_argnames=("runs",))


def _check_seed(seed, first_run, runs):
    seed = V.count("seed", seed, lo=0)
    if seed >= 2**32 or first_run + runs > 2**32:
        raise ValueError(f"seed and run indices must be < 2^32, got seed {seed}")
    return jnp.uint32(seed), jnp.uint32(first_run)


def run_keys(seed, first_run, runs):
    """Keys of runs first_run .. first_run + runs - 1 of stream ``seed``."""
    return _keys(*_check_seed(seed, first_run, runs), runs=runs)


def check_run_args(problem, problem_type, runs, first_run, divergence_threshold):
    """Validation shared by the three Monte Carlo entry points: (runs, first_run, threshold)."""
    if not isinstance(problem, problem_type):
        raise ValueError(f"problem must be a {problem_type.__name__}, got {type(problem).__name__}")
    runs = V.count("runs", runs)
    first_run = V.count("first_run", first_run, lo=0)
    return runs, first_run, divergence_limit(divergence_threshold, problem.initial_risk)


def _run(
    problem,
    lr_tabs,
    clip_tabs,
    T,
    runs,
    seed,
    times,
    n_records,
    dtype,
    first_run,
    divergence_threshold,
    chunk,
):
    runs, first_run, threshold = check_run_args(
        problem, Problem, runs, first_run, divergence_threshold
    )
    dt = resolve_dtype(dtype)
    D = problem.D
    t, steps, n_steps = record_grid(D, T, times, n_records)
    lr_tab = np.stack([_step_table("lr", s, n_steps, D, False) for s in lr_tabs])
    clip_tab = np.stack([_step_table("clip", s, n_steps, D, True) for s in clip_tabs])
    bounds = np.stack([np.concatenate([[0], steps[:-1]]), steps], axis=1).astype(np.int32)
    chunk = chunk_size(problem.d, chunk)
    risk = _simulate_core(
        jnp.asarray(np.sqrt(problem.eigenvalues), dt),
        jnp.asarray(problem.initial_error, dt),
        jnp.asarray(1.0 / D, dt),
        jnp.asarray(math.sqrt(D), dt),
        jnp.asarray(lr_tab, dt),
        jnp.asarray(clip_tab, dt),
        *_check_seed(seed, first_run, runs),
        jnp.asarray(bounds),
        problem.noise,
        chunk,
        runs,
    )
    risk = np.asarray(risk, dtype=np.float64)
    risk, diverged, when = mark_divergence(risk, t, threshold)
    return t, steps, risk, diverged, when


def simulate(
    problem: Problem,
    lr,
    clip=None,
    T=None,
    runs: int = 16,
    seed: int = 0,
    times=None,
    *,
    n_records: int = 101,
    dtype="float32",
    first_run: int = 0,
    divergence_threshold=None,
    run_chunk: int = DEFAULT_RUN_CHUNK,
) -> RiskPaths:
    """Run streaming (clipped) SGD ``runs`` times and record the excess risk.

    Args:
        problem: the :class:`Problem` (spectrum, x0, x*, noise).
        lr: gamma (step gamma / D): a number > 0, a callable of t, or (times, values).
        clip: c in residual units (gradient clipped at norm c sqrt(D)); None / inf = plain SGD.
            Same forms as ``lr``.
        T: horizon (round(T D) steps). Optional when ``times`` is given.
        runs, seed, first_run: runs ``first_run .. first_run + runs - 1`` of stream ``seed``.
        times: record times (exactly those); default ``n_records`` even points on [0, T].
        dtype: "float32" (default) or "float64" (needs jax_enable_x64).
        divergence_threshold: risk above this counts as diverged (default 1e12 max(R0, 1)).
        run_chunk: runs advanced together (vectorised); default a power of two set by d alone.
            Results are bit-identical for a given ``run_chunk`` whatever ``runs`` and
            ``first_run``. Raise it on a GPU.

    Returns:
        :class:`RiskPaths` with ``.t``, ``.risk`` (runs x len(t)), ``.diverged``.

    References: arXiv 2406.11733, clipped SGD (Sec. 2); SPEC sections 1-2.
    """
    t, steps, risk, diverged, when = _run(
        problem,
        [lr],
        [clip],
        T,
        runs,
        seed,
        times,
        n_records,
        dtype,
        first_run,
        divergence_threshold,
        run_chunk,
    )
    params = {
        "kind": "sgd",
        "lr": describe_schedule(lr),
        "clip": describe_schedule(clip),
        "T": float(t[-1]),
        "runs": runs,
        "seed": seed,
        "first_run": first_run,
        "dtype": str(dtype),
        "problem": problem.describe(),
    }
    return RiskPaths(t, risk[0], diverged[0], when[0], params)


def sweep(
    problem: Problem,
    lrs,
    clips,
    T=None,
    runs: int = 16,
    seed: int = 0,
    times=None,
    *,
    n_records: int = 101,
    dtype="float32",
    divergence_threshold=None,
    run_chunk: int = DEFAULT_RUN_CHUNK,
) -> RiskPaths:
    """Clipped SGD over the grid lrs x clips in one compiled program (same random stream per cell).

    ``clips`` may contain None / inf (no clipping). Returns :class:`RiskPaths` whose ``risk`` has
    shape (len(lrs), len(clips), runs, len(t)); ``params['lrs']`` and ``params['clips']`` hold
    the grid.
    """
    lrs = [V.positive("lr", x) for x in lrs]
    clips = [math.inf if c is None else V.positive("clip", c, allow_inf=True) for c in clips]
    if not lrs or not clips:
        raise ValueError("lrs and clips must each hold at least one value")
    lr_cells = [lr for lr in lrs for _ in clips]
    clip_cells = [c for _ in lrs for c in clips]
    t, steps, risk, diverged, when = _run(
        problem,
        lr_cells,
        clip_cells,
        T,
        runs,
        seed,
        times,
        n_records,
        dtype,
        0,
        divergence_threshold,
        run_chunk,
    )
    shape = (len(lrs), len(clips))
    params = {
        "kind": "sgd-sweep",
        "lrs": lrs,
        "clips": clips,
        "T": float(t[-1]),
        "runs": runs,
        "seed": seed,
        "dtype": str(dtype),
        "problem": problem.describe(),
    }
    return RiskPaths(
        t,
        risk.reshape(shape + risk.shape[1:]),
        diverged.reshape(shape + (runs,)),
        when.reshape(shape + (runs,)),
        params,
    )


def describe_schedule(schedule):
    if schedule is None or isinstance(schedule, (int, float)):
        return schedule
    if isinstance(schedule, RiskSchedule):
        return schedule.name
    if callable(schedule):
        return f"callable {getattr(schedule, '__name__', type(schedule).__name__)}"
    return "array schedule"
