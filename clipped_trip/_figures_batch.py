"""Mini-batch figures (SPEC section 8): per-example vs clip of the mean, and the critical batch.

Registered in ``_figures.FIGURES`` as ``minibatch`` and ``critical-batch``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ._clipped_sgd import ClippedSGD
from ._criteria import critical_batch
from ._figures import _band, _save, figure
from ._noise import ThreePoint
from ._ode import solve_ode
from ._problem import Problem
from ._simulate import simulate
from ._style import (
    BAND_COVERAGE,
    GREY,
    ODE,
    OKABE_ITO,
    ONE_LINE,
    band_key,
    figsize,
    finite,
    line_key,
    subplots,
)

MODES = {"per-example": OKABE_ITO["blue"], "mean": OKABE_ITO["vermillion"]}
MODE_NAMES = {
    "per-example": "per-example clipping",
    "mean": "clip of the mean",
    "unclipped": "unclipped",
}


def _heavy_problem(d):
    # three-point noise +-3 w.p. 0.1 each (Var 1.8): CCC ~ 4.9 at R = 0.1 (SPEC 8B.4)
    return Problem.two_level(d, ThreePoint(3.0, 0.2))


@figure("minibatch", "Per-example clipping vs clip of the mean as the batch grows")
def minibatch(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    d = 200 if quick else 1000
    runs = 4 if quick else 16
    batches = [1, 4, 16] if quick else [1, 4, 16, 64, 256]
    p = _heavy_problem(d)
    clip, lr_per_example = 0.2, 0.5  # gamma = 0.5 B: the linear scaling rule
    T = 2.0 if quick else 3.0
    fig = Figure(figsize=figsize("two", 4.4), layout="constrained")
    gs = fig.add_gridspec(2, len(batches), height_ratios=[3, 2])
    axes_top = [fig.add_subplot(gs[0, i]) for i in range(len(batches))]
    bottom = fig.add_subplot(gs[1, :])
    arrays, finals = {}, []
    bar = tqdm(total=len(batches) * 3, desc="minibatch", disable=not progress)
    for col, B in enumerate(batches):
        ax = axes_top[col]
        lr = lr_per_example * B
        row = {"B": B, "lr": lr}
        for mode, color in [*MODES.items(), ("unclipped", GREY)]:
            alg = ClippedSGD(
                lr,
                None if mode == "unclipped" else clip,
                batch=B,
                clip_mode="per-example" if mode == "unclipped" else mode,
            )
            sgd = simulate(
                p,
                alg,
                T=T,
                runs=runs,
                seed=seed,
                n_records=31,
                progress=None if progress else False,
            )
            ode = solve_ode(p, alg, times=sgd.t)
            _band(ax, sgd, color, None, edges=True)
            ax.plot(*finite(ode.t, ode.risk), **{**ODE, "lw": 0.8, "zorder": 5})
            arrays[f"B{B}_{mode}_sgd"] = sgd.risk
            arrays[f"B{B}_{mode}_ode"] = ode.risk
            arrays[f"B{B}_t"] = sgd.t
            row[f"{mode}_sgd"] = float(sgd.mean()[-1])
            row[f"{mode}_ode"] = float(ode.risk[-1])
            row[f"{mode}_method"] = ode.params["method"]
            bar.update()
        finals.append(row)
        ax.set_yscale("log")
        same = " (modes equal)" if B == 1 else ""  # at B = 1 the two modes are one algorithm
        ax.set_title(f"({'abcdefgh'[col]}) B = {B}{same}\nlr = {lr:g}")
        ax.set_xlabel("t = steps / D")
        ax.set_ylabel("risk R")
    bar.close()
    Bs = np.array([r["B"] for r in finals], dtype=float)
    for mode, color in MODES.items():
        ode_ratio = np.array([r[f"{mode}_ode"] / r["unclipped_ode"] for r in finals])
        sgd_ratio = np.array([r[f"{mode}_sgd"] / r["unclipped_sgd"] for r in finals])
        bottom.plot(*finite(Bs, ode_ratio), **{**ODE, "color": color, "lw": 1.0})
        bottom.plot(*finite(Bs, sgd_ratio), "o", color=color, ms=4)
    bottom.axhline(1.0, **ONE_LINE)
    bottom.set_xscale("log", base=2)
    bottom.set_yscale("log")
    bottom.set_xlabel("batch size B")
    bottom.set_ylabel("R(T) / unclipped R(T)")
    bottom.set_title(
        f"({'abcdefgh'[len(batches)]}) final risk relative to unclipped SGD, T = {T:g}"
    )
    bottom.legend(
        handles=[
            line_key("ODE / map (dashed)", color="k", ls=ODE["ls"], lw=1.0),
            line_key("SGD mean (dots)", color="k", ls="none", marker="o", ms=4),
            line_key("1 = no gain from clipping", **ONE_LINE),
        ],
        loc="lower left",
    )
    fig.legend(
        handles=[
            *(line_key(MODE_NAMES[m] + " SGD", color=c) for m, c in MODES.items()),
            line_key("unclipped SGD", color=GREY),
            band_key(BAND_COVERAGE, runs)[1],
            line_key("ODE / one-step map", **ODE),
        ],
        loc="outside upper center",
        ncol=3,
        frameon=False,
        title=f"two-level spectrum d = {d}, three-point noise (+-3, q = 0.2), c = {clip}, "
        f"lr = {lr_per_example} B (linear scaling); lines: mean over {runs} runs",
    )
    params = {
        "d": d,
        "runs": runs,
        "clip": clip,
        "lr_per_example": lr_per_example,
        "T": T,
        "seed": seed,
        "noise": repr(p.noise),
        "finals": finals,
    }
    return _save(fig, Path(out), "minibatch", arrays, params), finals


def _steps_to(risk, t, target, D):
    """First time (in steps) the risk path reaches ``target`` (linear in log R between records)."""
    below = np.flatnonzero(risk <= target)
    if below.size == 0:
        return math.inf
    i = below[0]
    if i == 0:
        return 0.0
    r0, r1 = math.log(risk[i - 1]), math.log(risk[i])
    f = (r0 - math.log(target)) / (r0 - r1) if r0 != r1 else 1.0
    return D * (t[i - 1] + f * (t[i] - t[i - 1]))


@figure("critical-batch", "Steps and samples to a target risk against the batch size")
def critical_batch_figure(quick=False, out=Path("figures"), seed=0, progress=True, **_):
    d = 120 if quick else 500
    runs = 4 if quick else 8
    batches = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    p = _heavy_problem(d)
    clip = 0.2
    target = 0.05 * p.initial_risk
    methods = {"per-example": clip, "mean": clip, "unclipped": None}
    lam_max = float(p.eigenvalues.max())
    results = {m: [] for m in methods}
    bar = tqdm(total=len(batches) * len(methods), desc="critical-batch", disable=not progress)
    for B in batches:
        for m, c in methods.items():
            mode = "per-example" if m == "unclipped" else m
            # the fastest rate on the ODE / map: a log grid up to the stiffest mode's limit
            lrs = np.geomspace(0.05, 2.0 * p.D / lam_max, 5 if quick else 24)
            best = (math.inf, None)
            cache = {}
            for lr in lrs:
                alg = ClippedSGD(float(lr), c, batch=B, clip_mode=mode)
                T = min(60.0, 400.0 / float(lr))
                t = np.linspace(0.0, T, 400)
                ode = solve_ode(p, alg, times=t, cache=cache)
                steps = _steps_to(ode.risk, ode.t, target, p.D)
                if steps < best[0]:
                    best = (steps, float(lr), ode.params["method"])
            steps_ode, lr_best = best[0], best[1]
            sgd_steps = math.nan
            if lr_best is not None:
                alg = ClippedSGD(lr_best, c, batch=B, clip_mode=mode)
                horizon = 2.0 * steps_ode / p.D + 2.0 / p.D
                sgd = simulate(
                    p,
                    alg,
                    times=np.linspace(0, horizon, 200),
                    runs=runs,
                    seed=seed,
                    progress=None if progress else False,  # quiet when the figure is
                )
                sgd_steps = _steps_to(sgd.mean(), sgd.t, target, p.D)
            results[m].append(
                {
                    "B": B,
                    "lr": lr_best,
                    "steps_ode": steps_ode,
                    "steps_sgd": sgd_steps,
                    "method": best[2] if lr_best is not None else None,
                }
            )
            bar.update()
    bar.close()
    fig, axes = subplots(1, 2, width="two", height=2.9)
    colors = {**MODES, "unclipped": GREY}
    arrays = {"batches": np.array(batches)}
    for m, rows in results.items():
        Bs = np.array([r["B"] for r in rows], dtype=float)
        so = np.array([r["steps_ode"] for r in rows])
        ss = np.array([r["steps_sgd"] for r in rows])
        arrays[f"{m}_steps_ode"], arrays[f"{m}_steps_sgd"] = so, ss
        arrays[f"{m}_lr"] = np.array([np.nan if r["lr"] is None else r["lr"] for r in rows])
        # a target not reached (inf steps) or no usable lr (NaN) is left out, said below
        axes[0].plot(*finite(Bs, so), **{**ODE, "color": colors[m]})
        axes[0].plot(*finite(Bs, ss), "o", color=colors[m])
        axes[1].plot(*finite(Bs, Bs * so), **{**ODE, "color": colors[m]})
        axes[1].plot(*finite(Bs, Bs * ss), "o", color=colors[m])
    marks = {
        "per-example": critical_batch(p, clip, risk=target),
        "mean": critical_batch(p, clip, risk=target, clip_mode="mean"),
        "unclipped": critical_batch(p, None),
    }
    for ax in axes:
        for m, b in marks.items():
            if math.isfinite(b) and b <= 2 * max(batches):
                ax.axvline(b, color=colors[m], ls=":", lw=0.9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
    axes[0].set_ylabel(f"steps to R = {target:.3g}")
    axes[1].set_ylabel("samples (B x steps)")
    axes[0].set_title("(a) steps to the target")
    axes[1].set_title("(b) samples to the target")
    missing = [
        f"{m} B = {r['B']}"
        for m, rows in results.items()
        for r in rows
        if not r["steps_ode"] < 1e300
    ]
    crit = ", ".join(f"{MODE_NAMES[m]} {b:.3g}" for m, b in marks.items())
    handles = [
        *(line_key(MODE_NAMES[m], color=c, lw=2.0) for m, c in colors.items()),
        line_key("ODE / map at its best lr (dashed)", color="k", ls=ODE["ls"], lw=1.0),
        line_key(f"SGD at that lr, mean of {runs} runs (dots)", color="k", ls="none", marker="o"),
        line_key("critical batch (dotted, where <= 2 max B)", color="k", ls=":", lw=0.9),
    ]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=3,
        frameon=False,
        title=f"two-level d = {d}, three-point noise, c = {clip}, best lr per B on the ODE / map\n"
        f"critical batch at the target: {crit}"
        + (
            f"\ntarget not reached (ODE / map, at any lr of the grid): {', '.join(missing)}"
            if missing
            else ""
        ),
    )
    params = {
        "d": d,
        "runs": runs,
        "clip": clip,
        "target": target,
        "seed": seed,
        "critical_batch": marks,
        "results": results,
    }
    return _save(fig, Path(out), "critical-batch", arrays, params), {
        "critical_batch": marks,
        "results": results,
    }
