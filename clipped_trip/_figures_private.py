"""DP-SGD and clipping-bias figures (SPEC sections 9 and 10).

Registered in ``_figures.FIGURES`` as ``privacy`` (the privacy-utility curve of one-pass DP-SGD,
ODE-optimal clip per epsilon, SGD at each optimum) and ``bias`` (non-centred data and skewed
noise: clipped SGD converges to a biased point; Chen-Wu-Hong's perturbation trades the bias for
noise).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from ._bias_factors import clip_bias_fixed_point
from ._clipped_sgd import ClippedSGD
from ._dpsgd import DPSGD
from ._figures import _save, figure
from ._noise import Exponential, StudentT
from ._ode import solve_ode
from ._privacy_utility import privacy_utility
from ._problem import Problem
from ._simulate import simulate

# SPEC 9.2's table (power law j^-0.2, d = 1000, Student-t(3) scale 0.5, R0 = 1, T = 10,
# delta = 1e-5, B = 64): eps -> (c*, R(T)); inf = no DP
SPEC92 = {
    0.25: (0.0024, 0.960),
    0.5: (0.0018, 0.868),
    1.0: (0.0042, 0.626),
    2.0: (0.013, 0.270),
    4.0: (0.032, 0.0757),
    8.0: (0.056, 0.0236),
    16.0: (0.18, 0.0106),
    math.inf: (1.0, 0.0029),
}


def spec92_problem(d: int) -> Problem:
    """SPEC 9.2's problem: lambda_j = j^-0.2, Student-t(3) noise of scale 0.5, x* = 0, x0 along
    ones scaled so that R0 = 1 (x0_j = sqrt(2 / D))."""
    lam = np.arange(1, d + 1, dtype=np.float64) ** -0.2
    x0 = np.full(d, math.sqrt(2.0 / lam.sum()))
    return Problem(lam, x0, np.zeros(d), StudentT(3.0, 0.5), name="power-law(alpha=0.2)")


def _eps_label(e):
    return "no DP" if math.isinf(e) else f"{e:g}"


@figure("privacy", "DP-SGD privacy-utility: ODE-optimal clip and final risk against epsilon")
def privacy_figure(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    if quick:  # grid optimum only (no line searches, no Nelder-Mead)
        d, B, T, runs, refine = 100, 8, 5.0, 2, False
        epsilons = [0.5, 4.0]
        clips, lr_points = np.geomspace(1e-3, 10.0, 5), 9
    else:
        d, B, T, runs, refine = 1000, 64, 10.0, 16, True
        epsilons = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
        clips, lr_points = np.geomspace(1e-3, 10.0, 13), 21
    delta = 1e-5
    p = spec92_problem(d)
    all_eps = [*epsilons, math.inf]
    pu = privacy_utility(
        p,
        all_eps,
        delta,
        batch=B,
        T=T,
        clips=clips,
        lr_points=lr_points,
        refine=refine,
        progress=progress,
    )
    n = len(all_eps)
    sgd_mean, sgd_lo, sgd_hi, sgd_se = (np.full(n, np.nan) for _ in range(4))
    n_rec = 11 if quick else 21
    sgd_paths = np.full((n, runs, n_rec), np.nan)
    ode_paths = np.full((n, n_rec), np.nan)
    t_rec = np.linspace(0.0, T, n_rec)
    for i in tqdm(range(n), desc="privacy SGD", disable=not progress, leave=False):
        alg = DPSGD(
            float(pu.lr[i]), float(pu.clip[i]), batch=B, noise_multiplier=pu.noise_multiplier[i]
        )
        sgd = simulate(p, alg, times=t_rec, runs=runs, seed=seed, progress=False)
        ode = solve_ode(p, alg, times=t_rec)
        final = sgd.risk[:, -1]
        sgd_mean[i] = final.mean()
        sgd_lo[i], sgd_hi[i] = np.quantile(final, [0.1, 0.9])
        sgd_se[i] = final.std(ddof=1) / math.sqrt(runs) if runs > 1 else np.nan
        sgd_paths[i] = sgd.risk
        ode_paths[i] = ode.risk
    rows = pu.rows()
    for i, row in enumerate(rows):
        row.update(
            sgd_mean=float(sgd_mean[i]),
            sgd_q10=float(sgd_lo[i]),
            sgd_q90=float(sgd_hi[i]),
            sgd_se=float(sgd_se[i]),
            sgd_vs_ode=float(sgd_mean[i] / pu.risk[i] - 1.0),
        )
        ref = SPEC92.get(float(pu.epsilon[i]))
        if ref is not None and not quick:
            row.update(spec92_clip=ref[0], spec92_risk=ref[1])
    arrays = {
        "epsilon": pu.epsilon,
        "noise_multiplier": pu.noise_multiplier,
        "clip": pu.clip,
        "lr": pu.lr,
        "kappa": pu.kappa,
        "risk": pu.risk,
        "risk_map": pu.risk_map,
        "edge_risk": pu.edge_risk,
        "at_small_clip_edge": pu.at_small_clip_edge,
        "clip_flat_min": pu.clip_flat_min,
        "clip_flat_max": pu.clip_flat_max,
        "clip_grid": pu.clip_grid,
        "profile_risk": pu.profile_risk,
        "profile_lr": pu.profile_lr,
        "sgd_mean": sgd_mean,
        "sgd_q10": sgd_lo,
        "sgd_q90": sgd_hi,
        "sgd_se": sgd_se,
        "t": t_rec,
        "sgd_paths": sgd_paths,
        "ode_paths": ode_paths,
    }
    params = {
        "d": d,
        "batch": B,
        "T": T,
        "delta": delta,
        "runs": runs,
        "seed": seed,
        "quick": bool(quick),
        "no_dp_risk": pu.no_dp_risk,
        "no_dp_clip": pu.no_dp_clip,
        "no_dp_lr": pu.no_dp_lr,
        "privacy_utility": pu.params,
        "rows": rows,
    }
    fig = draw_privacy(arrays, params)
    return _save(fig, Path(out), "privacy", arrays, params), rows


def draw_privacy(arrays: dict, params: dict):
    """The privacy figure from its saved arrays (npz) and params (json sidecar)."""
    eps, risk, clip = arrays["epsilon"], arrays["risk"], arrays["clip"]
    sgd_mean, sgd_lo, sgd_hi = arrays["sgd_mean"], arrays["sgd_q10"], arrays["sgd_q90"]
    edge = np.asarray(arrays["at_small_clip_edge"], dtype=bool)
    pu_params = params["privacy_utility"]
    D, runs = pu_params["problem"]["D"], params["runs"]
    flat_pct = 100 * pu_params["flat_rtol"]
    finite = np.isfinite(eps)
    e_fin = eps[finite]
    # epsilon on a log2 axis drawn linearly (fixed tick labels; "no DP" to the right)
    x_fin = np.log2(e_fin)
    x_nodp = x_fin.max() + 1.5
    xs = np.where(finite, np.log2(np.where(finite, eps, 1.0)), x_nodp)

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), layout="constrained")
    ax = axes[0]
    ax.plot(x_fin, risk[finite], "k-", lw=1.2, label="ODE at the optimal (c, lr)")
    ax.errorbar(
        xs,
        sgd_mean,
        yerr=[sgd_mean - sgd_lo, sgd_hi - sgd_mean],
        fmt="o",
        color="C0",
        ms=4,
        capsize=3,
        label=f"DP-SGD there: mean, 80% band ({runs} runs)",
    )
    ax.plot([x_nodp], [params["no_dp_risk"]], "ks", mfc="none", ms=7, label="ODE, no DP")
    ax.axhline(pu_params["problem"]["initial_risk"], color="0.6", ls=":", lw=0.8, label="R0")
    ax.set_yscale("log")
    gap = sgd_mean / risk - 1.0
    ax.text(
        0.97,
        0.6,
        f"SGD mean / ODE - 1:\n{np.nanmin(gap):+.1%} ... {np.nanmax(gap):+.1%}",
        transform=ax.transAxes,
        ha="right",
        va="center",
        fontsize=7,
    )
    ax.set_ylabel("final risk R(T) at the optimum")
    ax.set_title(f"utility at a fixed budget ({pu_params['samples']:,} examples)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")

    ax = axes[1]
    ax.vlines(
        xs,
        arrays["clip_flat_min"],
        arrays["clip_flat_max"],
        color="C1",
        lw=5,
        alpha=0.3,
        label=f"c within {flat_pct:.2g}% of the best R(T)",
    )
    ax.plot(xs[~edge], clip[~edge], "o", color="C1", ms=6, label="optimal c (interior)")
    ax.plot(
        xs[edge],
        clip[edge],
        "v",
        color="C1",
        mfc="none",
        ms=7,
        label="c -> 0 optimal (flat to grid edge)",
    )
    c_nodp = params["no_dp_clip"]
    ax.axhline(c_nodp, color="k", ls="--", lw=0.9, label=f"no-DP optimum c = {c_nodp:.2g}")
    ax.axhline(arrays["clip_grid"][0], color="0.6", ls=":", lw=0.8, label="smallest clip searched")
    ax.set_yscale("log")
    lo = min(arrays["clip_grid"][0], np.nanmin(clip))
    ax.set_ylim(lo / 1.6, 60.0)  # room for the legend above the flat ranges
    ax.set_ylabel("optimal clip c (residual units)")
    ax.set_title("aggressive clipping at small epsilon?", fontsize=9)
    ax.legend(fontsize=6.5, loc="upper left", ncol=2)

    ax = axes[2]
    ax.plot(x_fin, arrays["kappa"][finite], "o-", color="C2", ms=4, label="kappa* = lr* c*")
    k_nodp = params["no_dp_clip"] * params["no_dp_lr"]
    ax.plot([x_nodp], [k_nodp], "ks", mfc="none", ms=7, label="no DP")
    ax.set_yscale("log")
    ax.set_ylabel("kappa = lr x c at the optimum")
    ax.set_title("only kappa matters in the c -> 0 limit", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    for ax in axes:
        ax.set_xticks([*x_fin, x_nodp])
        ax.set_xticklabels([_eps_label(e) for e in [*e_fin, math.inf]], fontsize=7)
        ax.set_xlim(x_fin.min() - 0.5, x_nodp + 0.5)
        ax.set_xlabel(f"privacy epsilon (delta = {params['delta']:g})")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(
        f"one-pass DP-SGD, power law j^-0.2, d = {params['d']} (D = {D:.1f}), Student-t(3) noise "
        f"scale 0.5, R0 = 1, B = {params['batch']}, T = {params['T']:g}; (c, lr) minimise the "
        "ODE's R(T)",
        fontsize=9,
    )
    return fig


# ---------------------------------------------------------------------------------------------
def bias_problem(d: int, start_at_optimum: bool = False) -> Problem:
    """SPEC 10's setting in d dimensions: two-level spectrum {1, 0.5} (half each), centred
    exponential noise of scale 1, data mean m = ones / sqrt(d) (||m|| = 1, A = m^T K^-1 m = 1.5
    and d / D = 4/3 as in SPEC 10's two-dimensional K = diag(1, 0.5), m = (1, 1) / sqrt 2, so its
    fixed points carry over). x0 = ones / sqrt(d) (r0 = <m, e0> = 1) or x* (e0 = 0)."""
    m = np.ones(d) / math.sqrt(d)
    x0 = np.zeros(d) if start_at_optimum else None
    return Problem.two_level(d, Exponential(1.0), high=1.0, low=0.5, x0=x0, data_mean=m)


BIAS_KS = (0.0, 1.0, 2.0, 4.0)
BIAS_COLORS = {None: "0.45", 0.0: "C0", 1.0: "C1", 2.0: "C2", 4.0: "C3"}


@figure("bias", "Clipping bias with non-centred data and skewed noise; the perturbation fix")
def bias_figure(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    d = 100 if quick else 500
    runs = 2 if quick else 16
    T = 10.0 if quick else 40.0
    ks = (0.0, 4.0) if quick else BIAS_KS
    lr, clip = 0.5, 0.5
    n_rec = 41 if quick else 81
    times = np.linspace(0.0, T, n_rec)
    tail = times >= 0.75 * T  # the window averaged for the "measured" end values
    configs = [(None, "unclipped SGD")] + [(k, f"clipped c={clip}, k={k:g}") for k in ks]
    starts = [(False, "start x0 = ones/sqrt(d) (<m, e0> = 1)"), (True, "start at x* (e0 = 0)")]
    stats = [("risk", "risk R = e^T K e / 2"), ("population_risk", "population risk R + r^2/2")]
    stats.append(("bias", "bias r = <m, e>"))
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.0), sharex=True, layout="constrained")
    arrays, table = {"t": times}, []
    p_ref = bias_problem(d)
    fixed = {}
    for k, _ in configs:  # unclipped: c = inf (kappa = r, mu = 1): r = 0, R = lr Var / (4 - 2 lr)
        fixed[k] = clip_bias_fixed_point(
            p_ref.noise,
            p_ref.eigenvalues,
            p_ref.data_mean,
            math.inf if k is None else clip,
            lr=lr,
            perturbation=0.0 if k is None else k,
        )
    bar = tqdm(total=len(configs) * len(starts), desc="bias", disable=not progress)
    for row_i, (at_opt, start_label) in enumerate(starts):
        p = bias_problem(d, at_opt)
        for k, label in configs:
            alg = (
                ClippedSGD(lr, None, batch=1) if k is None else ClippedSGD(lr, clip, perturbation=k)
            )
            sgd = simulate(p, alg, times=times, runs=runs, seed=seed, progress=False)
            ode = solve_ode(p, alg, times=times)
            color = BIAS_COLORS[k]
            tag = f"{'xstar' if at_opt else 'x0'}_{'unclipped' if k is None else f'k{k:g}'}"
            entry = {"start": "x*" if at_opt else "x0", "config": label}
            for col, (name, ylabel) in enumerate(stats):
                ax = axes[row_i, col]
                vals = sgd.stat(name)
                lo, hi = sgd.stat_band(name, 0.8)
                mean = sgd.stat_mean(name)
                ax.fill_between(times, lo, hi, color=color, alpha=0.2, lw=0)
                ax.plot(times, mean, color=color, lw=1.3, label=f"{label} (SGD)")
                theory = ode.risk if name == "risk" else ode.stats[name]
                ax.plot(times, theory, "--", color="k", lw=0.8)
                fp = fixed[k]["r" if name == "bias" else ("R" if name == "risk" else "population")]
                ax.axhline(fp, color=color, ls=":", lw=0.8)
                arrays[f"{tag}_{name}_sgd"] = vals
                arrays[f"{tag}_{name}_ode"] = theory
                entry[f"{name}_sgd_end"] = float(mean[tail].mean())
                entry[f"{name}_sgd_end_se"] = float(
                    vals[:, tail].mean(axis=1).std(ddof=1) / math.sqrt(runs) if runs > 1 else 0
                )
                entry[f"{name}_ode_end"] = float(theory[tail].mean())
                entry[f"{name}_ode_T"] = float(theory[-1])
                entry[f"{name}_fixed_point"] = float(fp)
                ax.set_xlabel("t = steps / D", fontsize=8)
                ax.set_ylabel(ylabel, fontsize=8)
                ax.tick_params(labelsize=7)
            table.append(entry)
            bar.update()
        axes[row_i, 0].set_title(start_label, fontsize=9, loc="left")
    bar.close()
    for ax in axes[:, 2]:
        ax.axhline(0.0, color="0.6", lw=0.6)
    # the legend where the curves leave room: top right of the population-risk panel
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += axes[0, 1].plot([], [], "k--", lw=0.8) + axes[0, 1].plot([], [], "0.3", ls=":")
    labels += ["ODE (SPEC 10)", "ODE fixed point (SPEC 10)"]
    axes[0, 1].legend(handles, labels, fontsize=6.5, loc="upper right")
    fig.suptitle(
        f"non-centred data (||m|| = 1, m^T K^-1 m = 1.5), centred exponential noise, two-level "
        f"spectrum {{1, 0.5}}, d = {d}, lr = {lr}, c = {clip}, perturbation k (clip(g + k zeta)); "
        f"{runs} runs, 80% bands",
        fontsize=9,
    )
    params = {
        "d": d,
        "runs": runs,
        "lr": lr,
        "clip": clip,
        "T": T,
        "ks": list(ks),
        "seed": seed,
        "noise": repr(p_ref.noise),
        "problem": p_ref.describe(),
        "end_window": [0.75 * T, T],
        "fixed_points": {
            ("unclipped" if k is None else f"k={k:g}"): {
                key: float(v) for key, v in fp.items() if isinstance(v, (int, float))
            }
            for k, fp in fixed.items()
        },
        "table": table,
    }
    return _save(fig, Path(out), "bias", arrays, params), table
