"""Real data (SPEC section 6): streaming clipped SGD over a real data set with random features.

Binary labels +-1, flattened and centred inputs, features tanh(X W) with Gaussian W, centred;
K = empirical feature covariance scaled to ||K|| = 1; x* = least-squares fit; the noise law is the
empirical residual law (exact for the ODE) or its Gaussian fit (the paper's choice).

Default data: scikit-learn's bundled digits (no download). CIFAR-10 is used when the user has the
binary-format batches (``data_batch_N.bin``) locally (``load_cifar10``; pickled python batches
only with ``allow_pickle=True``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._clipped_sgd import clipped_step
from ._engine import run_keys

__all__ = ["load_digits_binary", "load_cifar10", "random_feature_regression", "real_data_sgd"]

CIFAR_NEGATIVE = (2, 3, 5)  # bird, cat, dog -> -1
CIFAR_POSITIVE = (9, 8, 0)  # truck, ship, airplane -> +1


def load_digits_binary():
    """scikit-learn's digits: digits 0-4 -> -1, 5-9 -> +1. Returns (X float64 (1797, 64), y)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError(
            "the digits data set needs scikit-learn (pip install scikit-learn), "
            "or pass a CIFAR-10 folder"
        ) from None
    data = load_digits()
    X = data.data.astype(np.float64) / 16.0
    y = np.where(data.target >= 5, 1.0, -1.0)
    return X, y


CIFAR_BINARY_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_PYTHON_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_RECORD = 1 + 3072  # binary format: 1 label byte, then 3072 pixel bytes (R, G, B planes)


def _cifar_binary_batch(path: Path):
    raw = path.read_bytes()
    if not raw or len(raw) % _CIFAR_RECORD:
        raise ValueError(
            f"{path} is not a CIFAR-10 binary batch: {len(raw)} bytes is not a positive multiple "
            f"of {_CIFAR_RECORD} (records of 1 label byte 0-9 + 3072 pixel bytes)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path} is not a CIFAR-10 binary batch: a label byte is above 9")
    return records[:, 1:].astype(np.float64) / 255.0, labels


def _cifar_python_batch(path: Path):
    import pickle

    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")  # noqa: S301 - only with allow_pickle=True
    try:
        data = np.asarray(batch[b"data"], dtype=np.float64) / 255.0
        labels = np.asarray(batch[b"labels"])
    except (KeyError, TypeError):
        raise ValueError(
            f"{path} is not a CIFAR-10 python batch (needs b'data', b'labels')"
        ) from None
    return data, labels


def load_cifar10(folder, batches=None, *, allow_pickle: bool = False):
    """CIFAR-10 from ``folder``: classes {2,3,5} -> -1, {9,8,0} -> +1. Returns (X (N, 3072), y).

    Reads the CIFAR-10 *binary* version (``cifar-10-batches-bin``: ``data_batch_1.bin`` ...
    ``data_batch_5.bin``, each record 1 label byte + 3072 pixel bytes; plain bytes, nothing
    executed). The python version's pickled batches (``data_batch_1`` ...) are refused with a
    ValueError, since unpickling runs code from the file, unless ``allow_pickle=True`` says the
    files are trusted. ``batches`` names the files (default: the five binary batches, and with
    ``allow_pickle`` the python ones where those are absent). Missing batches are skipped; none
    found is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"CIFAR-10 folder {str(folder)!r} does not exist")
    if batches is None:
        batches = CIFAR_BINARY_BATCHES
        if allow_pickle and not any((folder / name).exists() for name in batches):
            batches = CIFAR_PYTHON_BATCHES
    xs, ys = [], []
    for name in batches:
        path = folder / name
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            first = fh.read(1)
        if first == b"\x80":  # a pickle (protocol >= 2); no CIFAR label byte is above 9
            if not allow_pickle:
                raise ValueError(
                    f"{path} is a pickled CIFAR-10 python batch: refused (unpickling runs code); "
                    "use the binary version (data_batch_N.bin) or pass allow_pickle=True"
                )
            data, labels = _cifar_python_batch(path)
        else:
            data, labels = _cifar_binary_batch(path)
        keep = np.isin(labels, CIFAR_NEGATIVE + CIFAR_POSITIVE)
        xs.append(data[keep])
        ys.append(np.where(np.isin(labels[keep], CIFAR_POSITIVE), 1.0, -1.0))
    if not xs:
        hint = ""
        if not allow_pickle and any((folder / n).exists() for n in CIFAR_PYTHON_BATCHES):
            hint = (
                "; the folder holds pickled python batches (data_batch_N), refused: use the "
                "binary version (data_batch_N.bin) or pass allow_pickle=True"
            )
        raise ValueError(f"no CIFAR-10 batches ({', '.join(batches)}) found in {folder}{hint}")
    return np.concatenate(xs), np.concatenate(ys)


def random_feature_regression(X, y, n_features=500, seed=0):
    """Features tanh(X W / sqrt(p)), centred and scaled so that ||K|| = 1.

    Returns dict with F (n, d), y, K (d, d), x_star, residuals, D, intrinsic_dimension.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, p) and y (n,), got {X.shape} and {y.shape}")
    rng = np.random.default_rng(seed)
    Xc = X - X.mean(axis=0)
    W = rng.standard_normal((X.shape[1], n_features))
    F = np.tanh(Xc @ W / np.sqrt(X.shape[1]))
    F -= F.mean(axis=0)
    K = F.T @ F / F.shape[0]
    scale = np.linalg.eigvalsh(K).max()
    F /= np.sqrt(scale)
    K /= scale
    x_star, *_ = np.linalg.lstsq(F, y, rcond=None)
    residuals = y - F @ x_star
    D = float(np.trace(K))
    return {
        "F": F,
        "y": y,
        "K": K,
        "x_star": x_star,
        "residuals": residuals,
        "D": D,
        "intrinsic_dimension": D,
    }


@partial(jax.jit, static_argnames=("record_every",))
def _real_sgd_core(F, y, x0, x_star, K, lr, clip, inv_D, sqrt_D, keys, record_every):
    n = F.shape[0]
    n_rec = n // record_every

    def one_run(k):
        order = jax.random.permutation(k, n)[: n_rec * record_every].reshape(n_rec, record_every)

        def block(x, idx):
            def step(x, i):
                f = F[i]
                w = jnp.dot(f, x) - y[i]
                g_norm = jnp.abs(w) * jnp.linalg.norm(f)
                return x - clipped_step(w, g_norm, lr, clip, inv_D, sqrt_D) * f, None

            x, _ = jax.lax.scan(step, x, idx)
            e = x - x_star
            return x, 0.5 * jnp.dot(e, K @ e)

        e0 = x0 - x_star
        _, risks = jax.lax.scan(block, x0, order)
        return jnp.concatenate([jnp.array([0.5 * jnp.dot(e0, K @ e0)]), risks])

    return jax.lax.map(one_run, keys)


def real_data_sgd(data, x0, lr, clip, runs=50, seed=0, record_every=20):
    """One pass of streaming clipped SGD over each of ``runs`` random shufflings of the data.

    Step lr / D, gradient clipped at clip * sqrt(D) (clip None: plain SGD). Returns (t, risk) with
    t = k / D and risk of shape (runs, len(t)): excess risk under the empirical distribution.
    """
    lr = V.positive("lr", lr)
    clip = np.inf if clip is None else V.positive("clip", clip)
    runs = V.count("runs", runs)
    record_every = V.count("record_every", record_every)
    risk = _real_sgd_core(
        jnp.asarray(data["F"]),
        jnp.asarray(data["y"]),
        jnp.asarray(x0),
        jnp.asarray(data["x_star"]),
        jnp.asarray(data["K"]),
        lr,
        clip,
        1.0 / data["D"],
        np.sqrt(data["D"]),
        run_keys(seed, 0, runs),
        record_every,
    )
    t = np.arange(risk.shape[1]) * record_every / data["D"]
    return t, np.asarray(risk, dtype=np.float64)
