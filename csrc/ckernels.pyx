# The compiled conv2d / maxpool2d kernels behind aigen.kernels.get_backend("cython").
#
# Each Python entry point validates its arguments itself (a few C-level attribute reads; anything
# unusual is handed to the shared rules in aigen/kernels/_checks.py, which raise the ValueError that
# names the argument), makes the arrays C-contiguous, allocates the outputs and runs the loops on raw
# pointers with the GIL released.  Every loop is ordered so that the innermost one walks a
# contiguous row.
#
# Threads: the batch loop (and, for dw/db, the filter loop) is an OpenMP prange when the extension
# was compiled with OpenMP; OMP_NUM_THREADS sets the thread count.  Small problems (e.g. one sample)
# run on the calling thread, because waking a thread team costs more than the work.  Each output
# element is always computed by one thread in one fixed order, so results do not depend on the
# thread count.
#
# SIMD: the inner loops (a correlation, a set of dot products, 2x2 pooling forward and backward)
# are written in C in csrc/aigen_loops.h and, on x86-64 with GCC or Clang, compiled more than once: for the
# baseline instruction set the extension is built for, for AVX2 + FMA and (the convolution loops)
# for AVX-512.  The best copy the CPU supports is chosen at import; simd_info() says which one
# runs (csrc/aigen_dispatch.h); -DAIGEN_NO_SIMD_DISPATCH builds the baseline copy only.  Everything
# else is Cython.

cimport numpy as cnp
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

import numpy as np

from aigen.kernels import _checks

cnp.import_array()

cdef extern from "aigen_dispatch.h":
    int aigen_max_threads() nogil
    const char *AIGEN_SOURCE_SHA256
    int AIGEN_OPENMP_COMPILED
    int AIGEN_X86_COMPILED
    int aigen_cpu_simd()
    int aigen_set_simd(int level)
    void aigen_corr_f32(float *out, const float *src, const float *k, Py_ssize_t KH,
                        Py_ssize_t KW, Py_ssize_t W, Py_ssize_t L, int flip, int init,
                        float bias) noexcept nogil
    void aigen_corr_f64(double *out, const double *src, const double *k, Py_ssize_t KH,
                        Py_ssize_t KW, Py_ssize_t W, Py_ssize_t L, int flip, int init,
                        double bias) noexcept nogil
    void aigen_taps_f32(float *dw, float *zsum, const float *z, const float *x, Py_ssize_t KH,
                        Py_ssize_t KW, Py_ssize_t W, Py_ssize_t L) noexcept nogil
    void aigen_taps_f64(double *dw, double *zsum, const double *z, const double *x, Py_ssize_t KH,
                        Py_ssize_t KW, Py_ssize_t W, Py_ssize_t L) noexcept nogil
    void aigen_pool2_fwd_f32(const float *x, float *y, Py_ssize_t H, Py_ssize_t W) noexcept nogil
    void aigen_pool2_fwd_f64(const double *x, double *y, Py_ssize_t H, Py_ssize_t W) noexcept nogil
    void aigen_pool2_bwd_f32(const float *dy, const float *x, float *dx, Py_ssize_t H,
                             Py_ssize_t W) noexcept nogil
    void aigen_pool2_bwd_f64(const double *dy, const double *x, double *dx, Py_ssize_t H,
                             Py_ssize_t W) noexcept nogil

# sha256 of csrc/*.pyx, *.pxd and *.h when this module was built (see setup.py); compared with the
# checkout's sources at import so that a stale build is never used silently.
SOURCE_SHA256 = AIGEN_SOURCE_SHA256.decode("ascii")

# A convolution below this many multiply-adds (about 10 us of work), or a pooling call below this
# many input values, stays on the calling thread: waking the thread team costs more.
cdef Py_ssize_t PARALLEL_MIN_MACS = 1 << 19
cdef Py_ssize_t PARALLEL_MIN_VALUES = 1 << 17

_SIMD_NAMES = ("baseline", "avx2", "avx512")
cdef int _simd_level = aigen_set_simd(2)


def openmp_info():
    """{"openmp": whether OpenMP was compiled in, "max_threads": threads a parallel loop would use}."""
    return {"openmp": bool(AIGEN_OPENMP_COMPILED), "max_threads": int(aigen_max_threads())}


def simd_info():
    """{"active": the copy of the inner loops in use, "available": the copies this CPU can run}.

    "baseline" is the instruction set the extension was compiled for; "avx2" (AVX2 + FMA) and
    "avx512" (AVX-512F, 512-bit vectors) are extra copies built on x86-64 with GCC or Clang.
    """
    cdef int best = aigen_cpu_simd() if AIGEN_X86_COMPILED else 0
    return {"active": _SIMD_NAMES[_simd_level], "available": list(_SIMD_NAMES[:best + 1])}


def _use_simd(str name):
    """Switch the inner loops to the copy `name` (or the best available below it); returns the
    previous name.  For tests and benchmarks only: not safe while another thread runs a kernel."""
    global _simd_level
    if name not in _SIMD_NAMES:
        raise ValueError(f"unknown SIMD level {name!r}; choose one of {_SIMD_NAMES}")
    previous = _SIMD_NAMES[_simd_level]
    _simd_level = aigen_set_simd(_SIMD_NAMES.index(name))
    return previous


# --------------------------------------------------------------------------------------------------
# Typed access to the C primitives.

cdef inline void _corr(floating *out, const floating *src, const floating *k, Py_ssize_t KH,
                       Py_ssize_t KW, Py_ssize_t W, Py_ssize_t L, bint flip, bint init,
                       floating bias) noexcept nogil:
    if floating is float:
        aigen_corr_f32(out, src, k, KH, KW, W, L, flip, init, bias)
    else:
        aigen_corr_f64(out, src, k, KH, KW, W, L, flip, init, bias)


cdef inline void _taps(floating *dw, floating *zsum, const floating *z, const floating *x,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t W, Py_ssize_t L) noexcept nogil:
    if floating is float:
        aigen_taps_f32(dw, zsum, z, x, KH, KW, W, L)
    else:
        aigen_taps_f64(dw, zsum, z, x, KH, KW, W, L)


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
# Convolution, one sample (forward, dx) or one (sample, filter) pair (dw, db) at a time.
#
# Planes are walked in "full-width" flat order: output position (oh, ow) of a valid correlation
# sits at q = oh * W + ow, so the input it reads through tap (i, j) is simply q + i * W + j.  One
# long contiguous loop over q = 0 .. L-1, L = (OH - 1) * W + OW, then replaces OH short row loops
# (rows of 30 vectorise badly); the W - OW columns it computes past each row end are discarded.
#
# Scratch, one per thread: forward needs L values; backward needs dy[n, f] laid out full-width
# with zeros past each row and (KH - 1) * W + KW - 1 leading zeros, "the padded plane" Z, so that
# dx is again a correlation (with the rotated kernel) and dw a set of dot products.  (A tap that
# would reach left of column 0 lands in the previous row's zero columns: W - OW = KW - 1.)  Only
# the dy positions of Z are ever written, so its zeros survive from one plane to the next.

cdef inline void _conv_fwd_sample(const floating *x, const floating *w, const floating *b,
                                  floating *y, floating *buf, Py_ssize_t C, Py_ssize_t H,
                                  Py_ssize_t W, Py_ssize_t F, Py_ssize_t KH,
                                  Py_ssize_t KW) noexcept nogil:
    cdef Py_ssize_t OH = H - KH + 1, OW = W - KW + 1, L = (OH - 1) * W + OW
    cdef Py_ssize_t f, c
    for f in range(F):
        for c in range(C):
            _corr(buf, x + c * H * W, w + (f * C + c) * KH * KW, KH, KW, W, L, False, c == 0, b[f])
        _gather_rows(y + f * OH * OW, buf, OH, OW, W)


cdef inline void _conv_bwd_dx_plane(const floating *z, const floating *w, floating *dx,
                                    Py_ssize_t f, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t KH, Py_ssize_t KW) noexcept nogil:
    """dx[c] (+)= Z (holding dy[f]) correlated with the rotated w[f, c]; f == 0 initialises dx."""
    cdef Py_ssize_t c
    for c in range(C):
        _corr(dx + c * H * W, z, w + (f * C + c) * KH * KW, KH, KW, W, H * W, True, f == 0, 0)


cdef inline void _conv_bwd_dw_plane(const floating *z, const floating *x, floating *dwf,
                                    floating *dbf, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t KH, Py_ssize_t KW) noexcept nogil:
    """dw[f] += <Z (holding dy[n, f]), x[n, c] shifted by (i, j)> and db[f] += sum dy[n, f]."""
    cdef Py_ssize_t OH = H - KH + 1, OW = W - KW + 1, L = (OH - 1) * W + OW
    cdef Py_ssize_t pad = (KH - 1) * W + KW - 1
    cdef Py_ssize_t c
    cdef floating unused = 0
    for c in range(C):
        # The sum over Z's L values is the sum of dy[n, f] (the rest are zeros): db, once.
        _taps(dwf + c * KH * KW, dbf if c == 0 else &unused, z + pad, x + c * H * W,
              KH, KW, W, L)


# --------------------------------------------------------------------------------------------------
# Max pooling, one (H, W) plane at a time: 2x2 windows in C (aigen_loops.h), other sizes here.

cdef inline void _pool_fwd_plane(const floating *x, floating *y, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t s) noexcept nogil:
    """Max of each s x s window; the rows/columns past the last full window are ignored."""
    cdef Py_ssize_t OH = H // s, OW = W // s
    cdef Py_ssize_t oh, ow, i, j
    cdef floating m, v
    cdef const floating *xr
    if s == 2:
        if floating is float:
            aigen_pool2_fwd_f32(x, y, H, W)
        else:
            aigen_pool2_fwd_f64(x, y, H, W)
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
    """Route each dy to the first maximum (row-major) of its window and write zeros everywhere else.

    Comparisons are strict, so a later value equal to the running maximum never takes over.
    """
    cdef Py_ssize_t OH = H // s, OW = W // s
    cdef Py_ssize_t oh, ow, i, j, best
    cdef floating m, v
    cdef const floating *xr
    if s == 2:
        if floating is float:
            aigen_pool2_bwd_f32(dy, x, dx, H, W)
        else:
            aigen_pool2_bwd_f64(dy, x, dx, H, W)
        return
    memset(dx, 0, H * W * sizeof(floating))
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
# Batch drivers: raw pointers into C-contiguous arrays, GIL released, one scratch buffer per thread.
# A problem too small for threads runs a plain loop, outside any OpenMP region.

cdef int _threads(bint parallel) noexcept nogil:
    """The size of the thread team to use (1 when the problem is too small to share)."""
    return aigen_max_threads() if parallel else 1


cdef floating *_scratch(Py_ssize_t n, floating *like) except NULL:
    """n zeroed values (free() them); `like` only selects the type."""
    cdef floating *buf = <floating *> calloc(n if n > 0 else 1, sizeof(floating))
    if buf == NULL:
        raise MemoryError()
    return buf


cdef int _conv_fwd(const floating *x, const floating *w, const floating *b, floating *y,
                   Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                   Py_ssize_t KH, Py_ssize_t KW) except -1:
    cdef Py_ssize_t OH = H - KH + 1, OW = W - KW + 1, n
    cdef int nt = _threads(N > 1 and N * F * C * H * W * KH * KW >= PARALLEL_MIN_MACS)
    if N == 0:
        return 0
    cdef floating *buf = _scratch(nt * H * W, y)
    with nogil:
        if nt > 1:
            for n in prange(N, num_threads=nt, schedule="static"):
                _conv_fwd_sample(x + n * C * H * W, w, b, y + n * F * OH * OW,
                                 buf + threadid() * H * W, C, H, W, F, KH, KW)
        else:
            for n in range(N):
                _conv_fwd_sample(x + n * C * H * W, w, b, y + n * F * OH * OW, buf,
                                 C, H, W, F, KH, KW)
    free(buf)
    return 0


cdef int _conv_bwd(const floating *dy, const floating *x, const floating *w, floating *dx,
                   floating *dw, floating *db, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H,
                   Py_ssize_t W, Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW) except -1:
    """Fills dx, dw and db completely (they may arrive uninitialised); dx NULL: dw and db only.

    Whatever the threads, dx[n] is accumulated over f in order by one thread, and dw[f], db[f] over
    n in order (starting from zero) by one thread, so the results are the same bit for bit (and
    the same with or without dx).
    """
    cdef Py_ssize_t OH = H - KH + 1, OW = W - KW + 1, n, f
    cdef Py_ssize_t pad = (KH - 1) * W + KW - 1, zlen = pad + H * W
    cdef int nt = _threads(N * F * C * H * W * KH * KW >= PARALLEL_MIN_MACS and (N > 1 or F > 1))
    cdef int nt_n = nt if N > 1 else 1
    cdef int nt_f = nt if F > 1 else 1
    cdef floating *z
    cdef floating *zt
    memset(dw, 0, F * C * KH * KW * sizeof(floating))
    memset(db, 0, F * sizeof(floating))
    if N == 0:
        return 0
    z = _scratch(nt * zlen, dx)
    with nogil:
        if nt == 1:
            # One pass: each dy plane is spread into Z once, for dx and for dw.
            for n in range(N):
                for f in range(F):
                    _spread_rows(z + pad, dy + (n * F + f) * OH * OW, OH, OW, W)
                    if dx != NULL:
                        _conv_bwd_dx_plane(z, w, dx + n * C * H * W, f, C, H, W, KH, KW)
                    _conv_bwd_dw_plane(z, x + n * C * H * W, dw + f * C * KH * KW, db + f,
                                       C, H, W, KH, KW)
        else:
            # dx over the batch, then dw/db over the filters: no two threads write one value.
            if dx != NULL:
                for n in prange(N, num_threads=nt_n, use_threads_if=nt_n > 1, schedule="static"):
                    zt = z + threadid() * zlen
                    for f in range(F):
                        _spread_rows(zt + pad, dy + (n * F + f) * OH * OW, OH, OW, W)
                        _conv_bwd_dx_plane(zt, w, dx + n * C * H * W, f, C, H, W, KH, KW)
            for f in prange(F, num_threads=nt_f, use_threads_if=nt_f > 1, schedule="static"):
                zt = z + threadid() * zlen
                for n in range(N):
                    _spread_rows(zt + pad, dy + (n * F + f) * OH * OW, OH, OW, W)
                    _conv_bwd_dw_plane(zt, x + n * C * H * W, dw + f * C * KH * KW, db + f,
                                       C, H, W, KH, KW)
    free(z)
    return 0


cdef void _pool_fwd(const floating *x, floating *y, Py_ssize_t P, Py_ssize_t H, Py_ssize_t W,
                    Py_ssize_t s) noexcept:
    """P = N * C planes."""
    cdef Py_ssize_t p, OH = H // s, OW = W // s
    cdef int nt = _threads(P > 1 and P * H * W >= PARALLEL_MIN_VALUES)
    with nogil:
        if nt > 1:
            for p in prange(P, num_threads=nt, schedule="static"):
                _pool_fwd_plane(x + p * H * W, y + p * OH * OW, H, W, s)
        else:
            for p in range(P):
                _pool_fwd_plane(x + p * H * W, y + p * OH * OW, H, W, s)


cdef void _pool_bwd(const floating *dy, const floating *x, floating *dx, Py_ssize_t P,
                    Py_ssize_t H, Py_ssize_t W, Py_ssize_t s) noexcept:
    cdef Py_ssize_t p, OH = H // s, OW = W // s
    cdef int nt = _threads(P > 1 and P * H * W >= PARALLEL_MIN_VALUES)
    with nogil:
        if nt > 1:
            for p in prange(P, num_threads=nt, schedule="static"):
                _pool_bwd_plane(dy + p * OH * OW, x + p * H * W, dx + p * H * W, H, W, s)
        else:
            for p in range(P):
                _pool_bwd_plane(dy + p * OH * OW, x + p * H * W, dx + p * H * W, H, W, s)


# --------------------------------------------------------------------------------------------------
# Python entry points.
#
# The checks below are the rules of aigen/kernels/_checks.py restated on C-level attributes, so the
# common valid call costs a few hundred nanoseconds less than the Python checks would; whenever one
# fails, the Python check for the call runs and raises the ValueError that names the argument
# (and should it pass after all, the call simply goes on).

ctypedef cnp.npy_intp *Dims


cdef inline int _float_type(object a, int nd):
    """a's type number if a is a native-byte-order float32/float64 ndarray with nd dimensions, else -1."""
    cdef int t
    if not cnp.PyArray_Check(a) or cnp.PyArray_NDIM(<cnp.ndarray> a) != nd:
        return -1
    t = cnp.PyArray_TYPE(<cnp.ndarray> a)
    if (t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE) or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray> a):
        return -1
    return t


cdef inline bint _conv_operands_ok(object x, object w, int t):
    cdef Dims xs
    cdef Dims ws
    if t < 0 or _float_type(w, 4) != t:
        return False
    xs = cnp.PyArray_DIMS(<cnp.ndarray> x)
    ws = cnp.PyArray_DIMS(<cnp.ndarray> w)
    return (xs[1] > 0 and xs[2] > 0 and xs[3] > 0 and ws[0] > 0 and ws[2] > 0 and ws[3] > 0
            and ws[1] == xs[1] and ws[2] <= xs[2] and ws[3] <= xs[3])


cdef inline Py_ssize_t _pool_size_ok(object x, object size, int t):
    """size as a C integer if size is a plain int and fits x's planes, else 0."""
    cdef long long s
    cdef int overflow = 0
    cdef Dims xs
    if t < 0 or type(size) is not int:
        return 0
    s = PyLong_AsLongLongAndOverflow(size, &overflow)
    if overflow:
        return 0
    xs = cnp.PyArray_DIMS(<cnp.ndarray> x)
    if s < 1 or s > xs[2] or s > xs[3]:
        return 0
    return <Py_ssize_t> s


cdef inline cnp.ndarray _c_array(object a, int t):
    """a itself when it is already a C-contiguous, aligned array; otherwise such a copy."""
    if cnp.PyArray_Check(a) and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray> a):
        return <cnp.ndarray> a
    return <cnp.ndarray> cnp.PyArray_FROM_OTF(a, t, cnp.NPY_ARRAY_CARRAY_RO)


cdef inline void *_data(cnp.ndarray a) noexcept:
    return cnp.PyArray_DATA(a)


# Caller-provided outputs (out=): a valid buffer is written in place, so a training loop that keeps
# its buffers allocates nothing per call.  The fast check below is _checks.check_out restated; when it
# fails, check_out runs and raises the ValueError naming the problem.

cdef inline bint _extent(object a, char **lo, char **hi) noexcept:
    """[lo, hi): the bytes a's elements can touch (np.may_share_memory's bounds); False if empty
    or not an array."""
    cdef int i
    cdef Py_ssize_t low = 0, high = 0, d, s
    if not cnp.PyArray_Check(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray> a
    for i in range(cnp.PyArray_NDIM(arr)):
        d = cnp.PyArray_DIMS(arr)[i]
        if d == 0:
            return False
        s = cnp.PyArray_STRIDES(arr)[i]
        if s > 0:
            high += (d - 1) * s
        else:
            low += (d - 1) * s
    lo[0] = <char *> cnp.PyArray_DATA(arr) + low
    hi[0] = <char *> cnp.PyArray_DATA(arr) + high + cnp.PyArray_ITEMSIZE(arr)
    return True


cdef inline bint _overlap(object a, object b) noexcept:
    cdef char *alo
    cdef char *ahi
    cdef char *blo
    cdef char *bhi
    if not (_extent(a, &alo, &ahi) and _extent(b, &blo, &bhi)):
        return False
    return alo < bhi and blo < ahi


cdef inline bint _out_ok(object out, int nd, cnp.npy_intp *dims, int t, object a, object b,
                         object c, object d):
    """out is a C-contiguous, aligned, writeable, native array of type t and shape dims that shares
    no memory with a, b, c or d (None for unused)."""
    cdef int i
    if _float_type(out, nd) != t or not cnp.PyArray_ISCARRAY(<cnp.ndarray> out):
        return False
    for i in range(nd):
        if cnp.PyArray_DIMS(<cnp.ndarray> out)[i] != dims[i]:
            return False
    return not (_overlap(out, a) or _overlap(out, b) or _overlap(out, c) or _overlap(out, d))


cdef cnp.ndarray _output(object out, int nd, cnp.npy_intp *dims, int t, object like, str name,
                         tuple inputs):
    """A fresh uninitialised array when out is None, else out once it passes the checks."""
    if out is None:
        return cnp.PyArray_EMPTY(nd, dims, t, 0)
    cdef object a = inputs[0][1] if len(inputs) > 0 else None
    cdef object b = inputs[1][1] if len(inputs) > 1 else None
    cdef object c = inputs[2][1] if len(inputs) > 2 else None
    cdef object d = inputs[3][1] if len(inputs) > 3 else None
    if not _out_ok(out, nd, dims, t, a, b, c, d):
        _checks.check_out(name, out, tuple([dims[i] for i in range(nd)]), like, inputs)
        raise ValueError(f"{name} cannot be used as an output buffer")  # check_out raised already
    return <cnp.ndarray> out


def conv2d_forward(x, w, b, out=None):
    """Valid stride-1 cross-correlation: (N, C, H, W) * (F, C, KH, KW) + (F,) -> (N, F, H-KH+1, W-KW+1).

    y[n, f, h, v] = b[f] + sum_{c, i, j} x[n, c, h + i, v + j] * w[f, c, i, j].  out: an optional
    buffer for y, written in place and returned.
    """
    cdef int t = _float_type(x, 4)
    if not (_conv_operands_ok(x, w, t) and _float_type(b, 1) == t
            and cnp.PyArray_DIMS(<cnp.ndarray> b)[0] == cnp.PyArray_DIMS(<cnp.ndarray> w)[0]):
        _checks.check_conv2d_forward(x, w, b)
        t = cnp.PyArray_TYPE(<cnp.ndarray> x)
    cdef cnp.ndarray xa = _c_array(x, t)
    cdef cnp.ndarray wa = _c_array(w, t)
    cdef cnp.ndarray ba = _c_array(b, t)
    cdef Dims xs = cnp.PyArray_DIMS(xa)
    cdef Dims ws = cnp.PyArray_DIMS(wa)
    cdef cnp.npy_intp dims[4]
    dims[0] = xs[0]
    dims[1] = ws[0]
    dims[2] = xs[2] - ws[2] + 1
    dims[3] = xs[3] - ws[3] + 1
    cdef cnp.ndarray y = _output(out, 4, dims, t, x, "out", (("x", x), ("w", w), ("b", b)))
    if t == cnp.NPY_FLOAT:
        _conv_fwd(<float *> _data(xa), <float *> _data(wa), <float *> _data(ba), <float *> _data(y),
                  xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3])
    else:
        _conv_fwd(<double *> _data(xa), <double *> _data(wa), <double *> _data(ba),
                  <double *> _data(y), xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3])
    return y


def conv2d_backward(dy, x, w, out=None, input_grad=True):
    """(dx, dw, db): gradients of conv2d_forward given dy of shape (N, F, H-KH+1, W-KW+1).

    out: an optional tuple of three buffers (dx, dw, db), written in place and returned.
    input_grad=False: dx is not computed and is None (out[0] must then be None); dw and db are
    the same bit for bit.
    """
    cdef int t = _float_type(x, 4)
    cdef Dims xs
    cdef Dims ws
    cdef Dims ds
    cdef bint ok = _conv_operands_ok(x, w, t) and _float_type(dy, 4) == t
    if ok:
        xs = cnp.PyArray_DIMS(<cnp.ndarray> x)
        ws = cnp.PyArray_DIMS(<cnp.ndarray> w)
        ds = cnp.PyArray_DIMS(<cnp.ndarray> dy)
        ok = (ds[0] == xs[0] and ds[1] == ws[0] and ds[2] == xs[2] - ws[2] + 1
              and ds[3] == xs[3] - ws[3] + 1)
    if not ok:
        _checks.check_conv2d_backward(dy, x, w)
        t = cnp.PyArray_TYPE(<cnp.ndarray> x)
    cdef cnp.ndarray da = _c_array(dy, t)
    cdef cnp.ndarray xa = _c_array(x, t)
    cdef cnp.ndarray wa = _c_array(w, t)
    xs = cnp.PyArray_DIMS(xa)
    ws = cnp.PyArray_DIMS(wa)
    cdef cnp.ndarray dx
    cdef cnp.ndarray dw
    cdef cnp.ndarray db
    cdef tuple args = (("dy", dy), ("x", x), ("w", w))
    if out is None:
        dx = cnp.PyArray_EMPTY(4, xs, t, 0) if input_grad else None
        dw = cnp.PyArray_EMPTY(4, ws, t, 0)
        db = cnp.PyArray_EMPTY(1, ws, t, 0)
    else:
        if (type(out) is not tuple or len(out) != 3 or out[1] is None or out[2] is None
                or (out[0] is None) == bool(input_grad)):  # _output would allocate for a None
            out = _checks.check_backward_out(out, dy, x, w, input_grad)
        dx = _output(out[0], 4, xs, t, x, "out[0] (dx)", args) if input_grad else None
        dw = _output(out[1], 4, ws, t, x, "out[1] (dw)", args + (("out[0] (dx)", dx),))
        db = _output(out[2], 1, ws, t, x, "out[2] (db)",
                     (("dy", dy), ("x", x), ("out[0] (dx)", dx), ("out[1] (dw)", dw)))
        if _overlap(db, w):  # the one pair the four slots above could not hold
            _checks.check_out("out[2] (db)", db, (ws[0],), x, args)
    if t == cnp.NPY_FLOAT:
        _conv_bwd(<float *> _data(da), <float *> _data(xa), <float *> _data(wa),
                  <float *> _data(dx) if dx is not None else NULL, <float *> _data(dw),
                  <float *> _data(db), xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3])
    else:
        _conv_bwd(<double *> _data(da), <double *> _data(xa), <double *> _data(wa),
                  <double *> _data(dx) if dx is not None else NULL, <double *> _data(dw),
                  <double *> _data(db), xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3])
    return dx, dw, db


def maxpool2d_forward(x, size=2, out=None):
    """Max over non-overlapping size x size windows; partial windows at the bottom/right are dropped.
    out: an optional buffer for the result, written in place and returned."""
    cdef int t = _float_type(x, 4)
    cdef Py_ssize_t s = _pool_size_ok(x, size, t)
    if s == 0:
        s = _checks.check_maxpool2d_forward(x, size)
        t = cnp.PyArray_TYPE(<cnp.ndarray> x)
    cdef cnp.ndarray xa = _c_array(x, t)
    cdef Dims xs = cnp.PyArray_DIMS(xa)
    cdef cnp.npy_intp dims[4]
    dims[0] = xs[0]
    dims[1] = xs[1]
    dims[2] = xs[2] // s
    dims[3] = xs[3] // s
    cdef cnp.ndarray y = _output(out, 4, dims, t, x, "out", (("x", x),))
    if t == cnp.NPY_FLOAT:
        _pool_fwd(<float *> _data(xa), <float *> _data(y), xs[0] * xs[1], xs[2], xs[3], s)
    else:
        _pool_fwd(<double *> _data(xa), <double *> _data(y), xs[0] * xs[1], xs[2], xs[3], s)
    return y


def maxpool2d_backward(dy, x, size=2, out=None):
    """Gradient of maxpool2d_forward: each dy goes to the first maximum (row-major) of its window.
    out: an optional buffer for dx, written in place and returned."""
    cdef int t = _float_type(x, 4)
    cdef Py_ssize_t s = _pool_size_ok(x, size, t)
    cdef Dims xs
    cdef Dims ds
    cdef bint ok = s > 0 and _float_type(dy, 4) == t
    if ok:
        xs = cnp.PyArray_DIMS(<cnp.ndarray> x)
        ds = cnp.PyArray_DIMS(<cnp.ndarray> dy)
        ok = ds[0] == xs[0] and ds[1] == xs[1] and ds[2] == xs[2] // s and ds[3] == xs[3] // s
    if not ok:
        s = _checks.check_maxpool2d_backward(dy, x, size)
        t = cnp.PyArray_TYPE(<cnp.ndarray> x)
    cdef cnp.ndarray da = _c_array(dy, t)
    cdef cnp.ndarray xa = _c_array(x, t)
    xs = cnp.PyArray_DIMS(xa)
    cdef cnp.ndarray dx = _output(out, 4, xs, t, x, "out", (("dy", dy), ("x", x)))
    if t == cnp.NPY_FLOAT:
        _pool_bwd(<float *> _data(da), <float *> _data(xa), <float *> _data(dx), xs[0] * xs[1],
                  xs[2], xs[3], s)
    else:
        _pool_bwd(<double *> _data(da), <double *> _data(xa), <double *> _data(dx), xs[0] * xs[1],
                  xs[2], xs[3], s)
    return dx
