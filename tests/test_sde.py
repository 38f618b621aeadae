import numpy as np
import pytest

import clipped_trip as ct
from tolerances import monte_carlo_rel


@pytest.mark.parametrize(
    "noise,lr,clip",
    [
        (ct.Laplace(0.7), 0.8, 0.5),
        (ct.StudentT(1.0, 0.5), 0.6, 0.4),
        (ct.Gaussian(0.5), 1.0, None),
    ],
)
def test_sde_mean_tracks_ode(noise, lr, clip):
    p = ct.Problem.power_law(600, 0.2, noise)
    runs = 32
    sde = ct.simulate_sde(p, lr, clip, T=6.0, runs=runs, dt=0.005, n_records=7, dtype="float64")
    ode = ct.solve_ode(p, lr, clip, times=sde.t)
    rel = np.abs(sde.mean() / ode.risk - 1)
    # Monte Carlo error plus Euler-Maruyama bias O(lr * dt)
    assert rel.max() < monte_carlo_rel(runs, p.D) + 2 * lr * 0.005, rel


def test_sde_with_time_and_risk_schedules():
    noise = ct.StudentT(3.0, 0.8)
    p = ct.Problem.power_law(400, 1 / 6, noise)
    runs = 32
    sched = ct.max_ccc_schedule(noise)
    ode = ct.solve_ode(p, 0.4, sched, T=4.0, n_records=5)
    risk_sched = ct.simulate_sde(
        p, 0.4, sched, T=4.0, runs=runs, dt=0.01, n_records=5, dtype="float64"
    )
    time_sched = ct.simulate_sde(
        p, *ode.time_schedules(), T=4.0, runs=runs, dt=0.01, n_records=5, dtype="float64"
    )
    tol = monte_carlo_rel(runs, p.D) + 0.02
    assert np.abs(risk_sched.mean() / ode.risk - 1).max() < tol
    assert np.abs(time_sched.mean() / ode.risk - 1).max() < tol


def test_sde_reproducible_and_validated():
    p = ct.Problem.isotropic(50, ct.Gaussian(0.5))
    a = ct.simulate_sde(p, 0.5, 0.3, T=1.0, runs=3, seed=4)
    b = ct.simulate_sde(p, 0.5, 0.3, T=1.0, runs=3, seed=4)
    assert np.array_equal(a.risk, b.risk)
    with pytest.raises(ValueError, match="dt"):
        ct.simulate_sde(p, 0.5, 0.3, T=1.0, dt=0.0)
    with pytest.raises(ValueError, match="runs"):
        ct.simulate_sde(p, 0.5, 0.3, T=1.0, runs=-1)


def test_sde_time_schedule_with_infinite_clip_steps():
    """A time schedule that switches clipping off (c = inf) uses the unclipped factors there."""
    p = ct.Problem.isotropic(300, ct.Laplace(0.5))
    off = ct.simulate_sde(p, 0.8, None, T=2.0, runs=8, n_records=3, dtype="float64")
    mixed = ct.simulate_sde(
        p,
        0.8,
        lambda t: np.where(t < 1.0, np.inf, np.inf),
        T=2.0,
        runs=8,
        n_records=3,
        dtype="float64",
    )
    np.testing.assert_allclose(mixed.risk, off.risk, rtol=1e-12)
    half = ct.simulate_sde(
        p,
        0.8,
        lambda t: np.where(t < 1.0, 0.3, np.inf),
        T=2.0,
        runs=32,
        n_records=3,
        dtype="float64",
    )
    ode = ct.solve_ode(p, 0.8, lambda t: 0.3 if t < 1.0 else np.inf, times=half.t)
    assert np.abs(half.mean() / ode.risk - 1).max() < monte_carlo_rel(32, p.D) + 0.01
