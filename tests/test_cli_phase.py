"""clipped-trip phase: the CSV of the batched ODE, checked against solve_ode on one cell."""

import csv
import io

import pytest

import clipped_trip as ct
from clipped_trip.cli import main, make_problem


def test_phase_command_matches_solve_ode(tmp_path, capsys):
    code = main(
        [
            "phase",
            "--noises",
            "laplace:scale=0.5",
            "--lrs",
            "0.4,0.8",
            "--clips",
            "0.5,none",
            "--T",
            "2",
            "--d",
            "40",
            "--out",
            str(tmp_path / "ph"),
            "--plot",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4 and (tmp_path / "ph" / "phase.png").stat().st_size > 0
    row = next(r for r in rows if r["lr"] == "0.8" and r["clip"] == "0.5")
    p = make_problem("power-law:alpha=0.2", 40, ct.Laplace(0.5))
    ode = ct.solve_ode(p, ct.ClippedSGD(0.8, 0.5), T=2.0, n_records=2)
    assert float(row["final_risk"]) == pytest.approx(ode.risk[-1], rel=1e-6)


def test_phase_command_refuses_bad_input(capsys):
    assert main(["phase", "--lrs", "-1", "--d", "20"]) == 2
    err = capsys.readouterr().err
    assert "lr" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
