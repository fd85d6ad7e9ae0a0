"""Argument validation shared by every kernel backend (the one place the rules live).

Each check raises ValueError naming the offending argument and the shapes/dtypes involved; on
success it returns nothing.  The checks only read attributes, so they cost a few hundred
nanoseconds: the per-sample training loop calls them four times per image.
"""

import operator

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_array(name: str, a, ndim: int, layout: str) -> None:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array {layout}, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {a.shape}")
    if a.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32 or float64 (native byte order), got dtype {a.dtype}")


def _check_same_dtype(first: str, a, *others) -> None:
    for name, other in others:
        if other.dtype != a.dtype:
            raise ValueError(
                f"{name} has dtype {other.dtype} but {first} has dtype {a.dtype}; "
                "all arguments must share one float dtype"
            )


def _check_conv_operands(x, w) -> None:
    _check_array("x", x, 4, "(N, C, H, W)")
    _check_array("w", w, 4, "(F, C, KH, KW)")
    _check_same_dtype("x", x, ("w", w))
    _n, c, h, wd = x.shape
    f, wc, kh, kw = w.shape
    if c == 0 or h == 0 or wd == 0:
        raise ValueError(f"x must have non-empty C, H and W, got shape {x.shape}")
    if f == 0 or kh == 0 or kw == 0:
        raise ValueError(f"w must have at least one filter and a kernel of at least 1x1, got shape {w.shape}")
    if wc != c:
        raise ValueError(f"w has {wc} input channels (shape {w.shape}) but x has {c} (shape {x.shape})")
    if kh > h or kw > wd:
        raise ValueError(f"kernel w of shape {w.shape} is larger than the input x of shape {x.shape}")


def check_conv2d_forward(x, w, b) -> None:
    """Validate conv2d_forward(x, w, b)."""
    _check_conv_operands(x, w)
    _check_array("b", b, 1, "(F,)")
    _check_same_dtype("x", x, ("b", b))
    if b.shape[0] != w.shape[0]:
        raise ValueError(f"b has shape {b.shape} but w has {w.shape[0]} filters (shape {w.shape})")


def conv2d_output_shape(x_shape, w_shape) -> tuple:
    """(N, F, H - KH + 1, W - KW + 1): shape of the valid, stride-1 convolution."""
    return (x_shape[0], w_shape[0], x_shape[2] - w_shape[2] + 1, x_shape[3] - w_shape[3] + 1)


def check_conv2d_backward(dy, x, w) -> None:
    """Validate conv2d_backward(dy, x, w)."""
    _check_conv_operands(x, w)
    _check_array("dy", dy, 4, "(N, F, OH, OW)")
    _check_same_dtype("x", x, ("dy", dy))
    expected = conv2d_output_shape(x.shape, w.shape)
    if dy.shape != expected:
        raise ValueError(
            f"dy has shape {dy.shape} but conv2d_forward(x {x.shape}, w {w.shape}) gives {expected}"
        )


def check_pool_size(size) -> int:
    """The pool size as an int >= 1 (bools and non-integers are rejected)."""
    if isinstance(size, bool):
        raise ValueError(f"size must be a positive integer, got {size!r}")
    try:
        size = operator.index(size)
    except TypeError:
        raise ValueError(f"size must be a positive integer, got {size!r}") from None
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    return size


def check_maxpool2d_forward(x, size) -> int:
    """Validate maxpool2d_forward(x, size); returns size as an int."""
    size = check_pool_size(size)
    _check_array("x", x, 4, "(N, C, H, W)")
    if size > x.shape[2] or size > x.shape[3]:
        raise ValueError(f"size {size} is larger than the spatial size of x (shape {x.shape})")
    return size


def maxpool2d_output_shape(x_shape, size: int) -> tuple:
    """(N, C, H // size, W // size): partial windows at the bottom/right are dropped."""
    return (x_shape[0], x_shape[1], x_shape[2] // size, x_shape[3] // size)


def check_maxpool2d_backward(dy, x, size) -> int:
    """Validate maxpool2d_backward(dy, x, size); returns size as an int."""
    size = check_maxpool2d_forward(x, size)
    _check_array("dy", dy, 4, "(N, C, OH, OW)")
    _check_same_dtype("x", x, ("dy", dy))
    expected = maxpool2d_output_shape(x.shape, size)
    if dy.shape != expected:
        raise ValueError(
            f"dy has shape {dy.shape} but maxpool2d_forward(x {x.shape}, size={size}) gives {expected}"
        )
    return size


def check_out(name: str, out, shape: tuple, like: np.ndarray, inputs=()) -> np.ndarray:
    """Validate a caller-provided output buffer: an ndarray of exactly `shape` and like's dtype,
    C-contiguous, aligned and writeable, sharing no memory with any of `inputs` (the kernels read
    their inputs while they write the output).  Returns out."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape {tuple(shape)}, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape} but the result has shape {tuple(shape)}")
    if out.dtype != like.dtype:
        raise ValueError(f"{name} has dtype {out.dtype} but the inputs have dtype {like.dtype}")
    if not (out.flags.c_contiguous and out.flags.aligned):
        raise ValueError(f"{name} must be C-contiguous and aligned")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    for other_name, other in inputs:
        if isinstance(other, np.ndarray) and np.may_share_memory(out, other):
            raise ValueError(f"{name} overlaps {other_name}: an output buffer must not share memory "
                             "with the arguments")
    return out


def check_out_tuple(out, count: int) -> tuple:
    """out as a tuple of `count` buffers (the backward pass of a convolution writes three)."""
    if not isinstance(out, (tuple, list)) or len(out) != count:
        raise ValueError(f"out must be a tuple of {count} arrays, got {type(out).__name__}"
                         + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    return tuple(out)


def check_backward_out(out, dy, x, w, input_grad: bool = True) -> tuple:
    """conv2d_backward's validated (dx, dw, db) buffers: right shapes, and no overlap with an
    argument or each other; with input_grad=False no dx is computed, and out[0] must be None."""
    out = check_out_tuple(out, 3)
    if not input_grad and out[0] is not None:
        raise ValueError("out[0] (dx) must be None with input_grad=False: no dx is computed")
    args = (("dy", dy), ("x", x), ("w", w))
    shapes = (x.shape, w.shape, (w.shape[0],))
    names = ("out[0] (dx)", "out[1] (dw)", "out[2] (db)")
    for i, (name, buf, shape) in enumerate(zip(names, out, shapes)):
        if i > 0 or input_grad:
            check_out(name, buf, shape, x, args + tuple(zip(names[:i], out[:i])))
    return out
