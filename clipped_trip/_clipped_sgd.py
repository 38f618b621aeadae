"""Clipped SGD with mini-batches: per-example clipping and clip of the mean (SPEC sections 2, 8).

Stochastic update (B fresh examples per step, eta = gamma / D, C = c sqrt(D)):
    per-example (DP-SGD style):   e <- e - eta (1/B) sum_j clip_C(w_j a_j)
    mean (clip_grad_norm_):       e <- e - eta clip_C((1/B) sum_j w_j a_j)
B = 1 is the paper's clipped SGD (both modes coincide); clip None / inf is plain SGD.

Deterministic equivalent, in y_i = lambda_i v_i (v_i = E e_i^2 / 2, R = sum_i y_i), with
G = ||K e||^2 = 2 sum_i lambda_i y_i:
    ODE:  dy_i/dt = -2 gamma mu lambda_i y_i + gamma^2 lambda_i^2 nu_eff / (2D)
                    [+ (gamma^2 / D) lambda_i^2 y_i s2]                   (second order, optional)
    map:  y_i' = (1 - eta mu lambda_i)^2 y_i + eta^2 lambda_i^2 nu_eff / 2
                 [+ eta^2 lambda_i^2 y_i (kap - mu^2) / B]                 (per-example only)
    per-example: mu, nu = batch-1 factors (SPEC 3), nu_eff = nu / B,
                 s2 = mu^2 (B - 1)/B + kap/B, kap = E[(min(w^2, c^2))'']   (SPEC 8A)
    mean:        mu = mu_B, nu_eff = nu_B (SPEC 8B), s2 = mu_B^2, factors of (R, shift) with the
                 large-batch shift B (B + 1) G / D for B > 1 (0 at B = 1, where the two modes are
                 the paper's algorithm)
    SDE (C-HSGD): dX_i = -gamma mu lambda_i X_i dt + gamma sqrt(nu_eff / D) sqrt(lambda_i) dB_i
A step whose clip is inf uses the unclipped factors in both modes (mu = 1, nu = 2R + E eps^2,
kap = 2, nu_eff = nu / B): unclipped SGD does not depend on the mode.

References: SPEC sections 2, 4, 8 and 13; arXiv 2406.11733 (batch 1); for mini-batch clipping,
PyTorch ``clip_grad_norm_`` (mean) and Abadi et al. 2016 / Opacus (per-example).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._algorithm import Algorithm
from ._clip import clip_factor
from ._engine import describe_schedule, step_table
from ._factors import reduction_factors
from ._schedules import RiskSchedule, is_constant, time_schedule_values
from ._tables import LazyLogTable

__all__ = ["ClippedSGD", "clipped_step", "CLIP_MODES"]

CLIP_MODES = ("per-example", "mean")


def _shift_nodes(z_range):
    """Chebyshev nodes in the shift variable z: the factors are analytic in z and vary on the
    scale z ~ 1 (the shift is 2 B R z against W ~ B (2R + E eps^2)), so a narrow range needs few."""
    width = z_range[1] - z_range[0]
    return 4 if width <= 0.05 else 6 if width <= 0.3 else 10


def clipped_step(w, grad_norm, lr, c, inv_D, sqrt_D):
    """The clipped SGD step along a: e <- e - h a with h = (gamma/D) min(1, C/||g||) w.

    ``grad_norm`` = |w| ||a|| (= ||g||), C = c sqrt(D). The one place the clipped step is written;
    the full, reduced and real-data simulators all call it.
    """
    return lr * inv_D * clip_factor(grad_norm, c * sqrt_D) * w


# ---------------------------------------------------------------------------------------------
# the stochastic update (JAX)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClippedSGDKernel:
    """Static part of :class:`ClippedSGD` (part of the compiled program): batch and mode."""

    batch: int
    clip_mode: str

    def init_state(self, model):
        return ()

    def step(self, noise, model, sched, key, e, state):
        lr, c = sched["lr"], sched["clip"]
        sqrt_lam, inv_D, sqrt_D = model["sqrt_lam"], model["inv_D"], model["sqrt_D"]
        kz, ke = jax.random.split(key)
        d = e.shape[0]
        if self.batch == 1:
            a = sqrt_lam * jax.random.normal(kz, (d,), e.dtype)
            w = jnp.dot(a, e) - noise.sample(ke, (), e.dtype)
            g_norm = jnp.abs(w) * jnp.sqrt(jnp.dot(a, a))
            return e - clipped_step(w, g_norm, lr, c, inv_D, sqrt_D) * a, state
        B = self.batch
        A = sqrt_lam * jax.random.normal(kz, (B, d), e.dtype)  # the only B x d block
        w = A @ e - noise.sample(ke, (B,), e.dtype)
        if self.clip_mode == "per-example":
            g_norm = jnp.abs(w) * jnp.sqrt(jnp.sum(A * A, axis=1))
            h = clipped_step(w, g_norm, lr, c, inv_D, sqrt_D) / B
            return e - h @ A, state
        m = (w @ A) / B  # mean gradient
        m_norm = jnp.sqrt(jnp.dot(m, m))
        return e - lr * inv_D * clip_factor(m_norm, c * sqrt_D) * m, state

    def records(self, model, e, state):
        r = model["sqrt_lam"] * e
        return {"risk": 0.5 * jnp.dot(r, r)}


# ---------------------------------------------------------------------------------------------
# the algorithm object
# ---------------------------------------------------------------------------------------------
def _check_schedule(name, schedule, allow_inf):
    if isinstance(schedule, (bool, np.bool_, str, bytes)):
        raise ValueError(
            f"{name} must be a number > 0, a callable of t or (times, values), got {schedule!r}"
        )
    if isinstance(schedule, RiskSchedule):
        if name == "lr":
            raise ValueError("lr must be a number > 0, a callable of t or (times, values)")
        return schedule
    # numbers checked now; callables and (times, values) at t = 0 now, at every step when run
    time_schedule_values(name, schedule, np.zeros(1), allow_inf=allow_inf, allow_none=allow_inf)
    return schedule


@dataclass(frozen=True, eq=False)
class ClippedSGD(Algorithm):
    """Streaming SGD, B examples per step, gradient clipped at c sqrt(D) per example or on the mean.

    Args:
        lr: gamma (step gamma / D): a number > 0, a callable of t, or (times, values).
        clip: c in residual units (threshold c sqrt(D) on the gradient norm); None / inf = plain
            SGD. Same forms as ``lr``, or a :class:`RiskSchedule` (ODE and SDE only).
        batch: B >= 1 fresh examples per step (time t = steps / D; samples used = B steps).
        clip_mode: "per-example" (clip each example's gradient, then average: DP-SGD, optax's
            per_example_global_norm_clip) or "mean" (average, then clip: torch's
            clip_grad_norm_, optax's clip_by_global_norm). Identical at B = 1.

    References: SPEC sections 2, 8, 13; arXiv 2406.11733 (B = 1).
    """

    lr: object
    clip: object = None
    batch: int = 1
    clip_mode: str = "per-example"
    sweep_axes: tuple = field(default=("lr", "clip"), init=False, repr=False)

    def __init__(self, lr, clip=None, *, batch=1, clip_mode="per-example"):
        object.__setattr__(self, "lr", _check_schedule("lr", lr, False))
        object.__setattr__(self, "clip", _check_schedule("clip", clip, True))
        object.__setattr__(self, "batch", V.count("batch", batch))
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {', '.join(CLIP_MODES)}, got {clip_mode!r}")
        object.__setattr__(self, "clip_mode", clip_mode)
        object.__setattr__(self, "sweep_axes", ("lr", "clip"))

    def replace(self, **changes) -> "ClippedSGD":
        kw = dict(lr=self.lr, clip=self.clip, batch=self.batch, clip_mode=self.clip_mode)
        kw.update(changes)
        return ClippedSGD(kw.pop("lr"), kw.pop("clip"), **kw)

    def kernel(self):
        return ClippedSGDKernel(self.batch, self.clip_mode)

    def samples_per_step(self) -> int:
        return self.batch

    def step_tables(self, n_steps, D):
        return {
            "lr": step_table("lr", self.lr, n_steps, D, False),
            "clip": step_table("clip", self.clip, n_steps, D, True),
        }

    def describe(self) -> dict:
        return {
            "algorithm": "ClippedSGD",
            "lr": describe_schedule(self.lr),
            "clip": describe_schedule(self.clip),
            "batch": self.batch,
            "clip_mode": self.clip_mode,
        }

    def deterministic(
        self, problem, *, use_table=True, second_order=False, for_map=False, cache=None
    ):
        eq = ClippedSGDEquivalent(self, problem, use_table, second_order, for_map, cache)
        return eq

    def __repr__(self):
        return (
            f"ClippedSGD(lr={describe_schedule(self.lr)!r}, clip={describe_schedule(self.clip)!r}, "
            f"batch={self.batch}, clip_mode={self.clip_mode!r})"
        )


# ---------------------------------------------------------------------------------------------
# the deterministic equivalent (ODE terms, one-step map, SDE factors)
# ---------------------------------------------------------------------------------------------
def _chebyshev(lo, hi, n):
    """Chebyshev points of the second kind on [lo, hi] and their barycentric weights."""
    k = np.arange(n)
    x = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * k / (n - 1))
    w = (-1.0) ** k
    w[0] *= 0.5
    w[-1] *= 0.5
    return x, w


def _barycentric(x_nodes, weights, values, x):
    """Barycentric interpolation of ``values`` (n, k) at one point x: (k,)."""
    diff = x - x_nodes
    hit = np.flatnonzero(diff == 0)
    if hit.size:
        return values[hit[0]]
    q = weights / diff
    return (q @ values) / q.sum()


class ClippedSGDEquivalent:
    """The deterministic equivalent of :class:`ClippedSGD` on one problem.

    State pytree ``{"y": lambda * v}`` (R = sum y). ``rates`` is the ODE right-hand side as a sum
    of terms, ``map_step`` the one-step map of E[v] (SPEC 8A.2 / 8B.3), ``sde_factors`` the
    (mu, nu_eff) of the homogenized SDE.
    """

    def __init__(self, alg, problem, use_table, second_order, for_map, cache=None):
        self.alg = alg
        self.noise = problem.noise
        self.lam = problem.eigenvalues
        self.D = problem.D
        self.B = alg.batch
        self.mode = alg.clip_mode
        self.lr, self.clip = alg.lr, alg.clip
        self.second_order = bool(second_order)  # keep the O(h) term in the ODE
        self.e0 = problem.initial_error
        self._lam2_half_D = self.lam * self.lam / (2.0 * self.D)
        self.lr_const = (
            time_schedule_values("lr", self.lr, np.zeros(1))[0] if is_constant(self.lr) else None
        )
        self.clip_const = (
            time_schedule_values("clip", self.clip, np.zeros(1), allow_inf=True, allow_none=True)[0]
            if is_constant(self.clip)
            else None
        )
        self.risk_clip = isinstance(self.clip, RiskSchedule)
        self.shifted = self.mode == "mean" and self.B > 1
        # kap enters the second-order term and the map (per-example and batch 1 only)
        self.need_kap = bool(second_order or for_map) and not self.shifted
        pos = self.lam[self.lam > 0]
        # z = (B + 1) G / (2 D R) lies in [(B+1) lam_min / D, (B+1) lam_max / D]
        self.z_range = ((self.B + 1) * pos.min() / self.D, (self.B + 1) * pos.max() / self.D)
        if self.shifted and self.z_range[1] > self.z_range[0] * (1 + 1e-12):
            self.z_nodes, self.z_weights = _chebyshev(*self.z_range, _shift_nodes(self.z_range))
        else:
            self.z_nodes, self.z_weights = np.array([self.z_range[1]]), np.ones(1)
        self.table = None
        if use_table and (self.clip_const is not None or self.risk_clip):
            # a caller-owned cache shares tables between solves that differ only in lr
            key = (
                "ClippedSGD",
                self.noise,
                self.clip_const if self.clip_const is not None else id(self.clip),
                self.B,
                self.mode,
                self.need_kap,
                tuple(self.z_nodes),
            )
            if cache is not None and key in cache:
                self.table = cache[key]
            else:
                # clip-of-mean factors are costly: 24 nodes per decade (spline error ~1e-9)
                # where a risk schedule's c*(R) jumps (to inf), never spline mu and nu across
                breaks = getattr(self.clip.clip_of_risk, "breaks", None) if self.risk_clip else None
                self.table = LazyLogTable(
                    self._tabulated, per_decade=24 if self.shifted else 48, breaks=breaks
                )
                if cache is not None:
                    cache[key] = self.table
        self._kap_cache = {}

    # --- factors -----------------------------------------------------------------------------
    def _clip_of(self, t, R):
        if self.clip_const is not None:
            return self.clip_const
        if self.risk_clip:
            return float(self.clip.clip(R))
        return float(
            time_schedule_values("clip", self.clip, np.array([t]), allow_inf=True, allow_none=True)[
                0
            ]
        )

    def lr_at(self, t):
        if self.lr_const is not None:
            return self.lr_const
        return float(time_schedule_values("lr", self.lr, np.array([t]))[0])

    def _raw(self, R, c, z, with_kap):
        """(mu, nu_eff, kap) at arrays R, c, z, evaluated directly (kap NaN when not asked)."""
        R, c, z = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (R, c, z)))
        kap = np.full(R.shape, np.nan)
        if self.shifted:
            from ._batch_factors import mean_clip_factors

            finite = np.isfinite(c)
            mu = np.ones(R.shape)
            nu = np.array((2.0 * R + self.noise.second_moment) / self.B, dtype=np.float64)
            if finite.any():
                shift = self.B * 2.0 * R[finite] * z[finite]
                m, n = mean_clip_factors(self.noise, R[finite], c[finite], self.B, shift)
                mu[finite], nu[finite] = m, n
            kap[~finite] = 2.0
            return mu, nu, kap
        mu, nu = reduction_factors(self.noise, R, c)
        if with_kap:
            from ._batch_factors import stein_curvature

            kap = np.asarray(stein_curvature(self.noise, R, c), dtype=np.float64) * np.ones(R.shape)
        return mu, nu / self.B, kap

    def _tabulated(self, R):
        """Columns per risk: log mu, log nu_eff (and kap) at each shift node."""
        R = np.asarray(R, dtype=np.float64)
        c = self.clip.clip(R) if self.risk_clip else np.full(R.shape, self.clip_const)
        cols = []
        for z in self.z_nodes:
            mu, nu, kap = self._raw(R, c, np.full(R.shape, z), self.need_kap)
            with np.errstate(divide="ignore"):
                cols += [np.log(mu), np.log(nu)]
            if self.need_kap:
                cols.append(kap)
        return np.stack(cols, axis=-1)

    def _near_kink(self, R, c):
        """Clip of the mean at small B: where the shift 2 B R z crosses a = c^2 B^2 (everything
        clipped beyond), the factors have a kink of order B / 2 - 1 in R and z (chi^2_B density
        ~ x^(B/2 - 1) at 0) that no spline or polynomial resolves (1e-4 at B = 2): evaluate
        directly within a decade of it."""
        if not (self.shifted and self.B < 8 and math.isfinite(c)):
            return False
        rz = 0.5 * c * c * self.B  # R z at the kink
        return 0.1 * rz / self.z_range[1] <= R <= 10.0 * rz / self.z_range[0]

    def factors(self, t, R, G, with_kap=False):
        """(gamma_eff, mu, nu_eff, kap, c) at time t, risk R and G = ||K e||^2."""
        if not R <= 1e140:  # far past any divergence level: the factors' domain ends at 1e150
            raise OverflowError(t)
        c = self._clip_of(t, R)
        z = (self.B + 1) * G / (2.0 * self.D * R) if (self.shifted and R > 0) else self.z_nodes[0]
        z = min(max(z, self.z_range[0]), self.z_range[1])
        mu = nu = None
        kap = math.nan
        if self.table is not None and R > 0 and not self._near_kink(R, c):
            vals = np.asarray(self.table.scalar(R))
            if np.all(np.isfinite(vals)):
                if self.shifted:
                    v = vals.reshape(-1, 2)
                    log_mu, log_nu = _barycentric(self.z_nodes, self.z_weights, v, z)
                else:
                    log_mu, log_nu = vals[:2]
                    kap = vals[2] if self.need_kap else math.nan
                mu, nu = math.exp(log_mu), math.exp(log_nu)
        if mu is None:  # R = 0, an unclipped step, or factors that vanish: evaluate directly
            m, n, k = self._raw(R, c, z, with_kap)
            mu, nu, kap = float(m), float(n), float(k)
        if with_kap and math.isnan(kap) and not self.shifted:
            kap = float(self._raw(R, c, z, True)[2])
        lr = self.lr_at(t)
        if self.risk_clip and self.clip.compensate:
            lr = lr / mu
        return lr, mu, nu, kap, c

    # --- state, ODE terms, map --------------------------------------------------------------
    def state0(self) -> dict:
        return {"y": 0.5 * self.lam * self.e0 * self.e0}

    @staticmethod
    def observe(state) -> dict:
        """Recorded statistics of a state (works on (d,) or (d, n_times) arrays)."""
        return {"risk": state["y"].sum(axis=0)}

    def _stats(self, y):
        """R = sum y and, where the factors use it (clip of the mean), G = ||K e||^2."""
        R = float(y.sum())
        G = 2.0 * float(np.dot(self.lam, y)) if self.shifted else math.nan
        return R, G

    def second_order_coef(self, mu, kap, c):
        if self.shifted and math.isfinite(c):
            return mu * mu
        return mu * mu * (self.B - 1) / self.B + kap / self.B

    def rates(self, t, state, *, R=None, G=None):
        """dy/dt = drift + noise (+ second order): SPEC 4, 8A.3, 8B.3."""
        y = state["y"]
        if R is None:
            R, G = self._stats(y)
        g, mu, nu, kap, c = self.factors(t, max(R, 0.0), G, with_kap=self.second_order)
        if not (math.isfinite(nu) and math.isfinite(g)):
            raise OverflowError(t)
        lam = self.lam
        dy = -2.0 * g * mu * lam * y + g * g * nu * self._lam2_half_D  # drift + noise
        if self.second_order:
            dy = dy + (g * g / self.D) * self.second_order_coef(mu, kap, c) * lam * lam * y
        return {"y": dy}

    def map_step(self, k, state):
        """E[v] one step ahead (SPEC 8A.2 / 8B.3), step k at time k / D."""
        y = state["y"]
        R, G = self._stats(y)
        g, mu, nu, kap, c = self.factors(k / self.D, max(R, 0.0), G, with_kap=True)
        if not (math.isfinite(nu) and math.isfinite(g)):
            raise OverflowError(k)
        eta_lam = (g / self.D) * self.lam
        y_next = (1.0 - eta_lam * mu) ** 2 * y + 0.5 * eta_lam * eta_lam * nu
        if not (self.shifted and math.isfinite(c)):
            y_next = y_next + eta_lam * eta_lam * y * (kap - mu * mu) / self.B
        return {"y": y_next}

    def h_bound(self, t_end: float) -> float:
        """max over the horizon of gamma lambda_max / D >= h = eta mu lambda_max."""
        if self.lr_const is not None:
            lr_max = self.lr_const
        else:
            lr_max = float(time_schedule_values("lr", self.lr, np.linspace(0.0, t_end, 257)).max())
        return lr_max * float(self.lam.max()) / self.D

    def paths(self, t, risk):
        """Effective learning rate and clip along a solved path (NaN where the risk is infinite)."""
        ok = np.isfinite(risk)
        lr_path = np.full(t.shape, np.nan)
        clip_path = np.full(t.shape, np.nan)
        if not ok.any():
            return lr_path, clip_path
        tt, R = t[ok], risk[ok]
        lr_path[ok] = time_schedule_values("lr", self.lr, tt)
        if self.risk_clip:
            c = self.clip.clip(R)
            if self.clip.compensate:
                if self.shifted:
                    mu = self._raw(R, c, np.full(R.shape, self.z_nodes[0]), False)[0]
                else:
                    mu = reduction_factors(self.noise, R, c)[0]
                lr_path[ok] /= mu
        else:
            c = time_schedule_values("clip", self.clip, tt, allow_inf=True, allow_none=True)
        clip_path[ok] = c
        return lr_path, clip_path

    # --- SDE -----------------------------------------------------------------------------------
    def sde_factors(self, R, c, z):
        """(mu, nu_eff) of the homogenized SDE at arrays R, c, z (z ignored unless shifted)."""
        mu, nu, _ = self._raw(R, c, z, False)
        return mu, nu
