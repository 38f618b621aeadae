"""Reduction factors mu_c(R) = P(|w| <= c) and nu_c(R) = E[min(w^2, c^2)] (SPEC section 3).

w = z - eps with z ~ N(0, s^2), s = sqrt(2R), independent of eps.

Method, by law:
* Gaussian and Gaussian mixtures: w is itself a Gaussian (mixture), so the inner Gaussian formula
  is exact (``_gauss_moments``).
* Finite laws (three-point, discrete, empirical): exact finite sums of the inner formula.
* Other continuous laws: the inner formula is integrated against the noise density by composite
  Gauss-Legendre on panels that adapt to each (R, c) pair: breakpoints at +-c and at c +- s 2^j
  (the transition of width s, however small), at the density's kinks, and on a geometric grid of
  ratio <= 2 from the noise scale up to L = c + 40 s. Beyond L the integrand is c^2 p(eps) up to
  Phi(-40), so the tail is the closed form c^2 P(|eps| > L). No fixed grid: a fixed grid misses
  the width-s Gaussian when R -> 0 and truncates it when R -> inf.

References: arXiv 2406.11733, definitions of mu_c, nu_c (Sec. 2, "reduction factors").
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._noise import NoiseLaw

__all__ = ["reduction_factors"]

_SQRT2PI = math.sqrt(2 * math.pi)
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)
_TRANSITION_OFFSETS = np.array([0.25, 0.5, 1, 2, 4, 8, 16])
_TAIL_SIGMAS = 40.0  # Phi(-40) ~ 4e-350: the Gaussian is exactly zero beyond this in float64
_CHUNK_NODES = 4_000_000  # nodes per vectorised block (bounds memory at ~ 32 MB per array)


_MAX_RISK = 1e150  # beyond, 2R overflows in the criteria (and no risk path gets there)
_NARROW = 0.1  # c < _NARROW * s: integrate over |w| <= c directly (the closed form cancels)
_NARROW_NODES, _NARROW_WEIGHTS = np.polynomial.legendre.leggauss(8)


def _gauss_moments(m, s, c):
    """P(|w| <= c) and E[min(w^2, c^2)] for w ~ N(m, s^2); exact, stable, s = 0 allowed.

    Written with alpha = (-c - m)/s, beta = (c - m)/s (SPEC section 3, inner Gaussian integral).
    """
    from scipy import special  # deferred: keeps `import clipped_trip` light for simulation-only use

    m, s, c = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (m, s, c)))
    shape = m.shape
    m, s, c = (np.atleast_1d(x) for x in (m, s, c))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = (-c - m) / s
        beta = (c - m) / s
        # P and 1 - P from the nearer tails, without cancellation
        ta = special.ndtr(-np.abs(alpha))
        tb = special.ndtr(-np.abs(beta))
        right = alpha > 0  # whole window right of the mean
        left = beta < 0
        p_in = np.where(right, ta - tb, np.where(left, tb - ta, 1.0 - ta - tb))
        p_out = np.where(right, 1.0 - ta + tb, np.where(left, 1.0 - tb + ta, ta + tb))
        phi_a = np.exp(-0.5 * alpha * alpha) / _SQRT2PI
        phi_b = np.exp(-0.5 * beta * beta) / _SQRT2PI
        a_phi = alpha * phi_a
        b_phi = beta * phi_b
        if not np.all(s > 0):  # s = 0 gives inf * 0; those entries are replaced below
            a_phi[~np.isfinite(a_phi)] = 0.0
            b_phi[~np.isfinite(b_phi)] = 0.0
        # E[w^2; |w| <= c] = m^2 P + 2 m s (phi_a - phi_b) + s^2 (P + alpha phi_a - beta phi_b)
        inner = m * m * p_in + 2 * m * s * (phi_a - phi_b) + s * s * (p_in + a_phi - b_phi)
        narrow = c < _NARROW * s
        if np.any(narrow):
            # window much narrower than the Gaussian: the terms above cancel; integrate directly
            mn, sn, cn = m[narrow], s[narrow], c[narrow]
            w = cn[:, None] * _NARROW_NODES
            dens = np.exp(-0.5 * ((w - mn[:, None]) / sn[:, None]) ** 2) / (_SQRT2PI * sn[:, None])
            wts = cn[:, None] * _NARROW_WEIGHTS * dens
            p_in[narrow] = wts.sum(axis=1)
            p_out[narrow] = 1.0 - p_in[narrow]
            inner[narrow] = (wts * w * w).sum(axis=1)
        q = np.maximum(inner, 0.0) + c * c * p_out
    # s = 0: w = m exactly
    degenerate = s == 0
    if np.any(degenerate):
        p_in = np.where(degenerate, (np.abs(m) <= c).astype(np.float64), p_in)
        q = np.where(degenerate, np.minimum(m * m, c * c), q)
    return p_in.reshape(shape), q.reshape(shape)


def _mixture_factors(noise, s, c):
    weights, means, stds = (np.asarray(x) for x in noise._gaussian_components())
    mu = np.zeros(np.broadcast(s, c).shape)
    nu = np.zeros_like(mu)
    for w, m, sd in zip(weights, means, stds):
        p, q = _gauss_moments(-m, np.sqrt(s * s + sd * sd), c)
        mu += w * p
        nu += w * q
    return mu, nu


def _finite_factors(noise, s, c):
    values, probs = (np.asarray(x, dtype=np.float64) for x in noise._atoms())
    # merge repeated atoms (empirical laws often repeat values)
    values, inverse = np.unique(values, return_inverse=True)
    probs = np.bincount(inverse, weights=probs)
    s_flat, c_flat = (np.ravel(x) for x in np.broadcast_arrays(s, c))
    mu = np.empty(s_flat.shape)
    nu = np.empty(s_flat.shape)
    step = max(1, _CHUNK_NODES // values.size)
    for i in range(0, s_flat.size, step):
        sl = slice(i, i + step)
        p, q = _gauss_moments(-values[None, :], s_flat[sl, None], c_flat[sl, None])
        mu[sl] = p @ probs
        nu[sl] = q @ probs
    shape = np.broadcast(s, c).shape
    return mu.reshape(shape), nu.reshape(shape)


def _panel_edges(noise, s, c):
    """Per-pair sorted panel endpoints on [-L, L] (rows: pairs)."""
    scale = noise._scale
    L = c + _TAIL_SIGMAS * s
    # geometric grid from scale/8 (or L) to L with ratio <= 2
    g0 = np.minimum(scale / 8.0, L)
    n_geo = int(np.ceil(np.log2(np.max(L / g0)))) + 2
    frac = np.linspace(0.0, 1.0, n_geo)
    geo = g0[:, None] * (L / g0)[:, None] ** frac[None, :]
    trans = s[:, None] * _TRANSITION_OFFSETS[None, :]
    around_c = np.concatenate([c[:, None] - trans, c[:, None] + trans, c[:, None]], axis=1)
    kinks = np.broadcast_to(
        np.asarray(noise._breakpoints, dtype=np.float64), (s.size, len(noise._breakpoints))
    )
    edges = np.concatenate(
        [geo, -geo, around_c, -around_c, kinks, -L[:, None], L[:, None], np.zeros((s.size, 1))],
        axis=1,
    )
    edges = np.clip(edges, -L[:, None], L[:, None])
    return np.sort(edges, axis=1), L


def _continuous_block(noise, ss, cc):
    edges, L = _panel_edges(noise, ss, cc)
    lo, hi = edges[:, :-1], edges[:, 1:]
    half = 0.5 * (hi - lo)
    x = (0.5 * (hi + lo))[..., None] + half[..., None] * _GL_NODES  # pairs x panels x nodes
    wts = half[..., None] * _GL_WEIGHTS * noise._pdf(x)
    p, q = _gauss_moments(-x, ss[:, None, None], cc[:, None, None])
    tail = noise._sf(L) + noise._cdf(-L)  # P(|eps| > L), closed form
    mu = np.einsum("ijk,ijk->i", wts, p)
    nu = np.einsum("ijk,ijk->i", wts, q) + cc * cc * tail
    return mu, nu


def map_in_blocks(work, n: int, block: int):
    """``work(slice) -> (mu, nu)`` over [0, n) in blocks of ``block``, concatenated; several
    blocks run on the cores (numpy ufuncs release the GIL)."""
    blocks = [slice(i, i + block) for i in range(0, n, block)]
    if len(blocks) > 1:
        with ThreadPoolExecutor(max_workers=min(len(blocks), os.cpu_count() or 1)) as pool:
            parts = list(pool.map(work, blocks))
    else:
        parts = [work(b) for b in blocks]
    mu = np.concatenate([p[0] for p in parts]) if parts else np.empty(0)
    nu = np.concatenate([p[1] for p in parts]) if parts else np.empty(0)
    return mu, nu


def _continuous_factors(noise, s, c):
    shape = np.broadcast(s, c).shape
    s_flat, c_flat = (np.ravel(x).astype(np.float64) for x in np.broadcast_arrays(s, c))
    # 256 pairs per block: ~ 200k nodes, a few MB per temporary
    mu, nu = map_in_blocks(
        lambda sl: _continuous_block(noise, s_flat[sl], c_flat[sl]), s_flat.size, 256
    )
    return mu.reshape(shape), nu.reshape(shape)


def reduction_factors(noise: NoiseLaw, risk, clip):
    """Descent and variance reduction factors (mu, nu) of clipped SGD.

    mu = P(|w| <= c), nu = E[min(w^2, c^2)] with w = z - eps, z ~ N(0, 2 risk). Broadcasts over
    ``risk`` and ``clip`` (numpy arrays out). ``clip=None`` or inf: mu = 1, nu = 2R + E[eps^2].
    nu is absolute (not normalised by 2R + Var).

    References: arXiv 2406.11733, reduction factors mu_c and nu_c; SPEC section 3.
    """
    if not isinstance(noise, NoiseLaw):
        raise ValueError(
            f"noise must be a NoiseLaw (e.g. Gaussian(1.0)), got {type(noise).__name__}"
        )
    R = np.asarray(risk, dtype=np.float64)
    if np.any(~np.isfinite(R)) or np.any(R < 0):
        raise ValueError("risk must be finite and >= 0 everywhere")
    if np.any(R > _MAX_RISK):
        raise ValueError(f"risk must be <= {_MAX_RISK:g} (2R + E eps^2 must stay finite)")
    c = np.asarray(np.inf if clip is None else clip, dtype=np.float64)
    if np.any(np.isnan(c)) or np.any(c < 0):
        raise ValueError("clip must be >= 0 (inf or None for no clipping) everywhere")
    R, c = np.broadcast_arrays(R, c)
    s = np.sqrt(2.0 * R)
    unclipped = np.isinf(c)
    c_fin = np.where(unclipped, 1.0, c)
    if noise.kind == "gaussian":
        mu, nu = _mixture_factors(noise, s, c_fin)
    elif noise.kind == "discrete":
        mu, nu = _finite_factors(noise, s, c_fin)
    else:
        mu, nu = _continuous_factors(noise, s, c_fin)
    mu = np.where(unclipped, 1.0, mu)
    nu = np.where(unclipped, 2.0 * R + noise.second_moment, nu)
    return mu, nu
