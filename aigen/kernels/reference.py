"""The NumPy backend: the readable definition of the kernels (slow, obviously correct).

Shapes: x (N, C, H, W), w (F, C, KH, KW), b (F,).  Convolution is the valid, stride-1
cross-correlation used by PyTorch; max pooling uses non-overlapping windows and drops partial ones.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from aigen.kernels._checks import (
    check_conv2d_backward,
    check_conv2d_forward,
    check_maxpool2d_backward,
    check_maxpool2d_forward,
)

NAME = "numpy"


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y[n, f, h, v] = b[f] + sum_{c, i, j} x[n, c, h + i, v + j] * w[f, c, i, j]."""
    check_conv2d_forward(x, w, b)
    kh, kw = w.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))  # (N, C, OH, OW, KH, KW), a view
    y = np.einsum("nchvij,fcij->nfhv", windows, w, optimize=True)
    return np.ascontiguousarray(y + b[None, :, None, None])


def conv2d_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray):
    """(dx, dw, db): gradients of conv2d_forward's output y with respect to x, w and b, given dy."""
    check_conv2d_backward(dy, x, w)
    kh, kw = w.shape[2:]
    oh, ow = dy.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))
    dw = np.einsum("nfhv,nchvij->fcij", dy, windows, optimize=True)
    db = dy.sum(axis=(0, 2, 3))
    # Each kernel tap (i, j) moved x[:, :, i:i+OH, j:j+OW] into y; send dy back the same way.
    dx = np.zeros_like(x, order="C")
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i : i + oh, j : j + ow] += np.einsum("nfhv,fc->nchv", dy, w[:, :, i, j])
    return dx, np.ascontiguousarray(dw), np.ascontiguousarray(db)


def _windows(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, OH, OW, size*size) view of the complete windows, each flattened in row-major order."""
    n, c, h, w = x.shape
    oh, ow = h // size, w // size
    blocks = x[:, :, : oh * size, : ow * size].reshape(n, c, oh, size, ow, size)
    return blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh, ow, size * size)


def maxpool2d_forward(x: np.ndarray, size: int = 2) -> np.ndarray:
    """Max over non-overlapping size x size windows; trailing rows/columns that do not fill one are dropped."""
    size = check_maxpool2d_forward(x, size)
    return np.ascontiguousarray(_windows(x, size).max(axis=-1))


def maxpool2d_backward(dy: np.ndarray, x: np.ndarray, size: int = 2) -> np.ndarray:
    """Gradient of maxpool2d_forward: each dy goes to the first maximum of its window (row-major)."""
    size = check_maxpool2d_backward(dy, x, size)
    n, c, oh, ow = dy.shape
    first_max = _windows(x, size).argmax(axis=-1)  # argmax returns the first of tied maxima
    routed = (np.arange(size * size) == first_max[..., None]) * dy[..., None]
    dx = np.zeros_like(x, order="C")
    dx[:, :, : oh * size, : ow * size] = (
        routed.reshape(n, c, oh, ow, size, size).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh * size, ow * size)
    )
    return dx
