"""DP-SGD (SPEC 9): the update, its ODE / map / SDE term, and SGD against the ODE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipped_trip as ct
from tolerances import ODE_CLOSED_FORM_REL, monte_carlo_rel


def _model(lam):
    D = lam.sum()
    return {
        "sqrt_lam": jnp.asarray(np.sqrt(lam)),
        "inv_D": jnp.asarray(1.0 / D),
        "sqrt_D": jnp.asarray(np.sqrt(D)),
    }


@pytest.mark.parametrize("batch", [1, 6])
def test_kernel_step_is_the_formula(batch):
    """e <- e - (lr / D) (sum_j clip_C(g_j) + sigma C xi) / B, on the same random numbers."""
    d, lr, clip, sigma = 25, 1.5, 0.4, 2.5
    noise = ct.StudentT(3.0, 0.5)
    rng = np.random.default_rng(1)
    lam = rng.uniform(0.1, 1.0, d)
    e = rng.standard_normal(d) / np.sqrt(d)
    D = lam.sum()
    key = jax.random.key(7)
    kernel = ct.DPSGD(lr, clip, batch=batch, noise_multiplier=sigma).kernel()
    sched = {
        "lr": jnp.asarray(lr),
        "clip": jnp.asarray(clip),
        "noise_multiplier": jnp.asarray(sigma),
    }
    got, _ = kernel.step(noise, _model(lam), sched, key, jnp.asarray(e), ())
    kz, ke = jax.random.split(key)
    shape = (d,) if batch == 1 else (batch, d)
    A = np.sqrt(lam) * np.asarray(jax.random.normal(kz, shape, jnp.float64)).reshape(batch, d)
    eps = np.asarray(noise.sample(ke, () if batch == 1 else (batch,), jnp.float64)).reshape(batch)
    _, kq = jax.random.split(jax.random.fold_in(key, 1))
    xi = np.asarray(jax.random.normal(kq, (d,), jnp.float64))
    C = clip * np.sqrt(D)
    total = np.zeros(d)
    for a, ep in zip(A, eps):
        g = (a @ e - ep) * a
        n = np.linalg.norm(g)
        total += g if n <= C else g * C / n
    expected = e - lr / D * (total + sigma * C * xi) / batch
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("batch", [1, 4])
def test_zero_noise_multiplier_is_per_example_clipped_sgd_bit_for_bit(batch):
    p = ct.Problem.power_law(48, 0.5, ct.Laplace(0.6))
    kw = dict(T=1.5, runs=6, seed=3, n_records=5, dtype="float64")
    dp = ct.simulate(p, ct.DPSGD(0.9, 0.5, batch=batch, noise_multiplier=0.0), **kw)
    plain = ct.simulate(p, ct.ClippedSGD(0.9, 0.5, batch=batch), **kw)
    np.testing.assert_array_equal(dp.risk, plain.risk)
    o_dp = ct.solve_ode(p, ct.DPSGD(0.9, 0.5, batch=batch, noise_multiplier=0.0), T=1.5)
    o_plain = ct.solve_ode(p, ct.ClippedSGD(0.9, 0.5, batch=batch), T=1.5)
    np.testing.assert_array_equal(o_dp.risk, o_plain.risk)


def test_ode_matches_the_isotropic_closed_form():
    """K = I, Gaussian noise, a clip so large that nothing is clipped (mu = 1, nu = 2R + s^2)
    but sigma c = 1: dR/dt = -2 g R + g^2 (2R + s^2) / (2B) + D g^2 (sigma c)^2 / (2 B^2),
    a linear ODE."""
    d, B, g, s = 40, 4, 0.8, 0.5
    c, sigma = 1e6, 1e-6
    p = ct.Problem.isotropic(d, ct.Gaussian(s))
    alg = ct.DPSGD(g, c, batch=B, noise_multiplier=sigma)
    t = np.linspace(0.0, 3.0, 7)
    res = ct.solve_ode(p, alg, times=t, method="DOP853", rtol=1e-12)
    a = 2 * g - g * g / B
    forcing = g * g * s * s / (2 * B) + d * g * g * (sigma * c) ** 2 / (2 * B * B)
    R_inf = forcing / a
    expected = R_inf + (p.initial_risk - R_inf) * np.exp(-a * t)
    np.testing.assert_allclose(res.risk, expected, rtol=ODE_CLOSED_FORM_REL)


def test_map_carries_the_privacy_term():
    """SPEC 9.1 map: v_i' += eta^2 sigma^2 c^2 D / (2 B^2). On K = I (d = D) without clipping
    (c huge, sigma c = 1) the map's R obeys R' = rho R + const with
    rho = (1 - eta)^2 + eta^2 (d + 1) / B (gradient noise and the kap - mu^2 = 1 term), so the
    difference with and without privacy noise is add (1 - rho^n) / (1 - rho) after n steps,
    add = g^2 (sigma c)^2 / (2 B^2)."""
    d, B, g = 20, 5, 1.0
    c, sigma = 1e6, 1e-6
    p = ct.Problem.isotropic(d, ct.Gaussian(0.5))
    kw = dict(T=2.0, method="map", n_records=3)
    with_dp = ct.solve_ode(p, ct.DPSGD(g, c, batch=B, noise_multiplier=sigma), **kw)
    base = ct.solve_ode(p, ct.DPSGD(g, c, batch=B, noise_multiplier=0.0), **kw)
    eta = g / d
    rho = (1 - eta) ** 2 + eta**2 * (d + 1) / B
    add = g * g * (sigma * c) ** 2 / (2 * B * B)
    n = int(round(2.0 * d))
    diff = add * (1 - rho**n) / (1 - rho)
    assert with_dp.risk[-1] - base.risk[-1] == pytest.approx(diff, rel=1e-8)


def test_sgd_matches_the_ode_and_needs_the_privacy_term():
    """SPEC 9.2's verified regime: B = 25, D = 625, D g^2 sigma^2 c^2 / (2 B^2) = 0.5."""
    d, runs = 625, 12
    p = ct.Problem.isotropic(d, ct.StudentT(3.0, 0.5))
    alg = ct.DPSGD(1.0, 1.0, batch=25, noise_multiplier=1.0)
    sgd = ct.simulate(p, alg, T=3.0, runs=runs, seed=5, n_records=4, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sgd.t)
    no_dp = ct.solve_ode(p, ct.ClippedSGD(1.0, 1.0, batch=25), times=sgd.t)
    tol = monte_carlo_rel(runs, d)
    rel = np.abs(sgd.mean()[1:] / ode.risk[1:] - 1)
    assert rel.max() < tol, (rel, tol)
    assert np.abs(sgd.mean()[-1] / no_dp.risk[-1] - 1) > 10 * tol  # the term matters


def test_sde_matches_the_ode():
    d, runs = 200, 24
    p = ct.Problem.isotropic(d, ct.Gaussian(0.5))
    alg = ct.DPSGD(1.0, 0.8, batch=10, noise_multiplier=0.7)
    sde = ct.simulate_sde(p, alg, T=2.0, runs=runs, seed=2, n_records=3, dt=0.005, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sde.t)
    tol = monte_carlo_rel(runs, d) + 0.01  # Euler-Maruyama at dt = 0.005: O(dt) bias
    np.testing.assert_allclose(sde.mean()[1:], ode.risk[1:], rtol=tol)


def test_privacy_noise_is_isotropic_in_the_ode():
    """SPEC 9.1: the term gamma^2 sigma^2 c^2 / (2 B^2) in dv_i/dt does not depend on lambda_i:
    at e = 0, dy_i/dt = lambda_i (that term) + the gradient noise lambda_i^2 nu / (2 D B)."""
    lam = np.array([1.0, 0.3, 0.01])
    p = ct.Problem(lam, np.zeros(3), np.zeros(3), ct.Gaussian(0.0 + 1e-300))
    alg = ct.DPSGD(0.7, 0.9, batch=3, noise_multiplier=2.0)
    eq = alg.deterministic(p)
    dy = eq.rates(0.0, {"y": np.zeros(3)})["y"]
    expected = lam * 0.7**2 * 2.0**2 * 0.9**2 / (2 * 9)
    np.testing.assert_allclose(dy, expected, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=1.0, clip=None, batch=4, noise_multiplier=1.0), "clip"),
        (dict(lr=1.0, clip=math.inf, batch=4, noise_multiplier=1.0), "clip"),
        (dict(lr=1.0, clip=1.0, batch=0, noise_multiplier=1.0), "batch"),
        (dict(lr=1.0, clip=1.0, batch=4, noise_multiplier=-1.0), "noise_multiplier"),
        (dict(lr=-1.0, clip=1.0, batch=4, noise_multiplier=1.0), "lr"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ct.DPSGD(kwargs.pop("lr"), kwargs.pop("clip"), **kwargs)


def test_describe_records_the_multiplier():
    alg = ct.DPSGD(0.5, 1.0, batch=8, noise_multiplier=1.3)
    desc = alg.describe()
    assert desc["algorithm"] == "DPSGD" and desc["noise_multiplier"] == 1.3
    assert alg.replace(lr=0.7).noise_multiplier == 1.3
