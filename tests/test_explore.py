"""``clipped-trip explore``: the computation behind the page, and the page itself in a real
headless Chromium (Playwright's Python API driving the system's browser: Debian's ``chromium``
package, or any executable named by ``CLIPPED_TRIP_CHROMIUM``).

The browser test skips only where no Chromium executable is found; Panel and Playwright missing
is a failure that names what to install.
"""

import math
import os
import shutil
import socket
import sys
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from clipped_trip import _explore as ex

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
SMALL = {"d": 60, "T": 4.0}  # a small problem: the page's ODE takes milliseconds


def _settings(**kw):
    return {**ex.DEFAULTS, **SMALL, **kw}


def _need(module):
    try:
        return __import__(module)
    except ImportError:
        pytest.fail(
            f"{module} is not installed: pip install 'clipped_trip[explore]' playwright "
            "(the explore extra and the browser driver are part of the test setup)"
        )


def _chromium():
    """The system's Chromium (or Chrome) executable, or None."""
    named = os.environ.get("CLIPPED_TRIP_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


# ---------------------------------------------------------------------------------------------
# the computation (no browser, no Panel)
# ---------------------------------------------------------------------------------------------
def test_compute_matches_the_library():
    import clipped_trip as ct

    p = _settings()
    r = ex.compute(p)
    noise = ct.StudentT(df=3.0, scale=0.5)
    problem = ct.Problem.power_law(60, 0.2, noise)
    ode = ct.solve_ode(problem, 0.6, 0.4, T=4.0)
    np.testing.assert_allclose(r["risk"], ode.risk, rtol=1e-12)
    assert r["R_at"] == pytest.approx(ode.risk[-1], rel=1e-12)
    mu, nu = ct.reduction_factors(noise, r["R_at"], r["c"])
    np.testing.assert_allclose(r["mu"], mu, rtol=1e-12)
    np.testing.assert_allclose(r["nu"], nu, rtol=1e-12)
    np.testing.assert_allclose(r["ccc"], ct.ccc(noise, r["R_at"], r["c"]), rtol=1e-12)
    value, c_star = ct.max_ccc(noise, r["R_at"])
    assert r["c_star"] == pytest.approx(float(c_star), rel=1e-9)
    assert r["max_ccc"] == pytest.approx(float(value), rel=1e-9)
    assert r["c"][0] < r["c_star"] < r["c"][-1] and r["c"][0] < 0.4 < r["c"][-1]
    # halfway: the factors follow the risk at t = T / 2
    half = ex.compute(_settings(at=0.5))
    assert half["t_at"] == 2.0 and half["R_at"] > r["R_at"]


def test_compute_schedule_unclipped_and_infinite_variance():
    sched = ex.compute(_settings(clip_mode="max-CCC schedule"))
    none = ex.compute(_settings(clip_mode="none"))
    np.testing.assert_array_equal(none["risk"], none["risk_unclipped"])
    np.testing.assert_array_equal(sched["risk_unclipped"], none["risk"])
    # Theorem 3: where CCC > 1 (Student-t 3) the schedule beats unclipped SGD at the same lr
    assert sched["max_ccc"] > 1 and sched["final_risk"] < none["final_risk"]
    import clipped_trip as ct

    noise = ct.StudentT(df=3.0, scale=0.5)  # the clip path is c*(R(t))
    c_star = ct.optimal_clip(noise, sched["risk"][::50])
    np.testing.assert_allclose(sched["clip_path"][::50], c_star, rtol=1e-3)
    assert math.isinf(none["c_now"])
    cauchy = ex.compute(_settings(noise="cauchy", noise_params="scale=0.5"))
    assert cauchy["infinite_variance"] and math.isinf(cauchy["max_ccc"])
    assert np.isfinite(cauchy["final_risk"]) and math.isfinite(cauchy["c_star"])
    assert np.isnan(cauchy["risk_unclipped"][-1])  # the unclipped ODE diverges (shown as a gap)
    assert any("unclipped ODE diverges" in note for note in cauchy["notes"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": -1}, "lr must be > 0"),
        ({"d": 0}, "d must be an integer >= 1"),
        ({"d": ex.D_MAX + 1}, f"d must be <= {ex.D_MAX}"),
        ({"d": None}, "d is empty"),
        ({"T": 0.0}, "T must be > 0"),
        ({"clip": -0.4}, "clip must be > 0"),
        ({"noise_params": "df=-1"}, "df must be in"),
        ({"noise_params": "dof=3"}, "bad parameter 'dof=3'"),
        ({"spectrum_params": "alpha=x"}, "alpha must be a number"),
        ({"T": 1e9}, "solver steps"),
    ],
)
def test_compute_bad_values_are_one_line_value_errors(change, message):
    with pytest.raises(ValueError) as err:
        ex.compute(_settings(**change))
    text = ex.one_line(err.value)
    assert message in text and "\n" not in text


def test_missing_panel_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "panel", None)  # import panel -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'clipped_trip\[explore\]'"):
        ex.build_app()
    with pytest.raises(ImportError, match=r"clipped_trip\[explore\]"):
        ex.serve(port=1)


def test_serve_refuses_bad_arguments():
    _need("panel")
    with pytest.raises(ValueError, match="port"):
        ex.serve(port=0)
    with pytest.raises(ValueError, match="unknown settings"):
        ex.serve(port=5006, settings={"lrr": 1})
    with pytest.raises(ValueError, match="noise must be one of"):
        ex.serve(port=5006, settings={"noise": "pareto"})
    with pytest.raises(ValueError, match="lr must be > 0"):
        ex.serve(port=5006, settings={"lr": 0})


def test_app_in_process():
    """The page's objects without a server: a bad value keeps the last plot and says why."""
    _need("panel")
    app = ex.build_app(SMALL)
    assert app.error == ""
    r0 = app.last["final_risk"]
    assert app.src["ode"].data["risk"][-1] == pytest.approx(r0)
    app.widgets["lr"].value = 0.3
    assert app.last["final_risk"] != r0 and app.error == ""
    assert f'data-final-risk="{app.last["final_risk"]!r}"' in app.summary.object
    app.widgets["lr"].value = -1.0
    assert app.error == "lr must be > 0, got -1" and 'data-state="error"' in app.status.object
    assert app.src["ode"].data["risk"][-1] == pytest.approx(app.last["final_risk"])
    app.widgets["noise"].value = "gaussian"  # fills the law's own parameters
    assert app.widgets["noise_params"].value == "std=0.5"
    app.widgets["lr"].value = 0.6
    assert app.error == "" and math.isinf(app.last["c_star"])  # Gaussian: clipping never helps
    app.sgd_runs, app.sgd_d_max = 4, 40  # as in the browser test: one compile for both
    app.sgd_button.clicks += 1  # without a server the band is computed at once
    assert len(app.src["sgd"].data["t"]) > 10 and len(app.src["ode_small"].data["t"]) > 10
    assert "SGD mean R(T)" in app.summary.object and "d = 40" in app.summary.object
    app.widgets["T"].value = 3.0  # another problem: the band is dropped
    assert len(app.src["sgd"].data["t"]) == 0 and "SGD mean" not in app.summary.object


# ---------------------------------------------------------------------------------------------
# the page in a real browser
# ---------------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what, cond, timeout=45.0, page=None):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = ""
            if page is not None:  # what the page showed, for the failure report
                seen = "; page: " + " | ".join(
                    page.locator(f"#ct-{k}").inner_text() for k in ("status", "error", "summary")
                )
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(0.1)


def _is_local(url):
    parts = urlsplit(url)
    if parts.scheme in ("data", "about"):
        return True
    if parts.scheme == "blob":  # blob:http://localhost:PORT/uuid
        return _is_local(url[len("blob:") :])
    return parts.hostname in LOCAL_HOSTS


def test_page_in_headless_chromium(tmp_path):
    _need("panel")
    exe = _chromium()
    if exe is None:
        pytest.skip(
            "no Chromium executable found (apt-get install -y chromium, or set "
            "CLIPPED_TRIP_CHROMIUM to a Chromium / Chrome binary)"
        )
    _need("playwright")
    from playwright.sync_api import sync_playwright

    start = time.monotonic()
    port = _free_port()
    server = ex.serve(port=port, threaded=True, settings=SMALL, sgd_runs=4, sgd_d_max=40)
    requests, sockets, page_errors = [], [], []
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # an empty user-data dir
                executable_path=exe,
                headless=True,
                args=BROWSER_ARGS,
            )
            try:
                ctx.on("request", lambda r: requests.append(r.url))
                page = ctx.new_page()
                page.on("websocket", lambda w: sockets.append(w.url))
                page.on("pageerror", lambda e: page_errors.append(str(e)))
                page.goto(f"http://localhost:{port}/", timeout=60_000)
                _check_page(page)
            finally:
                ctx.close()
    finally:
        server.stop()
    assert not page_errors, page_errors
    assert requests and sockets, "the page made no request / opened no websocket"
    external = [u for u in requests + sockets if not _is_local(u)]
    assert not external, f"the page requested non-local URLs: {external}"
    print(f"browser test: {time.monotonic() - start:.1f} s")  # shown with -s or on failure


def _check_page(page):
    summary = page.locator("#ct-summary")
    error = page.locator("#ct-error")
    status = page.locator("#ct-status")
    summary.wait_for(timeout=60_000)
    t0 = time.monotonic()

    def step(what):  # timings, shown with -s or on failure
        print(f"  {time.monotonic() - t0:6.1f} s  {what}")

    step("page loaded")

    def wait(what, cond, timeout=45.0):
        return _wait(what, cond, timeout, page)

    last_ode = (
        "() => { const r = Bokeh.documents[0].get_model_by_name('ode').data.risk;"
        " return r[r.length - 1]; }"
    )

    def final():
        return summary.get_attribute("data-final-risk")

    # the initial page: the summary and the plot's data source show the same ODE
    r0 = float(final())
    assert r0 == pytest.approx(ex.compute(_settings())["final_risk"], rel=1e-12)
    assert page.evaluate(last_ode) == pytest.approx(r0, rel=1e-12)
    assert error.get_attribute("data-error") == ""

    # change lr: the plot follows
    lr = page.locator(".ct-lr input")
    lr.fill("0.3")
    lr.press("Enter")
    r1 = float(wait("the risk to change after lr = 0.3", lambda: final() != repr(r0) and final()))
    assert r1 == pytest.approx(ex.compute(_settings(lr=0.3))["final_risk"], rel=1e-12)
    wait("the plot's data source to follow", lambda: page.evaluate(last_ode) == r1)
    wait("the status to say ready", lambda: status.get_attribute("data-state") == "ready")
    step("lr changed, plot followed")

    # the SGD band, on request
    page.locator(".ct-sgd-button button").click()
    sgd = float(wait("the SGD band", lambda: summary.get_attribute("data-sgd-final"), 60))
    assert 0.5 < sgd / r1 < 2.0  # 4 runs at d = 40 against the ODE at d = 60: same scale
    n_band = page.evaluate("() => Bokeh.documents[0].get_model_by_name('sgd').data.t.length")
    assert n_band > 10
    step("SGD band shown")

    # bad values: one line, the ValueError's text; the last plot stays
    for widget, bad, message in (("lr", "-1", "lr must be > 0"), ("d", "0", "d must be")):
        box = page.locator(f".ct-{widget} input")
        box.fill(bad)
        box.press("Enter")
        text = wait(f"the message for {widget} = {bad}", lambda: error.get_attribute("data-error"))
        assert message in text and "\n" not in text
        assert message in error.inner_text()
        wait("the status to say error", lambda: status.get_attribute("data-state") == "error")
        assert page.get_by_text("Traceback").count() == 0
        assert page.evaluate(last_ode) == r1
        box.fill({"lr": "0.3", "d": "60"}[widget])
        box.press("Enter")
        wait("the message to clear", lambda: error.get_attribute("data-error") == "")
        step(f"bad {widget} shown and cleared")

    # another law: the CCC panel switches to mu^2 / nu (Cauchy: CCC infinite)
    page.locator(".ct-noise select").select_option("cauchy")
    params = page.locator(".ct-noise-params input")
    wait("cauchy's parameters", lambda: params.input_value() == "scale=0.5")
    wait("the Cauchy page", lambda: summary.get_attribute("data-max-ccc") == "inf")
    step("Cauchy page")
    r2 = final()

    # the max-CCC schedule: the number box is disabled, the curve changes
    page.locator(".ct-clip-mode select").select_option("max-CCC schedule")
    wait("the schedule's curve", lambda: final() != r2)
    assert page.locator(".ct-clip input").is_disabled()
    expect = ex.compute(
        _settings(noise="cauchy", noise_params="scale=0.5", lr=0.3, clip_mode="max-CCC schedule")
    )
    assert float(final()) == pytest.approx(expect["final_risk"], rel=1e-9)
    step("schedule page")
