"""The compiled backend: shared validation, then the Cython kernels in aigen.kernels._ckernels.

Importing this module checks that the extension exists and, in a source checkout, that it was built
from the current csrc/ sources; otherwise it raises KernelBuildError saying how to rebuild.  There
is deliberately no fallback to the NumPy backend.
"""

import hashlib
import importlib
from pathlib import Path

from aigen.kernels._checks import (
    check_conv2d_backward,
    check_conv2d_forward,
    check_maxpool2d_backward,
    check_maxpool2d_forward,
)
from aigen.kernels.errors import KernelBuildError

NAME = "cython"
EXTENSION = "aigen.kernels._ckernels"
# csrc/ sits beside the package only in a source checkout (editable install, make build).
CSRC = Path(__file__).resolve().parents[2] / "csrc"
REBUILD_HINT = (
    "rebuild it with `make build` (or `.venv/bin/pip install --no-build-isolation -e .`) "
    f"in {CSRC.parent}"
)


def source_sha256(csrc: Path = CSRC) -> str:
    """sha256 over csrc/*.pyx then csrc/*.pxd (name + bytes each): the same digest setup.py bakes in."""
    digest = hashlib.sha256()
    for path in sorted(csrc.glob("*.pyx")) + sorted(csrc.glob("*.pxd")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_extension():
    """Import the compiled module, refusing a missing build or one made from other sources."""
    try:
        module = importlib.import_module(EXTENSION)
    except ImportError as exc:
        raise KernelBuildError(f"the compiled kernels ({EXTENSION}) are not built ({exc}); {REBUILD_HINT}") from exc
    if CSRC.is_dir():
        current = source_sha256(CSRC)
        if module.SOURCE_SHA256 != current:
            raise KernelBuildError(
                f"the compiled kernels ({EXTENSION}) are stale: built from csrc/ sources with sha256 "
                f"{module.SOURCE_SHA256[:12] or '?'}..., the checkout now has {current[:12]}...; {REBUILD_HINT}"
            )
    return module


_ck = load_extension()
_conv2d_forward = _ck.conv2d_forward
_conv2d_backward = _ck.conv2d_backward
_maxpool2d_forward = _ck.maxpool2d_forward
_maxpool2d_backward = _ck.maxpool2d_backward


def openmp_info() -> dict:
    """{"openmp": compiled with OpenMP, "max_threads": threads a parallel loop uses (OMP_NUM_THREADS)}."""
    return _ck.openmp_info()


def conv2d_forward(x, w, b):
    """Valid stride-1 cross-correlation: (N, C, H, W) * (F, C, KH, KW) + (F,) -> (N, F, H-KH+1, W-KW+1)."""
    check_conv2d_forward(x, w, b)
    return _conv2d_forward(x, w, b)


def conv2d_backward(dy, x, w):
    """(dx, dw, db): gradients of conv2d_forward given dy of shape (N, F, H-KH+1, W-KW+1)."""
    check_conv2d_backward(dy, x, w)
    return _conv2d_backward(dy, x, w)


def maxpool2d_forward(x, size=2):
    """Max over non-overlapping size x size windows; partial windows at the bottom/right are dropped."""
    return _maxpool2d_forward(x, check_maxpool2d_forward(x, size))


def maxpool2d_backward(dy, x, size=2):
    """Gradient of maxpool2d_forward: each dy goes to the first maximum (row-major) of its window."""
    return _maxpool2d_backward(dy, x, check_maxpool2d_backward(dy, x, size))
