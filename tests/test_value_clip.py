"""Coordinate-wise (value) clipping and signSGD (SPEC 12)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipped_trip as ct
from tolerances import monte_carlo_rel


def test_kernel_steps_are_the_formulas():
    d, lr, tau = 30, 2.0, 0.05
    noise = ct.Laplace(0.5)
    rng = np.random.default_rng(4)
    lam = rng.uniform(0.05, 1.0, d)
    e = rng.standard_normal(d) / math.sqrt(d)
    D = lam.sum()
    model = {"sqrt_lam": jnp.asarray(np.sqrt(lam)), "inv_D": jnp.asarray(1.0 / D)}
    key = jax.random.key(5)
    kz, ke = jax.random.split(key)
    a = np.sqrt(lam) * np.asarray(jax.random.normal(kz, (d,), jnp.float64))
    g = (a @ e - float(noise.sample(ke, (), jnp.float64))) * a
    sched = {"lr": jnp.asarray(lr), "clip": jnp.asarray(tau)}
    got, _ = ct.ValueClipSGD(lr, tau).kernel().step(noise, model, sched, key, jnp.asarray(e), ())
    np.testing.assert_allclose(np.asarray(got), e - lr / D * np.clip(g, -tau, tau), rtol=1e-13)
    got, _ = ct.SignSGD(lr).kernel().step(noise, model, sched, key, jnp.asarray(e), ())
    np.testing.assert_allclose(np.asarray(got), e - lr / D * np.sign(g), rtol=1e-13)


def test_large_clip_value_is_plain_sgd():
    p = ct.Problem.power_law(60, 0.5, ct.StudentT(4.0, 0.5))
    value = ct.solve_ode(p, ct.ValueClipSGD(0.8, 1e9), T=3.0, n_records=4)
    plain = ct.solve_ode(p, ct.ClippedSGD(0.8, None), T=3.0, n_records=4)
    np.testing.assert_allclose(value.risk, plain.risk, rtol=1e-9)
    kw = dict(T=1.0, runs=3, seed=1, n_records=3, dtype="float64")
    np.testing.assert_allclose(
        ct.simulate(p, ct.ValueClipSGD(0.8, 1e9), **kw).risk,
        ct.simulate(p, ct.ClippedSGD(0.8, None), **kw).risk,
        rtol=1e-10,
    )


def test_small_clip_value_tends_to_sign_sgd_at_the_stated_rate():
    """gamma = eta / tau: the value-clip ODE tends to the signSGD ODE, the gap shrinking like
    tau log(1/tau) (not like tau: the density of w z diverges logarithmically at 0)."""
    p = ct.Problem.power_law(50, 0.5, ct.Gaussian(0.5))
    eta, T = 0.05, 3.0
    sign = ct.solve_ode(p, ct.SignSGD(eta), T=T, n_records=2).risk[-1]
    gaps = {}
    for tau in (1e-2, 1e-3):
        v = ct.solve_ode(p, ct.ValueClipSGD(eta / tau, tau), T=T, n_records=2).risk[-1]
        gaps[tau] = abs(v / sign - 1)
    rate = (1e-2 * math.log(1e2)) / (1e-3 * math.log(1e3))  # 6.7
    assert gaps[1e-3] < 0.02
    assert 0.5 * rate < gaps[1e-2] / gaps[1e-3] < 2 * rate


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_value_clip_sgd_matches_ode(tau):
    p = ct.Problem.power_law(400, 0.5, ct.StudentT(3.0, 0.5), x0=np.ones(400))
    alg = ct.ValueClipSGD(1.0, tau)
    sgd = ct.simulate(p, alg, T=2.0, runs=8, seed=3, n_records=4, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sgd.t)
    np.testing.assert_allclose(sgd.mean()[1:], ode.risk[1:], rtol=monte_carlo_rel(8, p.d))


def test_sign_sgd_matches_ode():
    p = ct.Problem.power_law(400, 0.5, ct.StudentT(3.0, 0.5), x0=np.ones(400))
    alg = ct.SignSGD(0.5)
    sgd = ct.simulate(p, alg, T=2.0, runs=8, seed=3, n_records=4, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sgd.t)
    np.testing.assert_allclose(sgd.mean()[1:], ode.risk[1:], rtol=monte_carlo_rel(8, p.d))


def test_value_clipping_needs_the_coordinate_basis():
    K = np.array([[2.0, 0.5], [0.5, 1.0]])
    rotated = ct.Problem.from_covariance(K, [1.0, 0.0], [0.0, 0.0], ct.Gaussian(0.5))
    for alg in (ct.ValueClipSGD(1.0, 0.1), ct.SignSGD(0.1)):
        with pytest.raises(ValueError, match="diagonal"):
            ct.solve_ode(rotated, alg, T=1.0)
        with pytest.raises(ValueError, match="diagonal"):
            ct.simulate(rotated, alg, T=1.0, runs=2)
    diagonal = ct.Problem.from_covariance(
        np.diag([2.0, 1.0]), [1.0, 0.0], [0.0, 0.0], ct.Gaussian(0.5)
    )
    assert ct.solve_ode(diagonal, ct.ValueClipSGD(1.0, 0.1), T=1.0, n_records=2).risk[-1] > 0
    with pytest.raises(ValueError, match="clip_value"):
        ct.ValueClipSGD(1.0, 0.0)


def test_preconditioner_limits():
    """mu_i lambda_i -> lambda_i for large tau; ~ 2 sqrt(2/pi) p_w(0) tau sqrt(lambda_i) for
    small tau (Gaussian noise: p_w(0) = 1 / sqrt(2 pi (2R + s^2)))."""
    lam = np.array([1.0, 0.1, 0.01])
    p = ct.Problem(lam, np.zeros(3), np.zeros(3), ct.Gaussian(0.5))
    np.testing.assert_allclose(ct.value_clip_preconditioner(p, 1e9, 0.1), lam, rtol=1e-12)
    tau, R = 1e-6, 0.1
    pw0 = 1 / math.sqrt(2 * math.pi * (2 * R + 0.25))
    expected = 2 * math.sqrt(2 / math.pi) * pw0 * tau * np.sqrt(lam)
    np.testing.assert_allclose(ct.value_clip_preconditioner(p, tau, R), expected, rtol=1e-4)


# --- the homogenized SDEs (SPEC 12): value clipping and signSGD --------------------------------
def _time_averaged_gap(paths, ode):
    """Each run's R(t) / ODE(t) averaged over the records t > 0: (mean over runs - 1, its
    standard error over runs)."""
    per_run = (np.asarray(paths.risk)[:, 1:] / ode.risk[1:]).mean(axis=1)
    return per_run.mean() - 1.0, per_run.std(ddof=1) / math.sqrt(per_run.size)


@pytest.mark.parametrize(
    "alg", [ct.ValueClipSGD(1.0, 0.1), ct.ValueClipSGD(1.0, 1.0), ct.SignSGD(0.5)], ids=repr
)
def test_coordinate_sde_matches_its_ode(alg):
    p = ct.Problem.power_law(400, 0.5, ct.StudentT(3.0, 0.5), x0=np.ones(400))
    runs = 16
    sde = ct.simulate_sde(p, alg, T=2.0, runs=runs, seed=3, n_records=9, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sde.t)
    np.testing.assert_allclose(sde.mean()[1:], ode.risk[1:], rtol=monte_carlo_rel(runs, p.d))
    gap, se = _time_averaged_gap(sde, ode)
    assert abs(gap) < 5.0 * se + 4.0 / p.d, (gap, se)


def test_value_clip_sde_with_infinite_clip_is_the_unclipped_sde():
    """tau = inf: mu_i = 1, nu_i / lambda_i = 2R + E eps^2, the unclipped SDE on the same random
    numbers; only the factor table (24 nodes per decade of R, linear in log-log) differs."""
    p = ct.Problem.power_law(60, 0.5, ct.StudentT(4.0, 0.5))
    kw = dict(T=2.0, runs=3, seed=1, n_records=5, dtype="float64")
    value = ct.simulate_sde(p, ct.ValueClipSGD(0.8, math.inf), **kw)
    plain = ct.simulate_sde(p, ct.ClippedSGD(0.8, None), **kw)
    np.testing.assert_allclose(value.risk, plain.risk, rtol=1e-3)
    assert not np.array_equal(value.risk, plain.risk)  # two code paths, not one
