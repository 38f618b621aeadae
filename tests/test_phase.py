"""ODE phase diagrams (clipped_trip._phase): agreement with solve_ode, order, tables, divergence.

Most tests share one compiled program (same problem size, chunk of 16 cells, 8 record slots,
at most 8 tables): keep new tests within those shapes to keep the file fast.
"""

import json
import math
import warnings

import numpy as np
import pytest
from scipy import optimize

import clipped_trip as ct
from clipped_trip._phase import FactorTables, PhaseDiagram, phase_diagram
from tolerances import FACTORS_REL, ODE_CLOSED_FORM_REL, ODE_INDEPENDENT_REL

D_SMALL = 40


@pytest.fixture(scope="module")
def problem():
    d = D_SMALL
    return ct.Problem.power_law(d, 0.3, ct.StudentT(3.0, 0.5), x0=np.full(d, 0.3))


def reference(problem, alg, t):
    """solve_ode (DOP853, rtol 1e-10) at the record times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.solve_ode(problem, alg, times=t, method="DOP853")


def assert_close(got, want, rtol):
    got, want = np.asarray(got), np.asarray(want)
    both_inf = np.isinf(got) & np.isinf(want)
    assert not np.any(np.isnan(got))
    np.testing.assert_allclose(np.where(both_inf, 1.0, got), np.where(both_inf, 1.0, want), rtol)


def test_tables_match_direct_evaluation():
    laws = [ct.Gaussian(0.5), ct.StudentT(3.0, 0.5), ct.Laplace(0.5), ct.ThreePoint(1.0, 0.2)]
    clips = [0.05, 2.0]
    pairs = [(law, c) for law in laws for c in clips]
    ranges = [(math.log(1e-8), math.log(1e4))] * len(pairs)
    tab = FactorTables(pairs, ranges)
    rng = np.random.default_rng(0)
    R = np.exp(rng.uniform(math.log(1e-8), math.log(1e4), 200))
    for k, (law, c) in enumerate(pairs):
        log_mu, log_nu = tab(k, R)
        mu, nu = ct.reduction_factors(law, R, c)
        np.testing.assert_allclose(np.exp(log_mu), mu, rtol=FACTORS_REL)
        np.testing.assert_allclose(np.exp(log_nu), nu, rtol=FACTORS_REL)
        # beyond the grid: linear in log R (finite, no NaN)
        far = tab(k, np.array([1e-40, 1e40]))
        assert np.all(np.isfinite(far))


def test_matches_solve_ode_for_several_laws(problem):
    laws = [ct.Gaussian(0.5), ct.StudentT(3.0, 0.5), ct.Laplace(0.5), ct.ThreePoint(1.0, 0.2)]
    clips = [0.3, None]
    pd = phase_diagram(
        problem,
        ct.ClippedSGD,
        {"noise": laws, "clip": clips},
        T=6.0,
        params={"lr": 0.8},
        curves=True,
        n_records=5,
    )
    assert pd.risk.shape == (4, 2, 5)
    for i, law in enumerate(laws):
        for j, c in enumerate(clips):
            ref = reference(problem.replace(noise=law), ct.ClippedSGD(0.8, c), pd.t)
            assert_close(pd.risk[i, j], ref.risk, ODE_INDEPENDENT_REL)
    np.testing.assert_array_equal(pd.final_risk, pd.risk[..., -1])


def test_matches_solve_ode_batch_and_unclipped(problem):
    axes = {"batch": [1, 4], "lr": [0.5, 0.9], "clip": [0.5, None]}
    pd = phase_diagram(problem, ct.ClippedSGD, axes, T=6.0, curves=True, n_records=5)
    for idx in np.ndindex(pd.shape):
        b, lr, c = (axes[k][i] for k, i in zip(axes, idx))
        ref = reference(problem, ct.ClippedSGD(lr, c, batch=b), pd.t)
        assert_close(pd.risk[idx], ref.risk, ODE_INDEPENDENT_REL)


def test_dpsgd_matches_solve_ode(problem):
    axes = {"clip": [0.3, 1.0], "noise_multiplier": [0.0, 2.0]}
    pd = phase_diagram(
        problem, ct.DPSGD, axes, T=6.0, params={"lr": 0.8, "batch": 4}, curves=True, n_records=5
    )
    for idx in np.ndindex(pd.shape):
        c, s = axes["clip"][idx[0]], axes["noise_multiplier"][idx[1]]
        ref = reference(problem, ct.DPSGD(0.8, c, batch=4, noise_multiplier=s), pd.t)
        assert_close(pd.risk[idx], ref.risk, ODE_INDEPENDENT_REL)
    # the privacy noise costs risk
    assert np.all(pd.final_risk[:, 1] > pd.final_risk[:, 0])


def test_collocation_order_and_closed_form():
    """Isotropic, unclipped, Gaussian: R(t) = R_inf + (R0 - R_inf) exp(-(2 gamma - gamma^2) t).
    With q = 4 (5 Chebyshev-Lobatto nodes) the fixed-step error at step ends is O(h^6): the
    interpolatory quadrature on those nodes is exact to degree 5 (q + 1 for even q)."""
    d, sigma, gamma, T = 8, 0.5, 0.8, 5.0
    p = ct.Problem.isotropic(d, ct.Gaussian(sigma), x0=np.ones(d))
    r_inf = gamma * sigma**2 / (2 * (2 - gamma))
    exact = r_inf + (p.initial_risk - r_inf) * math.exp(-(2 * gamma - gamma**2) * T)
    errs = []
    for n_steps in (4, 8, 16):
        h = gamma * T / n_steps  # tau = gamma t: the record T is a step end
        pd = phase_diagram(p, ct.ClippedSGD, {"lr": [gamma]}, T=T, nodes=4, fixed_step=h)
        errs.append(abs(pd.final_risk[0] / exact - 1.0))
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 5.7) & (orders < 6.3)), orders
    # the default (adaptive, q = 12) against the closed form at several times
    p = ct.Problem.isotropic(D_SMALL, ct.Gaussian(sigma), x0=np.ones(D_SMALL))
    pd = phase_diagram(p, ct.ClippedSGD, {"lr": [0.5, 1.9]}, T=T, curves=True, n_records=5)
    for i, g in enumerate((0.5, 1.9)):
        r_inf = g * sigma**2 / (2 * (2 - g))
        want = r_inf + (p.initial_risk - r_inf) * np.exp(-(2 * g - g**2) * pd.t)
        np.testing.assert_allclose(pd.risk[i], want, rtol=ODE_CLOSED_FORM_REL)


def test_divergence_is_marked_never_nan(problem):
    cauchy = ct.StudentT(1.0, 0.5)
    pd = phase_diagram(
        problem,
        ct.ClippedSGD,
        {"noise": [problem.noise, cauchy], "lr": [1.0, 3.0], "clip": [0.5, None]},
        T=100.0,
        curves=True,
        n_records=5,
    )
    assert not np.any(np.isnan(pd.risk)) and not np.any(np.isnan(pd.final_risk))
    want = np.zeros(pd.shape, bool)
    want[0, 1, 1] = True  # unclipped at lr 3 > 2
    want[1, :, 1] = True  # unclipped under Cauchy noise: at t = 0+
    np.testing.assert_array_equal(pd.diverged, want)
    assert np.all(np.isinf(pd.final_risk[want])) and np.all(np.isfinite(pd.final_risk[~want]))
    assert np.all(np.isinf(pd.risk[1, :, 1, 1:])) and np.all(pd.risk[1, :, 1, 0] < np.inf)
    for idx in [(0, 1, 1), (1, 0, 1), (1, 1, 0)]:
        law = [problem.noise, cauchy][idx[0]]
        ref = reference(
            problem.replace(noise=law),
            ct.ClippedSGD([1.0, 3.0][idx[1]], [0.5, None][idx[2]]),
            pd.t,
        )
        assert bool(ref.diverged) == bool(pd.diverged[idx])
        assert_close(pd.risk[idx], ref.risk, ODE_INDEPENDENT_REL)


def test_table_extended_where_a_path_goes_below_its_first_range():
    """Tables start at a tenth of min(R0, the stationary risk); a path that dips lower (here: the
    error on one stiff mode decays before 20000 slow modes fill up) is solved again with its
    table extended to the rigorous lower bound."""
    lam = np.concatenate([[1.0], np.full(20000, 0.001)])
    x0 = np.zeros(lam.size)
    x0[0] = 1.0
    p = ct.Problem(lam, x0, np.zeros(lam.size), ct.StudentT(3.0, 0.5))
    clips = [0.3, 1.0]
    pd = phase_diagram(
        p, ct.ClippedSGD, {"clip": clips}, T=5.0, params={"lr": 1.0}, curves=True, n_records=5
    )
    assert pd.params["cells_resolved_after_table_extension"] >= 1
    for j, c in enumerate(clips):
        ref = reference(p, ct.ClippedSGD(1.0, c), pd.t)
        assert_close(pd.risk[j], ref.risk, ODE_INDEPENDENT_REL)


def test_axes_order_summaries_and_time_to_target(problem):
    lrs, clips = [0.3, 0.9], [0.2, 1.0, None]
    target = 0.6 * problem.initial_risk
    a = phase_diagram(problem, ct.ClippedSGD, {"lr": lrs, "clip": clips}, T=8.0, target=target)
    b = phase_diagram(problem, ct.ClippedSGD, {"clip": clips, "lr": lrs}, T=8.0, target=target)
    assert isinstance(a, PhaseDiagram)
    assert list(a.axes) == ["lr", "clip"] and a.shape == (2, 3) and b.shape == (3, 2)
    assert a.risk is None and a.t.tolist() == [8.0]
    np.testing.assert_allclose(a.final_risk, b.final_risk.T, rtol=1e-12)
    np.testing.assert_allclose(a.time_to_target, b.time_to_target.T, rtol=1e-12)
    best = a.best()
    i, j = best["index"]
    assert best["final_risk"] == a.final_risk.min() == a.final_risk[i, j]
    assert best["lr"] == lrs[i] and best["clip"] == clips[j]
    json.dumps(a.params)  # JSON-friendly
    # time to target: the first crossing of the solve_ode path
    for i, lr in enumerate(lrs):
        for j, c in enumerate(clips):
            alg = ct.ClippedSGD(lr, c)
            risk_at = lambda t: reference(problem, alg, [0.0, t]).risk[-1] - target  # noqa: E731
            got = a.time_to_target[i, j]
            if math.isinf(got):
                assert risk_at(8.0) > 0
                continue
            want = optimize.brentq(risk_at, 1e-6, 8.0, xtol=1e-12)
            assert abs(got - want) <= 1e-6 * want
    # a target above R0 is met at t = 0
    c = phase_diagram(problem, ct.ClippedSGD, {"lr": lrs}, T=8.0, target=2 * problem.initial_risk)
    np.testing.assert_array_equal(c.time_to_target, 0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(axes={"lr": [0.5], "clip": [-1.0]}), r"axes\['clip'\]\[0\]"),
        (dict(axes={"lr": [0.0]}), r"axes\['lr'\]\[0\]"),
        (dict(axes={"lr": []}), r"axes\['lr'\] must have"),
        (dict(axes={"momentum": [0.9]}), "unknown axis 'momentum'"),
        (dict(axes={"lr": 0.5}), r"axes\['lr'\] must be a sequence"),
        (dict(axes={}), "axes must be a non-empty dict"),
        (dict(axes={"clip": [1.0]}), "lr must be given"),
        (dict(axes={"lr": [0.5]}, params={"lr": 0.4}), "also an axis"),
        (dict(axes={"lr": [0.5]}, params={"foo": 1}), "unknown parameter 'foo'"),
        (dict(axes={"lr": [0.5], "batch": [1.5]}), r"axes\['batch'\]\[0\]"),
        (dict(axes={"lr": [0.5], "noise": ["gauss"]}), r"axes\['noise'\]\[0\]"),
        (dict(axes={"lr": [0.5]}, T=-1.0), "T must be"),
        (dict(axes={"lr": [0.5]}, target=0.0), "target must be"),
        (dict(axes={"lr": [0.5]}, nodes=40), "nodes must be"),
        (dict(axes={"lr": [0.5]}, rtol=0.5), "rtol must be"),
        (dict(axes={"lr": [0.5]}, curves="yes"), "curves must be"),
        (dict(axes={"lr": [0.5]}, times=[0.0, 1.0]), "times: record times are for curves"),
        (dict(axes={"lr": [0.5], "noise_multiplier": [1.0]}), "unknown axis"),
        (
            dict(axes={"lr": [0.5], "clip": [1.0]}, params={"batch": 4, "clip_mode": "mean"}),
            "clip_mode='mean'",
        ),
        (dict(axes={"lr": [0.5]}, T=1e7), "max_steps"),
    ],
)
def test_bad_input(problem, kwargs, match):
    kwargs = dict(kwargs)
    kwargs.setdefault("T", 1.0)
    with pytest.raises(ValueError, match=match):
        phase_diagram(problem, ct.ClippedSGD, **kwargs)


def test_bad_algorithm_and_problem(problem):
    with pytest.raises(ValueError, match="algorithm_class must be"):
        phase_diagram(problem, ct.AutoClipSGD, {"lr": [0.5]}, T=1.0)
    with pytest.raises(ValueError, match="DP-SGD needs a finite clip"):
        phase_diagram(
            problem, ct.DPSGD, {"lr": [0.5], "clip": [None]}, T=1.0,
            params={"batch": 2, "noise_multiplier": 1.0},
        )  # fmt: skip
    with pytest.raises(ValueError, match="noise_multiplier must be given"):
        phase_diagram(problem, ct.DPSGD, {"lr": [0.5], "clip": [1.0]}, T=1.0)
    with pytest.raises(ValueError, match="problem must be a Problem"):
        phase_diagram("p", ct.ClippedSGD, {"lr": [0.5]}, T=1.0)
    shifted = problem.replace(data_mean=np.full(problem.d, 0.1))
    with pytest.raises(ValueError, match="data_mean"):
        phase_diagram(shifted, ct.ClippedSGD, {"lr": [0.5]}, T=1.0)
    with pytest.raises(ValueError, match="schedule"):
        phase_diagram(problem, ct.ClippedSGD(lambda t: 0.5), {"clip": [1.0]}, T=1.0)
