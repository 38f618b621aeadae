"""Result files: ``.npz`` arrays plus a JSON sidecar, written atomically, loaded without pickle."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from ._results import ODEResult, RiskPaths

__all__ = ["save_result", "load_result", "atomic_write", "versions"]


def versions() -> dict:
    import jax
    import scipy

    from . import __version__

    return {
        "clipped_trip": __version__,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def atomic_write(path, write_fn, suffix=""):
    """Call ``write_fn(tmp_path)`` then rename onto ``path``; on any error the temp file is removed.

    A reader never sees a partial file: the rename is atomic on POSIX within one directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return repr(x)


def write_arrays_and_sidecar(path, arrays: dict, meta: dict) -> Path:
    """``path`` (.npz of ``arrays``) and its .json sidecar (``meta`` + versions), both atomic."""
    path = Path(path)
    text = json.dumps({**meta, "versions": versions()}, indent=2, default=_json_default)

    def write_npz(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})

    atomic_write(path, write_npz)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
    return path


def save_result(result, path, extra: dict | None = None) -> Path:
    """Write ``result`` to ``path`` (.npz) and ``path`` with .json (parameters, versions)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    if isinstance(result, RiskPaths):
        arrays = {
            "t": result.t,
            "risk": result.risk,
            "diverged": result.diverged,
            "divergence_time": result.divergence_time,
        }
        kind = "RiskPaths"
    elif isinstance(result, ODEResult):
        arrays = {
            "t": result.t,
            "risk": result.risk,
            "lr_path": result.lr_path,
            "clip_path": result.clip_path,
            "diverged": np.array(result.diverged),
            "divergence_time": np.array(result.divergence_time),
        }
        kind = "ODEResult"
    else:
        raise ValueError(f"result must be a RiskPaths or ODEResult, got {type(result).__name__}")
    meta = {"type": kind, "params": result.params, **(extra or {})}
    return write_arrays_and_sidecar(path, arrays, meta)


def load_result(path):
    """Load a result saved by :func:`save_result` (never unpickles: ``allow_pickle=False``)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    if not path.exists():
        raise ValueError(f"result file {str(path)!r} does not exist")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    params = meta.get("params", {})
    if "lr_path" in arrays:
        return ODEResult(
            arrays["t"],
            arrays["risk"],
            arrays["lr_path"],
            arrays["clip_path"],
            bool(arrays["diverged"]),
            float(arrays["divergence_time"]),
            params,
        )
    return RiskPaths(
        arrays["t"], arrays["risk"], arrays["diverged"], arrays["divergence_time"], params
    )
