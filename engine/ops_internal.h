/* ops_internal.h - helpers shared by the CPU op files (ops_cpu.c: the UNet
 * ops, ops_tx.c: the transformer ops); not part of the op interface. */
#ifndef D3PO_OPS_INTERNAL_H
#define D3PO_OPS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

/* Work (in floats touched) below which an elementwise loop stays serial. */
#define PAR_MIN 32768

static inline int par_threads(size_t work) { return work > PAR_MIN ? ops_get_threads() : 1; }

/* This thread's growing scratch buffer (64-byte aligned, contents not kept
 * when it grows): take it once per op and carve it. */
float *ops_scratch(size_t nfloats);
/* OpenBLAS single-threaded: it is called from OpenMP threads. */
void ops_blas_single(void);
/* C[M,N] (=, or += when acc) A[M,K] @ B[K,N], row-major, on the calling
 * thread: the engine's own product (AVX-512 kernel, else cblas_sgemm);
 * exported for bench/gemm_rate.c. */
void ops_gemm_nn(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int acc,
                 float *C, int ldc);

/* exp(x) for float, vectorisable (no libm call): 2^n * p(r) with
 * x = n*ln2 + r, |r| <= ln2/2 (about), degree-6 polynomial; relative
 * error ~2e-7. fexp_core: no clamping, x must lie in [-87, 88];
 * fexp: input clamped to [-87, 88] (results ~1.6e-38 .. 1.6e38). */
static inline float fexp_core(float x) {
    /* round to nearest by the 1.5*2^23 trick (floorf does not vectorise
     * without -fno-trapping-math) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;          /* ln2 high part (exact) */
    r = r - n * -2.12194440e-4f;             /* ln2 low part */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } e = {.i = ((int32_t)n + 127) << 23}; /* 2^n */
    return p * e.f;
}

static inline float fexp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    return fexp_core(x);
}

#endif
