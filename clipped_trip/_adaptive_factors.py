"""Reduction factors under quantile-tracking thresholds (SPEC section 11A; Andrew et al. 2021).

Quantile tracking clips with C_k and updates C_{k+1} = C_k exp(-eta_C (b_k - q)),
b_k = 1{not clipped}. In residual units (c = C / sqrt(D)) b_k is Bernoulli(mu_{c_k}(R)).

* ``quantile_clip``: the q-quantile of |w| (w = N(0, 2R) - eps), the root in c of mu_c(R) = q.
  This is the slow regime's adiabatic threshold (SPEC 11A.a, eta -> inf) and the eta_C -> 0 limit
  of the fast regime (SPEC 11A.b).
* ``quantile_stationary``: the fast regime eta_C = O(1) (SPEC 11A.b). u = log c is a fast random
  walk at frozen R: u -> u - eta_C (1 - q) w.p. mu_{e^u}(R), u -> u + eta_C q otherwise. Its
  stationary law pi_R gives the ODE's factors: drift E_pi[mu] = q exactly, noise
  nubar(R) = E_pi[nu_c(R)] != nu_{c_q}(R): the threshold does not lock to the quantile.
  nubar > nu_{c_q} for symmetric laws (Gaussian, Student-t, Laplace: measured on a grid of R, q,
  eta_C), but not always: centred Exponential noise at R <= 0.01 gives nubar < nu_{c_q} (-4 % at
  eta_C = 1, q = 1/2, R = 1e-3; confirmed by Monte Carlo of the walk).
* ``quantile_fast_factors``: (mubar, nubar, E_pi c) on an array of R (the ODE's table).

Lattice. For rational q = num/den the walk started at log c_0 lives on log c_0 + (eta_C/den) Z:
num sites up, den - num sites down (irreducible there since gcd(num, den) = 1). pi therefore
depends on the lattice phase log c_0 mod (eta_C/den) (SPEC trap), so ``log_c0`` is an argument.
q = 1/2 is a birth-death chain with pi_{n+1}/pi_n = (1 - mu_n)/mu_{n+1} (closed form); any other
q solves pi = pi P on a truncated window by one banded LU (row of the centre site replaced by
pi_centre = 1; columns of P^T - I sum to zero, so one equation is redundant). Moves that would
leave the window stay put; the window grows until the pi-mass of the outermost band (one maximal
jump wide) is below ``tail_tol`` on each side; each growth step extrapolates the decay of
log pi near the edge. The tails decay faster than geometrically (mu -> 1 above the quantile,
mu -> 0 below it when R > 0; geometrically at R = 0 for a law with an atom at 0), so this bounds
the truncated mass. Windows: about 20-60 sites at q = 1/2, 100-250 at q = 3/10 (den = 10).

Irrational q (no num/den with den <= max_den equal to q within 1e-12): the orbit is dense in u.
We then use a fine grid of spacing eta_C / m (m = ``fine_sites`` sites per eta_C, raised so that
both jumps span >= 4 sites), each jump split between the two neighbouring grid points with
linear weights. The split keeps the mean displacement exact, so E_pi[mu] = q still holds exactly
(up to the tail); pi is then an approximation (phase-averaged, smoothed) of the walk's law, with
an error that decreases with m (Gaussian, q = 1/pi, eta_C = 1: nubar moves by 7e-5, 3e-5, 6e-6
relative from m = 32 to 64, 128, 256). A dense orbit has no phase dependence in the limit.

Degenerate laws. When P(w = 0) >= q (only possible at R = 0 with an atom of eps at 0, e.g. a
three-point law with 1 - q_atom >= q, or noiseless data) mu_c >= q for every c > 0: the
q-quantile is 0 and the walk drifts to c = 0 (no stationary law; ``quantile_stationary``
raises). At R = 0 a finite law makes mu_c a step function: ``quantile_clip`` then returns
inf{c : mu_c(0) >= q} (a |atom|), and the walk, still well defined, is solved as above.

Cost: the factor evaluations dominate (about 60 us per (R, c) pair for quadrature laws, ~1 us
for Gaussian and finite laws). All R values of a table are evaluated in one batched call per
stage; on fine lattices (spacing < 3/96 in log c) the factors of quadrature laws are Chebyshev-
interpolated in log c (41 nodes per width 3, checked at 6 exact sites per piece to 1e-13, exact
evaluation on failure). Per R: 60-250 (R, c) pairs, i.e. ~0.1-0.3 ms for Gaussian and finite
laws and ~4-15 ms for quadrature laws (q = 1/2 cheapest, q = 3/10 dearest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import _validate as V
from ._factors import reduction_factors
from ._noise import NoiseLaw

__all__ = [
    "QuantileStationary",
    "quantile_clip",
    "quantile_stationary",
    "quantile_fast_factors",
]

_U_MAX = 340.0  # |log c| bound: c^2 stays finite (e^680 ~ 1e295)
_RATIONAL_TOL = 1e-12
_SLOPE_STEP = 0.05  # in log c, for the width estimate of pi
_WIDTH_SDS = 6.0  # initial half-window in units of the diffusion estimate of sd(log c)
_MAX_SITES = 200_000
# Chebyshev interpolation of fine lattices (quadrature laws only): pieces of width _CHEB_WIDTH
# in log c, _CHEB_NODES + 1 nodes and _CHEB_CHECKS exact check sites each
_CHEB_WIDTH = 3.0
_CHEB_NODES = 40
_CHEB_CHECKS = 6
_CHEB_MIN_SITES = 96


@dataclass(frozen=True)
class QuantileStationary:
    """Stationary law of log c for quantile tracking at frozen R (SPEC 11A.b).

    log_clip: lattice sites u_n = log_c0 + n * spacing (window kept after truncation);
    pi: stationary probabilities; mu, nu: mu_c(R), nu_c(R) at the sites;
    mubar = E_pi[mu] (= q), nubar = E_pi[nu], mean_clip = E_pi[c], var_log_clip = Var_pi(log c);
    clip_quantile = c_q(R) and nu_quantile = nu_{c_q}(R) (the quantile-lock values);
    num/den: q = num/den on the exact lattice (den = 0 on the fine grid of an irrational q);
    tail_mass: pi-mass of the two outermost bands at convergence.
    """

    risk: float
    q: float
    clip_lr: float
    log_c0: float
    spacing: float
    num: int
    den: int
    exact_lattice: bool
    log_clip: np.ndarray
    pi: np.ndarray
    mu: np.ndarray
    nu: np.ndarray
    mubar: float
    nubar: float
    mean_clip: float
    var_log_clip: float
    clip_quantile: float
    nu_quantile: float
    tail_mass: float


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _check_noise(noise):
    if not isinstance(noise, NoiseLaw):
        raise ValueError(
            f"noise must be a NoiseLaw (e.g. Gaussian(1.0)), got {type(noise).__name__}"
        )


def _risk_array(risk):
    try:
        R = np.asarray(risk, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("risk must be a real number or an array of them") from None
    if np.any(~np.isfinite(R)) or np.any(R < 0):
        raise ValueError("risk must be finite and >= 0 everywhere")
    return R


def _check_q(q):
    return V.real("q", q, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


# ---------------------------------------------------------------------------------------------
# the q-quantile of |w|
# ---------------------------------------------------------------------------------------------
def _mass_at_zero(noise, R):
    """P(w = 0) = mu_0(R), elementwise (nonzero only at R = 0 with an atom of eps at 0)."""
    if noise.kind == "continuous":  # eps has a density
        return np.zeros_like(R)
    return reduction_factors(noise, R, np.zeros_like(R))[0]


def _scale_guess(noise, R):
    m2 = noise.second_moment
    base = m2 if (np.isfinite(m2) and m2 > 0) else float(getattr(noise, "_scale", 1.0)) ** 2
    return np.sqrt(2.0 * R + base)


def _finite_quantile_r0(noise, q):
    """inf{c : P(|eps| <= c) >= q} for a finite law (R = 0, mu a step function)."""
    values, probs = (np.asarray(x, dtype=np.float64) for x in noise._atoms())
    a, inverse = np.unique(np.abs(values), return_inverse=True)
    cum = np.cumsum(np.bincount(inverse, weights=probs))
    i = min(int(np.searchsorted(cum, q - 1e-14)), a.size - 1)
    return float(a[i])


def _quantile_log(noise, R, q, xatol=None):
    """log c_q(R) for a 1-D array R with P(w = 0) < q everywhere (vectorised Chandrupatla).

    ``xatol``: absolute tolerance in log c (None: a few ulps)."""
    from scipy.optimize import elementwise  # deferred like the rest of the theory side

    def f(u, r):
        return reduction_factors(noise, r, np.exp(u))[0] - q

    g = np.log(_scale_guess(noise, R))
    lo, hi = g - 1.0, g + 1.0
    f_lo, f_hi = f(lo, R), f(hi, R)
    step = np.full_like(R, 2.0)
    for _ in range(64):
        bad_lo, bad_hi = f_lo > 0, f_hi < 0
        if not (bad_lo.any() or bad_hi.any()):
            break
        if bad_lo.any():
            lo_new = np.maximum(lo[bad_lo] - step[bad_lo], -_U_MAX)
            hi[bad_lo], f_hi[bad_lo] = lo[bad_lo], f_lo[bad_lo]
            lo[bad_lo], f_lo[bad_lo] = lo_new, f(lo_new, R[bad_lo])
            step[bad_lo] *= 2
        if bad_hi.any():
            hi_new = np.minimum(hi[bad_hi] + step[bad_hi], _U_MAX)
            lo[bad_hi], f_lo[bad_hi] = hi[bad_hi], f_hi[bad_hi]
            hi[bad_hi], f_hi[bad_hi] = hi_new, f(hi_new, R[bad_hi])
            step[bad_hi] *= 2
    else:
        raise RuntimeError("quantile_clip: no bracket for mu_c(R) = q within |log c| <= 340")
    out = np.empty_like(R)
    exact_lo, exact_hi = f_lo == 0, f_hi == 0
    out[exact_lo], out[exact_hi] = lo[exact_lo], hi[exact_hi]
    todo = ~(exact_lo | exact_hi)
    if todo.any():
        tolerances = None if xatol is None else {"xatol": xatol}
        res = elementwise.find_root(f, (lo[todo], hi[todo]), args=(R[todo],), tolerances=tolerances)
        if not np.all(res.success):
            raise RuntimeError("quantile_clip: root finding did not converge")
        out[todo] = res.x
    return out


def quantile_clip(noise: NoiseLaw, risk, q: float):
    """The q-quantile of |w|: the root c_q(R) of mu_c(R) = P(|w| <= c) = q (SPEC 11A).

    w = N(0, 2R) - eps. Vectorised over ``risk`` (float for a scalar, else an array of its
    shape). Root in u = log c: bracket by doubling steps from log sqrt(2R + E eps^2), then
    Chandrupatla's method (scipy.optimize.elementwise.find_root, Brent-like, elementwise) to a
    few ulps of log c, so c_q is accurate to ~1e-15 relative against ``reduction_factors``.

    R = 0 edge cases: mu_c(0) = P(|eps| <= c) can be a step function (finite laws); then the
    result is inf{c : mu_c(0) >= q}, the smallest |atom| reaching q. When P(w = 0) >= q (an atom
    of eps at 0 carrying mass >= q, or no noise at all) the quantile is 0.0.
    """
    _check_noise(noise)
    q = _check_q(q)
    R = _risk_array(risk)
    if R.size == 0:
        return np.empty(R.shape)
    out = _quantile(noise, np.atleast_1d(R).ravel().copy(), q).reshape(R.shape)
    return float(out) if out.ndim == 0 else out


def _quantile(noise, R, q, xatol=None):
    out = np.zeros_like(R)
    zero_q = _mass_at_zero(noise, R) >= q
    finite_r0 = (R == 0) & (noise.kind == "discrete") & ~zero_q
    if finite_r0.any():
        out[finite_r0] = _finite_quantile_r0(noise, q)
    todo = ~zero_q & ~finite_r0
    if todo.any():
        out[todo] = np.exp(_quantile_log(noise, R[todo], q, xatol))
    return out


# ---------------------------------------------------------------------------------------------
# the walk of log c in the fast regime
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Lattice:
    q: float
    spacing: float
    num: int
    den: int  # 0 on the fine grid
    down: tuple  # ((offset < 0, weight), ...) taken with probability mu
    up: tuple  # ((offset > 0, weight), ...) taken with probability 1 - mu
    band: int  # largest |offset| (>= 1)
    birth_death: bool


def _split(dist):
    """Jump of ``dist`` >= 0 sites as (floor, ceil) offsets with linear weights (exact mean)."""
    k = math.floor(dist)
    f = dist - k
    moves = [(k, 1.0 - f)] if f < 1.0 else []
    if f > 0:
        moves.append((k + 1, f))
    return [(o, w) for o, w in moves if w > 0]


def _lattice(q, clip_lr, max_den, fine_sites):
    frac = Fraction(q).limit_denominator(max_den)
    if abs(float(frac) - q) <= _RATIONAL_TOL:
        num, den = frac.numerator, frac.denominator
        h = clip_lr / den
        down, up = ((-(den - num), 1.0),), ((num, 1.0),)
        return _Lattice(q, h, num, den, down, up, max(num, den - num), (num, den) == (1, 2))
    m = max(int(fine_sites), math.ceil(4.0 / min(q, 1.0 - q)))
    h = clip_lr / m
    down = tuple((-o, w) for o, w in _split((1.0 - q) * m))
    up = tuple((o, w) for o, w in _split(q * m))
    band = max(abs(o) for o, _ in down + up)
    return _Lattice(q, h, 0, 0, down, up, max(band, 1), False)


def _anchor(mu, q):
    """The first site with mu >= q (mu is nondecreasing in c): recurrent, with pi > 0 even when
    mu is a step function (R = 0, finite law) and sites with mu = 0 or 1 are transient."""
    return min(int(np.searchsorted(mu, q)), mu.size - 1)


def _pi_birth_death(mu):
    """q = 1/2: pi_{n+1} / pi_n = (1 - mu_n) / mu_{n+1} (truncated chain: same balance)."""
    with np.errstate(divide="ignore"):
        log_r = np.log1p(-mu[:-1]) - np.log(mu[1:])
    k = _anchor(mu, 0.5)
    logp = np.zeros(mu.size)
    logp[k + 1 :] = np.cumsum(log_r[k:])
    logp[:k] = -np.cumsum(log_r[:k][::-1])[::-1]
    logp -= logp.max()
    p = np.exp(logp)
    return p / p.sum()


def _pi_banded(mu, lat):
    """Stationary law of the truncated walk: (P^T - I) pi = 0 with the centre row -> pi_k = 1."""
    from scipy.linalg import solve_banded

    n = mu.size
    lower = max((o for o, _ in lat.up), default=0)  # A[i, j] != 0 for i - j = offset
    upper = max((-o for o, _ in lat.down), default=0)
    ab = np.zeros((lower + upper + 1, n))
    j = np.arange(n)
    for moves, prob in ((lat.down, mu), (lat.up, 1.0 - mu)):
        for o, w in moves:
            if o == 0:
                continue
            inside = (j + o >= 0) & (j + o < n)
            p = np.where(inside, w * prob, 0.0)
            ab[upper + o] += p  # A[j + o, j] += P(j -> j + o)
            ab[upper] -= p  # A[j, j] = P(stay) - 1
    k = _anchor(mu, lat.q)
    cols = np.arange(max(0, k - lower), min(n, k + upper + 1))
    ab[upper + k - cols, cols] = 0.0
    ab[upper, k] = 1.0
    rhs = np.zeros(n)
    rhs[k] = 1.0
    x = solve_banded((lower, upper), ab, rhs, overwrite_ab=True, check_finite=False)
    x = np.maximum(x, 0.0)
    return x / x.sum()


def _solve_pi(mu, lat, method):
    if method == "birth_death" or (method == "auto" and lat.birth_death):
        if not lat.birth_death:
            raise ValueError("method='birth_death' needs q = 1/2")
        return _pi_birth_death(mu)
    return _pi_banded(mu, lat)


class _Window:
    """Sites [lo, hi) of the lattice for one R, with the factors evaluated there."""

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi
        self.mu = np.empty(0)
        self.nu = np.empty(0)
        self.pending = (lo, hi)  # sites still to evaluate, prepended or appended
        self.pi = None


def _cheb_plan(u):
    """Pieces of at most _CHEB_WIDTH in u, each with Chebyshev-Lobatto nodes and check sites.

    None where interpolation would not save evaluations (fewer than _CHEB_MIN_SITES sites per
    piece, i.e. a lattice coarser than _CHEB_WIDTH / _CHEB_MIN_SITES in log c).
    """
    h = u[1] - u[0] if u.size > 1 else np.inf
    per_piece = int(_CHEB_WIDTH / h) if np.isfinite(h) else 0
    if per_piece < _CHEB_MIN_SITES or u.size < _CHEB_MIN_SITES:
        return None
    n_pieces = math.ceil(u.size / per_piece)
    edges = np.linspace(0, u.size, n_pieces + 1).round().astype(int)
    j = np.arange(_CHEB_NODES + 1)
    pieces = []
    for a, b in zip(edges[:-1], edges[1:]):
        lo, hi = u[a], u[b - 1]
        nodes = 0.5 * (lo + hi) - 0.5 * (hi - lo) * np.cos(np.pi * j / _CHEB_NODES)
        check = a + np.unique(np.linspace(0, b - a - 1, _CHEB_CHECKS + 2)[1:-1].round()).astype(int)
        pieces.append((slice(a, b), nodes, check))
    return pieces


def _cheb_interp(nodes, values, x):
    """Barycentric interpolation through Chebyshev-Lobatto ``nodes`` (rows of ``values``)."""
    w = (-1.0) ** np.arange(nodes.size)
    w[0] *= 0.5
    w[-1] *= 0.5
    d = x[:, None] - nodes[None, :]
    hit = d == 0
    d[hit] = 1.0
    k = w / d
    out = (k @ values.T) / k.sum(axis=1)[:, None]
    rows, cols = np.nonzero(hit)
    out[rows] = values.T[cols]
    return out.T


def _evaluate(noise, R, windows, lat, log_c0, interpolate):
    """Evaluate mu, nu at every window's pending sites in batched ``reduction_factors`` calls.

    For quadrature laws (about 60 us per pair) on fine lattices, pieces of the segment are
    evaluated at Chebyshev nodes in u = log c and interpolated; each interpolant is checked at
    interior sites against exact values (to 1e-13 absolute in mu, 1e-13 relative in nu) and the
    whole segment is evaluated exactly on any failure (e.g. at R = 0, where mu can have kinks).
    """
    interp = interpolate and noise.kind == "continuous"
    jobs = []  # (window index, u at sites, plan or None)
    for i, w in enumerate(windows):
        if w.pending is None:
            continue
        u = log_c0 + np.arange(*w.pending) * lat.spacing
        jobs.append((i, u, _cheb_plan(u) if interp else None))
    if not jobs:
        return

    def batch(parts):
        rs = np.concatenate([np.full(x.size, R[i]) for i, x in parts])
        mu, nu = reduction_factors(noise, rs, np.exp(np.concatenate([x for _, x in parts])))
        bounds = np.cumsum([0] + [x.size for _, x in parts])
        mu = np.clip(mu, 0.0, 1.0)  # quadrature may overshoot 1 by an ulp or so
        return [(mu[a:b], nu[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def points(u, plan):
        if plan is None:
            return u
        return np.concatenate([np.concatenate([nodes, u[check]]) for _, nodes, check in plan])

    first = batch([(i, points(u, plan)) for i, u, plan in jobs])
    values, redo = [], []
    for (_, u, plan), (mu, nu) in zip(jobs, first):
        if plan is not None:
            mu_all, nu_all = np.empty(u.size), np.empty(u.size)
            ok, pos = True, 0
            for sl, nodes, check in plan:
                m, k = nodes.size, check.size
                mu_n, nu_n = mu[pos : pos + m], nu[pos : pos + m]
                mu_c, nu_c = mu[pos + m : pos + m + k], nu[pos + m : pos + m + k]
                pos += m + k
                mu_i, nu_i = _cheb_interp(nodes, np.stack([mu_n, nu_n]), u[sl])
                j = check - sl.start
                ok = ok and np.max(np.abs(mu_i[j] - mu_c)) <= 1e-13
                ok = ok and np.max(np.abs(nu_i[j] - nu_c)) <= 1e-13 * np.max(nu_n)
                mu_i[j], nu_i[j] = mu_c, nu_c
                mu_all[sl], nu_all[sl] = mu_i, nu_i
            if not ok:
                redo.append(len(values))
            mu, nu = np.clip(mu_all, 0.0, 1.0), np.maximum(nu_all, 0.0)
        values.append((mu, nu))
    if redo:
        exact = batch([(jobs[k][0], jobs[k][1]) for k in redo])
        for k, v in zip(redo, exact):
            values[k] = v
    for (i, _, _), (mu, nu) in zip(jobs, values):
        w = windows[i]
        a, b = w.pending
        if w.mu.size == 0:
            w.mu, w.nu = mu, nu
        elif a < w.lo:
            w.mu, w.nu = np.concatenate([mu, w.mu]), np.concatenate([nu, w.nu])
        else:
            w.mu, w.nu = np.concatenate([w.mu, mu]), np.concatenate([w.nu, nu])
        w.lo, w.hi = min(w.lo, a), max(w.hi, b)
        w.pending = None


def _extension(pi, band, tail_tol):
    """Sites to add below index 0 so that the outer band's mass drops below ``tail_tol``.

    log pi is concave in the tails (the decay accelerates as mu -> 0 or 1), so extrapolating the
    decay rate measured one band inside the edge over-estimates the tail: a safe step. Falls
    back to +50 % where pi does not decay there.
    """
    n = pi.size
    a, b = min(band, n - 1), min(2 * band, n - 1)
    with np.errstate(divide="ignore"):
        rate = (np.log(pi[b]) - np.log(pi[a])) / max(b - a, 1)  # log-decay per site outward
        excess = np.log(pi[:band].sum()) - np.log(0.1 * tail_tol)
    if not (np.isfinite(rate) and rate > 1e-3 and np.isfinite(excess)):
        return max(band, n // 2)
    return int(min(max(band, math.ceil(excess / rate) + band), max(band, n)))


@dataclass(frozen=True)
class _Options:
    method: str
    tail_tol: float
    max_den: int
    fine_sites: int
    interpolate: bool


def _options(noise, q, clip_lr, log_c0, method, tail_tol, max_den, fine_sites, interpolate):
    _check_noise(noise)
    q = _check_q(q)
    clip_lr = V.positive("clip_lr", clip_lr)
    log_c0 = V.real("log_c0", log_c0)
    if method not in ("auto", "birth_death", "banded"):
        raise ValueError(f"method must be 'auto', 'birth_death' or 'banded', got {method!r}")
    opts = _Options(
        method=method,
        tail_tol=V.real("tail_tol", tail_tol, lo=0.0, hi=1e-3, lo_open=True),
        max_den=V.count("max_den", max_den),
        fine_sites=V.count("fine_sites", fine_sites, lo=2),
        interpolate=bool(interpolate),
    )
    return q, clip_lr, log_c0, opts


def _stationary_batch(noise, R, q, clip_lr, log_c0, opts, exact_quantile):
    """Windows (with pi) for a 1-D array R, plus the lattice and c_q(R).

    ``exact_quantile``: c_q to a few ulps (else to 1e-6 in log c: only the window's centre)."""
    lat = _lattice(q, clip_lr, opts.max_den, opts.fine_sites)
    if opts.method == "birth_death" and not lat.birth_death:
        raise ValueError("method='birth_death' needs q = 1/2 (exactly, within 1e-12)")
    p0 = _mass_at_zero(noise, R)
    if np.any(p0 >= q):
        raise ValueError(
            f"no stationary law: P(w = 0) = {float(p0.max()):.6g} >= q = {q} at some R (an atom "
            "of eps at 0 with R = 0): mu_c >= q for all c, so log c drifts to -inf"
        )
    cq = _quantile(noise, R, q, None if exact_quantile else 1e-6)
    uq = np.log(cq)
    # width of pi from the diffusion approximation: Var(u) ~ eta_C q (1 - q) / (2 dmu/du)
    mu_pm = reduction_factors(
        noise, np.concatenate([R, R]), np.exp(np.concatenate([uq - _SLOPE_STEP, uq + _SLOPE_STEP]))
    )[0]
    slope = np.maximum((mu_pm[R.size :] - mu_pm[: R.size]) / (2 * _SLOPE_STEP), 1e-3)
    sd = np.sqrt(clip_lr * q * (1.0 - q) / (2.0 * slope))
    half = np.ceil(_WIDTH_SDS * sd / lat.spacing).astype(np.int64) + 2 * lat.band
    half = np.minimum(half, _MAX_SITES // 4)
    centre = np.round((uq - log_c0) / lat.spacing).astype(np.int64)
    n_min = math.floor((-_U_MAX - log_c0) / lat.spacing)
    n_max = math.ceil((_U_MAX - log_c0) / lat.spacing)
    windows = [
        _Window(max(int(c - h), n_min), min(int(c + h + 1), n_max)) for c, h in zip(centre, half)
    ]
    active = list(range(R.size))
    tol, b = opts.tail_tol, lat.band
    while active:
        _evaluate(noise, R[active], [windows[i] for i in active], lat, log_c0, opts.interpolate)
        again = []
        for i in active:
            w = windows[i]
            w.pi = _solve_pi(w.mu, lat, opts.method)
            lo_mass, hi_mass = w.pi[:b].sum(), w.pi[-b:].sum()
            if lo_mass > tol and w.lo > n_min:
                w.pending = (max(w.lo - _extension(w.pi, b, tol), n_min), w.lo)
            elif hi_mass > tol and w.hi < n_max:
                w.pending = (w.hi, min(w.hi + _extension(w.pi[::-1], b, tol), n_max))
            elif lo_mass > tol or hi_mass > tol:
                raise RuntimeError("quantile_stationary: window reached |log c| = 340")
            if w.pending is not None:
                if w.hi - w.lo > _MAX_SITES:
                    raise RuntimeError(
                        f"quantile_stationary: more than {_MAX_SITES} sites needed (R = {R[i]})"
                    )
                again.append(i)
        active = again
    return lat, windows, cq


def quantile_stationary(
    noise: NoiseLaw,
    risk: float,
    q: float,
    clip_lr: float,
    log_c0: float,
    *,
    method: str = "auto",
    tail_tol: float = 1e-14,
    max_den: int = 1000,
    fine_sites: int = 64,
    interpolate: bool = True,
) -> QuantileStationary:
    """Stationary law pi_R of u = log c for quantile tracking with O(1) step (SPEC 11A.b).

    The walk: u -> u - clip_lr (1 - q) with probability mu_{e^u}(R) (not clipped), u -> u +
    clip_lr q otherwise. ``log_c0`` (log of the initial threshold in residual units) fixes the
    lattice phase; pi depends on log_c0 mod (clip_lr / den).

    Options: ``method`` 'auto' (closed form at q = 1/2, banded solve otherwise), 'birth_death'
    (q = 1/2 only) or 'banded'; ``tail_tol`` the pi-mass allowed in each outer band of the
    window; ``max_den`` the largest denominator tried for q (``fractions.Fraction``); beyond,
    or when q is not num/den within 1e-12, the fine grid with ``fine_sites`` sites per clip_lr;
    ``interpolate`` Chebyshev interpolation of the factors on fine lattices (quadrature laws,
    checked to 1e-13; False: every site exactly). See the module docstring.
    """
    q, clip_lr, log_c0, opts = _options(
        noise, q, clip_lr, log_c0, method, tail_tol, max_den, fine_sites, interpolate
    )
    R = float(_risk_array(risk))
    lat, (w,), cq = _stationary_batch(noise, np.array([R]), q, clip_lr, log_c0, opts, True)
    u = log_c0 + np.arange(w.lo, w.hi) * lat.spacing
    c = np.exp(u)
    m_u = float(w.pi @ u)
    nu_q = float(reduction_factors(noise, R, cq[0])[1])
    return QuantileStationary(
        risk=R,
        q=q,
        clip_lr=clip_lr,
        log_c0=log_c0,
        spacing=lat.spacing,
        num=lat.num,
        den=lat.den,
        exact_lattice=lat.den > 0,
        log_clip=u,
        pi=w.pi,
        mu=w.mu,
        nu=w.nu,
        mubar=float(w.pi @ w.mu),
        nubar=float(w.pi @ w.nu),
        mean_clip=float(w.pi @ c),
        var_log_clip=float(w.pi @ (u - m_u) ** 2),
        clip_quantile=float(cq[0]),
        nu_quantile=nu_q,
        tail_mass=float(w.pi[: lat.band].sum() + w.pi[-lat.band :].sum()),
    )


def quantile_fast_factors(
    noise: NoiseLaw,
    risk,
    q: float,
    clip_lr: float,
    log_c0: float,
    *,
    method: str = "auto",
    tail_tol: float = 1e-14,
    max_den: int = 1000,
    fine_sites: int = 64,
    interpolate: bool = True,
):
    """(mubar, nubar, mean_clip) = E_pi_R[mu_c(R)], E_pi_R[nu_c(R)], E_pi_R[c] on an array of R.

    The fast-regime factors of SPEC 11A.b (mubar = q up to the truncated tail, ~1e-14), with
    the same arguments as ``quantile_stationary``; arrays of ``risk``'s shape. All R values are
    evaluated together (one batched ``reduction_factors`` call per window-growth stage).
    """
    q, clip_lr, log_c0, opts = _options(
        noise, q, clip_lr, log_c0, method, tail_tol, max_den, fine_sites, interpolate
    )
    R = _risk_array(risk)
    flat = np.atleast_1d(R).ravel()
    if flat.size == 0:
        return np.empty(R.shape), np.empty(R.shape), np.empty(R.shape)
    lat, windows, _ = _stationary_batch(noise, flat, q, clip_lr, log_c0, opts, False)
    out = np.empty((3, flat.size))
    for i, w in enumerate(windows):
        c = np.exp(log_c0 + np.arange(w.lo, w.hi) * lat.spacing)
        out[:, i] = w.pi @ w.mu, w.pi @ w.nu, w.pi @ c
    mubar, nubar, mean_c = (x.reshape(R.shape) for x in out)
    return mubar, nubar, mean_c
