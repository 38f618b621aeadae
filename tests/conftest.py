"""Numerics tests run in float64; float32 runs ask for it explicitly."""

import os

import jax

jax.config.update("jax_enable_x64", True)

# the CLI keeps XLA's compiled programs on disk by default; tests must not write to $HOME
os.environ.setdefault("CLIPPED_TRIP_NO_CACHE", "1")
