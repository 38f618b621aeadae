"""Result files: ``.npz`` arrays plus a JSON sidecar, written atomically, loaded without pickle."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ._results import ODEResult, RiskPaths

__all__ = ["save_result", "load_result", "atomic_write", "versions", "FigureData"]


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


def _temp_path(path: Path, suffix: str = "") -> str:
    """A fresh hidden temp file ``.name.XXXX<suffix>.tmp`` beside ``path`` (never a result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    # mkstemp makes 0600 files; results get the permissions an ordinary new file would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def _remove_quietly(paths):
    for tmp in paths:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass


def atomic_write(path, write_fn, suffix=""):
    """Call ``write_fn(tmp_path)`` then rename onto ``path``; on any error (KeyboardInterrupt
    included) the temp file is removed.

    A reader never sees a partial file: the rename is atomic on POSIX within one directory.
    """
    path = Path(path)
    tmp = _temp_path(path, suffix)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly([tmp])
        raise
    return path


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return repr(x)


_FLOAT_TAG = "$float"  # strict JSON has no inf / nan: {"$float": "inf"} stands for the number


def _tag_floats(obj):
    """``obj`` with every non-finite float replaced by {"$float": "inf" | "-inf" | "nan"}."""
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isfinite(x):
            return x
        return {_FLOAT_TAG: "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
    if isinstance(obj, dict):
        return {k: _tag_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tag_floats(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _tag_floats(obj.tolist())
    if isinstance(obj, np.integer):
        return obj.item()
    return obj


def _untag_float(d):
    if len(d) == 1 and _FLOAT_TAG in d and d[_FLOAT_TAG] in ("inf", "-inf", "nan"):
        return float(d[_FLOAT_TAG])
    return d


def dumps_strict(obj, **kw) -> str:
    """JSON that ``JSON.parse`` and jq accept: inf / nan written as {"$float": "inf"}."""
    return json.dumps(_tag_floats(obj), allow_nan=False, default=_json_default, **kw)


def loads_strict(text):
    """Inverse of :func:`dumps_strict` (also reads older sidecars with bare Infinity / NaN)."""
    return json.loads(text, object_hook=_untag_float)


_HASH_KEY = "npz_sha256"


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_arrays_and_sidecar(path, arrays: dict, meta: dict) -> Path:
    """``path`` (.npz of ``arrays``) and its .json sidecar (``meta`` + versions) as one unit.

    Both are written to hidden temp files first; the sidecar records the SHA-256 of the npz bytes
    (``npz_sha256``), then the sidecar and the npz are renamed into place. A kill between the two
    renames leaves a pair whose hash does not match, which :func:`load_result` refuses; on any
    error (KeyboardInterrupt included) the temp files are removed.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    tmps = []
    try:
        tmps.append(_temp_path(path))
        with open(tmps[0], "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        record = {**meta, "versions": versions(), _HASH_KEY: _sha256(tmps[0])}
        text = dumps_strict(record, indent=2)
        tmps.append(_temp_path(meta_path))
        Path(tmps[1]).write_text(text)
        os.replace(tmps[1], meta_path)
        os.replace(tmps[0], path)
    except BaseException:
        _remove_quietly(tmps)
        raise
    return path


_STAT_PREFIX = "stat_"


def _stat_arrays(result) -> dict:
    """Further statistics (clip, bias, population_risk, ...) as arrays ``stat_<name>``."""
    out = {}
    for name, values in (result.stats or {}).items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"statistic names must be identifiers, got {name!r}")
        out[_STAT_PREFIX + name] = np.asarray(values, dtype=np.float64)
    return out


def _stats_of(name, arrays) -> dict:
    shape = arrays["risk"].shape
    stats = {}
    for key in list(arrays):
        if key.startswith(_STAT_PREFIX):
            v = arrays.pop(key)
            if v.shape != shape:
                raise ValueError(
                    f"result file {name!r}: {key!r} must have the shape of 'risk' {shape}, "
                    f"got {v.shape}"
                )
            stats[key[len(_STAT_PREFIX) :]] = v
    return stats


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
        if result.samples is not None:  # examples used up to each record (batch x steps)
            arrays["samples"] = np.asarray(result.samples, dtype=np.int64)
        kind = "RiskPaths"
        arrays.update(_stat_arrays(result))
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
        arrays.update(_stat_arrays(result))
    else:
        raise ValueError(f"result must be a RiskPaths or ODEResult, got {type(result).__name__}")
    meta = {"type": kind, "params": result.params, **(extra or {})}
    return write_arrays_and_sidecar(path, arrays, meta)


_MAX_SIDECAR_BYTES = 64 << 20
_MAX_ARRAY_BYTES = 4 << 30


def _memory_limit() -> int:
    """4 GiB, or the available memory if less (where the OS tells)."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return _MAX_ARRAY_BYTES
    return min(_MAX_ARRAY_BYTES, avail) if avail > 0 else _MAX_ARRAY_BYTES


def _read_sidecar(meta_path: Path) -> dict:
    name = str(meta_path)
    try:
        if meta_path.stat().st_size > _MAX_SIDECAR_BYTES:
            raise ValueError(f"result sidecar {name!r} is larger than {_MAX_SIDECAR_BYTES} bytes")
        meta = loads_strict(meta_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"result sidecar {name!r} is not a readable JSON file ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"result sidecar {name!r} must hold a JSON object, got {type(meta).__name__}"
        )
    if not isinstance(meta.get("params", {}), dict):
        raise ValueError(f"result sidecar {name!r}: 'params' must be a JSON object")
    if not isinstance(meta.get(_HASH_KEY, ""), str):
        raise ValueError(f"result sidecar {name!r}: {_HASH_KEY!r} must be a hex string")
    return meta


def _npy_header(fh):
    """(shape, dtype) declared by an .npy member, read without loading its data."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def _read_npz(path: Path) -> dict:
    """The arrays of ``path``, checked before reading: a zip archive of .npy members whose
    declared sizes stay under the memory limit, numeric or boolean dtypes only, no pickle."""
    name = str(path)
    limit = _memory_limit()
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a zip archive")
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(info.file_size for info in infos)
            if total > limit:
                raise ValueError(f"declared uncompressed size {total} bytes exceeds {limit} bytes")
            arrays = {}
            for info in infos:
                key = info.filename[:-4] if info.filename.endswith(".npy") else None
                if not key:
                    raise ValueError(f"member {info.filename!r} is not an .npy array")
                with zf.open(info) as fh:
                    shape, dtype = _npy_header(fh)
                    if dtype.kind not in "biuf":
                        raise ValueError(f"array {key!r} has dtype {dtype}, not real numbers")
                    if math.prod(shape) * dtype.itemsize > info.file_size:
                        raise ValueError(f"array {key!r} declares more data than the archive holds")
                with zf.open(info) as fh:
                    arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
            return arrays
    except ValueError as err:
        raise ValueError(f"result file {name!r} is not a valid result archive: {err}") from None
    except Exception as err:  # noqa: BLE001 - corrupt archives raise zipfile/zlib/OS/EOF errors
        raise ValueError(
            f"result file {name!r} is corrupt or truncated ({type(err).__name__}: {err})"
        ) from None


def _check_arrays(name: str, kind: str, a: dict):
    """Shapes and values of a result's arrays (see :func:`save_result`)."""
    need = ["t", "risk", "diverged", "divergence_time"]
    if kind == "ODEResult":
        need += ["lr_path", "clip_path"]
    missing = [k for k in need if k not in a]
    if missing:
        raise ValueError(
            f"result file {name!r} lacks the arrays {missing} (a {kind} needs {need}); a "
            "figure's data file loads (as FigureData) only with its .json sidecar next to it, "
            "np.load(path) reads its arrays alone"
        )

    def bad(what):
        raise ValueError(f"result file {name!r}: {what}")

    t, risk, div, when = a["t"], a["risk"], a["diverged"], a["divergence_time"]
    if t.ndim != 1 or not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0):
        bad(f"'t' must be a finite non-decreasing 1-D array, got shape {t.shape}")
    if div.dtype.kind != "b" and not np.all((div == 0) | (div == 1)):
        bad("'diverged' must be boolean")
    if risk.ndim < 1 or risk.shape[-1] != t.size:
        bad(f"'risk' must have len(t) = {t.size} on its last axis, got shape {risk.shape}")
    if kind == "ODEResult":
        if risk.ndim != 1 or a["lr_path"].shape != t.shape or a["clip_path"].shape != t.shape:
            bad(f"'risk', 'lr_path' and 'clip_path' must all have shape {t.shape}")
        if div.size != 1 or when.size != 1:
            bad("'diverged' and 'divergence_time' must be scalars")
        nan_not_diverged = np.isnan(risk).any() and not bool(div.reshape(()))
    else:
        if risk.ndim < 2 or div.shape != risk.shape[:-1] or when.shape != div.shape:
            bad(
                f"'diverged' and 'divergence_time' must have shape risk.shape[:-1] = "
                f"{risk.shape[:-1]}, got {div.shape} and {when.shape}"
            )
        nan_not_diverged = np.any(np.isnan(risk).any(axis=-1) & ~div.astype(bool))
    if nan_not_diverged:
        bad("'risk' holds NaN in a run not marked diverged")


class FigureData:
    """The data of a figure file (``clipped-trip reproduce`` / ``experiments/*.py``), as
    :func:`load_result` returns it.

    A figure saves the arrays it plots under names of its own (``fig1``: ``case0_t``,
    ``case0_sgd`` (runs x times), ``case0_ode``, ...; ``fig6``: ``"<noise>/<schedule>/ode"``, ...),
    not a :class:`RiskPaths` / :class:`ODEResult` layout. ``.arrays`` holds them by name
    (``fig["case0_sgd"]`` is ``fig.arrays["case0_sgd"]``), ``.params`` the figure's parameters
    and summary from the JSON sidecar, ``.meta`` the whole sidecar (versions, hash).
    ``.groups()`` splits names at "/" (``{"Gaussian std 0.8": {"max-CCC/ode": ...}}``).
    """

    def __init__(self, name, arrays, params, meta, path):
        self.name = name
        self.arrays = dict(arrays)
        self.params = params
        self.meta = meta
        self.path = Path(path)

    def __getitem__(self, key):
        return self.arrays[key]

    def __contains__(self, key):
        return key in self.arrays

    def __iter__(self):
        return iter(self.arrays)

    def __len__(self):
        return len(self.arrays)

    def keys(self):
        return self.arrays.keys()

    def groups(self) -> dict:
        """The arrays by the part of their name before the first "/" (names without one are
        under "")."""
        out: dict = {}
        for key, value in self.arrays.items():
            head, sep, rest = key.partition("/")
            if sep:
                out.setdefault(head, {})[rest] = value
            else:
                out.setdefault("", {})[key] = value
        return out

    def __repr__(self):
        shown = ", ".join(f"{k!r}: {v.shape}" for k, v in list(self.arrays.items())[:6])
        more = f", ... ({len(self.arrays)} arrays)" if len(self.arrays) > 6 else ""
        return f"FigureData({self.name!r}, arrays={{{shown}{more}}})"


def load_result(path):
    """Load a result saved by :func:`save_result` (never unpickles: ``allow_pickle=False``).

    A figure file (``figures/fig1.npz``, whose sidecar names the figure) loads as a
    :class:`FigureData`: the figure's own arrays by name, and its parameters.

    Raises ValueError for a missing, corrupt or inconsistent file, and when the .npz and its .json
    sidecar do not belong together (the sidecar's SHA-256 of the npz does not match; sidecars
    written before version 0.2 carry no hash and are loaded as they are).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    name = str(path)
    if not path.is_file():
        raise ValueError(f"result file {name!r} does not exist")
    meta_path = path.with_suffix(".json")
    meta = _read_sidecar(meta_path) if meta_path.exists() else {}
    digest = meta.get(_HASH_KEY)
    if digest is not None and _sha256(path) != digest.lower():
        raise ValueError(
            f"result file {name!r} and its sidecar {str(meta_path)!r} do not belong together "
            "(SHA-256 of the npz differs from the sidecar's: an interrupted or mixed write)"
        )
    arrays = _read_npz(path)
    if "type" not in meta and isinstance(meta.get("figure"), str):
        params = meta.get("params", {})
        return FigureData(meta["figure"], arrays, params, meta, path)
    kind = meta.get("type", "ODEResult" if "lr_path" in arrays else "RiskPaths")
    if kind not in ("RiskPaths", "ODEResult"):
        raise ValueError(f"result sidecar {str(meta_path)!r}: type must be RiskPaths or ODEResult")
    _check_arrays(name, kind, arrays)
    stats = _stats_of(name, arrays)
    params = meta.get("params", {})
    if kind == "ODEResult":
        return ODEResult(
            arrays["t"],
            arrays["risk"],
            arrays["lr_path"],
            arrays["clip_path"],
            bool(arrays["diverged"]),
            float(arrays["divergence_time"]),
            params,
            stats=stats,
        )
    samples = arrays.get("samples")
    if samples is not None and (
        samples.shape != arrays["t"].shape or samples.dtype.kind not in "iu"
    ):
        raise ValueError(f"result file {str(path)!r}: 'samples' must be integers, one per time")
    return RiskPaths(
        arrays["t"],
        arrays["risk"],
        arrays["diverged"].astype(bool),
        arrays["divergence_time"],
        params,
        samples=samples,
        stats=stats,
    )
