"""Adaptive clipping thresholds: quantile tracking and AutoClip, SGD against their ODEs.

Three ways to set the threshold without tuning it by hand, each simulated (Monte Carlo) and
predicted by its deterministic equivalent, with the threshold path c(t) itself:

* QuantileClipSGD, slow regime (clip_lr = eta / D): c follows d(log c)/dt = -eta (mu_c(R) - q),
  and settles where mu_c(R) = q (`quantile_stationary_point` gives that point).
* QuantileClipSGD, fast regime (clip_lr = O(1)): c jumps by O(1) factors every step; the risk
  sees its stationary law (drift factor exactly q, noise E_pi[nu_c] > nu at the q-quantile).
* AutoClipSGD: c(t) = the p-th percentile of every gradient norm so far; the history remembers
  the early, larger residuals, so c(t) lags above the current quantile.

Usage:
    python examples/adaptive.py            # d = 400, 32 runs, T = 8 (~15 s)
    python examples/adaptive.py --quick    # d = 100, 4 runs, T = 2 (a few seconds)
The environment variable CLIPPED_TRIP_EXAMPLES_QUICK=1 has the same effect as --quick.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import clipped_trip as ct


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("CLIPPED_TRIP_EXAMPLES_QUICK") == "1"

    d, runs, T = (100, 4, 2.0) if quick else (400, 32, 8.0)
    noise = ct.StudentT(df=3.0, scale=0.5)  # heavy tails: clipping helps here (CCC > 1)
    problem = ct.Problem.power_law(d, 0.2, noise)
    lr, q = 0.6, 0.5
    print(f"d = {d}, D = {problem.D:.1f}, R0 = {problem.initial_risk:.4f}, lr = {lr}, q = {q}")

    c_inf, r_inf = ct.quantile_stationary_point(noise, lr, q)
    print(f"slow quantile rule settles at c = {float(c_inf):.4f}, R = {float(r_inf):.4f}")

    algorithms = {
        # slow regime: the threshold moves on the time scale of the risk
        "quantile, slow": ct.QuantileClipSGD(lr, 1.0, quantile=q, clip_lr=2.0 / problem.D),
        # fast regime: an O(1) rate, as in Andrew et al. (they use 0.2)
        "quantile, fast": ct.QuantileClipSGD(lr, 1.0, quantile=q, clip_lr=1.0),
        # AutoClip: the 50th percentile of the gradient-norm history
        "autoclip p=50": ct.AutoClipSGD(lr, percentile=50),
    }
    out = {}
    for name, alg in algorithms.items():
        sgd = ct.simulate(problem, alg, T=T, runs=runs, seed=0, n_records=9, progress=False)
        ode = ct.solve_ode(problem, alg, times=sgd.t)
        clip_sgd = sgd.stat_mean("clip")  # the threshold of each run, averaged over runs
        print(f"\n{name}: ODE method {ode.params.get('method', '?')}")
        print(f"{'t':>6} {'SGD risk':>10} {'ODE risk':>10} {'SGD c(t)':>10} {'ODE c(t)':>10}")
        for k in range(0, len(sgd.t), 2):
            print(
                f"{sgd.t[k]:6.2f} {sgd.mean()[k]:10.4f} {ode.risk[k]:10.4f} "
                f"{clip_sgd[k]:10.4f} {ode.clip_path[k]:10.4f}"
            )
        gap = float(np.max(np.abs(sgd.mean()[1:] / ode.risk[1:] - 1)))
        print(f"largest relative gap in the risk: {gap:.2%}")
        out[name] = {"sgd": sgd, "ode": ode, "gap": gap}

    # the same problem with the best fixed clip for reference (optimal at the initial risk)
    c_star = float(ct.optimal_clip(noise, problem.initial_risk))
    fixed = ct.solve_ode(problem, ct.ClippedSGD(lr, c_star), T=T)
    print(f"\nfixed clip c* = {c_star:.3f} (optimal at R0): ODE risk at T = {fixed.risk[-1]:.4f}")
    return out


if __name__ == "__main__":
    main()
