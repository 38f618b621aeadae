"""DP-SGD on a one-pass stream: the privacy budget, the best clip, and SGD against the ODE.

1. Accounting. In a one-pass stream every example is used in exactly one step, so the whole run
   is ONE Gaussian mechanism with noise multiplier sigma (add/remove adjacency): epsilon does
   not grow with the number of steps. `noise_multiplier_for` inverts `privacy_epsilon`.
2. Utility. For each epsilon, the ODE's final risk over a grid of (clip c, lr): strong privacy
   makes tiny clips optimal ("aggressive clipping": only kappa = lr * c matters, the
   normalised-SGD limit); without privacy the best c is O(1).
3. Check. DP-SGD itself (Monte Carlo) at the best point of one epsilon, next to its ODE.

Usage:
    python examples/dp_sgd.py            # d = 400, 4 epsilons, 30-point grids (~10 s)
    python examples/dp_sgd.py --quick    # d = 100, 2 epsilons, 9-point grids (a few seconds)
The environment variable CLIPPED_TRIP_EXAMPLES_QUICK=1 has the same effect as --quick.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

import clipped_trip as ct


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("CLIPPED_TRIP_EXAMPLES_QUICK") == "1"
    delta = 1e-5

    # --- 1. accounting ----------------------------------------------------------------------
    print(f"one-pass stream, delta = {delta:g} (exact Balle-Wang accountant, built in):")
    for eps in (0.5, 1.0, 2.0, 4.0, 8.0):
        sigma = ct.noise_multiplier_for(eps, delta, accountant="analytic")
        back = ct.privacy_epsilon(sigma, delta, accountant="analytic")
        print(f"  epsilon {eps:4.1f} -> noise multiplier {sigma:7.4f} (epsilon of it: {back:.4f})")
    # Multi-epoch training with Poisson subsampling composes over the steps and needs an
    # accountant from the dp extra (pip install 'clipped_trip[dp]'):
    try:
        eps_rdp = ct.privacy_epsilon(1.3, delta, steps=6000, sampling_rate=0.0025, accountant="rdp")
        print(f"  Poisson rate 0.0025, 6000 steps, sigma 1.3 (RDP): epsilon {eps_rdp:.4f}")
    except ImportError:
        print("  (Poisson-subsampled accounting needs: pip install 'clipped_trip[dp]')")

    # --- 2. utility: the ODE's final risk over (clip, lr) per epsilon ----------------------
    d, batch, T = (100, 16, 3.0) if quick else (400, 32, 4.0)
    epsilons = (2.0, math.inf) if quick else (0.5, 2.0, 8.0, math.inf)
    clips = (0.01, 0.1, 1.0) if quick else (0.01, 0.03, 0.1, 0.3, 1.0)
    lrs = (1.0, 4.0, 16.0) if quick else (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    problem = ct.Problem.power_law(d, 0.2, ct.StudentT(df=3.0, scale=0.5))
    print(
        f"\nd = {d}, D = {problem.D:.1f}, batch {batch}, T = {T:g} "
        f"({round(T * problem.D) * batch} examples), R0 = {problem.initial_risk:.4f}"
    )
    print(f"{'epsilon':>8} {'sigma':>8} {'best c':>7} {'best lr':>8} {'lr*c':>6} {'R(T)':>8}")
    best = {}
    for eps in epsilons:
        sigma = (
            0.0 if math.isinf(eps) else ct.noise_multiplier_for(eps, delta, accountant="analytic")
        )
        results = []
        for c in clips:
            cache = {}  # factor tables shared by the lr grid at this clip
            for lr in lrs:
                alg = ct.DPSGD(lr, c, batch=batch, noise_multiplier=sigma)
                ode = ct.solve_ode(problem, alg, T=T, n_records=11, cache=cache)
                results.append((float(ode.risk[-1]), c, lr))
        risk, c, lr = min(results)
        best[eps] = (c, lr, risk)
        print(f"{eps:8g} {sigma:8.4f} {c:7g} {lr:8g} {lr * c:6.3g} {risk:8.4f}")

    # --- 3. DP-SGD itself at the best point of a finite epsilon ----------------------------
    eps = epsilons[-2]
    c, lr, _ = best[eps]
    alg = ct.DPSGD.for_epsilon(lr, c, batch=batch, epsilon=eps, delta=delta)
    sgd = ct.simulate(problem, alg, T=T, runs=4 if quick else 16, seed=0, n_records=11)
    ode = ct.solve_ode(problem, alg, times=sgd.t)
    print(
        f"\nDP-SGD at epsilon {eps:g}: c = {c:g}, lr = {lr:g}, sigma = {alg.noise_multiplier:.4f}"
    )
    print(
        f"privacy record (goes into result sidecars): {alg.privacy['epsilon']:.4g}-DP at "
        f"delta {alg.privacy['delta']:g}, {alg.privacy['adjacency']}"
    )
    for k in (0, len(sgd.t) // 2, len(sgd.t) - 1):
        print(
            f"  t = {sgd.t[k]:4.2f}: SGD {sgd.mean()[k]:.4f} +- {sgd.std_error()[k]:.4f}, "
            f"ODE {ode.risk[k]:.4f}"
        )
    return {
        "best": best,
        "sgd": sgd,
        "ode": ode,
        "gap": float(np.abs(sgd.mean()[-1] / ode.risk[-1] - 1)),
    }


if __name__ == "__main__":
    main()
