"""Sweep specs and the result store: serialisation, cells and units, resume, refusal, table.

Small on purpose (d = 20, a few runs, T = 1, run_chunk 4: one compiled program shared by the
tests of this file)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._backends import run_sweep
from clipped_trip._store import TABLE_COLUMNS, SweepStore, load_sweep
from clipped_trip._sweep_spec import SweepSpec, WorkUnit

from _helpers import simulate_cell

ROOT = Path(__file__).resolve().parents[1]

TOML = """
runs = 6
T = 1.0
n_records = 5
block = 4
run_chunk = 4

[problem]
spectrum = "power-law:alpha=0.2"
d = 20
noise = "student-t:df=3,scale=0.5"

[algorithm]
name = "clipped"

[axes]
lr = [0.5, 1.0]
clip = [0.5, "none"]
"""


def small_spec(**changes):
    spec = SweepSpec.from_toml(TOML)
    return dataclasses.replace(spec, **changes) if changes else spec


def same_paths(a, b):
    assert np.array_equal(a.t, b.t)
    assert np.array_equal(a.risk, b.risk)
    assert np.array_equal(a.diverged, b.diverged)
    assert np.array_equal(a.divergence_time, b.divergence_time, equal_nan=True)
    assert sorted(a.stats) == sorted(b.stats)
    for k in a.stats:
        assert np.array_equal(a.stats[k], b.stats[k])


# --- the spec ----------------------------------------------------------------------------------
def test_spec_round_trips_through_json_and_toml_files(tmp_path):
    spec = small_spec()
    assert SweepSpec.from_json(spec.to_json()) == spec
    path = tmp_path / "s.json"
    spec.to_json(path)
    assert SweepSpec.from_file(path) == spec
    toml = tmp_path / "s.toml"
    toml.write_text(TOML)
    assert SweepSpec.from_file(toml) == spec
    assert spec.axes["clip"] == (0.5, None)  # "none" is no clipping
    data = json.loads(spec.to_json())  # strict JSON, axes in order
    assert list(data["axes"]) == ["lr", "clip"]
    assert SweepSpec.from_dict(data).fingerprint == spec.fingerprint
    # the axis order is part of the identity (it orders the cells)
    swapped = dataclasses.replace(spec, axes={"clip": [0.5, None], "lr": [0.5, 1.0]})
    assert swapped != spec and swapped.differences(spec) == ["axes (order)"]


def test_cells_units_and_axes_over_noise_parameters():
    spec = SweepSpec(
        problem={"d": 20, "noise": "student-t:df=3,scale=0.5"},
        algorithm={"name": "DPSGD", "clip": 1.0, "batch": 2},
        axes={"noise.df": [2.5, 5], "noise_multiplier": [0.0, 1.0, 2.0], "lr": 0.5},
        runs=10,
        T=1.0,
        block=4,
    )
    assert spec.algorithm["name"] == "dpsgd" and spec.n_cells == 6
    assert spec.cells()[4] == spec.cell(4) == {"noise.df": 5.0, "noise_multiplier": 1.0, "lr": 0.5}
    problem, alg = spec.build(4)
    assert problem.noise == ct.StudentT(5.0, 0.5)
    assert isinstance(alg, ct.DPSGD) and alg.noise_multiplier == 1.0 and alg.batch == 2
    units = spec.units()
    assert [u.runs for u in units[:3]] == [4, 4, 2] and len(units) == 18
    assert WorkUnit.from_id(units[5].id) == units[5]
    # default block: one run chunk of the cell's width (simulate's automatic chunk)
    auto = dataclasses.replace(spec, block=None, runs=300)
    assert auto.block_of(0) == 256 and [u.runs for u in auto.units()[:2]] == [256, 44]


@pytest.mark.parametrize(
    "name,params,kind",
    [
        ("clipped", {"clip": 0.5, "batch": 2, "clip_mode": "mean"}, ct.ClippedSGD),
        ("quantile", {"clip": 0.5, "quantile": 0.5, "clip_lr": 0.01}, ct.QuantileClipSGD),
        ("autoclip", {"percentile": 50}, ct.AutoClipSGD),
        ("value", {"clip": 0.3}, ct.ValueClipSGD),
        ("SignSGD", {}, ct.SignSGD),
    ],
)
def test_every_algorithm_by_name(name, params, kind):
    spec = SweepSpec(problem={"d": 20}, algorithm={"name": name, **params}, axes={"lr": [0.3]})
    assert isinstance(spec.build(0)[1], kind)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(algorithm="adam"), "unknown algorithm 'adam'"),
        (dict(algorithm={"name": "sign", "clip": 1.0}), "unknown parameter 'clip'"),
        (dict(axes={"momentum": [0.9]}), "'momentum' is not a parameter"),
        (dict(axes={"lr": []}), "'lr' has no values"),
        (dict(axes={"lr": [0.5, 0.5]}), "repeats a value"),
        (dict(problem={"dim": 3}), "unknown key"),
        (dict(runs=0), "runs must be an integer >= 1"),
        (dict(dtype="float16"), "dtype must be"),
    ],
)
def test_bad_specs_are_refused_in_one_line(kwargs, match):
    base = dict(problem={"d": 20}, algorithm="clipped", axes={"lr": [0.5]})
    with pytest.raises(ValueError, match=match) as err:
        SweepSpec(**{**base, **kwargs})
    assert "\n" not in str(err.value)


def test_invalid_cell_is_named_before_any_work(tmp_path):
    spec = SweepSpec(
        problem={"d": 20},
        algorithm={"name": "dpsgd", "batch": 1, "clip": 1.0},
        axes={"noise_multiplier": [1.0]},
        runs=2,
        T=1.0,
    )
    bad = dataclasses.replace(spec, axes={"noise_multiplier": [1.0], "noise.std": [0.5, -1.0]})
    with pytest.raises(ValueError, match="sweep cell 1 .*noise.std=-1.0"):
        run_sweep(bad, tmp_path / "s", progress=False)
    with pytest.raises(
        ValueError, match=r"sweep cell 0 \(lr=-1.0, noise_multiplier=1.0\): lr must be in"
    ):
        dataclasses.replace(spec, axes={"lr": [-1.0], "noise_multiplier": [1.0]}).validate()
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="not a sweep spec format|TOML"):
        SweepSpec.from_toml("runs = [")


# --- the store ---------------------------------------------------------------------------------
def test_sweep_equals_simulate_per_cell_and_block_size_does_not_matter(tmp_path):
    spec = small_spec()
    a = run_sweep(spec, tmp_path / "a", progress=False)
    b = run_sweep(dataclasses.replace(spec, block=1), tmp_path / "b", progress=False)
    assert a.complete and b.complete and a.units_total == 8 and b.units_total == 24
    for i in range(spec.n_cells):
        same_paths(a.cell(i), simulate_cell(spec, i))
        same_paths(b.cell(i), a.cell(i))
    assert a.table == b.table
    assert list(a.table[0]) == ["cell", "lr", "clip", *TABLE_COLUMNS]
    row = a.table[1]
    assert (row["lr"], row["clip"], row["runs_done"]) == (0.5, "none", 6)
    ref = simulate_cell(spec, 1)
    assert row["mean_final_risk"] == float(ref.mean()[-1])
    assert row["se"] == float(ref.std_error()[-1])
    assert row["band_lo"] <= row["median_final_risk"] <= row["band_hi"]
    assert row["diverged"] == 0
    assert abs(row["rel_gap"]) < 0.5 and row["ode_final_risk"] > 0  # d = 20: a rough match
    assert np.isclose(row["rel_gap"], row["mean_final_risk"] / row["ode_final_risk"] - 1)


def test_store_layout_resume_and_table_rebuild(tmp_path):
    spec = small_spec()
    out = tmp_path / "s"
    first = run_sweep(spec, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json", "table.csv", "units"]
    assert SweepSpec.from_json(out / "sweep.json") == spec
    names = sorted(p.name for p in (out / "units").iterdir())
    assert names[:2] == ["c000000-r000000000-n4.json", "c000000-r000000000-n4.npz"]
    assert len(names) == 16
    meta = json.loads((out / "units" / names[0]).read_text())
    assert meta["sweep"]["axes"] == {"lr": 0.5, "clip": 0.5} and "ode" in meta
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    table = (out / "table.csv").read_text()
    again = run_sweep(spec, out, progress=False)  # resume of a finished sweep: nothing to do
    assert again.computed == () and len(again.skipped) == 8
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()} == stamps
    (out / "table.csv").unlink()
    loaded = load_sweep(out)
    assert (out / "table.csv").read_text() == table
    assert loaded.table == first.table and loaded.complete
    same_paths(loaded.cell(3), first.cell(3))


def test_changed_spec_is_refused_in_one_line(tmp_path):
    out = tmp_path / "s"
    run_sweep(small_spec(), out, progress=False)
    for change, key in ((dict(runs=8), "runs"), (dict(axes={"lr": [0.5]}), "axes.clip")):
        with pytest.raises(ValueError, match="holds a different sweep") as err:
            run_sweep(small_spec(**change), out, progress=False)
        assert key in str(err.value) and "\n" not in str(err.value)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a sweep store"):
        run_sweep(small_spec(), other, progress=False)


def test_ctrl_c_keeps_finished_units_and_rerun_computes_the_rest(tmp_path):
    spec = small_spec()
    out = tmp_path / "s"

    def interrupt(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, progress=interrupt)
    store = SweepStore.open(out)
    assert len(store.finished_ids()) == 3
    partial = load_sweep(out)
    assert not partial.complete and partial.table[1]["runs_done"] == 4
    assert partial.table[3]["runs_done"] == 0 and partial.table[3]["mean_final_risk"] is None
    with pytest.raises(ValueError, match="cell 1: 1 of 2 work units are not finished"):
        partial.cell(1)
    done = run_sweep(spec, out, progress=False)
    assert len(done.computed) == 5 and done.complete
    for i in range(spec.n_cells):
        same_paths(done.cell(i), simulate_cell(spec, i))


KILL_SCRIPT = """
import sys, time
import jax
jax.config.update("jax_enable_x64", True)
from clipped_trip._backends import run_sweep
from clipped_trip._sweep_spec import SweepSpec
spec = SweepSpec.from_json(sys.argv[1])
run_sweep(spec, sys.argv[2], progress=lambda done, total: time.sleep(0.3))
"""


def test_killed_sweep_resumes_and_recomputes_only_unfinished_units(tmp_path):
    spec = small_spec(block=1)  # 24 units of one run
    out = tmp_path / "s"
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    env = {**os.environ, "CLIPPED_TRIP_NO_CACHE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), spec.to_json(), str(out)], cwd=ROOT, env=env
    )
    units = out / "units"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if units.is_dir() and len(list(units.glob("*.npz"))) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in units.glob("*.npz")}
    assert 3 <= len(before) < 24
    res = run_sweep(spec, out, progress=False)
    assert res.complete
    assert set(res.computed) == {u.id for u in spec.units()} - {n[:-4] for n in before}
    assert {n: (units / n).stat().st_mtime_ns for n in before} == before  # not rewritten
    for i in range(spec.n_cells):
        same_paths(res.cell(i), simulate_cell(spec, i))


def test_table_has_no_ode_columns_where_the_ode_fails(tmp_path, monkeypatch):
    import clipped_trip._ode as ode

    def broken(*args, **kwargs):
        raise ValueError("no ODE here")

    monkeypatch.setattr(ode, "solve_ode", broken)
    spec = small_spec(axes={"lr": [0.5]})
    res = run_sweep(spec, tmp_path / "s", progress=False)
    row = res.table[0]
    assert row["ode_final_risk"] is None and row["rel_gap"] is None
    assert row["mean_final_risk"] > 0
    meta = json.loads((tmp_path / "s/units/c000000-r000000000-n4.json").read_text())
    assert "no ODE here" in meta["ode"]["error"]
    no_ode = run_sweep(dataclasses.replace(spec, ode=False), tmp_path / "t", progress=False)
    assert no_ode.table[0]["ode_final_risk"] is None
