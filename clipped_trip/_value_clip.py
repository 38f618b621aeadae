"""Coordinate-wise (value) clipping, torch's ``clip_grad_value_``, and its signSGD limit (SPEC 12).

Stochastic updates (batch 1, eta = gamma / D, g = w a in the data's coordinates):
    ValueClipSGD:  e <- e - eta clamp(g, -tau, tau)      (each coordinate)
    SignSGD:       e <- e - (lr / D) sign(g)
Value clipping is basis dependent: it needs K diagonal in the coordinate basis (a Problem built
from a non-diagonal covariance is refused).

Deterministic equivalents, in y_i = lambda_i v_i (SPEC 12; theta_i = tau / sqrt(lambda_i)):
    value:  dy_i/dt = -2 gamma mu_i(R) lambda_i y_i + gamma^2 lambda_i nu_i(R) / (2D)
            mu_i = E_w[F(theta_i / |w|)],  nu_i = E[min(lambda_i w^2 z^2, tau^2)]
    sign:   dy_i/dt = -2 eta phi(R) sqrt(lambda_i) y_i + eta^2 lambda_i / (2D),
            phi(R) = 2 sqrt(2/pi) p_w(0)
Limits: tau -> inf is plain SGD; tau -> 0 with gamma = eta / tau is signSGD (relative gap
~ tau log(1/tau), not O(tau)).
Homogenized SDEs (the ODEs above are their mean paths; X_i = e_i, v_i = X_i^2 / 2):
    value:  dX_i = -gamma mu_i(R) lambda_i X_i dt + gamma sqrt(nu_i(R) / D) dB_i
    sign:   dX_i = -eta phi(R) sqrt(lambda_i) X_i dt + eta sqrt(1 / D) dB_i     (lambda_i > 0)

References: SPEC sections 12 and 13; Xiao, Marshall, Agarwala, Paquette 2024 (arXiv 2411.12135).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._algorithm import Algorithm, EquivalentBase
from ._clipped_sgd import _check_schedule
from ._engine import describe_schedule, step_table

__all__ = ["ValueClipSGD", "SignSGD"]


def _gradient(noise, model, key, e):
    """One fresh example's gradient g = w a (batch 1, centred data)."""
    import jax

    kz, ke = jax.random.split(key)
    a = model["sqrt_lam"] * jax.random.normal(kz, e.shape, e.dtype)
    w = jnp.dot(a, e) - noise.sample(ke, (), e.dtype)
    return w * a


def _risk(model, e):
    r = model["sqrt_lam"] * e
    return {"risk": 0.5 * jnp.dot(r, r)}


@dataclass(frozen=True)
class ValueClipKernel:
    def init_state(self, model, sched0):
        return ()

    def step(self, noise, model, sched, key, e, state):
        g = _gradient(noise, model, key, e)
        tau = sched["clip"]
        return e - sched["lr"] * model["inv_D"] * jnp.clip(g, -tau, tau), state

    def records(self, model, e, state):
        return _risk(model, e)


@dataclass(frozen=True)
class SignKernel:
    def init_state(self, model, sched0):
        return ()

    def step(self, noise, model, sched, key, e, state):
        g = _gradient(noise, model, key, e)
        return e - sched["lr"] * model["inv_D"] * jnp.sign(g), state

    def records(self, model, e, state):
        return _risk(model, e)


def _check_problem(name, problem):
    if not problem.coordinate_basis:
        raise ValueError(
            f"{name}: value clipping acts on the data's own coordinates and needs K diagonal "
            "there; this Problem was built from a non-diagonal covariance (its coordinates "
            "are eigen-coordinates: rotating the data changes the algorithm)"
        )
    if problem.data_mean is not None:
        raise ValueError(f"{name}: non-centred data (data_mean) is not supported")


@dataclass(frozen=True, eq=False)
class ValueClipSGD(Algorithm):
    """SGD with each gradient coordinate clamped to [-clip_value, clip_value] (torch's
    ``clip_grad_value_``, optax's ``clip``); needs K diagonal in the coordinate basis.

    Args:
        lr: gamma (step gamma / D): a number > 0, a callable of t, or (times, values).
        clip_value: tau > 0 (inf: plain SGD). Per-coordinate gradients are O(1), so is tau.

    References: SPEC sections 12, 13.
    """

    lr: object
    clip_value: float
    batch: int = field(default=1, init=False, repr=False)
    sweep_axes: tuple = field(default=("lr", "clip"), init=False, repr=False)

    def __init__(self, lr, clip_value):
        object.__setattr__(self, "lr", _check_schedule("lr", lr, False))
        object.__setattr__(self, "clip_value", V.positive("clip_value", clip_value, allow_inf=True))
        object.__setattr__(self, "batch", 1)
        object.__setattr__(self, "sweep_axes", ("lr", "clip"))

    @property
    def clip(self):
        return self.clip_value

    def replace(self, **changes) -> "ValueClipSGD":
        lr = changes.pop("lr", self.lr)
        tau = changes.pop("clip", changes.pop("clip_value", self.clip_value))
        if changes:
            raise ValueError(f"ValueClipSGD has no parameter {sorted(changes)[0]!r}")
        return ValueClipSGD(lr, tau)

    def kernel(self):
        return ValueClipKernel()

    def step_tables(self, n_steps, D):
        return {
            "lr": step_table("lr", self.lr, n_steps, D, False),
            "clip": np.array([self.clip_value]),
        }

    def describe(self) -> dict:
        return {
            "algorithm": "ValueClipSGD",
            "lr": describe_schedule(self.lr),
            "clip_value": self.clip_value,
        }

    def deterministic(
        self, problem, *, use_table=True, second_order=False, for_map=False, cache=None
    ):
        self.check_problem(problem)
        if second_order or for_map:
            raise ValueError(
                "ValueClipSGD: method='map' and second_order=True are not available, only the "
                "first-order ODE is derived (SPEC 12); use method='DOP853'"
            )
        return _ValueEquivalent(self, problem)

    def check_problem(self, problem) -> None:
        _check_problem("ValueClipSGD", problem)

    def __repr__(self):
        return f"ValueClipSGD(lr={describe_schedule(self.lr)!r}, clip_value={self.clip_value!r})"


@dataclass(frozen=True, eq=False)
class SignSGD(Algorithm):
    """signSGD: e <- e - (lr / D) sign(g) coordinate-wise (the tau -> 0 limit of value clipping
    with lr = eta / tau); needs K diagonal in the coordinate basis.

    References: SPEC section 12; Xiao, Marshall, Agarwala, Paquette 2024.
    """

    lr: object
    batch: int = field(default=1, init=False, repr=False)
    clip: object = field(default=None, init=False, repr=False)
    sweep_axes: tuple = field(default=("lr",), init=False, repr=False)

    def __init__(self, lr):
        object.__setattr__(self, "lr", _check_schedule("lr", lr, False))
        object.__setattr__(self, "batch", 1)
        object.__setattr__(self, "clip", None)
        object.__setattr__(self, "sweep_axes", ("lr",))

    def replace(self, **changes) -> "SignSGD":
        lr = changes.pop("lr", self.lr)
        if changes.pop("clip", None) not in (None, math.inf) or changes:
            raise ValueError("SignSGD takes only lr")
        return SignSGD(lr)

    def kernel(self):
        return SignKernel()

    def step_tables(self, n_steps, D):
        return {"lr": step_table("lr", self.lr, n_steps, D, False)}

    def describe(self) -> dict:
        return {"algorithm": "SignSGD", "lr": describe_schedule(self.lr)}

    def deterministic(
        self, problem, *, use_table=True, second_order=False, for_map=False, cache=None
    ):
        self.check_problem(problem)
        if second_order or for_map:
            raise ValueError(
                "SignSGD: method='map' and second_order=True are not available, only the "
                "first-order ODE is derived (SPEC 12); use method='DOP853'"
            )
        return _SignEquivalent(self, problem)

    def check_problem(self, problem) -> None:
        _check_problem("SignSGD", problem)

    def __repr__(self):
        return f"SignSGD(lr={describe_schedule(self.lr)!r})"


#: nodes per decade of log theta in the SDE's factor tables (linear interpolation, error ~1e-4)
_SDE_THETA_PER_DECADE = 48


class _ValueEquivalent(EquivalentBase):
    own_sde_tables = True  # simulate_sde reads sde_tables (per-coordinate factors)

    def __init__(self, alg, problem):
        super().__init__(alg, problem)
        self.tau = alg.clip_value
        self._half_D = 1.0 / (2.0 * self.D)

    def state0(self):
        return {"y": 0.5 * self.lam * self.e0 * self.e0}

    @staticmethod
    def observe(state):
        return {"risk": state["y"].sum(axis=0)}

    def rates(self, t, state):
        from ._value_factors import value_clip_factors

        y = state["y"]
        R = max(float(y.sum()), 0.0)
        if not R <= 1e140:
            raise OverflowError(t)
        mu, nu = value_clip_factors(self.noise, R, self.tau, self.lam)
        g = self.lr_at(t)
        if not np.all(np.isfinite(nu)):
            raise OverflowError(t)
        return {"y": -2.0 * g * mu * self.lam * y + g * g * self.lam * nu * self._half_D}

    def paths(self, t, risk):
        lr, _ = super().paths(t, risk)
        return lr, np.full(np.shape(t), self.tau)

    def sde_tables(self, log_r):
        """The SDE's factors on a (log R, log theta) grid: mu_i and nu_i / lambda_i depend on the
        coordinate only through theta_i = tau / sqrt(lambda_i), so one table serves every
        coordinate (y_i = log theta_i). Drift weights lambda_i, noise weights sqrt(lambda_i):
        dX_i = -gamma mu_i lambda_i X_i dt + gamma sqrt(lambda_i (nu_i / lambda_i) / D) dB_i."""
        from ._value_factors import value_clip_factors

        lam = self.lam
        theta = np.full(lam.shape, np.inf)
        pos = lam > 0
        theta[pos] = self.tau / np.sqrt(lam[pos])
        finite = np.isfinite(theta)  # inf: lambda_i = 0 (X_i never moves) or tau = inf
        lo = float(np.log(theta[finite].min())) if finite.any() else 0.0
        hi = float(np.log(theta[finite].max())) if finite.any() else 0.0
        margin = 1e-9 if hi - lo > 1e-6 else 1e-3  # float32 must still resolve the cell
        n = max(2, int(_SDE_THETA_PER_DECADE * (hi - lo) / math.log(10.0)) + 2)
        grid = np.linspace(lo - margin, hi + margin, n)
        lam_grid = (self.tau / np.exp(grid)) ** 2 if math.isfinite(self.tau) else np.ones(n)
        mu = np.empty((log_r.size, n))
        nubar = np.empty((log_r.size, n))
        for k, x in enumerate(log_r):
            mu[k], nu = value_clip_factors(self.noise, math.exp(x), self.tau, lam_grid)
            nubar[k] = nu / lam_grid
        return {
            "log_r": log_r,
            "grid": grid,
            "y": np.where(finite, np.log(np.where(finite, theta, 1.0)), lo),
            "mu": mu,
            "nu": nubar,
            "drift_weights": lam,
            "noise_weights": np.sqrt(lam),
        }


class _SignEquivalent(EquivalentBase):
    own_sde_tables = True  # simulate_sde reads sde_tables

    def __init__(self, alg, problem):
        super().__init__(alg, problem)
        self.sqrt_lam = np.sqrt(self.lam)

    def state0(self):
        return {"y": 0.5 * self.lam * self.e0 * self.e0}

    @staticmethod
    def observe(state):
        return {"risk": state["y"].sum(axis=0)}

    def h_bound(self, t_end):
        # the sign step moves each coordinate by eta / D: stiffness eta phi sqrt(lambda_max) / D
        return super().h_bound(t_end) / math.sqrt(max(float(self.lam.max()), 1e-300))

    def rates(self, t, state):
        from ._value_factors import sign_descent_factor

        y = state["y"]
        R = max(float(y.sum()), 0.0)
        if not R <= 1e140:
            raise OverflowError(t)
        phi = sign_descent_factor(self.noise, R)
        eta = self.lr_at(t)
        return {"y": -2.0 * eta * phi * self.sqrt_lam * y + eta * eta * self.lam / (2.0 * self.D)}

    def sde_tables(self, log_r):
        """phi(R) on the risk grid (one column: no coordinate dependence); drift weights
        sqrt(lambda_i), noise weights 1 (0 where lambda_i = 0: sign(g_i) = 0 there):
        dX_i = -eta phi(R) sqrt(lambda_i) X_i dt + eta sqrt(1 / D) dB_i."""
        from ._value_factors import sign_descent_factor

        phi = np.array([sign_descent_factor(self.noise, math.exp(x)) for x in log_r])
        mu = np.repeat(phi[:, None], 2, axis=1)
        return {
            "log_r": log_r,
            "grid": np.array([0.0, 1.0]),
            "y": np.zeros(self.lam.shape),
            "mu": mu,
            "nu": np.ones(mu.shape),
            "drift_weights": self.sqrt_lam,
            "noise_weights": (self.lam > 0).astype(np.float64),
        }
