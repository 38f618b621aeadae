"""Trust of the command line: one-line user errors (exit 2, nothing written, no computation),
no silent disagreement between options, strict configs and sidecars, honest messages."""

import json
import os
import time

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip import cli
from clipped_trip._io import load_result

from _helpers import assert_user_error, no_files, run

TINY = ["--d", "20", "--T", "0.5", "--runs", "2", "--n-records", "5"]
TINY_ODE = ["--d", "20", "--T", "0.5", "--n-records", "5"]


# --- class 1: every user error is one line, exit 2; internal bugs keep their traceback ----------
@pytest.mark.parametrize(
    "argv,needle",
    [
        (["simulate", "--d", "abc"], "--d"),
        (["simulate", "--d", "2.5"], "--d"),
        (["simulate", "--runs", "many"], "--runs"),
        (["simulate", "--bogus", "1"], "--bogus"),
        (["simulate", "--lr", "abc"], "--lr"),
        (["simulate", "--lr", "inf"], "lr"),
        (["simulate", "--T", "-inf"], "T"),
        (["simulate", "--T", "1e20"], "T"),
        (["simulate", "--T", "1e400"], "T"),
        (["simulate", "--runs", "100000000000000000000"], "runs"),
        (["simulate", "--n-records", "1000000000"], "n-records"),
        (["simulate", "--seed", "99999999999999999999"], "seed"),
        (["simulate", "--clip-mode", "sum"], "clip"),
        (["sde", "--dt", "nan"], "dt"),
        (["factors", "--risk", "1,abc"], "risk"),
        (["factors", "--clip", "0"], "clip"),
        (["criteria", "--risk", "0.1,1"], "risk"),
        (["criteria", "--clip", "none"], "clip"),
        (["rerun"], "FILE.json"),
        (["simulate", "--lr", "0.5", "--lr", "0.7"], "--lr"),
        (["demo", "--out", ""], "--out"),
        (["reproduce", "fig2", "--out", " "], "--out"),
    ],
)
def test_user_errors_are_one_line(argv, needle, capsys, tmp_path):
    out = tmp_path / "out"
    given_out = argv[0] == "rerun" or "--out" in argv
    code, _, err = run(argv + ([] if given_out else ["--out", str(out)]), capsys)
    assert_user_error(code, err, argv[0], needle)
    assert no_files(out)


def test_top_level_error_is_one_line(capsys):
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("clipped-trip: error:") and "usage" not in err


def test_internal_bug_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(ct, "simulate", broken)
    with pytest.raises(KeyError):
        cli.main(["simulate", *TINY, "--out", str(tmp_path / "o")])
    monkeypatch.setattr(ct, "simulate", lambda *a, **k: None.risk)
    with pytest.raises(AttributeError):
        cli.main(["simulate", *TINY, "--out", str(tmp_path / "o")])


# --- class 2: singular / plural options never silently disagree -------------------------------
def test_sweep_singular_options_are_used(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["sweep", "--clip", "0.4", "--lrs", "0.5", *TINY, "--out", str(out), "--quiet", "--plot"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    rows = (out / "sweep.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1:3] == ["0.5", "0.4"]
    meta = json.loads(next(out.glob("sweep_*.json")).read_text())
    assert meta["params"]["clips"] == [0.4]
    assert (out / "sweep.png").stat().st_size > 0  # --plot writes a heat map


@pytest.mark.parametrize(
    "argv,names",
    [
        (["--lr", "0.5", "--lrs", "0.5,1"], ("--lr", "--lrs")),
        (["--clip", "0.4", "--clips", "none"], ("--clip", "--clips")),
        (["--noise", "gaussian:std=1", "--noises", "laplace:scale=1"], ("--noise", "--noises")),
        (["--lrs", ""], ("lrs",)),
        (["--lrs", ","], ("lrs",)),
        (["--clips", "0.3,,1"], ("clips",)),
        (["--noises", ";"], ("noises",)),
    ],
)
def test_sweep_conflicting_or_empty_lists(argv, names, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(["sweep", *argv, *TINY, "--out", str(out), "--quiet"], capsys)
    assert_user_error(code, err, "sweep", *names)
    assert no_files(out)


# --- class 3: configs are checked per command (keys and types) --------------------------------
@pytest.mark.parametrize(
    "command,text,needle",
    [
        ("factors", "risk = [0.1]\nclips = [1.0]\n", "clips"),
        ("factors", "risks = [0.1]\n", "risks"),
        ("criteria", "clips_grid = [1.0]\n", "clips_grid"),
        ("simulate", "lrs = [0.5]\n", "lrs"),
        ("simulate", "clips = [0.5]\n", "clips"),
        ("simulate", "dt = 0.1\n", "dt"),
        ("ode", "runs = 3\n", "runs"),
        ("simulate", 'plot = "no"\n', "plot"),
        ("simulate", "T = true\n", "T"),
        ("simulate", "d = 2.5\n", "d"),
        ("simulate", 'runs = "16"\n', "runs"),
        ("simulate", "lr = [0.5]\n", "lr"),
        ("simulate", "clip = true\n", "clip"),
        ("simulate", 'clip_mode = "sum"\n', "clip_mode"),
        ("simulate", "batch = 0\n", "batch"),
        ("simulate", "noise = 3\n", "noise"),
        ("sweep", "lr = 0.5\nlrs = [0.5, 1.0]\n", "lrs"),
        ("sweep", "lrs = []\n", "lrs"),
        ("criteria", "risk = [0.1, 1.0]\n", "risk"),
    ],
)
def test_config_keys_and_types(command, text, needle, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "o"
    code, _, err = run([command, "--config", str(cfg), "--out", str(out)], capsys)
    assert_user_error(code, err, command, needle)
    assert no_files(out)


def test_config_values_used_and_help_lists_keys(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('noise = "laplace:scale=1"\nrisk = [0.1, 1.0]\nclip = [1.0, "none"]\n')
    code, text, err = run(["factors", "--config", str(cfg)], capsys)
    assert code == 0, err
    rows = [r.split(",")[:2] for r in text.splitlines()[1:]]
    assert rows == [["0.1", "1"], ["0.1", "inf"], ["1", "1"], ["1", "inf"]]
    for command in ("simulate", "ode", "sde", "sweep", "factors", "criteria"):
        code, text, _ = run([command, "--help"], capsys)
        assert code == 0
        line = next(x for x in text.splitlines() if x.startswith("config keys"))
        for key in cli.SCHEMAS[command]:
            assert f"{key} (" in line


# --- class 4: a bad --out is refused before any computation -----------------------------------
def bad_outs(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    outs = [str(afile), str(afile / "sub"), "/proc/clipped_trip_x/y"]
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        outs.append(str(ro))
    return outs


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", *TINY],
        ["ode", *TINY_ODE],
        ["sde", *TINY],
        ["sweep", *TINY, "--quiet"],
        ["factors"],
        ["criteria"],
        ["demo", "--quiet"],
        ["reproduce", "fig2", "--quick", "--quiet"],
    ],
)
def test_bad_out_refused_before_computing(argv, tmp_path, capsys, monkeypatch):
    calls = []
    for name in ("simulate", "simulate_sde", "solve_ode", "sweep", "reduction_factors", "ccc"):
        monkeypatch.setattr(ct, name, lambda *a, _n=name, **k: calls.append(_n))
    for out in bad_outs(tmp_path):
        t0 = time.perf_counter()
        code, _, err = run([*argv, "--out", out], capsys)
        assert time.perf_counter() - t0 < 0.5
        assert_user_error(code, err, argv[0], out)
    assert calls == []
    assert (tmp_path / "afile").read_text() == "x"


def test_out_folder_created_by_a_failed_run_is_removed(tmp_path, capsys):
    out = tmp_path / "new" / "deeper"
    code, _, err = run(["simulate", "--d", "20", "--T", "1e20", "--out", str(out)], capsys)
    assert_user_error(code, err, "simulate", "steps")
    assert not (tmp_path / "new").exists()


# --- class 5: rerun checks the sidecar like a config -------------------------------------------
@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    out = tmp_path_factory.mktemp("side") / "o"
    argv = ["simulate", *TINY, "--clip", "0.3", "--batch", "2", "--clip-mode", "mean"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    return out / "simulate.json"


def test_rerun_bit_identical_with_batch_and_clip_mode(sidecar, tmp_path, capsys):
    code, _, err = run(["rerun", str(sidecar), "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    a = load_result(sidecar.with_suffix(".npz"))
    b = load_result(tmp_path / "again" / "simulate.npz")
    np.testing.assert_array_equal(a.risk, b.risk)
    meta = json.loads((tmp_path / "again" / "simulate.json").read_text())
    assert meta["config"]["batch"] == 2 and meta["config"]["clip_mode"] == "mean"


def _edit(meta, how):
    meta = json.loads(json.dumps(meta))
    how(meta)
    return meta


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda m: m["config"].__setitem__("d", None), "d must be"),
        (lambda m: m["config"].__setitem__("T", True), "T must be"),
        (lambda m: m["config"].__setitem__("runs", "2"), "runs must be"),
        (lambda m: m["config"].__setitem__("lr", [0.5]), "lr must be"),
        (lambda m: m["config"].__setitem__("bogus", 1), "bogus"),
        (lambda m: m["config"].__setitem__("dt", 0.01), "dt"),
        (lambda m: m["config"].pop("seed"), "seed"),
        (lambda m: m["config"].pop("batch"), "batch"),
        (lambda m: m.__setitem__("command", "sweep"), "sweep"),
        (lambda m: m.__setitem__("config", [1, 2]), "config"),
        (lambda m: m["params"].__setitem__("kind", "ode"), "kind"),
    ],
)
def test_rerun_refuses_bad_sidecars(sidecar, change, needle, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edit(json.loads(sidecar.read_text()), change)))
    out = tmp_path / "o"
    code, _, err = run(["rerun", str(bad), "--out", str(out)], capsys)
    assert_user_error(code, err, "rerun", needle)
    assert not out.exists()


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "null", "{not json", ""])
def test_rerun_refuses_non_objects(text, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    code, _, err = run(["rerun", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "rerun", "not a sidecar")


def test_rerun_refuses_a_sweep_sidecar(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(["sweep", *TINY, "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    side = next(out.glob("sweep_*.json"))
    code, _, err = run(["rerun", str(side), "--out", str(tmp_path / "r")], capsys)
    assert_user_error(code, err, "rerun", "sweep")


# --- class 6: spec parsing, file names, help ---------------------------------------------------
@pytest.mark.parametrize(
    "option,spec,needle",
    [
        ("--spectrum", "two-level:high=1,high=2", "twice"),
        ("--spectrum", "two-level:high=1e400", "high"),
        ("--spectrum", "two-level:high=1e308,low=1", "overflow"),
        ("--spectrum", "power-law:alpha=nan", "alpha"),
        ("--noise", "gaussian:std=1,std=2", "twice"),
        ("--noise", "gaussian:std=1e400", "std"),
        ("--noise", "gaussian:std=1e300", "overflow"),
        ("--noise", "student-t:df=3,scale=1e200", "overflow"),
        ("--noise", "cauchy:scale=1e200", "overflow"),
    ],
)
def test_spec_errors(option, spec, needle, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(["simulate", option, spec, *TINY, "--out", str(out)], capsys)
    assert_user_error(code, err, "simulate", needle)
    assert no_files(out)
    if option == "--noise":
        code, _, err = run(["factors", "--noise", spec], capsys)
        assert_user_error(code, err, "factors", needle)


def test_sweep_file_names_are_safe_and_unique(tmp_path, capsys):
    out = tmp_path / "o"
    spec = "discrete:values=-1/2,probs=0.5/0.5"
    argv = ["sweep", "--noises", f"{spec};{spec}", *TINY, "--out", str(out), "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert all(p.is_file() for p in out.iterdir())  # no nested folders
    names = sorted(p.name for p in out.glob("sweep_*.npz"))
    assert len(names) == 2
    for name in names:
        assert all(ch.isalnum() or ch in "._-" for ch in name)


def test_help_shows_defaults_and_units(capsys):
    code, text, _ = run(["simulate", "--help"], capsys)
    flat = " ".join(text.split())
    assert code == 0
    for needle in ("default 16", "default 0", "default 101", "D = tr K", "t = steps / D"):
        assert needle in flat
    assert "residual units" in flat and "unclipped" in flat
    code, text, _ = run(["sde", "--help"], capsys)
    assert "default 0.01" in " ".join(text.split())
    code, text, _ = run(["sweep", "--help"], capsys)
    assert "no progress bar" in text
    for command in ("factors", "criteria"):
        code, text, _ = run([command, "--help"], capsys)
        assert "default gaussian:std=0.5" in " ".join(text.split())


# --- class 7: KeyboardInterrupt -----------------------------------------------------------------
def test_interrupt_message_is_true(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ct, "simulate", interrupted)
    out = tmp_path / "fresh"
    code, _, err = run(["simulate", *TINY, "--out", str(out)], capsys)
    assert code == 130
    assert err.strip() == "clipped-trip simulate: interrupted"
    assert not out.exists()  # the folder it made (still empty) is gone again
