"""Output files: strict JSON sidecars, permissions from the umask."""

import json
import os

import numpy as np
import pytest

import clipped_trip as ct
from clipped_trip._io import dumps_strict, loads_strict


def _strict(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_sidecars_are_strict_json_and_infinities_come_back(tmp_path):
    p = ct.Problem.isotropic(10, ct.StudentT(1.0, 0.5))
    res = ct.solve_ode(p, ct.ClippedSGD(0.5, None), T=1.0, n_records=3)  # diverges: inf risk
    assert np.isinf(res.risk[-1])
    ct.save_result(res, tmp_path / "r.npz", extra={"limit": float("inf"), "x": [float("nan")]})
    meta = _strict((tmp_path / "r.json").read_text())
    assert meta["limit"] == {"$float": "inf"}
    back = ct.load_result(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.risk, res.risk)
    assert back.params["clip"] == res.params["clip"]


def test_strict_round_trip():
    obj = {"a": float("inf"), "b": [1.5, float("-inf"), {"c": float("nan")}], "d": np.inf}
    text = dumps_strict(obj)
    _strict(text)
    out = loads_strict(text)
    assert out["a"] == float("inf") and out["b"][1] == float("-inf")
    assert np.isnan(out["b"][2]["c"]) and out["d"] == float("inf")
    assert loads_strict('{"old": Infinity}')["old"] == float("inf")  # older sidecars


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_result_files_respect_the_umask(tmp_path, umask, mode):
    p = ct.Problem.isotropic(5, ct.Gaussian(0.5))
    res = ct.solve_ode(p, ct.ClippedSGD(0.5, 1.0), T=0.5, n_records=2)
    old = os.umask(umask)
    try:
        ct.save_result(res, tmp_path / "r.npz")
    finally:
        os.umask(old)
    for name in ("r.npz", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode
