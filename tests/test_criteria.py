import math

import numpy as np
import pytest
from scipy import optimize

import clipped_trip as ct


@pytest.mark.parametrize("sigma", [0.1, 1.0, 5.0])
def test_gaussian_ccc_never_exceeds_one(sigma):
    R = np.logspace(-4, 4, 41)[:, None]
    c = np.logspace(-3, 3, 61)[None, :]
    value = ct.ccc(ct.Gaussian(sigma), R, c)
    assert value.max() <= 1 + 1e-10
    assert np.all(np.isinf(ct.optimal_clip(ct.Gaussian(sigma), R.ravel())))


def independent_max(noise, R):
    """scipy's bounded Brent on log c, started from its own bracket."""

    def neg(lc):
        mu, nu = ct.reduction_factors(noise, R, math.exp(lc))
        return -float(mu * mu / nu)

    res = optimize.minimize_scalar(
        neg, bounds=(math.log(1e-2), math.log(1e2)), method="bounded", options={"xatol": 1e-9}
    )
    c = math.exp(res.x)
    return c, float(ct.ccc(noise, R, c))


@pytest.mark.parametrize("R", [0.05, 0.5, 3.0])
def test_student_t3_optimum_matches_independent_optimiser(R):
    noise = ct.StudentT(3.0, 1.0)
    c_ref, ccc_ref = independent_max(noise, R)
    value, c_star = ct.max_ccc(noise, R)
    assert float(c_star) == pytest.approx(c_ref, rel=1e-3)
    assert float(value) == pytest.approx(ccc_ref, rel=1e-8)


def test_spec_number_for_student_t3():
    value, c_star = ct.max_ccc(ct.StudentT(3.0, 1.0), 0.05)
    assert float(value) == pytest.approx(1.85, abs=0.01)
    assert float(c_star) == pytest.approx(1.07, abs=0.01)


def test_cauchy_criteria():
    noise = ct.StudentT(1.0, 0.5)
    assert np.isinf(ct.ccc(noise, 1.0, 0.5))
    c = ct.optimal_clip(noise, np.array([0.01, 1.0, 100.0]))
    assert np.all(np.isfinite(c)) and np.all(np.diff(c) > 0)
    with pytest.raises(ValueError, match="variance"):
        ct.heuristic_schedule(noise, 1.0)


def test_unclipped_reference_values():
    for noise in (ct.Gaussian(1.0), ct.Laplace(1.0)):
        assert ct.ccc(noise, 0.5, None) == 1.0
        assert ct.critical_lr(noise, 0.5, None) == 2.0
    # csc = mu (2R + Var) / nu, by definition
    mu, nu = ct.reduction_factors(ct.Laplace(1.0), 0.5, 0.7)
    assert ct.csc(ct.Laplace(1.0), 0.5, 0.7) == pytest.approx(mu * 3.0 / nu, rel=1e-14)


def test_heavy_tails_can_make_clipping_faster():
    vals = ct.ccc(ct.StudentT(2.1, 1.0), 0.1, np.logspace(-1, 1, 21))
    assert vals.max() > 1.5
