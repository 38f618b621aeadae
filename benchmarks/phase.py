"""Benchmark: ODE phase diagram of a whole (lr, clip) grid against solve_ode per cell, one run.

    python benchmarks/phase.py [--quick] [--out PATH]

Setting: d = 500, power-law spectrum j^-0.5 (D = 43.3), Student-t(3) noise of scale 0.5,
x0 = x* + ones * sqrt(2 / D) (R0 = 1), T = 10; a 100 x 100 grid of lr in [0.03, 10] and clip in
[0.01, 100] (log-spaced). solve_ode (DOP853, rtol 1e-10, its own factor tables per call, as a
user calling it per cell would) is timed on 20 random cells: the median, times 10^4, is the
per-cell cost of the grid. phase_diagram runs once after a warm-up that compiles the same
program (the compile time is reported apart; the timed run includes its factor tables). Prints
the ratio and the largest relative disagreement of the final risk on the 20 cells, and writes
a JSON record (default benchmarks/phase_results.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def setting(d=500, alpha=0.5, n=100):
    import clipped_trip as ct

    D = float(np.sum(np.arange(1, d + 1, dtype=np.float64) ** -alpha))
    problem = ct.Problem.power_law(
        d, alpha, ct.StudentT(3.0, 0.5), x0=np.ones(d) * math.sqrt(2.0 / D)
    )
    lrs = np.logspace(math.log10(0.03), 1.0, n)
    clips = np.logspace(-2.0, 2.0, n)
    return problem, lrs, clips, 10.0


def rel_diff(a, b):
    if math.isinf(a) and math.isinf(b):
        return 0.0
    return abs(b / a - 1.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 20 x 20 grid, 5 reference cells")
    parser.add_argument("--out", default=str(HERE / "phase_results.json"))
    parser.add_argument("--cells", type=int, default=20, help="cells timed with solve_ode")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import clipped_trip as ct
    from clipped_trip._phase import phase_diagram

    n = 20 if args.quick else 100
    n_ref = 5 if args.quick else args.cells
    problem, lrs, clips, T = setting(n=n)
    axes = {"lr": lrs, "clip": clips}

    # warm-up: the same compiled program (same extreme lrs, same clips: same shapes)
    t0 = time.perf_counter()
    k = max(1, math.ceil(160 / (2 * n)))  # >= 129 cells: the timed run's chunk of 256 cells
    warm_lrs = np.repeat([lrs[0], lrs[-1]], k)
    warm = phase_diagram(problem, ct.ClippedSGD, {"lr": warm_lrs, "clip": clips}, T=T)
    t_warm = time.perf_counter() - t0
    compile_s = warm.params["seconds_compile"]

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    pd = phase_diagram(problem, ct.ClippedSGD, axes, T=T)
    t_phase = time.perf_counter() - t0
    cpu_phase = time.process_time() - cpu0

    rng = np.random.default_rng(2024)
    cells = [(int(rng.integers(n)), int(rng.integers(n))) for _ in range(n_ref)]
    times, cpus, diffs, rows = [], [], [], []
    for i, j in cells:
        c0 = time.process_time()
        s0 = time.perf_counter()
        ref = ct.solve_ode(problem, ct.ClippedSGD(float(lrs[i]), float(clips[j])), T=T, n_records=2)
        times.append(time.perf_counter() - s0)
        cpus.append(time.process_time() - c0)
        a, b = float(ref.risk[-1]), float(pd.final_risk[i, j])
        diffs.append(rel_diff(a, b))
        rows.append({"lr": float(lrs[i]), "clip": float(clips[j]), "solve_ode": a, "phase": b})
    med = statistics.median(times)
    n_cells = n * n
    est = med * n_cells
    res = {
        "setting": {
            "d": problem.d,
            "D": problem.D,
            "spectrum": "j^-0.5",
            "noise": repr(problem.noise),
            "R0": problem.initial_risk,
            "T": T,
            "grid": [n, n],
            "lr": [float(lrs[0]), float(lrs[-1])],
            "clip": [float(clips[0]), float(clips[-1])],
        },
        "phase_diagram_seconds": t_phase,
        "phase_diagram_cpu_seconds": cpu_phase,
        "phase_tables_seconds": pd.params["seconds_tables"],
        "phase_solve_seconds": pd.params["seconds_solve"],
        "phase_compile_seconds_in_timed_run": pd.params["seconds_compile"],
        "compile_seconds_warmup": compile_s,
        "warmup_seconds": t_warm,
        "table_evaluations": pd.params["table_evaluations"],
        "steps": pd.params["steps"],
        "chunk_size": pd.params["chunk_size"],
        "solve_ode_median_seconds": med,
        "solve_ode_median_cpu_seconds": statistics.median(cpus),
        "solve_ode_estimated_grid_seconds": est,
        "ratio": est / t_phase,
        "ratio_cpu": statistics.median(cpus) * n_cells / cpu_phase,
        "max_rel_disagreement": max(diffs),
        "reference_cells": rows,
        "diverged_cells": int(pd.diverged.sum()),
        "best": {k: (float(v) if isinstance(v, float) else v) for k, v in pd.best().items()},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "jax": jax.__version__,
        },
    }
    print(f"grid {n} x {n}, d = {problem.d}, T = {T}, {problem.noise!r}")
    print(
        f"phase_diagram: {t_phase:.2f} s (tables {pd.params['seconds_tables']:.2f} s, solve "
        f"{pd.params['seconds_solve']:.2f} s; compile {compile_s:.2f} s in the warm-up)"
    )
    print(
        f"solve_ode: median {med * 1e3:.1f} ms per cell over {n_ref} cells -> "
        f"{est:.1f} s for {n_cells} cells"
    )
    print(f"ratio {est / t_phase:.1f}x (cpu time ratio {res['ratio_cpu']:.1f}x)")
    print(f"max relative disagreement of the final risk: {max(diffs):.2e}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
