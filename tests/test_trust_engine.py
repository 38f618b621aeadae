"""Trust of the Monte Carlo engine: one divergence rule everywhere, resource guards up front,
Ctrl-C within a second or two (sliced runs, bit-identical), the SDE's factor table below 1e-10 R0.
"""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip import _engine
from clipped_trip._results import RiskPaths
from clipped_trip._simulate import trace_count

QUIET = dict(progress=False)


# ---------------------------------------------------------------------------------------------
# 1. divergence: the same rule for simulate, simulate_sde, simulate_reduced and solve_ode
# ---------------------------------------------------------------------------------------------
def test_supercritical_unclipped_sgd_diverges_everywhere():
    """gamma = 3 > 2: every simulator and the ODE report divergence (was: SGD at 3.5e8 said no
    run diverged under the fixed 1e12 threshold); gamma = 1.9 converges everywhere."""
    p = ct.Problem.isotropic(50, ct.Gaussian(0.5))
    kw = dict(T=8.0, runs=4, seed=0, n_records=17)  # < 1e12 at t = 8: old rule said fine
    sgd = ct.simulate(p, 3.0, None, **kw, **QUIET)
    sde = ct.simulate_sde(p, 3.0, None, **kw, **QUIET)
    red = ct.simulate_reduced(ct.ReducedProblem.from_problem(p), 3.0, None, **kw, **QUIET)
    ode = ct.solve_ode(p, 3.0, None, T=8.0, n_records=17)
    for res in (sgd, sde, red):
        assert res.diverged.all(), res.divergence_report()
        assert "diverged" in res.divergence_report()
        assert not np.isnan(res.risk).any() and np.isinf(res.risk[:, -1]).all()
    assert ode.diverged and np.isinf(ode.risk[-1]) and not np.isnan(ode.risk).any()
    for lr in (1.9,):
        assert not ct.simulate(p, lr, None, **kw, **QUIET).diverged.any()
        assert not ct.simulate_sde(p, lr, None, **kw, **QUIET).diverged.any()
        assert not ct.solve_ode(p, lr, None, T=8.0).diverged


def test_unclipped_cauchy_is_reported_diverging_by_all():
    """nu = inf: the ODE and the SDE diverge at t = 0+ (first record after 0); SGD's mean is
    reported infinite from t = 0 on (was: 'no run diverged' next to ODE/SDE divergence)."""
    p = ct.Problem.isotropic(20, ct.StudentT(1.0, 0.5))
    kw = dict(T=2.0, n_records=5)
    ode = ct.solve_ode(p, 0.5, None, **kw)
    sde = ct.simulate_sde(p, 0.5, None, runs=2, **kw, **QUIET)
    sgd = ct.simulate(p, 0.5, None, runs=4, **kw, **QUIET)
    red = ct.simulate_reduced(ct.ReducedProblem.from_problem(p), 0.5, None, runs=4, **kw)
    assert ode.diverged and ode.divergence_time == ode.t[1]
    assert sde.diverged.all() and np.all(sde.divergence_time == sde.t[1])
    for res in (sgd, red):
        m = res.mean()
        assert math.isfinite(m[0]) and np.isinf(m[1:]).all()
        assert "infinite" in res.divergence_report()
    clipped = ct.simulate(p, 0.5, 0.4, runs=4, **kw, **QUIET)
    assert np.isfinite(clipped.mean()).all() and clipped.divergence_report() == "no run diverged"


def test_a_run_that_passes_the_level_and_comes_back_is_not_diverged():
    from clipped_trip._results import mark_divergence

    t = np.arange(5.0)
    risk = np.array([[1.0, 1e9, 1.0, 1.0, 1.0], [1.0, 1.0, 1e9, 1e10, 1e11], [1, 2, np.nan, 1, 1]])
    r, div, when = mark_divergence(risk, t, 1e6)
    assert div.tolist() == [False, True, True]
    assert when[1] == 2.0 and when[2] == 2.0 and np.isnan(when[0])
    assert r[0, 1] == 1e9 and not np.isnan(r).any()


def test_means_of_diverged_runs_are_inf_not_nan_and_no_warnings():
    t = np.linspace(0, 1, 4)
    risk = np.full((3, 4), np.inf)
    risk[:, 0] = 1.0
    res = RiskPaths(t, risk, np.ones(3, bool), np.full(3, t[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = res.mean(exclude_diverged=True)
        q = res.quantiles(exclude_diverged=True)
        se = res.std_error()
        ode = ct.solve_ode(ct.Problem.isotropic(10, ct.Gaussian(0.5)), 3.0, None, T=20.0)
    assert np.isinf(m[1:]).all() and not np.isnan(m).any()
    assert not np.isnan(q).any() and not np.isnan(se).any()
    assert ode.diverged
    for arr in (ode.risk, ode.lr_path, ode.clip_path):
        assert not np.isnan(arr).any()
    assert np.all(ode.lr_path == 3.0) and np.isinf(ode.clip_path).all()


# ---------------------------------------------------------------------------------------------
# 2. resource guards: refused up front, quickly, with the estimate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda p: ct.Problem.isotropic(10**9, ct.Gaussian(0.5)), "GiB.*reduce d"),
        (lambda p: ct.simulate(p, 0.5, None, T=1.0, runs=10**8), "GiB.*runs"),
        (lambda p: ct.simulate(p, 0.5, None, T=1.0, runs=2, n_records=10**8), "GiB"),
        (lambda p: ct.simulate(p, 0.5, None, T=1.0, runs=2, n_records=10**7), "GiB"),
        (lambda p: ct.simulate_sde(p, 0.5, 1.0, T=1.0, dt=1e-12), "steps"),
        (lambda p: ct.simulate_sde(p, 0.5, 1.0, T=1e5), "max_work"),
        (lambda p: ct.simulate(p, 0.5, 1.0, T=1e6, runs=200), "max_work"),
        (lambda p: ct.solve_ode(p, 0.5, 1.0, T=1e12), "max_steps"),
        (
            lambda p: ct.simulate_reduced(
                ct.ReducedProblem.from_problem(p), 0.5, T=1.0, runs=10**8
            ),
            "GiB",
        ),
    ],
)
def test_absurd_requests_are_refused_up_front(call, match):
    p = ct.Problem.isotropic(100, ct.Gaussian(0.5))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        call(p)
    assert time.perf_counter() - t0 < 3.0


def test_memory_limit_honours_rlimits(monkeypatch):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    assert _engine.memory_limit() > 0
    monkeypatch.setattr(resource, "getrlimit", lambda which: (2**31, hard))
    assert _engine.memory_limit() <= 2**31
    with pytest.raises(ValueError, match="more than the .* GiB available"):
        _engine.check_memory("x", {"records": 4.0 * 2**30}, "runs")


# ---------------------------------------------------------------------------------------------
# 3. slices: bit-identical, one compile, Ctrl-C within about a second
# ---------------------------------------------------------------------------------------------
def test_slices_are_bit_identical_and_compile_once(monkeypatch):
    p = ct.Problem.power_law(40, 0.5, ct.StudentT(3.0, 1.0))
    kw = dict(T=2.0, runs=20, seed=3, n_records=6, **QUIET)
    whole = ct.simulate(p, 0.8, 0.5, **kw).risk
    sw = ct.sweep(p, [0.5, 0.9], [0.3, None], **kw).risk
    sde = ct.simulate_sde(p, 0.8, 0.5, **kw).risk
    rp = ct.ReducedProblem.two_level(500, ct.Laplace(0.5))
    red = ct.simulate_reduced(rp, 0.8, 0.5, T=200.0, runs=3, n_records=4, progress=False).risk
    orig = _engine.SliceClock.budget
    monkeypatch.setattr(_engine.SliceClock, "budget", lambda self: (orig(self), 3)[1])
    before = trace_count()
    np.testing.assert_array_equal(ct.simulate(p, 0.8, 0.5, **kw).risk, whole)
    np.testing.assert_array_equal(ct.sweep(p, [0.5, 0.9], [0.3, None], **kw).risk, sw)
    assert trace_count() == before  # slicing never recompiles
    np.testing.assert_array_equal(ct.simulate_sde(p, 0.8, 0.5, **kw).risk, sde)
    monkeypatch.setattr(_engine.SliceClock, "budget", lambda self: (orig(self), 1)[1])
    np.testing.assert_array_equal(
        ct.simulate_reduced(rp, 0.8, 0.5, T=200.0, runs=3, n_records=4, progress=False).risk, red
    )


SIGINT_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    # Python's own Ctrl-C handler, whatever disposition the test process handed down (a parent
    # that ran a Dask cluster may leave SIGINT ignored, which exec keeps)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import clipped_trip as ct
    p = ct.Problem.isotropic(20000, ct.Gaussian(0.5))
    ct.simulate(p, 0.5, 1.0, T=0.01, runs=16, n_records=3, progress=False)  # compile
    print("started", flush=True)
    t0 = time.time()
    try:
        ct.simulate(p, 0.5, 1.0, T=1.5, runs=16, n_records=3, progress=False)  # ~30 s
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print("finished", time.time() - t0, flush=True)
    """
)


def test_ctrl_c_stops_a_long_simulation_within_seconds():
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGINT_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        t0 = time.perf_counter()
        out, err = proc.communicate(timeout=30)
        stopped = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in out
    # a slice is ~1 s of work; 10 s leaves room for a loaded CI box and still fails if the
    # interrupt waited for the ~30 s run to end
    assert stopped < 10.0, stopped


# ---------------------------------------------------------------------------------------------
# 4. the SDE follows the ODE far below 1e-10 R0 (noiseless clipped problem)
# ---------------------------------------------------------------------------------------------
def test_noiseless_sde_reaches_the_bottom_with_the_ode():
    import jax

    jax.config.update("jax_enable_x64", True)
    p = ct.Problem.isotropic(50, ct.Discrete([0.0], [1.0]))
    times = np.array([0.0, 20.0, 40.0])
    ode = ct.solve_ode(p, 1.0, 1.0, times=times)
    sde = ct.simulate_sde(p, 1.0, 1.0, times=times, runs=4, dt=0.01, dtype="float64", **QUIET)
    R0 = p.initial_risk
    assert ode.risk[-1] < 1e-15 * R0
    ratio = sde.mean()[1:] / ode.risk[1:]
    assert np.all((ratio > 0.3) & (ratio < 3.0)), (sde.mean(), ode.risk)
