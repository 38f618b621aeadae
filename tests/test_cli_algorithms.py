"""The command line's algorithms (--algorithm and its options), --data-mean and the privacy
command: files and sidecars, bit-identical reruns, refused combinations (one line, exit 2,
nothing written, nothing computed), privacy numbers equal to the API's."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip import cli
from clipped_trip._io import load_result
from clipped_trip._privacy import noise_multiplier_for, privacy_epsilon, privacy_report

from _helpers import assert_user_error, no_files, run

SIM = ["--d", "20", "--T", "0.5", "--runs", "2", "--n-records", "3"]
ODE = ["--d", "20", "--T", "0.5", "--n-records", "3"]

ALGORITHMS = {
    "clipped": ["--clip", "0.4", "--perturbation", "0.2", "--data-mean", "e1:0.5"],
    "dpsgd": ["--clip", "0.4", "--batch", "4", "--epsilon", "2", "--delta", "1e-5"],
    "quantile": ["--clip", "0.3", "--quantile", "0.5", "--clip-lr", "0.05"],
    "autoclip": ["--percentile", "50"],
    "value": ["--clip-value", "0.3"],
    "sign": ["--lr", "0.3"],
}
DESCRIBED = {
    "clipped": "ClippedSGD",
    "dpsgd": "DPSGD",
    "quantile": "QuantileClipSGD",
    "autoclip": "AutoClipSGD",
    "value": "ValueClipSGD",
    "sign": "SignSGD",
}


def same_results(a, b):
    a, b = load_result(a), load_result(b)
    np.testing.assert_array_equal(a.risk, b.risk)
    assert sorted(a.stats) == sorted(b.stats)
    for key in a.stats:
        np.testing.assert_array_equal(a.stats[key], b.stats[key])


# --- every algorithm through simulate and ode; reruns bit-identical --------------------------
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_algorithm_through_simulate_and_ode(name, tmp_path, capsys):
    opts = ["--algorithm", name, *ALGORITHMS[name]]
    for command, size in (("simulate", SIM), ("ode", ODE)):
        out = tmp_path / command
        code, text, err = run([command, *opts, *size, "--out", str(out)], capsys)
        assert code == 0, err
        assert (out / f"{command}.npz").is_file()
        meta = json.loads((out / f"{command}.json").read_text())
        assert meta["command"] == command and meta["config"]["algorithm"] == name
        assert meta["params"]["algorithm"]["algorithm"] == DESCRIBED[name]
        res = load_result(out / f"{command}.npz")
        assert np.all(np.isfinite(res.risk))
        if name == "dpsgd":
            report = meta["privacy"]
            assert meta["params"]["algorithm"]["privacy"] == report
            assert report["epsilon"] == pytest.approx(2.0, rel=1e-6)
            assert report["delta"] == 1e-5 and report["accountant"] == "analytic"
            assert report["adjacency"] == "add/remove one example"
            sigma = noise_multiplier_for(2.0, 1e-5, accountant="analytic")
            assert meta["params"]["algorithm"]["noise_multiplier"] == sigma
            assert "privacy: (epsilon, delta) = (2, 1e-05)" in text
        if name in ("quantile", "autoclip"):  # the threshold path: recorded and predicted
            if command == "simulate":
                assert res.stats["clip"].shape == res.risk.shape
            else:
                assert np.all(np.isfinite(res.clip_path)) and res.clip_path[-1] > 0
            assert "final clip threshold" in text
        if name == "clipped":  # data mean: bias and population risk
            assert {"bias", "population_risk"} <= set(res.stats)
            assert meta["params"]["algorithm"]["perturbation"] == 0.2
            assert meta["params"]["problem"]["data_mean_norm"] == pytest.approx(0.5)
            assert "population risk" in text
    if name in ("clipped", "dpsgd", "quantile"):  # rerun from the sidecar: bit-identical
        for command in ("simulate", "ode"):
            again = tmp_path / f"again_{command}"
            side = tmp_path / command / f"{command}.json"
            code, _, err = run(["rerun", str(side), "--out", str(again)], capsys)
            assert code == 0, err
            same_results(tmp_path / command / f"{command}.npz", again / f"{command}.npz")
            first = json.loads(side.read_text())
            second = json.loads((again / f"{command}.json").read_text())
            assert second["params"]["algorithm"] == first["params"]["algorithm"]


def test_dpsgd_with_noise_multiplier_rdp_and_sde(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["sde", "--algorithm", "dpsgd", "--clip", "0.5", "--noise-multiplier", "1.5"]
    argv += ["--delta", "1e-6", "--accountant", "rdp", "--adjacency", "substitute"]
    code, text, err = run([*argv, *SIM, "--out", str(out)], capsys)
    assert code == 0, err
    meta = json.loads((out / "sde.json").read_text())
    expected = privacy_report(1.5, 1e-6, accountant="rdp", adjacency="substitute")
    assert meta["privacy"]["epsilon"] == expected["epsilon"]
    assert meta["privacy"]["adjacency"] == "substitute one example"
    # without --delta: no accounting, said so
    code, text, err = run(
        ["ode", "--algorithm", "dpsgd", "--clip", "0.5", "--noise-multiplier", "0", *ODE]
        + ["--out", str(tmp_path / "p")],
        capsys,
    )
    assert code == 0, err
    assert "no privacy accounting" in text
    assert "privacy" not in json.loads((tmp_path / "p" / "ode.json").read_text())


@pytest.mark.parametrize(
    "argv",
    [
        ["--algorithm", "sign", "--lr", "0.05"],
        ["--algorithm", "quantile", "--clip", "1", "--quantile", "0.5", "--clip-lr", "0.1"],
        ["--algorithm", "value", "--clip-value", "0.5"],
        ["--perturbation", "1", "--clip", "0.5"],  # the bias SDE (test_bias checks its numbers)
    ],
)
def test_sde_of_value_sign_and_the_bias_problem(argv, tmp_path, capsys):
    """The homogenized SDEs beyond clipped / DP-SGD run from the command line; rerun from the
    sidecar gives the same bits."""
    out = tmp_path / "o"
    code, text, err = run(["sde", *argv, *SIM, "--out", str(out)], capsys)
    assert code == 0, err
    res = load_result(out / "sde.npz")
    assert np.all(np.isfinite(res.risk))
    code, _, err = run(["rerun", str(out / "sde.json"), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(load_result(tmp_path / "r" / "sde.npz").risk, res.risk)


def test_sweep_over_algorithms(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["sweep", "--algorithm", "dpsgd", "--clips", "0.3,1", "--lrs", "0.5"]
    argv += ["--epsilon", "4", "--delta", "1e-5", "--batch", "2", *SIM, "--quiet"]
    code, text, err = run([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    rows = (out / "sweep.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].endswith(",algorithm") and rows[1].endswith(",dpsgd")
    meta = json.loads(next(out.glob("sweep_*.json")).read_text())
    assert meta["params"]["clips"] == [0.3, 1.0]
    assert meta["params"]["algorithm"]["noise_multiplier"] == noise_multiplier_for(
        4.0, 1e-5, accountant="analytic"
    )
    assert meta["privacy"]["epsilon"] == pytest.approx(4.0, rel=1e-6)


# --- refused combinations: one line, exit 2, nothing written, nothing computed ----------------
REFUSED = [
    (["simulate", "--quantile", "0.5"], ("--quantile", "clipped")),
    (["simulate", "--percentile", "50"], ("--percentile", "clipped")),
    (["simulate", "--clip-value", "1"], ("--clip-value", "clipped")),
    (["simulate", "--noise-multiplier", "1"], ("--noise-multiplier", "clipped")),
    (["simulate", "--epsilon", "1", "--delta", "1e-5"], ("--epsilon", "clipped")),
    (["ode", "--algorithm", "dpsgd", "--clip", "1"], ("--noise-multiplier", "--epsilon")),
    (["ode", "--algorithm", "dpsgd", "--noise-multiplier", "1"], ("needs --clip",)),
    (["ode", "--algorithm", "dpsgd", "--clip", "1", "--epsilon", "1"], ("--delta",)),
    (
        ["ode", "--algorithm", "dpsgd", "--clip", "1", "--epsilon", "1", "--noise-multiplier", "1"],
        ("--noise-multiplier and --epsilon",),
    ),
    (
        [
            "ode",
            "--algorithm",
            "dpsgd",
            "--clip",
            "1",
            "--noise-multiplier",
            "1",
            "--accountant",
            "pld",
        ],
        ("--delta",),
    ),
    (
        [
            "ode",
            "--algorithm",
            "dpsgd",
            "--clip",
            "1",
            "--noise-multiplier",
            "1",
            "--clip-mode",
            "mean",
        ],
        ("--clip-mode",),
    ),
    (
        [
            "ode",
            "--algorithm",
            "dpsgd",
            "--clip",
            "1",
            "--noise-multiplier",
            "1",
            "--perturbation",
            "1",
        ],
        ("--perturbation", "dpsgd"),
    ),
    (
        ["ode", "--algorithm", "dpsgd", "--clip", "1", "--epsilon", "1", "--delta", "1.5"],
        ("--delta",),
    ),
    (["ode", "--algorithm", "quantile", "--clip", "1", "--quantile", "0.5"], ("--clip-lr",)),
    (["ode", "--algorithm", "quantile", "--quantile", "0.5", "--clip-lr", "0.1"], ("--clip",)),
    (
        ["ode", "--algorithm", "quantile", "--clip", "1", "--quantile", "1", "--clip-lr", "0.1"],
        ("--quantile",),
    ),
    (
        [
            "simulate",
            "--algorithm",
            "quantile",
            "--clip",
            "1",
            "--quantile",
            "0.5",
            "--clip-lr",
            "0.1",
            "--batch",
            "2",
        ],
        ("--batch",),
    ),
    (["ode", "--algorithm", "autoclip"], ("--percentile",)),
    (
        ["ode", "--algorithm", "autoclip", "--percentile", "50", "--clip", "1"],
        ("--clip", "autoclip"),
    ),
    (["ode", "--algorithm", "value"], ("--clip-value",)),
    (["ode", "--algorithm", "value", "--clip", "1"], ("--clip", "--clip-value")),
    (["ode", "--algorithm", "sign", "--data-mean", "e1:1"], ("--data-mean", "sign")),
    (["ode", "--algorithm", "sign", "--percentile", "5"], ("--percentile", "sign")),
    (["ode", "--algorithm", "adam"], ("--algorithm",)),
    (["sde", "--algorithm", "autoclip", "--percentile", "50"], ("no homogenized SDE",)),
    (
        ["simulate", "--perturbation", "1", "--clip", "1", "--batch", "2", "--clip-mode", "mean"],
        ("--perturbation", "per-example"),
    ),
    (["simulate", "--perturbation", "-1"], ("--perturbation",)),
    (
        ["sweep", "--algorithm", "autoclip", "--percentile", "50", "--clips", "0.5,1"],
        ("--clips", "clip axis"),
    ),
    (["sweep", "--algorithm", "sign", "--clips", "none"], ("--clips", "sign")),
    (
        ["sweep", "--algorithm", "dpsgd", "--clips", "0.5,none", "--noise-multiplier", "1"],
        ("--clips", "finite"),
    ),
    (
        ["sweep", "--algorithm", "value", "--clip-value", "1", "--clips", "1,2"],
        ("--clip-value and --clips",),
    ),
    (["sweep", "--noise-multiplier", "1", "--epsilon", "1"], ("--noise-multiplier and --epsilon",)),
]


@pytest.mark.parametrize("argv,needles", REFUSED)
def test_refused_combinations(argv, needles, tmp_path, capsys, monkeypatch):
    calls = []
    for fn in ("simulate", "simulate_sde", "solve_ode", "sweep"):
        monkeypatch.setattr(ct, fn, lambda *a, _n=fn, **k: calls.append(_n))
    out = tmp_path / "o"
    size = ODE if argv[0] == "ode" else SIM
    code, _, err = run(
        [*argv, *size, "--out", str(out), *(["--quiet"] if argv[0] == "sweep" else [])], capsys
    )
    assert_user_error(code, err, argv[0], *needles)
    assert no_files(out) and calls == []


@pytest.mark.parametrize(
    "text,needle",
    [
        ('algorithm = "quantile"\nclip = 0.5\nquantile = 0.5\n', "clip-lr"),
        ('algorithm = "dpsgd"\nclip = 0.5\nnoise_multiplier = 1.0\nepsilon = 1.0\n', "not both"),
        ("percentile = 50\n", "--percentile"),
        ('algorithm = "dpsgd"\nclip = 0.5\nnoise_multiplier = "1"\n', "noise_multiplier"),
        ('data_mean = "e1"\n', "data_mean"),
        ("quantile = 0.5\nclip_lr = 0\n", "clip_lr"),
    ],
)
def test_config_keys_checked(text, needle, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "o"
    code, _, err = run(["ode", "--config", str(cfg), *ODE, "--out", str(out)], capsys)
    assert_user_error(code, err, "ode", needle)
    assert no_files(out)


def test_config_sets_the_algorithm_and_the_command_line_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('algorithm = "dpsgd"\nclip = 0.5\nnoise_multiplier = 1.0\ndelta = 1e-5\n')
    out = tmp_path / "o"
    argv = ["ode", "--config", str(cfg), "--epsilon", "3", *ODE, "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 0, err  # --epsilon replaces the file's noise_multiplier
    meta = json.loads((out / "ode.json").read_text())
    assert meta["config"]["epsilon"] == 3.0 and "noise_multiplier" not in meta["config"]
    assert meta["privacy"]["epsilon"] == pytest.approx(3.0, rel=1e-6)


# --- --data-mean forms -------------------------------------------------------------------------
def test_data_mean_forms(tmp_path):
    m = cli.data_mean_vector("e3:2", 5)
    np.testing.assert_array_equal(m, [0, 0, 2, 0, 0])
    m = cli.data_mean_vector("uniform:0.5", 16)
    np.testing.assert_allclose(m, np.full(16, 0.125))
    assert np.linalg.norm(m) == pytest.approx(0.5)
    path = tmp_path / "m.npy"
    np.save(path, np.arange(4.0))
    np.testing.assert_array_equal(cli.data_mean_vector(str(path), 4), np.arange(4.0))
    problem = cli.make_problem("isotropic", 4, ct.Gaussian(0.5), "e1:0.5")
    np.testing.assert_array_equal(problem.data_mean, [0.5, 0, 0, 0])
    assert cli.make_problem("isotropic", 4, ct.Gaussian(0.5), "none").data_mean is None
    assert cli.make_problem("isotropic", 4, ct.Gaussian(0.5), "e2:0").data_mean is None
    bad = {
        "wrong_length.npy": np.arange(3.0),
        "two_d.npy": np.ones((2, 2)),
        "nan.npy": np.array([0.0, np.nan, 0.0, 0.0]),
        "objects.npy": np.array([{}, 1, 2, 3], dtype=object),
    }
    for name, arr in bad.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
        with pytest.raises(cli.UserError) as err:
            cli.data_mean_vector(str(tmp_path / name), 4)
        assert "\n" not in str(err.value)
    for spec, needle in [
        ("e5:1", "beyond d"),
        ("e0:1", "count from 1"),
        ("e1:x", "NORM"),
        ("uniform:inf", "NORM"),
        ("mean.txt", ".npy"),
        (str(tmp_path / "missing.npy"), "does not exist"),
    ]:
        with pytest.raises(cli.UserError, match=needle):
            cli.data_mean_vector(spec, 4)


def test_data_mean_file_through_ode_and_rerun(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "m.npy", np.linspace(0.0, 0.3, 20))
    out = tmp_path / "o"
    argv = ["ode", "--data-mean", "m.npy", "--clip", "0.5", *ODE, "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    meta = json.loads((out / "ode.json").read_text())
    recorded = Path(meta["config"]["data_mean"])  # absolute: reruns from any folder
    assert recorded.is_absolute() and recorded.resolve() == (tmp_path / "m.npy").resolve()
    assert len(meta["data_mean_file"]["sha256"]) == 64
    monkeypatch.chdir(out)
    code, _, err = run(["rerun", str(out / "ode.json"), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    same_results(out / "ode.npz", tmp_path / "r" / "ode.npz")
    np.save(tmp_path / "m.npy", np.linspace(0.0, 0.4, 20))  # the file changed: refused
    code, _, err = run(["rerun", str(out / "ode.json"), "--out", str(tmp_path / "r2")], capsys)
    assert_user_error(code, err, "rerun", "changed")
    assert not (tmp_path / "r2").exists()


# --- the privacy command -----------------------------------------------------------------------
def test_privacy_epsilon_and_noise_multiplier_match_the_api(capsys):
    code, text, err = run(["privacy", "--noise-multiplier", "1.3", "--delta", "1e-5"], capsys)
    assert code == 0, err
    assert len(text.strip().splitlines()) == 1
    eps = float(text.split("epsilon = ")[1].split()[0])
    assert eps == privacy_epsilon(1.3, 1e-5, accountant="analytic")
    assert "analytic accountant" in text and "single Gaussian mechanism" in text
    code, text, err = run(["privacy", "--epsilon", "2", "--delta", "1e-6"], capsys)
    assert code == 0, err
    sigma = float(text.split("noise multiplier = ")[1].split()[0])
    assert sigma == noise_multiplier_for(2.0, 1e-6, accountant="analytic")
    # Poisson sampling: the accountant defaults to pld
    argv = ["privacy", "--noise-multiplier", "1.1", "--delta", "1e-5", "--sampling-rate", "0.01"]
    code, text, err = run([*argv, "--steps", "100", "--accountant", "rdp", "--json"], capsys)
    assert code == 0, err
    report = json.loads(text)
    assert report == privacy_report(1.1, 1e-5, steps=100, sampling_rate=0.01, accountant="rdp")
    argv = ["privacy", "--epsilon", "1", "--delta", "1e-5", "--adjacency", "substitute", "--json"]
    code, text, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(text)
    sigma = noise_multiplier_for(1.0, 1e-5, accountant="analytic", adjacency="substitute")
    assert report["noise_multiplier"] == sigma and report["epsilon_target"] == 1.0
    assert report["epsilon"] <= 1.0 and report["adjacency"] == "substitute one example"


@pytest.mark.parametrize(
    "argv,needle",
    [
        ([], "--noise-multiplier S"),
        (["--noise-multiplier", "1"], "--delta"),
        (["--noise-multiplier", "1", "--epsilon", "1", "--delta", "0.1"], "given together"),
        (["--noise-multiplier", "0", "--delta", "0.1"], "--noise-multiplier"),
        (["--noise-multiplier", "1", "--delta", "0"], "--delta"),
        (["--noise-multiplier", "1", "--delta", "1e-5", "--steps", "10"], "--sampling-rate"),
        (["--noise-multiplier", "1", "--delta", "1e-5", "--batch", "8"], "--batch"),
        (["--epsilon", "1", "--delta", "1e-5", "--out", "x"], "--out"),
        (["--epsilon", "1", "--delta", "1e-5", "--quiet"], "--quiet"),
        (
            [
                "--epsilon",
                "1",
                "--delta",
                "1e-5",
                "--sampling-rate",
                "0.1",
                "--accountant",
                "analytic",
            ],
            "analytic",
        ),
        (["--epsilon", "1", "--delta", "1e-5", "--accountant", "moments"], "--accountant"),
        (["--epsilons", "1,2", "--delta", "1e-5", "--steps", "3"], "--steps"),
        (["--epsilons", "1,2", "--delta", "1e-5", "--json"], "--json"),
        (["--epsilons", "1,0", "--delta", "1e-5"], "epsilons"),
        (["--epsilons", "1", "--delta", "1e-5", "--plot"], "--out"),
    ],
)
def test_privacy_refusals(argv, needle, capsys, monkeypatch):
    monkeypatch.setattr(
        "clipped_trip._privacy_utility.privacy_utility",
        lambda *a, **k: pytest.fail("computed before refusing"),
    )
    code, _, err = run(["privacy", *argv], capsys)
    assert_user_error(code, err, "privacy", needle)


def test_privacy_without_the_dp_extra_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import dp_accounting fails
    argv = ["privacy", "--noise-multiplier", "1", "--delta", "1e-5", "--accountant", "pld"]
    code, _, err = run(argv, capsys)
    assert_user_error(code, err, "privacy", "pip install")
    out = tmp_path / "o"
    argv = ["ode", "--algorithm", "dpsgd", "--clip", "1", "--epsilon", "1", "--delta", "1e-5"]
    code, _, err = run([*argv, "--accountant", "rdp", *ODE, "--out", str(out)], capsys)
    assert_user_error(code, err, "ode", "pip install")
    assert no_files(out)


class _FakeTable:
    def __init__(self, epsilons, delta, batch, T):
        self.params = {"delta": delta, "batch": batch, "T": T, "accountant": "analytic"}
        self._rows = [
            {
                "epsilon": float(e),
                "delta": delta,
                "noise_multiplier": 0.0 if math.isinf(e) else 1.0 / e,
                "clip": 0.01 if e < 2 else 1.0,
                "lr": 1.0,
                "risk": 0.1 + 1.0 / e,
                "at_small_clip_edge": e < 2,
            }
            for e in epsilons
        ]

    def rows(self):
        return self._rows


def test_privacy_utility_table(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake(problem, epsilons, delta, *, batch, T, **kw):
        seen.update(problem=problem, epsilons=list(epsilons), delta=delta, batch=batch, T=T, **kw)
        return _FakeTable(epsilons, delta, batch, T)

    monkeypatch.setattr("clipped_trip._privacy_utility.privacy_utility", fake)
    out = tmp_path / "o"
    argv = ["privacy", "--epsilons", "0.5,1,2,8,inf", "--delta", "1e-5", "--batch", "64"]
    argv += ["--T", "10", "--d", "40", "--spectrum", "isotropic", "--clips", "0.01,0.1,1"]
    code, text, err = run([*argv, "--out", str(out), "--plot", "--quiet"], capsys)
    assert code == 0, err
    assert seen["epsilons"] == [0.5, 1.0, 2.0, 8.0, math.inf] and seen["delta"] == 1e-5
    assert seen["batch"] == 64 and seen["T"] == 10.0 and seen["problem"].d == 40
    assert seen["clips"] == [0.01, 0.1, 1.0] and seen["lrs"] is None
    assert seen["accountant"] == "analytic" and seen["adjacency"] == "add-remove"
    lines = (out / "privacy_utility.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epsilon,delta,noise_multiplier") and len(lines) == 6
    meta = json.loads((out / "privacy_utility.json").read_text())
    assert meta["command"] == "privacy" and meta["config"]["batch"] == 64
    assert len(meta["rows"]) == 5 and meta["params"]["T"] == 10
    assert (out / "privacy_utility.png").stat().st_size > 0
    assert text.startswith("epsilon,delta")
    # no --out: the table is printed, nothing written
    code, text, err = run(["privacy", "--epsilons", "1", "--delta", "1e-5", "--quiet"], capsys)
    assert code == 0 and len(text.strip().splitlines()) == 2, err
    assert seen["batch"] == 1 and seen["T"] == 15.0 and seen["problem"].d == 500


def test_privacy_utility_module_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "clipped_trip._privacy_utility", None)
    out = tmp_path / "o"
    argv = ["privacy", "--epsilons", "1", "--delta", "1e-5", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert_user_error(code, err, "privacy", "_privacy_utility")
    assert no_files(out)


# --- help ----------------------------------------------------------------------------------------
def test_help_lists_the_new_options(capsys):
    for command in ("simulate", "ode", "sde", "sweep"):
        code, text, _ = run([command, "--help"], capsys)
        flat = " ".join(text.split())
        assert code == 0
        for option in (
            "--algorithm",
            "--noise-multiplier",
            "--epsilon",
            "--delta",
            "--accountant",
            "--adjacency",
            "--perturbation",
            "--data-mean",
            "--quantile",
            "--clip-lr",
            "--percentile",
            "--clip-value",
        ):
            assert option in flat
        assert "clipped (default)" in flat and "e1:0.5" in flat and "analytic (default" in flat
    code, text, _ = run(["privacy", "--help"], capsys)
    flat = " ".join(text.split())
    for needle in ("--epsilons", "--sampling-rate", "--json", "single Gaussian mechanism"):
        assert needle in flat


def test_privacy_utility_table_for_real(tmp_path, capsys):
    pu = pytest.importorskip("clipped_trip._privacy_utility")
    out = tmp_path / "o"
    argv = ["privacy", "--epsilons", "1,inf", "--delta", "1e-5", "--batch", "8", "--T", "1"]
    argv += ["--d", "20", "--clips", "0.1,1", "--lrs", "0.1,0.5,1", "--quiet"]
    code, _, err = run([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    problem = cli.make_problem(cli.DEFAULTS["spectrum"], 20, ct.parse_noise(cli.DEFAULTS["noise"]))
    expected = pu.privacy_utility(
        problem, [1.0, math.inf], 1e-5, batch=8, T=1.0, clips=[0.1, 1.0], lrs=[0.1, 0.5, 1.0]
    ).rows()
    got = json.loads((out / "privacy_utility.json").read_text())["rows"]
    assert [r["risk"] for r in got] == [r["risk"] for r in expected]
    assert got[0]["noise_multiplier"] == noise_multiplier_for(1.0, 1e-5, accountant="analytic")


def test_privacy_config_file(tmp_path, capsys):
    cfg = tmp_path / "p.toml"
    cfg.write_text("noise_multiplier = 2.0\ndelta = 1e-6\n")
    code, text, err = run(["privacy", "--config", str(cfg)], capsys)
    assert code == 0, err
    assert float(text.split("epsilon = ")[1].split()[0]) == privacy_epsilon(
        2.0, 1e-6, accountant="analytic"
    )
    # the command line's --epsilon replaces the file's noise multiplier
    code, text, err = run(["privacy", "--config", str(cfg), "--epsilon", "1"], capsys)
    assert code == 0 and text.startswith("noise multiplier = "), err
    cfg.write_text("noise_multiplier = 2.0\nepsilon = 1.0\ndelta = 1e-6\n")
    code, _, err = run(["privacy", "--config", str(cfg)], capsys)
    assert_user_error(code, err, "privacy", "noise_multiplier or epsilon or epsilons")
