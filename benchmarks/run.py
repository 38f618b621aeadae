"""Benchmarks: clipped_trip against the NumPy baseline, in the same run (medians of repeats).

    python benchmarks/run.py [--quick] [--readme README.md]

Writes benchmarks/results.json and (with --readme) the table between the README's
``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers. Setting: the paper's figure 1 (d = 500,
spectrum j^-0.2 with a Haar basis, Cauchy noise scale 0.5, lr 0.6, clip 0.4, T 15, 100 runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import baseline  # noqa: E402


def median_time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def setting(d=500):
    from scipy import stats

    rng = np.random.default_rng(0)
    Q, Rm = np.linalg.qr(rng.standard_normal((d, d)))
    U = Q * np.sign(np.diag(Rm))
    lam = np.arange(1, d + 1) ** -0.2
    K = (U * lam) @ U.T
    K = 0.5 * (K + K.T)
    x0 = np.ones(d) / math.sqrt(d)
    return dict(
        K=K,
        lam=lam,
        U=U,
        x0=x0,
        x_star=np.zeros(d),
        lr=0.6,
        clip=0.4,
        T=15.0,
        cauchy_pdf=lambda e: stats.cauchy.pdf(e, scale=0.5),
        scale=0.5,
    )


def subprocess_time(code, repeats, env=None):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            cwd=HERE.parent,
            env={**os.environ, "PYTHONPATH": f"{HERE}:{HERE.parent}", **(env or {})},
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


CACHE_PREFIX = "import clipped_trip as _ct; _ct.enable_compilation_cache({path!r})\n"


E2E_OURS = textwrap.dedent("""
    import numpy as np, math
    import clipped_trip as ct
    d = 500
    rng = np.random.default_rng(0)
    Q, Rm = np.linalg.qr(rng.standard_normal((d, d))); U = Q * np.sign(np.diag(Rm))
    K = (U * np.arange(1, d + 1) ** -0.2) @ U.T; K = 0.5 * (K + K.T)
    p = ct.Problem.from_covariance(K, np.ones(d) / math.sqrt(d), np.zeros(d), ct.StudentT(1.0, 0.5))
    r = ct.simulate(p, 0.6, 0.4, T=15.0, runs={runs}, seed=0)
    float(r.mean()[-1])
""")

E2E_BASE = textwrap.dedent("""
    import numpy as np, math
    import baseline
    d = 500
    rng = np.random.default_rng(0)
    Q, Rm = np.linalg.qr(rng.standard_normal((d, d))); U = Q * np.sign(np.diag(Rm))
    K = (U * np.arange(1, d + 1) ** -0.2) @ U.T; K = 0.5 * (K + K.T)
    cauchy = lambda g, n: 0.5 * g.standard_cauchy(n)
    baseline.sgd_numpy(K, np.ones(d) / math.sqrt(d), np.zeros(d), cauchy, 0.6, 0.4, 15.0, {runs})
""")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer runs and repeats (smoke test)")
    ap.add_argument("--readme", default=None)
    ap.add_argument("--render-only", action="store_true", help="re-render results.json")
    ap.add_argument(
        "--memory-only", action="store_true", help="re-measure memory into results.json"
    )
    ap.add_argument(
        "--minibatch-only",
        action="store_true",
        help="re-measure the mini-batch kernel (and its floor) into results.json",
    )
    args = ap.parse_args(argv)
    if args.minibatch_only:
        res = json.loads((HERE / "results.json").read_text())
        res["minibatch"] = measure_minibatch(repeats=3 if args.quick else 5)
        (HERE / "results.json").write_text(json.dumps(res, indent=2))
        args.render_only = True
    if args.memory_only:
        res = json.loads((HERE / "results.json").read_text())
        res["peak_rss_mib_16_runs"] = measure_memory()
        (HERE / "results.json").write_text(json.dumps(res, indent=2))
        args.render_only = True
    if args.render_only:
        res = json.loads((HERE / "results.json").read_text())
        _write_table(res, args.readme)
        return res
    import jax

    import clipped_trip as ct
    from clipped_trip._reduced import ReducedProblem, simulate_reduced
    from clipped_trip._simulate import trace_count

    runs = 10 if args.quick else 100
    base_runs = 3 if args.quick else 100
    rep = 2 if args.quick else 5
    S = setting()
    res = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "devices": [str(x) for x in jax.devices()],
        }
    }
    noise = ct.StudentT(1.0, 0.5)
    p = ct.Problem.from_covariance(S["K"], S["x0"], S["x_star"], noise)
    steps = round(S["T"] * p.D)

    # --- SGD: steady state, compile, baseline -------------------------------------------------
    t0 = time.perf_counter()
    ct.simulate(p, S["lr"], S["clip"], T=S["T"], runs=runs, seed=0)
    first = time.perf_counter() - t0
    ours, _ = median_time(
        lambda: ct.simulate(p, S["lr"], S["clip"], T=S["T"], runs=runs, seed=1), rep
    )
    cauchy = lambda g, n: 0.5 * g.standard_cauchy(n)  # noqa: E731
    base, _ = median_time(
        lambda: baseline.sgd_numpy(
            S["K"], S["x0"], S["x_star"], cauchy, S["lr"], S["clip"], S["T"], base_runs
        ),
        1 if not args.quick else 1,
    )
    base_per_run = base / base_runs
    res["sgd"] = {
        "runs": runs,
        "steps": steps,
        "ours_s": ours,
        "ours_first_call_s": first,
        "compile_s": first - ours,
        "baseline_s_per_run": base_per_run,
        "baseline_s_for_runs": base_per_run * runs,
        "speedup_steady": base_per_run * runs / ours,
    }
    # end to end: fresh processes, import + problem + compile + run
    e2e_rep = 1 if args.quick else 3
    ours_e2e = subprocess_time(E2E_OURS.format(runs=runs), e2e_rep)  # cold: compiles
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        warm_code = CACHE_PREFIX.format(path=cache) + E2E_OURS.format(runs=runs)
        subprocess_time(warm_code, 1)  # fills the on-disk compilation cache
        ours_warm = subprocess_time(warm_code, e2e_rep)
    base_e2e = subprocess_time(E2E_BASE.format(runs=base_runs), e2e_rep) * runs / base_runs
    res["sgd"].update(
        {
            "ours_end_to_end_s": ours_e2e,
            "ours_end_to_end_warm_cache_s": ours_warm,
            "baseline_end_to_end_s": base_e2e,
            "speedup_end_to_end": base_e2e / ours_e2e,
            "speedup_end_to_end_warm_cache": base_e2e / ours_warm,
        }
    )

    # --- floor: one normal number ---------------------------------------------------------------
    import jax.numpy as jnp

    # the floor: normals drawn in a compiled loop, in batches of the simulator's (chunk x d)
    from clipped_trip._simulate import chunk_size

    width = chunk_size(500) * 500
    n_iter = 400

    def draws(n):
        def body(i, acc):
            return (
                acc
                + jax.random.normal(
                    jax.random.fold_in(jax.random.key(0), i), (width,), jnp.float32
                ).sum()
            )

        return jax.lax.fori_loop(0, n, body, 0.0)

    draw = jax.jit(draws)
    draw(2).block_until_ready()
    t_norm, _ = median_time(lambda: draw(n_iter).block_until_ready(), rep)
    ns_normal = t_norm / (n_iter * width) * 1e9
    floor = {"ns_per_normal": ns_normal, "batch": width}
    for d, r, T in ((500, 128, S["T"]), (5000, 16, 2.0), (50000, 16, 0.2)):
        q = ct.Problem.power_law(d, 0.2, noise)
        ct.simulate(q, 0.6, 0.4, T=T, runs=r, n_records=3)
        t, _ = median_time(lambda: ct.simulate(q, 0.6, 0.4, T=T, runs=r, n_records=3, seed=2), rep)
        n = r * round(T * q.D) * d
        floor[f"d={d}"] = {
            "ns_per_run_step_coord": t / n * 1e9,
            "ratio_to_normal": t / n * 1e9 / ns_normal,
            "steps_per_s_per_run": round(T * q.D) / t * r,
        }
    res["floor"] = floor

    # --- sweeps do not recompile --------------------------------------------------------------
    before = trace_count()
    for lrs in ([0.2, 0.4], [0.6, 0.8], [1.0, 1.2]):
        ct.sweep(p, lrs, [0.2, 0.4, None], T=1.0, runs=8, n_records=3)
    res["sweep_traces_for_3_grids"] = trace_count() - before

    # --- ODE ------------------------------------------------------------------------------------
    pe = ct.Problem(S["lam"], S["U"].T @ S["x0"], np.zeros(500), noise)
    t_grid = np.arange(0, 301) * 0.05
    reference = ct.solve_ode(pe, S["lr"], S["clip"], times=t_grid, rtol=1e-12, use_table=False)
    t_ours, ours_ode = median_time(lambda: ct.solve_ode(pe, S["lr"], S["clip"], times=t_grid), rep)
    t_base, (tb, rb) = median_time(
        lambda: baseline.ode_euler(
            S["lam"], pe.initial_error, S["cauchy_pdf"], S["scale"], S["lr"], S["clip"], S["T"]
        ),
        1,
    )
    res["ode"] = {
        "ours_s": t_ours,
        "baseline_euler_s": t_base,
        "speedup": t_base / t_ours,
        "ours_max_rel_err": float(np.max(np.abs(ours_ode.risk / reference.risk - 1))),
        "baseline_max_rel_err": float(np.max(np.abs(rb / reference.risk - 1))),
    }
    # factors at small risk: the fixed grid against ours
    mu_grid, _ = baseline.factors_simpson(
        lambda e: __import__("scipy").stats.t.pdf(e, 3), 1.0, 1e-4, 1.0
    )
    mu_ours, _ = ct.reduction_factors(ct.StudentT(3.0, 1.0), 1e-4, 1.0)
    res["factors_small_R"] = {"fixed_grid_mu": float(mu_grid), "ours_mu": float(mu_ours)}
    R = np.logspace(-8, 4, 100)[:, None]
    c = np.logspace(-3, 3, 100)[None, :]
    t_grid_eval, _ = median_time(lambda: ct.reduction_factors(ct.StudentT(3.0, 1.0), R, c), rep)
    res["factors_grid_1e4_s"] = t_grid_eval

    # --- max-CCC schedule -----------------------------------------------------------------------
    t3 = ct.StudentT(3.0, 0.5)
    p3 = pe.replace(noise=t3)

    def ours_sched():
        return ct.solve_ode(p3, S["lr"], ct.max_ccc_schedule(t3), times=t_grid)

    t_sched, sched = median_time(ours_sched, 1 if args.quick else 3)
    pdf3 = lambda e: __import__("scipy").stats.t.pdf(e, 3, scale=0.5)  # noqa: E731
    t_bs, (_, rbs) = median_time(
        lambda: baseline.ode_euler_max_ccc(S["lam"], pe.initial_error, pdf3, 0.5, S["lr"], S["T"]),
        1,
    )
    res["max_ccc_ode"] = {
        "ours_s": t_sched,
        "baseline_s": t_bs,
        "speedup": t_bs / t_sched,
        "final_ours": float(sched.risk[-1]),
        "final_baseline": float(rbs[-1]),
    }

    # --- reduced simulator ------------------------------------------------------------------------
    rp = ReducedProblem.two_level(10**7, ct.StudentT(3.0, 0.5), high=1.0, low=0.1)
    T_red = 1.0 if args.quick else 10.0
    simulate_reduced(rp, 0.8, 0.5, T=0.001, runs=1, run_chunk=1, n_records=11)  # compile
    t_red, r_red = median_time(
        lambda: simulate_reduced(rp, 0.8, 0.5, T=T_red, runs=1, run_chunk=1, n_records=11), 1
    )
    res["reduced"] = {
        "d": rp.d,
        "T": T_red,
        "steps": round(T_red * rp.D),
        "seconds_one_run": t_red,
        "ns_per_step": t_red / round(T_red * rp.D) * 1e9,
    }

    res["peak_rss_mib_16_runs"] = measure_memory()

    (HERE / "results.json").write_text(json.dumps(res, indent=2))
    _write_table(res, args.readme)
    return res


def measure_memory():
    """Peak RSS of a fresh process running 16 isotropic runs for 20 steps at d = 1e3 and 4e6: the
    difference is the O(runs x d) state (16 x 4e6 x 4 bytes = 256 MB per float32 vector)."""
    mem = {}
    for d in (1000, 4_000_000):
        code = textwrap.dedent(f"""
            import clipped_trip as ct, resource
            p = ct.Problem.isotropic({d}, ct.Gaussian(0.5))
            ct.simulate(p, 0.6, 0.4, times=[0.0, 20 / p.D], runs=16)
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """)
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE.parent,
        )
        mem[f"d={d}"] = int(out.stdout.strip().splitlines()[-1]) / 1024  # MiB
    return mem


def measure_minibatch(repeats=5, d=1000, batches=(16, 64, 256), runs=16):
    """Cost per run x step x example x coordinate of the mini-batch kernel (both clip modes)
    against the floor measured in the same run: normals drawn in a compiled loop in blocks of
    the kernel's own width (run chunk x B x d); and compiles for a sweep over batch sizes."""
    import jax
    import jax.numpy as jnp

    import clipped_trip as ct
    from clipped_trip._engine import chunk_size
    from clipped_trip._simulate import trace_count

    p = ct.Problem.two_level(d, ct.StudentT(3.0))
    out = {"d": d, "runs": runs}
    for B in batches:
        width = chunk_size(d * B, minimum=1) * B * d
        n_iter = max(2, int(4e8 // width))

        def draws(n, width=width):
            def body(i, acc):
                key = jax.random.fold_in(jax.random.key(0), i)
                return acc + jax.random.normal(key, (width,), jnp.float32).sum()

            return jax.lax.fori_loop(0, n, body, 0.0)

        draw = jax.jit(draws)
        draw(2).block_until_ready()
        t_norm, _ = median_time(lambda draw=draw, n=n_iter: draw(n).block_until_ready(), repeats)
        floor_ns = t_norm / (n_iter * width) * 1e9
        row = {"floor_ns": floor_ns}
        T = max(0.05, 16.0 / B)
        for mode in ("per-example", "mean"):
            alg = ct.ClippedSGD(0.5 * B, 0.5, batch=B, clip_mode=mode)
            kw = dict(T=T, runs=runs, n_records=3, progress=False)
            ct.simulate(p, alg, **kw)
            t, _ = median_time(lambda alg=alg, kw=kw: ct.simulate(p, alg, seed=1, **kw), repeats)
            n = runs * round(T * p.D) * B * d
            row[mode] = {"ns": t / n * 1e9, "ratio": t / n * 1e9 / floor_ns, "seconds": t}
        out[f"B={B}"] = row
    before = trace_count()
    for B in (4, 8):
        for lrs in ([0.5, 1.0], [0.7, 2.0]):
            alg = ct.ClippedSGD(1.0, batch=B, clip_mode="mean")
            ct.sweep(p, lrs, [0.3, None], algorithm=alg, T=0.05, runs=2, n_records=2)
    out["traces_2_grids_x_2_batches"] = trace_count() - before
    return out


def _write_table(res, readme_path):
    table = render(res)
    print(table)
    if readme_path:
        readme = Path(readme_path)
        text = readme.read_text()
        a, b = "<!-- bench:start -->", "<!-- bench:end -->"
        if a in text and b in text:
            text = text[: text.index(a) + len(a)] + "\n" + table + "\n" + text[text.index(b) :]
            readme.write_text(text)


def render(r):
    s, o, m, f = r["sgd"], r["ode"], r["max_ccc_ode"], r["floor"]
    rows = [
        "| what (figure-1 setting unless said) | clipped_trip | NumPy baseline | ratio |",
        "|---|---|---|---|",
        f"| {s['runs']} SGD runs x {s['steps']} steps, steady state | {s['ours_s']:.2f} s | "
        f"{s['baseline_s_for_runs']:.1f} s | **{s['speedup_steady']:.0f}x** |",
        f"| same, end to end (new process: import, eigh, compile, run) | {s['ours_end_to_end_s']:.1f} s | "
        f"{s['baseline_end_to_end_s']:.1f} s | **{s['speedup_end_to_end']:.1f}x** |",
        f"| same, end to end with the on-disk compilation cache warm | {s['ours_end_to_end_warm_cache_s']:.1f} s | "
        f"{s['baseline_end_to_end_s']:.1f} s | **{s['speedup_end_to_end_warm_cache']:.1f}x** |",
        f"| compile time of the simulator | {s['compile_s']:.1f} s | - | - |",
        f"| ODE to T = 15 (DOP853 vs Euler dt 0.05 + Simpson grids) | {o['ours_s']:.3f} s | "
        f"{o['baseline_euler_s']:.2f} s | **{o['speedup']:.0f}x** |",
        f"| ODE max relative error vs rtol 1e-12 reference | {o['ours_max_rel_err']:.1e} | "
        f"{o['baseline_max_rel_err']:.1e} | - |",
        f"| max-CCC schedule ODE, Student-t(3) (table vs optimiser per step) | {m['ours_s']:.2f} s | "
        f"{m['baseline_s']:.1f} s | **{m['speedup']:.0f}x** |",
        f"| mu at R = 1e-4, c = 1, Student-t(3) (truth 0.609) | {r['factors_small_R']['ours_mu']:.4f} | "
        f"{r['factors_small_R']['fixed_grid_mu']:.4f} | - |",
        f"| reduction factors on a 100 x 100 (R, c) grid, Student-t | {r['factors_grid_1e4_s']:.2f} s | - | - |",
        f"| one normal number (jax.random, float32, batches of {f['batch']} in a compiled loop): the floor | {f['ns_per_normal']:.2f} ns | - | - |",
    ]
    for key in ("d=500", "d=5000", "d=50000"):
        rows.append(
            f"| SGD at {key}: cost per run x step x coordinate; run-steps per second | "
            f"{f[key]['ns_per_run_step_coord']:.2f} ns ({f[key]['ratio_to_normal']:.2f}x the floor); "
            f"{f[key]['steps_per_s_per_run']:.3g} /s | - | - |"
        )
    red = r["reduced"]
    rows.append(
        f"| reduced simulator, d = 1e7 two-level, T = {red['T']:g} ({red['steps']:.2e} steps), one run | "
        f"{red['seconds_one_run']:.1f} s ({red['ns_per_step']:.0f} ns/step) | - | - |"
    )
    mem = r["peak_rss_mib_16_runs"]
    rows.append(
        f"| peak memory (RSS) of a process running 16 runs: d = 1e3 / d = 4e6 | "
        f"{mem['d=1000']:.0f} / {mem['d=4000000']:.0f} MiB | - | - |"
    )
    rows.append(
        f"| traces (compiles) for 3 different (lr, clip) grids of one shape | "
        f"{r['sweep_traces_for_3_grids']} | - | - |"
    )
    mb = r.get("minibatch")
    if mb:
        for key in sorted((k for k in mb if k.startswith("B=")), key=lambda k: int(k[2:])):
            row = mb[key]
            rows.append(
                f"| mini-batch SGD, d = {mb['d']}, {key}: cost per run x step x example x "
                f"coordinate, per-example / mean (floor: normals in blocks of the same width) | "
                f"{row['per-example']['ns']:.2f} / {row['mean']['ns']:.2f} ns "
                f"({row['per-example']['ratio']:.2f}x / {row['mean']['ratio']:.2f}x the floor of "
                f"{row['floor_ns']:.2f} ns) | - | - |"
            )
        rows.append(
            f"| traces for 2 (lr, clip) grids at each of 2 batch sizes | "
            f"{mb['traces_2_grids_x_2_batches']} (one per batch size) | - | - |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
