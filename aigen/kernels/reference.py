"""The NumPy backend: the readable definition of the kernels (slow, obviously correct).

Shapes: x (N, C, H, W), w (F, C, KH, KW), b (F,).  Convolution is the valid, stride-1
cross-correlation used by PyTorch; max pooling uses non-overlapping windows and drops partial ones.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from aigen.kernels._checks import (
    check_backward_out,
    check_conv2d_backward,
    check_conv2d_forward,
    check_maxpool2d_backward,
    check_maxpool2d_forward,
    check_out,
    conv2d_output_shape,
    maxpool2d_output_shape,
)

NAME = "numpy"


def _written(result: np.ndarray, out):
    """result, or out with result's values copied in (out already validated)."""
    if out is None:
        return result
    np.copyto(out, result)
    return out


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, out=None) -> np.ndarray:
    """y[n, f, h, v] = b[f] + sum_{c, i, j} x[n, c, h + i, v + j] * w[f, c, i, j].

    out: an optional buffer for y (see _checks.check_out); y is then out itself.
    """
    check_conv2d_forward(x, w, b)
    if out is not None:
        check_out("out", out, conv2d_output_shape(x.shape, w.shape), x, (("x", x), ("w", w), ("b", b)))
    kh, kw = w.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))  # (N, C, OH, OW, KH, KW), a view
    y = np.einsum("nchvij,fcij->nfhv", windows, w, optimize=True)
    return _written(np.ascontiguousarray(y + b[None, :, None, None]), out)


def conv2d_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, out=None, input_grad=True):
    """(dx, dw, db): gradients of conv2d_forward's output y with respect to x, w and b, given dy.

    out: an optional tuple of three buffers (dx, dw, db), returned filled.  input_grad=False: dx
    is not computed and is None (out[0] must then be None), as for a network's input layer.
    """
    check_conv2d_backward(dy, x, w)
    if out is not None:
        out = check_backward_out(out, dy, x, w, input_grad)
    kh, kw = w.shape[2:]
    oh, ow = dy.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))
    dw = np.einsum("nfhv,nchvij->fcij", dy, windows, optimize=True)
    db = dy.sum(axis=(0, 2, 3))
    dx = None
    if input_grad:
        # Each kernel tap (i, j) moved x[:, :, i:i+OH, j:j+OW] into y; send dy back the same way.
        dx = np.zeros_like(x, order="C")
        for i in range(kh):
            for j in range(kw):
                dx[:, :, i : i + oh, j : j + ow] += np.einsum("nfhv,fc->nchv", dy, w[:, :, i, j])
    if out is None:
        return dx, np.ascontiguousarray(dw), np.ascontiguousarray(db)
    return tuple(None if buf is None else _written(value, buf)
                 for value, buf in zip((dx, dw, db), out))


def _windows(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, OH, OW, size*size) view of the complete windows, each flattened in row-major order."""
    n, c, h, w = x.shape
    oh, ow = h // size, w // size
    blocks = x[:, :, : oh * size, : ow * size].reshape(n, c, oh, size, ow, size)
    return blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh, ow, size * size)


def maxpool2d_forward(x: np.ndarray, size: int = 2, out=None) -> np.ndarray:
    """Max over non-overlapping size x size windows; trailing rows/columns that do not fill one are dropped."""
    size = check_maxpool2d_forward(x, size)
    if out is not None:
        check_out("out", out, maxpool2d_output_shape(x.shape, size), x, (("x", x),))
    return _written(np.ascontiguousarray(_windows(x, size).max(axis=-1)), out)


def maxpool2d_backward(dy: np.ndarray, x: np.ndarray, size: int = 2, out=None) -> np.ndarray:
    """Gradient of maxpool2d_forward: each dy goes to the first maximum of its window (row-major)."""
    size = check_maxpool2d_backward(dy, x, size)
    if out is not None:
        check_out("out", out, x.shape, x, (("dy", dy), ("x", x)))
    n, c, oh, ow = dy.shape
    first_max = _windows(x, size).argmax(axis=-1)  # argmax returns the first of tied maxima
    routed = (np.arange(size * size) == first_max[..., None]) * dy[..., None]
    dx = np.zeros_like(x, order="C")
    dx[:, :, : oh * size, : ow * size] = (
        routed.reshape(n, c, oh, ow, size, size).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh * size, ow * size)
    )
    return _written(dx, out)
