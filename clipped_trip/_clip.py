"""Gradient clipping by norm (SPEC section 2)."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["clip_by_norm", "clip_factor"]


def clip_factor(grad_norm, max_norm):
    """min(1, max_norm / grad_norm), and 1 at grad_norm = 0 so that clip(0) = 0 without an epsilon.

    ``max_norm = inf`` gives 1 (no clipping); ``max_norm = 0`` gives 0 for any non-zero gradient.
    """
    over = grad_norm > max_norm
    safe = jnp.where(over, grad_norm, 1.0)  # keeps the unused branch finite
    return jnp.where(over, max_norm / safe, 1.0)


def clip_by_norm(grad, max_norm):
    """Scale ``grad`` so that its Euclidean norm is at most ``max_norm``.

    In the package's units the threshold is ``clip * sqrt(D)`` for a clip ``c`` in residual units.

    References: arXiv 2406.11733, clipped SGD update (Sec. 2); SPEC section 2.
    """
    grad = jnp.asarray(grad)
    return grad * clip_factor(jnp.linalg.norm(grad), max_norm)
