"""Non-centred data and the perturbation fix (SPEC 10): the clipping bias of Chen, Wu, Hong."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._bias_factors import clip_bias_fixed_point
from tolerances import monte_carlo_rel


def _problem(d, noise=None, start_at_optimum=True):
    """Two-level K = {1, 0.5} (half each), m = (e_1 + e_{d/2+1}) / sqrt 2: A = m^T K^-1 m = 1.5."""
    lam = np.where(np.arange(d) < d // 2, 1.0, 0.5)
    m = np.zeros(d)
    m[0] = m[d // 2] = 1 / math.sqrt(2)
    x0 = np.zeros(d) if start_at_optimum else np.ones(d) / math.sqrt(d)
    return ct.Problem(lam, x0, np.zeros(d), noise or ct.Exponential(1.0), data_mean=m)


def test_clipping_operator_has_chen_wu_hong_example_2_stationary_set():
    """f(x) = 1/2 sum (x - a_i)^2 / 2, a = (-3, 3), c = 1: the clipped mean gradient
    1/2 sum clip_1(x - a_i) vanishes on all of [-2, 2] and is (x - 2) / 2 on (2, 4]."""
    a = jnp.array([-3.0, 3.0])
    for x in np.linspace(-2.0, 2.0, 9):
        g = 0.5 * sum(ct.clip_by_norm(jnp.array([x - ai]), 1.0)[0] for ai in a)
        assert float(g) == 0.0
    for x in (2.5, 3.0, 3.9):
        g = 0.5 * sum(ct.clip_by_norm(jnp.array([x - ai]), 1.0)[0] for ai in a)
        assert float(g) == pytest.approx((x - 2) / 2, rel=1e-12)


def test_kernel_step_with_mean_and_perturbation_is_the_formula():
    d, B, lr, c, k = 20, 3, 1.2, 0.4, 0.8
    noise = ct.Exponential(1.0)
    rng = np.random.default_rng(2)
    lam = rng.uniform(0.2, 1.0, d)
    m = rng.standard_normal(d) / math.sqrt(d)
    e = rng.standard_normal(d) / math.sqrt(d)
    D = lam.sum()
    model = {
        "sqrt_lam": jnp.asarray(np.sqrt(lam)),
        "inv_D": jnp.asarray(1.0 / D),
        "sqrt_D": jnp.asarray(np.sqrt(D)),
        "mean": jnp.asarray(m),
    }
    key = jax.random.key(3)
    kernel = ct.ClippedSGD(lr, c, batch=B, perturbation=k).kernel()
    sched = {"lr": jnp.asarray(lr), "clip": jnp.asarray(c), "perturbation": jnp.asarray(k)}
    got, _ = kernel.step(noise, model, sched, key, jnp.asarray(e), ())
    kz, ke = jax.random.split(key)
    kp, _ = jax.random.split(jax.random.fold_in(key, 1))
    A = m + np.sqrt(lam) * np.asarray(jax.random.normal(kz, (B, d), jnp.float64))
    eps = np.asarray(noise.sample(ke, (B,), jnp.float64))
    Z = np.asarray(jax.random.normal(kp, (B, d), jnp.float64))
    C = c * math.sqrt(D)
    total = np.zeros(d)
    for a, ep, z in zip(A, eps, Z):
        g = (a @ e - ep) * a + k * z
        n = np.linalg.norm(g)
        total += g if n <= C else g * C / n
    np.testing.assert_allclose(np.asarray(got), e - lr / D * total / B, rtol=1e-12, atol=1e-15)


def test_records_bias_and_population_risk():
    p = _problem(40, start_at_optimum=False)
    res = ct.simulate(p, ct.ClippedSGD(0.5, 0.5), T=1.0, runs=3, n_records=4, dtype="float64")
    r = res.stat("bias")
    assert r.shape == res.risk.shape
    np.testing.assert_allclose(res.population_risk, res.risk + 0.5 * r * r, rtol=1e-12)
    ode = ct.solve_ode(p, ct.ClippedSGD(0.5, 0.5), times=res.t)
    np.testing.assert_allclose(ode.population_risk, ode.risk + 0.5 * ode.bias**2, rtol=1e-12)
    assert ode.bias[0] == pytest.approx(p.bias(p.x0))


@pytest.mark.parametrize("k", [0.0, 2.0])
def test_ode_reaches_the_fixed_point(k):
    """SPEC 10's stationary point (r = -0.1355, R = 0.0568 at k = 0; -0.0405, 0.179 at k = 2;
    gamma = 0.5, c = 0.5, exponential noise), solved independently from two scalar equations."""
    p = _problem(40)
    ode = ct.solve_ode(p, ct.ClippedSGD(0.5, 0.5, perturbation=k), T=600.0, n_records=3)
    fp = clip_bias_fixed_point(p.noise, p.eigenvalues, p.data_mean, 0.5, lr=0.5, perturbation=k)
    assert ode.bias[-1] == pytest.approx(fp["r"], rel=1e-6)
    assert ode.risk[-1] == pytest.approx(fp["R"], rel=1e-6)
    spec = {0.0: (-0.135, 0.057), 2.0: (-0.041, 0.179)}[k]
    assert ode.bias[-1] == pytest.approx(spec[0], abs=1e-3)
    assert ode.risk[-1] == pytest.approx(spec[1], abs=1e-3)


def test_unclipped_sgd_has_no_bias():
    p = _problem(40)
    ode = ct.solve_ode(p, ct.ClippedSGD(0.5, None), T=40.0, n_records=3)
    assert abs(ode.bias[-1]) < 1e-8
    clipped = ct.solve_ode(p, ct.ClippedSGD(0.5, 0.5), T=40.0, n_records=3)
    assert clipped.bias[-1] < -0.1  # clipped SGD walks away from x* to the biased point


@pytest.mark.parametrize("k", [0.0, 2.0])
def test_sgd_matches_the_bias_ode(k):
    """Started at x* (e = 0), clipped SGD drifts to the biased point the ODE predicts. The linear
    statistic r = <m, e> is compared within 5 standard errors of the runs (its per-run spread
    is O(1) in gamma, not O(1/sqrt d)) plus 4/d; R as every risk (monte_carlo_rel)."""
    d, runs = 400, 12
    p = _problem(d)
    alg = ct.ClippedSGD(0.5, 0.5, perturbation=k)
    sgd = ct.simulate(p, alg, T=10.0, runs=runs, seed=1, n_records=5, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sgd.t)
    r = sgd.stat("bias")
    se = r.std(axis=0, ddof=1) / math.sqrt(runs)
    assert np.all(np.abs(r.mean(axis=0) - ode.bias)[1:] < 5 * se[1:] + 4 / d)
    tol = monte_carlo_rel(runs, d)
    np.testing.assert_allclose(sgd.mean()[1:], ode.risk[1:], rtol=tol)


def test_sde_matches_the_bias_ode():
    """The homogenized SDE with the mean drift m kappa(r, R) (SPEC 10) against the ODE."""
    d, runs = 100, 8
    p = _problem(d)
    alg = ct.ClippedSGD(0.5, 0.5, perturbation=1.0)
    sde = ct.simulate_sde(p, alg, T=4.0, runs=runs, seed=2, n_records=3, dt=0.02, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sde.t)
    r = sde.stat("bias")
    se = r.std(axis=0, ddof=1) / math.sqrt(runs)
    # plus O(lr dt) for the Euler-Maruyama step
    assert np.all(np.abs(r.mean(axis=0) - ode.bias)[1:] < 5 * se[1:] + 4 / d + 0.02 * 0.5)
    np.testing.assert_allclose(sde.mean()[1:], ode.risk[1:], rtol=monte_carlo_rel(runs, d) + 0.01)


def test_perturbation_reduces_the_bias_at_a_variance_cost():
    p = _problem(40)
    out = {}
    for k in (0.0, 1.0, 2.0, 4.0):
        ode = ct.solve_ode(p, ct.ClippedSGD(0.5, 0.5, perturbation=k), T=600.0, n_records=2)
        out[k] = (ode.bias[-1], ode.risk[-1])
    biases = [abs(out[k][0]) for k in (0.0, 1.0, 2.0, 4.0)]
    risks = [out[k][1] for k in (0.0, 1.0, 2.0, 4.0)]
    assert biases == sorted(biases, reverse=True) and biases[-1] < biases[0] / 5
    assert risks == sorted(risks)


def test_unsupported_combinations_are_refused():
    p = _problem(20)
    with pytest.raises(ValueError, match="perturbation"):
        ct.ClippedSGD(0.5, 0.5, batch=4, clip_mode="mean", perturbation=1.0)
    with pytest.raises(ValueError, match="clip_mode"):
        ct.solve_ode(p, ct.ClippedSGD(0.5, 0.5, batch=4, clip_mode="mean"), T=1.0)
    with pytest.raises(ValueError, match="map"):
        ct.solve_ode(p, ct.ClippedSGD(0.5, 0.5), T=1.0, method="map")
    with pytest.raises(ValueError, match="constant"):
        ct.simulate_sde(p, ct.ClippedSGD(lambda t: 0.5 + 0 * t, 0.5), T=1.0, runs=2)
    with pytest.raises(ValueError, match="perturbation"):
        ct.ClippedSGD(0.5, 0.5, perturbation=-1.0)
    with pytest.raises(ValueError, match="data_mean"):
        ct.Problem(np.ones(3), np.zeros(3), np.zeros(3), ct.Gaussian(1.0), data_mean=[1.0, 2.0])


def test_problem_reports_the_mean():
    p = _problem(20)
    assert p.mean_precision == pytest.approx(1.5)
    x = np.linspace(0, 1, 20)
    assert p.population_risk(x) == pytest.approx(p.risk(x) + 0.5 * p.bias(x) ** 2)
    assert (
        ct.Problem(
            np.ones(3), np.zeros(3), np.zeros(3), ct.Gaussian(1.0), data_mean=np.zeros(3)
        ).data_mean
        is None
    )
