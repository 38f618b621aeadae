"""Input checks shared by every public entry point.

Each helper raises ``ValueError`` with one line naming the parameter and the allowed range.
"""

from __future__ import annotations

import math

import numpy as np


def real(
    name: str, value, *, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False, allow_inf=False
) -> float:
    """A finite real scalar in [lo, hi] (ends open where asked)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {x}")
    below = x <= lo if lo_open else x < lo
    above = x >= hi if hi_open else x > hi
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {x}")
    return x


def positive(name: str, value, *, allow_inf=False) -> float:
    return real(name, value, lo=0.0, lo_open=True, allow_inf=allow_inf)


def nonnegative(name: str, value, *, allow_inf=False) -> float:
    return real(name, value, lo=0.0, allow_inf=allow_inf)


def count(name: str, value, *, lo: int = 1) -> int:
    """An integer >= lo (bools and non-integral floats refused)."""
    ok = not isinstance(value, bool)
    try:
        ok = ok and float(value).is_integer()
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or int(value) < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def vector(name: str, value, *, length: int | None = None, nonneg=False) -> np.ndarray:
    """A finite 1-D float64 array (read-only copy)."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D array of real numbers") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} must have length {length}, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    if nonneg and np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 everywhere, min is {arr.min()}")
    arr.setflags(write=False)
    return arr
