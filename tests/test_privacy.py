"""Privacy accounting (SPEC section 9.3): the one-pass stream as one Gaussian mechanism, checked
against the Balle-Wang curve solved independently with mpmath; Poisson subsampling through
dp-accounting, checked against the reference values of Opacus' and TF Privacy's test suites."""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from importlib.metadata import version

import mpmath as mp
import numpy as np
import pytest

from clipped_trip._privacy import (
    _RDP_ORDERS,
    _sampled_gaussian_rdp,
    analytic_gaussian_delta,
    noise_multiplier_for,
    privacy_epsilon,
    privacy_report,
)

DP_ACCOUNTING_FULL = tuple(
    int(re.match(r"\d*", p)[0] or 0) for p in version("dp-accounting").split(".")[:3]
)
DP_ACCOUNTING = DP_ACCOUNTING_FULL[:2]
EXTRA_MESSAGE = "privacy accounting needs the dp extra: pip install 'clipped_trip[dp]'"
SIGMAS = (0.5, 1.0, 2.0, 5.0)
DELTAS = (1e-5, 1e-3)


def _bw_delta(eps, sigma):
    """Balle & Wang 2018, Thm 8, in mpmath (sensitivity 1, noise std sigma)."""
    return mp.ncdf(1 / (2 * sigma) - eps * sigma) - mp.exp(eps) * mp.ncdf(
        -1 / (2 * sigma) - eps * sigma
    )


@functools.lru_cache(maxsize=None)
def bw_epsilon(sigma: float, delta: float) -> float:
    """eps with delta(eps) = delta, solved at 40 digits: bracket on the integers, then Illinois."""
    with mp.workdps(40):
        s, d = mp.mpf(sigma), mp.mpf(delta)
        g = lambda e: _bw_delta(e, s) - d
        k = 0
        while g(k + 1) > 0:
            k += 1
        root = mp.findroot(g, (mp.mpf(k), mp.mpf(k + 1)), solver="illinois")
        assert abs(g(root)) < mp.mpf(10) ** -30
        return float(root)


# --- the one-pass stream: one Gaussian mechanism -------------------------------------------------


@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_analytic_matches_balle_wang_in_mpmath(sigma, delta):
    ref = bw_epsilon(sigma, delta)
    eps = privacy_epsilon(sigma, delta, accountant="analytic")
    # measured: agreement to 1e-15 relative (double rounding only)
    assert eps == pytest.approx(ref, rel=1e-12)
    assert analytic_gaussian_delta(ref, sigma) == pytest.approx(delta, rel=1e-10)


@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_accountants_on_one_gaussian(sigma, delta):
    ref = bw_epsilon(sigma, delta)
    # dp-accounting 0.6's PLD of one Gaussian: measured within 2.4e-8 relative of the exact curve
    # (worst at sigma = 5); discretisation 1e-4 of the loss, but the one-Gaussian PLD is close
    assert privacy_epsilon(sigma, delta, accountant="pld") == pytest.approx(ref, rel=1e-6)
    # RDP is a looser upper bound: measured 7 % to 14 % above the exact value here
    rdp = privacy_epsilon(sigma, delta, accountant="rdp")
    assert ref < rdp < 1.2 * ref


def test_analytic_delta_extremes_against_mpmath():
    with mp.workdps(40):
        cases = [(0.0, 1.0), (0.0, 1e4), (0.0, 4e14), (50.0, 0.2), (3.0, 0.1), (1e-3, 30.0)]
        # large sigma and small eps: the two Phi terms nearly cancel (delta << Phi)
        cases += [(1e-9, 4.1e9), (3e-5, 1e6), (0.03, 1e3), (15.0, 2.0), (6.0, 5.0)]
        for eps, sigma in cases:
            ref = float(_bw_delta(mp.mpf(eps), mp.mpf(sigma)))
            # measured: within 1e-10 relative down to delta ~ 1e-200
            assert analytic_gaussian_delta(eps, sigma) == pytest.approx(ref, rel=1e-9)
    # eps = 0: delta = 2 Phi(1/(2 sigma)) - 1 = erf(1/(2 sqrt(2) sigma))
    assert analytic_gaussian_delta(0, 2.0) == pytest.approx(math.erf(0.25 / math.sqrt(2)), 1e-14)
    # huge eps: no overflow, delta underflows gracefully
    assert 0.0 <= analytic_gaussian_delta(1e4, 0.5) < 1e-300


def test_one_pass_does_not_depend_on_steps():
    for accountant in ("analytic", "pld", "rdp"):
        one = privacy_epsilon(2.0, 1e-5, accountant=accountant)
        for steps in (7, 1000):
            assert privacy_epsilon(2.0, 1e-5, steps=steps, accountant=accountant) == one


def test_large_noise_gives_zero_epsilon():
    # delta(0) = erf(1/(2 sqrt 2 sigma)) <= delta: (0, delta)-DP
    assert privacy_epsilon(1e5, 1e-5, accountant="analytic") == 0.0


# --- Poisson subsampling: reference values of the accountants' own test suites ------------------


def test_rdp_opacus_reference():
    # Opacus' test value: q = 0.04, sigma = 1.5, 90 epochs = 2250 steps, delta = 1e-5, optimal
    # order 3.9 (measured: 5.4e-11 off; dp-accounting >= 0.4.4's RdpAccountant gives 7.329334702)
    eps = privacy_epsilon(1.5, 1e-5, steps=2250, sampling_rate=0.04, accountant="rdp")
    assert eps == pytest.approx(7.32911117143, abs=1e-6)


def test_rdp_tf_privacy_reference():
    # TF Privacy: n = 60000, batch 150, sigma = 1.3, 15 epochs, delta = 1e-5, optimal order 19
    # (measured: 1.1e-11 off)
    q, steps = 150 / 60000, 15 * 60000 // 150
    eps = privacy_epsilon(1.3, 1e-5, steps=steps, sampling_rate=q, accountant="rdp")
    assert eps == pytest.approx(0.7242234026, abs=1e-6)


def test_noise_multiplier_rdp_inverts_opacus_reference():
    sigma = noise_multiplier_for(
        7.32911117143, 1e-5, steps=2250, sampling_rate=0.04, accountant="rdp"
    )
    assert sigma == pytest.approx(1.5, rel=1e-6)


def _log_a_quad(q, sigma, alpha):
    """log A_alpha = log E_{z~N(0,s^2)}[(1-q + q e^{(2z-1)/(2s^2)})^a] by 30-digit quadrature,
    split where the integrand's two bumps (z = 0, z = alpha) and its kink z0 lie."""
    with mp.workdps(30):
        q, s, a = mp.mpf(q), mp.mpf(sigma), mp.mpf(alpha)
        f = lambda z: mp.npdf(z, 0, s) * ((1 - q) + q * mp.exp((2 * z - 1) / (2 * s**2))) ** a
        z0 = s**2 * mp.log(1 / q - 1) + mp.mpf(1) / 2
        pts = sorted({mp.mpf(0), z0, a})
        return float(mp.log(mp.quad(f, [-mp.inf, pts[0] - 40 * s, *pts, pts[-1] + 40 * s, mp.inf])))


def test_opacus_reference_is_exact_rdp_at_order_3_9():
    """Integrating A_alpha at the optimal order 3.9 reproduces Opacus' 7.32911117143 with the
    conversion eps = T rdp - (log delta + log a)/(a - 1) + log((a - 1)/a) (Balle et al. 2020,
    Thm 21), and so does our per-order RDP."""
    q, s, steps, a, delta = 0.04, 1.5, 2250, 3.9, 1e-5
    convert = lambda rdp: rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
    exact = steps * _log_a_quad(q, s, a) / (a - 1)
    assert convert(exact) == pytest.approx(7.32911117143, abs=1e-9)
    ours = steps * float(_sampled_gaussian_rdp(q, s, [a])[0])
    assert ours == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize(
    "q, sigma, alpha",
    [
        (0.04, 1.5, 3.9),
        (0.5, 0.5, 1.1),  # slow alternating tail: 8192 terms; dp-accounting 0.6 gives up at 1000
        (0.2, 2.0, 1.1),  # 4096 terms
        (0.9, 0.7, 2.3),  # q > 1/2: z0 < 0
        (1e-6, 0.3, 7.7),
        (0.1, 0.1, 2.5),
        (0.3, 5.0, 10.5),
    ],
)
def test_fractional_order_rdp_against_quadrature(q, sigma, alpha):
    # the signed series of Mironov, Talwar & Zhang 2019, Sec. 3.3, cut with the alternating-series
    # remainder bound: measured within 7e-12 relative of the quadrature (the cut-off, 1e-14 of A)
    ours = float(_sampled_gaussian_rdp(q, sigma, [alpha])[0]) * (alpha - 1)
    assert ours == pytest.approx(_log_a_quad(q, sigma, alpha), rel=1e-10)


@pytest.mark.parametrize("q, sigma", [(0.04, 1.5), (0.0025, 1.3), (0.3, 0.8)])
def test_per_order_rdp_against_dp_accounting(q, sigma):
    from dp_accounting import rdp as dpa_rdp

    ours = _sampled_gaussian_rdp(q, sigma)
    theirs = dpa_rdp.rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(
        q, sigma, _RDP_ORDERS
    )
    integer = _RDP_ORDERS == np.round(_RDP_ORDERS)
    # integer orders: the same binomial sum (measured: within 2e-13 relative; 0.4.0 to 0.4.3 use
    # log(1 - q) instead of log1p(-q): 1e-16 absolute, 2e-11 relative at order 2 here)
    np.testing.assert_allclose(ours[integer], theirs[integer], rtol=1e-11, atol=1e-15)
    if DP_ACCOUNTING_FULL >= (0, 4, 4):
        # fractional orders: dp-accounting >= 0.4.4 adds |terms| of the series, so never below ours
        # (up to rounding, measured 2e-11 relative) and above it at the Opacus optimum 3.9 (by
        # 5.4e-5 relative)
        assert np.all(ours[~integer] <= theirs[~integer] * (1 + 1e-10))
        if q == 0.04:
            at = np.flatnonzero(_RDP_ORDERS == 3.9)[0]
            assert theirs[at] > ours[at] * (1 + 1e-6)


@pytest.mark.parametrize(
    "sigma, q, steps, delta",
    [(2.0, 0.1, 100, 1e-5), (5.0, 0.3, 50, 1e-3), (1.3, 150 / 60000, 6000, 1e-3)],
)
def test_rdp_never_below_pld(sigma, q, steps, delta):
    # PLD (pessimistic) is the tighter valid bound; RDP must not undercut it (measured pld/rdp:
    # 0.906, 0.865, 0.847)
    kw = dict(steps=steps, sampling_rate=q)
    rdp = privacy_epsilon(sigma, delta, accountant="rdp", **kw)
    pld = privacy_epsilon(sigma, delta, accountant="pld", **kw)
    assert pld <= rdp


@pytest.mark.parametrize(
    "sigma, q, steps", [(1.5, 0.04, 2250), (1.3, 150 / 60000, 6000)], ids=["opacus", "tfp"]
)
def test_pld_below_rdp_and_close(sigma, q, steps):
    rdp = privacy_epsilon(sigma, 1e-5, steps=steps, sampling_rate=q, accountant="rdp")
    pld = privacy_epsilon(sigma, 1e-5, steps=steps, sampling_rate=q, accountant="pld")
    # measured: pld/rdp = 0.9235 (6.76879 vs 7.32911) and 0.8839 (0.64011 vs 0.72422)
    assert 0.8 * rdp < pld <= rdp


def test_full_batch_poisson_is_one_gaussian():
    # q = 1: T Gaussian steps with multiplier sigma compose to one with sigma / sqrt(T)
    eps = privacy_epsilon(1.0, 1e-5, steps=4, sampling_rate=1.0, accountant="pld")
    assert eps == pytest.approx(bw_epsilon(0.5, 1e-5), rel=1e-6)
    eps = privacy_epsilon(1.0, 1e-5, steps=4, sampling_rate=1.0, accountant="rdp")
    assert eps == pytest.approx(privacy_epsilon(0.5, 1e-5, accountant="rdp"), rel=1e-12)


def test_monotone():
    sigmas = (1.2, 1.5, 3.0, 6.0)
    for accountant in ("analytic", "pld", "rdp"):
        eps = [privacy_epsilon(s, 1e-5, accountant=accountant) for s in sigmas]
        assert all(a > b for a, b in zip(eps, eps[1:])), (accountant, eps)
    for accountant in ("pld", "rdp"):
        eps = [
            privacy_epsilon(s, 1e-5, steps=100, sampling_rate=0.01, accountant=accountant)
            for s in (2.0, 3.0, 5.0)
        ]
        assert all(a > b for a, b in zip(eps, eps[1:])), (accountant, eps)
        eps = [
            privacy_epsilon(2.0, 1e-5, steps=t, sampling_rate=0.01, accountant=accountant)
            for t in (10, 100, 1000)
        ]
        assert all(a < b for a, b in zip(eps, eps[1:])), (accountant, eps)


# --- substitution adjacency -------------------------------------------------------------------


def test_substitution_one_pass_is_half_sigma():
    for accountant in ("analytic", "pld", "rdp"):
        sub = privacy_epsilon(2.0, 1e-5, accountant=accountant, adjacency="substitute")
        assert sub == pytest.approx(privacy_epsilon(1.0, 1e-5, accountant=accountant), rel=1e-12)
    sigma = noise_multiplier_for(2.0, 1e-5, accountant="analytic", adjacency="substitute")
    assert sigma == pytest.approx(2 * noise_multiplier_for(2.0, 1e-5, accountant="analytic"))
    rep = privacy_report(2.0, 1e-5, accountant="analytic", adjacency="substitute")
    assert rep["adjacency"] == "substitute one example" and rep["gdp_mu"] == 1.0


def test_substitution_poisson():
    kw = dict(steps=100, sampling_rate=0.01, accountant="pld")
    if DP_ACCOUNTING < (0, 5):  # 0.4.x has no replace-one PLD of Poisson sampling
        with pytest.raises(ValueError, match="needs a newer dp-accounting"):
            privacy_epsilon(2.0, 1e-5, adjacency="substitute", **kw)
        return
    add_remove = privacy_epsilon(2.0, 1e-5, **kw)
    sub = privacy_epsilon(2.0, 1e-5, adjacency="substitute", **kw)
    assert add_remove < sub <= privacy_epsilon(1.0, 1e-5, **kw)  # sigma/2 add/remove: looser
    with pytest.raises(ValueError, match="adjacency='substitute' with Poisson sampling needs"):
        privacy_epsilon(
            2.0, 1e-5, steps=10, sampling_rate=0.1, accountant="rdp", adjacency="substitute"
        )


# --- noise_multiplier_for -----------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["analytic", "pld", "rdp"])
def test_noise_multiplier_inverts_one_pass(accountant):
    sigma = noise_multiplier_for(2.0, 1e-5, steps=50, accountant=accountant)
    eps = privacy_epsilon(sigma, 1e-5, accountant=accountant)
    assert 2.0 * (1 - 1e-5) <= eps <= 2.0  # never above the target
    assert privacy_epsilon(sigma * (1 - 1e-6), 1e-5, accountant=accountant) > 2.0  # minimal
    if accountant != "rdp":
        exact = noise_multiplier_for(2.0, 1e-5, accountant="analytic")
        assert sigma == pytest.approx(exact, rel=1e-6)
    # sigma -> eps -> sigma (the PLD inversion is checked against the analytic sigma above)
    if accountant != "pld":
        eps0 = privacy_epsilon(1.3, 1e-5, accountant=accountant)
        sigma0 = noise_multiplier_for(eps0, 1e-5, accountant=accountant)
        assert sigma0 == pytest.approx(1.3, rel=1e-6)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_noise_multiplier_inverts_poisson(accountant):
    kw = dict(steps=100, sampling_rate=0.01, accountant=accountant)
    sigma = noise_multiplier_for(0.2, 1e-5, **kw)
    assert 1.5 < sigma < 3.0
    assert 0.2 * (1 - 1e-5) <= privacy_epsilon(sigma, 1e-5, **kw) <= 0.2
    assert privacy_epsilon(sigma * (1 - 1e-6), 1e-5, **kw) > 0.2


def test_noise_multiplier_unreachable():
    assert noise_multiplier_for(1e-9, 1e-15, accountant="analytic") == pytest.approx(4.1225253e9)
    with pytest.raises(ValueError, match="unreachable.*largest searched"):  # needs sigma > 1e12
        noise_multiplier_for(1e-13, 1e-15, accountant="analytic")
    with pytest.raises(ValueError, match="unreachable.*smallest searched"):  # needs sigma < 1e-3
        noise_multiplier_for(1e7, 1e-5, accountant="rdp")
    with pytest.raises(ValueError, match="unreachable.*no noise at all"):  # delta >= P(used) = 0.1
        noise_multiplier_for(1.0, 0.5, sampling_rate=0.1, accountant="rdp")


# --- the dp extra -------------------------------------------------------------------------------


def test_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # `import dp_accounting` now fails
    calls = [
        lambda: privacy_epsilon(1.0, 1e-5),
        lambda: privacy_epsilon(1.0, 1e-5, steps=10, sampling_rate=0.1, accountant="rdp"),
        lambda: noise_multiplier_for(1.0, 1e-5, accountant="pld"),
        lambda: privacy_report(1.0, 1e-5, accountant="rdp"),
    ]
    for call in calls:
        with pytest.raises(ImportError) as info:
            call()
        assert str(info.value) == EXTRA_MESSAGE
        assert "\n" not in str(info.value)
    # the closed form needs no extra
    assert privacy_epsilon(1.0, 1e-5, accountant="analytic") == pytest.approx(
        bw_epsilon(1.0, 1e-5), rel=1e-12
    )
    assert noise_multiplier_for(bw_epsilon(1.0, 1e-5), 1e-5, accountant="analytic") == (
        pytest.approx(1.0, rel=1e-9)
    )
    assert privacy_report(1.0, 1e-5, accountant="analytic")["dp_accounting_version"] is None
    assert 0 < analytic_gaussian_delta(1.0, 1.0) < 1


# --- the report -----------------------------------------------------------------------------------


def test_privacy_report():
    rep = privacy_report(2.0, 1e-5, steps=10)
    json.dumps(rep)
    assert rep["epsilon"] == privacy_epsilon(2.0, 1e-5)
    assert rep["delta"] == 1e-5 and rep["noise_multiplier"] == 2.0 and rep["steps"] == 10
    assert rep["accountant"] == "pld" and rep["sampling_rate"] is None
    assert rep["adjacency"] == "add/remove one example"
    assert rep["mechanism"].startswith("one-pass stream: a single Gaussian mechanism")
    assert rep["gdp_mu"] == 0.5 and rep["dp_accounting_version"]
    rep = privacy_report(2.0, 1e-5, steps=100, sampling_rate=0.01, accountant="rdp")
    json.dumps(rep)
    assert rep["mechanism"] == "Poisson subsampling at rate q=0.01 composed over T=100 steps"
    assert rep["gdp_mu"] is None and rep["sampling_rate"] == 0.01


# --- input checks ---------------------------------------------------------------------------------

BAD = [
    (dict(noise_multiplier=0.0), "noise_multiplier"),
    (dict(noise_multiplier=-1.0), "noise_multiplier"),
    (dict(noise_multiplier=math.inf), "noise_multiplier"),
    (dict(noise_multiplier=math.nan), "noise_multiplier"),
    (dict(noise_multiplier=True), "noise_multiplier"),
    (dict(noise_multiplier="1.0"), "noise_multiplier"),
    (dict(noise_multiplier=None), "noise_multiplier"),
    (dict(delta=0.0), "delta"),
    (dict(delta=1.0), "delta"),
    (dict(delta=-1e-5), "delta"),
    (dict(delta=math.nan), "delta"),
    (dict(delta=False), "delta"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(steps=True), "steps"),
    (dict(steps="3"), "steps"),
    (dict(steps=None), "steps"),
    (dict(sampling_rate=0.0), "sampling_rate"),
    (dict(sampling_rate=1.5), "sampling_rate"),
    (dict(sampling_rate=math.nan), "sampling_rate"),
    (dict(sampling_rate=True), "sampling_rate"),
    (dict(accountant="prv"), "accountant"),
    (dict(accountant=None), "accountant"),
    (dict(adjacency="replace"), "adjacency"),
    (dict(sampling_rate=0.1, accountant="analytic"), "accountant='analytic'"),
]


@pytest.mark.parametrize("bad, name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_inputs(bad, name):
    kw = dict(noise_multiplier=1.0, delta=1e-5, steps=10, sampling_rate=None, accountant="rdp")
    kw.update(bad)
    for fn in (privacy_epsilon, privacy_report):
        with pytest.raises(ValueError, match=name) as info:
            fn(kw["noise_multiplier"], **{k: v for k, v in kw.items() if k != "noise_multiplier"})
        assert "\n" not in str(info.value)
    if "noise_multiplier" not in bad:
        with pytest.raises(ValueError, match=name):
            noise_multiplier_for(1.0, **{k: v for k, v in kw.items() if k != "noise_multiplier"})


@pytest.mark.parametrize("eps", [0.0, -1.0, math.inf, math.nan, True, "1", None])
def test_bad_epsilon(eps):
    with pytest.raises(ValueError, match="epsilon must be"):
        noise_multiplier_for(eps, 1e-5, accountant="analytic")


def test_bad_analytic_delta_inputs():
    for eps, sigma, name in [
        (-1.0, 1.0, "epsilon"),
        (math.inf, 1.0, "epsilon"),
        (True, 1.0, "epsilon"),
        (1.0, 0.0, "noise_multiplier"),
        (1.0, False, "noise_multiplier"),
        (1.0, math.nan, "noise_multiplier"),
    ]:
        with pytest.raises(ValueError, match=name):
            analytic_gaussian_delta(eps, sigma)
