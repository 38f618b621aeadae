"""Mini-batch clipping both ways (SPEC section 8) and the algorithm API (SPEC section 13)."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._simulate import trace_count
from tolerances import EXACT, monte_carlo_rel

DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------------------------
# batch 1: the v0.1 results, bit for bit
# ---------------------------------------------------------------------------------------------
def test_batch_one_reproduces_version_0_1_bit_for_bit():
    """tests/data/v01_reference.npz was written by version 0.1 (commit 10e9a49) with
    tests/data/make_v01_reference.py; the same calls must give the same bits today, and the
    algorithm forms (both clip modes) the same bits as the shorthand."""
    ref = np.load(DATA / "v01_reference.npz")
    p = ct.Problem.power_law(64, 0.5, ct.StudentT(3.0, 1.0))
    for dt in ("float32", "float64"):
        kw = dict(T=3.0, runs=20, seed=11, n_records=7, dtype=dt)
        short = ct.simulate(p, 0.8, 0.5, **kw).risk
        np.testing.assert_array_equal(short, ref[f"sim_{dt}"])
        for mode in ("per-example", "mean"):
            alg = ct.ClippedSGD(0.8, 0.5, clip_mode=mode)
            np.testing.assert_array_equal(ct.simulate(p, alg, **kw).risk, short)
        sde_kw = dict(T=3.0, runs=5, seed=1, n_records=7, dtype=dt)
        sde = ct.simulate_sde(p, ct.ClippedSGD(0.8, 0.5, clip_mode="mean"), **sde_kw).risk
        np.testing.assert_array_equal(sde, ref[f"sde_{dt}"])
    sweep = ct.sweep(p, [0.5, 0.9], [0.3, None], T=2.0, runs=3, seed=4, n_records=5).risk
    np.testing.assert_array_equal(sweep, ref["sweep"])
    for mode in ("per-example", "mean"):
        ode = ct.solve_ode(p, ct.ClippedSGD(0.8, 0.5, clip_mode=mode), T=3.0, n_records=7)
        np.testing.assert_allclose(ode.risk, ref["ode"], rtol=EXACT["float64"], atol=0)
        ode_u = ct.solve_ode(p, ct.ClippedSGD(0.8, None, clip_mode=mode), T=3.0, n_records=7)
        np.testing.assert_allclose(ode_u.risk, ref["ode_u"], rtol=EXACT["float64"], atol=0)
    rp = ct.ReducedProblem.two_level(1000, ct.StudentT(3.0))
    red = ct.simulate_reduced(rp, 0.8, 0.5, T=2.0, runs=4, seed=3, n_records=5).risk
    np.testing.assert_array_equal(red, ref["reduced"])


# ---------------------------------------------------------------------------------------------
# the stochastic update, checked against NumPy on the same random numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["per-example", "mean"])
@pytest.mark.parametrize("clip", [0.3, 3.0, math.inf])
def test_kernel_step_is_the_formula(mode, clip):
    d, B, lr = 30, 5, 2.0
    noise = ct.Laplace(0.7)
    rng = np.random.default_rng(0)
    lam = rng.uniform(0.1, 1.0, d)
    e = rng.standard_normal(d) / np.sqrt(d)
    D = lam.sum()
    model = {
        "sqrt_lam": jnp.asarray(np.sqrt(lam)),
        "inv_D": jnp.asarray(1.0 / D),
        "sqrt_D": jnp.asarray(np.sqrt(D)),
    }
    key = jax.random.key(42)
    kernel = ct.ClippedSGD(lr, clip, batch=B, clip_mode=mode).kernel()
    sched = {"lr": jnp.asarray(lr), "clip": jnp.asarray(clip)}
    got, _ = kernel.step(noise, model, sched, key, jnp.asarray(e), ())
    # the same random numbers, then the update written out in NumPy
    kz, ke = jax.random.split(key)
    A = np.sqrt(lam) * np.asarray(jax.random.normal(kz, (B, d), jnp.float64))
    eps = np.asarray(noise.sample(ke, (B,), jnp.float64))
    w = A @ e - eps
    grads = w[:, None] * A
    C = clip * np.sqrt(D)

    def clipped(g):
        n = np.linalg.norm(g)
        return g if n <= C else g * C / n

    if mode == "per-example":
        update = np.mean([clipped(g) for g in grads], axis=0)
    else:
        update = clipped(grads.mean(axis=0))
    np.testing.assert_allclose(np.asarray(got), e - lr / D * update, rtol=1e-12, atol=1e-15)


def test_samples_and_params_record_the_batch():
    p = ct.Problem.isotropic(40, ct.Gaussian(0.5))
    res = ct.simulate(p, ct.ClippedSGD(0.5, 1.0, batch=4), T=1.0, runs=2, n_records=3)
    np.testing.assert_array_equal(res.samples, 4 * np.rint(res.t * p.D))
    assert res.params["algorithm"]["batch"] == 4
    assert res.params["algorithm"]["clip_mode"] == "per-example"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch=0), "batch"),
        (dict(batch=2.5), "batch"),
        (dict(clip_mode="global"), "clip_mode"),
        (dict(clip=-1.0), "clip"),
    ],
)
def test_algorithm_rejects_bad_input(kwargs, match):
    args = dict(lr=0.5, clip=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ct.ClippedSGD(args.pop("lr"), args.pop("clip"), **args)


def test_driver_rejects_clip_beside_an_algorithm():
    p = ct.Problem.isotropic(10, ct.Gaussian(0.5))
    with pytest.raises(ValueError, match="clip"):
        ct.simulate(p, ct.ClippedSGD(0.5, 1.0), 0.3, T=1.0)


def test_a_new_batch_compiles_once_and_a_new_grid_never():
    p = ct.Problem.isotropic(32, ct.Laplace(0.5))
    kw = dict(T=1.0, runs=2, seed=0, n_records=3)
    alg = ct.ClippedSGD(1.0, batch=8, clip_mode="mean")
    ct.sweep(p, [0.5, 1.0], [0.3, None], algorithm=alg, **kw)
    before = trace_count()
    ct.sweep(p, [0.7, 2.0], [0.2, 0.9], algorithm=alg, **kw)
    assert trace_count() == before
    ct.sweep(p, [0.7, 2.0], [0.2, 0.9], algorithm=alg.replace(batch=16), **kw)
    assert trace_count() == before + 1


# ---------------------------------------------------------------------------------------------
# per-example clipping: SGD against the ODE (SPEC 8A)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "B,lr,noise",
    [(8, 3.2, ct.StudentT(3.0)), (64, 12.8, ct.StudentT(3.0)), (8, 3.2, ct.Gaussian(1.0))],
    ids=["B8-t3", "B64-t3", "B8-gauss"],
)
def test_per_example_sgd_tracks_the_ode(B, lr, noise):
    p = ct.Problem.two_level(600, noise)
    runs = 24
    alg = ct.ClippedSGD(lr, 1.0, batch=B)
    sgd = ct.simulate(p, alg, T=1.5, runs=runs, seed=3, n_records=7, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sgd.t)
    assert ode.params["method"] == "DOP853"
    rel = np.abs(sgd.mean() / ode.risk - 1)
    assert rel.max() < monte_carlo_rel(runs, p.D, bias=8.0), rel
    # noise nu / B: the batch-1 ODE at the same lr is far off
    wrong = ct.solve_ode(p, ct.ClippedSGD(lr, 1.0), times=sgd.t)
    assert np.abs(sgd.mean()[1:] / wrong.risk[1:] - 1).max() > 0.2


# ---------------------------------------------------------------------------------------------
# the critical batch size: the one-step map (SPEC 8A.2, 8A.4)
# ---------------------------------------------------------------------------------------------
def test_map_matches_sgd_near_the_critical_batch_where_the_ode_does_not():
    """B = D / 4, eta = 0.5 (SPEC 8A.4: SGD vs map 2.0% at d = 1000, the ODE ~20% off)."""
    d = 800
    p = ct.Problem.isotropic(d, ct.StudentT(3.0))
    B, lr = d // 4, 0.5 * d  # eta = 0.5: h = O(1)
    runs = 32
    alg = ct.ClippedSGD(lr, 1.0, batch=B)
    sgd = ct.simulate(p, alg, times=np.arange(0, 41, 4) / p.D, runs=runs, seed=5, dtype="float64")
    auto = ct.solve_ode(p, alg, times=sgd.t)
    assert auto.params["method"] == "map"  # chosen automatically: h is large
    with pytest.warns(UserWarning, match="map"):
        ode = ct.solve_ode(p, alg, times=sgd.t, method="DOP853")
    # 5 standard errors of the mean plus the O(1/D) finite-size bias (2% at D = 1000 measured)
    tol = 5 * sgd.std_error()[1:] / sgd.mean()[1:] + 20.0 / d
    gap_map = np.abs(sgd.mean()[1:] / auto.risk[1:] - 1)
    gap_ode = np.abs(sgd.mean()[1:] / ode.risk[1:] - 1)
    assert np.all(gap_map < tol), (gap_map, tol)
    assert np.all(gap_ode[2:] > 2 * tol[2:]), (gap_ode, tol)  # the leading ODE is O(1) off


def test_map_gives_the_stability_boundary_of_unclipped_minibatch_sgd():
    """Isotropic, unclipped: gamma_max = 2 B D / (D + B + 1) (SPEC 8A.4), below the leading
    ODE's 2B: between the two the map and SGD diverge while the ODE converges."""
    d, B = 200, 50
    p = ct.Problem.isotropic(d, ct.Gaussian(0.5))
    g_max = 2 * B * p.D / (p.D + B + 1)
    times = np.arange(0, 201, 20) / p.D
    for factor, stable in [(0.9, True), (1.1, False)]:
        alg = ct.ClippedSGD(factor * g_max, None, batch=B)
        mp = ct.solve_ode(p, alg, times=times, method="map")
        sgd = ct.simulate(p, alg, times=times, runs=8, seed=1, dtype="float64")
        grows = mp.risk[-1] > 10 * mp.risk[0]
        assert grows != stable
        assert (sgd.risk[:, -1] > 10 * sgd.risk[:, 0]).all() != stable
        assert factor * g_max < 2 * B  # the leading ODE is stable at this rate
        with pytest.warns(UserWarning):
            ode = ct.solve_ode(p, alg, times=times, method="DOP853")
        assert ode.risk[-1] < 10 * ode.risk[0]  # bounded: no divergence seen by the ODE


def test_unclipped_map_is_exact_in_expectation():
    """Unclipped, the map of E[v] is exact for every d (SPEC 8A.2): against the closed-form
    isotropic recursion E R' = ((1 - eta)^2 + eta^2 (B + 1) / B ... ) written out by hand."""
    d, B, eta = 50, 10, 0.3
    sigma = 0.7
    p = ct.Problem.isotropic(d, ct.Gaussian(sigma))
    D = p.D
    alg = ct.ClippedSGD(eta * D, None, batch=B)
    steps = np.arange(0, 31, 5)
    mp = ct.solve_ode(p, alg, times=steps / D, method="map", use_table=False)
    # isotropic: sum over i of E[u_i^2] = (1/B)[D (2R + s^2) + 2 (2R)] + (B-1)/B 2R  (lam = 1)
    R = p.initial_risk
    expect = [R]
    for _ in range(steps[-1]):
        second = (d * (2 * R + sigma**2) + 4 * R) / B + (B - 1) / B * 2 * R
        R = R - 2 * eta * R + 0.5 * eta**2 * second
        expect.append(R)
    np.testing.assert_allclose(mp.risk, np.array(expect)[steps], rtol=1e-12)


def test_second_order_ode_has_the_maps_fixed_point():
    """D (map - identity) is the ODE with the second-order term (SPEC 8A.4): same plateau."""
    p = ct.Problem.two_level(60, ct.StudentT(3.0))
    for mode in ("per-example", "mean"):
        alg = ct.ClippedSGD(6.0, 0.7, batch=16, clip_mode=mode)
        times = np.array([0.0, 100.0, 140.0])
        with pytest.warns(UserWarning):
            ode2 = ct.solve_ode(p, alg, times=times, second_order=True, method="DOP853")
        mp = ct.solve_ode(p, alg, times=times, method="map")
        assert abs(ode2.risk[-1] / ode2.risk[-2] - 1) < 1e-8  # both at their plateaus
        assert abs(mp.risk[-1] / mp.risk[-2] - 1) < 1e-8
        np.testing.assert_allclose(ode2.risk[-1], mp.risk[-1], rtol=1e-6)
        with pytest.warns(UserWarning):
            ode1 = ct.solve_ode(p, alg, times=times, method="DOP853")
        assert abs(ode1.risk[-1] / mp.risk[-1] - 1) > 1e-3  # the leading ODE's plateau is not


# ---------------------------------------------------------------------------------------------
# clip of the mean: SGD against the ODE (SPEC 8B), the large-batch limit, the SDE
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "B,lr,noise,clip",
    [
        (8, 3.2, ct.Gaussian(1.0), 0.4),
        (8, 3.2, ct.ThreePoint(3.0, 0.2), 0.3),
        (64, 12.8, ct.ThreePoint(3.0, 0.2), 0.1),
    ],
    ids=["B8-gauss", "B8-three-point", "B64-three-point"],
)
def test_clip_of_mean_sgd_tracks_the_ode(B, lr, noise, clip):
    p = ct.Problem.two_level(600, noise)
    runs = 24
    alg = ct.ClippedSGD(lr, clip, batch=B, clip_mode="mean")
    sgd = ct.simulate(p, alg, T=1.5, runs=runs, seed=4, n_records=7, dtype="float64")
    ode = ct.solve_ode(p, alg, times=sgd.t)
    rel = np.abs(sgd.mean() / ode.risk - 1)
    assert rel.max() < monte_carlo_rel(runs, p.D, bias=8.0), rel
    # clipping is active: the per-example ODE at the same (lr, c) is a different curve
    other = ct.solve_ode(p, alg.replace(clip_mode="per-example"), times=sgd.t)
    assert np.abs(other.risk[1:] / ode.risk[1:] - 1).max() > 3 * rel.max()


def test_large_batch_shift_is_needed_at_large_batch():
    """B(B+1) G / D moves the clip-of-mean statistic by O(B / D) (SPEC 8B.2): at B = D / 4 the
    SGD follows the map with the shift; the same map without it is off."""
    d = 400
    p = ct.Problem.isotropic(d, ct.ThreePoint(3.0, 0.2))
    B = d // 4
    alg = ct.ClippedSGD(0.25 * d, 0.05, batch=B, clip_mode="mean")
    times = np.arange(0, 41, 5) / p.D
    sgd = ct.simulate(p, alg, times=times, runs=16, seed=2, dtype="float64")
    mp = ct.solve_ode(p, alg, times=sgd.t)
    assert mp.params["method"] == "map"
    tol = 5 * sgd.std_error()[1:] / sgd.mean()[1:] + 20.0 / d
    gap = np.abs(sgd.mean()[1:] / mp.risk[1:] - 1)
    assert np.all(gap < tol), (gap, tol)


def test_shifted_mu_B_is_the_exact_one_step_drift_at_batch_D():
    """At B = D the shift B (B + 1) G / D is O(1) (SPEC 8B.2: MC 0.5477, shifted formula
    0.5473, unshifted 0.6707 at B = D = 1000). Monte Carlo of the exact clip-of-mean update,
    E<u, e> = mu_B e^T K e, against mean_clip_factors with and without the shift."""
    from clipped_trip._batch_factors import mean_clip_factors

    d = B = 100
    sigma, c = 0.5, 0.09
    e = jnp.ones(d) / math.sqrt(d)  # isotropic: R = 1/2, G = ||e||^2 = 2R
    R = 0.5
    C = c * math.sqrt(d)
    n = 4000

    def drift(key):
        ka, ke = jax.random.split(key)
        A = jax.random.normal(ka, (B, d))
        w = A @ e - sigma * jax.random.normal(ke, (B,))
        m = w @ A / B
        return jnp.dot(m, e) * jnp.minimum(1.0, C / jnp.linalg.norm(m))

    keys = jax.random.split(jax.random.key(7), n)
    samples = np.asarray(jax.lax.map(drift, keys, batch_size=500)) / (2 * R)
    mu_mc, se = samples.mean(), samples.std(ddof=1) / math.sqrt(n)
    shifted = float(
        mean_clip_factors(ct.Gaussian(sigma), R, c, B, shift=B * (B + 1) * 2 * R / d)[0]
    )
    plain = float(mean_clip_factors(ct.Gaussian(sigma), R, c, B)[0])
    # 5 standard errors plus the O(1/D) residual of treating the cross term as its mean
    assert abs(shifted - mu_mc) < 5 * se + 2.0 / d, (shifted, mu_mc, se)
    assert abs(plain - mu_mc) > 3 * (5 * se + 2.0 / d), (plain, mu_mc)


def test_large_batch_clip_of_mean_is_sgd_with_a_deterministic_learning_rate():
    """W / B -> S^2: clip of the mean at large B is unclipped SGD at batch B with the learning
    rate gamma min(1, c sqrt(B) / sqrt(S^2 + (B + 1) G / D)) (SPEC 8B.4), a function of R(t)."""
    d, B, c, lr, sigma = 4000, 1024, 0.02, 1.0, 1.0
    p = ct.Problem.isotropic(d, ct.Gaussian(sigma))
    times = np.linspace(0, 3.0, 31)
    clipped = ct.solve_ode(p, ct.ClippedSGD(lr, c, batch=B, clip_mode="mean"), times=times)
    R = clipped.risk
    phi = np.minimum(1.0, c * math.sqrt(B) / np.sqrt(2 * R + sigma**2 + (B + 1) * 2 * R / p.D))
    assert phi.max() < 0.9  # the clip is active all along
    plain = ct.solve_ode(p, ct.ClippedSGD((times, lr * phi), None, batch=B), times=times)
    gap = np.abs(plain.risk / clipped.risk - 1).max()
    assert gap < 5.0 / B, gap
    # and the clip of the mean loses clipping's CCC advantage: CCC_B -> 1
    tp = ct.ThreePoint(3.0, 0.2)
    small, large = (float(ct.ccc(tp, 0.1, 0.1, batch=b, clip_mode="mean")) for b in (1, 256))
    assert small > 2.0 and abs(large - 1) < 0.05


def test_sde_follows_the_ode_in_both_modes():
    runs = 16
    for noise, mode, B, lr, c in [
        (ct.ThreePoint(3.0, 0.2), "per-example", 16, 6.4, 0.3),
        (ct.Gaussian(1.0), "mean", 16, 6.4, 0.1),
    ]:
        p = ct.Problem.two_level(400, noise)
        alg = ct.ClippedSGD(lr, c, batch=B, clip_mode=mode)
        sde = ct.simulate_sde(
            p, alg, T=1.5, runs=runs, seed=0, dt=0.005, n_records=7, dtype="float64"
        )
        ode = ct.solve_ode(p, alg, times=sde.t)
        rel = np.abs(sde.mean() / ode.risk - 1)
        assert rel.max() < monte_carlo_rel(runs, p.D, bias=8.0), (mode, rel)


# ---------------------------------------------------------------------------------------------
# batch criteria (SPEC 8A.4, 8B.4)
# ---------------------------------------------------------------------------------------------
def test_critical_lr_closed_forms():
    noise, R = ct.Gaussian(0.5), 0.3
    d, B = 300, 40
    lam = np.ones(d)
    # unclipped: leading ODE 2B; the map's exact isotropic boundary 2 B D / (D + B + 1)
    assert float(ct.critical_lr(noise, R, None, batch=B)) == 2 * B
    got = ct.critical_lr(noise, R, None, batch=B, eigenvalues=lam)
    assert abs(got / (2 * B * d / (d + B + 1)) - 1) < 1e-9
    # clipped, per-example: B times the batch-1 value 2 mu (2R + Var) / nu
    t3 = ct.StudentT(3.0)
    mu, nu = (float(x) for x in ct.reduction_factors(t3, R, 0.7))
    one = 2 * mu * (2 * R + t3.second_moment) / nu
    assert abs(float(ct.critical_lr(t3, R, 0.7)) / one - 1) < 1e-12
    assert abs(float(ct.critical_lr(t3, R, 0.7, batch=B)) / (B * one) - 1) < 1e-12
    # the map's boundary lies below both limits and tends to the leading one when D >> B
    for dd in (200, 20000):
        b = ct.critical_lr(t3, R, 0.7, batch=B, eigenvalues=np.ones(dd))
        assert b < min(B * one, 2 * dd / mu)
    far = ct.critical_lr(t3, R, 0.7, batch=B, eigenvalues=np.ones(20000))
    assert abs(far / (B * one) - 1) < 0.02
    # clip of the mean: the leading bound uses mu_B, nu_B
    from clipped_trip._batch_factors import mean_clip_factors

    mB, nB = (float(x) for x in mean_clip_factors(t3, R, 0.7, B))
    expect = 2 * mB * (2 * R + t3.second_moment) / nB
    assert abs(float(ct.critical_lr(t3, R, 0.7, batch=B, clip_mode="mean")) / expect - 1) < 1e-12


def test_critical_batch_is_the_gradient_noise_scale():
    d, R = 400, 0.2
    p = ct.Problem.isotropic(d, ct.Gaussian(0.5))
    # isotropic: G = 2R at equipartition; unclipped B* = D (2R + sigma^2) / (2R)
    assert abs(ct.critical_batch(p, risk=R) / (d * (2 * R + 0.25) / (2 * R)) - 1) < 1e-12
    q = ct.Problem.isotropic(d, ct.StudentT(3.0))
    mu, nu = (float(x) for x in ct.reduction_factors(q.noise, R, 0.5))
    expect = d * nu / (mu**2 * 2 * R)  # = intrinsic dimension x nu / (mu^2 2R)
    assert abs(ct.critical_batch(q, 0.5, risk=R) / expect - 1) < 1e-12
    # heavy tails: clipping (CCC > 1) lowers the noise scale below the unclipped one
    assert ct.critical_batch(q, 0.5, risk=R) < ct.critical_batch(q, risk=R)
    # clip of the mean: the fixed point approaches the unclipped noise scale
    mean = ct.critical_batch(q, 0.5, risk=R, clip_mode="mean")
    assert abs(mean / ct.critical_batch(q, risk=R) - 1) < 0.1


def test_samples_survive_a_result_file(tmp_path):
    p = ct.Problem.isotropic(20, ct.Gaussian(0.5))
    res = ct.simulate(p, ct.ClippedSGD(0.5, 1.0, batch=3), T=1.0, runs=2, n_records=3)
    back = ct.load_result(ct.save_result(res, tmp_path / "r.npz"))
    np.testing.assert_array_equal(back.samples, res.samples)
    assert back.params["algorithm"]["batch"] == 3
