"""DP-SGD on the stream: per-example clipping plus the Gaussian mechanism (SPEC 9).

Stochastic update (B fresh examples per step, eta = gamma / D, C = c sqrt(D)):
    e <- e - eta (1/B) (sum_j clip_C(g_j) + sigma C xi),   xi ~ N(0, I_d)
(Opacus / Abadi et al.: noise of std sigma C on the sum). The clipped part is
:class:`ClippedSGD`'s per-example step (the same kernel, ``private=True``).

Deterministic equivalent: per-example clipped SGD's (SPEC 8A) plus, for every coordinate
whatever lambda_i (SPEC 9.1),
    dv_i/dt += gamma^2 sigma^2 c^2 / (2 B^2),   dR/dt += D gamma^2 sigma^2 c^2 / (2 B^2)
    map: v_i' += eta^2 sigma^2 c^2 D / (2 B^2);  SDE: dX_i += gamma (sigma c / B) dB'_i.
It is O(D) times the gradient noise at fixed B: with gamma = O(1) it matters at B ~ sqrt(D).

Privacy (SPEC 9.3): in a one-pass stream each example is used in exactly one step, so the whole
run is ONE Gaussian mechanism with noise multiplier sigma (add/remove adjacency, examples
assigned to steps independently of the data): epsilon from :func:`privacy_epsilon` with
``sampling_rate=None``, whatever the number of steps.

References: SPEC sections 9 and 13; Abadi et al. 2016 (DP-SGD); Balle & Wang 2018.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _validate as V
from ._algorithm import Algorithm
from ._clipped_sgd import BiasEquivalent, ClippedSGDEquivalent, ClippedSGDKernel, _check_schedule
from ._engine import describe_schedule, step_table
from ._schedules import RiskSchedule

__all__ = ["DPSGD"]


@dataclass(frozen=True, eq=False)
class DPSGD(Algorithm):
    """DP-SGD: clip each example's gradient at c sqrt(D), add N(0, sigma^2 C^2 I) to the sum,
    divide by B.

    Args:
        lr: gamma (step gamma / D): a number > 0, a callable of t, or (times, values).
        clip: c in residual units (C = c sqrt(D)); finite (the sensitivity of an unclipped sum
            is infinite): a number or a time schedule (a risk-dependent clip would use the risk,
            which the private algorithm cannot see).
        batch: B >= 1 examples per step (the sum is divided by this nominal B).
        noise_multiplier: sigma >= 0 (0: per-example clipped SGD, no privacy).
        privacy: optional JSON-friendly record of the guarantee (epsilon, delta, accountant,
            adjacency), written into result sidecars; :meth:`for_epsilon` fills it.

    References: SPEC sections 9, 13; Abadi et al. 2016; Opacus.
    """

    lr: object
    clip: object
    batch: int
    noise_multiplier: float
    privacy: dict | None = None
    clip_mode: str = field(default="per-example", init=False, repr=False)
    perturbation: float = field(default=0.0, init=False, repr=False)
    sweep_axes: tuple = field(default=("lr", "clip"), init=False, repr=False)

    def __init__(self, lr, clip, *, batch, noise_multiplier, privacy=None):
        object.__setattr__(self, "lr", _check_schedule("lr", lr, False))
        if clip is None or isinstance(clip, RiskSchedule):
            raise ValueError(
                "clip: DP-SGD needs a finite clip (a number > 0 or a time schedule); without "
                "clipping the sensitivity is infinite, and a risk-dependent clip is not private"
            )
        object.__setattr__(self, "clip", _check_schedule("clip", clip, False))
        object.__setattr__(self, "batch", V.count("batch", batch))
        object.__setattr__(
            self, "noise_multiplier", V.nonnegative("noise_multiplier", noise_multiplier)
        )
        if privacy is not None and not isinstance(privacy, dict):
            raise ValueError(f"privacy must be a dict (or None), got {type(privacy).__name__}")
        object.__setattr__(self, "privacy", None if privacy is None else dict(privacy))
        object.__setattr__(self, "clip_mode", "per-example")
        object.__setattr__(self, "perturbation", 0.0)
        object.__setattr__(self, "sweep_axes", ("lr", "clip"))

    @classmethod
    def for_epsilon(
        cls, lr, clip, *, batch, epsilon, delta, accountant="analytic", adjacency="add-remove"
    ) -> "DPSGD":
        """DP-SGD on a one-pass stream at (epsilon, delta): sigma from the single Gaussian
        mechanism (SPEC 9.3; add/remove adjacency by default)."""
        from ._privacy import noise_multiplier_for, privacy_report

        sigma = noise_multiplier_for(epsilon, delta, accountant=accountant, adjacency=adjacency)
        report = privacy_report(sigma, delta, accountant=accountant, adjacency=adjacency)
        return cls(lr, clip, batch=batch, noise_multiplier=sigma, privacy=report)

    def replace(self, **changes) -> "DPSGD":
        kw = dict(
            lr=self.lr,
            clip=self.clip,
            batch=self.batch,
            noise_multiplier=self.noise_multiplier,
            privacy=self.privacy,
        )
        kw.update(changes)
        return DPSGD(kw.pop("lr"), kw.pop("clip"), **kw)

    def kernel(self):
        return ClippedSGDKernel(self.batch, "per-example", private=True)

    def samples_per_step(self) -> int:
        return self.batch

    def step_tables(self, n_steps, D):
        return {
            "lr": step_table("lr", self.lr, n_steps, D, False),
            "clip": step_table("clip", self.clip, n_steps, D, False),
            "noise_multiplier": np.array([self.noise_multiplier]),
        }

    def describe(self) -> dict:
        desc = {
            "algorithm": "DPSGD",
            "lr": describe_schedule(self.lr),
            "clip": describe_schedule(self.clip),
            "batch": self.batch,
            "clip_mode": "per-example",
            "noise_multiplier": self.noise_multiplier,
        }
        if self.privacy is not None:
            desc["privacy"] = self.privacy
        return desc

    def deterministic(
        self, problem, *, use_table=True, second_order=False, for_map=False, cache=None
    ):
        if problem.data_mean is not None:
            return BiasEquivalent(self, problem, second_order, for_map)
        return ClippedSGDEquivalent(self, problem, use_table, second_order, for_map, cache)

    def __repr__(self):
        return (
            f"DPSGD(lr={describe_schedule(self.lr)!r}, clip={describe_schedule(self.clip)!r}, "
            f"batch={self.batch}, noise_multiplier={self.noise_multiplier!r})"
        )
