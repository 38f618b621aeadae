"""Lazily built tables of smooth functions of the risk, interpolated in log R.

Used by the ODE (mu, nu as functions of R) and by the max-CCC schedule (c*(R)): each decade of R
is tabulated the first time a risk falls in it (``per_decade`` + 1 points, one vectorised call),
then interpolated by a cubic spline in log R. A risk path crossing two decades costs two small
vectorised evaluations instead of one per ODE step.

Non-finite values (c* = inf where no finite clip helps, log 0 = -inf) are never splined through:
a decade holding one is split at each finite / non-finite boundary, the boundary is located by
bisection on ``fn`` itself (to ``boundary_tol`` in log R, not at a table node), every finite run
is re-tabulated on its own uniform nodes (spacing at most the decade's) and splined, and the
non-finite runs return the non-finite value. The accuracy is then that of the spline on every
finite run, whatever the law.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

_LOG10 = math.log(10)


class _Piecewise:
    """One column of a decade holding non-finite values or jumps: pieces on sorted breakpoints.

    ``starts[i]`` is where piece ``i`` begins (the first is -inf); a piece is either a cubic
    spline (scipy ``CubicSpline``) or a constant (the non-finite value).
    """

    def __init__(self, starts, pieces, jumps):
        self.starts = starts
        self.pieces = pieces
        self.jumps = jumps  # [(a, b)]: piece i ends at a, piece i + 1 starts at b

    def at(self, logr: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.starts, logr, side="right") - 1
        out = np.empty(logr.shape)
        for i in np.unique(idx):
            sel = idx == i
            piece = self.pieces[int(i)]
            out[sel] = piece(logr[sel]) if callable(piece) else piece
        return out

    def scalar(self, lr: float) -> float:
        piece = self.pieces[bisect.bisect_right(self.starts, lr) - 1]
        return float(piece(lr)) if callable(piece) else piece


class LazyLogTable:
    """``fn(R_array) -> array (n, k)`` of finite or non-finite values, interpolated per decade of R.

    Finite values are read from cubic splines in log R; a decade holding non-finite values is
    split at the finite / non-finite boundaries, located by bisection on ``fn`` to
    ``boundary_tol`` in log R (see the module docstring). ``breaks(lo, hi)``, if given, returns
    the jumps of ``fn`` between log R = lo and hi as brackets ``[(a, b), ...]`` (``fn`` smooth up to
    a and from b on): the decade is split there too, never splined across a jump.
    """

    def __init__(
        self,
        fn,
        per_decade: int = 24,
        *,
        breaks=None,
        boundary_tol: float = 1e-10,
        refine_tol: float = 1e-9,
        max_refine: int = 5,
    ):
        self.fn = fn
        self.per_decade = per_decade
        self.breaks = breaks
        self.boundary_tol = boundary_tol
        self.refine_tol = refine_tol
        self.max_refine = max_refine
        self.decades = {}

    def _eval(self, x):
        return np.asarray(self.fn(np.exp(x)), dtype=np.float64).reshape(np.size(x), -1)

    def _nodes(self, s, e, h):
        """Uniform nodes on [s, e], spacing at most ``h``, at least 5 of them."""
        return np.linspace(s, e, max(4, math.ceil((e - s) / h - 1e-9)) + 1)

    def _decade(self, k):
        if k not in self.decades:
            x = np.linspace(k, k + 1, self.per_decade + 1) * _LOG10
            h = x[1] - x[0]
            cuts = []
            for a, b in sorted(self.breaks(x[0], x[-1])) if self.breaks is not None else []:
                a, b = max(a, x[0]), min(b, x[-1])
                if cuts and a <= cuts[-1][1]:  # overlapping brackets: merge
                    cuts[-1] = (cuts[-1][0], max(b, cuts[-1][1]))
                elif a <= b:
                    cuts.append((a, b))
            if not cuts:
                y = self._eval(x)
                segments = [(x, y)]
            else:  # smooth segments between the jumps, each on its own nodes
                ends = [x[0]] + [v for ab in cuts for v in ab] + [x[-1]]
                segments = []
                for s, e in zip(ends[::2], ends[1::2]):
                    xs = self._nodes(s, e, h) if e > s else np.array([s])
                    segments.append((xs, self._eval(xs)))
                y = segments[0][1]
            if len(segments) == 1 and np.all(np.isfinite(y)):
                from scipy.interpolate import CubicSpline  # deferred: keeps the import fast

                spline = CubicSpline(x, y, axis=0)
                # x.tolist() and the coefficients as lists serve the scalar fast path
                self.decades[k] = (x, y, spline, x.tolist(), spline.c.tolist())
            else:
                columns = []
                for j in range(y.shape[1]):
                    starts, pieces, jumps = [], [], []
                    for i, (xs, ys) in enumerate(segments):
                        part = self._split_column(xs, ys[:, j], j, h)
                        starts += [xs[0] if starts else -math.inf] + list(part.starts[1:])
                        pieces += part.pieces
                        jumps += ([cuts[i - 1]] if i else []) + part.jumps
                    columns.append(_Piecewise(np.array(starts), pieces, jumps))
                self.decades[k] = (x, y, columns, None, None)
        return self.decades[k]

    def _boundary(self, j, a, b, left_finite):
        """Shrink [a, b] (fn finite at a iff ``left_finite``, the other way at b) to a bracket of
        the status change narrower than ``boundary_tol``: 15 points per vectorised call."""
        while b - a > self.boundary_tol:
            xs = np.linspace(a, b, 17)[1:-1]
            changed = np.nonzero(np.isfinite(self._eval(xs)[:, j]) != left_finite)[0]
            if changed.size == 0:
                a = xs[-1]
            else:
                i = int(changed[0])
                a, b = (xs[i - 1] if i > 0 else a), xs[i]
        return a, b

    def _split_column(self, x, y, j, h) -> _Piecewise:
        """Column ``j`` on nodes ``x`` (values ``y``): finite runs splined, the rest constant."""
        finite = np.isfinite(y)
        if np.all(finite):
            return _Piecewise(np.array([-math.inf]), [self._fit_run(j, x, y)], [])
        # runs of equal status (start, end, finite, first node, last node); a run ends at the
        # bracket side of its own status, the next one starts at the other side
        runs, jumps = [], []
        start, first = x[0], 0
        for i in range(x.size - 1):
            if finite[i] != finite[i + 1]:
                a, b = self._boundary(j, x[i], x[i + 1], bool(finite[i]))
                jumps.append((a, b))
                runs.append((start, a, bool(finite[i]), first, i))
                start, first = b, i + 1
        runs.append((start, x[-1], bool(finite[-1]), first, x.size - 1))
        starts, pieces = [], []
        for s, e, is_finite, i0, i1 in runs:
            starts.append(-math.inf if not starts else s)
            if not is_finite:
                vals = y[i0 : i1 + 1]
                pieces.append(float(vals[0]) if np.all(vals == vals[0]) else math.inf)
            elif e <= s:
                pieces.append(float(self._eval(np.array([s]))[0, j]))
            else:  # cut at a boundary: its own uniform nodes, spacing <= the decade's
                nodes = self._nodes(s, e, h)
                vals = self._eval(nodes)[:, j]
                ok = np.isfinite(vals)  # a second status change inside one bracket: unresolved
                pieces.append(self._fit_run(j, nodes[ok], vals[ok]))
        return _Piecewise(np.array(starts), pieces, jumps)

    def _fit_run(self, j, nodes, vals):
        """Cubic spline of column ``j`` through finite ``vals`` at ``nodes``, with midpoints
        inserted where it misses ``fn`` by more than ``refine_tol`` (at most ``max_refine``
        rounds: a function steepening towards a boundary)."""
        from scipy.interpolate import CubicSpline

        if nodes.size < 2:
            return float(vals[0]) if nodes.size else math.inf
        spline = CubicSpline(nodes, vals)
        for _ in range(self.max_refine):
            mids = 0.5 * (nodes[:-1] + nodes[1:])
            fm = self._eval(mids)[:, j]
            bad = np.isfinite(fm) & (np.abs(spline(mids) - fm) > self.refine_tol)
            if not bad.any():
                break
            nodes = np.concatenate([nodes, mids[bad]])
            vals = np.concatenate([vals, fm[bad]])
            order = np.argsort(nodes)
            nodes, vals = nodes[order], vals[order]
            spline = CubicSpline(nodes, vals)
        return spline

    def jumps(self, lo: float, hi: float):
        """Brackets (a, b) in log R of the jumps found (finite / non-finite boundaries, ``breaks``)
        between log R = lo and hi, in any column: the ``breaks`` another table of a function of
        this one needs. Tabulates the decades it covers."""
        out = set()
        first = math.floor(lo / _LOG10 + 1e-9)
        for k in range(first, max(first + 1, math.ceil(hi / _LOG10 - 1e-9))):
            _, _, interp, xl, _ = self._decade(k)
            if xl is None:
                out.update(
                    (a, b) for column in interp for a, b in column.jumps if lo <= b and a <= hi
                )
        return sorted(out)

    def __call__(self, risk):
        """Values at the risks (array (len, k)); risk must be > 0."""
        R = np.atleast_1d(np.asarray(risk, dtype=np.float64))
        logr = np.log(R)
        dec = np.floor(logr / _LOG10).astype(int)
        out = np.empty((R.size, self._decade(int(dec[0]))[1].shape[1]))
        for k in np.unique(dec):
            _, _, interp, xl, _ = self._decade(int(k))
            sel = dec == k
            if xl is not None:
                out[sel] = interp(logr[sel])
            else:
                for j, column in enumerate(interp):
                    out[sel, j] = column.at(logr[sel])
        return out

    def scalar(self, risk: float):
        """Fast path for one risk > 0 (the ODE's right-hand side): a tuple of k floats."""
        lr = math.log(risk)
        k = math.floor(lr / _LOG10)
        _, _, interp, xl, coef = self._decade(k)
        if xl is None:
            return tuple(column.scalar(lr) for column in interp)
        j = min(max(bisect.bisect_right(xl, lr) - 1, 0), len(xl) - 2)
        h = lr - xl[j]
        c0, c1, c2, c3 = (coef[p][j] for p in range(4))  # highest power first
        return tuple(((a * h + b) * h + c) * h + d for a, b, c, d in zip(c0, c1, c2, c3))
