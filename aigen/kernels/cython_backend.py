"""The compiled backend: the Cython kernels in aigen.kernels._ckernels (see csrc/ckernels.pyx).

Importing this module checks that the extension exists and, in a source checkout, that it was built
from the current csrc/ sources; otherwise it raises KernelBuildError saying how to rebuild.  There
is deliberately no fallback to the NumPy backend.
"""

import hashlib
import importlib
from pathlib import Path

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
    """sha256 over csrc/*.pyx, then *.pxd, then the C headers *.h (name + bytes each): the same
    digest setup.py bakes in."""
    digest = hashlib.sha256()
    for path in [p for pattern in ("*.pyx", "*.pxd", "*.h") for p in sorted(csrc.glob(pattern))]:
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

# The compiled entry points validate their arguments themselves (the rules of _checks.py, restated
# on C-level attributes, with _checks.py raising the ValueError whenever one fails), so they are
# exported as they are: a Python wrapper would add about a microsecond to every per-sample call.
conv2d_forward = _ck.conv2d_forward
conv2d_backward = _ck.conv2d_backward
maxpool2d_forward = _ck.maxpool2d_forward
maxpool2d_backward = _ck.maxpool2d_backward


def openmp_info() -> dict:
    """{"openmp": compiled with OpenMP, "max_threads": threads a parallel loop uses (OMP_NUM_THREADS)}."""
    return _ck.openmp_info()


def simd_info() -> dict:
    """{"active": copy of the inner loops in use, "available": copies this CPU can run}; the copies are
    "baseline" (the build's instruction set), "avx2" (AVX2 + FMA) and "avx512" (x86-64 builds)."""
    return _ck.simd_info()
