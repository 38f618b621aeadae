"""The ``clipped-trip`` command line.

User errors (bad options, bad config, bad values, an output folder that cannot be written) exit
with status 2 and one line ``clipped-trip COMMAND: error: ...`` on stderr, no traceback, and
nothing written; they are found before any computation. Result files are written atomically
(temp file, then rename). An internal bug still shows its traceback.

Units: D = tr K; the step is lr / D; time is t = steps / D; the clip c is in residual units
(the gradient is clipped at norm c sqrt(D)).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import sys
import tempfile
import textwrap
import tomllib
from pathlib import Path

from . import _validate as V

SPECTRA = ("isotropic", "power-law", "two-level")
CLIP_MODES = ("per-example", "mean")
ALGORITHMS = ("clipped", "dpsgd", "quantile", "autoclip", "value", "sign")
ACCOUNTANTS = ("analytic", "pld", "rdp")
ADJACENCIES = ("add-remove", "substitute")
MAX_D = 10**8
MAX_RUNS = 10**7
MAX_RECORDS = 10**6
MAX_CELLS = 10**8  # runs x records (x grid cells) held in memory


class UserError(Exception):
    """A problem with what the user asked for; reported as one line."""


class _ArgError(Exception):
    def __init__(self, prog, message):
        super().__init__(message)
        self.prog = prog


class _Once(argparse.Action):
    """Store an option's value; the same option given twice is an error, not last-one-wins."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given", set())
        if self.dest in seen:
            parser.error(f"{option_string or self.metavar} given twice")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (raised, reported by :func:`main`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)
        self.register("action", "store", _Once)

    def error(self, message):
        raise _ArgError(self.prog, message)


def _one_line(text) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# values: one checker per kind, shared by the command line (text), TOML configs and JSON sidecars
# ---------------------------------------------------------------------------------------------
_INT_RE = re.compile(r"[+-]?[0-9]+")


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(key, value, text: bool, *, what="a number"):
    """A finite float from CLI text or a TOML/JSON number (bools, strings, lists refused)."""
    if text and isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            raise UserError(f"{key} must be {what}, got {value!r}") from None
    elif _is_number(value):
        try:
            x = float(value)
        except OverflowError:
            raise UserError(f"{key} overflows the float range, got {value!r}") from None
    else:
        raise UserError(f"{key} must be {what}, got {_show(value)}")
    if math.isnan(x) or math.isinf(x):
        raise UserError(f"{key} must be a finite number, got {_show(value)}")
    return x


def _real(lo=None, lo_open=False):
    def check(key, value, text):
        x = _number(key, value, text)
        if lo is not None and (x <= lo if lo_open else x < lo):
            raise UserError(f"{key} must be {'>' if lo_open else '>='} {lo:g}, got {x:g}")
        return x

    check.type = "number" + ("" if lo is None else f" {'>' if lo_open else '>='} {lo:g}")
    return check


def _integer(lo, hi):
    def check(key, value, text):
        if text and isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            n = int(value.strip())
        elif isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            raise UserError(f"{key} must be an integer in [{lo}, {hi}], got {_show(value)}")
        if not lo <= n <= hi:
            raise UserError(f"{key} must be an integer in [{lo}, {hi}], got {n}")
        return n

    check.type = f"integer in [{lo}, {hi}]"
    return check


def _string(key, value, text):
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{key} must be a non-empty string, got {_show(value)}")
    return value.strip()


_string.type = "string"


def _boolean(key, value, text):
    if not isinstance(value, bool):
        raise UserError(f"{key} must be a boolean (true or false), got {_show(value)}")
    return value


_boolean.type = "boolean"


def _clip_mode(key, value, text):
    if not isinstance(value, str) or value not in CLIP_MODES:
        raise UserError(f"{key} must be one of {', '.join(CLIP_MODES)}, got {_show(value)}")
    return value


_clip_mode.type = "'per-example' or 'mean'"

_NO_CLIP = ("none", "inf", "off")


def _clip_item(key, value, text=True, *, allow_none=True):
    """A clip threshold c > 0 (residual units) or None for no clipping."""
    if isinstance(value, str) and value.strip().lower() in _NO_CLIP and allow_none:
        return None
    if value is None and allow_none and not text:  # JSON null in a sidecar: no clipping
        return None
    if isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            x = None
        if x is None or math.isnan(x):
            raise UserError(f"{key} must be a number > 0 or 'none', got {value!r}")
    elif _is_number(value):
        x = float(value)
    else:
        raise UserError(f"{key} must be a number > 0 or 'none', got {_show(value)}")
    if math.isinf(x) and x > 0 and allow_none:
        return None
    if not (math.isfinite(x) and x > 0):
        raise UserError(f"{key} must be a finite number > 0 or 'none', got {_show(value)}")
    return x


def _clip(key, value, text):
    return _clip_item(key, value, text)


_clip.type = "number > 0 or 'none'"


def _items(key, value, text, sep):
    """The items of a list value: a TOML/JSON array, or text separated by ``sep``."""
    if isinstance(value, str):
        items = [x.strip() for x in value.split(sep)]
        if not any(items):
            raise UserError(f"{key} must be a non-empty list, got {value!r}")
        if not all(items):
            raise UserError(f"{key}: empty item in {value!r}")
        return items
    if isinstance(value, list):
        if not value:
            raise UserError(f"{key} must be a non-empty list, got []")
        return value
    if _is_number(value):  # one number: a one-element list
        return [value]
    raise UserError(f"{key} must be a list, got {_show(value)}")


def _list_of(item, sep=",", type_name=None):
    def check(key, value, text):
        items = _items(key, value, text, sep)
        is_text = isinstance(value, str)
        return [item(f"{key}[{i}]", x, is_text) for i, x in enumerate(items)]

    check.type = type_name or f"list of {item.type}"
    return check


def _clip_positive(key, value, text):
    return _clip_item(key, value, text, allow_none=False)


_clip_positive.type = "number > 0"


def _interval(lo, hi, hi_closed=False):
    """A number in (lo, hi) (or (lo, hi])."""
    shown = f"in ({lo:g}, {hi:g}{']' if hi_closed else ')'}"

    def check(key, value, text):
        x = _number(key, value, text)
        if not (lo < x and (x <= hi if hi_closed else x < hi)):
            raise UserError(f"{key} must be a number {shown}, got {x:g}")
        return x

    check.type = f"number {shown}"
    return check


def _choice(options):
    def check(key, value, text):
        if not isinstance(value, str) or value.strip() not in options:
            raise UserError(f"{key} must be one of {', '.join(options)}, got {_show(value)}")
        return value.strip()

    check.type = " | ".join(options)
    return check


def _epsilon_item(key, value, text):
    """epsilon > 0, or inf / 'none' (no DP) in a privacy-utility list."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "none"):
        return math.inf
    if _is_number(value) and math.isinf(value) and value > 0:
        return math.inf
    x = _number(key, value, text)
    if x <= 0:
        raise UserError(f"{key} must be a number > 0 or 'inf' (no DP), got {x:g}")
    return x


_epsilon_item.type = "number > 0 or 'inf'"

_MEAN_RE = re.compile(r"(?:e([0-9]+)|(uniform)):(.*)", re.IGNORECASE)
DATA_MEAN_FORMS = "eK:NORM (e.g. e1:0.5), uniform:NORM, none, or a path to a .npy file"


def _data_mean(key, value, text):
    """A data-mean spec: ``eK:NORM``, ``uniform:NORM``, ``none`` or a .npy path (made absolute,
    so that a sidecar re-runs from any folder). The array itself is built with the problem."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{key} must be {DATA_MEAN_FORMS}, got {_show(value)}")
    spec = value.strip()
    if spec.lower() == "none":
        return None
    m = _MEAN_RE.fullmatch(spec)
    if m:
        if m.group(1) is not None and int(m.group(1)) < 1:
            raise UserError(f"{key}: coordinates count from 1 (e1 is the first), got {spec!r}")
        _number(f"{key} {spec!r}: NORM", m.group(3), True)
        norm = m.group(3).strip()
        return f"e{int(m.group(1))}:{norm}" if m.group(1) else f"uniform:{norm}"
    if not spec.lower().endswith(".npy"):
        raise UserError(f"{key} must be {DATA_MEAN_FORMS}, got {spec!r}")
    return os.path.abspath(os.path.expanduser(spec))


_data_mean.type = "string: eK:NORM | uniform:NORM | none | FILE.npy"

_V_NOISE = _string
_V_D = _integer(1, MAX_D)
_V_POS = _real(0.0, lo_open=True)
_V_NONNEG = _real(0.0)
_V_RUNS = _integer(1, MAX_RUNS)
_V_SEED = _integer(0, 2**32 - 1)
_V_RECORDS = _integer(2, MAX_RECORDS)
_V_BATCH = _integer(1, 2**31 - 1)

_COMMON = {
    "noise": _V_NOISE,
    "spectrum": _string,
    "d": _V_D,
    "lr": _V_POS,
    "clip": _clip,
    "T": _V_POS,
    "batch": _V_BATCH,
    "clip_mode": _clip_mode,
}
_MC = {"runs": _V_RUNS, "seed": _V_SEED}
_OUT = {"n_records": _V_RECORDS, "out": _string, "plot": _boolean}
_V_DELTA = _interval(0.0, 1.0)
# the algorithm (--algorithm) and its options; every one defaults to None (not given) except
# the algorithm itself, and an option that does not apply to the chosen algorithm is refused
_ALGO = {
    "algorithm": _choice(ALGORITHMS),
    "noise_multiplier": _V_NONNEG,
    "epsilon": _V_POS,
    "delta": _V_DELTA,
    "accountant": _choice(ACCOUNTANTS),
    "adjacency": _choice(ADJACENCIES),
    "perturbation": _V_NONNEG,
    "data_mean": _data_mean,
    "quantile": _interval(0.0, 1.0),
    "clip_lr": _V_POS,
    "percentile": _interval(0.0, 100.0),
    "clip_value": _V_POS,
}
#: keys a sidecar may lack (written only when set; sidecars from before --algorithm lack all)
OPTIONAL_KEYS = set(_ALGO)

SCHEMAS = {
    "simulate": {**_COMMON, **_ALGO, **_MC, **_OUT},
    "ode": {**_COMMON, **_ALGO, **_OUT},
    "sde": {**_COMMON, **_ALGO, **_MC, "dt": _V_POS, **_OUT},
    "sweep": {
        **_COMMON,
        **_ALGO,
        "noises": _list_of(_string, sep=";", type_name="list of noise specs"),
        "lrs": _list_of(_V_POS),
        "clips": _list_of(_clip),
        **_MC,
        **_OUT,
    },
    "factors": {
        "noise": _V_NOISE,
        "risk": _list_of(_V_NONNEG),
        "clip": _list_of(_clip),
        "out": _string,
        "plot": _boolean,
    },
    "criteria": {
        "noise": _V_NOISE,
        "risk": _V_NONNEG,
        "clip": _list_of(_clip_positive),
        "out": _string,
        "plot": _boolean,
    },
    "privacy": {
        "noise_multiplier": _V_POS,
        "epsilon": _V_POS,
        "epsilons": _list_of(_epsilon_item),
        "delta": _V_DELTA,
        "steps": _integer(1, 10**15),
        "sampling_rate": _interval(0.0, 1.0, hi_closed=True),
        "accountant": _choice(ACCOUNTANTS),
        "adjacency": _choice(ADJACENCIES),
        "noise": _V_NOISE,
        "spectrum": _string,
        "d": _V_D,
        "batch": _V_BATCH,
        "T": _V_POS,
        "clips": _list_of(_clip_positive),
        "lrs": _list_of(_V_POS),
        "out": _string,
        "plot": _boolean,
    },
}
# options of which at most one may be given (singular / plural pairs of sweep, the ways to set
# DP-SGD's noise); the command line replaces the config file's choice among them
_DP_NOISE = ("noise_multiplier", "epsilon")
PAIRS = {
    "simulate": (_DP_NOISE,),
    "ode": (_DP_NOISE,),
    "sde": (_DP_NOISE,),
    "sweep": (("lr", "lrs"), ("clip", "clips"), ("noise", "noises"), _DP_NOISE),
    "privacy": (("noise_multiplier", "epsilon", "epsilons"),),
}

DEFAULTS = {
    "noise": "gaussian:std=0.5",
    "spectrum": "power-law:alpha=0.2",
    "d": 500,
    "lr": 0.6,
    "clip": None,
    "T": 15.0,
    "runs": 16,
    "seed": 0,
    "dt": 0.01,
    "out": "results",
    "plot": False,
    "n_records": 101,
    "batch": 1,
    "clip_mode": "per-example",
    "algorithm": "clipped",
    **{k: None for k in _ALGO if k != "algorithm"},
}
COMMAND_DEFAULTS = {
    "factors": {
        "noise": DEFAULTS["noise"],
        "risk": [0.01, 0.1, 1.0, 10.0],
        "clip": [0.1, 1.0, 10.0],
        "out": None,
        "plot": False,
    },
    "criteria": {"noise": DEFAULTS["noise"], "risk": 1.0, "clip": None, "out": None, "plot": False},
    # privacy: the problem options (noise ... T) are filled in by the --epsilons table only
    "privacy": {**{k: None for k in SCHEMAS["privacy"]}, "plot": False},
}
CONFIG_KEYS = set().union(*SCHEMAS.values())


def command_defaults(command) -> dict:
    if command in COMMAND_DEFAULTS:
        return dict(COMMAND_DEFAULTS[command])
    out = {k: DEFAULTS.get(k) for k in SCHEMAS[command]}
    if command == "sweep":
        out.update(lr=None, noise=None, lrs=None, clips=None, noises=None)
    return out


def keys_line(command) -> str:
    """One line: the config keys of ``command`` and their types."""
    schema = SCHEMAS[command]
    return "config keys (TOML): " + "; ".join(f"{k} ({schema[k].type})" for k in schema)


def validate_config(data, command, where, *, text=False) -> dict:
    """Check keys and value types of ``data`` (a TOML table or a sidecar's config) for
    ``command``; returns the normalized values. Raises UserError naming the key."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a table of key = value, got {type(data).__name__}")
    schema = SCHEMAS[command]
    unknown = [k for k in data if k not in schema]
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} for {command}; "
            f"allowed: {', '.join(schema)}"
        )
    out = {}
    for key, value in data.items():
        try:
            out[key] = schema[key](key, value, text)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    for group in PAIRS.get(command, ()):
        if sum(k in out for k in group) > 1:
            raise UserError(f"{where}: give {' or '.join(group)}, not {_together(group)}")
    return out


def _together(group):
    return "both" if len(group) == 2 else "several"


def _opt(key) -> str:
    return "--" + key.replace("_", "-")


def load_config(path, command=None) -> dict:
    """Read a TOML config. With ``command``, keys and types are checked against its schema;
    without, only the key names against every command's keys."""
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"--config: file {str(p)!r} "
            + ("is not a regular file" if p.exists() else "does not exist")
        )
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--config: {p} is not valid TOML ({_one_line(err)})") from None
    except OSError as err:
        raise UserError(f"--config: cannot read {str(p)!r} ({err.strerror or err})") from None
    if command is None:
        unknown = set(data) - CONFIG_KEYS
        if unknown:
            raise UserError(
                f"--config: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                f"{', '.join(sorted(CONFIG_KEYS))}"
            )
        return data
    return validate_config(data, command, f"--config {p}")


def settings(args, command) -> dict:
    """Defaults < config file < command-line options, every value checked."""
    cfg = command_defaults(command)
    from_file = load_config(args.config, command) if getattr(args, "config", None) else {}
    given = {}
    for key in SCHEMAS[command]:
        val = getattr(args, key, None)
        if val is not None:
            given[key] = SCHEMAS[command][key](_opt(key), val, True)
    for group in PAIRS.get(command, ()):
        named = [k for k in group if k in given]
        if len(named) > 1:
            raise UserError(f"{' and '.join(map(_opt, named))} given together; give one of them")
        if named:  # the command line replaces the file's setting
            for k in group:
                from_file.pop(k, None)
    cfg.update(from_file)
    cfg.update(given)
    return cfg


# ---------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------
def parse_spectrum(spec: str) -> tuple[str, dict]:
    """``power-law:alpha=0.2``, ``two-level:high=1,low=0.1,fraction=0.5``, ``isotropic``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("spectrum must be a non-empty string like 'power-law:alpha=0.2'")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    allowed = {"isotropic": (), "power-law": ("alpha",), "two-level": ("high", "low", "fraction")}
    if name not in allowed:
        raise ValueError(f"unknown spectrum {name!r} in {spec!r}; allowed: {', '.join(SPECTRA)}")
    kwargs = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or key not in allowed[name]:
            raise ValueError(
                f"spectrum {spec!r}: bad parameter {item!r}; {name} takes "
                f"{', '.join(allowed[name]) or 'no parameters'}"
            )
        if key in kwargs:
            raise ValueError(f"spectrum {spec!r}: parameter {key!r} given twice")
        try:
            x = float(val.strip())
        except ValueError:
            raise ValueError(f"spectrum {spec!r}: {key} must be a number, got {val!r}") from None
        if not math.isfinite(x):
            raise ValueError(
                f"spectrum {spec!r}: {key} must be a finite number (within the float range), "
                f"got {val.strip()!r}"
            )
        kwargs[key] = x
    if name == "power-law" and "alpha" not in kwargs:
        raise ValueError(f"spectrum {spec!r}: power-law needs alpha (e.g. power-law:alpha=0.2)")
    return name, kwargs


def make_problem(spectrum: str, d: int, noise, data_mean=None):
    """The Problem of a spectrum spec, dimension and noise law; ``data_mean`` a spec of
    :func:`data_mean_vector` (None: centred data)."""
    from . import Problem

    import numpy as np

    name, kw = parse_spectrum(spectrum)
    with np.errstate(over="ignore"):
        problem = _checked_problem(Problem, name, kw, spectrum, d, noise)
    if data_mean is not None:
        problem = problem.replace(data_mean=data_mean_vector(data_mean, d))
    return problem


def data_mean_vector(spec, d):
    """The data mean m (eigenbasis of K, length d) of a ``--data-mean`` spec: ``eK:NORM`` is
    NORM times the K-th coordinate vector, ``uniform:NORM`` NORM ones / sqrt(d), else a .npy file
    holding d finite numbers; ``none``: None."""
    import numpy as np

    spec = _data_mean("--data-mean", spec, True)
    if spec is None:  # "none": centred data
        return None
    m = _MEAN_RE.fullmatch(spec)
    if m:
        norm = _number(f"--data-mean {spec!r}: NORM", m.group(3), True)
        if m.group(2):
            return np.full(d, norm / math.sqrt(d))
        k = int(m.group(1))
        if k > d:
            raise UserError(f"--data-mean {spec!r}: coordinate {k} is beyond d = {d}")
        out = np.zeros(d)
        out[k - 1] = norm
        return out
    path = Path(spec)
    if not path.is_file():
        raise UserError(
            f"--data-mean: file {spec!r} "
            + ("is not a file" if path.exists() else "does not exist")
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"--data-mean: cannot read {spec!r} as .npy ({_one_line(err)})") from None
    if arr.dtype.kind not in "iuf" or arr.ndim != 1:
        raise UserError(
            f"--data-mean {spec!r}: needs a 1-D array of real numbers, got shape "
            f"{arr.shape} of {arr.dtype}"
        )
    if arr.size != d:
        raise UserError(f"--data-mean {spec!r}: holds {arr.size} numbers, d = {d}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise UserError(f"--data-mean {spec!r}: holds NaN or inf")
    return arr


def _file_sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _is_mean_file(spec) -> bool:
    return spec is not None and _MEAN_RE.fullmatch(spec) is None


def _checked_problem(Problem, name, kw, spectrum, d, noise):
    if name == "isotropic":
        problem = Problem.isotropic(d, noise)
    elif name == "power-law":
        problem = Problem.power_law(d, kw["alpha"], noise)
    else:
        problem = Problem.two_level(d, noise, **kw)
    if not (math.isfinite(problem.D) and math.isfinite(problem.initial_risk)):
        raise ValueError(f"spectrum {spectrum!r} at d = {d}: tr K overflows the float range")
    return problem


def parse_noise_checked(spec):
    """:func:`parse_noise` plus a check that the law's scale stays in the float range."""
    import numpy as np

    from . import parse_noise

    law = parse_noise(spec)
    try:
        with np.errstate(all="ignore"):
            second = float(law.second_moment)
            if not math.isfinite(second) and getattr(law, "df", 3.0) <= 2:
                second = float(law.scale) ** 2  # heavy tail: infinite variance is legitimate
    except OverflowError:
        second = math.inf
    if not math.isfinite(second):
        raise ValueError(f"noise spec {spec!r}: its parameters overflow the float range")
    return law


def _problem_from(cfg, noise_spec=None):
    noise = parse_noise_checked(noise_spec or cfg["noise"])
    return make_problem(cfg["spectrum"], cfg["d"], noise, cfg.get("data_mean")), noise


# ---------------------------------------------------------------------------------------------
# algorithms: which options each takes (anything else given is refused, never ignored)
# ---------------------------------------------------------------------------------------------
#: the algorithm options (beyond lr, clip, batch, clip_mode) each algorithm takes
ALGORITHM_OPTIONS = {
    "clipped": ("perturbation", "data_mean"),
    "dpsgd": ("noise_multiplier", "epsilon", "delta", "accountant", "adjacency", "data_mean"),
    "quantile": ("quantile", "clip_lr"),
    "autoclip": ("percentile",),
    "value": ("clip_value",),
    "sign": (),
}
_TAKES_CLIP = ("clipped", "dpsgd", "quantile")  # --clip: c (clipped, dpsgd) or c0 (quantile)
_BATCHED = ("clipped", "dpsgd")  # the others run one example per step
_HAS_SDE = ("clipped", "dpsgd", "quantile", "value", "sign")  # simulate_sde: not autoclip


def check_algorithm(cfg, command):
    """Refuse options the chosen algorithm does not take and missing required ones (one line,
    before any work)."""
    name = cfg.get("algorithm") or "clipped"
    where = f"--algorithm {name}"
    sweep = command == "sweep"
    for key in _ALGO:
        if key != "algorithm" and cfg.get(key) is not None and key not in ALGORITHM_OPTIONS[name]:
            takers = [a for a, keys in ALGORITHM_OPTIONS.items() if key in keys]
            raise UserError(
                f"{_opt(key)} does not apply to {where} (it is an option of {', '.join(takers)})"
            )
    clips = [cfg.get("clip")] + list(cfg.get("clips") or []) if sweep else [cfg.get("clip")]
    if name not in _TAKES_CLIP:
        own = {
            "value": "; give --clip-value (tau, gradient units)",
            "autoclip": " (it sets its own threshold)",
            "sign": " (signSGD has no threshold)",
        }[name]
        if cfg.get("clip") is not None:
            raise UserError(f"--clip does not apply to {where}{own}")
        if sweep and cfg.get("clips") is not None and name != "value":
            raise UserError(f"--clips does not apply to {where}: there is no clip axis{own}")
    if name not in _BATCHED and cfg.get("batch", 1) != 1:
        raise UserError(f"--batch {cfg['batch']}: {where} takes one example per step (batch 1)")
    if name != "clipped" and cfg.get("clip_mode", "per-example") != "per-example":
        raise UserError(
            f"--clip-mode {cfg['clip_mode']} does not apply to {where}"
            + (" (DP-SGD clips each example)" if name == "dpsgd" else "")
        )
    if command == "sde" and name not in _HAS_SDE:
        raise UserError(f"{where} has no homogenized SDE; use simulate or ode")
    if cfg.get("perturbation") and cfg.get("batch", 1) > 1 and cfg.get("clip_mode") == "mean":
        raise UserError(
            "--perturbation needs --clip-mode per-example at --batch > 1 (each example's "
            "gradient is perturbed before its own clipping)"
        )
    if command == "ode" and cfg.get("data_mean") is not None and cfg.get("batch", 1) > 1:
        if cfg.get("clip_mode") == "mean":
            raise UserError(
                "ode: --data-mean with --clip-mode mean at --batch > 1 has no derived "
                "equivalent; use --clip-mode per-example (simulate runs it)"
            )
    has_clip = any(c is not None for c in clips)
    if name == "dpsgd":
        if not has_clip:
            raise UserError(
                f"{where} needs --clip{'/--clips' if sweep else ''} (a finite threshold: "
                "without clipping the sensitivity is infinite)"
            )
        if sweep and any(c is None for c in (cfg.get("clips") or [])):
            raise UserError(f"--clips: {where} needs finite thresholds, got 'none'")
        if cfg.get("noise_multiplier") is None and cfg.get("epsilon") is None:
            raise UserError(f"{where} needs --noise-multiplier S or --epsilon E (with --delta)")
        if cfg.get("epsilon") is not None and cfg.get("delta") is None:
            raise UserError("--epsilon needs --delta (the privacy guarantee is (epsilon, delta))")
        if cfg.get("delta") is None:
            for key in ("accountant", "adjacency"):
                if cfg.get(key) is not None:
                    raise UserError(f"{_opt(key)} needs --delta (it accounts privacy at delta)")
        if cfg.get("noise_multiplier") == 0 and cfg.get("delta") is not None:
            raise UserError("--delta: a noise multiplier of 0 gives no privacy guarantee to report")
    elif name == "quantile":
        if not has_clip:
            raise UserError(
                f"{where} needs --clip C0{'/--clips' if sweep else ''} (the initial threshold, "
                "residual units)"
            )
        if sweep and any(c is None for c in (cfg.get("clips") or [])):
            raise UserError(f"--clips: {where} needs finite initial thresholds, got 'none'")
        for key, what in (("quantile", "Q in (0, 1)"), ("clip_lr", "X > 0")):
            if cfg.get(key) is None:
                raise UserError(f"{where} needs {_opt(key)} {what}")
    elif name == "autoclip" and cfg.get("percentile") is None:
        raise UserError(f"{where} needs --percentile P")
    elif name == "value" and cfg.get("clip_value") is None and not (sweep and cfg.get("clips")):
        raise UserError(f"{where} needs --clip-value V" + (" or --clips" if sweep else ""))
    elif name == "value" and sweep and cfg.get("clip_value") is not None and cfg.get("clips"):
        raise UserError("--clip-value and --clips given together; give one of them")
    return name


def _privacy_api(fn, *args, **kwargs):
    """A privacy function; the dp extra's ImportError (one line) becomes a user error."""
    try:
        return fn(*args, **kwargs)
    except ImportError as err:
        raise UserError(_one_line(err)) from None


def _algorithm_from(cfg, lr=None, clip="from-cfg"):
    """The algorithm of the settings (``algorithm`` and its options, lr, clip, batch,
    clip_mode); ``lr`` / ``clip`` override the settings' (sweeps)."""
    from . import DPSGD, AutoClipSGD, ClippedSGD, QuantileClipSGD, SignSGD, ValueClipSGD
    from ._privacy import privacy_report

    name = cfg.get("algorithm") or "clipped"
    lr = V.positive("lr", cfg["lr"] if lr is None else lr)
    clip = cfg["clip"] if clip == "from-cfg" else clip
    if name == "clipped":
        return ClippedSGD(
            lr,
            clip,
            batch=cfg["batch"],
            clip_mode=cfg["clip_mode"],
            perturbation=cfg.get("perturbation") or 0.0,
        )
    if name == "dpsgd":
        accountant = cfg.get("accountant") or "analytic"
        adjacency = cfg.get("adjacency") or "add-remove"
        if cfg.get("epsilon") is not None:
            return _privacy_api(
                DPSGD.for_epsilon,
                lr,
                clip,
                batch=cfg["batch"],
                epsilon=cfg["epsilon"],
                delta=cfg["delta"],
                accountant=accountant,
                adjacency=adjacency,
            )
        sigma = cfg["noise_multiplier"]
        report = None
        if cfg.get("delta") is not None:
            report = _privacy_api(
                privacy_report, sigma, cfg["delta"], accountant=accountant, adjacency=adjacency
            )
        return DPSGD(lr, clip, batch=cfg["batch"], noise_multiplier=sigma, privacy=report)
    if name == "quantile":
        return QuantileClipSGD(lr, clip, quantile=cfg["quantile"], clip_lr=cfg["clip_lr"])
    if name == "autoclip":
        return AutoClipSGD(lr, percentile=cfg["percentile"])
    if name == "value":
        return ValueClipSGD(lr, cfg["clip_value"] if clip is None else clip)
    return SignSGD(lr)


def _check_size(cfg, cells=1):
    total = cfg.get("runs", 1) * cfg["n_records"] * cells
    if total > MAX_CELLS:
        raise UserError(
            f"runs x n_records{' x grid cells' if cells > 1 else ''} = {total} is more than the "
            f"{MAX_CELLS} values the results may hold; use fewer runs or records"
        )


# ---------------------------------------------------------------------------------------------
# output folders: checked (created, probed) before any computation
# ---------------------------------------------------------------------------------------------
class OutDir:
    """``--out DIR``: created if missing and probed with a temp file before any work; removed
    again if the command fails and it is still empty."""

    def __init__(self, path):
        self.path = Path(path)
        self.created: list[Path] = []

    def check(self):
        p, shown = self.path, str(self.path)
        try:
            exists_not_dir = p.exists() and not p.is_dir()
        except OSError as err:  # e.g. a name too long for the file system
            raise UserError(
                f"--out {shown!r} is not a usable path ({err.strerror or err})"
            ) from None
        if exists_not_dir:
            raise UserError(f"--out {shown!r} exists and is not a directory")
        missing = []
        q = p
        try:
            while not q.exists():
                missing.append(q)
                if q.parent == q:
                    break
                q = q.parent
        except OSError as err:  # e.g. a name too long for the file system
            raise UserError(
                f"--out {shown!r} is not a usable path ({err.strerror or err})"
            ) from None
        if q.exists() and not q.is_dir():
            raise UserError(f"--out {shown!r}: {str(q)!r} is not a directory")
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self.created.append(folder)
            fd, probe = tempfile.mkstemp(dir=p, prefix=".clipped-trip-probe-")
            os.close(fd)
            os.remove(probe)
        except OSError as err:
            self.cleanup()
            raise UserError(
                f"--out {shown!r} is not a writable directory ({err.strerror or err})"
            ) from None
        return self

    def cleanup(self):
        """Remove the folders this check created, if they are still empty."""
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break
        self.created = []


_ACTIVE_OUT: list[OutDir] = []


def _prepare_out(path) -> Path:
    if path is None or not str(path).strip():
        raise UserError(f"--out must be a non-empty folder path, got {_show(path)}")
    out = OutDir(path).check()
    _ACTIVE_OUT.append(out)
    return out.path


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
def _write_outputs(result, cfg, name, command, plot_fn=None, extra=None):
    from ._io import atomic_write, save_result

    out = Path(cfg["out"])
    meta = {"command": command, "config": _jsonable(cfg, command), **(extra or {})}
    path = save_result(result, out / f"{name}.npz", extra=meta)
    written = [path, path.with_suffix(".json")]
    if cfg.get("plot") and plot_fn is not None:
        import matplotlib

        matplotlib.use("Agg")
        fig = plot_fn()
        written.append(
            atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png"))
        )
    return written


def _jsonable(cfg, command):
    return {k: cfg[k] for k in SCHEMAS[command] if cfg.get(k) is not None or k == "clip"}


def _plot_title(kind, cfg, alg, problem) -> str:
    """What the run was: command, algorithm, lr, clip, batch, noise, spectrum, d (two lines)."""
    desc = alg.describe()
    parts = [f"{kind}: {desc.get('algorithm', type(alg).__name__)}", f"lr {desc.get('lr')}"]
    for key in ("clip", "clip_value", "quantile", "clip_lr", "percentile", "noise_multiplier"):
        if desc.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {desc[key]}")
    if desc.get("batch", 1) != 1:
        parts.append(f"batch {desc['batch']} ({desc.get('clip_mode')})")
    line2 = f"noise {cfg['noise']}, {cfg['spectrum']}, d = {problem.d}, D = {problem.D:.4g}"
    return ", ".join(str(p) for p in parts) + "\n" + line2


def _plot_paths(result, title, ode=None):
    """Risk paths: SGD/SDE mean and 80% band with the ODE overlaid (its max gap in the legend),
    or the ODE alone; log y axis with several labelled ticks."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    r = result.risk if result.risk.ndim == 2 else result.risk[None, :]
    if result.risk.ndim == 2:
        lo, hi = result.band(0.8, exclude_diverged=True)
        mean = result.mean(exclude_diverged=True)
        ax.fill_between(
            result.t,
            lo,
            hi,
            alpha=0.3,
            lw=0,
            color="C0",
            label=f"80% band of {result.runs} runs (10%-90% quantiles)",
        )
        ax.plot(result.t, mean, color="C0", label="mean over runs (finite runs)")
        if ode is not None:
            ok = np.isfinite(ode.risk) & np.isfinite(mean) & (result.t > 0)
            gap = float(np.max(np.abs(mean[ok] / ode.risk[ok] - 1))) if ok.any() else float("nan")
            fin = np.isfinite(ode.risk)
            ax.plot(
                ode.t[fin],
                ode.risk[fin],
                "k--",
                lw=1.2,
                label=f"ODE (max |mean/ODE - 1| = {100 * gap:.2g}%)",
            )
        diverged = np.flatnonzero(result.diverged)
        for i in diverged[:10]:  # diverged runs: their finite part
            ok = np.isfinite(r[i])
            ax.plot(
                result.t[ok],
                r[i][ok],
                color="C3",
                lw=0.6,
                alpha=0.6,
                label="diverged runs (until they diverge)" if i == diverged[0] else None,
            )
        if result.diverged.any():
            title = f"{title}\n{result.divergence_report()}"
    else:
        finite = np.isfinite(r[0])
        ax.plot(result.t[finite], r[0][finite], "k--", label="ODE")
        if result.diverged:
            title += f"\ndiverged at t = {result.divergence_time:.3g}"
    ax.set_title(title, fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.2, not 2 x 10^-1
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("t = steps / D")
    ax.set_ylabel("excess risk R")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cmd_simulate(args, kind):
    return run_simulate(settings(args, kind), kind)


def _algorithm_meta(cfg, alg) -> dict:
    """Sidecar entries beyond the config: the privacy report (dpsgd) and the data-mean file's
    SHA-256 (rerun refuses a file that changed)."""
    meta = {}
    if getattr(alg, "privacy", None) is not None:
        meta["privacy"] = alg.privacy
    spec = cfg.get("data_mean")
    if _is_mean_file(spec):
        meta["data_mean_file"] = {"path": spec, "sha256": _file_sha256(spec)}
    return meta


def _algorithm_lines(cfg, alg, res, kind) -> list[str]:
    """What the summary line does not say: DP-SGD's noise and privacy, the threshold of adaptive
    rules, the population risk with a data mean."""
    import numpy as np

    lines = []
    name = cfg.get("algorithm") or "clipped"
    if name == "dpsgd":
        sigma = alg.noise_multiplier
        if alg.privacy is not None:
            pr = alg.privacy
            lines.append(
                f"privacy: (epsilon, delta) = ({pr['epsilon']:.6g}, {pr['delta']:g}), noise "
                f"multiplier {sigma:.6g}, {pr['accountant']} accountant, {pr['adjacency']}, "
                "one-pass stream: a single Gaussian mechanism"
            )
        else:
            lines.append(f"noise multiplier {sigma:.6g} (no --delta: no privacy accounting)")
    final = None
    if kind == "ode" and name in ("quantile", "autoclip"):
        final = float(res.clip_path[-1])
        lines.append(f"predicted final clip threshold c = {final:.6g} (residual units)")
    elif kind != "ode" and "clip" in res.stats:
        clip = np.asarray(res.stats["clip"])[:, -1]
        lines.append(
            f"mean final clip threshold c = {float(np.nanmean(clip)):.6g} (residual units)"
        )
    if "population_risk" in res.stats:
        pop = np.asarray(res.stats["population_risk"])
        if kind == "ode":
            value, what = float(pop[-1]), "final population risk"
        else:
            keep = ~np.asarray(res.diverged)
            value = float(np.mean(pop[keep, -1])) if keep.any() else math.nan
            what = "mean final population risk" + ("" if keep.all() else " of the finite runs")
        lines.append(f"{what} {value:.6g} (R + <m, e>^2 / 2)")
    return lines


def _overlay_ode(res, kind, problem, alg):
    """The ODE at the Monte Carlo record times, for the plot (None where it has none)."""
    if kind == "ode":
        return None
    from . import solve_ode

    try:
        return solve_ode(problem, alg, times=res.t)
    except (ValueError, OverflowError, RuntimeError):
        return None


def run_simulate(cfg, kind):
    from . import simulate, simulate_sde, solve_ode

    check_algorithm(cfg, kind)
    problem, _ = _problem_from(cfg)
    alg = _algorithm_from(cfg)
    if kind != "ode":
        _check_size(cfg)
    _prepare_out(cfg["out"])
    if kind == "ode":
        res = solve_ode(problem, alg, T=cfg["T"], n_records=cfg["n_records"])
    else:
        mc = dict(T=cfg["T"], runs=cfg["runs"], seed=cfg["seed"], n_records=cfg["n_records"])
        if kind == "simulate":
            res = simulate(problem, alg, **mc)
        else:
            res = simulate_sde(problem, alg, dt=cfg["dt"], **mc)
    written = _write_outputs(
        res,
        cfg,
        kind,
        kind,
        lambda: _plot_paths(
            res, _plot_title(kind, cfg, alg, problem), _overlay_ode(res, kind, problem, alg)
        ),
        _algorithm_meta(cfg, alg),
    )
    final = res.risk[..., -1]
    if kind == "ode":
        print(
            f"ODE final risk {float(final):.6g} at T = {res.t[-1]:g}"
            + (f"; diverged at t = {res.divergence_time:.3g}" if res.diverged else "")
        )
    else:
        n_div = int(res.diverged.sum())
        if n_div == res.runs:  # nothing finite to average: the report says it all
            print(f"{kind}: {res.runs} runs at T = {res.t[-1]:g}; {res.divergence_report()}")
        else:
            which = (
                "mean final risk"
                if n_div == 0
                else f"mean final risk of the {res.runs - n_div} finite runs"
            )
            print(
                f"{kind}: {res.runs} runs, {which} "
                f"{float(res.mean(exclude_diverged=True)[-1]):.6g}"
                f" at T = {res.t[-1]:g}; {res.divergence_report()}"
            )
    for line in _algorithm_lines(cfg, alg, res, kind):
        print(line)
    for w in written:
        print(f"wrote {w}")
    return 0


def _table_out(cfg):
    if cfg["plot"] and not cfg["out"]:
        raise UserError("--plot writes a PNG into --out DIR: give --out too")
    return _prepare_out(cfg["out"]) if cfg["out"] else None


def _note(text):
    """A message for the reader, on stderr: stdout of factors / criteria is pure CSV."""
    print(text, file=sys.stderr)


def _write_table_outputs(out, name, header, rows, plot_fn=None, plot=False):
    """Print a CSV table (header and rows only: stdout pipes into a CSV reader); with an output
    folder also write it (atomically), with plot a PNG; the paths written go to stderr."""
    from ._io import atomic_write

    text = "\n".join([",".join(header)] + [",".join(r) for r in rows])
    print(text)
    if out is not None:
        path = atomic_write(out / f"{name}.csv", lambda tmp: Path(tmp).write_text(text + "\n"))
        _note(f"wrote {path}")
        if plot and plot_fn is not None:
            import matplotlib

            matplotlib.use("Agg")
            fig = plot_fn()
            _note(
                "wrote "
                + str(atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png")))
            )


def _plot_grid(clips):
    """The c axis of a factors / criteria plot: 200 points spanning the finite clips asked for
    (a decade either side of a single one), on a log scale."""
    import numpy as np

    finite = [float(c) for c in clips if c is not None]
    if not finite:
        return np.logspace(-2, 2, 200)
    lo, hi = min(finite), max(finite)
    if hi <= lo * 1.0001:
        lo, hi = lo / 10, hi * 10
    return np.geomspace(lo, hi, 200)


def cmd_factors(args):
    import numpy as np

    from . import reduction_factors

    cfg = settings(args, "factors")
    noise = parse_noise_checked(cfg["noise"])
    risks, clips = cfg["risk"], cfg["clip"]
    if len(risks) * len(clips) > 10_000:
        raise UserError(
            f"factors: {len(risks)} risks x {len(clips)} clips = {len(risks) * len(clips)} rows; "
            "at most 10000 (use the Python API reduction_factors for larger grids)"
        )
    out = _table_out(cfg)
    rows = []
    for R in risks:
        for c in clips:
            mu, nu = reduction_factors(noise, R, c)
            rows.append(
                [
                    f"{R:.6g}",
                    "inf" if c is None else f"{c:.6g}",
                    f"{float(mu):.12g}",
                    f"{float(nu):.12g}",
                ]
            )

    def plot():
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        cs = _plot_grid(clips)  # the range of the clips asked for; markers at those clips
        marks = np.array([c for c in clips if c is not None], dtype=float)
        for k, R in enumerate(risks):
            mu, nu = reduction_factors(noise, R, cs)
            axes[0].semilogx(cs, mu, color=f"C{k % 10}", label=f"R = {R:g}")
            axes[1].loglog(cs, nu, color=f"C{k % 10}", label=f"R = {R:g}")
            if marks.size:
                mu_m, nu_m = reduction_factors(noise, R, marks)
                axes[0].plot(marks, mu_m, "o", color=f"C{k % 10}", ms=4)
                axes[1].plot(marks, nu_m, "o", color=f"C{k % 10}", ms=4)
        axes[0].set_title(f"mu_c(R), {noise!r}"[:60], fontsize=9)
        axes[1].set_title("nu_c(R)", fontsize=9)
        for ax in axes:
            ax.set_xlabel("c (residual units)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    _write_table_outputs(out, "factors", ["risk", "clip", "mu", "nu"], rows, plot, cfg["plot"])
    return 0


def cmd_criteria(args):
    import numpy as np

    from . import ccc, critical_lr, csc, max_ccc

    cfg = settings(args, "criteria")
    noise = parse_noise_checked(cfg["noise"])
    R = cfg["risk"]
    clips = np.logspace(-2, 2, 9) if cfg["clip"] is None else np.array(cfg["clip"])
    out = _table_out(cfg)
    _note(f"noise {noise!r}, R = {R:g}")
    rows = [
        [
            f"{c:.6g}",
            f"{float(ccc(noise, R, c)):.6g}",
            f"{float(csc(noise, R, c)):.6g}",
            f"{float(critical_lr(noise, R, c)):.6g}",
        ]
        for c in clips
    ]

    def plot():
        import matplotlib.pyplot as plt

        cs = _plot_grid(clips)  # the range of the clips asked for; markers at those clips
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.semilogx(cs, ccc(noise, R, cs), color="C0", label="CCC")
        ax.semilogx(cs, csc(noise, R, cs), color="C1", label="CSC")
        ax.plot(clips, ccc(noise, R, clips), "o", color="C0", ms=4)
        ax.plot(clips, csc(noise, R, clips), "o", color="C1", ms=4)
        ax.axhline(1, color="k", ls="--", lw=0.8)
        ax.set_xlim(cs[0] / 1.15, cs[-1] * 1.15)
        ax.set_yscale("log")
        ax.set_xlabel("c (residual units)")
        ax.set_title(f"{noise!r}, R = {R:g}"[:60], fontsize=9)
        ax.legend()
        fig.tight_layout()
        return fig

    header = ["clip", "ccc", "csc", "critical_lr"]
    _write_table_outputs(out, "criteria", header, rows, plot, cfg["plot"])
    value, c_star = max_ccc(noise, R)
    _note(
        f"optimal clip c* = {float(c_star):.6g}, max CCC = {float(value):.6g}"
        + (" (no finite threshold beats no clipping)" if np.isinf(c_star) else "")
    )
    return 0


def _slug(spec: str, used: set) -> str:
    """A file-name-safe, unique tag for a noise spec: only [A-Za-z0-9._-]."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.replace("=", "")).strip("._-")[:80] or "noise"
    tag, n = base, 2
    while tag.lower() in used:
        tag, n = f"{base}-{n}", n + 1
    used.add(tag.lower())
    return tag


def _sweep_plot(grids, lrs, clips, xlabel="clip c (residual units)", no_axis=False):
    """Heat maps of log10 final risk over (lr, clip) on one colour scale, one panel per entry of
    ``grids`` [(title, grid)] (sweep: SGD beside ODE per noise law; ``no_axis``: an algorithm
    without a clip axis)."""
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(grids)
    fig, axes = plt.subplots(1, n, figsize=(1.5 + 3.2 * n, 3.2), squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    with np.errstate(all="ignore"):
        logs = [np.log10(np.asarray(g, dtype=float)) for _, g in grids]
    finite = np.concatenate([v[np.isfinite(v)] for v in logs] + [np.zeros(0)])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (None, None)
    for ax, (spec, _grid), lz in zip(axes[0], grids, logs):
        z = np.ma.masked_invalid(lz)
        im = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        ticks = ["-" if no_axis else "none" if c is None else f"{c:g}" for c in clips]
        ax.set_xticks(range(len(clips)), ticks)
        ax.set_yticks(range(len(lrs)), [f"{x:g}" for x in lrs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("lr")
        ax.set_title(spec[:40], fontsize=9)
        fig.colorbar(im, ax=ax, label="log10 (mean) final risk (grey: diverged / none)")
    fig.tight_layout()
    return fig


def cmd_sweep(args):
    import numpy as np
    from tqdm.auto import tqdm

    from . import sweep
    from ._io import atomic_write, save_result

    cfg = settings(args, "sweep")
    name = check_algorithm(cfg, "sweep")
    noises = cfg["noises"] or [cfg["noise"] or DEFAULTS["noise"]]
    lrs = cfg["lrs"] or [cfg["lr"] or DEFAULTS["lr"]]
    # the clip axis: c (clipped, dpsgd), c0 (quantile), tau (value); none for autoclip, sign
    if name == "value":
        clips = cfg["clips"] or [cfg["clip_value"]]
    else:
        clips = cfg["clips"] or [cfg["clip"]]
    # validate everything before any work
    problems = [_problem_from(cfg, spec)[0] for spec in noises]
    first = clips[0]
    base = _algorithm_from(
        cfg,
        lr=lrs[0],
        clip=(math.inf if first is None else first)
        if name in ("dpsgd", "quantile", "value")
        else None,
    )
    _check_size(cfg, len(lrs) * len(clips))
    out = _prepare_out(cfg["out"])
    rows, grids, used = [], [], set()
    record = {k: v for k, v in cfg.items() if k not in ("lr", "clip", "noise", "noises")}
    record.update(lrs=lrs, clips=clips)
    extra = _algorithm_meta(cfg, base)
    no_axis = name in ("autoclip", "sign")
    for spec, problem in tqdm(list(zip(noises, problems)), desc="sweep", disable=args.quiet):
        res = sweep(
            problem,
            lrs,
            clips,
            algorithm=base,
            T=cfg["T"],
            runs=cfg["runs"],
            seed=cfg["seed"],
            n_records=cfg["n_records"],
        )
        meta = {"command": "sweep", "config": {**record, "noise": spec}, "noise": spec, **extra}
        save_result(res, out / f"sweep_{_slug(spec, used)}.npz", extra=meta)
        grid = np.empty((len(lrs), len(clips)))
        ode_grid = np.full((len(lrs), len(clips)), np.nan)  # NaN: no ODE for that cell
        caches = [{} for _ in clips]  # ODE factor tables, shared along the lr axis of a clip
        for i, lr in enumerate(lrs):
            for j, c in enumerate(clips):
                cell = res.risk[i, j]
                grid[i, j] = float(np.mean(cell[:, -1]))
                ode_final = _sweep_ode_final(problem, base, lr, c, res.t, caches[j])
                if ode_final is not None:
                    ode_grid[i, j] = ode_final
                row = {
                    "noise": spec,
                    "lr": lr,
                    "clip": "n/a" if no_axis else "inf" if c is None else c,
                    "final_mean_risk": grid[i, j],
                    "final_median_risk": float(np.median(cell[:, -1])),
                    "ode_final_risk": "" if ode_final is None else ode_final,
                    "rel_gap": _rel_gap(grid[i, j], ode_final),
                    "runs_diverged": int(res.diverged[i, j].sum()),
                    "runs": cfg["runs"],
                    "batch": cfg["batch"],
                    "clip_mode": cfg["clip_mode"],
                    "algorithm": name,
                }
                for stat in ("clip", "population_risk"):  # adaptive c; data mean
                    if stat in res.stats:
                        values = np.asarray(res.stats[stat][i, j])[:, -1]
                        row[f"final_mean_{stat}"] = float(np.nanmean(values))
                rows.append(row)
        grids.append((f"SGD: {spec}", grid))
        grids.append((f"ODE: {spec}", ode_grid))  # beside it, same colour scale
        # the table so far, rewritten atomically after each noise law: an interrupted sweep
        # keeps every finished law in sweep.csv (and its npz + sidecar)
        text = _csv_text(rows)
        path = atomic_write(out / "sweep.csv", lambda tmp, text=text: Path(tmp).write_text(text))
    print(text.rstrip())
    print(f"wrote {path}")
    if cfg["plot"]:
        import matplotlib

        matplotlib.use("Agg")
        xlabel = {
            "quantile": "initial clip c0 (residual units)",
            "value": "clip value tau (gradient units)",
            "autoclip": "no clip axis (AutoClip sets its threshold)",
            "sign": "no clip axis (signSGD)",
        }.get(name, "clip c (residual units)")
        fig = _sweep_plot(grids, lrs, clips, xlabel, no_axis)
        png = atomic_write(out / "sweep.png", lambda tmp: fig.savefig(tmp, format="png"))
        print(f"wrote {png}")
    return 0


def _sweep_ode_final(problem, base, lr, clip, times, cache):
    """The ODE's prediction of a sweep cell's final risk (inf: the ODE diverges), or None where
    the ODE cannot be solved (no deterministic equivalent, too stiff, ...)."""
    import warnings

    from . import solve_ode

    try:
        alg = base.replace(lr=lr, clip=math.inf if clip is None else clip)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ode = solve_ode(problem, alg, times=times, cache=cache)
        return float(ode.risk[-1])
    except (ValueError, NotImplementedError, ArithmeticError, RuntimeError):
        return None


def _rel_gap(sgd_final, ode_final):
    """mean SGD final risk / ODE final risk - 1; blank where the ODE gave no finite value."""
    if ode_final is None or not math.isfinite(ode_final) or ode_final <= 0:
        return ""
    return sgd_final / ode_final - 1.0


def _csv_text(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


#: modules registering figures beyond clipped_trip._figures (imported when present)
_FIGURE_MODULES = ("_figures_batch", "_figures_private", "_figures_adaptive", "_figures_phase")

#: run time of each figure in seconds, (full, --quick), on an idle 2-core CPU machine. Measured
#: with run_figure on a busy 2-core machine (load 5-11), then scaled by 0.4: fig1 at full size
#: took 44 s there against the 15-20 s it takes idle (README). Raw (full, quick) seconds: fig1
#: (44, 32), fig2 (3, 3), fig3 (4, 6), fig4 (4, 5), fig5 (4, 4), fig6 (93, 60), fig7 (19, 19),
#: dscaling (61, 22), minibatch (435, 86), critical-batch (514, 205), privacy (710, 25), bias
#: (248, 50), adaptive (243, 125), value-clipping (175, 43). Kept here until the figure
#: registry records it; a figure missing here shows "?" in reproduce --list.
FIGURE_TIMES = {
    "fig1": (17, 13),
    "fig2": (1, 1),
    "fig3": (2, 2),
    "fig4": (2, 2),
    "fig5": (2, 2),
    "fig6": (37, 24),
    "fig7": (8, 8),
    "dscaling": (24, 9),
    "minibatch": (174, 34),
    "critical-batch": (206, 82),
    "privacy": (284, 10),
    "bias": (99, 20),
    "adaptive": (97, 50),
    "value-clipping": (70, 17),
    "clipping-map": (40, 25),
}


def figure_registry() -> dict:
    """{name: (function, description)} of every figure, the later figure modules included."""
    import importlib

    from ._figures import FIGURES

    for module in _FIGURE_MODULES:
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as err:  # a module not (yet) in this version
            if err.name != f"{__package__}.{module}":
                raise
    return FIGURES


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"~{round(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"


def figure_times(name) -> tuple[str, str]:
    """(full, quick) run time of a figure as text ("?" where none is recorded)."""
    full, quick = FIGURE_TIMES.get(name, (None, None))
    return _duration(full), _duration(quick)


def _figure_script(name) -> str:
    return f"experiments/{name.replace('-', '_')}.py"


def figure_parser(name, prog=None) -> argparse.ArgumentParser:
    """The usage of one figure: ``reproduce NAME --help`` and ``python experiments/NAME.py
    --help`` (``prog``: the script's name there)."""
    _, title = figure_registry()[name]
    full, quick = figure_times(name)
    script = _figure_script(name)
    description = (
        f"{title} (figure {name}). Run time on 2 CPU cores: {full} (--quick: {quick}). Writes "
        f"{name}.png, {name}.pdf and its data {name}.npz + {name}.json into --out (read them "
        f"with clipped_trip.load_result('DIR/{name}.npz'))."
    )
    examples = [
        f"clipped-trip reproduce {name} --quick --out figures",
        f"python {script} --quick --out figures   (the same)",
    ]
    epilog = "\n".join([textwrap.fill(UNITS, 79)] + [f"example: {x}" for x in examples])
    p = argparse.ArgumentParser(
        prog=prog or f"clipped-trip reproduce {name}",
        description=textwrap.fill(description, 79),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help=f"small version, {quick} (default: full size, {full})"
    )
    p.add_argument(
        "--out", metavar="DIR", default="figures", help="output folder (default figures)"
    )
    if name == "fig7":
        p.add_argument(
            "--data",
            metavar="DIR",
            help="folder with the CIFAR-10 binary batches data_batch_1.bin ... data_batch_5.bin "
            "(default: scikit-learn's bundled digits)",
        )
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    return p


class _FigureHelp(argparse.Action):
    """``reproduce --help``; after a figure name, that figure's own usage (shown under the
    script's name when run as ``python experiments/NAME.py --help``)."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        name = getattr(namespace, "figure", None)
        if name and name != "all" and name in figure_registry():
            script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
            prog = None
            if script is not None and script.suffix == ".py":
                if script.stem == name.replace("-", "_"):
                    prog = script.name
            figure_parser(name, prog).print_help()
        else:
            parser.print_help()
        parser.exit()


def cmd_reproduce(args):
    if args.list:
        if args.figure:
            raise UserError("give a FIGURE or --list, not both")
        FIGURES = figure_registry()
        width = max(len(n) for n in FIGURES)
        print(f"{'figure':<{width}}  {'full':>8}  {'--quick':>8}  description")
        for name, (_, title) in FIGURES.items():
            full, quick = figure_times(name)
            print(f"{name:<{width}}  {full:>8}  {quick:>8}  {title}")
        _note("run times on 2 CPU cores ('?': not recorded); clipped-trip reproduce FIGURE --help")
        return 0
    if not args.figure:
        raise UserError("give a FIGURE (see --list) or 'all'")
    _prepare_out(args.out)  # a bad --out is refused at once (removed again on a later error)
    from ._figures import run_figure

    FIGURES = figure_registry()
    names = list(FIGURES) if args.figure == "all" else [args.figure]
    for n in names:
        if n not in FIGURES:
            raise UserError(f"unknown figure {n!r}; allowed: {', '.join(FIGURES)}, all")
    if args.data and "fig7" not in names:
        raise UserError("--data is read by fig7 only")
    if args.data and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data!r} is not a directory")
    for n in names:
        extra = {"data": args.data} if (n == "fig7" and args.data) else {}
        (path, _), secs = run_figure(
            n, quick=args.quick, out=args.out, progress=not args.quiet, **extra
        )
        print(f"{n}: wrote {path} ({secs:.1f} s)")
    return 0


# the three uses of the privacy command, by the option that picks them, and what each takes
_PRIVACY_USES = {
    "noise_multiplier": ("delta", "steps", "sampling_rate", "accountant", "adjacency"),
    "epsilon": ("delta", "steps", "sampling_rate", "accountant", "adjacency"),
    "epsilons": (
        "delta",
        "accountant",
        "adjacency",
        "noise",
        "spectrum",
        "d",
        "batch",
        "T",
        "clips",
        "lrs",
        "out",
        "plot",
    ),
}


def cmd_phase(args):
    """ODE phase diagram over (lr, clip) per noise law in one compiled program (SPEC 4)."""
    from . import DPSGD, ClippedSGD, phase_diagram

    def floats(name, text, allow_none=False):
        out = []
        for item in str(text).split(","):
            item = item.strip()
            if allow_none and item.lower() in ("none", "inf"):
                out.append(None)
                continue
            try:
                out.append(float(item))
            except ValueError:
                raise UserError(f"{name}: expected comma-separated numbers, got {item!r}") from None
        return out

    noises = [parse_noise_checked(n) for n in args.noises.split(";") if n.strip()]
    if not noises:
        raise UserError("--noises: give at least one noise law")
    out = _prepare_out(args.out) if args.out else None
    problem = make_problem(args.spectrum, V.count("--d", args.d), noises[0])
    axes = {}
    if len(noises) > 1:
        axes["noise"] = noises
    axes["lr"] = floats("--lrs", args.lrs)
    axes["clip"] = floats("--clips", args.clips, allow_none=True)
    if args.algorithm == "dpsgd":
        cls, params = DPSGD, {"batch": args.batch, "noise_multiplier": args.noise_multiplier}
    else:
        cls, params = ClippedSGD, {"batch": args.batch}
    import numpy as np

    pd = phase_diagram(problem, cls, axes, T=args.T, params=params, target=args.target)
    rows = []
    names = list(pd.axes)
    for idx in np.ndindex(*pd.final_risk.shape):
        row = {n: pd.axes[n][i] for n, i in zip(names, idx)}
        if "noise" in row:
            row["noise"] = row["noise"].to_spec()
        row["clip"] = "none" if row["clip"] is None else row["clip"]
        row["final_risk"] = float(pd.final_risk[idx])
        row["diverged"] = bool(pd.diverged[idx])
        if pd.time_to_target is not None:
            row["time_to_target"] = float(pd.time_to_target[idx])
        rows.append(row)
    text = _csv_text(rows)
    print(text, end="")
    best = pd.best()
    print(f"best cell: {best}", file=sys.stderr)
    if out is not None:
        (out / "phase.csv").write_text(text)
        from ._io import dumps_strict

        (out / "phase.json").write_text(dumps_strict({"params": pd.params, "best": best}, indent=2))
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            finals = pd.final_risk if "noise" in pd.axes else pd.final_risk[None]
            grids = [(n.to_spec(), g) for n, g in zip(axes.get("noise", noises), finals)]
            fig = _sweep_plot(grids, axes["lr"], axes["clip"])
            fig.axes[0].figure.suptitle("ODE final risk (phase diagram)", fontsize=9)
            fig.savefig(out / "phase.png", dpi=120)
        print(f"wrote {out / 'phase.csv'}", file=sys.stderr)
    return 0


def cmd_privacy(args):
    cfg = settings(args, "privacy")
    use = next((k for k in _PRIVACY_USES if cfg.get(k) is not None), None)
    if use is None:
        raise UserError(
            "give --noise-multiplier S (prints epsilon), --epsilon E (prints the noise "
            "multiplier) or --epsilons E,... (the privacy-utility table)"
        )
    for key, value in cfg.items():
        if key != use and value not in (None, False) and key not in _PRIVACY_USES[use]:
            raise UserError(f"{_opt(key)} does not apply to privacy {_opt(use)}")
    for flag in ("json", "quiet"):
        if getattr(args, flag, False) and (flag == "json") == (use == "epsilons"):
            raise UserError(f"--{flag} does not apply to privacy {_opt(use)}")
    if cfg["delta"] is None:
        raise UserError(f"privacy {_opt(use)} needs --delta D (in (0, 1))")
    if use == "epsilons":
        return _privacy_table(cfg, args)
    import json

    from ._privacy import noise_multiplier_for, privacy_report

    q, steps = cfg["sampling_rate"], cfg["steps"]
    if steps is not None and q is None:
        raise UserError(
            "--steps needs --sampling-rate: the one-pass stream (no --sampling-rate) is a single "
            "Gaussian mechanism whatever the number of steps"
        )
    kw = dict(
        steps=steps or 1,
        sampling_rate=q,
        accountant=cfg["accountant"] or ("analytic" if q is None else "pld"),
        adjacency=cfg["adjacency"] or "add-remove",
    )
    delta = cfg["delta"]
    if use == "noise_multiplier":
        sigma = cfg["noise_multiplier"]
        report = _privacy_api(privacy_report, sigma, delta, **kw)
        head = f"epsilon = {report['epsilon']!r} at delta = {delta:g}"
    else:
        sigma = _privacy_api(noise_multiplier_for, cfg["epsilon"], delta, **kw)
        report = None
        if args.json:
            report = {
                "epsilon_target": cfg["epsilon"],
                **_privacy_api(privacy_report, sigma, delta, **kw),
            }
        head = (
            f"noise multiplier = {sigma!r} for (epsilon, delta) = ({cfg['epsilon']:g}, {delta:g})"
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    how = (
        "one-pass stream: a single Gaussian mechanism"
        if q is None
        else f"Poisson sampling at rate {q:g} composed over {kw['steps']} steps"
    )
    adjacency = "substitute one example" if kw["adjacency"] == "substitute" else "add/remove"
    detail = f"noise multiplier {sigma:g}; " if use == "noise_multiplier" else ""
    print(f"{head} ({detail}{how}; {kw['accountant']} accountant; {adjacency} adjacency)")
    return 0


def _privacy_table(cfg, args):
    """privacy --epsilons: the ODE-optimal (clip, lr) of one-pass DP-SGD per epsilon."""
    import json

    try:
        from ._privacy_utility import privacy_utility
    except ImportError as err:
        raise UserError(
            f"privacy --epsilons needs clipped_trip._privacy_utility ({_one_line(err)})"
        ) from None
    from ._io import _json_default, atomic_write, versions

    for key in ("noise", "spectrum", "d", "T", "batch"):
        if cfg[key] is None:
            cfg[key] = DEFAULTS[key]
    problem, _ = _problem_from(cfg)
    out = _table_out(cfg)
    res = _privacy_api(
        privacy_utility,
        problem,
        cfg["epsilons"],
        cfg["delta"],
        batch=cfg["batch"],
        T=cfg["T"],
        clips=cfg["clips"],
        lrs=cfg["lrs"],
        accountant=cfg["accountant"] or "analytic",
        adjacency=cfg["adjacency"] or "add-remove",
        progress=not args.quiet,
    )
    rows = res.rows()
    text = _csv_text(rows)
    print(text.rstrip())
    if out is None:
        return 0
    path = atomic_write(out / "privacy_utility.csv", lambda tmp: Path(tmp).write_text(text))
    meta = {
        "command": "privacy",
        "config": _jsonable(cfg, "privacy"),
        "params": res.params,
        "rows": rows,
        "versions": versions(),
    }
    side = json.dumps(meta, indent=2, default=_json_default)
    written = [
        path,
        atomic_write(out / "privacy_utility.json", lambda tmp: Path(tmp).write_text(side)),
    ]
    if cfg["plot"]:
        import matplotlib

        matplotlib.use("Agg")
        fig = _privacy_plot(rows, problem, cfg)
        written.append(
            atomic_write(out / "privacy_utility.png", lambda tmp: fig.savefig(tmp, format="png"))
        )
    for w in written:
        print(f"wrote {w}")
    return 0


def _privacy_plot(rows, problem, cfg):
    """Final risk and optimal clip against epsilon (log axes; epsilon = inf, no DP, dashed)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import NullFormatter

    eps = np.array([float(r["epsilon"]) for r in rows])
    risk = np.array([float(r["risk"]) for r in rows])
    clip = np.array([float(r["clip"]) for r in rows])
    edge = np.array([bool(r.get("at_small_clip_edge", False)) for r in rows])
    fin = np.isfinite(eps)
    order = np.argsort(eps[fin])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, y, label in ((axes[0], risk, "final risk R(T)"), (axes[1], clip, "optimal clip c")):
        ax.plot(eps[fin][order], y[fin][order], "o-", label=label)
        if edge[fin].any():
            ax.plot(
                eps[fin & edge],
                y[fin & edge],
                "o",
                mfc="none",
                ms=11,
                color="C3",
                label="optimum at the smallest clip (R(T) flat below it)",
            )
        if not fin.all():
            ax.axhline(y[~fin][0], color="k", ls="--", lw=0.8, label="no DP (epsilon = inf)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if fin.any():  # ticks at the epsilons asked for
            ax.set_xticks(eps[fin][order], [f"{e:g}" for e in eps[fin][order]])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("epsilon")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("excess risk at T")
    axes[1].set_ylabel("c (residual units)")
    fig.suptitle(
        f"one-pass DP-SGD, delta = {cfg['delta']:g}, B = {cfg['batch']}, T = {cfg['T']:g}; "
        f"{problem!r}"[:110],
        fontsize=8,
    )
    fig.tight_layout()
    return fig


_KIND_TO_COMMAND = {"sgd": "simulate", "ode": "ode", "sde": "sde"}
_MAX_SIDECAR_BYTES = 64 << 20


def read_sidecar(path) -> tuple[str, dict]:
    """(command, config) of a JSON sidecar written by simulate / ode / sde, checked against the
    command's config schema (keys, types, ranges; every key required)."""
    import json

    path = Path(path)
    shown = str(path)
    not_ours = f"{shown} is not a sidecar written by simulate, ode or sde"
    if not path.is_file():
        raise UserError(
            f"sidecar {shown!r} " + ("is not a file" if path.exists() else "does not exist")
        )
    try:
        if path.stat().st_size > _MAX_SIDECAR_BYTES:
            raise UserError(f"{not_ours} (larger than {_MAX_SIDECAR_BYTES} bytes)")
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise UserError(f"cannot read {shown!r} ({err.strerror or err})") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UserError(f"{not_ours} (not valid JSON)") from None
    if not isinstance(meta, dict):
        raise UserError(f"{not_ours} (a JSON {type(meta).__name__}, not an object)")
    params = meta.get("params")
    kind = params.get("kind") if isinstance(params, dict) else None
    command = meta.get("command")
    legacy = "command" not in meta  # written before sidecars recorded their command
    if legacy:
        command = _KIND_TO_COMMAND.get(kind) if isinstance(kind, str) else None
        if command is None:
            raise UserError(f"{not_ours} (no command, params.kind {_show(kind)})")
    elif command not in ("simulate", "ode", "sde"):
        raise UserError(f"{not_ours} (written by {_show(command)}; rerun takes simulate, ode, sde)")
    elif kind is not None and _KIND_TO_COMMAND.get(kind) != command:
        raise UserError(f"{not_ours} (command {command!r} but params.kind {_show(kind)})")
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise UserError(f"{not_ours} (its 'config' is {_show(cfg)}, not an object)")
    cfg = dict(cfg)
    schema = SCHEMAS[command]
    if legacy:  # older versions wrote every default, used or not, and no batch / clip_mode
        for key in [k for k in cfg if k in DEFAULTS and k not in schema]:
            del cfg[key]
        cfg.setdefault("batch", 1)
        cfg.setdefault("clip_mode", "per-example")
    cfg = validate_config(cfg, command, f"{shown}: config")
    missing = [k for k in schema if k not in cfg and k != "out" and k not in OPTIONAL_KEYS]
    if missing:
        raise UserError(f"{shown}: config lacks {', '.join(missing)} (needed by {command})")
    for key in OPTIONAL_KEYS - set(cfg):  # not set when the sidecar was written
        cfg[key] = DEFAULTS[key]
    mean_file = meta.get("data_mean_file")
    if isinstance(mean_file, dict) and _is_mean_file(cfg.get("data_mean")):
        path = cfg["data_mean"]
        if Path(path).is_file() and _file_sha256(path) != mean_file.get("sha256"):
            raise UserError(
                f"{shown}: the data-mean file {path!r} changed since the run (SHA-256 differs)"
            )
    return command, cfg


def cmd_rerun(args):
    """Re-run a simulate / ode / sde result from its JSON sidecar (config and seed are in it)."""
    command, cfg = read_sidecar(args.sidecar)
    cfg["out"] = _string("--out", args.out, True)
    return run_simulate(cfg, command)


def cmd_explore(args):
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1 ... 65535, got {args.port}")
    try:
        from ._explore import serve

        serve(port=args.port, show=args.show)
    except ImportError as err:
        raise UserError(_one_line(err)) from None
    except OSError as err:  # port in use, no permission
        raise UserError(f"cannot serve on port {args.port}: {_one_line(err)}") from None
    except KeyboardInterrupt:
        print("clipped-trip explore: stopped", file=sys.stderr)
    return 0


def cmd_demo(args):
    from ._figures import run_figure

    _prepare_out(args.out)
    (path, table), secs = run_figure(
        "fig1", quick=args.quick, out=args.out, progress=not args.quiet
    )
    print("Clipped SGD vs its ODE (power-law spectrum j^-0.2, lr 0.6, clip 0.4, T 15)")
    print(
        f"{'noise':<26}{'SGD final':>11}{'SDE final':>11}{'ODE final':>11}"
        f"{'unclipped SGD':>15}{'unclipped ODE':>15}{'max |SGD/ODE-1|':>17}"
    )
    for row in table:
        print(
            f"{row['noise']:<26}{row['sgd_final']:>11.4g}{row['sde_final']:>11.4g}"
            f"{row['ode_final']:>11.4g}{row['unclipped_sgd_final']:>15.4g}"
            f"{row['unclipped_ode_final']:>15.4g}{row['max_rel_gap_sgd_ode']:>17.2%}"
        )
    print(f"figure: {Path(path).resolve()}  ({secs:.0f} s)")
    return 0


# ---------------------------------------------------------------------------------------------
NOISE_HELP = (
    "noise law spec (default gaussian:std=0.5), e.g. gaussian:std=0.5, cauchy:scale=0.5, "
    "student-t:df=3,scale=1, laplace:scale=1, uniform:half_width=1, exponential:scale=1, "
    "three-point:value=2,q=0.2, discrete:values=-1/2,probs=0.3/0.7, "
    "mixture:weights=0.9/0.1,means=0/0,stds=0.5/5"
)
UNITS = "Units: D = tr K; the step is lr / D; time t = steps / D; the clip c is in residual units "
UNITS += "(the gradient is clipped at norm c sqrt(D))."
CONFIG_NOTE = " Options override the --config file."
CONFIG_HELP = (
    "TOML file of options (keys listed below); options given here override it (default: none)"
)
QUIET_HELP = "no progress bar (default: show one on stderr)"
#: one or more "example:" lines per command, shown at the end of its --help
EXAMPLES = {
    None: [
        "clipped-trip demo --quick",
        "clipped-trip simulate --noise cauchy:scale=0.5 --lr 0.6 --clip 0.4 --runs 100 --plot",
        "clipped-trip COMMAND --help",
    ],
    "demo": ["clipped-trip demo --quick --out demo"],
    "simulate": [
        "clipped-trip simulate --noise cauchy:scale=0.5 --spectrum power-law:alpha=0.2 --d 500 "
        "--lr 0.6 --clip 0.4 --T 15 --runs 100 --seed 0 --out results --plot",
        "clipped-trip simulate --batch 16 --clip-mode mean --lr 9.6 --clip 0.4 --out results",
    ],
    "ode": ["clipped-trip ode --noise cauchy:scale=0.5 --lr 0.6 --clip 0.4 --T 15 --out results"],
    "sde": ["clipped-trip sde --noise cauchy:scale=0.5 --clip 0.4 --dt 0.01 --out results"],
    "factors": ["clipped-trip factors --noise student-t:df=3 --risk 0.05,1 --clip 0.5,1.07,none"],
    "criteria": [
        "clipped-trip criteria --noise student-t:df=3 --risk 0.05 --clip 0.5,1.07,2 > criteria.csv",
        "clipped-trip criteria --noise cauchy:scale=0.5 --risk 0.1 --clip 0.1,0.4,1 --out c --plot",
    ],
    "sweep": [
        'clipped-trip sweep --noises "gaussian:std=0.5;cauchy:scale=0.5" --lrs 0.3,0.6 '
        "--clips 0.4,none --d 200 --T 5 --out sweep --plot"
    ],
    "privacy": [
        "clipped-trip privacy --epsilon 2 --delta 1e-5",
        "clipped-trip privacy --epsilons 1,4,inf --delta 1e-5 --d 200 --T 5 --out dp --plot",
    ],
    "rerun": ["clipped-trip rerun results/simulate.json --out again"],
    "phase": [
        "clipped-trip phase --noises 'student-t:df=3,scale=0.5' --lrs 0.2,0.5,1 "
        "--clips 0.3,1,none --T 10 --out phase --plot"
    ],
    "explore": ["clipped-trip explore --port 5006 --show"],
    "reproduce": [
        "clipped-trip reproduce --list",
        "clipped-trip reproduce fig6 --quick --out figures",
        "clipped-trip reproduce fig1 --help",
    ],
    "run-sweep": [
        "clipped-trip run-sweep spec.toml --out store --backend dask --workers 2",
        "clipped-trip run-sweep --out store   (resume: the spec stored there)",
    ],
}


def _epilog(name, keys=True, config=True) -> str:
    """Units, the TOML keys (commands with --config) and the examples of a command's --help."""
    parts = [textwrap.fill(UNITS + (CONFIG_NOTE if config else ""), 79)]
    if keys:
        parts.append(keys_line(name))
    parts += [f"example: {x}" for x in EXAMPLES[name]]
    return "\n".join(parts)


def cmd_run_sweep(args):
    from ._backends import cli_command

    return cli_command(args)


def build_parser():
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="clipped-trip",
        description="Clipped streaming SGD on high-dimensional least squares, next to its ODE "
        "(arXiv 2406.11733).",
        epilog=_epilog(None, keys=False, config=False),
        formatter_class=raw,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name, help):
        return sub.add_parser(
            name,
            help=help,
            description=textwrap.fill(help, 79),
            epilog=_epilog(name),
            formatter_class=raw,
        )

    def other(name, help, description=None, **kwargs):
        """A command without a TOML schema (demo, rerun, reproduce, run-sweep)."""
        return sub.add_parser(
            name,
            help=help,
            description=textwrap.fill(description or help, 79),
            epilog=_epilog(name, keys=False, config=False),
            formatter_class=raw,
            **kwargs,
        )

    def flag(p, name, help):
        p.add_argument(name, action="store_true", default=None, help=help)

    def common(p, name):
        p.add_argument("--config", metavar="FILE.toml", help=CONFIG_HELP)
        if name == "sweep":
            p.add_argument("--noise", metavar="SPEC", help=NOISE_HELP + "; or --noises")
        else:
            p.add_argument("--noise", metavar="SPEC", help=NOISE_HELP)
        p.add_argument(
            "--spectrum",
            metavar="SPEC",
            help="eigenvalues of K: isotropic | power-law:alpha=A (j^-A) | "
            "two-level:high=H,low=L,fraction=F (default power-law:alpha=0.2)",
        )
        p.add_argument("--d", metavar="N", help=f"ambient dimension, 1 to {MAX_D} (default 500)")
        lr_help = "learning rate gamma; the step is gamma / D, D = tr K (default 0.6)"
        clip_help = (
            "clip threshold c > 0 in residual units (gradient clipped at norm c sqrt(D)), or "
            "'none'; default none: without --clip the run is plain, unclipped SGD. dpsgd: "
            "required (finite); quantile: the initial threshold c0 (required)"
        )
        if name == "sweep":
            lr_help = "one learning rate (same as --lrs X); default 0.6"
            clip_help = (
                "one clip threshold c or 'none' (same as --clips C); default none; quantile: c0"
            )
        p.add_argument("--lr", metavar="X", help=lr_help)
        p.add_argument("--clip", metavar="C", help=clip_help)
        p.add_argument(
            "--T", metavar="X", help="horizon in time t = steps / D, D = tr K (default 15)"
        )
        p.add_argument(
            "--batch", metavar="B", help="examples per step (default 1; time t = steps / D)"
        )
        p.add_argument(
            "--clip-mode",
            dest="clip_mode",
            metavar="MODE",
            help="per-example: clip each example, then average (DP-SGD); mean: clip the mean "
            "gradient (torch clip_grad_norm_). Default per-example; the same at batch 1",
        )
        if name != "ode":
            p.add_argument(
                "--runs", metavar="N", help=f"Monte Carlo runs, 1 to {MAX_RUNS} (default 16)"
            )
            p.add_argument(
                "--seed",
                metavar="N",
                help="random seed, 0 to 2^32-1 (default 0); run j of a seed is the same alone "
                "or in any batch",
            )
        p.add_argument(
            "--n-records",
            dest="n_records",
            metavar="N",
            help="number of recorded times, evenly spaced on [0, T] in t = steps / D (default 101)",
        )
        p.add_argument("--out", metavar="DIR", help="output folder (default results)")
        flag(p, "--plot", "also write a PNG (default: no)")
        algorithm_options(p, name)

    def algorithm_options(p, name):
        text = (
            "--algorithm picks the update; an option that the chosen algorithm does not take is "
            "refused, never ignored."
        )
        if name == "sde":
            text += (
                " sde: every algorithm but autoclip (its threshold depends on the whole history: "
                "no homogenized SDE); with --data-mean, --perturbation or quantile in its slow "
                "regime the lr is constant."
            )
        g = p.add_argument_group("algorithm", textwrap.fill(text, 79))
        g.add_argument(
            "--algorithm",
            metavar="NAME",
            help="clipped (default): clipped SGD (--clip, --batch, --clip-mode, --perturbation); "
            "dpsgd: DP-SGD, each example's gradient clipped at c sqrt(D) (--clip, required), "
            "Gaussian noise of std sigma c sqrt(D) added to the sum (--noise-multiplier, or "
            "--epsilon with --delta); quantile: the threshold tracks the --quantile q of the "
            "gradient norms, from c0 = --clip at rate --clip-lr (Andrew et al. 2021); autoclip: "
            "the threshold is the --percentile of every gradient norm so far (AutoClip); value: "
            "each gradient coordinate clamped to [-tau, tau] (--clip-value; torch "
            "clip_grad_value_); sign: signSGD, step (lr / D) sign(g). quantile, autoclip, value "
            "and sign take one example per step (batch 1)"
            + (
                "; for autoclip and sign there is no clip axis (no --clips)"
                if name == "sweep"
                else ""
            ),
        )
        g.add_argument(
            "--noise-multiplier",
            dest="noise_multiplier",
            metavar="S",
            help="dpsgd: noise multiplier sigma >= 0: the noise on the sum of the B clipped "
            "gradients has std sigma c sqrt(D) per coordinate (0: no noise). No default: give "
            "it or --epsilon",
        )
        g.add_argument(
            "--epsilon",
            metavar="E",
            help="dpsgd: target epsilon > 0 (with --delta): sigma is the smallest noise "
            "multiplier making the run (E, D)-DP. The one-pass stream uses each example once, "
            "so the whole run is a single Gaussian mechanism whatever the number of steps",
        )
        g.add_argument(
            "--delta",
            metavar="D",
            help="dpsgd: delta in (0, 1); needed by --epsilon; with --noise-multiplier it adds "
            "the privacy report (the epsilon at D) to the output and sidecar. No default",
        )
        g.add_argument(
            "--accountant",
            metavar="NAME",
            help="dpsgd, with --delta: analytic (default; the exact Balle-Wang closed form), "
            "pld or rdp (these need the dp extra: pip install 'clipped_trip[dp]')",
        )
        g.add_argument(
            "--adjacency",
            metavar="NAME",
            help="dpsgd, with --delta: add-remove (default; add or remove one example) or "
            "substitute (replace one: sensitivity 2C, i.e. sigma doubled for the same epsilon)",
        )
        g.add_argument(
            "--perturbation",
            metavar="K",
            help="clipped: k >= 0; each example's gradient gets k zeta, zeta ~ N(0, I_d), "
            "before its clipping (Chen, Wu, Hong 2020; per-example clipping only at batch > 1; "
            "gradient units: ||k zeta|| ~ k sqrt(d)). Default 0 (none)",
        )
        g.add_argument(
            "--data-mean",
            dest="data_mean",
            metavar="SPEC",
            help="clipped, dpsgd: the data's mean m (a = m + sqrt(K) z), in the eigenbasis of K "
            "(coordinate j has the j-th eigenvalue of --spectrum; power-law: j^-alpha): eK:NORM "
            "= NORM times the K-th coordinate vector (e.g. e1:0.5), uniform:NORM = NORM "
            "ones / sqrt(d), a .npy file of d numbers (the sidecar records its absolute path "
            "and SHA-256), or "
            "none (default: centred data). Results add the bias <m, e> and the population "
            "risk R + <m, e>^2 / 2",
        )
        g.add_argument(
            "--quantile",
            metavar="Q",
            help="quantile (required): the target fraction q in (0, 1) of unclipped examples",
        )
        g.add_argument(
            "--clip-lr",
            dest="clip_lr",
            metavar="X",
            help="quantile (required): eta_C > 0, the per-step rate of log c: c <- c "
            "exp(-eta_C (1{||g|| <= c sqrt(D)} - q)); eta_C ~ 1/D is the slow regime, O(1) the "
            "fast one (the ODE picks: slow if eta_C < D^-1/2)",
        )
        g.add_argument(
            "--percentile",
            metavar="P",
            help="autoclip (required): p in (0, 100), the percentile of every gradient norm so "
            "far used as the threshold",
        )
        g.add_argument(
            "--clip-value",
            dest="clip_value",
            metavar="V",
            help="value (required): tau > 0, each gradient coordinate is clamped to [-tau, tau] "
            "(gradient units, not residual units)"
            + ("; or --clips: several values of tau" if name == "sweep" else ""),
        )

    p = other(
        "demo",
        "figure 1 (paper size: d = 500, 100 runs; ~15-20 s on 2 cores) with a summary table",
        "Figure 1 of the paper at paper size (d = 500, 100 runs, Gaussian and Cauchy noise, lr "
        "0.6, clip 0.4, T 15): clipped SGD, its SDE and ODE, and unclipped SGD; prints a table "
        "of final risks and the largest SGD-vs-ODE gap, and the path of the PNG.",
    )
    p.add_argument(
        "--out",
        default="clipped_trip_demo",
        metavar="DIR",
        help="output folder for fig1.png/.pdf/.npz/.json (default %(default)s)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smaller: d = 200, 20 runs (default: paper size)"
    )
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    common(command("simulate", "clipped SGD Monte Carlo (unclipped unless --clip)"), "simulate")
    common(command("ode", "the deterministic risk ODE"), "ode")
    p = command("sde", "homogenized SGD (C-HSGD)")
    common(p, "sde")
    p.add_argument("--dt", metavar="X", help="SDE time step in time t = steps / D (default 0.01)")
    for name, help in (
        ("factors", "reduction factors mu, nu at each (risk, clip) (CSV)"),
        ("criteria", "CCC, CSC, critical lr and the optimal clip at one risk"),
    ):
        p = command(name, help)
        p.add_argument("--config", metavar="FILE.toml", help=CONFIG_HELP)
        p.add_argument("--noise", metavar="SPEC", help=NOISE_HELP)
        if name == "factors":
            p.add_argument("--risk", metavar="R,...", help="risks R >= 0 (default 0.01,0.1,1,10)")
            p.add_argument(
                "--clip",
                metavar="C,...",
                help="clip thresholds c > 0 in residual units, 'none' for unclipped "
                "(default 0.1,1,10)",
            )
        else:
            p.add_argument("--risk", metavar="R", help="the risk R >= 0 (default 1)")
            p.add_argument(
                "--clip",
                metavar="C,...",
                help="clip thresholds c > 0 in residual units (default 9 from 0.01 to 100)",
            )
        p.add_argument("--out", metavar="DIR", help=f"also write {name}.csv here (default: none)")
        flag(p, "--plot", "with --out: also a PNG (default: no)")
    p = command("sweep", "grid of (noise, lr, clip): CSV table, results, heat map with --plot")
    common(p, "sweep")
    p.add_argument(
        "--noises", metavar="SPEC;SPEC", help="several noise specs separated by ';' (or --noise)"
    )
    p.add_argument("--lrs", metavar="X,...", help="learning rates (or --lr); default 0.6")
    p.add_argument(
        "--clips",
        metavar="C,...",
        help="thresholds in residual units, 'none' for unclipped (or --clip); default none. "
        "The clip axis of the chosen --algorithm: c (clipped; dpsgd: finite), the initial c0 "
        "(quantile), tau in gradient units (value); autoclip and sign have none",
    )
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p = command(
        "privacy",
        "DP-SGD privacy accounting: the epsilon of a noise multiplier, the noise multiplier of "
        "an epsilon, or the privacy-utility table (the ODE-optimal clip and lr per epsilon)",
    )
    p.add_argument("--config", metavar="FILE.toml", help=CONFIG_HELP)
    p.add_argument(
        "--noise-multiplier",
        dest="noise_multiplier",
        metavar="S",
        help="print the epsilon of noise multiplier sigma > 0 at --delta (DP-SGD adds noise of "
        "std sigma C to the sum of the per-example gradients clipped at C)",
    )
    p.add_argument(
        "--epsilon",
        metavar="E",
        help="print the smallest noise multiplier making the run (E, --delta)-DP",
    )
    p.add_argument(
        "--epsilons",
        metavar="E,...",
        help="the privacy-utility table of one-pass DP-SGD: for each epsilon > 0 ('inf': no "
        "DP) the clip c and lr minimising the ODE's final risk at a fixed sample budget "
        "(round(T D) steps x --batch examples), and that risk; slow: about 10-30 s per "
        "epsilon at d = 1000",
    )
    p.add_argument("--delta", metavar="D", help="delta in (0, 1); required (no default)")
    p.add_argument(
        "--sampling-rate",
        dest="sampling_rate",
        metavar="Q",
        help="with --noise-multiplier / --epsilon: Poisson subsampling at rate q in (0, 1] per "
        "step, composed over --steps. Default none: the one-pass stream, a single Gaussian "
        "mechanism whatever the number of steps",
    )
    p.add_argument(
        "--steps",
        metavar="N",
        help="with --sampling-rate: the number of steps composed, >= 1 (default 1)",
    )
    p.add_argument(
        "--accountant",
        metavar="NAME",
        help="analytic (the exact Balle-Wang closed form; one-pass stream only), pld or rdp "
        "(these need the dp extra: pip install 'clipped_trip[dp]'). Default analytic, pld "
        "with --sampling-rate",
    )
    p.add_argument(
        "--adjacency",
        metavar="NAME",
        help="add-remove (default; add or remove one example) or substitute (replace one: "
        "sensitivity 2C)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="with --noise-multiplier / --epsilon: print the privacy report as JSON (epsilon, "
        "delta, noise multiplier, accountant, adjacency, mechanism, ...) instead of one line",
    )
    g = p.add_argument_group("privacy-utility table (--epsilons)")
    g.add_argument("--noise", metavar="SPEC", help=NOISE_HELP)
    g.add_argument(
        "--spectrum",
        metavar="SPEC",
        help="eigenvalues of K, as in simulate (default power-law:alpha=0.2)",
    )
    g.add_argument("--d", metavar="N", help=f"ambient dimension, 1 to {MAX_D} (default 500)")
    g.add_argument("--batch", metavar="B", help="examples per step (default 1)")
    g.add_argument("--T", metavar="X", help="horizon in time t = steps / D, D = tr K (default 15)")
    g.add_argument(
        "--clips",
        metavar="C,...",
        help="the grid of clips c > 0 searched, residual units, at least 2 (default 13 from "
        "1e-3 to 10)",
    )
    g.add_argument(
        "--lrs",
        metavar="X,...",
        help="a grid of learning rates shared by every clip, at least 3 (default: per clip, 21 "
        "from 1e-5 to 1 times the critical lr)",
    )
    g.add_argument(
        "--out",
        metavar="DIR",
        help="also write privacy_utility.csv and its JSON sidecar here (default: print only)",
    )
    flag(
        g,
        "--plot",
        "with --out: also a PNG of final risk and optimal clip vs epsilon (default: no)",
    )
    g.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p = other(
        "rerun",
        "re-run a simulate / ode / sde result from its JSON sidecar (bit-identical)",
        "Re-run a simulate / ode / sde result from its JSON sidecar; the sidecar's "
        "config is checked like a TOML config (every key of the command required).",
    )
    p.add_argument(
        "sidecar",
        metavar="FILE.json",
        help="the JSON sidecar next to a result (e.g. results/simulate.json); its config and "
        "seed are re-run",
    )
    p.add_argument(
        "--out", default="rerun", metavar="DIR", help="output folder (default %(default)s)"
    )
    p = other(
        "reproduce",
        "regenerate a paper figure",
        "Regenerate a figure (PNG, PDF, and its data as .npz + .json sidecar) into --out; "
        "--list shows each figure with its run time. 'reproduce FIGURE --help' shows that "
        "figure's own usage.",
        add_help=False,
    )
    p.add_argument(
        "-h", "--help", action=_FigureHelp, help="show this help (after FIGURE: that figure's)"
    )
    p.add_argument("figure", nargs="?", metavar="FIGURE", help="figure id (see --list) or 'all'")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small version (default: full size; run times in --list)",
    )
    p.add_argument(
        "--out", default="figures", metavar="DIR", help="output folder (default %(default)s)"
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list the figures: id, run time (full and --quick) and description",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="fig7: folder with the CIFAR-10 binary batches data_batch_1.bin ... data_batch_5.bin "
        "(cifar-10-batches-bin; pickled python batches are refused; default: scikit-learn's "
        "bundled digits)",
    )
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    from ._backends import add_arguments as _run_sweep_arguments

    p = other(
        "run-sweep",
        "run or resume a sweep spec (TOML/JSON) into a result store (--out DIR)",
        "Run a sweep spec (TOML or JSON: problem, algorithm, axes, runs) into "
        "the result store --out DIR: one file per finished work unit, DIR/table.csv one row "
        "per cell. The same command again resumes (finished units are skipped); SPEC may be "
        "left out when DIR already holds one. --backend inprocess | devices | dask.",
    )
    _run_sweep_arguments(p)
    _complete_help(p, RUN_SWEEP_HELP)
    p = other(
        "explore",
        "local web app: ODE risk, factors, CCC / CSC, optimal clip, SGD band",
        "Start a local web app at http://localhost:PORT (every resource served by it, no CDN; "
        "no browser opens unless --show): controls for the noise law and its parameters, the "
        "spectrum, d, lr, clip (a number, the max-CCC schedule or none) and T; the ODE risk "
        "curve, mu, nu and CCC / CSC against c at the current risk, the optimal clip c*(R), and "
        "on request an SGD band from a small simulation. Needs the explore extra: "
        "pip install 'clipped_trip[explore]'. Ctrl-C stops it.",
    )
    p.add_argument("--port", type=int, default=5006, metavar="N", help="default %(default)s")
    p.add_argument("--show", action="store_true", help="open the page in a web browser")
    p = other(
        "phase",
        "ODE phase diagram: final risk over lr x clip (x noise) in one compiled program",
        "Solve the risk ODE for a whole grid of cells (lr x clip, per noise law) in one compiled "
        "JAX program (agrees with `ode` to ~1e-9); prints a CSV (one row per cell) and the best "
        "cell. Clip c in residual units (gradient clipped at c sqrt(D), D = tr K), time "
        "t = steps / D.",
    )
    p.add_argument(
        "--noises",
        default=DEFAULTS["noise"],
        metavar="SPEC;SPEC",
        help="noise laws separated by ';' (default %(default)s)",
    )
    p.add_argument(
        "--spectrum",
        default=DEFAULTS["spectrum"],
        metavar="SPEC",
        help="eigenvalues of K (default %(default)s)",
    )
    p.add_argument(
        "--d", default=DEFAULTS["d"], type=int, metavar="N", help="dimension (default %(default)s)"
    )
    p.add_argument(
        "--lrs",
        default="0.2,0.4,0.6,0.8",
        metavar="X,...",
        help="learning rates gamma (step gamma / D; default %(default)s)",
    )
    p.add_argument(
        "--clips",
        default="0.3,1,none",
        metavar="C,...",
        help="clip thresholds c or none (default %(default)s)",
    )
    p.add_argument(
        "--T",
        default=DEFAULTS["T"],
        type=float,
        metavar="X",
        help="horizon in t = steps / D (default %(default)s)",
    )
    p.add_argument(
        "--batch",
        default=1,
        type=int,
        metavar="B",
        help="examples per step, per-example clipping (default 1)",
    )
    p.add_argument(
        "--algorithm",
        default="clipped",
        choices=("clipped", "dpsgd"),
        help="clipped (ClippedSGD) or dpsgd (DPSGD; needs --noise-multiplier)",
    )
    p.add_argument(
        "--noise-multiplier",
        dest="noise_multiplier",
        type=float,
        default=0.0,
        metavar="S",
        help="DP-SGD noise multiplier sigma (default 0)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=None,
        metavar="R",
        help="also report the first time the risk reaches R (default: none)",
    )
    p.add_argument("--out", metavar="DIR", help="write phase.csv / phase.json there (optional)")
    p.add_argument("--plot", action="store_true", help="with --out: a heat map phase.png")
    return parser


#: fuller help for the options of run-sweep (defined in clipped_trip._backends)
RUN_SWEEP_HELP = {
    "out": "the result store folder (required): one file per finished work unit, table.csv one "
    "row per cell; given again, the run resumes",
    "backend": "where the work units run: inprocess (this process), devices (JAX devices, runs "
    "sharded), dask (a local cluster with --workers, or --scheduler) (default inprocess)",
    "workers": "dask: start a local cluster of N worker processes (default: one per core)",
    "scheduler": "dask: join a running scheduler at tcp://host:port instead (default: none)",
    "quiet": "no progress bar (default: show one)",
}


def _complete_help(parser, helps):
    """Replace the help of ``parser``'s options named in ``helps`` (by dest); any option still
    without help gets its dest, so that every option of every command says something."""
    for action in parser._actions:
        if action.dest in helps:
            action.help = helps[action.dest]
        elif not action.help:
            action.help = action.dest.replace("_", " ")


def _is_resource_exhausted(err) -> bool:
    """XLA's out-of-memory error (its class lives in jaxlib; matched by name and status)."""
    return type(err).__name__ == "XlaRuntimeError" and str(err).startswith("RESOURCE_EXHAUSTED")


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            prog = f"clipped-trip {args.command}" if getattr(args, "command", None) else None
            raise _ArgError(prog or "clipped-trip", f"unrecognized arguments: {' '.join(extra)}")
    except _ArgError as err:
        print(f"{err.prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    if not os.environ.get("CLIPPED_TRIP_NO_CACHE"):
        try:
            from ._config import enable_compilation_cache

            enable_compilation_cache()
        except OSError:  # read-only home: run without the cache
            pass
    handlers = {
        "simulate": lambda a: cmd_simulate(a, "simulate"),
        "sde": lambda a: cmd_simulate(a, "sde"),
        "ode": lambda a: cmd_simulate(a, "ode"),
        "factors": cmd_factors,
        "criteria": cmd_criteria,
        "sweep": cmd_sweep,
        "reproduce": cmd_reproduce,
        "rerun": cmd_rerun,
        "demo": cmd_demo,
        "explore": cmd_explore,
        "phase": cmd_phase,
        "privacy": cmd_privacy,
        "run-sweep": cmd_run_sweep,
    }
    prog = f"clipped-trip {args.command}"
    _ACTIVE_OUT.clear()
    ok = False
    try:
        code = handlers[args.command](args)
        ok = True
        return code
    except (UserError, ValueError, OverflowError) as err:
        print(f"{prog}: error: {_one_line(err) or type(err).__name__}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{prog}: error: out of memory; use a smaller d, runs or n-records", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not _is_resource_exhausted(err):
            raise
        msg = "out of (device) memory; use a smaller d, runs or n-records"
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        if not ok:
            for out in _ACTIVE_OUT:
                out.cleanup()
        _ACTIVE_OUT.clear()


if __name__ == "__main__":
    sys.exit(main())
