"""privacy_utility (SPEC 9.2-9.3): the ODE-optimal DP-SGD (clip, lr) per epsilon, and the quick
versions of the privacy and bias figures."""

import json
import math

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._figures_private import spec92_problem
from clipped_trip._privacy import noise_multiplier_for
from clipped_trip._privacy_utility import PrivacyUtility, privacy_utility
from _helpers import figure_outputs

EPS = [0.5, 4.0, math.inf]
DELTA = 1e-5
B, T = 4, 3.0
CLIPS = np.geomspace(1e-3, 10.0, 5)


@pytest.fixture(scope="module")
def problem():
    # SPEC 9.2's problem (power law j^-0.2, Student-t(3) scale 0.5, R0 = 1), small d
    return spec92_problem(40)


@pytest.fixture(scope="module")
def pu(problem):
    return privacy_utility(problem, EPS, DELTA, batch=B, T=T, clips=CLIPS, lr_points=9)


def _risk(problem, c, lr, sigma):
    alg = ct.DPSGD(lr, c, batch=B, noise_multiplier=sigma)
    return float(ct.solve_ode(problem, alg, T=T, n_records=2, method="DOP853").risk[-1])


def test_result_shape_and_rows(pu):
    assert isinstance(pu, PrivacyUtility)
    for name in ("epsilon", "noise_multiplier", "clip", "lr", "risk", "kappa"):
        arr = getattr(pu, name)
        assert arr.shape == (len(EPS),) and np.all(np.isfinite(arr) | np.isinf(pu.epsilon))
    np.testing.assert_allclose(pu.kappa, pu.lr * pu.clip, rtol=1e-15)
    rows = pu.rows()
    assert len(rows) == len(EPS)
    assert {"epsilon", "noise_multiplier", "clip", "lr", "risk", "at_small_clip_edge"} <= set(
        rows[0]
    )
    assert rows[0]["samples"] == round(T * pu.params["problem"]["D"]) * B
    json.dumps(pu.params)  # JSON-friendly
    assert "add/remove" in pu.params["adjacency_statement"]


def test_noise_multiplier_matches_accounting(pu):
    for e, s in zip(pu.epsilon, pu.noise_multiplier):
        if math.isinf(e):
            assert s == 0.0
        else:
            want = noise_multiplier_for(e, DELTA, accountant="analytic")
            assert s == pytest.approx(want, rel=1e-12)


def test_risk_decreases_with_epsilon(pu):
    assert np.all(np.diff(pu.risk) < 0)
    assert pu.risk[-1] == pytest.approx(pu.no_dp_risk, rel=1e-12)  # epsilon = inf row
    assert pu.no_dp_clip == pu.clip[-1] and pu.no_dp_lr == pu.lr[-1]
    assert np.all(pu.risk < pu.params["problem"]["initial_risk"])


@pytest.mark.filterwarnings("ignore:h = gamma lambda_max / D")  # DOP853 on purpose, as searched
def test_optimum_is_a_local_minimum(problem, pu):
    """+-10 % in c or in gamma (separately) does not lower the ODE's final risk."""
    for c, lr, s, R in zip(pu.clip, pu.lr, pu.noise_multiplier, pu.risk):
        assert _risk(problem, c, lr, s) == pytest.approx(R, rel=1e-9)
        for fc, fl in ((0.9, 1.0), (1.1, 1.0), (1.0, 0.9), (1.0, 1.1)):
            assert _risk(problem, c * fc, lr * fl, s) >= R * (1 - 1e-6), (s, fc, fl)


def test_aggressive_clipping_at_small_epsilon(pu):
    """SPEC 9.2: privacy noise dominating -> the c -> 0 limit is optimal (flat down to the
    grid's smallest clip); no DP -> an interior optimum far better than the small-c edge."""
    assert pu.at_small_clip_edge[0]
    assert pu.clip_flat_min[0] == CLIPS[0]
    assert pu.clip[0] < 0.1 * pu.no_dp_clip
    assert pu.edge_risk[0] <= pu.risk[0] * (1 + 3e-3)
    assert not pu.at_small_clip_edge[-1]
    assert pu.edge_risk[-1] > 1.1 * pu.risk[-1]
    assert 0.1 < pu.no_dp_clip < 10.0
    assert not pu.at_lr_edge.any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilons": []}, "epsilons"),
        ({"epsilons": [1.0, -1.0]}, "epsilons"),
        ({"epsilons": [float("nan")]}, "epsilons"),
        ({"epsilons": "1"}, "epsilons"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"batch": 0}, "batch"),
        ({"batch": 2.5}, "batch"),
        ({"T": 0.0}, "T"),
        ({"T": math.inf}, "T"),
        ({"clips": [0.1]}, "clips"),
        ({"clips": [0.1, -1.0]}, "clips"),
        ({"clips": [0.1, math.inf]}, "clips"),
        ({"lrs": [1.0, 2.0]}, "lrs"),
        ({"lrs": [1.0, 2.0, 0.0]}, "lrs"),
        ({"accountant": "moments"}, "accountant"),
        ({"adjacency": "replace"}, "adjacency"),
        ({"refine": 1}, "refine"),
        ({"lr_points": 2}, "lr_points"),
        ({"flat_rtol": -0.1}, "flat_rtol"),
    ],
)
def test_input_validation(problem, kwargs, match):
    args = {"epsilons": [1.0], "delta": DELTA, "batch": B, "T": T, **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        privacy_utility(problem, args.pop("epsilons"), args.pop("delta"), **args)
    assert "\n" not in str(info.value)


def test_refuses_non_problems_and_data_mean(problem):
    with pytest.raises(ValueError, match="problem"):
        privacy_utility("p", [1.0], DELTA, batch=B, T=T)
    biased = problem.replace(data_mean=np.ones(problem.d) / math.sqrt(problem.d))
    with pytest.raises(ValueError, match="data_mean"):
        privacy_utility(biased, [1.0], DELTA, batch=B, T=T)


def test_privacy_figure_quick(quick_figure):
    tmp_path, (path, rows), _ = quick_figure("privacy")
    assert path.name == "privacy.png"
    arrays, _ = figure_outputs(tmp_path, "privacy")
    for key in ("noise_multiplier", "clip", "lr", "kappa", "risk", "risk_map", "sgd_mean"):
        assert np.all(np.isfinite(arrays[key])), key
    assert np.all(np.isfinite(arrays["sgd_paths"])) and np.all(np.isfinite(arrays["ode_paths"]))
    assert len(rows) == 3 and math.isinf(rows[-1]["epsilon"])
    # SGD at the optimum agrees with the ODE to Monte Carlo accuracy (2 runs, d = 100)
    for row in rows:
        assert abs(row["sgd_vs_ode"]) < 0.15, row


def test_bias_figure_quick(quick_figure):
    tmp_path, (path, table), _ = quick_figure("bias")
    assert path.name == "bias.png"
    arrays, meta = figure_outputs(tmp_path, "bias")
    for key, val in arrays.items():
        assert np.all(np.isfinite(val)), key
    by = {(r["start"], r["config"]): r for r in table}
    # unclipped SGD has no bias (ODE); clipped SGD started at x* walks away to r < 0
    assert by[("x*", "unclipped SGD")]["bias_ode_T"] == 0.0
    walked = by[("x*", "clipped c=0.5, k=0")]
    assert walked["bias_ode_T"] < -0.1 and walked["bias_sgd_end"] < -0.05
    assert meta["params"]["fixed_points"]["k=0"]["r"] == pytest.approx(-0.1355, abs=1e-3)
