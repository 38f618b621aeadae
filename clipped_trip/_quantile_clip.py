"""Quantile-tracking clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021), SPEC 11A.

Stochastic update (batch 1, residual units c_k = C_k / sqrt(D)):
    clip g_k at C_k,   b_k = 1{||g_k|| <= C_k},   C_{k+1} = C_k exp(-eta_C (b_k - q))
The threshold is the kernel's optimiser state (log c per run) and is recorded with the risk.

Deterministic equivalents (given the past, b_k has mean mu_{c_k}(R_k)):
* slow regime, eta_C = eta / D (SPEC 11A.a): the threshold joins the ODE state, u = log c,
      dy_i/dt = -2 gamma mu_c(R) lambda_i y_i + gamma^2 lambda_i^2 nu_c(R) / (2D)
      du/dt   = -eta (mu_c(R) - q)                       (exact in log c)
* fast regime, eta_C = O(1) (SPEC 11A.b): c is a fast variable; the risk sees the stationary law
  pi_R of the walk of log c on its lattice at frozen R: drift factor E_pi[mu] = q exactly, noise
  nubar(R) = E_pi[nu_c(R)] (not nu at the q-quantile: 3-30 % more), c(t) reported as E_pi[c].
``regime="auto"`` picks slow for eta_C < D^{-1/2} and fast above: the slow ODE misses the O(eta_C)
spread of c and the fast one the O(1 / (eta_C D)) lag of c, both O(D^{-1/2}) at the switch.

References: SPEC sections 11A and 13; Andrew et al. 2021 (adaptive clipping for DP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._algorithm import Algorithm, EquivalentBase
from ._clipped_sgd import ClippedSGDKernel, _check_schedule, risk_records
from ._engine import describe_schedule, step_table
from ._factors import reduction_factors
from ._tables import LazyLogTable

__all__ = ["QuantileClipSGD", "REGIMES", "quantile_update"]

REGIMES = ("auto", "slow", "fast")


def quantile_update(log_clip, unclipped, quantile, clip_lr):
    """Andrew et al.'s geometric rule in log form: log C' = log C - eta_C (b - q), with b the
    fraction of unclipped gradients (1{||g|| <= C} at batch 1). Works on numbers and arrays."""
    return log_clip - clip_lr * (unclipped - quantile)


@dataclass(frozen=True)
class QuantileClipKernel:
    """Carries u = log c per run; the clipped step is :class:`ClippedSGDKernel`'s."""

    def init_state(self, model, sched0):
        return jnp.log(sched0["clip"])

    def step(self, noise, model, sched, key, e, u):
        c = jnp.exp(u)
        e, norms, _ = ClippedSGDKernel(1, "per-example").update(
            noise, model, sched, key, e, lambda norms: c
        )
        unclipped = (norms <= c).astype(e.dtype)
        return e, quantile_update(u, unclipped, sched["quantile"], sched["clip_lr"])

    def records(self, model, e, u):
        return {**risk_records(model, e), "clip": jnp.exp(u)}


@dataclass(frozen=True, eq=False)
class QuantileClipSGD(Algorithm):
    """Clipped SGD whose threshold tracks the ``quantile`` of the gradient norms (geometric rule).

    Args:
        lr: gamma (step gamma / D): a number > 0, a callable of t, or (times, values).
        clip: c_0 > 0, the initial threshold (residual units).
        quantile: q in (0, 1), the target fraction of unclipped examples.
        clip_lr: eta_C > 0, the per-step rate of log C (eta_C = eta / D: slow regime; O(1): fast).
        regime: which deterministic equivalent: "auto" (slow if eta_C < D^{-1/2}), "slow", "fast".

    References: SPEC sections 11A, 13; Andrew et al. 2021.
    """

    lr: object
    clip: float
    quantile: float
    clip_lr: float
    regime: str = "auto"
    batch: int = field(default=1, init=False, repr=False)
    sweep_axes: tuple = field(default=("lr", "clip"), init=False, repr=False)

    def __init__(self, lr, clip, *, quantile, clip_lr, regime="auto"):
        object.__setattr__(self, "lr", _check_schedule("lr", lr, False))
        object.__setattr__(self, "clip", V.positive("clip", clip))
        q = V.real("quantile", quantile, lo=0.0, hi=1.0)
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
        object.__setattr__(self, "quantile", q)
        object.__setattr__(self, "clip_lr", V.positive("clip_lr", clip_lr))
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
        object.__setattr__(self, "regime", regime)
        object.__setattr__(self, "batch", 1)
        object.__setattr__(self, "sweep_axes", ("lr", "clip"))

    def replace(self, **changes) -> "QuantileClipSGD":
        kw = dict(
            lr=self.lr,
            clip=self.clip,
            quantile=self.quantile,
            clip_lr=self.clip_lr,
            regime=self.regime,
        )
        kw.update(changes)
        return QuantileClipSGD(kw.pop("lr"), kw.pop("clip"), **kw)

    def kernel(self):
        return QuantileClipKernel()

    def step_tables(self, n_steps, D):
        return {
            "lr": step_table("lr", self.lr, n_steps, D, False),
            "clip": np.array([self.clip]),
            "quantile": np.array([self.quantile]),
            "clip_lr": np.array([self.clip_lr]),
        }

    def regime_for(self, D: float) -> str:
        if self.regime != "auto":
            return self.regime
        return "slow" if self.clip_lr < 1.0 / math.sqrt(D) else "fast"

    def describe(self) -> dict:
        return {
            "algorithm": "QuantileClipSGD",
            "lr": describe_schedule(self.lr),
            "clip": self.clip,
            "quantile": self.quantile,
            "clip_lr": self.clip_lr,
            "regime": self.regime,
        }

    def deterministic(
        self, problem, *, use_table=True, second_order=False, for_map=False, cache=None
    ):
        if second_order or for_map:
            raise ValueError(
                "QuantileClipSGD: method='map' and second_order=True are not available, only the "
                "first-order ODE is derived (SPEC 11A); use method='DOP853'"
            )
        if problem.data_mean is not None:
            raise ValueError("QuantileClipSGD: non-centred data (data_mean) is not supported")
        if self.regime_for(problem.D) == "slow":
            return _SlowEquivalent(self, problem)
        return _FastEquivalent(self, problem, cache)

    def __repr__(self):
        return (
            f"QuantileClipSGD(lr={describe_schedule(self.lr)!r}, clip={self.clip!r}, "
            f"quantile={self.quantile!r}, clip_lr={self.clip_lr!r}, regime={self.regime!r})"
        )


class _Base(EquivalentBase):
    pass


class _SlowEquivalent(_Base):
    """SPEC 11A.a: state {"y", "u" = log c}. Its SDE (per run, u its own state):
    dX_i = -gamma mu_c(R) lambda_i X_i dt + gamma sqrt(lambda_i nu_c(R) / D) dB_i,
    du = -eta (mu_c(R) - q) dt + eta sqrt(mu_c(R) (1 - mu_c(R)) / D) dB'
    (log C moves by -eta_C (b_k - q) per step, b_k Bernoulli(mu): variance eta^2 mu (1 - mu) / D
    per unit time). dB' is taken independent of dB: in SGD b_k and the gradient noise are
    correlated (Cov(g_i, b) = lambda_i e_i [mu (1 - mu) - c (p_w(c) + p_w(-c))], an O(1)
    correlation between the noises of R and log c), so the SDE matches the means of R and c, not
    their joint fluctuations."""

    quantile_sde = True  # simulate_sde runs the (X, u) SDE

    def __init__(self, alg, problem):
        super().__init__(alg, problem)
        self.eta = alg.clip_lr * self.D  # d(log c)/dt = -eta (mu - q)

    def state0(self):
        return {"y": 0.5 * self.lam * self.e0 * self.e0, "u": np.array([math.log(self.alg.clip)])}

    @staticmethod
    def observe(state):
        return {"risk": state["y"].sum(axis=0), "clip": np.exp(state["u"][0])}

    def rates(self, t, state):
        y, u = state["y"], float(state["u"][0])
        R = max(float(y.sum()), 0.0)
        if not R <= 1e140:
            raise OverflowError(t)
        mu, nu = (float(x) for x in reduction_factors(self.noise, R, math.exp(u)))
        g = self.lr_at(t)
        dy = -2.0 * g * mu * self.lam * y + g * g * nu * self._lam2_half_D
        return {"y": dy, "u": np.array([-self.eta * (mu - self.alg.quantile)])}


class _FastEquivalent(_Base):
    """SPEC 11A.b: state {"y"}; drift factor q, noise nubar(R) = E_pi[nu_c(R)] (tabulated). Its
    SDE: dX_i = -gamma q lambda_i X_i dt + gamma sqrt(lambda_i nubar(R) / D) dB_i."""

    own_sde_tables = True  # simulate_sde reads sde_tables

    def __init__(self, alg, problem, cache):
        super().__init__(alg, problem)
        from ._adaptive_factors import quantile_fast_factors

        q, eta_c, log_c0 = alg.quantile, alg.clip_lr, math.log(alg.clip)
        key = ("QuantileClipSGD", self.noise, q, eta_c, log_c0)

        def tabulated(R):
            _, nubar, mean_clip = quantile_fast_factors(self.noise, np.asarray(R), q, eta_c, log_c0)
            return np.stack([np.log(nubar), np.log(mean_clip)], axis=-1)

        if cache is not None and key in cache:
            self.table = cache[key]
        else:
            self.table = LazyLogTable(tabulated, per_decade=24)
            if cache is not None:
                cache[key] = self.table

    def state0(self):
        return {"y": 0.5 * self.lam * self.e0 * self.e0}

    def observe(self, state):
        R = np.atleast_1d(np.asarray(state["y"].sum(axis=0), np.float64))
        clip = np.array([math.exp(self.table.scalar(max(r, 1e-300))[1]) for r in R])
        return {"risk": state["y"].sum(axis=0), "clip": clip if clip.size > 1 else clip[0]}

    def rates(self, t, state):
        y = state["y"]
        R = max(float(y.sum()), 1e-300)
        if not R <= 1e140:
            raise OverflowError(t)
        nubar = math.exp(float(self.table.scalar(R)[0]))
        g = self.lr_at(t)
        dy = -2.0 * g * self.alg.quantile * self.lam * y + g * g * nubar * self._lam2_half_D
        return {"y": dy}

    def sde_tables(self, log_r):
        """Drift factor q and nubar(R) on the risk nodes (no coordinate dependence)."""
        from ._adaptive_factors import quantile_fast_factors

        alg = self.alg
        _, nubar, _ = quantile_fast_factors(
            self.noise, np.exp(log_r), alg.quantile, alg.clip_lr, math.log(alg.clip)
        )
        return {
            "log_r": log_r,
            "grid": np.array([0.0, 1.0]),
            "y": np.zeros(self.lam.shape),
            "mu": np.full((log_r.size, 2), alg.quantile),
            "nu": np.repeat(np.asarray(nubar, np.float64)[:, None], 2, axis=1),
            "drift_weights": self.lam,
            "noise_weights": np.sqrt(self.lam),
        }
