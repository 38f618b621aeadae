"""Run a :class:`SweepSpec` into a result store, in-process, over local devices, or on Dask.

``run_sweep(spec, out, backend=..., workers=..., scheduler=..., progress=...)`` splits the sweep
into work units (a cell's runs in blocks), skips those already in ``out`` (resume) and computes
the others with one of three backends; each finished unit is written at once, atomically, so
Ctrl-C or a killed worker loses only the units in flight. Run j of cell i is run j of stream
``seed`` whichever backend, worker or block computes it: the arrays are bit-identical.

Backends:

* ``"inprocess"`` (default, no dependency): units one after the other in this process.
* ``"devices"``: the run axis sharded over all local JAX devices (``jax.shard_map`` over a
  one-axis ``Mesh``): each device advances one run chunk of the same compiled program that
  ``simulate`` uses, so the bits do not change. Units of cells that share the problem and the
  algorithm's kernel are packed together. On CPU, test it with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX starts.
* ``"dask"``: Dask distributed (``pip install 'clipped_trip[dask]'``). ``workers=N`` starts a
  ``LocalCluster`` of N processes (spawned, one thread each, XLA kept to one compute thread
  with ``--xla_cpu_multi_thread_eigen=false``, a JAX compilation cache folder per worker under
  $CLIPPED_TRIP_CACHE or ~/.cache/clipped_trip/xla unless CLIPPED_TRIP_NO_CACHE is set);
  ``scheduler="tcp://host:8786"`` joins a running cluster instead. Each task is a plain
  function that builds the cell, compiles (once per worker and shape), simulates and writes
  its unit into the store itself; only the unit id comes back through the scheduler. A worker
  that dies mid-unit has that unit rerun elsewhere by the scheduler. The store must be on a
  filesystem every worker sees at the same path.

Clusters (not tested here; any Dask cluster works through ``scheduler=``)::

    # Slurm, with dask-jobqueue: one single-threaded worker per job, store on shared disk
    from dask_jobqueue import SLURMCluster
    one_thread = "export XLA_FLAGS=--xla_cpu_multi_thread_eigen=false"
    cluster = SLURMCluster(cores=1, processes=1, memory="4GB", walltime="02:00:00",
                           job_script_prologue=[one_thread])
    cluster.scale(jobs=64)  # or cluster.adapt(minimum_jobs=1, maximum_jobs=64)
    run_sweep(spec, "/scratch/$USER/sweep-a", backend="dask", scheduler=cluster.scheduler_address)

    # Kubernetes, with dask-kubernetes (operator): the image has clipped_trip installed and a
    # ReadWriteMany volume mounted at the same path in every worker and in the client
    from dask_kubernetes.operator import KubeCluster
    cluster = KubeCluster(name="sweep", image="ghcr.io/you/clipped-trip:0.2", n_workers=32,
                          resources={"requests": {"cpu": "1", "memory": "2G"}},
                          env={"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"})
    run_sweep(spec, "/data/sweep-a", backend="dask", scheduler=cluster.scheduler_address)

A killed client (or a preempted job) resumes with the same call: finished units are skipped.

Throughput, from benchmarks/backends.py on the 2-core development machine while it was heavily
loaded (load average 8-9: each core shared about four ways; an idle core does better):

* in-process, compiled: 5 cells/s for cells of 64 runs x 430 steps at d = 200 (run_chunk 32,
  about 36 ns per run x step x coordinate), 15 cells/s for 32 runs x 172 steps. A work unit
  has a fixed cost of about 10-15 ms (the program call, the npz and its sidecar with its
  SHA-256). Per core, expect cells/s ~ 1 / (units per cell x 0.015 s + runs x steps x d x t)
  with t about 5 ns on an idle core at the automatic run chunk, up to ~40 ns as measured here.
* Dask, 2 local workers: 1.6-1.7x the in-process throughput on that 2-core box, after ~5 s of
  cluster start and a first compilation on each worker (~5-15 s under that load); 13-29 ms of
  wall time per unit. Worth it for units of ~0.1 s and more, and on many cores or nodes.
* devices, 2 forced CPU devices: 1.4-2.0x in-process (each device one run chunk per call).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ._store import SweepResult, SweepStore, load_sweep
from ._sweep_spec import SweepSpec, WorkUnit

__all__ = [
    "run_sweep",
    "load_sweep",
    "BACKENDS",
    "local_cluster",
    "compute_unit",
    "add_arguments",
    "cli_command",
]

BACKENDS = ("inprocess", "devices", "dask")
DASK_EXTRA = "pip install 'clipped_trip[dask]'"
#: environment of LocalCluster workers: one compute thread each (the cores go to the workers)
WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
ODE_RTOL = 1e-8  # the table's ODE prediction: cheap, far below the Monte Carlo error


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is missing (one line naming the extra to install)."""


# ---------------------------------------------------------------------------------------------
# one work unit (shared by every backend that runs simulate itself)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _built(spec: SweepSpec, cell: int):
    return spec.build(cell)


@functools.lru_cache(maxsize=8)
def _spec_from_json(text: str) -> SweepSpec:
    return SweepSpec.from_json(text)


def _ode_record(problem, alg, t) -> dict:
    """The ODE's final risk at the last record time, or the reason there is none."""
    from ._ode import solve_ode

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ode = solve_ode(problem, alg, times=np.asarray(t), rtol=ODE_RTOL)
        return {"final_risk": float(ode.risk[-1]), "method": ode.params.get("method")}
    except Exception as err:  # noqa: BLE001 - no ODE for this algorithm / problem: no column
        return {"final_risk": None, "error": " ".join(f"{type(err).__name__}: {err}".split())}


def _unit_extra(spec, unit, problem, alg, t) -> dict:
    if spec.ode and unit.first_run == 0:
        return {"ode": _ode_record(problem, alg, t)}
    return {}


def compute_unit(store: SweepStore, unit: WorkUnit) -> str:
    """Simulate one work unit with :func:`simulate` and write it into the store; returns its
    id. A unit already finished is left as it is."""
    from ._simulate import simulate

    spec = store.spec
    if store.unit_path(unit).exists():
        return unit.id
    problem, alg = _built(spec, unit.cell)
    res = simulate(
        problem,
        alg,
        T=spec.T,
        runs=unit.runs,
        seed=spec.seed,
        first_run=unit.first_run,
        n_records=spec.n_records,
        dtype=spec.dtype,
        run_chunk=spec.chunk(unit.cell),
        progress=False,
    )
    store.write_unit(unit, res, _unit_extra(spec, unit, problem, alg, res.t))
    return unit.id


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------
class _Progress:
    """progress=None: a bar on an interactive stderr; True: always; False: never; a callable:
    called as f(done, total) after each finished unit."""

    def __init__(self, progress, total, done):
        self.total, self.done = total, done
        self.fn = progress if callable(progress) and not isinstance(progress, bool) else None
        show = progress is True or (progress is None and sys.stderr.isatty())
        self.bar = None
        if show and self.fn is None and total > done:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc="sweep", unit="unit", leave=False)

    def update(self, n=1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.fn is not None:
            self.fn(self.done, self.total)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------
def _run_inprocess(store, pending, progress):
    computed = []
    for unit in pending:
        compute_unit(store, unit)
        computed.append(unit.id)
        progress.update()
    return computed


def _group_key(spec, unit):
    problem_settings, _ = spec.cell_settings(unit.cell)
    _, alg = _built(spec, unit.cell)
    return (
        json.dumps(problem_settings, sort_keys=True),
        alg.kernel(),
        alg.samples_per_step(),
        spec.chunk(unit.cell),
    )


@functools.lru_cache(maxsize=32)
def _sharded_slice(mesh, kernel, noise):
    """simulate's slice program under shard_map: each device runs it on its own run chunk."""
    import jax
    from jax.sharding import PartitionSpec as P

    from ._simulate import _simulate_slice

    body = functools.partial(_simulate_slice.__wrapped__, kernel=kernel, noise=noise)
    runs = P("runs")
    specs = dict(mesh=mesh, in_specs=(P(), runs, P(), runs, runs, P()), out_specs=(runs, runs))
    if hasattr(jax, "shard_map"):
        mapped = jax.shard_map(body, check_vma=False, **specs)
    else:  # JAX < 0.7
        from jax.experimental.shard_map import shard_map

        mapped = shard_map(body, check_rep=False, **specs)
    return jax.jit(mapped)


def _run_devices(store, pending, progress):
    """Units packed into calls of (devices x run chunk) runs, each device one chunk."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    spec = store.spec
    devices = jax.local_devices()
    mesh = Mesh(np.array(devices), ("runs",))
    sharded = NamedSharding(mesh, P("runs"))
    groups: dict = {}
    for unit in pending:
        groups.setdefault(_group_key(spec, unit), []).append(unit)
    computed = []
    for key, units in groups.items():
        chunk = key[3]
        wave_items = len(devices) * chunk
        wave: list = []
        for unit in units:
            wave.append(unit)
            if sum(u.runs for u in wave) >= wave_items:
                computed += _device_wave(store, wave, mesh, sharded, chunk, progress)
                wave = []
        if wave:
            computed += _device_wave(store, wave, mesh, sharded, chunk, progress)
    return computed


def _device_wave(store, wave, mesh, sharded, chunk, progress):
    """Simulate the units of ``wave`` (one problem, one kernel) sharded over the devices and
    write each: the same per-run arithmetic, keys and post-processing as ``simulate``."""
    import jax
    import jax.numpy as jnp

    from ._engine import (
        SliceClock,
        check_noise_range,
        check_seed,
        check_table_range,
        record_grid,
        resolve_dtype,
        run_segmented,
    )
    from ._results import divergence_limit
    from ._simulate import RunSettings, _init_carry, problem_model, sgd_paths

    spec = store.spec
    n_dev = mesh.devices.size
    problem, alg0 = _built(spec, wave[0].cell)
    algs = [_built(spec, u.cell)[1] for u in wave]
    for alg in algs:
        alg.check_problem(problem)
    dt = resolve_dtype(spec.dtype)
    check_noise_range(problem.noise, dt)
    kernel = alg0.kernel()
    batch = alg0.samples_per_step()
    D = problem.D
    t, steps, n_steps = record_grid(D, spec.T, None, spec.n_records)
    per_unit = [a.step_tables(n_steps, D) for a in algs]
    names = list(per_unit[0])
    knots = {k: max(np.size(p[k]) for p in per_unit) for k in names}
    for p in per_unit:  # constants are length 1, schedules n_steps: one program needs one shape
        if list(p) != names or any(np.size(p[k]) != knots[k] for k in names):
            return [_compute_alone(store, u, progress) for u in wave]
    tables = {k: np.stack([np.asarray(p[k], dtype=np.float64) for p in per_unit]) for k in names}
    check_table_range(tables, dt)
    seed_, _ = check_seed(spec.seed, 0, max(u.first_run + u.runs for u in wave))

    unit_of = np.concatenate([np.full(u.runs, j) for j, u in enumerate(wave)])
    run_of = np.concatenate([u.first_run + np.arange(u.runs) for u in wave])
    group = n_dev * chunk
    n_items = unit_of.size
    n_calls = -(-n_items // group)
    pad = n_calls * group - n_items  # padding items repeat item 0 (as chunk_items does)
    unit_of = np.concatenate([unit_of, np.zeros(pad, int)]).reshape(n_calls, group)
    ids = np.concatenate([run_of, np.full(pad, run_of[0])]).astype(np.uint32)
    ids = ids.reshape(n_calls, group)

    model = problem_model(problem, dt)
    e0 = jnp.asarray(problem.initial_error, dt)
    fn = _sharded_slice(mesh, kernel, problem.noise)
    state = {}

    def init(ci):
        state.clear()
        rows = {k: np.asarray(v[unit_of[ci]]) for k, v in tables.items()}
        # each chunk's initial carry exactly as simulate builds it (same shapes)
        parts = [
            _init_carry(
                kernel,
                model,
                e0,
                {k: jnp.asarray(v[j * chunk : (j + 1) * chunk], dt) for k, v in rows.items()},
            )
            for j in range(n_dev)
        ]
        carry = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)
        state["rows"] = jax.device_put({k: np.asarray(v, dt) for k, v in rows.items()}, sharded)
        state["ids"] = jax.device_put(ids[ci], sharded)
        return jax.device_put(carry, sharded)

    def call(ci, carry, bounds):
        return fn(model, state["rows"], seed_, state["ids"], carry, bounds)

    clock = SliceClock(n_calls * max(n_steps, 1), 5e-9 * chunk * problem.d * batch, False)
    records = run_segmented(call, init, steps, n_calls, clock)
    named = records if isinstance(records, dict) else {"risk": records}
    t_true = steps / D
    threshold = divergence_limit(None, problem.initial_risk, problem.noise)
    computed, start = [], 0
    for unit, alg in zip(wave, algs):
        sl = slice(start, start + unit.runs)
        start += unit.runs
        stats = {k: v[sl] for k, v in named.items() if k != "risk"}
        # the settings of compute_unit's simulate call: simulate's own post-processing and params
        settings = RunSettings(
            T=spec.T,
            runs=unit.runs,
            seed=spec.seed,
            times=None,
            n_records=spec.n_records,
            dtype=spec.dtype,
            first_run=unit.first_run,
            threshold=None,
            chunk=chunk,
        )
        risk = named["risk"][sl]
        res = sgd_paths(problem, alg, settings, t_true, steps, batch, risk, stats, threshold)
        store.write_unit(unit, res, _unit_extra(spec, unit, problem, alg, t_true))
        computed.append(unit.id)
        progress.update()
    return computed


def _compute_alone(store, unit, progress):
    compute_unit(store, unit)
    progress.update()
    return unit.id


# --- Dask --------------------------------------------------------------------------------------
def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise MissingExtraError(
            f"backend 'dask' needs Dask distributed, an optional extra: {DASK_EXTRA}"
        ) from None
    return distributed


def _worker_env() -> dict:
    env = dict(WORKER_ENV)
    inherited = os.environ.get("XLA_FLAGS", "").strip()
    if inherited:
        env["XLA_FLAGS"] = f"{inherited} {WORKER_ENV['XLA_FLAGS']}"
    return env


def local_cluster(workers: int, **kwargs):
    """A ``distributed.LocalCluster`` as the dask backend starts it: ``workers`` spawned
    processes, one thread each, one XLA compute thread each, no dashboard."""
    import logging

    distributed = _import_distributed()
    opts = dict(
        n_workers=int(workers),
        threads_per_worker=1,
        processes=True,
        env=_worker_env(),
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    opts.update(kwargs)
    return distributed.LocalCluster(**opts)


_WORKER_STATE: dict = {}


def _cache_root():
    if os.environ.get("CLIPPED_TRIP_NO_CACHE"):
        return None
    return os.environ.get("CLIPPED_TRIP_CACHE") or str(Path.home() / ".cache/clipped_trip/xla")


def _worker_setup(x64: bool, cache_root):
    """Once per worker process: JAX's 64-bit mode as in the client (it is part of what fixes the
    bits), a compilation cache folder of its own."""
    import jax

    if bool(jax.config.jax_enable_x64) != x64:
        jax.config.update("jax_enable_x64", x64)
    if cache_root and "cache" not in _WORKER_STATE:
        try:
            from distributed import get_worker

            name = "".join(c if c.isalnum() else "-" for c in str(get_worker().name))
        except (ImportError, ValueError):
            name = str(os.getpid())
        try:
            from ._config import enable_compilation_cache

            _WORKER_STATE["cache"] = enable_compilation_cache(Path(cache_root) / f"dask-{name}")
        except OSError:  # read-only home: compile each time
            _WORKER_STATE["cache"] = None


def _dask_unit(out: str, spec_json: str, uid: str, x64: bool, cache_root) -> str:
    """The task a Dask worker runs: one unit computed and written into the store."""
    _worker_setup(x64, cache_root)
    spec = _spec_from_json(spec_json)
    return compute_unit(SweepStore(out, spec), WorkUnit.from_id(uid))


def _run_dask(store, pending, progress, workers, scheduler):
    import jax

    distributed = _import_distributed()
    cluster = None
    if scheduler is None:
        cluster = local_cluster(workers)
        client = distributed.Client(cluster, set_as_default=False)
    else:
        client = distributed.Client(scheduler, set_as_default=False)
    spec_json = store.spec.to_json()
    x64 = bool(jax.config.jax_enable_x64)
    tag = store.spec.fingerprint[:12]
    futures = []
    computed = []
    try:
        futures = [
            client.submit(
                _dask_unit,
                str(store.out),
                spec_json,
                u.id,
                x64,
                _cache_root(),
                key=f"clipped-trip-{tag}-{u.id}",
                pure=False,
            )
            for u in pending
        ]
        # as_completed waits on the default client's loop unless told: a process that already
        # holds a Client (a notebook, a test) would bind a lost-and-retried future to the wrong loop
        for fut in distributed.as_completed(futures, loop=client.loop):
            computed.append(fut.result())
            progress.update()
    except BaseException:
        if futures:
            client.cancel(futures)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    missing = [uid for uid in computed if not (store.units_dir / f"{uid}.npz").exists()]
    if missing:
        raise ValueError(
            f"the workers wrote {len(missing)} units this process does not see in "
            f"{str(store.units_dir)!r}: the store must be on a filesystem shared with them"
        )
    return computed


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------
def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _as_spec(spec) -> SweepSpec:
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return SweepSpec.from_dict(spec)
    if isinstance(spec, (str, Path)):
        return SweepSpec.from_file(spec)
    raise ValueError(f"spec must be a SweepSpec, a dict or a .toml/.json path, got {spec!r}")


def run_sweep(
    spec,
    out,
    *,
    backend: str = "inprocess",
    workers: int | None = None,
    scheduler: str | None = None,
    progress=None,
) -> SweepResult:
    """Run (or resume) a sweep into the store ``out`` and return its table.

    Args:
        spec: a :class:`SweepSpec`, its dict, or a .toml / .json file.
        out: the store directory: created with the spec; an existing one must hold the same
            spec (else ValueError). Finished units found there are not recomputed.
        backend: "inprocess" (default), "devices" (the run axis sharded over every local JAX
            device) or "dask" (needs the ``dask`` extra).
        workers: dask only: start a LocalCluster of this many single-threaded worker processes
            (default: one per core).
        scheduler: dask only: address of a running scheduler to use instead.
        progress: None (a bar when stderr is a terminal), True, False, or f(done, total).

    Returns:
        :class:`SweepResult` (table, paths; ``.cell(i)`` gives cell i's RiskPaths).

    With ``workers=`` (Dask spawns its worker processes), a script must call this under
    ``if __name__ == "__main__":``, as any multiprocessing program.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "dask" and (workers is not None or scheduler is not None):
        raise ValueError(f"workers and scheduler apply to backend 'dask', not {backend!r}")
    if workers is not None and scheduler is not None:
        raise ValueError("give workers (start a local cluster) or scheduler (join one), not both")
    if workers is not None:
        from . import _validate as V

        workers = V.count("workers", workers)
    if backend == "dask":
        _import_distributed()
        if workers is None and scheduler is None:
            workers = _cores()
    spec = _as_spec(spec)
    spec.validate()
    store = SweepStore.create(out, spec)
    units = spec.units()
    pending = store.pending(units)
    waiting = {u.id for u in pending}
    skipped = tuple(u.id for u in units if u.id not in waiting)
    bar = _Progress(progress, len(units), len(units) - len(pending))
    computed = []
    try:
        if pending:
            if backend == "inprocess":
                computed = _run_inprocess(store, pending, bar)
            elif backend == "devices":
                computed = _run_devices(store, pending, bar)
            else:
                computed = _run_dask(store, pending, bar, workers, scheduler)
    finally:
        bar.close()
    rows = store.table_rows()
    store.write_table(rows)
    done = store.finished_ids()
    return SweepResult(
        spec,
        store.out,
        rows,
        len(units),
        sum(u.id in done for u in units),
        computed=tuple(computed),
        skipped=skipped,
        backend=backend,
        _store=store,
    )


# ---------------------------------------------------------------------------------------------
# command line (cli.py adds the sub-command; see add_arguments)
# ---------------------------------------------------------------------------------------------
def add_arguments(parser):
    """The options of ``clipped-trip run-sweep`` on an argparse (sub)parser."""
    parser.add_argument(
        "spec",
        nargs="?",
        metavar="SPEC",
        help="sweep spec (.toml or .json); optional when --out already holds one (resume)",
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="the result store folder")
    parser.add_argument("--backend", metavar="NAME", default="inprocess", help=" | ".join(BACKENDS))
    parser.add_argument(
        "--workers", metavar="N", help="dask: start a local cluster of N worker processes"
    )
    parser.add_argument(
        "--scheduler", metavar="ADDRESS", help="dask: join a running scheduler (tcp://host:port)"
    )
    parser.add_argument("--quiet", action="store_true", default=None, help="no progress bar")


def cli_command(args) -> int:
    """``clipped-trip run-sweep``: run or resume a sweep, print the table path and a summary."""
    out = Path(args.out)
    if args.spec is None:
        from ._store import _read_spec

        spec = _read_spec(out)
    else:
        spec = SweepSpec.from_file(args.spec)
    try:
        res = run_sweep(
            spec,
            out,
            backend=args.backend,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=False if args.quiet else None,
        )
    except KeyboardInterrupt:
        print(
            f"finished units are kept in {out}; run the same command again to resume",
            file=sys.stderr,
        )
        raise
    print(
        f"{len(res.computed)} units computed, {len(res.skipped)} already there; "
        f"{res.units_done} of {res.units_total} done ({res.spec.n_cells} cells)"
    )
    print(f"wrote {res.table_path}")
    return 0
