"""Mini-batch factors: the Stein curvature kap of per-example clipping (SPEC 8A.1) and the
clip-of-the-mean factors mu_B, nu_B (SPEC 8B.2-8B.5).

Notation: w = z - eps with z ~ N(0, s^2), s^2 = 2R; Y = w^2; W = Y_1 + ... + Y_B (iid);
Xt = W + t (t = shift >= 0); a = c^2 B^2; b = a - t.

    mu_B = P(W <= b) + (1 - 1/B) sqrt(a) E[(W + t)^-1/2 ; W > b]
    nu_B = E[W min(1, a / (W + t))] / B^2 = ( E[min(W, b)] + t E[(W - b)/(W + t) ; W > b] ) / B^2

(the second form of nu_B is a sum of non-negative terms: no cancellation). If b <= 0 every step
is clipped: mu_B = (1 - 1/B) sqrt(a) E[(W + t)^-1/2], nu_B = a E[W / (W + t)] / B^2.

Methods, by law and regime:

* Gaussian noise (one centred component): W = S^2 chi^2_B, S^2 = 2R + sigma^2. Shift 0: the
  regularized incomplete gamma closed forms of SPEC 8B.4. Shift > 0: P(W <= b) and E[W; W <= b]
  in closed form, the two tail expectations by composite Gauss-Legendre over the chi^2 density
  (panels: geometric from b, and at the mean +- multiples of the standard deviation).
* Finite laws (ThreePoint, Discrete, Empirical): exact conditioning on T = sum_j eps_j^2, whose
  law is a finite sum (binomial for two distinct |values|; otherwise B-fold convolution with
  merging of equal sums and pruning of atoms below 1e-22). Given T, W = s^2 chi'^2_B(T / s^2)
  (noncentral): P(W <= b) from the noncentral chi^2 cdf, E[W; W <= b] from the identity
  E[X h(X)] = B E h(chi'^2_{B+2}) + lam E h(chi'^2_{B+4}), the tail expectations by the same
  density quadrature as the Gaussian case (scipy's noncentral chi^2 density). Many-atom empirical
  laws: sums T are merged on a relative grid 1e-9 (error O(1e-9) relative, second order in the
  bin width since bins keep their mean) and at most 20000 atoms are kept (the grid widens if
  needed; the widened width is the stated error level).
* Continuous laws: Laplace-transform inversion of L_W = L_Y^B, with
  L_Y(p) = (1 + 2 p s^2)^-1/2 Lambda(p / (1 + 2 p s^2)), Lambda(q) = E exp(-q eps^2).
  Student-t, Laplace and centred Gaussian mixtures are Gaussian scale mixtures
  (eps | V ~ N(0, V)): Lambda(q) = E_V (1 + 2 q V)^-1/2, an integral over log V by 8-point
  Gauss-Legendre on unit panels (the nodes are computed once per law), analytic off (-inf, 0].
  Uniform, centred exponential and other Gaussian mixtures: Lambda in closed form (Faddeeva).
  - B >= 8 (and every shifted or large-batch case): Bromwich integral on the vertical line through
    the real saddle point c0 of e^{pb} L_W(p) / p, trapezoidal rule in v with tau = sigma sinh(v)
    (sigma the saddle width). The kernels are closed forms: e^{pb}/p (cdf), e^{pb}/p^2
    (E[(b-W)+]), int_0^b (x+t)^-1/2 e^{px} dx (Faddeeva w) and int_0^b e^{px}/(x+t) dx (E1).
    E[(W+t)^-1/2] and E[1/(W+t)] are real-axis integrals of L_W (sinh-mapped trapezoid in log).
    This avoids SPEC 8B.5 trap (i): the line passes through the saddle, so nothing cancels when
    W is concentrated far above a. Where the line would cancel (b far above the bulk of W: the
    factor e^{c0 b} L_W(c0) exceeds 1e3) the pair goes to the Talbot path below, which is
    accurate there but about 50 times slower per pair.
  - B < 8: fixed Talbot (Abate-Valko, M = 24) at b for P and E[min(W, b)], and for S(x) on a
    Gauss-Legendre grid in log x over [b, b e^36] for the tail expectations (SPEC 8B.5).
  Laws with bounded support or non-centred mixture components have essential singularities of
  Lambda on the negative axis; for them the small-B Talbot path is not certified.
* B = 1 and shift = 0: ``reduction_factors`` (SPEC section 3), exactly.

Accuracy (tests/test_batch_factors.py): Gaussian closed forms and chi^2 quadrature vs scipy quad
<= 1e-9; the Laplace route on Gaussian noise vs the closed forms <= 1e-8 over B in 1..512,
R in [1e-4, 1e2], c in [1e-2, 1e2], shift in [0, 10 B S^2]; Student-t / Laplace self-convergence
<= 5e-8 (Talbot vs vertical line differ by up to ~2e-7 for Cauchy at B = 64 in the Talbot
fallback); finite laws exact up to the noncentral chi^2 special functions (~1e-10).

References: SPEC sections 8A.1 and 8B; arXiv 2406.11733 (reduction factors mu_c, nu_c).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import _validate as V
from ._factors import map_in_blocks, reduction_factors
from ._noise import Exponential, Laplace, NoiseLaw, StudentT, Uniform

__all__ = ["stein_curvature", "mean_clip_factors", "mean_clip_ccc"]

_SQRT2PI = math.sqrt(2.0 * math.pi)
_SQRTPI = math.sqrt(math.pi)
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
_TALBOT_M = 24
_VERTICAL_MIN_BATCH = 8  # B >= this: vertical line through the saddle; below: fixed Talbot
_BLOCK = 32  # pairs per vectorised block in the Laplace paths
_XGRID_PANEL = 1.5  # width in log x of the Gauss-Legendre panels of the Talbot x grid
_RHO_MAX = 1e3  # largest cancellation factor e^{c0 b} L_W(c0) accepted on the vertical line


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_noise(noise):
    if not isinstance(noise, NoiseLaw):
        raise ValueError(
            f"noise must be a NoiseLaw (e.g. Gaussian(1.0)), got {type(noise).__name__}"
        )


def _check_array(name, value, *, allow_inf=False, positive=False):
    try:
        x = np.asarray(np.inf if value is None else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number or array of real numbers") from None
    bad = np.isnan(x) | (np.isinf(x) & (not allow_inf)) | (x <= 0 if positive else x < 0)
    if np.any(bad):
        rng = "> 0" if positive else ">= 0"
        extra = " (inf or None for no clipping)" if allow_inf else " and finite"
        raise ValueError(f"{name} must be {rng}{extra} everywhere, got {x[bad].ravel()[0]!r}")
    return x


# ---------------------------------------------------------------------------------------------
# the law of Y = (z - eps)^2 in the Laplace domain
# ---------------------------------------------------------------------------------------------
def _is_centred_mixture(noise):
    return noise.kind == "gaussian" and all(m == 0.0 for m in noise._gaussian_components()[1])


@functools.lru_cache(maxsize=32)
def _scale_mixture_nodes(noise):
    """(V_k, omega_k) with eps | V ~ N(0, V), V ~ sum omega_k delta_{V_k}; None if not a mixture."""
    if _is_centred_mixture(noise):
        w, _, sd = (np.asarray(x, dtype=np.float64) for x in noise._gaussian_components())
        return sd * sd, w / w.sum()
    if isinstance(noise, StudentT):
        df, kappa = noise.df, noise.scale**2 * noise.df
        lo = -80.0 / (df + 1.0) - 2.0
        hi = math.log(df + 20.0 * math.sqrt(2.0 * df) + 90.0)
        mid = min(-8.0, 0.5 * (lo + hi))
        u, wq = _two_zone(lo, mid, hi)
        g = np.exp(u)
        logw = 0.5 * df * u - 0.5 * g - 0.5 * df * math.log(2.0) - math.lgamma(0.5 * df)
        omega = wq * np.exp(logw)
        return kappa / g, omega / omega.sum()
    if isinstance(noise, Laplace):
        u, wq = _two_zone(-45.0, -12.0, math.log(80.0))
        v = np.exp(u)
        omega = wq * v * np.exp(-v)
        return 2.0 * noise.scale**2 * v, omega / omega.sum()
    return None


def _two_zone(lo, mid, hi):
    """Gauss-Legendre nodes/weights: panels of width <= 3 on [lo, mid], <= 1 on [mid, hi]."""
    u = np.concatenate([_panel_nodes(lo, mid, 3.0), _panel_nodes(mid, hi, 1.0)])
    w = np.concatenate([_panel_weights(lo, mid, 3.0), _panel_weights(mid, hi, 1.0)])
    return u, w


def _panel_nodes(lo, hi, width):
    n = max(1, int(math.ceil((hi - lo) / width)))
    edges = np.linspace(lo, hi, n + 1)
    half = 0.5 * np.diff(edges)
    return ((0.5 * (edges[1:] + edges[:-1]))[:, None] + half[:, None] * _GL_X).ravel()


def _panel_weights(lo, hi, width):
    n = max(1, int(math.ceil((hi - lo) / width)))
    edges = np.linspace(lo, hi, n + 1)
    half = 0.5 * np.diff(edges)
    return (half[:, None] * _GL_W).ravel()


def _supported_continuous(noise):
    return (
        _scale_mixture_nodes(noise) is not None
        or isinstance(noise, (Uniform, Exponential))
        or noise.kind == "gaussian"
    )


def _erf_over_z(z):
    """erf(z)/z for complex z (Faddeeva for |z| >= 0.5, Taylor series below)."""
    from scipy.special import wofz

    out = np.empty_like(z)
    small = np.abs(z) < 0.5
    zs = z[small]
    z2 = zs * zs
    term = np.ones_like(zs)
    acc = np.ones_like(zs)
    for n in range(1, 14):
        term = -term * z2 / n
        acc = acc + term / (2 * n + 1)
    out[small] = 2.0 / _SQRTPI * acc
    zl = z[~small]
    out[~small] = (1.0 - np.exp(-zl * zl) * wofz(1j * zl)) / zl
    return out


def _lambda_eps2(noise, q):
    """Lambda(q) = E exp(-q eps^2), analytically continued off (-inf, 0] (q complex)."""
    from scipy.special import wofz

    nodes = _scale_mixture_nodes(noise)
    if nodes is not None:
        v, om = nodes
        return (om / np.sqrt(1.0 + 2.0 * q[..., None] * v)).sum(axis=-1)
    if noise.kind == "gaussian":
        w, m, sd = (np.asarray(x, dtype=np.float64) for x in noise._gaussian_components())
        d = 1.0 + 2.0 * q[..., None] * sd * sd
        return (w * np.exp(-q[..., None] * m * m / d) / np.sqrt(d)).sum(axis=-1)
    if isinstance(noise, Uniform):
        z = noise.half_width * np.sqrt(q)
        return 0.5 * _SQRTPI * _erf_over_z(z)
    if isinstance(noise, Exponential):
        beta = q * noise.scale**2
        rb = np.sqrt(beta)
        z0 = 0.5 / rb - rb
        return 0.5 * _SQRTPI / rb * wofz(1j * z0) * np.exp(-beta)
    raise ValueError(
        f"noise law {type(noise).__name__} has no Laplace-transform route in mean_clip_factors"
    )


def _laplace_y(noise, p, s2):
    """L_Y(p) = E exp(-p w^2) for complex p (not on (-inf, 0]); s2 broadcasts against p."""
    p = np.asarray(p, dtype=np.complex128)
    nodes = _scale_mixture_nodes(noise)
    if nodes is not None:  # direct form: no division by p
        v, om = nodes
        return (om / np.sqrt(1.0 + 2.0 * p[..., None] * (s2[..., None] + v))).sum(axis=-1)
    d = 1.0 + 2.0 * p * s2
    return _lambda_eps2(noise, p / d) / np.sqrt(d)


def _one_minus_laplace_w(noise, p, s2, B):
    """1 - L_Y(p)^B without cancellation (small |p|: 1 - L_Y ~ p E[Y])."""
    p = np.asarray(p, dtype=np.complex128)
    nodes = _scale_mixture_nodes(noise)
    if nodes is not None:
        v, om = nodes
        x = 2.0 * p[..., None] * (s2[..., None] + v)
        r = np.sqrt(1.0 + x)
        one_minus = (om * x / (r * (r + 1.0))).sum(axis=-1)
    else:
        one_minus = 1.0 - _laplace_y(noise, p, s2)
    return -_cexpm1(B * _clog1p(-one_minus))


def _clog1p(z):
    """log(1 + z) for complex z, accurate for small |z| (numpy's complex log1p is not)."""
    x, y = z.real, z.imag
    return 0.5 * np.log1p(2.0 * x + x * x + y * y) + 1j * np.arctan2(y, 1.0 + x)


def _cexpm1(z):
    """exp(z) - 1 for complex z, accurate for small |z| (numpy's complex expm1 is not)."""
    x, y = z.real, z.imag
    sh = np.sin(0.5 * y)
    return (np.expm1(x) * np.cos(y) - 2.0 * sh * sh) + 1j * np.exp(x) * np.sin(y)


def _laplace_y_real(noise, lam, s2):
    """L_Y on the positive real axis (float)."""
    nodes = _scale_mixture_nodes(noise)
    if nodes is not None:
        v, om = nodes
        return (om / np.sqrt(1.0 + 2.0 * lam[..., None] * (s2[..., None] + v))).sum(axis=-1)
    return _laplace_y(noise, lam.astype(np.complex128), s2).real


def _mean_y_tilted(noise, lam, s2):
    """E_lam[Y] = -L_Y'(lam) / L_Y(lam) on the positive real axis (complex step otherwise)."""
    nodes = _scale_mixture_nodes(noise)
    if nodes is not None:
        v, om = nodes
        vv = s2[..., None] + v
        d = 1.0 + 2.0 * lam[..., None] * vv
        r = 1.0 / np.sqrt(d)
        return (om * vv * r / d).sum(axis=-1) / (om * r).sum(axis=-1)
    h = 1e-30 * np.maximum(lam, 1e-300)
    val = _laplace_y(noise, lam + 1j * h, s2)
    return -val.imag / h / val.real


# ---------------------------------------------------------------------------------------------
# scalar special functions on the contour
# ---------------------------------------------------------------------------------------------
def _e1x(z):
    """exp(z) E1(z) for complex z off the negative real axis (principal branch)."""
    from scipy.special import exp1

    out = np.empty_like(z)
    big = np.abs(z) > 30.0
    zs = z[~big]
    out[~big] = np.exp(zs) * exp1(zs)
    zb = z[big]
    acc = np.zeros_like(zb)
    term = 1.0 / zb
    for k in range(40):
        acc = acc + term
        term = -term * (k + 1) / zb
    out[big] = acc
    return out


# ---------------------------------------------------------------------------------------------
# real-axis integrals E[(W+t)^-1/2] and E[1/(W+t)]
# ---------------------------------------------------------------------------------------------
_SINH_V = np.arange(-4.6, 4.6 + 1e-9, 0.08)
_SINH_U = 2.0 * np.sinh(_SINH_V)
_SINH_DU = 2.0 * np.cosh(_SINH_V) * 0.08


def _real_axis_moments(noise, s2, B, t, lam0):
    """(E[(W+t)^-1/2], E[1/(W+t)]) per pair; lam0 is the scale 1 / (typical W)."""
    lam = lam0[:, None] * np.exp(_SINH_U)[None, :]
    LW = _laplace_y_real(noise, lam, s2[:, None]) ** B
    damp = np.exp(-lam * t[:, None])
    f = LW * damp * lam * _SINH_DU  # d lam = lam du
    m_half = (f / np.sqrt(lam)).sum(axis=1) / _SQRTPI
    # left tail lam < lam_min: L_W ~ 1, int_0^lmin lam^-1/2 = 2 sqrt(lmin); int_0^lmin 1 = lmin
    lmin = lam[:, 0]
    m_half += 2.0 * np.sqrt(lmin) / _SQRTPI
    m_one = f.sum(axis=1) + lmin
    return m_half, m_one


# ---------------------------------------------------------------------------------------------
# Laplace path, B >= 8: vertical line through the saddle point
# ---------------------------------------------------------------------------------------------
_TAU_H = 0.05  # trapezoid step in v (tau = width sinh v); 0.4 times this for B < 16


def _tilted_var(noise, p, s2):
    """Var_p(Y) from a central difference of the tilted mean (relative step 1e-3)."""
    d = 1e-3
    m1 = _mean_y_tilted(noise, p * (1 + d), s2)
    m0 = _mean_y_tilted(noise, p * (1 - d), s2)
    return -(m1 - m0) / (2 * d * p)


def _bisect_log(fun, lo, hi, steps=40):
    """Root of a decreasing-to-increasing sign change g(lo) < 0 <= g(hi) in log p (arrays)."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        neg = fun(np.exp(mid)) < 0
        lo = np.where(neg, mid, lo)
        hi = np.where(neg, hi, mid)
    return np.exp(0.5 * (lo + hi))


def _saddle(noise, s2, B, b):
    """Line abscissa c0 and width: c0 = max(saddle of e^{pb} L_W / p, p_v), where the saddle
    solves b - 1/p = B E_p[Y] and p_v solves p^2 B Var_p(Y) = 1 (the scale of L_W itself);
    width = 1/sqrt(B Var_c0(Y) + 1/c0^2)."""
    lo = np.log(0.5 / b)
    hi = np.log((0.5 * B + 1.0) * 2.0 / b)
    for _ in range(60):  # widen hi where needed (laws whose tilted mean exceeds 1/(2p))
        g = b - np.exp(-hi) - B * _mean_y_tilted(noise, np.exp(hi), s2)
        if np.all(g >= 0):
            break
        hi = np.where(g < 0, hi + 1.0, hi)
    c_sad = _bisect_log(lambda p: b - 1.0 / p - B * _mean_y_tilted(noise, p, s2), lo, hi)
    scale = 1.0 / _typical_w(noise, s2, 1)
    lo_v = np.log(scale * 1e-12)
    hi_v = np.log(scale * 1e6)
    p_v = _bisect_log(lambda p: p * p * B * _tilted_var(noise, p, s2) - 1.0, lo_v, hi_v)
    c0 = np.maximum(c_sad, p_v)
    curv = B * _tilted_var(noise, c0, s2) + 1.0 / (c0 * c0)
    return c0, 1.0 / np.sqrt(np.maximum(curv, 1e-300))


def _vertical_block(noise, s2, B, b, t):
    """P(W<=b), E[(b-W)+], E[(W+t)^-1/2; W<=b], E[1/(W+t); W<=b] for b > 0 (arrays per pair)."""
    with np.errstate(all="ignore"):  # rows that overflow have rho = inf/nan and go to Talbot
        return _vertical_block_raw(noise, s2, B, b, t)


def _vertical_block_raw(noise, s2, B, b, t):
    from scipy.special import wofz

    c0, width = _saddle(noise, s2, B, b)
    h = _TAU_H if B >= 16 else 0.4 * _TAU_H
    v = np.arange(0.0, min(9.0, 3.0 + 80.0 / B) + 1e-9, h)
    tau = width[:, None] * np.sinh(v)[None, :]
    wt = width[:, None] * np.cosh(v)[None, :] * h
    wt[:, 0] *= 0.5
    p = c0[:, None] + 1j * tau
    bb, tt = b[:, None], t[:, None]
    Z = np.exp(p * bb / B) * _laplace_y(noise, p, s2[:, None])
    EB = Z**B  # e^{pb} L_W(p)
    rho = np.abs(EB[:, 0])  # e^{c0 b} L_W(c0) >= P(W <= b): the cancellation factor
    cdf = ((EB / p).real * wt).sum(axis=1) / np.pi
    below = ((EB / (p * p)).real * wt).sum(axis=1) / np.pi
    sp = np.sqrt(p)
    emb = np.exp(-p * bb)
    kern_h = 1j * _SQRTPI / sp * (emb * wofz(sp * np.sqrt(tt)) - wofz(sp * np.sqrt(bb + tt)))
    half_below = ((EB * kern_h).real * wt).sum(axis=1) / np.pi
    inv_below = np.zeros_like(b)
    pos = t > 0
    if np.any(pos):
        pp, ttp, bbp = p[pos], tt[pos], bb[pos]
        kern_k = np.exp(-pp * bbp) * _e1x(-pp * ttp) - _e1x(-pp * (bbp + ttp))
        inv_below[pos] = ((EB[pos] * kern_k).real * wt[pos]).sum(axis=1) / np.pi
    return cdf, below, half_below, inv_below, rho


# ---------------------------------------------------------------------------------------------
# Laplace path, B < 8: fixed Talbot
# ---------------------------------------------------------------------------------------------
def _talbot_nodes(M):
    th = np.arange(1, M) * math.pi / M
    cot = 1.0 / np.tan(th)
    shape = np.concatenate([[1.0 + 0j], th * (cot + 1j)])  # p = r * shape
    sig = th + (th * cot - 1.0) * cot
    fac = np.concatenate([[0.5 + 0j], 1.0 + 1j * sig])
    return shape, fac


def _talbot_block(noise, s2, B, b, t):
    shape, fac = _talbot_nodes(_TALBOT_M)
    M = _TALBOT_M
    # x grid for S(x) on [b, b e^36]: Gauss-Legendre on panels of log(x / b)
    uq = _panel_nodes(0.0, 36.0, _XGRID_PANEL)
    uw = _panel_weights(0.0, 36.0, _XGRID_PANEL)
    x = np.concatenate([b[:, None], b[:, None] * np.exp(uq)[None, :]], axis=1)  # pairs x (1+nx)
    r = 2.0 * M / (5.0 * x)
    p = r[..., None] * shape  # pairs x nx x M
    OM = _one_minus_laplace_w(noise, p, s2[:, None, None], B)  # 1 - L_W
    ex = np.exp((2.0 * M / 5.0) * shape) * fac  # e^{x p} (1 + i sigma), independent of x
    surv = ((ex * OM / p).real.sum(axis=-1)) * r / M
    emin = (((ex * OM / (p * p))[:, 0, :]).real.sum(axis=-1)) * r[:, 0] / M
    # P(W <= b) directly where it is small (1 - S would lose its relative accuracy)
    p0 = p[:, 0, :]
    cdf_direct = ((ex * (1.0 - OM[:, 0, :]) / p0).real.sum(axis=-1)) * r[:, 0] / M
    Sb = np.where(cdf_direct < 0.5, 1.0 - cdf_direct, surv[:, 0])
    surv[:, 0] = Sb
    cdf = np.where(cdf_direct < 0.5, cdf_direct, 1.0 - Sb)
    xs, Sx = x[:, 1:], surv[:, 1:]
    dx = xs * uw  # dx = x du
    tt = t[:, None]
    half_above = Sb / np.sqrt(b + t) - 0.5 * (dx * Sx / (xs + tt) ** 1.5).sum(axis=1)
    inv_above = Sb / (b + t) - (dx * Sx / (xs + tt) ** 2).sum(axis=1)
    return cdf, emin, half_above, inv_above


# ---------------------------------------------------------------------------------------------
# continuous laws: assemble mu_B, nu_B
# ---------------------------------------------------------------------------------------------
def _typical_w(noise, s2, B):
    """A scale of W (B times a robust scale of Y), for the real-axis grids."""
    nodes = _scale_mixture_nodes(noise)
    if nodes is not None:
        v, om = nodes
        med = v[np.searchsorted(np.cumsum(om), 0.5)]
        return B * (s2 + med)
    return B * (s2 + noise.variance)


def _laplace_factors_block(noise, s2, a, t, B):
    b = a - t
    mu = np.empty_like(s2)
    nu = np.empty_like(s2)
    lam0 = 1.0 / _typical_w(noise, s2, B)
    need_half = B > 1
    m_half = np.full_like(s2, np.nan)
    m_one = np.zeros_like(s2)
    if need_half or np.any(t > 0):
        tt = np.where(np.isfinite(t), t, 0.0)
        m_half, m_one = _real_axis_moments(noise, s2, B, tt, lam0)
    clipped_all = b <= 0
    if np.any(clipped_all):
        k = clipped_all
        mu[k] = (1.0 - 1.0 / B) * np.sqrt(a[k]) * m_half[k] if need_half else 0.0
        nu[k] = a[k] * (1.0 - t[k] * m_one[k]) / B**2
    k = ~clipped_all
    if np.any(k):
        bk, tk, sk, ak = b[k], t[k], s2[k], a[k]
        if B >= _VERTICAL_MIN_BATCH:
            cdf, below, half_below, inv_below, rho = _vertical_block(noise, sk, B, bk, tk)
            emin = bk - below
            half_above = m_half[k] - half_below
            inv_above = m_one[k] - inv_below
            bad = ~(rho <= _RHO_MAX)  # W far below b: the line cancels, Talbot does not
            if np.any(bad):
                cdf[bad], emin[bad], half_above[bad], inv_above[bad] = _talbot_block(
                    noise, sk[bad], B, bk[bad], tk[bad]
                )
        else:
            cdf, emin, half_above, inv_above = _talbot_block(noise, sk, B, bk, tk)
        cdf = np.clip(cdf, 0.0, 1.0)
        mu_k = cdf + ((1.0 - 1.0 / B) * np.sqrt(ak) * half_above if need_half else 0.0)
        extra = np.where(tk > 0, tk * ((1.0 - cdf) - ak * inv_above), 0.0)
        mu[k] = mu_k
        nu[k] = (emin + extra) / B**2
    return mu, nu


def _laplace_factors(noise, s2, a, t, B):
    return map_in_blocks(
        lambda sl: _laplace_factors_block(noise, s2[sl], a[sl], t[sl], B), s2.size, _BLOCK
    )


# ---------------------------------------------------------------------------------------------
# Gaussian and finite laws: (noncentral) chi^2 given T
# ---------------------------------------------------------------------------------------------
def _gauss_closed(S2, a, B):
    """SPEC 8B.4 closed forms, shift 0 (S2 > 0)."""
    from scipy.special import gammainc, gammaincc, gammaln

    x = 0.5 * a / S2  # kB^2 / 2
    kB = np.sqrt(a / S2)
    mu = gammainc(0.5 * B, x)
    if B > 1:
        ratio = np.exp(gammaln(0.5 * (B + 1)) - gammaln(0.5 * B))
        mu = mu + kB * math.sqrt(2.0) * ratio / B * gammaincc(0.5 * (B - 1), x)
    nu = S2 / B**2 * (B * gammainc(0.5 * B + 1, x) + kB * kB * gammaincc(0.5 * B, x))
    return mu, nu


def _chi2_pdf(x, s2, B, lam):
    """Density of s2 * chi'^2_B(lam) at x (lam = 0: central, computed directly)."""
    from scipy import stats
    from scipy.special import gammaln

    y = x / s2
    out = np.empty(np.broadcast(x, lam).shape)
    y, s2b, lamb = np.broadcast_arrays(y, s2, lam)
    central = lamb == 0
    k = 0.5 * B
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        yc = y[central]
        out[central] = (
            np.exp((k - 1.0) * np.log(yc) - 0.5 * yc - k * math.log(2.0) - gammaln(k))
            / s2b[central]
        )
        nc = ~central
        if np.any(nc):
            out[nc] = stats.ncx2.pdf(y[nc], B, lamb[nc]) / s2b[nc]
    return np.where(np.isfinite(out), out, 0.0)


def _tail_by_density(s2, lam, B, b, t):
    """E[(W+t)^-1/2; W > b] and E[W/(W+t); W > b], W = s2 chi'^2_B(lam), by Gauss-Legendre.

    Arrays (rows). b may be <= 0 (then the whole range, from a tiny fraction of the mean)."""
    mean = s2 * (B + lam)
    sd = s2 * np.sqrt(2.0 * (B + 2.0 * lam))
    lo = np.where(b > 0, b, 1e-40 * mean)
    xmax = np.maximum(lo, mean) + 60.0 * sd + 90.0 * s2
    mult = np.array([0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 45])
    around = mean[:, None] + sd[:, None] * np.concatenate([-mult, [0.0], mult])[None, :]
    top = np.maximum(lo, mean)
    n_geo = int(np.clip(np.ceil(np.log2(np.max(top / lo))), 1, 140))
    geo = lo[:, None] * 2.0 ** np.arange(0, n_geo + 1)[None, :]
    geo = np.minimum(geo, top[:, None])
    edges = np.concatenate([lo[:, None], geo, around, xmax[:, None]], axis=1)
    edges = np.sort(np.clip(edges, lo[:, None], xmax[:, None]), axis=1)
    left, right = edges[:, :-1], edges[:, 1:]
    half = 0.5 * (right - left)
    xn = (0.5 * (right + left))[..., None] + half[..., None] * _GL_X
    wn = half[..., None] * _GL_W
    live = (half > 0)[..., None] & np.ones_like(xn, dtype=bool)
    dens = np.zeros_like(xn)
    idx = np.nonzero(live)
    rows = idx[0]
    dens[idx] = _chi2_pdf(xn[idx], s2[rows], B, lam[rows])
    tt = t[:, None, None]
    f = wn * dens
    half_above = (f / np.sqrt(xn + tt)).sum(axis=(1, 2))
    ratio_above = (f * xn / (xn + tt)).sum(axis=(1, 2))
    return half_above, ratio_above


def _noncentral_pieces(s2, lam, B, a, t):
    """Per row: mu_B and nu_B * B^2 given W = s2 chi'^2_B(lam), shift t."""
    from scipy.special import chndtr, gammainc

    b = a - t
    mu = np.zeros_like(s2)
    nuB2 = np.zeros_like(s2)
    pos = b > 0
    y = np.where(pos, b, 0.0) / s2
    central = lam == 0
    with np.errstate(invalid="ignore"):
        F0 = np.where(central, gammainc(0.5 * B, 0.5 * y), chndtr(y, B, lam))
        F2 = np.where(central, gammainc(0.5 * B + 1, 0.5 * y), chndtr(y, B + 2, lam))
        F4 = np.where(central, F2, chndtr(y, B + 4, lam))
    F0, F2, F4 = (np.where(pos, np.clip(F, 0.0, 1.0), 0.0) for F in (F0, F2, F4))
    ew_below = s2 * (B * F2 + lam * F4)
    half_above, ratio_above = _tail_by_density(s2, lam, B, b, t)
    mu = F0 + ((1.0 - 1.0 / B) * np.sqrt(a) * half_above if B > 1 else 0.0)
    nuB2 = ew_below + a * ratio_above
    return mu, nuB2


def _gaussian_factors(noise, s2, a, t, B, method):
    S2 = s2 + noise.variance
    mu = np.ones_like(s2)
    nu = S2 / B
    ok = S2 > 0
    if not np.any(ok):
        return mu, np.zeros_like(s2)
    zero = ok & (t == 0)
    if np.any(zero) and method != "quadrature":
        mu[zero], nu[zero] = _gauss_closed(S2[zero], a[zero], B)
        rest = ok & ~zero
    else:
        rest = ok
    if np.any(rest):
        m, n = _noncentral_pieces(S2[rest], np.zeros(int(rest.sum())), B, a[rest], t[rest])
        mu[rest], nu[rest] = m, n / B**2
    nu[~ok] = 0.0
    return mu, nu


_MAX_ATOMS = 20000


def _sum_of_squares_law(noise, B):
    """Atoms (T, prob) of T = eps_1^2 + ... + eps_B^2 (exact up to pruning/merging)."""
    vals, probs = (np.asarray(x, dtype=np.float64) for x in noise._atoms())
    sq, inv = np.unique(vals * vals, return_inverse=True)
    pr = np.bincount(inv, weights=probs)
    keep = pr > 0
    sq, pr = sq[keep], pr[keep]
    if sq.size == 1:
        return np.array([B * sq[0]]), np.array([1.0])
    if sq.size == 2:
        from scipy import stats

        k = np.arange(B + 1)
        w = stats.binom.pmf(k, B, pr[1])
        keep = w > 1e-22
        return k[keep] * sq[1] + (B - k[keep]) * sq[0], w[keep] / w[keep].sum()
    scale = sq.max() * B
    rel = 1e-9

    def merge(T, P):
        keep = P > 1e-22
        T, P = T[keep], P[keep]
        width = rel
        while True:
            key = np.round(T / (scale * width)).astype(np.int64)
            uk, ix = np.unique(key, return_inverse=True)
            if uk.size <= _MAX_ATOMS:
                break
            width *= 2.0
        Pm = np.bincount(ix, weights=P)
        Tm = np.bincount(ix, weights=P * T) / Pm
        return Tm, Pm

    result = None
    base = (sq, pr)
    n = B
    while n:
        if n & 1:
            if result is None:
                result = base
            else:
                result = merge(
                    (result[0][:, None] + base[0][None, :]).ravel(),
                    (result[1][:, None] * base[1][None, :]).ravel(),
                )
        n >>= 1
        if n:
            base = merge(
                (base[0][:, None] + base[0][None, :]).ravel(),
                (base[1][:, None] * base[1][None, :]).ravel(),
            )
    T, P = result
    return T, P / P.sum()


def _finite_factors(noise, s2, a, t, B):
    T, P = _sum_of_squares_law(noise, B)
    n = s2.size
    mu = np.zeros(n)
    nuB2 = np.zeros(n)
    # W = T exactly at s = 0; for s^2 << T the Gaussian part changes the factors by O(s^2 / T)
    # (the first order cancels by symmetry) while the noncentral chi^2 route loses accuracy
    # (noncentrality T / s^2 > 1e8): use the s = 0 sums there
    t_min = T[T > 0].min() if np.any(T > 0) else 0.0
    zero = s2 <= 1e-9 * t_min
    if np.any(zero):
        az, tz = a[zero][:, None], t[zero][:, None]
        Tr = T[None, :]
        below = Tr + tz <= az
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(below, 1.0, (1.0 - 1.0 / B) * np.sqrt(az / (Tr + tz)))
            frac = np.where(below, 1.0, az / (Tr + tz))
        mu[zero] = (P * g).sum(axis=1)
        nuB2[zero] = (P * Tr * frac).sum(axis=1)
    pos = np.nonzero(~zero)[0]
    step = max(1, 4096 // T.size)
    for i in range(0, pos.size, step):
        rows = pos[i : i + step]
        m = rows.size
        sr = np.repeat(s2[rows], T.size)
        lam = np.tile(T, m) / sr
        mm, nn = _noncentral_pieces(
            sr, lam, B, np.repeat(a[rows], T.size), np.repeat(t[rows], T.size)
        )
        mu[rows] = (mm.reshape(m, -1) * P).sum(axis=1)
        nuB2[rows] = (nn.reshape(m, -1) * P).sum(axis=1)
    return mu, nuB2 / B**2


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def mean_clip_factors(noise: NoiseLaw, risk, clip, batch, shift=0.0, *, method="auto"):
    """Clip-of-the-mean factors (mu_B, nu_B) of SPEC 8B.2 (clip_grad_norm_ on the batch mean).

    W = sum_{j<=B} w_j^2, w_j = z_j - eps_j iid, z ~ N(0, 2 risk); Xt = W + shift; a = c^2 B^2:
    mu_B = P(Xt <= a) + (1 - 1/B) E[c B Xt^-1/2 ; Xt > a], nu_B = E[W min(1, a/Xt)] / B^2.
    ``shift`` >= 0 is the large-batch shift B (B+1) G / D (computed by the caller). Broadcasts
    over ``risk``, ``clip`` and ``shift``; ``batch`` is an integer >= 1. ``clip`` None or inf:
    mu_B = 1, nu_B = (2R + E eps^2) / B. B = 1, shift = 0 equals ``reduction_factors``.
    ``method``: "auto"; "laplace" forces the Laplace-inversion route (continuous laws and
    Gaussian noise, used to cross-check it); "quadrature" forces the chi^2-density quadrature
    for Gaussian noise at shift 0 (cross-check of the closed forms).

    References: SPEC section 8B (8B.2 law of X, 8B.4 Gaussian closed forms, 8B.5 general laws);
    arXiv 2406.11733.
    """
    _check_noise(noise)
    B = V.count("batch", batch)
    if method not in ("auto", "laplace", "quadrature"):
        raise ValueError(f"method must be 'auto', 'laplace' or 'quadrature', got {method!r}")
    R = _check_array("risk", risk)
    c = _check_array("clip", clip, allow_inf=True, positive=True)
    t = _check_array("shift", shift)
    R, c, t = np.broadcast_arrays(R, c, t)
    shape = R.shape
    R, c, t = (np.ravel(x).astype(np.float64) for x in (R, c, t))
    s2 = 2.0 * R
    mu = np.ones(R.shape)
    nu = (s2 + noise.second_moment) / B
    fin = np.isfinite(c)
    if np.any(fin):
        sf, cf, tf = s2[fin], c[fin], t[fin]
        a = cf * cf * B * B
        if B == 1 and method == "auto" and np.all(tf == 0):
            m, n = reduction_factors(noise, 0.5 * sf, cf)
        elif method == "laplace":
            if not _supported_continuous(noise):
                raise ValueError(
                    f"method='laplace' needs a continuous or Gaussian law, got {noise!r}"
                )
            m, n = _laplace_factors(noise, sf, a, tf, B)
        elif noise.kind == "gaussian" and (
            len(noise._gaussian_components()[0]) == 1 and _is_centred_mixture(noise)
        ):
            m, n = _gaussian_factors(noise, sf, a, tf, B, method)
        elif noise.kind == "discrete":
            m, n = _finite_factors(noise, sf, a, tf, B)
        else:
            m, n = _laplace_factors(noise, sf, a, tf, B)
        mu[fin], nu[fin] = m, n
    return mu.reshape(shape), nu.reshape(shape)


def mean_clip_ccc(noise: NoiseLaw, risk, clip, batch):
    """Clip-of-the-mean clipping comparison criterion CCC_B = mu_B^2 (2R + Var) / (B nu_B).

    Shift 0 (SPEC 8B.4); inf where Var eps is infinite. Broadcasts over ``risk`` and ``clip``.

    References: SPEC section 8B.4; arXiv 2406.11733 (CCC, SPEC section 5).
    """
    mu, nu = mean_clip_factors(noise, risk, clip, batch)
    B = int(batch)
    R = np.asarray(risk, dtype=np.float64)
    var = noise.variance
    with np.errstate(divide="ignore", invalid="ignore"):
        out = mu * mu * (2.0 * R + var) / (B * nu)
    return out


# ---------------------------------------------------------------------------------------------
# Stein curvature kap (SPEC 8A.1)
# ---------------------------------------------------------------------------------------------
def _density_w_pair(noise, s, c):
    """f_w(c) + f_w(-c) for w = z - eps, z ~ N(0, s^2) (arrays of equal shape)."""
    from scipy.special import erfcx, ndtr

    if noise.kind == "gaussian":
        w, m, sd = (np.asarray(x, dtype=np.float64) for x in noise._gaussian_components())
        var = s[..., None] ** 2 + sd * sd
        with np.errstate(divide="ignore", invalid="ignore"):
            out = 0.0
            for sign in (1.0, -1.0):
                z = (sign * c[..., None] + m) ** 2 / var  # w = z - eps has mean -m
                out = out + (w * np.exp(-0.5 * z) / np.sqrt(2 * np.pi * var)).sum(axis=-1)
        return np.where(np.isfinite(out), out, 0.0)
    if noise.kind == "discrete":
        vals, probs = (np.asarray(x, dtype=np.float64) for x in noise._atoms())
        out = np.zeros(np.broadcast(s, c).shape)
        pos = s > 0
        sp, cp = s[pos][..., None], c[pos][..., None]
        tot = 0.0
        for sign in (1.0, -1.0):
            tot = tot + (probs * np.exp(-0.5 * ((sign * cp + vals) / sp) ** 2)).sum(axis=-1)
        out[pos] = tot / (_SQRT2PI * s[pos])
        return out  # s = 0: w has no density (taken as 0)
    nodes = _scale_mixture_nodes(noise)
    if nodes is not None:
        v, om = nodes
        var = s[..., None] ** 2 + v
        return 2.0 * (om * np.exp(-0.5 * c[..., None] ** 2 / var) / np.sqrt(2 * np.pi * var)).sum(
            axis=-1
        )
    if isinstance(noise, Uniform):
        h = noise.half_width
        out = 0.0
        for sign in (1.0, -1.0):
            x = sign * c
            with np.errstate(divide="ignore", invalid="ignore"):
                val = (ndtr((x + h) / s) - ndtr((x - h) / s)) / (2 * h)
            val = np.where(s > 0, val, np.where(np.abs(x) < h, 0.5 / h, 0.0))
            out = out + val
        return out
    if isinstance(noise, Exponential):
        sc = noise.scale
        out = 0.0
        for sign in (1.0, -1.0):
            x = sign * c
            A = x - sc
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                z = (A + s * s / sc) / (s * math.sqrt(2.0))
                from scipy.special import erfc

                big = np.exp(-0.5 * A * A / (s * s)) * erfcx(z)
                small = np.exp(A / sc + 0.5 * s * s / sc**2) * erfc(z)
                val = np.where(z >= 0, big, small) / (2 * sc)
            val = np.where(s > 0, val, noise._pdf(-x))
            out = out + val
        return out
    raise ValueError(f"stein_curvature has no density route for {type(noise).__name__}")


def stein_curvature(noise: NoiseLaw, risk, clip):
    """Second-order Stein coefficient kap = 2 mu - 2 c (f_w(c) + f_w(-c)) (SPEC 8A.1).

    w = z - eps, z ~ N(0, 2 risk); mu = P(|w| <= c) from ``reduction_factors``; f_w the density
    of w. ``clip`` None or inf: kap = 2 (Isserlis). Broadcasts over ``risk`` and ``clip``.
    Gaussian laws and mixtures: closed form; finite laws: exact sums (at risk = 0 w has no
    density and f_w is taken as 0); Student-t and Laplace: Gaussian scale-mixture integral;
    uniform and exponential: closed forms (Gaussian convolutions).

    References: SPEC section 8A.1 (and 8B.5 for the scale mixture); arXiv 2406.11733.
    """
    _check_noise(noise)
    R = _check_array("risk", risk)
    c = _check_array("clip", clip, allow_inf=True, positive=True)
    R, c = np.broadcast_arrays(R, c)
    fin = np.isfinite(c)
    out = np.full(R.shape, 2.0)
    if np.any(fin):
        Rf, cf = R[fin], c[fin]
        mu, _ = reduction_factors(noise, Rf, cf)
        s = np.sqrt(2.0 * Rf)
        out[fin] = 2.0 * mu - 2.0 * cf * _density_w_pair(noise, s, cf)
    return out if out.ndim else float(out)
