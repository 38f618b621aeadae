import numpy as np
import pytest

import clipped_trip as ct

G = ct.Gaussian(1.0)


def test_from_covariance_matches_dense_risk():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((30, 30))
    K = A @ A.T / 30
    x0, xs = rng.standard_normal(30), rng.standard_normal(30)
    p = ct.Problem.from_covariance(K, x0, xs, G)
    dense = 0.5 * (x0 - xs) @ K @ (x0 - xs)
    assert p.initial_risk == pytest.approx(dense, rel=1e-12)
    assert p.D == pytest.approx(np.trace(K), rel=1e-12)
    assert p.intrinsic_dimension == pytest.approx(np.trace(K) / np.linalg.eigvalsh(K).max())


@pytest.mark.parametrize(
    "K,match",
    [
        (np.array([[1.0, 0.5], [0.0, 1.0]]), "symmetric"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite"),
        (np.ones((2, 3)), "square"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "finite"),
    ],
)
def test_from_covariance_rejects(K, match):
    with pytest.raises(ValueError, match=match):
        ct.Problem.from_covariance(K, np.zeros(K.shape[0]), np.zeros(K.shape[0]), G)


def test_shape_mismatch_and_bad_inputs():
    with pytest.raises(ValueError, match="x0"):
        ct.Problem(np.ones(3), np.zeros(4), np.zeros(3), G)
    with pytest.raises(ValueError, match="eigenvalues"):
        ct.Problem(np.array([1.0, -1.0]), np.zeros(2), np.zeros(2), G)
    with pytest.raises(ValueError, match="noise"):
        ct.Problem(np.ones(2), np.zeros(2), np.zeros(2), "gaussian")
    with pytest.raises(ValueError, match="x_star"):
        ct.Problem(np.ones(2), np.zeros(2), np.array([0.0, np.inf]), G)
    with pytest.raises(ValueError, match="d"):
        ct.Problem.isotropic(0, G)


def test_constructors():
    p = ct.Problem.power_law(100, 0.5, G)
    assert p.eigenvalues.max() == 1.0
    np.testing.assert_allclose(p.eigenvalues, np.arange(1, 101) ** -0.5)
    assert p.initial_risk == pytest.approx(0.5 * np.sum(p.eigenvalues) / 100)
    p = ct.Problem.two_level(10, G, high=2.0, low=0.5, fraction=0.3)
    assert sorted(p.eigenvalues.tolist()) == [0.5] * 7 + [2.0] * 3
    p = ct.Problem.isotropic(50, G)
    assert p.D == 50 and p.intrinsic_dimension == 50 and p.initial_risk == pytest.approx(0.5)
    assert not p.eigenvalues.flags.writeable
