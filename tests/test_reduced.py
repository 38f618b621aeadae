import math

import jax
import numpy as np
import pytest
from scipy import stats

import clipped_trip as ct
from clipped_trip._reduced import ReducedProblem, gamma_sample, simulate_reduced


@pytest.mark.parametrize("a", [0.5, 3.0, 4.5e6])
def test_gamma_sampler_matches_scipy(a):
    with jax.enable_x64(True):
        x = np.asarray(gamma_sample(jax.random.key(7), a, (100_000,)))
    assert stats.kstest(x, stats.gamma(a).cdf).statistic < 2.0 / math.sqrt(x.size)


@pytest.mark.parametrize("noise,clip", [(ct.Laplace(0.5), 0.4), (ct.Gaussian(0.3), None)])
def test_reduced_and_full_simulators_agree_in_distribution(noise, clip):
    rp = ReducedProblem.two_level(40, noise, high=1.0, low=0.2, fraction=0.3)
    full = rp.to_problem()
    assert full.initial_risk == pytest.approx(rp.initial_risk) and full.D == pytest.approx(rp.D)
    runs = 600
    kw = dict(T=3.0, runs=runs, n_records=4)
    a = simulate_reduced(rp, 0.9, clip, seed=1, **kw).risk
    b = ct.simulate(full, 0.9, clip, seed=2, dtype="float64", **kw).risk
    for j in range(1, a.shape[1]):
        # means: two independent samples, 5 standard errors
        se = math.sqrt(a[:, j].var() / runs + b[:, j].var() / runs)
        assert abs(a[:, j].mean() - b[:, j].mean()) < 5 * se
        # whole distribution: two-sample KS at level ~1e-4
        assert stats.ks_2samp(a[:, j], b[:, j]).pvalue > 1e-4


def test_from_problem_groups_blocks_and_matches_risk():
    p = ct.Problem.two_level(30, ct.Gaussian(1.0), high=2.0, low=0.5, fraction=0.4)
    rp = ReducedProblem.from_problem(p)
    assert sorted(rp.multiplicities.tolist()) == [12, 18]
    assert rp.initial_risk == pytest.approx(p.initial_risk) and rp.D == pytest.approx(p.D)


def test_reduced_large_d_tracks_ode():
    rp = ReducedProblem.isotropic(10**6, ct.StudentT(3.0, 0.5))
    res = simulate_reduced(rp, 0.8, 0.5, T=1.0, runs=2, n_records=3, run_chunk=2)
    ode = ct.solve_ode(
        ct.Problem(np.ones(1), np.array([1.0]), np.zeros(1), rp.noise), 0.8, 0.5, times=res.t
    )  # isotropic: the ODE does not depend on d beyond D
    # at d = 1e6 the gap is O(d^-1/2) ~ 1e-3
    np.testing.assert_allclose(res.mean(), ode.risk, rtol=0.01)
