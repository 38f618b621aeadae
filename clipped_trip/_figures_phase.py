"""Phase-diagram figures: where clipping helps, over the noise's tail index and the clip.

Registered in ``_figures.FIGURES`` as ``clipping-map``: for Student-t noise of ``df`` degrees of
freedom (and Gaussian noise, the df = inf limit) and a clip c in residual units, the final risk of
clipped SGD at its best learning rate over that of unclipped SGD at its best learning rate, both
predicted by the risk ODE (:func:`clipped_trip.phase_diagram`, one call for the whole grid
noise x lr x clip, clip None included), spot-checked by SGD (:func:`clipped_trip.simulate`) at a
few cells. For df <= 2 the unclipped risk is infinite (the noise has infinite variance): the ratio
is 0 there, clipping wins at any c; those columns are hatched, not coloured.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm.auto import tqdm

from ._clipped_sgd import ClippedSGD
from ._figures import _save, figure
from ._noise import Gaussian, StudentT
from ._phase import phase_diagram
from ._problem import Problem
from ._simulate import simulate
from ._style import figsize, line_key

ALPHA = 0.25  # power-law exponent of the spectrum, lambda_j = j^-alpha
R0 = 1.0  # initial risk
_RATIO_TICKS = (0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 5, 10)
SCALE = 1.0  # the noise's scale: Student-t scale, Gaussian std


def map_problem(d, noise, alpha=ALPHA, R0=R0):
    """Diagonal power law lambda_j = j^-alpha, x* = 0, x0 = sqrt(2 R0 / D) ones (R(0) = R0)."""
    D = float(np.sum(np.arange(1, d + 1, dtype=np.float64) ** (-alpha)))
    return Problem.power_law(d, alpha, noise, x0=np.full(d, math.sqrt(2.0 * R0 / D)))


def map_grids(quick=False):
    """(dfs, clips, lrs, d, T): the grids of the map (Student-t dfs; the Gaussian is added)."""
    if quick:
        dfs = np.array([1.5, 2.5, 4.0, 10.0])
        clips = np.geomspace(0.1, 10.0, 5)
        lrs = np.geomspace(0.1, 30.0, 6)
        return dfs, clips, lrs, 100, 10.0
    dfs = np.geomspace(1.2, 20.0, 16)
    clips = np.geomspace(0.02, 20.0, 24)
    lrs = np.geomspace(0.05, 100.0, 40)
    return dfs, clips, lrs, 500, 10.0


def best_over_lr(final_risk):
    """min over the lr axis (axis 1) of (noise, lr, clip) final risks, and its argmin (inf and
    NaN count as +inf; an all-inf column gives inf and index 0)."""
    r = np.where(np.isfinite(final_risk), final_risk, np.inf)
    return r.min(axis=1), r.argmin(axis=1)


def clipping_ratio(final_risk):
    """(ratio (noise, clip), best clipped risk, best unclipped risk (noise,), best lr index) from
    phase-diagram final risks shaped (noise, lr, 1 + clips), the first clip being None.

    ratio = min_lr R_clip(T) / min_lr R_unclipped(T): 0 where the unclipped risk is infinite (and
    the clipped one finite), NaN where both are."""
    best, arg = best_over_lr(final_risk)
    unclipped, clipped = best[:, 0], best[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = clipped / unclipped[:, None]
    ratio = np.where(np.isinf(unclipped)[:, None] & np.isfinite(clipped), 0.0, ratio)
    ratio = np.where(np.isinf(clipped) & np.isinf(unclipped)[:, None], np.nan, ratio)
    return ratio, clipped, unclipped, arg


def _edges(x):
    """Cell edges of a geometric grid (geometric midpoints, the ends half a step out)."""
    x = np.asarray(x, float)
    lx = np.log(x)
    mid = 0.5 * (lx[1:] + lx[:-1])
    return np.exp(np.concatenate([[lx[0] - (mid[0] - lx[0])], mid, [lx[-1] + (lx[-1] - mid[-1])]]))


def _crossings(c, log_ratio):
    """The clips where a column of log ratios crosses 0 (linear interpolation in log c)."""
    out = []
    lc = np.log(c)
    for i in range(len(c) - 1):
        a, b = log_ratio[i], log_ratio[i + 1]
        if np.isfinite(a) and np.isfinite(b) and (a < 0) != (b < 0):
            out.append(float(np.exp(lc[i] + (lc[i + 1] - lc[i]) * a / (a - b))))
    return out


def _spot_cells(dfs, clips, clipped, quick):
    """Spot-check cells (noise index, clip index): several tail indices, each at its best clip
    and at a small clip (quick: two cells)."""
    n_noise = len(dfs) + 1  # the Gaussian last
    small = max(0, len(clips) // 5)
    if quick:
        return [(0, int(np.argmin(clipped[0]))), (n_noise - 1, small)]
    picks = sorted({0, len(dfs) // 3, (2 * len(dfs)) // 3, n_noise - 1})
    cells = []
    for i in picks:
        j_best = int(np.argmin(clipped[i]))
        cells.append((i, j_best))
        j_other = small if abs(j_best - small) > 2 else len(clips) - 1 - small
        cells.append((i, j_other))
    return cells


@figure("clipping-map", "Where clipping helps: best-lr risk ratio over (tail index, clip)")
def clipping_map(quick=False, out=Path("figures"), seed=0, progress=True, runs=None, **_):
    t_start = time.perf_counter()
    dfs, clips, lrs, d, T = map_grids(quick)
    runs = runs or (2 if quick else 8)
    laws = [StudentT(float(df), SCALE) for df in dfs] + [Gaussian(SCALE)]
    p = map_problem(d, Gaussian(SCALE))
    pd = phase_diagram(
        p,
        ClippedSGD,
        axes={"noise": laws, "lr": [float(x) for x in lrs], "clip": [None, *map(float, clips)]},
        T=T,
    )
    t_map = time.perf_counter() - t_start
    ratio, clipped, unclipped, arg = clipping_ratio(pd.final_risk)
    best_lr = np.where(np.isfinite(pd.final_risk).any(axis=1), lrs[arg], np.nan)

    # spot checks: SGD at the cell's best lr against the ODE's final risk
    cells = _spot_cells(dfs, clips, clipped, quick)
    spots = []
    bar = tqdm(total=len(cells), desc="clipping-map spot checks", disable=not progress)
    t0 = time.perf_counter()
    for i, j in cells:
        lr = float(best_lr[i, j + 1])
        c = float(clips[j])
        sgd = simulate(
            map_problem(d, laws[i]), ClippedSGD(lr, c), T=T, runs=runs, seed=seed, n_records=11
        )
        mean = float(sgd.mean()[-1])
        se = float(sgd.std_error()[-1])
        ode = float(clipped[i, j])
        spots.append(
            {
                "df": float(dfs[i]) if i < len(dfs) else math.inf,
                "clip": c,
                "lr": lr,
                "sgd_mean": mean,
                "sgd_se": se,
                "ode": ode,
                "gap": abs(mean / ode - 1.0),
                "ratio": float(ratio[i, j]),
            }
        )
        bar.update()
    bar.close()
    t_spots = time.perf_counter() - t0

    # ---- the map: Student-t columns on a log df axis, the Gaussian as a column at its right
    fig = Figure(figsize=figsize("two", 3.9), layout="constrained")
    ax = fig.add_subplot()
    # x = log10 df (a linear axis: the Gaussian column and the df ticks are placed by hand)
    df_edges = np.log10(_edges(dfs))
    step = df_edges[-1] - df_edges[-2]
    g_lo, g_hi = df_edges[-1] + 0.6 * step, df_edges[-1] + 2.6 * step
    g_x = 0.5 * (g_lo + g_hi)
    c_edges = _edges(clips)
    with np.errstate(divide="ignore", invalid="ignore"):
        logr = np.log10(ratio)
    shown = np.ma.masked_invalid(np.where(ratio > 0, logr, np.nan))
    lo = float(np.nanmin(np.where(np.isfinite(shown.filled(np.nan)), shown.filled(np.nan), 0)))
    hi = float(np.nanmax(np.where(np.isfinite(shown.filled(np.nan)), shown.filled(np.nan), 0)))
    lo, hi = min(lo, -0.05), max(hi, 0.05)
    norm = mcolors.TwoSlopeNorm(vcenter=0.0, vmin=lo, vmax=hi)
    cmap = "RdBu_r"
    mesh = ax.pcolormesh(df_edges, c_edges, shown[:-1].T, cmap=cmap, norm=norm, shading="flat")
    ax.pcolormesh([g_lo, g_hi], c_edges, shown[-1:].T, cmap=cmap, norm=norm, shading="flat")
    # df <= 2: unclipped SGD has infinite risk (ratio 0): hatched
    heavy = dfs <= 2.0
    if heavy.any():
        x_hi = df_edges[np.flatnonzero(heavy)[-1] + 1]
        ax.fill_between(
            [df_edges[0], x_hi],
            c_edges[0],
            c_edges[-1],
            facecolor="0.85",
            edgecolor="0.35",
            hatch="///",
            lw=0.0,
        )
    # ratio = 1: contour over the Student-t columns, ticks on the Gaussian column
    finite_t = np.ma.masked_invalid(shown[:-1].filled(np.nan))
    if finite_t.count() and finite_t.min() < 0 < finite_t.max():
        ax.contour(np.log10(dfs), clips, finite_t.T, levels=[0.0], colors="k", linewidths=1.4)
    g_cross = _crossings(clips, logr[-1])
    for cc in g_cross:
        ax.plot([g_lo, g_hi], [cc, cc], color="k", lw=1.4)
    # spot checks
    gaps = np.array([s["gap"] for s in spots])
    sx = [math.log10(s["df"]) if math.isfinite(s["df"]) else g_x for s in spots]
    sy = [s["clip"] for s in spots]
    gap_norm = mcolors.Normalize(0.0, max(0.05, float(np.ceil(gaps.max() * 100) / 100)))
    sc = ax.scatter(
        sx, sy, c=gaps, cmap="viridis", norm=gap_norm, s=46, marker="o", edgecolors="k", zorder=6
    )
    for x, y, s in zip(sx, sy, spots):
        ax.annotate(
            f"{s['gap']:.1%}",
            (x, y),
            xytext=(5, 4),
            textcoords="offset points",
            fontsize=6.5,
            zorder=7,
            bbox={"boxstyle": "round,pad=0.15", "fc": "w", "ec": "none", "alpha": 0.75},
        )
    ax.set_yscale("log")
    ax.set_xlim(df_edges[0], g_hi)
    ax.set_ylim(c_edges[0], c_edges[-1])
    ax.axvline(df_edges[-1] + 0.3 * step, color="w", lw=4, zorder=4)
    ticks = [t for t in (1.2, 1.5, 2, 3, 5, 10, 20) if df_edges[0] <= math.log10(t) <= df_edges[-1]]
    ax.set_xticks([*np.log10(ticks), g_x], [*(f"{t:g}" for t in ticks), "Gaussian\n(df = inf)"])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("tail index: Student-t degrees of freedom df (log scale)")
    ax.set_ylabel("clip c (residual units)")
    cb = fig.colorbar(mesh, ax=ax, location="right", pad=0.01, fraction=0.05)
    cand = _RATIO_TICKS if hi - lo < 0.8 else (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10)
    tick_r = [r for r in cand if lo <= math.log10(r) <= hi]
    cb.set_ticks([math.log10(r) for r in tick_r], labels=[f"{r:g}" for r in tick_r])
    cb.set_label("min_lr R_clip(T) / min_lr R_unclip(T)\n(ODE; < 1: clipping helps)")
    cb2 = fig.colorbar(sc, ax=ax, location="right", pad=0.01, fraction=0.03, shrink=0.5)
    cb2.set_label(f"spot check |SGD/ODE - 1|\n(mean of {runs} runs, at T)")
    handles = [
        line_key("ratio = 1 (clipping breaks even)", color="k", lw=1.4),
        Patch(
            facecolor="0.85",
            edgecolor="0.35",
            hatch="///",
            label="df <= 2: unclipped risk infinite (ratio 0, clipping wins)",
        ),
        line_key(
            "SGD spot check at the cell's best lr (label: |SGD/ODE - 1|)",
            ls="none",
            marker="o",
            mfc=mcolors.to_hex(matplotlib.colormaps["viridis"](0.5)),
            mec="k",
        ),
    ]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=2,
        frameon=False,
        title=f"power law lambda_j = j^-{ALPHA:g}, d = {d}, R(0) = {R0:g}, T = {T:g}\nnoise: "
        f"Student-t (scale {SCALE:g}) or Gaussian (std {SCALE:g}); each cell at its best lr of "
        f"{len(lrs)} in [{lrs[0]:g}, {lrs[-1]:g}]",
    )
    t_total = time.perf_counter() - t_start

    # ---- numbers
    per_df = []
    for i in range(len(laws)):
        r = ratio[i]
        ok = np.isfinite(r)
        helps = ok & (r < 1)
        k = int(np.nanargmin(np.where(ok, r, np.nan))) if ok.any() else 0
        per_df.append(
            {
                "df": float(dfs[i]) if i < len(dfs) else math.inf,
                "unclipped_best": float(unclipped[i]),
                "clipped_best": float(np.min(clipped[i])),
                "best_ratio": float(r[k]) if ok.any() else math.nan,
                "best_clip": float(clips[k]),
                "helps_clip_min": float(clips[helps].min()) if helps.any() else None,
                "helps_clip_max": float(clips[helps].max()) if helps.any() else None,
                "crossings": _crossings(clips, logr[i]) if math.isfinite(unclipped[i]) else [],
            }
        )
    arrays = {
        "df": np.append(dfs, np.inf),
        "clip": clips,
        "lr": lrs,
        "ratio": ratio,
        "best_lr": best_lr[:, 1:],
        "best_lr_unclipped": best_lr[:, 0],
        "clipped_best": clipped,
        "unclipped_best": unclipped,
        "final_risk": pd.final_risk,
        "spot_df": np.array([s["df"] for s in spots]),
        "spot_clip": np.array(sy, float),
        "spot_lr": np.array([s["lr"] for s in spots]),
        "spot_sgd_mean": np.array([s["sgd_mean"] for s in spots]),
        "spot_sgd_se": np.array([s["sgd_se"] for s in spots]),
        "spot_ode": np.array([s["ode"] for s in spots]),
        "spot_gap": gaps,
    }
    params = {
        "d": d,
        "alpha": ALPHA,
        "R0": R0,
        "T": T,
        "scale": SCALE,
        "runs": runs,
        "seed": seed,
        "df_grid": dfs.tolist(),
        "clip_grid": clips.tolist(),
        "lr_grid": lrs.tolist(),
        "noise": [repr(n) for n in laws],
        "per_df": per_df,
        "spots": spots,
        "seconds": {"map": t_map, "spot_checks": t_spots, "total": t_total},
        "phase_diagram": {
            k: pd.params[k]
            for k in ("cells", "steps", "seconds_tables", "seconds_compile", "seconds_solve")
            if k in pd.params
        },
    }
    summary = {"per_df": per_df, "spots": spots, "seconds": params["seconds"]}
    return _save(fig, Path(out), "clipping-map", arrays, params), summary
