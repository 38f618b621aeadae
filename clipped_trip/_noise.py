"""Noise laws for the label noise eps (SPEC section 1).

Every law is a frozen, hashable dataclass validated at construction. It samples in JAX from an
explicit key and exposes what the reduction factors need (SPEC section 3):

* ``_gaussian_components()`` for Gaussian and Gaussian-mixture laws (factors in closed form),
* ``_atoms()`` for finite laws (factors as exact finite sums),
* ``_pdf/_cdf/_sf``, ``_scale`` and ``_breakpoints`` for the other continuous laws (quadrature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._random import student_t_sample

__all__ = [
    "NoiseLaw",
    "Gaussian",
    "StudentT",
    "Laplace",
    "Uniform",
    "Exponential",
    "ThreePoint",
    "Discrete",
    "GaussianMixture",
    "Empirical",
    "parse_noise",
]


class NoiseLaw:
    """Base class. Subclasses are frozen dataclasses."""

    kind: str = "continuous"  # "gaussian" | "discrete" | "continuous"

    # --- moments -----------------------------------------------------------------------------
    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        raise NotImplementedError

    @property
    def second_moment(self) -> float:
        """E[eps^2] (inf where infinite). Unclipped nu = 2R + E[eps^2] (= 2R + Var if centred)."""
        return self.variance + self.mean**2

    # --- sampling ----------------------------------------------------------------------------
    def sample(self, key, shape=(), dtype=jnp.float32):
        """Draw iid samples of the given shape from an explicit PRNG key."""
        raise NotImplementedError

    # --- description -------------------------------------------------------------------------
    def to_spec(self) -> str:
        """A string that ``parse_noise`` turns back into an equal law."""
        raise NotImplementedError


def _tuple(name, values, *, nonneg=False):
    return tuple(float(v) for v in V.vector(name, values, nonneg=nonneg))


def _probabilities(name, probs, n):
    p = np.asarray(V.vector(name, probs, length=n, nonneg=True))
    if abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"{name} must sum to 1 (within 1e-9), sums to {p.sum()!r}")
    return tuple(float(v) for v in p / p.sum())


# ---------------------------------------------------------------------------------------------
# Gaussian family: closed forms
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gaussian(NoiseLaw):
    """eps ~ N(0, std^2); std = 0 is noiseless."""

    std: float = 1.0
    kind = "gaussian"

    def __post_init__(self):
        object.__setattr__(self, "std", V.nonnegative("std", self.std))

    @property
    def variance(self):
        return self.std**2

    def _gaussian_components(self):
        return (1.0,), (0.0,), (self.std,)

    def sample(self, key, shape=(), dtype=jnp.float32):
        return self.std * jax.random.normal(key, shape, dtype)

    def to_spec(self):
        return f"gaussian:std={self.std!r}"


@dataclass(frozen=True)
class GaussianMixture(NoiseLaw):
    """eps ~ sum_k weights_k N(means_k, stds_k^2)."""

    weights: tuple
    means: tuple
    stds: tuple
    kind = "gaussian"

    def __post_init__(self):
        w = V.vector("weights", self.weights, nonneg=True)
        object.__setattr__(self, "weights", _probabilities("weights", w, w.size))
        object.__setattr__(
            self, "means", _tuple("means", V.vector("means", self.means, length=w.size))
        )
        object.__setattr__(
            self, "stds", _tuple("stds", V.vector("stds", self.stds, length=w.size, nonneg=True))
        )

    @property
    def mean(self):
        return float(np.dot(self.weights, self.means))

    @property
    def variance(self):
        w, m, s = map(np.asarray, (self.weights, self.means, self.stds))
        return float(np.dot(w, s**2 + m**2) - np.dot(w, m) ** 2)

    def _gaussian_components(self):
        return self.weights, self.means, self.stds

    def sample(self, key, shape=(), dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        idx = jax.random.categorical(k1, jnp.log(jnp.asarray(self.weights, dtype)), shape=shape)
        mu = jnp.asarray(self.means, dtype)[idx]
        sd = jnp.asarray(self.stds, dtype)[idx]
        return mu + sd * jax.random.normal(k2, shape, dtype)

    def to_spec(self):
        j = lambda xs: "/".join(repr(x) for x in xs)  # noqa: E731
        return f"mixture:weights={j(self.weights)},means={j(self.means)},stds={j(self.stds)}"


# ---------------------------------------------------------------------------------------------
# Finite laws: exact sums
# ---------------------------------------------------------------------------------------------
class _FiniteLaw(NoiseLaw):
    kind = "discrete"

    def _atoms(self):
        raise NotImplementedError

    @property
    def mean(self):
        v, p = map(np.asarray, self._atoms())
        return float(np.dot(p, v))

    @property
    def variance(self):
        v, p = map(np.asarray, self._atoms())
        return float(np.dot(p, (v - np.dot(p, v)) ** 2))

    @property
    def second_moment(self):
        v, p = map(np.asarray, self._atoms())
        return float(np.dot(p, v * v))

    def sample(self, key, shape=(), dtype=jnp.float32):
        v, p = self._atoms()
        idx = jax.random.categorical(key, jnp.log(jnp.asarray(p, dtype)), shape=shape)
        return jnp.asarray(v, dtype)[idx]


@dataclass(frozen=True)
class ThreePoint(_FiniteLaw):
    """eps = +value or -value w.p. q/2 each, 0 w.p. 1 - q (std = value sqrt(q))."""

    value: float
    q: float

    def __post_init__(self):
        object.__setattr__(self, "value", V.nonnegative("value", self.value))
        object.__setattr__(self, "q", V.real("q", self.q, lo=0.0, hi=1.0))

    def _atoms(self):
        return (-self.value, 0.0, self.value), (self.q / 2, 1 - self.q, self.q / 2)

    @property
    def variance(self):
        return self.q * self.value**2

    def to_spec(self):
        return f"three-point:value={self.value!r},q={self.q!r}"


@dataclass(frozen=True)
class Discrete(_FiniteLaw):
    """Any finite law: P(eps = values_j) = probs_j (asymmetric laws allowed)."""

    values: tuple
    probs: tuple

    def __post_init__(self):
        v = V.vector("values", self.values)
        object.__setattr__(self, "values", tuple(float(x) for x in v))
        object.__setattr__(self, "probs", _probabilities("probs", self.probs, v.size))

    def _atoms(self):
        return self.values, self.probs

    def to_spec(self):
        j = lambda xs: "/".join(repr(x) for x in xs)  # noqa: E731
        return f"discrete:values={j(self.values)},probs={j(self.probs)}"


@dataclass(frozen=True)
class Empirical(_FiniteLaw):
    """Resample given residuals uniformly (the empirical law of ``samples``)."""

    samples: tuple = field(repr=False)

    def __post_init__(self):
        object.__setattr__(self, "samples", _tuple("samples", self.samples))

    def _atoms(self):
        n = len(self.samples)
        return self.samples, (1.0 / n,) * n

    def sample(self, key, shape=(), dtype=jnp.float32):
        idx = jax.random.randint(key, shape, 0, len(self.samples))
        return jnp.asarray(self.samples, dtype)[idx]

    def __repr__(self):
        return (
            f"Empirical(n={len(self.samples)}, mean={self.mean:.4g}, std={self.variance**0.5:.4g})"
        )

    def to_spec(self):
        raise ValueError("an Empirical law has no spec string; save its samples instead")


# ---------------------------------------------------------------------------------------------
# Continuous laws without closed forms: quadrature
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentT(NoiseLaw):
    """eps = scale * T_df; df = 1 is Cauchy, any df > 0. Var scale^2 df/(df-2) (inf if df <= 2)."""

    df: float
    scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "df", V.positive("df", self.df))
        object.__setattr__(self, "scale", V.positive("scale", self.scale))
        # log normalising constant of the density, computed once
        nu = self.df
        object.__setattr__(
            self,
            "_logc",
            math.lgamma((nu + 1) / 2)
            - math.lgamma(nu / 2)
            - 0.5 * math.log(nu * math.pi)
            - math.log(self.scale),
        )

    @property
    def variance(self):
        return self.scale**2 * self.df / (self.df - 2) if self.df > 2 else math.inf

    def sample(self, key, shape=(), dtype=jnp.float32):
        if self.df == 1.0:
            return self.scale * jax.random.cauchy(key, shape, dtype)
        return self.scale * student_t_sample(key, self.df, shape, dtype)

    _scale = property(lambda self: self.scale)
    _breakpoints = property(lambda self: (0.0,))

    def _pdf(self, x):
        u = x / self.scale
        return np.exp(self._logc - 0.5 * (self.df + 1) * np.log1p(u * u / self.df))

    def _cdf(self, x):
        from scipy.special import stdtr  # deferred: scipy is only needed by the theory side

        return stdtr(self.df, np.asarray(x) / self.scale)

    def _sf(self, x):
        return self._cdf(-np.asarray(x))

    def to_spec(self):
        if self.df == 1.0:
            return f"cauchy:scale={self.scale!r}"
        return f"student-t:df={self.df!r},scale={self.scale!r}"


@dataclass(frozen=True)
class Laplace(NoiseLaw):
    """Density exp(-|x|/scale) / (2 scale); variance 2 scale^2."""

    scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "scale", V.positive("scale", self.scale))

    @property
    def variance(self):
        return 2 * self.scale**2

    def sample(self, key, shape=(), dtype=jnp.float32):
        return self.scale * jax.random.laplace(key, shape, dtype)

    _scale = property(lambda self: self.scale)
    _breakpoints = property(lambda self: (0.0,))

    def _pdf(self, x):
        return np.exp(-np.abs(x) / self.scale) / (2 * self.scale)

    def _cdf(self, x):
        return self._sf(-np.asarray(x))

    def _sf(self, x):
        u = np.asarray(x) / self.scale
        return np.where(u >= 0, 0.5 * np.exp(-np.abs(u)), 1.0 - 0.5 * np.exp(-np.abs(u)))

    def to_spec(self):
        return f"laplace:scale={self.scale!r}"


@dataclass(frozen=True)
class Uniform(NoiseLaw):
    """eps uniform on [-half_width, half_width]; variance half_width^2 / 3."""

    half_width: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "half_width", V.positive("half_width", self.half_width))

    @property
    def variance(self):
        return self.half_width**2 / 3

    def sample(self, key, shape=(), dtype=jnp.float32):
        h = self.half_width
        return jax.random.uniform(key, shape, dtype, minval=-h, maxval=h)

    _scale = property(lambda self: self.half_width)
    _breakpoints = property(lambda self: (-self.half_width, 0.0, self.half_width))

    def _pdf(self, x):
        return np.where(np.abs(x) <= self.half_width, 0.5 / self.half_width, 0.0)

    def _cdf(self, x):
        return np.clip((x + self.half_width) / (2 * self.half_width), 0.0, 1.0)

    def _sf(self, x):
        return np.clip((self.half_width - x) / (2 * self.half_width), 0.0, 1.0)

    def to_spec(self):
        return f"uniform:half_width={self.half_width!r}"


@dataclass(frozen=True)
class Exponential(NoiseLaw):
    """Centred exponential: eps = scale * (E - 1), E ~ Exp(1); mean 0, variance scale^2 (skewed)."""

    scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "scale", V.positive("scale", self.scale))

    @property
    def variance(self):
        return self.scale**2

    def sample(self, key, shape=(), dtype=jnp.float32):
        return self.scale * (jax.random.exponential(key, shape, dtype) - 1)

    _scale = property(lambda self: self.scale)
    _breakpoints = property(lambda self: (-self.scale, 0.0))

    def _pdf(self, x):
        u = (x + self.scale) / self.scale
        return np.where(u >= 0, np.exp(-np.maximum(u, 0.0)) / self.scale, 0.0)

    def _cdf(self, x):
        return -np.expm1(-np.maximum((x + self.scale) / self.scale, 0.0))

    def _sf(self, x):
        return np.exp(-np.maximum((x + self.scale) / self.scale, 0.0))

    def to_spec(self):
        return f"exponential:scale={self.scale!r}"


# ---------------------------------------------------------------------------------------------
# Spec strings: "student-t:df=3,scale=1"
# ---------------------------------------------------------------------------------------------
def _floats(s):
    return [float(x) for x in s.split("/")]


_PARSERS = {
    "gaussian": (Gaussian, {"std": float}),
    "normal": (Gaussian, {"std": float}),
    "student-t": (StudentT, {"df": float, "scale": float}),
    "t": (StudentT, {"df": float, "scale": float}),
    "cauchy": (lambda scale=1.0: StudentT(1.0, scale), {"scale": float}),
    "laplace": (Laplace, {"scale": float}),
    "uniform": (Uniform, {"half_width": float}),
    "exponential": (Exponential, {"scale": float}),
    "three-point": (ThreePoint, {"value": float, "q": float}),
    "discrete": (Discrete, {"values": _floats, "probs": _floats}),
    "mixture": (GaussianMixture, {"weights": _floats, "means": _floats, "stds": _floats}),
}


def parse_noise(spec: str) -> NoiseLaw:
    """Parse ``name:key=value,...`` (e.g. ``cauchy:scale=0.5``); list values use '/'.

    Raises ValueError naming the problem (unknown law, unknown or malformed parameter, range).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"noise spec must be a non-empty string like 'gaussian:std=1', got {spec!r}"
        )
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _PARSERS:
        raise ValueError(
            f"unknown noise law {name!r} in noise spec {spec!r}; "
            f"allowed: {', '.join(sorted(_PARSERS))}"
        )
    ctor, params = _PARSERS[name]
    kwargs = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or key not in params:
            raise ValueError(
                f"noise spec {spec!r}: bad parameter {item!r}; "
                f"{name} takes {', '.join(params)} as key=value"
            )
        if key in kwargs:
            raise ValueError(f"noise spec {spec!r}: parameter {key!r} given twice")
        try:
            kwargs[key] = params[key](val.strip())
        except ValueError:
            raise ValueError(
                f"noise spec {spec!r}: {key} must be a number, got {val.strip()!r}"
            ) from None
    try:
        return ctor(**kwargs)
    except TypeError:
        raise ValueError(
            f"noise spec {spec!r}: {name} needs parameters {', '.join(params)}"
        ) from None
