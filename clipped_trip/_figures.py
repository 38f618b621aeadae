"""The paper's figures (SPEC section 6), each one function: compute, plot, save PNG/PDF/npz/json.

``run_figure(name, quick, out)`` is what ``clipped-trip reproduce`` and ``experiments/*.py`` call.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from . import _io  # noqa: E402
from ._criteria import (
    ccc,
    csc,
    heuristic_schedule,
    max_ccc,
    max_ccc_schedule,  # noqa: E402
    tune_kappa,
)
from ._factors import reduction_factors  # noqa: E402
from ._noise import Exponential, Gaussian, StudentT, ThreePoint, Uniform  # noqa: E402
from ._ode import solve_ode  # noqa: E402
from ._problem import Problem  # noqa: E402
from ._sde import simulate_sde  # noqa: E402
from ._simulate import simulate  # noqa: E402

FIGURES = {}


def figure(name, title):
    def register(fn):
        FIGURES[name] = (fn, title)
        return fn

    return register


def _save(fig, out: Path, name: str, arrays: dict, params: dict):
    """PNG + PDF + npz + json, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        paths.append(
            _io.atomic_write(
                out / f"{name}.{ext}", lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=130)
            )
        )
    plt.close(fig)
    _io.write_arrays_and_sidecar(out / f"{name}.npz", arrays, {"figure": name, "params": params})
    return paths[0]


def haar_problem(d, alpha, noise, seed):
    """K = U diag(j^-alpha) U^T with Haar U, x* = 0, x0 = ones/sqrt(d) (SPEC section 6)."""
    rng = np.random.default_rng(seed)
    Q, Rm = np.linalg.qr(rng.standard_normal((d, d)))
    U = Q * np.sign(np.diag(Rm))  # Haar-distributed orthogonal matrix
    lam = np.arange(1, d + 1, dtype=np.float64) ** (-alpha)
    K = (U * lam) @ U.T
    return Problem.from_covariance(K, np.ones(d) / math.sqrt(d), np.zeros(d), noise)


def _band(ax, res, color, label, exclude_diverged=True):
    lo, hi = res.band(0.8, exclude_diverged=exclude_diverged)
    ax.fill_between(res.t, lo, hi, color=color, alpha=0.25, lw=0)
    ax.plot(res.t, res.mean(exclude_diverged=exclude_diverged), color=color, lw=1.2, label=label)


# ---------------------------------------------------------------------------------------------
@figure("fig1", "C-SGD vs C-HSGD vs ODE under Gaussian and Cauchy noise")
def fig1(quick=False, out=Path("figures"), seed=0, d=None, runs=None, progress=True):
    d = d or (200 if quick else 500)
    runs = runs or (20 if quick else 100)
    lr, clip, T = 0.6, 0.4, 15.0
    cases = [
        ("Gaussian noise (std 0.5)", Gaussian(0.5)),
        ("Cauchy noise (scale 0.5)", StudentT(1.0, 0.5)),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    arrays, table = {}, []
    for k, ((title, noise), ax) in enumerate(zip(cases, axes)):
        p = haar_problem(d, 0.2, noise, seed)
        steps = tqdm(total=5, desc=f"fig1 {title}", disable=not progress, leave=False)
        sgd = simulate(p, lr, clip, T=T, runs=runs, seed=seed)
        steps.update()
        sgd_u = simulate(p, lr, None, T=T, runs=runs, seed=seed)
        steps.update()
        sde = simulate_sde(p, lr, clip, T=T, runs=runs, seed=seed + 1, dt=0.01, times=sgd.t)
        steps.update()
        ode = solve_ode(p, lr, clip, times=sgd.t)
        steps.update()
        ode_u = solve_ode(p, lr, None, times=sgd.t)
        steps.update()
        steps.close()
        _band(ax, sgd, "C0", f"clipped SGD (c={clip}), mean and 80% band")
        _band(ax, sde, "C2", "C-HSGD (SDE), mean and 80% band")
        ax.plot(ode.t, ode.risk, "k--", lw=1.5, label="ODE (clipped)")
        notes = []
        if sgd_u.diverged.all():
            notes.append(
                f"unclipped SGD: all {runs} runs diverged "
                f"(first at t={np.nanmin(sgd_u.divergence_time):.2g})"
            )
        else:
            _band(ax, sgd_u, "C3", "unclipped SGD, mean and 80% band (finite runs)")
            if sgd_u.diverged.any():
                notes.append(f"unclipped SGD: {int(sgd_u.diverged.sum())}/{runs} runs diverged")
            final = sgd_u.mean(exclude_diverged=True)[-1]
            if final > p.initial_risk:
                notes.append(
                    f"unclipped SGD does not converge: mean risk {final:.3g} at t={T:g} "
                    f"(R0 = {p.initial_risk:.3g})"
                )
        if ode_u.diverged:
            notes.append("unclipped ODE: diverges (infinite noise variance)")
        else:
            ax.plot(ode_u.t, ode_u.risk, ":", color="C3", lw=1.5, label="ODE (unclipped)")
        if notes:
            # mid-height: the clipped curves sit at the bottom of this log-scale panel
            ax.text(
                0.03,
                0.45,
                "\n".join(notes),
                transform=ax.transAxes,
                fontsize=8,
                color="C3",
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="C3"),
            )
        ax.set_yscale("log")
        ax.set_title(f"{title}, d={d}, lr={lr}")
        ax.set_xlabel("t = steps / D")
        ax.set_ylabel("excess risk R")
        ax.legend(fontsize=7, loc="upper right")
        gap = np.abs(sgd.mean() / ode.risk - 1).max()
        u_final = np.inf if sgd_u.diverged.all() else sgd_u.mean(exclude_diverged=True)[-1]
        table.append(
            {
                "noise": title,
                "sgd_final": float(sgd.mean()[-1]),
                "sde_final": float(sde.mean()[-1]),
                "ode_final": float(ode.risk[-1]),
                "unclipped_sgd_final": float(u_final),
                "unclipped_ode_final": float(ode_u.risk[-1]),
                "max_rel_gap_sgd_ode": float(gap),
                "unclipped_runs_diverged": int(sgd_u.diverged.sum()),
            }
        )
        for key, val in (
            ("t", sgd.t),
            ("sgd", sgd.risk),
            ("sgd_unclipped", sgd_u.risk),
            ("sde", sde.risk),
            ("ode", ode.risk),
            ("ode_unclipped", ode_u.risk),
        ):
            arrays[f"case{k}_{key}"] = val
    fig.tight_layout()
    params = dict(
        d=d, runs=runs, lr=lr, clip=clip, T=T, seed=seed, spectrum="j^-0.2, Haar U", table=table
    )
    path = _save(fig, Path(out), "fig1", arrays, params)
    return path, table


# ---------------------------------------------------------------------------------------------
def _spec6_noises(std=5.0, q=0.2):
    return [
        ("Gaussian", Gaussian(std)),
        (f"three-point q={q}", ThreePoint(std / math.sqrt(q), q)),
        ("uniform", Uniform(std * math.sqrt(3))),
        ("exponential", Exponential(std)),
    ]


def _student_family(var=25.0):
    return [
        (f"Student-t df={df}", StudentT(df, math.sqrt(var * (df - 2) / df)))
        for df in (50, 10, 5, 2.5, 2.1)
    ]


@figure("fig2", "CCC against c for several noise laws (R = 3)")
def fig2(quick=False, out=Path("figures"), progress=True, **_):
    R = 3.0
    c = np.logspace(-1, 2, 80 if quick else 300)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    arrays, summary = {"c": c}, {}
    for ax, family in zip(axes, (_spec6_noises(), _student_family())):
        for name, noise in tqdm(family, disable=not progress, leave=False, desc="fig2"):
            v = ccc(noise, R, c)
            ax.plot(c, v, label=name)
            arrays[name] = v
            summary[name] = {"max_ccc": float(v.max()), "argmax_c": float(c[np.argmax(v)])}
        ax.axhline(1, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("clip threshold c")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("CCC = mu^2 (2R+Var) / nu")
    axes[0].set_title("noise std 5, R = 3")
    axes[1].set_title("Student-t, variance 25, R = 3")
    fig.tight_layout()
    return _save(fig, Path(out), "fig2", arrays, {"R": R, "summary": summary}), summary


@figure("fig3", "mu_c, nu_c and CSC against c (R = 3)")
def fig3(quick=False, out=Path("figures"), progress=True, **_):
    R = 3.0
    c = np.logspace(-1, 2, 80 if quick else 300)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    arrays, summary = {"c": c}, {}
    for name, noise in _spec6_noises() + _student_family()[::2]:
        mu, nu = reduction_factors(noise, R, c)
        s = csc(noise, R, c)
        axes[0].plot(c, mu, label=name)
        axes[1].plot(c, nu / (2 * R + noise.second_moment), label=name)
        axes[2].plot(c, s, label=name)
        arrays.update({f"{name}/mu": mu, f"{name}/nu": nu, f"{name}/csc": s})
        summary[name] = {"max_csc": float(s.max())}
    for ax, lab in zip(axes, ("mu_c = P(|w| <= c)", "G_c = nu_c / (2R + Var)", "CSC = mu / G")):
        ax.set_xscale("log")
        ax.set_xlabel("c")
        ax.set_title(lab)
    axes[2].axhline(1, color="k", ls="--", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(out), "fig3", arrays, {"R": R, "summary": summary}), summary


@figure("fig4", "CSC heat maps over threshold and noise level (R = 1)")
def fig4(quick=False, out=Path("figures"), progress=True, **_):
    R = 1.0
    n = 25 if quick else 60
    ratio = np.linspace(1, 6, n)  # c / noise level
    level = np.logspace(-1, 1, n)  # noise std
    laws = [
        ("Gaussian", lambda s: Gaussian(s)),
        ("three-point q=0.2", lambda s: ThreePoint(s / math.sqrt(0.2), 0.2)),
        ("Student-t df=3", lambda s: StudentT(3.0, s / math.sqrt(3.0))),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    arrays, summary = {"ratio": ratio, "level": level}, {}
    for ax, (name, make) in zip(axes, laws):
        Z = np.array(
            [
                csc(make(s), R, ratio * s)
                for s in tqdm(level, disable=not progress, leave=False, desc=f"fig4 {name}")
            ]
        )
        im = ax.pcolormesh(ratio, level, Z, shading="auto", cmap="RdBu_r", vmin=0, vmax=2)
        ax.contour(ratio, level, Z, levels=[1.0], colors="k", linewidths=1)
        ax.set_yscale("log")
        ax.set_xlabel("c / noise std")
        ax.set_ylabel("noise std")
        ax.set_title(f"CSC, {name}")
        arrays[name] = Z
        summary[name] = {"fraction_csc_gt_1": float((Z > 1).mean())}
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, Path(out), "fig4", arrays, {"R": R, "summary": summary}), summary


@figure("fig5", "max CCC against risk, and CSC at the CCC-optimal threshold")
def fig5(quick=False, out=Path("figures"), progress=True, **_):
    R = np.logspace(-1, 1, 12 if quick else 40)
    laws = [
        ("Gaussian std 7", Gaussian(7.0)),
        ("three-point q=0.5", ThreePoint(7 / math.sqrt(0.5), 0.5)),
        ("Student-t df=3 (var 49)", StudentT(3.0, 7 / math.sqrt(3.0))),
        ("Student-t df=2.5 (var 49)", StudentT(2.5, 7 / math.sqrt(5.0))),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    arrays, summary = {"R": R}, {}
    for name, noise in tqdm(laws, disable=not progress, leave=False, desc="fig5"):
        mc, c_star = max_ccc(noise, R)
        finite = np.isfinite(c_star)
        # max over c of CSC is +inf (CSC ~ 2 f_w(0) (2R + Var) / c as c -> 0): show CSC at c*(R)
        cs = np.where(finite, csc(noise, R, np.where(finite, c_star, 1.0)), 1.0)
        axes[0].plot(R, mc, label=name)
        axes[1].plot(R, cs, label=name)
        arrays[f"{name}/max_ccc"], arrays[f"{name}/c_star"], arrays[f"{name}/csc_at_c_star"] = (
            mc,
            c_star,
            cs,
        )
        summary[name] = {
            "max_ccc_range": [float(mc.min()), float(mc.max())],
            "csc_at_c_star_range": [float(cs.min()), float(cs.max())],
        }
    for ax, lab in zip(
        axes, ("max over c of CCC", "CSC at the CCC-optimal c*(R) (1 where c* = inf)")
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1, color="k", ls="--", lw=0.8)
        ax.set_xlabel("risk R")
        ax.set_title(lab, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out), "fig5", arrays, {"summary": summary}), summary


@figure("fig6", "Optimal (max-CCC) vs heuristic vs unclipped schedules")
def fig6(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    d = 200 if quick else 500
    runs = 10 if quick else 100
    lr, T = 0.4, 15.0
    cases = [
        ("Gaussian std 0.8", Gaussian(0.8)),
        ("three-point q=0.2", ThreePoint(0.8 / math.sqrt(0.2), 0.2)),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    arrays, summary = {}, {}
    for row, (name, noise) in enumerate(cases):
        p = haar_problem(d, 1 / 6, noise, seed)
        kappas = np.linspace(0.1, 5, 8 if quick else 50)
        kappa, _, finals = tune_kappa(p, lr, T, kappas=kappas)
        scheds = [
            ("max-CCC", max_ccc_schedule(noise)),
            (f"heuristic kappa={kappa:.2f}", heuristic_schedule(noise, kappa)),
            ("unclipped", None),
        ]
        t = np.linspace(0, T, 61)
        for k, (label, sched) in enumerate(
            tqdm(scheds, disable=not progress, leave=False, desc=f"fig6 {name}")
        ):
            ode = solve_ode(p, lr, sched, times=t)
            lr_s, clip_s = ode.time_schedules()
            sgd = simulate(
                p, lr_s, clip_s if sched is not None else None, times=t, runs=runs, seed=seed
            )
            _band(axes[row, 0], sgd, f"C{k}", f"SGD {label}")
            axes[row, 0].plot(t, ode.risk, color=f"C{k}", ls="--", lw=1)
            shown = label + (" (c = inf: no clipping)" if np.all(np.isinf(ode.clip_path)) else "")
            axes[row, 1].plot(
                t,
                np.where(np.isinf(ode.clip_path), np.nan, ode.clip_path),
                color=f"C{k}",
                label=shown,
            )
            axes[row, 2].plot(t, ode.lr_path, color=f"C{k}", label=shown)
            arrays[f"{name}/{label}/ode"] = ode.risk
            arrays[f"{name}/{label}/sgd"] = sgd.risk
            arrays[f"{name}/{label}/clip"] = ode.clip_path
            arrays[f"{name}/{label}/lr"] = ode.lr_path
            summary[f"{name}/{label}"] = {
                "ode_final": float(ode.risk[-1]),
                "sgd_final": float(sgd.mean()[-1]),
            }
        axes[row, 0].set_yscale("log")
        axes[row, 0].set_title(f"{name}: risk (bands: SGD, dashed: ODE)")
        axes[row, 1].set_title("clip threshold c(t)")
        axes[row, 1].set_yscale("log")
        axes[row, 2].set_title("learning rate lr(t)")
        axes[row, 2].ticklabel_format(axis="y", useOffset=False)
        for ax in axes[row]:
            ax.set_xlabel("t")
            ax.legend(fontsize=7)
    arrays["t"] = t
    fig.tight_layout()
    params = {
        "d": d,
        "runs": runs,
        "lr": lr,
        "T": T,
        "spectrum": "j^-1/6, Haar U",
        "seed": seed,
        "summary": summary,
    }
    return _save(fig, Path(out), "fig6", arrays, params), summary


@figure("fig7", "Real data: streaming clipped SGD on random features vs the ODE")
def fig7(quick=False, out=Path("figures"), seed=0, progress=True, data=None, **_):
    from ._noise import Empirical
    from ._realdata import (
        load_cifar10,
        load_digits_binary,
        random_feature_regression,
        real_data_sgd,
    )

    X, y = load_cifar10(data) if data else load_digits_binary()
    source = f"CIFAR-10 ({data})" if data else "scikit-learn digits (0-4 vs 5-9)"
    n_features = 100 if quick else 500
    runs = 10 if quick else 50
    lr, clip = 0.1, 0.5
    reg = random_feature_regression(X, y, n_features, seed)
    rng = np.random.default_rng(seed + 1)
    x0 = reg["x_star"] + 0.4 * rng.standard_normal(n_features)
    resid = reg["residuals"]
    laws = [
        ("empirical residuals", Empirical(resid)),
        (f"Gaussian fit (std {resid.std():.3f})", Gaussian(float(resid.std()))),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    arrays, summary = {}, {"source": source, "n": int(X.shape[0]), "D": reg["D"]}
    for ax, (c, title) in zip(axes, ((clip, f"clipped, c = {clip}"), (None, "unclipped"))):
        t, risk = real_data_sgd(
            reg, x0, lr, c, runs=runs, seed=seed, record_every=max(1, X.shape[0] // 100)
        )
        lo, hi = np.quantile(risk, [0.1, 0.9], axis=0)
        ax.fill_between(t, lo, hi, color="C0", alpha=0.3, lw=0)
        ax.plot(
            t, risk.mean(0), color="C0", label=f"SGD on data, mean and 80% band ({runs} shuffles)"
        )
        arrays[f"{title}/t"], arrays[f"{title}/sgd"] = t, risk
        for k, (name, noise) in enumerate(laws):
            p = Problem.from_covariance(reg["K"], x0, reg["x_star"], noise)
            ode = solve_ode(p, lr, c, times=t)
            ax.plot(
                t,
                ode.risk,
                ls="--" if k == 0 else ":",
                color="k" if k == 0 else "C3",
                label=f"ODE, noise = {name}",
            )
            arrays[f"{title}/ode_{k}"] = ode.risk
            gap = float(np.abs(risk.mean(0) / ode.risk - 1).max())
            summary[f"{title} / {name}"] = {
                "max_rel_gap_mean_sgd_vs_ode": gap,
                "sgd_final": float(risk.mean(0)[-1]),
                "ode_final": float(ode.risk[-1]),
            }
        ax.set_yscale("log")
        ax.set_xlabel("t = samples / D")
        ax.set_ylabel("excess risk")
        ax.set_title(f"{source}: {title}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    params = {
        "source": source,
        "n_features": n_features,
        "runs": runs,
        "lr": lr,
        "clip": clip,
        "x0": "x* + 0.4 N(0, I)",
        "seed": seed,
        "intrinsic_dimension": reg["D"],
        "summary": summary,
    }
    return _save(fig, Path(out), "fig7", arrays, params), summary


@figure("dscaling", "SGD-to-ODE gap against dimension (exact reduced simulator, d = 1e2 ... 1e7)")
def dscaling(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    from ._reduced import ReducedProblem, simulate_reduced

    dims = [10**k for k in range(2, 6 if quick else 8)]
    runs = 8 if quick else 32
    lr, clip, T = 0.8, 0.5, 1.0
    noise = StudentT(3.0, 0.5)
    times = np.linspace(0, T, 11)
    typical, bias, bias_se = [], [], []
    ode = None
    for d in tqdm(dims, disable=not progress, leave=False, desc="dscaling"):
        rp = ReducedProblem.two_level(d, noise, high=1.0, low=0.1, fraction=0.5)
        if ode is None:  # the ODE depends on d only through the spectrum's shape: same for all d
            ode = solve_ode(
                rp.to_problem()
                if d <= 10**4
                else ReducedProblem.two_level(100, noise, high=1.0, low=0.1).to_problem(),
                lr,
                clip,
                times=times,
            )
        res = simulate_reduced(
            rp, lr, clip, times=times, runs=runs, seed=seed, run_chunk=min(runs, 16)
        )
        rel = res.risk[:, 1:] / ode.risk[1:] - 1  # per run, per time
        typical.append(float(np.sqrt(np.mean(rel**2))))  # rms deviation of a single run
        m = rel.mean(axis=0)
        bias.append(float(np.abs(m).max()))
        bias_se.append(float((rel.std(axis=0, ddof=1) / np.sqrt(runs)).max()))
    dims_a = np.array(dims, dtype=float)
    slope = float(np.polyfit(np.log(dims_a), np.log(typical), 1)[0])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog(dims_a, typical, "o-", label=f"rms |R_SGD/R_ODE - 1| of one run (slope {slope:.2f})")
    ax.loglog(dims_a, bias, "s-", label="|mean over runs / ODE - 1| (max over t)")
    ax.loglog(dims_a, bias_se, ":", color="gray", label="standard error of that mean")
    ref = typical[0] * (dims_a / dims_a[0]) ** -0.5
    ax.loglog(dims_a, ref, "k--", lw=0.8, label="d^-1/2 (paper's rate)")
    ax.set_xlabel("dimension d (two-level spectrum 1 / 0.1)")
    ax.set_ylabel("relative gap on t in [0, 1]")
    ax.set_title(f"Student-t(3) noise, lr {lr}, clip {clip}, {runs} runs per d", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    arrays = {
        "d": dims_a,
        "typical": np.array(typical),
        "bias": np.array(bias),
        "bias_se": np.array(bias_se),
        "t": times,
        "ode": ode.risk,
    }
    summary = {"slope_typical": slope, "dims": dims, "typical": typical, "bias": bias}
    params = {
        "lr": lr,
        "clip": clip,
        "T": T,
        "runs": runs,
        "noise": repr(noise),
        "seed": seed,
        "summary": summary,
    }
    return _save(fig, Path(out), "dscaling", arrays, params), summary


def run_figure(name, quick=False, out="figures", progress=True, **kwargs):
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; allowed: {', '.join(FIGURES)} (or 'all')")
    t0 = time.perf_counter()
    result = FIGURES[name][0](quick=quick, out=Path(out), progress=progress, **kwargs)
    return result, time.perf_counter() - t0


from . import _figures_batch  # noqa: E402,F401  (registers the mini-batch figures)
