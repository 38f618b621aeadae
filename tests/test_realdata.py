import pickle

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._realdata import load_cifar10, random_feature_regression, real_data_sgd


def write_fake_cifar(folder, n=60, seed=0):
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": list(rng.integers(0, 10, size=n)),
        b"batch_label": b"fake",
    }
    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump(batch, fh)
    return batch


def test_cifar_loader_on_tiny_generated_file(tmp_path):
    batch = write_fake_cifar(tmp_path)
    X, y = load_cifar10(tmp_path)
    labels = np.array(batch[b"labels"])
    keep = np.isin(labels, (2, 3, 5, 9, 8, 0))
    assert X.shape == (keep.sum(), 3072) and X.max() <= 1.0
    np.testing.assert_array_equal(y, np.where(np.isin(labels[keep], (9, 8, 0)), 1.0, -1.0))
    with pytest.raises(ValueError, match="no CIFAR-10 batches"):
        load_cifar10(tmp_path / "..", batches=("nothing_here",))
    with pytest.raises(ValueError, match="does not exist"):
        load_cifar10(tmp_path / "missing")


def test_random_features_and_streaming_sgd_against_ode():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 20))
    y = np.sign(X[:, 0] + 0.5 * rng.standard_normal(3000))
    reg = random_feature_regression(X, y, n_features=40, seed=1)
    assert np.linalg.eigvalsh(reg["K"]).max() == pytest.approx(1.0)
    np.testing.assert_allclose(reg["F"].T @ reg["residuals"], 0, atol=1e-8)  # least squares
    x0 = reg["x_star"] + 0.4 * rng.standard_normal(40)
    t, risk = real_data_sgd(reg, x0, 0.1, 0.5, runs=8, seed=0, record_every=100)
    p = ct.Problem.from_covariance(reg["K"], x0, reg["x_star"], ct.Empirical(reg["residuals"]))
    ode = ct.solve_ode(p, 0.1, 0.5, times=t)
    assert risk[:, 0] == pytest.approx(ode.risk[0])
    # small D: loose agreement only (the theory is a large-D limit)
    assert np.abs(risk.mean(0) / ode.risk - 1).max() < 0.3
