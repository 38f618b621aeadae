import math

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._simulate import trace_count
from tolerances import monte_carlo_rel


def isotropic_closed_form(t, gamma, sigma, R0):
    """SPEC section 4: exact mean risk of unclipped SGD, K = I, Gaussian noise."""
    r_inf = gamma * sigma**2 / (2 * (2 - gamma))
    return r_inf + (R0 - r_inf) * np.exp(-(2 * gamma - gamma**2) * t)


@pytest.mark.parametrize("gamma,sigma", [(0.5, 0.5), (1.5, 1.0)])
def test_unclipped_isotropic_mean_matches_closed_form(gamma, sigma):
    d, runs = 1000, 64
    p = ct.Problem.isotropic(d, ct.Gaussian(sigma))
    res = ct.simulate(p, gamma, None, T=4.0, runs=runs, seed=7, n_records=9, dtype="float64")
    exact = isotropic_closed_form(res.t, gamma, sigma, p.initial_risk)
    rel = np.abs(res.mean() / exact - 1)
    assert rel.max() < monte_carlo_rel(runs, d), rel


def test_clip_none_equals_infinite_clip_equals_huge_clip():
    p = ct.Problem.isotropic(50, ct.Laplace(1.0))
    kw = dict(T=2.0, runs=4, seed=3, n_records=5)
    a = ct.simulate(p, 0.7, None, **kw).risk
    b = ct.simulate(p, 0.7, math.inf, **kw).risk
    c = ct.simulate(p, 0.7, 1e30, **kw).risk
    assert np.array_equal(a, b) and np.array_equal(a, c)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reproducible_and_batch_independent(dtype):
    p = ct.Problem.power_law(64, 0.5, ct.StudentT(3.0, 1.0))
    kw = dict(T=3.0, seed=11, n_records=7, dtype=dtype)
    batch = ct.simulate(p, 0.8, 0.5, runs=20, **kw).risk
    again = ct.simulate(p, 0.8, 0.5, runs=20, **kw).risk
    assert np.array_equal(batch, again)
    alone = ct.simulate(p, 0.8, 0.5, runs=1, first_run=13, **kw).risk
    assert np.array_equal(alone[0], batch[13])
    part = ct.simulate(p, 0.8, 0.5, runs=5, first_run=2, **kw).risk
    assert np.array_equal(part, batch[2:7])
    other = ct.simulate(p, 0.8, 0.5, runs=1, **{**kw, "seed": 12}).risk
    assert not np.array_equal(other[0], batch[0])
    big = ct.simulate(p, 0.8, 0.5, runs=300, **kw).risk  # several chunks
    assert np.array_equal(big[:20], batch)
    # an explicit chunk: the same property for that chunk
    chunked = ct.simulate(p, 0.8, 0.5, runs=40, run_chunk=16, **kw).risk  # 3 chunks of 16
    alone16 = ct.simulate(p, 0.8, 0.5, runs=1, first_run=37, run_chunk=16, **kw).risk
    assert np.array_equal(alone16[0], chunked[37])


def test_record_times_do_not_change_the_path():
    p = ct.Problem.isotropic(40, ct.Gaussian(0.3))
    coarse = ct.simulate(p, 0.9, 0.4, T=2.0, runs=3, n_records=3, dtype="float64")
    fine = ct.simulate(p, 0.9, 0.4, T=2.0, runs=3, n_records=9, dtype="float64")
    np.testing.assert_array_equal(coarse.risk, fine.risk[:, ::4])
    given = ct.simulate(p, 0.9, 0.4, times=[0.0, 0.5, 2.0], runs=3, dtype="float64")
    np.testing.assert_array_equal(given.t, [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(given.risk[:, [0, 2]], coarse.risk[:, [0, 2]])


def test_float32_and_float64_agree_statistically():
    d, runs = 400, 32
    p = ct.Problem.isotropic(d, ct.Gaussian(0.5))
    kw = dict(T=3.0, runs=runs, seed=0, n_records=4)
    a = ct.simulate(p, 0.8, 0.6, dtype="float32", **kw)
    b = ct.simulate(p, 0.8, 0.6, dtype="float64", **kw)
    assert a.risk.dtype == np.float64  # results are always returned as float64 arrays
    # the float32 and float64 normal streams differ: two independent means, sqrt(2) wider
    rel = np.abs(a.mean() / b.mean() - 1)
    assert rel.max() < math.sqrt(2) * monte_carlo_rel(runs, d), rel


def test_sweep_compiles_once_and_matches_single_runs():
    p = ct.Problem.power_law(80, 0.3, ct.Laplace(0.5))
    kw = dict(T=2.0, runs=4, seed=5, n_records=5)
    ct.sweep(p, [0.5], [0.3], **kw)  # warm the cache for this cell count
    before = trace_count()
    res = ct.sweep(p, [0.2, 0.6, 1.0], [0.1, 0.5, None], **kw)
    after_first = trace_count()
    ct.sweep(p, [0.3, 0.7, 1.1], [0.2, 0.4, 2.0], **kw)
    assert trace_count() == after_first  # a new (lr, clip) grid of the same shape: no retrace
    assert after_first - before <= 1  # one compile for the 9-cell program
    single_before = trace_count()
    for lr in (0.25, 0.5):
        for clip in (0.2, None):
            ct.simulate(p, lr, clip, **kw)
    assert trace_count() - single_before <= 1
    assert res.risk.shape == (3, 3, 4, 5)
    one = ct.simulate(p, 0.6, 0.5, **kw)
    np.testing.assert_array_equal(res.risk[1, 1], one.risk)


def test_schedules_callable_and_arrays_agree():
    p = ct.Problem.isotropic(60, ct.Gaussian(0.5))
    kw = dict(T=2.0, runs=3, seed=2, n_records=5, dtype="float64")
    f = ct.simulate(p, lambda t: 1.0 / (1.0 + t), lambda t: 0.5 + 0.1 * t, **kw)
    t_grid = np.arange(0, 2 * p.D + 1) / p.D
    a = ct.simulate(p, (t_grid, 1.0 / (1.0 + t_grid)), (t_grid, 0.5 + 0.1 * t_grid), **kw)
    np.testing.assert_allclose(f.risk, a.risk, rtol=1e-12)
    const = ct.simulate(p, lambda t: 0.7, None, **kw)
    np.testing.assert_allclose(const.risk, ct.simulate(p, 0.7, None, **kw).risk, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-0.1), "lr"),
        (dict(lr=0.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(clip=-1.0), "clip"),
        (dict(clip=0.0), "clip"),
        (dict(runs=0), "runs"),
        (dict(T=-1.0), "T"),
        (dict(seed=-3), "seed"),
        (dict(dtype="int8"), "dtype"),
        (dict(dtype="bogus"), "dtype"),
        (dict(lr=float("inf")), "lr"),
        (dict(clip=float("nan")), "clip"),
        (dict(lr=lambda t: -1.0), "lr"),
        (dict(times=[0.0, 2.0, 1.0]), "times"),
        (dict(lr=(np.array([0.0, 1.0]), np.array([1.0]))), "same length"),
    ],
)
def test_simulate_rejects_bad_input(kwargs, match):
    p = ct.Problem.isotropic(10, ct.Gaussian(0.5))
    args = dict(lr=0.5, clip=1.0, T=1.0, runs=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ct.simulate(p, **args)


def test_divergence_is_reported_not_nan():
    p = ct.Problem.isotropic(100, ct.Gaussian(0.5))
    res = ct.simulate(p, 2.6, None, T=30.0, runs=4, n_records=31)  # gamma > 2: unstable
    assert res.diverged.all()
    assert np.all(np.isfinite(res.divergence_time))
    assert not np.isnan(res.risk).any()
    assert np.isinf(res.risk[:, -1]).all()
    assert "diverged" in res.divergence_report()
    ok = ct.simulate(p, 0.5, None, T=3.0, runs=4, n_records=4)
    assert not ok.diverged.any() and ok.divergence_report() == "no run diverged"


# Clipped SGD against the ODE on varied configurations (D from ~300 to ~1000, 16 runs)
CONFIGS = [
    ("two-level/laplace", lambda: ct.Problem.two_level(800, ct.Laplace(0.6), low=0.2), 1.2, 0.5),
    ("power-law/t3", lambda: ct.Problem.power_law(1500, 0.25, ct.StudentT(3.0, 0.7)), 0.8, 0.4),
    ("isotropic/three-point", lambda: ct.Problem.isotropic(400, ct.ThreePoint(2.0, 0.2)), 2.5, 0.3),
    ("power-law/cauchy", lambda: ct.Problem.power_law(800, 0.2, ct.StudentT(1.0, 0.5)), 1.8, 0.4),
]


@pytest.mark.parametrize("name,make,lr,clip", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_clipped_sgd_mean_tracks_ode(name, make, lr, clip):
    p = make()
    runs = 16
    sgd = ct.simulate(p, lr, clip, T=6.0, runs=runs, seed=1, n_records=13)
    ode = ct.solve_ode(p, lr, clip, times=sgd.t)
    assert not sgd.diverged.any() and not ode.diverged
    rel = np.abs(sgd.mean() / ode.risk - 1)
    assert rel.max() < min(0.05, monte_carlo_rel(runs, p.D, z=5.0, bias=8.0)), (rel, p.D)
