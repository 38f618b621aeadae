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

__all__ = ["ClippedSGD", "clipped_step", "privacy_variance", "CLIP_MODES", "BiasEquivalent"]

CLIP_MODES = ("per-example", "mean")


def _shift_nodes(z_range):
    """Chebyshev nodes in the shift variable z: the factors are analytic in z and vary on the
    scale z ~ 1 (the shift is 2 B R z against W ~ B (2R + E eps^2)), so a narrow range needs few."""
    width = z_range[1] - z_range[0]
    return 4 if width <= 0.05 else 6 if width <= 0.3 else 10


def privacy_variance(lr, noise_multiplier, clip, batch):
    """gamma^2 sigma^2 c^2 / (2 B^2): what DP-SGD's Gaussian mechanism adds to dv_i/dt, for
    every coordinate whatever lambda_i (SPEC 9.1; in the map, times 1/D per step)."""
    return lr * lr * noise_multiplier**2 * clip * clip / (2.0 * batch * batch)


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
    """Static part of :class:`ClippedSGD` / :class:`DPSGD` (part of the compiled program).

    ``perturbed``: each example's gradient gets k zeta (zeta ~ N(0, I_d), k = sched
    "perturbation") before clipping (SPEC 10); ``private``: the clipped sum gets
    sigma C xi (sigma = sched "noise_multiplier", C = c sqrt(D)) before the division by B
    (DP-SGD, SPEC 9). Non-centred data (``"mean"`` in the model, SPEC 10): a = m + sqrt(lambda) z.
    With none of these the program is v0.1's (bit for bit at B = 1).
    """

    batch: int
    clip_mode: str
    perturbed: bool = False
    private: bool = False

    def init_state(self, model, sched0):
        return ()

    def _data(self, model, key, shape, dtype):
        a = model["sqrt_lam"] * jax.random.normal(key, shape, dtype)
        return a + model["mean"] if "mean" in model else a

    def step(self, noise, model, sched, key, e, state):
        clip = sched["clip"]
        e, _, _ = self.update(noise, model, sched, key, e, lambda norms: clip)
        return e, state

    def update(self, noise, model, sched, key, e, threshold):
        """One step with the threshold ``threshold(norms)`` (c in residual units), given this
        step's gradient norms in residual units ||g_j|| / sqrt(D) (scalar at B = 1, (B,)
        otherwise; the norm of the mean gradient for clip of the mean). Returns (e, norms, c):
        adaptive rules (quantile tracking, AutoClip) update their state from them.
        """
        lr = sched["lr"]
        inv_D, sqrt_D = model["inv_D"], model["sqrt_D"]
        kz, ke = jax.random.split(key)
        d = e.shape[0]
        B = self.batch
        if self.perturbed or self.private:  # extra streams only where used: v0.1 keys unchanged
            kp, kq = jax.random.split(jax.random.fold_in(key, 1))
        if B == 1 and not self.perturbed:
            a = self._data(model, kz, (d,), e.dtype)
            w = jnp.dot(a, e) - noise.sample(ke, (), e.dtype)
            g_norm = jnp.abs(w) * jnp.sqrt(jnp.dot(a, a))
            c = threshold(g_norm * inv_D * sqrt_D)
            e = e - clipped_step(w, g_norm, lr, c, inv_D, sqrt_D) * a
        else:
            A = self._data(model, kz, (B, d), e.dtype)  # the only B x d block
            w = A @ e - noise.sample(ke, (B,), e.dtype)
            if self.clip_mode == "mean":
                m = (w @ A) / B  # mean gradient
                g_norm = jnp.sqrt(jnp.dot(m, m))
                c = threshold(g_norm * inv_D * sqrt_D)
                e = e - lr * inv_D * clip_factor(g_norm, c * sqrt_D) * m
            elif self.perturbed:  # clip(w_j a_j + k zeta_j): the step is along g_j itself
                G = w[:, None] * A + sched["perturbation"] * jax.random.normal(kp, (B, d), e.dtype)
                g_norm = jnp.sqrt(jnp.sum(G * G, axis=1))
                c = threshold(g_norm * inv_D * sqrt_D)
                h = clipped_step(jnp.ones_like(w), g_norm, lr, c, inv_D, sqrt_D) / B
                e = e - h @ G
            else:
                g_norm = jnp.abs(w) * jnp.sqrt(jnp.sum(A * A, axis=1))
                c = threshold(g_norm * inv_D * sqrt_D)
                h = clipped_step(w, g_norm, lr, c, inv_D, sqrt_D) / B
                e = e - h @ A
        if self.private:  # Gaussian mechanism on the clipped sum: std sigma C, then / B
            xi = jax.random.normal(kq, (d,), e.dtype)
            e = e - (lr * inv_D * sched["noise_multiplier"] * c * sqrt_D / B) * xi
        return e, g_norm * inv_D * sqrt_D, c

    def records(self, model, e, state):
        return risk_records(model, e)


def risk_records(model, e) -> dict:
    """The recorded statistics of an error e: the risk R = e^T K e / 2 and, for non-centred data,
    the bias <m, e> and the population risk R + <m, e>^2 / 2 (SPEC 10)."""
    r = model["sqrt_lam"] * e
    risk = 0.5 * jnp.dot(r, r)
    if "mean" not in model:
        return {"risk": risk}
    bias = jnp.dot(model["mean"], e)
    return {"risk": risk, "bias": bias, "population_risk": risk + 0.5 * bias * bias}


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
    perturbation: float = 0.0
    sweep_axes: tuple = field(default=("lr", "clip"), init=False, repr=False)

    def __init__(self, lr, clip=None, *, batch=1, clip_mode="per-example", perturbation=0.0):
        object.__setattr__(self, "lr", _check_schedule("lr", lr, False))
        object.__setattr__(self, "clip", _check_schedule("clip", clip, True))
        object.__setattr__(self, "batch", V.count("batch", batch))
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {', '.join(CLIP_MODES)}, got {clip_mode!r}")
        object.__setattr__(self, "clip_mode", clip_mode)
        k = V.nonnegative("perturbation", perturbation)
        if k > 0 and clip_mode == "mean" and self.batch > 1:
            raise ValueError(
                "perturbation: Chen-Wu-Hong's fix perturbs each example's gradient before its "
                "clipping; use clip_mode='per-example' (or batch=1)"
            )
        if k > 0 and isinstance(self.clip, RiskSchedule):
            raise ValueError("perturbation: takes a clip that is a number or a time schedule")
        object.__setattr__(self, "perturbation", k)
        object.__setattr__(self, "sweep_axes", ("lr", "clip"))

    def replace(self, **changes) -> "ClippedSGD":
        kw = dict(
            lr=self.lr,
            clip=self.clip,
            batch=self.batch,
            clip_mode=self.clip_mode,
            perturbation=self.perturbation,
        )
        kw.update(changes)
        return ClippedSGD(kw.pop("lr"), kw.pop("clip"), **kw)

    def kernel(self):
        perturbed = self.perturbation > 0
        mode = "per-example" if (perturbed and self.batch == 1) else self.clip_mode
        return ClippedSGDKernel(self.batch, mode, perturbed=perturbed)

    def samples_per_step(self) -> int:
        return self.batch

    def step_tables(self, n_steps, D):
        tables = {
            "lr": step_table("lr", self.lr, n_steps, D, False),
            "clip": step_table("clip", self.clip, n_steps, D, True),
        }
        if self.perturbation > 0:
            tables["perturbation"] = np.array([self.perturbation])
        return tables

    def describe(self) -> dict:
        desc = {
            "algorithm": "ClippedSGD",
            "lr": describe_schedule(self.lr),
            "clip": describe_schedule(self.clip),
            "batch": self.batch,
            "clip_mode": self.clip_mode,
        }
        if self.perturbation > 0:
            desc["perturbation"] = self.perturbation
        return desc

    def deterministic(
        self, problem, *, use_table=True, second_order=False, for_map=False, cache=None
    ):
        if problem.data_mean is not None or self.perturbation > 0:
            return BiasEquivalent(self, problem, second_order, for_map)
        return ClippedSGDEquivalent(self, problem, use_table, second_order, for_map, cache)

    def __repr__(self):
        extra = f", perturbation={self.perturbation!r}" if self.perturbation > 0 else ""
        return (
            f"ClippedSGD(lr={describe_schedule(self.lr)!r}, clip={describe_schedule(self.clip)!r}, "
            f"batch={self.batch}, clip_mode={self.clip_mode!r}{extra})"
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
        # DP-SGD (SPEC 9): the Gaussian mechanism adds sigma^2 c^2 D / B^2 to E[u_i^2]
        self.sigma_dp = float(getattr(alg, "noise_multiplier", 0.0))
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
        if self.sigma_dp > 0:  # SPEC 9.1: dv_i/dt += gamma^2 sigma^2 c^2 / (2 B^2)
            dy = dy + lam * privacy_variance(g, self.sigma_dp, c, self.B)
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
        if self.sigma_dp > 0:  # SPEC 9.1 map: v_i' += eta^2 sigma^2 c^2 D / (2 B^2)
            y_next = y_next + self.lam * privacy_variance(g, self.sigma_dp, c, self.B) / self.D
        return {"y": y_next}

    def h_bound(self, t_end: float, with_mu: bool = False) -> float:
        """gamma_max lambda_max / D over the horizon: an upper bound of h = eta mu lambda_max
        (SPEC 8A.4), used to choose the map (kept without mu: at the 0.05 threshold the ODE is
        off by ~h, and the map is the better equivalent there). ``with_mu``: times the largest
        mu of a constant finite clip (per-example / batch 1: mu_c(R) over R in [0, 4 R0], plus
        1e-3), the stiffness that sets the solver's work (DP-SGD's c -> 0 regime)."""
        if self.lr_const is not None:
            lr_max = self.lr_const
        else:
            lr_max = float(time_schedule_values("lr", self.lr, np.linspace(0.0, t_end, 257)).max())
        mu_max = 1.0
        c = self.clip_const
        if with_mu and c is not None and math.isfinite(c) and not self.shifted:
            R0 = float(np.sum(0.5 * self.lam * self.e0 * self.e0))
            grid = np.concatenate([[0.0], max(R0, 1e-300) * np.logspace(-6, np.log10(4.0), 15)])
            mu_max = min(1.0, float(np.max(reduction_factors(self.noise, grid, c)[0])) + 1e-3)
        return lr_max * mu_max * float(self.lam.max()) / self.D

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


# ---------------------------------------------------------------------------------------------
# non-centred data and the perturbation fix (SPEC 10): the mean error joins the state
# ---------------------------------------------------------------------------------------------
class BiasEquivalent:
    """Deterministic equivalent with a data mean m and/or the perturbation k (SPEC 10).

    State ``{"y": lambda v, "ebar": E e}`` (v_i = E e_i^2 / 2); with w ~ r + N(0, 2R) - eps,
    r = <m, ebar>, delta^2 = k^2 d / D and the factors (mu~, kappa~, nu1~, nu0~) of
    :func:`clipped_trip._bias_factors.bias_factors`:

        d ebar_i / dt = -gamma (lambda_i mu ebar_i + m_i kappa)
        d v_i / dt    = -gamma (2 lambda_i mu v_i + m_i ebar_i kappa)
                        + gamma^2 (lambda_i nu1 + k^2 nu0) / (2 D B)   [+ DP: SPEC 9.1]

    Recorded: ``risk`` R = sum y, ``bias`` r and ``population_risk`` R + r^2 / 2. Per-example
    clipping only (B examples: the noise divided by B, the drift unchanged).

    References: SPEC sections 10 and 13; Chen, Wu, Hong, NeurIPS 2020.
    """

    shifted = False
    bias_sde = True  # simulate_sde runs its own (R, r)-table SDE for this equivalent

    def __init__(self, alg, problem, second_order, for_map):
        from ._bias_factors import bias_factors  # deferred: theory side only

        self._bias_factors = bias_factors
        where = "data_mean / perturbation"
        if second_order:
            raise ValueError(f"second_order: not derived with {where} (SPEC 10); leave it False")
        if for_map:
            raise ValueError(
                f"method='map' is not available with {where}; use the ODE (method='DOP853')"
            )
        if alg.batch > 1 and alg.clip_mode == "mean":
            raise ValueError(
                "data_mean: clip of the mean at batch > 1 has no derived equivalent with "
                "non-centred data; use clip_mode='per-example'"
            )
        if isinstance(alg.clip, RiskSchedule):
            raise ValueError(f"clip: with {where} give a number or a time schedule")
        self.alg = alg
        self.noise = problem.noise
        self.lam = problem.eigenvalues
        self.D, self.d, self.B = problem.D, problem.d, alg.batch
        self.m = np.zeros(self.d) if problem.data_mean is None else np.asarray(problem.data_mean)
        self.k = float(getattr(alg, "perturbation", 0.0))
        self.delta = self.k * math.sqrt(self.d / self.D)  # SPEC 10: delta^2 = k^2 d / D
        self.clip_const = None  # h_bound: mu not bounded here (mu~ of SPEC 10 differs)
        self.sigma_dp = float(getattr(alg, "noise_multiplier", 0.0))
        self.lr, self.clip = alg.lr, alg.clip
        self.e0 = problem.initial_error
        self.lr_const = (
            time_schedule_values("lr", self.lr, np.zeros(1))[0] if is_constant(self.lr) else None
        )

    lr_at = ClippedSGDEquivalent.lr_at
    h_bound = ClippedSGDEquivalent.h_bound

    def clip_at(self, t):
        return float(
            time_schedule_values("clip", self.clip, np.array([t]), allow_inf=True, allow_none=True)[
                0
            ]
        )

    def state0(self) -> dict:
        return {"y": 0.5 * self.lam * self.e0 * self.e0, "ebar": np.array(self.e0, np.float64)}

    def observe(self, state) -> dict:
        R = state["y"].sum(axis=0)
        r = self.m @ state["ebar"]
        return {"risk": R, "bias": r, "population_risk": R + 0.5 * r * r}

    def factors(self, t, R, r):
        """(gamma, mu, kappa, nu1, nu0, c) at time t, risk R and bias r."""
        if not (R <= 1e140 and abs(r) <= 1e70):
            raise OverflowError(t)
        c = self.clip_at(t)
        mu, kap, nu1, nu0 = (
            float(x) for x in self._bias_factors(self.noise, r, max(R, 0.0), c, self.delta)
        )
        return self.lr_at(t), mu, kap, nu1, nu0, c

    def rates(self, t, state):
        y, eb = state["y"], state["ebar"]
        R, r = float(y.sum()), float(self.m @ eb)
        g, mu, kap, nu1, nu0, c = self.factors(t, R, r)
        if not (math.isfinite(nu1) and math.isfinite(g)):
            raise OverflowError(t)
        lam, m = self.lam, self.m
        d_eb = -g * (lam * mu * eb + m * kap)
        noise = g * g * lam * (lam * nu1 + self.k * self.k * nu0) / (2.0 * self.D * self.B)
        dy = -g * (2.0 * lam * mu * y + lam * m * eb * kap) + noise
        if self.sigma_dp > 0:
            dy = dy + lam * privacy_variance(g, self.sigma_dp, c, self.B)
        return {"y": dy, "ebar": d_eb}

    def paths(self, t, risk):
        lr_path = time_schedule_values("lr", self.lr, t)
        clip_path = time_schedule_values("clip", self.clip, t, allow_inf=True, allow_none=True)
        return lr_path, clip_path
