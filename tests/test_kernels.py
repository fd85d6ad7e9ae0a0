"""The conv/pool kernels: Cython against the NumPy reference (hypothesis over shapes and values),
ties, torch, non-contiguous inputs, finite differences, argument errors, threads, the SIMD copies
and the stale-build check."""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aigen.kernels import KernelBuildError, get_backend

REF = get_backend("numpy")
try:
    CY = get_backend("cython")
    CY_MISSING = None
except KernelBuildError as exc:  # reported as a skip; test_scratch_cnn.py does the same
    CY, CY_MISSING = None, f"the Cython kernels are not built: {exc}"

needs_cython = pytest.mark.skipif(CY is None, reason=str(CY_MISSING))
BACKENDS = ["numpy", pytest.param("cython", marks=needs_cython)]
DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_close(got, want, scale, what=""):
    """got == want (same dtype and shape) to the dtype's tolerance: |got - want| <= tol * scale, tol
    1e-5 for float32 and 1e-12 for float64, where scale is the sum of the magnitudes of the terms
    behind each value (the same computation on absolute values), so cancellation cannot fool it."""
    assert got.dtype == want.dtype, what
    assert got.shape == want.shape, what
    floor = 100 * np.finfo(want.dtype).smallest_subnormal  # rounding among subnormals
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - want), TOL[want.dtype] * scale + floor,
                                 err_msg=what)


def check_forward(k, x, w, b, what=""):
    """k.conv2d_forward(x, w, b) against the reference, within the dtype's tolerance."""
    got = k.conv2d_forward(x, w, b)
    assert_close(got, REF.conv2d_forward(x, w, b), REF.conv2d_forward(abs(x), abs(w), abs(b)), what)
    return got


def check_backward(k, dy, x, w, what=""):
    """k.conv2d_backward(dy, x, w) against the reference, within the dtype's tolerance."""
    got = k.conv2d_backward(dy, x, w)
    scales = REF.conv2d_backward(abs(dy), abs(x), abs(w))
    for name, g, want, scale in zip(("dx", "dw", "db"), got, REF.conv2d_backward(dy, x, w), scales):
        assert_close(g, want, scale, f"{what} {name}")
        assert g.flags.c_contiguous, name
    return got


def rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------------------
# Hypothesis: shapes and values


def values(dtype, shape):
    """Arrays whose values hypothesis picks: floats in [-8, 8] representable in float32, often with
    long runs of one value (hypothesis fills arrays), so ties and zeros come up by themselves."""
    return hnp.arrays(dtype, shape, elements=st.floats(-8, 8, width=32))


@st.composite
def conv_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(kh, kh + 9)), draw(st.integers(kw, kw + 9))
    x = draw(values(dtype, (n, c, h, w)))
    wt = draw(values(dtype, (f, c, kh, kw)))
    b = draw(values(dtype, (f,)))
    dy = draw(values(dtype, (n, f, h - kh + 1, w - kw + 1)))
    return x, wt, b, dy


@st.composite
def pool_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    size = draw(st.integers(1, 5))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(size, size * 4 + 3)), draw(st.integers(size, size * 4 + 3))
    x = draw(values(dtype, (n, c, h, w)))
    dy = draw(values(dtype, (n, c, h // size, w // size)))
    return x, dy, size


@needs_cython
@HYPOTHESIS
@given(conv_cases())
def test_cython_conv_forward_matches_the_reference(case):
    x, w, b, _ = case
    y = check_forward(CY, x, w, b)
    assert y.shape == (x.shape[0], w.shape[0], x.shape[2] - w.shape[2] + 1, x.shape[3] - w.shape[3] + 1)
    assert y.flags.c_contiguous


@needs_cython
@HYPOTHESIS
@given(conv_cases())
def test_cython_conv_backward_matches_the_reference(case):
    x, w, _, dy = case
    dx, dw, db = check_backward(CY, dy, x, w)
    assert (dx.shape, dw.shape, db.shape) == (x.shape, w.shape, w.shape[:1])


@needs_cython
@HYPOTHESIS
@given(pool_cases())
def test_cython_pooling_matches_the_reference_exactly(case):
    x, dy, size = case
    y = CY.maxpool2d_forward(x, size)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:2], x.shape[2] // size, x.shape[3] // size)
    np.testing.assert_array_equal(y, REF.maxpool2d_forward(x, size))
    dx = CY.maxpool2d_backward(dy, x, size)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    # Pooling selects and routes values: no arithmetic, so the backends agree bit for bit.
    np.testing.assert_array_equal(dx, REF.maxpool2d_backward(dy, x, size))


@needs_cython
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,filters", [(64, 8), (64, 16), (1, 8), (1, 16), (5, 3)])
def test_network_shapes_match_the_reference(batch, filters, dtype):
    """The scratch CNN's shapes (3x3, 2x2 pool: the kernels' fast paths; threads for the batch)."""
    rng = np.random.default_rng(batch * 100 + filters)
    x = rng.random((batch, 1, 32, 32)).astype(dtype)
    w, b = rand(rng, (filters, 1, 3, 3), dtype), rand(rng, (filters,), dtype)
    y = check_forward(CY, x, w, b)
    a = np.maximum(y, 0)
    np.testing.assert_array_equal(CY.maxpool2d_forward(a, 2), REF.maxpool2d_forward(a, 2))
    dp = rand(rng, (batch, filters, 15, 15), dtype)
    np.testing.assert_array_equal(CY.maxpool2d_backward(dp, a, 2), REF.maxpool2d_backward(dp, a, 2))
    check_backward(CY, rand(rng, y.shape, dtype), x, w)


@needs_cython
def test_every_simd_copy_of_the_inner_loops_matches_the_reference():
    """The inner loops exist as baseline / AVX2 / AVX-512 copies; each one this CPU can run must give
    the reference's results (3x3 fast paths, other kernels, pools 2 and 3, odd sizes, both dtypes)."""
    ck = CY._ck
    info = ck.simd_info()
    available = info["available"]
    assert available[0] == "baseline" and info["active"] == available[-1]  # the best one by default
    rng = np.random.default_rng(7)
    original = ck._use_simd("baseline")
    try:
        for level in available:
            ck._use_simd(level)
            assert ck.simd_info()["active"] == level
            for dtype in DTYPES:
                for (n, c, f, kh, kw, h, w) in [(3, 1, 8, 3, 3, 32, 32), (2, 2, 3, 2, 4, 11, 13),
                                                (1, 3, 5, 1, 1, 7, 9)]:
                    x, wt = rand(rng, (n, c, h, w), dtype), rand(rng, (f, c, kh, kw), dtype)
                    y = check_forward(CY, x, wt, rand(rng, (f,), dtype), f"{level} {dtype}")
                    check_backward(CY, rand(rng, y.shape, dtype), x, wt, f"{level} {dtype}")
                    a = np.maximum(y, 0)  # ReLU zeros: ties in the pooling windows
                    for size in (2, 3):
                        if min(a.shape[2:]) < size:
                            continue
                        dp = rand(rng, REF.maxpool2d_forward(a, size).shape, dtype)
                        np.testing.assert_array_equal(CY.maxpool2d_forward(a, size),
                                                      REF.maxpool2d_forward(a, size))
                        np.testing.assert_array_equal(CY.maxpool2d_backward(dp, a, size),
                                                      REF.maxpool2d_backward(dp, a, size))
    finally:
        ck._use_simd(original)
    assert ck.simd_info()["active"] == original
    with pytest.raises(ValueError, match="unknown SIMD level"):
        ck._use_simd("sse9")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    k = get_backend(backend)
    x, w, b = np.zeros((0, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.ones(3)
    y = k.conv2d_forward(x, w, b)
    dx, dw, db = k.conv2d_backward(y, x, w)
    assert y.shape == (0, 3, 3, 3) and dx.shape == x.shape
    np.testing.assert_array_equal(dw, np.zeros_like(w))
    np.testing.assert_array_equal(db, np.zeros_like(b))
    assert k.maxpool2d_forward(x, 2).shape == (0, 2, 2, 2)
    assert k.maxpool2d_backward(np.zeros((0, 2, 2, 2)), x, 2).shape == x.shape


# ------------------------------------------------------------------------------------------------
# Ties in max pooling: the gradient goes to the first maximum of the window, row-major


def first_corner(dy, x_shape, size):
    """The expected dx when every window is all ties: dy at each window's top-left corner."""
    dx = np.zeros(x_shape, dtype=dy.dtype)
    oh, ow = dy.shape[2:]
    dx[:, :, : oh * size : size, : ow * size : size] = dy
    return dx


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,h,w", [(2, 6, 8), (2, 7, 9), (3, 9, 10), (1, 3, 4), (4, 4, 7)])
def test_all_equal_windows_route_to_their_top_left(backend, dtype, size, h, w):
    k = get_backend(backend)
    rng = np.random.default_rng(size)
    for fill in (0.0, -2.5, 7.0):
        x = np.full((2, 3, h, w), fill, dtype=dtype)
        dy = rand(rng, (2, 3, h // size, w // size), dtype)
        np.testing.assert_array_equal(k.maxpool2d_forward(x, size), np.full(dy.shape, fill, dtype))
        np.testing.assert_array_equal(k.maxpool2d_backward(dy, x, size), first_corner(dy, x.shape, size))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_after_the_first_element_goes_to_the_first_max_in_row_major_order(backend):
    k = get_backend(backend)
    # windows: [[1, 3], [3, 2]] -> (0, 1);  [[0, 0], [5, 5]] -> (1, 0);  [[4, 1], [4, 4]] -> (0, 0)
    x = np.array([[[[1, 3, 0, 0, 4, 1],
                    [3, 2, 5, 5, 4, 4]]]], dtype=np.float32)
    dy = np.array([[[[10, 20, 30]]]], dtype=np.float32)
    want = np.array([[[[0, 10, 0, 0, 30, 0],
                       [0, 0, 20, 0, 0, 0]]]], dtype=np.float32)
    np.testing.assert_array_equal(k.maxpool2d_backward(dy, x, 2), want)
    np.testing.assert_array_equal(k.maxpool2d_forward(x, 2), [[[[3, 5, 4]]]])


def relu_input(rng, shape, dtype):
    """ReLU output of a real conv layer: many windows entirely zero."""
    return np.maximum(rand(rng, shape, dtype) - 0.8, 0).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tied_pooling_gradients_match_torch(backend, dtype):
    torch = pytest.importorskip("torch")
    k = get_backend(backend)
    rng = np.random.default_rng(3)
    cases = [
        (relu_input(rng, (3, 4, 30, 30), dtype), 2),   # zeros after ReLU
        (relu_input(rng, (2, 3, 11, 13), dtype), 3),   # odd sizes, partial windows dropped
        (np.round(rand(rng, (2, 2, 9, 8), dtype)), 2),  # small integers: ties everywhere
        (np.ones((1, 2, 6, 6), dtype), 2),              # all equal
    ]
    for x, size in cases:
        assert np.any(x == 0) or np.all(x == 1)
        dy = rand(rng, (*x.shape[:2], x.shape[2] // size, x.shape[3] // size), dtype)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = torch.nn.functional.max_pool2d(xt, size)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_array_equal(k.maxpool2d_forward(x, size), yt.detach().numpy())
        np.testing.assert_array_equal(k.maxpool2d_backward(dy, x, size), xt.grad.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("xs,ws", [((2, 3, 9, 11), (4, 3, 3, 3)), ((1, 1, 32, 32), (8, 1, 3, 3)),
                                   ((3, 2, 7, 5), (5, 2, 1, 1)), ((2, 2, 6, 8), (3, 2, 6, 2)),
                                   ((1, 4, 5, 5), (2, 4, 2, 5))])
def test_conv_forward_matches_torch_in_float64(backend, xs, ws):
    torch = pytest.importorskip("torch")
    k = get_backend(backend)
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = rand(rng, xs), rand(rng, ws), rand(rng, ws[:1])
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy()
    got = k.conv2d_forward(x, w, b)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Memory layout: any strides, inputs left untouched


def views(rng, dtype):
    """Non-contiguous operands: transposed, sliced, reversed, strided, Fortran-ordered."""
    x = rand(rng, (3, 9, 11, 2), dtype).transpose(0, 3, 2, 1)       # (3, 2, 11, 9), transposed
    w = rand(rng, (6, 2, 3, 6), dtype)[::-2, :, :, ::2]              # (3, 2, 3, 3), reversed, sliced
    b = rand(rng, (9,), dtype)[1::3]                                 # (3,), strided
    dy = np.asfortranarray(rand(rng, (3, 3, 9, 7), dtype))          # Fortran order
    px = rand(rng, (4, 3, 13, 10), dtype)[:, ::-1, 1:12, :]          # (4, 3, 11, 10), cropped
    pdy = rand(rng, (5, 4, 3, 5), dtype).transpose(1, 2, 0, 3)       # (4, 3, 5, 5), transposed
    return x, w, b, dy, px, pdy


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_give_the_results_of_contiguous_copies(backend, dtype):
    k = get_backend(backend)
    rng = np.random.default_rng(11)
    x, w, b, dy, px, pdy = views(rng, dtype)
    assert not any(a.flags.c_contiguous for a in (x, w, b, dy, px, pdy))
    originals = [a.copy() for a in (x, w, b, dy, px, pdy)]
    c = np.ascontiguousarray

    def same(got, want):
        # The compiled backend copies views first, so it must agree bit for bit; the reference may
        # sum in another order for other strides.
        if backend == "cython":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=TOL[want.dtype], atol=TOL[want.dtype] * 10)
        assert got.flags.c_contiguous

    same(k.conv2d_forward(x, w, b), k.conv2d_forward(c(x), c(w), c(b)))
    for got, want in zip(k.conv2d_backward(dy, x, w), k.conv2d_backward(c(dy), c(x), c(w))):
        same(got, want)
    for size in (2, 3):
        same(k.maxpool2d_forward(px, size), k.maxpool2d_forward(c(px), size))
    same(k.maxpool2d_backward(pdy, px, 2), k.maxpool2d_backward(c(pdy), c(px), 2))
    for before, after in zip(originals, (x, w, b, dy, px, pdy)):
        np.testing.assert_array_equal(before, after)  # inputs are never written


@needs_cython
def test_unaligned_and_read_only_inputs_are_accepted():
    rng = np.random.default_rng(12)
    x = rand(rng, (2, 2, 8, 9), np.float32)
    raw = bytearray(x.nbytes + 1)
    unaligned = np.frombuffer(raw, dtype=np.float32, offset=1, count=x.size).reshape(x.shape)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    w, b = rand(rng, (3, 2, 3, 3), np.float32), rand(rng, (3,), np.float32)
    w.flags.writeable = False
    np.testing.assert_array_equal(CY.conv2d_forward(unaligned, w, b), CY.conv2d_forward(x, w, b))
    np.testing.assert_array_equal(CY.maxpool2d_forward(unaligned, 2), CY.maxpool2d_forward(x, 2))


# ------------------------------------------------------------------------------------------------
# Each backend's backward against central finite differences of its own forward (float64)


def central_differences(f, arrays, index, eps):
    """d f(arrays) / d arrays[index], every element, by central differences."""
    a = arrays[index]
    grad = np.zeros_like(a)
    for pos in np.ndindex(a.shape):
        saved = a[pos]
        a[pos] = saved + eps
        up = f(*arrays)
        a[pos] = saved - eps
        down = f(*arrays)
        a[pos] = saved
        grad[pos] = (up - down) / (2 * eps)
    return grad


def nan_buffers(*like):
    """out= buffers shaped like the given arrays, full of NaN: an element a kernel forgets to write shows."""
    return tuple(np.full_like(a, np.nan, order="C") for a in like)


@pytest.mark.parametrize("use_out", [False, True], ids=["fresh", "out"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("xs,ws", [((2, 2, 6, 7), (3, 2, 3, 2)), ((1, 1, 8, 8), (2, 1, 3, 3)),
                                   ((2, 3, 4, 5), (2, 3, 1, 1))])
def test_conv_backward_matches_finite_differences(backend, xs, ws, use_out):
    k = get_backend(backend)
    rng = np.random.default_rng(len(xs) + sum(ws))
    x, w, b = rand(rng, xs), rand(rng, ws), rand(rng, ws[:1])
    g = rand(rng, (xs[0], ws[0], xs[2] - ws[2] + 1, xs[3] - ws[3] + 1))

    def loss(x, w, b):  # a random linear functional of the output: L = sum(y * g)
        return float(np.sum(k.conv2d_forward(x, w, b) * g))

    out = nan_buffers(x, w, b) if use_out else None
    dx, dw, db = k.conv2d_backward(g, x, w, out=out)
    if use_out:
        assert all(got is buf for got, buf in zip((dx, dw, db), out))
    for name, got, index in (("dx", dx, 0), ("dw", dw, 1), ("db", db, 2)):
        want = central_differences(loss, [x, w, b], index, eps=1e-5)
        assert np.max(np.abs(want)) > 0.1, name
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("use_out", [False, True], ids=["fresh", "out"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,size", [((2, 2, 6, 8), 2), ((1, 3, 7, 9), 2), ((2, 1, 10, 11), 3)])
def test_pool_backward_matches_finite_differences(backend, shape, size, use_out):
    k = get_backend(backend)
    rng = np.random.default_rng(size + shape[3])
    # Distinct values at least 1e-3 apart: no ties, and a 1e-6 step never changes a window's max.
    x = (rng.permutation(int(np.prod(shape))) * 1e-3).reshape(shape).astype(np.float64)
    g = rand(rng, (*shape[:2], shape[2] // size, shape[3] // size))

    def loss(x):
        return float(np.sum(k.maxpool2d_forward(x, size) * g))

    out = nan_buffers(x)[0] if use_out else None
    got = k.maxpool2d_backward(g, x, size, out=out)
    assert got is out or not use_out
    want = central_differences(loss, [x], 0, eps=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)
    assert np.count_nonzero(got) == g.size  # one entry per window; the dropped rows/columns get 0


# ------------------------------------------------------------------------------------------------
# Argument errors: ValueError naming the argument (and the shapes), the same from both backends


def f32(*shape):
    return np.zeros(shape, dtype=np.float32)


X, W, B = f32(2, 3, 8, 8), f32(4, 3, 3, 3), f32(4)
DY = f32(2, 4, 6, 6)
CONV_FORWARD_ERRORS = [
    ((f32(3, 8, 8), W, B), r"x must be 4-D .*\(3, 8, 8\)"),
    ((X, f32(4, 3, 3), B), r"w must be 4-D .*\(4, 3, 3\)"),
    ((X, W, f32(4, 1)), r"b must be 1-D .*\(4, 1\)"),
    ((X, f32(4, 2, 3, 3), B), r"w has 2 input channels \(shape \(4, 2, 3, 3\)\) but x has 3 \(shape \(2, 3, 8, 8\)\)"),
    ((f32(2, 3, 2, 8), W, B), r"kernel w of shape \(4, 3, 3, 3\) is larger than the input x of shape \(2, 3, 2, 8\)"),
    ((X, f32(4, 3, 3, 9), B), r"kernel w of shape .* is larger than the input x"),
    ((X.astype(np.float16), W.astype(np.float16), B.astype(np.float16)), r"x must be float32 or float64.*float16"),
    ((X, W.astype(np.int64), B), r"w must be float32 or float64.*int64"),
    ((X, W.astype(np.float64), B), r"w has dtype float64 but x has dtype float32"),
    ((X, W, B.astype(np.float64)), r"b has dtype float64 but x has dtype float32"),
    ((X, W, f32(3)), r"b has shape \(3,\) but w has 4 filters"),
    ((X.astype(">f4"), W, B), r"x must be float32 or float64"),
    ((X.tolist(), W, B), r"x must be a numpy array"),
    ((f32(2, 0, 8, 8), f32(4, 0, 3, 3), B), r"x must have non-empty C, H and W"),
]
CONV_BACKWARD_ERRORS = [
    ((f32(2, 4, 5, 6), X, W), r"dy has shape \(2, 4, 5, 6\) but conv2d_forward\(x \(2, 3, 8, 8\), w \(4, 3, 3, 3\)\) gives \(2, 4, 6, 6\)"),
    ((f32(4, 6, 6), X, W), r"dy must be 4-D"),
    ((DY.astype(np.float64), X, W), r"dy has dtype float64 but x has dtype float32"),
    ((DY, X, f32(4, 2, 3, 3)), r"w has 2 input channels"),
    ((DY, X.astype(np.int32), W), r"x must be float32 or float64.*int32"),
]
POOL_FORWARD_ERRORS = [
    ((X, 0), r"size must be a positive integer, got 0"),
    ((X, -2), r"size must be a positive integer"),
    ((X, 2.5), r"size must be a positive integer, got 2.5"),
    ((X, True), r"size must be a positive integer, got True"),
    ((X, "2"), r"size must be a positive integer"),
    ((X, None), r"size must be a positive integer"),
    ((X, 9), r"size 9 is larger than the spatial size of x \(shape \(2, 3, 8, 8\)\)"),
    ((f32(2, 3, 8, 4), 5), r"size 5 is larger than the spatial size of x"),
    ((X, 10**30), r"size 10+ is larger than the spatial size of x"),
    ((f32(3, 8, 8), 2), r"x must be 4-D .*\(3, 8, 8\)"),
    ((X.astype(np.float16), 2), r"x must be float32 or float64.*float16"),
]
POOL_BACKWARD_ERRORS = [
    ((f32(2, 3, 4, 3), X, 2), r"dy has shape \(2, 3, 4, 3\) but maxpool2d_forward\(x \(2, 3, 8, 8\), size=2\) gives \(2, 3, 4, 4\)"),
    ((f32(2, 3, 4, 4), X, 3), r"dy has shape .* size=3\) gives \(2, 3, 2, 2\)"),
    ((f32(2, 3, 4, 4).astype(np.float64), X, 2), r"dy has dtype float64 but x has dtype float32"),
    ((f32(3, 4, 4), X, 2), r"dy must be 4-D"),
    ((f32(2, 3, 4, 4), X, 0), r"size must be a positive integer"),
]
Y = f32(2, 4, 6, 6)
_SHARED = f32(2 * 3 * 8 * 8 + 8)  # one block that two buffers below overlap in
_READ_ONLY = f32(2, 4, 6, 6)
_READ_ONLY.flags.writeable = False
OUT_ERRORS = [  # caller-provided output buffers
    ("conv2d_forward", (X, W, B, f32(2, 4, 6, 5)), r"out has shape \(2, 4, 6, 5\) but the result has shape \(2, 4, 6, 6\)"),
    ("conv2d_forward", (X, W, B, Y.astype(np.float64)), r"out has dtype float64 but the inputs have dtype float32"),
    ("conv2d_forward", (X, W, B, f32(2, 4, 6, 12)[..., ::2]), r"out must be C-contiguous and aligned"),
    ("conv2d_forward", (X, W, B, _READ_ONLY), r"out is read-only"),
    ("conv2d_forward", (X, W, B, Y.tolist()), r"out must be a numpy array of shape \(2, 4, 6, 6\), got list"),
    ("conv2d_forward", (_SHARED[:X.size].reshape(X.shape), W, B, _SHARED[-Y.size:].reshape(Y.shape)),
     r"out overlaps x: an output buffer must not share memory with the arguments"),
    ("conv2d_forward", (X, W, B, Y.astype(">f4")), r"out has dtype >f4 but the inputs have dtype float32"),
    ("conv2d_backward", (DY, X, W, (f32(*X.shape), f32(*W.shape))), r"out must be a tuple of 3 arrays, got tuple of length 2"),
    ("conv2d_backward", (DY, X, W, f32(*X.shape)), r"out must be a tuple of 3 arrays, got ndarray"),
    ("conv2d_backward", (DY, X, W, (f32(*X.shape), f32(4, 3, 3, 2), f32(4))), r"out\[1\] \(dw\) has shape \(4, 3, 3, 2\) but the result has shape \(4, 3, 3, 3\)"),
    ("conv2d_backward", (DY, X, W, (f32(*X.shape), f32(*W.shape), f32(4).astype(np.float64))), r"out\[2\] \(db\) has dtype float64"),
    ("conv2d_backward", (DY, X, W, (X, f32(*W.shape), f32(4))), r"out\[0\] \(dx\) overlaps x"),
    ("conv2d_backward", (DY, X, W, (f32(*X.shape), f32(*W.shape), W.reshape(-1)[:4])), r"out\[2\] \(db\) overlaps w"),
    ("conv2d_backward", (DY, X, W, (_SHARED[:X.size].reshape(X.shape), f32(*W.shape), _SHARED[X.size - 2:X.size + 2])),
     r"out\[2\] \(db\) overlaps out\[0\] \(dx\)"),
    ("maxpool2d_forward", (X, 2, f32(2, 3, 4, 5)), r"out has shape \(2, 3, 4, 5\) but the result has shape \(2, 3, 4, 4\)"),
    ("maxpool2d_forward", (X, 2, X[:, :, :4, :4]), r"out must be C-contiguous"),
    ("maxpool2d_backward", (f32(2, 3, 4, 4), X, 2, f32(2, 3, 8, 8).astype(np.float64)), r"out has dtype float64"),
    ("maxpool2d_backward", (f32(2, 3, 4, 4), X, 2, X), r"out overlaps x"),
]
ERRORS = ([("conv2d_forward", a, m) for a, m in CONV_FORWARD_ERRORS]
          + [("conv2d_backward", a, m) for a, m in CONV_BACKWARD_ERRORS]
          + [("maxpool2d_forward", a, m) for a, m in POOL_FORWARD_ERRORS]
          + [("maxpool2d_backward", a, m) for a, m in POOL_BACKWARD_ERRORS]
          + OUT_ERRORS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("function,args,message", ERRORS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(ERRORS)])
def test_bad_arguments_raise_value_error_naming_the_argument(backend, function, args, message):
    with pytest.raises(ValueError, match=message):
        getattr(get_backend(backend), function)(*args)


@needs_cython
@pytest.mark.parametrize("function,args,message", ERRORS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(ERRORS)])
def test_both_backends_give_the_same_message(function, args, message):
    messages = []
    for k in (REF, CY):
        with pytest.raises(ValueError) as info:
            getattr(k, function)(*args)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_size_accepts_integer_types(backend):
    k = get_backend(backend)
    x = np.arange(2 * 16, dtype=np.float64).reshape(1, 2, 4, 4)
    want = k.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(k.maxpool2d_forward(x, np.int64(2)), want)
    np.testing.assert_array_equal(k.maxpool2d_forward(x), want)  # size defaults to 2
    np.testing.assert_array_equal(want, [[[[5, 7], [13, 15]], [[21, 23], [29, 31]]]])


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown kernel backend 'fortran'"):
        get_backend("fortran")


# ------------------------------------------------------------------------------------------------
# Threads: OMP_NUM_THREADS sets them, and the results do not depend on them

THREAD_CODE = textwrap.dedent("""
    import hashlib

    import numpy as np

    from aigen.kernels import cython_backend


    def thread_run():
        \"\"\"sha256 of every kernel's output on a batch big enough to use threads, and openmp_info().\"\"\"
        rng = np.random.default_rng(7)
        digest = hashlib.sha256()
        k = cython_backend
        for dtype in (np.float32, np.float64):
            # Big enough for threads in every kernel: 3.7M multiply-adds, 185K values to pool.
            x = rng.standard_normal((32, 2, 40, 40)).astype(dtype)
            w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
            b = rng.standard_normal(4).astype(dtype)
            y = k.conv2d_forward(x, w, b)
            p = k.maxpool2d_forward(y, 2)
            for a in (y, *k.conv2d_backward(np.cos(y), x, w), p, k.maxpool2d_backward(np.sin(p), y, 2),
                      *k.conv2d_backward(np.cos(y), x, w, input_grad=False)[1:]):
                digest.update(a.tobytes())
        return {"digest": digest.hexdigest(), **k.openmp_info()}
""")


@needs_cython
def test_results_do_not_depend_on_the_thread_count():
    import json

    runs = {}
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        code = THREAD_CODE + "\nimport json\nprint(json.dumps(thread_run()))\n"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        runs[threads] = json.loads(done.stdout)
    if runs["1"]["openmp"]:  # the thread count follows OMP_NUM_THREADS
        assert (runs["1"]["max_threads"], runs["2"]["max_threads"]) == (1, 2)
    assert runs["1"]["digest"] == runs["2"]["digest"]
    namespace = {}
    exec(THREAD_CODE, namespace)  # ... and this process, whatever its thread count, agrees
    assert namespace["thread_run"]()["digest"] == runs["1"]["digest"]


@needs_cython
def test_kernels_release_the_gil():
    """While one thread is inside a long kernel call, another thread keeps running Python code."""
    import threading
    import time

    rng = np.random.default_rng(1)
    x, w, b = rand(rng, (4, 8, 96, 96)), rand(rng, (8, 8, 9, 9)), rand(rng, (8,))
    calls, ticks = [], []

    def work():
        for _ in range(3):
            t0 = time.perf_counter()
            CY.conv2d_forward(x, w, b)
            calls.append((t0, time.perf_counter()))

    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    ticks = np.array(ticks)
    # [t0, t1] also holds the wait for the GIL after the call (up to the 5 ms switch interval), so
    # look at its 10%..50% stretch: inside the call proper.  A call holding the GIL leaves no tick
    # there (checked with sorted() of a long list of floats, which does hold it).
    inside = [np.count_nonzero((ticks > t0 + 0.1 * (t1 - t0)) & (ticks < t0 + 0.5 * (t1 - t0)))
              for t0, t1 in calls]
    assert max(inside) > 0, (calls, len(ticks))


# ------------------------------------------------------------------------------------------------
# The build check: a missing or stale extension is refused with a rebuild hint


@needs_cython
def test_source_hash_follows_the_sources(tmp_path):
    from aigen.kernels import cython_backend

    sources = [p for pattern in ("*.pyx", "*.pxd", "*.h") for p in sorted(cython_backend.CSRC.glob(pattern))]
    assert sources, "no Cython sources found beside the package"
    assert any(p.suffix == ".h" for p in sources), "the C inner loops live in csrc/*.h"
    for path in sources:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "notes.txt").write_text("not a source")
    # The module imported, so it was built from these very sources.
    assert cython_backend.source_sha256(tmp_path) == cython_backend._ck.SOURCE_SHA256
    assert cython_backend.source_sha256() == cython_backend._ck.SOURCE_SHA256
    pyx = tmp_path / sources[0].name
    pyx.write_bytes(pyx.read_bytes() + b"\n# an edit\n")
    assert cython_backend.source_sha256(tmp_path) != cython_backend._ck.SOURCE_SHA256
    digest = hashlib.sha256()
    for path in [p for pattern in ("*.pyx", "*.pxd", "*.h") for p in sorted(tmp_path.glob(pattern))]:
        digest.update(path.name.encode() + path.read_bytes())
    assert cython_backend.source_sha256(tmp_path) == digest.hexdigest()
    # An edit to a C header alone also makes the build stale.
    pyx.write_bytes(next(p for p in sources if p.suffix == ".pyx").read_bytes())
    assert cython_backend.source_sha256(tmp_path) == cython_backend._ck.SOURCE_SHA256
    header = next(tmp_path.glob("*.h"))
    header.write_bytes(header.read_bytes() + b"\n/* an edit */\n")
    assert cython_backend.source_sha256(tmp_path) != cython_backend._ck.SOURCE_SHA256


@needs_cython
def test_a_stale_build_is_refused_with_a_rebuild_hint(tmp_path, monkeypatch):
    from aigen.kernels import cython_backend

    for path in [*cython_backend.CSRC.glob("*.pyx"), *cython_backend.CSRC.glob("*.pxd"),
                 *cython_backend.CSRC.glob("*.h")]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(cython_backend, "CSRC", tmp_path)
    assert cython_backend.load_extension() is cython_backend._ck  # the copy matches the build
    edited = next(tmp_path.glob("*.h"))
    edited.write_text(edited.read_text() + "\n/* edited after the build */\n")
    with pytest.raises(KernelBuildError, match="stale") as info:
        cython_backend.load_extension()
    assert "make build" in str(info.value)
    assert isinstance(info.value, ImportError)


@needs_cython
def test_a_missing_build_is_refused_with_a_rebuild_hint(monkeypatch):
    from aigen.kernels import cython_backend

    monkeypatch.setattr(cython_backend, "EXTENSION", "aigen.kernels._no_such_extension")
    with pytest.raises(KernelBuildError, match="not built") as info:
        cython_backend.load_extension()
    assert "make build" in str(info.value)


@needs_cython
def test_stale_build_is_reported_at_import_in_a_fresh_process(tmp_path):
    """Importing the backend from a checkout whose csrc/ differs from the build fails with the hint
    (on a copy of the package and of csrc/, so the real build is untouched)."""
    import shutil

    import aigen
    from aigen.kernels import cython_backend

    shutil.copytree(os.path.dirname(aigen.__file__), tmp_path / "aigen",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(cython_backend.CSRC, tmp_path / "csrc", ignore=shutil.ignore_patterns("*.c", "*.html"))
    code = ("from aigen.kernels import KernelBuildError, get_backend\n"
            "try:\n    get_backend('cython')\nexcept KernelBuildError as exc:\n    print('REFUSED', exc)\n"
            "else:\n    print('LOADED')\n")

    def run():
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run().startswith("LOADED")  # the copy as built
    pyx = next((tmp_path / "csrc").glob("*.pyx"))
    pyx.write_text(pyx.read_text() + "\n# edited after the build\n")
    out = run()
    assert out.startswith("REFUSED") and "stale" in out and "make build" in out


# ------------------------------------------------------------------------------------------------
# Caller-provided outputs (out=): the same values as fresh outputs, every element written


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,size", [((3, 2, 9, 8), (4, 2, 3, 3), 2), ((64, 1, 32, 32), (8, 1, 3, 3), 2),
                                        ((2, 3, 10, 11), (2, 3, 2, 4), 3), ((1, 1, 5, 5), (1, 1, 1, 1), 1)])
def test_out_buffers_give_the_fresh_results_and_are_returned(backend, dtype, xs, ws, size):
    k = get_backend(backend)
    rng = np.random.default_rng(sum(xs))
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, ws[:1], dtype)
    y = k.conv2d_forward(x, w, b)
    (y_buf,) = nan_buffers(y)
    assert k.conv2d_forward(x, w, b, out=y_buf) is y_buf
    np.testing.assert_array_equal(y_buf, y)
    assert_close(y_buf, REF.conv2d_forward(x, w, b), REF.conv2d_forward(abs(x), abs(w), abs(b)))
    dy = rand(rng, y.shape, dtype)
    fresh = k.conv2d_backward(dy, x, w)
    bufs = nan_buffers(*fresh)
    got = k.conv2d_backward(dy, x, w, out=list(bufs))  # a list is accepted too
    assert isinstance(got, tuple) and all(g is buf for g, buf in zip(got, bufs))
    for g, f in zip(got, fresh):
        np.testing.assert_array_equal(g, f)
    p = k.maxpool2d_forward(y, size)
    (p_buf,) = nan_buffers(p)
    assert k.maxpool2d_forward(y, size, out=p_buf) is p_buf
    np.testing.assert_array_equal(p_buf, REF.maxpool2d_forward(y, size))
    (d_buf,) = nan_buffers(y)
    assert k.maxpool2d_backward(p, y, size, out=d_buf) is d_buf
    np.testing.assert_array_equal(d_buf, REF.maxpool2d_backward(p, y, size))
    # Reused buffers (as a training loop reuses them) are simply overwritten.
    k.conv2d_forward(x, -w, b, out=y_buf)
    np.testing.assert_array_equal(y_buf, k.conv2d_forward(x, -w, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws", [((64, 1, 32, 32), (16, 1, 3, 3)), ((3, 2, 9, 8), (4, 2, 3, 3)),
                                   ((1, 1, 5, 5), (1, 1, 1, 1)), ((0, 2, 5, 5), (3, 2, 3, 3))])
def test_without_input_grad_dw_and_db_are_the_same_bits_and_dx_is_none(backend, dtype, xs, ws):
    """An input layer's step (the scratch CNN's) skips dx; dw and db do not change by a bit."""
    k = get_backend(backend)
    rng = np.random.default_rng(sum(xs) + 7)
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    dy = rand(rng, (xs[0], ws[0], xs[2] - ws[2] + 1, xs[3] - ws[3] + 1), dtype)
    _, dw, db = k.conv2d_backward(dy, x, w)
    dx_none, dw_only, db_only = k.conv2d_backward(dy, x, w, input_grad=False)
    assert dx_none is None
    np.testing.assert_array_equal(dw_only, dw)
    np.testing.assert_array_equal(db_only, db)
    bufs = nan_buffers(dw, db)
    got = k.conv2d_backward(dy, x, w, out=(None, *bufs), input_grad=False)
    assert got[0] is None and got[1] is bufs[0] and got[2] is bufs[1]
    np.testing.assert_array_equal(bufs[0], dw)
    np.testing.assert_array_equal(bufs[1], db)
    with pytest.raises(ValueError, match=r"out\[0\] \(dx\) must be None with input_grad=False"):
        k.conv2d_backward(dy, x, w, out=(np.empty_like(x), *bufs), input_grad=False)
    with pytest.raises(ValueError, match=r"out\[0\] \(dx\) must be a numpy array"):
        k.conv2d_backward(dy, x, w, out=(None, *bufs))  # with input_grad, dx needs its buffer


@needs_cython
def test_the_cython_out_check_accepts_what_the_python_rules_accept():
    """Views that are valid buffers (a contiguous slab of a bigger block next to an input in the same
    block) pass; the extents test is np.may_share_memory's."""
    block = np.zeros(2 * 3 * 8 * 8 + 4 * 6 * 6 * 2, dtype=np.float32)
    x = block[:2 * 3 * 8 * 8].reshape(2, 3, 8, 8)
    out = block[2 * 3 * 8 * 8:2 * 3 * 8 * 8 + 2 * 4 * 6 * 6].reshape(2, 4, 6, 6)
    assert not np.may_share_memory(x, out)
    assert CY.conv2d_forward(x, W, B, out=out) is out
    strided_x = np.zeros((2, 3, 8, 16), np.float32)[..., ::2]  # a strided input, copied inside
    assert CY.conv2d_forward(strided_x, W, B, out=Y.copy()).shape == Y.shape
