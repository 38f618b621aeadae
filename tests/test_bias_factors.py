"""Bias factors (SPEC section 10) against independent computations, limits and SPEC's numbers."""

import math

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

import clipped_trip as ct
from clipped_trip._bias_factors import bias_factors, clip_bias_fixed_point, perturbed_clamp_mean
from clipped_trip._factors import reduction_factors
from tolerances import FACTORS_REL

KAPPA_ABS = 1e-12
# the references ask quad for 1e-13; it sometimes says round-off stops it short of that
pytestmark = pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")

LAWS = {
    "gaussian": ct.Gaussian(1.0),
    "exponential": ct.Exponential(1.0),
    "laplace": ct.Laplace(0.7),
    "student-t3": ct.StudentT(3.0),
    "three-point": ct.ThreePoint(2.0, 0.2),
    "discrete": ct.Discrete((-1.0, 0.0, 3.0), (0.5, 1 / 3, 1 / 6)),  # centred, skewed
}

# (r, R, c, delta): small R, large R, c << s, delta < c and delta > c
POINTS = [
    (0.0, 0.05, 0.5, 0.0),
    (-0.15, 1e-6, 0.5, 0.3),
    (0.2, 1e3, 0.5, 0.7),
    (0.1, 0.1, 0.01, 0.005),
    (-0.3, 0.3, 0.02, 0.05),
    (0.3, 2.0, 3.0, 1.0),
]


# ---------------------------------------------------------------------------------------------
# Independent references: the integrands written directly, adaptive quadrature in w
# ---------------------------------------------------------------------------------------------
def _integrands(c, d):
    def h(w):
        rho = math.sqrt(w * w + d * d)
        return 1.0 if rho <= c else c / rho

    def dpsi(w):
        rho2 = w * w + d * d
        return 1.0 if rho2 <= c * c else c * d * d / rho2**1.5

    return [dpsi, lambda w: w * h(w), lambda w: w * w * h(w) ** 2, lambda w: h(w) ** 2]


def _exgauss(y, s, sig):
    """Density of s Z + sig E (Z ~ N(0,1), E ~ Exp(1)) at y, in log form (stable)."""
    return math.exp(s * s / (2 * sig * sig) - y / sig + special.log_ndtr(y / s - s / sig)) / sig


def _density_of_w(law, r, s, shift=0.0):
    """Density of w = r + N(0, s^2) - eps, in closed form, and where it has structure (its
    kinks smoothed on the scale s; shift: an atom of a finite law)."""
    around = lambda x: [x + s * j for j in (-10, -3, -1, 0, 1, 3, 10)]  # noqa: E731
    if isinstance(law, ct.Exponential):  # w - r - sig = z - sig E
        sig = law.scale
        return (lambda w: _exgauss(r + sig - w, s, sig)), around(r + sig)
    if isinstance(law, ct.Laplace):  # eps = +-sig E with prob 1/2
        sig = law.scale
        dens = lambda w: 0.5 * _exgauss(w - r, s, sig) + 0.5 * _exgauss(r - w, s, sig)  # noqa: E731
        return dens, around(r)
    S = math.hypot(s, law.std if isinstance(law, ct.Gaussian) else 0.0)
    mean = r - shift
    dens = lambda w: math.exp(-0.5 * ((w - mean) / S) ** 2) / (S * math.sqrt(2 * math.pi))  # noqa: E731
    return dens, [mean + S * j for j in (-10, -3, -1, 0, 1, 3, 10)]


def _quad_w(dens, kinks, c, d, scale):
    b = math.sqrt(max(c * c - d * d, 0.0))
    pts = sorted({-b, b, -c, c, -d, d, 0.0, *kinks})  # jumps at +-b, scales c and d
    B = max(abs(p) for p in pts) + 60 * scale
    out = []
    for g in _integrands(c, d):
        f = lambda w: g(w) * dens(w)  # noqa: E731
        kw = dict(epsabs=0.0, epsrel=1e-13, limit=500)
        val = integrate.quad(f, -B, B, points=pts, **kw)[0]
        val += integrate.quad(f, B, np.inf, **kw)[0] + integrate.quad(f, -np.inf, -B, **kw)[0]
        out.append(val)
    return np.array(out)


def _student_t_reference(law, r, R, c, d):
    """Student-t as a scale mixture: eps = scale Z sqrt(df / V), V = u^2 ~ chi2_df; given u,
    w ~ N(r, 2R + df scale^2 / u^2). Adaptive quad over w inside adaptive quad over u."""
    nu = law.df
    b = math.sqrt(max(c * c - d * d, 0.0))
    lognorm = -(nu / 2) * math.log(2) - math.lgamma(nu / 2)
    kw = dict(epsabs=0.0, epsrel=1e-13, limit=200)
    out = []
    for g in _integrands(c, d):

        def given_u(u, g=g):
            S = math.sqrt(2 * R + nu * law.scale**2 / (u * u))
            f = lambda w: g(w) * math.exp(-0.5 * ((w - r) / S) ** 2)  # noqa: E731
            edges = sorted({-b, b, -c, c, -d, d, r - 12 * S, r + 12 * S})
            val = sum(integrate.quad(f, lo, hi, **kw)[0] for lo, hi in zip(edges, edges[1:]))
            # chi2_df density of v = u^2, times dv = 2 u du
            dens = math.exp(lognorm + (nu / 2 - 1) * math.log(u * u) - u * u / 2)
            return val / (S * math.sqrt(2 * math.pi)) * 2 * u * dens

        kw_u = dict(epsabs=0.0, epsrel=1e-12, limit=200)
        out.append(sum(integrate.quad(given_u, lo, hi, **kw_u)[0] for lo, hi in [(0, 2), (2, 12)]))
    return np.array(out)


def reference(law, r, R, c, d):
    if isinstance(law, ct.StudentT):
        return _student_t_reference(law, r, R, c, d)
    s = math.sqrt(2 * R)
    scale = max(s, 1.0)
    if law.kind == "discrete":
        values, probs = law._atoms()
        return sum(
            p * _quad_w(*_density_of_w(law, r, s, shift=v), c, d, scale)
            for v, p in zip(values, probs)
        )
    return _quad_w(*_density_of_w(law, r, s), c, d, scale)


def _assert_close(got, ref, what):
    mu, kappa, nu1, nu0 = (float(x) for x in got)
    for name, g, e in (("mu", mu, ref[0]), ("nu1", nu1, ref[2]), ("nu0", nu0, ref[3])):
        assert abs(g - e) <= FACTORS_REL * abs(e), (what, name, g, e)
    assert abs(kappa - ref[1]) <= FACTORS_REL * abs(ref[1]) + KAPPA_ABS, (what, kappa, ref[1])


@pytest.mark.parametrize("name", [n for n in LAWS if n != "student-t3"])
@pytest.mark.parametrize("point", POINTS)
def test_against_closed_form_density(name, point):
    law = LAWS[name]
    _assert_close(bias_factors(law, *point), reference(law, *point), (name, point))


@pytest.mark.parametrize("point", POINTS)
def test_student_t_against_scale_mixture(point):
    law = LAWS["student-t3"]
    _assert_close(bias_factors(law, *point), reference(law, *point), ("t3", point))


def test_exponential_closed_form_at_zero_risk():
    """R = 0, eps = sig (E - 1): w = r - eps; closed forms for clamp and P(|w| <= c)."""
    sig, c = 1.0, 0.5
    a = 1 - c / sig
    kappa = sig * math.exp(-1 - c / sig) - sig * (a - 1 + math.exp(-a))
    mu = math.exp(-(1 - c / sig)) - math.exp(-(1 + c / sig))
    got = bias_factors(ct.Exponential(sig), 0.0, 0.0, c)
    assert abs(float(got[0]) - mu) <= 1e-13
    assert abs(float(got[1]) - kappa) <= 1e-13
    assert kappa > 0


def test_arrays_broadcast_and_match_scalar_calls():
    law = LAWS["exponential"]
    r = np.array([-0.2, 0.0, 0.1])[:, None]
    R = np.array([1e-4, 0.05])[None, :]
    got = bias_factors(law, r, R, 0.5, np.array([[0.0, 0.4]]))
    assert all(x.shape == (3, 2) for x in got)
    for i in range(3):
        for j in range(2):
            one = bias_factors(law, r[i, 0], R[0, j], 0.5, [0.0, 0.4][j])
            for x, y in zip(got, one):
                assert abs(x[i, j] - float(y)) <= 1e-12 * max(1e-3, abs(float(y)))


# ---------------------------------------------------------------------------------------------
# Monte Carlo (fixed seed, tolerance from the sample size)
# ---------------------------------------------------------------------------------------------
def _sample_noise(law, rng, n):
    if isinstance(law, ct.Gaussian):
        return law.std * rng.standard_normal(n)
    if isinstance(law, ct.Exponential):
        return law.scale * (rng.exponential(size=n) - 1)
    if isinstance(law, ct.Laplace):
        return rng.laplace(scale=law.scale, size=n)
    if isinstance(law, ct.StudentT):
        return law.scale * rng.standard_t(law.df, size=n)
    values, probs = law._atoms()
    return rng.choice(np.asarray(values), p=np.asarray(probs), size=n)


@pytest.mark.parametrize("name", list(LAWS))
def test_against_monte_carlo(name):
    law = LAWS[name]
    rng = np.random.default_rng(20260)
    n = 1_000_000
    for r, R, c, d in [(-0.2, 0.05, 0.5, 0.0), (0.1, 0.3, 0.5, 0.8)]:
        w = r + math.sqrt(2 * R) * rng.standard_normal(n) - _sample_noise(law, rng, n)
        rho2 = w * w + d * d
        h = np.minimum(1.0, c / np.sqrt(rho2))
        dpsi = np.where(rho2 <= c * c, 1.0, c * d * d / rho2**1.5)
        samples = [dpsi, w * h, w * w * h * h, h * h]
        got = bias_factors(law, r, R, c, d)
        for g, x in zip(got, samples):
            se = x.std() / math.sqrt(n)
            assert abs(float(g) - x.mean()) <= 5 * se + 1e-15, (name, r, R, c, d)


# ---------------------------------------------------------------------------------------------
# Consistency with the centred factors and limits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAWS))
def test_r0_delta0_is_reduction_factors(name):
    law = LAWS[name]
    R = np.array([1e-8, 1e-4, 0.05, 1.0, 1e3])[:, None]
    c = np.array([1e-3, 0.5, 10.0])[None, :]
    mu, kappa, nu1, nu0 = bias_factors(law, 0.0, R, c)
    mu_ref, nu_ref = reduction_factors(law, R, c)
    # two quadratures, each ~1e-12 from an mpmath reference (largest gap measured: 1.3e-12,
    # Laplace c = 1e-3, where mu ~ 1e-3)
    np.testing.assert_allclose(mu, mu_ref, rtol=2e-12, atol=0)
    np.testing.assert_allclose(nu1, nu_ref, rtol=2e-12, atol=0)
    assert np.all(nu0 >= mu - 1e-15) and np.all(nu0 <= 1.0 + 1e-15)


@pytest.mark.parametrize("name", ["gaussian", "laplace", "student-t3", "three-point"])
def test_symmetric_laws_have_no_bias(name):
    R = np.array([1e-6, 0.05, 1.0, 100.0])
    for d in (0.0, 0.3, 2.0):
        kappa = bias_factors(LAWS[name], 0.0, R, 0.5, d)[1]
        assert np.all(np.abs(kappa) <= 1e-15), (name, d, kappa)


def test_skewed_exponential_bias_is_positive():
    """eps = sig (E - 1) has a long right tail, so w = z - eps a long left tail. With
    E w = 0, kappa = E clamp_c(w) = E(-c - w)^+ - E(w - c)^+: clamping removes more from the
    left tail than from the right, so kappa(0, R) > 0 (and r_inf = -A kappa / mu < 0)."""
    R = np.array([1e-6, 1e-3, 0.05, 1.0, 100.0])
    for d in (0.0, 0.3, 2.0):
        kappa = bias_factors(LAWS["exponential"], 0.0, R, 0.5, d)[1]
        assert np.all(kappa > 1e-8), (d, kappa)
    # larger R dilutes the skewness: the bias decreases
    kappa = bias_factors(LAWS["exponential"], 0.0, R, 0.5)[1]
    assert np.all(np.diff(kappa) < 0)


@pytest.mark.parametrize("name", list(LAWS))
def test_unclipped_limit(name):
    law = LAWS[name]
    r, R = 0.3, 0.2
    mean, second = law.mean, law.second_moment
    exact = (1.0, r - mean, 2 * R + r * r - 2 * r * mean + second, 1.0)
    for c in (None, np.inf):
        for d in (0.0, 0.5):
            got = bias_factors(law, r, R, c, d)
            np.testing.assert_allclose([float(x) for x in got], exact, rtol=1e-15)
    if name != "student-t3":  # light tails: a large finite c is the unclipped limit
        got = bias_factors(law, r, R, 1e3)
        np.testing.assert_allclose([float(x) for x in got], exact, rtol=1e-12)


@pytest.mark.parametrize("name", ["exponential", "three-point", "gaussian"])
def test_delta_to_zero_is_continuous(name):
    law = LAWS[name]
    base = np.array([float(x) for x in bias_factors(law, -0.1, 0.05, 0.5, 0.0)])
    diffs = []
    for d in (1e-2, 1e-3):
        diffs.append(
            np.abs(np.array([float(x) for x in bias_factors(law, -0.1, 0.05, 0.5, d)]) - base)
        )
    assert np.all(diffs[1] <= 2e-6)
    np.testing.assert_allclose(diffs[1] / diffs[0], 1e-2, rtol=0.1)  # O(delta^2)


def test_large_delta_bias_asymptotics():
    """psi(w) ~ (c/delta)(w - w^3 / (2 delta^2)), E w = 0, E w^3 = -E eps^3:
    kappa(0, R) ~ (c/delta) E[eps^3] / (2 delta^2). Exponential scale 1: E eps^3 = 2."""
    c, R = 0.5, 0.05
    dev = []
    for d in (20.0, 40.0, 80.0):
        kappa = float(bias_factors(LAWS["exponential"], 0.0, R, c, d)[1])
        ratio = kappa / ((c / d) * 2.0 / (2 * d * d))
        dev.append(ratio - 1)
    assert abs(dev[-1]) < 5e-3
    # next order is O(delta^-2): each doubling cuts the deviation by about 4
    assert 3.5 < dev[0] / dev[1] < 4.5 and 3.5 < dev[1] / dev[2] < 4.5


# ---------------------------------------------------------------------------------------------
# SPEC section 10: the fixed points
# ---------------------------------------------------------------------------------------------
LAM = np.array([1.0, 0.5])
M = np.array([1.0, 1.0]) / math.sqrt(2.0)  # A = m^T K^{-1} m = 1.5; d = 2, D = 1.5


def _block_stationary(law, c, gamma, k):
    """Stationary point of the block ODE (one coordinate per block) by fsolve in
    (r_1, r_2, V_1, V_2); gamma = 0 means the limit gamma -> 0 (no noise term)."""
    d, D = LAM.size, LAM.sum()
    delta = k * math.sqrt(d / D)
    Mj = M * M

    def eqs(p):
        rj, Vj = p[:2], p[2:]
        r, R = rj.sum(), max(float(LAM @ Vj), 1e-14)
        mu, kappa, nu1, nu0 = (float(x) for x in bias_factors(law, r, R, c, delta))
        dr = LAM * mu * rj + Mj * kappa
        dV = 2 * LAM * mu * Vj + rj * kappa - gamma * (LAM * nu1 + k * k * nu0) / (2 * D)
        return np.concatenate([dr, dV])

    p = optimize.fsolve(eqs, [-0.05, -0.05, 0.01, 0.01], xtol=1e-13)
    assert np.max(np.abs(eqs(p))) < 1e-12
    return p[:2].sum(), float(LAM @ p[2:])


def test_spec_small_step_floor():
    """'exponential noise scale 1, c = 0.5, K = {1, 0.5}, ||m|| = 1: as gamma -> 0,
    r_inf -> -0.157, R_inf -> 0.0083 (all of it the mean part), population floor -> 0.0207'.
    Reproduced with m = (1, 1)/sqrt 2 (A = 1.5); m = e_1 (A = 1) gives -0.132, e_2 (A = 2)
    -0.174."""
    law = LAWS["exponential"]
    r, R = _block_stationary(law, 0.5, 0.0, 0.0)
    assert round(r, 3) == -0.157 and round(R, 4) == 0.0083 and round(R + r * r / 2, 4) == 0.0207
    fp = clip_bias_fixed_point(law, LAM, M, 0.5)
    assert abs(fp["r"] - r) < 1e-10 and abs(fp["R"] - R) < 1e-10
    assert abs(fp["mean_part"] - fp["R"]) < 1e-12
    # the fixed point: mu r + A kappa = 0
    assert abs(fp["mu"] * fp["r"] + fp["A"] * fp["kappa"]) < 1e-12
    for m, r_expected in (((1.0, 0.0), -0.132), ((0.0, 1.0), -0.174)):
        assert round(clip_bias_fixed_point(law, LAM, np.array(m), 0.5)["r"], 3) == r_expected


@pytest.mark.parametrize(
    "k, r_spec, R_spec",
    [(0, -0.135, 0.057), (1, -0.073, 0.117), (2, -0.041, 0.179), (4, -0.017, 0.316)],
)
def test_spec_perturbation_example(k, r_spec, R_spec):
    """'exponential scale 1, c = 0.5, gamma = 0.5: r_inf = -0.135, -0.073, -0.041, -0.017 for
    k = 0, 1, 2, 4; R_inf = 0.057, 0.117, 0.179, 0.316' with K = {1, 0.5}, m = (1, 1)/sqrt 2,
    delta^2 = k^2 d / D, d = 2, D = 1.5 (delta = 1.155 k)."""
    law = LAWS["exponential"]
    r, R = _block_stationary(law, 0.5, 0.5, float(k))
    assert round(r, 3) == r_spec and round(R, 3) == R_spec
    fp = clip_bias_fixed_point(law, LAM, M, 0.5, lr=0.5, perturbation=k)
    assert abs(fp["r"] - r) < 1e-9 and abs(fp["R"] - R) < 1e-9


def test_ode_walks_from_optimum_to_biased_point():
    """Integrating the block ODE from e = 0 reaches the fixed point (gamma = 0.5, k = 0)."""
    law = LAWS["exponential"]
    D = LAM.sum()

    def rhs(t, p):
        rj, Vj = p[:2], p[2:]
        mu, kappa, nu1, _ = (float(x) for x in bias_factors(law, rj.sum(), LAM @ Vj, 0.5))
        dr = -0.5 * (LAM * mu * rj + M * M * kappa)
        dV = -0.5 * (2 * LAM * mu * Vj + rj * kappa) + 0.25 * LAM * nu1 / (2 * D)
        return np.concatenate([dr, dV])

    sol = integrate.solve_ivp(rhs, (0, 200), np.zeros(4), rtol=1e-9, atol=1e-12)
    r, R = sol.y[:2, -1].sum(), LAM @ sol.y[2:, -1]
    r_fp, R_fp = _block_stationary(law, 0.5, 0.5, 0.0)
    assert abs(r - r_fp) < 1e-6 and abs(R - R_fp) < 1e-6


# ---------------------------------------------------------------------------------------------
# Chen-Wu-Hong Example 2: the perturbation operator in one dimension
# ---------------------------------------------------------------------------------------------
def _G(x, k):
    return 0.5 * sum(perturbed_clamp_mean(x - a, 1.0, k) for a in (-3.0, 3.0))


def test_perturbed_clamp_mean_closed_form():
    x = np.array([-3.0, -0.7, 0.0, 0.2, 1.5, 4.0])
    for k in (0.0, 0.3, 2.0):
        got = perturbed_clamp_mean(x, 1.0, k)
        for xi, gi in zip(x, got):
            if k == 0:
                ref = min(max(xi, -1.0), 1.0)
            else:
                f = lambda z: np.clip(xi + k * z, -1, 1) * stats.norm.pdf(z)  # noqa: E731
                ref = integrate.quad(f, -40, 40, points=[(-1 - xi) / k, (1 - xi) / k])[0]
            assert abs(gi - ref) < 1e-12
    # it is kappa for Gaussian noise of std k at R = 0
    np.testing.assert_allclose(
        perturbed_clamp_mean(x, 0.5, 0.8),
        bias_factors(ct.Gaussian(0.8), x, 0.0, 0.5)[1],
        rtol=1e-14,
        atol=1e-16,
    )


def test_chen_wu_hong_example_2():
    x = np.linspace(-2, 2, 41)
    assert np.all(_G(x, 0.0) == 0)  # every point of [-2, 2] is stationary without perturbation
    for k, slope_spec in ((0.5, 3.2e-5), (1.0, 0.023), (3.0, 0.161)):
        slope = special.ndtr(-2 / k) - special.ndtr(-4 / k)
        digits = 3 if k == 3.0 else 2
        assert float(f"{slope:.{digits}g}") == slope_spec
        h = 1e-4
        fd = (_G(h, k) - _G(-h, k)) / (2 * h)
        assert abs(fd - slope) < 1e-7 * max(slope, 1e-3)
        assert abs(_G(0.0, k)) < 1e-15  # the unique zero
        g = _G(np.linspace(-6, 6, 241), k)
        assert np.all(np.diff(g) > 0)  # strictly increasing
