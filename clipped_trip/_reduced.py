"""Exact reduced simulation for spectra with few distinct eigenvalues (SPEC section 7).

For m distinct eigenvalues lambda_j with multiplicities d_j, the block norms n_j = ||e_j||^2 form an
exact Markov chain. Per step, per block: xi_j ~ N(0, 1) (the component of z_j along e_j) and
chi_j ~ chi^2_{d_j - 1} (the rest of ||z_j||^2); then

    <a, e>  = sum_j sqrt(lambda_j) sqrt(n_j) xi_j,    ||a||^2 = sum_j lambda_j (xi_j^2 + chi_j)
    w = <a, e> - eps,   h = (gamma / D) * clipfactor(|w| ||a||, c sqrt(D)) * w
    n_j <- n_j - 2 h sqrt(lambda_j) sqrt(n_j) xi_j + h^2 lambda_j (xi_j^2 + chi_j)

O(m) per step instead of O(d), identical in distribution to :func:`simulate`. It always runs in
float64: at d = 10^7 the per-step change of n_j is ~1e-7 relative, below float32 resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._clipped_sgd import clipped_step
from ._engine import (
    SliceClock,
    check_memory,
    check_run_args,
    check_work,
    chunk_items,
    record_grid,
    run_keys,
    step_table,
)
from ._noise import NoiseLaw
from ._problem import Problem
from ._random import gamma_sample
from ._results import RiskPaths, mark_divergence
from ._schedules import is_constant

__all__ = ["ReducedProblem", "simulate_reduced"]


@dataclass(frozen=True, eq=False)
class ReducedProblem:
    """Distinct eigenvalues, their multiplicities and the initial squared error norm per block."""

    eigenvalues: np.ndarray
    multiplicities: np.ndarray
    initial_sq_norms: np.ndarray
    noise: NoiseLaw

    def __post_init__(self):
        lam = V.vector("eigenvalues", self.eigenvalues, nonneg=True)
        mult = np.asarray(self.multiplicities)
        if mult.shape != lam.shape or np.any(mult < 1) or np.any(mult != np.round(mult)):
            raise ValueError("multiplicities must be integers >= 1, one per eigenvalue")
        object.__setattr__(self, "eigenvalues", lam)
        object.__setattr__(self, "multiplicities", mult.astype(np.int64))
        object.__setattr__(
            self,
            "initial_sq_norms",
            V.vector("initial_sq_norms", self.initial_sq_norms, length=lam.size, nonneg=True),
        )
        if not isinstance(self.noise, NoiseLaw):
            raise ValueError(f"noise must be a NoiseLaw, got {self.noise!r}")

    @property
    def d(self) -> int:
        return int(self.multiplicities.sum())

    @property
    def D(self) -> float:
        return float(np.dot(self.multiplicities, self.eigenvalues))

    @property
    def initial_risk(self) -> float:
        return 0.5 * float(np.dot(self.eigenvalues, self.initial_sq_norms))

    @classmethod
    def from_problem(cls, problem: Problem) -> "ReducedProblem":
        """Group equal eigenvalues of a full :class:`Problem` (exactly equal values)."""
        lam, inverse, counts = np.unique(
            problem.eigenvalues, return_inverse=True, return_counts=True
        )
        e = problem.initial_error
        return cls(lam, counts, np.bincount(inverse, weights=e * e), problem.noise)

    @classmethod
    def isotropic(cls, d: int, noise, initial_risk: float = 0.5) -> "ReducedProblem":
        d = V.count("d", d)
        return cls(
            np.ones(1),
            np.array([d]),
            np.array([2 * V.positive("initial_risk", initial_risk)]),
            noise,
        )

    @classmethod
    def two_level(cls, d: int, noise, *, high=1.0, low=0.1, fraction=0.5) -> "ReducedProblem":
        """Same spectrum and x0 = ones / sqrt(d), x* = 0 as ``Problem.two_level``."""
        d = V.count("d", d)
        n_high = int(round(V.real("fraction", fraction, lo=0, hi=1) * d))
        blocks = [(high, n_high), (low, d - n_high)]
        blocks = [(lam, n) for lam, n in blocks if n > 0]
        lam = np.array([b[0] for b in blocks], dtype=np.float64)
        mult = np.array([b[1] for b in blocks])
        return cls(lam, mult, mult / d, noise)

    def to_problem(self) -> Problem:
        """The full problem (for small d): equal components inside each block."""
        lam = np.repeat(self.eigenvalues, self.multiplicities)
        x0 = np.repeat(np.sqrt(self.initial_sq_norms / self.multiplicities), self.multiplicities)
        return Problem(lam, x0, np.zeros_like(x0), self.noise, name="expanded")


_BLOCK = 32768  # steps whose random numbers are drawn together (fixed: part of the stream);
# large blocks amortise the per-call cost of jax.random on CPU (2048: 240 ns/step, 32768: 105)


@partial(jax.jit, static_argnames=("noise",))
def _reduced_slice(
    lam,
    sqrt_lam,
    chi_df,
    n0,
    inv_D,
    sqrt_D,
    lr_tab,
    clip_tab,
    keys,
    rec_steps,
    n_steps,
    noise,
    carry,
    b0,
    b1,
):  # b0, b1 traced: a new T or slice does not recompile
    """Blocks b0 .. b1 - 1 of one chunk of runs (lr_tab, clip_tab, keys: one row per run; carry:
    (n (chunk, m), out (chunk, n_rec))). Block-norm chain; random numbers drawn per block of
    _BLOCK steps (vectorised), then a sequential scan does the arithmetic; risks recorded after
    the steps listed in rec_steps. Slicing the blocks does not change a bit."""
    m = lam.shape[0]
    n_lr, n_clip = lr_tab.shape[1], clip_tab.shape[1]
    half_df = jnp.maximum(chi_df, 1.0) / 2

    def one_run(lr_row, clip_row, key, carry):

        def risk_of(n):
            return 0.5 * jnp.dot(lam, n)

        def block(b, carry):
            kx, kc, ke = jax.random.split(jax.random.fold_in(key, b), 3)
            # random numbers in float32 (their rounding is far below their spread); the chain
            # itself in float64
            xi = jax.random.normal(kx, (_BLOCK, m), jnp.float32).astype(jnp.float64)
            chi = jnp.where(chi_df > 0, 2.0 * gamma_sample(kc, half_df, (_BLOCK, m)), 0.0)
            eps = noise.sample(ke, (_BLOCK,), jnp.float32).astype(jnp.float64)

            def step(n, inputs):
                i, x, ch, e = inputs
                k = b * _BLOCK + i
                root_n = jnp.sqrt(jnp.maximum(n, 0.0))
                w = jnp.dot(sqrt_lam * root_n, x) - e
                block_sq = lam * (x * x + ch)
                g_norm = jnp.abs(w) * jnp.sqrt(jnp.sum(block_sq))
                lr = lr_row[0] if n_lr == 1 else lr_row[jnp.minimum(k, n_lr - 1)]
                c = clip_row[0] if n_clip == 1 else clip_row[jnp.minimum(k, n_clip - 1)]
                h = clipped_step(w, g_norm, lr, c, inv_D, sqrt_D)
                h = jnp.where(k < n_steps, h, 0.0)  # steps past the horizon do nothing
                n = n - 2.0 * h * sqrt_lam * root_n * x + h * h * block_sq
                return n, risk_of(n)

            n, out = carry
            n, risks = jax.lax.scan(step, n, (jnp.arange(_BLOCK), xi, chi, eps))
            # records after step k = rec - 1 that fall in this block (no per-step scatter)
            idx = rec_steps - 1 - b * _BLOCK
            inside = (idx >= 0) & (idx < _BLOCK)
            out = jnp.where(inside, risks[jnp.clip(idx, 0, _BLOCK - 1)], out)
            return n, out

        return jax.lax.fori_loop(b0, b1, block, carry)

    return jax.vmap(one_run)(lr_tab, clip_tab, keys, carry)


def _reduced_init(lam, n0, rec_steps, chunk):
    out = jnp.where(rec_steps == 0, 0.5 * jnp.dot(lam, n0), jnp.nan)
    return jnp.broadcast_to(n0, (chunk,) + n0.shape), jnp.broadcast_to(out, (chunk,) + out.shape)


def simulate_reduced(
    problem: ReducedProblem,
    lr,
    clip=None,
    T=None,
    runs: int = 16,
    seed: int = 0,
    times=None,
    *,
    n_records: int = 101,
    first_run: int = 0,
    divergence_threshold=None,
    run_chunk: int | None = None,
    progress=None,
    max_work=None,
) -> RiskPaths:
    """Clipped SGD on a spectrum with few distinct eigenvalues, O(m) per step (float64).

    Same arguments and result as :func:`simulate` (divergence rule, ``progress``, ``max_work``
    counted as runs x steps x blocks, memory check, Ctrl-C within about a second); same law, not
    the same random stream.

    References: SPEC section 7 (exact block-norm Markov chain).
    """
    runs, first_run, threshold = check_run_args(
        problem, ReducedProblem, runs, first_run, divergence_threshold
    )
    chunk = V.count("run_chunk", run_chunk or 16)  # O(m) state: the random blocks dominate
    D = problem.D
    t, steps, n_steps = record_grid(D, T, times, n_records)
    n_items = -(-runs // chunk) * chunk
    knots = 1 if (is_constant(lr) and is_constant(clip)) else n_steps
    m = problem.eigenvalues.size
    check_memory(
        "simulate_reduced",
        {
            "records (padded runs x records)": 5.0 * 8 * n_items * t.size,
            "random blocks (chunk x 32768 x blocks)": 6.0 * 8 * chunk * _BLOCK * m,
            "schedule tables (steps)": 8.0 * 4 * knots,
        },
        "runs, n_records, T or run_chunk",
    )
    check_work("simulate_reduced", float(n_items) * n_steps * m, max_work, "runs or T")
    lr_tab = step_table("lr", lr, n_steps, D, False)[None, :]
    clip_tab = step_table("clip", clip, n_steps, D, True)[None, :]
    rec_steps, where_rec = np.unique(steps, return_inverse=True)
    n_blocks = max(1, -(-n_steps // _BLOCK))
    lam = problem.eigenvalues
    with jax.enable_x64(True):
        f = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        consts = (
            f(lam),
            f(np.sqrt(lam)),
            f(problem.multiplicities - 1),
            f(problem.initial_sq_norms),
            f(1.0 / D),
            f(math.sqrt(D)),
        )
        keys = run_keys(seed, first_run, runs)
        cell_of, run_of = chunk_items(1, runs, chunk)
        rec = jnp.asarray(rec_steps, jnp.int64)
        n_steps_ = jnp.asarray(n_steps, jnp.int64)
        lr_d, clip_d = f(lr_tab), f(clip_tab)
        clock = SliceClock(
            len(cell_of) * n_blocks, 110e-9 * _BLOCK * chunk, progress, "simulate_reduced"
        )
        parts = []
        try:
            for ci in range(len(cell_of)):
                carry = _reduced_init(consts[0], consts[3], rec, chunk)
                b = 0
                while b < n_blocks:
                    nb = min(clock.budget(), n_blocks - b)
                    carry = _reduced_slice(
                        *consts,
                        lr_d[cell_of[ci]],
                        clip_d[cell_of[ci]],
                        keys[run_of[ci]],
                        rec,
                        n_steps_,
                        problem.noise,
                        carry,
                        jnp.asarray(b, jnp.int64),
                        jnp.asarray(b + nb, jnp.int64),
                    )
                    jax.block_until_ready(carry)
                    clock.done(nb)
                    b += nb
                parts.append(np.asarray(carry[1], dtype=np.float64))
        finally:
            clock.close()
        risk = np.concatenate(parts, axis=0)[:runs][:, where_rec]
    t = steps / D  # the times actually simulated
    risk, diverged, when = mark_divergence(risk, t, threshold)
    params = {
        "kind": "sgd-reduced",
        "T": float(t[-1]),
        "runs": runs,
        "seed": seed,
        "d": problem.d,
        "D": D,
        "blocks": int(lam.size),
    }
    if not math.isfinite(problem.noise.second_moment):
        unclipped = np.flatnonzero(np.isinf(clip_tab[0]))
        if unclipped.size:
            params["infinite_mean_from"] = float(unclipped[0] / D) if clip_tab.size > 1 else 0.0
    return RiskPaths(t, risk, diverged, when, params)
