"""AutoClip (Seetharaman, Wichern, Pardo, Le Roux 2020): the threshold is a percentile of every
gradient norm seen so far (SPEC 11B).

Stochastic update (batch 1): append ||g_k|| to the history, C_k = the p-th percentile of
{||g_j|| : j <= k} (numpy's linear interpolation), clip g_k at C_k. The history is the kernel's
state, kept in one of two ways:
* ``history="histogram"`` (default, bounded memory): counts of log(||g|| / sqrt(D)) in
  ``HIST_BINS`` = 4096 bins over [1e-8, 1e8] (bin width 0.9 % in c), percentile read with
  numpy's rank rule (linear between the order statistics around the rank), each order statistic
  placed log-uniformly inside its bin. Error: at most one bin width (0.9 %) in c, typically far
  less; norms outside the range fall in the end bins.
* ``history="exact"``: every norm, in a buffer of ``max_steps`` (sorted each step: tests and
  small runs only).

Deterministic equivalent (SPEC 11B): the history's empirical CDF in residual units converges to
H(t, c) = M(t, c) / t with M(t, c) = int_0^t mu_c(R(s)) ds, so c(t) is the root of
M(t, c) = p t / 100 and
    dy_i/dt = -2 gamma mu_{c(t)}(R) lambda_i y_i + gamma^2 lambda_i^2 nu_{c(t)}(R) / (2D)
    dM(t, c_j)/dt = mu_{c_j}(R(t))  on Chebyshev-Lobatto nodes c_j in log c
(M interpolated barycentrically in log c, root by Brent). c(0+) is the p-quantile of |w| at R0.
The node window spans the p-quantiles of |w| from R = 0 to R = 4 R0 (+-1 in log c), where every
decreasing path stays (SPEC 11B); a root leaving it stops the solve with a clear error.

References: SPEC sections 11B and 13; Seetharaman et al. 2020 (AutoClip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._algorithm import Algorithm, EquivalentBase
from ._clipped_sgd import (
    ClippedSGDKernel,
    _barycentric,
    _check_schedule,
    _chebyshev,
    risk_records,
)
from ._engine import describe_schedule, step_table
from ._factors import reduction_factors

__all__ = ["AutoClipSGD", "HIST_BINS", "HIST_RANGE"]

HIST_BINS = 4096
HIST_RANGE = (1e-8, 1e8)  # residual units ||g|| / sqrt(D)
_NODES = 64


def _numpy_linear_rank(n, percentile):
    """numpy.percentile's (method "linear") fractional 0-based rank among n sorted values."""
    return (n - 1.0) * percentile / 100.0


@dataclass(frozen=True)
class AutoClipKernel:
    """State: the norm history (histogram counts, or the exact buffer) and its length."""

    exact_len: int = 0  # 0: histogram

    def init_state(self, model, sched0):
        dt = sched0["lr"].dtype
        last = jnp.full((), jnp.nan, dt)  # the threshold of the last step (recorded)
        if self.exact_len:
            buf = jnp.full((self.exact_len,), jnp.inf, dt)
            return {"buf": buf, "n": jnp.zeros((), dt), "last": last}
        return {"counts": jnp.zeros((HIST_BINS,), dt), "n": jnp.zeros((), dt), "last": last}

    def _add_and_read(self, state, norm, p):
        n = state["n"] + 1.0
        h = _numpy_linear_rank(n, p)
        if self.exact_len:
            buf = state["buf"].at[state["n"].astype(jnp.int32)].set(norm)
            s = jnp.sort(buf)
            lo = jnp.floor(h).astype(jnp.int32)
            hi = jnp.minimum(lo + 1, n.astype(jnp.int32) - 1)
            c = s[lo] + (h - lo) * (s[hi] - s[lo])
            return {"buf": buf, "n": n, "last": c}, c
        log_lo, log_hi = math.log(HIST_RANGE[0]), math.log(HIST_RANGE[1])
        width = (log_hi - log_lo) / HIST_BINS
        b = jnp.clip(
            jnp.floor((jnp.log(jnp.maximum(norm, 1e-300)) - log_lo) / width), 0, HIST_BINS - 1
        ).astype(jnp.int32)
        counts = state["counts"].at[b].add(1.0)
        cum = jnp.cumsum(counts)

        def order_statistic(k):  # the 0-based k-th smallest norm, to within its bin
            j = jnp.searchsorted(cum, k, side="right")
            before = cum[j] - counts[j]
            frac = (k - before + 0.5) / jnp.maximum(counts[j], 1.0)
            return jnp.exp(log_lo + (j + jnp.clip(frac, 0.0, 1.0)) * width)

        lo = jnp.floor(h)
        hi = jnp.minimum(lo + 1.0, n - 1.0)
        c = order_statistic(lo) + (h - lo) * (order_statistic(hi) - order_statistic(lo))
        return {"counts": counts, "n": n, "last": c}, c

    def step(self, noise, model, sched, key, e, state):
        new = {}

        def threshold(norm):  # the current norm joins the history before the percentile
            new["state"], c = self._add_and_read(state, norm, sched["percentile"])
            return c

        e, _, _ = ClippedSGDKernel(1, "per-example").update(noise, model, sched, key, e, threshold)
        return e, new["state"]

    def records(self, model, e, state):
        return {**risk_records(model, e), "clip": state["last"]}


@dataclass(frozen=True, eq=False)
class AutoClipSGD(Algorithm):
    """Clipped SGD with AutoClip's threshold: the ``percentile`` of all gradient norms so far.

    Args:
        lr: gamma (step gamma / D): a number > 0, a callable of t, or (times, values).
        percentile: p in (0, 100), as numpy.percentile.
        history: "histogram" (bounded memory, error <= 0.9 % in c) or "exact" (needs max_steps).
        max_steps: buffer length for history="exact" (at least the number of steps run).

    References: SPEC sections 11B, 13; Seetharaman et al. 2020.
    """

    lr: object
    percentile: float
    history: str = "histogram"
    max_steps: int = 0
    batch: int = field(default=1, init=False, repr=False)
    clip: object = field(default=None, init=False, repr=False)
    sweep_axes: tuple = field(default=("lr",), init=False, repr=False)

    def __init__(self, lr, *, percentile, history="histogram", max_steps=None):
        object.__setattr__(self, "lr", _check_schedule("lr", lr, False))
        p = V.real("percentile", percentile, lo=0.0, hi=100.0)
        if not 0.0 < p < 100.0:
            raise ValueError(f"percentile must lie in (0, 100), got {percentile!r}")
        object.__setattr__(self, "percentile", p)
        if history not in ("histogram", "exact"):
            raise ValueError(f"history must be 'histogram' or 'exact', got {history!r}")
        object.__setattr__(self, "history", history)
        if history == "exact":
            if max_steps is None:
                raise ValueError("max_steps: history='exact' needs the buffer length (>= steps)")
            n = V.count("max_steps", max_steps)
            if n > 10**6:
                raise ValueError(f"max_steps must be an integer in [1, 1e6], got {max_steps!r}")
            object.__setattr__(self, "max_steps", n)
        else:
            object.__setattr__(self, "max_steps", 0)
        object.__setattr__(self, "batch", 1)
        object.__setattr__(self, "clip", None)
        object.__setattr__(self, "sweep_axes", ("lr",))

    def replace(self, **changes) -> "AutoClipSGD":
        kw = dict(
            lr=self.lr,
            percentile=self.percentile,
            history=self.history,
            max_steps=self.max_steps or None,
        )
        kw.update(changes)
        if kw.pop("clip", None) not in (None, math.inf):
            raise ValueError("AutoClipSGD sets its own threshold: it takes no clip")
        return AutoClipSGD(kw.pop("lr"), **kw)

    def kernel(self):
        return AutoClipKernel(self.max_steps)

    def step_tables(self, n_steps, D):
        if self.max_steps and n_steps > self.max_steps:
            raise ValueError(
                f"max_steps: the exact history holds {self.max_steps} norms, the run needs "
                f"{n_steps}; raise max_steps or use history='histogram'"
            )
        return {
            "lr": step_table("lr", self.lr, n_steps, D, False),
            "percentile": np.array([self.percentile]),
        }

    def describe(self) -> dict:
        return {
            "algorithm": "AutoClipSGD",
            "lr": describe_schedule(self.lr),
            "percentile": self.percentile,
            "history": self.history,
        }

    def deterministic(
        self, problem, *, use_table=True, second_order=False, for_map=False, cache=None
    ):
        if second_order or for_map:
            raise ValueError(
                "AutoClipSGD: method='map' and second_order=True are not available, only the "
                "first-order ODE is derived (SPEC 11B); use method='DOP853'"
            )
        if problem.data_mean is not None:
            raise ValueError("AutoClipSGD: non-centred data (data_mean) is not supported")
        return AutoClipEquivalent(self, problem)

    def __repr__(self):
        return (
            f"AutoClipSGD(lr={describe_schedule(self.lr)!r}, percentile={self.percentile!r}, "
            f"history={self.history!r})"
        )


def quantile_of_abs_w(noise, R, q, lo=1e-12, hi=1e12):
    """The q-quantile of |w|, w = N(0, 2R) - eps: the root of mu_c(R) = q (brentq in log c)."""
    from scipy.optimize import brentq

    f = lambda u: float(reduction_factors(noise, R, math.exp(u))[0]) - q  # noqa: E731
    return math.exp(brentq(f, math.log(lo), math.log(hi), xtol=1e-13, rtol=1e-13))


class AutoClipEquivalent(EquivalentBase):
    """SPEC 11B: state {"y", "M" (at the nodes), "t"}; c(t) the root of M(t, c) = p t."""

    no_sde = "simulate_sde: AutoClipSGD has no homogenized SDE here; use simulate or solve_ode"

    def __init__(self, alg, problem):
        super().__init__(alg, problem)
        self.p = alg.percentile / 100.0
        R0 = problem.initial_risk
        self.c0 = quantile_of_abs_w(self.noise, R0, self.p)
        c_lo = quantile_of_abs_w(self.noise, max(R0, 1e-300) * 1e-12, self.p)
        c_hi = quantile_of_abs_w(self.noise, 4.0 * R0, self.p)
        self.u_lo, self.u_hi = math.log(c_lo) - 1.0, math.log(c_hi) + 1.0
        self.u_nodes, self.u_weights = _chebyshev(self.u_lo, self.u_hi, _NODES)
        self.c_nodes = np.exp(self.u_nodes)

    def state0(self):
        return {
            "y": 0.5 * self.lam * self.e0 * self.e0,
            "M": np.zeros(_NODES),
            "t": np.zeros(1),
        }

    def _clip(self, M, t, R=None):
        """c(t): the root in log c of M(t, c) / t = p (c(0) = the p-quantile at R0)."""
        if t <= 0.0:
            return self.c0
        from scipy.optimize import brentq

        H = lambda u: float(_barycentric(self.u_nodes, self.u_weights, M[:, None], u)[0]) / t  # noqa: E731
        lo, hi = H(self.u_lo) - self.p, H(self.u_hi) - self.p
        if not (lo < 0.0 < hi):
            raise ValueError(
                f"AutoClipSGD ODE: the threshold left its window [{math.exp(self.u_lo):.3g}, "
                f"{math.exp(self.u_hi):.3g}] at t = {t:.4g} (the risk grew past 4 R0?)"
            )
        return math.exp(
            brentq(lambda u: H(u) - self.p, self.u_lo, self.u_hi, xtol=1e-12, rtol=1e-13)
        )

    def observe(self, state):
        R = state["y"].sum(axis=0)
        M, t = np.asarray(state["M"]), np.asarray(state["t"])
        if M.ndim == 1:
            return {"risk": R, "clip": self._clip(M, float(t[0]))}
        clip = np.array([self._clip(M[:, j], float(t[0, j])) for j in range(M.shape[1])])
        return {"risk": R, "clip": clip}

    def rates(self, t, state):
        y = state["y"]
        R = max(float(y.sum()), 0.0)
        if not R <= 1e140:
            raise OverflowError(t)
        c = self._clip(state["M"], float(state["t"][0]))
        mu_nodes, _ = reduction_factors(self.noise, np.full(_NODES, R), self.c_nodes)
        mu, nu = (float(x) for x in reduction_factors(self.noise, R, c))
        g = self.lr_at(t)
        dy = -2.0 * g * mu * self.lam * y + g * g * nu * self._lam2_half_D
        return {"y": dy, "M": mu_nodes, "t": np.ones(1)}
