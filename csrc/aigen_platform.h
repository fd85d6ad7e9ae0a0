/* Compiler and OpenMP portability for the kernels: thread count, restrict, SIMD reduction pragmas,
   and the source digest setup.py bakes in (see aigen/kernels/cython_backend.py). */
#ifndef AIGEN_PLATFORM_H
#define AIGEN_PLATFORM_H

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

#if defined(__GNUC__) || defined(__clang__)
#define AIGEN_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define AIGEN_RESTRICT __restrict
#else
#define AIGEN_RESTRICT
#endif

/* "omp simd reduction" lets the compiler keep one partial sum per vector lane (a fixed,
   deterministic order for a given build); without OpenMP the loops stay scalar. */
#if defined(_OPENMP) && (defined(__GNUC__) || defined(__clang__))
#define AIGEN_SIMD_SUM10 _Pragma("omp simd reduction(+:a0,a1,a2,a3,a4,a5,a6,a7,a8,a9)")
#define AIGEN_SIMD_SUM1 _Pragma("omp simd reduction(+:a0)")
#else
#define AIGEN_SIMD_SUM10
#define AIGEN_SIMD_SUM1
#endif

#endif /* AIGEN_PLATFORM_H */
