"""The ``clipped-trip`` command line.

User errors (bad options, bad config, bad values) exit with status 2 and one line on stderr, no
traceback; result files are written atomically (temp file, then rename).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import tomllib
from pathlib import Path

from . import _validate as V

SPECTRA = ("isotropic", "power-law", "two-level")


class UserError(Exception):
    """A problem with what the user asked for; reported as one line."""


# ---------------------------------------------------------------------------------------------
# parsing helpers
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
        try:
            kwargs[key] = float(val)
        except ValueError:
            raise ValueError(f"spectrum {spec!r}: {key} must be a number, got {val!r}") from None
    if name == "power-law" and "alpha" not in kwargs:
        raise ValueError(f"spectrum {spec!r}: power-law needs alpha (e.g. power-law:alpha=0.2)")
    return name, kwargs


def make_problem(spectrum: str, d: int, noise):
    from . import Problem

    name, kw = parse_spectrum(spectrum)
    if name == "isotropic":
        return Problem.isotropic(d, noise)
    if name == "power-law":
        return Problem.power_law(d, kw["alpha"], noise)
    return Problem.two_level(d, noise, **kw)


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
CONFIG_KEYS = set(DEFAULTS) | {"lrs", "clips", "noises", "risk", "risks", "clips_grid"}


def load_config(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--config: {p} is not valid TOML ({err})") from None
    unknown = set(data) - CONFIG_KEYS
    if unknown:
        raise UserError(
            f"--config: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(CONFIG_KEYS))}"
        )
    return data


def settings(args) -> dict:
    """Defaults < config file < command-line options."""
    cfg = dict(DEFAULTS)
    if getattr(args, "config", None):
        cfg.update(load_config(args.config))
    for key in DEFAULTS:
        val = getattr(args, key, None)
        if val is not None and val is not False:
            cfg[key] = val
    return cfg


def _clip_value(x):
    if x is None:
        return None
    if isinstance(x, str) and x.strip().lower() in ("none", "inf", "off"):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"clip must be a number > 0 or 'none', got {x!r}") from None
    return None if math.isinf(v) else v


def _float_list(name, text):
    if isinstance(text, (list, tuple)):
        return list(text)
    try:
        return [x.strip() for x in str(text).split(",") if x.strip()]
    except Exception:  # noqa: BLE001
        raise ValueError(f"{name} must be a comma-separated list") from None


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
def _problem_from(cfg):
    from . import parse_noise

    noise = parse_noise(cfg["noise"])
    return make_problem(cfg["spectrum"], V.count("d", cfg["d"]), noise), noise


def _algorithm_from(cfg, lr=None, clip="from-cfg"):
    """ClippedSGD from the settings (lr, clip, batch, clip_mode)."""
    from . import ClippedSGD

    lr = V.positive("lr", cfg["lr"] if lr is None else lr)
    clip = _clip_value(cfg["clip"]) if clip == "from-cfg" else clip
    return ClippedSGD(lr, clip, batch=V.count("batch", cfg["batch"]), clip_mode=cfg["clip_mode"])


def _write_outputs(result, cfg, name, plot_fn=None):
    from ._io import atomic_write, save_result

    out = Path(cfg["out"])
    path = save_result(result, out / f"{name}.npz", extra={"config": _jsonable(cfg)})
    written = [path, path.with_suffix(".json")]
    if cfg.get("plot") and plot_fn is not None:
        import matplotlib

        matplotlib.use("Agg")
        fig = plot_fn()
        written.append(
            atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png"))
        )
    return written


def _jsonable(cfg):
    return {k: v for k, v in cfg.items() if k not in ("config",)}


def _plot_paths(result, title):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    r = result.risk if result.risk.ndim == 2 else result.risk[None, :]
    if result.risk.ndim == 2:
        lo, hi = result.band(0.8, exclude_diverged=True)
        ax.fill_between(result.t, lo, hi, alpha=0.3, lw=0)
        ax.plot(result.t, result.mean(exclude_diverged=True), label="mean (finite runs)")
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
    ax.set_xlabel("t")
    ax.set_ylabel("excess risk")
    ax.legend()
    fig.tight_layout()
    return fig


def cmd_simulate(args, kind):
    from . import simulate, simulate_sde, solve_ode

    cfg = settings(args)
    problem, _ = _problem_from(cfg)
    alg = _algorithm_from(cfg)
    monte_carlo = dict(T=cfg["T"], runs=cfg["runs"], seed=cfg["seed"], n_records=cfg["n_records"])
    if kind == "simulate":
        res = simulate(problem, alg, **monte_carlo)
    elif kind == "sde":
        res = simulate_sde(problem, alg, dt=cfg["dt"], **monte_carlo)
    else:
        res = solve_ode(problem, alg, T=cfg["T"], n_records=cfg["n_records"])
    written = _write_outputs(res, cfg, kind, lambda: _plot_paths(res, f"{kind}: {problem!r}"[:90]))
    final = res.risk[..., -1]
    if kind == "ode":
        print(
            f"ODE final risk {float(final):.6g} at T = {res.t[-1]:g}"
            + (f"; diverged at t = {res.divergence_time:.3g}" if res.diverged else "")
        )
    else:
        print(
            f"{kind}: {res.runs} runs, mean final risk "
            f"{float(res.mean(exclude_diverged=True)[-1]):.6g}"
            f" at T = {res.t[-1]:g}; {res.divergence_report()}"
        )
    for w in written:
        print(f"wrote {w}")
    return 0


def _write_table_outputs(args, name, header, rows, plot_fn=None):
    """Print a CSV table; with --out also write it (atomically), with --plot a PNG of it."""
    from ._io import atomic_write

    text = "\n".join([",".join(header)] + [",".join(r) for r in rows])
    print(text)
    if getattr(args, "out", None):
        out = Path(args.out)
        path = atomic_write(out / f"{name}.csv", lambda tmp: Path(tmp).write_text(text + "\n"))
        print(f"wrote {path}")
        if args.plot and plot_fn is not None:
            import matplotlib

            matplotlib.use("Agg")
            fig = plot_fn()
            print(
                "wrote "
                + str(atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png")))
            )


def cmd_factors(args):
    import numpy as np

    from . import parse_noise, reduction_factors

    cfg = settings(args)
    noise = parse_noise(cfg["noise"])
    risks = [V.nonnegative("risk", x) for x in _float_list("risk", args.risk)]
    clips = [_clip_value(x) for x in _float_list("clip", args.clips)]
    rows, table = [], []
    for R in risks:
        for c in clips:
            mu, nu = reduction_factors(noise, R, c)
            table.append((R, c, float(mu), float(nu)))
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
            ax.set_xlabel("c")
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    _write_table_outputs(args, "factors", ["risk", "clip", "mu", "nu"], rows, plot)
    return 0


def cmd_criteria(args):
    import numpy as np

    from . import ccc, critical_lr, csc, max_ccc, parse_noise

    cfg = settings(args)
    noise = parse_noise(cfg["noise"])
    R = V.nonnegative("risk", args.risk)
    clips = (
        np.logspace(-2, 2, 9)
        if args.clips is None
        else np.array([V.positive("clip", x) for x in _float_list("clip", args.clips)])
    )
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
        ax.set_xlabel("c")
        ax.set_title(f"{noise!r}, R = {R:g}"[:60], fontsize=9)
        ax.legend()
        fig.tight_layout()
        return fig

    _write_table_outputs(args, "criteria", ["clip", "ccc", "csc", "critical_lr"], rows, plot)
    value, c_star = max_ccc(noise, R)
    print(
        f"optimal clip c* = {float(c_star):.6g}, max CCC = {float(value):.6g}"
        + (" (no finite threshold beats no clipping)" if np.isinf(c_star) else "")
    )
    return 0


def cmd_sweep(args):
    import numpy as np
    from tqdm.auto import tqdm

    from . import parse_noise, sweep
    from ._io import atomic_write, save_result

    cfg = settings(args)
    noises = args.noises.split(";") if args.noises else (cfg.get("noises") or [cfg["noise"]])
    lrs = [
        V.positive("lrs", x) for x in _float_list("lrs", args.lrs or cfg.get("lrs") or [cfg["lr"]])
    ]
    clips = [
        _clip_value(x) for x in _float_list("clips", args.clips or cfg.get("clips") or ["none"])
    ]
    laws = [parse_noise(n) for n in noises]  # validate everything before any work
    out = Path(cfg["out"])
    rows = []
    for spec, law in tqdm(list(zip(noises, laws)), desc="sweep", disable=args.quiet):
        problem = make_problem(cfg["spectrum"], V.count("d", cfg["d"]), law)
        res = sweep(
            problem,
            lrs,
            clips,
            algorithm=_algorithm_from(cfg, lr=lrs[0], clip=None),
            T=cfg["T"],
            runs=cfg["runs"],
            seed=cfg["seed"],
            n_records=cfg["n_records"],
        )
        tag = spec.replace(":", "_").replace(",", "_").replace("=", "")
        save_result(res, out / f"sweep_{tag}.npz", extra={"config": _jsonable(cfg), "noise": spec})
        for i, lr in enumerate(lrs):
            for j, c in enumerate(clips):
                cell = res.risk[i, j]
                rows.append(
                    {
                        "noise": spec,
                        "lr": lr,
                        "clip": "inf" if c is None else c,
                        "final_mean_risk": float(np.mean(cell[:, -1])),
                        "final_median_risk": float(np.median(cell[:, -1])),
                        "runs_diverged": int(res.diverged[i, j].sum()),
                        "runs": cfg["runs"],
                        "batch": cfg["batch"],
                        "clip_mode": cfg["clip_mode"],
                    }
                )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    path = atomic_write(out / "sweep.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    print(buf.getvalue().rstrip())
    print(f"wrote {path}")
    return 0


def cmd_reproduce(args):
    from ._figures import FIGURES, run_figure

    if args.list:
        for name in FIGURES:
            print(name)
        return 0
    if not args.figure:
        raise UserError("reproduce: give a FIGURE (see --list) or 'all'")
    names = list(FIGURES) if args.figure == "all" else [args.figure]
    for n in names:
        if n not in FIGURES:
            raise UserError(f"reproduce: unknown figure {n!r}; allowed: {', '.join(FIGURES)}, all")
    for n in names:
        extra = {"data": args.data} if (n == "fig7" and args.data) else {}
        (path, _), secs = run_figure(
            n, quick=args.quick, out=args.out, progress=not args.quiet, **extra
        )
        print(f"{n}: wrote {path} ({secs:.1f} s)")
    return 0


def cmd_rerun(args):
    """Re-run a simulate / ode / sde result from its JSON sidecar (config and seed are in it)."""
    import json

    path = Path(args.sidecar)
    if not path.is_file():
        raise UserError(f"rerun: sidecar {str(path)!r} does not exist")
    try:
        meta = json.loads(path.read_text())
        cfg = meta["config"]
        kind = {"sgd": "simulate", "ode": "ode", "sde": "sde"}[meta["params"]["kind"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"rerun: {path} is not a sidecar written by simulate, ode or sde") from None
    cfg = {k: v for k, v in cfg.items() if k in DEFAULTS}
    cfg["out"] = args.out
    ns = argparse.Namespace(config=None, **{k: None for k in DEFAULTS})
    for key, val in cfg.items():
        setattr(ns, key, val)
    return cmd_simulate(ns, kind)


def cmd_demo(args):
    from ._figures import run_figure

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
def build_parser():
    parser = argparse.ArgumentParser(
        prog="clipped-trip",
        description="Clipped streaming SGD on high-dimensional least squares, next to its ODE "
        "(arXiv 2406.11733).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p, runs=True):
        p.add_argument("--config", metavar="FILE.toml", help="TOML file; options override it")
        p.add_argument(
            "--noise",
            metavar="SPEC",
            help="e.g. gaussian:std=0.5, cauchy:scale=0.5, "
            "student-t:df=3,scale=1, laplace:scale=1, uniform:half_width=1, "
            "three-point:value=2,q=0.2",
        )
        p.add_argument(
            "--spectrum",
            metavar="SPEC",
            help="isotropic | power-law:alpha=A | two-level:high=H,low=L,fraction=F",
        )
        p.add_argument("--d", type=int, metavar="N", help="ambient dimension")
        p.add_argument("--lr", type=float, metavar="X", help="learning rate gamma (step gamma/D)")
        p.add_argument("--clip", metavar="X", help="clip threshold c (residual units) or 'none'")
        p.add_argument("--T", type=float, metavar="X", help="horizon in units of D steps")
        p.add_argument(
            "--batch", type=int, metavar="B", help="examples per step (default 1; t = steps / D)"
        )
        p.add_argument(
            "--clip-mode",
            dest="clip_mode",
            choices=("per-example", "mean"),
            help="per-example: clip each example, then average (DP-SGD); mean: clip the mean "
            "gradient (torch clip_grad_norm_). Default per-example; the same at batch 1",
        )
        if runs:
            p.add_argument("--runs", type=int, metavar="N")
            p.add_argument("--seed", type=int, metavar="N")
        p.add_argument("--n-records", dest="n_records", type=int, metavar="N")
        p.add_argument("--out", metavar="DIR", help="output folder (default results/)")
        p.add_argument("--plot", action="store_true", help="also write a PNG")

    p = sub.add_parser(
        "demo",
        help="figure 1 (paper size: d = 500, 100 runs; ~15 s on 2 cores) with a summary table",
    )
    p.add_argument("--out", default="clipped_trip_demo", metavar="DIR")
    p.add_argument("--quick", action="store_true", help="smaller (d = 200, 20 runs)")
    p.add_argument("--quiet", action="store_true")
    common(sub.add_parser("simulate", help="clipped SGD Monte Carlo"))
    common(sub.add_parser("ode", help="the deterministic risk ODE"), runs=False)
    p = sub.add_parser("sde", help="homogenized SGD (C-HSGD)")
    common(p)
    p.add_argument("--dt", type=float, metavar="X")
    p = sub.add_parser("factors", help="reduction factors mu, nu (CSV)")
    p.add_argument("--config", metavar="FILE.toml")
    p.add_argument("--noise", metavar="SPEC")
    p.add_argument("--risk", default="0.01,0.1,1,10", metavar="R,...")
    p.add_argument("--clip", dest="clips", default="0.1,1,10", metavar="C,...")
    p.add_argument("--out", metavar="DIR", help="also write factors.csv here")
    p.add_argument("--plot", action="store_true", help="with --out: also a PNG")
    p = sub.add_parser("criteria", help="CCC, CSC, critical lr and the optimal clip at one risk")
    p.add_argument("--config", metavar="FILE.toml")
    p.add_argument("--noise", metavar="SPEC")
    p.add_argument("--risk", default="1.0", metavar="R")
    p.add_argument("--clip", dest="clips", default=None, metavar="C,...")
    p.add_argument("--out", metavar="DIR", help="also write criteria.csv here")
    p.add_argument("--plot", action="store_true", help="with --out: also a PNG")
    p = sub.add_parser("sweep", help="grid of (noise, lr, clip): CSV table + curves")
    common(p)
    p.add_argument("--noises", metavar="SPEC;SPEC", help="several noise specs separated by ';'")
    p.add_argument("--lrs", metavar="X,...")
    p.add_argument("--clips", metavar="C,...", help="thresholds, 'none' for unclipped")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("rerun", help="re-run a result from its JSON sidecar (bit-identical)")
    p.add_argument("sidecar", metavar="FILE.json")
    p.add_argument("--out", default="rerun", metavar="DIR")
    p = sub.add_parser("reproduce", help="regenerate a paper figure")
    p.add_argument("figure", nargs="?", metavar="FIGURE", help="figure id (see --list) or 'all'")
    p.add_argument("--quick", action="store_true", help="small version (< 1 minute)")
    p.add_argument("--out", default="figures", metavar="DIR")
    p.add_argument("--list", action="store_true", help="list figure ids")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="fig7: folder with the CIFAR-10 binary batches data_batch_1.bin ... data_batch_5.bin "
        "(cifar-10-batches-bin; pickled python batches are refused; default: scikit-learn's "
        "bundled digits)",
    )
    p.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    try:
        return handlers[args.command](args)
    except (UserError, ValueError, KeyError, TypeError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"clipped-trip {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipped-trip: interrupted (no partial files were left)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
