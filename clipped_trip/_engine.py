"""The one Monte Carlo engine shared by every simulator (full, reduced, SDE, real data).

What lives here, once:
* run keys: run ``j`` of stream ``seed`` uses ``fold_in(key(seed), j)``; step ``k`` folds in ``k``;
* run chunks: runs (x cells of a sweep) are vmapped in chunks of a size fixed by the problem's
  width only, so a run is bit-identical alone or inside any batch (XLA's reductions depend on the
  batch shape);
* the record grid: record times -> step indices (k = round(t D)) and the true simulated times;
* per-step schedule tables (constants stay length 1 so that sweeps share one program);
* the input checks every Monte Carlo entry point shares (runs, seed, dtype, divergence limit).

Divergence marking lives in ``_results`` (it is shared with the ODE).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._results import divergence_limit
from ._schedules import RiskSchedule, is_constant, time_schedule_values

__all__ = [
    "chunk_size",
    "resolve_dtype",
    "record_grid",
    "step_table",
    "run_keys",
    "run_keys_traced",
    "check_seed",
    "check_run_args",
    "map_runs",
    "describe_schedule",
    "interval_bounds",
    "steps_of",
]

_CHUNK_ELEMENTS = 2**16  # runs x width per chunk: enough work per step to vectorise well


def chunk_size(width: int, requested=None, *, minimum: int = 16) -> int:
    """Runs advanced together, one chunk after another, each chunk the same compiled program.

    It depends on the per-run width only (d, or B x d for a mini-batch: 2^16 / width rounded
    down to a power of two, within [minimum, 256]), never on the number of runs: a fixed chunk is
    what makes a run bit-identical alone or inside any batch.
    """
    if requested is not None:
        return V.count("run_chunk", requested)
    target = max(1, _CHUNK_ELEMENTS // max(int(width), 1))
    return int(min(256, max(minimum, 2 ** int(math.floor(math.log2(target))))))


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


def requested_times(T, times, n_records):
    """The record times asked for: ``times`` (non-decreasing, >= 0) or n_records on [0, T]."""
    if times is None:
        T = V.positive("T", T)
        n_records = V.count("n_records", n_records, lo=2)
        return np.linspace(0.0, T, n_records)
    t = V.vector("times", times)
    if np.any(t < 0) or np.any(np.diff(t) < 0):
        raise ValueError("times must be >= 0 and non-decreasing")
    if T is not None:
        T = V.positive("T", T)
        if t[-1] > T * (1 + 1e-12):
            raise ValueError(f"times must be <= T = {T}, got max {t[-1]}")
    return np.asarray(t, dtype=np.float64)


def record_grid(D: float, T, times, n_records):
    """Record times and the step index of each (k = round(t D)). Returns (t, steps, n_steps)."""
    t = requested_times(T, times, n_records)
    return t, *steps_of(t, D, "T * D")


MAX_STEPS = 2**31 - 1


def steps_of(t, per_unit: float, what: str, *, step=None):
    """Step indices round(t * per_unit) (or round(t / step)), refused before any cast when not
    representable: an int64 cast of a huge float wraps to a negative count."""
    t = np.asarray(t, dtype=np.float64)
    raw = t / step if step is not None else t * per_unit
    last = float(raw[-1])
    if not math.isfinite(last) or last > MAX_STEPS:
        raise ValueError(
            f"{what} = {last:.3g} steps is more than the {MAX_STEPS} a run can take; "
            "use a smaller horizon (T) or a coarser step"
        )
    steps = np.rint(raw).astype(np.int64)
    return steps, int(steps[-1])


def interval_bounds(steps) -> np.ndarray:
    """(start, stop) step of each record interval: the scan over records runs these loops."""
    steps = np.asarray(steps)
    return np.stack([np.concatenate([[0], steps[:-1]]), steps], axis=1).astype(np.int32)


def step_table(name, schedule, n_steps, D, allow_inf):
    """A schedule as values per step (length 1 for constants, so sweeps share one program)."""
    if is_constant(schedule):
        return time_schedule_values(
            name, schedule, np.zeros(1), allow_inf=allow_inf, allow_none=allow_inf
        )
    t_steps = np.arange(max(n_steps, 1), dtype=np.float64) / D
    return time_schedule_values(name, schedule, t_steps, allow_inf=allow_inf, allow_none=allow_inf)


def run_keys_traced(seed, first_run, runs):
    """Keys of runs first_run .. first_run + runs - 1 (callable inside a jitted program)."""
    base = jax.random.key(seed)
    ids = first_run + jnp.arange(runs, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(ids)


_keys = jax.jit(run_keys_traced, static_argnames=("runs",))


def check_seed(seed, first_run, runs):
    seed = V.count("seed", seed, lo=0)
    if seed >= 2**32 or first_run + runs > 2**32:
        raise ValueError(f"seed and run indices must be < 2^32, got seed {seed}")
    return jnp.uint32(seed), jnp.uint32(first_run)


def run_keys(seed, first_run, runs):
    """Keys of runs first_run .. first_run + runs - 1 of stream ``seed``."""
    return _keys(*check_seed(seed, first_run, runs), runs=runs)


def check_run_args(problem, problem_type, runs, first_run, divergence_threshold):
    """Validation shared by the Monte Carlo entry points: (runs, first_run, threshold)."""
    if not isinstance(problem, problem_type):
        raise ValueError(f"problem must be a {problem_type.__name__}, got {type(problem).__name__}")
    runs = V.count("runs", runs)
    first_run = V.count("first_run", first_run, lo=0)
    return runs, first_run, divergence_limit(divergence_threshold, problem.initial_risk)


def map_runs(one_run, tables, run_keys, chunk):
    """``one_run(table_rows, key)`` over every (cell, run) pair: result (cells, runs, ...).

    ``tables`` is a pytree of arrays with a leading cell axis (per-step schedules of each cell).
    Items are padded to whole chunks of ``chunk``; chunks run one after the other, each the same
    vmapped program (see ``chunk_size`` for why results do not depend on the batch).
    """
    n_cells = jax.tree.leaves(tables)[0].shape[0]
    n_runs = run_keys.shape[0]
    n_items = n_cells * n_runs
    n_chunks = -(-n_items // chunk)
    pad = n_chunks * chunk - n_items
    cell_of = jnp.concatenate([jnp.repeat(jnp.arange(n_cells), n_runs), jnp.zeros(pad, int)])
    run_of = jnp.concatenate([jnp.tile(jnp.arange(n_runs), n_cells), jnp.zeros(pad, int)])
    items = (jax.tree.map(lambda x: x[cell_of], tables), run_keys[run_of])
    items = jax.tree.map(lambda x: x.reshape((n_chunks, chunk) + x.shape[1:]), items)
    out = jax.lax.map(lambda it: jax.vmap(one_run)(*it), items)

    def unchunk(x):
        x = x.reshape((n_chunks * chunk,) + x.shape[2:])[:n_items]
        return x.reshape((n_cells, n_runs) + x.shape[1:])

    return jax.tree.map(unchunk, out)


def at_step(row, k):
    """A per-step table's value at step k (held at its last value past the end)."""
    return row[jnp.minimum(k, row.shape[0] - 1)]


def describe_schedule(schedule):
    if schedule is None or isinstance(schedule, (int, float)):
        return schedule
    if isinstance(schedule, RiskSchedule):
        return schedule.name
    if callable(schedule):
        return f"callable {getattr(schedule, '__name__', type(schedule).__name__)}"
    return "array schedule"
