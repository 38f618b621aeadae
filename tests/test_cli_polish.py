"""What a researcher sees on the command line: help text, pipeable CSV, the sweep's ODE columns,
the figure list with run times, figure scripts' usage, and figure files through load_result."""

import argparse
import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip import cli
from clipped_trip._io import FigureData, load_result

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # --help exits through argparse
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def subcommands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


# --- 1. help: every option explained, units and an example in every command's epilog ---------
def test_every_option_has_help_and_every_command_an_example():
    parser, commands = subcommands()
    assert "example:" in parser.epilog
    expected = {"demo", "simulate", "ode", "sde", "factors", "criteria", "sweep", "privacy"}
    expected |= {"rerun", "reproduce", "run-sweep"}
    assert expected <= set(commands)
    for name, p in commands.items():
        for action in p._actions:
            shown = action.option_strings or [action.dest]
            assert action.help and action.help.strip(), f"{name} {shown}: no help"
            assert action.help is not argparse.SUPPRESS, f"{name} {shown}: help suppressed"
        epilog = p.epilog or ""
        assert "example: clipped-trip " in epilog, f"{name}: no example in the epilog"
        flat = " ".join(epilog.split())
        for unit in ("D = tr K", "t = steps / D", "residual units", "c sqrt(D)"):
            assert unit in flat, f"{name}: epilog lacks {unit!r}"


@pytest.mark.parametrize("command", ["simulate", "factors", "criteria", "privacy", "run-sweep"])
def test_help_prints_defaults_units_and_example(command, capsys):
    code, text, _ = run([command, "--help"], capsys)
    flat = " ".join(text.split())
    assert code == 0 and "example: clipped-trip" in flat and "default" in flat
    assert "D = tr K" in flat and "t = steps / D" in flat
    if command == "simulate":  # no --clip: plain SGD, said in --clip's help
        assert "without --clip the run is plain, unclipped SGD" in flat


def test_figure_help_and_script_usage(capsys):
    code, text, _ = run(["reproduce", "fig2", "--help"], capsys)
    assert code == 0
    assert text.startswith("usage: clipped-trip reproduce fig2 [-h] [--quick] [--out DIR]")
    assert "CCC against c" in text and "example: python experiments/fig2.py" in text
    code, text, _ = run(["reproduce", "--help"], capsys)  # no figure: the command's help
    assert code == 0 and "--list" in text and "FIGURE" in text
    proc = subprocess.run(
        [sys.executable, "experiments/fig2.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: fig2.py [-h] [--quick] [--out DIR] [--quiet]")
    assert "Run time on 2 CPU cores" in " ".join(proc.stdout.split())


# --- 2. criteria / factors print pure CSV on stdout -------------------------------------------
def test_criteria_and_factors_stdout_is_pure_csv(tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    saved = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    out = tmp_path / "o"
    argv = ["criteria", "--noise", "student-t:df=3,scale=1", "--risk", "0.05"]
    code, text, err = run([*argv, "--clip", "0.5,1.07,2", "--out", str(out), "--plot"], capsys)
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["clip", "ccc", "csc", "critical_lr"] and len(rows) == 4
    assert [r[0] for r in rows[1:]] == ["0.5", "1.07", "2"]
    assert all(len(r) == 4 and float(r[1]) > 0 for r in rows[1:])
    assert "max CCC = 1.849" in err and "wrote" in err and "wrote" not in text
    # the plot spans the clips asked for, not the default 0.01 ... 100
    (fig,) = saved
    xs = np.concatenate([line.get_xdata() for line in fig.axes[0].get_lines()])
    xs = xs[xs > 0]
    assert xs.min() == pytest.approx(0.5) and xs.max() == pytest.approx(2.0)
    saved.clear()
    code, text, err = run(
        ["factors", "--risk", "0.1,1", "--clip", "0.3,3,none", "--out", str(out), "--plot"], capsys
    )
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["risk", "clip", "mu", "nu"] and len(rows) == 1 + 2 * 3
    assert "wrote" in err and "wrote" not in text
    (fig,) = saved
    xs = np.concatenate([line.get_xdata() for line in fig.axes[0].get_lines()])
    assert xs.min() == pytest.approx(0.3) and xs.max() == pytest.approx(3.0)


# --- 3. the sweep's table carries the ODE's prediction ----------------------------------------
def test_sweep_csv_has_ode_prediction_and_gap(tmp_path, capsys, monkeypatch):
    real = ct.solve_ode

    def solve_ode(problem, alg, **kw):
        if alg.lr == 1.0:
            raise ValueError("no deterministic equivalent here")
        return real(problem, alg, **kw)

    monkeypatch.setattr(ct, "solve_ode", solve_ode)
    out = tmp_path / "s"
    argv = ["sweep", "--noise", "cauchy:scale=0.5", "--lrs", "0.5,1", "--clips", "0.3,none"]
    argv += ["--d", "20", "--T", "0.5", "--runs", "2", "--n-records", "3", "--quiet"]
    code, _, err = run([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 4
    cell = {(r["lr"], r["clip"]): r for r in rows}
    ok = cell["0.5", "0.3"]
    problem = ct.Problem.power_law(20, 0.2, ct.StudentT(1.0, 0.5))
    sgd = load_result(next(out.glob("sweep_*.npz")))
    ode = real(problem, ct.ClippedSGD(0.5, 0.3), times=sgd.t)
    assert float(ok["ode_final_risk"]) == pytest.approx(float(ode.risk[-1]), rel=1e-9)
    gap = float(ok["final_mean_risk"]) / float(ok["ode_final_risk"]) - 1
    assert float(ok["rel_gap"]) == pytest.approx(gap, rel=1e-9)
    # unclipped Cauchy: the ODE diverges (inf), no gap; solve_ode raising: both blank
    assert cell["0.5", "inf"]["ode_final_risk"] == "inf" and cell["0.5", "inf"]["rel_gap"] == ""
    for c in ("0.3", "inf"):
        assert cell["1.0", c]["ode_final_risk"] == "" and cell["1.0", c]["rel_gap"] == ""


# --- 4. reproduce --list: description and run times -------------------------------------------
def test_reproduce_list_shows_descriptions_and_times(capsys, monkeypatch):
    figures = cli.figure_registry()
    code, text, err = run(["reproduce", "--list"], capsys)
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "full", "--quick", "description"]
    body = {line.split()[0]: line for line in lines[1:]}
    assert list(body) == list(figures)
    for name, (_, title) in figures.items():
        full, quick = cli.figure_times(name)
        cells = body[name][len(name) :].split("  ")
        assert [c.strip() for c in cells if c.strip()][:2] == [full, quick]
        assert body[name].endswith(title)
    assert set(cli.FIGURE_TIMES) <= set(figures)  # no time recorded for a figure not there
    monkeypatch.setattr(cli, "FIGURE_TIMES", {})
    code, text, _ = run(["reproduce", "--list"], capsys)
    assert text.splitlines()[1].split()[1:3] == ["?", "?"]


# --- 5. figure files through load_result ------------------------------------------------------
def test_load_result_reads_a_committed_figure(tmp_path):
    fig = load_result(ROOT / "figures" / "fig1.npz")
    assert isinstance(fig, FigureData) and fig.name == "fig1"
    assert fig.params["d"] == 500 and fig.params["runs"] == 100
    assert fig["case0_sgd"].shape == (100, fig["case0_t"].size)
    assert fig.arrays["case0_ode"].shape == fig["case0_t"].shape and "case1_ode" in fig
    grouped = load_result(ROOT / "figures" / "fig3.npz").groups()
    assert "mu" in grouped["Gaussian"] and grouped[""]["c"].ndim == 1
    # without its sidecar a figure's npz is not a result: the error says how to read it
    lone = tmp_path / "fig2.npz"
    shutil.copy(ROOT / "figures" / "fig2.npz", lone)
    with pytest.raises(ValueError, match="sidecar"):
        load_result(lone)
    # a sidecar of another npz is refused as for any result (figures written since 0.2 carry
    # the SHA-256 of their npz; older ones are loaded as they are)
    assert load_result(ROOT / "figures" / "minibatch.npz").meta["npz_sha256"]
    shutil.copy(ROOT / "figures" / "minibatch.json", tmp_path / "fig2.json")
    with pytest.raises(ValueError, match="do not belong together"):
        load_result(lone)
