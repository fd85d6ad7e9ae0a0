"""Build the Cython kernels; everything else about the package lives in pyproject.toml."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

# Cython directives, set once for every extension.
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}


def sources() -> list[Path]:
    """csrc/*.pyx, then *.pxd, then the C headers the .pyx includes (*.h), each group sorted."""
    return [path for pattern in ("*.pyx", "*.pxd", "*.h") for path in sorted(CSRC.glob(pattern))]


def source_sha256() -> str:
    """Hash of every Cython source and C header; baked into the extension so a stale build is detected
    at import (aigen/kernels/cython_backend.py computes the same digest)."""
    digest = hashlib.sha256()
    for path in sources():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def openmp_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags for OpenMP if the compiler accepts them, else none: the build must not need it."""
    if os.environ.get("AIGEN_NO_OPENMP"):
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler.split()[0]) is None:
        return [], []
    test = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.c"
        src.write_text(test)
        try:
            result = subprocess.run(
                [*compiler.split(), "-fopenmp", str(src), "-o", str(Path(tmp) / "t")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return [], []
    if result.returncode != 0:
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


compile_omp, link_omp = openmp_flags()

extensions = [
    Extension(
        "aigen.kernels._ckernels",
        sources=[str((CSRC / "ckernels.pyx").relative_to(ROOT))],
        include_dirs=[np.get_include(), str(CSRC.relative_to(ROOT))],
        depends=[str(path.relative_to(ROOT)) for path in sorted(CSRC.glob("*.h"))],
        define_macros=[
            ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ("AIGEN_SOURCE_SHA256", f'"{source_sha256()}"'),
            ("AIGEN_HAVE_OPENMP", "1" if compile_omp else "0"),
        ],
        extra_compile_args=["-O3", *compile_omp] if sys.platform != "win32" else compile_omp,
        extra_link_args=link_omp,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
