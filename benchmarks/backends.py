"""Sweep backends on one machine: in-process vs a 2-worker Dask LocalCluster vs 2 forced CPU
devices, on the same 32-cell Monte Carlo sweep (and the fixed cost per work unit).

    python benchmarks/backends.py [--quick] [--json PATH]

Sweep: d = 200, power-law spectrum (alpha 0.2), Student-t noise (df 3, scale 0.5), clipped SGD,
lr x clip = 4 x 8 = 32 cells, 64 runs per cell in units of 32 runs (64 units), T = 5, 21 records,
no ODE column (Monte Carlo only). Every backend runs warm (compiled) for the steady-state numbers;
cold numbers (start-up and compilation included) are printed as well. The per-unit overhead is
measured on 64 units that do almost no arithmetic (T = 0.05).

The machine's load average is printed at the start and the end: on a shared machine the ratios
are what they are at that load, not what an idle machine gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from clipped_trip._backends import local_cluster, run_sweep  # noqa: E402
from clipped_trip._sweep_spec import SweepSpec  # noqa: E402


def sweep_spec(quick: bool) -> SweepSpec:
    return SweepSpec(
        problem={"spectrum": "power-law:alpha=0.2", "d": 200, "noise": "student-t:df=3,scale=0.5"},
        algorithm="clipped",
        axes={"lr": [0.3, 0.6, 0.9, 1.2], "clip": [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, None]},
        runs=32 if quick else 64,
        T=2.0 if quick else 5.0,
        n_records=21,
        block=32,
        run_chunk=32,
        ode=False,
    )


def tiny_spec(spec: SweepSpec) -> SweepSpec:
    """64 units of almost no arithmetic: the fixed cost of a unit."""
    return dataclasses.replace(
        spec, axes={"lr": [0.3 + 0.01 * i for i in range(64)]}, runs=32, T=0.05
    )


def warmup_spec(spec: SweepSpec) -> SweepSpec:
    """The same shapes (one compiled program) on a different grid: compiles without storing
    any unit of the timed sweep."""
    return dataclasses.replace(spec, axes={"lr": [0.11, 0.12, 0.13, 0.14]}, T=0.1)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_inprocess(spec, tmp):
    cold, _ = timed(lambda: run_sweep(warmup_spec(spec), tmp / "in-warm", progress=False))
    warm, res = timed(lambda: run_sweep(spec, tmp / "in", progress=False))
    tiny, _ = timed(lambda: run_sweep(tiny_spec(spec), tmp / "in-tiny", progress=False))
    assert res.complete
    return {"warmup_s": cold, "sweep_s": warm, "tiny_s": tiny, "units": len(res.computed)}


def run_dask(spec, tmp, workers=2):
    import distributed

    t0 = time.perf_counter()
    with local_cluster(workers) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(workers)
        start = time.perf_counter() - t0
        addr = cluster.scheduler_address
        kw = dict(backend="dask", scheduler=addr, progress=False)
        # 8 warm-up units: each worker compiles (both get some, with high probability)
        cold, _ = timed(lambda: run_sweep(warmup_spec(spec), tmp / "dk-warm", **kw))
        warm, res = timed(lambda: run_sweep(spec, tmp / "dk", **kw))
        tiny, _ = timed(lambda: run_sweep(tiny_spec(spec), tmp / "dk-tiny", **kw))
    assert res.complete
    return {
        "cluster_start_s": start,
        "warmup_s": cold,
        "sweep_s": warm,
        "tiny_s": tiny,
        "units": len(res.computed),
    }


DEVICES = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import jax
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from backends import sweep_spec, warmup_spec, timed
from clipped_trip._backends import run_sweep
from pathlib import Path
quick = sys.argv[3] == "1"
tmp = Path(sys.argv[2])
spec = sweep_spec(quick)
out = {"devices": jax.device_count()}
for backend in ("inprocess", "devices"):
    cold, _ = timed(lambda: run_sweep(warmup_spec(spec), tmp / f"w-{backend}", backend=backend,
                                      progress=False))
    warm, res = timed(lambda: run_sweep(spec, tmp / backend, backend=backend, progress=False))
    out[backend] = {"warmup_s": cold, "sweep_s": warm}
import numpy as np
from clipped_trip._store import load_sweep
a, b = load_sweep(tmp / "inprocess"), load_sweep(tmp / "devices")
out["bit_identical"] = all(np.array_equal(a.cell(i).risk, b.cell(i).risk)
                           for i in range(spec.n_cells))
print("RESULT " + json.dumps(out))
"""


def run_devices(tmp, quick):
    script = tmp / "devices.py"
    script.write_text(textwrap.dedent(DEVICES))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env["CLIPPED_TRIP_NO_CACHE"] = "1"
    proc = subprocess.run(
        [sys.executable, str(script), str(HERE.parent), str(tmp / "dev"), "1" if quick else "0"],
        env=env,
        capture_output=True,
        text=True,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(line[0][7:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer runs, shorter horizon")
    ap.add_argument("--json", metavar="PATH", help="write the numbers there")
    args = ap.parse_args()
    os.environ.setdefault("CLIPPED_TRIP_NO_CACHE", "1")  # cold numbers include compilation
    spec = sweep_spec(args.quick)
    d, runs, T = spec.problem["d"], spec.runs, spec.T
    problem, _ = spec.build(0)
    steps = round(T * problem.D)
    load0 = os.getloadavg()
    print(f"cores: {len(os.sched_getaffinity(0))}, load average at start: {load0[0]:.1f}")
    n_units = len(spec.units())
    print(f"sweep: {spec.n_cells} cells x {runs} runs, d = {d}, {steps} steps, {n_units} units")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inproc = run_inprocess(spec, tmp)
        dask = run_dask(spec, tmp)
        dev = run_devices(tmp, args.quick)
    load1 = os.getloadavg()
    work = spec.n_cells * runs * steps * d
    res = {
        "spec": spec.to_dict(),
        "load_average_start_end": [load0[0], load1[0]],
        "inprocess": inproc,
        "dask_2_workers": dask,
        "devices_2_cpu": dev,
        "ns_per_run_step_coordinate_inprocess": inproc["sweep_s"] / work * 1e9,
        "cells_per_s_inprocess": spec.n_cells / inproc["sweep_s"],
        "cells_per_s_dask": spec.n_cells / dask["sweep_s"],
        "throughput_ratio_dask_over_inprocess": inproc["sweep_s"] / dask["sweep_s"],
        "overhead_per_unit_ms_inprocess": inproc["tiny_s"] / 64 * 1e3,
        "overhead_per_unit_ms_dask": dask["tiny_s"] / 64 * 1e3,
        "throughput_ratio_devices_over_inprocess": dev["inprocess"]["sweep_s"]
        / dev["devices"]["sweep_s"],
    }
    print(
        f"in-process : {inproc['sweep_s']:.2f} s warm ({res['cells_per_s_inprocess']:.1f} "
        f"cells/s, {res['ns_per_run_step_coordinate_inprocess']:.2f} ns per run x step x "
        f"coordinate), first compile + 4 cells {inproc['warmup_s']:.2f} s"
    )
    print(
        f"dask, 2 wk : {dask['sweep_s']:.2f} s warm ({res['cells_per_s_dask']:.1f} cells/s), "
        f"cluster start {dask['cluster_start_s']:.2f} s, first compile + 4 cells "
        f"{dask['warmup_s']:.2f} s"
    )
    print(f"throughput dask / in-process: {res['throughput_ratio_dask_over_inprocess']:.2f}x")
    print(
        f"fixed cost per unit (64 units of T = 0.05): in-process "
        f"{res['overhead_per_unit_ms_inprocess']:.1f} ms, dask "
        f"{res['overhead_per_unit_ms_dask']:.1f} ms (wall time / units, 2 workers)"
    )
    print(
        f"devices (2 forced CPU devices, same process): in-process "
        f"{dev['inprocess']['sweep_s']:.2f} s, devices {dev['devices']['sweep_s']:.2f} s "
        f"({res['throughput_ratio_devices_over_inprocess']:.2f}x), bit-identical: "
        f"{dev['bit_identical']}"
    )
    print(f"load average at the end: {load1[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
