"""Wrote v01_reference.npz with clipped_trip 0.1.0 (commit 10e9a49): python make_v01_reference.py
OUT.npz. Kept to document the calls that tests/test_minibatch.py repeats bit for bit."""

import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import clipped_trip as ct  # noqa: E402

out = {}
p = ct.Problem.power_law(64, 0.5, ct.StudentT(3.0, 1.0))
for dt in ["float32", "float64"]:
    kw = dict(T=3.0, n_records=7, dtype=dt)
    out[f"sim_{dt}"] = ct.simulate(p, 0.8, 0.5, runs=20, seed=11, **kw).risk
    out[f"simu_{dt}"] = ct.simulate(p, 0.8, None, runs=5, seed=1, **kw).risk
    out[f"simsched_{dt}"] = ct.simulate(
        p, lambda t: 0.5 + 0.1 * t, ([0, 1, 3.0], [0.3, 0.6, 1.0]), runs=5, seed=2, **kw
    ).risk
    out[f"sde_{dt}"] = ct.simulate_sde(p, 0.8, 0.5, runs=5, seed=1, **kw).risk
out["sweep"] = ct.sweep(p, [0.5, 0.9], [0.3, None], T=2.0, runs=3, seed=4, n_records=5).risk
out["ode"] = ct.solve_ode(p, 0.8, 0.5, T=3.0, n_records=7).risk
out["ode_u"] = ct.solve_ode(p, 0.8, None, T=3.0, n_records=7).risk
out["ode_sched"] = ct.solve_ode(p, 0.6, ct.max_ccc_schedule(p.noise), T=3.0, n_records=7).risk
rp = ct.ReducedProblem.two_level(1000, ct.StudentT(3.0))
out["reduced"] = ct.simulate_reduced(rp, 0.8, 0.5, T=2.0, runs=4, seed=3, n_records=5).risk
np.savez(sys.argv[1], **out)
