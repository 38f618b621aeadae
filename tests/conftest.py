"""Numerics tests run in float64; float32 runs ask for it explicitly."""

import jax

jax.config.update("jax_enable_x64", True)
