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
    "check_memory",
    "check_work",
    "memory_limit",
    "SliceClock",
    "run_segmented",
    "chunk_items",
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
        check_memory("the record grid", {"record times": 48.0 * n_records}, "n_records")
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
    with np.errstate(over="ignore"):
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
        raise ValueError(
            f"seed and run indices must be < 2^32, got seed {seed} and runs up to "
            f"{int(first_run) + int(runs) - 1} (first_run + runs - 1)"
        )
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
    limit = divergence_limit(divergence_threshold, problem.initial_risk, problem.noise)
    return runs, first_run, limit


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


# ---------------------------------------------------------------------------------------------
# resource guards: memory and work, refused up front with the estimate and the limit
# ---------------------------------------------------------------------------------------------
GiB = float(2**30)
MEMORY_SAFETY = 0.7  # use at most this fraction of what the machine / rlimits allow
#: runs x steps x coordinates above which a Monte Carlo call is refused (~ hours at ~5 ns each)
MAX_WORK = 2e11


def _proc_kib(path, key):
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_limit() -> float:
    """Bytes a computation may use: min(MemAvailable, the room left under RLIMIT_AS / RLIMIT_DATA
    when set) x MEMORY_SAFETY."""
    avail = _proc_kib("/proc/meminfo", "MemAvailable")
    limits = [float(avail) if avail else math.inf]
    try:
        import resource

        for name, status_key in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
            soft = resource.getrlimit(getattr(resource, name))[0]
            if soft != resource.RLIM_INFINITY and soft > 0:
                used = _proc_kib("/proc/self/status", status_key) or 0
                limits.append(max(float(soft - used), 0.0))
    except (ImportError, AttributeError, OSError, ValueError):
        pass
    lim = min(limits)
    return (lim if math.isfinite(lim) else 64 * GiB) * MEMORY_SAFETY


def check_memory(what: str, parts: dict, reduce_hint: str) -> None:
    """Refuse before allocating: ``parts`` maps a description to its estimated bytes."""
    need = float(sum(parts.values()))
    limit = memory_limit()
    if not need <= limit:
        detail = ", ".join(f"{k} {v / GiB:.3g} GiB" for k, v in parts.items() if v >= 0.01 * need)
        raise ValueError(
            f"{what} needs about {need / GiB:.3g} GiB ({detail}), more than the "
            f"{limit / GiB:.3g} GiB available; reduce {reduce_hint}"
        )


def check_work(what: str, work: float, max_work, reduce_hint: str) -> None:
    """Refuse a computation of more than ``max_work`` runs x steps x coordinates (default
    MAX_WORK, ~15 CPU minutes): it would look like a hang. Pass a larger ``max_work`` to run it."""
    limit = MAX_WORK if max_work is None else V.positive("max_work", max_work)
    if not work <= limit:
        raise ValueError(
            f"{what} is about {work:.3g} runs x steps x coordinates (~{work * 5e-9 / 3600:.3g} "
            f"CPU hours at 5 ns each), above the limit {limit:.3g}; reduce {reduce_hint}, "
            "or pass max_work= to allow it"
        )


class out_of_memory_as_value_error:
    """Context manager: a MemoryError (or XLA's RESOURCE_EXHAUSTED) becomes one-line ValueError."""

    def __init__(self, what, reduce_hint):
        self.what, self.hint = what, reduce_hint

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        if issubclass(exc_type, MemoryError) or (
            "RESOURCE_EXHAUSTED" in str(exc)[:200] and not issubclass(exc_type, ValueError)
        ):
            raise ValueError(f"{self.what} ran out of memory; reduce {self.hint}") from None
        return False


# ---------------------------------------------------------------------------------------------
# slices of bounded wall time (Ctrl-C, progress)
# ---------------------------------------------------------------------------------------------
SLICE_SECONDS = 0.5  # target wall time of one compiled call
SEGMENTS = 64  # record segments per call (fixed: part of the compiled program's shape)
PROGRESS_AFTER = 3.0  # auto progress bar when the whole job is estimated to take longer


class SliceClock:
    """Sizes the slices of a long computation so that each call takes about SLICE_SECONDS.

    ``budget()`` gives the units (steps, blocks) of the next call; ``done(units)`` records that
    the call finished (the caller blocks on its result first). The first call's time is counted
    as compile time when it is far above the prior estimate. A tqdm bar (stderr) with the
    remaining time appears when the job is estimated to take more than PROGRESS_AFTER seconds
    (``progress=None``), always (True) or never (False). Python raises KeyboardInterrupt between
    calls, so Ctrl-C stops the job within about one slice.
    """

    def __init__(self, total_units, seconds_per_unit_guess, progress=None, what="simulate"):
        import time

        self._time = time.perf_counter
        self.total = max(int(total_units), 1)
        self.spu = max(float(seconds_per_unit_guess), 1e-12)
        self.progress = progress
        self.what = what
        self.done_units = 0
        self.calls = 0
        self.bar = None
        self.t_start = self._time()
        self._t_call = None
        if progress is True:
            self._open_bar()

    def budget(self) -> int:
        self._t_call = self._time()
        first = 0.25 if self.calls == 0 else SLICE_SECONDS
        return max(1, int(first / self.spu))

    def done(self, units: int) -> None:
        elapsed = self._time() - self._t_call
        units = max(int(units), 1)
        measured = elapsed / units
        if self.calls == 0 and measured > 4 * self.spu:
            # probably compile time: trust it only partly
            self.spu = math.sqrt(self.spu * measured)
        else:
            self.spu = min(measured, 4 * self.spu) if measured > 0 else self.spu
        self.calls += 1
        self.done_units += units
        if self.bar is None and self.progress is None and self.calls >= 2:
            remaining = (self.total - self.done_units) * self.spu
            if remaining > PROGRESS_AFTER:
                self._open_bar()
        if self.bar is not None:
            self.bar.update(min(units, self.total - self.bar.n))

    def _open_bar(self):
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            self.progress = False
            return
        self.bar = tqdm(
            total=self.total,
            initial=min(self.done_units, self.total),
            desc=self.what,
            unit="step",
            unit_scale=True,
            leave=False,
            dynamic_ncols=True,
        )

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def plan_segments(steps, pos: int, rec: int, budget: int, n_seg: int = SEGMENTS):
    """The next call's segments: (bounds (n_seg, 2) int32, is_record (n_seg,), pos, rec, units).

    Record intervals are cut into segments of at most ``budget`` steps in all; a segment that
    ends on a record time yields that record. Padding segments are empty (start = stop).
    """
    bounds, flags = [], []
    left = budget
    n_rec = len(steps)
    while len(bounds) < n_seg and rec < n_rec:
        target = int(steps[rec])
        if target <= pos:
            bounds.append((pos, pos))
            flags.append(True)
            rec += 1
            continue
        if left <= 0:
            break
        take = min(target - pos, left)
        bounds.append((pos, pos + take))
        pos += take
        left -= take
        hit = pos == target
        flags.append(hit)
        rec += int(hit)
    used = budget - left
    while len(bounds) < n_seg:
        bounds.append((pos, pos))
        flags.append(False)
    return np.asarray(bounds, dtype=np.int32), np.asarray(flags), pos, rec, used


def chunk_items(n_cells, n_runs, chunk):
    """(cell_of, run_of) per item padded to whole chunks (padding items repeat item 0)."""
    n_items = n_cells * n_runs
    n_chunks = -(-n_items // chunk)
    pad = n_chunks * chunk - n_items
    cell_of = np.concatenate([np.repeat(np.arange(n_cells), n_runs), np.zeros(pad, int)])
    run_of = np.concatenate([np.tile(np.arange(n_runs), n_cells), np.zeros(pad, int)])
    return cell_of.reshape(n_chunks, chunk), run_of.reshape(n_chunks, chunk)


def run_segmented(call, init, steps, n_chunks, clock):
    """Drive ``call(ci, carry, bounds) -> (carry, records)`` chunk by chunk, slice by slice.

    ``records`` is an array (chunk, SEGMENTS), or a dict of them (named statistics: "risk" and
    e.g. "clip", "bias"); the records at the record times are gathered into (n_chunks * chunk,
    len(steps)) float64 arrays (a dict if the call returns one). Each chunk starts from
    ``init(ci)``.
    """
    n_rec = len(steps)
    out = []
    try:
        for ci in range(n_chunks):
            carry = init(ci)
            pos, rec = 0, 0
            parts = []
            while rec < n_rec:
                b = clock.budget()
                bounds, flags, pos, rec, used = plan_segments(steps, pos, rec, b)
                carry, recs = call(ci, carry, jnp.asarray(bounds))
                named = recs if isinstance(recs, dict) else {None: recs}
                # np.asarray blocks until the call is done
                parts.append(
                    {k: np.asarray(v, dtype=np.float64)[:, flags] for k, v in named.items()}
                )
                clock.done(used)
            out.append({k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]})
    finally:
        clock.close()
    joined = {k: np.concatenate([o[k] for o in out], axis=0) for k in out[0]}
    return joined[None] if None in joined else joined


def check_table_range(tables: dict, dtype):
    """Per-step values (lr, clip, ...) the simulation dtype represents: nothing overflows to inf
    or underflows to a zero step (finite values within [tiny, max] / 1e6 of the dtype)."""
    info = jnp.finfo(dtype)
    lo, hi = float(info.tiny) * 1e6, float(info.max) / 1e6
    for name, values in tables.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v) & (v != 0)]  # exact zeros (e.g. noise_multiplier 0) are fine
        if v.size and (v.min() < lo or v.max() > hi):
            raise ValueError(
                f"{name}: values must lie in [{lo:.3g}, {hi:.3g}] to be simulated in "
                f"{jnp.dtype(dtype).name} (got {v.min():.3g} .. {v.max():.3g}); "
                "use dtype='float64' or rescale"
            )


def check_noise_range(noise, dtype):
    """Refuse a noise law whose scale the simulation dtype cannot carry: squared residuals and
    risks must stay representable (scale below sqrt(max) / 1e3: 1.8e16 in float32)."""
    m2 = noise.second_moment
    if math.isfinite(m2):
        scale = math.sqrt(m2)
    else:
        scale = float(getattr(noise, "_scale", 0.0))
    limit = math.sqrt(float(jnp.finfo(dtype).max)) / 1e3
    if not scale <= limit:
        raise ValueError(
            f"noise: its scale {scale:.3g} is beyond what {jnp.dtype(dtype).name} can simulate "
            f"(at most {limit:.3g}); rescale the problem or use dtype='float64'"
        )
