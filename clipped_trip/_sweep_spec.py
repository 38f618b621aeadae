"""A sweep specification: one problem, one algorithm, axes over their parameters (frozen, JSON).

A :class:`SweepSpec` names everything that decides the numbers of a Monte Carlo sweep:

* ``problem``: ``spectrum`` (e.g. ``"power-law:alpha=0.2"``), ``d``, ``noise`` (e.g.
  ``"student-t:df=3,scale=0.5"``) and optionally ``data_mean`` (``"e1:0.5"``, ``"uniform:NORM"``
  or a .npy path), the strings of the command line;
* ``algorithm``: ``name`` (``clipped``, ``dpsgd``, ``quantile``, ``autoclip``, ``value``,
  ``sign``, or the class name) and its fixed parameters (``lr``, ``clip``, ``batch``, ...);
* ``axes``: an ordered mapping from a parameter to its list of values. A parameter is any
  algorithm parameter (``lr``, ``clip``, ``batch``, ``noise_multiplier``, ``quantile``, ...),
  any problem key (``noise``, ``d``, ``spectrum``, ``data_mean``) or one parameter of the noise
  law, ``noise.<key>`` (``noise.df``, ``noise.scale``, ``noise.std``): it replaces that key in
  the noise spec. The cells are the Cartesian product, the first axis varying slowest;
* ``runs``, ``seed``, ``T``, ``n_records``, ``dtype``; ``block`` (runs per work unit, default
  one run chunk) and ``run_chunk`` (runs vectorised together, default set by d x batch).

Work units: cell i, runs ``first_run .. first_run + runs - 1`` of stream ``seed`` (blocks of
``block`` runs). Run j of a cell is the same bits whichever unit computes it (``simulate`` with a
fixed ``run_chunk`` is bit-identical alone or in any batch), so results depend on neither the
backend, the worker count nor the block size.

Serialised as TOML (read) or JSON (read and written)::

    runs = 64
    T = 5.0
    n_records = 51
    block = 16

    [problem]
    spectrum = "power-law:alpha=0.2"
    d = 200
    noise = "student-t:df=3,scale=0.5"

    [algorithm]
    name = "clipped"
    batch = 1

    [axes]
    lr = [0.4, 0.8]
    clip = [0.5, 1.0, "none"]
    "noise.df" = [2.5, 5.0]

``clip = "none"`` (or ``"inf"``) is no clipping; values must be numbers or strings (schedules
are not part of a spec).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import types
from dataclasses import dataclass
from pathlib import Path

from . import _validate as V

__all__ = ["SweepSpec", "WorkUnit", "ALGORITHM_PARAMS", "SPEC_FORMAT"]

#: format tag written into spec files (bumped if the meaning of a field changes)
SPEC_FORMAT = "clipped_trip-sweep/1"

#: the algorithms by their command-line name: (class name, parameters a spec may set)
ALGORITHM_PARAMS = {
    "clipped": ("ClippedSGD", ("lr", "clip", "batch", "clip_mode", "perturbation")),
    "dpsgd": (
        "DPSGD",
        (
            "lr",
            "clip",
            "batch",
            "noise_multiplier",
            "epsilon",
            "delta",
            "accountant",
            "adjacency",
        ),
    ),
    "quantile": ("QuantileClipSGD", ("lr", "clip", "quantile", "clip_lr", "regime")),
    "autoclip": ("AutoClipSGD", ("lr", "percentile", "history", "max_steps")),
    "value": ("ValueClipSGD", ("lr", "clip_value", "clip")),
    "sign": ("SignSGD", ("lr",)),
}
_BY_CLASS = {cls.lower(): name for name, (cls, _) in ALGORITHM_PARAMS.items()}
PROBLEM_KEYS = ("spectrum", "d", "noise", "data_mean")
PROBLEM_DEFAULTS = {"spectrum": "power-law:alpha=0.2", "d": 500, "noise": "gaussian:std=0.5"}
DEFAULT_LR = 0.6
_INT_PARAMS = ("d", "batch", "max_steps")
_STR_PARAMS = (
    "spectrum",
    "noise",
    "data_mean",
    "clip_mode",
    "regime",
    "history",
    "accountant",
    "adjacency",
)
_NO_CLIP = ("none", "inf", "off")
TOP_KEYS = (
    "problem",
    "algorithm",
    "axes",
    "runs",
    "seed",
    "T",
    "n_records",
    "dtype",
    "block",
    "run_chunk",
    "ode",
)


def _algorithm_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"algorithm name must be one of {', '.join(ALGORITHM_PARAMS)}, got {name!r}"
        )
    key = name.strip().lower()
    key = _BY_CLASS.get(key, key)
    if key not in ALGORITHM_PARAMS:
        raise ValueError(
            f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHM_PARAMS)} "
            f"(or {', '.join(c for c, _ in ALGORITHM_PARAMS.values())})"
        )
    return key


def _value(key: str, value):
    """One parameter value in canonical JSON form (int, float, str, bool or None)."""
    base = key.split(".", 1)[0] if key.startswith("noise.") else key
    if key.startswith("noise."):
        return V.real(key, value)
    if base in ("clip", "clip_value"):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NO_CLIP):
            return None
        x = V.positive(key, value, allow_inf=True)
        return None if math.isinf(x) else x
    if base in _INT_PARAMS:
        return V.count(key, value)
    if base in _STR_PARAMS:
        if value is None and base == "data_mean":
            return None
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return V.real(key, value)


def _frozen(mapping) -> types.MappingProxyType:
    return types.MappingProxyType(dict(mapping))


def set_noise_param(spec: str, key: str, value: float) -> str:
    """``spec`` with its parameter ``key`` set to ``value`` (``student-t:df=3`` + df=5 ->
    ``student-t:df=5.0``)."""
    name, _, rest = spec.strip().partition(":")
    items = [p.strip() for p in rest.split(",") if p.strip()]
    out, done = [], False
    for item in items:
        k = item.partition("=")[0].strip()
        if k == key:
            out.append(f"{key}={float(value)!r}")
            done = True
        else:
            out.append(item)
    if not done:
        out.append(f"{key}={float(value)!r}")
    return f"{name.strip()}:{','.join(out)}"


@dataclass(frozen=True)
class WorkUnit:
    """Runs ``first_run .. first_run + runs - 1`` of cell ``cell``: the unit of work and of
    storage (one result file)."""

    cell: int
    first_run: int
    runs: int

    @property
    def id(self) -> str:
        return f"c{self.cell:06d}-r{self.first_run:09d}-n{self.runs}"

    @classmethod
    def from_id(cls, uid: str) -> "WorkUnit":
        c, r, n = uid.split("-")
        if not (c[0] == "c" and r[0] == "r" and n[0] == "n"):
            raise ValueError(f"not a work unit id: {uid!r}")
        return cls(int(c[1:]), int(r[1:]), int(n[1:]))


@dataclass(frozen=True, eq=False)
class SweepSpec:
    """A Monte Carlo sweep: problem, algorithm, axes, runs (see the module docstring).

    Args:
        problem: mapping with ``spectrum``, ``d``, ``noise`` (strings of the CLI; defaults
            ``power-law:alpha=0.2``, 500, ``gaussian:std=0.5``) and optional ``data_mean``.
        algorithm: a name (``"clipped"``) or a mapping ``{"name": ..., **fixed parameters}``.
        axes: ordered mapping parameter -> list of values (see the module docstring).
        runs: Monte Carlo runs per cell.
        seed: the random stream (run j of cell i is run j of stream ``seed``: the same across
            cells, as :func:`sweep` does).
        T: the horizon (time t = steps / D).
        n_records: the number of record times (even on [0, T]).
        dtype: "float32" or "float64".
        block: runs per work unit (default: one run chunk of the cell's width, at most runs).
            It never changes a bit; each unit is padded to whole run chunks, so keep it a
            multiple of the chunk (a block of 16 with the automatic chunk 256 of d <= 256 does
            16x the arithmetic).
        run_chunk: runs vectorised together (default automatic from d x batch: 256 for
            d x batch <= 256); part of what fixes the bits, like ``simulate``'s argument.
        ode: record the ODE prediction of each cell (final risk) when one exists.
    """

    problem: object
    algorithm: object
    axes: object = None
    runs: int = 16
    T: float = 15.0
    seed: int = 0
    n_records: int = 101
    dtype: str = "float32"
    block: int | None = None
    run_chunk: int | None = None
    ode: bool = True

    def __post_init__(self):
        if not isinstance(self.problem, (dict, types.MappingProxyType)):
            raise ValueError(f"problem must be a table of {', '.join(PROBLEM_KEYS)}")
        unknown = [k for k in self.problem if k not in PROBLEM_KEYS]
        if unknown:
            raise ValueError(
                f"problem: unknown key(s) {', '.join(map(str, unknown))}; "
                f"allowed: {', '.join(PROBLEM_KEYS)}"
            )
        prob = {**PROBLEM_DEFAULTS, **self.problem}
        prob = {k: _value(k, v) for k, v in prob.items() if k != "data_mean" or v is not None}
        object.__setattr__(self, "problem", _frozen(prob))

        alg = self.algorithm
        if isinstance(alg, str):
            alg = {"name": alg}
        if not isinstance(alg, (dict, types.MappingProxyType)) or "name" not in alg:
            raise ValueError("algorithm must be a name or a table with 'name' and parameters")
        name = _algorithm_name(alg["name"])
        allowed = ALGORITHM_PARAMS[name][1]
        fixed = {}
        for k, v in alg.items():
            if k == "name":
                continue
            if k not in allowed:
                raise ValueError(
                    f"algorithm {name}: unknown parameter {k!r}; it takes {', '.join(allowed)}"
                )
            fixed[k] = _value(k, v)
        object.__setattr__(self, "algorithm", _frozen({"name": name, **fixed}))

        axes = {} if self.axes is None else self.axes
        if not isinstance(axes, (dict, types.MappingProxyType)):
            raise ValueError("axes must be a table: parameter = [values]")
        norm = {}
        for k, values in axes.items():
            if not isinstance(k, str):
                raise ValueError(f"axes: parameter names must be strings, got {k!r}")
            if k.startswith("noise."):
                if not k[6:].isidentifier():
                    raise ValueError(f"axes: bad noise parameter {k!r} (e.g. noise.df)")
            elif k not in PROBLEM_KEYS and k not in allowed:
                raise ValueError(
                    f"axes: {k!r} is not a parameter of the problem ({', '.join(PROBLEM_KEYS)}, "
                    f"noise.<key>) or of {name} ({', '.join(allowed)})"
                )
            if k in fixed:
                raise ValueError(f"{k!r} is given in both [algorithm] and [axes]; give it once")
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                values = [values]
            values = tuple(_value(k, v) for v in values)
            if not values:
                raise ValueError(f"axes: {k!r} has no values")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"axes: {k!r} repeats a value")
            norm[k] = values
        object.__setattr__(self, "axes", _frozen(norm))
        object.__setattr__(self, "runs", V.count("runs", self.runs))
        object.__setattr__(self, "T", V.positive("T", self.T))
        seed = V.count("seed", self.seed, lo=0)
        if seed >= 2**32 or self.runs > 2**32:
            raise ValueError(f"seed and runs must be < 2^32, got seed {seed}, runs {self.runs}")
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "n_records", V.count("n_records", self.n_records, lo=2))
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        for key in ("block", "run_chunk"):
            val = getattr(self, key)
            object.__setattr__(self, key, None if val is None else V.count(key, val))
        if not isinstance(self.ode, bool):
            raise ValueError(f"ode must be true or false, got {self.ode!r}")
        n = self.n_cells
        if n > 10**7:
            raise ValueError(f"the axes make {n} cells, more than 10^7; use fewer values")
        d = self.to_dict()
        d["axes"] = [[k, v] for k, v in d["axes"].items()]
        text = json.dumps(d, sort_keys=True, allow_nan=False)
        object.__setattr__(self, "_fingerprint", hashlib.sha256(text.encode()).hexdigest())

    # --- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-friendly data (axes in their order; ``None`` = no clipping)."""
        out = {
            "format": SPEC_FORMAT,
            "problem": dict(self.problem),
            "algorithm": dict(self.algorithm),
            "axes": {k: list(v) for k, v in self.axes.items()},
            "runs": self.runs,
            "seed": self.seed,
            "T": self.T,
            "n_records": self.n_records,
            "dtype": self.dtype,
            "block": self.block,
            "run_chunk": self.run_chunk,
            "ode": self.ode,
        }
        return out

    def to_json(self, path=None) -> str:
        """The spec as JSON text (and written to ``path`` if given)."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "SweepSpec":
        if not isinstance(data, dict):
            raise ValueError(f"a sweep spec must be a table, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise ValueError(f"sweep spec format {fmt!r} is not {SPEC_FORMAT!r}")
        unknown = [k for k in data if k not in TOP_KEYS]
        if unknown:
            raise ValueError(
                f"sweep spec: unknown key(s) {', '.join(map(str, unknown))}; "
                f"allowed: {', '.join(TOP_KEYS)}"
            )
        if "problem" not in data or "algorithm" not in data:
            raise ValueError("sweep spec: needs [problem] and [algorithm] tables")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path) -> "SweepSpec":
        """From JSON text or a path to a .json file."""
        text = _text_of(text_or_path, "{")
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"sweep spec is not valid JSON ({err})") from None
        return cls.from_dict(data)

    @classmethod
    def from_toml(cls, text_or_path) -> "SweepSpec":
        """From TOML text or a path to a .toml file."""
        import tomllib

        text = _text_of(text_or_path, "=")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(
                f"sweep spec is not valid TOML ({' '.join(str(err).split())})"
            ) from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path) -> "SweepSpec":
        """A .toml or .json file, by its extension."""
        p = Path(path)
        if p.suffix.lower() == ".json":
            return cls.from_json(p)
        return cls.from_toml(p)

    def __reduce__(self):  # picklable (dask): through its JSON
        return (SweepSpec.from_json, (self.to_json(),))

    def __eq__(self, other):
        return isinstance(other, SweepSpec) and self.fingerprint == other.fingerprint

    def __hash__(self):
        return hash(self.fingerprint)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical spec (axis order kept): equal specs, equal fingerprints."""
        return self._fingerprint

    def differences(self, other: "SweepSpec") -> list[str]:
        """The top-level keys (or problem/algorithm/axes entries) where two specs differ."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for key in TOP_KEYS:
            if a[key] == b[key] and (key != "axes" or list(a[key]) == list(b[key])):
                continue
            if isinstance(a[key], dict) and isinstance(b[key], dict):
                subs = sorted(
                    k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k)
                )
                out += [f"{key}.{k}" for k in subs] or [f"{key} (order)"]
            else:
                out.append(key)
        return out

    # --- cells and units ---------------------------------------------------------------------
    @property
    def axis_names(self) -> tuple:
        return tuple(self.axes)

    @property
    def n_cells(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def cells(self) -> list[dict]:
        """The axis values of every cell (first axis slowest)."""
        names = self.axis_names
        return [dict(zip(names, combo)) for combo in itertools.product(*self.axes.values())]

    def cell(self, i: int) -> dict:
        """Axis values of cell ``i``."""
        n = self.n_cells
        if not 0 <= int(i) < n:
            raise ValueError(f"cell index must be in [0, {n}), got {i!r}")
        i, out = int(i), {}
        for name in reversed(self.axis_names):
            vals = self.axes[name]
            i, r = divmod(i, len(vals))
            out[name] = vals[r]
        return {k: out[k] for k in self.axis_names}

    def cell_settings(self, i: int) -> tuple[dict, dict]:
        """(problem settings, algorithm settings) of cell ``i``: fixed values with the cell's
        axis values put in."""
        prob = dict(self.problem)
        alg = {k: v for k, v in self.algorithm.items() if k != "name"}
        noise_params = {}
        for k, v in self.cell(i).items():
            if k.startswith("noise."):
                noise_params[k[6:]] = v
            elif k in PROBLEM_KEYS:
                prob[k] = v
            else:
                alg[k] = v
        for k, v in noise_params.items():
            prob["noise"] = set_noise_param(prob["noise"], k, v)
        if prob.get("data_mean") is None:
            prob.pop("data_mean", None)
        return prob, alg

    def build(self, i: int):
        """(Problem, algorithm) of cell ``i``; ValueError naming the cell if they are invalid."""
        prob, alg = self.cell_settings(i)
        try:
            return _make_problem(**prob), _make_algorithm(self.algorithm["name"], alg)
        except ValueError as err:
            where = ", ".join(f"{k}={v!r}" for k, v in self.cell(i).items()) or "the only cell"
            raise ValueError(f"sweep cell {i} ({where}): {' '.join(str(err).split())}") from None

    def validate(self) -> "SweepSpec":
        """Build every cell (problem and algorithm) once: every invalid value is reported, naming
        its cell, before any work. Returns the spec."""
        from ._engine import resolve_dtype

        resolve_dtype(self.dtype)
        for i in range(self.n_cells):
            problem, alg = self.build(i)
            try:
                alg.check_problem(problem)
            except ValueError as err:
                raise ValueError(f"sweep cell {i}: {' '.join(str(err).split())}") from None
        return self

    def width(self, i: int) -> tuple[int, int]:
        """(d, batch) of cell ``i``: what sets its automatic run chunk."""
        prob, alg = self.cell_settings(i)
        batch = alg.get("batch", 1) if self.algorithm["name"] in ("clipped", "dpsgd") else 1
        return int(prob["d"]), int(batch)

    def chunk(self, i: int) -> int:
        """Runs vectorised together for cell ``i`` (``run_chunk`` or simulate's automatic)."""
        from ._engine import chunk_size

        d, batch = self.width(i)
        return chunk_size(d * batch, self.run_chunk, minimum=16 if batch == 1 else 1)

    def block_of(self, i: int) -> int:
        """Runs per work unit of cell ``i``."""
        return min(self.runs, self.block or self.chunk(i))

    def units(self) -> list[WorkUnit]:
        """Every work unit, cell by cell, blocks in run order."""
        out = []
        for i in range(self.n_cells):
            b = self.block_of(i)
            out += [WorkUnit(i, r, min(b, self.runs - r)) for r in range(0, self.runs, b)]
        return out

    def __repr__(self):
        axes = ", ".join(f"{k}[{len(v)}]" for k, v in self.axes.items()) or "no axes"
        return (
            f"SweepSpec({self.algorithm['name']}, d={self.problem['d']}, {axes}, "
            f"runs={self.runs}, T={self.T}, cells={self.n_cells})"
        )


def _text_of(text_or_path, marker: str) -> str:
    """The text itself, or the file's text for a Path or a one-line string without ``marker``."""
    if isinstance(text_or_path, Path):
        return _read_text(text_or_path)
    if not isinstance(text_or_path, str):
        raise ValueError(f"a sweep spec must be text or a path, got {type(text_or_path).__name__}")
    if "\n" not in text_or_path and marker not in text_or_path:
        return _read_text(text_or_path)
    return text_or_path


def _read_text(path) -> str:
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"sweep spec file {str(p)!r} " + ("is not a file" if p.exists() else "does not exist")
        )
    try:
        return p.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read sweep spec {str(p)!r} ({err})") from None


def _make_problem(spectrum, d, noise, data_mean=None):
    from .cli import UserError, make_problem, parse_noise_checked

    try:
        return make_problem(spectrum, d, parse_noise_checked(noise), data_mean)
    except UserError as err:
        raise ValueError(str(err)) from None


def _make_algorithm(name, params: dict):
    """The algorithm object of ``name`` with ``params`` (lr defaults to 0.6)."""
    from . import DPSGD, AutoClipSGD, ClippedSGD, QuantileClipSGD, SignSGD, ValueClipSGD

    kw = dict(params)
    kw.setdefault("lr", DEFAULT_LR)
    if name == "clipped":
        return ClippedSGD(**kw)
    if name == "dpsgd":
        if "epsilon" in kw:
            if "noise_multiplier" in kw:
                raise ValueError("dpsgd: give noise_multiplier or epsilon (with delta), not both")
            if "delta" not in kw:
                raise ValueError("dpsgd: epsilon needs delta")
            return DPSGD.for_epsilon(**kw)
        for key in ("delta", "accountant", "adjacency"):
            if key in kw:
                raise ValueError(f"dpsgd: {key} goes with epsilon (give noise_multiplier alone)")
        if "noise_multiplier" not in kw or "clip" not in kw or "batch" not in kw:
            raise ValueError("dpsgd needs clip, batch and noise_multiplier (or epsilon, delta)")
        return DPSGD(**kw)
    if name == "quantile":
        missing = [k for k in ("clip", "quantile", "clip_lr") if k not in kw]
        if missing:
            raise ValueError(f"quantile needs {', '.join(missing)}")
        return QuantileClipSGD(**kw)
    if name == "autoclip":
        if "percentile" not in kw:
            raise ValueError("autoclip needs percentile")
        return AutoClipSGD(**kw)
    if name == "value":
        if "clip" in kw:
            if "clip_value" in kw:
                raise ValueError("value: give clip_value (or clip), not both")
            kw["clip_value"] = kw.pop("clip")
        if "clip_value" not in kw:
            raise ValueError("value needs clip_value")
        if kw["clip_value"] is None:
            kw["clip_value"] = math.inf
        return ValueClipSGD(**kw)
    return SignSGD(**kw)
