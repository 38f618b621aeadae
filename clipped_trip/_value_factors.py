"""Coordinate-wise (value) clipping factors mu_i, nu_i and the signSGD factor phi(R) (SPEC 12).

Value clipping clamps every coordinate of the gradient g_i = w sqrt(lambda_i) z_i to [-tau, tau].
With theta_i = tau / sqrt(lambda_i), z ~ N(0, 1) independent of w ~ N(0, 2R) - eps:

    mu_i = E[z^2 1{|w z| <= theta_i}]        = E_w[F(theta_i / |w|)]
    nu_i = E[min(lambda_i w^2 z^2, tau^2)]   = tau^2 E_w[F(u) / u^2 + erfc(u / sqrt2)],
                                               u = theta_i / |w|,
    F(u) = E[z^2 1{|z| <= u}] = erf(u / sqrt2) - 2 u phi(u).

Both factors are expectations over |w| of kernels of u = theta / |w| alone, so the law of |w| is
reduced once per call to a quadrature (nodes x_j > 0, weights W_j, plus masses at |w| = 0 and
|w| = inf) shared by every theta:

* Gaussian and Gaussian-mixture noise, finite laws: w is a finite mixture of Gaussians
  N(m_k, S_k^2) (S_k = 0: an atom, exact). A component with S_k <= |m_k| / 16 is integrated by
  24-point Gauss-Hermite in its own variable (the kernels are analytic and bounded in a disk of
  radius 0.7 |m_k| around m_k, so this is exact to round-off); the others enter the density of
  |w|, h(x) = p_w(x) + p_w(-x), in closed form, on the shared panels below.
* Other continuous laws: h(x) is the convolution integral p_w(x) = int p_eps(e) phi_s(x + e) de
  at every node. Where p_eps is smooth across the Gaussian window (no breakpoint within 12 s of
  e = -x, and s <= scale / 4 or the window far from the peak of p_eps) by 40-point Gauss-Hermite
  in z (e = s z - x); elsewhere by composite Gauss-Legendre (10 points) on panels in
  t = (e + x) / s (unit panels out to 8, then 10, 13, 17, 38), at the law's breakpoints, and,
  when s > scale / 4, on a geometric grid around the peak of p_eps (scale / 8 up to 64 s).
  (SPEC 12 suggests Gauss-Hermite in z for s <= 1.5 sigma and a tan substitution beyond for
  Student-t; this generic scheme reaches the same round-off level for every continuous law.)
* Panels in x: one linear panel [0, g0], g0 = min(theta_min, s, scale, breakpoints) / 8 (the
  kernels are flat there, u >= 8), then panels of ratio 2, Gauss-Legendre in log x, up to
  64 max(theta_max, s, scale, ...); graded panels (offsets 0.25 ... 38 widths) around every
  feature of width s away from 0 (a kink of p_eps, a narrow mixture component). Heavy tails
  (P(|eps| > that end) > 1e-20) continue with panels of ratio e^3 over 36 e-folds; the remaining
  mass P(|eps| > X_far) goes to |w| = inf (where F = 0 and the nu-kernel is 1).

Many distinct theta (a power-law spectrum): the factors are evaluated at Chebyshev-Lobatto nodes
in log theta (21, then 41, 81, ... nested nodes) until the half-size interpolant already matches
the new nodes to 1e-10 in log mu and log(nu / tau^2) (the convergence is geometric, so the finer
series is then at round-off: 41 nodes for lambda_j = j^-0.5, d = 2000, 81 for j^-1, 161 for j^-2,
d = 1e4, each within ~1e-14 of direct evaluation); the series is summed at every theta_i
(Clenshaw). Without convergence by 641 nodes every theta_i is evaluated directly.

References: SPEC section 12 (value clipping, its factors, the signSGD limit and the numerics);
SPEC section 3 (the law of w); Xiao, Marshall, Agarwala, Paquette, arXiv 2411.12135 (signSGD).
"""

from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from ._noise import NoiseLaw

__all__ = ["value_clip_factors", "sign_descent_factor"]

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)

# quadrature rules
_X_NODES, _X_WEIGHTS = np.polynomial.legendre.leggauss(12)  # panels in x (or log x)
_E_NODES, _E_WEIGHTS = np.polynomial.legendre.leggauss(10)  # panels of the convolution in eps
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(24)
_GH_WEIGHTS = _GH_WEIGHTS / math.sqrt(2.0 * math.pi)  # E[f(Z)] = sum w_l f(z_l)
_GHC_NODES, _GHC_WEIGHTS = np.polynomial.hermite_e.hermegauss(40)  # convolutions
_GHC_WEIGHTS = _GHC_WEIGHTS / math.sqrt(2.0 * math.pi)
_GH_REACH = 12.0  # a breakpoint within 12 s of the window centre: panels, not Gauss-Hermite

_GRADED = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 38.0])  # offsets, in feature widths
_GRADED = np.concatenate([-_GRADED[::-1], [0.0], _GRADED])
_CONV = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 10, 13, 17, 38])  # eps panels, in units of s
_CONV = np.concatenate([-_CONV[::-1], [0.0], _CONV])
_NARROW = 1.0 / 16.0  # S <= |m| / 16: Gauss-Hermite component
_UNIFORM_MAX = 2048  # broad mixture bumps: at most this many graded or uniform edges
_BODY = 64.0  # panels of ratio 2 reach _BODY * max(theta_max, widths, scales)
_FAR_EFOLDS, _FAR_STEP = 36.0, 3.0  # heavy tails: further panels in log x
_FAR_MASS = 1e-20  # tail mass above which the far panels are used
_SERIES_U = 0.6  # F(u) by its power series below (erf - 2 u phi cancels)
_SERIES_K = 14
_SERIES_COEF = np.array([(-1.0) ** k / (math.factorial(k) * (2 * k + 3)) for k in range(_SERIES_K)])

# interpolation in log theta
_DIRECT_MAX = 41  # at most this many distinct theta: evaluate directly
_CHEB_START = 20  # first Chebyshev-Lobatto degree; doubled until the check passes
_CHEB_MAX = 640
_CHEB_TOL = 1e-10  # on the half-size interpolant; the accepted one converged geometrically
_BLOCK = 1 << 20  # kernel matrix entries per block
_MAX_RISK = 1e150  # as in _factors: 2R + E eps^2 must stay finite


# ---------------------------------------------------------------------------------------------
# kernels of u = theta / |w|
# ---------------------------------------------------------------------------------------------
def _kernels(u):
    """F(u) and F(u) / u^2 + erfc(u / sqrt2) for u in (0, inf), elementwise (arrays); F by its
    power series below u = 0.6, where erf(u / sqrt2) - 2 u phi(u) cancels."""
    from scipy import special

    u = np.asarray(u, dtype=np.float64)
    with np.errstate(over="ignore"):
        f = special.erf(u / _SQRT2) - _SQRT_2_OVER_PI * u * np.exp(-0.5 * u * u)
        f_u2 = f / (u * u)
    small = u < _SERIES_U
    if np.any(small):
        us = u[small]
        v = 0.5 * us * us
        acc = np.full_like(us, _SERIES_COEF[-1])
        for c in _SERIES_COEF[-2::-1]:
            acc = acc * v + c
        f_u2[small] = _SQRT_2_OVER_PI * us * acc
        f[small] = f_u2[small] * us * us
    return f, f_u2 + special.erfc(u / _SQRT2)


# ---------------------------------------------------------------------------------------------
# the law of |w| as a quadrature
# ---------------------------------------------------------------------------------------------
class _AbsW:
    """E[f(|w|)] ~ sum_j W_j f(x_j) + p_zero f(0) + p_inf f(inf), x_j in (0, inf)."""

    def __init__(self, x, W, p_zero=0.0, p_inf=0.0):
        self.x = np.asarray(x, dtype=np.float64)
        self.W = np.asarray(W, dtype=np.float64)
        self.p_zero = float(p_zero)
        self.p_inf = float(p_inf)

    def factors(self, theta):
        """(mu, g) at each theta > 0 (finite): mu = E F(u), g = nu / tau^2 = E[F/u^2 + erfc]."""
        theta = np.asarray(theta, dtype=np.float64)
        mu = np.empty(theta.shape)
        g = np.empty(theta.shape)
        inv_x = 1.0 / self.x
        step = max(1, _BLOCK // max(self.x.size, 1))
        for i in range(0, theta.size, step):
            t = theta[i : i + step]
            f, k = _kernels(t[:, None] * inv_x[None, :])
            mu[i : i + step] = f @ self.W + self.p_zero
            g[i : i + step] = k @ self.W + self.p_inf
        return mu, g


def _panel_nodes(edges):
    """Gauss-Legendre nodes and weights on consecutive panels of sorted ``edges`` (edges[0] may be
    0: that panel is linear; the others are Gauss-Legendre in log x)."""
    lo, hi = edges[:-1], edges[1:]
    keep = hi > lo * (1 + 1e-13)
    lo, hi = lo[keep], hi[keep]
    xs, ws = [], []
    lin = lo <= 0
    if np.any(lin):
        a, b = lo[lin], hi[lin]
        half = 0.5 * (b - a)
        xs.append(((0.5 * (a + b))[:, None] + half[:, None] * _X_NODES).ravel())
        ws.append((half[:, None] * _X_WEIGHTS).ravel())
    a, b = np.log(lo[~lin]), np.log(hi[~lin])
    half = 0.5 * (b - a)
    x = np.exp((0.5 * (a + b))[:, None] + half[:, None] * _X_NODES)
    xs.append(x.ravel())
    ws.append((half[:, None] * _X_WEIGHTS * x).ravel())
    return np.concatenate(xs), np.concatenate(ws)


def _x_edges(g0, x_body, features, exact=(), far=False):
    """Sorted panel edges in x: [0, g0], ratio-2 panels to x_body, graded edges around the
    features (centre, width), exact edges; with ``far`` ratio-e^3 panels over 36 e-folds."""
    n_geo = max(1, int(math.ceil(math.log2(x_body / g0))))
    parts = [np.array([0.0]), g0 * (x_body / g0) ** (np.arange(n_geo + 1) / n_geo)]
    for centre, width in features:
        parts.append(centre + width * _GRADED)
    if exact:
        parts.append(np.asarray(exact, dtype=np.float64))
    edges = np.concatenate(parts)
    edges = np.unique(np.clip(edges, 0.0, x_body))
    x_far = x_body
    if far:
        n_far = int(round(_FAR_EFOLDS / _FAR_STEP))
        tail = x_body * np.exp(_FAR_STEP * np.arange(1, n_far + 1))
        edges = np.concatenate([edges, tail])
        x_far = float(tail[-1])
    return edges, x_far


def _mixture_abs_w(weights, means, stds, theta_min, theta_max):
    """|w| for w ~ sum_k weights_k N(means_k, stds_k^2) (stds_k = 0: atoms)."""
    weights, means, stds = (np.asarray(v, dtype=np.float64) for v in (weights, means, stds))
    # merge identical components (empirical laws repeat values)
    key = np.stack([np.abs(means), stds], axis=1)
    key, inverse = np.unique(key, axis=0, return_inverse=True)
    weights = np.bincount(inverse.ravel(), weights=weights)
    am, sd = key[:, 0], key[:, 1]
    keep = weights > 0
    weights, am, sd = weights[keep], am[keep], sd[keep]

    xs, ws = [], []
    atom = sd == 0
    p_zero = float(weights[atom & (am == 0)].sum())
    at = atom & (am > 0)
    xs.append(am[at])
    ws.append(weights[at])

    narrow = ~atom & (sd <= _NARROW * am)
    if np.any(narrow):
        xs.append(np.abs(am[narrow, None] + sd[narrow, None] * _GH_NODES).ravel())
        ws.append((weights[narrow, None] * _GH_WEIGHTS).ravel())

    broad = ~atom & ~narrow
    if np.any(broad):
        wb, mb, sb = weights[broad], am[broad], sd[broad]
        g0 = min(theta_min, float(sb.min())) / 8.0
        x_body = _BODY * max(theta_max, float(np.max(mb + sb)))
        sharp = mb > 2 * sb  # a bump away from 0: graded edges around it
        exact = ()
        if _GRADED.size * np.count_nonzero(sharp) > _UNIFORM_MAX:
            # many bumps (an empirical law): uniform panels of width 2 min(S) over their hull
            width = 2.0 * float(sb.min())
            lo = float(np.min(mb[sharp] - 10 * sb[sharp]))
            hi = float(np.max(mb[sharp] + 10 * sb[sharp]))
            n_uni = int(math.ceil((hi - lo) / width))
            if n_uni <= _UNIFORM_MAX:
                features, exact = [], tuple(np.linspace(max(lo, 0.0), hi, n_uni + 1))
            else:
                features = list(zip(mb[sharp], sb[sharp]))
        else:
            features = list(zip(mb[sharp], sb[sharp]))
        edges, _ = _x_edges(g0, x_body, features, exact)
        x, wq = _panel_nodes(edges)
        h = np.zeros_like(x)
        step = max(1, _BLOCK // x.size)
        for i in range(0, wb.size, step):
            sl = slice(i, i + step)
            inv = 1.0 / sb[sl, None]
            zp = (x[None, :] - mb[sl, None]) * inv
            zm = (x[None, :] + mb[sl, None]) * inv
            dens = (np.exp(-0.5 * zp * zp) + np.exp(-0.5 * zm * zm)) * inv * _INV_SQRT2PI
            h += wb[sl] @ dens
        xs.append(x)
        ws.append(wq * h)
    return _AbsW(np.concatenate(xs), np.concatenate(ws), p_zero=p_zero)


def _components(noise, s):
    """(weights, means, stds) of w = N(0, s^2) - eps for Gaussian-mixture and finite laws."""
    if noise.kind == "gaussian":
        wk, mk, sk = (np.asarray(v, dtype=np.float64) for v in noise._gaussian_components())
        return wk, -mk, np.sqrt(s * s + sk * sk)
    values, probs = (np.asarray(v, dtype=np.float64) for v in noise._atoms())
    return probs, -values, np.full(values.shape, s)


def _conv_density(noise, s, x):
    """p_w(x) = int p_eps(e) phi_s(x + e) de for w = N(0, s^2) - eps (continuous laws), any x.

    Rows whose Gaussian window e in -x +- 12 s holds no breakpoint of p_eps and either lies far
    from its peak (|x| > 38 s + 64 scale + max|b|) or is narrow (s <= scale / 4) take 40-point
    Gauss-Hermite in z (e = s z - x); the others composite Gauss-Legendre on panels in
    t = (e + x) / s (exact Gaussian argument even where |x| >> s).
    """
    x = np.asarray(x, dtype=np.float64)
    if s == 0:
        return noise._pdf(-x)
    scale = float(noise._scale)
    bps = np.asarray(noise._breakpoints, dtype=np.float64)
    out = np.empty(x.shape)
    kink = np.zeros(x.shape, dtype=bool)
    for b in bps:
        kink |= np.abs(x + b) <= _GH_REACH * s
    far = np.abs(x) > _CONV[-1] * s + _BODY * scale + float(np.abs(bps).max(initial=0.0))
    gh = ~kink & (far | (s <= scale / 4))
    if np.any(gh):
        xg = x[gh]
        out[gh] = noise._pdf(s * _GHC_NODES[None, :] - xg[:, None]) @ _GHC_WEIGHTS
    rest = ~gh
    if not np.any(rest):
        return out
    xr = x[rest]
    parts = [np.broadcast_to(_CONV, (xr.size, _CONV.size)), (bps[None, :] + xr[:, None]) / s]
    if s > scale / 4:
        n_up = int(math.ceil(math.log2(_BODY * 8 * s / scale)))
        geo = scale / 8 * 2.0 ** np.arange(n_up + 1)
        geo = np.concatenate([-geo[::-1], [0.0], geo])
        parts.append((geo[None, :] + xr[:, None]) / s)
    edges = np.clip(np.concatenate(parts, axis=1), _CONV[0], _CONV[-1])
    edges.sort(axis=1)
    lo, hi = edges[:, :-1], edges[:, 1:]
    half = 0.5 * (hi - lo)
    t = (0.5 * (hi + lo))[..., None] + half[..., None] * _E_NODES
    integrand = noise._pdf(s * t - xr[:, None, None]) * np.exp(-0.5 * t * t)
    out[rest] = ((integrand @ _E_WEIGHTS) * half).sum(axis=1) * _INV_SQRT2PI
    return out


def _symmetric(noise):
    """Laws known to be symmetric about 0 (p_w(-x) = p_w(x): half the convolutions)."""
    from ._noise import Laplace, StudentT, Uniform

    return isinstance(noise, (StudentT, Laplace, Uniform))


def _continuous_abs_w(noise, s, theta_min, theta_max):
    scale = float(noise._scale)
    bps = np.abs(np.asarray(noise._breakpoints, dtype=np.float64))
    widths = [theta_min, scale] + ([s] if s > 0 else []) + [b for b in bps if b > 0]
    g0 = min(widths) / 8.0
    x_body = _BODY * max(theta_max, s, scale, float(bps.max(initial=0.0)))
    tail = float(noise._sf(x_body) + noise._cdf(-x_body))
    far = tail > _FAR_MASS
    nonzero = [b for b in bps if b > 0]
    if s > 0:
        features, exact = [(b, s) for b in nonzero], ()
    else:
        features, exact = [], nonzero
    edges, x_far = _x_edges(g0, x_body, features, exact, far)
    x, wq = _panel_nodes(edges)
    if _symmetric(noise):
        h = 2.0 * _conv_density(noise, s, x)
    else:
        h = _conv_density(noise, s, np.concatenate([x, -x])).reshape(2, -1).sum(axis=0)
    p_inf = float(noise._sf(x_far) + noise._cdf(-x_far)) if far else 0.0
    return _AbsW(x, wq * h, p_inf=p_inf)


def _abs_w(noise, R, theta_min, theta_max):
    s = math.sqrt(2.0 * R)
    if noise.kind in ("gaussian", "discrete"):
        return _mixture_abs_w(*_components(noise, s), theta_min, theta_max)
    return _continuous_abs_w(noise, s, theta_min, theta_max)


# ---------------------------------------------------------------------------------------------
# Chebyshev interpolation in log theta
# ---------------------------------------------------------------------------------------------
def _lobatto(n):
    return np.cos(np.pi * np.arange(n + 1) / n)  # from +1 down to -1


def _cheb_coefficients(values):
    """Chebyshev coefficients (rows) of the interpolant through values at cos(pi k / n)."""
    n = values.shape[-1] - 1
    ext = np.concatenate([values, values[..., -2:0:-1]], axis=-1)
    c = np.fft.rfft(ext, axis=-1).real[..., : n + 1] / n
    c[..., 0] *= 0.5
    c[..., n] *= 0.5
    return c


def _clenshaw(coef, t):
    """sum_j coef[..., j] T_j(t) (rows of coef, at every t)."""
    b1 = np.zeros(coef.shape[:-1] + t.shape)
    b2 = np.zeros_like(b1)
    tt = 2.0 * t
    for j in range(coef.shape[-1] - 1, 0, -1):
        b1, b2 = coef[..., j, None] + tt * b1 - b2, b1
    return coef[..., 0, None] + t * b1 - b2


def _interpolated(law, theta):
    """(mu, g) at many theta by nested Chebyshev-Lobatto interpolation of log mu and log g in
    log theta (Clenshaw sums of the Chebyshev series). Falls back to direct evaluation where
    _CHEB_MAX nodes do not reach _CHEB_TOL (or a factor underflows to 0)."""
    y = np.log(theta)
    y_lo, y_hi = float(y.min()), float(y.max())
    mid, half = 0.5 * (y_hi + y_lo), 0.5 * (y_hi - y_lo)

    def logs(t):
        with np.errstate(divide="ignore"):
            return np.log(np.stack(law.factors(np.exp(mid + half * t))))

    n = _CHEB_START
    t = _lobatto(n)
    vals = logs(t)
    while np.all(np.isfinite(vals)):
        n2 = 2 * n
        new = _lobatto(n2)[1::2]
        new_vals = logs(new)
        err = float(np.max(np.abs(_clenshaw(_cheb_coefficients(vals), new) - new_vals)))
        merged = np.empty((2, n2 + 1))
        merged[:, 0::2] = vals
        merged[:, 1::2] = new_vals
        t, vals, n = _lobatto(n2), merged, n2
        if err < _CHEB_TOL and np.all(np.isfinite(vals)):
            tq = np.clip((y - mid) / half, -1.0, 1.0)
            mu, g = np.exp(_clenshaw(_cheb_coefficients(vals), tq))
            return mu, g
        if n >= _CHEB_MAX:
            break
    return law.factors(theta)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _check_noise(noise):
    if not isinstance(noise, NoiseLaw):
        raise ValueError(
            f"noise must be a NoiseLaw (e.g. Gaussian(1.0)), got {type(noise).__name__}"
        )


def value_clip_factors(noise: NoiseLaw, R, clip_value, eigenvalues, *, interpolate=None):
    """Descent and variance factors (mu_i, nu_i) of value-clipped SGD, one per eigenvalue.

    With theta_i = clip_value / sqrt(lambda_i), z ~ N(0, 1) independent of w ~ N(0, 2R) - eps:
    mu_i = E[z^2 1{|w z| <= theta_i}] and nu_i = E[min(lambda_i w^2 z^2, tau^2)] (nu_i contains
    lambda_i). The ODE is dv_i/dt = -2 gamma mu_i lambda_i v_i + gamma^2 nu_i / (2D).

    Args:
        noise: a NoiseLaw (the label noise eps).
        R: the excess risk, a scalar >= 0.
        clip_value: tau >= 0 (torch's ``clip_value``); None or inf: no clipping (mu = 1,
            nu_i = lambda_i (2R + E eps^2)). tau = 0: mu_i = P(w = 0), nu_i = 0.
        eigenvalues: lambda_i >= 0, 1-D (lambda_i = 0: mu_i = 1, nu_i = 0).
        interpolate: None (default) interpolates in log theta when there are more than 41
            distinct theta_i, True always, False never (direct evaluation at every theta_i).

    Returns:
        (mu, nu): float64 arrays of shape (len(eigenvalues),).

    Accuracy: relative ~1e-14 for R in [0, 1e4] (self-convergence under doubled quadrature
    orders; mpmath spot checks for Student-t and Cauchy agree to 5e-16); the tests compare with
    nested scipy quadrature from the definitions at 1e-8 (agreement ~1e-10, the reference's own
    error). The interpolation in log theta is checked at run time (nested Chebyshev nodes).
    Cost: one quadrature of the law of |w| (~200-500 nodes) per call, then ~41-161 kernel rows;
    about 1 ms (Gaussian) to 2-8 ms (Student-t) for d = 2000 distinct eigenvalues.

    References: SPEC section 12 (value clipping, numerics); SPEC section 3 (law of w).
    """
    _check_noise(noise)
    R = V.real("R", R, lo=0.0, hi=_MAX_RISK)
    tau = (
        math.inf if clip_value is None else V.nonnegative("clip_value", clip_value, allow_inf=True)
    )
    lam = np.array(V.vector("eigenvalues", eigenvalues, nonneg=True))
    mu = np.ones(lam.shape)
    nu = np.zeros(lam.shape)
    pos = lam > 0
    if math.isinf(tau):
        nu[pos] = lam[pos] * (2.0 * R + noise.second_moment)
        return mu, nu
    if not np.any(pos):
        return mu, nu
    if tau == 0:
        law = _abs_w(noise, R, 1.0, 1.0)
        mu[pos] = law.p_zero
        return mu, nu
    theta = tau / np.sqrt(lam[pos])
    uniq, inverse = np.unique(theta, return_inverse=True)
    finite = np.isfinite(uniq)  # theta = inf (tau / sqrt(lambda) overflows): mu = 1, nu ~ 0
    tf = uniq[finite]
    m_u = np.ones(uniq.shape)
    g_u = np.zeros(uniq.shape)
    if tf.size:
        law = _abs_w(noise, R, float(tf.min()), float(tf.max()))
        use_interp = (tf.size > _DIRECT_MAX) if interpolate is None else bool(interpolate)
        if use_interp and tf.size > 1:
            m_u[finite], g_u[finite] = _interpolated(law, tf)
        else:
            m_u[finite], g_u[finite] = law.factors(tf)
    mu[pos] = m_u[inverse.ravel()]
    nu[pos] = tau * tau * g_u[inverse.ravel()]  # nu = tau^2 E[F(u)/u^2 + erfc(u/sqrt2)]
    return mu, nu


def _density_at_zero(noise, R):
    s = math.sqrt(2.0 * R)
    if noise.kind in ("gaussian", "discrete"):
        wk, mk, sk = _components(noise, s)
        keep = wk > 0
        wk, mk, sk = wk[keep], mk[keep], sk[keep]
        if np.any((sk == 0) & (mk == 0)):
            return math.inf  # an atom of w at 0
        smooth = sk > 0
        z = mk[smooth] / sk[smooth]
        return float(wk[smooth] @ (np.exp(-0.5 * z * z) / sk[smooth]) * _INV_SQRT2PI)
    return float(_conv_density(noise, s, np.zeros(1))[0])


def sign_descent_factor(noise: NoiseLaw, R) -> float:
    """phi(R) = 2 sqrt(2/pi) p_w(0): the signSGD drift factor (the tau -> 0 limit of value
    clipping with gamma = eta / tau: dv_i/dt = -2 eta phi(R) sqrt(lambda_i) v_i + eta^2/(2D)).

    p_w(0) = E_eps[(4 pi R)^{-1/2} exp(-eps^2 / (4R))] is the density of w = N(0, 2R) - eps at 0
    (R = 0: p_eps(0); inf where w has an atom at 0). Gaussian noise: phi = 2 / (pi sqrt(2R +
    sigma^2)).

    References: SPEC section 12; Xiao, Marshall, Agarwala, Paquette, arXiv 2411.12135 (signSGD).
    """
    _check_noise(noise)
    R = V.real("R", R, lo=0.0, hi=_MAX_RISK)
    return 2.0 * _SQRT_2_OVER_PI * _density_at_zero(noise, R)
