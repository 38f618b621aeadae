"""Adaptive-threshold figure (SPEC 11) and value-clipping / signSGD figure (SPEC 12).

Registered in ``_figures.FIGURES`` as ``adaptive`` and ``value-clipping`` when this module is
imported (``_figures`` imports it next to ``_figures_batch``).

* ``adaptive``: quantile tracking (Andrew et al. 2021) in its slow (eta_C = 2 / D) and fast
  (eta_C = 0.2) regimes, AutoClip (Seetharaman et al. 2020), the best constant threshold, the
  paper's max-CCC schedule (Theorem 3) and unclipped SGD, on Student-t(3) and Gaussian noise of the
  same variance. Every method runs at its own constant learning rate, the one that minimises its
  ODE risk at the horizon (a grid; the constant c is tuned jointly): with one shared lr the
  comparison would be between effective step sizes gamma * mu (clipping shrinks the step, which
  lowers the noise floor), not between clipping rules. Isotropic K: norm clipping and the
  adaptive rules are rotation invariant and see the spectrum only through R(t), and K = I gives
  D = d, the largest D (smallest finite-size gap, O(D^{-1/2})) for the d simulated.
* ``value-clipping``: norm clipping vs coordinate-wise clipping at several tau vs signSGD, with the
  signSGD limit ValueClipSGD(eta / tau, tau) -> SignSGD(eta) as tau -> 0, on a diagonal power-law
  spectrum (value clipping is basis dependent); side panel: the per-coordinate descent rate
  gamma mu_i lambda_i against lambda_i (value clipping preconditions like sqrt(lambda) at small
  tau).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ._autoclip import AutoClipSGD
from ._clipped_sgd import ClippedSGD
from ._criteria import max_ccc_schedule
from ._factors import reduction_factors
from ._figures import _band, _save, figure
from ._noise import Gaussian, StudentT
from ._ode import solve_ode
from ._problem import Problem
from ._quantile_clip import QuantileClipSGD
from ._simulate import simulate
from ._style import (
    BAND_ALPHA,
    BAND_COVERAGE,
    GREY,
    ODE,
    OKABE_ITO,
    TOL_INDIGO,
    TOL_WINE,
    band_key,
    finite,
    line_key,
    plain_linear,
    subplots,
)
from ._value_clip import SignSGD, ValueClipSGD
from ._value_factors import sign_descent_factor, value_clip_factors

__all__ = ["adaptive", "value_clipping"]

# ---------------------------------------------------------------------------------------------
# adaptive thresholds (SPEC 11)
# ---------------------------------------------------------------------------------------------
QUANTILE = 0.5  # quantile tracking's q, and AutoClip's percentile / 100
CLIP0 = 1.0  # quantile tracking's initial threshold c_0 (residual units; recorded: SPEC 11A.b)
FAST_CLIP_LR = 0.2  # eta_C of the fast regime (Andrew et al.'s value)
SLOW_ETA = 2.0  # slow regime: eta_C = SLOW_ETA / D
ADAPTIVE_R0 = 1.0

ADAPTIVE_METHODS = {  # name -> colour
    "quantile, slow": OKABE_ITO["blue"],
    "quantile, fast": OKABE_ITO["sky"],
    "AutoClip": OKABE_ITO["green"],
    "best constant c": OKABE_ITO["orange"],
    "max-CCC schedule": OKABE_ITO["vermillion"],
    "unclipped": GREY,
}
ADAPTIVE_KEYS = {  # name -> legend entry
    "quantile, slow": f"quantile tracking, slow ($\\eta_C$ = {SLOW_ETA:g}/D)",
    "quantile, fast": f"quantile tracking, fast ($\\eta_C$ = {FAST_CLIP_LR:g})",
    "AutoClip": "AutoClip",
    "best constant c": "best constant c",
    "max-CCC schedule": "max-CCC schedule (Theorem 3)",
    "unclipped": "unclipped SGD",
}


def _adaptive_noises():
    return [
        ("Student-t(3), variance 1", StudentT(3.0, 1.0 / math.sqrt(3.0))),
        ("Gaussian, variance 1", Gaussian(1.0)),
    ]


def adaptive_problem(d, noise, R0=ADAPTIVE_R0):
    """K = I_d, x* = 0, x0 = sqrt(2 R0 / d) * ones (so R(0) = R0)."""
    return Problem.isotropic(d, noise, x0=np.full(d, math.sqrt(2.0 * R0 / d)))


def adaptive_algorithm(name, lr, D, *, clip=None, schedule=None):
    """The algorithm behind one curve of the ``adaptive`` figure at learning rate ``lr``."""
    if name == "quantile, slow":
        return QuantileClipSGD(lr, CLIP0, quantile=QUANTILE, clip_lr=SLOW_ETA / D, regime="slow")
    if name == "quantile, fast":
        return QuantileClipSGD(lr, CLIP0, quantile=QUANTILE, clip_lr=FAST_CLIP_LR, regime="fast")
    if name == "AutoClip":
        return AutoClipSGD(lr, percentile=100.0 * QUANTILE)
    if name == "best constant c":
        return ClippedSGD(lr, clip)
    if name == "max-CCC schedule":
        return ClippedSGD(lr, schedule)
    if name == "unclipped":
        return ClippedSGD(lr, None)
    raise ValueError(f"unknown method {name!r}")


def _final_ode_risk(p, alg, T, cache):
    try:
        ode = solve_ode(p, alg, T=T, n_records=2, cache=cache)
    except (ValueError, OverflowError):  # a threshold leaving its window, a blow-up
        return math.inf
    return float(ode.risk[-1]) if not ode.diverged else math.inf


def tune_adaptive(p, T, lrs, clips, schedule, progress=False):
    """Per method: the constant lr (and for "best constant c" the clip) minimising R_ODE(T)."""
    best = {}
    cache = {}
    bar = tqdm(total=len(ADAPTIVE_METHODS) - 1 + len(clips), disable=not progress, leave=False)
    for name in ADAPTIVE_METHODS:
        for c in clips if name == "best constant c" else [None]:
            for lr in lrs:
                alg = adaptive_algorithm(name, float(lr), p.D, clip=c, schedule=schedule)
                r = _final_ode_risk(p, alg, T, cache)
                if r < best.get(name, (math.inf,))[0]:
                    best[name] = (r, float(lr), c)
            bar.update()
    bar.close()
    failed = [name for name in ADAPTIVE_METHODS if name not in best]
    if failed:
        raise RuntimeError(f"no learning rate of the grid gave a finite ODE risk for {failed}")
    return {k: {"ode_final": v[0], "lr": v[1], "clip": v[2]} for k, v in best.items()}


def _edge_warning(value, grid):
    return len(grid) > 1 and bool(np.isclose(value, grid[0]) or np.isclose(value, grid[-1]))


@figure("adaptive", "Adaptive thresholds: quantile tracking, AutoClip, max-CCC and constant c")
def adaptive(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    d = 100 if quick else 1000
    runs = 4 if quick else 16
    T = 4.0 if quick else 15.0
    # quick: a one-point "grid" (the tuning path runs, nothing is tuned)
    lrs = np.array([0.5]) if quick else np.geomspace(0.1, 1.6, 11)
    clips = np.array([1.0]) if quick else np.geomspace(0.2, 3.0, 7)
    n_rec = 17 if quick else 61
    t_fine = np.linspace(0.0, T, 4 * (n_rec - 1) + 1)  # the max-CCC schedule's grid
    t = t_fine[::4]
    late = t >= (2.0 / 3.0) * T  # the zoomed stretch
    arrays = {"t": t}
    summary = {}
    noises = _adaptive_noises()
    inner = None if progress else False  # simulate's own bar only where ours is shown
    fig, axes = subplots(2, 2, width="two", height=6.2)
    bar = tqdm(total=len(noises) * len(ADAPTIVE_METHODS), desc="adaptive", disable=not progress)
    for col, (title, noise) in enumerate(noises):
        p = adaptive_problem(d, noise)
        schedule = max_ccc_schedule(noise)
        tuned = tune_adaptive(p, T, lrs, clips, schedule)
        ax_r, ax_c = axes[0, col], axes[1, col]
        ax_z = ax_r.inset_axes([0.17, 0.06, 0.34, 0.27])  # the horizon, zoomed
        table = []
        for name, color in ADAPTIVE_METHODS.items():
            lr, c = tuned[name]["lr"], tuned[name]["clip"]
            alg = adaptive_algorithm(name, lr, p.D, clip=c, schedule=schedule)
            key = f"{col}/{name}"
            if name == "max-CCC schedule":
                ode_f = solve_ode(p, alg, times=t_fine)
                lr_s, clip_s = ode_f.time_schedules()
                sgd = simulate(
                    p, ClippedSGD(lr_s, clip_s), times=t, runs=runs, seed=seed, progress=inner
                )
                ode_risk, ode_clip = ode_f.risk[::4], ode_f.clip_path[::4]
                sgd_clip = None  # the schedule is deterministic: c(t) is the ODE's
                arrays[f"{key}/ode_lr"] = ode_f.lr_path[::4]
            else:
                sgd = simulate(p, alg, times=t, runs=runs, seed=seed, progress=inner)
                ode = solve_ode(p, alg, times=t)
                ode_risk = ode.risk
                ode_clip = (
                    np.full(t.shape, c if c is not None else np.inf)
                    if isinstance(alg, ClippedSGD)
                    else ode.clip_path
                )
                sgd_clip = sgd.stat("clip") if "clip" in sgd.stats else None
            c_edge = c is not None and _edge_warning(c, clips)
            _band(ax_r, sgd, color, None)
            ax_r.plot(*finite(t, ode_risk), **ODE)
            ax_z.plot(*finite(t[late], sgd.mean()[late]), color=color)
            ax_z.plot(*finite(t[late], ode_risk[late]), **{**ODE, "lw": 0.8})
            if sgd_clip is not None:
                lo, hi = sgd.stat_band("clip", BAND_COVERAGE)
                ok = np.isfinite(lo) & np.isfinite(hi)
                ax_c.fill_between(t[ok], lo[ok], hi[ok], color=color, alpha=BAND_ALPHA, lw=0)
                ax_c.plot(*finite(t, sgd.stat_mean("clip")), color=color)
                ax_c.plot(*finite(t, ode_clip), **ODE)
            elif np.isfinite(ode_clip).any():  # constant c, or the max-CCC c*(R_ODE(t))
                ax_c.plot(*finite(t, ode_clip), color=color, lw=1.6)
            arrays[f"{key}/sgd"] = sgd.risk
            arrays[f"{key}/ode"] = ode_risk
            arrays[f"{key}/ode_clip"] = ode_clip
            if sgd_clip is not None:
                arrays[f"{key}/sgd_clip"] = sgd_clip
            m = sgd.mean()
            se = sgd.std_error()
            rel = m / ode_risk - 1
            row = {
                "lr": lr,
                "clip": c,
                "lr_at_grid_edge": _edge_warning(lr, lrs),
                "clip_at_grid_edge": c_edge,
                "sgd_final": float(m[-1]),
                "ode_final": float(ode_risk[-1]),
                "max_rel_gap_sgd_ode": float(np.abs(rel).max()),
                "max_gap_in_std_errors": float(
                    np.abs((m - ode_risk)[1:] / np.where(se[1:] > 0, se[1:], np.inf)).max()
                ),
                "ode_clip_final": float(ode_clip[-1]) if np.isfinite(ode_clip[-1]) else None,
            }
            if sgd_clip is not None:
                row["sgd_clip_final_mean"] = float(sgd.stat_mean("clip")[-1])
            summary[f"{title}/{name}"] = row
            shown = "" if c is None else f", c {c:.2g}" + (" (grid edge)" if c_edge else "")
            table.append((f"lr {lr:.2g}{shown}: {ode_risk[-1]:.3g}", color))
            bar.update()
        # per method: the tuned lr (c) and R_ODE(T), in its colour, top right
        ax_r.text(
            0.98,
            0.97,
            "tuned lr; R_ODE(T)",
            transform=ax_r.transAxes,
            ha="right",
            va="top",
            fontsize=6.5,
        )
        for k, (text, color) in enumerate(table):
            ax_r.text(
                0.98,
                0.9 - 0.065 * k,
                text,
                transform=ax_r.transAxes,
                ha="right",
                va="top",
                fontsize=6.5,
                color=color,
            )
        ax_r.set_yscale("log")
        ax_r.set_title(f"({'ab'[col]}) {title}: risk")
        ax_r.set_xlabel("t = steps / D")
        ax_r.set_ylabel("excess risk R")
        ax_z.set_xlabel("t", fontsize=6, labelpad=0)
        ax_z.set_ylabel("R (SGD mean)", fontsize=6, labelpad=1)
        ax_z.tick_params(labelsize=5.5, pad=1)
        plain_linear(ax_z)
        ax_c.set_yscale("log")
        note = " (max-CCC: c = $\\infty$)" if noise.kind == "gaussian" else ""
        ax_c.set_title(f"({'cd'[col]}) threshold c(t), residual units{note}")
        ax_c.set_xlabel("t = steps / D")
        ax_c.set_ylabel("c (SGD: mean, 80% band)")
    bar.close()
    fig.legend(
        handles=[
            *(line_key(ADAPTIVE_KEYS[n], color=c) for n, c in ADAPTIVE_METHODS.items()),
            band_key(BAND_COVERAGE, runs)[1],
            line_key("ODE", **ODE),
        ],
        loc="outside lower center",
        ncol=4,
        frameon=False,
        title=(
            f"isotropic K, d = D = {d}, R(0) = {ADAPTIVE_R0:g}, noise variance 1; lines: mean over "
            f"{runs} runs; insets: t $\\geq$ {(2.0 / 3.0) * T:.3g} zoomed\n"
            f"each method at its own constant lr, tuned on the ODE (R at T = {T:g}); "
            f"q = {QUANTILE:g} (AutoClip p = {100 * QUANTILE:g}), quantile c$_0$ = {CLIP0:g}\n"
            "fast-regime ODE c: E$_\\pi$[c]; max-CCC runs at lr / $\\mu_{c^*}$(R) (compensated)"
        ),
    )
    params = {
        "d": d,
        "runs": runs,
        "T": T,
        "seed": seed,
        "R0": ADAPTIVE_R0,
        "quantile": QUANTILE,
        "clip0": CLIP0,
        "slow_clip_lr": f"{SLOW_ETA}/D",
        "fast_clip_lr": FAST_CLIP_LR,
        "lr_grid": lrs.tolist(),
        "clip_grid": clips.tolist(),
        "spectrum": "isotropic",
        "summary": summary,
    }
    return _save(fig, Path(out), "adaptive", arrays, params), summary


# ---------------------------------------------------------------------------------------------
# value clipping and signSGD (SPEC 12)
# ---------------------------------------------------------------------------------------------
VALUE_ALPHA = 0.5
VALUE_R0 = 1.0


def value_problem(d, noise, alpha=VALUE_ALPHA, R0=VALUE_R0):
    """Diagonal power law lambda_j = j^-alpha, x* = 0, x0 = sqrt(2 R0 / D) * ones (R(0) = R0)."""
    D = float(np.sum(np.arange(1, d + 1, dtype=np.float64) ** (-alpha)))
    return Problem.power_law(d, alpha, noise, x0=np.full(d, math.sqrt(2.0 * R0 / D)))


def descent_rates(p, alg, R):
    """gamma mu_i(R) lambda_i: the per-coordinate drift rate of the ODE at risk R (SPEC 12)."""
    lam = p.eigenvalues
    if isinstance(alg, SignSGD):
        return alg.lr * sign_descent_factor(p.noise, R) * np.sqrt(lam)
    if isinstance(alg, ValueClipSGD):
        mu, _ = value_clip_factors(p.noise, R, alg.clip_value, lam)
        return alg.lr * mu * lam
    mu = 1.0 if alg.clip is None else float(reduction_factors(p.noise, R, alg.clip)[0])
    return alg.lr * mu * lam


@figure("value-clipping", "Norm vs value (coordinate-wise) clipping vs signSGD, power law")
def value_clipping(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    d = 100 if quick else 1000
    runs = 4 if quick else 16
    T = 20.0 if quick else 200.0
    n_rec = 16 if quick else 41
    lr, clip = 1.0, 0.3
    taus = [1.0, 0.03] if quick else [1.0, 0.3, 0.03]  # (0.1 at lr = 1: panel (b)'s)
    eta = 0.1
    sign_taus = [0.1, 0.01, 0.001]
    noise = StudentT(3.0, 0.2)
    p = value_problem(d, noise)
    inner = None if progress else False  # simulate's own bar only where ours is shown
    t = np.concatenate([[0.0], np.geomspace(T / 2000.0, T, n_rec - 1)])
    value_colors = [OKABE_ITO["vermillion"], OKABE_ITO["green"], OKABE_ITO["orange"]]
    left = [("unclipped SGD", ClippedSGD(lr, None), GREY)]
    left.append((f"norm clip c = {clip:g}", ClippedSGD(lr, clip), OKABE_ITO["blue"]))
    left += [
        (f"value clip $\\tau$ = {tau:g}", ValueClipSGD(lr, tau), color)
        for tau, color in zip(taus, value_colors)
    ]
    right = [(f"signSGD $\\eta$ = {eta:g}", SignSGD(eta), OKABE_ITO["purple"])]
    right += [
        (f"value clip $\\tau$ = {tau:g}, lr = $\\eta/\\tau$", ValueClipSGD(eta / tau, tau), color)
        for tau, color in zip(sign_taus, (OKABE_ITO["sky"], TOL_WINE, TOL_INDIGO))
    ]
    fig, axes = subplots(2, 2, width="two", height=6.4)
    ax_a, ax_b, ax_dev, ax_pre = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    arrays = {"t": t, "eigenvalues": p.eigenvalues}
    summary = {}
    bar = tqdm(total=len(left) + len(right), desc="value-clipping", disable=not progress)
    results = {}
    for ax, group in ((ax_a, left), (ax_b, right)):
        for label, alg, color in group:
            key = _plain_label(label)
            sgd = simulate(p, alg, times=t, runs=runs, seed=seed, progress=inner)
            ode = solve_ode(p, alg, times=t)
            results[label] = (sgd, ode)
            lo, hi = sgd.band(BAND_COVERAGE)
            ok = (t > 0) & np.isfinite(lo) & np.isfinite(hi)
            ax.fill_between(t[ok], lo[ok], hi[ok], color=color, alpha=BAND_ALPHA, lw=0)
            ax.plot(*finite(t[1:], sgd.mean()[1:]), color=color, label=label)
            ax.plot(*finite(t[1:], ode.risk[1:]), **ODE)
            arrays[f"{key}/sgd"] = sgd.risk
            arrays[f"{key}/ode"] = ode.risk
            m, se = sgd.mean(), sgd.std_error()
            summary[key] = {
                "sgd_final": float(m[-1]),
                "ode_final": float(ode.risk[-1]),
                "max_rel_gap_sgd_ode": float(np.abs(m / ode.risk - 1).max()),
                "max_gap_in_std_errors": float(
                    np.abs((m - ode.risk)[1:] / np.where(se[1:] > 0, se[1:], np.inf)).max()
                ),
            }
            bar.update()
    bar.close()
    ax_a.set_title(f"(a) same lr = {lr:g}: norm vs value clipping")
    ax_b.set_title(f"(b) signSGD limit: ValueClipSGD($\\eta/\\tau$, $\\tau$), $\\eta$ = {eta:g}")
    for ax in (ax_a, ax_b):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("t = steps / D")
        ax.set_ylabel("excess risk R")
        ax.legend(loc="lower left")
    # (c) the limit, resolved: everything relative to the signSGD ODE
    sign_label = right[0][0]
    sign_ode = results[sign_label][1].risk
    for label, _alg, color in right:
        sgd, ode = results[label]
        m, se, base = sgd.mean()[1:], sgd.std_error()[1:], sign_ode[1:]
        lo, hi = (m - 2 * se) / base - 1, (m + 2 * se) / base - 1
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax_dev.fill_between(t[1:][ok], lo[ok], hi[ok], color=color, alpha=BAND_ALPHA, lw=0)
        ax_dev.plot(*finite(t[1:], m / base - 1), color=color)
        if label != sign_label:
            g = ode.risk / sign_ode - 1
            ax_dev.plot(*finite(t[1:], g[1:]), **ODE)
            row = summary[_plain_label(label)]
            row["max_rel_gap_value_ode_vs_sign_ode"] = float(np.abs(g).max())
            row["max_rel_gap_sgd_vs_sign_ode"] = float(np.abs(sgd.mean() / sign_ode - 1).max())
    ax_dev.axhline(0.0, color=GREY, lw=0.6, ls=":")
    ax_dev.set_xscale("log")
    plain_linear(ax_dev)
    ax_dev.set_xlabel("t = steps / D")
    ax_dev.set_ylabel("R / R$_{\\mathrm{sign\\,ODE}}$ - 1")
    ax_dev.set_title("(c) runs of (b) relative to the signSGD ODE (SGD: mean $\\pm$ 2 s.e.)")
    # (d) the per-coordinate drift rate gamma mu_i(R) lambda_i
    lam = p.eigenvalues
    for label, alg, color in left + right:
        key = _plain_label(label)
        rate = descent_rates(p, alg, p.initial_risk)
        ax_pre.plot(lam, rate, color=color)
        arrays[f"{key}/rate_R0"] = rate
        rate_end = descent_rates(p, alg, float(results[label][1].risk[-1]))
        ax_pre.plot(lam, rate_end, color=color, lw=0.8, ls=":")
        arrays[f"{key}/rate_RT"] = rate_end
    lo_rate = min(float(np.min(arrays[f"{_plain_label(lb)}/rate_R0"])) for lb, _, _ in left + right)
    for slope, y0 in ((1.0, 2.5), (0.5, 0.3)):  # guides: SGD (slope 1), signSGD (slope 1/2)
        ax_pre.plot(lam, lo_rate * y0 * (lam / lam[-1]) ** slope, color="k", lw=0.6, ls="-.")
    ax_pre.set_xscale("log")
    ax_pre.set_yscale("log")
    ax_pre.set_xlabel("eigenvalue $\\lambda_i$")
    ax_pre.set_ylabel("$\\gamma\\,\\mu_i(R)\\,\\lambda_i$ (ODE drift rate)")
    ax_pre.set_title("(d) preconditioning: solid at R(0), dotted at R$_{ODE}$(T)")
    # (c) and (d) use the colours of (a) and (b)
    fig.legend(
        handles=[
            band_key(BAND_COVERAGE, runs)[0],
            band_key(BAND_COVERAGE, runs)[1],
            line_key("ODE (deterministic equivalent)", **ODE),
            line_key("(d): slopes 1 (SGD) and 1/2 (signSGD)", color="k", lw=0.6, ls="-."),
        ],
        loc="outside lower center",
        ncol=2,
        frameon=False,
        title=(
            f"diagonal power law $\\lambda_j = j^{{-{VALUE_ALPHA:g}}}$, d = {d} (D = {p.D:.1f}), "
            f"R(0) = {VALUE_R0:g}, Student-t(3) noise, scale 0.2; (c), (d): colours of (a), (b)"
        ),
    )
    params = {
        "d": d,
        "alpha": VALUE_ALPHA,
        "D": p.D,
        "R0": VALUE_R0,
        "runs": runs,
        "T": T,
        "lr": lr,
        "clip": clip,
        "taus": taus,
        "eta": eta,
        "sign_taus": sign_taus,
        "noise": repr(noise),
        "seed": seed,
        "summary": summary,
    }
    return _save(fig, Path(out), "value-clipping", arrays, params), summary


def _plain_label(label):
    """A legend label without mathtext, for array and summary keys."""
    for tex, plain in (("$\\tau$", "tau"), ("$\\eta$", "eta"), ("$\\eta/\\tau$", "eta/tau")):
        label = label.replace(tex, plain)
    return label
