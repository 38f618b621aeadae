"""Bias factors of clipped SGD with non-centred data, and the perturbation fix (SPEC section 10).

With w = r + z - eps, z ~ N(0, s^2), s = sqrt(2R), eps ~ noise independent of z, and the
perturbed clip h(w) = min(1, c / sqrt(w^2 + delta^2)), psi(w) = w h(w):

    mu    = E psi'(w)     psi'(w) = 1 if w^2 + delta^2 <= c^2 else c delta^2 / (w^2 + delta^2)^{3/2}
    kappa = E psi(w)
    nu1   = E[w^2 h(w)^2]
    nu0   = E[h(w)^2]

At delta = 0: mu = P(|w| <= c), kappa = E clamp_c(w), nu1 = E min(w^2, c^2),
nu0 = E min(1, c^2 / w^2).

Method. Let b = sqrt(c^2 - delta^2) (the kink, 0 when delta >= c) and rho = sqrt(w^2 + delta^2).
On |w| <= b the clip is the identity; on |w| > b every integrand is analytic in w, with its
complex singularities at w = +-i delta, so at distance rho >= max(c, delta) from every point of
the region. Each factor is split, per value of eps (w | eps ~ N(m, s^2), m = r - eps), into

* a closed Gaussian part: P(|w| <= b), E clamp_b(w), E min(w^2, b^2), and
* a remainder E[g(w); |w| > b], each g of one sign (kappa: of sign(w)) and written without
  cancellation:
  mu: c delta^2 / rho^3;  kappa: sign(w) a (|w| - b)(|w| + b) / (rho (c |w| + b rho));
  nu1: a (|w| - b)(|w| + b) / rho^2;  nu0: c^2 / rho^2;  where a = min(delta, c)^2 = c^2 - b^2.
  At delta = 0 only nu0 has a remainder (c^2 / w^2 on |w| > c).

The remainder is a Gauss-Legendre sum in z = (w - m)/s on panels: a width-2 grid on [-9, 9],
the kink points z = (+-b - m)/s (the integrand jumps or kinks there: SPEC 10 trap) and a ratio-2
grid in |w| from b + max(c, delta)/2 outward (the singularities at +-i delta), so each 8-point
panel sees its nearest singularity at >= 3 half-widths. When the whole Gaussian window is at
least 10 s inside the region (|m| - b > 10 s, or b = 0 and |m + i delta| > 10 s) a 20-point
Gauss-Hermite rule is exact to rounding; when it is 10 s inside |w| < b the remainder is 0.

The average over eps is as in ``_factors``: exact for Gaussian (mixture) noise (w is Gaussian),
an exact finite sum for finite laws, otherwise Gauss-Legendre on panels with breakpoints at the
density's kinks, on a ratio-2 grid around 0 from scale/8 out to X (the law's 1e-17 tail point),
on steps of 4 scale out to 40 scale (exponential tails), around the transitions x = r -+ b
(offsets s {0, 1, 2, 4, 8}) and on a ratio-2 grid around x = r (the singularities of the
smoothed integrand). Beyond X only the leading tail terms are kept (nu1: c^2 P, kappa: +-c P).

References: Chen, Wu, Hong (NeurIPS 2020), "Understanding gradient clipping in private SGD: a
geometric perspective" (perturbation before clipping, their Example 2); SPEC section 10.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ._factors import _MAX_RISK, _gauss_moments
from ._noise import NoiseLaw

__all__ = ["bias_factors", "perturbed_clamp_mean", "clip_bias_fixed_point"]

_SQRT2PI = math.sqrt(2 * math.pi)
_SQRT2 = math.sqrt(2.0)
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(20)
_GH_W = _GH_W / _GH_W.sum()
_Z_MAX = 9.0  # Gaussian window in z: mass outside 2 Phi(-9) ~ 2e-19
_Z_GRID = np.arange(-_Z_MAX, _Z_MAX + 0.5, 2.0)  # 9 panels of width 2: phi alone to ~ 1e-14
_FAR = 10.0  # |m| - b > _FAR s: the Gaussian window lies in the smooth region
_NARROW = 0.1  # b < _NARROW s: E[w; |w| <= b] by direct quadrature (the closed form cancels)
_TRANSITION = np.array([0.0, 1.0, 2.0, 4.0, 8.0])
_TAIL_P = 1e-17
_BLOCK_ROWS = 4096  # outer rows per block (inner arrays of ~ 1e6 nodes)


# ---------------------------------------------------------------------------------------------
# Conditional (inner Gaussian) pieces, w ~ N(m, s^2)
# ---------------------------------------------------------------------------------------------
def _gauss_first(m, s, b, p_in):
    """E[w; |w| <= b] and P(w > b) - P(w < -b) for w ~ N(m, s^2) (1-D arrays, s = 0 allowed)."""
    from scipy import special

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = (-b - m) / s
        beta = (b - m) / s
        phi_a = np.exp(-0.5 * alpha * alpha) / _SQRT2PI
        phi_b = np.exp(-0.5 * beta * beta) / _SQRT2PI
        e1 = m * p_in + s * (phi_a - phi_b)
        narrow = b < _NARROW * s
        if np.any(narrow):
            mn, sn, bn = m[narrow], s[narrow], b[narrow]
            w = bn[:, None] * _GL_X
            dens = np.exp(-0.5 * ((w - mn[:, None]) / sn[:, None]) ** 2) / (_SQRT2PI * sn[:, None])
            e1[narrow] = (bn[:, None] * _GL_W * dens * w).sum(axis=1)
        # t = Phi(-beta) - Phi(alpha) = (erf(u) + erf(v)) / 2, u = (m + b)/(s sqrt2), v = (m - b)/..
        u = (m + b) / (s * _SQRT2)
        v = (m - b) / (s * _SQRT2)
        inside = np.abs(m) < b  # u > 0 > v: opposite signs, compare erf(u) with erf(|v|)
        far_in = inside & (np.minimum(u, -v) > 0.5)
        t = 0.5 * (special.erf(u) + special.erf(v))
        t = np.where(far_in, 0.5 * (special.erfc(-v) - special.erfc(u)), t)
    degenerate = s == 0
    if np.any(degenerate):
        in_d = np.abs(m) <= b
        e1 = np.where(degenerate, np.where(in_d, m, 0.0), e1)
        t = np.where(degenerate, np.where(in_d, 0.0, np.sign(m)), t)
    return e1, t


def _g_values(w, c, b, delta, a, perturbed):
    """Remainder integrands on |w| > b; c, b, delta, a broadcast against w."""
    if not perturbed:
        return (c * c / (w * w),)
    aw = np.abs(w)
    rho2 = w * w + delta * delta
    rho = np.sqrt(rho2)
    num = a * (aw - b) * (aw + b)
    den = rho * (c * aw + b * rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        gk = np.sign(w) * num / den
    gk = np.where(den > 0, gk, 0.0)
    return (c * delta * delta / (rho2 * rho), gk, num / rho2, c * c / rho2)


def _remainder_near(m, s, c, b, delta, a, sg, perturbed):
    """E[g(w); |w| > b], w ~ N(m, s^2), s > 0: graded Gauss-Legendre panels in z."""
    u1 = b + 0.5 * sg
    levels = int(math.ceil(math.log2(max(8.0 * float(np.max(s / u1)), 1.0)))) + 1
    geo = (u1[:, None] * 2.0 ** np.arange(levels)) / s[:, None]  # ratio-2 grid in |w|, in z
    z0 = -m / s  # w = 0
    n = m.size
    edges = np.concatenate(
        [
            np.broadcast_to(_Z_GRID, (n, _Z_GRID.size)),
            (z0 - b / s)[:, None],
            (z0 + b / s)[:, None],
            z0[:, None] - geo,
            z0[:, None] + geo,
        ],
        axis=1,
    )
    edges = np.sort(np.clip(edges, -_Z_MAX, _Z_MAX), axis=1)
    half = 0.5 * (edges[:, 1:] - edges[:, :-1])
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    # panels of positive width in the region |w| > b (no panel straddles w = +-b)
    keep = (half > 0) & (np.abs(m[:, None] + s[:, None] * mid) > b[:, None])
    rows, cols = np.nonzero(keep)
    half, mid = half[rows, cols], mid[rows, cols]
    z = mid[:, None] + half[:, None] * _GL_X
    wt = half[:, None] * _GL_W * np.exp(-0.5 * z * z) / _SQRT2PI
    m, s, c, b, delta, a = (x[rows][:, None] for x in (m, s, c, b, delta, a))
    vals = _g_values(m + s * z, c, b, delta, a, perturbed)
    return [np.bincount(rows, weights=(wt * g).sum(axis=1), minlength=n) for g in vals]


def _remainder_far(m, s, c, b, delta, a, perturbed):
    """The same when the Gaussian window lies in the region: 20-point Gauss-Hermite."""
    w = m[:, None] + s[:, None] * _GH_X
    col = lambda x: x[:, None]  # noqa: E731
    return [g @ _GH_W for g in _g_values(w, col(c), col(b), col(delta), col(a), perturbed)]


def _row_factors(m, s, c, delta):
    """(mu, kappa, nu1, nu0) given eps, i.e. for w ~ N(m, s^2); 1-D arrays of equal length."""
    perturbed = bool(np.any(delta > 0))
    b = np.sqrt(np.maximum(c * c - delta * delta, 0.0))
    b = np.where(delta == 0, c, b)
    a = np.minimum(delta, c) ** 2
    sg = np.maximum(c, delta)
    sg = np.where(sg > 0, sg, 1.0)  # c = delta = 0: every remainder is 0 anyway
    p_in, q = _gauss_moments(m, s, b)
    e1, t = _gauss_first(m, s, b, p_in)
    mu, kappa, nu1, nu0 = p_in.copy(), e1 + b * t, q, p_in.copy()

    rem = [np.zeros(m.size) for _ in range(4 if perturbed else 1)]
    dist = np.abs(m) - b
    point = (s == 0) & (dist > 0)
    # Gauss-Hermite where the window lies in the region and the singularities +-i delta are
    # >= 10 s away; with b = 0 (delta >= c) every integrand is analytic on the whole line
    far = (s > 0) & ((dist > _FAR * s) | ((b == 0) & (m * m + delta * delta > (_FAR * s) ** 2)))
    near = (s > 0) & ~far & (dist >= -_FAR * s)  # dist < -_FAR s: the window is all inside
    for sel, fn in ((point, "point"), (far, "far"), (near, "near")):
        if not np.any(sel):
            continue
        args = [x[sel] for x in (m, s, c, b, delta, a)]
        if fn == "point":
            vals = _g_values(args[0], *args[2:], perturbed)
        elif fn == "far":
            vals = _remainder_far(*args, perturbed)
        else:
            vals = _remainder_near(*args, sg[sel], perturbed)
        for acc, v in zip(rem, vals):
            acc[sel] = v
    if perturbed:
        mu += rem[0]
        kappa += rem[1]
        nu1 += rem[2]
        nu0 += rem[3]
    else:
        nu0 += rem[0]
    return mu, kappa, nu1, nu0


# ---------------------------------------------------------------------------------------------
# Average over the noise
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _tail_point(noise) -> float:
    """Smallest X = scale 2^k with P(|eps| > X) <= _TAIL_P (the outer grid ends there)."""
    x = float(noise._scale)
    for _ in range(200):
        if float(noise._sf(x) + noise._cdf(-x)) <= _TAIL_P:
            return x
        x *= 2.0
    return x


def _outer_nodes(noise, r, s, c, b, delta):
    """Per-point Gauss-Legendre nodes in eps (rows: points): nodes, weights, X."""
    scale = float(noise._scale)
    sg = np.maximum(c, delta)
    X = np.full(r.shape, _tail_point(noise))
    g0 = scale / 8.0
    n_geo = int(math.ceil(math.log2(np.max(X) / g0))) + 1
    # ratio 2 from scale/8 (heavy tails, the law's centre), plus steps of 4 scale up to 40 scale:
    # an exponential tail needs panels of a few scales (a ratio-2 panel [16, 32] errs by 1e-11)
    geo = np.union1d(g0 * 2.0 ** np.arange(n_geo), 4.0 * scale * np.arange(1, 11))
    u1 = np.maximum(b + 0.5 * np.where(sg > 0, sg, scale), 0.25 * s)
    reach = 8.0 * (np.abs(r) + scale + s)
    n_r = int(max(1, math.ceil(math.log2(max(np.max(reach / u1), 1.0))) + 1))
    rgeo = u1[:, None] * 2.0 ** np.arange(n_r)
    trans = s[:, None] * _TRANSITION
    n = r.size
    kinks = np.asarray(noise._breakpoints, dtype=np.float64)
    edges = np.concatenate(
        [
            np.broadcast_to(geo, (n, geo.size)),
            np.broadcast_to(-geo, (n, geo.size)),
            np.broadcast_to(kinks, (n, kinks.size)),
            np.zeros((n, 1)),
            r[:, None] + rgeo,
            r[:, None] - rgeo,
            r[:, None] + np.zeros((n, 1)),
            (r + b)[:, None] + trans,
            (r + b)[:, None] - trans,
            (r - b)[:, None] + trans,
            (r - b)[:, None] - trans,
            -X[:, None],
            X[:, None],
        ],
        axis=1,
    )
    edges = np.sort(np.clip(edges, -X[:, None], X[:, None]), axis=1)
    lo, hi = edges[:, :-1], edges[:, 1:]
    half = 0.5 * (hi - lo)
    x = (0.5 * (hi + lo))[..., None] + half[..., None] * _GL_X
    wts = half[..., None] * _GL_W * noise._pdf(x)
    return x.reshape(n, -1), wts.reshape(n, -1), X


def _continuous(noise, r, s, c, delta):
    b = np.where(delta < c, np.sqrt(np.maximum(c * c - delta * delta, 0.0)), 0.0)
    b = np.where(delta == 0, c, b)
    x, wts, X = _outer_nodes(noise, r, s, c, b, delta)
    n = r.size
    pt, col = np.nonzero(wts != 0)
    out = [np.zeros(n) for _ in range(4)]
    for i in range(0, pt.size, _BLOCK_ROWS):
        p, k = pt[i : i + _BLOCK_ROWS], col[i : i + _BLOCK_ROWS]
        vals = _row_factors(r[p] - x[p, k], s[p], c[p], delta[p])
        for acc, v in zip(out, vals):
            acc += np.bincount(p, weights=wts[p, k] * v, minlength=n)
    lower, upper = noise._cdf(-X), noise._sf(X)  # eps < -X: w > 0 large; eps > X: w < 0
    out[1] += c * (lower - upper)
    out[2] += c * c * (lower + upper)
    return out


def _gaussian(noise, r, s, c, delta):
    out = [np.zeros(r.size) for _ in range(4)]
    for wgt, mean, sd in zip(*noise._gaussian_components()):
        vals = _row_factors(r - mean, np.sqrt(s * s + sd * sd), c, delta)
        for acc, v in zip(out, vals):
            acc += wgt * v
    return out


def _finite(noise, r, s, c, delta):
    values, probs = (np.asarray(x, dtype=np.float64) for x in noise._atoms())
    values, inverse = np.unique(values, return_inverse=True)
    probs = np.bincount(inverse, weights=probs)
    n, k = r.size, values.size
    out = [np.zeros(n) for _ in range(4)]
    step = max(1, _BLOCK_ROWS // k)
    for i in range(0, n, step):
        sl = slice(i, i + step)
        rr = np.repeat(r[sl], k)
        vals = _row_factors(
            rr - np.tile(values, rr.size // k),
            np.repeat(s[sl], k),
            np.repeat(c[sl], k),
            np.repeat(delta[sl], k),
        )
        for acc, v in zip(out, vals):
            acc[sl] = v.reshape(-1, k) @ probs
    return out


def bias_factors(noise: NoiseLaw, r, R, c, delta=0.0):
    """Factors (mu, kappa, nu1, nu0) of clipped SGD with a mean shift and perturbation.

    w = r + z - eps with z ~ N(0, 2R), eps ~ ``noise``; h(w) = min(1, c / sqrt(w^2 + delta^2)),
    psi(w) = w h(w): mu = E psi'(w), kappa = E psi(w), nu1 = E[w^2 h^2], nu0 = E[h^2]. At
    delta = 0: P(|w| <= c), E clamp_c(w), E min(w^2, c^2), E min(1, c^2 / w^2). ``c`` None or
    inf: unclipped (1, r - E eps, E w^2, 1). Broadcasts over r, R, c, delta; numpy arrays out.

    References: Chen, Wu, Hong (NeurIPS 2020); SPEC section 10.
    """
    if not isinstance(noise, NoiseLaw):
        raise ValueError(
            f"noise must be a NoiseLaw (e.g. Exponential(1.0)), got {type(noise).__name__}"
        )
    r = np.asarray(r, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    c = np.asarray(np.inf if c is None else c, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    if np.any(~np.isfinite(r)):
        raise ValueError("r must be finite everywhere")
    if np.any(~np.isfinite(R)) or np.any(R < 0) or np.any(R > _MAX_RISK):
        raise ValueError(f"R must be finite, >= 0 and <= {_MAX_RISK:g} everywhere")
    if np.any(np.isnan(c)) or np.any(c < 0):
        raise ValueError("c must be >= 0 (inf or None for no clipping) everywhere")
    if np.any(~np.isfinite(delta)) or np.any(delta < 0):
        raise ValueError("delta must be finite and >= 0 everywhere")
    r, R, c, delta = np.broadcast_arrays(r, R, c, delta)
    shape = r.shape
    r, R, c, delta = (np.ravel(x) for x in (r, R, c, delta))
    s = np.sqrt(2.0 * R)
    unclipped = np.isinf(c)
    cf = np.where(unclipped, 1.0, c)
    if noise.kind == "gaussian":
        mu, kappa, nu1, nu0 = _gaussian(noise, r, s, cf, delta)
    elif noise.kind == "discrete":
        mu, kappa, nu1, nu0 = _finite(noise, r, s, cf, delta)
    else:
        mu, kappa, nu1, nu0 = _continuous(noise, r, s, cf, delta)
    if np.any(unclipped):
        mean, second = noise.mean, noise.second_moment
        mu = np.where(unclipped, 1.0, mu)
        kappa = np.where(unclipped, r - mean, kappa)
        nu1 = np.where(unclipped, 2.0 * R + r * r - 2.0 * r * mean + second, nu1)
        nu0 = np.where(unclipped, 1.0, nu0)
    return tuple(np.reshape(x, shape) for x in (mu, kappa, nu1, nu0))


def perturbed_clamp_mean(x, c, k):
    """E clamp_c(x + k zeta), zeta ~ N(0, 1), in closed form (k = 0: clamp_c(x)); broadcasts.

    Chen-Wu-Hong's Example 2 smoothing: G_k(x) = 1/2 sum_i perturbed_clamp_mean(x - a_i, c, k).
    """
    x, c, k = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, c, k)))
    shape = x.shape
    x, c, k = (np.ravel(v) for v in (x, c, k))
    p_in, _ = _gauss_moments(x, k, c)
    e1, t = _gauss_first(x, k, c, p_in)
    return np.reshape(e1 + c * t, shape)


def clip_bias_fixed_point(noise, eigenvalues, m, c, *, lr=None, perturbation=0.0, d=None):
    """Stationary point of SPEC 10's (perturbed) bias ODE: dict with r, R, population, ...

    ``eigenvalues``: the spectrum of K, one per coordinate (D = sum); ``m``: the data mean in
    the eigenbasis (same length). ``lr`` None: the limit gamma -> 0 (the mean part only).
    ``perturbation`` k: delta^2 = k^2 d / D with d the ambient dimension (default: the length
    of ``eigenvalues``). The stationary equations depend on K and m only through
    A = m^T K^{-1} m:

        mu r + A kappa = 0,   R = gamma (nu1 + delta^2 nu0) / (4 mu) + A kappa^2 / (2 mu^2)

    with (mu, kappa, nu1, nu0) at (r, R, c, delta). Population excess risk R + r^2 / 2.
    """
    from scipy import optimize

    lam = np.asarray(eigenvalues, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    if lam.ndim != 1 or lam.shape != m.shape or np.any(lam <= 0):
        raise ValueError("eigenvalues must be positive, one per coordinate, m of the same length")
    D = float(lam.sum())
    d = lam.size if d is None else int(d)
    A = float(np.sum(m * m / lam))
    delta = float(perturbation) * math.sqrt(d / D)
    gamma = 0.0 if lr is None else float(lr)

    def equations(p):
        r, logR = p
        R = math.exp(logR)
        mu, kappa, nu1, nu0 = (float(v) for v in bias_factors(noise, r, R, c, delta))
        R_new = gamma * (nu1 + delta * delta * nu0) / (4 * mu) + A * kappa * kappa / (2 * mu * mu)
        return [mu * r + A * kappa, math.log(max(R_new, 1e-300)) - logR]

    mu0, k0, n10, n00 = (float(v) for v in bias_factors(noise, 0.0, 0.01, c, delta))
    r0 = -A * k0 / (mu0 * (1 + A))
    R0 = gamma * (n10 + delta * delta * n00) / (4 * mu0) + A * k0 * k0 / (2 * mu0 * mu0)
    sol = optimize.root(equations, [r0, math.log(max(R0, 1e-12))], tol=1e-13)
    if not sol.success:
        raise RuntimeError(f"fixed point not found: {sol.message}")
    r, R = float(sol.x[0]), math.exp(sol.x[1])
    mu, kappa, nu1, nu0 = (float(v) for v in bias_factors(noise, r, R, c, delta))
    return {
        "r": r,
        "R": R,
        "population": R + r * r / 2,
        "mean_part": A * kappa * kappa / (2 * mu * mu),
        "A": A,
        "delta": delta,
        "mu": mu,
        "kappa": kappa,
        "nu1": nu1,
        "nu0": nu0,
    }
