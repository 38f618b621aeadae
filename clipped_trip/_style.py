"""One style for every figure: paper sizes, embedded fonts, a colour-blind-safe palette and the
plotting conventions (mean line + quantile band, ODE black dashed, readable log ticks).

Use::

    from ._style import style, subplots, ODE, band_key, finish

    with style():                        # rcParams for the duration (colours resolve inside it)
        fig, axes = subplots(1, 2, width="two", height=2.6)
        ...
        finish(fig)                      # readable tick labels on every log axis

``_figures.figure`` applies :func:`style` to every registered figure function, and
``_figures._save`` saves inside it (fonts embedded as TrueType: ``pdf.fonttype`` and
``ps.fonttype`` 42) after :func:`finish`. Figures are plain ``matplotlib.figure.Figure``
objects (no pyplot, no backend): the plotting backend is the command line's choice alone.

Conventions:

* widths: :data:`ONE_COLUMN` (3.4 in) and :data:`TWO_COLUMN` (7.0 in); fonts 7-8 pt at that size;
* colours: Okabe-Ito (:data:`PALETTE`, also the default colour cycle ``C0`` ... ``C6``);
* Monte Carlo: mean line + quantile band (:data:`BAND_COVERAGE` = 0.8, "80% band"); the
  legend says which quantile (:func:`band_label`, :func:`band_key`);
* ODE (deterministic equivalent): black dashed (:data:`ODE`), in the legend;
* log axes where the values span decades; more than about three decades are labelled 10^k,
  fewer get plain labels (0.05, 0.1, 0.2 instead of 5x10^-2; :class:`ReadableLogFormatter`),
  and an axis spanning about a decade or less gets round ticks spread over it
  (0.05, 0.07, 0.1, 0.15; :func:`readable_log`);
* every axes with data gets x and y labels (``tests/test_figures_render.py`` checks it).
"""

from __future__ import annotations

import contextlib
import math

import matplotlib as mpl
import numpy as np
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogFormatterSciNotation,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    ScalarFormatter,
)

#: figure widths in inches: one column and two columns (full page width) of a paper
ONE_COLUMN = 3.4
TWO_COLUMN = 7.0
WIDTHS = {"one": ONE_COLUMN, "two": TWO_COLUMN}

#: Okabe & Ito (2008), colour-blind safe; black is kept for the ODE, yellow is left out (too light
#: on white)
OKABE_ITO = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "green": "#009E73",
    "orange": "#E69F00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
PALETTE = [OKABE_ITO[k] for k in ("blue", "vermillion", "green", "orange", "purple", "sky")]
GREY = "#7F7F7F"
#: two more colour-blind-safe colours (Paul Tol's muted scheme) for families of more than six
TOL_WINE = "#882255"
TOL_INDIGO = "#332288"
#: line styles to tell apart curves that may coincide (cycled with the colours where needed)
DASHES = ["-", (0, (5, 1.5)), (0, (1, 1.2)), (0, (4, 1.5, 1, 1.5)), (0, (7, 2, 1, 2, 1, 2))]

#: quantile band of the Monte Carlo runs drawn around the mean (0.8: 10% to 90%)
BAND_COVERAGE = 0.8
BAND_ALPHA = 0.2

#: the deterministic equivalent: black dashed, everywhere
ODE = {"color": "k", "ls": (0, (4, 2)), "lw": 1.0}
#: the reference line y = 1 (CCC, CSC, ratios): thin grey dotted, so a curve on it stays visible
ONE_LINE = {"color": GREY, "ls": ":", "lw": 0.8, "zorder": 1}

SAVE_DPI = 200

RC = {
    "figure.figsize": (TWO_COLUMN, 2.6),
    "figure.dpi": 100,
    "savefig.dpi": SAVE_DPI,
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # TrueType fonts embedded (no Type 3)
    "ps.fonttype": 42,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica", "Liberation Sans"],
    "mathtext.fontset": "dejavusans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8.5,
    "legend.frameon": True,
    "legend.framealpha": 0.85,
    "legend.edgecolor": "0.8",
    "legend.handlelength": 2.6,
    "legend.borderaxespad": 0.3,
    "legend.labelspacing": 0.3,
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.linewidth": 0.6,
    "axes.titlepad": 4.0,
    "axes.formatter.use_mathtext": True,
    "axes.formatter.limits": (-3, 4),
    "axes.formatter.useoffset": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "xtick.major.size": 3.0,
    "ytick.major.size": 3.0,
    "xtick.minor.size": 1.8,
    "ytick.minor.size": 1.8,
    "image.cmap": "RdBu_r",
}


@contextlib.contextmanager
def style(**overrides):
    """The package's rcParams (``RC``, updated by ``overrides``) for the duration."""
    with mpl.rc_context({**RC, **overrides}):
        yield


def figsize(width="two", height=None, aspect=0.37):
    """(width, height) in inches; ``width`` is "one", "two" or a number of inches."""
    w = WIDTHS.get(width, width) if isinstance(width, str) else float(width)
    return (w, height if height is not None else w * aspect)


def subplots(nrows=1, ncols=1, width="two", height=None, **kwargs):
    """A ``Figure`` (no pyplot) of the given width with a grid of axes, constrained layout."""
    fig = Figure(figsize=figsize(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, **kwargs)
    return fig, axes


# ---------------------------------------------------------------------------------------------
# legend helpers
def band_label(label, coverage=BAND_COVERAGE):
    """``label`` with the band said, e.g. "clipped SGD (mean, 80% band)"."""
    return f"{label} (mean, {coverage:.0%} band)"


def band_key(coverage=BAND_COVERAGE, runs=None, color=GREY):
    """Legend proxies for "line: mean over runs" and "shading: the quantile band"."""
    of = f"{runs} runs" if runs else "runs"
    return [
        Line2D([], [], color=color, lw=1.2, label=f"mean over {of}"),
        Patch(facecolor=color, alpha=BAND_ALPHA + 0.15, lw=0, label=f"{coverage:.0%} band of {of}"),
    ]


def ode_key(label="ODE (deterministic equivalent)"):
    """Legend proxy for the ODE's black dashed line."""
    return Line2D([], [], **ODE, label=label)


def line_key(label, **kw):
    return Line2D([], [], label=label, **kw)


# ---------------------------------------------------------------------------------------------
# ticks
class ReadableLogFormatter(LogFormatterSciNotation):
    """Log-axis labels without "5.2x10^0": where matplotlib labels ticks between decades (an axis
    spanning less than about two decades) every label is written plainly ("0.04", "0.2", "5");
    where only decades are labelled they stay 10^k, unless the axis spans about three decades
    or less within [1e-4, 1e6): then 0.1, 1, 10 are written plainly too.
    """

    def set_locs(self, locs=None):
        super().set_locs(locs)
        if self.axis is None or self._sublabels is None:
            return
        vmin, vmax = sorted(self.axis.get_view_interval())
        if vmin <= 0:
            return
        numdec = math.log10(vmax / vmin)
        if numdec <= 0.8:  # less than a factor ~6 in view: label every 1..9 x 10^k
            self._sublabels = set(range(1, 11))
        elif numdec <= 2.6:  # one to two and a half decades: 1, 2, 5 x 10^k
            self._sublabels = {1, 2, 5}
        # fewer labels where they would crowd the axis (a short panel)
        room = _axis_inches(self.axis) / _LABEL_PITCH[self.axis.axis_name]
        for fewer in ({1, 2, 5}, {1, 3}, {1}):
            if _count(self._sublabels, vmin, vmax) <= room:
                break
            if len(fewer) < len(self._sublabels):
                self._sublabels = fewer

    def __call__(self, x, pos=None):
        s = super().__call__(x, pos)
        if not s or x <= 0:
            return s
        if self._sublabels == {1}:  # only decades labelled: keep 10^k
            vmin, vmax = sorted(self.axis.get_view_interval()) if self.axis else (x, x)
            if vmin > 0 and math.log10(vmax / vmin) > 3.2:
                return s
        if 1e-4 <= x < 1e6:
            return r"$\mathdefault{%s}$" % _plain(x)
        return s


#: smallest distance between two tick labels, inches (7 pt labels; x labels are wider)
_LABEL_PITCH = {"x": 0.38, "y": 0.16}


def _axis_inches(axis):
    """Length of an axis in inches (from the axes' position in the figure)."""
    ax = axis.axes
    pos = ax.get_position()
    w, h = ax.figure.get_size_inches()
    return pos.width * w if axis.axis_name == "x" else pos.height * h


def _count(subs, vmin, vmax):
    """How many values m x 10^k (m in ``subs``) lie in [vmin, vmax]."""
    k0, k1 = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
    return sum(1 for k in range(k0, k1 + 1) for m in subs if vmin <= m * 10.0**k <= vmax)


def _plain(x):
    text = f"{x:.3g}"
    if "e" in text:
        text = f"{x:f}".rstrip("0").rstrip(".")
    return text


#: mantissas of candidate ticks on a narrow log axis, roundest first
_MANTISSAS = ((1,), (2, 5), (3,), (1.5, 4, 6, 8), (2.5, 7, 9))


def _narrow_log_ticks(lo, hi, target=6):
    """Labelled ticks for a log axis spanning about a decade or less: round numbers (1, 2, 5,
    then 3, then 1.5, 4, 6, 8, ...) kept at least 1/``target`` of the span apart (in log), so the
    labels spread over the whole axis; unlabelled minor ticks at 1..9 x 10^k."""
    span = math.log10(hi / lo)
    gap = span / target
    k0, k1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    inside = [lo * (1 - 1e-9), hi * (1 + 1e-9)]
    kept = []
    for group in _MANTISSAS:
        for m in group:
            for k in range(k0, k1 + 1):
                v = float(f"{m * 10.0**k:.12g}")
                if inside[0] <= v <= inside[1] and all(abs(math.log10(v / w)) >= gap for w in kept):
                    kept.append(v)
    # a very narrow axis (a factor < 2): evenly spaced round numbers fill in
    for v in MaxNLocator(nbins=target, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi):
        v = float(f"{v:.12g}")
        if inside[0] <= v <= inside[1] and all(abs(math.log10(v / w)) >= gap for w in kept):
            kept.append(v)
    minor = [
        float(f"{m * 10.0**k:.12g}")
        for k in range(k0, k1 + 1)
        for m in range(1, 10)
        if inside[0] <= m * 10.0**k <= inside[1]
    ]
    return sorted(kept), [v for v in minor if v not in kept]


def readable_log(ax, which="both"):
    """Install :class:`ReadableLogFormatter` on the log axes of ``ax`` (major and minor)."""
    for name in ("x", "y") if which == "both" else (which,):
        axis = getattr(ax, f"{name}axis")
        if axis.get_scale() != "log":
            continue
        base = getattr(axis.get_transform(), "base", 10)
        if base == 2:  # batch sizes: 1, 4, 16, 64 rather than 2^0, 2^2, ...
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v >= 1 else ""))
            axis.set_minor_formatter(NullFormatter())
            continue
        if base != 10:
            continue
        lo, hi = sorted(axis.get_view_interval())
        if 0 < lo and math.log10(hi / lo) < 1e-4:  # flat: not a 2e-7 gap drawn as a large one
            mid = math.sqrt(lo * hi)
            lo, hi = mid / 1.05, mid * 1.05
            getattr(ax, f"set_{name}lim")(lo, hi)
        if 0 < lo and math.log10(hi / lo) <= 1.3:  # about a decade or less: chosen plain ticks
            room = _axis_inches(axis) / _LABEL_PITCH[name]
            major, minor = _narrow_log_ticks(lo, hi, target=max(2, min(6, int(room))))
            axis.set_major_locator(FixedLocator(major))
            axis.set_minor_locator(FixedLocator(minor))
            axis.set_major_formatter(FuncFormatter(lambda v, _: r"$\mathdefault{%s}$" % _plain(v)))
            axis.set_minor_formatter(NullFormatter())
            continue
        room = _axis_inches(axis) / _LABEL_PITCH[name]
        axis.set_major_locator(LogLocator(base=10, numticks=max(3, int(room) + 1)))
        axis.set_major_formatter(ReadableLogFormatter(base=10))
        axis.set_minor_formatter(ReadableLogFormatter(base=10, labelOnlyBase=False))
        axis.set_minor_locator(LogLocator(base=10, subs="auto"))


def plain_linear(ax, which="y"):
    """Plain numbers on a linear axis, no offset, no 1e-7 multiplier."""
    for name in ("x", "y") if which == "both" else (which,):
        axis = getattr(ax, f"{name}axis")
        if axis.get_scale() == "linear":
            f = ScalarFormatter(useOffset=False, useMathText=True)
            f.set_scientific(False)
            axis.set_major_formatter(f)


def min_span(ax, which="y", rel=0.05):
    """Widen the (linear) limits of ``ax`` to at least ``rel`` of their centre: a flat curve at
    0.4 and one at 0.4000002 are drawn as the same level, not as a large gap."""
    get, set_ = (ax.get_ylim, ax.set_ylim) if which == "y" else (ax.get_xlim, ax.set_xlim)
    lo, hi = get()
    mid = 0.5 * (lo + hi)
    half = max(0.5 * (hi - lo), 0.5 * rel * abs(mid))
    if half > 0.5 * (hi - lo):
        set_(mid - half, mid + half)


def _is_colorbar(ax):
    return getattr(ax, "_colorbar", None) is not None


def finish(fig):
    """Readable tick labels on every log axis of ``fig``; a linear axis whose range is below
    1e-4 of its level is widened to +-5% (colour bars left as they are)."""
    for ax in fig.get_axes():
        if _is_colorbar(ax):
            continue
        for name in ("x", "y"):
            if getattr(ax, f"{name}axis").get_scale() == "linear":
                lo, hi = sorted(getattr(ax, f"get_{name}lim")())
                if hi - lo < 1e-4 * max(abs(lo), abs(hi)):
                    min_span(ax, name, rel=0.1)
        readable_log(ax)
    return fig


def finite(*arrays):
    """The arrays restricted to the positions where all of them are finite (nothing NaN or
    infinite is handed to matplotlib: the render test checks plotted data)."""
    arrs = [np.asarray(a, dtype=float) for a in arrays]
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrs])
    return [a[ok] for a in arrs]


def panel_letter(ax, k, **kw):
    """(a), (b), ... at the top left of the title."""
    ax.set_title(f"({'abcdefghij'[k]}) {ax.get_title()}", loc="left", **kw)
