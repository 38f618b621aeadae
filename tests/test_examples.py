"""Every file in examples/ works: each TOML config runs through its CLI command (in-process, with
options that make it small) and documents every key; each script runs with --quick.

The command of a config is named on its first line: ``# clipped-trip COMMAND ...``.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.toml"))
SCRIPTS = sorted(EXAMPLES.glob("*.py"))

# options that make a config small (the command line overrides the file). d = 100 and the
# batch of 16 match the scripts' --quick runs, so that the compiled programs are shared (JAX
# compiles once per dimension, noise law and kernel; T, runs and records do not matter).
SMALL = ["--d", "100", "--T", "1", "--n-records", "5"]
OVERRIDES = {
    "simulate": SMALL + ["--runs", "2"],
    "sde": SMALL + ["--runs", "2"],
    "sweep": SMALL + ["--runs", "2", "--quiet"],
    "ode": SMALL,
    "factors": [],
    "criteria": [],
    "privacy": [],
}
# what each command writes into --out (privacy in its one-line uses writes nothing)
WRITES = {
    "simulate": ["simulate.npz", "simulate.json"],
    "sde": ["sde.npz", "sde.json"],
    "ode": ["ode.npz", "ode.json"],
    "sweep": ["sweep.csv"],
    "factors": ["factors.csv"],
    "criteria": ["criteria.csv"],
}


def command_of(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    m = re.match(r"#\s*clipped-trip\s+([a-z-]+)\b", first)
    assert m, f"{path.name}: the first line must say how to run it (# clipped-trip COMMAND ...)"
    return m.group(1)


def documented_keys(path: Path) -> set[str]:
    """Keys set (``key = ``) or shown commented out (``# key = ``) at the start of a line."""
    keys = re.findall(r'^#?\s*"?([A-Za-z_][A-Za-z0-9_.]*)"?\s*=', path.read_text(), re.M)
    return set(keys)


def ids(paths):
    return [p.name for p in paths]


def test_examples_exist():
    assert CONFIGS and SCRIPTS
    commands = {command_of(p) for p in CONFIGS}
    missing = set(cli.SCHEMAS) - commands
    assert not missing, f"no example config for the command(s) {sorted(missing)}"


@pytest.mark.parametrize("path", CONFIGS, ids=ids(CONFIGS))
def test_config_documents_every_key_and_validates(path):
    command = command_of(path)
    shown = documented_keys(path)
    if command == "run-sweep":
        from clipped_trip._sweep_spec import PROBLEM_KEYS, TOP_KEYS, SweepSpec

        missing = (set(TOP_KEYS) - {"problem", "algorithm", "axes"}) | set(PROBLEM_KEYS)
        missing -= shown
        assert not missing, f"{path.name} does not document {sorted(missing)}"
        spec = SweepSpec.from_toml(path).validate()
        assert spec.n_cells > 1
        return
    missing = set(cli.SCHEMAS[command]) - shown
    assert not missing, f"{path.name} does not document the key(s) {sorted(missing)}"
    cfg = cli.load_config(path, command)  # every key and type checked against the schema
    for spec in cfg.get("noises") or ([cfg["noise"]] if "noise" in cfg else []):
        ct.parse_noise(spec)
    if "spectrum" in cfg:
        cli.parse_spectrum(cfg["spectrum"])


@pytest.mark.parametrize("path", CONFIGS, ids=ids(CONFIGS))
def test_config_runs_small(path, tmp_path, capsys):
    command = command_of(path)
    out = tmp_path / "out"
    if command == "run-sweep":
        from clipped_trip._sweep_spec import SweepSpec

        data = SweepSpec.from_toml(path).to_dict()
        data["problem"]["d"] = 100
        data.update(runs=2, T=1.0, n_records=5, block=None)
        data["axes"] = {k: v[:1] for k, v in data["axes"].items()}  # one cell
        small = tmp_path / "spec.json"
        SweepSpec.from_dict(data).to_json(small)
        code = cli.main(["run-sweep", str(small), "--out", str(out), "--quiet"])
        text, err = capsys.readouterr()
        assert code == 0, err
        assert (out / "table.csv").is_file()
        return
    argv = [command, "--config", str(path), *OVERRIDES[command]]
    if cli.load_config(path, command).get("batch", 1) > 1:
        argv += ["--batch", "16"]
    if command == "sweep":  # one of its noise laws is enough here (each compiles once)
        noises = cli.load_config(path, "sweep").get("noises")
        if noises and len(noises) > 1:
            argv += ["--noises", noises[-1]]
    if command != "privacy":
        argv += ["--out", str(out)]
    code = cli.main(argv)
    text, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    for name in WRITES.get(command, []):
        assert (out / name).is_file(), f"{path.name}: {command} did not write {name}"
    if command == "privacy":
        assert "epsilon" in text


@pytest.mark.parametrize("path", SCRIPTS, ids=ids(SCRIPTS))
def test_script_runs_quick(path, capsys):
    namespace = runpy.run_path(str(path), run_name="example")  # defines main, runs nothing
    result = namespace["main"](["--quick"])
    text, _ = capsys.readouterr()
    assert text.strip(), f"{path.name} printed nothing"
    gaps = [result["gap"]] if "gap" in result else [v["gap"] for v in result.values()]
    for gap in gaps:  # SGD's mean against the ODE, small d and few runs: loose
        assert np.isfinite(gap) and gap < 0.25, f"{path.name}: SGD vs ODE gap {gap:.1%}"
