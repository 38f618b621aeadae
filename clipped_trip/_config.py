"""Process-wide settings."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enable_compilation_cache"]


def enable_compilation_cache(path=None) -> Path:
    """Keep XLA's compiled programs on disk, so a new process skips compilation (about 1 s for the
    simulator on 2 CPU cores). Default folder: $CLIPPED_TRIP_CACHE or ~/.cache/clipped_trip/xla.
    The ``clipped-trip`` command enables it unless CLIPPED_TRIP_NO_CACHE is set."""
    import jax

    folder = Path(
        path
        or os.environ.get("CLIPPED_TRIP_CACHE")
        or Path.home() / ".cache" / "clipped_trip" / "xla"
    )
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
