"""Reduction factors against independent computations (mpmath, scipy quad, closed forms, limits)."""

import math

import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, special, stats

import clipped_trip as ct
from tolerances import FACTORS_REL

mp.mp.dps = 20


def _mp_pdf(law):
    if isinstance(law, ct.StudentT):
        nu, sc = mp.mpf(law.df), mp.mpf(law.scale)
        const = mp.gamma((nu + 1) / 2) / (mp.sqrt(nu * mp.pi) * mp.gamma(nu / 2) * sc)
        return lambda e: const * (1 + (e / sc) ** 2 / nu) ** (-(nu + 1) / 2), []
    if isinstance(law, ct.Laplace):
        b = mp.mpf(law.scale)
        return lambda e: mp.exp(-abs(e) / b) / (2 * b), []
    if isinstance(law, ct.Uniform):
        h = mp.mpf(law.half_width)
        return lambda e: 1 / (2 * h) if abs(e) <= h else mp.mpf(0), [-h, h]
    if isinstance(law, ct.Exponential):
        b = mp.mpf(law.scale)
        return lambda e: mp.exp(-(e + b) / b) / b if e >= -b else mp.mpf(0), [-b]
    raise TypeError(law)


def mp_factors(law, R, c):
    """Independent reference: mpmath quadrature over eps of the exact conditional expectations,
    written directly (P = Phi(b) - Phi(a); E[min(w^2,c^2)] via its own integral over w)."""
    pdf, extra = _mp_pdf(law)
    s, c = mp.sqrt(2 * mp.mpf(R)), mp.mpf(c)

    def cond(e):
        a, b = (-c + e) / s, (c + e) / s  # w = z - e in [-c, c]  <=>  z/s in [a, b]
        p_in = mp.ncdf(b) - mp.ncdf(a)
        # E[w^2 1{|w|<=c}] = int_a^b (s u - e)^2 phi(u) du, in closed form
        m = -e
        sec = (
            (m * m + s * s) * p_in
            + 2 * m * s * (mp.npdf(a) - mp.npdf(b))
            + s * s * (a * mp.npdf(a) - b * mp.npdf(b))
        )
        return p_in, sec + c * c * (1 - p_in)

    pts = sorted(
        set(
            [-mp.inf, mp.inf, mp.mpf(0), -c, c]
            + extra
            + [sg * c + k * s for sg in (1, -1) for k in (-8, -2, -1, 1, 2, 8)]
        )
    )
    mu = mp.quad(lambda e: pdf(e) * cond(e)[0], pts)
    nu = mp.quad(lambda e: pdf(e) * cond(e)[1], pts)
    return float(mu), float(nu)


LAWS = [
    ct.StudentT(3.0, 1.0),
    ct.StudentT(1.0, 0.5),
    ct.Laplace(0.8),
    ct.Uniform(1.5),
    ct.Exponential(1.2),
]
POINTS = [
    (1e-8, 1e-3),
    (1e-8, 1e3),
    (1e-4, 1.0),
    (0.05, 1.07),
    (1.0, 0.01),
    (1e4, 1e-3),
    (1e4, 1e3),
]


@pytest.mark.parametrize("law", LAWS, ids=repr)
def test_continuous_laws_against_mpmath(law):
    R = np.array([p[0] for p in POINTS])
    c = np.array([p[1] for p in POINTS])
    mu, nu = ct.reduction_factors(law, R, c)
    for i, (r, cc) in enumerate(POINTS):
        m_ref, n_ref = mp_factors(law, r, cc)
        assert mu[i] == pytest.approx(m_ref, rel=FACTORS_REL), (r, cc)
        assert nu[i] == pytest.approx(n_ref, rel=FACTORS_REL), (r, cc)


@pytest.mark.parametrize("sigma", [0.0, 0.3, 5.0])
def test_gaussian_closed_form_against_quad(sigma):
    law = ct.Gaussian(sigma)
    for R in (1e-8, 0.01, 1.0, 1e4):
        for c in (1e-3, 0.5, 3.0, 1e3):
            S = math.sqrt(2 * R + sigma**2)
            mu, nu = ct.reduction_factors(law, R, c)
            mu_q = special.erf(c / S / math.sqrt(2))
            # nu by scipy quad of min(w^2, c^2) against N(0, S^2), split at +-c
            k = min(c / S, 40.0)  # in units of S; beyond 40 the Gaussian is 0 in float64
            inner = (
                S
                * S
                * integrate.quad(
                    lambda u: u * u * stats.norm.pdf(u),
                    -k,
                    k,
                    points=[0.0] if k > 1 else None,
                    epsabs=0,
                    epsrel=1e-13,
                )[0]
            )
            nu_q = inner + c * c * 2 * stats.norm.sf(c / S)
            assert mu == pytest.approx(mu_q, rel=FACTORS_REL)
            assert nu == pytest.approx(nu_q, rel=FACTORS_REL)


def test_finite_laws_are_exact_sums():
    law = ct.Discrete((-1.0, 0.2, 3.0), (0.3, 0.5, 0.2))
    R, c = 0.7, 0.9
    s = math.sqrt(2 * R)
    mu_ref = nu_ref = 0.0
    for v, p in zip(*law._atoms()):
        # w = z - v ~ N(-v, s^2): integrate directly with scipy quad
        pdf = lambda w: stats.norm.pdf(w, loc=-v, scale=s)  # noqa: E731
        mu_ref += p * integrate.quad(pdf, -c, c, epsabs=0, epsrel=1e-13)[0]
        nu_ref += p * (
            integrate.quad(lambda w: w * w * pdf(w), -c, c, epsabs=0, epsrel=1e-13)[0]
            + c * c * (stats.norm.cdf(-c, -v, s) + stats.norm.sf(c, -v, s))
        )
    mu, nu = ct.reduction_factors(law, R, c)
    assert mu == pytest.approx(mu_ref, rel=1e-10)
    assert nu == pytest.approx(nu_ref, rel=1e-10)
    # the empirical law of repeated samples equals the discrete law with those frequencies
    emp = ct.Empirical([-1.0] * 3 + [0.2] * 5 + [3.0] * 2)
    np.testing.assert_allclose(ct.reduction_factors(emp, R, c), (mu, nu), rtol=1e-13)


def test_mixture_against_quad():
    law = ct.GaussianMixture((0.4, 0.6), (-1.0, 2.0), (0.5, 0.3))
    R, c = 0.2, 1.3

    def pdf(e):
        return 0.4 * stats.norm.pdf(e, -1.0, 0.5) + 0.6 * stats.norm.pdf(e, 2.0, 0.3)

    s = math.sqrt(2 * R)
    mu_ref = integrate.quad(
        lambda e: pdf(e) * (stats.norm.cdf((c + e) / s) - stats.norm.cdf((e - c) / s)),
        -10,
        10,
        points=[-c, c],
        epsabs=0,
        epsrel=1e-12,
        limit=200,
    )[0]
    mu, _ = ct.reduction_factors(law, R, c)
    assert mu == pytest.approx(mu_ref, rel=1e-9)


@pytest.mark.parametrize("law", LAWS + [ct.ThreePoint(2.0, 0.2), ct.Gaussian(0.7)], ids=repr)
@pytest.mark.parametrize("c", [0.05, 1.0, 4.0])
def test_small_risk_limit(law, c):
    """R -> 0: mu -> P(|eps| <= c), nu -> E[min(eps^2, c^2)] (independent scipy computation)."""
    mu, nu = ct.reduction_factors(law, 1e-14, c)
    if isinstance(law, ct.ThreePoint):
        v, q = law.value, law.q
        mu0 = (1 - q) + (q if v <= c else 0)
        nu0 = q * min(v * v, c * c)
    else:
        ref = {
            ct.StudentT: lambda law_: stats.t(law_.df, scale=law_.scale),
            ct.Laplace: lambda law_: stats.laplace(scale=law_.scale),
            ct.Uniform: lambda law_: stats.uniform(-law_.half_width, 2 * law_.half_width),
            ct.Exponential: lambda law_: stats.expon(-law_.scale, law_.scale),
            ct.Gaussian: lambda law_: stats.norm(scale=law_.std),
        }[type(law)](law)
        mu0 = ref.cdf(c) - ref.cdf(-c)
        lo, hi = max(-c, ref.support()[0]), min(c, ref.support()[1])
        nu0 = integrate.quad(lambda e: e * e * ref.pdf(e), lo, hi, epsabs=0, epsrel=1e-12)[
            0
        ] + c * c * (ref.cdf(-c) + ref.sf(c))
    # O(s) corrections with s = sqrt(2e-14) ~ 1.4e-7 (O(s^2) where the density is smooth at c)
    assert mu == pytest.approx(mu0, rel=1e-6, abs=1e-12)
    assert nu == pytest.approx(nu0, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("law", LAWS + [ct.ThreePoint(2.0, 0.2), ct.Gaussian(0.7)], ids=repr)
def test_large_risk_limit(law):
    """R -> inf: mu ~ c sqrt(2/pi) / s, nu -> c^2."""
    R, c = 1e14, 0.5  # corrections are O(c / s) ~ 4e-8
    s = math.sqrt(2 * R)
    mu, nu = ct.reduction_factors(law, R, c)
    assert mu == pytest.approx(c * math.sqrt(2 / math.pi) / s, rel=1e-6)
    assert nu == pytest.approx(c * c, rel=1e-6)


def test_unclipped_and_broadcasting():
    law = ct.Laplace(1.0)
    mu, nu = ct.reduction_factors(law, np.array([0.0, 1.0, 2.0]), None)
    np.testing.assert_array_equal(mu, 1.0)
    np.testing.assert_allclose(nu, 2 * np.array([0.0, 1.0, 2.0]) + 2.0)
    mu, nu = ct.reduction_factors(law, np.array([[0.1], [1.0]]), np.array([0.5, 1.0, np.inf]))
    assert mu.shape == (2, 3) and mu[0, 2] == 1.0
    mu, nu = ct.reduction_factors(ct.StudentT(1.0), 1.0, None)
    assert mu == 1.0 and math.isinf(nu)


def test_monotone_in_clip():
    R = 0.3
    c = np.logspace(-3, 3, 200)
    for law in (ct.StudentT(2.5), ct.Laplace(1.0), ct.ThreePoint(1.0, 0.5)):
        mu, nu = ct.reduction_factors(law, R, c)
        assert np.all(np.diff(mu) >= -1e-13) and np.all(np.diff(nu) >= -1e-12 * nu[1:])  # round-off
        assert np.all(nu <= c * c * (1 + 1e-12))


@pytest.mark.parametrize(
    "risk,clip,match",
    [(-1.0, 1.0, "risk"), (np.nan, 1.0, "risk"), (1.0, -0.5, "clip"), (1.0, np.nan, "clip")],
)
def test_bad_input(risk, clip, match):
    with pytest.raises(ValueError, match=match):
        ct.reduction_factors(ct.Gaussian(1.0), risk, clip)
