import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import clipped_trip as ct
from clipped_trip import cli
from clipped_trip._io import atomic_write, load_result, save_result


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["simulate", "--noise", "gausian:std=1"], "unknown noise law"),
        (["simulate", "--noise", "student-t:df=0"], "df"),
        (["simulate", "--noise", "three-point:value=1,q=2"], "q"),
        (["simulate", "--lr", "-0.5"], "lr"),
        (["simulate", "--clip", "0"], "clip"),
        (["simulate", "--clip", "abc"], "clip"),
        (["simulate", "--runs", "0"], "runs"),
        (["simulate", "--d", "0"], "d"),
        (["simulate", "--T", "nan"], "T"),
        (["simulate", "--spectrum", "power-law"], "alpha"),
        (["simulate", "--spectrum", "cubic"], "unknown spectrum"),
        (["ode", "--config", "does/not/exist.toml"], "does not exist"),
        (["reproduce", "fig99"], "unknown figure"),
        (["sde", "--dt", "-1"], "dt"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_files(argv, match, capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run(argv + ["--out", str(out_dir)] if argv[0] != "reproduce" else argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_malformed_and_unknown_config(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = [unclosed\n")
    code, _, err = run(["ode", "--config", str(bad)], capsys)
    assert code == 2 and "not valid TOML" in err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 0.5\n")
    code, _, err = run(["ode", "--config", str(unknown)], capsys)
    assert code == 2 and "unknown key" in err


def test_config_then_command_line_override_and_reload(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'noise = "laplace:scale=0.5"\nspectrum = "isotropic"\nd = 40\nlr = 0.5\n'
        "clip = 0.3\nT = 2.0\nruns = 3\nseed = 9\nn_records = 5\n"
    )
    out = tmp_path / "o"
    code, text, _ = run(
        ["simulate", "--config", str(cfg), "--lr", "0.7", "--out", str(out), "--plot"], capsys
    )
    assert code == 0, text
    res = load_result(out / "simulate.npz")
    meta = json.loads((out / "simulate.json").read_text())
    assert meta["config"]["lr"] == 0.7 and meta["config"]["d"] == 40
    assert res.risk.shape == (3, 5) and (out / "simulate.png").exists()
    # the sidecar is enough to re-run: same config and seed give bit-identical results
    code, text, _ = run(
        ["rerun", str(out / "simulate.json"), "--out", str(tmp_path / "again")], capsys
    )
    assert code == 0, text
    np.testing.assert_array_equal(load_result(tmp_path / "again" / "simulate.npz").risk, res.risk)
    code, _, err = run(["rerun", str(cfg)], capsys)
    assert code == 2 and "not a sidecar" in err
    p = ct.Problem.isotropic(40, ct.parse_noise(meta["config"]["noise"]))
    again = ct.simulate(
        p,
        meta["config"]["lr"],
        float(meta["config"]["clip"]),
        T=2.0,
        runs=3,
        seed=meta["config"]["seed"],
        n_records=5,
    )
    np.testing.assert_array_equal(again.risk, res.risk)


def test_ode_factors_criteria_sweep(tmp_path, capsys):
    out = tmp_path / "o"
    code, text, _ = run(
        [
            "ode",
            "--noise",
            "cauchy:scale=0.5",
            "--clip",
            "none",
            "--d",
            "20",
            "--T",
            "1",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0 and "diverged" in text
    code, text, _ = run(
        ["factors", "--noise", "student-t:df=3,scale=1", "--risk", "0.05", "--clip", "1.07,none"],
        capsys,
    )
    assert code == 0 and text.splitlines()[0] == "risk,clip,mu,nu" and len(text.splitlines()) == 3
    code, text, err = run(
        [
            "criteria",
            "--noise",
            "student-t:df=3,scale=1",
            "--risk",
            "0.05",
            "--out",
            str(out),
            "--plot",
        ],
        capsys,
    )
    assert code == 0 and "max CCC = 1.849" in err
    assert (out / "criteria.csv").read_text().startswith("clip,ccc,csc,critical_lr")
    assert (out / "criteria.png").stat().st_size > 0
    code, text, _ = run(
        ["factors", "--noise", "laplace:scale=1", "--out", str(out), "--plot"], capsys
    )
    assert code == 0 and len((out / "factors.csv").read_text().splitlines()) == 1 + 4 * 3
    code, text, _ = run(
        [
            "sweep",
            "--noises",
            "gaussian:std=0.5;laplace:scale=0.5",
            "--lrs",
            "0.5,1",
            "--clips",
            "0.3,none",
            "--d",
            "30",
            "--T",
            "1",
            "--runs",
            "2",
            "--out",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    rows = (out / "sweep.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2
    assert len(list(out.glob("sweep_*.npz"))) == 2


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "r.npz"

    def half_then_crash(tmp):
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert list(tmp_path.iterdir()) == []
    # an existing good file survives a failed overwrite untouched
    p = ct.Problem.isotropic(10, ct.Gaussian(0.5))
    res = ct.simulate(p, 0.5, None, T=1.0, runs=2, n_records=3)
    save_result(res, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert target.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json", "r.npz"]


def test_load_result_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, t=np.array([0.0]), risk=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        r = load_result(path)
        _ = r.risk
    with pytest.raises(ValueError, match="does not exist"):
        load_result(tmp_path / "missing.npz")


def test_reproduce_list(capsys):
    code, text, _ = run(["reproduce", "--list"], capsys)
    assert code == 0 and [line.split()[0] for line in text.splitlines()[1:]] == list(cli_figures())


def cli_figures():
    from clipped_trip.cli import figure_registry

    return figure_registry()


# every quick figure is rendered and checked by tests/test_figures_render.py; here the command
# path once, on a cheap figure
@pytest.mark.parametrize("name", ["fig2"])
def test_quick_figures(name, tmp_path, capsys):
    code, text, err = run(["reproduce", name, "--quick", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    for ext in ("png", "pdf", "npz", "json"):
        assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert "jax" in meta["versions"]


def test_console_script_errors_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "clipped_trip.cli", "simulate", "--noise", "nope:x=1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown noise law" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "clipped_trip.cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "demo" in proc.stdout


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["isotropic", "power-law", "two-level"]),
    st.dictionaries(
        st.sampled_from(["alpha", "high", "low", "fraction", "x"]), st.floats(0, 5), max_size=3
    ),
)
def test_spectrum_parser_property(name, params):
    spec = name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
    try:
        parsed, kw = cli.parse_spectrum(spec)
    except ValueError as err:
        assert str(err)
        return
    assert parsed == name and set(kw) == set(params)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["lr", "clip", "T", "runs", "d", "bogus"]),
        st.one_of(
            st.floats(-5, 5), st.integers(-5, 500), st.text(alphabet="abcxyz019 .:=,-", max_size=8)
        ),
        max_size=4,
    )
)
def test_config_parser_property(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    lines = [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in data.items()]
    path.write_text("\n".join(lines) + "\n")
    try:
        cfg = cli.load_config(path)
    except cli.UserError as err:
        assert "bogus" in data and "unknown key" in str(err)
        return
    assert cfg == data


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=60))
def test_config_parser_never_crashes_on_garbage(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_bytes(blob)
    try:
        cli.load_config(path)
    except cli.UserError as err:
        assert "\n" not in str(err).strip() or "TOML" in str(err)
