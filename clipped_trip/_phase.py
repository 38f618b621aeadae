"""ODE phase diagrams: the deterministic equivalent of a whole grid of cells in one program.

``phase_diagram(problem, ClippedSGD, axes={"lr": [...], "clip": [...]}, T=...)`` solves the risk
ODE of SPEC sections 4, 8A.3 and 9.1 for every cell of the grid (constant learning rate, clip,
batch and noise multiplier per cell) and returns the final risk, the time to reach a target risk,
divergence, and on request the risk curves, shaped by the axes.

Equations. In y_i = lambda_i v_i (R = sum_i y_i; equal eigenvalues grouped, multiplicity n_i):

    dy_i/dt = -2 gamma mu(R) lambda_i y_i + n_i lambda_i^2 gamma^2 nu(R) / (2 B D)
              + n_i lambda_i gamma^2 sigma^2 c^2 / (2 B^2)                     (DP-SGD, SPEC 9.1)

With the intrinsic time tau = int_0^t gamma mu(R) ds the linear part becomes -2 lambda_i, the same
for every cell:

    dy_i/dtau = -2 lambda_i y_i + n_i lambda_i^2 a(R) + n_i lambda_i b(R),   dt/dtau = g(R)
    a = gamma nu / (2 B D mu),   b = gamma sigma^2 c^2 / (2 B^2 mu),   g = 1 / (gamma mu)

so the cell enters only through three scalar functions of R.

Method: exponential collocation on the q + 1 Chebyshev-Lobatto nodes theta_j of each step
(default q = 12), one step size h in tau shared by the cells of a chunk, so that the step's
exponentials and weights are computed once: with the forcing interpolated at the nodes,
y(tau_n + theta h) = e^{-2 lambda theta h} y + the integral of e^{-2 lambda (theta h - s)} times the
interpolant, exactly. The node risks solve a q x q system per cell (simplified Newton, Jacobian
and LU once per step, vectorised over the cells); the only O(d) work per step is two products of
the (d x cells) state with (d x (q + 1)) matrices. The linear part is exact at any step size (no
stiffness limit: steps are bounded only by 2 lambda_max h <= 40, where the weights' quadrature
is exact); the error is that of interpolating smooth scalar functions of tau, of order q + 1
(odd q) or q + 2 (even q): the degree of the interpolatory (Clenshaw-Curtis) quadrature on the
nodes, plus one (tested at q = 4: 6). The step is controlled from the last two Chebyshev
coefficients of the node values of R, a, b and g (relative ``rtol``, default 1e-10). Risk and
time are polynomials in theta on each step (dense output): records at any t, and the first time
the risk reaches a target, come from them.

Factors: per (noise law, clip) a table of log mu and log nu in x = log R, built from
:func:`reduction_factors` (one vectorised call per round for all tables of a law) as adaptive
Chebyshev pieces (12, 24 or 48 nodes, halved until the last three coefficients are below 1e-10),
then resampled to degree-7 polynomials on a uniform grid of 8 pieces per decade (Horner in JAX,
no search; tested against direct evaluation to 1e-8, measured ~1e-10). Range, per table:
rigorous bounds on every path up to T (the forcing is >= 0 and mu <= 1, so R >= sum_i y_i(0)
e^{-2 lambda_i gamma t}; the drift is <= 0 and nu <= c^2, so R <= R0 + T gamma^2 c^2 (...)),
a decade to spare, capped by 1e-10 min(c^2, noise scale^2) below (where the factors have reached
their R -> 0 limits) and 100 L above. The lower end is first taken optimistically (a tenth of
min(R0, the stationary risk at the table's smallest lr)); cells whose path went lower are solved
again with their table extended down to the rigorous bound. Beyond a table: below, the R -> 0
limits (log mu and log nu constant, log nu of slope 1 for a noise-free law); above, linear in x
with the end slopes (mu ~ R^-1/2, nu -> c^2). Unclipped cells use mu = 1, nu = 2R + E eps^2.

Divergence: a cell is stopped when its risk passes 10 L (L = the divergence level of
:func:`divergence_limit`, per noise law); its records from there on are +inf, and the records are
then marked by :func:`mark_divergence` (the rule shared with every simulator): never NaN. Above L
a path is not error-controlled (it is on its way to being marked). Unclipped cells under noise of
infinite variance diverge at t = 0+.

Compiled programs are cached per shape; shapes are padded (state to a multiple of 32 and >= 64,
tables to >= 8 and a power of two, 256 + pieces, records to >= 8, cells to chunks of a power of
two) so that grids of similar size reuse them.

References: SPEC sections 3, 4, 8A.3 and 9.1; arXiv 2406.11733 (the ODE); Hochbruck & Ostermann,
"Exponential integrators", Acta Numerica 2010 (exponential collocation).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _validate as V
from ._factors import reduction_factors
from ._noise import NoiseLaw
from ._problem import Problem
from ._results import divergence_limit, mark_divergence, risk_scale

__all__ = ["phase_diagram", "PhaseDiagram", "FactorTables"]

_LN10 = math.log(10.0)
AXES = ("noise", "lr", "clip", "batch", "noise_multiplier")

# ---------------------------------------------------------------------------------------------
# factor tables: log mu and log nu against x = log R, per (noise law, clip)
# ---------------------------------------------------------------------------------------------
_FINE_PER_DECADE = 8  # uniform pieces per decade of R ...
_FINE_DEG = 7  # ... each a degree-7 polynomial
_CHEB_TOL = 1e-10  # adaptive pieces: the last three Chebyshev coefficients below this
_CHEB_N0, _CHEB_NMAX = 12, 48
_INIT_DECADES = 4.0  # first guess of the adaptive pieces' width
_MAX_SPLITS = 40  # rounds of the adaptive build (each halves the failing pieces)


def _cheb_coeffs(vals):
    """Chebyshev coefficients from values at cos(pi k / n), k = 0..n (last axis; DCT-I)."""
    n = vals.shape[-1] - 1
    ext = np.concatenate([vals, vals[..., -2:0:-1]], axis=-1)
    c = np.real(np.fft.fft(ext, axis=-1))[..., : n + 1] / n
    c[..., 0] /= 2
    c[..., -1] /= 2
    return c


def _noise_scale2(noise: NoiseLaw) -> float:
    """The noise's squared scale: E eps^2, or scale^2 for laws of infinite variance (0: none)."""
    m2 = float(noise.second_moment)
    if math.isfinite(m2):
        return m2
    return risk_scale(0.0, noise)


def _adaptive_pieces(noise, clips, x_lo, x_hi):
    """Adaptive Chebyshev approximations of (log mu, log nu) on [x_lo[k], x_hi[k]] per clip.

    Returns a list per table of pieces (a, b, coef (2, n + 1)) and the number of factor
    evaluations. One :func:`reduction_factors` call per round, over every pending piece.
    """
    pending = []  # [table, a, b, n, values (2, n + 1) or None]
    for k in range(len(clips)):
        m = max(1, int(math.ceil((x_hi[k] - x_lo[k]) / (_INIT_DECADES * _LN10))))
        edges = np.linspace(x_lo[k], x_hi[k], m + 1)
        pending += [[k, a, b, _CHEB_N0, None] for a, b in zip(edges[:-1], edges[1:])]
    done = [[] for _ in clips]
    evals = 0
    for _ in range(_MAX_SPLITS):
        if not pending:
            break
        xs, cs, idx = [], [], []
        for k, a, b, n, vals in pending:
            j = np.arange(n + 1) if vals is None else np.arange(1, n + 1, 2)
            xs.append(0.5 * (a + b) + 0.5 * (b - a) * np.cos(np.pi * j / n))
            cs.append(np.full(j.size, clips[k]))
            idx.append(j)
        X = np.concatenate(xs)
        mu, nu = reduction_factors(noise, np.exp(X), np.concatenate(cs))
        evals += X.size
        with np.errstate(divide="ignore"):
            lm, ln = np.log(mu), np.log(nu)
        new, off = [], 0
        for (k, a, b, n, vals), j in zip(pending, idx):
            v = np.empty((2, n + 1))
            if vals is not None:
                v[:, ::2] = vals
            v[0, j], v[1, j] = lm[off : off + j.size], ln[off : off + j.size]
            off += j.size
            if not np.all(np.isfinite(v)):
                raise ValueError(
                    f"clip: the reduction factors vanish or overflow at clip {clips[k]:.6g} "
                    f"for R in [{math.exp(a):.3g}, {math.exp(b):.3g}]; use a larger clip"
                )
            coef = _cheb_coeffs(v)
            if np.abs(coef[:, -3:]).max() <= _CHEB_TOL or b - a < 1e-3:
                done[k].append((a, b, coef))
            elif n < _CHEB_NMAX:
                new.append([k, a, b, 2 * n, v])
            else:
                mid = 0.5 * (a + b)
                new += [[k, a, mid, _CHEB_N0, None], [k, mid, b, _CHEB_N0, None]]
        pending = new
    if pending:  # pragma: no cover - the factors are analytic in log R: never seen
        raise RuntimeError("phase_diagram: the factor tables did not converge")
    return [sorted(p, key=lambda z: z[0]) for p in done], evals


def _cheb_der(coef):
    """Coefficients of the derivative (in u) of Chebyshev series along the last axis."""
    n = coef.shape[-1]
    der = np.zeros_like(coef)
    for k in range(n - 1, 0, -1):
        der[..., k - 1] = (der[..., k + 1] if k + 1 < n else 0.0) + 2.0 * k * coef[..., k]
    der[..., 0] *= 0.5
    return der


def _eval_pieces(tables, which, x, deriv=False):
    """Evaluate adaptive pieces: table ``which[i]`` (a list of (a, b, coef (2, n + 1))) at x[i]
    (inside its range), vectorised over all points: (2, x.size); ``deriv``: d/dx."""
    ids = sorted(tables)
    pieces = [(t, p) for t in ids for p in tables[t]]
    n_max = max(p[2].shape[1] for _, p in pieces)
    coef = np.zeros((len(pieces), 2, n_max))
    for i, (_, (_a, _b, c)) in enumerate(pieces):
        coef[i, :, : c.shape[1]] = c
    a = np.array([p[0] for _, p in pieces])
    b = np.array([p[1] for _, p in pieces])
    if deriv:
        coef = _cheb_der(coef) * (2.0 / (b - a))[:, None, None]
    # one sorted key for all tables: table * 2000 + x (|x| = |log R| < 1000)
    key = np.array([t for t, _ in pieces], dtype=np.float64) * 2000.0 + a
    k = np.searchsorted(key, np.asarray(which, dtype=np.float64) * 2000.0 + x, side="right") - 1
    u = np.clip((2.0 * x - (a[k] + b[k])) / (b[k] - a[k]), -1.0, 1.0)
    cf = coef[k]  # (m, 2, n_max): Clenshaw over the last axis
    b1 = np.zeros((x.size, 2))
    b2 = np.zeros((x.size, 2))
    for j in range(n_max - 1, 0, -1):
        b1, b2 = cf[:, :, j] + 2.0 * u[:, None] * b1 - b2, b1
    return (cf[:, :, 0] + u[:, None] * b1 - b2).T


class FactorTables:
    """log mu and log nu against x = log R for a list of (noise law, clip) pairs (finite clips),
    as degree-7 polynomials on a uniform grid of 8 pieces per decade, common to all tables.

    ``coef``: (n_tables, n_pieces, 2, 8) monomial coefficients in u in [-1, 1] on each piece
    (x = x0 + (p + (u + 1) / 2) w); beyond the grid each table continues linearly in x with the
    slopes ``slope_lo`` / ``slope_hi`` (n_tables, 2): below, the R -> 0 limits (log mu flat,
    log nu flat, or of slope 1 for a noise-free law), above, the end slopes. ``evals``: factor
    evaluations used; ``seconds``: build time. :meth:`__call__` evaluates in NumPy (for checks),
    :func:`_table_eval` in JAX.
    """

    def __init__(self, pairs, ranges, grid=None):
        t0 = time.perf_counter()
        self.pairs = list(pairs)
        w = _LN10 / _FINE_PER_DECADE
        self.w = w
        self.evals = 0
        if not self.pairs:  # a dummy table (every cell unclipped)
            self.x0, self.n_pieces = 0.0, 256
            self.coef = np.zeros((1, 256, 2, _FINE_DEG + 1))
            self.slope_lo = self.slope_hi = np.zeros((1, 2))
            self.seconds = 0.0
            self.x_lo = self.x_hi = np.zeros(1)
            return
        lo = np.floor(np.array([r[0] for r in ranges]) / w) * w
        hi = np.ceil(np.array([r[1] for r in ranges]) / w) * w
        g_lo, g_hi = (lo.min(), hi.max()) if grid is None else grid
        self.x0 = float(np.floor(min(g_lo, lo.min()) / w) * w)
        n_pieces = int(round((np.ceil(max(g_hi, hi.max()) / w) * w - self.x0) / w))
        # at least 32 decades, a multiple of 16 decades: compiled programs are reused
        self.n_pieces = max(256, -(-n_pieces // 128) * 128)
        self.x_lo, self.x_hi = lo, hi
        self.coef = np.empty((len(self.pairs), self.n_pieces, 2, _FINE_DEG + 1))
        self.slope_lo = np.empty((len(self.pairs), 2))
        self.slope_hi = np.empty((len(self.pairs), 2))
        self._build(np.arange(len(self.pairs)))
        self.seconds = time.perf_counter() - t0

    def _build(self, which):
        """(Re)build the tables ``which`` on their ranges x_lo, x_hi."""
        by_noise = {}
        for k in which:
            by_noise.setdefault(self.pairs[k][0], []).append(int(k))
        for noise, ks in by_noise.items():
            clips = np.array([self.pairs[k][1] for k in ks], dtype=np.float64)
            got, n_ev = _adaptive_pieces(noise, clips, self.x_lo[ks], self.x_hi[ks])
            self.evals += n_ev
            self._fit(ks, got)

    def extend_low(self, which, new_low):
        """Rebuild tables ``which`` accurate down to x = log R = ``new_low`` (per table)."""
        t0 = time.perf_counter()
        which = np.asarray(which, dtype=int)
        self.x_lo[which] = np.minimum(self.x_lo[which], np.floor(new_low / self.w) * self.w)
        self._build(which)
        self.seconds += time.perf_counter() - t0

    def _fit(self, ks, pieces):
        from numpy.polynomial import chebyshev as C

        P, deg = self.n_pieces, _FINE_DEG
        w = self.w
        k = np.arange(deg + 1)
        u_nodes = np.cos(np.pi * (k + 0.5) / (deg + 1))  # first kind: never the piece ends
        # values -> Chebyshev coefficients -> monomials in u
        Tm = np.cos(np.outer(np.arccos(u_nodes), k))  # T_k(u_j)
        to_cheb = np.linalg.inv(Tm)
        to_mono = np.zeros((deg + 1, deg + 1))  # (k, p): T_k(u) = sum_p to_mono[k, p] u^p
        for i in range(deg + 1):
            poly = C.cheb2poly(np.eye(deg + 1)[i])
            to_mono[i, : poly.size] = poly
        fit = to_cheb.T @ to_mono  # values (j) -> monomial coefficients (p)
        centres = self.x0 + (np.arange(P) + 0.5) * w
        X = centres[:, None] + 0.5 * w * u_nodes[None, :]  # (P, deg + 1)
        ks = list(ks)
        src = dict(zip(ks, pieces))
        # below a table (R -> 0) the factors tend to constants, except nu = 2R (1 + o(R^k)) for
        # noise-free laws: log mu flat, log nu flat or of slope 1
        low_slope = np.array(
            [[0.0, 1.0 if self.pairs[t][0].second_moment == 0 else 0.0] for t in ks]
        )
        a, b = self.x_lo[ks], self.x_hi[ks]
        ends = np.stack([a, b], axis=1).ravel()
        owner = np.repeat(ks, 2)
        f_ends = _eval_pieces(src, owner, ends).reshape(2, len(ks), 2)
        s_ends = _eval_pieces(src, owner, ends, deriv=True).reshape(2, len(ks), 2)
        inside = (centres[None, :] > a[:, None]) & (centres[None, :] < b[:, None])  # (t, P)
        ti, pi = np.nonzero(inside)
        xin = X[pi].ravel()
        vin = _eval_pieces(src, np.repeat(np.array(ks)[ti], deg + 1), xin).reshape(2, -1, deg + 1)
        for r, t in enumerate(ks):
            vals = np.empty((2, P, deg + 1))
            vals[:, inside[r], :] = vin[:, ti == r, :]
            below, above = centres < a[r], centres > b[r]
            for f in range(2):
                vals[f, below, :] = f_ends[f, r, 0] + low_slope[r, f] * (X[below] - a[r])
                vals[f, above, :] = f_ends[f, r, 1] + s_ends[f, r, 1] * (X[above] - b[r])
            self.coef[t] = np.einsum("fpj,jm->pfm", vals, fit)
        # slopes beyond the common grid: the end pieces' derivatives (d/dx = (2/w) d/du)
        pw = np.arange(1, deg + 1)
        c = self.coef[ks]
        self.slope_hi[ks] = (c[:, -1, :, 1:] * pw).sum(-1) * (2.0 / w)
        self.slope_lo[ks] = low_slope

    def __call__(self, table: int, risk):
        """(log mu, log nu) of table ``table`` at the risks (NumPy; for checks)."""
        x = np.log(np.asarray(risk, dtype=np.float64))
        grid_end = self.x0 + self.n_pieces * self.w
        xc = np.clip(x, self.x0, grid_end)
        s = (xc - self.x0) / self.w
        p = np.clip(np.floor(s).astype(int), 0, self.n_pieces - 1)
        u = 2.0 * (s - p) - 1.0
        c = self.coef[table, p]  # (..., 2, deg + 1)
        val = np.zeros(c.shape[:-1])
        for m in range(_FINE_DEG, -1, -1):
            val = val * u[..., None] + c[..., m]
        slope = np.where(
            (x < self.x0)[..., None],
            self.slope_lo[table],
            np.where((x > grid_end)[..., None], self.slope_hi[table], 0.0),
        )
        with np.errstate(invalid="ignore"):
            val = val + np.where(slope == 0, 0.0, slope * (x - xc)[..., None])
        return val[..., 0], val[..., 1]

    def arrays(self):
        """The arrays the JAX evaluation needs (a dict of NumPy arrays and floats)."""
        return {
            "coef": self.coef.reshape(-1, 2 * (_FINE_DEG + 1)),
            "x0": self.x0,
            "inv_w": 1.0 / self.w,
            "n_pieces": self.n_pieces,
            "slope_lo": self.slope_lo,
            "slope_hi": self.slope_hi,
        }


# ---------------------------------------------------------------------------------------------
# exponential collocation: constants of the method (NumPy, once per q)
# ---------------------------------------------------------------------------------------------
_GL_NODES = 48  # Gauss-Legendre nodes for the step weights (exact to ~1e-16 for kappa <= 40)
_KAPPA_CAP = 40.0  # 2 lambda_max h at most (the weights' quadrature is exact up to there)
_S_NODES = 64  # Chebyshev points for the node weights' kernel


@functools.lru_cache(maxsize=4)
def _collocation_constants(q: int) -> dict:
    """Nodes theta_j = (1 - cos(pi j / q)) / 2, the Lagrange basis on them, its integrals and
    the Chebyshev maps (values -> coefficients, coefficients of the integral / derivative)."""
    from numpy.polynomial import chebyshev as C

    j = np.arange(q + 1)
    theta = 0.5 * (1.0 - np.cos(np.pi * j / q))
    xg, wg = np.polynomial.legendre.leggauss(_GL_NODES)
    v, w = 0.5 * (xg + 1.0), 0.5 * wg
    Vinv = np.linalg.inv(C.chebvander(2.0 * theta - 1.0, q))  # node values -> coefficients

    def lagrange(u):  # (...,) -> (..., q + 1): ell_m(u)
        return C.chebvander(2.0 * np.asarray(u) - 1.0, q) @ Vinv

    L_node = lagrange(theta[:, None] * v[None, :])  # (q + 1, P, q + 1): ell_m(theta_j v_p)
    S = theta[:, None] * np.einsum("p,jpm->jm", w, L_node)  # int_0^theta_j ell_m
    # The node weights need K(s) = sum_i f_i exp(-kappa_i s) at s = theta_j (1 - v_p): an entire
    # function of s, interpolated from _S_NODES Chebyshev points (error < 1e-20 for kappa <= 40)
    c = np.arange(_S_NODES)
    s_cheb = 0.5 * (1.0 - np.cos(np.pi * (c + 0.5) / _S_NODES))
    s_need = (theta[:, None] * (1.0 - v)[None, :]).ravel()
    to_coef = np.linalg.inv(C.chebvander(2.0 * s_cheb - 1.0, _S_NODES - 1))
    interp = (C.chebvander(2.0 * s_need - 1.0, _S_NODES - 1) @ to_coef).reshape(q + 1, v.size, -1)
    W_of_K = theta[:, None, None] * np.einsum("p,jpm,jpc->jmc", w, L_node, interp)
    eye = np.eye(q + 1)
    # t(theta) - t_n = h * sum_k tc_k T_k(2 theta - 1), tc = int_mat @ (Vinv @ g)
    int_mat = np.stack([C.chebint(eye[k], lbnd=-1, scl=0.5) for k in range(q + 1)], axis=1)
    der_mat = np.zeros((q + 1, q + 1))  # R'(theta) coefficients (degree q - 1, padded)
    for k in range(q + 1):
        dk = C.chebder(eye[k], scl=2.0)
        der_mat[: dk.size, k] = dk
    return {
        "theta": theta,
        "gl_v": v,
        "s_cheb": s_cheb,
        "W_of_K": W_of_K,
        "wL_end": w[:, None] * lagrange(v),
        "S": S,
        "Vinv": Vinv,
        "int_mat": int_mat,
        "der_mat": der_mat,
    }


def _clenshaw(coef, x):
    """sum_k coef[k] T_k(x), coef (K, n), x (n,) (unrolled over K)."""
    b1 = b2 = 0.0
    for k in range(coef.shape[0] - 1, 0, -1):
        b1, b2 = coef[k] + 2.0 * x * b1 - b2, b1
    return coef[0] + x * b1 - b2


def _lu(J):
    """LU factors (no pivoting) of J (q, q, n), cells last: multipliers below the diagonal, the
    inverse pivots on it. J = I - (interpolation weights x factor derivatives) is close to the
    identity on the steps the controller keeps (a step whose Newton iteration does not converge
    is rejected and retried shorter)."""
    import jax
    import jax.numpy as jnp

    q = J.shape[0]
    idx = jnp.arange(q)

    def step(k, A):
        inv = 1.0 / A[k, k]
        below = (idx > k)[:, None]  # rows i > k (and columns j > k)
        col = jnp.where(below, A[:, k] * inv, 0.0)  # multipliers (q, n)
        row = jnp.where(below, A[k], 0.0)  # row k right of the pivot
        A = A - col[:, None, :] * row[None, :, :]
        A = A.at[:, k].set(jnp.where(below, col, A[:, k]))
        return A.at[k, k].set(inv)

    return jax.lax.fori_loop(0, q, step, J)


def _lu_solve(A, r):
    """Solve with the factors of :func:`_lu`: r (q, n) -> x (q, n)."""
    import jax
    import jax.numpy as jnp

    q = A.shape[0]
    idx = jnp.arange(q)

    def forward(i, y):
        s = jnp.sum(jnp.where((idx < i)[:, None], A[i] * y, 0.0), axis=0)
        return y.at[i].add(-s)

    y = jax.lax.fori_loop(0, q, forward, r)

    def backward(m, x):
        i = q - 1 - m
        s = jnp.sum(jnp.where((idx > i)[:, None], A[i] * x, 0.0), axis=0)
        return x.at[i].set((y[i] - s) * A[i, i])

    return jax.lax.fori_loop(0, q, backward, jnp.zeros_like(r))


def _table_eval(tab, tab_idx, x):
    """(log mu, log nu) and their x-derivatives at x = log R: x (K, n), tab_idx (n,)."""
    import jax.numpy as jnp

    n_pieces = tab["n_pieces"]
    deg = _FINE_DEG
    x0, inv_w = tab["x0"], tab["inv_w"]
    grid_end = x0 + n_pieces / inv_w
    xc = jnp.clip(x, x0, grid_end)
    s = (xc - x0) * inv_w
    p = jnp.clip(jnp.floor(s), 0, n_pieces - 1)
    u = 2.0 * (s - p) - 1.0
    rows = tab_idx[None, :] * n_pieces + p.astype(tab_idx.dtype)
    c = jnp.take(tab["coef"], rows, axis=0)  # (K, n, 2 (deg + 1))
    out = []
    below, above = x < x0, x > grid_end
    for f in range(2):
        cf = c[..., f * (deg + 1) : (f + 1) * (deg + 1)]
        val, der = cf[..., deg], jnp.zeros_like(u)
        for m in range(deg - 1, -1, -1):
            der = der * u + val
            val = val * u + cf[..., m]
        der = der * (2.0 * inv_w)
        slope = jnp.where(
            below, tab["slope_lo"][tab_idx, f], jnp.where(above, tab["slope_hi"][tab_idx, f], 0.0)
        )
        val = val + jnp.where(slope == 0, 0.0, slope * (x - xc))  # x = -inf at R = 0
        out += [val, jnp.where(below | above, slope, der)]
    return out  # f_mu, df_mu, f_nu, df_nu


def _cell_factors(cells, tab, R, private):
    """a, b, g and da/dR, db/dR at risks R (K, n) (SPEC 3 factors in the tau-time ODE)."""
    import jax.numpy as jnp

    Rs = jnp.maximum(R, 1e-300)
    fm, dfm, fn, dfn = _table_eval(tab, cells["tab"], jnp.log(jnp.maximum(R, 0.0)))
    unc = cells["unc"]
    ka = cells["ka"]  # gamma / (2 B D)
    a_cl = ka * jnp.exp(fn - fm)
    a = jnp.where(unc, ka * (2.0 * R + cells["m2"]), a_cl)
    da = jnp.where(unc, 2.0 * ka, a_cl * (dfn - dfm) / Rs)
    inv_mu = jnp.where(unc, 1.0, jnp.exp(-fm))
    g = inv_mu * cells["inv_gam"]
    if private:
        b = cells["kb"] * inv_mu  # gamma sigma^2 c^2 / (2 B^2 mu)
        db = jnp.where(unc, 0.0, -b * dfm / Rs)
    else:
        b = db = None
    return a, b, g, da, db


def _solve_cells(
    consts, spec, cells, tab, y0, t_rec, target, tol, h0, max_attempts, fixed_h, q, private
):
    """Integrate every cell; returns records (n_rec, n), time to target (n,), status (n,)
    (0 unfinished, 1 done, 2 stopped as diverged), step counts and the least risk met per cell.
    ``target`` -inf: none; ``fixed_h`` > 0: that step in tau, no error control (for tests)."""
    import jax
    import jax.numpy as jnp

    lam, f2, f1 = spec["lam"], spec["f2"], spec["f1"]
    theta = jnp.asarray(consts["theta"])
    gl_v, s_cheb = jnp.asarray(consts["gl_v"]), jnp.asarray(consts["s_cheb"])
    W_of_K, wL_end = jnp.asarray(consts["W_of_K"]), jnp.asarray(consts["wL_end"])
    S, Vinv = jnp.asarray(consts["S"]), jnp.asarray(consts["Vinv"])
    int_mat, der_mat = jnp.asarray(consts["int_mat"]), jnp.asarray(consts["der_mat"])
    n = y0.shape[1]
    n_rec = t_rec.shape[0]
    T_end = t_rec[-1]
    L = cells["L"]
    R_stop = 10.0 * L
    h_cap = _KAPPA_CAP / (2.0 * jnp.max(lam))
    cols = jnp.arange(n)

    def shared(h):
        kap = 2.0 * lam * h
        E = jnp.exp(-theta[:, None] * kap[None, :])  # (q + 1, d)
        Ks = jnp.exp(-s_cheb[:, None] * kap[None, :])  # (S, d)
        W2 = h * (W_of_K @ (Ks @ f2))  # (q + 1, q + 1)
        # the state update's weights, d first: (d, P) @ (P, q + 1)
        Q_end = h * (jnp.exp(-(1.0 - gl_v)[None, :] * kap[:, None]) @ wL_end)
        if private:
            W1 = h * (W_of_K @ (Ks @ f1))
            MT = jnp.concatenate([Q_end * f2[:, None], Q_end * f1[:, None]], axis=1)
        else:
            W1 = None
            MT = Q_end * f2[:, None]
        return E, W2, W1, MT

    def factors(R):
        return _cell_factors(cells, tab, R, private)

    def tail(vals):  # |last two Chebyshev coefficients| of node values (q + 1, n)
        return jnp.abs(Vinv[q] @ vals) + jnp.abs(Vinv[q - 1] @ vals)

    def attempt(Y, R, t, h, status):
        active = status == 0
        healthy = active & (R <= L)
        E, W2, W1, MT = shared(h)
        H = E @ Y  # (q + 1, n): the homogeneous part at the nodes
        a0, b0, g0, _, _ = factors(R[None, :])
        Z = H[1:] + W2[1:].sum(1)[:, None] * a0  # predictor: forcing frozen at R_n
        if private:
            Z = Z + W1[1:].sum(1)[:, None] * b0
        a, b, g, da, db = factors(Z)
        J = jnp.eye(q)[:, :, None] - W2[1:, 1:, None] * da[None]
        if private:
            J = J - W1[1:, 1:, None] * db[None]
        lu = _lu(J)

        def resid(Z, a, b):
            F = Z - H[1:] - W2[1:, :1] * a0 - W2[1:, 1:] @ a
            if private:
                F = F - W1[1:, :1] * b0 - W1[1:, 1:] @ b
            return F

        def newton_cond(c):
            _, _, _, _, it, conv = c
            return (it < 12) & jnp.any(healthy & ~conv)

        def newton_body(c):
            Z, a, b, g, it, _ = c
            dZ = _lu_solve(lu, resid(Z, a, b))
            Z = Z - dZ
            a, b2, g, _, _ = factors(Z)
            b = b2 if private else b
            conv = jnp.all(jnp.abs(dZ) <= 1e-3 * tol * jnp.abs(Z) + 1e-300, axis=0)
            return Z, a, b, g, it + 1, conv

        init = (Z, a, b if private else jnp.zeros_like(a), g, 0, jnp.zeros(n, bool))
        Z, a, b, g, n_it, conv = jax.lax.while_loop(newton_cond, newton_body, init)
        Rn = jnp.concatenate([R[None, :], Z])
        A = jnp.concatenate([a0, a])
        G = jnp.concatenate([g0, g])
        B = jnp.concatenate([b0, b]) if private else None
        ok = conv & jnp.all(jnp.isfinite(Rn) & (Rn >= 0.0), axis=0) & jnp.all(jnp.isfinite(A), 0)
        R_end = jnp.maximum(Z[-1], 1e-300)
        err = jnp.maximum(tail(Rn) / jnp.maximum(jnp.max(Rn, 0), 1e-300), tail(G) / jnp.max(G, 0))
        err = jnp.maximum(err, tail(A) * jnp.sum(W2[q]) / R_end)
        if private:
            err = jnp.maximum(err, tail(B) * jnp.sum(W1[q]) / R_end)
        err = jnp.where(healthy, jnp.where(jnp.isnan(err), jnp.inf, err), 0.0)
        fail = jnp.any(healthy & ~ok)
        err_max = jnp.max(err)
        accept = ~fail & ((err_max <= tol) | (fixed_h > 0))
        fac = jnp.clip(0.85 * (tol / jnp.maximum(err_max, 1e-300)) ** (1.0 / q), 0.2, 3.0)
        fac = jnp.where(fail, 0.25, fac)
        return accept, fac, n_it, (E, MT, Rn, A, B, G, ok, active, healthy)

    def dense_t(G, h):  # Chebyshev coefficients of (t(theta) - t_n) / h and of t'(theta) / h
        gc = Vinv @ G
        return int_mat @ gc, gc

    def invert_t(tc, gc, t0, h, t_star):
        """theta in [0, 1] with t(theta) = t_star (t increasing): safeguarded Newton."""
        span = h * _clenshaw(tc, jnp.ones_like(t0))
        th = jnp.clip((t_star - t0) / jnp.where(span > 0, span, 1.0), 0.0, 1.0)
        lo, hi = jnp.zeros_like(th), jnp.ones_like(th)

        def newton(_, c):
            th, lo, hi = c
            x = 2.0 * th - 1.0
            phi = t0 + h * _clenshaw(tc, x) - t_star
            dphi = h * _clenshaw(gc, x)  # dt/dtheta = h g(theta)
            lo = jnp.where(phi <= 0, th, lo)
            hi = jnp.where(phi >= 0, th, hi)
            nxt = th - phi / jnp.where(dphi > 0, dphi, 1.0)
            th = jnp.where((nxt > lo) & (nxt < hi), nxt, 0.5 * (lo + hi))
            return th, lo, hi

        th, _, _ = jax.lax.fori_loop(0, 16, newton, (th, lo, hi))
        return th

    def accept_step(carry, h, parts):
        Y, R, t, status, rk, rec, ttt, rmin = carry
        E, MT, Rn, A, B, G, ok, active, healthy = parts
        upd = active & ok
        F = jnp.concatenate([A, B], axis=0) if private else A
        Y_new = jnp.where(upd[None, :], E[q][:, None] * Y + MT @ F, Y)
        t_nodes = t[None, :] + h * (S @ G)
        t_new = t_nodes[q]
        R_new = Rn[q]
        tc, gc = dense_t(G, h)
        rc = Vinv @ Rn

        # records in (t, t_new]: the next one per cell, as many rounds as the busiest cell needs
        def rec_cond(c):
            rk, _ = c
            t_next = t_rec[jnp.minimum(rk, n_rec - 1)]
            return jnp.any(upd & (rk < n_rec) & (t_next <= t_new))

        def rec_body(c):
            rk, rec = c
            k = jnp.minimum(rk, n_rec - 1)
            t_star = t_rec[k]
            need = upd & (rk < n_rec) & (t_star <= t_new)
            th = invert_t(tc, gc, t, h, jnp.minimum(t_star, t_new))
            val = _clenshaw(rc, 2.0 * th - 1.0)
            rec = rec.at[k, cols].set(jnp.where(need, val, rec[k, cols]))
            return rk + need.astype(rk.dtype), rec

        rk, rec = jax.lax.while_loop(rec_cond, rec_body, (rk, rec))
        # time to target (never found when target = -inf): the first crossing in the step
        below = Rn[1:] <= target
        found = upd & jnp.isinf(ttt) & jnp.any(below, axis=0)
        jf = jnp.argmax(below, axis=0) + 1
        lo, hi = theta[jf - 1], theta[jf]
        dc = der_mat @ rc
        th = 0.5 * (lo + hi)

        def newton(_, c):
            th, lo, hi = c
            x = 2.0 * th - 1.0
            phi = _clenshaw(rc, x) - target
            dphi = _clenshaw(dc, x)
            lo = jnp.where(phi > 0, th, lo)
            hi = jnp.where(phi <= 0, th, hi)
            nxt = th - phi / jnp.where(dphi != 0, dphi, 1.0)
            th = jnp.where((nxt > lo) & (nxt < hi), nxt, 0.5 * (lo + hi))
            return th, lo, hi

        th, _, _ = jax.lax.fori_loop(0, 30, newton, (th, lo, hi))
        t_hit = t + h * _clenshaw(tc, 2.0 * th - 1.0)
        ttt = jnp.where(found & (t_hit <= T_end), t_hit, ttt)
        R = jnp.where(upd, R_new, R)
        rmin = jnp.where(upd, jnp.minimum(rmin, jnp.min(Rn, axis=0)), rmin)
        t = jnp.where(upd, t_new, t)
        finished = upd & (rk >= n_rec)
        stopped = active & ~finished & ((~ok) | (R_new > R_stop))
        status = jnp.where(finished, 1, jnp.where(stopped, 2, status))
        return Y_new, R, t, status, rk, rec, ttt, rmin

    def body(c):
        carry, h, att = c
        Y, R, t, status = carry[:4]
        h = jnp.where(fixed_h > 0, fixed_h, jnp.minimum(h, h_cap))
        accept, fac, n_it, parts = attempt(Y, R, t, h, status)
        carry = jax.lax.cond(accept, lambda cr: accept_step(cr, h, parts), lambda cr: cr, carry)
        acc = att + jnp.stack([accept, ~accept, n_it]).astype(att.dtype)
        return carry, h * fac, acc

    R0 = jnp.sum(y0, axis=0)
    status0 = cells["status0"]
    rk0 = jnp.sum(t_rec <= 0.0).astype(jnp.int32) * jnp.ones(n, jnp.int32)
    rec0 = jnp.where((t_rec <= 0.0)[:, None], R0[None, :], jnp.inf) * jnp.ones((n_rec, n))
    ttt0 = jnp.where(R0 <= target, 0.0, jnp.inf)
    status0 = jnp.where((status0 == 0) & (rk0 >= n_rec), 1, status0)
    carry0 = (y0, R0, jnp.zeros(n), status0, rk0, rec0, ttt0, R0)

    def loop_cond(c):
        (carry, h, att) = c
        return jnp.any(carry[3] == 0) & (att[0] + att[1] < max_attempts)

    out, _, att = jax.lax.while_loop(
        loop_cond, body, (carry0, jnp.asarray(h0), jnp.zeros(3, jnp.int32))
    )
    _, R, t, status, rk, rec, ttt, rmin = out
    return rec, ttt, status, att, rmin


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PhaseDiagram:
    """The predicted (ODE) risk over a grid of hyperparameters.

    Attributes:
        axes: the axes, in the order given: name -> tuple of values (None: no clipping).
        final_risk: R(T) per cell, shaped by the axes (``shape``); +inf where diverged.
        diverged: bool per cell (the rule of :func:`mark_divergence`, at the record times).
        time_to_target: first t <= T with R(t) <= ``target`` per cell (from the dense output,
            not from the records); +inf where never; None when no target was given.
        t: the record times (``[T]`` unless curves were asked for).
        risk: the curves, shape + (len(t),), when ``curves=True``; else None.
        params: JSON-friendly description (problem, algorithm, fixed parameters, method,
            timings, counts).
    """

    axes: dict
    final_risk: np.ndarray
    diverged: np.ndarray
    time_to_target: np.ndarray | None
    t: np.ndarray
    risk: np.ndarray | None
    params: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple:
        return tuple(len(v) for v in self.axes.values())

    def best(self) -> dict:
        """The cell of least final risk: its axis values, ``final_risk``, ``index`` (and
        ``time_to_target`` where a target was given). Ties: the first in C order."""
        flat = np.where(np.isnan(self.final_risk), np.inf, self.final_risk).ravel()
        i = int(np.argmin(flat))
        idx = np.unravel_index(i, self.shape)
        out = {name: vals[j] for (name, vals), j in zip(self.axes.items(), idx)}
        out["final_risk"] = float(self.final_risk[idx])
        if self.time_to_target is not None:
            out["time_to_target"] = float(self.time_to_target[idx])
        out["index"] = tuple(int(j) for j in idx)
        return out

    def __repr__(self):
        axes = ", ".join(f"{k}[{len(v)}]" for k, v in self.axes.items())
        return (
            f"PhaseDiagram({axes}, T={float(self.t[-1]):.4g}, diverged={int(self.diverged.sum())})"
        )


def _algorithm_kind(algorithm_class):
    """('ClippedSGD' | 'DPSGD', defaults from an instance or {})."""
    from ._clipped_sgd import ClippedSGD
    from ._dpsgd import DPSGD
    from ._schedules import is_constant

    if isinstance(algorithm_class, type):
        if algorithm_class is DPSGD:
            return "DPSGD", {}
        if algorithm_class is ClippedSGD:
            return "ClippedSGD", {}
    elif isinstance(algorithm_class, (ClippedSGD, DPSGD)):
        alg = algorithm_class
        defaults = {"lr": alg.lr, "clip": alg.clip, "batch": alg.batch}
        for name in ("lr", "clip"):
            if not is_constant(defaults[name]):
                raise ValueError(
                    f"algorithm_class: a phase diagram takes a constant {name}, got a schedule"
                )
        if isinstance(alg, DPSGD):
            defaults["noise_multiplier"] = alg.noise_multiplier
            return "DPSGD", defaults
        if alg.perturbation > 0:
            raise ValueError("algorithm_class: the perturbation (SPEC 10) is not supported here")
        defaults["clip_mode"] = alg.clip_mode
        return "ClippedSGD", defaults
    raise ValueError(
        "algorithm_class must be ClippedSGD or DPSGD (the class, or an instance giving "
        f"defaults), got {algorithm_class!r}"
    )


def _check_value(kind, name, value, where):
    """One axis / parameter value, validated; returns its float (clip None -> inf)."""
    if name == "lr":
        if isinstance(value, (bool, np.bool_)) or callable(value):
            raise ValueError(f"{where} must be a number > 0, got {value!r}")
        return V.positive(where, value)
    if name == "clip":
        if isinstance(value, (bool, np.bool_)) or callable(value):
            raise ValueError(f"{where} must be a number > 0 (or None: no clipping), got {value!r}")
        c = math.inf if value is None else V.positive(where, value, allow_inf=True)
        if math.isinf(c) and kind == "DPSGD":
            raise ValueError(
                f"{where}: DP-SGD needs a finite clip (the sensitivity of an unclipped sum is "
                "infinite)"
            )
        return c
    if name == "batch":
        return float(V.count(where, value))
    if name == "noise_multiplier":
        if kind != "DPSGD":
            raise ValueError(f"{where}: noise_multiplier belongs to DPSGD, not {kind}")
        return V.nonnegative(where, value)
    if name == "noise":
        if not isinstance(value, NoiseLaw):
            raise ValueError(f"{where} must be a NoiseLaw such as Gaussian(0.5), got {value!r}")
        return value
    raise AssertionError(name)  # pragma: no cover


def _spectrum(problem):
    """Distinct positive eigenvalues, multiplicities and grouped y0 = sum lambda e^2 / 2."""
    lam = problem.eigenvalues
    e = problem.initial_error
    pos = lam > 0
    uniq, inv = np.unique(lam[pos], return_inverse=True)
    mult = np.bincount(inv).astype(np.float64)
    y0 = np.bincount(inv, weights=0.5 * lam[pos] * e[pos] ** 2)
    return uniq, mult, y0


def phase_diagram(
    problem: Problem,
    algorithm_class,
    axes: dict,
    T=None,
    *,
    params: dict | None = None,
    target: float | None = None,
    curves: bool = False,
    times=None,
    n_records: int = 101,
    rtol: float = 1e-10,
    divergence_threshold: float | None = None,
    nodes: int = 12,
    chunk_size: int | None = None,
    max_steps: int = 20000,
    fixed_step: float | None = None,
) -> PhaseDiagram:
    """Predicted risk (the ODE, SPEC 4 / 8A.3 / 9.1) over a grid of constant hyperparameters.

    ``phase_diagram(problem, ClippedSGD, axes={"lr": lrs, "clip": clips}, T=10)`` gives
    ``.final_risk`` of shape (len(lrs), len(clips)), one cell per pair, solved together in one
    compiled program (see the module docstring for the method); it agrees with
    :func:`solve_ode` (method DOP853) to about 1e-8 relative.

    Args:
        problem: the :class:`Problem` (centred data: no ``data_mean``).
        algorithm_class: :class:`ClippedSGD` or :class:`DPSGD` (the class, or an instance whose
            constant hyperparameters serve as defaults).
        axes: name -> sequence of values, in the order of the result's dimensions. Names: "lr"
            (gamma > 0), "clip" (c > 0; None or inf: no clipping, ClippedSGD only), "batch"
            (B >= 1, per-example clipping), "noise_multiplier" (DPSGD's sigma >= 0), "noise"
            (noise laws, replacing the problem's).
        T: horizon (or give ``times``).
        params: fixed values of hyperparameters not on an axis (e.g. {"batch": 16} or, for
            ClippedSGD, {"clip_mode": "per-example"}); lr must be on an axis or here.
        target: a risk level: ``time_to_target`` is the first time R(t) <= target.
        curves: also return the risk at the record times (``times``, or ``n_records`` even
            points on [0, T]).
        rtol: the per-step error tolerance (relative; the default gives ~1e-9 on the risk).
        divergence_threshold: the divergence level L (default: :func:`divergence_limit`, per
            noise law).
        nodes: q, the collocation nodes per step minus one (2 to 16; see the module docstring).
        chunk_size: cells solved together (rounded up to a power of two; default: ~1 MB of
            state, which stays in cache).
        max_steps: step attempts allowed per chunk.
        fixed_step: a fixed step in tau = int gamma mu dt instead of the error control (for
            convergence checks; records at step ends are then the collocation's node values).

    Returns:
        :class:`PhaseDiagram`.

    References: SPEC sections 4, 8A.3, 9.1; arXiv 2406.11733.
    """
    import jax

    t_start = time.perf_counter()
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a Problem, got {type(problem).__name__}")
    if problem.data_mean is not None:
        raise ValueError(
            "problem: non-centred data (data_mean) is not supported by phase_diagram; use "
            "solve_ode per cell"
        )
    kind, defaults = _algorithm_kind(algorithm_class)
    if not isinstance(axes, dict) or not axes:
        raise ValueError("axes must be a non-empty dict: name -> sequence of values")
    allowed = AXES if kind == "DPSGD" else tuple(a for a in AXES if a != "noise_multiplier")
    axis_vals = {}
    for name, values in axes.items():
        if name not in allowed:
            raise ValueError(
                f"axes: unknown axis {name!r} for {kind}; allowed: {', '.join(allowed)}"
            )
        if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
            raise ValueError(f"axes[{name!r}] must be a sequence of values, got {values!r}")
        values = list(values.tolist() if isinstance(values, np.ndarray) else values)
        if not values:
            raise ValueError(f"axes[{name!r}] must have at least one value")
        axis_vals[name] = [
            _check_value(kind, name, v, f"axes[{name!r}][{i}]") for i, v in enumerate(values)
        ]
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict, got {type(params).__name__}")
    fixed_names = ("lr", "clip", "batch") + (
        ("noise_multiplier",) if kind == "DPSGD" else ("clip_mode",)
    )
    fixed = dict(defaults)
    for name, value in params.items():
        if name not in fixed_names:
            raise ValueError(
                f"params: unknown parameter {name!r} for {kind}; allowed: {', '.join(fixed_names)}"
            )
        if name in axis_vals:
            raise ValueError(f"params: {name!r} is also an axis; give it in one place")
        fixed[name] = value
    for name in list(fixed):
        if name in axis_vals:
            fixed.pop(name)
    clip_mode = fixed.pop("clip_mode", "per-example")
    if clip_mode not in ("per-example", "mean"):
        raise ValueError(f"params['clip_mode'] must be 'per-example' or 'mean', got {clip_mode!r}")
    if "batch" not in axis_vals:
        fixed.setdefault("batch", 1)
    if kind == "ClippedSGD" and "clip" not in axis_vals:
        fixed.setdefault("clip", None)
    for name in ("lr", "clip") + (("noise_multiplier",) if kind == "DPSGD" else ()):
        if name not in fixed and name not in axis_vals:
            raise ValueError(f"{name} must be given, on an axis or in params")
    fixed_f = {k: _check_value(kind, k, v, f"params[{k!r}]") for k, v in fixed.items()}
    t_req = _record_times(T, times, n_records, curves)
    if target is not None:
        target = V.positive("target", target)
    rtol = V.real("rtol", rtol, lo=1e-13, hi=1e-3)
    q = V.count("nodes", nodes, lo=2)
    if q > 16:
        raise ValueError(f"nodes must be in [2, 16], got {q}")
    max_steps = V.count("max_steps", max_steps)
    fixed = 0.0 if fixed_step is None else V.positive("fixed_step", fixed_step)
    if not isinstance(curves, (bool, np.bool_)):
        raise ValueError(f"curves must be True or False, got {curves!r}")

    # --- the cells: C order over the axes ---------------------------------------------------
    shape = tuple(len(v) for v in axis_vals.values())
    n_cells = int(np.prod(shape))
    idx = np.indices(shape).reshape(len(shape), -1)
    col = {}
    for a, (name, vals) in enumerate(axis_vals.items()):
        col[name] = [vals[i] for i in idx[a]]
    for name, v in fixed_f.items():
        col[name] = [v] * n_cells
    noises = col.get("noise", [problem.noise] * n_cells)
    gam = np.array(col["lr"], dtype=np.float64)
    clip = np.array(col["clip"], dtype=np.float64)
    batch = np.array(col["batch"], dtype=np.float64)
    sigma = np.array(col.get("noise_multiplier", [0.0] * n_cells), dtype=np.float64)
    if clip_mode == "mean" and np.any((batch > 1) & np.isfinite(clip)):
        raise ValueError(
            "clip_mode='mean' at batch > 1 is not supported by phase_diagram (its factors "
            "depend on ||K e|| as well as R); use clip_mode='per-example' or solve_ode per cell"
        )
    law_list = list(dict.fromkeys(noises))
    law_of = np.array([law_list.index(z) for z in noises])
    R0 = problem.initial_risk
    L_law = np.array([divergence_limit(divergence_threshold, R0, z) for z in law_list])
    m2_law = np.array([float(z.second_moment) for z in law_list])
    lam, mult, y0 = _spectrum(problem)
    D = problem.D
    h_map = gam * float(lam.max()) / D
    from ._ode import MAP_THRESHOLD

    n_map = int(np.sum((batch > 1) & (h_map > MAP_THRESHOLD)))
    if n_map:
        warnings.warn(
            f"phase_diagram solves the ODE; at {n_map} cell(s) (batch > 1, gamma lambda_max / D "
            f"> {MAP_THRESHOLD}) the one-step map is the deterministic equivalent (SPEC 8A.4) "
            "and solve_ode's method='auto' would iterate it",
            stacklevel=2,
        )
    T_end = float(t_req[-1])
    tau_max = float(gam.max()) * T_end
    if tau_max * 2.0 * float(lam.max()) / _KAPPA_CAP > max_steps:
        raise ValueError(
            f"T = {T_end:.3g}: about {tau_max * 2 * lam.max() / _KAPPA_CAP:.3g} steps at the "
            f"largest lr, above max_steps = {max_steps}; use a shorter horizon or raise max_steps"
        )

    # --- factor tables ------------------------------------------------------------------------
    # Rigorous bounds on every path (t <= T), per table: the forcing is >= 0 and mu <= 1, so
    # y_i >= y_i(0) exp(-2 lambda_i gamma t); the drift is <= 0 and nu <= c^2, so
    # dR/dt <= gamma^2 c^2 (sum lambda^2 / (2 B D) + sigma^2 D / (2 B^2)). Tables span them with
    # a decade to spare each side (Newton iterates), capped below by 1e-10 min(c^2, scale^2)
    # (the factors' R -> 0 limits hold to ~1e-10 there) and above by 100 L.
    unclipped = ~np.isfinite(clip)
    lam2 = float(np.sum(mult * lam * lam))
    pairs, ranges, tab_of = [], [], np.zeros(n_cells, dtype=np.int64)
    rigorous_low, grid = None, None
    fin = np.flatnonzero(~unclipped)
    if fin.size:
        keys = np.stack([law_of[fin].astype(np.float64), clip[fin]], axis=1)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        gmax = np.zeros(len(uniq))
        np.maximum.at(gmax, inverse, gam[fin])
        growth = np.zeros(len(uniq))
        rate = gam[fin] ** 2 * (
            lam2 / (2.0 * batch[fin] * D) + sigma[fin] ** 2 * D / (2.0 * batch[fin] ** 2)
        )
        np.maximum.at(growth, inverse, rate)
        gmin = np.full(len(uniq), np.inf)
        np.minimum.at(gmin, inverse, gam[fin])
        bmax = np.zeros(len(uniq))
        np.maximum.at(bmax, inverse, batch[fin])
        rig_lows, highs = [], []
        for u, (li, c) in enumerate(uniq):
            law = law_list[int(li)]
            c2 = c * c
            s2 = _noise_scale2(law)
            floor = 1e-10 * (min(c2, s2) if s2 > 0 else c2)
            r_lb = float(np.sum(y0 * np.exp(-2.0 * lam * gmax[u] * T_end)))
            r_ub = R0 + T_end * c2 * growth[u]
            rig_lows.append(max(floor, 0.1 * r_lb))
            highs.append(min(100.0 * L_law[int(li)], 10.0 * max(r_ub, 100.0 * rig_lows[-1])))
            pairs.append((law, float(c)))
        # Optimistic lower ends, per cell a tenth of max(its rigorous bound, min(R0, its
        # stationary risk gamma (nu + sigma^2 c^2 d / B) / (4 B mu) at R -> 0)), the least over a
        # table's cells; a path that goes lower is solved again with its table extended down to
        # the rigorous bound (checked after the solve).
        mu0, nu0 = np.ones(len(uniq)), np.zeros(len(uniq))
        for li in np.unique(uniq[:, 0]).astype(int):
            sel = np.flatnonzero(uniq[:, 0] == li)
            mu0[sel], nu0[sel] = reduction_factors(
                law_list[li], np.array(rig_lows)[sel], uniq[sel, 1]
            )
        g_fin, b_fin, c_fin = gam[fin], batch[fin], clip[fin]
        ug, ginv = np.unique(g_fin, return_inverse=True)
        rlb = (np.exp(-2.0 * np.outer(ug, lam) * T_end) @ y0)[ginv.ravel()]
        r_star = (
            g_fin
            * (nu0[inverse] + sigma[fin] ** 2 * c_fin**2 * mult.sum() / b_fin)
            / (4.0 * b_fin * np.maximum(mu0[inverse], 1e-300))
        )
        cell_low = 0.1 * np.maximum(rlb, np.minimum(R0, r_star))
        opt = np.full(len(uniq), np.inf)
        np.minimum.at(opt, inverse, cell_low)
        opt_lows = [min(max(lo, o), 0.01 * hi) for lo, o, hi in zip(rig_lows, opt, highs)]
        ranges = [(math.log(lo), math.log(hi)) for lo, hi in zip(opt_lows, highs)]
        rigorous_low = np.log(np.array(rig_lows))
        grid = (float(rigorous_low.min()), float(np.log(max(highs))))
        tab_of[fin] = inverse
    tables = FactorTables(pairs, ranges, grid)
    t_tables_build = tables.seconds
    t_tables = time.perf_counter() - t_start

    # --- cells' constants -----------------------------------------------------------------
    m2 = m2_law[law_of]
    status0 = np.where(unclipped & ~np.isfinite(m2), 2, 0)  # nu = inf: diverged at t = 0+
    private = bool(np.any(sigma > 0))
    cells_np = {
        "tab": tab_of,
        "unc": unclipped,
        "ka": gam / (2.0 * batch * D),
        "kb": np.where(unclipped, 0.0, gam * sigma**2 * np.where(unclipped, 0, clip) ** 2)
        / (2.0 * batch**2),
        "inv_gam": 1.0 / gam,
        "m2": np.where(np.isfinite(m2), m2, 0.0),
        "L": L_law[law_of],
        "status0": status0,
    }
    d_state = lam.size
    if chunk_size is None:  # ~1 MB of state per chunk: it stays in cache over the whole loop
        chunk_size = max(16, min(4096, _pow2(131072 // max(d_state, 1) + 1) // 2))
    chunk_size = V.count("chunk_size", chunk_size)
    chunk = max(16, min(_pow2(chunk_size), _pow2(n_cells)))
    consts = _collocation_constants(q)
    args = (consts, lam, mult, y0, tables, t_req, target, rtol, q, private, chunk, max_steps, fixed)
    with jax.enable_x64(True):
        rec, ttt, status, rmin, counts, t_compile = _run_chunks(cells_np, *args)
        # paths below their table's accurate range: extend the table down, solve them again
        low_end = np.exp(tables.x_lo[tab_of]) * (1.0 - 1e-12)
        extendable = tables.x_lo[tab_of] > rigorous_low[tab_of] + 1e-9 if fin.size else False
        redo = np.flatnonzero(~unclipped & (rmin < low_end) & extendable)
        n_redo = int(redo.size)
        if n_redo:
            which = np.unique(tab_of[redo])
            tables.extend_low(which, rigorous_low[which])
            sub = {k: v[redo] for k, v in cells_np.items()}
            r2, t2, s2, _, c2, tc2 = _run_chunks(sub, *args)
            rec[:, redo], ttt[redo], status[redo] = r2, t2, s2
            counts, t_compile = counts + c2, t_compile + tc2
    t_tables += tables.seconds - t_tables_build  # extensions
    t_solve = time.perf_counter() - t_start - t_tables
    if np.any(status == 0):
        raise RuntimeError(
            f"phase_diagram: {int(np.sum(status == 0))} cell(s) not finished within max_steps = "
            f"{max_steps} step attempts; raise max_steps or rtol"
        )
    # --- records, divergence, summaries -------------------------------------------------------
    risk = rec.T  # (n_cells, n_rec)
    diverged = np.zeros(n_cells, bool)
    for li in range(len(law_list)):
        sel = law_of == li
        r, dv, _ = mark_divergence(risk[sel], t_req, float(L_law[li]))
        risk[sel], diverged[sel] = r, dv
    final = risk[:, -1].copy()
    out_axes = {
        name: tuple(
            None if (name == "clip" and math.isinf(v)) else (int(v) if name == "batch" else v)
            for v in vals
        )
        for name, vals in axis_vals.items()
    }
    fixed_desc = {
        k: (None if (k == "clip" and math.isinf(v)) else (int(v) if k == "batch" else v))
        for k, v in fixed_f.items()
    }
    if kind == "ClippedSGD":
        fixed_desc["clip_mode"] = clip_mode
    desc = {
        "kind": "phase_diagram",
        "algorithm": kind,
        "axes": {k: [repr(v) if k == "noise" else v for v in vals] for k, vals in out_axes.items()},
        "fixed": fixed_desc,
        "T": T_end,
        "target": target,
        "rtol": rtol,
        "method": f"exponential collocation in tau = int gamma mu dt, {q + 1} Lobatto nodes",
        "nodes": q,
        "divergence_level": [float(x) for x in L_law],
        "problem": problem.describe(),
        "cells": n_cells,
        "chunk_size": chunk,
        "steps": int(counts[0]),
        "rejected_steps": int(counts[1]),
        "newton_iterations": int(counts[2]),
        "table_evaluations": int(tables.evals),
        "cells_resolved_after_table_extension": n_redo,
        "seconds_tables": t_tables,
        "seconds_compile": t_compile,
        "seconds_solve": t_solve - t_compile,
        "map_regime_cells": n_map,
    }
    return PhaseDiagram(
        axes=out_axes,
        final_risk=final.reshape(shape),
        diverged=diverged.reshape(shape),
        time_to_target=None if target is None else np.asarray(ttt).reshape(shape),
        t=np.asarray(t_req, dtype=np.float64),
        risk=risk.reshape(shape + (t_req.size,)) if curves else None,
        params=desc,
    )


def _record_times(T, times, n_records, curves):
    from ._engine import requested_times

    if not curves:
        if times is not None:
            raise ValueError("times: record times are for curves=True; give T alone otherwise")
        return np.array([V.positive("T", T)])
    t = requested_times(T, times, n_records)
    if not t[-1] > 0:
        raise ValueError("times must end after t = 0")
    return t


_COMPILED = {}  # compiled programs by (method, shapes); a few kept


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _run_chunks(
    cells_np,
    consts,
    lam,
    mult,
    y0,
    tables,
    t_req,
    target,
    rtol,
    q,
    private,
    chunk,
    max_steps,
    fixed_h=0.0,
):
    """Solve the cells in chunks of ``chunk`` cells (the last padded by repeating a cell), one
    compiled program for all chunks. Shapes are padded (state to a multiple of 32 with zero
    eigenvalues, tables and records to powers of two) so that similar problems share programs.
    Returns records (n_rec, n), time to target, status, least risk met, step counts, compile s."""
    import jax
    import jax.numpy as jnp

    n = cells_np["tab"].size
    d_pad = max(64, -(-lam.size // 32) * 32) - lam.size  # zero eigenvalues: y stays 0 there
    lam_p, mult_p, y0_p = (np.concatenate([v, np.zeros(d_pad)]) for v in (lam, mult, y0))
    tab = tables.arrays()
    n_pieces = tab["n_pieces"]
    n_tab = tab["slope_lo"].shape[0]
    extra = max(8, _pow2(n_tab)) - n_tab  # dummy tables: copies of the first
    coef = tab["coef"].reshape(n_tab, n_pieces, -1)
    coef = np.concatenate([coef, np.repeat(coef[:1], extra, axis=0)]).reshape(-1, coef.shape[-1])
    tabd = {
        "coef": jnp.asarray(coef),
        "x0": jnp.asarray(tab["x0"]),
        "inv_w": jnp.asarray(tab["inv_w"]),
        "slope_lo": jnp.asarray(
            np.concatenate([tab["slope_lo"], tab["slope_lo"][:1].repeat(extra, 0)])
        ),
        "slope_hi": jnp.asarray(
            np.concatenate([tab["slope_hi"], tab["slope_hi"][:1].repeat(extra, 0)])
        ),
    }
    n_rec = t_req.size
    t_pad = np.concatenate([t_req, np.full(max(8, _pow2(n_rec)) - n_rec, t_req[-1])])
    spec = {
        "lam": jnp.asarray(lam_p),
        "f2": jnp.asarray(mult_p * lam_p * lam_p),
        "f1": jnp.asarray(mult_p * lam_p),
    }
    key = (q, private, chunk, lam_p.size, t_pad.size, coef.shape, n_pieces)

    def run(spec, cells, tabd, y0c, t_rec, tgt, tol, h0, max_att, fixed):
        tabd = dict(tabd, n_pieces=n_pieces)
        return _solve_cells(
            consts, spec, cells, tabd, y0c, t_rec, tgt, tol, h0, max_att, fixed, q, private
        )

    fixed_args = (
        jnp.asarray(t_pad),
        jnp.asarray(-np.inf if target is None else target),
        jnp.asarray(rtol),
        jnp.asarray(0.5 / float(lam.max())),
        jnp.asarray(max_steps, dtype=jnp.int32),
        jnp.asarray(float(fixed_h)),
    )
    t_compile = 0.0
    recs, ttts, stats, rmins = [], [], [], []
    counts = np.zeros(3, np.int64)
    y0c = jnp.asarray(np.repeat(y0_p[:, None], chunk, axis=1))
    for start in range(0, n, chunk):
        sel = np.minimum(np.arange(start, start + chunk), n - 1)
        cells = {k: jnp.asarray(v[sel]) for k, v in cells_np.items()}
        args = (spec, cells, tabd, y0c) + fixed_args
        fn = _COMPILED.get(key)
        if fn is None:
            t0 = time.perf_counter()
            fn = jax.jit(run).lower(*args).compile()
            t_compile += time.perf_counter() - t0
            if len(_COMPILED) >= 8:
                _COMPILED.pop(next(iter(_COMPILED)))
            _COMPILED[key] = fn
        rec, ttt, status, att, rmin = fn(*args)
        m = min(chunk, n - start)
        recs.append(np.asarray(rec)[:n_rec, :m])
        ttts.append(np.asarray(ttt)[:m])
        stats.append(np.asarray(status)[:m])
        rmins.append(np.asarray(rmin)[:m])
        counts += np.asarray(att, dtype=np.int64)
    return (
        np.concatenate(recs, axis=1),
        np.concatenate(ttts),
        np.concatenate(stats),
        np.concatenate(rmins),
        counts,
        t_compile,
    )
