"""Where aigen keeps things it can recompute: preprocessing caches, the embedded dataset."""

from __future__ import annotations

import os
from pathlib import Path


def cache_location() -> Path:
    """`$AIGEN_CACHE_DIR`, else `$XDG_CACHE_HOME/aigen`, else `~/.cache/aigen` (not created)."""
    if env := os.environ.get("AIGEN_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aigen"


def cache_dir() -> Path:
    """The cache folder (see cache_location), created on demand."""
    path = cache_location()
    path.mkdir(parents=True, exist_ok=True)
    return path
