# The compiled conv2d / maxpool2d kernels behind aigen.kernels.get_backend("cython").
#
# Inputs arrive already validated (aigen/kernels/_checks.py) by aigen/kernels/cython_backend.py;
# these entry points only make them C-contiguous, allocate the outputs and run the loops with the
# GIL released.  Every loop is ordered so that the innermost one walks a contiguous row.
#
# Threads: the batch loop (and, for dw/db, the filter loop) is an OpenMP prange when the extension
# was compiled with OpenMP; OMP_NUM_THREADS sets the thread count.  Small problems (e.g. one sample)
# run on the calling thread, because waking a thread team costs more than the work.  Each output
# element is always computed by one thread in one fixed order, so results do not depend on the
# thread count.

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int aigen_max_threads(void) { return omp_get_max_threads(); }
    #define AIGEN_OPENMP_COMPILED 1
    #else
    static int aigen_max_threads(void) { return 1; }
    #define AIGEN_OPENMP_COMPILED 0
    #endif
    #ifndef AIGEN_SOURCE_SHA256
    #define AIGEN_SOURCE_SHA256 ""
    #endif
    """
    int aigen_max_threads() nogil
    const char *AIGEN_SOURCE_SHA256
    int AIGEN_OPENMP_COMPILED

# sha256 of csrc/*.pyx and csrc/*.pxd when this module was built (see setup.py); compared with the
# checkout's sources at import so that a stale build is never used silently.
SOURCE_SHA256 = AIGEN_SOURCE_SHA256.decode("ascii")

# Below this many multiply-adds a call stays on one thread.
cdef Py_ssize_t PARALLEL_MIN_WORK = 1 << 16


def openmp_info():
    """{"openmp": whether OpenMP was compiled in, "max_threads": threads a parallel loop would use}."""
    return {"openmp": bool(AIGEN_OPENMP_COMPILED), "max_threads": int(aigen_max_threads())}


# --------------------------------------------------------------------------------------------------
# Building blocks on raw pointers.
#
# Planes are walked in "full-width" flat order: output position (oh, ow) of a valid correlation
# sits at q = oh * W + ow, so the input it reads through tap (i, j) is simply q + i * W + j.  One
# long contiguous loop over q = 0 .. L-1, L = (OH - 1) * W + OW, then replaces OH short row loops
# (rows of 30 vectorise badly); the W - OW columns it computes past each row end are discarded.

cdef inline void _correlate_acc(floating *out, const floating *src, const floating *k,
                                Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t W, Py_ssize_t L,
                                bint flip) noexcept nogil:
    """out[q] += sum_{i,j} k[i, j] * src[q + i*W + j] for q < L (k rotated by 180 degrees if flip)."""
    cdef Py_ssize_t q, i, j
    cdef floating kv, k0, k1, k2, k3, k4, k5, k6, k7, k8
    cdef const floating *r0
    cdef const floating *r1
    cdef const floating *r2
    if KH == 3 and KW == 3:
        # The network's kernel: all nine taps in one pass, so out is loaded and stored once.
        if flip:
            k0 = k[8]; k1 = k[7]; k2 = k[6]; k3 = k[5]; k4 = k[4]; k5 = k[3]; k6 = k[2]; k7 = k[1]; k8 = k[0]
        else:
            k0 = k[0]; k1 = k[1]; k2 = k[2]; k3 = k[3]; k4 = k[4]; k5 = k[5]; k6 = k[6]; k7 = k[7]; k8 = k[8]
        r0 = src
        r1 = src + W
        r2 = src + 2 * W
        for q in range(L):
            out[q] += (k0 * r0[q] + k1 * r0[q + 1] + k2 * r0[q + 2]
                       + k3 * r1[q] + k4 * r1[q + 1] + k5 * r1[q + 2]
                       + k6 * r2[q] + k7 * r2[q + 1] + k8 * r2[q + 2])
        return
    for i in range(KH):
        for j in range(KW):
            kv = k[(KH - 1 - i) * KW + (KW - 1 - j)] if flip else k[i * KW + j]
            r0 = src + i * W + j
            for q in range(L):
                out[q] += kv * r0[q]


cdef inline floating _dot(const floating *a, const floating *b, Py_ssize_t L) noexcept nogil:
    """sum_q a[q] * b[q], with 16 independent partial sums so the compiler can vectorise it
    without reassociating floating-point additions."""
    cdef floating acc[16]
    cdef floating total = 0
    cdef Py_ssize_t q = 0, lane
    for lane in range(16):
        acc[lane] = 0
    while q + 16 <= L:
        for lane in range(16):
            acc[lane] += a[q + lane] * b[q + lane]
        q += 16
    while q < L:
        total += a[q] * b[q]
        q += 1
    for lane in range(16):
        total += acc[lane]
    return total


cdef inline floating _sum(const floating *a, Py_ssize_t L) noexcept nogil:
    """sum_q a[q], vectorisable like _dot."""
    cdef floating acc[16]
    cdef floating total = 0
    cdef Py_ssize_t q = 0, lane
    for lane in range(16):
        acc[lane] = 0
    while q + 16 <= L:
        for lane in range(16):
            acc[lane] += a[q + lane]
        q += 16
    while q < L:
        total += a[q]
        q += 1
    for lane in range(16):
        total += acc[lane]
    return total


cdef inline void _spread_rows(floating *dst, const floating *src, Py_ssize_t rows, Py_ssize_t cols,
                              Py_ssize_t W) noexcept nogil:
    """Copy a compact (rows, cols) plane into rows of stride W (the columns past cols are untouched)."""
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * W, src + r * cols, cols * sizeof(floating))


cdef inline void _gather_rows(floating *dst, const floating *src, Py_ssize_t rows, Py_ssize_t cols,
                              Py_ssize_t W) noexcept nogil:
    """Copy the first cols of each stride-W row of src into a compact (rows, cols) plane."""
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * cols, src + r * W, cols * sizeof(floating))


# --------------------------------------------------------------------------------------------------
# Convolution, one sample (forward, dx) or one filter (dw, db) at a time.
#
# Scratch, one per thread: forward needs L values; backward needs dy[n, f] laid out full-width
# with zeros past each row and (KH - 1) * W + KW - 1 leading zeros, "the padded plane" Z, so that
# dx is again a correlation (with the rotated kernel) and dw a set of dot products.

cdef inline void _conv_fwd_sample(const floating *x, const floating *w, const floating *b,
                                  floating *y, floating *buf, Py_ssize_t C, Py_ssize_t H,
                                  Py_ssize_t W, Py_ssize_t F, Py_ssize_t KH,
                                  Py_ssize_t KW) noexcept nogil:
    cdef Py_ssize_t OH = H - KH + 1, OW = W - KW + 1, L = (OH - 1) * W + OW
    cdef Py_ssize_t f, c, q
    for f in range(F):
        for q in range(L):
            buf[q] = b[f]
        for c in range(C):
            _correlate_acc(buf, x + c * H * W, w + (f * C + c) * KH * KW, KH, KW, W, L, False)
        _gather_rows(y + f * OH * OW, buf, OH, OW, W)


cdef inline void _conv_bwd_dx_sample(const floating *dy, const floating *w, floating *dx,
                                     floating *z, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                     Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW) noexcept nogil:
    """dx[c] = sum_f dy[f] correlated with the rotated w[f, c] over Z; dx starts at zero."""
    cdef Py_ssize_t OH = H - KH + 1, OW = W - KW + 1, pad = (KH - 1) * W + KW - 1
    cdef Py_ssize_t f, c
    for f in range(F):
        _spread_rows(z + pad, dy + f * OH * OW, OH, OW, W)
        for c in range(C):
            _correlate_acc(dx + c * H * W, z, w + (f * C + c) * KH * KW, KH, KW, W, H * W, True)


cdef inline void _conv_bwd_dw_filter(const floating *dy, const floating *x, floating *dw,
                                     floating *db, floating *z, Py_ssize_t f, Py_ssize_t N,
                                     Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                                     Py_ssize_t KH, Py_ssize_t KW) noexcept nogil:
    """dw[f, c, i, j] = sum_n <dy[n, f], x[n, c] shifted by (i, j)> and db[f] = sum dy[:, f]."""
    cdef Py_ssize_t OH = H - KH + 1, OW = W - KW + 1, pad = (KH - 1) * W + KW - 1
    cdef Py_ssize_t L = (OH - 1) * W + OW
    cdef Py_ssize_t n, c, i, j
    cdef floating *dwf = dw + f * C * KH * KW
    cdef const floating *xc
    cdef floating bias_grad = 0
    for n in range(N):
        _spread_rows(z + pad, dy + (n * F + f) * OH * OW, OH, OW, W)
        bias_grad += _sum(dy + (n * F + f) * OH * OW, OH * OW)
        for c in range(C):
            xc = x + (n * C + c) * H * W
            for i in range(KH):
                for j in range(KW):
                    dwf[(c * KH + i) * KW + j] += _dot(z + pad, xc + i * W + j, L)
    db[f] = bias_grad


# --------------------------------------------------------------------------------------------------
# Max pooling, one (H, W) plane at a time.

cdef inline void _pool_fwd_plane(const floating *x, floating *y, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t s) noexcept nogil:
    """Max of each s x s window; the rows/columns past the last full window are ignored."""
    cdef Py_ssize_t OH = H // s, OW = W // s
    cdef Py_ssize_t oh, ow, i, j
    cdef floating m, v
    cdef const floating *xr
    cdef const floating *r0
    cdef const floating *r1
    cdef floating *yr
    if s == 2:
        for oh in range(OH):
            r0 = x + 2 * oh * W
            r1 = r0 + W
            yr = y + oh * OW
            for ow in range(OW):
                m = r0[2 * ow]
                v = r0[2 * ow + 1]
                m = v if v > m else m
                v = r1[2 * ow]
                m = v if v > m else m
                v = r1[2 * ow + 1]
                yr[ow] = v if v > m else m
        return
    for oh in range(OH):
        for ow in range(OW):
            xr = x + oh * s * W + ow * s
            m = xr[0]
            for i in range(s):
                for j in range(s):
                    v = xr[i * W + j]
                    if v > m:
                        m = v
            y[oh * OW + ow] = m


cdef inline void _pool_bwd_plane(const floating *dy, const floating *x, floating *dx,
                                 Py_ssize_t H, Py_ssize_t W, Py_ssize_t s) noexcept nogil:
    """Route each dy to the first maximum (row-major) of its window; dx must start at zero.

    Comparisons are strict, so a later value equal to the running maximum never takes over.
    """
    cdef Py_ssize_t OH = H // s, OW = W // s
    cdef Py_ssize_t oh, ow, i, j, best
    cdef floating m, v
    cdef const floating *xr
    for oh in range(OH):
        for ow in range(OW):
            xr = x + oh * s * W + ow * s
            m = xr[0]
            best = 0
            for i in range(s):
                for j in range(s):
                    v = xr[i * W + j]
                    if v > m:
                        m = v
                        best = i * W + j
            dx[oh * s * W + ow * s + best] = dy[oh * OW + ow]


# --------------------------------------------------------------------------------------------------
# Batch drivers: typed memoryviews in, GIL released, one scratch buffer per thread.

cdef floating *_scratch(Py_ssize_t per_thread, floating *like) except NULL:
    """Zeroed scratch: per_thread values for each thread a parallel loop may use (free() it)."""
    cdef floating *buf = <floating *> calloc(aigen_max_threads() * per_thread, sizeof(floating))
    if buf == NULL:
        raise MemoryError()
    return buf


cdef void _conv_fwd(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                    const floating[::1] b, floating[:, :, :, ::1] y) except *:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t n
    cdef bint threads = N > 1 and N * F * C * H * W * KH * KW >= PARALLEL_MIN_WORK
    if N == 0:
        return
    cdef floating *buf = _scratch(H * W, &y[0, 0, 0, 0])
    with nogil:
        for n in prange(N, use_threads_if=threads, schedule="static"):
            _conv_fwd_sample(&x[n, 0, 0, 0], &w[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                             buf + threadid() * H * W, C, H, W, F, KH, KW)
    free(buf)


cdef void _conv_bwd(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                    floating[:, :, :, ::1] dw, floating[::1] db) except *:
    """dx and dw must arrive zero-filled."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t n, f
    cdef Py_ssize_t zlen = (KH - 1) * W + KW - 1 + H * W
    cdef bint big = N * F * C * H * W * KH * KW >= PARALLEL_MIN_WORK
    if N == 0:
        return
    # Only the dy positions of each thread's padded plane are ever written, so its zeros survive.
    cdef floating *z = _scratch(zlen, &dx[0, 0, 0, 0])
    with nogil:
        for n in prange(N, use_threads_if=big and N > 1, schedule="static"):
            _conv_bwd_dx_sample(&dy[n, 0, 0, 0], &w[0, 0, 0, 0], &dx[n, 0, 0, 0],
                                z + threadid() * zlen, C, H, W, F, KH, KW)
        for f in prange(F, use_threads_if=big and F > 1, schedule="static"):
            _conv_bwd_dw_filter(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &dw[0, 0, 0, 0], &db[0],
                                z + threadid() * zlen, f, N, C, H, W, F, KH, KW)
    free(z)


cdef void _pool_fwd(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, Py_ssize_t s):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t p
    cdef bint threads = N > 1 and N * C * H * W >= PARALLEL_MIN_WORK
    if N == 0:
        return
    with nogil:
        for p in prange(N * C, use_threads_if=threads, schedule="static"):
            _pool_fwd_plane(&x[0, 0, 0, 0] + p * H * W, &y[0, 0, 0, 0] + p * (H // s) * (W // s),
                            H, W, s)


cdef void _pool_bwd(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    floating[:, :, :, ::1] dx, Py_ssize_t s):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t p
    cdef bint threads = N > 1 and N * C * H * W >= PARALLEL_MIN_WORK
    if N == 0:
        return
    with nogil:
        for p in prange(N * C, use_threads_if=threads, schedule="static"):
            _pool_bwd_plane(&dy[0, 0, 0, 0] + p * (H // s) * (W // s), &x[0, 0, 0, 0] + p * H * W,
                            &dx[0, 0, 0, 0] + p * H * W, H, W, s)


# --------------------------------------------------------------------------------------------------
# Python entry points.  They trust their (validated) arguments: 4-D/1-D float arrays of one dtype
# with compatible shapes.

cdef inline cnp.ndarray _c_contiguous(cnp.ndarray a):
    # No copy (and no Python-level call) in the common, already contiguous case.
    if cnp.PyArray_IS_C_CONTIGUOUS(a):
        return a
    return np.ascontiguousarray(a)


def conv2d_forward(cnp.ndarray x not None, cnp.ndarray w not None, cnp.ndarray b not None):
    """Valid cross-correlation, stride 1: y[n, f] = b[f] + sum_c x[n, c] (*) w[f, c]."""
    x = _c_contiguous(x)
    w = _c_contiguous(w)
    b = _c_contiguous(b)
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef cnp.npy_intp dims[4]
    dims[0] = x.shape[0]
    dims[1] = w.shape[0]
    dims[2] = x.shape[2] - w.shape[2] + 1
    dims[3] = x.shape[3] - w.shape[3] + 1
    cdef cnp.ndarray y = cnp.PyArray_EMPTY(4, dims, typenum, 0)
    if typenum == cnp.NPY_FLOAT32:
        _conv_fwd[float](x, w, b, y)
    else:
        _conv_fwd[double](x, w, b, y)
    return y


def conv2d_backward(cnp.ndarray dy not None, cnp.ndarray x not None, cnp.ndarray w not None):
    """Gradients (dx, dw, db) of conv2d_forward given dy = dL/dy."""
    dy = _c_contiguous(dy)
    x = _c_contiguous(x)
    w = _c_contiguous(w)
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef cnp.ndarray dx = cnp.PyArray_ZEROS(4, x.shape, typenum, 0)
    cdef cnp.ndarray dw = cnp.PyArray_ZEROS(4, w.shape, typenum, 0)
    cdef cnp.ndarray db = cnp.PyArray_ZEROS(1, w.shape, typenum, 0)
    if typenum == cnp.NPY_FLOAT32:
        _conv_bwd[float](dy, x, w, dx, dw, db)
    else:
        _conv_bwd[double](dy, x, w, dx, dw, db)
    return dx, dw, db


def maxpool2d_forward(cnp.ndarray x not None, Py_ssize_t size):
    """Max over non-overlapping size x size windows (stride = size, floor: partial windows dropped)."""
    x = _c_contiguous(x)
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef cnp.npy_intp dims[4]
    dims[0] = x.shape[0]
    dims[1] = x.shape[1]
    dims[2] = x.shape[2] // size
    dims[3] = x.shape[3] // size
    cdef cnp.ndarray y = cnp.PyArray_EMPTY(4, dims, typenum, 0)
    if typenum == cnp.NPY_FLOAT32:
        _pool_fwd[float](x, y, size)
    else:
        _pool_fwd[double](x, y, size)
    return y


def maxpool2d_backward(cnp.ndarray dy not None, cnp.ndarray x not None, Py_ssize_t size):
    """Gradient of maxpool2d_forward: each dy goes to the first maximum (row-major) of its window."""
    dy = _c_contiguous(dy)
    x = _c_contiguous(x)
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef cnp.ndarray dx = cnp.PyArray_ZEROS(4, x.shape, typenum, 0)
    if typenum == cnp.NPY_FLOAT32:
        _pool_bwd[float](dy, x, dx, size)
    else:
        _pool_bwd[double](dy, x, dx, size)
    return dx
