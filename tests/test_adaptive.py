"""Adaptive thresholds (SPEC 11): the rules, and SGD against their deterministic equivalents."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._autoclip import HIST_BINS, HIST_RANGE, AutoClipKernel
from clipped_trip._quantile_clip import quantile_update
from tolerances import monte_carlo_rel


# ---------------------------------------------------------------------------------------------
# the rules on given norm sequences
# ---------------------------------------------------------------------------------------------
def test_quantile_rule_on_a_hand_written_sequence():
    """c0 = 1, q = 1/2, eta_C = 0.1, norms 0.5, 2.0, 0.9, 1.2, 0.96 (residual units):
    unclipped, clipped, unclipped, clipped, clipped -> C = 1, e^-0.05, 1, e^-0.05, 1, e^0.05."""
    norms = [0.5, 2.0, 0.9, 1.2, 1.01]
    expected = [1.0, 0.951229424500714, 1.0, 0.951229424500714, 1.0, 1.051271096376024]
    u, got = 0.0, [1.0]
    for n in norms:
        b = 1.0 if n <= math.exp(u) else 0.0
        u = quantile_update(u, b, 0.5, 0.1)
        got.append(math.exp(u))
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_quantile_rule_q_three_quarters():
    """q = 3/4, eta_C = 0.2: an unclipped step moves log C by -0.05, a clipped one by +0.15."""
    u = 0.0
    for b, du in [(1, -0.05), (1, -0.05), (0, 0.15), (1, -0.05)]:
        new = quantile_update(u, b, 0.75, 0.2)
        assert new - u == pytest.approx(du, abs=1e-15)
        u = new


def _read_thresholds(kernel, norms, p):
    state = kernel.init_state({}, {"lr": jnp.asarray(1.0)})
    out = []
    for n in norms:
        state, c = kernel._add_and_read(state, jnp.asarray(n), jnp.asarray(p))
        out.append(float(c))
    return np.array(out)


@pytest.mark.parametrize("p", [10.0, 50.0, 90.0])
def test_autoclip_exact_history_is_numpy_percentile(p):
    norms = np.random.default_rng(0).lognormal(0.0, 1.0, 60)
    got = _read_thresholds(AutoClipKernel(exact_len=60), norms, p)
    expected = [np.percentile(norms[: k + 1], p) for k in range(norms.size)]
    np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_autoclip_histogram_is_within_one_bin():
    norms = np.random.default_rng(1).lognormal(0.0, 1.0, 400)
    got = _read_thresholds(AutoClipKernel(), norms, 50.0)
    expected = np.array([np.percentile(norms[: k + 1], 50.0) for k in range(norms.size)])
    width = math.log(HIST_RANGE[1] / HIST_RANGE[0]) / HIST_BINS  # 0.9 % in c
    assert np.max(np.abs(np.log(got / expected))[20:]) < width


# ---------------------------------------------------------------------------------------------
# SGD against the deterministic equivalents
# ---------------------------------------------------------------------------------------------
def _compare(p, alg, T, runs, seed=0, clip_rtol=None):
    sgd = ct.simulate(p, alg, T=T, runs=runs, seed=seed, n_records=5, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sgd.t)
    tol = monte_carlo_rel(runs, p.d)
    np.testing.assert_allclose(sgd.mean()[1:], ode.risk[1:], rtol=tol)
    if clip_rtol is not None:
        np.testing.assert_allclose(sgd.stat_mean("clip")[1:], ode.clip_path[1:], rtol=clip_rtol)
    return sgd, ode


def test_quantile_slow_regime_sgd_matches_ode():
    """eta_C = 2 / D: log c moves O(1) per unit time; its spread across runs is O(D^-1/2)."""
    p = ct.Problem.isotropic(400, ct.StudentT(3.0, 0.5))
    alg = ct.QuantileClipSGD(1.0, 1.0, quantile=0.5, clip_lr=2.0 / p.D)
    assert alg.regime_for(p.D) == "slow"
    _compare(p, alg, T=4.0, runs=8, clip_rtol=monte_carlo_rel(8, p.d))


def test_quantile_fast_regime_sgd_matches_the_averaged_ode():
    """eta_C = 1: the snapshot of c across runs has law pi_R; its mean is E_pi[c] (SPEC 11A.b).
    The quantile-lock shortcut (noise nu at the q-quantile) is off by far more."""
    p = ct.Problem.isotropic(400, ct.Gaussian(1.0))
    alg = ct.QuantileClipSGD(1.0, 1.0, quantile=0.5, clip_lr=1.0)
    assert alg.regime_for(p.D) == "fast"
    sgd, ode = _compare(p, alg, T=4.0, runs=8)
    # E_pi[c] from the runs: each run's c is one draw of pi_R (spread O(1)): 5 se
    c = sgd.stat("clip")[:, -1]
    assert abs(c.mean() - ode.clip_path[-1]) < 5 * c.std(ddof=1) / math.sqrt(c.size) + 0.02


@pytest.mark.parametrize("clip_lr", ["slow", 1.0])
def test_quantile_sde_matches_ode(clip_lr):
    """Slow regime: (X, u = log c) per run, u with its own O(D^-1/2) noise; fast regime: drift
    factor q, noise nubar(R). Risk (and c(t) in the slow regime) against the ODE."""
    p = ct.Problem.isotropic(400, ct.StudentT(3.0, 0.5))
    eta_c = 2.0 / p.D if clip_lr == "slow" else clip_lr
    alg = ct.QuantileClipSGD(1.0, 1.0, quantile=0.5, clip_lr=eta_c)
    runs = 8
    sde = ct.simulate_sde(p, alg, T=4.0, runs=runs, seed=4, n_records=5, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sde.t)
    rtol = monte_carlo_rel(runs, p.d)
    np.testing.assert_allclose(sde.mean()[1:], ode.risk[1:], rtol=rtol)
    if clip_lr == "slow":
        np.testing.assert_allclose(sde.stat_mean("clip")[1:], ode.clip_path[1:], rtol=rtol)
        # the threshold is random per run (its noise), not one deterministic path
        assert np.all(np.std(sde.stat("clip")[:, -1]) > 0)


def test_autoclip_sgd_matches_ode():
    p = ct.Problem.isotropic(400, ct.StudentT(3.0, 0.5))
    alg = ct.AutoClipSGD(1.0, percentile=50)
    _compare(p, alg, T=4.0, runs=8, clip_rtol=monte_carlo_rel(8, p.d))


def test_autoclip_ode_threshold_starts_at_the_quantile_and_lags_above():
    """c(0+) is the p-quantile of |w| at R0; with R falling, the history holds older, larger
    norms: mu_{c(t)}(R(t)) > p (SPEC 11B memory effect)."""
    p = ct.Problem.isotropic(100, ct.Gaussian(0.5))
    ode = ct.solve_ode(p, ct.AutoClipSGD(1.0, percentile=50), T=3.0, n_records=4)
    s0 = math.sqrt(2 * p.initial_risk + 0.25)
    from scipy.stats import norm

    assert ode.clip_path[0] == pytest.approx(s0 * norm.ppf(0.75), rel=1e-9)
    mu, _ = ct.reduction_factors(p.noise, ode.risk[-1], ode.clip_path[-1])
    assert mu > 0.5


def test_adaptive_rules_refuse_what_is_not_derived():
    p = ct.Problem.isotropic(20, ct.Gaussian(0.5))
    with pytest.raises(ValueError, match="quantile"):
        ct.QuantileClipSGD(1.0, 1.0, quantile=1.0, clip_lr=0.1)
    with pytest.raises(ValueError, match="clip_lr"):
        ct.QuantileClipSGD(1.0, 1.0, quantile=0.5, clip_lr=0.0)
    with pytest.raises(ValueError, match="percentile"):
        ct.AutoClipSGD(1.0, percentile=100)
    with pytest.raises(ValueError, match="max_steps"):
        ct.AutoClipSGD(1.0, percentile=50, history="exact")
    with pytest.raises(ValueError, match="max_steps"):
        ct.simulate(p, ct.AutoClipSGD(1.0, percentile=50, history="exact", max_steps=10), T=1.0)
    with pytest.raises(ValueError, match="SDE"):
        ct.simulate_sde(p, ct.AutoClipSGD(1.0, percentile=50), T=1.0, runs=2)
    with pytest.raises(ValueError, match="map"):
        ct.solve_ode(p, ct.QuantileClipSGD(1.0, 1.0, quantile=0.5, clip_lr=0.1), T=1, method="map")


def test_autoclip_exact_and_histogram_runs_agree():
    p = ct.Problem.isotropic(50, ct.Gaussian(0.5))
    kw = dict(T=2.0, runs=4, seed=2, n_records=3, dtype="float64")
    exact = ct.simulate(p, ct.AutoClipSGD(1.0, percentile=50, history="exact", max_steps=100), **kw)
    hist = ct.simulate(p, ct.AutoClipSGD(1.0, percentile=50), **kw)
    width = math.log(HIST_RANGE[1] / HIST_RANGE[0]) / HIST_BINS
    np.testing.assert_allclose(hist.stat("clip")[:, 1:], exact.stat("clip")[:, 1:], rtol=width)


def test_quantile_stationary_point_is_where_the_slow_ode_settles():
    p = ct.Problem.isotropic(50, ct.StudentT(3.0, 0.5))
    c_inf, R_inf = ct.quantile_stationary_point(p.noise, 1.0, 0.5)
    mu, nu = ct.reduction_factors(p.noise, R_inf, c_inf)
    assert mu == pytest.approx(0.5, abs=1e-12)
    assert R_inf == pytest.approx(1.0 * nu / (4 * 0.5), rel=1e-12)
    alg = ct.QuantileClipSGD(1.0, 1.0, quantile=0.5, clip_lr=2.0 / p.D)
    ode = ct.solve_ode(p, alg, T=60.0, n_records=2)
    assert ode.risk[-1] == pytest.approx(R_inf, rel=1e-6)
    assert ode.clip_path[-1] == pytest.approx(c_inf, rel=1e-6)


def test_quantile_sde_does_not_depend_on_the_record_grid():
    """The factor window comes from a dense ODE path: the record times (two records, or times
    without 0) do not change a bit of the runs."""
    p = ct.Problem.isotropic(60, ct.Gaussian(0.05), x0=np.full(60, 0.5))
    alg = ct.QuantileClipSGD(1.0, 3.0, quantile=0.5, clip_lr=0.05)
    kw = dict(T=6.0, runs=3, seed=1, dtype="float64")
    two = ct.simulate_sde(p, alg, n_records=2, **kw)
    many = ct.simulate_sde(p, alg, n_records=7, **kw)
    np.testing.assert_array_equal(two.risk[:, -1], many.risk[:, -1])
    np.testing.assert_array_equal(two.stat("clip")[:, -1], many.stat("clip")[:, -1])
    late = ct.simulate_sde(p, alg, times=[4.0, 6.0], runs=3, seed=1, dtype="float64")
    np.testing.assert_array_equal(late.risk[:, -1], many.risk[:, -1])


def test_noiseless_quantile_sde_reaches_the_bottom_with_the_ode():
    """No noise: R falls like exp(-t) far below 1e-10 R0 and c follows the median of |w|; the
    SDE's table follows the whole path instead of freezing at its edge."""
    p = ct.Problem.isotropic(50, ct.Gaussian(0.0))
    alg = ct.QuantileClipSGD(1.0, 1.0, quantile=0.5, clip_lr=0.02, regime="slow")
    times = np.array([0.0, 40.0])
    ode = ct.solve_ode(p, alg, times=times)
    sde = ct.simulate_sde(p, alg, times=times, runs=8, seed=0, dtype="float64")
    assert ode.risk[-1] < 1e-15 * p.initial_risk
    assert 0.2 < sde.mean()[-1] / ode.risk[-1] < 5.0, (sde.mean(), ode.risk)
    assert 0.2 < sde.stat_mean("clip")[-1] / ode.clip_path[-1] < 5.0


def test_quantile_sde_refuses_a_dt_too_coarse_for_the_threshold():
    p = ct.Problem.isotropic(400, ct.Gaussian(1.0))
    alg = ct.QuantileClipSGD(1.0, 1.0, quantile=0.5, clip_lr=0.1, regime="slow")  # eta = 40
    with pytest.raises(ValueError, match="dt"):
        ct.simulate_sde(p, alg, T=1.0, runs=2)
    ct.simulate_sde(p, alg, T=0.1, runs=2, dt=0.005, n_records=2)  # eta dt = 0.2: accepted
