"""Trust: API-level classes of issue 10 not covered by test_trust*.py (schedules, SDE grids,
true record times, interrupted sweeps)."""

import math

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip import cli
from tolerances import monte_carlo_rel


@pytest.mark.parametrize("form", ["tuple", "list", "array2xN"])
def test_schedule_tables_in_every_documented_form(form):
    p = ct.Problem.isotropic(30, ct.Gaussian(0.5))
    t, v = np.array([0.0, 1.0, 2.0]), np.array([0.4, 0.8, 0.6])
    sched = {"tuple": (t, v), "list": [t, v], "array2xN": np.stack([t, v])}[form]
    kw = dict(T=2.0, runs=2, seed=1, n_records=5, dtype="float64")
    got = ct.simulate(p, sched, 0.7, **kw).risk
    np.testing.assert_array_equal(got, ct.simulate(p, (t, v), 0.7, **kw).risk)


@pytest.mark.parametrize(
    "bad", [np.ones((3, 4)), [np.ones(3), np.ones(2)], np.ones(3), [[0.0, 1.0]]]
)
def test_schedule_of_the_wrong_shape_is_a_clear_error(bad):
    p = ct.Problem.isotropic(10, ct.Gaussian(0.5))
    with pytest.raises(ValueError, match="lr"):
        ct.simulate(p, bad, None, T=1.0, runs=1)


@pytest.mark.parametrize(
    "clip",
    [
        lambda t: 0.5,
        ([0.0, 5.0], [0.5, 0.5]),
        ([0.0, 0.5, 0.51, 5.0], [math.inf, math.inf, 0.5, 0.5]),
    ],
    ids=["callable-constant", "array-constant", "inf-then-c"],
)
def test_sde_float32_time_clip_with_one_finite_value_is_not_diverged(clip):
    """Its log-c grid was 2e-9 wide, 0 in float32: every run was marked diverged."""
    p = ct.Problem.isotropic(50, ct.StudentT(3.0, 0.5))
    runs = 16
    res = ct.simulate_sde(p, 0.5, clip, T=2.0, runs=runs, n_records=5, dtype="float32")
    assert not res.diverged.any()
    ode = ct.solve_ode(p, 0.5, clip, times=res.t)
    assert np.all(np.abs(res.mean() / ode.risk - 1) < monte_carlo_rel(runs, p.D))


def test_results_report_the_times_actually_simulated():
    p = ct.Problem.isotropic(7, ct.Gaussian(0.5))  # D = 7: t = 0.3 is step 2 (t = 2/7)
    sgd = ct.simulate(p, 0.5, 1.0, times=[0.0, 0.3, 1.0], runs=1)
    np.testing.assert_allclose(sgd.t, [0.0, 2 / 7, 1.0])
    sde = ct.simulate_sde(p, 0.5, 1.0, times=[0.0, 0.3, 1.0], dt=0.25, runs=1)
    np.testing.assert_allclose(sde.t, [0.0, 0.25, 1.0])
    mp = ct.solve_ode(p, ct.ClippedSGD(0.5, 1.0, batch=2), times=[0.0, 0.3, 1.0], method="map")
    np.testing.assert_allclose(mp.t, [0.0, 2 / 7, 1.0])


def test_interrupted_sweep_keeps_the_finished_laws(tmp_path, monkeypatch):
    import clipped_trip._simulate as sim

    real, calls = sim.sweep, []

    def sweep_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ct, "sweep", sweep_then_interrupt)
    argv = [
        "sweep",
        "--noises",
        "gaussian:std=0.5;laplace:scale=0.5",
        "--d",
        "20",
        "--T",
        "0.5",
        "--runs",
        "2",
        "--lrs",
        "0.5,1.0",
        "--clips",
        "0.3,none",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert cli.main(argv) == 130
    text = (tmp_path / "sweep.csv").read_text().splitlines()
    assert len(text) == 1 + 4  # header + the first law's 2 x 2 cells
    assert all(line.startswith("gaussian") for line in text[1:])


def test_sde_refuses_a_step_above_the_record_gaps():
    p = ct.Problem.isotropic(10, ct.Gaussian(0.5))
    with pytest.raises(ValueError, match="dt"):
        ct.simulate_sde(p, 0.5, 1.0, T=1.0, dt=100.0, runs=1)


def test_ode_accepts_repeated_record_times():
    p = ct.Problem.isotropic(10, ct.Gaussian(0.5))
    res = ct.solve_ode(p, 0.5, 1.0, times=[0.0, 0.5, 0.5, 1.0])
    assert res.risk[1] == res.risk[2] and res.t.size == 4


@pytest.mark.parametrize("noise", [ct.Gaussian(1e30), ct.StudentT(1.0, 1e25)])
def test_noise_beyond_the_dtype_range_is_refused(noise):
    p = ct.Problem.isotropic(10, noise)
    with pytest.raises(ValueError, match="noise"):
        ct.simulate(p, 0.5, 1.0, T=1.0, runs=1, dtype="float32")
    with pytest.raises(ValueError, match="noise"):
        ct.simulate_sde(p, 0.5, 1.0, T=1.0, runs=1, dtype="float32")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda P: ct.ClippedSGD(lambda t: np.ones(3), 0.4), "one number per time"),
        (lambda P: ct.solve_ode(P, ct.ClippedSGD(0.6, 0.4), T=1, cache=[]), "cache"),
        (
            lambda P: ct.solve_ode(P, ct.ClippedSGD(0.6, 0.4), T=1, second_order="no"),
            "second_order",
        ),
        (lambda P: ct.ClippedSGD(0.6, True), "clip"),
        (lambda P: ct.ClippedSGD("0.5", 0.4), "lr"),
        (lambda P: ct.ccc(P.noise, 1e308, 0.4), "risk"),
        (lambda P: ct.critical_lr(P.noise, 1e308, 0.4), "risk"),
        (lambda P: ct.critical_batch(P, 0, risk=0.01), "clip"),
        (lambda P: ct.simulate(P, 1e308, 0.4, T=1, runs=1), "lr"),
        (lambda P: ct.simulate(P, 1e-308, 0.4, T=1, runs=1), "lr"),
        (lambda P: ct.simulate(P, 0.6, 0.4, T=1, runs=1, first_run=2**40), "first_run"),
        (lambda P: ct.solve_ode(P, 0.6, 0.4, T=1e7), "max_steps"),
    ],
)
def test_api_probes_are_value_errors_naming_the_parameter(call, match):
    P = ct.Problem.isotropic(10, ct.Gaussian(0.5))
    with pytest.raises(ValueError, match=match):
        call(P)


def test_cli_out_name_too_long_is_one_line(tmp_path, capsys):
    code = cli.main(["ode", "--d", "20", "--T", "1", "--out", str(tmp_path / ("a" * 300))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--out" in err[0]


def test_cli_factors_grid_is_bounded(capsys):
    grid = ",".join(str(0.01 * (i + 1)) for i in range(200))
    code = cli.main(["factors", "--risk", grid, "--clip", grid])
    assert code == 2 and "at most" in capsys.readouterr().err
