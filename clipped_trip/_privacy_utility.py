"""The privacy-utility curve of one-pass DP-SGD: the ODE-optimal (clip, lr) per epsilon (SPEC 9).

For each target epsilon the noise multiplier is that of ONE Gaussian mechanism (SPEC 9.3: on a
one-pass stream each example is used in exactly one step; add/remove adjacency, steps assigned
independently of the data), and (c, gamma) minimise the deterministic equivalent's final risk
R(T) of ``DPSGD(gamma, c, batch=B, noise_multiplier=sigma)`` (SPEC 8A + 9.1) at a fixed sample
budget: round(T D) steps of B fresh examples each.

SPEC 9.2: at small c the ODE depends on (gamma, c) only through kappa = gamma c (normalised
SGD), the drift per unit kappa P(|w| <= c) / c grows as c -> 0, and the privacy noise per unit
kappa^2 does not depend on c. So when the privacy noise dominates the optimum is c -> 0 with
gamma ~ kappa* / c ("aggressive clipping"), and R(T) is flat in c below some c_flat; when it is
weak (large epsilon, no DP) the optimum is an interior c. This module reports which case holds
(``at_small_clip_edge``) instead of returning an arbitrary point of the flat valley as if it
were an interior optimum.

References: SPEC sections 8A, 9 (9.2 aggressive clipping, 9.3 privacy of the one-pass stream);
Bombari et al. 2025 and Lin, Kolaczyk, Smith, Paquette 2025 (the high-dimensional dynamics of
DP-SGD on least squares and its privacy-utility trade-off); Abadi et al. 2016 (DP-SGD);
Balle & Wang 2018 (analytic Gaussian mechanism).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _validate as V
from ._dpsgd import DPSGD
from ._ode import MAX_ODE_STEPS, solve_ode
from ._privacy import ACCOUNTANTS, ADJACENCIES, noise_multiplier_for, privacy_report
from ._problem import Problem

__all__ = ["privacy_utility", "PrivacyUtility"]

DEFAULT_CLIPS = np.geomspace(1e-3, 10.0, 13)
_LR_DECADES = 5.0  # default gamma grid: hi(c) 10^-5 ... hi(c)
_NM_MAXITER = 80
_LINE_EVALS = 14


@dataclass(frozen=True, eq=False)
class PrivacyUtility:
    """Result of :func:`privacy_utility`; arrays are per epsilon (input order).

    Attributes:
        epsilon: the targets (inf: no DP, sigma = 0).
        noise_multiplier: sigma of the one-pass stream's single Gaussian mechanism.
        clip, lr, kappa: the optimal c, gamma and kappa = gamma c.
        risk: the deterministic equivalent's R(T) there (the ``method`` solve).
        risk_map: R(T) at the same point from the one-step map of E[v] (SPEC 8A.2 + 9.1), the
            deterministic equivalent at any h; a check of the ODE at the optimum.
        edge_risk: the best R(T) with c fixed at the smallest grid clip (gamma re-optimised).
        at_small_clip_edge: edge_risk <= risk (1 + flat_rtol): the c -> 0 (normalised SGD)
            limit is optimal to that tolerance (SPEC 9.2); then ``clip`` is one point of a
            flat valley and only ``kappa`` is meaningful.
        clip_flat_min, clip_flat_max: the smallest and largest grid clips whose profile risk
            (best over gamma at that clip) is within flat_rtol of ``risk`` (widened to include
            ``clip``): R(T) is flat in c to that tolerance over about this range.
        at_lr_edge: the grid optimum sat on an end of its gamma grid (widen ``lrs``).
        clip_grid, profile_risk, profile_lr: the clip grid, and per epsilon (rows) and grid
            clip (columns) the best risk and gamma over the gamma grid.
        no_dp_risk, no_dp_clip, no_dp_lr: the sigma = 0 optimum (per-example clipped SGD).
        params: JSON-friendly description (problem, batch, T, samples, delta, accountant,
            adjacency statement, grids, cost).
    """

    epsilon: np.ndarray
    noise_multiplier: np.ndarray
    clip: np.ndarray
    lr: np.ndarray
    risk: np.ndarray
    kappa: np.ndarray
    risk_map: np.ndarray
    edge_risk: np.ndarray
    at_small_clip_edge: np.ndarray
    clip_flat_min: np.ndarray
    clip_flat_max: np.ndarray
    at_lr_edge: np.ndarray
    clip_grid: np.ndarray
    profile_risk: np.ndarray
    profile_lr: np.ndarray
    no_dp_risk: float
    no_dp_clip: float
    no_dp_lr: float
    params: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One dict per epsilon (CSV-friendly; epsilon = inf written as inf)."""
        out = []
        for i, eps in enumerate(self.epsilon):
            out.append(
                {
                    "epsilon": float(eps),
                    "delta": self.params["delta"],
                    "noise_multiplier": float(self.noise_multiplier[i]),
                    "batch": self.params["batch"],
                    "T": self.params["T"],
                    "samples": self.params["samples"],
                    "clip": float(self.clip[i]),
                    "lr": float(self.lr[i]),
                    "kappa": float(self.kappa[i]),
                    "risk": float(self.risk[i]),
                    "risk_map": float(self.risk_map[i]),
                    "edge_risk": float(self.edge_risk[i]),
                    "edge_gain": float(self.edge_risk[i] / self.risk[i] - 1.0),
                    "at_small_clip_edge": bool(self.at_small_clip_edge[i]),
                    "clip_flat_min": float(self.clip_flat_min[i]),
                    "clip_flat_max": float(self.clip_flat_max[i]),
                    "at_lr_edge": bool(self.at_lr_edge[i]),
                    "accountant": self.params["accountant"],
                    "adjacency": self.params["adjacency"],
                }
            )
        return out


# ---------------------------------------------------------------------------------------------
# input checks


def _floats(value, msg) -> np.ndarray:
    """value as a float64 array, or ValueError(msg) for text, booleans and non-numbers."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{msg}, got {value!r}")
    try:
        return np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{msg}, got {value!r}") from None


def _epsilons(value) -> np.ndarray:
    msg = "epsilons must be a non-empty 1-D list of numbers > 0 (inf for no DP)"
    arr = _floats(value, msg)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0 or np.any(np.isnan(arr)) or np.any(arr <= 0):
        raise ValueError(f"{msg}, got {value!r}")
    return arr


def _grid(name, value, minimum) -> np.ndarray:
    msg = f"{name} must be a 1-D list of at least {minimum} finite numbers > 0"
    arr = _floats(value, msg)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{msg}, got {value!r}")
    arr = np.unique(arr)
    if arr.size < minimum:
        raise ValueError(f"{msg} (distinct), got {value!r}")
    return arr


def _flag(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# ---------------------------------------------------------------------------------------------
# the search


class _Objective:
    """R(T) of DPSGD(gamma, c) on the deterministic equivalent, in (log c, log gamma).

    One factor-table cache for the whole search: tables depend on (noise, c, B), not on gamma
    or sigma, so every gamma and every epsilon at a grid clip reuses them.
    """

    def __init__(self, problem, batch, T, method, max_steps):
        self.problem, self.batch, self.T = problem, batch, T
        self.method, self.max_steps = method, max_steps
        self.cache: dict = {}
        self.solves = 0
        self.failed = 0

    def risk(self, c, lr, sigma, method=None):
        alg = DPSGD(float(lr), float(c), batch=self.batch, noise_multiplier=float(sigma))
        self.solves += 1
        with warnings.catch_warnings():  # the ODE at large h_bound: see ``method``
            warnings.filterwarnings("ignore", message=r"h = gamma lambda_max / D")
            try:
                res = solve_ode(
                    self.problem,
                    alg,
                    T=self.T,
                    n_records=2,
                    cache=self.cache,
                    method=method or self.method,
                    max_steps=self.max_steps,
                )
            except (RuntimeError, OverflowError, FloatingPointError):
                self.failed += 1
                return math.inf
        R = float(res.risk[-1])
        return R if math.isfinite(R) and not res.diverged else math.inf

    def log_risk(self, u, sigma):
        R = self.risk(math.exp(u[0]), math.exp(u[1]), sigma)
        return math.log(R) if 0.0 < R < math.inf else 1e3


def _line_min(obj, sigma, c, lr_grid, row):
    """Best (risk, gamma, j) at clip c: the grid minimum j of ``row``, then a bounded 1-D
    search in log gamma between its grid neighbours."""
    from scipy.optimize import minimize_scalar

    j = int(np.argmin(row))
    best, best_lr = float(row[j]), float(lr_grid[j])
    if not math.isfinite(best):
        return best, math.nan, j
    lo = math.log(lr_grid[max(j - 1, 0)])
    hi = math.log(lr_grid[min(j + 1, row.size - 1)])
    res = minimize_scalar(
        lambda u: obj.log_risk((math.log(c), u), sigma),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-3, "maxiter": _LINE_EVALS},
    )
    if math.exp(res.fun) < best:
        best, best_lr = math.exp(res.fun), math.exp(res.x)
    return best, best_lr, j


def _optimise(obj, sigma, clips, lr_grids, refine, flat_rtol, lr_bounds, c_bounds):
    """Grid, per-clip line search, Nelder-Mead refinement and the small-c edge, one sigma."""
    from scipy.optimize import minimize

    n_c = clips.size
    grid = [np.array([obj.risk(c, lr, sigma) for lr in lr_grids[i]]) for i, c in enumerate(clips)]
    if not any(np.isfinite(row).any() for row in grid):
        raise ValueError(
            f"privacy_utility: every (clip, lr) of the grid diverged at noise multiplier "
            f"{sigma:.4g}; give smaller lrs"
        )
    if refine:
        lines = [_line_min(obj, sigma, c, lr_grids[i], grid[i]) for i, c in enumerate(clips)]
    else:
        lines = []
        for i, row in enumerate(grid):
            j = int(np.argmin(row))
            lines.append((float(row[j]), float(lr_grids[i][j]), j))
    profile_risk = np.array([x[0] for x in lines])
    profile_lr = np.array([x[1] for x in lines])
    i0 = int(np.argmin(profile_risk))
    j0 = lines[i0][2]
    at_lr_edge = j0 == 0 or j0 == lr_grids[i0].size - 1
    c_opt, lr_opt, R_opt = float(clips[i0]), float(profile_lr[i0]), float(profile_risk[i0])
    if refine:
        u0 = np.array([math.log(c_opt), math.log(lr_opt)])
        dc = 0.5 * math.log(clips[min(i0 + 1, n_c - 1)] / clips[max(i0 - 1, 0)]) / 2
        dl = 0.25 * math.log(lr_grids[i0][1] / lr_grids[i0][0])
        # the simplex steps into the box: a start on the edge would lose a dimension
        sc = 1.0 if u0[0] + dc <= math.log(c_bounds[1]) else -1.0
        sl = 1.0 if u0[1] + dl <= math.log(lr_bounds[1]) else -1.0
        simplex = np.array([u0, u0 + [sc * dc, sl * dl / 2], u0 + [0.0, sl * dl]])
        res = minimize(
            obj.log_risk,
            u0,
            args=(sigma,),
            method="Nelder-Mead",
            bounds=[tuple(np.log(c_bounds)), tuple(np.log(lr_bounds))],
            options={
                "initial_simplex": simplex,
                "maxiter": _NM_MAXITER,
                "xatol": 1e-3,
                "fatol": 1e-6,
            },
        )
        if math.exp(res.fun) < R_opt:
            c_opt, lr_opt = math.exp(res.x[0]), math.exp(res.x[1])
            R_opt = obj.risk(c_opt, lr_opt, sigma)
    edge = float(profile_risk[0])  # c = min(clips), gamma optimised
    at_edge = edge <= R_opt * (1.0 + flat_rtol)
    within = np.flatnonzero(profile_risk <= R_opt * (1.0 + flat_rtol))
    flat_min = float(clips[within.min()]) if within.size else c_opt
    flat_max = float(clips[within.max()]) if within.size else c_opt
    return {
        "clip": c_opt,
        "lr": lr_opt,
        "risk": R_opt,
        "edge_risk": edge,
        "at_small_clip_edge": bool(at_edge),
        "clip_flat_min": min(flat_min, c_opt),
        "clip_flat_max": max(flat_max, c_opt),
        "at_lr_edge": bool(at_lr_edge),
        "profile_risk": profile_risk,
        "profile_lr": profile_lr,
    }


def privacy_utility(
    problem,
    epsilons,
    delta,
    *,
    batch,
    T,
    clips=None,
    lrs=None,
    accountant="analytic",
    adjacency="add-remove",
    refine=True,
    lr_points=21,
    method="DOP853",
    flat_rtol=3e-3,
    progress=False,
) -> PrivacyUtility:
    """The ODE-optimal DP-SGD (clip, lr) and its final risk against epsilon, one-pass stream.

    For each epsilon: sigma = ``noise_multiplier_for(epsilon, delta, accountant=...,
    adjacency=...)`` with ``sampling_rate=None`` (SPEC 9.3: the whole one-pass run is one
    Gaussian mechanism, whatever the number of steps; epsilon = inf means no DP, sigma = 0),
    then (c, gamma) minimising R(T) of ``DPSGD(gamma, c, batch=batch, noise_multiplier=sigma)``
    on the deterministic equivalent (``solve_ode``). Every point spends the same sample budget:
    round(T D) steps x ``batch`` examples (time t = steps / D; D = tr K).

    Search: a log grid of c (default 13 points on [1e-3, 10]) x gamma; the default gamma grid
    is per clip, ``lr_points`` (21) points on [hi(c) 1e-5, hi(c)], hi(c) = ``critical_lr`` with the
    spectrum (the one-step map's stability boundary, factors frozen at R0; ~2 B D / (D + B + 1)
    for large c, growing like 1/c at small c, where gamma* ~ kappa*/c, SPEC 9.2), capped where
    the ODE's work limit would refuse the solve. Then (``refine``) per clip a bounded line
    search in log gamma between the grid neighbours of that row's best (the profile
    ``profile_risk``), and Nelder-Mead in (log c, log gamma) from the best of these, inside the
    grid's box, at most 80 iterations. The optimum is reported as on the small-c edge
    (``at_small_clip_edge``) when the profile risk at c = min(clips) is within ``flat_rtol`` of
    the optimum: the c -> 0 limit is optimal and only kappa = gamma c matters (SPEC 9.2). The
    sigma = 0 optimum is computed once (``no_dp_*``) whether or not ``epsilons`` holds inf.

    ``method``: the solve used in the search. Default "DOP853", the leading ODE
    (SPEC 8A.3 + 9.1) everywhere: smooth in (c, gamma) and fast. Its bound h = gamma
    lambda_max / D is large at the small-c optima, but the effective h = gamma mu lambda_max / D
    is small there (mu ~ 2 c f_w(0)), so it agrees with the map (``risk_map`` reports the map
    at each optimum). "auto" switches from the ODE to the map where h > 0.05, which puts a jump
    of ~0.5-1 % into R(T) (measured at c = 1, gamma ~ 15.7, d = 1000, B = 64) that the
    optimiser can stall on; "map" is smooth but 5-10x slower.

    Cost: (len(epsilons) + 1) x (13 x 21 grid solves + ~13 x 12 line-search solves + ~50
    Nelder-Mead solves + 1 map); a DOP853 solve takes 0.01-0.1 s at d = 1000 (T = 10): measured
    ~9 s per epsilon on one core (SPEC 9.2's setting, B = 64); factor tables are shared between
    gammas and epsilons at each grid clip.

    Args:
        problem: a :class:`Problem` with centred data (no ``data_mean``).
        epsilons: list of epsilon > 0 (inf: no DP).
        delta: in (0, 1).
        batch: B >= 1 examples per step.
        T: horizon > 0 (round(T D) steps).
        clips: the c grid (default ``geomspace(1e-3, 10, 13)``), at least 2 values > 0.
        lrs: a gamma grid shared by every clip (default: per clip, as above), >= 3 values > 0.
        accountant: "analytic" (default, exact, no extra), "pld" or "rdp" (dp extra).
        adjacency: "add-remove" (default) or "substitute" (sigma doubled, SPEC 9.3).
        refine: run the per-clip line searches and the Nelder-Mead refinement (default True;
            False: the grid optimum).
        lr_points: points of the default per-clip gamma grid (>= 3; default 21).
        method: the deterministic equivalent's method (see above).
        flat_rtol: relative tolerance of "as good as the optimum" (default 3e-3: SPEC 9.2
            found the small-epsilon optima flat within 0.3 % for c below 0.03-0.1).
        progress: a tqdm bar over epsilons.

    Returns:
        :class:`PrivacyUtility`.

    References: SPEC sections 8A, 9; Bombari et al. 2025; Lin, Kolaczyk, Smith, Paquette 2025;
    Abadi et al. 2016; Balle & Wang 2018.
    """
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a Problem, got {type(problem).__name__}")
    if problem.data_mean is not None:
        raise ValueError(
            "problem: privacy_utility needs centred data (data_mean None); with a data mean the "
            "objective would be the population risk (SPEC 10)"
        )
    eps = _epsilons(epsilons)
    delta = V.real("delta", delta, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    batch = V.count("batch", batch)
    T = V.positive("T", T)
    clips = DEFAULT_CLIPS.copy() if clips is None else _grid("clips", clips, 2)
    shared_lrs = None if lrs is None else _grid("lrs", lrs, 3)
    if not isinstance(accountant, str) or accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not isinstance(adjacency, str) or adjacency not in ADJACENCIES:
        raise ValueError(f"adjacency must be one of {ADJACENCIES}, got {adjacency!r}")
    refine = _flag("refine", refine)
    progress = _flag("progress", progress)
    lr_points = V.count("lr_points", lr_points, lo=3)
    if not isinstance(method, str):
        raise ValueError(
            f"method must be 'DOP853', 'auto', 'map' or a scipy OdeSolver name, got {method!r}"
        )
    flat_rtol = V.real("flat_rtol", flat_rtol, lo=0.0, hi=1.0)

    lam_max = float(problem.eigenvalues.max())
    is_map = method.lower() == "map"
    # the ODE's work estimate is 2 T gamma lambda_max / 3 steps: stay below its limit
    lr_work = math.inf if is_map else 0.9 * 1.5 * (MAX_ODE_STEPS - 100.0) / (T * lam_max)
    if shared_lrs is None:
        from ._criteria import critical_lr

        hi = np.asarray(
            critical_lr(
                problem.noise,
                problem.initial_risk,
                clips,
                batch=batch,
                eigenvalues=problem.eigenvalues,
            ),
            dtype=np.float64,
        ).reshape(clips.shape)
        hi = np.minimum(np.where(np.isfinite(hi), hi, lr_work), lr_work)
        lr_grids = [np.geomspace(h * 10.0**-_LR_DECADES, h, lr_points) for h in hi]
    else:
        lr_grids = [shared_lrs] * clips.size
    lr_bounds = (min(g[0] for g in lr_grids), max(g[-1] for g in lr_grids))
    c_bounds = (float(clips[0]), float(clips[-1]))

    def sigma_of(e):
        if math.isinf(e):
            return 0.0
        return noise_multiplier_for(e, delta, accountant=accountant, adjacency=adjacency)

    sigmas = np.array([sigma_of(e) for e in eps])
    obj = _Objective(problem, batch, T, method, None)
    results: dict[float, dict] = {}
    todo = sorted(set(sigmas.tolist()) | {0.0}, reverse=True)
    from tqdm.auto import tqdm

    for s in tqdm(todo, desc="privacy_utility", disable=not progress):
        results[s] = _optimise(obj, s, clips, lr_grids, refine, flat_rtol, lr_bounds, c_bounds)
        results[s]["risk_map"] = (
            results[s]["risk"]
            if is_map
            else obj.risk(results[s]["clip"], results[s]["lr"], s, method="map")
        )

    def col(key, dtype=np.float64):
        return np.array([results[s][key] for s in sigmas], dtype=dtype)

    clip = col("clip")
    lr = col("lr")
    reports = [
        privacy_report(s, delta, accountant=accountant, adjacency=adjacency)
        for s in sigmas
        if s > 0
    ]
    statement = (
        f"{reports[0]['adjacency']}; {reports[0]['mechanism']}"
        if reports
        else "no finite epsilon: no privacy accounting"
    )
    steps = int(round(T * problem.D))
    params = {
        "problem": problem.describe(),
        "batch": batch,
        "T": T,
        "steps": steps,
        "samples": steps * batch,
        "budget": f"fixed sample budget: round(T D) = {steps} steps x B = {batch} examples",
        "delta": delta,
        "accountant": accountant,
        "adjacency": adjacency,
        "adjacency_statement": statement,
        "privacy": [
            {"epsilon_target": float(e), **r} for e, r in zip(eps[np.isfinite(eps)], reports)
        ],
        "method": method,
        "refine": refine,
        "flat_rtol": flat_rtol,
        "clips": clips.tolist(),
        "lrs": f"per clip: geomspace(hi(c) 1e-5, hi(c), {lr_points}), hi = critical_lr (map "
        "boundary at R0), capped by the ODE work limit"
        if shared_lrs is None
        else shared_lrs.tolist(),
        "lr_bounds": list(lr_bounds),
        "solves": obj.solves,
        "failed_solves": obj.failed,
    }
    return PrivacyUtility(
        epsilon=eps,
        noise_multiplier=sigmas,
        clip=clip,
        lr=lr,
        risk=col("risk"),
        kappa=clip * lr,
        risk_map=col("risk_map"),
        edge_risk=col("edge_risk"),
        at_small_clip_edge=col("at_small_clip_edge", bool),
        clip_flat_min=col("clip_flat_min"),
        clip_flat_max=col("clip_flat_max"),
        at_lr_edge=col("at_lr_edge", bool),
        clip_grid=clips,
        profile_risk=np.array([results[s]["profile_risk"] for s in sigmas]),
        profile_lr=np.array([results[s]["profile_lr"] for s in sigmas]),
        no_dp_risk=float(results[0.0]["risk"]),
        no_dp_clip=float(results[0.0]["clip"]),
        no_dp_lr=float(results[0.0]["lr"]),
        params=params,
    )
