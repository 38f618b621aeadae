"""Numerics tests run in float64; float32 runs ask for it explicitly."""

import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# the CLI keeps XLA's compiled programs on disk by default; tests must not write to $HOME
os.environ.setdefault("CLIPPED_TRIP_NO_CACHE", "1")


@pytest.fixture(scope="session")
def quick_figure(tmp_path_factory):
    """quick_figure(name) -> (out folder, (path, summary), figure): each figure's quick version
    rendered once per session (the package-wide render checks and a figure's own tests read the
    same files)."""
    from clipped_trip import _figures

    done = {}

    def render(name):
        if name not in done:
            out = tmp_path_factory.mktemp(f"quick-{name}")
            result, _ = _figures.run_figure(name, quick=True, out=out, progress=False)
            done[name] = (out, result, _figures.last_figure(name))
        return done[name]

    return render
