"""Conv2d and max-pool kernels, forward and backward, behind one interface.

``get_backend(name)`` returns a backend, ``"numpy"`` (the readable reference definition) or
``"cython"`` (compiled kernels, GIL released, OpenMP over the batch), each providing::

    conv2d_forward(x, w, b) -> y                  # x (N,C,H,W), w (F,C,KH,KW), b (F,)
    conv2d_backward(dy, x, w) -> (dx, dw, db)     # y, dy: (N, F, H-KH+1, W-KW+1)
    conv2d_backward(dy, x, w, input_grad=False) -> (None, dw, db)   # an input layer's step
    maxpool2d_forward(x, size=2) -> y             # y: (N, C, H//size, W//size)
    maxpool2d_backward(dy, x, size=2) -> dx

Each also takes ``out=``: caller-provided output buffers (a 3-tuple for conv2d_backward), written
in place and returned; they must match the result's shape and dtype, be C-contiguous and writeable,
and share no memory with the arguments.

Convolution is the valid, stride-1 cross-correlation (as in PyTorch); pooling uses non-overlapping
windows and drops partial ones; the pooling gradient goes to the first maximum of each window in
row-major order.  float32 and float64 are supported (outputs keep the input dtype); any strides are
accepted.  Bad arguments raise ValueError naming the argument and shapes.  Getting the "cython"
backend raises KernelBuildError (an ImportError) when the extension is missing or stale.
See docs/kernels.md.
"""

from aigen.kernels.errors import KernelBuildError

BACKENDS = ("numpy", "cython")

__all__ = ["BACKENDS", "KernelBuildError", "get_backend"]


def get_backend(name: str):
    """The kernel backend called name ("numpy" or "cython"): a module with the four kernel functions."""
    if name == "numpy":
        from aigen.kernels import reference

        return reference
    if name == "cython":
        from aigen.kernels import cython_backend

        return cython_backend
    raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
