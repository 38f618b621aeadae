"""Lazily built tables of smooth functions of the risk, interpolated in log R.

Used by the ODE (mu, nu as functions of R) and by the max-CCC schedule (c*(R)): each decade of R
is tabulated the first time a risk falls in it (``per_decade`` + 1 points, one vectorised call),
then interpolated by a cubic spline in log R. A risk path crossing two decades costs two small
vectorised evaluations instead of one per ODE step.
"""

from __future__ import annotations

import bisect
import math

import numpy as np


class LazyLogTable:
    """``fn(R_array) -> array (n, k)`` of finite or +inf values, interpolated per decade of R.

    Decades holding an inf use piecewise-linear interpolation and return inf on any interval
    touching an inf node (no spline through infinities).
    """

    def __init__(self, fn, per_decade: int = 24):
        self.fn = fn
        self.per_decade = per_decade
        self.decades = {}

    def _decade(self, k):
        if k not in self.decades:
            x = np.linspace(k, k + 1, self.per_decade + 1) * math.log(10)
            y = np.asarray(self.fn(np.exp(x)), dtype=np.float64).reshape(x.size, -1)
            finite = bool(np.all(np.isfinite(y)))
            from scipy.interpolate import CubicSpline  # deferred: keeps `import clipped_trip` fast

            spline = CubicSpline(x, y, axis=0) if finite else None
            # x.tolist() and the coefficients as lists serve the scalar fast path
            coef = spline.c.tolist() if spline is not None else None
            self.decades[k] = (x, y, spline, x.tolist(), coef)
        return self.decades[k]

    def __call__(self, risk):
        """Values at the risks (array (len, k)); risk must be > 0."""
        R = np.atleast_1d(np.asarray(risk, dtype=np.float64))
        logr = np.log(R)
        dec = np.floor(logr / math.log(10)).astype(int)
        out = np.empty((R.size, self._decade(int(dec[0]))[1].shape[1]))
        for k in np.unique(dec):
            x, y, spline, _, _ = self._decade(int(k))
            sel = dec == k
            if spline is not None:
                out[sel] = spline(logr[sel])
            else:
                j = np.clip(np.searchsorted(x, logr[sel]), 1, x.size - 1)
                f = ((logr[sel] - x[j - 1]) / (x[j] - x[j - 1]))[:, None]
                with np.errstate(invalid="ignore"):
                    lin = (1 - f) * y[j - 1] + f * y[j]
                out[sel] = np.where(np.isinf(y[j - 1]) | np.isinf(y[j]), np.inf, lin)
        return out

    def scalar(self, risk: float):
        """Fast path for one risk > 0 (the ODE's right-hand side): a tuple of k floats."""
        lr = math.log(risk)
        k = math.floor(lr / math.log(10))
        x, y, spline, xl, coef = self._decade(k)
        j = min(max(bisect.bisect_right(xl, lr) - 1, 0), len(xl) - 2)
        if spline is None:
            f = (lr - xl[j]) / (xl[j + 1] - xl[j])
            return tuple(
                math.inf if (math.isinf(a) or math.isinf(b)) else (1 - f) * a + f * b
                for a, b in zip(y[j], y[j + 1])
            )
        h = lr - xl[j]
        c0, c1, c2, c3 = (coef[p][j] for p in range(4))  # highest power first
        return tuple(((a * h + b) * h + c) * h + d for a, b, c, d in zip(c0, c1, c2, c3))
