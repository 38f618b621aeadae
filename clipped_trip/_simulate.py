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
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._algorithm import Algorithm, as_algorithm
from ._engine import (
    check_noise_range,
    check_table_range,
    SliceClock,
    at_step,
    check_memory,
    check_run_args,
    check_seed,
    check_work,
    chunk_items,
    chunk_size,
    out_of_memory_as_value_error,
    record_grid,
    resolve_dtype,
    run_segmented,
)
from ._problem import Problem
from ._results import RiskPaths, mark_paths
from ._schedules import is_constant

__all__ = ["simulate", "sweep", "trace_count", "record_grid", "chunk_size"]

_TRACES = {"count": 0}
DEFAULT_RUN_CHUNK = None  # automatic: a power of two depending on the width d (x batch) only


def trace_count() -> int:
    """How many times the simulator core has been traced (compiled); for tests and benchmarks."""
    return _TRACES["count"]


@partial(jax.jit, static_argnames=("kernel", "noise"))
def _simulate_slice(model, rows, seed, ids, carry, bounds, kernel, noise):
    """One slice of one chunk: advance each item's carry (e, state) over the segments ``bounds``.

    ``rows``: per-item step tables {name: (chunk, knots)}; ``ids``: the items' run indices
    (first_run + j, uint32); ``carry``: (e (chunk, d), state); ``bounds``: (SEGMENTS, 2) step
    ranges, each followed by a record. The step's key is fold_in(fold_in(key(seed), j), k), the
    arithmetic per step is that of one uninterrupted loop: slices do not change a bit. The
    shapes depend on (chunk, d, knots) only: one compile per problem width, whatever the number
    of runs, cells, records or slices.
    """
    _TRACES["count"] += 1  # Python side effect: runs once per trace, never at run time
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(ids)

    def one_run(rows, key, carry):
        def step(k, carry):
            e, state = carry
            sched = {name: at_step(row, k) for name, row in rows.items()}
            return kernel.step(noise, model, sched, jax.random.fold_in(key, k), e, state)

        def interval(carry, bound):
            carry = jax.lax.fori_loop(bound[0], bound[1], step, carry)
            return carry, kernel.records(model, *carry)

        return jax.lax.scan(interval, carry, bounds)

    return jax.vmap(one_run)(rows, keys, carry)


def problem_model(problem, dt) -> dict:
    """The problem's arrays as the kernels see them (one pytree). ``"mean"`` is present only for
    non-centred data (SPEC 10): its presence is static, so centred problems run the v0.1 program."""
    model = {
        "sqrt_lam": jnp.asarray(np.sqrt(problem.eigenvalues), dt),
        "inv_D": jnp.asarray(1.0 / problem.D, dt),
        "sqrt_D": jnp.asarray(math.sqrt(problem.D), dt),
    }
    if problem.data_mean is not None:
        model["mean"] = jnp.asarray(problem.data_mean, dt)
    return model


def _init_carry(kernel, model, e0, rows):
    """Each item's (e0, optimiser state); the state may read the step-0 schedule (e.g. c_0)."""
    chunk = next(iter(rows.values())).shape[0]
    e = jnp.broadcast_to(e0, (chunk,) + e0.shape)
    state = jax.vmap(
        lambda row: kernel.init_state(model, {k: at_step(v, 0) for k, v in row.items()})
    )(rows)
    return (e, state)


def _estimates(problem, n_items, n_rec, width, chunk, knots, cells, itemsize):
    """Bytes of what a simulate call holds (the records dominate at many runs or records)."""
    return {
        "records (padded runs x records)": 4.0 * 8 * n_items * n_rec,
        "per-chunk working set (chunk x batch x d)": 8.0 * chunk * width * itemsize,
        "schedule tables": (8.0 * cells + 2.0 * itemsize * chunk) * knots,
        "problem arrays": 8.0 * 6 * problem.d,
    }


@dataclass(frozen=True, eq=False)
class RunSettings:
    """The run settings of one simulate or sweep call as the caller gave them (``_run`` checks
    them): one bundle, so that simulate, sweep, ``_run`` and the devices backend (which rebuilds
    simulate's call) do not each repeat the list."""

    T: object
    runs: int
    seed: int
    times: object
    n_records: int
    dtype: object
    first_run: int
    threshold: object  # divergence_threshold (None: the default level)
    chunk: object  # run_chunk
    progress: object = None
    max_work: object = None


def _run(problem, algorithms, settings: RunSettings):
    """Run every algorithm (cells of one kernel) on the same random stream: the raw records
    (divergence not yet marked) and the checked divergence level."""
    s = settings
    runs, first_run, threshold = check_run_args(problem, Problem, s.runs, s.first_run, s.threshold)
    for alg in algorithms[:1]:  # the cells of a sweep share the algorithm class
        alg.check_problem(problem)
    dt = resolve_dtype(s.dtype)
    check_noise_range(problem.noise, dt)
    kernel = algorithms[0].kernel()
    D = problem.D
    batch = algorithms[0].samples_per_step()
    width = problem.d * batch
    chunk = chunk_size(width, s.chunk, minimum=16 if batch == 1 else 1)
    n_cells = len(algorithms)
    n_items = -(-(n_cells * runs) // chunk) * chunk
    n_rec = V.count("n_records", s.n_records, lo=2) if s.times is None else np.size(s.times)
    # before the record grid is built: the records of every padded run dominate at many runs
    check_memory(
        "simulate",
        {"records (padded runs x records)": 4.0 * 8 * n_items * n_rec},
        "runs or n_records",
    )
    t, steps, n_steps = record_grid(D, s.T, s.times, s.n_records)
    knots = (
        1
        if all(is_constant(getattr(a, n, None)) for a in algorithms for n in ("lr", "clip"))
        else n_steps
    )
    parts = _estimates(problem, n_items, len(t), width, chunk, knots, n_cells, dt.itemsize)
    check_memory("simulate", parts, "runs, n_records, d, batch or run_chunk")
    check_work("simulate", float(n_items) * max(n_steps, 1) * width, s.max_work, "runs, T or d")
    seed_, first_ = check_seed(s.seed, first_run, runs)
    with out_of_memory_as_value_error("simulate", "runs, n_records, d or run_chunk"):
        per_cell = [alg.step_tables(n_steps, D) for alg in algorithms]
        tables = {name: np.stack([cell[name] for cell in per_cell]) for name in per_cell[0]}
        check_table_range(tables, dt)
        model = problem_model(problem, dt)
        e0 = jnp.asarray(problem.initial_error, dt)
        cell_of, run_of = chunk_items(n_cells, runs, chunk)
        ids = (int(first_) + run_of).astype(np.uint32)
        clock = SliceClock(
            len(cell_of) * max(n_steps, 1), 5e-9 * chunk * width, s.progress, "simulate"
        )
        rows_of = {}

        def init(ci):
            rows_of.clear()
            rows_of[ci] = {k: jnp.asarray(v[cell_of[ci]], dt) for k, v in tables.items()}
            return _init_carry(kernel, model, e0, rows_of[ci])

        def call(ci, carry, bounds):
            return _simulate_slice(
                model,
                rows_of[ci],
                seed_,
                jnp.asarray(ids[ci]),
                carry,
                bounds,
                kernel,
                problem.noise,
            )

        records = run_segmented(call, init, steps, len(cell_of), clock)
    risk = records.pop("risk")[: n_cells * runs].reshape(n_cells, runs, -1)
    stats = {k: v[: n_cells * runs].reshape(n_cells, runs, -1) for k, v in records.items()}
    t_true = steps / D  # the times actually simulated (record times rounded to steps)
    return t_true, steps, risk, batch, stats, threshold


def sgd_paths(problem, alg, settings: RunSettings, t, steps, batch, risk, stats, threshold):
    """One algorithm's raw records (runs x records) as :func:`simulate` returns them:
    divergence marked, params (v0.1's lr and clip, the time of an infinite mean), samples.
    The devices backend builds its results with it too (bit-identical to simulate)."""
    risk, diverged, when, stats = mark_paths(risk, stats, t, threshold)
    params = {
        "kind": "sgd",
        **_legacy_fields(alg),
        "algorithm": alg.describe(),
        "T": float(t[-1]),
        "runs": settings.runs,
        "seed": settings.seed,
        "first_run": settings.first_run,
        "dtype": str(settings.dtype),
        "problem": problem.describe(),
    }
    inf_from = infinite_mean_from(problem.noise, alg, int(steps[-1]), problem.D)
    if inf_from is not None:
        params["infinite_mean_from"] = inf_from
    return RiskPaths(t, risk, diverged, when, params, samples=batch * steps, stats=stats)


def infinite_mean_from(noise, alg, n_steps, D):
    """Time after which E[risk] is infinite for this algorithm (first unclipped step under noise
    of infinite variance), or None."""
    if math.isfinite(noise.second_moment):
        return None
    clip = alg.step_tables(n_steps, D)["clip"]
    unclipped = np.flatnonzero(np.isinf(clip))
    if unclipped.size == 0:
        return None
    return float(unclipped[0] / D) if clip.size > 1 else 0.0


def simulate(
    problem: Problem,
    algorithm=None,
    clip=None,
    T=None,
    runs: int = 16,
    seed: int = 0,
    times=None,
    *,
    lr=None,
    n_records: int = 101,
    dtype="float32",
    first_run: int = 0,
    divergence_threshold=None,
    run_chunk: int = DEFAULT_RUN_CHUNK,
    progress=None,
    max_work=None,
) -> RiskPaths:
    """Run streaming SGD with any algorithm ``runs`` times and record the excess risk.

    ``simulate(problem, ClippedSGD(lr, clip, batch=B, clip_mode=...), T=..., runs=...)``; the
    v0.1 form ``simulate(problem, lr, clip, ...)`` is the same as ``ClippedSGD(lr, clip)``
    (bit-identical).

    Args:
        problem: the :class:`Problem` (spectrum, x0, x*, noise).
        algorithm: an algorithm object (:class:`ClippedSGD`, ...), or the learning rate gamma
            (step gamma / D: a number > 0, a callable of t, or (times, values)) with ``clip``.
        clip: with a learning rate only: c in residual units (gradient clipped at norm
            c sqrt(D)); None / inf = plain SGD. Same forms as ``lr``.
        T: horizon (round(T D) steps). Optional when ``times`` is given.
        runs: how many runs (``first_run .. first_run + runs - 1`` of stream ``seed``).
        seed: the random stream (an integer in [0, 2^32)).
        first_run: index of the first run of the stream.
        times: record times (exactly those); default ``n_records`` even points on [0, T].
        dtype: "float32" (default) or "float64" (needs jax_enable_x64).
        divergence_threshold: the divergence level L: a run whose risk passes L and stays above
            until the end is diverged from then on (default 1e6 max(R0, E[eps^2]); see
            :func:`clipped_trip._results.divergence_limit`).
        run_chunk: runs advanced together (vectorised); default a power of two set by d (x batch)
            alone. Results are bit-identical for a given ``run_chunk`` whatever ``runs`` and
            ``first_run``. Raise it on a GPU.
        progress: a progress bar with the time left (stderr): None (default) when the run is
            estimated to take more than a few seconds, True always, False never.
        max_work: refuse calls above this many runs x steps x coordinates (default 2e11, ~15
            CPU minutes at 5 ns each). Memory is checked up front too (records, working set,
            tables): a call that would not fit is refused with the estimate and the limit.

    The work runs in slices of about half a second (the same compiled program, its state passed
    from one slice to the next: bit-identical to one uninterrupted loop), so Ctrl-C
    (KeyboardInterrupt) stops it within about a second.

    Returns:
        :class:`RiskPaths` with ``.t``, ``.risk`` (runs x len(t)), ``.diverged``, ``.samples``
        (examples used up to each record time: batch x steps).

    References: arXiv 2406.11733, clipped SGD (Sec. 2); SPEC sections 1-2, 8, 13.
    """
    alg = as_algorithm(algorithm, clip, "simulate", lr)
    settings = RunSettings(
        T,
        runs,
        seed,
        times,
        n_records,
        dtype,
        first_run,
        divergence_threshold,
        run_chunk,
        progress,
        max_work,
    )
    t, steps, risk, batch, stats, threshold = _run(problem, [alg], settings)
    stats = {k: v[0] for k, v in stats.items()}
    return sgd_paths(problem, alg, settings, t, steps, batch, risk[0], stats, threshold)


def _legacy_fields(alg):
    """lr and clip at the top level of params, as v0.1 wrote them."""
    desc = alg.describe()
    return {k: desc[k] for k in ("lr", "clip") if k in desc}


def sweep(
    problem: Problem,
    lrs,
    clips=None,
    T=None,
    runs: int = 16,
    seed: int = 0,
    times=None,
    *,
    n_records: int = 101,
    dtype="float32",
    divergence_threshold=None,
    run_chunk: int = DEFAULT_RUN_CHUNK,
    algorithm=None,
    progress=None,
    max_work=None,
) -> RiskPaths:
    """An algorithm over the grid lrs x clips in one compiled program (same random stream per cell).

    ``sweep(problem, lrs, clips, ...)`` sweeps :class:`ClippedSGD` (batch 1);
    ``sweep(problem, lrs, clips, algorithm=ClippedSGD(1.0, batch=16, clip_mode="mean"))``
    sweeps that algorithm's lr and clip (its other settings held); ``sweep(problem, algorithm,
    clips)`` holds its lr. ``clips`` may contain None / inf (no clipping). Returns
    :class:`RiskPaths` whose ``risk`` has shape (len(lrs), len(clips), runs, len(t));
    ``params['lrs']`` and ``params['clips']`` hold the grid. A new grid of the same shape never
    recompiles; a new batch size compiles once.
    """
    from ._clipped_sgd import ClippedSGD

    base = algorithm if algorithm is not None else ClippedSGD(1.0, None)
    if isinstance(lrs, Algorithm):  # sweep(problem, algorithm, clips): lr held at its value
        if algorithm is not None:
            raise ValueError("sweep: give the algorithm once (second argument or algorithm=)")
        base, lrs = lrs, [lrs.lr]
        clips = [base.clip] if clips is None else clips
    if not isinstance(base, Algorithm):
        raise ValueError(f"algorithm must be an algorithm such as ClippedSGD, got {base!r}")
    if clips is None:
        raise ValueError("clips must be a list of thresholds > 0 (None for no clipping)")
    settings = RunSettings(
        T,
        runs,
        seed,
        times,
        n_records,
        dtype,
        0,
        divergence_threshold,
        run_chunk,
        progress,
        max_work,
    )
    return _sweep(problem, base, lrs, clips, settings)


def _sweep(problem, base, lrs, clips, settings: RunSettings):
    if isinstance(lrs, (str, bytes)) or not hasattr(lrs, "__iter__"):
        raise ValueError(f"lrs must be a list of learning rates > 0, got {lrs!r}")
    if isinstance(clips, (str, bytes)) or not hasattr(clips, "__iter__"):
        raise ValueError(
            f"clips must be a list of thresholds > 0 (None for no clipping), got {clips!r}"
        )
    lrs = [V.positive("lr", x) for x in lrs]
    clips = [math.inf if c is None else V.positive("clip", c, allow_inf=True) for c in clips]
    if not lrs or not clips:
        raise ValueError("lrs and clips must each hold at least one value")
    cells = [base.replace(lr=lr, clip=c) for lr in lrs for c in clips]
    t, steps, risk, batch, stats, threshold = _run(problem, cells, settings)
    risk, diverged, when, stats = mark_paths(risk, stats, t, threshold)
    runs = settings.runs
    shape = (len(lrs), len(clips))
    params = {
        "kind": "sgd-sweep",
        "lrs": lrs,
        "clips": clips,
        "algorithm": base.describe(),
        "T": float(t[-1]),
        "runs": runs,
        "seed": settings.seed,
        "dtype": str(settings.dtype),
        "problem": problem.describe(),
    }
    inf_from = [infinite_mean_from(problem.noise, c, int(steps[-1]), problem.D) for c in cells]
    if any(x is not None for x in inf_from):
        params["infinite_mean_from"] = [
            inf_from[i * len(clips) : (i + 1) * len(clips)] for i in range(len(lrs))
        ]
    return RiskPaths(
        t,
        risk.reshape(shape + risk.shape[1:]),
        diverged.reshape(shape + (runs,)),
        when.reshape(shape + (runs,)),
        params,
        samples=batch * steps,
        stats={k: v.reshape(shape + v.shape[1:]) for k, v in stats.items()},
    )
