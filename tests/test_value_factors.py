"""Value-clipping factors mu_i, nu_i and the signSGD factor phi(R) (SPEC 12).

The references integrate the definitions mu_i = E[z^2 1{|w z| <= theta_i}] and
nu_i = E[min(lambda_i w^2 z^2, tau^2)] over z (outer, scipy quad) and over the law of w given z
(inner: the Gaussian part of w exactly, then scipy quad over eps, or a finite sum), which is a
different route from the package's (F and erfc in closed form, quadrature over the law of |w|).
"""

import math

import numpy as np
import pytest
from scipy import integrate, special

import clipped_trip as ct
from clipped_trip._value_factors import sign_descent_factor, value_clip_factors
from tolerances import FACTORS_REL

_SQRT2PI = math.sqrt(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# independent reference: nested scipy quad from the definitions
# ---------------------------------------------------------------------------------------------
def _scalar_pdf(law):
    """Scalar density, its breakpoints and scale, written here (not the package's _pdf)."""
    if isinstance(law, ct.StudentT):
        nu, sc = law.df, law.scale
        lc = (
            math.lgamma((nu + 1) / 2)
            - math.lgamma(nu / 2)
            - 0.5 * math.log(nu * math.pi)
            - math.log(sc)
        )
        return (lambda e: math.exp(lc - 0.5 * (nu + 1) * math.log1p((e / sc) ** 2 / nu))), [], sc
    if isinstance(law, ct.Laplace):
        b = law.scale
        return (lambda e: math.exp(-abs(e) / b) / (2 * b)), [0.0], b
    if isinstance(law, ct.Exponential):
        b = law.scale
        return (lambda e: math.exp(-(e + b) / b) / b if e >= -b else 0.0), [-b], b
    raise TypeError(law)


def _p_between(a, b):
    """P(a <= Z <= b) from the nearer tails."""
    if a > 0:
        return special.ndtr(-a) - special.ndtr(-b)
    if b < 0:
        return special.ndtr(b) - special.ndtr(a)
    return 1.0 - special.ndtr(a) - special.ndtr(-b)


def _cond(e, s, c):
    """P(|w| <= c) and E[min(w^2, c^2)] for w = s Z' - e, Z' ~ N(0, 1)."""
    m = -e
    a, b = (-c - m) / s, (c - m) / s
    p = _p_between(a, b)
    pa, pb = math.exp(-a * a / 2) / _SQRT2PI, math.exp(-b * b / 2) / _SQRT2PI
    sec = (m * m + s * s) * p + 2 * m * s * (pa - pb) + s * s * (a * pa - b * pb)
    return p, max(sec, 0.0) + c * c * (1.0 - p)


def _sharp(k, s):
    """Offsets (in units of s) that bracket a feature at k smoothed over s; k alone if wide."""
    return (-8, -4, -1, 0, 1, 4, 8) if s < k / 16 else (0,)


def _continuous_inner(law, s, c, which):
    """E over eps (and the Gaussian part of w) at fixed z: P(|w| <= c) or E[min(w^2, c^2)]."""
    pdf, bps, sc = _scalar_pdf(law)
    pts = {0.0} | {g * sc * 4.0**k for g in (-1, 1) for k in range(-1, 4)}
    pts |= {b + j * s for b in bps for j in _sharp(sc, s)}
    pts |= {g * c + j * s for g in (-1, 1) for j in _sharp(c, s)}
    A = 2 * max(abs(p) for p in pts) + 40 * s
    pts = sorted(p for p in pts if -A < p < A)
    f = lambda e: pdf(e) * _cond(e, s, c)[which]
    kw = dict(epsabs=0.0, epsrel=1e-10, limit=400)
    val = integrate.quad(f, -A, A, points=pts, **kw)[0]
    return val + integrate.quad(f, A, np.inf, **kw)[0] + integrate.quad(f, -np.inf, -A, **kw)[0]


def _pieces(law, s):
    """(weight, inner(c, which), places where the inner changes shape in c) of the law of w."""
    if isinstance(law, ct.Gaussian):
        S = math.sqrt(s * s + law.std**2)
        return [(1.0, lambda c, k: _cond(0.0, S, c)[k], [S])]
    if isinstance(law, ct.Discrete):  # one atom at a time: w = s Z' - v
        return [
            (p, lambda c, k, v=v: _cond(v, s, c)[k], [abs(v)])
            for v, p in zip(law.values, law.probs)
        ]
    _, bps, sc = _scalar_pdf(law)
    return [(1.0, lambda c, k: _continuous_inner(law, s, c, k), [sc] + [abs(b) for b in bps])]


def reference(law, R, tau, lam):
    """(mu, nu) from the definitions: z outer (0 < z < 12, z^2 phi(z) beyond is < 1e-29)."""
    s = math.sqrt(2 * R)
    th = tau / math.sqrt(lam)
    mu = nu = 0.0
    for weight, inner, marks in _pieces(law, s):
        pts = {th / (s * k) for k in (0.1, 1, 10)} | {1.0}
        for k in (m for m in marks if m > 0):
            pts |= {th / (k + j * s) for j in _sharp(k, s) if k + j * s > 0}
        pts = sorted(p for p in pts if p < 12)
        out = []
        for which in (0, 1):
            f = lambda z: 2 * z * z * math.exp(-z * z / 2) / _SQRT2PI * inner(th / z, which)
            kw = dict(points=pts, epsabs=0.0, epsrel=1e-10, limit=400)
            out.append(integrate.quad(f, 0.0, 12.0, **kw)[0])
        mu += weight * out[0]
        nu += weight * lam * out[1]
    return mu, nu


# (R, tau, lambda). Gaussian and finite laws (one quad each): the full grid. Continuous laws
# (nested quad, ~1 s a case): a Latin square, so that the four laws together take every pair
# (R, tau) of {1e-6, 0.05, 1, 100} x {1e-3, 0.1, 1, 10} once, each law every R and every tau.
_RS, _TAUS, _LAMS = (1e-6, 0.05, 1.0, 100.0), (1e-3, 0.1, 1.0, 10.0), (1.0, 1e-3, 0.1, 0.01)
_CASES_ALL = [(R, tau, lam) for R in _RS for tau in _TAUS for lam in (1e-3, 1.0)]


def _latin(k):
    return [(_RS[i], _TAUS[(i + k) % 4], _LAMS[(i + k) % 4]) for i in range(4)]


_DISCRETE = ct.Discrete((-2.0, 0.0, 0.5, 3.0), (0.2, 0.3, 0.3, 0.2))


@pytest.mark.parametrize(
    "law, cases",
    [
        (ct.Gaussian(1.0), _CASES_ALL),
        (_DISCRETE, _CASES_ALL),
        (ct.Laplace(1.0), _latin(0)),
        (ct.StudentT(3.0, 1.0), _latin(1)),
        (ct.StudentT(1.0, 0.5), _latin(2)),
        (ct.Exponential(1.0), _latin(3)),
    ],
    ids=["gaussian", "discrete", "laplace", "student-t3", "cauchy", "exponential"],
)
@pytest.mark.filterwarnings(
    "ignore::scipy.integrate.IntegrationWarning"
)  # round-off notes at 1e-11
def test_against_definitions(law, cases):
    for R, tau, lam in cases:
        mu_ref, nu_ref = reference(law, R, tau, lam)
        mu, nu = value_clip_factors(law, R, tau, [lam])
        assert mu[0] == pytest.approx(mu_ref, rel=FACTORS_REL), (R, tau, lam)
        assert nu[0] == pytest.approx(nu_ref, rel=FACTORS_REL), (R, tau, lam)


def test_zero_risk_finite_law_exact_sum():
    """R = 0, finite law: w = -eps, so mu = sum p F(theta/|v|), F(u) = P(chi^2_3 <= u^2)."""
    tau, lam = 0.7, np.array([0.05, 0.3, 1.0])
    mu, nu = value_clip_factors(_DISCRETE, 0.0, tau, lam)
    v = np.abs(np.array(_DISCRETE.values))
    p = np.array(_DISCRETE.probs)
    for i, la in enumerate(lam):
        th = tau / math.sqrt(la)
        with np.errstate(divide="ignore"):
            a = (th / v) ** 2 / 2
        F = np.where(v > 0, special.gammainc(1.5, a), 1.0)
        # E[min(lam v^2 z^2, tau^2)] = lam v^2 F + tau^2 P(|z| > th / v)
        G = np.where(v > 0, la * v**2 * F + tau**2 * special.gammaincc(0.5, a), 0.0)
        assert mu[i] == pytest.approx(p @ F, rel=1e-13)
        assert nu[i] == pytest.approx(p @ G, rel=1e-13)


def test_zero_risk_continuous_is_the_limit():
    lam = np.array([1e-2, 1.0])
    for law in (ct.StudentT(3.0), ct.Laplace(1.0), ct.Exponential(1.0)):
        mu0, nu0 = value_clip_factors(law, 0.0, 0.3, lam)
        mu1, nu1 = value_clip_factors(law, 1e-14, 0.3, lam)
        np.testing.assert_allclose(mu0, mu1, rtol=1e-9)
        np.testing.assert_allclose(nu0, nu1, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Monte Carlo
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "law, draw",
    [
        (ct.StudentT(3.0), lambda rng, n: rng.standard_t(3.0, n)),
        (ct.StudentT(1.0, 0.5), lambda rng, n: 0.5 * rng.standard_cauchy(n)),
        (ct.Exponential(1.0), lambda rng, n: rng.exponential(1.0, n) - 1.0),
        (
            ct.ThreePoint(2.0, 0.5),
            lambda rng, n: rng.choice([-2.0, 0.0, 2.0], n, p=[0.25, 0.5, 0.25]),
        ),
    ],
    ids=["student-t3", "cauchy", "exponential", "three-point"],
)
def test_monte_carlo(law, draw):
    rng = np.random.default_rng(12345)
    n = 1_000_000
    R, tau = 0.4, 0.5
    lam = np.array([0.05, 0.5, 2.0])
    w = math.sqrt(2 * R) * rng.standard_normal(n) - draw(rng, n)
    z = rng.standard_normal(n)
    mu, nu = value_clip_factors(law, R, tau, lam)
    for i, la in enumerate(lam):
        g = math.sqrt(la) * w * z  # the coordinate's gradient per unit e: g_i = w sqrt(lam) z
        a = z * z * (np.abs(g) <= tau)
        b = np.minimum(g * g, tau * tau)
        for est, val in ((a, mu[i]), (b, nu[i])):
            se = est.std() / math.sqrt(n)
            assert abs(est.mean() - val) < 5 * se, (la, est.mean(), val, se)


# ---------------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------------
def test_no_clipping_and_degenerate_inputs():
    law = ct.StudentT(3.0)
    lam = np.array([0.0, 0.1, 1.0])
    for tau in (None, math.inf):
        mu, nu = value_clip_factors(law, 0.5, tau, lam)
        np.testing.assert_array_equal(mu, 1.0)
        np.testing.assert_allclose(nu, lam * (1.0 + law.second_moment), rtol=1e-15)
    mu, nu = value_clip_factors(law, 0.5, 0.3, lam)
    assert (mu[0], nu[0]) == (1.0, 0.0)  # lambda = 0: nothing to clip
    mu, nu = value_clip_factors(law, 0.5, 0.0, lam)
    np.testing.assert_array_equal(mu[1:], 0.0)
    np.testing.assert_array_equal(nu, 0.0)
    mu, nu = value_clip_factors(ct.Discrete((0.0, 1.0), (0.25, 0.75)), 0.0, 0.0, [1.0])
    assert mu[0] == 0.25 and nu[0] == 0.0  # P(w = 0)
    with pytest.raises(ValueError):
        value_clip_factors(law, -1.0, 0.3, lam)
    with pytest.raises(ValueError):
        value_clip_factors(law, 0.5, -0.3, lam)
    with pytest.raises(ValueError):
        value_clip_factors(law, 0.5, 0.3, [-1.0])
    with pytest.raises(ValueError):
        value_clip_factors("gaussian", 0.5, 0.3, lam)


@pytest.mark.parametrize("law", [ct.Gaussian(1.0), ct.Laplace(1.0), ct.StudentT(3.0)])
def test_large_tau_is_plain_sgd(law):
    R, lam = 0.3, np.array([1e-2, 1.0])
    plain = lam * (2 * R + law.second_moment)
    taus = np.array([3.0, 10.0, 100.0, 1000.0])
    gaps = []
    for tau in taus:
        mu, nu = value_clip_factors(law, R, tau, lam)
        assert np.all(mu <= 1.0) and np.all(nu <= plain * (1 + 1e-15))
        gaps.append(max(np.max(1 - mu), np.max(1 - nu / plain)))
    gaps = np.array(gaps)
    assert all(b <= max(a, 1e-14) for a, b in zip(gaps, gaps[1:]))
    if isinstance(law, ct.StudentT):
        # E[(w^2 z^2 - theta^2)_+] ~ 1/theta for a cubic tail: the gap times tau is constant
        assert gaps[-1] * taus[-1] == pytest.approx(gaps[-2] * taus[-2], rel=1e-3)
    else:
        assert gaps[-1] < 1e-14


@pytest.mark.parametrize(
    "law, R",
    [(ct.Gaussian(1.0), 0.5), (ct.StudentT(1.0, 0.5), 1.0), (ct.Exponential(1.0), 0.2)],
)
def test_small_theta(law, R):
    """mu ~ phi theta with relative gap O(theta^2 log(1/theta)); nu -> tau^2 with
    1 - nu / tau^2 = (2/3) phi theta log(1/theta) + O(theta) (SPEC 12: theta log(1/theta))."""
    phi = sign_descent_factor(law, R)
    th = 10.0 ** -np.arange(2, 7)
    mu = np.array([value_clip_factors(law, R, t, [1.0])[0][0] for t in th])
    g = np.array([value_clip_factors(law, R, t, [1.0])[1][0] / t**2 for t in th])
    gap_mu = np.abs(mu / (phi * th) - 1)
    scaled = gap_mu / (th**2 * np.log(1 / th))
    assert np.all(np.diff(gap_mu) < 0) and gap_mu[-1] < 1e-9
    assert np.max(scaled) / np.min(scaled) < 1.5  # theta^2 log(1/theta), not theta
    one_minus = 1 - g
    ratio = one_minus / (th * np.log(1 / th))
    assert np.all(np.diff(ratio) < 0) and 1.0 < ratio[-1] / (2 * phi / 3) < 1.2
    # the coefficient of theta log(1/theta): slope of (1 - g)/theta against log(1/theta)
    slope = np.diff(one_minus / th) / math.log(10)
    np.testing.assert_allclose(slope[1:], 2 * phi / 3, rtol=1e-4)


@pytest.mark.parametrize("law", [ct.Gaussian(1.0), ct.StudentT(3.0), _DISCRETE])
def test_sign_sgd_limit(law):
    """gamma = eta / tau, tau -> 0: gamma mu lambda -> eta phi sqrt(lambda), gamma^2 nu -> eta^2;
    the relative gap of the noise term shrinks like tau log(1/tau)."""
    R, eta = 0.2, 0.7
    lam = np.array([0.01, 0.1, 1.0])
    phi = sign_descent_factor(law, R)
    gaps_drift, gaps_noise = [], []
    taus = np.array([1e-1, 1e-2, 1e-3, 1e-4])
    for tau in taus:
        gamma = eta / tau
        mu, nu = value_clip_factors(law, R, tau, lam)
        gaps_drift.append(np.max(np.abs(gamma * mu * lam / (eta * phi * np.sqrt(lam)) - 1)))
        gaps_noise.append(np.max(np.abs(gamma**2 * nu / eta**2 - 1)))
    gaps_drift, gaps_noise = np.array(gaps_drift), np.array(gaps_noise)
    assert np.all(np.diff(gaps_drift) < 0) and gaps_drift[-1] < 1e-5
    assert np.all(np.diff(gaps_noise) < 0) and gaps_noise[-1] < 1e-2
    # not O(tau): the gap over tau grows, the gap over tau log(1/tau) stays bounded
    over_tau = gaps_noise / taus
    assert over_tau[-1] > 1.5 * over_tau[1]
    over_tlog = gaps_noise / (taus * np.log(1 / taus))
    assert np.max(over_tlog[1:]) / np.min(over_tlog[1:]) < 1.6


# ---------------------------------------------------------------------------------------------
# interpolation in log theta, phi(R)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "law",
    [ct.Gaussian(1.0), ct.StudentT(3.0), ct.StudentT(1.0, 0.5), ct.Laplace(1.0), _DISCRETE],
)
def test_interpolation_matches_direct(law):
    lam = np.arange(1, 2001, dtype=float) ** -0.5
    for R, tau in ((1e-6, 0.01), (0.3, 0.4), (100.0, 3.0)):
        mu_i, nu_i = value_clip_factors(law, R, tau, lam)  # > 41 distinct theta: interpolated
        mu_d, nu_d = value_clip_factors(law, R, tau, lam, interpolate=False)
        assert np.max(np.abs(mu_i / mu_d - 1)) < 1e-10
        assert np.max(np.abs(nu_i / nu_d - 1)) < 1e-10


def test_interpolation_wide_spectrum_and_repeats():
    lam = np.concatenate([np.arange(1, 4001, dtype=float) ** -2.0, [0.0, 1.0, 1.0]])
    law = ct.StudentT(3.0)
    mu_i, nu_i = value_clip_factors(law, 0.05, 0.3, lam)
    mu_d, nu_d = value_clip_factors(law, 0.05, 0.3, lam, interpolate=False)
    np.testing.assert_allclose(mu_i, mu_d, rtol=1e-10)
    np.testing.assert_allclose(nu_i, nu_d, rtol=1e-10, atol=0)
    assert mu_i[-3] == 1.0 and nu_i[-3] == 0.0
    assert mu_i[-1] == mu_i[-2] == mu_i[0]


def test_phi_gaussian_closed_form():
    for sigma in (0.0, 0.5, 2.0):
        for R in (1e-8, 0.05, 1.0, 1e3):
            expect = 2 / (math.pi * math.sqrt(2 * R + sigma**2))
            assert sign_descent_factor(ct.Gaussian(sigma), R) == pytest.approx(expect, rel=1e-14)
    assert sign_descent_factor(ct.Gaussian(0.0), 0.0) == math.inf


@pytest.mark.parametrize(
    "law", [ct.StudentT(1.0, 0.5), ct.StudentT(3.0), ct.Laplace(1.0), ct.Exponential(1.0)]
)
def test_phi_continuous(law):
    pdf, bps, sc = _scalar_pdf(law)
    for R in (1e-8, 1e-4, 0.05, 1.0, 1e3):
        s = math.sqrt(2 * R)
        f = lambda e: pdf(e) * math.exp(-0.5 * (e / s) ** 2) / (s * _SQRT2PI)
        pts = sorted(set(bps) | {0.0} | {g * k * s for g in (-1, 1) for k in (1, 4, 8, 16, 38)})
        A = 50 * s + 10 * sc
        kw = dict(points=[p for p in pts if -A < p < A], epsabs=0.0, epsrel=1e-12, limit=200)
        p0 = integrate.quad(f, -A, A, **kw)[0]
        phi = sign_descent_factor(law, R)
        assert math.isfinite(phi)
        assert phi == pytest.approx(2 * math.sqrt(2 / math.pi) * p0, rel=1e-9)
    # R = 0: the density of eps at 0 (Cauchy: 1 / (pi scale))
    if isinstance(law, ct.StudentT) and law.df == 1.0:
        expect = 2 * math.sqrt(2 / math.pi) / (math.pi * law.scale)
        assert sign_descent_factor(law, 0.0) == pytest.approx(expect, rel=1e-14)


def test_phi_discrete():
    s = math.sqrt(2 * 0.3)
    v, p = np.array(_DISCRETE.values), np.array(_DISCRETE.probs)
    p0 = p @ (np.exp(-0.5 * (v / s) ** 2) / (s * _SQRT2PI))
    assert sign_descent_factor(_DISCRETE, 0.3) == pytest.approx(
        2 * math.sqrt(2 / math.pi) * p0, rel=1e-14
    )
    assert sign_descent_factor(_DISCRETE, 0.0) == math.inf  # atom at 0
    assert sign_descent_factor(ct.ThreePoint(1.0, 1.0), 0.0) == 0.0
