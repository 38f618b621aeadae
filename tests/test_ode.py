import numpy as np
import pytest
from scipy import integrate

import clipped_trip as ct
from tolerances import ODE_CLOSED_FORM_REL, ODE_INDEPENDENT_REL


@pytest.mark.parametrize("gamma,sigma", [(0.5, 0.3), (1.2, 1.0), (1.9, 0.1)])
def test_isotropic_unclipped_closed_form(gamma, sigma):
    p = ct.Problem.isotropic(20, ct.Gaussian(sigma))
    res = ct.solve_ode(p, gamma, None, T=10.0, n_records=41)
    r_inf = gamma * sigma**2 / (2 * (2 - gamma))
    exact = r_inf + (p.initial_risk - r_inf) * np.exp(-(2 * gamma - gamma**2) * res.t)
    np.testing.assert_allclose(res.risk, exact, rtol=ODE_CLOSED_FORM_REL)


def test_rk4_has_fourth_order_convergence():
    p = ct.Problem.isotropic(5, ct.Gaussian(0.5))
    gamma = 1.0
    errs = []
    for dt in (0.2, 0.1, 0.05):
        res = ct.solve_ode(p, gamma, None, T=5.0, n_records=6, method="rk4", dt=dt)
        r_inf = gamma * 0.25 / (2 * (2 - gamma))
        exact = r_inf + (p.initial_risk - r_inf) * np.exp(-(2 * gamma - gamma**2) * res.t)
        errs.append(np.abs(res.risk - exact).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 3.7) & (orders < 4.3)), orders


def independent_ode(problem, lr, clip, t_eval):
    """SPEC's v-form, dv_i/dt = -2 gamma mu lambda_i v_i + gamma^2 lambda_i nu / (2D), solved by
    an implicit method (Radau) with the factors evaluated directly at every call."""
    lam, D = problem.eigenvalues, problem.D

    def rhs(t, v):
        R = float(lam @ v)
        mu, nu = ct.reduction_factors(problem.noise, R, clip)
        return -2 * lr * mu * lam * v + lr**2 * lam * nu / (2 * D)

    v0 = 0.5 * problem.initial_error**2
    sol = integrate.solve_ivp(
        rhs, (0, t_eval[-1]), v0, method="Radau", t_eval=t_eval, rtol=1e-11, atol=1e-16
    )
    return lam @ sol.y


@pytest.mark.parametrize(
    "noise,lr,clip",
    [
        (ct.StudentT(3.0, 0.6), 0.8, 0.5),
        (ct.Laplace(1.0), 1.5, 2.0),
        (ct.ThreePoint(3.0, 0.1), 2.2, 0.4),
        (ct.StudentT(1.0, 0.5), 0.6, 0.4),
    ],
)
def test_against_independent_implicit_solver_on_stiff_spectrum(noise, lr, clip):
    # lambda from 1 down to 40^-3 ~ 1.6e-5: five decades
    p = ct.Problem.power_law(40, 3.0, noise, x0=np.linspace(1, 2, 40))
    t = np.linspace(0, 15, 16)
    ours = ct.solve_ode(p, lr, clip, times=t)
    ref = independent_ode(p, lr, clip, t)
    np.testing.assert_allclose(ours.risk, ref, rtol=ODE_INDEPENDENT_REL)
    direct = ct.solve_ode(p, lr, clip, times=t, use_table=False)
    np.testing.assert_allclose(direct.risk, ref, rtol=ODE_INDEPENDENT_REL)


def test_volterra_form():
    """R(t) = sum lam v0 e^{-2 lam Gamma(t)} + int_0^t gamma^2 nu(R_s)/(2D) K(t, s) ds."""
    noise, lr, clip = ct.Laplace(0.7), 0.9, 0.5
    p = ct.Problem.power_law(30, 1.0, noise)
    lam, D = p.eigenvalues, p.D
    s = np.linspace(0, 4.0, 4001)
    ode = ct.solve_ode(p, lr, clip, times=s)
    mu, nu = ct.reduction_factors(noise, ode.risk, clip)
    Gamma = integrate.cumulative_simpson(lr * mu, x=s, initial=0.0)
    v0 = 0.5 * p.initial_error**2
    for i in (1000, 2500, 4000):
        forcing = lr**2 * nu[: i + 1] / (2 * D)
        kernel = (
            lam[None, :] ** 2 * np.exp(-2 * lam[None, :] * (Gamma[i] - Gamma[: i + 1, None]))
        ).sum(1)
        volterra = (lam * v0 * np.exp(-2 * lam * Gamma[i])).sum() + integrate.simpson(
            forcing * kernel, x=s[: i + 1]
        )
        assert volterra == pytest.approx(ode.risk[i], rel=1e-9)


def test_risk_schedule_compensates_and_exports_time_schedules():
    noise = ct.StudentT(3.0, 0.8)
    p = ct.Problem.power_law(200, 1 / 6, noise)
    sched = ct.max_ccc_schedule(noise)
    res = ct.solve_ode(p, 0.4, sched, T=5.0, n_records=11)
    mu, _ = ct.reduction_factors(noise, res.risk, res.clip_path)
    np.testing.assert_allclose(res.lr_path * mu, 0.4, rtol=1e-7)
    np.testing.assert_allclose(res.clip_path, ct.optimal_clip(noise, res.risk), rtol=1e-4)
    lr_s, clip_s = res.time_schedules()
    sgd = ct.simulate(p, lr_s, clip_s, T=5.0, runs=4, n_records=11)
    assert np.all(np.isfinite(sgd.risk))


def test_max_ccc_schedule_beats_unclipped_and_heuristic():
    noise = ct.StudentT(3.0, 0.8)
    p = ct.Problem.power_law(300, 1 / 6, noise)
    best = ct.solve_ode(p, 0.4, ct.max_ccc_schedule(noise), T=15.0, n_records=2).risk[-1]
    plain = ct.solve_ode(p, 0.4, None, T=15.0, n_records=2).risk[-1]
    kappa, kappas, finals = ct.tune_kappa(p, 0.4, 15.0, kappas=np.linspace(0.5, 4, 8))
    assert best < plain
    assert best <= finals.min() * (1 + 1e-6)


def test_unclipped_cauchy_diverges_and_is_reported():
    p = ct.Problem.isotropic(10, ct.StudentT(1.0, 0.5))
    res = ct.solve_ode(p, 0.5, None, T=2.0, n_records=5)
    assert res.diverged and res.divergence_time == 0.0 or res.divergence_time < 1.0
    assert not np.isnan(res.risk).any()
    clipped = ct.solve_ode(p, 0.5, 0.4, T=2.0, n_records=5)
    assert not clipped.diverged and np.all(np.isfinite(clipped.risk))


def test_large_d_runs():
    d = 100_000
    p = ct.Problem.power_law(d, 1.0, ct.StudentT(3.0, 1.0), x0=np.ones(d))
    res = ct.solve_ode(p, 0.6, 0.5, T=15.0, n_records=16)
    direct = ct.solve_ode(p, 0.6, 0.5, T=15.0, n_records=16, use_table=False)
    assert not res.diverged and np.all(np.diff(res.risk) < 0)
    np.testing.assert_allclose(res.risk, direct.risk, rtol=ODE_INDEPENDENT_REL)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(T=0.0), "T"),
        (dict(clip=-2.0), "clip"),
        (dict(method="Euler"), "method"),
        (dict(times=[0.0, 1.0, 0.5], T=None), "times"),
        (dict(lr=lambda t: float("nan")), "lr"),
    ],
)
def test_bad_input(kwargs, match):
    p = ct.Problem.isotropic(5, ct.Gaussian(1.0))
    args = dict(lr=0.5, clip=1.0, T=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ct.solve_ode(p, **args)


def test_tabulated_max_ccc_schedule_matches_optimiser_at_every_step():
    """The c*(R) table changes the ODE only at second order (nu / mu^2 is stationary at c*)."""
    noise = ct.StudentT(3.0, 0.8)
    p = ct.Problem.power_law(50, 1 / 6, noise)
    t = np.linspace(0, 5, 6)
    exact = ct.RiskSchedule(lambda R: ct.optimal_clip(noise, R), compensate=True)
    tabulated = ct.solve_ode(p, 0.4, ct.max_ccc_schedule(noise), times=t)
    reference = ct.solve_ode(p, 0.4, exact, times=t, use_table=False)
    np.testing.assert_allclose(tabulated.risk, reference.risk, rtol=ODE_INDEPENDENT_REL)
