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

SCHEMAS = {
    "simulate": {**_COMMON, **_MC, **_OUT},
    "ode": {**_COMMON, **_OUT},
    "sde": {**_COMMON, **_MC, "dt": _V_POS, **_OUT},
    "sweep": {
        **_COMMON,
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
}
# singular / plural pairs of sweep: give one of them
PAIRS = {"sweep": (("lr", "lrs"), ("clip", "clips"), ("noise", "noises"))}

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
    for pair in PAIRS.get(command, ()):
        if all(k in out for k in pair):
            raise UserError(f"{where}: give {pair[0]} or {pair[1]}, not both")
    return out


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
            given[key] = SCHEMAS[command][key](f"--{key.replace('_', '-')}", val, True)
    for a, b in PAIRS.get(command, ()):
        if a in given and b in given:
            raise UserError(f"--{a} and --{b} given together; give one of them")
        if a in given or b in given:  # the command line replaces the file's setting
            from_file.pop(a, None)
            from_file.pop(b, None)
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


def make_problem(spectrum: str, d: int, noise):
    from . import Problem

    import numpy as np

    name, kw = parse_spectrum(spectrum)
    with np.errstate(over="ignore"):
        return _checked_problem(Problem, name, kw, spectrum, d, noise)


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
    return make_problem(cfg["spectrum"], cfg["d"], noise), noise


def _algorithm_from(cfg, lr=None, clip="from-cfg"):
    """ClippedSGD from the settings (lr, clip, batch, clip_mode)."""
    from . import ClippedSGD

    lr = V.positive("lr", cfg["lr"] if lr is None else lr)
    clip = cfg["clip"] if clip == "from-cfg" else clip
    return ClippedSGD(lr, clip, batch=cfg["batch"], clip_mode=cfg["clip_mode"])


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


def _plot_paths(result, title):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    r = result.risk if result.risk.ndim == 2 else result.risk[None, :]
    if result.risk.ndim == 2:
        lo, hi = result.band(0.8, exclude_diverged=True)
        ax.fill_between(result.t, lo, hi, alpha=0.3, lw=0)
        ax.plot(result.t, result.mean(exclude_diverged=True), label="mean (finite runs)")
        for i in np.flatnonzero(result.diverged)[:10]:  # diverged runs: their finite part
            ok = np.isfinite(r[i])
            ax.plot(
                result.t[ok],
                r[i][ok],
                color="C3",
                lw=0.6,
                alpha=0.6,
                label="diverged runs (until they diverge)"
                if i == np.flatnonzero(result.diverged)[0]
                else None,
            )
        if result.diverged.any():
            ax.set_title(f"{title}\n{result.divergence_report()}", color="C3", fontsize=9)
        else:
            ax.set_title(title)
    else:
        finite = np.isfinite(r[0])
        ax.plot(result.t[finite], r[0][finite], label="ODE")
        ax.set_title(
            title + (f"\ndiverged at t = {result.divergence_time:.3g}" if result.diverged else "")
        )
    ax.set_yscale("log")
    ax.set_xlabel("t = steps / D")
    ax.set_ylabel("excess risk")
    ax.legend()
    fig.tight_layout()
    return fig


def cmd_simulate(args, kind):
    return run_simulate(settings(args, kind), kind)


def run_simulate(cfg, kind):
    from . import simulate, simulate_sde, solve_ode

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
        res, cfg, kind, kind, lambda: _plot_paths(res, f"{kind}: {problem!r}"[:90])
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
    for w in written:
        print(f"wrote {w}")
    return 0


def _table_out(cfg):
    if cfg["plot"] and not cfg["out"]:
        raise UserError("--plot writes a PNG into --out DIR: give --out too")
    return _prepare_out(cfg["out"]) if cfg["out"] else None


def _write_table_outputs(out, name, header, rows, plot_fn=None, plot=False):
    """Print a CSV table; with an output folder also write it (atomically), with plot a PNG."""
    from ._io import atomic_write

    text = "\n".join([",".join(header)] + [",".join(r) for r in rows])
    print(text)
    if out is not None:
        path = atomic_write(out / f"{name}.csv", lambda tmp: Path(tmp).write_text(text + "\n"))
        print(f"wrote {path}")
        if plot and plot_fn is not None:
            import matplotlib

            matplotlib.use("Agg")
            fig = plot_fn()
            print(
                "wrote "
                + str(atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png")))
            )


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
        cs = np.logspace(-2, 2, 200)
        for R in risks:
            mu, nu = reduction_factors(noise, R, cs)
            axes[0].semilogx(cs, mu, label=f"R = {R:g}")
            axes[1].loglog(cs, nu, label=f"R = {R:g}")
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
    print(f"noise {noise!r}, R = {R:g}")
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

        cs = np.logspace(-2, 2, 200)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.semilogx(cs, ccc(noise, R, cs), label="CCC")
        ax.semilogx(cs, csc(noise, R, cs), label="CSC")
        ax.axhline(1, color="k", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("c (residual units)")
        ax.set_title(f"{noise!r}, R = {R:g}"[:60], fontsize=9)
        ax.legend()
        fig.tight_layout()
        return fig

    header = ["clip", "ccc", "csc", "critical_lr"]
    _write_table_outputs(out, "criteria", header, rows, plot, cfg["plot"])
    value, c_star = max_ccc(noise, R)
    print(
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


def _sweep_plot(grids, lrs, clips):
    """Heat map of log10 mean final risk over (lr, clip), one panel per noise law."""
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(grids)
    fig, axes = plt.subplots(1, n, figsize=(1.5 + 3.2 * n, 3.2), squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    for ax, (spec, grid) in zip(axes[0], grids):
        with np.errstate(all="ignore"):
            z = np.ma.masked_invalid(np.log10(grid))
        im = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap)
        ax.set_xticks(range(len(clips)), ["none" if c is None else f"{c:g}" for c in clips])
        ax.set_yticks(range(len(lrs)), [f"{x:g}" for x in lrs])
        ax.set_xlabel("clip c (residual units)")
        ax.set_ylabel("lr")
        ax.set_title(spec[:40], fontsize=9)
        fig.colorbar(im, ax=ax, label="log10 mean final risk (grey: diverged)")
    fig.tight_layout()
    return fig


def cmd_sweep(args):
    import numpy as np
    from tqdm.auto import tqdm

    from . import sweep
    from ._io import atomic_write, save_result

    cfg = settings(args, "sweep")
    noises = cfg["noises"] or [cfg["noise"] or DEFAULTS["noise"]]
    lrs = cfg["lrs"] or [cfg["lr"] or DEFAULTS["lr"]]
    clips = cfg["clips"] or [cfg["clip"]]
    # validate everything before any work
    problems = [_problem_from(cfg, spec)[0] for spec in noises]
    base = _algorithm_from(cfg, lr=lrs[0], clip=None)
    _check_size(cfg, len(lrs) * len(clips))
    out = _prepare_out(cfg["out"])
    rows, grids, used = [], [], set()
    record = {k: v for k, v in cfg.items() if k not in ("lr", "clip", "noise", "noises")}
    record.update(lrs=lrs, clips=clips)
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
        meta = {"command": "sweep", "config": {**record, "noise": spec}, "noise": spec}
        save_result(res, out / f"sweep_{_slug(spec, used)}.npz", extra=meta)
        grid = np.empty((len(lrs), len(clips)))
        for i, lr in enumerate(lrs):
            for j, c in enumerate(clips):
                cell = res.risk[i, j]
                grid[i, j] = float(np.mean(cell[:, -1]))
                rows.append(
                    {
                        "noise": spec,
                        "lr": lr,
                        "clip": "inf" if c is None else c,
                        "final_mean_risk": grid[i, j],
                        "final_median_risk": float(np.median(cell[:, -1])),
                        "runs_diverged": int(res.diverged[i, j].sum()),
                        "runs": cfg["runs"],
                        "batch": cfg["batch"],
                        "clip_mode": cfg["clip_mode"],
                    }
                )
        grids.append((spec, grid))
        # the table so far, rewritten atomically after each noise law: an interrupted sweep
        # keeps every finished law in sweep.csv (and its npz + sidecar)
        text = _csv_text(rows)
        path = atomic_write(out / "sweep.csv", lambda tmp, text=text: Path(tmp).write_text(text))
    print(text.rstrip())
    print(f"wrote {path}")
    if cfg["plot"]:
        import matplotlib

        matplotlib.use("Agg")
        fig = _sweep_plot(grids, lrs, clips)
        png = atomic_write(out / "sweep.png", lambda tmp: fig.savefig(tmp, format="png"))
        print(f"wrote {png}")
    return 0


def _csv_text(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def cmd_reproduce(args):
    from ._figures import FIGURES, run_figure

    if args.list:
        if args.figure:
            raise UserError("give a FIGURE or --list, not both")
        for name in FIGURES:
            print(name)
        return 0
    if not args.figure:
        raise UserError("give a FIGURE (see --list) or 'all'")
    names = list(FIGURES) if args.figure == "all" else [args.figure]
    for n in names:
        if n not in FIGURES:
            raise UserError(f"unknown figure {n!r}; allowed: {', '.join(FIGURES)}, all")
    if args.data and "fig7" not in names:
        raise UserError("--data is read by fig7 only")
    if args.data and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data!r} is not a directory")
    _prepare_out(args.out)
    for n in names:
        extra = {"data": args.data} if (n == "fig7" and args.data) else {}
        (path, _), secs = run_figure(
            n, quick=args.quick, out=args.out, progress=not args.quiet, **extra
        )
        print(f"{n}: wrote {path} ({secs:.1f} s)")
    return 0


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
    missing = [k for k in schema if k not in cfg and k != "out"]
    if missing:
        raise UserError(f"{shown}: config lacks {', '.join(missing)} (needed by {command})")
    return command, cfg


def cmd_rerun(args):
    """Re-run a simulate / ode / sde result from its JSON sidecar (config and seed are in it)."""
    command, cfg = read_sidecar(args.sidecar)
    cfg["out"] = _string("--out", args.out, True)
    return run_simulate(cfg, command)


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
    "three-point:value=2,q=0.2, discrete:values=-1/2,probs=0.3/0.7"
)
UNITS = "Units: D = tr K; the step is lr / D; time t = steps / D; the clip c is in residual units "
UNITS += "(the gradient is clipped at norm c sqrt(D)). Options override the --config file."


def build_parser():
    parser = _Parser(
        prog="clipped-trip",
        description="Clipped streaming SGD on high-dimensional least squares, next to its ODE "
        "(arXiv 2406.11733).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name, help):
        epilog = textwrap.fill(UNITS, 79) + "\n" + keys_line(name)
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def flag(p, name, help):
        p.add_argument(name, action="store_true", default=None, help=help)

    def common(p, name):
        p.add_argument("--config", metavar="FILE.toml", help="TOML file; options override it")
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
            "'none'; default none: without --clip the run is plain, unclipped SGD"
        )
        if name == "sweep":
            lr_help = "one learning rate (same as --lrs X); default 0.6"
            clip_help = "one clip threshold c or 'none' (same as --clips C); default none"
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

    p = sub.add_parser(
        "demo",
        help="figure 1 (paper size: d = 500, 100 runs; ~15 s on 2 cores) with a summary table",
    )
    p.add_argument("--out", default="clipped_trip_demo", metavar="DIR", help="default %(default)s")
    p.add_argument("--quick", action="store_true", help="smaller (d = 200, 20 runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
        p.add_argument("--config", metavar="FILE.toml", help="TOML file; options override it")
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
        help="thresholds in residual units, 'none' for unclipped (or --clip); default none",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser(
        "rerun",
        help="re-run a simulate / ode / sde result from its JSON sidecar (bit-identical)",
        description="Re-run a simulate / ode / sde result from its JSON sidecar; the sidecar's "
        "config is checked like a TOML config (every key of the command required).",
    )
    p.add_argument("sidecar", metavar="FILE.json")
    p.add_argument("--out", default="rerun", metavar="DIR", help="default %(default)s")
    p = sub.add_parser("reproduce", help="regenerate a paper figure")
    p.add_argument("figure", nargs="?", metavar="FIGURE", help="figure id (see --list) or 'all'")
    p.add_argument("--quick", action="store_true", help="small version (< 1 minute)")
    p.add_argument("--out", default="figures", metavar="DIR", help="default %(default)s")
    p.add_argument("--list", action="store_true", help="list figure ids")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="fig7: folder with the CIFAR-10 binary batches data_batch_1.bin ... data_batch_5.bin "
        "(cifar-10-batches-bin; pickled python batches are refused; default: scikit-learn's "
        "bundled digits)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


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
