"""clipped_trip: streaming SGD with gradient clipping on high-dimensional least squares, next to
the deterministic ODE that predicts its risk (arXiv 2406.11733).

Where each formula of SPEC.md lives:
    section 1-2 (model, units, clipping)  -> _problem.py, _clip.py, _simulate.py
    section 3 (reduction factors)         -> _factors.py
    section 4 (ODE, Volterra, C-HSGD)     -> _ode.py, _sde.py
    section 5 (CCC, CSC, schedules)       -> _criteria.py
    section 7 (exact reduced simulation)  -> _reduced.py
    section 8 (mini-batch clipping)       -> _clipped_sgd.py (update, ODE/map/SDE terms),
                                             _batch_factors.py (mu_B, nu_B, kap)
    section 9 (DP-SGD, privacy)           -> _dpsgd.py (update, ODE/map/SDE terms), _privacy.py
    section 10 (clipping bias, perturbation) -> _clipped_sgd.py (BiasEquivalent), _bias_factors.py
    section 11 (adaptive thresholds)      -> _quantile_clip.py, _autoclip.py, _adaptive_factors.py
    section 12 (value clipping, signSGD)  -> _value_clip.py, _value_factors.py
    ODE phase diagrams (a grid of cells in one compiled program) -> _phase.py
    sweeps at scale (spec, result store, backends) -> _sweep_spec.py, _store.py, _backends.py
    section 13 (algorithm contract)       -> _algorithm.py; one engine: _engine.py
"""

from ._algorithm import Algorithm
from ._clip import clip_by_norm, clip_factor
from ._clipped_sgd import ClippedSGD
from ._config import enable_compilation_cache
from ._autoclip import AutoClipSGD
from ._backends import run_sweep
from ._dpsgd import DPSGD
from ._criteria import (
    ccc,
    critical_batch,
    critical_lr,
    csc,
    heuristic_schedule,
    max_ccc,
    max_ccc_schedule,
    optimal_clip,
    quantile_stationary_point,
    tune_kappa,
    value_clip_preconditioner,
)
from ._factors import reduction_factors
from ._io import load_result, save_result
from ._noise import (
    Discrete,
    Empirical,
    Exponential,
    Gaussian,
    GaussianMixture,
    Laplace,
    NoiseLaw,
    StudentT,
    ThreePoint,
    Uniform,
    parse_noise,
)
from ._ode import solve_ode
from ._phase import PhaseDiagram, phase_diagram
from ._privacy import noise_multiplier_for, privacy_epsilon, privacy_report
from ._privacy_utility import PrivacyUtility, privacy_utility
from ._problem import Problem
from ._quantile_clip import QuantileClipSGD
from ._reduced import ReducedProblem, simulate_reduced
from ._results import ODEResult, RiskPaths
from ._schedules import RiskSchedule
from ._sde import simulate_sde
from ._simulate import simulate, sweep
from ._store import SweepResult, load_sweep
from ._sweep_spec import SweepSpec
from ._value_clip import SignSGD, ValueClipSGD

__version__ = "0.2.0"

__all__ = [
    "Algorithm",
    "ClippedSGD",
    "DPSGD",
    "QuantileClipSGD",
    "AutoClipSGD",
    "ValueClipSGD",
    "SignSGD",
    "Problem",
    "NoiseLaw",
    "Gaussian",
    "StudentT",
    "Laplace",
    "Uniform",
    "Exponential",
    "ThreePoint",
    "Discrete",
    "GaussianMixture",
    "Empirical",
    "parse_noise",
    "clip_by_norm",
    "clip_factor",
    "simulate",
    "sweep",
    "simulate_sde",
    "solve_ode",
    "reduction_factors",
    "ccc",
    "csc",
    "critical_lr",
    "critical_batch",
    "optimal_clip",
    "max_ccc",
    "max_ccc_schedule",
    "heuristic_schedule",
    "tune_kappa",
    "quantile_stationary_point",
    "value_clip_preconditioner",
    "RiskSchedule",
    "privacy_epsilon",
    "noise_multiplier_for",
    "privacy_report",
    "privacy_utility",
    "PrivacyUtility",
    "RiskPaths",
    "ODEResult",
    "enable_compilation_cache",
    "ReducedProblem",
    "simulate_reduced",
    "save_result",
    "load_result",
    "phase_diagram",
    "PhaseDiagram",
    "SweepSpec",
    "SweepResult",
    "run_sweep",
    "load_sweep",
    "__version__",
]
