"""SGD mean against the ODE at d and 4 d for every algorithm of the package.

The deterministic equivalent is the d -> infinity limit: the gap between the Monte Carlo mean
risk and the ODE must be Monte Carlo noise plus a finite-size bias that shrinks as D grows
(O(1/D) for the mean risk). For each algorithm this script measures, at two dimensions d and
4 d (same problem family, same algorithm, same T):

* ``max_gap``: max over record times t > 0 of |mean_SGD(t) / ODE(t) - 1| (what the figures show);
* ``avg_gap`` +- ``se``: each run's risk path divided by the ODE and averaged over the record
  times t > 0, then the mean over runs minus 1 and its standard error over runs. This one is
  sharp enough to see an O(1/D) bias: a bias shows as |avg_gap| several se away from 0 at d that
  shrinks about 4x at 4 d; noise shows as |avg_gap| ~ se at both.

Settings (float64):
  A: isotropic K (D = d), R0 = 1, Student-t(3) noise of variance 1, T = 10;
  B: K = diag(j^-0.5) (D ~ 2 sqrt d), R0 = 1, Student-t(3) of scale 0.2, T = 50 (value clipping
     and signSGD need a diagonal K; the coordinates matter);
  bias: SPEC 10's setting (two-level spectrum {1, 0.5}, centred exponential noise, data mean
     ||m|| = 1), clipped SGD c = 0.5 with perturbation k = 1, T = 20.

Usage:
    python experiments/algorithm_dscaling.py                  # d = 250 and 1000 (~20 min, 2 cores)
    python experiments/algorithm_dscaling.py --d 500          # d = 500 and 2000
    python experiments/algorithm_dscaling.py --quick          # d = 50 and 200, few runs (~1 min)
    python experiments/algorithm_dscaling.py --only dpsgd,sign
Writes a JSON table (default experiments/algorithm_dscaling_d<d>.json) and prints markdown.
Committed: d = 250 / 1000 (seed 0, 64 / 32 runs) and d = 500 / 2000 (seed 1, 128 / 64 runs);
numbers and reading in paper_notes.md ("SGD vs ODE at d and 4 d, every algorithm").
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

import clipped_trip as ct
from clipped_trip._figures_private import bias_problem


def _setting_a(d):
    x0 = np.full(d, math.sqrt(2.0 / d))  # R0 = |x0|^2 / 2 = 1 with x* = 0, K = I
    return ct.Problem.isotropic(d, ct.StudentT(df=3.0, scale=1.0 / math.sqrt(3.0)), x0=x0)


def _setting_b(d):
    p = ct.Problem.power_law(d, 0.5, ct.StudentT(df=3.0, scale=0.2))
    lam = p.eigenvalues
    x0 = np.full(d, math.sqrt(2.0 / lam.sum()))  # R0 = sum lam x0^2 / 2 = 1
    return ct.Problem(lam, x0, np.zeros(d), p.noise)


# name -> (problem family, algorithm for a problem, T)
CASES = {
    "clipped": (_setting_a, lambda p: ct.ClippedSGD(0.5, 0.5), 10.0),
    "clipped-B8-per-example": (_setting_a, lambda p: ct.ClippedSGD(0.5, 0.5, batch=8), 10.0),
    "clipped-B8-mean": (
        _setting_a,
        lambda p: ct.ClippedSGD(0.5, 0.5, batch=8, clip_mode="mean"),
        10.0,
    ),
    "dpsgd": (
        _setting_a,
        lambda p: ct.DPSGD(0.5, 0.5, batch=16, noise_multiplier=1.0),
        10.0,
    ),
    "quantile-slow": (
        _setting_a,
        lambda p: ct.QuantileClipSGD(0.5, 0.3, quantile=0.5, clip_lr=2.0 / p.D),
        10.0,
    ),
    "quantile-fast": (
        _setting_a,
        lambda p: ct.QuantileClipSGD(0.5, 0.3, quantile=0.5, clip_lr=0.2),
        10.0,
    ),
    "autoclip-p90": (_setting_a, lambda p: ct.AutoClipSGD(0.5, percentile=90), 10.0),
    "value": (_setting_b, lambda p: ct.ValueClipSGD(1.0, 0.1), 50.0),
    "sign": (_setting_b, lambda p: ct.SignSGD(0.05), 50.0),
    "bias-k1": (bias_problem, lambda p: ct.ClippedSGD(0.5, 0.5, perturbation=1.0), 20.0),
}


def measure(name, d, runs, seed, n_records=41):
    make_problem, make_alg, T = CASES[name]
    problem = make_problem(d)
    alg = make_alg(problem)
    times = np.linspace(0.0, T, n_records)
    t0 = time.perf_counter()
    sgd = ct.simulate(problem, alg, times=times, runs=runs, seed=seed, progress=False)
    t_sgd = time.perf_counter() - t0
    ode = ct.solve_ode(problem, alg, times=times)
    ratio = np.asarray(sgd.risk)[:, 1:] / np.asarray(ode.risk)[1:]  # runs x records
    per_run = ratio.mean(axis=1)
    mean_ratio = ratio.mean(axis=0)
    return {
        "case": name,
        "d": d,
        "D": float(problem.D),
        "runs": runs,
        "T": T,
        "algorithm": repr(alg),
        "max_gap": float(np.max(np.abs(mean_ratio - 1.0))),
        "avg_gap": float(per_run.mean() - 1.0),
        "se": float(per_run.std(ddof=1) / math.sqrt(runs)),
        "ode_final_risk": float(ode.risk[-1]),
        "sgd_seconds": t_sgd,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=250, help="the smaller d (the other is 4 d)")
    parser.add_argument("--runs", type=int, default=64, help="runs at d (half as many at 4 d)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="d = 50 and 200, 8 runs")
    parser.add_argument("--only", help="comma-separated case names (default: all)")
    parser.add_argument(
        "--out", help="JSON output (default experiments/algorithm_dscaling_d<d>.json)"
    )
    args = parser.parse_args(argv)
    d, runs = (50, 8) if args.quick else (args.d, args.runs)
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--only: unknown case(s) {unknown}; known: {', '.join(CASES)}")
    rows = []
    for name in names:
        for dd, rr in ((d, runs), (4 * d, max(runs // 2, 2))):
            row = measure(name, dd, rr, args.seed)
            rows.append(row)
            print(
                f"{name:24s} d={dd:5d} D={row['D']:8.1f} runs={rr:3d} max gap "
                f"{row['max_gap']:7.2%}  avg gap {row['avg_gap']:+7.2%} +- {row['se']:.2%}"
                f"  ({row['sgd_seconds']:.0f} s)",
                flush=True,
            )
    out = Path(args.out or f"experiments/algorithm_dscaling_d{d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1) + "\n")
    print("\n| case | d | D | runs | max gap | avg gap +- se |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['d']} | {r['D']:.1f} | {r['runs']} | {r['max_gap']:.2%} | "
            f"{r['avg_gap']:+.2%} +- {r['se']:.2%} |"
        )
    return rows


if __name__ == "__main__":
    main()
