/* The C inner loops of the conv / maxpool kernels (csrc/ckernels.pyx), written once as macros over
   the float type and a target attribute; aigen_dispatch.h compiles one copy per instruction set. */
#ifndef AIGEN_LOOPS_H
#define AIGEN_LOOPS_H

#include <Python.h>
#include "aigen_platform.h"

/* The loops every kernel spends its time in, on raw pointers (one plane at a time).

   corr:      out[q] (+)= sum_{i,j} k[i, j] * src[q + i*W + j] for q < L, with k rotated by
              180 degrees when flip is set; with init, out[q] = bias + sum instead of out[q] +=
              sum.  Planes are walked in "full-width" flat order (see ckernels.pyx, above
              _conv_fwd_sample); a 3x3 kernel takes one pass with all nine taps.
   taps:      dw[i*KW + j] += sum_{q < L} z[q] * x[q + i*W + j] and *zsum += sum_{q < L} z[q];
              a 3x3 kernel takes one pass with ten sums.
   pool2_fwd: max of each 2x2 window of an (H, W) plane.
   pool2_bwd: dy of each 2x2 window to its first maximum (row-major), zeros elsewhere; writes
              every element of dx.
   Pooling is branch-free (the winner of a random window is unpredictable): the first maximum
   of the top pair, of the bottom pair, then the bottom one only if strictly larger. */
/* pool2_bwd takes a row of 2x2 windows in blocks of AIGEN_POOL_BLOCK windows (the last block
   overlapping the one before: the writes are idempotent), so that every block is a fixed-length
   loop the compiler turns into vector code with no scalar remainder, whose branches on random
   data would cost more than the vector part. */
#define AIGEN_POOL_BLOCK 8
#define AIGEN_POOL2_BWD_WINDOW(T)                                                            \
    const T a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];          \
    const int right = b > a, bottom_right = d > c;                                           \
    const T top = right ? b : a, bottom = bottom_right ? d : c;                              \
    const int down = bottom > top;                                                           \
    const T gt = down ? (T) 0 : g[ow], gb = down ? g[ow] : (T) 0;                            \
    d0[2 * ow] = right ? (T) 0 : gt;                                                         \
    d0[2 * ow + 1] = right ? gt : (T) 0;                                                     \
    d1[2 * ow] = bottom_right ? (T) 0 : gb;                                                  \
    d1[2 * ow + 1] = bottom_right ? gb : (T) 0;

#define AIGEN_CONV_PRIMITIVES(T, SFX, ATTR)                                                     \
ATTR static void aigen_corr_##SFX(T *AIGEN_RESTRICT out, const T *AIGEN_RESTRICT src,        \
                                  const T *AIGEN_RESTRICT k, Py_ssize_t KH, Py_ssize_t KW,   \
                                  Py_ssize_t W, Py_ssize_t L, int flip, int init, T bias) {  \
    Py_ssize_t q, i, j;                                                                      \
    if (KH == 3 && KW == 3) {                                                                \
        const T *AIGEN_RESTRICT r0 = src;                                                    \
        const T *AIGEN_RESTRICT r1 = src + W;                                                \
        const T *AIGEN_RESTRICT r2 = src + 2 * W;                                            \
        T k0, k1, k2, k3, k4, k5, k6, k7, k8;                                                \
        if (flip) {                                                                          \
            k0 = k[8]; k1 = k[7]; k2 = k[6]; k3 = k[5]; k4 = k[4];                           \
            k5 = k[3]; k6 = k[2]; k7 = k[1]; k8 = k[0];                                      \
        } else {                                                                             \
            k0 = k[0]; k1 = k[1]; k2 = k[2]; k3 = k[3]; k4 = k[4];                           \
            k5 = k[5]; k6 = k[6]; k7 = k[7]; k8 = k[8];                                      \
        }                                                                                    \
        if (init) {                                                                          \
            for (q = 0; q < L; q++)                                                          \
                out[q] = bias + (k0 * r0[q] + k1 * r0[q + 1] + k2 * r0[q + 2]                \
                                 + k3 * r1[q] + k4 * r1[q + 1] + k5 * r1[q + 2]              \
                                 + k6 * r2[q] + k7 * r2[q + 1] + k8 * r2[q + 2]);            \
        } else {                                                                             \
            for (q = 0; q < L; q++)                                                          \
                out[q] = out[q] + (k0 * r0[q] + k1 * r0[q + 1] + k2 * r0[q + 2]              \
                                   + k3 * r1[q] + k4 * r1[q + 1] + k5 * r1[q + 2]            \
                                   + k6 * r2[q] + k7 * r2[q + 1] + k8 * r2[q + 2]);          \
        }                                                                                    \
        return;                                                                              \
    }                                                                                        \
    if (init)                                                                                \
        for (q = 0; q < L; q++)                                                              \
            out[q] = bias;                                                                   \
    for (i = 0; i < KH; i++) {                                                               \
        for (j = 0; j < KW; j++) {                                                           \
            const T kv = flip ? k[(KH - 1 - i) * KW + (KW - 1 - j)] : k[i * KW + j];         \
            const T *AIGEN_RESTRICT r = src + i * W + j;                                     \
            for (q = 0; q < L; q++)                                                          \
                out[q] += kv * r[q];                                                         \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
ATTR static void aigen_taps_##SFX(T *AIGEN_RESTRICT dw, T *AIGEN_RESTRICT zsum,              \
                                  const T *AIGEN_RESTRICT z, const T *AIGEN_RESTRICT x,      \
                                  Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t W, Py_ssize_t L) { \
    Py_ssize_t q, i, j;                                                                      \
    if (KH == 3 && KW == 3) {                                                                \
        const T *AIGEN_RESTRICT r0 = x;                                                      \
        const T *AIGEN_RESTRICT r1 = x + W;                                                  \
        const T *AIGEN_RESTRICT r2 = x + 2 * W;                                              \
        T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0, a8 = 0, a9 = 0;    \
        AIGEN_SIMD_SUM10                                                                     \
        for (q = 0; q < L; q++) {                                                            \
            const T zq = z[q];                                                               \
            a0 += zq * r0[q]; a1 += zq * r0[q + 1]; a2 += zq * r0[q + 2];                    \
            a3 += zq * r1[q]; a4 += zq * r1[q + 1]; a5 += zq * r1[q + 2];                    \
            a6 += zq * r2[q]; a7 += zq * r2[q + 1]; a8 += zq * r2[q + 2];                    \
            a9 += zq;                                                                        \
        }                                                                                    \
        dw[0] += a0; dw[1] += a1; dw[2] += a2; dw[3] += a3; dw[4] += a4;                     \
        dw[5] += a5; dw[6] += a6; dw[7] += a7; dw[8] += a8;                                  \
        *zsum += a9;                                                                         \
        return;                                                                              \
    }                                                                                        \
    for (i = 0; i < KH; i++) {                                                               \
        for (j = 0; j < KW; j++) {                                                           \
            const T *AIGEN_RESTRICT r = x + i * W + j;                                       \
            T a0 = 0;                                                                        \
            AIGEN_SIMD_SUM1                                                                  \
            for (q = 0; q < L; q++)                                                          \
                a0 += z[q] * r[q];                                                           \
            dw[i * KW + j] += a0;                                                            \
        }                                                                                    \
    }                                                                                        \
    {                                                                                        \
        T a0 = 0;                                                                            \
        AIGEN_SIMD_SUM1                                                                      \
        for (q = 0; q < L; q++)                                                              \
            a0 += z[q];                                                                      \
        *zsum += a0;                                                                         \
    }                                                                                        \
}

#define AIGEN_POOL_PRIMITIVES(T, SFX, ATTR)                                                  \
ATTR static void aigen_pool2_fwd_##SFX(const T *AIGEN_RESTRICT x, T *AIGEN_RESTRICT y,       \
                                       Py_ssize_t H, Py_ssize_t W) {                         \
    const Py_ssize_t OH = H / 2, OW = W / 2;                                                 \
    Py_ssize_t oh, ow;                                                                       \
    for (oh = 0; oh < OH; oh++) {                                                            \
        const T *AIGEN_RESTRICT r0 = x + 2 * oh * W;                                         \
        const T *AIGEN_RESTRICT r1 = r0 + W;                                                 \
        T *AIGEN_RESTRICT yr = y + oh * OW;                                                  \
        for (ow = 0; ow < OW; ow++) {                                                        \
            const T a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];  \
            const T top = b > a ? b : a, bottom = d > c ? d : c;                             \
            yr[ow] = bottom > top ? bottom : top;                                            \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
ATTR static void aigen_pool2_bwd_##SFX(const T *AIGEN_RESTRICT dy, const T *AIGEN_RESTRICT x, \
                                       T *AIGEN_RESTRICT dx, Py_ssize_t H, Py_ssize_t W) {   \
    const Py_ssize_t OH = H / 2, OW = W / 2;                                                 \
    Py_ssize_t oh, ow, start;                                                                \
    for (oh = 0; oh < OH; oh++) {                                                            \
        const T *AIGEN_RESTRICT r0 = x + 2 * oh * W;                                         \
        const T *AIGEN_RESTRICT r1 = r0 + W;                                                 \
        const T *AIGEN_RESTRICT g = dy + oh * OW;                                            \
        T *AIGEN_RESTRICT d0 = dx + 2 * oh * W;                                              \
        T *AIGEN_RESTRICT d1 = d0 + W;                                                       \
        for (start = 0; start < OW; start += AIGEN_POOL_BLOCK) {                             \
            if (start + AIGEN_POOL_BLOCK > OW) {                                             \
                if (OW < AIGEN_POOL_BLOCK) break;                                            \
                start = OW - AIGEN_POOL_BLOCK;                                               \
            }                                                                                \
            for (ow = start; ow < start + AIGEN_POOL_BLOCK; ow++) {                          \
                AIGEN_POOL2_BWD_WINDOW(T)                                                    \
            }                                                                                \
        }                                                                                    \
        if (OW < AIGEN_POOL_BLOCK)                                                           \
            for (ow = 0; ow < OW; ow++) {                                                    \
                AIGEN_POOL2_BWD_WINDOW(T)                                                    \
            }                                                                                \
        if (W > 2 * OW) { /* odd width: the last column is in no window */                   \
            d0[W - 1] = 0;                                                                   \
            d1[W - 1] = 0;                                                                   \
        }                                                                                    \
    }                                                                                        \
    if (H > 2 * OH) /* odd height: the last row is in no window */                           \
        for (ow = 0; ow < W; ow++)                                                           \
            dx[(H - 1) * W + ow] = 0;                                                        \
}

#endif /* AIGEN_LOOPS_H */
