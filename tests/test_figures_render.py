"""Every registered figure's quick version renders, and what it draws is sane.

For each name in ``_figures.FIGURES`` (none skipped) the quick version is written into tmp_path
and the ``Figure`` it saved (``_figures.last_figure``) is checked:

* no NaN is handed to matplotlib (Line2D data, collection offsets, image / mesh arrays; masked
  entries and a diverged run's +inf are allowed: matplotlib leaves them out);
* the axis limits contain the finite data drawn (nothing drawn off the axes), and nothing <= 0
  sits on a log axis;
* every axes with data has an x and a y label (a colour bar: a label on its long axis);
* where an axes draws several series (lines of two or more colours), a legend is there (its own,
  the figure's or another panel's: one legend may serve several panels);
* readable ticks: at least two labelled y ticks in view and no "5.2x10^0" style label (a
  mantissa times 10^k with |k| <= 3, which reads better plainly);
* the PDF embeds its fonts as TrueType (pdf.fonttype 42), no Type 3 fonts.

Timings on a loaded 2-core machine: see /tmp/notes/figures_notes.md (fig6 and minibatch are the
slow ones, about a minute each, mostly XLA compiles).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from matplotlib.collections import Collection
from matplotlib.colors import to_rgba
from matplotlib.image import AxesImage

from clipped_trip import _figures

NAMES = list(_figures.FIGURES)
OWN_MODULES = {"clipped_trip._figures", "clipped_trip._figures_batch"}


def _values(a):
    """Unmasked values of an array-like as a flat float64 array (masked entries dropped)."""
    return np.asarray(np.ma.compressed(np.ma.asarray(a, dtype=float)), dtype=float)


def _line_xy(line):
    x = np.ma.asarray(line.get_xdata(orig=True), dtype=float)
    y = np.ma.asarray(line.get_ydata(orig=True), dtype=float)
    x, y = np.broadcast_arrays(np.ma.filled(x, np.inf), np.ma.filled(y, np.inf))
    masked = np.ma.getmaskarray(np.ma.asarray(line.get_xdata(orig=True))) | np.ma.getmaskarray(
        np.ma.asarray(line.get_ydata(orig=True))
    )
    return np.asarray(x, float), np.asarray(y, float), np.broadcast_to(masked, np.shape(x))


def _is_colorbar(ax):
    return getattr(ax, "_colorbar", None) is not None


def _inside(values, lim, log):
    lo, hi = sorted(lim)
    tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    ok = (values >= lo - tol) & (values <= hi + tol)
    if log:
        ok &= values > 0
    return ok


def _check_axes(ax, name, k):
    where = f"{name}, axes {k} ({ax.get_title() or ax.get_ylabel()!r})"
    has_data = False
    colors = set()
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    xlog, ylog = ax.get_xscale() == "log", ax.get_yscale() == "log"
    for line in ax.get_lines():
        x, y, masked = _line_xy(line)
        assert not np.isnan(x[~masked]).any() and not np.isnan(y[~masked]).any(), (
            f"{where}: NaN in the data of line {line.get_label()!r}"
        )
        fin = np.isfinite(x) & np.isfinite(y) & ~masked
        if not fin.any():
            continue
        tr = line.get_transform()
        if tr == ax.transData:
            has_data = True
            if fin.sum() >= 2:
                colors.add(to_rgba(line.get_color())[:3])
            bad_x = ~_inside(x[fin], xlim, xlog)
            bad_y = ~_inside(y[fin], ylim, ylog)
            assert not bad_x.any(), (
                f"{where}: line {line.get_label()!r} has x outside xlim {xlim}: {x[fin][bad_x][:3]}"
            )
            assert not bad_y.any(), (
                f"{where}: line {line.get_label()!r} has y outside ylim {ylim}: {y[fin][bad_y][:3]}"
            )
        elif tr == ax.get_yaxis_transform():  # axhline
            assert _inside(y[fin], ylim, ylog).all(), f"{where}: horizontal line outside ylim"
        elif tr == ax.get_xaxis_transform():  # axvline
            assert _inside(x[fin], xlim, xlog).all(), f"{where}: vertical line outside xlim"
    for coll in ax.collections:
        offsets = _values(coll.get_offsets()) if coll.get_offsets() is not None else np.array([])
        arr = coll.get_array()
        assert not np.isnan(offsets).any(), f"{where}: NaN offsets in {type(coll).__name__}"
        if arr is not None:
            assert not np.isnan(_values(arr)).any(), f"{where}: NaN in {type(coll).__name__}"
        for path in coll.get_paths():
            assert not np.isnan(path.vertices).any(), f"{where}: NaN vertex in a band / patch"
            if len(path.vertices):
                has_data = True
        if (
            isinstance(coll, Collection)
            and len(offsets)
            and coll.get_offset_transform() == (ax.transData)
        ):
            xy = np.asarray(coll.get_offsets(), float)
            fin = np.isfinite(xy).all(axis=1)
            assert _inside(xy[fin, 0], xlim, xlog).all(), f"{where}: markers outside xlim"
            assert _inside(xy[fin, 1], ylim, ylog).all(), f"{where}: markers outside ylim"
            colors.update(tuple(c[:3]) for c in coll.get_facecolors())
    for im in ax.get_images():
        assert isinstance(im, AxesImage)
        assert not np.isnan(_values(im.get_array())).any(), f"{where}: NaN in an image"
        has_data = True
    return has_data, colors, where


def _check_figure(fig, name):
    # a legend of the figure or of any of its panels (one panel's legend may serve them all)
    legends = list(fig.legends) + [a.get_legend() for a in fig.get_axes() if a.get_legend()]
    legend_texts = [t.get_text() for leg in legends for t in leg.get_texts() if t.get_text()]
    for k, ax in enumerate(fig.get_axes()):
        if not ax.get_visible():
            continue
        has_data, colors, where = _check_axes(ax, name, k)
        if _is_colorbar(ax):
            cb = ax._colorbar
            label = ax.get_ylabel() if cb.orientation == "vertical" else ax.get_xlabel()
            assert label.strip(), f"{where}: colour bar without a label"
            continue
        if not has_data:
            continue
        assert ax.get_xlabel().strip(), f"{where}: no x label"
        assert ax.get_ylabel().strip(), f"{where}: no y label"
        if len(colors) >= 2:
            assert len(legend_texts) >= 2, (
                f"{where}: {len(colors)} series drawn but no legend names them"
            )
        # readable ticks: two or more labelled y ticks in view, no "5.2 x 10^0"
        lo, hi = sorted(ax.get_ylim())
        tol = 1e-9 * max(abs(lo), abs(hi))
        labelled = [
            t.get_text()
            for locs, labels in (
                (ax.yaxis.get_majorticklocs(), ax.yaxis.get_majorticklabels()),
                (ax.yaxis.get_minorticklocs(), ax.yaxis.get_minorticklabels()),
            )
            for v, t in zip(locs, labels)
            if t.get_text().strip() and lo - tol <= v <= hi + tol
        ]
        assert len(labelled) >= 2, f"{where}: fewer than two labelled y ticks ({labelled})"
        for axis in (ax.xaxis, ax.yaxis):
            for t in axis.get_ticklabels(which="both"):
                m = re.search(r"\\times\s*10\^\{?(-?\d+)", t.get_text())
                assert not (m and abs(int(m.group(1))) <= 3), (
                    f"{where}: tick label {t.get_text()!r} (write it plainly)"
                )


@pytest.mark.parametrize("name", NAMES)
def test_quick_figure_renders_sanely(name, quick_figure):
    tmp_path, (path, summary), fig = quick_figure(name)
    assert fig is not None, f"{name}: _save did not record the figure"
    assert path.exists() and path.suffix == ".png"
    for ext in ("png", "pdf", "npz", "json"):
        assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
    json.loads((tmp_path / f"{name}.json").read_text())
    pdf = (tmp_path / f"{name}.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf, f"{name}: fonts not embedded as Type 42"
    if _figures.FIGURES[name][0].__module__ in OWN_MODULES:
        assert round(fig.get_figwidth(), 2) in (3.4, 7.0), f"{name}: not a paper width"
    _check_figure(fig, name)


def test_style_is_scoped():
    """Rendering leaves the caller's rcParams alone (the style is a context, not a global)."""
    import matplotlib as mpl

    from clipped_trip._style import style

    before = mpl.rcParams["font.size"], mpl.rcParams["pdf.fonttype"]
    with style():
        assert mpl.rcParams["pdf.fonttype"] == 42 and mpl.rcParams["ps.fonttype"] == 42
    assert (mpl.rcParams["font.size"], mpl.rcParams["pdf.fonttype"]) == before


def test_readable_log_ticks():
    """A log axis spanning less than a decade gets plain labels, several decades get 10^k."""
    from clipped_trip._style import finish, style, subplots

    with style():
        fig, (a, b) = subplots(1, 2)
        a.plot([0, 1], [4.5, 5.2])
        a.set_yscale("log")
        b.plot([0, 1], [1e-3, 1e5])
        b.set_yscale("log")
        finish(fig)
        fig.canvas.draw()
    narrow = [t.get_text() for t in a.yaxis.get_ticklabels(which="both") if t.get_text()]
    wide = [t.get_text() for t in b.yaxis.get_ticklabels(which="both") if t.get_text()]
    assert narrow and not any("times" in t for t in narrow), narrow
    assert any("4.6" in t or "4.8" in t or "5" in t for t in narrow), narrow
    assert any("10^{" in t for t in wide), wide
