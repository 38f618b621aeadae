import pickle

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._realdata import load_cifar10, random_feature_regression, real_data_sgd


def write_fake_cifar(folder, n=60, seed=0, name="data_batch_1.bin"):
    """A CIFAR-10 binary batch: n records of 1 label byte + 3072 pixel bytes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    (folder / name).write_bytes(np.concatenate([labels[:, None], data], axis=1).tobytes())
    return labels, data


def test_cifar_loader_on_tiny_generated_binary_file(tmp_path):
    labels, data = write_fake_cifar(tmp_path)
    X, y = load_cifar10(tmp_path, batches=("data_batch_1.bin",))
    keep = np.isin(labels, (2, 3, 5, 9, 8, 0))
    assert X.shape == (keep.sum(), 3072) and X.max() <= 1.0
    np.testing.assert_array_equal(X, data[keep] / 255.0)
    np.testing.assert_array_equal(y, np.where(np.isin(labels[keep], (9, 8, 0)), 1.0, -1.0))
    labels3, _ = write_fake_cifar(tmp_path, n=7, seed=1, name="data_batch_3.bin")
    X_all, _ = load_cifar10(tmp_path)  # the default names: data_batch_1.bin ... 5.bin
    assert X_all.shape[0] == keep.sum() + np.isin(labels3, (2, 3, 5, 9, 8, 0)).sum()
    with pytest.raises(ValueError, match="no CIFAR-10 batches"):
        load_cifar10(tmp_path / "..", batches=("nothing_here",))
    with pytest.raises(ValueError, match="does not exist"):
        load_cifar10(tmp_path / "missing")
    (tmp_path / "data_batch_2.bin").write_bytes(b"\x01" * 3000)  # not whole records
    with pytest.raises(ValueError, match="data_batch_2.bin.*multiple of 3073"):
        load_cifar10(tmp_path)


def test_cifar_loader_refuses_pickled_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    batch = {
        b"data": rng.integers(0, 256, size=(20, 3072), dtype=np.uint8),
        b"labels": list(rng.integers(0, 10, size=20)),
    }
    for name in ("data_batch_1", "data_batch_2.bin"):  # a pickle is refused under any name
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(batch, fh)
    with pytest.raises(ValueError, match="pickled.*allow_pickle=True"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="pickled.*allow_pickle=True"):
        load_cifar10(tmp_path, batches=("data_batch_1",))
    (tmp_path / "data_batch_2.bin").unlink()
    with pytest.raises(ValueError, match="no CIFAR-10 batches.*allow_pickle=True"):
        load_cifar10(tmp_path)
    X, y = load_cifar10(tmp_path, allow_pickle=True)  # trusted files: the python version
    labels = np.array(batch[b"labels"])
    keep = np.isin(labels, (2, 3, 5, 9, 8, 0))
    np.testing.assert_array_equal(X, batch[b"data"][keep] / 255.0)
    assert y.shape == (keep.sum(),)


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
