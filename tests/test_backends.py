"""Backends of run_sweep: in-process, devices (JAX sharding; 2 forced CPU devices in a
subprocess), Dask (LocalCluster; a worker killed mid-sweep). Every backend gives the arrays of
plain ``simulate``, bit for bit."""

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clipped_trip._backends import MissingExtraError, add_arguments, cli_command, run_sweep
from clipped_trip._store import load_sweep
from clipped_trip._sweep_spec import SweepSpec

from _helpers import simulate_cell

ROOT = Path(__file__).resolve().parents[1]


def clipped_spec(**changes):
    """Two kernels (batch 1 and 2) x clip on / off, non-centred data (extra statistics)."""
    spec = SweepSpec(
        problem={"d": 20, "noise": "student-t:df=3,scale=0.5", "data_mean": "e1:0.5"},
        algorithm={"name": "clipped", "lr": 0.8},
        axes={"batch": [1, 2], "clip": [0.5, None]},
        runs=6,
        T=1.0,
        n_records=5,
        block=4,
        run_chunk=4,
    )
    return dataclasses.replace(spec, **changes) if changes else spec


def simple_spec():
    """One kernel (the shapes of tests/test_store.py: programs compiled once per session)."""
    return dataclasses.replace(
        clipped_spec(),
        problem={"d": 20, "noise": "student-t:df=3,scale=0.5"},
        algorithm="clipped",
        axes={"lr": [0.5, 1.0], "clip": [0.5, None]},
    )


def quantile_spec():
    """An algorithm with a state (the tracked threshold)."""
    return SweepSpec(
        problem={"d": 20, "noise": "gaussian:std=0.5"},
        algorithm={"name": "quantile", "clip": 0.5, "quantile": 0.5, "clip_lr": 0.05},
        axes={"lr": [0.5, 1.0]},
        runs=6,
        T=1.0,
        n_records=5,
        block=4,
        run_chunk=4,
    )


def assert_equals_simulate(spec, res):
    assert res.complete
    for i in range(spec.n_cells):
        ref = simulate_cell(spec, i)
        got = res.cell(i)
        assert np.array_equal(got.t, ref.t) and np.array_equal(got.samples, ref.samples)
        assert np.array_equal(got.risk, ref.risk), f"cell {i}"
        assert np.array_equal(got.diverged, ref.diverged)
        assert sorted(got.stats) == sorted(ref.stats)
        for k in ref.stats:
            assert np.array_equal(got.stats[k], ref.stats[k]), (i, k)
        assert got.params["algorithm"] == ref.params["algorithm"]


def test_devices_on_one_device_equals_inprocess(tmp_path):
    spec = simple_spec()
    dev = run_sweep(spec, tmp_path / "dev", backend="devices", progress=False)
    assert_equals_simulate(spec, dev)
    inproc = run_sweep(spec, tmp_path / "in", progress=False)
    assert dev.table == inproc.table


DEVICES_SCRIPT = """
import sys
import jax
jax.config.update("jax_enable_x64", True)
assert jax.device_count() == 2, jax.devices()
from clipped_trip._backends import run_sweep
from clipped_trip._sweep_spec import SweepSpec
for i, path in enumerate(sys.argv[2:]):
    run_sweep(SweepSpec.from_json(path), f"{sys.argv[1]}/s{i}", backend="devices", progress=False)
print("devices:", jax.device_count())
"""


def test_devices_with_two_forced_cpu_devices_equals_simulate(tmp_path):
    specs = [clipped_spec(), quantile_spec()]  # two kernels, extra statistics; a state
    paths = []
    for i, spec in enumerate(specs):
        paths.append(str(tmp_path / f"spec{i}.json"))
        spec.to_json(paths[-1])
    script = tmp_path / "devices.py"
    script.write_text(textwrap.dedent(DEVICES_SCRIPT))
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "CLIPPED_TRIP_NO_CACHE": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "devices: 2" in proc.stdout
    for i, spec in enumerate(specs):
        assert_equals_simulate(spec, load_sweep(tmp_path / f"s{i}"))


def test_backend_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of inprocess, devices, dask"):
        run_sweep(clipped_spec(), tmp_path / "s", backend="mpi")
    with pytest.raises(ValueError, match="apply to backend 'dask', not 'inprocess'"):
        run_sweep(clipped_spec(), tmp_path / "s", workers=2)
    with pytest.raises(ValueError, match="not both"):
        run_sweep(clipped_spec(), tmp_path / "s", backend="dask", workers=2, scheduler="x")


def test_missing_dask_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(MissingExtraError, match=r"clipped_trip\[dask\]") as err:
        run_sweep(clipped_spec(), tmp_path / "s", backend="dask", workers=1)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert not (tmp_path / "s").exists()


def test_cli_command_runs_and_resumes_from_the_store(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    spec_path = tmp_path / "spec.json"
    clipped_spec(axes={"clip": [0.5]}).to_json(spec_path)
    out = tmp_path / "s"
    assert cli_command(parser.parse_args([str(spec_path), "--out", str(out), "--quiet"])) == 0
    assert "2 units computed, 0 already there; 2 of 2 done (1 cells)" in capsys.readouterr().out
    assert cli_command(parser.parse_args(["--out", str(out), "--quiet"])) == 0  # resume
    assert "0 units computed, 2 already there" in capsys.readouterr().out


# --- Dask --------------------------------------------------------------------------------------
def test_dask_local_cluster_equals_simulate(tmp_path):
    pytest.importorskip("distributed")
    spec = simple_spec()
    res = run_sweep(spec, tmp_path / "s", backend="dask", workers=2, progress=False)
    assert len(res.computed) == 8 and res.backend == "dask"
    assert_equals_simulate(spec, res)
    inproc = run_sweep(spec, tmp_path / "in", progress=False)
    assert res.table == inproc.table


def test_dask_worker_killed_mid_sweep_still_completes(tmp_path):
    distributed = pytest.importorskip("distributed")
    from clipped_trip._backends import local_cluster

    # units of ~0.1-0.5 s each (T = 3000: ~40k steps), so that some are running at the kill
    spec = dataclasses.replace(simple_spec(), axes={"clip": [0.5, 1.0]}, T=3000.0, ode=False)
    killed = {}
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:

        def kill_one(done, total):
            if killed:
                return
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                killed["worker"], killed["pid"] = busy[0], pid
                killed["keys"] = list(client.processing()[busy[0]])
                os.kill(pid, signal.SIGKILL)

        res = run_sweep(
            spec,
            tmp_path / "s",
            backend="dask",
            scheduler=cluster.scheduler_address,
            progress=kill_one,
        )
        assert killed, "no unit was running to be killed"
        assert killed["keys"]
        pids = client.run(os.getpid)
        assert killed["pid"] not in pids.values()  # the nanny started a new worker
        # run_sweep's own client neither replaced nor cleared the caller's default client
        assert distributed.default_client() is client
    assert len(res.computed) == len(spec.units()) == 4
    assert_equals_simulate(spec, res)
