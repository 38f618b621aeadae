"""Trust in what the package writes, reads and samples: result files as one unit, loaders that
refuse bad files with ValueError, a Student-t sampler that never returns inf, and a max-CCC table
that keeps its accuracy where c* jumps to inf."""

import json
import math
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip import _io
from clipped_trip._criteria import _ratio
from clipped_trip._io import load_result, save_result
from clipped_trip._results import RiskPaths
from clipped_trip._tables import LazyLogTable


# ---------------------------------------------------------------------------------------------
# 1. result files
# ---------------------------------------------------------------------------------------------
def paths(seed=0, runs=3, n=5):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)
    risk = rng.uniform(0.1, 1.0, (runs, n))
    return RiskPaths(t, risk, np.zeros(runs, bool), np.full(runs, np.nan), {"seed": seed})


def no_temp_files(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")] == []


def test_new_npz_beside_old_sidecar_is_refused(tmp_path):
    save_result(paths(0), tmp_path / "a" / "r.npz")
    save_result(paths(1), tmp_path / "b" / "r.npz")
    # what a kill between the two renames used to leave: a new npz beside the old sidecar
    (tmp_path / "a" / "r.npz").write_bytes((tmp_path / "b" / "r.npz").read_bytes())
    with pytest.raises(ValueError, match="do not belong together"):
        load_result(tmp_path / "a" / "r.npz")
    assert load_result(tmp_path / "b" / "r.npz").params == {"seed": 1}


@pytest.mark.parametrize("fail_at", [1, 2])
def test_interrupted_save_never_yields_a_mismatched_pair(tmp_path, monkeypatch, fail_at):
    target = tmp_path / "r.npz"
    save_result(paths(0), target)
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_result(paths(1), target)
    monkeypatch.undo()
    assert no_temp_files(tmp_path)
    try:  # either the old pair, whole, or a refusal: never the new npz with the old parameters
        res = load_result(target)
    except ValueError as err:
        assert "do not belong together" in str(err)
    else:
        assert res.params == {"seed": 0}
        np.testing.assert_array_equal(res.risk, paths(0).risk)


def test_interrupt_while_writing_the_npz_leaves_nothing(tmp_path, monkeypatch):
    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", die)
    with pytest.raises(KeyboardInterrupt):
        save_result(paths(0), tmp_path / "r.npz")
    assert list(tmp_path.iterdir()) == []


def test_sidecar_without_hash_from_version_0_1_still_loads(tmp_path):
    target = save_result(paths(2), tmp_path / "r.npz")
    meta_path = target.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    assert len(meta.pop("npz_sha256")) == 64
    meta_path.write_text(json.dumps(meta))
    res = load_result(target)
    assert res.params == {"seed": 2}
    np.testing.assert_array_equal(res.risk, paths(2).risk)


def npz_bytes(**arrays):
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def good_arrays():
    r = paths(0)
    return {"t": r.t, "risk": r.risk, "diverged": r.diverged, "divergence_time": r.divergence_time}


def with_(**changes):
    return npz_bytes(**{**good_arrays(), **changes})


def huge_declared_size():
    """A valid little archive whose zip directory declares ~7.5 GiB of uncompressed data."""
    raw = bytearray(npz_bytes(a=np.zeros(3), b=np.zeros(3)))
    pos = 0
    while (pos := raw.find(b"PK\x01\x02", pos)) >= 0:  # central directory entries
        raw[pos + 24 : pos + 28] = (0xF0000000).to_bytes(4, "little")  # uncompressed size
        pos += 4
    return bytes(raw)


def huge_npy_header():
    """An .npy member whose header declares 10^9 float64 (8 GB) over a few bytes of data."""
    import io

    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9,)}
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(b"\0" * 64)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for k, v in good_arrays().items():
            with zf.open(f"{k}.npy", "w") as fh:
                np.lib.format.write_array(fh, np.asarray(v))
        zf.writestr("extra.npy", buf.getvalue())
    return out.getvalue()


GOOD = with_()
BAD_NPZ = {
    "truncated": GOOD[: len(GOOD) // 2],
    "corrupt": GOOD[:200] + bytes(b ^ 0xFF for b in GOOD[200:260]) + GOOD[260:],
    "not a zip": b"this is not an archive",
    "empty": b"",
    "missing arrays": npz_bytes(t=np.zeros(3)),
    "object dtype": with_(risk=np.array([[object()] * 5] * 3, dtype=object)),
    "string dtype": with_(risk=np.full((3, 5), "x")),
    "complex dtype": with_(risk=np.ones((3, 5), complex)),
    "t vs risk length": with_(t=np.linspace(0, 1, 4)),
    "diverged vs runs": with_(diverged=np.zeros(2, bool), divergence_time=np.zeros(2)),
    "NaN not diverged": with_(risk=np.where(np.eye(3, 5) > 0, np.nan, 1.0)),
    "t not increasing": with_(t=np.array([0.0, 1.0, 0.5, 2.0, 3.0])),
    "huge declared size": huge_declared_size(),
    "huge npy header": huge_npy_header(),
}
BAD_SIDECAR = {
    "not JSON": b"{not json",
    "not UTF-8": b"\xff\xfe\x00{",
    "a JSON list": b"[1, 2]",
    "deeply nested": b"[" * 200_000 + b"]" * 200_000,
    "params not an object": b'{"params": [1]}',
    "hash not a string": b'{"npz_sha256": 5}',
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_is_a_value_error(tmp_path, case):
    path = tmp_path / "r.npz"
    path.write_bytes(BAD_NPZ[case])
    with pytest.raises(ValueError, match="r.npz"):
        load_result(path)


@pytest.mark.parametrize("case", sorted(BAD_SIDECAR))
def test_bad_sidecar_is_a_value_error(tmp_path, case):
    path = tmp_path / "r.npz"
    path.write_bytes(GOOD)
    assert isinstance(load_result(path), RiskPaths)  # the npz alone is fine
    path.with_suffix(".json").write_bytes(BAD_SIDECAR[case])
    with pytest.raises(ValueError, match="r.json"):
        load_result(path)


def test_nan_in_a_diverged_run_and_an_ode_result_load(tmp_path):
    risk = np.ones((3, 5))
    risk[1, 3:] = np.nan
    path = tmp_path / "r.npz"
    path.write_bytes(with_(risk=risk, diverged=np.array([False, True, False])))
    assert load_result(path).diverged.tolist() == [False, True, False]
    p = ct.Problem.isotropic(5, ct.Gaussian(0.5))
    ode = ct.solve_ode(p, 0.5, 1.0, T=1.0, n_records=4)
    back = load_result(save_result(ode, tmp_path / "ode.npz"))
    np.testing.assert_array_equal(back.risk, ode.risk)
    assert no_temp_files(tmp_path)


def test_memory_limit_is_at_most_4_gib():
    assert 0 < _io._memory_limit() <= 4 << 30


# ---------------------------------------------------------------------------------------------
# 2. Student-t sampler
# ---------------------------------------------------------------------------------------------
def test_boosted_gamma_helpers_are_finite_at_u_zero():
    from clipped_trip._random import _boosted_log_gamma, _t_from_log_gamma

    for dtype in (jnp.float32, jnp.float64):
        a = jnp.asarray(0.05, dtype)  # df = 0.1: u^(1/a) underflows for u far above 0 too
        u = jnp.asarray([0.0, 2.0**-23, 0.5], dtype)
        log_g = _boosted_log_gamma(jnp.asarray(1.3, dtype), u, a)
        assert np.all(np.isfinite(np.asarray(log_g)))
        assert float(log_g[0]) == pytest.approx(math.log(1.3), rel=1e-6)  # u = 0 -> u = 1
        t = _t_from_log_gamma(jnp.asarray([2.5, -2.5, 0.0], dtype), log_g[1] * 50, 0.1)
        t = np.asarray(t)
        assert np.all(np.isfinite(t)) and t[0] > 0 > t[1] and t[2] == 0
        assert t[0] == np.finfo(dtype).max  # |t| capped, not inf


def test_student_t_large_float32_sample_has_no_inf():
    """2^24 draws of StudentT(1.5) with key 0: one u = 0 among them gave inf before."""
    draw = jax.jit(lambda key: ct.StudentT(1.5).sample(key, (1 << 24,), jnp.float32))
    x = np.asarray(draw(jax.random.key(0)))
    assert np.all(np.isfinite(x))
    # still the t law: P(|T_1.5| > 1) = 0.45114 (scipy), standard error 1.2e-4
    assert np.mean(np.abs(x) > 1.0) == pytest.approx(0.45114, abs=1e-3)


def test_student_t_stream_unchanged_for_df_at_least_2():
    """Draws of df >= 2 are bit-identical to version 0.1's sampler (values recorded from it)."""
    x32 = ct.StudentT(3.0).sample(jax.random.key(3), (4,), jnp.float32)
    x64 = ct.StudentT(3.0).sample(jax.random.key(3), (4,), jnp.float64)
    assert np.asarray(x32).tolist() == [
        -2.7161056995391846,
        -3.8228306770324707,
        -0.3042098879814148,
        -0.9231080412864685,
    ]
    assert np.asarray(x64).tolist() == [
        -1.0876744166069372,
        -0.9531481743903291,
        -0.00048814906468534384,
        -0.5929451605895892,
    ]


# ---------------------------------------------------------------------------------------------
# 3. tables across finite / inf boundaries and jumps
# ---------------------------------------------------------------------------------------------
def test_table_locates_an_inf_boundary_between_nodes():
    R0 = 0.3712345  # between nodes of the decade

    def fn(R):
        return np.where(R < R0, np.sin(3 * np.log(R)), np.inf)

    table = LazyLogTable(fn, per_decade=12)
    R = np.concatenate(
        [R0 * (1 + np.array([-1e-6, -1e-8, 1e-8, 1e-6])), np.linspace(0.1, 0.99, 301)]
    )
    got = table(R)[:, 0]
    want = fn(R)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    assert np.max(np.abs(got[fin] - want[fin])) < 1e-8
    assert [table.scalar(r)[0] for r in R[:4]] == pytest.approx(got[:4].tolist(), abs=1e-12)
    ((a, b),) = table.jumps(math.log(0.1), math.log(1.0))
    assert a <= math.log(R0) <= b and b - a <= 1e-10


def test_table_with_breaks_never_splines_across_a_jump():
    R0 = 0.3712345
    fn = lambda R: np.log1p(R) + 0.1 * (R >= R0)  # noqa: E731 - a jump of 0.1 at R0
    eps = 1e-11

    def breaks(lo, hi):
        return [(math.log(R0) - eps, math.log(R0) + eps)] if lo <= math.log(R0) <= hi else []

    R = np.linspace(0.1, 0.99, 301)
    plain = np.max(np.abs(LazyLogTable(fn, 12)(R)[:, 0] - fn(R)))
    split = np.max(np.abs(LazyLogTable(fn, 12, breaks=breaks)(R)[:, 0] - fn(R)))
    assert plain > 1e-3 and split < 1e-8


THREE_POINT = ct.ThreePoint(2.0, 0.2)  # c* finite below R ~ 0.712, inf above


def test_max_ccc_schedule_matches_optimiser_across_the_inf_boundary():
    lo, hi = 0.6, 0.8  # the optimiser's own edge, by bisection
    assert np.isfinite(ct.optimal_clip(THREE_POINT, lo)) and np.isinf(
        ct.optimal_clip(THREE_POINT, hi)
    )
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.isfinite(ct.optimal_clip(THREE_POINT, mid)) else (lo, mid)
    edge = hi
    sched = ct.max_ccc_schedule(THREE_POINT)
    R = np.concatenate(
        [edge * (1 + np.array([-1e-2, -1e-4, -1e-6, -1e-8, 1e-8, 1e-6, 1e-4, 1e-2])),
         np.linspace(0.3, 0.99, 139)]
    )  # fmt: skip
    got, want = sched.clip(R), ct.optimal_clip(THREE_POINT, R)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    assert fin.sum() > 50 and (~fin).sum() > 50
    # c* itself to the optimiser's own resolution (flat optimum), mu^2/nu to 1e-8
    np.testing.assert_allclose(got[fin], want[fin], rtol=2e-4)
    loss = _ratio(THREE_POINT, R[fin], got[fin]) / _ratio(THREE_POINT, R[fin], want[fin]) - 1
    assert np.max(np.abs(loss)) < 1e-8


def test_ode_with_max_ccc_schedule_matches_optimiser_across_the_inf_boundary():
    """The risk path crosses c* = inf -> finite; factors evaluated directly, so only the c*
    table is on trial (it was 2.3e-5 with linear interpolation over the decade)."""
    p = ct.Problem.power_law(50, 1 / 6, THREE_POINT, x0=np.full(50, 0.3))
    t = np.linspace(0, 5, 6)
    exact = ct.RiskSchedule(lambda R: ct.optimal_clip(THREE_POINT, R), compensate=True)
    sched = ct.max_ccc_schedule(THREE_POINT)
    tab = ct.solve_ode(p, 0.4, sched, times=t, use_table=False)
    ref = ct.solve_ode(p, 0.4, exact, times=t, use_table=False)
    assert ref.risk[0] > 1.0 and ref.risk[-1] < 0.5  # crosses the boundary at ~0.712
    np.testing.assert_allclose(tab.risk, ref.risk, rtol=1e-9)
