"""The least-squares problem in the eigenbasis of K (SPEC section 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _validate as V
from ._noise import NoiseLaw

__all__ = ["Problem"]


def _check_size(d: int) -> int:
    """Refuse a dimension whose arrays (eigenvalues, x0, x*, their validated copies: ~6 d float64)
    would not fit in memory, before allocating them."""
    from ._engine import check_memory

    check_memory(f"a problem of dimension d = {d:.4g}", {"problem arrays": 48.0 * d}, "d")
    return d


def _check_noise(noise):
    if not isinstance(noise, NoiseLaw):
        raise ValueError(f"noise must be a NoiseLaw such as Gaussian(0.5), got {noise!r}")
    return noise


@dataclass(frozen=True, eq=False)
class Problem:
    """Streaming least squares with data a ~ N(0, K), K = diag(eigenvalues) in this basis.

    ``x0`` and ``x_star`` are coordinates in the same eigenbasis. Arrays are stored read-only.
    ``data_mean`` m (optional, same basis, ||m|| = O(1)): non-centred data a = m + sqrt(lambda) z
    (SPEC 10); ``risk`` stays R = e^T K e / 2 (K the covariance), and results also report the
    population excess risk R + <m, e>^2 / 2 and the bias statistic <m, e>. All zeros = None.

    Attributes:
        D: tr K, the unit of the step (gamma / D) and of time (k / D).
        intrinsic_dimension: tr K / ||K||_op.
    """

    eigenvalues: np.ndarray
    x0: np.ndarray
    x_star: np.ndarray
    noise: NoiseLaw
    name: str = field(default="custom")
    data_mean: np.ndarray | None = field(default=None, kw_only=True)
    #: False when built from a non-diagonal covariance: the coordinates here are eigen-
    #: coordinates, not the data's own (value clipping, which is basis dependent, refuses it)
    coordinate_basis: bool = field(default=True, kw_only=True)

    def __post_init__(self):
        lam = V.vector("eigenvalues", self.eigenvalues, nonneg=True)
        if not np.any(lam > 0):
            raise ValueError("eigenvalues must have at least one positive entry (tr K > 0)")
        object.__setattr__(self, "eigenvalues", lam)
        object.__setattr__(self, "x0", V.vector("x0", self.x0, length=lam.size))
        object.__setattr__(self, "x_star", V.vector("x_star", self.x_star, length=lam.size))
        _check_noise(self.noise)
        if self.data_mean is not None:
            m = V.vector("data_mean", self.data_mean, length=lam.size)
            object.__setattr__(self, "data_mean", m if np.any(m != 0) else None)

    # --- derived quantities --------------------------------------------------------------------
    @property
    def d(self) -> int:
        return int(self.eigenvalues.size)

    @property
    def D(self) -> float:
        return float(self.eigenvalues.sum())

    @property
    def intrinsic_dimension(self) -> float:
        return self.D / float(self.eigenvalues.max())

    @property
    def initial_error(self) -> np.ndarray:
        return self.x0 - self.x_star

    @property
    def initial_risk(self) -> float:
        e = self.initial_error
        return 0.5 * float(np.dot(self.eigenvalues, e * e))

    def risk(self, x) -> float:
        """Excess risk R(x) = (x - x*)^T K (x - x*) / 2 (noise not included)."""
        e = np.asarray(x, dtype=np.float64) - self.x_star
        return 0.5 * float(np.dot(self.eigenvalues, e * e))

    def replace(self, **changes) -> "Problem":
        kw = dict(
            eigenvalues=self.eigenvalues,
            x0=self.x0,
            x_star=self.x_star,
            noise=self.noise,
            name=self.name,
            data_mean=self.data_mean,
            coordinate_basis=self.coordinate_basis,
        )
        kw.update(changes)
        return Problem(**kw)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "d": self.d,
            "D": self.D,
            "intrinsic_dimension": self.intrinsic_dimension,
            "initial_risk": self.initial_risk,
            "noise": repr(self.noise),
            **(
                {}
                if self.data_mean is None
                else {
                    "data_mean_norm": float(np.linalg.norm(self.data_mean)),
                    "data_mean_K_inverse_norm2": self.mean_precision,
                }
            ),
        }

    @property
    def mean_precision(self) -> float:
        """A = m^T K^{-1} m (SPEC 10: the bias at the fixed point is r = -(kappa/mu) A); inf if m
        has weight on a zero eigenvalue."""
        if self.data_mean is None:
            return 0.0
        m, lam = self.data_mean, self.eigenvalues
        if np.any((lam == 0) & (m != 0)):
            return math.inf
        pos = lam > 0
        return float(np.sum(m[pos] ** 2 / lam[pos]))

    def bias(self, x) -> float:
        """The bias statistic <m, x - x*> (0 for centred data)."""
        if self.data_mean is None:
            return 0.0
        return float(np.dot(self.data_mean, np.asarray(x, dtype=np.float64) - self.x_star))

    def population_risk(self, x) -> float:
        """Population excess risk R + <m, e>^2 / 2 = e^T (K + m m^T) e / 2 (SPEC 10)."""
        return self.risk(x) + 0.5 * self.bias(x) ** 2

    def __repr__(self):
        mean = "" if self.data_mean is None else f", |m|={np.linalg.norm(self.data_mean):.4g}"
        return (
            f"Problem({self.name}, d={self.d}, D={self.D:.4g}, "
            f"intrinsic_dim={self.intrinsic_dimension:.4g}, R0={self.initial_risk:.4g}, "
            f"noise={self.noise!r}{mean})"
        )

    # --- constructors ------------------------------------------------------------------------
    @classmethod
    def from_covariance(
        cls, K, x0, x_star, noise, *, tol: float = 1e-10, data_mean=None
    ) -> "Problem":
        """Diagonalise a dense covariance once (K = U diag(lambda) U^T) and rotate x0, x*
        (and ``data_mean``).

        Rejects non-square, non-symmetric (relative 1e-8) and non-PSD (relative ``tol``) K.
        """
        K = np.asarray(K, dtype=np.float64)
        if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
            raise ValueError(f"K must be a square 2-D matrix, got shape {K.shape}")
        if not np.all(np.isfinite(K)):
            raise ValueError("K must contain only finite values (found NaN or inf)")
        scale = max(float(np.abs(K).max()), 1e-300)
        if np.abs(K - K.T).max() > 1e-8 * scale:
            raise ValueError("K must be symmetric (|K - K^T| <= 1e-8 max|K|)")
        lam, U = np.linalg.eigh(0.5 * (K + K.T))
        if lam.min() < -tol * max(lam.max(), 1e-300):
            raise ValueError(
                f"K must be positive semi-definite; smallest eigenvalue {lam.min():.3g}"
            )
        lam = np.clip(lam, 0.0, None)[::-1]
        U = U[:, ::-1]
        d = K.shape[0]
        x0 = V.vector("x0", x0, length=d)
        x_star = V.vector("x_star", x_star, length=d)
        m = None if data_mean is None else U.T @ V.vector("data_mean", data_mean, length=d)
        diagonal = bool(np.all(K == np.diag(np.diag(K))))
        # value clipping acts in the data's coordinates: it needs K diagonal there (SPEC 12)
        return cls(
            lam,
            U.T @ x0,
            U.T @ x_star,
            noise,
            name="covariance",
            data_mean=m,
            coordinate_basis=diagonal,  # then U is a signed permutation: clamping commutes
        )

    @classmethod
    def isotropic(cls, d: int, noise, *, x0=None, x_star=None, data_mean=None) -> "Problem":
        """K = I_d. Default x* = 0, x0 = ones / sqrt(d) (so R0 = 1/2)."""
        d = _check_size(V.count("d", d))
        return cls._with_defaults(np.ones(d), noise, x0, x_star, "isotropic", data_mean)

    @classmethod
    def two_level(
        cls,
        d: int,
        noise,
        *,
        high: float = 1.0,
        low: float = 0.1,
        fraction: float = 0.5,
        x0=None,
        x_star=None,
        data_mean=None,
    ) -> "Problem":
        """``round(fraction d)`` eigenvalues ``high``, the rest ``low``."""
        d = _check_size(V.count("d", d))
        high = V.positive("high", high)
        low = V.nonnegative("low", low)
        fraction = V.real("fraction", fraction, lo=0.0, hi=1.0)
        n_high = int(round(fraction * d))
        lam = np.concatenate([np.full(n_high, high), np.full(d - n_high, low)])
        return cls._with_defaults(lam, noise, x0, x_star, "two-level", data_mean)

    @classmethod
    def power_law(
        cls,
        d: int,
        alpha: float,
        noise,
        *,
        normalize: bool = True,
        x0=None,
        x_star=None,
        data_mean=None,
    ) -> "Problem":
        """lambda_j = j^-alpha, j = 1..d (already ||K|| = 1; ``normalize`` divides by the max)."""
        d = _check_size(V.count("d", d))
        alpha = V.nonnegative("alpha", alpha)
        lam = np.arange(1, d + 1, dtype=np.float64) ** (-alpha)
        if normalize:
            lam = lam / lam.max()
        return cls._with_defaults(lam, noise, x0, x_star, f"power-law(alpha={alpha:g})", data_mean)

    @classmethod
    def _with_defaults(cls, lam, noise, x0, x_star, name, data_mean=None):
        d = lam.size
        x0 = np.ones(d) / np.sqrt(d) if x0 is None else x0
        x_star = np.zeros(d) if x_star is None else x_star
        return cls(lam, x0, x_star, _check_noise(noise), name=name, data_mean=data_mean)
