"""Where aigen keeps things it can recompute: preprocessing caches, the embedded dataset."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$AIGEN_CACHE_DIR`, else `$XDG_CACHE_HOME/aigen`, else `~/.cache/aigen` (created on demand)."""
    if env := os.environ.get("AIGEN_CACHE_DIR"):
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "aigen"
    path.mkdir(parents=True, exist_ok=True)
    return path
