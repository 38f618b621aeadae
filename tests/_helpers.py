"""Helpers shared by several test files (imported as ``from _helpers import ...``: pytest puts
this folder on sys.path, as for ``tolerances``)."""

import json

import numpy as np

import clipped_trip as ct
from clipped_trip import cli


# --- the command line ----------------------------------------------------------------------------
def run(argv, capsys):
    """cli.main(argv) -> (exit code, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse's own exit would be a defect
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, command, *needles):
    """One line ``clipped-trip COMMAND: error: ...`` holding each needle, exit 2, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"clipped-trip {command}: error:"), err
    assert "Traceback" not in err and "usage:" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def no_files(path):
    return not path.exists() or not any(path.rglob("*"))


# --- sweeps --------------------------------------------------------------------------------------
def simulate_cell(spec, i):
    """Cell i of a SweepSpec by plain simulate (all runs in one call): the reference the sweep
    backends and the store must match bit for bit."""
    problem, alg = spec.build(i)
    return ct.simulate(
        problem,
        alg,
        T=spec.T,
        runs=spec.runs,
        seed=spec.seed,
        n_records=spec.n_records,
        dtype=spec.dtype,
        run_chunk=spec.run_chunk,
        progress=False,
    )


# --- figures ---------------------------------------------------------------------------------
def figure_outputs(out, name):
    """A figure's four files in ``out`` are there and non-empty; its sidecar names it. Returns
    (the npz arrays as a dict, the sidecar)."""
    for ext in ("png", "pdf", "npz", "json"):
        assert (out / f"{name}.{ext}").stat().st_size > 0
    meta = json.loads((out / f"{name}.json").read_text())
    assert meta["figure"] == name
    with np.load(out / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}, meta
