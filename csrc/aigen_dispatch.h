/* One copy of the inner loops (aigen_loops.h) per instruction set and float type, and the runtime
   choice among them: the kernels call aigen_corr_f32 etc., which go through the table in use. */
#ifndef AIGEN_DISPATCH_H
#define AIGEN_DISPATCH_H

#include "aigen_loops.h"

/* One table of the primitives per float type; aigen_f32 / aigen_f64 point at the copies in use. */
#define AIGEN_OPS_TYPE(T, TS)                                                                \
typedef struct {                                                                             \
    void (*corr)(T *, const T *, const T *, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,  \
                 int, int, T);                                                               \
    void (*taps)(T *, T *, const T *, const T *, Py_ssize_t, Py_ssize_t, Py_ssize_t,         \
                 Py_ssize_t);                                                                \
    void (*pool2_fwd)(const T *, T *, Py_ssize_t, Py_ssize_t);                               \
    void (*pool2_bwd)(const T *, const T *, T *, Py_ssize_t, Py_ssize_t);                    \
} aigen_ops_##TS;
#define AIGEN_OPS(SFX) {aigen_corr_##SFX, aigen_taps_##SFX, aigen_pool2_fwd_##SFX,           \
                        aigen_pool2_bwd_##SFX}

AIGEN_OPS_TYPE(float, f32)
AIGEN_OPS_TYPE(double, f64)
AIGEN_CONV_PRIMITIVES(float, f32_base, )
AIGEN_CONV_PRIMITIVES(double, f64_base, )
AIGEN_POOL_PRIMITIVES(float, f32_base, )
AIGEN_POOL_PRIMITIVES(double, f64_base, )
static const aigen_ops_f32 aigen_f32_base = AIGEN_OPS(f32_base);
static const aigen_ops_f64 aigen_f64_base = AIGEN_OPS(f64_base);
static aigen_ops_f32 aigen_f32 = AIGEN_OPS(f32_base);
static aigen_ops_f64 aigen_f64 = AIGEN_OPS(f64_base);
#define aigen_corr_f32 (*aigen_f32.corr)
#define aigen_corr_f64 (*aigen_f64.corr)
#define aigen_taps_f32 (*aigen_f32.taps)
#define aigen_taps_f64 (*aigen_f64.taps)
#define aigen_pool2_fwd_f32 (*aigen_f32.pool2_fwd)
#define aigen_pool2_fwd_f64 (*aigen_f64.pool2_fwd)
#define aigen_pool2_bwd_f32 (*aigen_f32.pool2_bwd)
#define aigen_pool2_bwd_f64 (*aigen_f64.pool2_bwd)

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))  \
    && !defined(AIGEN_NO_SIMD_DISPATCH)
#define AIGEN_X86_COMPILED 1
#if defined(__clang__)
#define AIGEN_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define AIGEN_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma,prefer-vector-width=512")))
#endif
#define AIGEN_TARGET_AVX2 __attribute__((target("avx2,fma")))
AIGEN_CONV_PRIMITIVES(float, f32_avx2, AIGEN_TARGET_AVX2)
AIGEN_CONV_PRIMITIVES(double, f64_avx2, AIGEN_TARGET_AVX2)
AIGEN_POOL_PRIMITIVES(float, f32_avx2, AIGEN_TARGET_AVX2)
AIGEN_POOL_PRIMITIVES(double, f64_avx2, AIGEN_TARGET_AVX2)
AIGEN_CONV_PRIMITIVES(float, f32_avx512, AIGEN_TARGET_AVX512)
AIGEN_CONV_PRIMITIVES(double, f64_avx512, AIGEN_TARGET_AVX512)
static const aigen_ops_f32 aigen_f32_avx2 = AIGEN_OPS(f32_avx2);
static const aigen_ops_f64 aigen_f64_avx2 = AIGEN_OPS(f64_avx2);
/* Pooling keeps its AVX2 copy: 16-wide vectors would leave the network's rows of 15 windows
   to scalar code (and hand-written AVX-512 pooling measured no faster on an AMD Zen 5). */
static const aigen_ops_f32 aigen_f32_avx512 = {aigen_corr_f32_avx512, aigen_taps_f32_avx512,
                                               aigen_pool2_fwd_f32_avx2, aigen_pool2_bwd_f32_avx2};
static const aigen_ops_f64 aigen_f64_avx512 = {aigen_corr_f64_avx512, aigen_taps_f64_avx512,
                                               aigen_pool2_fwd_f64_avx2, aigen_pool2_bwd_f64_avx2};
/* The best level this CPU (and its OS) supports: 0 baseline, 1 AVX2 + FMA, 2 AVX-512. */
static int aigen_cpu_simd(void) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 0;
    return __builtin_cpu_supports("avx512f") ? 2 : 1;
}
#else
#define AIGEN_X86_COMPILED 0
static int aigen_cpu_simd(void) { return 0; }
#endif

/* Use the copies of one level (0 baseline, 1 AVX2 + FMA, 2 AVX-512), or the best this CPU
   supports below it.  Returns the level in use. */
static int aigen_set_simd(int level) {
    int best = aigen_cpu_simd();
    if (level > best)
        level = best;
    aigen_f32 = aigen_f32_base;
    aigen_f64 = aigen_f64_base;
#if AIGEN_X86_COMPILED
    if (level == 1) {
        aigen_f32 = aigen_f32_avx2;
        aigen_f64 = aigen_f64_avx2;
    } else if (level == 2) {
        aigen_f32 = aigen_f32_avx512;
        aigen_f64 = aigen_f64_avx512;
    }
    return level;
#else
    return 0;
#endif
}

#endif /* AIGEN_DISPATCH_H */
