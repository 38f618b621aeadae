"""``clipped-trip explore``: a local web app next to the ODE (Panel + Bokeh, no CDN).

Controls: noise law and its parameters, spectrum, d, lr, clip (a number, the max-CCC schedule or
none) and T. Shown at once: the ODE risk curve (with the unclipped ODE for reference), the
reduction factors mu_c(R), nu_c(R) and CCC / CSC against c at the risk R(t) of a chosen time, the
optimal clip c*(R) (SPEC 3 and 5); on request (a button) an SGD band from a small simulation.
Bad values show a one-line message (the ValueError's text), never a traceback.

Every JS / CSS resource is served by the local server (Bokeh's ``resources="server"``, Panel's
bundled resources): the page requests nothing outside localhost.

Panel is an optional dependency: ``pip install 'clipped_trip[explore]'``. The computation itself
(:func:`compute`, :func:`compute_sgd`) needs no Panel.
"""

from __future__ import annotations

import asyncio
import functools
import html
import math
import time
from dataclasses import dataclass, field

import numpy as np

EXTRA_HINT = "pip install 'clipped_trip[explore]'"

#: noise laws offered, with the parameters filled in when one is picked (specs of parse_noise)
NOISE_LAWS = {
    "student-t": "df=3,scale=0.5",
    "cauchy": "scale=0.5",
    "gaussian": "std=0.5",
    "laplace": "scale=0.5",
    "uniform": "half_width=1",
    "exponential": "scale=0.5",
    "three-point": "value=2,q=0.2",
    "discrete": "values=-1/2,probs=0.3/0.7",
}
SPECTRA = {"power-law": "alpha=0.2", "isotropic": "", "two-level": "high=1,low=0.1,fraction=0.5"}
CLIP_MODES = ("number", "max-CCC schedule", "none")
D_MAX = 20_000  # the ODE's state has d entries
SGD_D_MAX = 500  # the SGD band runs at min(d, SGD_D_MAX)
SGD_RUNS = 16
N_GRID = 121  # points of the c grid of the factor plots

DEFAULTS = {
    "noise": "student-t",
    "noise_params": NOISE_LAWS["student-t"],
    "spectrum": "power-law",
    "spectrum_params": SPECTRA["power-law"],
    "d": 500,
    "lr": 0.6,
    "clip_mode": "number",
    "clip": 0.4,
    "T": 15.0,
    "at": 1.0,  # the factors are shown at R(at * T)
}


def _import_panel():
    try:
        import panel as pn
    except ImportError as err:
        raise ImportError(f"clipped-trip explore needs Panel: {EXTRA_HINT}") from err
    return pn


def _widget(cls, label, **kw):
    """A Panel widget labelled ``label`` (``label=`` from Panel 1.9 on, ``name=`` before)."""
    return cls(**{"label" if "label" in cls.param else "name": label}, **kw)


def _primary(cls):
    return {"color": "primary"} if "color" in cls.param else {"button_type": "primary"}


def _check_keys(settings):
    """Initial settings: known keys, and the choices of the three menus among their options."""
    bad = set(settings or {}) - set(DEFAULTS)
    if bad:
        raise ValueError(f"unknown settings {sorted(bad)}; allowed: {', '.join(DEFAULTS)}")
    for key, options in (("noise", NOISE_LAWS), ("spectrum", SPECTRA), ("clip_mode", CLIP_MODES)):
        value = (settings or {}).get(key, DEFAULTS[key])
        if value not in options:
            raise ValueError(f"{key} must be one of {', '.join(options)}, got {value!r}")


def _spec(name, params):
    params = (params or "").strip()
    return f"{name}:{params}" if params else name


def _number(name, value, *, integer=False):
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if integer:
        if x != int(x):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(x)
    return x


def one_line(err) -> str:
    """An exception as one line of text (its first line, else its type)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# the computation (no Panel)
# ---------------------------------------------------------------------------------------------
@dataclass
class Cache:
    """Per-session memo: factor tables of solve_ode and max-CCC schedules, keyed by problem."""

    tables: dict = field(default_factory=dict)
    schedules: dict = field(default_factory=dict)
    odes: dict = field(default_factory=dict)

    def table(self, key):
        if key not in self.tables:
            if len(self.tables) > 8:
                self.tables.clear()
            self.tables[key] = {}
        return self.tables[key]

    def schedule(self, noise_spec, noise):
        import clipped_trip as ct

        if noise_spec not in self.schedules:
            self.schedules[noise_spec] = ct.max_ccc_schedule(noise)
        return self.schedules[noise_spec]


def parse_settings(p: dict):
    """Check the settings; returns (noise_spec, noise, spectrum_spec, problem, lr, clip, T, at),
    ``clip`` "schedule" for the max-CCC schedule. Every bad value is a ValueError."""
    from .cli import make_problem, parse_noise_checked

    noise_spec = _spec(p["noise"], p["noise_params"])
    noise = parse_noise_checked(noise_spec)
    spectrum = _spec(p["spectrum"], p["spectrum_params"])
    d = _number("d", p["d"], integer=True)
    if d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d}")
    if d > D_MAX:
        raise ValueError(f"d must be <= {D_MAX} here (the ODE's state has d entries), got {d}")
    problem = make_problem(spectrum, d, noise)
    lr = _number("lr", p["lr"])
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr:g}")
    T = _number("T", p["T"])
    if T <= 0:
        raise ValueError(f"T must be > 0, got {T:g}")
    mode = p["clip_mode"]
    if mode == "number":
        clip = _number("clip", p["clip"])
        if clip <= 0:
            raise ValueError(f"clip must be > 0 (or choose 'none'), got {clip:g}")
    elif mode == "max-CCC schedule":
        clip = "schedule"
    elif mode == "none":
        clip = None
    else:
        raise ValueError(f"clip must be one of {', '.join(CLIP_MODES)}, got {mode!r}")
    at = min(max(_number("t / T", p.get("at", 1.0)), 0.0), 1.0)
    return noise_spec, noise, spectrum, problem, lr, clip, T, at


def _solve(problem, lr, clip, T, noise_spec, noise, cache, key):
    import clipped_trip as ct

    if key in cache.odes:
        return cache.odes[key]
    c = cache.schedule(noise_spec, noise) if clip == "schedule" else clip
    res = ct.solve_ode(problem, lr, c, T=T, cache=cache.table(key[:3] + (clip == "schedule",)))
    if len(cache.odes) > 32:
        cache.odes.clear()
    cache.odes[key] = res
    return res


def _finite(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isfinite(x), x, np.nan)


def compute(p: dict, cache: Cache | None = None) -> dict:
    """Everything the page shows for the settings ``p`` (keys of :data:`DEFAULTS`).

    Returns a dict of arrays and numbers: ``t``, ``risk`` (ODE), ``risk_unclipped``,
    ``clip_path``, ``R_at`` (the risk at ``at * T``), ``c`` (grid), ``mu``, ``nu``, ``ccc``,
    ``csc`` (``ratio`` = mu^2 / nu where CCC is infinite), ``c_star``, ``max_ccc``,
    ``notes``. Raises ValueError for bad settings.
    """
    import clipped_trip as ct
    from ._criteria import _reference_scale

    cache = cache or Cache()
    t0 = time.perf_counter()
    noise_spec, noise, spectrum, problem, lr, clip, T, at = parse_settings(p)
    key = (noise_spec, spectrum, problem.d, lr, clip, T)
    ode = _solve(problem, lr, clip, T, noise_spec, noise, cache, key)
    notes = []
    if clip is None:
        unclipped = ode
    else:
        unclipped = _solve(problem, lr, None, T, noise_spec, noise, cache, key[:4] + (None, T))
    if ode.diverged:
        notes.append(f"the ODE diverges at t = {ode.divergence_time:.3g}")
    if clip is not None and unclipped.diverged:
        notes.append(f"unclipped ODE diverges at t = {unclipped.divergence_time:.3g}")
    t_at = at * T
    finite = np.isfinite(ode.risk)
    if np.isfinite(np.interp(t_at, ode.t, np.where(finite, ode.risk, np.inf))):
        R_at = float(np.interp(t_at, ode.t, ode.risk))
    else:
        last = np.flatnonzero(finite)[-1]
        t_at, R_at = float(ode.t[last]), float(ode.risk[last])
        notes.append(f"factors at the last finite risk (t = {t_at:.3g})")
    c_now = float(np.interp(t_at, ode.t, ode.clip_path)) if clip is not None else math.inf
    c_star = float(ct.optimal_clip(noise, R_at))
    ref = float(_reference_scale(noise, R_at))
    lo, hi = ref * 10**-2.5, ref * 10**1.5
    for c in (c_now, c_star):
        if math.isfinite(c) and c > 0:
            lo, hi = min(lo, c / 3), max(hi, 3 * c)
    grid = np.geomspace(lo, hi, N_GRID)
    mu, nu = ct.reduction_factors(noise, R_at, grid)
    ccc = ct.ccc(noise, R_at, grid)
    csc = ct.csc(noise, R_at, grid)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(nu > 0, mu * mu / nu, np.nan)
    infinite_var = not math.isfinite(noise.second_moment)
    max_ccc = math.inf if infinite_var else 1.0
    if math.isfinite(c_star) and not infinite_var:
        max_ccc = float(ct.ccc(noise, R_at, c_star))
    return {
        "t": np.asarray(ode.t, dtype=np.float64),
        "risk": _finite(ode.risk),
        "risk_unclipped": _finite(unclipped.risk),
        "clip_path": _finite(ode.clip_path),
        "lr_path": _finite(ode.lr_path),
        "final_risk": float(ode.risk[-1]),
        "diverged": bool(ode.diverged),
        "t_at": float(t_at),
        "R_at": R_at,
        "c_now": c_now,
        "c": grid,
        "mu": np.asarray(mu, dtype=np.float64),
        "nu": np.asarray(nu, dtype=np.float64),
        "ccc": _finite(ccc),
        "csc": _finite(csc),
        "ratio": _finite(ratio),
        "infinite_variance": infinite_var,
        "c_star": c_star,
        "max_ccc": max_ccc,
        "D": float(problem.D),
        "notes": notes,
        "seconds": time.perf_counter() - t0,
        "settings": dict(p),
        "ode": ode,
    }


def compute_sgd(
    p: dict, result: dict, cache: Cache | None = None, *, runs=SGD_RUNS, d_max=SGD_D_MAX, seed=0
) -> dict:
    """A small SGD simulation for the settings ``p`` at d = min(d, ``d_max``): the 80% band and
    mean, and the ODE at that d where it differs from the page's d. ``result``: compute(p)."""
    import clipped_trip as ct

    cache = cache or Cache()
    t0 = time.perf_counter()
    noise_spec, noise, spectrum, problem, lr, clip, T, _ = parse_settings(p)
    d = min(problem.d, d_max)
    ode_small = None
    if d != problem.d:
        from .cli import make_problem

        problem = make_problem(spectrum, d, noise)
        ode_small = _solve(
            problem, lr, clip, T, noise_spec, noise, cache, (noise_spec, spectrum, d, lr, clip, T)
        )
        ode = ode_small
    else:
        ode = result["ode"]
    times = ode.t
    if clip == "schedule":
        lr_s, clip_s = ode.time_schedules()
    else:
        lr_s, clip_s = lr, clip
    sgd = ct.simulate(problem, lr_s, clip_s, T=T, times=times, runs=runs, seed=seed, progress=False)
    lo, hi = sgd.band(0.8)
    return {
        "t": np.asarray(sgd.t, dtype=np.float64),
        "lo": _finite(lo),
        "hi": _finite(hi),
        "mean": _finite(sgd.mean()),
        "d": d,
        "runs": runs,
        "ode_small": None if ode_small is None else _finite(ode_small.risk),
        "final_mean": float(sgd.mean()[-1]),
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------
# the app (Panel)
# ---------------------------------------------------------------------------------------------
def _fmt(x, digits=4):
    if x is None:
        return "-"
    x = float(x)
    if math.isinf(x):
        return "inf"
    if math.isnan(x):
        return "nan"
    return f"{x:.{digits}g}"


class Explorer:
    """One session's page: widgets, Bokeh figures, and the callbacks that tie them together.

    ``.layout`` is the Panel object; ``.widgets`` the controls by name; ``.last`` the last
    successful :func:`compute` result; ``.error`` the message shown (``""`` when none).
    """

    def __init__(self, settings: dict | None = None, *, sgd_runs=SGD_RUNS, sgd_d_max=SGD_D_MAX):
        pn = _import_panel()
        self.pn = pn
        self.sgd_runs, self.sgd_d_max = sgd_runs, sgd_d_max
        _check_keys(settings)
        s = dict(DEFAULTS, **(settings or {}))
        self.cache = Cache()
        self.last = None
        self.error = ""
        self._wanted = self._done = 0
        self._busy = False
        self._sgd_busy = False
        self._bad_settings = False
        self._sgd_for = None  # the settings the shown SGD band belongs to
        self._quiet = False
        W = pn.widgets
        self.widgets = w = {
            "noise": _widget(W.Select, "noise law", options=list(NOISE_LAWS), value=s["noise"]),
            "noise_params": _widget(W.TextInput, "noise parameters", value=s["noise_params"]),
            "spectrum": _widget(W.Select, "spectrum", options=list(SPECTRA), value=s["spectrum"]),
            "spectrum_params": _widget(
                W.TextInput, "spectrum parameters", value=s["spectrum_params"]
            ),
            "d": _widget(W.IntInput, "d (dimension)", value=s["d"], step=100),
            "lr": _widget(W.FloatInput, "lr (gamma; step lr / D)", value=s["lr"], step=0.05),
            "clip_mode": _widget(W.Select, "clip", options=list(CLIP_MODES), value=s["clip_mode"]),
            "clip": _widget(W.FloatInput, "c (residual units)", value=s["clip"], step=0.05),
            "T": _widget(W.FloatInput, "T (time, t = steps / D)", value=s["T"], step=1.0),
            "at": _widget(
                W.FloatSlider, "factors at t / T", start=0.0, end=1.0, step=0.01, value=s["at"]
            ),
        }
        for name, widget in w.items():
            widget.css_classes = [f"ct-{name.replace('_', '-')}"]
            widget.sizing_mode = "stretch_width"
        w["clip"].disabled = s["clip_mode"] != "number"
        self.sgd_button = _widget(
            W.Button,
            f"SGD band ({sgd_runs} runs, d <= {sgd_d_max})",
            **_primary(W.Button),
            css_classes=["ct-sgd-button"],
            sizing_mode="stretch_width",
        )
        self.clear_button = _widget(
            W.Button, "clear SGD band", css_classes=["ct-sgd-clear"], sizing_mode="stretch_width"
        )
        self.status = pn.pane.HTML("", css_classes=["ct-status-pane"], sizing_mode="stretch_width")
        self.message = pn.pane.HTML("", css_classes=["ct-error-pane"], sizing_mode="stretch_width")
        self.summary = pn.pane.HTML(
            "", css_classes=["ct-summary-pane"], sizing_mode="stretch_width"
        )
        self._doc = pn.state.curdoc  # the session's document (None outside a server)
        self._build_figures()
        for name, widget in w.items():
            if name == "at":
                widget.param.watch(self._on_change, "value_throttled")
            else:
                widget.param.watch(self._on_change, "value")
        self.sgd_button.on_click(self._on_sgd)
        self.clear_button.on_click(self._on_clear)
        controls = pn.Column(
            pn.pane.HTML("<b>clipped_trip explorer</b>"),
            w["noise"],
            w["noise_params"],
            w["spectrum"],
            w["spectrum_params"],
            w["d"],
            w["lr"],
            w["clip_mode"],
            w["clip"],
            w["T"],
            w["at"],
            self.sgd_button,
            self.clear_button,
            width=300,
        )
        plots = pn.Column(
            self.message,
            self.status,
            self.summary,
            pn.pane.Bokeh(self.fig_risk, sizing_mode="stretch_width"),
            pn.Row(
                pn.pane.Bokeh(self.fig_factors, sizing_mode="stretch_width"),
                pn.pane.Bokeh(self.fig_ccc, sizing_mode="stretch_width"),
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )
        self.layout = pn.Row(controls, plots, sizing_mode="stretch_width")
        self._set_status("computing the ODE ...", "busy")
        self.refresh_sync()

    def __panel__(self):
        return self.layout

    def _served(self):
        """Whether this page lives in a server session (else callbacks run synchronously)."""
        return self._doc is not None and self._doc.session_context is not None

    def _in_doc(self, fn, *args):
        """Run ``fn(*args)`` holding the document lock: Bokeh models (the data sources) may be
        changed only so; an async callback of Panel runs without it."""
        if self._served():
            self._doc.add_next_tick_callback(lambda: fn(*args))
        else:
            fn(*args)

    # figures ----------------------------------------------------------------------------------
    def _build_figures(self):
        from bokeh.models import ColumnDataSource, HoverTool, LinearAxis, Range1d, Span
        from bokeh.plotting import figure

        empty = {"t": [], "risk": []}
        self.src = {
            "ode": ColumnDataSource(dict(empty), name="ode"),
            "unclipped": ColumnDataSource(dict(empty), name="unclipped"),
            "ode_small": ColumnDataSource(dict(empty), name="ode_small"),
            "sgd": ColumnDataSource({"t": [], "lo": [], "hi": [], "mean": []}, name="sgd"),
            "at": ColumnDataSource({"t": [], "risk": []}, name="at"),
            "factors": ColumnDataSource(
                {k: [] for k in ("c", "mu", "nu", "ccc", "csc", "ratio")}, name="factors"
            ),
        }
        tools = "pan,wheel_zoom,box_zoom,reset,save"
        f = figure(
            height=330,
            sizing_mode="stretch_width",
            y_axis_type="log",
            tools=tools,
            x_axis_label="t (= steps / D)",
            y_axis_label="excess risk R(t)",
            title="risk",
            name="fig_risk",
        )
        f.varea(
            "t",
            "lo",
            "hi",
            source=self.src["sgd"],
            fill_alpha=0.25,
            color="#1f77b4",
            legend_label="SGD 80% band",
        )
        f.line(
            "t",
            "mean",
            source=self.src["sgd"],
            color="#1f77b4",
            line_width=1,
            legend_label="SGD mean",
        )
        f.line(
            "t",
            "risk",
            source=self.src["unclipped"],
            color="gray",
            line_dash="dashed",
            legend_label="ODE, unclipped",
        )
        f.line(
            "t",
            "risk",
            source=self.src["ode_small"],
            color="#d62728",
            line_dash="dotted",
            legend_label="ODE at SGD's d",
        )
        f.line(
            "t", "risk", source=self.src["ode"], color="#d62728", line_width=2, legend_label="ODE"
        )
        f.scatter(
            "t",
            "risk",
            source=self.src["at"],
            size=9,
            color="black",
            legend_label="R at factors' t",
        )
        f.add_tools(HoverTool(tooltips=[("t", "@t{0.000}"), ("R", "@risk{0.0000e}")]))
        f.legend.click_policy = "hide"
        f.add_layout(f.legend[0], "right")
        self.fig_risk = f

        g = figure(
            height=300,
            sizing_mode="stretch_width",
            x_axis_type="log",
            tools=tools,
            x_axis_label="c",
            y_axis_label="mu_c(R)",
            title="reduction factors",
            y_range=Range1d(0, 1.05),
            name="fig_factors",
        )
        g.extra_y_ranges = {"nu": Range1d(0, 1)}
        g.add_layout(LinearAxis(y_range_name="nu", axis_label="nu_c(R)"), "right")
        g.line(
            "c", "mu", source=self.src["factors"], color="#2ca02c", line_width=2, legend_label="mu"
        )
        g.line(
            "c",
            "nu",
            source=self.src["factors"],
            color="#9467bd",
            line_width=2,
            y_range_name="nu",
            legend_label="nu (right axis)",
        )
        g.legend.location = "top_left"
        self.fig_factors = g

        h = figure(
            height=300,
            sizing_mode="stretch_width",
            x_axis_type="log",
            tools=tools,
            x_axis_label="c",
            y_axis_label="criterion",
            title="CCC and CSC",
            name="fig_ccc",
            y_axis_type="log",
        )
        self._ccc_line = h.line(
            "c",
            "ccc",
            source=self.src["factors"],
            color="#ff7f0e",
            line_width=2,
            legend_label="CCC",
        )
        self._csc_line = h.line(
            "c",
            "csc",
            source=self.src["factors"],
            color="#17becf",
            line_width=2,
            legend_label="CSC",
        )
        self._ratio_line = h.line(
            "c",
            "ratio",
            source=self.src["factors"],
            color="#ff7f0e",
            line_width=2,
            legend_label="mu^2 / nu",
            visible=False,
        )
        self._one = Span(location=1.0, dimension="width", line_color="gray", line_dash="dashed")
        h.add_layout(self._one)
        h.legend.location = "top_right"
        self._ccc_items = {item.label["value"]: item for item in h.legend[0].items}
        self.fig_ccc = h
        self._spans = {}
        for fig in (g, h):
            for name, color in (("c_star", "#2ca02c"), ("c_now", "#d62728")):
                span = Span(
                    location=1.0,
                    dimension="height",
                    line_color=color,
                    line_dash="dashed" if name == "c_star" else "solid",
                    visible=False,
                )
                fig.add_layout(span)
                self._spans.setdefault(name, []).append(span)

    # status and messages ---------------------------------------------------------------------
    def _set_status(self, text, state="ready"):
        self.status.object = (
            f'<div id="ct-status" data-state="{state}" style="color:#555">'
            f"status: {html.escape(text)}</div>"
        )

    def _set_error(self, text):
        self.error = text
        self.message.object = (
            f'<div id="ct-error" data-error="{html.escape(text, quote=True)}" '
            f'style="color:#b00020;font-weight:bold;min-height:1.2em">'
            f"{html.escape(text)}</div>"
        )

    # settings --------------------------------------------------------------------------------
    def settings(self) -> dict:
        """The current control values (keys of :data:`DEFAULTS`)."""
        return {k: w.value for k, w in self.widgets.items()}

    def _on_change(self, *events):
        if self._quiet:
            return
        for ev in events:
            if ev.obj is self.widgets["noise"]:
                self._quiet = True
                try:
                    self.widgets["noise_params"].value = NOISE_LAWS.get(ev.new, "")
                finally:
                    self._quiet = False
            elif ev.obj is self.widgets["spectrum"]:
                self._quiet = True
                try:
                    self.widgets["spectrum_params"].value = SPECTRA.get(ev.new, "")
                finally:
                    self._quiet = False
            elif ev.obj is self.widgets["clip_mode"]:
                self.widgets["clip"].disabled = ev.new != "number"
        if not self._served():
            self.refresh_sync()
            return
        self._wanted += 1
        self._set_status("computing the ODE ...", "busy")
        self.pn.state.execute(self._refresh)  # computes on a worker thread, page stays live

    # the ODE ---------------------------------------------------------------------------------
    def refresh_sync(self):
        """Recompute at once in this thread (used at start and without a server)."""
        self._wanted += 1
        target = self._wanted
        self._apply(target, *self._run(self.settings()))

    def _run(self, p):
        try:
            return compute(p, self.cache), None
        except (ValueError, OverflowError, ZeroDivisionError) as err:
            return None, one_line(err)
        except Exception as err:  # never a traceback page: one line, the type named
            return None, f"{type(err).__name__}: {one_line(err)}"

    async def _refresh(self):
        if self._busy:
            return  # the running loop picks up the newest settings when it finishes
        self._busy = True
        try:
            loop = asyncio.get_running_loop()
            while self._done < self._wanted:
                target = self._wanted
                p = self.settings()
                res, err = await loop.run_in_executor(None, self._run, p)
                if target == self._wanted:
                    self._in_doc(self._apply, target, res, err)
                self._done = max(self._done, target)
        finally:
            self._busy = False

    def _apply(self, target, res, err):
        self._done = max(self._done, target)
        self._bad_settings = err is not None
        if err is not None:
            self._set_error(err)
            self._set_status(
                "error: fix the value above (the plots show the last good values)", "error"
            )
            return
        self._set_error("")
        previous = self.last
        self.last = res
        self._update_figures(res)
        same = previous is not None and self._same_problem(previous["settings"], res["settings"])
        if not same and self._sgd_for is not None:
            self._clear_sgd()
        self._set_status(f"ready (ODE and factors in {res['seconds']:.2f} s)", "ready")

    @staticmethod
    def _same_problem(a, b):
        return all(a.get(k) == b.get(k) for k in DEFAULTS if k != "at")

    def _update_figures(self, r):
        self.src["ode"].data = {"t": r["t"], "risk": r["risk"]}
        clipped = r["settings"]["clip_mode"] != "none"
        self.src["unclipped"].data = (
            {"t": r["t"], "risk": r["risk_unclipped"]} if clipped else {"t": [], "risk": []}
        )
        self.src["at"].data = {"t": [r["t_at"]], "risk": [r["R_at"]]}
        self.src["factors"].data = {k: r[k] for k in ("c", "mu", "nu", "ccc", "csc", "ratio")}
        nu_max = float(np.nanmax(r["nu"])) if np.any(np.isfinite(r["nu"])) else 1.0
        self.fig_factors.extra_y_ranges["nu"].end = 1.05 * nu_max if nu_max > 0 else 1.0
        inf_var = r["infinite_variance"]
        self._ccc_line.visible = self._csc_line.visible = not inf_var
        self._ratio_line.visible = inf_var
        for label, item in self._ccc_items.items():
            item.visible = inf_var == (label == "mu^2 / nu")
        R = _fmt(r["R_at"])
        self.fig_ccc.title.text = (
            f"mu^2 / nu at R = {R} (CCC, CSC infinite: noise of infinite variance)"
            if inf_var
            else f"CCC and CSC at R = {R}"
        )
        self.fig_factors.title.text = f"reduction factors at R = {R} (t = {_fmt(r['t_at'], 3)})"
        for name in ("c_star", "c_now"):
            x = r[name]
            for span in self._spans[name]:
                span.visible = bool(math.isfinite(x))
                if math.isfinite(x):
                    span.location = x
        self.fig_risk.title.text = (
            f"risk: noise {_spec(r['settings']['noise'], r['settings']['noise_params'])}, "
            f"D = tr K = {_fmt(r['D'])}"
        )
        self._write_summary()

    def _write_summary(self):
        r = self.last
        if r is None:
            return
        sgd = self._sgd_for[1] if self._sgd_for is not None else None
        c_star = r["c_star"]
        parts = [
            f"R(T) = {_fmt(r['final_risk'])} (ODE)",
            f"unclipped {_fmt(r['risk_unclipped'][-1])}",
            f"R = {_fmt(r['R_at'])} at t = {_fmt(r['t_at'], 3)}",
            f"c*(R) = {_fmt(c_star)}" + (" (no finite clip helps)" if math.isinf(c_star) else ""),
            f"max CCC = {_fmt(r['max_ccc'])}",
        ]
        if math.isfinite(r["c_now"]):
            parts.append(f"c(t) = {_fmt(r['c_now'])}")
        if sgd is not None:
            parts.append(
                f"SGD mean R(T) = {_fmt(sgd['final_mean'])} ({sgd['runs']} runs, d = {sgd['d']})"
            )
        parts += r["notes"]
        attrs = {
            "data-final-risk": repr(r["final_risk"]),
            "data-risk-at": repr(r["R_at"]),
            "data-c-star": repr(c_star),
            "data-max-ccc": repr(r["max_ccc"]),
            "data-sgd-final": repr(sgd["final_mean"]) if sgd is not None else "",
        }
        attr = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
        self.summary.object = f'<div id="ct-summary" {attr}>{html.escape(" · ".join(parts))}</div>'

    # SGD -------------------------------------------------------------------------------------
    def _clear_sgd(self):
        self._sgd_for = None
        self.src["sgd"].data = {"t": [], "lo": [], "hi": [], "mean": []}
        self.src["ode_small"].data = {"t": [], "risk": []}
        self._write_summary()

    def _on_clear(self, event=None):
        self._clear_sgd()

    def _on_sgd(self, event=None):
        # a sync callback holds the document lock: every model change happens in one; the
        # coroutine below only computes
        if self._sgd_busy:
            return
        r = self.last
        if r is None or self._bad_settings:
            self._set_status("fix the settings first", "error")
            return
        p = dict(r["settings"])
        self._sgd_busy = True
        self.sgd_button.disabled = True
        d = min(int(p["d"]), self.sgd_d_max)
        self._set_status(
            f"simulating SGD: {self.sgd_runs} runs at d = {d} (the first run compiles) ...", "busy"
        )
        if self._served():
            self.pn.state.execute(functools.partial(self._sgd, p, r))
        else:
            self._apply_sgd(p, *self._run_sgd(p, r))

    def _run_sgd(self, p, r):
        try:
            return compute_sgd(p, r, self.cache, runs=self.sgd_runs, d_max=self.sgd_d_max), None
        except (ValueError, OverflowError, MemoryError) as err:
            return None, one_line(err)
        except Exception as err:
            return None, f"{type(err).__name__}: {one_line(err)}"

    async def _sgd(self, p, r):
        try:
            loop = asyncio.get_running_loop()
            res, err = await loop.run_in_executor(None, self._run_sgd, p, r)
        except BaseException as exc:  # keep the button usable whatever happened
            res, err = None, f"{type(exc).__name__}: {one_line(exc)}"
        self._in_doc(self._apply_sgd, p, res, err)

    def _apply_sgd(self, p, res, err):
        self._sgd_busy = False
        self.sgd_button.disabled = False
        if err is not None:
            self._set_error(f"SGD: {err}")
            self._set_status("SGD failed", "error")
            return
        if self.last is None or not self._same_problem(self.last["settings"], p):
            self._set_status("SGD band dropped: the settings changed while it ran", "ready")
            return
        self._sgd_for = (p, res)
        self.src["sgd"].data = {k: res[k] for k in ("t", "lo", "hi", "mean")}
        self.src["ode_small"].data = (
            {"t": res["t"], "risk": res["ode_small"]}
            if res["ode_small"] is not None
            else {"t": [], "risk": []}
        )
        self._write_summary()
        self._set_status(
            f"ready (SGD: {res['runs']} runs at d = {res['d']} in {res['seconds']:.1f} s)",
            "ready",
        )


def build_app(settings: dict | None = None, **kwargs):
    """A new explorer page (its Panel layout is ``.layout``; Panel renders the object itself).

    ``settings``: initial values (keys of :data:`DEFAULTS`); ``sgd_runs``, ``sgd_d_max``.
    """
    return Explorer(settings, **kwargs)


def _local_resources():
    """Serve Bokeh's and Panel's JS / CSS from this server, never from a CDN."""
    pn = _import_panel()  # first: a missing Panel (or Bokeh) names the extra
    from bokeh.settings import settings

    settings.resources.set_value("server")
    pn.config.inline = False
    return pn


def serve(
    port: int = 5006,
    show: bool = False,
    *,
    address: str = "localhost",
    threaded: bool = False,
    settings: dict | None = None,
    sgd_runs: int = SGD_RUNS,
    sgd_d_max: int = SGD_D_MAX,
    **kwargs,
):
    """Serve the explorer at http://localhost:``port`` (each browser tab its own session).

    ``show``: open a browser tab. ``threaded=False`` blocks until interrupted; ``threaded=True``
    returns the server thread at once (``.stop()`` ends it). ``settings``: initial values (keys
    of :data:`DEFAULTS`); ``sgd_runs``, ``sgd_d_max``: size of the SGD band's simulation. Further
    ``kwargs`` go to ``panel.serve``. Raises ImportError naming the extra when Panel is missing,
    ValueError for a bad port or setting.
    """
    pn = _local_resources()
    port = _number("port", port, integer=True)
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1 ... 65535, got {port}")
    _check_keys(settings)
    parse_settings(dict(DEFAULTS, **(settings or {})))  # bad values: refused before serving
    runs = _number("sgd_runs", sgd_runs, integer=True)
    d_max = _number("sgd_d_max", sgd_d_max, integer=True)
    origins = [f"localhost:{port}", f"127.0.0.1:{port}"]
    return pn.serve(
        lambda: build_app(settings, sgd_runs=runs, sgd_d_max=d_max).layout,
        port=port,
        address=address,
        show=show,
        threaded=threaded,
        title="clipped_trip explorer",
        websocket_origin=origins,
        **kwargs,
    )
