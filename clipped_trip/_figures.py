"""The paper's figures (SPEC section 6), each one function: compute, plot, save PNG/PDF/npz/json.

``run_figure(name, quick, out)`` is what ``clipped-trip reproduce`` and ``experiments/*.py`` call.
Every registered figure function runs inside :func:`clipped_trip._style.style` (sizes, fonts,
palette; see that module for the conventions) and returns ``(path of the PNG, summary)``; the
``matplotlib.figure.Figure`` it saved is kept by :func:`_save` and returned by
:func:`last_figure` (the render tests check it). No plotting backend is chosen here: the figures
are plain ``Figure`` objects, saved without pyplot; the command line picks the backend.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.patches import Patch
from tqdm.auto import tqdm

from . import _io
from ._criteria import ccc, csc, heuristic_schedule, max_ccc, max_ccc_schedule, tune_kappa
from ._factors import reduction_factors
from ._noise import Exponential, Gaussian, StudentT, ThreePoint, Uniform
from ._ode import solve_ode
from ._problem import Problem
from ._sde import simulate_sde
from ._simulate import simulate
from ._style import (
    BAND_ALPHA,
    BAND_COVERAGE,
    GREY,
    ODE,
    ONE_LINE,
    OKABE_ITO,
    SAVE_DPI,
    TOL_INDIGO,
    TOL_WINE,
    band_key,
    band_label,
    finish,
    finite,
    line_key,
    ode_key,
    plain_linear,
    style,
    subplots,
)

FIGURES = {}
_LAST = {"name": None, "figure": None}


def figure(name, title, styled=True):
    """Register a figure function under ``name``; with ``styled`` (default) it runs inside
    :func:`clipped_trip._style.style`, so colours C0.., fonts and sizes are the package's."""

    def register(fn):
        run = fn
        if styled:

            @functools.wraps(fn)
            def run(*args, **kwargs):
                with style():
                    return fn(*args, **kwargs)

        FIGURES[name] = (run, title)
        return run

    return register


def last_figure(name=None):
    """The ``Figure`` that the latest :func:`_save` wrote (None if none, or if ``name`` is given
    and the latest save was another figure's)."""
    if name is not None and _LAST["name"] != name:
        return None
    return _LAST["figure"]


def _save(fig, out: Path, name: str, arrays: dict, params: dict, *, dpi=None):
    """PNG + PDF + npz + json, each written atomically, in the package style (TrueType fonts
    embedded, readable log ticks). The figure is kept for :func:`last_figure`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with style():
        finish(fig)
        for ext in ("png", "pdf"):
            paths.append(
                _io.atomic_write(
                    out / f"{name}.{ext}",
                    lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=dpi or SAVE_DPI),
                )
            )
    plt.close(fig)  # a pyplot figure (from plt.subplots) is released; a plain Figure: no-op
    _LAST.update(name=name, figure=fig)
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


def _band(
    ax,
    res,
    color,
    label,
    exclude_diverged=True,
    *,
    coverage=BAND_COVERAGE,
    ls="-",
    lw=None,
    alpha=BAND_ALPHA,
    edges=False,
    say_band=None,
    zorder=None,
):
    """Mean line and quantile band (``coverage``, default 80%) of a Monte Carlo result.

    ``label`` gets " (mean, 80% band)" appended unless it already names a band or ``say_band``
    is False (use that with a :func:`clipped_trip._style.band_key` legend entry). Only finite
    values are drawn (a diverged run's +inf is left out, never a NaN). ``edges`` draws the band's
    bounds as thin lines too, so overlapping bands stay told apart. Returns the mean's Line2D.
    """
    lo, hi = res.band(coverage, exclude_diverged=exclude_diverged)
    t = np.asarray(res.t, dtype=float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(t[ok], lo[ok], hi[ok], color=color, alpha=alpha, lw=0, zorder=zorder)
        if edges:
            for b in (lo, hi):
                ax.plot(t[ok], b[ok], color=color, lw=0.5, alpha=0.8, zorder=zorder)
    if say_band is None:
        say_band = label is not None and "band" not in label
    if say_band and label is not None:
        label = band_label(label, coverage)
    tm, m = finite(t, res.mean(exclude_diverged=exclude_diverged))
    kw = {"lw": lw} if lw is not None else {}
    (line,) = ax.plot(tm, m, color=color, ls=ls, label=label, zorder=zorder, **kw)
    return line


# ---------------------------------------------------------------------------------------------
@figure("fig1", "C-SGD vs C-HSGD vs ODE under Gaussian and Cauchy noise")
def fig1(quick=False, out=Path("figures"), seed=0, d=None, runs=None, progress=True):
    """(a) Gaussian noise: clipped and unclipped SGD with their ODEs; (b) Cauchy noise, clipped
    SGD, SDE and ODE on their own scale (their agreement); (c) Cauchy noise without clipping:
    SGD's divergence on a log axis spanning decades, clipped SGD for reference."""
    d = d or (200 if quick else 500)
    runs = runs or (20 if quick else 100)
    lr, clip, T = 0.6, 0.4, 15.0
    cases = [
        ("Gaussian noise (std 0.5)", Gaussian(0.5)),
        ("Cauchy noise (scale 0.5)", StudentT(1.0, 0.5)),
    ]
    colors = {"sgd": OKABE_ITO["blue"], "sde": OKABE_ITO["green"], "u": OKABE_ITO["vermillion"]}
    fig, axes = subplots(1, 3, width="two", height=2.75)
    arrays, table = {}, []
    for k, (title, noise) in enumerate(cases):
        p = haar_problem(d, 0.2, noise, seed)
        steps = tqdm(
            total=5, desc=f"fig1 {title}", disable=not progress, leave=False, mininterval=0
        )
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
        gap = np.abs(sgd.mean() / ode.risk - 1).max()
        ax = axes[k]
        # clipped: SGD, SDE and ODE on a scale set by them alone
        _band(ax, sgd, colors["sgd"], None, edges=True)
        _band(ax, sde, colors["sde"], None, ls=(0, (1, 1)), lw=1.4, edges=True)
        ax.plot(*finite(ode.t, ode.risk), **ODE)
        short = title.replace(" noise", "")
        if k == 0:  # Gaussian: unclipped SGD and ODE share the panel (same decade)
            _band(ax, sgd_u, colors["u"], None, edges=True)
            ax.plot(*finite(ode_u.t, ode_u.risk), color="k", ls=":", lw=1.2)
            ax.set_title(f"(a) {short}\nclipped: max |SGD/ODE - 1| = {gap:.1%}")
        else:
            ax.set_title(f"(b) {short}, clipped\nmax |SGD/ODE - 1| = {gap:.1%}")
        ax.set_yscale("log")
        ax.set_xlabel("t = steps / D")
        ax.set_ylabel("excess risk R")
        if k == 1:  # (c): Cauchy without clipping, on its own (decades-wide) log axis
            axc = axes[2]
            # E[R] is infinite after the first unclipped step (infinite noise variance): the
            # median is the central line here
            lo, med, hi = sgd_u.quantiles((0.1, 0.5, 0.9), exclude_diverged=True)
            tt, lo_, hi_ = finite(sgd_u.t, lo, hi)
            axc.fill_between(tt, lo_, hi_, color=colors["u"], alpha=BAND_ALPHA, lw=0)
            for bound in (lo_, hi_):
                axc.plot(tt, bound, color=colors["u"], lw=0.5, alpha=0.8)
            axc.plot(*finite(sgd_u.t, med), color=colors["u"], ls=(0, (3, 1, 1, 1)))
            axc.plot(*finite(sgd.t, sgd.mean()), color=colors["sgd"])
            axc.set_yscale("log")
            axc.set_xlabel("t = steps / D")
            axc.set_ylabel("excess risk R")
            n_div = int(sgd_u.diverged.sum())
            ode_note = "ODE: R = \u221e" if ode_u.diverged else "ODE finite"
            axc.set_title(
                f"(c) {short.split(' (')[0]}, unclipped\n{n_div}/{runs} diverged; {ode_note}"
            )
            if not ode_u.diverged:
                axc.plot(*finite(ode_u.t, ode_u.risk), color="k", ls=":", lw=1.2)
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
    handles = [
        line_key(f"clipped SGD (c = {clip}): mean", color=colors["sgd"]),
        line_key("clipped SDE (C-HSGD): mean", color=colors["sde"], ls=(0, (1, 1)), lw=1.4),
        ode_key("ODE, clipped"),
        line_key("unclipped SGD: mean", color=colors["u"]),
        line_key("unclipped SGD: median (c)", color=colors["u"], ls=(0, (3, 1, 1, 1))),
        line_key("ODE, unclipped", color="k", ls=":", lw=1.2),
        band_key(BAND_COVERAGE, runs)[1],
    ]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=4,
        frameon=False,
        title=f"d = {d}, K = U diag(j^-0.2) U^T (Haar U), lr = {lr}, T = {T:g}; under Cauchy "
        "noise (infinite variance) the unclipped ODE and E[R] are infinite",
    )
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


_STUDENT_COLORS = {
    "50": OKABE_ITO["sky"],
    "10": OKABE_ITO["purple"],
    "5": TOL_WINE,
    "3": OKABE_ITO["orange"],
    "2.5": OKABE_ITO["green"],
    "2.1": TOL_INDIGO,
}


def _law_style(name):
    """Colour and dash of a noise law, the same in figures 2, 3 and 5: Student-t laws dashed;
    the Gaussian wide and underneath, so that Student-t df = 50 (nearly Gaussian) drawn on top
    leaves it visible."""
    if name.startswith("Student-t"):
        df = name.split("df=")[1].split()[0]
        return {"color": _STUDENT_COLORS.get(df, GREY), "ls": (0, (4, 1.5)), "zorder": 3}
    if name.startswith("Gaussian"):
        return {"color": OKABE_ITO["blue"], "lw": 2.4, "alpha": 0.75, "zorder": 2}
    for key, color in (("three-point", "vermillion"), ("uniform", "green"), ("exp", "orange")):
        if name.startswith(key):
            return {"color": OKABE_ITO[color], "zorder": 2}
    return {"zorder": 2}


CCC_LABEL = r"CCC $= \mu_c^2\,(2R + \mathrm{Var}\,\varepsilon)\,/\,\nu_c$"


@figure("fig2", "CCC against c for several noise laws (R = 3)")
def fig2(quick=False, out=Path("figures"), progress=True, **_):
    R = 3.0
    c = np.logspace(-1, 2, 80 if quick else 300)
    fig, axes = subplots(1, 2, width="two", height=2.6, sharey=True)
    arrays, summary = {"c": c}, {}
    for ax, family in zip(axes, (_spec6_noises(), _student_family())):
        for name, noise in tqdm(family, disable=not progress, leave=False, desc="fig2"):
            v = ccc(noise, R, c)
            ax.plot(*finite(c, v), label=name.replace("Student-t ", ""), **_law_style(name))
            arrays[name] = v
            summary[name] = {"max_ccc": float(v.max()), "argmax_c": float(c[np.argmax(v)])}
        ax.axhline(1, **ONE_LINE, label="CCC = 1: clipping neutral")
        ax.set_xscale("log")
        ax.set_xlabel("clip threshold c")
        ax.set_ylabel(CCC_LABEL)
        ax.yaxis.set_tick_params(labelleft=True)
    axes[0].set_title(f"(a) noise std 5, R = {R:g}")
    axes[1].set_title(f"(b) Student-t, variance 25, R = {R:g}")
    # one legend above both panels: first row (a)'s laws and the line CCC = 1, second row (b)'s
    ha, la = axes[0].get_legend_handles_labels()
    hb, lb = axes[1].get_legend_handles_labels()
    hb, lb = hb[:-1], ["Student-t " + x for x in lb[:-1]]
    order = [x for pair in zip(zip(ha, la), zip(hb, lb)) for x in pair]
    fig.legend(*zip(*order), loc="outside upper center", ncol=len(order) // 2, frameon=False)
    return _save(fig, Path(out), "fig2", arrays, {"R": R, "summary": summary}), summary


@figure("fig3", "mu_c, nu_c and CSC against c (R = 3)")
def fig3(quick=False, out=Path("figures"), progress=True, **_):
    R = 3.0
    c = np.logspace(-1, 2, 80 if quick else 300)
    fig, axes = subplots(1, 3, width="two", height=2.75)
    arrays, summary = {"c": c}, {}
    for name, noise in _spec6_noises() + _student_family()[::2]:
        mu, nu = reduction_factors(noise, R, c)
        s = csc(noise, R, c)
        shown = name + (" (nearly Gaussian)" if name.endswith("df=50") else "")
        st = _law_style(name)
        axes[0].plot(*finite(c, mu), label=shown, **st)
        axes[1].plot(*finite(c, nu / (2 * R + noise.second_moment)), **st)
        axes[2].plot(*finite(c, s), **st)
        arrays.update({f"{name}/mu": mu, f"{name}/nu": nu, f"{name}/csc": s})
        summary[name] = {"max_csc": float(s.max())}
    axes[2].axhline(1, **ONE_LINE, label="CSC = 1")
    labels = (
        r"$\mu_c(R) = P(|w| \leq c)$",
        r"$G_c(R) = \nu_c\,/\,(2R + \mathrm{Var}\,\varepsilon)$",
        r"CSC $= \mu_c\,/\,G_c$",
    )
    titles = ("(a) descent factor", "(b) normalised variance factor", "(c) CSC (log scale)")
    for ax, lab, title in zip(axes, labels, titles):
        ax.set_xscale("log")
        ax.set_xlabel("clip threshold c")
        ax.set_ylabel(lab)
        ax.set_title(title)
    axes[2].set_yscale("log")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(
        handles + [axes[2].get_lines()[-1]],
        names + ["CSC = 1 (c): clipping neutral for stability"],
        loc="outside upper center",
        ncol=4,
        frameon=False,
        title=f"R = {R:g}; w = z - noise, z ~ N(0, 2R); noise std 5 (Student-t: variance 25)",
    )
    return _save(fig, Path(out), "fig3", arrays, {"R": R, "summary": summary}), summary


def _csc_norm(vmin, vmax):
    """Colour norm for CSC: logarithmic on both sides of 1, with 1 (clipping neutral) in the
    middle of a diverging map (white), vmin at one end and vmax at the other."""
    lo, hi = -math.log(vmin), math.log(vmax)

    def forward(x):
        lx = np.log(np.clip(x, 1e-300, None))
        return np.where(lx < 0, lx / lo, lx / hi)

    def inverse(y):
        return np.exp(np.where(y < 0, y * lo, y * hi))

    return mcolors.FuncNorm((forward, inverse), vmin=vmin, vmax=vmax)


ISO_CSC = (1.1, 1.5, 2, 5)


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
    arrays, summary, maps = {"ratio": ratio, "level": level}, {}, {}
    for name, make in laws:
        maps[name] = np.array(
            [
                csc(make(s), R, ratio * s)
                for s in tqdm(level, disable=not progress, leave=False, desc=f"fig4 {name}")
            ]
        )
    allz = np.concatenate([Z.ravel() for Z in maps.values()])
    # one colour scale for the three maps, spanning their values (log on either side of 1)
    vmin = min(0.9, 10 ** (math.floor(20 * math.log10(allz.min())) / 20))
    vmax = max(2.0, 10 ** (math.ceil(10 * math.log10(allz.max())) / 10))
    norm = _csc_norm(vmin, vmax)
    level_below = 1 - 1e-3  # CSC < 0.999: below 1 by more than the quadrature's noise
    fig, axes = subplots(1, 3, width="two", height=2.6, sharey=True)
    for ax, (name, Z) in zip(axes, maps.items()):
        im = ax.pcolormesh(ratio, level, Z, shading="nearest", cmap="RdBu_r", norm=norm)
        im.set_rasterized(True)
        if (Z < level_below).any():
            ax.contourf(ratio, level, Z, levels=[0, level_below], colors="none", hatches=["////"])
            ax.contour(ratio, level, Z, levels=[level_below], colors="k", linewidths=0.9)
        iso = [v for v in ISO_CSC if Z.min() < v < Z.max()]
        if iso:
            cs = ax.contour(ratio, level, Z, levels=iso, colors="0.35", linewidths=0.5)
            ax.clabel(cs, fmt="%g", fontsize=6, inline_spacing=2)
        ax.set_yscale("log")
        ax.set_xlabel("c / noise std")
        ax.set_ylabel("noise std")
        ax.yaxis.set_tick_params(labelleft=True)
        frac = float((Z > 1).mean())
        ax.set_title(f"{name}: CSC > 1 on {frac:.0%}")
        arrays[name] = Z
        summary[name] = {"fraction_csc_gt_1": frac}
    ticks = [t for t in (0.9, 0.95, 1, 1.5, 2, 3, 5, 10, 20, 50) if vmin <= t <= vmax]
    cb = fig.colorbar(im, ax=axes, ticks=ticks, fraction=0.04, pad=0.02)
    cb.ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
    cb.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    cb.set_label(f"CSC $= \\mu_c / G_c$ at R = {R:g}")
    fig.legend(
        handles=[
            Patch(facecolor="none", edgecolor="k", hatch="////", lw=0.9, label="CSC < 0.999"),
            line_key(f"CSC = {', '.join(f'{v:g}' for v in ISO_CSC)}", color="0.35", lw=0.5),
        ],
        loc="outside upper center",
        ncol=2,
        frameon=False,
        title=f"R = {R:g}; one colour scale, logarithmic either side of CSC = 1 "
        "(red: clipping stabilises, blue: destabilises)",
    )
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
    fig, axes = subplots(1, 2, width="two", height=2.6)
    arrays, summary = {"R": R}, {}
    for name, noise in tqdm(laws, disable=not progress, leave=False, desc="fig5"):
        mc, c_star = max_ccc(noise, R)
        finite_c = np.isfinite(c_star)
        # max over c of CSC is +inf (CSC ~ 2 f_w(0) (2R + Var) / c as c -> 0): show CSC at c*(R)
        cs = np.where(finite_c, csc(noise, R, np.where(finite_c, c_star, 1.0)), 1.0)
        st = _law_style(name)
        shown = name + (" (= 1: c* = \u221e)" if name.startswith("Gaussian") else "")
        if name.startswith("Gaussian"):  # on the line y = 1: markers keep it visible
            st = {**st, "marker": "o", "ms": 3, "markevery": max(1, len(R) // 10)}
        axes[0].plot(*finite(R, mc), label=shown, **st)
        axes[1].plot(*finite(R, cs), label=shown, **st)
        arrays[f"{name}/max_ccc"], arrays[f"{name}/c_star"], arrays[f"{name}/csc_at_c_star"] = (
            mc,
            c_star,
            cs,
        )
        summary[name] = {
            "max_ccc_range": [float(mc.min()), float(mc.max())],
            "csc_at_c_star_range": [float(cs.min()), float(cs.max())],
        }
    titles = ("(a) best CCC over c", "(b) CSC at the CCC-optimal c*(R) (1 where c* = \u221e)")
    ylabels = (r"$\max_c$ CCC$(c; R)$", r"CSC$(c^*(R); R)$")
    for ax, title, ylab in zip(axes, titles, ylabels):
        ax.axhline(1, **ONE_LINE, label="1: clipping neutral")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("risk R")
        ax.set_ylabel(ylab)
        ax.set_title(title)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncol=3, frameon=False)
    return _save(fig, Path(out), "fig5", arrays, {"summary": summary}), summary


_SCHEDULE_STYLE = {  # wide solid under, dotted on top: coinciding schedules stay visible
    "max-CCC": {"color": OKABE_ITO["blue"], "ls": "-", "lw": 2.2, "zorder": 2},
    "heuristic": {"color": OKABE_ITO["vermillion"], "ls": (0, (4, 1.5, 1, 1.5)), "lw": 1.3},
    "unclipped": {"color": OKABE_ITO["green"], "ls": (0, (1, 1)), "lw": 1.6, "zorder": 4},
}


@figure("fig6", "Optimal (max-CCC) vs heuristic vs unclipped schedules")
def fig6(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    d = 200 if quick else 500
    runs = 10 if quick else 100
    lr, T = 0.4, 15.0
    cases = [
        ("Gaussian std 0.8", Gaussian(0.8)),
        ("three-point q=0.2", ThreePoint(0.8 / math.sqrt(0.2), 0.2)),
    ]
    fig, axes = subplots(2, 3, width="two", height=4.6)
    axes[0, 2].sharey(axes[1, 2])
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
        ax_r, ax_c, ax_l = axes[row]
        not_drawn, lrs, finals_ode = [], [], []
        for label, sched in tqdm(scheds, disable=not progress, leave=False, desc=f"fig6 {name}"):
            st = _SCHEDULE_STYLE[label.split()[0]]
            ode = solve_ode(p, lr, sched, times=t)
            lr_s, clip_s = ode.time_schedules()
            sgd = simulate(
                p, lr_s, clip_s if sched is not None else None, times=t, runs=runs, seed=seed
            )
            _band(ax_r, sgd, st["color"], None, ls=st["ls"], lw=st["lw"], edges=True)
            ax_r.plot(*finite(t, ode.risk), **{**ODE, "lw": 0.9, "zorder": 5})
            if np.all(np.isinf(ode.clip_path)):
                not_drawn.append(label.split()[0])
            else:
                ax_c.plot(*finite(t, ode.clip_path), **st)
            ax_l.plot(*finite(t, ode.lr_path), **st)
            lrs.append(ode.lr_path)
            finals_ode.append(float(ode.risk[-1]))
            arrays[f"{name}/{label}/ode"] = ode.risk
            arrays[f"{name}/{label}/sgd"] = sgd.risk
            arrays[f"{name}/{label}/clip"] = ode.clip_path
            arrays[f"{name}/{label}/lr"] = ode.lr_path
            summary[f"{name}/{label}"] = {
                "ode_final": float(ode.risk[-1]),
                "sgd_final": float(sgd.mean()[-1]),
            }
        k = 3 * row
        same = max(finals_ode) / min(finals_ode) - 1 < 1e-3
        ax_r.set_title(
            f"({'abcdef'[k]}) {name}: risk" + ("\nthe three schedules coincide" if same else "")
        )
        ax_r.set_yscale("log")
        ax_r.set_ylabel("excess risk R")
        ax_c.set_title(f"({'abcdef'[k + 1]}) clip threshold; heuristic \u03ba = {kappa:.2f}")
        ax_c.set_yscale("log")
        ax_c.set_ylabel("clip threshold c(t)")
        if not_drawn:
            ax_c.text(
                0.97,
                0.95,
                "c = \u221e (not drawn):\n" + ", ".join(not_drawn),
                transform=ax_c.transAxes,
                ha="right",
                va="top",
                fontsize=6.5,
            )
        ax_l.set_title(f"({'abcdef'[k + 2]}) learning rate lr / \u03bc(t)")
        ax_l.set_ylabel("learning rate lr(t)")
        spread = float(np.max(np.abs(np.array(lrs) - lr)))
        if spread < 1e-3 * lr:  # all at lr: say how close, rather than draw a 2e-7 gap
            ax_l.text(
                0.97,
                0.62,
                f"all three = {lr:g}\n(within {spread:.1g})",
                transform=ax_l.transAxes,
                ha="right",
                va="center",
                fontsize=6.5,
            )
        for ax in axes[row]:
            ax.set_xlabel("t = steps / D")
    top = max(float(np.max(v)) for key, v in arrays.items() if key.endswith("/lr"))
    axes[1, 2].set_ylim(0, 1.1 * top)
    plain_linear(axes[0, 2])
    plain_linear(axes[1, 2])
    handles = [
        line_key("max-CCC schedule c*(R) (Theorem 3)", **_SCHEDULE_STYLE["max-CCC"]),
        line_key(
            "heuristic c = \u03ba sqrt(2R + Var) (\u03ba tuned)", **_SCHEDULE_STYLE["heuristic"]
        ),
        line_key("unclipped", **_SCHEDULE_STYLE["unclipped"]),
        line_key(f"SGD: mean over {runs} runs", color=GREY),
        band_key(BAND_COVERAGE, runs)[1],
        ode_key("ODE (each schedule)"),
    ]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=3,
        frameon=False,
        title=f"d = {d}, K = U diag(j^-1/6) U^T (Haar U), base lr = {lr}, T = {T:g}",
    )
    arrays["t"] = t
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
    fig, axes = subplots(1, 2, width="two", height=2.6)
    arrays, summary = {}, {"source": source, "n": int(X.shape[0]), "D": reg["D"]}
    law_style = [ODE, {"color": OKABE_ITO["vermillion"], "ls": (0, (1, 1)), "lw": 1.4}]
    for k_ax, (ax, (c, title)) in enumerate(
        zip(axes, ((clip, f"clipped, c = {clip}"), (None, "unclipped")))
    ):
        t, risk = real_data_sgd(
            reg, x0, lr, c, runs=runs, seed=seed, record_every=max(1, X.shape[0] // 100)
        )
        lo, hi = np.quantile(risk, [0.1, 0.9], axis=0)
        color = OKABE_ITO["blue"]
        ax.fill_between(*finite(t, lo, hi), color=color, alpha=BAND_ALPHA, lw=0)
        ax.plot(*finite(t, risk.mean(0)), color=color)
        arrays[f"{title}/t"], arrays[f"{title}/sgd"] = t, risk
        gaps = []
        for k, (name, noise) in enumerate(laws):
            p = Problem.from_covariance(reg["K"], x0, reg["x_star"], noise)
            ode = solve_ode(p, lr, c, times=t)
            ax.plot(*finite(t, ode.risk), **{**law_style[k], "zorder": 3 + k})
            arrays[f"{title}/ode_{k}"] = ode.risk
            gap = float(np.abs(risk.mean(0) / ode.risk - 1).max())
            gaps.append(gap)
            summary[f"{title} / {name}"] = {
                "max_rel_gap_mean_sgd_vs_ode": gap,
                "sgd_final": float(risk.mean(0)[-1]),
                "ode_final": float(ode.risk[-1]),
            }
        ax.set_yscale("log")
        ax.set_xlabel("t = samples / D")
        ax.set_ylabel("excess risk R")
        ax.set_title(
            f"({'ab'[k_ax]}) {title}\nmax |SGD/ODE - 1|: {gaps[0]:.1%} (empirical), "
            f"{gaps[1]:.1%} (Gauss.)"
        )
    handles = [
        line_key(f"SGD on the data: mean over {runs} shuffles", color=OKABE_ITO["blue"]),
        Patch(facecolor=OKABE_ITO["blue"], alpha=BAND_ALPHA + 0.1, lw=0, label="80% band"),
        line_key(f"ODE, noise = {laws[0][0]}", **law_style[0]),
        line_key(f"ODE, noise = {laws[1][0]}", **law_style[1]),
    ]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=2,
        frameon=False,
        title=f"{source}: {n_features} random features, one pass, lr = {lr}",
    )
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
    fig, ax = subplots(1, 1, width="one", height=3.5)
    blue, verm = OKABE_ITO["blue"], OKABE_ITO["vermillion"]
    ax.loglog(dims_a, typical, "o-", color=blue, label=f"rms of one run (slope {slope:.2f})")
    ax.loglog(dims_a, bias, "s-", color=verm, label="|mean over runs - 1| (max over t)")
    ax.loglog(dims_a, bias_se, ":", color=GREY, label="standard error of that mean")
    ref = typical[0] * (dims_a / dims_a[0]) ** -0.5
    ax.loglog(
        dims_a, ref, color="k", ls=(0, (6, 2, 1, 2)), lw=0.8, label="$d^{-1/2}$ (paper's rate)"
    )
    ax.set_xlabel("dimension d (two-level spectrum 1 / 0.1)")
    ax.set_ylabel("relative gap |R_SGD / R_ODE - 1|, t in [0, 1]")
    ax.set_title(f"Student-t(3) noise, lr {lr}, clip {clip}, {runs} runs per d")
    fig.legend(loc="outside lower center", ncol=1, frameon=False)
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
from . import _figures_private  # noqa: E402,F401  (registers the privacy and bias figures)
