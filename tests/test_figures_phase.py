"""The clipping-map figure (clipped_trip/_figures_phase.py): its quick version renders, the ratio
map is what the ODE says, and the drawn contour is the ratio = 1 level.

Quick version: ~25 s on a loaded 2-core machine (mostly XLA compiles); see
/tmp/notes/phase_figure_notes.md.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.contour import ContourSet

from clipped_trip import ClippedSGD, solve_ode
from clipped_trip._figures_phase import SCALE, map_grids, map_problem
from clipped_trip._noise import StudentT


@pytest.fixture(scope="module")
def quick(quick_figure):
    out, (path, summary), fig = quick_figure("clipping-map")
    data = np.load(out / "clipping-map.npz")
    return out, path, summary, fig, data


def test_quick_renders(quick):
    out, path, summary, fig, data = quick
    for ext in ("png", "pdf", "npz", "json"):
        assert (out / f"clipping-map.{ext}").stat().st_size > 0
    assert path == out / "clipping-map.png"
    params = json.loads((out / "clipping-map.json").read_text())["params"]
    assert params["d"] == 100 and len(params["spots"]) == 2
    assert fig is not None
    df, ratio = data["df"], data["ratio"]
    unclipped = data["unclipped_best"]
    assert ratio.shape == (len(df), len(data["clip"]))
    # finite where df > 2 (and Gaussian); where df <= 2 the unclipped risk is infinite: ratio 0
    assert np.isfinite(ratio[df > 2]).all()
    assert (ratio[df > 2] > 0).all()
    assert np.isinf(unclipped[df <= 2]).all()
    assert (ratio[df <= 2] == 0).all()
    assert np.isfinite(data["clipped_best"]).all()
    assert np.isfinite(data["spot_sgd_mean"]).all() and np.isfinite(data["spot_ode"]).all()
    assert (data["spot_gap"] < 0.5).all()


def test_contour_is_ratio_one(quick):
    """Every vertex of the drawn contour lies on a grid edge of (log10 df, c) where the linear
    interpolation of log10 ratio is 0, i.e. the contour is the ratio = 1 level."""
    _, _, _, fig, data = quick
    ax = fig.get_axes()[0]
    contours = [c for c in ax.collections if isinstance(c, ContourSet)]
    assert len(contours) == 1
    assert list(contours[0].levels) == [0.0]
    df, clips, ratio = data["df"], data["clip"], data["ratio"]
    t = np.isfinite(df) & (df > 2)
    x, z = np.log10(df[t]), np.log10(ratio[t])
    verts = np.concatenate([p.vertices for p in contours[0].get_paths()])
    assert len(verts) >= 2
    for vx, vy in verts:
        i = int(np.clip(np.searchsorted(x, vx) - 1, 0, len(x) - 2))
        j = int(np.clip(np.searchsorted(clips, vy) - 1, 0, len(clips) - 2))
        fx = (vx - x[i]) / (x[i + 1] - x[i])
        fy = (vy - clips[j]) / (clips[j + 1] - clips[j])
        assert -1e-9 <= fx <= 1 + 1e-9 and -1e-9 <= fy <= 1 + 1e-9
        assert min(fx, 1 - fx) < 1e-9 or min(fy, 1 - fy) < 1e-9  # on a grid edge
        zz = (
            z[i, j] * (1 - fx) * (1 - fy)
            + z[i + 1, j] * fx * (1 - fy)
            + z[i, j + 1] * (1 - fx) * fy
            + z[i + 1, j + 1] * fx * fy
        )
        assert abs(zz) < 1e-9
    # and the ratio crosses 1 somewhere on the grid (the contour is not empty for nothing)
    assert (z < 0).any() and (z > 0).any()


def test_map_cell_matches_solve_ode(quick):
    """One cell of the map against solve_ode (DOP853) per lr, min over the same lr grid."""
    _, _, _, _, data = quick
    dfs, clips, lrs, d, T = map_grids(quick=True)
    i, j = 2, 3  # df = 4, the fourth clip
    assert data["df"][i] == dfs[i]
    p = map_problem(d, StudentT(float(dfs[i]), SCALE))
    best = {}
    for c in (None, float(clips[j])):
        risks = [solve_ode(p, ClippedSGD(float(lr), c), T=T, n_records=3).risk[-1] for lr in lrs]
        risks = [r if math.isfinite(r) else math.inf for r in risks]
        best[c] = min(risks)
    assert data["clipped_best"][i, j] == pytest.approx(best[float(clips[j])], rel=1e-6)
    assert data["unclipped_best"][i] == pytest.approx(best[None], rel=1e-6)
    assert data["ratio"][i, j] == pytest.approx(best[float(clips[j])] / best[None], rel=1e-6)
