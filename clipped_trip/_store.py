"""The result store of a sweep: one directory, one atomic result file per finished work unit.

Layout of ``OUT/``::

    sweep.json                       the SweepSpec (SweepSpec.from_json reads it back)
    units/c000003-r000000064-n64.npz the RiskPaths of cell 3, runs 64..127 (save_result: npz
    units/c000003-r000000064-n64.json   and sidecar written atomically, the sidecar holds the
                                        npz's SHA-256, the cell's axis values and, for the unit
                                        of run 0, the ODE's prediction)
    table.csv                        one row per cell, rebuilt from units/ at any time

A unit is finished when its .npz exists (the sidecar is renamed first, the npz last). Finished
units are never rewritten: running the same sweep into the same directory again computes only
the missing ones (resume). A kill loses at most the units being written (their hidden temp
files ``.c...npz.XXXX.tmp`` may stay behind; they are ignored). A different spec into an
existing store is refused.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._sweep_spec import SweepSpec, WorkUnit

__all__ = ["SweepStore", "SweepResult", "load_sweep", "rebuild_table", "TABLE_COLUMNS"]

SPEC_FILE = "sweep.json"
UNITS_DIR = "units"
TABLE_FILE = "table.csv"
#: the statistics columns of the table (after "cell" and the axis columns)
TABLE_COLUMNS = (
    "runs",
    "runs_done",
    "t_final",
    "mean_final_risk",
    "se",
    "band_lo",
    "band_hi",
    "median_final_risk",
    "diverged",
    "ode_final_risk",
    "rel_gap",
)
BAND_COVERAGE = 0.8  # band_lo / band_hi: the 10% and 90% quantiles of the final risk


class SweepStore:
    """A sweep's directory (see the module docstring). Use :meth:`create` or :meth:`open`."""

    def __init__(self, out, spec: SweepSpec):
        self.out = Path(out).absolute()
        self.spec = spec
        self.units_dir = self.out / UNITS_DIR
        self.spec_path = self.out / SPEC_FILE
        self.table_path = self.out / TABLE_FILE

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, out, spec: SweepSpec) -> "SweepStore":
        """Open ``out`` for ``spec``: a new or empty directory gets the spec; an existing store
        must hold the same spec (else ValueError, one line)."""
        from ._io import atomic_write

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file, not a directory")
        if (out / SPEC_FILE).exists():
            old = _read_spec(out)
            if old.fingerprint != spec.fingerprint:
                diffs = ", ".join(spec.differences(old)) or "its canonical form"
                raise ValueError(
                    f"{str(out)!r} holds a different sweep (the spec differs in {diffs}); "
                    "give another --out, or delete that directory to start over"
                )
        else:
            if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
                raise ValueError(
                    f"{str(out)!r} is a non-empty directory without {SPEC_FILE}: not a sweep "
                    "store; give a new or empty --out"
                )
            out.mkdir(parents=True, exist_ok=True)
            text = spec.to_json()
            atomic_write(out / SPEC_FILE, lambda tmp: Path(tmp).write_text(text))
        store = cls(out, spec)
        store.units_dir.mkdir(exist_ok=True)
        return store

    @classmethod
    def open(cls, out) -> "SweepStore":
        """An existing store (its spec read from ``sweep.json``)."""
        return cls(out, _read_spec(Path(out)))

    # --- units ------------------------------------------------------------------------------
    def unit_path(self, unit: WorkUnit) -> Path:
        return self.units_dir / f"{unit.id}.npz"

    def finished_ids(self) -> set:
        """Ids of the finished units (their .npz exists)."""
        try:
            names = [e.name for e in os.scandir(self.units_dir)]
        except FileNotFoundError:
            return set()
        return {n[:-4] for n in names if n.endswith(".npz") and not n.startswith(".")}

    def pending(self, units=None) -> list:
        """The units of the spec whose result is not there yet (in order)."""
        done = self.finished_ids()
        return [u for u in (units or self.spec.units()) if u.id not in done]

    def write_unit(self, unit: WorkUnit, result, extra: dict) -> Path:
        """Write one unit's RiskPaths atomically (npz + sidecar); never overwrites a finished
        unit (a concurrent writer of the same unit wrote the same bits)."""
        from ._io import save_result

        path = self.unit_path(unit)
        if path.exists():
            return path
        meta = {
            "sweep": {
                "fingerprint": self.spec.fingerprint,
                "cell": unit.cell,
                "first_run": unit.first_run,
                "runs": unit.runs,
                "axes": self.spec.cell(unit.cell),
            },
            **extra,
        }
        return save_result(result, path, extra=meta)

    def load_unit(self, unit: WorkUnit):
        """(RiskPaths, sidecar dict) of a finished unit; ValueError naming the file if it is
        corrupt or belongs to another sweep."""
        from ._io import _read_sidecar, load_result

        path = self.unit_path(unit)
        res = load_result(path)
        meta = _read_sidecar(path.with_suffix(".json"))
        info = meta.get("sweep", {})
        if info.get("fingerprint") != self.spec.fingerprint:
            raise ValueError(
                f"unit file {str(path)!r} belongs to another sweep; delete it to recompute it"
            )
        if res.runs != unit.runs:
            raise ValueError(f"unit file {str(path)!r} holds {res.runs} runs, not {unit.runs}")
        return res, meta

    def cell_units(self, i: int) -> list:
        """The work units of cell ``i`` in run order."""
        b = self.spec.block_of(i)
        runs = self.spec.runs
        return [WorkUnit(i, r, min(b, runs - r)) for r in range(0, runs, b)]

    def cell_result(self, i: int, *, partial: bool = False, _done=None):
        """(RiskPaths, sidecars) of cell ``i``: its finished units joined in run order (runs
        0 .. runs - 1, bit-identical to ``simulate`` of the cell). ``partial``: join the
        finished units only (None if there is none); otherwise ValueError if one is missing."""
        done = self.finished_ids() if _done is None else _done
        units = self.cell_units(i)
        have = [u for u in units if u.id in done]
        if len(have) < len(units) and not partial:
            missing = len(units) - len(have)
            raise ValueError(
                f"cell {i}: {missing} of {len(units)} work units are not finished; run the "
                "sweep again with the same --out to finish it"
            )
        if not have:
            return None
        loaded = [self.load_unit(u) for u in have]
        return _join([r for r, _ in loaded], have), [m for _, m in loaded]

    # --- the table ---------------------------------------------------------------------------
    def table_rows(self) -> list:
        """One row per cell: axis values and the statistics of the final risk over the runs
        finished so far (see TABLE_COLUMNS)."""
        spec = self.spec
        done = self.finished_ids()
        rows = []
        for i in range(spec.n_cells):
            row = {"cell": i, **{k: _cell_text(v) for k, v in spec.cell(i).items()}}
            row.update({k: None for k in TABLE_COLUMNS})
            row["runs"] = spec.runs
            row["runs_done"] = 0
            joined = self.cell_result(i, partial=True, _done=done)
            if joined is not None:
                res, metas = joined
                row.update(_cell_stats(res))
                ode = next((m["ode"] for m in metas if "ode" in m), None)
                if isinstance(ode, dict) and ode.get("final_risk") is not None:
                    o = float(ode["final_risk"])
                    row["ode_final_risk"] = o
                    m = row["mean_final_risk"]
                    if math.isfinite(o) and o > 0 and m is not None and math.isfinite(m):
                        row["rel_gap"] = m / o - 1.0
            rows.append(row)
        return rows

    def write_table(self, rows=None) -> Path:
        """Rebuild ``table.csv`` from the units (atomically)."""
        from ._io import atomic_write

        text = table_csv(rows if rows is not None else self.table_rows())
        return atomic_write(self.table_path, lambda tmp: Path(tmp).write_text(text))


def _read_spec(out: Path) -> SweepSpec:
    path = out / SPEC_FILE
    if not path.is_file():
        raise ValueError(f"{str(out)!r} is not a sweep store (no {SPEC_FILE})")
    try:
        return SweepSpec.from_json(path)
    except ValueError as err:
        raise ValueError(f"{str(path)!r}: {' '.join(str(err).split())}") from None


def _join(results, units):
    """One RiskPaths from the units of a cell, in run order."""
    from ._results import RiskPaths

    first = results[0]
    for r in results[1:]:
        if not np.array_equal(r.t, first.t):
            raise ValueError("units of one cell have different record times")
    stats = {
        k: np.concatenate([np.asarray(r.stats[k]) for r in results], axis=0) for k in first.stats
    }
    params = dict(first.params)
    params["runs"] = sum(u.runs for u in units)
    params["first_run"] = units[0].first_run
    return RiskPaths(
        first.t,
        np.concatenate([r.risk for r in results], axis=0),
        np.concatenate([r.diverged for r in results], axis=0),
        np.concatenate([r.divergence_time for r in results], axis=0),
        params,
        samples=first.samples,
        stats=stats,
    )


def _cell_stats(res) -> dict:
    final = res.risk[:, -1]
    lo, hi = res.band(BAND_COVERAGE)
    return {
        "runs_done": res.runs,
        "t_final": float(res.t[-1]),
        "mean_final_risk": float(res.mean()[-1]),
        "se": float(res.std_error()[-1]) if res.runs > 1 else None,
        "band_lo": float(lo[-1]),
        "band_hi": float(hi[-1]),
        "median_final_risk": float(np.median(final)),
        "diverged": int(res.diverged.sum()),
    }


def _cell_text(v):
    return "none" if v is None else v


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    return v


def table_csv(rows) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


@dataclass(frozen=True, eq=False)
class SweepResult:
    """What :func:`run_sweep` and :func:`load_sweep` return.

    Attributes:
        spec: the :class:`SweepSpec`; out: the store directory.
        table: one dict per cell (``cell``, the axis values, then TABLE_COLUMNS), as in
            ``table.csv``.
        units_total, units_done: work units of the sweep, finished ones.
        computed: ids of the units this call computed (empty for load_sweep); skipped: ids found
            finished and not recomputed.
    """

    spec: SweepSpec
    out: Path
    table: list
    units_total: int
    units_done: int
    computed: tuple = ()
    skipped: tuple = ()
    backend: str | None = None
    _store: SweepStore | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.units_done == self.units_total

    @property
    def table_path(self) -> Path:
        return self.out / TABLE_FILE

    @property
    def spec_path(self) -> Path:
        return self.out / SPEC_FILE

    @property
    def units_dir(self) -> Path:
        return self.out / UNITS_DIR

    def cell(self, i: int):
        """The RiskPaths of cell ``i`` (all its runs; ValueError if some unit is missing)."""
        store = self._store or SweepStore(self.out, self.spec)
        return store.cell_result(i)[0]

    def column(self, name: str) -> np.ndarray:
        """One table column as an array over cells (None -> NaN for numbers)."""
        vals = [row[name] for row in self.table]
        if all(v is None or isinstance(v, (int, float)) for v in vals):
            return np.array([np.nan if v is None else v for v in vals], dtype=float)
        return np.array(vals, dtype=object)


def rebuild_table(out) -> Path:
    """Rewrite ``OUT/table.csv`` from the finished units (e.g. after deleting it)."""
    return SweepStore.open(out).write_table()


def load_sweep(out, *, write_table: bool = True) -> SweepResult:
    """The sweep stored in ``out`` (finished or not): its spec and table, rebuilt from the
    units (and written to ``table.csv`` unless ``write_table=False``)."""
    store = SweepStore.open(out)
    rows = store.table_rows()
    if write_table:
        store.write_table(rows)
    done = store.finished_ids()
    units = store.spec.units()
    return SweepResult(
        store.spec,
        store.out,
        rows,
        len(units),
        sum(u.id in done for u in units),
        _store=store,
    )
