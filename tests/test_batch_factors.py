"""Mini-batch factors (SPEC 8A.1 kap, 8B mu_B / nu_B) against independent computations."""

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

import clipped_trip as ct
from clipped_trip import _batch_factors as bf
from clipped_trip._batch_factors import mean_clip_ccc, mean_clip_factors, stein_curvature
from clipped_trip._factors import reduction_factors

TP = ct.ThreePoint(3.0, 0.2)


def _rel(x, y, floor=1e-300):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return np.abs(x - y) / np.maximum(np.abs(y), floor)


# ---------------------------------------------------------------------------------------------
# Gaussian noise: closed forms against scipy quad over the chi^2_B density
# ---------------------------------------------------------------------------------------------
def _quad_gauss(B, S2, c, shift):
    """mu_B, nu_B by scipy.integrate.quad over W = S2 chi^2_B (independent of the module)."""
    a = c * c * B * B
    b = a - shift
    dens = stats.chi2(B, scale=S2).pdf
    mean = B * S2
    pts = [p for p in (b, mean) if p > 0]

    def piece(f, lo, hi):
        edges = sorted({lo, hi, *[p for p in pts if lo < p < hi]})
        return sum(
            integrate.quad(f, u, v, limit=400, epsabs=0, epsrel=1e-13)[0]
            for u, v in zip(edges[:-1], edges[1:])
        )

    top = mean + 80 * math.sqrt(2 * B) * S2 + 200 * S2
    p_below = stats.chi2(B, scale=S2).cdf(max(b, 0.0))
    g = lambda x: dens(x) / math.sqrt(x + shift)  # noqa: E731
    j = piece(g, max(b, 0.0), top) if B > 1 else 0.0
    mu = p_below + (1 - 1 / B) * math.sqrt(a) * j
    nu_b = piece(lambda x: x * dens(x), 0.0, b) if b > 0 else 0.0
    nu_a = piece(lambda x: x * a / (x + shift) * dens(x), max(b, 0.0), top)
    return mu, (nu_b + nu_a) / B**2


@pytest.mark.parametrize(
    "B,R,c,shift_rel",
    [
        (2, 0.05, 0.3, 0.0),
        (5, 1.0, 0.2, 0.0),
        (16, 0.01, 0.1, 0.0),
        (64, 2.0, 0.3, 0.0),
        (4, 0.3, 0.4, 0.5),
        (16, 0.1, 0.3, 2.0),
        (64, 0.5, 0.15, 0.2),
        (1, 0.2, 0.5, 0.3),
    ],
)
def test_gaussian_against_quad(B, R, c, shift_rel):
    sigma = 0.8
    S2 = 2 * R + sigma**2
    shift = shift_rel * B * S2
    mu, nu = mean_clip_factors(ct.Gaussian(sigma), R, c, B, shift)
    mq, nq = _quad_gauss(B, S2, c, shift)
    assert _rel(mu, mq) < 1e-9 and _rel(nu, nq) < 1e-9, (mu, mq, nu, nq)


def test_gaussian_b1_is_reduction_factors_and_erf_forms():
    R = np.array([1e-4, 0.02, 1.0, 50.0])
    c = np.array([0.01, 0.3, 2.0, 90.0])
    g = ct.Gaussian(1.3)
    mu1, nu1 = mean_clip_factors(g, R, c, 1, method="quadrature")
    mu, nu = reduction_factors(g, R, c)
    assert np.all(_rel(mu1, mu) < 1e-12) and np.all(_rel(nu1, nu) < 1e-12)
    # closed forms through gammainc at B = 1 (not the reduction_factors short cut)
    m2, n2 = bf._gauss_closed(2 * R + 1.3**2, c * c, 1)
    assert np.all(_rel(m2, mu) < 1e-12) and np.all(_rel(n2, nu) < 1e-12)


def test_gaussian_closed_form_vs_density_quadrature_grid():
    """The chi^2 density quadrature used for shifts, at shift 0, against the closed forms."""
    g = ct.Gaussian(1.0)
    R = np.array([1e-4, 0.1, 10.0, 100.0])[:, None]
    c = np.array([0.01, 0.3, 3.0, 100.0])[None, :]
    for B in (1, 2, 7, 64, 512):
        m0, n0 = mean_clip_factors(g, R, c, B)
        m1, n1 = mean_clip_factors(g, R, c, B, method="quadrature")
        assert np.max(_rel(m1, m0)) < 1e-9 and np.max(_rel(n1, n0)) < 1e-9, B


# ---------------------------------------------------------------------------------------------
# Laplace-inversion route (used for continuous laws) against the Gaussian closed forms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B", [1, 2, 4, 8, 16, 64, 256, 512])
def test_laplace_route_on_gaussian(B):
    g = ct.Gaussian(1.0)
    R = np.array([1e-4, 0.1, 10.0, 100.0])[:, None, None]
    c = np.array([0.01, 0.3, 3.0, 100.0])[None, :, None]
    rel_shift = np.array([0.0, 0.1, 1.0, 10.0])[None, None, :]
    if B < 8:  # the small-B Talbot path is slower: fewer points
        R, c, rel_shift = R[1:3], c[:, 1:3], rel_shift[..., ::2]
    shift = rel_shift * B * (2 * R + 1.0)
    m0, n0 = mean_clip_factors(g, R, c, B, shift)
    m1, n1 = mean_clip_factors(g, R, c, B, shift, method="laplace")
    err_mu = np.abs(m1 - m0) / np.maximum(m0, 1e-300)
    err_mu = np.where(m0 == 0, np.abs(m1), err_mu)
    assert np.max(err_mu) < 1e-7
    assert np.max(_rel(n1, n0)) < 1e-7


def test_laplace_route_centred_mixture_is_gaussian():
    """A one-component centred mixture is a scale mixture with one node: same numbers."""
    mix = ct.GaussianMixture((0.3, 0.7), (0.0, 0.0), (1.2, 1.2))
    g = ct.Gaussian(1.2)
    R = np.array([0.01, 0.5, 5.0])
    for B in (3, 32):
        m0, n0 = mean_clip_factors(g, R, 0.2, B, 0.3 * B)
        m1, n1 = mean_clip_factors(mix, R, 0.2, B, 0.3 * B)
        assert np.max(_rel(m1, m0)) < 1e-7 and np.max(_rel(n1, n0)) < 1e-7


# ---------------------------------------------------------------------------------------------
# batch 1 against the section-3 factors (continuous laws via the Laplace route, finite laws via
# the exact conditional sums)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("law", [ct.StudentT(2.5), ct.StudentT(1.0), ct.Laplace(0.7)])
def test_b1_laplace_route_matches_reduction_factors(law):
    R = np.array([1e-4, 0.03, 1.0, 30.0])
    c = np.array([0.05, 0.5, 2.0, 20.0])
    mu1, nu1 = mean_clip_factors(law, R, c, 1, method="laplace")
    mu, nu = reduction_factors(law, R, c)
    assert np.max(_rel(mu1, mu)) < 1e-7 and np.max(_rel(nu1, nu)) < 1e-8


@pytest.mark.parametrize("law", [TP, ct.Discrete((-1.0, 0.5, 2.0), (0.3, 0.5, 0.2))])
def test_b1_finite_route_matches_reduction_factors(law):
    R = np.array([1e-4, 0.1, 10.0])
    c = np.array([0.05, 1.0, 5.0])
    mu1, nu1 = bf._finite_factors(law, 2 * R, c * c, np.zeros(3), 1)
    mu, nu = reduction_factors(law, R, c)
    assert np.max(np.abs(mu1 - mu) / np.maximum(mu, 1e-200)) < 1e-10
    assert np.max(_rel(nu1, nu)) < 1e-10


def test_b1_shift0_auto_is_exactly_reduction_factors():
    for law in (ct.StudentT(3.0), TP, ct.Gaussian(0.5), ct.Laplace(1.0)):
        mu1, nu1 = mean_clip_factors(law, [0.01, 1.0], [0.3, 2.0], 1)
        mu, nu = reduction_factors(law, [0.01, 1.0], [0.3, 2.0])
        assert np.max(_rel(mu1, mu)) < 1e-12 and np.max(_rel(nu1, nu)) < 1e-12


# ---------------------------------------------------------------------------------------------
# self-convergence of the continuous-law route
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("law", [ct.StudentT(2.5), ct.StudentT(1.0), ct.Laplace(1.0)])
def test_continuous_self_convergence(monkeypatch, law):
    R = np.array([1e-3, 0.1, 3.0])[:, None]
    c = np.array([0.1, 0.6])[None, :]
    for B in (4, 64):
        shift = 0.5 * B * (2 * R + 1.0)
        m0, n0 = mean_clip_factors(law, R, c, B, shift)
        monkeypatch.setattr(bf, "_TAU_H", 0.5 * bf._TAU_H)
        monkeypatch.setattr(bf, "_TALBOT_M", 30)
        monkeypatch.setattr(bf, "_XGRID_PANEL", 1.0)
        m1, n1 = mean_clip_factors(law, R, c, B, shift)
        monkeypatch.undo()
        assert np.max(_rel(m1, m0)) < 5e-8 and np.max(_rel(n1, n0)) < 5e-8, B


def test_vertical_line_and_talbot_agree_student_t(monkeypatch):
    """The two inversion contours (independent kernels) give the same factors at B = 8."""
    law = ct.StudentT(3.0)
    R = np.array([1e-3, 0.2, 5.0])[:, None]
    c = np.array([0.08, 0.4])[None, :]
    m0, n0 = mean_clip_factors(law, R, c, 8, 2.0)
    monkeypatch.setattr(bf, "_VERTICAL_MIN_BATCH", 9)
    m1, n1 = mean_clip_factors(law, R, c, 8, 2.0)
    assert np.max(_rel(m1, m0)) < 1e-8 and np.max(_rel(n1, n0)) < 1e-8


# ---------------------------------------------------------------------------------------------
# brute-force Monte Carlo of W
# ---------------------------------------------------------------------------------------------
def _mc(draw_eps, B, R, c, shift, n, seed):
    rng = np.random.default_rng(seed)
    a = c * c * B * B
    gm, gn = [], []
    for _ in range(n // 200_000):
        m = 200_000
        w = rng.normal(0.0, math.sqrt(2 * R), (m, B)) - draw_eps(rng, (m, B))
        W = np.einsum("ij,ij->i", w, w)
        X = W + shift
        gm.append(np.where(X <= a, 1.0, (1 - 1 / B) * np.sqrt(a / X)))
        gn.append(W * np.minimum(1.0, a / X) / B**2)
    gm, gn = np.concatenate(gm), np.concatenate(gn)
    return (gm.mean(), gm.std() / math.sqrt(gm.size)), (gn.mean(), gn.std() / math.sqrt(gn.size))


@pytest.mark.parametrize(
    "B,R,c,shift,n",
    [(4, 0.1, 0.3, 0.0, 2_000_000), (16, 0.05, 0.2, 3.0, 1_000_000), (64, 0.2, 0.15, 0.0, 400_000)],
)
def test_student_t_monte_carlo(B, R, c, shift, n):
    law = ct.StudentT(2.5)
    (mm, sm), (mn, sn) = _mc(lambda g, s: g.standard_t(2.5, s), B, R, c, shift, n, seed=B)
    mu, nu = mean_clip_factors(law, R, c, B, shift)
    assert abs(mu - mm) < 5 * sm, (mu, mm, sm)
    assert abs(nu - mn) < 5 * sn, (nu, mn, sn)


def test_three_point_monte_carlo():
    B, R, c = 16, 0.1, 0.1

    def draw(g, s):
        u = g.random(s)
        return np.where(u < 0.1, -3.0, np.where(u < 0.2, 3.0, 0.0))

    for shift in (0.0, 4.0):
        (mm, sm), (mn, sn) = _mc(draw, B, R, c, shift, 2_000_000, seed=7)
        mu, nu = mean_clip_factors(TP, R, c, B, shift)
        assert abs(mu - mm) < 5 * sm, (shift, mu, mm, sm)
        assert abs(nu - mn) < 5 * sn, (shift, nu, mn, sn)


def test_finite_law_with_three_squares_monte_carlo():
    law = ct.Discrete((-2.0, 0.0, 1.0, 2.0), (0.1, 0.5, 0.3, 0.1))
    B, R, c = 8, 0.05, 0.3

    def draw(g, s):
        return np.asarray(law.values)[g.choice(4, size=s, p=law.probs)]

    (mm, sm), (mn, sn) = _mc(draw, B, R, c, 0.5, 1_000_000, seed=3)
    mu, nu = mean_clip_factors(law, R, c, B, 0.5)
    assert abs(mu - mm) < 5 * sm and abs(nu - mn) < 5 * sn


# ---------------------------------------------------------------------------------------------
# SPEC numbers, limits, CCC
# ---------------------------------------------------------------------------------------------
def test_spec_8b4_three_point_mu_b():
    want = {1: 0.14, 4: 0.22, 16: 0.30, 64: 0.570, 256: 0.9998}
    for B, w in want.items():
        mu, _ = mean_clip_factors(TP, 0.1, 0.1, B)
        digits = 2 if B < 64 else (3 if B == 64 else 4)
        assert round(float(mu), digits) == w, (B, float(mu))


def _max_over_c(f):
    cs = np.logspace(-2.5, 1.0, 22)
    v = f(cs)
    i = int(np.argmax(v))
    lo, hi = math.log(cs[max(i - 1, 0)]), math.log(cs[min(i + 1, cs.size - 1)])
    for _ in range(14):  # golden section on log c
        m1, m2 = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        f1, f2 = f(np.exp([m1, m2]))
        lo, hi = (lo, m2) if f1 > f2 else (m1, hi)
    return float(f(np.exp([0.5 * (lo + hi)]))[0])


def test_spec_8b4_three_point_max_ccc_tends_to_one():
    want = {1: 4.89, 2: 3.81, 4: 2.54, 8: 1.56, 16: 1.14, 64: 1.014, 256: 1.003}
    got = {B: _max_over_c(lambda cs: mean_clip_ccc(TP, 0.1, cs, B)) for B in want}
    for B, w in want.items():
        assert abs(got[B] - w) < 0.006 * w, (B, got[B], w)
    assert all(got[b1] > got[b2] for b1, b2 in zip(list(want)[:-1], list(want)[1:]))


def test_spec_8b4_student_t_max_ccc():
    law = ct.StudentT(2.5)
    want = {4: 2.29, 16: 1.84}
    for B, w in want.items():
        got = _max_over_c(lambda cs: mean_clip_ccc(law, 0.1, cs, B))
        assert abs(got - w) < 0.006 * w, (B, got, w)


def test_large_batch_limit():
    """mu_B -> min(1, c sqrt(B)/S), nu_B -> phibar^2 S^2 / B away from the kink."""
    g = ct.Gaussian(1.0)
    R = 0.3
    S = math.sqrt(2 * R + 1.0)
    for ratio in (0.5, 2.0):
        errs = []
        for B in (32, 128, 512):
            c = ratio * S / math.sqrt(B)
            mu, nu = mean_clip_factors(g, R, c, B)
            phibar = min(1.0, ratio)
            errs.append(max(abs(mu / phibar - 1), abs(nu / (phibar**2 * S * S / B) - 1)))
        assert errs[0] >= errs[1] >= errs[2] and errs[2] < 2e-3, (ratio, errs)
    law = ct.StudentT(4.0)
    S = math.sqrt(2 * R + law.variance)
    mu, nu = mean_clip_factors(law, R, 0.5 * S / math.sqrt(512), 512)
    assert abs(mu - 0.5) < 0.01 and abs(nu / (0.25 * S * S / 512) - 1) < 0.02


def test_unclipped_and_ccc_infinite_variance():
    law = ct.StudentT(3.0)
    mu, nu = mean_clip_factors(law, [0.1, 1.0], None, 8)
    assert np.all(mu == 1.0) and np.allclose(nu, (2 * np.array([0.1, 1.0]) + 3.0) / 8)
    mu, nu = mean_clip_factors(law, 0.1, np.inf, 8, 5.0)
    assert mu == 1.0 and nu == pytest.approx((0.2 + 3.0) / 8, rel=1e-15)
    assert np.isinf(mean_clip_ccc(ct.StudentT(2.0), 0.1, 0.5, 4))
    # Gaussian CCC is at most 1 at every batch
    v = mean_clip_ccc(ct.Gaussian(1.0), 0.1, np.logspace(-2, 1, 9), 8)
    assert np.all(v <= 1 + 1e-12)


def test_broadcasting_shapes():
    R = np.array([0.01, 0.1, 1.0])[:, None]
    c = np.array([0.1, 0.5])[None, :]
    mu, nu = mean_clip_factors(ct.StudentT(3.0), R, c, 16, 0.0)
    assert mu.shape == nu.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            m, n = mean_clip_factors(ct.StudentT(3.0), R[i, 0], c[0, j], 16)
            assert m == pytest.approx(mu[i, j], rel=1e-12)
            assert n == pytest.approx(nu[i, j], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Stein curvature kap
# ---------------------------------------------------------------------------------------------
def _quad_fw_pair(law, R, c):
    s = math.sqrt(2 * R)

    def f(x):  # density of w = z - eps at x: int phi_s(x + e) p(e) de
        g = lambda e: (
            math.exp(-0.5 * ((x + e) / s) ** 2)
            / (s * math.sqrt(2 * math.pi))
            * float(  # noqa: E731
                law._pdf(np.array(e))
            )
        )
        pts = sorted({-x, -x - 8 * s, -x + 8 * s, 0.0, *law._breakpoints})
        edges = [-np.inf, *pts, np.inf]
        return sum(
            integrate.quad(g, u, v, limit=400, epsabs=0, epsrel=1e-12)[0]
            for u, v in zip(edges[:-1], edges[1:])
        )

    return f(c) + f(-c)


@pytest.mark.parametrize(
    "law",
    [ct.StudentT(2.5), ct.StudentT(1.0), ct.Laplace(0.8), ct.Uniform(1.5), ct.Exponential(1.0)],
)
def test_kap_against_quad(law):
    for R, c in [(1e-4, 0.3), (0.05, 1.0), (2.0, 0.2), (30.0, 5.0)]:
        mu, _ = reduction_factors(law, R, c)
        want = 2 * float(mu) - 2 * c * _quad_fw_pair(law, R, c)
        got = stein_curvature(law, R, c)
        assert abs(got - want) < 1e-9 * max(1.0, abs(want)), (R, c, got, want)


def test_kap_gaussian_closed_form_and_finite_difference():
    sig = 0.7
    R, c = 0.2, 0.6
    S = math.sqrt(2 * R + sig**2)
    mu = special.erf(c / S / math.sqrt(2))
    want = 2 * mu - 2 * c * 2 * math.exp(-0.5 * (c / S) ** 2) / (S * math.sqrt(2 * math.pi))
    assert stein_curvature(ct.Gaussian(sig), R, c) == pytest.approx(want, rel=1e-13)
    # definition: kap = d^2/dm^2 E[min((w + m)^2, c^2)] at m = 0 (w shifted by m)
    h = 1e-3

    def nu_at(m):
        law = ct.GaussianMixture((1.0,), (-m,), (sig,))  # w = z - eps has mean +m
        return float(reduction_factors(law, R, c)[1])

    fd = (nu_at(h) - 2 * nu_at(0.0) + nu_at(-h)) / h**2
    assert stein_curvature(ct.Gaussian(sig), R, c) == pytest.approx(fd, rel=1e-5)
    # a non-centred mixture and a finite law, by the same finite difference
    law = ct.ThreePoint(2.0, 0.3)

    def nu_tp(m):
        shifted = ct.Discrete((-2.0 - m, -m, 2.0 - m), (0.15, 0.7, 0.15))
        return float(reduction_factors(shifted, R, c)[1])

    fd = (nu_tp(h) - 2 * nu_tp(0.0) + nu_tp(-h)) / h**2
    assert stein_curvature(law, R, c) == pytest.approx(fd, rel=1e-5)


def test_kap_student_t_finite_difference_of_nu():
    """kap = d^2/dm^2 E[min((w+m)^2, c^2)]: nu of a shifted Student-t by quad, differenced."""
    law = ct.StudentT(3.0)
    R, c = 0.1, 0.8
    s = math.sqrt(2 * R)

    from clipped_trip._factors import _gauss_moments

    def nu_shift(m):  # E[min((z - e + m)^2, c^2)] (section-3 inner formula) against p(e), by quad
        f = lambda e: float(_gauss_moments(m - e, s, c)[1]) * float(law._pdf(np.array(e)))  # noqa: E731
        pts = [-np.inf, -c - 5 * s + m, -c + m, m, c + m, c + 5 * s + m, np.inf]
        return sum(
            integrate.quad(f, u, v, limit=400, epsabs=0, epsrel=1e-13)[0]
            for u, v in zip(pts[:-1], pts[1:])
        )

    h = 2e-3
    fd = (nu_shift(h) - 2 * nu_shift(0.0) + nu_shift(-h)) / h**2
    assert stein_curvature(law, R, c) == pytest.approx(fd, rel=1e-4)


def test_kap_limits():
    law = ct.StudentT(3.0)
    assert stein_curvature(law, 0.1, None) == 2.0
    assert np.all(stein_curvature(law, [0.1, 1.0], np.inf) == 2.0)
    # R -> 0: f_w(c) -> p_eps(-c); kap -> 2 P(|eps| <= c) - 2 c (p(c) + p(-c))
    c = 0.7
    want = 2 * (2 * stats.t(3.0).cdf(c) - 1) - 4 * c * stats.t(3.0).pdf(c)
    assert stein_curvature(law, 1e-14, c) == pytest.approx(want, rel=1e-6)
    assert stein_curvature(ct.Laplace(1.0), 0.0, c) == pytest.approx(
        2 * (1 - math.exp(-c)) - 2 * c * math.exp(-c), rel=1e-10
    )
    # large c: kap -> 2
    assert stein_curvature(ct.Gaussian(1.0), 0.1, 60.0) == pytest.approx(2.0, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch=0), "batch must be an integer >= 1"),
        (dict(batch=2.5), "batch must be an integer >= 1"),
        (dict(risk=-1.0), "risk must be >= 0"),
        (dict(clip=0.0), "clip must be > 0"),
        (dict(clip=float("nan")), "clip must be > 0"),
        (dict(shift=-0.1), "shift must be >= 0"),
        (dict(noise="gaussian"), "noise must be a NoiseLaw"),
        (dict(method="talbot"), "method must be"),
    ],
)
def test_validation(kwargs, match):
    args = dict(noise=ct.Gaussian(1.0), risk=0.1, clip=0.5, batch=4, shift=0.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mean_clip_factors(**args)


def test_validation_kap_and_ccc():
    with pytest.raises(ValueError, match="risk must be >= 0"):
        stein_curvature(ct.Gaussian(1.0), -1.0, 0.5)
    with pytest.raises(ValueError, match="clip must be > 0"):
        stein_curvature(ct.Gaussian(1.0), 0.1, -0.5)
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        mean_clip_ccc(ct.Gaussian(1.0), 0.1, 0.5, 0)
