/* ops_cpu.c - the CPU reference backend of the op set in ops.h: every UNet
 * layer forward and backward over NCHW float32 buffers, in C11 + OpenMP,
 * with the matrix products done by the engine's own register-blocked
 * AVX-512 kernel where the build has AVX-512 (gemm_nn; ~2x OpenBLAS's
 * AVX2 kernels on these small unpacked operands), else by OpenBLAS
 * (cblas_sgemm), which also takes the few shapes the kernel does not.
 *
 * Threading model. All parallelism comes from OpenMP; OpenBLAS is kept
 * single-threaded (ops_set_threads and every GEMM-heavy op make sure of it).
 * Two thread pools on two cores fight each other (libgomp threads spin
 * after a region while OpenBLAS threads want the same cores), and the
 * UNet's GEMMs are small (M = 32..128): one-thread GEMMs on separate
 * images run faster than two-thread GEMMs on one image (measured on 2
 * cores, 3x3 conv N=64 C=64 16x16 fwd+bwd: 160 vs 120 GFLOP/s). So the
 * batched ops (conv2d, attention) run one parallel region in which
 *  - when N >= threads, each thread takes whole images (dynamic schedule,
 *    no barriers) and parameter gradients go to a per-thread partial,
 *    summed at the end;
 *  - when N < threads (sampling one image), the team shares each image
 *    ("coop" mode): GEMMs are split by rows or columns between threads,
 *    with barriers between the phases.
 * Above the ops, the pixel model's sampling (whole trajectories), D3PO
 * update (timesteps) and pretraining step (chunks) run data-parallel
 * instead (engine/dmodel.c, diffusion.c): each worker thread runs whole
 * forwards and backwards with its ops on one thread (ops_set_local_threads),
 * one fork per call instead of one per op, which keeps two cores busy
 * when the host deschedules one of them now and then.
 * Convolutions are GEMMs over im2col column blocks, except "same" 3x3
 * convs on images >= 16 wide in the per-image mode, which run as K*K
 * GEMMs over a zero-padded copy of the image (implicit GEMM, conv_impl).
 * Scratch memory (im2col columns, partial gradients) is a per-thread
 * growing buffer (_Thread_local). The only shared mutable state is the
 * thread-count setting (an atomic, see ops_set_threads).
 *
 * Gradient rule (ops.h): every backward ACCUMULATES (+=) into each gradient
 * pointer it receives, parameters and activations alike; NULL = skip.
 */
/* As in ops_tx.c: without it GCC keeps fexp()'s clamps as branches and
 * runs SiLU and its backward one float at a time (callgrind: silu_forward
 * was 13% of a batch-4 UNet forward's instructions). Assuming no FP traps
 * only lets it if-convert; no reassociation: results are unchanged. */
#pragma GCC optimize("no-trapping-math")

#include "ops.h"
#include "ops_internal.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Not declared by every cblas.h. */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);

/* ---------------------------------------------------------------- helpers */

/* Per-thread growing scratch buffers (64-byte aligned). Contents are not
 * preserved when one grows; callers take it once per op and carve it.
 *  SCR_OWN    scratch(): each thread's own, inside or outside a region;
 *  SCR_SHARED scratch_shared(): what the CALLING thread of an op shares
 *             with its team (transformed weights, partial sums): the
 *             team's threads, the caller included, carve their own
 *             scratch() inside the region;
 *  SCR_TRANS  scratch_n(SCR_TRANS, n): the transposed operand of one
 *             product in mm() (taken and used inside mm, between a
 *             caller's uses of the other two).
 * Thread-specific keys free them when a thread exits (engine threads and
 * their OpenMP teams come and go). */
enum { SCR_OWN, SCR_SHARED, SCR_TRANS, SCR_N };
static _Thread_local float *scr_buf[SCR_N];
static _Thread_local size_t scr_cap[SCR_N];
static pthread_key_t scr_key[SCR_N];
static pthread_once_t scr_once = PTHREAD_ONCE_INIT;
static void scr_key_make(void) {
    for (int i = 0; i < SCR_N; i++) pthread_key_create(&scr_key[i], free);
}

static float *scratch_n(int which, size_t nfloats) {
    if (nfloats > scr_cap[which]) {
        free(scr_buf[which]);
        size_t cap = nfloats + nfloats / 4 + 1024;
        size_t bytes = (cap * sizeof(float) + 63) & ~(size_t)63;
        scr_buf[which] = aligned_alloc(64, bytes);
        if (!scr_buf[which]) abort(); /* out of memory: nothing sensible to do here */
        scr_cap[which] = cap;
        pthread_once(&scr_once, scr_key_make);
        pthread_setspecific(scr_key[which], scr_buf[which]);
    }
    return scr_buf[which];
}

static float *scratch(size_t nfloats) { return scratch_n(SCR_OWN, nfloats); }
static float *scratch_shared(size_t nfloats) { return scratch_n(SCR_SHARED, nfloats); }

/* OpenBLAS must stay single-threaded: we call it from OpenMP threads. */
static void blas_single(void) {
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

float *ops_scratch(size_t nfloats) { return scratch(nfloats); }
void ops_blas_single(void) { blas_single(); }

/* This thread's share [lo,hi) of n items: the whole range when not coop,
 * else a contiguous block, block sizes rounded up to `align`. */
static void my_range(int coop, int n, int align, int *lo, int *hi) {
    if (!coop) { *lo = 0; *hi = n; return; }
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int chunk = (n + nt - 1) / nt;
    chunk = (chunk + align - 1) / align * align;
    int a = t * chunk, b = a + chunk;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

static void team_sync(int coop) {
    if (coop) {
#pragma omp barrier
    }
}

/* C[M,N] (=, or += when acc) A[M,K] @ B[K,N], row-major, unpacked: the
 * Winograd products M[xi] = U[xi] @ V[xi] (N = a block's tiles, <= ~64;
 * M, K = channels, 16..256; 36 per block, B fresh from the transform)
 * and the other non-transposed products of mm(). OpenBLAS spent ~20% of
 * its time packing these small operands, and its build here runs AVX2
 * kernels. With AVX-512 (-march=native on a CPU that has it) a
 * register-blocked kernel does them: 6 rows x up to 64 columns of C in
 * 24 zmm accumulators, one k at a time (4 loads of B's row, 6 broadcasts
 * of A, 24 FMAs), B's [K, 64] panel staying in cache across the row
 * blocks; the last column vector is masked. Each C entry is summed in k
 * order by FMA: no dependence on the thread count. Without AVX-512 it is
 * cblas_sgemm. */
#if defined(__AVX512F__)
#define GEMM_MR 6

static inline __attribute__((always_inline)) void
gemm_kern(const int mr, const int nv, __mmask16 last, int K, const float *A, int lda,
          const float *B, int ldb, int acc, float *C, int ldc) {
    __m512 c[GEMM_MR][4];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nv; j++) c[i][j] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        const float *b = B + (size_t)k * ldb;
        __m512 bv[4];
        for (int j = 0; j < nv; j++)
            bv[j] = j == nv - 1 ? _mm512_maskz_loadu_ps(last, b + 16 * j)
                                : _mm512_loadu_ps(b + 16 * j);
        for (int i = 0; i < mr; i++) {
            const __m512 a = _mm512_set1_ps(A[(size_t)i * lda + k]);
            for (int j = 0; j < nv; j++) c[i][j] = _mm512_fmadd_ps(a, bv[j], c[i][j]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nv; j++) {
            float *p = C + (size_t)i * ldc + 16 * j;
            const __mmask16 m = j == nv - 1 ? last : (__mmask16)0xffff;
            __m512 v = c[i][j];
            if (acc) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), v);
            _mm512_mask_storeu_ps(p, m, v);
        }
}

static void gemm_nn(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    int acc, float *C, int ldc) {
    for (int n0 = 0; n0 < N; n0 += 64) {
        const int nn = N - n0 < 64 ? N - n0 : 64, nv = (nn + 15) / 16;
        const __mmask16 last = (__mmask16)((1u << (nn - 16 * (nv - 1))) - 1u);
        const float *b = B + n0;
        for (int m0 = 0; m0 < M; m0 += GEMM_MR) {
            const int mr = M - m0 < GEMM_MR ? M - m0 : GEMM_MR;
            const float *a = A + (size_t)m0 * lda;
            float *c = C + (size_t)m0 * ldc + n0;
            switch (mr * 8 + nv) {
#define GEMM_K(r, v) \
    case (r) * 8 + (v): gemm_kern(r, v, last, K, a, lda, b, ldb, acc, c, ldc); break;
#define GEMM_KR(r) GEMM_K(r, 1) GEMM_K(r, 2) GEMM_K(r, 3) GEMM_K(r, 4)
                GEMM_KR(1) GEMM_KR(2) GEMM_KR(3) GEMM_KR(4) GEMM_KR(5) GEMM_KR(6)
#undef GEMM_KR
#undef GEMM_K
            default: assert(0);
            }
        }
    }
}

/* o[c] lane r = r[r] lane c: the classic three-stage 16x16 transpose in
 * registers (unpack ps, unpack pd, two 128-bit lane shuffles). */
static inline __attribute__((always_inline)) void tr16_regs(__m512 o[16], __m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);     /* lane L: r_i[4L], r_i+1[4L], [4L+1].. */
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]); /* lane L: [4L+2], [4L+3] */
    }
    for (int i = 0; i < 16; i += 4) { /* r[i+j], lane L: rows i..i+3 of column 4L+j */
        const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 2]);
        const __m512d c = _mm512_castps_pd(t[i + 1]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int j = 0; j < 4; j++) { /* column 4L+j of all rows from r[j], r[4+j], r[8+j], r[12+j] */
        const __m512 v0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        const __m512 v1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
        const __m512 v2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        const __m512 v3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
        o[j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        o[8 + j] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
        o[4 + j] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        o[12 + j] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
    }
}

/* dst[c][r] = src[r][c] for r < 16, c < 16 (ld in floats); stream:
 * non-temporal stores (dst 64-aligned, ldd a multiple of 16). */
static inline __attribute__((always_inline)) void tr16_st(float *dst, int ldd, const float *src,
                                                          int lds, int stream) {
    __m512 r[16], o[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (size_t)i * lds);
    tr16_regs(o, r);
    for (int q = 0; q < 16; q++) {
        if (stream) _mm512_stream_ps(dst + (size_t)q * ldd, o[q]);
        else _mm512_storeu_ps(dst + (size_t)q * ldd, o[q]);
    }
}

/* dst[c][r] = src[r][c] for r < 16, c < 9: sixteen 3x3 kernels (rows of
 * 9 taps at stride lds) to tap-major rows (the weight transform's
 * relayout): masked loads, only the 9 tap rows stored. */
static inline void tr16x9(float *dst, int ldd, const float *src, int lds) {
    __m512 r[16], o[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_maskz_loadu_ps(0x1ff, src + (size_t)i * lds);
    tr16_regs(o, r);
    for (int q = 0; q < 9; q++) _mm512_storeu_ps(dst + (size_t)q * ldd, o[q]);
}

/* dst[c][r] = src[r][c] for r < R, c < Cn (dst: [Cn, ldd]): 16x16 blocks
 * in registers, scalar edges. transpose_out: for a dst that is not read
 * again soon (the kept Winograd transforms): where dst and ldd keep every
 * 16-float row on its own cache line, non-temporal stores (no read of
 * the lines they overwrite). */
static void transpose_st(float *dst, int ldd, const float *src, int lds, int R, int Cn,
                         int stream) {
    const int R16 = R & ~15, C16 = Cn & ~15;
    for (int r = 0; r < R16; r += 16)
        for (int c = 0; c < C16; c += 16)
            if (stream)
                tr16_st(dst + (size_t)c * ldd + r, ldd, src + (size_t)r * lds + c, lds, 1);
            else
                tr16_st(dst + (size_t)c * ldd + r, ldd, src + (size_t)r * lds + c, lds, 0);
    for (int r = 0; r < R; r++) {
        const int c0 = r < R16 ? C16 : 0;
        for (int c = c0; c < Cn; c++) dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
    }
}
static void transpose(float *dst, int ldd, const float *src, int lds, int R, int Cn) {
    transpose_st(dst, ldd, src, lds, R, Cn, 0);
}
static void transpose_out(float *dst, int ldd, const float *src, int lds, int R, int Cn) {
    transpose_st(dst, ldd, src, lds, R, Cn,
                 ((uintptr_t)dst & 63) == 0 && ldd % 16 == 0);
    _mm_sfence();
}

/* C[M,N] (=, or += when acc) A[M,K] @ B[N,K]^T (the Winograd weight
 * gradient's product, K = tiles): B is transposed into bt[K,N] and
 * multiplied by gemm_nn. */
static void gemm_nt(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    int acc, float *C, int ldc, float *bt) {
    transpose(bt, N, B, ldb, N, K);
    gemm_nn(M, N, K, A, lda, bt, N, acc, C, ldc);
}
#else
static void transpose(float *dst, int ldd, const float *src, int lds, int R, int Cn) {
    for (int r = 0; r < R; r++)
        for (int c = 0; c < Cn; c++) dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
}
#define transpose_out transpose
static void gemm_nn(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    int acc, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb,
                acc ? 1.0f : 0.0f, C, ldc);
}
/* as with AVX-512, B transposed first: the product of the kept transposed
 * Winograd transforms (wg_backward) is then the same sum, bit for bit */
static void gemm_nt(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    int acc, float *C, int ldc, float *bt) {
    transpose(bt, N, B, ldb, N, K);
    gemm_nn(M, N, K, A, lda, bt, N, acc, C, ldc);
}
#endif

void ops_gemm_nn(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int acc,
                 float *C, int ldc) {
    gemm_nn(M, N, K, A, lda, B, ldb, acc, C, ldc);
}

/* Row-major C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C.
 * In coop mode each thread of the team computes a block of C (split along
 * the larger of M and N), so the team together computes all of C. */
static void mm(int coop, int ta, int tb, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta,
               float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    int lo, hi;
    if (N >= M) {
        my_range(coop, N, 16, &lo, &hi);
        if (lo >= hi) return;
        B = tb ? B + (size_t)lo * ldb : B + lo;
        C += lo;
        N = hi - lo;
    } else {
        my_range(coop, M, 16, &lo, &hi);
        if (lo >= hi) return;
        A = ta ? A + lo : A + (size_t)lo * lda;
        C += (size_t)lo * ldc;
        M = hi - lo;
    }
    if (K <= 0) { /* empty sum: C = beta*C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
        return;
    }
#if defined(__AVX512F__)
    /* The kernel wants B's rows contiguous in N: a transposed operand is
     * transposed first (K*N or M*K floats against M*N*K multiply-adds),
     * where the other side has >= 32 rows to pay for it and C >= 16
     * columns to fill the vectors; else OpenBLAS. */
    if (alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && !(ta && tb)) {
        const int acc = beta == 1.0f;
        if (!ta && !tb) {
            gemm_nn(M, N, K, A, lda, B, ldb, acc, C, ldc);
            return;
        }
        if (tb && M >= 32 && N >= 16) { /* B: [N,K] */
            gemm_nt(M, N, K, A, lda, B, ldb, acc, C, ldc, scratch_n(SCR_TRANS, (size_t)K * N));
            return;
        }
        if (ta && N >= 32 && M >= 16) { /* A: [K,M] -> at[M,K] */
            float *at = scratch_n(SCR_TRANS, (size_t)M * K);
            transpose(at, K, A, lda, K, M);
            gemm_nn(M, N, K, at, K, B, ldb, acc, C, ldc);
            return;
        }
    }
#endif
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
                beta, C, ldc);
}

/* ----------------------------------------------------------------- conv2d */

typedef struct {
    int C, H, W, OC, K, stride, pad, OH, OW;
    int P;      /* OH*OW: output pixels of one image */
    int CKK;    /* C*K*K: rows of the column matrix */
    int direct; /* 1x1, stride 1, pad 0: the input is its own column matrix */
} conv_shape;

static conv_shape conv_make(int C, int H, int W, int OC, int K, int stride, int pad) {
    conv_shape s;
    s.C = C; s.H = H; s.W = W; s.OC = OC; s.K = K; s.stride = stride; s.pad = pad;
    s.OH = (H + 2 * pad - K) / stride + 1;
    s.OW = (W + 2 * pad - K) / stride + 1;
    s.P = s.OH * s.OW;
    s.CKK = C * K * K;
    s.direct = (K == 1 && stride == 1 && pad == 0);
    return s;
}

/* Output pixels [oh0,oh1) x [0,OW) of one image form a "block"; the
 * column matrix of a block is col[CKK, Pb], Pb = (oh1-oh0)*OW, row
 * r = (c*K + kh)*K + kw:
 *   col[r, (oh-oh0)*OW + ow] = x[c, oh*s - pad + kh, ow*s - pad + kw]
 * (0 outside the image). Blocks keep col inside the L2 cache. */

/* For kernel offset (kh,kw): the valid output ranges, i.e. the oh with
 * 0 <= oh*s-pad+kh < H and the ow with 0 <= ow*s-pad+kw < W. */
static void valid_range(int k, int pad, int st, int n_in, int n_out, int *lo, int *hi) {
    int a = pad - k > 0 ? (pad - k + st - 1) / st : 0;
    int b = n_in - 1 + pad - k < 0 ? 0 : (n_in - 1 + pad - k) / st + 1;
    if (b > n_out) b = n_out;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* "Same" stride-1 conv (OH == H, OW == W): a row of col is the channel
 * image shifted by (kh-pad)*W + (kw-pad) in flat index, with the wrapped
 * columns zeroed. One long copy instead of OH short ones. */
static int conv_same(const conv_shape *s) {
    return s->stride == 1 && s->OH == s->H && s->OW == s->W;
}

/* Rows [r0,r1) of the column matrix of block [oh0,oh1).
 * x: [C,H,W] -> col: [CKK, Pb] */
static void im2col_block(float *col, const float *x, const conv_shape *s, int r0, int r1,
                         int oh0, int oh1) {
    const int K = s->K, H = s->H, W = s->W, OW = s->OW, st = s->stride, pad = s->pad;
    const int Pb = (oh1 - oh0) * OW, same = conv_same(s);
    for (int r = r0; r < r1; r++) {
        const int c = r / (K * K), kh = (r / K) % K, kw = r % K;
        const float *xc = x + (size_t)c * H * W;
        float *dst = col + (size_t)r * Pb;
        int hl, hh, wl, wh;
        valid_range(kh, pad, st, H, s->OH, &hl, &hh);
        valid_range(kw, pad, st, W, OW, &wl, &wh);
        hl = hl > oh0 ? hl : oh0;
        hh = hh < oh1 ? hh : oh1;
        if (hl > hh) hl = hh;
        /* rows outside the image */
        memset(dst, 0, sizeof(float) * (size_t)(hl - oh0) * OW);
        memset(dst + (size_t)(hh - oh0) * OW, 0, sizeof(float) * (size_t)(oh1 - hh) * OW);
        if (same) {
            const int shift = (kh - pad) * W + (kw - pad);
            int p0 = hl * W, p1 = hh * W; /* pixel range, src = p + shift */
            if (p0 + shift < 0) p0 = -shift;
            if (p1 + shift > H * W) p1 = H * W - shift;
            if (p1 > p0)
                memcpy(dst + (p0 - oh0 * W), xc + p0 + shift, sizeof(float) * (size_t)(p1 - p0));
            for (int oh = hl; oh < hh; oh++) { /* wrapped columns */
                float *d = dst + (size_t)(oh - oh0) * OW;
                for (int ow = 0; ow < wl; ow++) d[ow] = 0.0f;
                for (int ow = wh; ow < OW; ow++) d[ow] = 0.0f;
            }
            continue;
        }
        for (int oh = hl; oh < hh; oh++) {
            const float *xr = xc + (size_t)(oh * st - pad + kh) * W; /* iw = ow*st - pad + kw */
            float *d = dst + (size_t)(oh - oh0) * OW;
            for (int ow = 0; ow < wl; ow++) d[ow] = 0.0f;
            if (st == 1) {
                const int sh = kw - pad;
                for (int ow = wl; ow < wh; ow++) d[ow] = xr[ow + sh];
            } else {
                for (int ow = wl; ow < wh; ow++) d[ow] = xr[ow * st - pad + kw];
            }
            for (int ow = wh; ow < OW; ow++) d[ow] = 0.0f;
        }
    }
}

/* Inverse of im2col_block, accumulating, for channels [c0,c1):
 * dx[c, ih, iw] += every entry of dcol that im2col read from there.
 * dcol: [CKK, Pb] (its entries for outside pixels are clobbered) ->
 * dx: [C,H,W]. Channels are disjoint between threads. */
static void col2im_block(float *dx, float *dcol, const conv_shape *s, int c0, int c1,
                         int oh0, int oh1) {
    const int K = s->K, H = s->H, W = s->W, OW = s->OW, st = s->stride, pad = s->pad;
    const int Pb = (oh1 - oh0) * OW, same = conv_same(s);
    for (int c = c0; c < c1; c++) {
        float *xc = dx + (size_t)c * H * W;
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                float *src = dcol + (size_t)((c * K + kh) * K + kw) * Pb;
                int hl, hh, wl, wh;
                valid_range(kh, pad, st, H, s->OH, &hl, &hh);
                valid_range(kw, pad, st, W, OW, &wl, &wh);
                hl = hl > oh0 ? hl : oh0;
                hh = hh < oh1 ? hh : oh1;
                if (same) {
                    /* zero the wrapped columns, then one long add */
                    for (int oh = hl; oh < hh; oh++) {
                        float *d = src + (size_t)(oh - oh0) * OW;
                        for (int ow = 0; ow < wl; ow++) d[ow] = 0.0f;
                        for (int ow = wh; ow < OW; ow++) d[ow] = 0.0f;
                    }
                    const int shift = (kh - pad) * W + (kw - pad);
                    int p0 = hl * W, p1 = hh * W;
                    if (p0 + shift < 0) p0 = -shift;
                    if (p1 + shift > H * W) p1 = H * W - shift;
                    float *xs = xc + shift + p0;
                    const float *d = src + (p0 - oh0 * W);
                    for (int i = 0; i < p1 - p0; i++) xs[i] += d[i];
                    continue;
                }
                for (int oh = hl; oh < hh; oh++) {
                    float *xr = xc + (size_t)(oh * st - pad + kh) * W; /* iw = ow*st - pad + kw */
                    const float *d = src + (size_t)(oh - oh0) * OW;
                    if (st == 1) {
                        const int sh = kw - pad;
                        for (int ow = wl; ow < wh; ow++) xr[ow + sh] += d[ow];
                    } else {
                        for (int ow = wl; ow < wh; ow++) xr[ow * st - pad + kw] += d[ow];
                    }
                }
            }
    }
}

#ifndef CONV_COL_BYTES
#define CONV_COL_BYTES (640 * 1024) /* column block budget: most of a 1 MiB L2 */
#endif

/* Output rows per block: the column block stays under CONV_COL_BYTES. */
static int conv_block_rows(const conv_shape *s) {
    if (s->direct) return s->OH;
    size_t row = (size_t)s->CKK * s->OW * sizeof(float);
    int rb = (int)(CONV_COL_BYTES / (row ? row : 1));
    if (rb < 1) rb = 1;
    if (rb > s->OH) rb = s->OH;
    return rb;
}

/* Floats of column scratch for one image. */
static size_t conv_col_floats(const conv_shape *s) {
    return s->direct ? 0 : (size_t)s->CKK * conv_block_rows(s) * s->OW;
}

#ifndef CONV_IMPL_MIN_W
/* At 8x8 the pad columns waste 25% and the gain over im2col measured
 * ~0.5% of a pretrain step: not worth it. */
#define CONV_IMPL_MIN_W 16
#endif

/* Implicit GEMM for "same" stride-1 convs (K = 2*pad+1) on wide images,
 * used when each thread takes whole images. The image is copied into a
 * zero-padded plane xp[C, Hp*Wp + K-1] (Wp = W+2*pad, Hp = H+2*pad);
 * computing the output on the padded width, q = oh*Wp + ow for ow in
 * [0,Wp), makes kernel tap k = (kh,kw) a plain offset kh*Wp + kw into xp:
 *   o[OC, Q] = sum_k w_k[OC,C] @ xp[C, off_k : off_k+Q],  Q = H*Wp,
 * K*K GEMMs with K-dim C and no column matrix (im2col and col2im took
 * ~20% of a 32x32 conv); columns ow >= W of o are discarded. The input
 * gradient is the same with the flipped kernel over the padded dout.
 * w_k is w re-laid [K*K, OC, C] once per call. */
static int conv_impl(const conv_shape *s) {
    return conv_same(s) && !s->direct && s->K == 2 * s->pad + 1 && s->W >= CONV_IMPL_MIN_W;
}

/* Floats of a padded plane of n channels (with the K-1 overrun slack). */
static size_t conv_pad_floats(const conv_shape *s, int n) {
    return (size_t)n * ((size_t)(s->H + 2 * s->pad) * (s->W + 2 * s->pad) + s->K - 1);
}

/* w: [OC,C,K,K] -> wk: [K*K,OC,C] (malloc'd; free with free). */
static float *conv_wk(const float *w, const conv_shape *s) {
    const int KK = s->K * s->K, OC = s->OC, C = s->C;
    float *wk = malloc(sizeof(float) * (size_t)KK * OC * C);
    if (!wk) abort(); /* out of memory: nothing sensible to do here */
    for (int oc = 0; oc < OC; oc++)
        for (int c = 0; c < C; c++)
            for (int k = 0; k < KK; k++)
                wk[((size_t)k * OC + oc) * C + c] = w[((size_t)oc * C + c) * KK + k];
    return wk;
}

/* src: [n, H, W] -> dst: [n, Hp*Wp + K-1], zero border and slack. */
static void conv_pad_plane(float *dst, const float *src, const conv_shape *s, int n) {
    const int H = s->H, W = s->W, pad = s->pad, Wp = W + 2 * pad;
    const size_t plane = (size_t)(H + 2 * pad) * Wp + s->K - 1;
    for (int c = 0; c < n; c++) {
        float *d = dst + (size_t)c * plane;
        const float *x = src + (size_t)c * H * W;
        memset(d, 0, sizeof(float) * ((size_t)pad * Wp + pad));
        for (int h = 0; h < H; h++) {
            float *row = d + (size_t)(h + pad) * Wp + pad;
            memcpy(row, x + (size_t)h * W, sizeof(float) * W);
            /* right pad of this row + left pad of the next */
            memset(row + W, 0, sizeof(float) * 2 * pad);
        }
        float *tail = d + (size_t)(H + pad) * Wp + pad;
        memset(tail, 0, sizeof(float) * (size_t)(plane - (size_t)(tail - d)));
    }
}

/* Implicit-GEMM forward of one image (see conv_impl). x: [C,H,W],
 * out: [OC,P], wk: [K*K,OC,C], buf: conv_pad_floats(C) + OC*H*Wp. */
static void conv_fwd_impl(float *out, const float *x, const float *wk, const float *b,
                          float *buf, const conv_shape *s) {
    const int K = s->K, C = s->C, OC = s->OC, H = s->H, W = s->W;
    const int Wp = W + 2 * s->pad, Q = H * Wp;
    const int ld = (int)(conv_pad_floats(s, 1));
    float *xp = buf, *o = buf + conv_pad_floats(s, C);
    conv_pad_plane(xp, x, s, C);
    for (int kh = 0; kh < K; kh++)
        for (int kw = 0; kw < K; kw++) {
            const int k = kh * K + kw;
            /* o[OC,Q] (+)= w_k[OC,C] @ xp[C, off : off+Q] */
            mm(0, 0, 0, OC, Q, C, 1.0f, wk + (size_t)k * OC * C, C, xp + kh * Wp + kw, ld,
               k ? 1.0f : 0.0f, o, Q);
        }
    for (int oc = 0; oc < OC; oc++) {
        const float bv = b ? b[oc] : 0.0f;
        for (int h = 0; h < H; h++) {
            const float *src = o + (size_t)oc * Q + (size_t)h * Wp;
            float *dst = out + ((size_t)oc * H + h) * W;
            for (int i = 0; i < W; i++) dst[i] = src[i] + bv;
        }
    }
}

/* Implicit-GEMM input gradient of one image (see conv_impl):
 * dx[C,H,W] += sum_k w_k^T @ dp[:, off'_k : off'_k+Q], dp = dout[OC,P]
 * padded, off'_k = (K-1-kh)*Wp + (K-1-kw). buf: conv_pad_floats(OC) + C*H*Wp. */
static void conv_bwd_dx_impl(float *dx, const float *dout, const float *wk, float *buf,
                             const conv_shape *s) {
    const int K = s->K, C = s->C, OC = s->OC, H = s->H, W = s->W;
    const int Wp = W + 2 * s->pad, Q = H * Wp;
    const int ld = (int)(conv_pad_floats(s, 1));
    float *dp = buf, *g = buf + conv_pad_floats(s, OC);
    conv_pad_plane(dp, dout, s, OC);
    for (int kh = 0; kh < K; kh++)
        for (int kw = 0; kw < K; kw++) {
            const int k = kh * K + kw, off = (K - 1 - kh) * Wp + (K - 1 - kw);
            /* g[C,Q] (+)= w_k[OC,C]^T @ dp[OC, off : off+Q] */
            mm(0, 1, 0, C, Q, OC, 1.0f, wk + (size_t)k * OC * C, C, dp + off, ld,
               k ? 1.0f : 0.0f, g, Q);
        }
    for (int c = 0; c < C; c++)
        for (int h = 0; h < H; h++) {
            const float *src = g + (size_t)c * Q + (size_t)h * Wp;
            float *dst = dx + ((size_t)c * H + h) * W;
            for (int i = 0; i < W; i++) dst[i] += src[i];
        }
}

/* ------------------------------------------------ Winograd F(4x4, 3x3) */

/* "Same" 3x3 convolutions (stride 1, pad 1) with enough channels run as
 * Winograd F(4x4,3x3) (Lavin & Gray 2016): each 4x4 block of output
 * pixels ("tile") comes from the 6x6 input patch around it,
 *   Y = At [ sum_c (G g G^T) (.) (Bt d B) ] A,
 * so the multiply-adds of the channel sums become 36 GEMMs, one per
 * point xi of the 6x6 transform domain,
 *   M[xi][OC,T] = U[xi][OC,C] @ V[xi][C,T],
 * with U = G g G^T (weights) and V = Bt d B (input patches), T tiles.
 * That is 36 products per 16 outputs instead of 144: 4x fewer GEMM
 * flops than im2col, for ~1e-6 relative rounding (the transforms'
 * constants are 1/4, 1/6, 1/24 and powers of two up to 8).
 *
 * Backward, both from Mh = At^T dY At per 4x4 tile of dout (the adjoint
 * of the output transform):
 *  - weight gradient, the adjoint of the forward in g:
 *    dg = G^T [ sum_tiles Mh[xi] V[xi]^T ] G,
 *    i.e. 36 GEMMs dU[xi][OC,C] += Mh[xi][OC,T] @ V[xi][C,T]^T;
 *  - input gradient, the adjoint of the forward in d: 36 GEMMs
 *    dV[xi][C,T] = U[xi]^T @ Mh[xi], then per tile the patch B dV Bt
 *    added into the 6x6 input window it came from (windows overlap by
 *    two rows and columns; wg_in_adj). (It was the forward over dout
 *    with the flipped kernel, with an input and an output transform of
 *    its own: a pretraining step takes ~2.5% less this way,
 *    bench/results/2026-12-06-cpu-perf-4.txt.)
 *
 * Work is split in blocks of whole tile rows, (image, tile row) pairs
 * flattened over the batch, about WG_TILES tiles per block, assigned to
 * threads statically: outputs are written by one block each, weight
 * gradients are per-thread partials summed in thread order (results
 * depend on the thread count only, like the rest of the backend).
 *
 * Transforms run per channel over a block's whole run of tiles, every
 * pass a loop over the tiles (V[xi][c][t], t contiguous), so they
 * vectorise; see wg_in, wg_out, wg_dout and wg_in_adj. */

#ifndef WG_TILES
#define WG_TILES 64 /* tiles per block: V and M of a block stay in L2 */
#endif
#ifndef WG_MIN_CH
#define WG_MIN_CH 16 /* narrower GEMMs (conv_in, conv_out) stay on im2col */
#endif

static int conv_wino(const conv_shape *s) {
    return s->K == 3 && s->stride == 1 && s->pad == 1 && s->C >= WG_MIN_CH &&
           s->OC >= WG_MIN_CH && s->H >= 4 && s->W >= 4;
}

/* Bt (6x6) applied to d0..d5 */
#define WG_BT(o, d0, d1, d2, d3, d4, d5)                 \
    do {                                                 \
        (o)[0] = 4.0f * (d0) - 5.0f * (d2) + (d4);       \
        (o)[1] = -4.0f * ((d1) + (d2)) + (d3) + (d4);    \
        (o)[2] = 4.0f * ((d1) - (d2)) - (d3) + (d4);     \
        (o)[3] = 2.0f * ((d3) - (d1)) - (d2) + (d4);     \
        (o)[4] = 2.0f * ((d1) - (d3)) - (d2) + (d4);     \
        (o)[5] = 4.0f * (d1) - 5.0f * (d3) + (d5);       \
    } while (0)
/* Bt^T (6x6) applied to v0..v5: the adjoint of WG_BT (floats or vectors) */
#define WG_BTT(o, v0, v1, v2, v3, v4, v5)                              \
    do {                                                               \
        const __typeof__((v1) + (v2)) p12 = (v1) + (v2), n12 = (v1) - (v2); \
        const __typeof__((v3) + (v4)) p34 = (v3) + (v4), n34 = (v3) - (v4); \
        (o)[0] = 4.0f * (v0);                                          \
        (o)[1] = 4.0f * ((v5) - n12) - 2.0f * n34;                     \
        (o)[2] = -5.0f * (v0) - 4.0f * p12 - p34;                      \
        (o)[3] = n12 + 2.0f * n34 - 5.0f * (v5);                       \
        (o)[4] = (v0) + p12 + p34;                                     \
        (o)[5] = (v5);                                                 \
    } while (0)
/* At (4x6) applied to m0..m5 */
#define WG_AT(o, m0, m1, m2, m3, m4, m5)                               \
    do {                                                               \
        const float p12 = (m1) + (m2), n12 = (m1) - (m2);              \
        const float p34 = (m3) + (m4), n34 = (m3) - (m4);              \
        (o)[0] = (m0) + p12 + p34;                                     \
        (o)[1] = n12 + 2.0f * n34;                                     \
        (o)[2] = p12 + 4.0f * p34;                                     \
        (o)[3] = n12 + 8.0f * n34 + (m5);                              \
    } while (0)
/* At^T (6x4) applied to y0..y3: the adjoint of WG_AT */
#define WG_ATT(o, y0, y1, y2, y3)                                      \
    do {                                                               \
        const float e02 = (y0) + (y2), o13 = (y1) + (y3);              \
        const float e4 = (y0) + 4.0f * (y2), o8 = 2.0f * (y1) + 8.0f * (y3); \
        (o)[0] = (y0);                                                 \
        (o)[1] = e02 + o13;                                            \
        (o)[2] = e02 - o13;                                            \
        (o)[3] = e4 + o8;                                              \
        (o)[4] = e4 - o8;                                              \
        (o)[5] = (y3);                                                 \
    } while (0)
/* G (6x3) applied to g0..g2 */
#define WG_G(o, g0, g1, g2)                                                    \
    do {                                                                       \
        (o)[0] = (g0) * 0.25f;                                                 \
        (o)[1] = -((g0) + (g1) + (g2)) * (1.0f / 6.0f);                        \
        (o)[2] = -((g0) - (g1) + (g2)) * (1.0f / 6.0f);                        \
        (o)[3] = (g0) * (1.0f / 24.0f) + (g1) * (1.0f / 12.0f) + (g2) * (1.0f / 6.0f); \
        (o)[4] = (g0) * (1.0f / 24.0f) - (g1) * (1.0f / 12.0f) + (g2) * (1.0f / 6.0f); \
        (o)[5] = (g2);                                                         \
    } while (0)
/* G^T (3x6) applied to u[0..5] */
#define WG_GT(o, u)                                                                       \
    do {                                                                                  \
        (o)[0] = (u)[0] * 0.25f - ((u)[1] + (u)[2]) * (1.0f / 6.0f) +                     \
                 ((u)[3] + (u)[4]) * (1.0f / 24.0f);                                      \
        (o)[1] = ((u)[2] - (u)[1]) * (1.0f / 6.0f) + ((u)[3] - (u)[4]) * (1.0f / 12.0f);  \
        (o)[2] = ((u)[3] + (u)[4] - (u)[1] - (u)[2]) * (1.0f / 6.0f) + (u)[5];            \
    } while (0)

typedef struct {
    int N, C, H, W; /* the image batch being transformed */
    int nty, ntx;   /* tiles per column and row */
} wg_geom;

static wg_geom wg_make(int N, int C, int H, int W) {
    wg_geom g = {N, C, H, W, (H + 3) / 4, (W + 3) / 4};
    return g;
}

/* Transform scratch per thread for blocks of up to rpb tile rows (wg_in:
 * D and CK, 36 floats per tile each, and the padded and phase-split rows;
 * wg_in_adj: 30 per tile, over tiles rounded up to 16, and a few rows;
 * wg_out and wg_dout need less). */
static size_t wg_rb_floats(const wg_geom *g, int rpb) {
    const size_t tb = (size_t)rpb * g->ntx, rows = 4 * (size_t)rpb + 2;
    const size_t wr = 4 * (size_t)(g->ntx + 1);
    const size_t adj = 30 * (tb + 17) + 10 * (size_t)g->ntx + 12 + 16; /* wg_in_adj */
    const size_t fwd = 72 * tb + 2 * rows * wr;
    return (fwd > adj ? fwd : adj) + 64;
}

/* The transforms over n tiles at once: o + k*os (output k) from six (four)
 * input rows, every loop contiguous in the tile index. */
static inline void wg_bt_rows(float *restrict o, size_t os, const float *d0, const float *d1,
                              const float *d2, const float *d3, const float *d4,
                              const float *d5, int n) {
    float *restrict o0 = o, *restrict o1 = o + os, *restrict o2 = o + 2 * os;
    float *restrict o3 = o + 3 * os, *restrict o4 = o + 4 * os, *restrict o5 = o + 5 * os;
#pragma omp simd
    for (int t = 0; t < n; t++) {
        float v[6];
        WG_BT(v, d0[t], d1[t], d2[t], d3[t], d4[t], d5[t]);
        o0[t] = v[0]; o1[t] = v[1]; o2[t] = v[2]; o3[t] = v[3]; o4[t] = v[4]; o5[t] = v[5];
    }
}
static inline void wg_at_rows(float *restrict o, size_t os, const float *m0, const float *m1,
                              const float *m2, const float *m3, const float *m4,
                              const float *m5, int n) {
    float *restrict o0 = o, *restrict o1 = o + os, *restrict o2 = o + 2 * os;
    float *restrict o3 = o + 3 * os;
#pragma omp simd
    for (int t = 0; t < n; t++) {
        float v[4];
        WG_AT(v, m0[t], m1[t], m2[t], m3[t], m4[t], m5[t]);
        o0[t] = v[0]; o1[t] = v[1]; o2[t] = v[2]; o3[t] = v[3];
    }
}
static inline void wg_att_rows(float *restrict o, size_t os, const float *y0, const float *y1,
                               const float *y2, const float *y3, int n) {
    float *restrict o0 = o, *restrict o1 = o + os, *restrict o2 = o + 2 * os;
    float *restrict o3 = o + 3 * os, *restrict o4 = o + 4 * os, *restrict o5 = o + 5 * os;
#pragma omp simd
    for (int t = 0; t < n; t++) {
        float v[6];
        WG_ATT(v, y0[t], y1[t], y2[t], y3[t]);
        o0[t] = v[0]; o1[t] = v[1]; o2[t] = v[2]; o3[t] = v[3]; o4[t] = v[4]; o5[t] = v[5];
    }
}

static inline void wg_g_rows(float *restrict o, size_t os, const float *g0, const float *g1,
                             const float *g2, int n) {
    float *restrict o0 = o, *restrict o1 = o + os, *restrict o2 = o + 2 * os;
    float *restrict o3 = o + 3 * os, *restrict o4 = o + 4 * os, *restrict o5 = o + 5 * os;
#pragma omp simd
    for (int t = 0; t < n; t++) {
        float v[6];
        WG_G(v, g0[t], g1[t], g2[t]);
        o0[t] = v[0]; o1[t] = v[1]; o2[t] = v[2]; o3[t] = v[3]; o4[t] = v[4]; o5[t] = v[5];
    }
}
static inline void wg_gt_rows(float *restrict o, size_t os, const float *u0, const float *u1,
                              const float *u2, const float *u3, const float *u4,
                              const float *u5, int n) {
    float *restrict o0 = o, *restrict o1 = o + os, *restrict o2 = o + 2 * os;
#pragma omp simd
    for (int t = 0; t < n; t++) {
        const float u[6] = {u0[t], u1[t], u2[t], u3[t], u4[t], u5[t]};
        float v[3];
        WG_GT(v, u);
        o0[t] = v[0]; o1[t] = v[1]; o2[t] = v[2];
    }
}

/* U[36][OC][C] = G w[oc][c] G^T into U (36 + 9 + 18 floats per kernel:
 * the rest is the transform's scratch); trans: U^T, [36][C][OC]. Taps are first laid out
 * [9][OC*C], so both passes of the transform run over contiguous kernels.
 * Chunks of kernels go to the nt threads (serial, it kept the team
 * waiting: 6% of a 2-thread pretraining step). wg_weights: the same in
 * the calling thread's shared scratch (valid until its next
 * scratch_shared). */
#ifndef WG_WCHUNK
#define WG_WCHUNK 2048 /* kernels per chunk of the weight transform */
#endif
static void wg_weights_to(float *U, const float *w, int OC, int C, int trans, int nt) {
    const int K = OC * C, nch = (K + WG_WCHUNK - 1) / WG_WCHUNK;
    float *wt = U + 36 * (size_t)K, *T = wt + 9 * (size_t)K; /* wt[tap][k], T[a][s][k] */
#pragma omp parallel for schedule(static) num_threads(nch > 1 ? nt : 1)
    for (int ch = 0; ch < nch; ch++) {
        const int k0 = ch * WG_WCHUNK, k1 = k0 + WG_WCHUNK < K ? k0 + WG_WCHUNK : K, n = k1 - k0;
        /* k in U's layout, k = o*inner + in: [OC][C], trans [C][OC] */
        const int inner = trans ? OC : C;
        for (int k = k0, o = k0 / inner, in = k0 % inner; k < k1;) {
            int step = 1;
            /* the kernel w[oc][c] of U[.][k] */
            const float *g = w + (trans ? (size_t)in * C + o : (size_t)k) * 9;
#if defined(__AVX512F__)
            /* 16 kernels at a time by a register transpose (the scalar
             * copy was ~70% of the transform on Zen 4: 9 single-float
             * stores per kernel); transposed, 16 consecutive in at stride 9C */
            if (k + 16 <= k1 && (!trans || in + 16 <= inner)) {
                tr16x9(wt + k, K, g, trans ? 9 * C : 9);
                step = 16;
            } else
#endif
                for (int i = 0; i < 9; i++) wt[(size_t)i * K + k] = g[i];
            k += step;
            for (in += step; in >= inner; in -= inner) o++;
        }
        for (int s = 0; s < 3; s++) /* T[.][s] = G wt[:, s] */
            wg_g_rows(T + (size_t)s * K + k0, 3 * (size_t)K, wt + (size_t)s * K + k0,
                      wt + (size_t)(3 + s) * K + k0, wt + (size_t)(6 + s) * K + k0, n);
        for (int a = 0; a < 6; a++) { /* U[a][.] = T[a] G^T */
            const float *t = T + (size_t)a * 3 * K + k0;
            wg_g_rows(U + (size_t)a * 6 * K + k0, K, t, t + K, t + 2 * K, n);
        }
    }
}
#define WG_WEIGHTS_FLOATS(K) ((size_t)(36 + 9 + 18) * (K))
static float *wg_weights(const float *w, int OC, int C, int nt) {
    float *U = scratch_shared(WG_WEIGHTS_FLOATS((size_t)OC * C));
    wg_weights_to(U, w, OC, C, 0, nt);
    return U;
}

/* dw[k][3][3] += G^T dU[.][k] G for kernels k in [k0,k1) of K, dU[36][K]
 * the sum of the ngr partials parts[gr][36][K]. tmp: 36+18+9 floats per
 * kernel of the range. */
static void wg_wgrad(float *dw, const float *parts, int ngr, size_t K, int k0, int k1,
                     float *tmp) {
    const int n = k1 - k0;
    float *u = tmp, *T = u + 36 * (size_t)n, *d = T + 18 * (size_t)n; /* u[xi], T[a][s], d[tap] */
    const size_t ps = 36 * K; /* from one partial to the next */
    for (int xi = 0; xi < 36; xi++) {
        float *restrict ux = u + (size_t)xi * n;
        const float *p0 = parts + (size_t)xi * K + k0;
        /* the partials in group order, up to four in one pass */
        const float *p1 = p0 + (ngr > 1 ? ps : 0), *p2 = p0 + (ngr > 2 ? 2 * ps : 0);
        const float *p3 = p0 + (ngr > 3 ? 3 * ps : 0);
        if (ngr >= 4) {
#pragma omp simd
            for (int i = 0; i < n; i++) ux[i] = p0[i] + p1[i] + p2[i] + p3[i];
        } else if (ngr == 3) {
#pragma omp simd
            for (int i = 0; i < n; i++) ux[i] = p0[i] + p1[i] + p2[i];
        } else if (ngr == 2) {
#pragma omp simd
            for (int i = 0; i < n; i++) ux[i] = p0[i] + p1[i];
        } else {
            memcpy(ux, p0, sizeof(float) * n);
        }
        for (int gr = 4; gr < ngr; gr++) {
            const float *p = p0 + gr * ps;
#pragma omp simd
            for (int i = 0; i < n; i++) ux[i] += p[i];
        }
    }
    for (int a = 0; a < 6; a++) { /* T[a][.] = dU[a][.] G */
        const float *r = u + (size_t)a * 6 * n;
        wg_gt_rows(T + (size_t)a * 3 * n, n, r, r + n, r + 2 * n, r + 3 * n, r + 4 * n,
                   r + 5 * n, n);
    }
    for (int s = 0; s < 3; s++) { /* d[.][s] = G^T T[.][s] */
        const float *t = T + (size_t)s * n;
        const size_t ts = 3 * (size_t)n;
        wg_gt_rows(d + (size_t)s * n, 3 * (size_t)n, t, t + ts, t + 2 * ts, t + 3 * ts, t + 4 * ts,
                   t + 5 * ts, n);
    }
    for (int i = 0; i < n; i++)
        for (int tap = 0; tap < 9; tap++) dw[(size_t)(k0 + i) * 9 + tap] += d[(size_t)tap * n + i];
}

/* d[0..n) = s[0..n): the short copies of the tile gather (n = tiles per
 * row: fixed sizes compile to single vector moves). */
static inline void wg_copy(float *restrict d, const float *restrict s, int n) {
    switch (n) {
    case 2: memcpy(d, s, 2 * sizeof(float)); return;
    case 4: memcpy(d, s, 4 * sizeof(float)); return;
    case 8: memcpy(d, s, 8 * sizeof(float)); return;
    case 16: memcpy(d, s, 16 * sizeof(float)); return;
    default:
        for (int i = 0; i < n; i++) d[i] = s[i];
    }
}

/* q[m*qs + tx] = src[4*tx + m] for tx < nq, m < 4: a row split by column
 * phase (one stride-4 pass, vectorised with permutes). */
static inline void wg_split(float *restrict q, size_t qs, const float *restrict src, int nq) {
    float *restrict q0 = q, *restrict q1 = q + qs, *restrict q2 = q + 2 * qs,
                    *restrict q3 = q + 3 * qs;
#pragma omp simd
    for (int tx = 0; tx < nq; tx++) {
        q0[tx] = src[4 * tx];
        q1[tx] = src[4 * tx + 1];
        q2[tx] = src[4 * tx + 2];
        q3[tx] = src[4 * tx + 3];
    }
}

/* Input transform of tile rows [ty0,ty1) of one image x[C,H,W] into
 * V[36][C][ld] at columns t0 + t, t = (ty-ty0)*ntx + tx: V = Bt d B per
 * 6x6 patch d (rows 4ty-1.., columns 4tx-1.., zero outside the image).
 * Per channel, over the whole run of T tiles at once (the passes were
 * per tile row, ntx = 2..8 wide, mostly scalar remainders):
 *  1. the run's 4*nr+2 input rows are copied into zero-padded rows pl
 *     (all of them before any is read back: a wide load right after the
 *     narrower, shifted stores of its copy stalled store forwarding),
 *  2. each padded row is split by column phase, P[r][m][tx'],
 *  3. the patches are gathered tile-major, D[i][k][t] = P[4ty+i][k&3]
 *     [tx + k/4] (36 short contiguous copies per tile row),
 *  4. column pass CK[a][k] = Bt D[.][k] and row pass V[a][b] = CK[a][.] B,
 *     each a loop over all T tiles.
 * With AVX-512 and ntx <= 8, steps 2-3 and the column pass are done in
 * registers instead: each patch row d[i][k] of a tile row is one permute
 * of 32 floats of a padded row, and Bt combines six of them. */
static void wg_in(float *V, int ld, int t0, const float *x, const wg_geom *g, int ty0, int ty1,
                  float *rb) {
    const int C = g->C, H = g->H, W = g->W, ntx = g->ntx, nq = ntx + 1, Wr = 4 * nq;
    const int nr = ty1 - ty0, T = nr * ntx, rows = 4 * nr + 2;
    float *D = rb, *CK = D + 36 * (size_t)T; /* D[i][k][t], CK[a][k][t] */
    float *pl = CK + 36 * (size_t)T, *P = pl + (size_t)rows * Wr; /* pl[r][Wr], P[r][m][nq] */
    const size_t vplane = (size_t)C * ld, ts = (size_t)T;
#if defined(__AVX512F__)
    /* d[k] lane tx = x[4tx + k - 1] of a row held as r0 = x[0..16), r1 =
     * x[16..32): a permute of (r0, r1) by idx[k], lanes outside [0, W) or
     * tx >= ntx zeroed by zm[k]. */
    __m512i idx[6];
    __mmask16 zm[6];
    for (int k = 0; k < 6; k++) {
        int ix[16];
        zm[k] = 0;
        for (int l = 0; l < 16; l++) {
            const int j = 4 * l + k - 1;
            ix[l] = j & 31;
            if (l < ntx && j >= 0 && j < W) zm[k] |= (__mmask16)(1u << l);
        }
        idx[k] = _mm512_loadu_si512(ix);
    }
    const __mmask16 ms = (__mmask16)((1u << (ntx < 16 ? ntx : 0)) - 1u);
    const __mmask16 m0 = (__mmask16)((1u << (W < 16 ? W : 16)) - 1u);
    const __mmask16 m1 = (__mmask16)((1u << (W > 16 ? (W < 32 ? W - 16 : 16) : 0)) - 1u);
#endif
    for (int c = 0; c < C; c++) {
        const float *xc = x + (size_t)c * H * W;
#if defined(__AVX512F__)
        if (ntx <= 8) {
            /* Each patch row d[i][k] of a tile row (tile tx: x[yy][4tx-1+k])
             * is one permute of the image row's two vectors (read once by
             * masked loads), and Bt combines six of them: CK[a][k] = Bt
             * d[.][k] in registers, no padded copy. */
            for (int ty = 0; ty < nr; ty++) {
                __m512 r0[6], r1[6];
                for (int i = 0; i < 6; i++) {
                    const int yy = 4 * (ty0 + ty) - 1 + i;
                    const float *xr = xc + (size_t)(yy >= 0 && yy < H ? yy : 0) * W;
                    const int in = yy >= 0 && yy < H;
                    r0[i] = _mm512_maskz_loadu_ps(in ? m0 : 0, xr);
                    r1[i] = _mm512_maskz_loadu_ps(in ? m1 : 0, xr + 16);
                }
                for (int k = 0; k < 6; k++) {
                    __m512 d[6], o[6];
                    for (int i = 0; i < 6; i++)
                        d[i] = _mm512_maskz_permutex2var_ps(zm[k], r0[i], idx[k], r1[i]);
                    WG_BT(o, d[0], d[1], d[2], d[3], d[4], d[5]);
                    for (int a = 0; a < 6; a++)
                        _mm512_mask_storeu_ps(CK + (size_t)(a * 6 + k) * ts + (size_t)ty * ntx, ms,
                                              o[a]);
                }
            }
        } else
#endif
        {
            for (int r = 0; r < rows; r++) {
                const int yy = 4 * ty0 - 1 + r;
                float *pr = pl + (size_t)r * Wr;
                pr[0] = 0.0f;
                if (yy >= 0 && yy < H) memcpy(pr + 1, xc + (size_t)yy * W, sizeof(float) * W);
                else memset(pr + 1, 0, sizeof(float) * W);
                for (int j = W + 1; j < Wr; j++) pr[j] = 0.0f;
            }
            for (int r = 0; r < rows; r++)
                wg_split(P + (size_t)r * 4 * nq, nq, pl + (size_t)r * Wr, nq);
            for (int ty = 0; ty < nr; ty++)
                for (int i = 0; i < 6; i++) {
                    const float *pr = P + (size_t)(4 * ty + i) * 4 * nq;
                    float *d = D + (size_t)i * 6 * ts + (size_t)ty * ntx;
                    for (int k = 0; k < 6; k++)
                        wg_copy(d + (size_t)k * ts, pr + (size_t)(k & 3) * nq + (k >> 2), ntx);
                }
            for (int k = 0; k < 6; k++) { /* column pass: CK[a][k] = Bt D[.][k] */
                const float *d = D + (size_t)k * ts;
                wg_bt_rows(CK + (size_t)k * ts, 6 * ts, d, d + 6 * ts, d + 12 * ts, d + 18 * ts,
                           d + 24 * ts, d + 30 * ts, T);
            }
        }
        float *v = V + c * (size_t)ld + t0;
        for (int a = 0; a < 6; a++) { /* row pass: V[a][.] = CK[a][.] B */
            const float *r = CK + (size_t)a * 6 * ts;
            wg_bt_rows(v + (size_t)a * 6 * vplane, vplane, r, r + ts, r + 2 * ts, r + 3 * ts,
                       r + 4 * ts, r + 5 * ts, T);
        }
    }
}

/* Output transform: y[OC,H,W] = At M A (+ bias) for
 * tile rows [ty0,ty1), M[36][OC][ld] at columns t0 + t; both passes over
 * the run's T tiles at once, then each output row is interleaved from
 * its four column phases. */
static void wg_out(float *y, const float *M, int ld, int t0, const float *bias,
                   const wg_geom *g, int ty0, int ty1, float *rb) {
    const int OC = g->C, H = g->H, W = g->W, ntx = g->ntx;
    const int nr = ty1 - ty0, T = nr * ntx;
    const size_t mplane = (size_t)OC * ld, ts = (size_t)T;
    float *S = rb, *Y = S + 24 * ts, *row = Y + 16 * ts; /* S[a][q][t], Y[p][q][t] */
    const int direct = W == 4 * ntx; /* interleave straight into y */
    for (int oc = 0; oc < OC; oc++) {
        const float bv = bias ? bias[oc] : 0.0f;
        float *yc = y + (size_t)oc * H * W;
        const float *m = M + oc * (size_t)ld + t0;
        for (int a = 0; a < 6; a++) { /* S[a] = M[a][.] A */
            const float *m0 = m + (size_t)(a * 6) * mplane;
            wg_at_rows(S + (size_t)a * 4 * ts, ts, m0, m0 + mplane, m0 + 2 * mplane,
                       m0 + 3 * mplane, m0 + 4 * mplane, m0 + 5 * mplane, T);
        }
        for (int q = 0; q < 4; q++) { /* Y[.][q] = At S[.][q] */
            const float *s0 = S + (size_t)q * ts;
            wg_at_rows(Y + (size_t)q * ts, 4 * ts, s0, s0 + 4 * ts, s0 + 8 * ts, s0 + 12 * ts,
                       s0 + 16 * ts, s0 + 20 * ts, T);
        }
        for (int ty = 0; ty < nr; ty++)
            for (int p = 0; p < 4 && 4 * (ty0 + ty) + p < H; p++) {
                const float *yp = Y + (size_t)p * 4 * ts + (size_t)ty * ntx;
                const float *y0 = yp, *y1 = yp + ts, *y2 = yp + 2 * ts, *y3 = yp + 3 * ts;
                float *yr = yc + (size_t)(4 * (ty0 + ty) + p) * W;
                float *restrict dst = direct ? yr : row;
#pragma omp simd
                for (int tx = 0; tx < ntx; tx++) {
                    dst[4 * tx] = y0[tx] + bv;
                    dst[4 * tx + 1] = y1[tx] + bv;
                    dst[4 * tx + 2] = y2[tx] + bv;
                    dst[4 * tx + 3] = y3[tx] + bv;
                }
                if (!direct) memcpy(yr, row, sizeof(float) * W);
            }
    }
}

/* Output-gradient transform for the weight gradient: Mh[36][OC][ld] at
 * columns t0 + t = At^T dY At per 4x4 tile of dy[OC,H,W] (zero outside);
 * the tiles' rows are split by column phase into D[q][p][t], then both
 * passes run over the run's T tiles at once. */
static void wg_dout(float *Mh, int ld, int t0, const float *dy, const wg_geom *g, int ty0,
                    int ty1, float *rb) {
    const int OC = g->C, H = g->H, W = g->W, ntx = g->ntx;
    const int nr = ty1 - ty0, T = nr * ntx;
    const size_t mplane = (size_t)OC * ld, ts = (size_t)T;
    float *D = rb, *R = D + 16 * ts, *row = R + 24 * ts; /* D[q][p][t], R[q][a][t] */
    for (int oc = 0; oc < OC; oc++) {
        const float *dc = dy + (size_t)oc * H * W;
        for (int ty = 0; ty < nr; ty++)
            for (int p = 0; p < 4; p++) {
                const int yy = 4 * (ty0 + ty) + p;
                float *d = D + (size_t)p * ts + (size_t)ty * ntx;
                if (yy >= H) {
                    for (int q = 0; q < 4; q++)
                        memset(d + (size_t)q * 4 * ts, 0, sizeof(float) * ntx);
                    continue;
                }
                const float *src = dc + (size_t)yy * W;
                if (W != 4 * ntx) { /* a partial last tile: pad the row */
                    memcpy(row, src, sizeof(float) * W);
                    for (int i = W; i < 4 * ntx; i++) row[i] = 0.0f;
                    src = row;
                }
                wg_split(d, 4 * ts, src, ntx);
            }
        for (int q = 0; q < 4; q++) { /* R[q] = At^T dY[.][q] */
            const float *d = D + (size_t)q * 4 * ts;
            wg_att_rows(R + (size_t)q * 6 * ts, ts, d, d + ts, d + 2 * ts, d + 3 * ts, T);
        }
        float *v = Mh + oc * (size_t)ld + t0;
        for (int a = 0; a < 6; a++) { /* Mh[a][.] = R[.][a] At */
            const float *r = R + (size_t)a * ts;
            wg_att_rows(v + (size_t)a * 6 * mplane, mplane, r, r + 6 * ts, r + 12 * ts,
                        r + 18 * ts, T);
        }
    }
}

/* The adjoint transform's passes. Of Bt^T's six outputs (WG_BTT) only
 * rows 1..4 are formed: o[0] = 4 v0 and o[5] = v5 are what a patch adds
 * to its neighbours' rows or columns (they overlap by two), read there.
 * Every loop runs over all T tiles (no scalar edges): a neighbour's share
 * is loaded for every tile, from inside the buffers, and selected away
 * where there is none (x + 0.0f in its place: only a -0 changes, and
 * wg_adj_put's + 0.0f makes every zero +0 anyway).
 *
 * Vertical: r[p][b][t], p = 0..3 the tile's own rows 4ty+p, from v[a][t]
 * (a = 0..5: dV[a*6+b], planes of a larger buffer) over a run of T tiles
 * of tile rows of ntx (formed for Tp >= T): row 0 adds the tile above's patch row 5 (v5 at
 * t-ntx), row 3 the tile below's patch row 0 (4 v0 at t+ntx), none from
 * outside the run. */
static void wg_adjv(float *restrict r, size_t rs, const float *const *v, int Tp, int T,
                    int ntx) {
    const float *v0 = v[0], *v1 = v[1], *v2 = v[2], *v3 = v[3], *v4 = v[4], *v5 = v[5];
    float *restrict r0 = r, *restrict r1 = r + rs, *restrict r2 = r + 2 * rs,
                    *restrict r3 = r + 3 * rs;
#if defined(__AVX512F__)
    /* (explicit vectors: GCC peeled scalar iterations to align the
     * stores, and the rest of a 16-tile run then ran scalar too) */
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int t = 0; t < Tp; t += 16) {
        const __m512i ti = _mm512_add_epi32(lane, _mm512_set1_epi32(t));
        const __mmask16 mu = _mm512_cmpge_epi32_mask(ti, _mm512_set1_epi32(ntx));
        const __mmask16 md = _mm512_cmplt_epi32_mask(ti, _mm512_set1_epi32(T - ntx));
        __m512 o[6];
        WG_BTT(o, _mm512_loadu_ps(v0 + t), _mm512_loadu_ps(v1 + t), _mm512_loadu_ps(v2 + t),
               _mm512_loadu_ps(v3 + t), _mm512_loadu_ps(v4 + t), _mm512_loadu_ps(v5 + t));
        const __m512 up = _mm512_maskz_mov_ps(mu, _mm512_loadu_ps(v5 + t - ntx));
        const __m512 down =
            _mm512_maskz_mov_ps(md, _mm512_mul_ps(_mm512_set1_ps(4.0f), _mm512_loadu_ps(v0 + t + ntx)));
        _mm512_storeu_ps(r0 + t, _mm512_add_ps(o[1], up));
        _mm512_storeu_ps(r1 + t, o[2]);
        _mm512_storeu_ps(r2 + t, o[3]);
        _mm512_storeu_ps(r3 + t, _mm512_add_ps(o[4], down));
    }
#else
#pragma omp simd
    for (int t = 0; t < Tp; t++) {
        float o[6];
        WG_BTT(o, v0[t], v1[t], v2[t], v3[t], v4[t], v5[t]);
        const float up = v5[t - ntx], down = 4.0f * v0[t + ntx];
        r0[t] = o[1] + (t >= ntx ? up : 0.0f);
        r1[t] = o[2];
        r2[t] = o[3];
        r3[t] = o[4] + (t < T - ntx ? down : 0.0f);
    }
#endif
}

/* Horizontal, one patch row over T tiles of whole tile rows: column
 * phases q[m][t] (output columns 4tx+m) from r[b][t], b = 0..5 at stride
 * rs: phase 0 adds the left tile's column 5 (r5 at t-1) where hl[t],
 * phase 3 the right tile's column 0 (4 r0 at t+1) where hr[t] (not
 * across a tile row's ends). r's rows are read one float before and
 * after. */
static void wg_adjh(float *restrict q, size_t qs, const float *r, size_t rs, int T,
                    const float *hl, const float *hr) {
    const float *r0 = r, *r1 = r + rs, *r2 = r + 2 * rs, *r3 = r + 3 * rs, *r4 = r + 4 * rs,
                *r5 = r + 5 * rs;
    float *restrict q0 = q, *restrict q1 = q + qs, *restrict q2 = q + 2 * qs,
                    *restrict q3 = q + 3 * qs;
#if defined(__AVX512F__)
    if (T % 16 == 0) {
        const __m512 zero = _mm512_setzero_ps();
        for (int t = 0; t < T; t += 16) {
            const __mmask16 ml = _mm512_cmpneq_ps_mask(_mm512_loadu_ps(hl + t), zero);
            const __mmask16 mr = _mm512_cmpneq_ps_mask(_mm512_loadu_ps(hr + t), zero);
            __m512 o[6];
            WG_BTT(o, _mm512_loadu_ps(r0 + t), _mm512_loadu_ps(r1 + t), _mm512_loadu_ps(r2 + t),
                   _mm512_loadu_ps(r3 + t), _mm512_loadu_ps(r4 + t), _mm512_loadu_ps(r5 + t));
            const __m512 left = _mm512_maskz_mov_ps(ml, _mm512_loadu_ps(r5 + t - 1));
            const __m512 right = _mm512_maskz_mov_ps(
                mr, _mm512_mul_ps(_mm512_set1_ps(4.0f), _mm512_loadu_ps(r0 + t + 1)));
            _mm512_storeu_ps(q0 + t, _mm512_add_ps(o[1], left));
            _mm512_storeu_ps(q1 + t, o[2]);
            _mm512_storeu_ps(q2 + t, o[3]);
            _mm512_storeu_ps(q3 + t, _mm512_add_ps(o[4], right));
        }
        return;
    }
#endif
#pragma omp simd
    for (int t = 0; t < T; t++) {
        float o[6];
        WG_BTT(o, r0[t], r1[t], r2[t], r3[t], r4[t], r5[t]);
        const float left = r5[t - 1], right = 4.0f * r0[t + 1];
        q0[t] = o[1] + (hl[t] != 0.0f ? left : 0.0f);
        q1[t] = o[2];
        q2[t] = o[3];
        q3[t] = o[4] + (hr[t] != 0.0f ? right : 0.0f);
    }
}

/* Image row out[W] (=, or += when acc) the four column phases q[m*qs +
 * tx] interleaved (+ 0.0f: no -0, so = is bit for bit += onto zeros). */
static void wg_adj_put(float *restrict out, int acc, const float *q, size_t qs, int ntx, int W,
                       float *restrict row) {
    const float *q0 = q, *q1 = q + qs, *q2 = q + 2 * qs, *q3 = q + 3 * qs;
    const int direct = !acc && W == 4 * ntx;
    float *restrict dst = direct ? out : row;
#pragma omp simd
    for (int tx = 0; tx < ntx; tx++) {
        dst[4 * tx] = q0[tx] + 0.0f;
        dst[4 * tx + 1] = q1[tx] + 0.0f;
        dst[4 * tx + 2] = q2[tx] + 0.0f;
        dst[4 * tx + 3] = q3[tx] + 0.0f;
    }
    if (direct) return;
    if (acc)
        for (int i = 0; i < W; i++) out[i] += row[i];
    else
        memcpy(out, row, sizeof(float) * W);
}

/* Input gradient from the Winograd domain, the adjoint of wg_in: for
 * tile rows [ty0,ty1) of one image, dV[36][C][ld] at columns t0 + t (dV =
 * U^T Mh, Mh the output gradient's transform) gives per tile the 6x6
 * patch Bt^T dV Bt at rows 4ty-1.., columns 4tx-1.., and neighbouring
 * patches overlap by two rows and two columns. The run's own rows 4ty0 ..
 * min(4ty1, H)-1 of dx[C,H,W] are written (=, or += when acc), each
 * element own + upper or lower, then own + left or right neighbour's
 * share (wg_adjv, wg_adjh); the patch rows that fall outside them, row
 * 4ty0-1 and row 4ty1, go to top[C][W] and bot[C][W] (=) for the caller
 * to add to the neighbouring block's rows, or are dropped where top/bot
 * is NULL (outside the image). rb: wg_rb_floats. */
static void wg_in_adj(float *dx, int acc, const float *dV, int ld, int t0, const wg_geom *g,
                      int ty0, int ty1, float *top, float *bot, float *rb) {
    const int C = g->C, H = g->H, W = g->W, ntx = g->ntx;
    const int nr = ty1 - ty0, T = nr * ntx;
    /* the passes run over Tp = T rounded up to 16 tiles (whole vectors,
     * no scalar remainders: T is 8 on 8x8 maps); the lanes past T read
     * whatever follows in dV's plane or the scratch, and go nowhere */
    const int Tp = (T + 15) & ~15;
    const size_t vplane = (size_t)C * ld, ts = (size_t)Tp + 2; /* + r's guard floats */
    /* R[p][b][1 + t], Q[m][t], Rh[b][1 + tx] (halo rows), hl/hr[t], row[W] */
    float *R = rb, *Q = R + 24 * ts, *Rh = Q + 4 * ts, *hl = Rh + 6 * (size_t)(ntx + 2);
    float *hr = hl + ts, *row = hr + ts;
    for (int t = 0; t < Tp; t++) {
        hl[t] = t % ntx != 0;
        hr[t] = t % ntx != ntx - 1;
    }
    for (int c = 0; c < C; c++) {
        const float *vc = dV + c * (size_t)ld + t0;
        for (int b = 0; b < 6; b++) {
            const float *v[6];
            for (int a = 0; a < 6; a++) v[a] = vc + (size_t)(a * 6 + b) * vplane;
            wg_adjv(R + (size_t)b * ts + 1, 6 * ts, v, Tp, T, ntx);
        }
        float *xc = dx + (size_t)c * H * W;
        for (int p = 0; p < 4 && 4 * ty0 + p < H; p++) {
            wg_adjh(Q, ts, R + (size_t)p * 6 * ts + 1, ts, Tp, hl, hr);
            for (int ty = 0; ty < nr && 4 * (ty0 + ty) + p < H; ty++)
                wg_adj_put(xc + (size_t)(4 * (ty0 + ty) + p) * W, acc, Q + (size_t)ty * ntx, ts,
                           ntx, W, row);
        }
        for (int h = 0; h < 2; h++) {
            /* patch row 0 (4 v0) of the first tile row, row 5 (v5) of the last */
            float *out = h ? bot : top;
            if (!out) continue;
            const size_t hs = (size_t)ntx + 2;
            for (int b = 0; b < 6; b++) {
                const float *v = vc + (size_t)((h ? 30 : 0) + b) * vplane + (h ? T - ntx : 0);
                float *rh = Rh + (size_t)b * hs + 1;
                for (int tx = 0; tx < ntx; tx++) rh[tx] = h ? v[tx] : 4.0f * v[tx];
            }
            wg_adjh(Q, ts, Rh + 1, hs, ntx, hl, hr);
            wg_adj_put(out + (size_t)c * W, 0, Q, ts, ntx, W, row);
        }
    }
}

/* Blocks of tile rows: rows r = n*nty + ty of the batch, rpb per block,
 * at least WG_MIN_BLOCKS blocks when there are enough rows (small batches
 * still spread over the threads). Independent of the thread count, so
 * every block sums in the same order with 1 or more threads. */
#ifndef WG_MIN_BLOCKS
#define WG_MIN_BLOCKS 4
#endif
#ifndef WG_KCHUNK
#define WG_KCHUNK 256 /* kernels per chunk of the weight-gradient transform */
#endif
#ifndef WG_GROUPS
#define WG_GROUPS 4 /* weight-gradient partial sums, at most (see wg_backward) */
#endif
static int wg_rows_per_block(const wg_geom *g, int minb) {
    int rpb = WG_TILES / g->ntx;
    if (rpb < 1) rpb = 1;
    const int total = g->N * g->nty, per = (total + minb - 1) / minb;
    return rpb < per ? rpb : per;
}

/* Calls fn for each run of one image's tile rows in block [r0,r1). */
#define WG_RUNS(g, r0, r1, n, ty0, ty1, t0, body)                            \
    for (int rr_ = (r0), t0 = 0; rr_ < (r1);) {                              \
        const int n = rr_ / (g)->nty, ty0 = rr_ % (g)->nty;                  \
        const int ty1 = (r1) - n * (g)->nty < (g)->nty ? (r1) - n * (g)->nty : (g)->nty; \
        body;                                                                \
        t0 += (ty1 - ty0) * (g)->ntx;                                        \
        rr_ += ty1 - ty0;                                                    \
    }

/* The input transforms of a whole batch, kept from the forward for the
 * weight gradient (conv2d_forward_keep): every block's V transposed,
 * Vt[36][T][C] (the weight gradient's product wants it so: transposed
 * here while V is still in L2 instead of read back cold and transposed
 * there), block after block, i.e. the block starting at tile row r0 at
 * floats 36*C*r0*ntx (wg_keep_at). */
static size_t wg_keep_floats(const wg_geom *g) {
    return 36 * (size_t)g->C * g->N * g->nty * g->ntx;
}
static float *wg_keep_at(float *keep, const wg_geom *g, int r0) {
    return keep + 36 * (size_t)g->C * r0 * g->ntx;
}

/* y[N,OC,H,W] = the "same" 3x3 correlation of x[N,C,H,W]
 * with the transformed kernel U[36][OC][C] (+ bias). keep: NULL, or where
 * the input transforms go (wg_keep_floats) instead of per-thread scratch. */
static void wg_conv(float *y, float *keep, const float *x, const float *U, const float *bias,
                    int N, int C, int H, int W, int OC, int nt) {
    const wg_geom gi = wg_make(N, C, H, W), go = wg_make(N, OC, H, W);
    /* Inference on one thread (a sampler's data-parallel worker, or -t 1)
     * takes the fewest, largest blocks: a block's 36 GEMMs read all of U,
     * so small blocks at 8x8 make them weight-bound (sampling a pair: 2.4
     * tiles per GEMM instead of 4.8). The outputs are the same floats for
     * any partition (a tile's sums do not depend on its block); a forward
     * that keeps its transforms for a backward keeps the backward's
     * partition. */
    const int rpb = wg_rows_per_block(&gi, nt == 1 && !keep ? 1 : WG_MIN_BLOCKS), total = N * gi.nty;
    const int nblk = (total + rpb - 1) / rpb, tb = rpb * gi.ntx;
    const size_t in_sz = (size_t)C * H * W, out_sz = (size_t)OC * H * W;
    blas_single();
#pragma omp parallel num_threads(nt)
    {
        float *V = scratch(36 * (size_t)(C + OC) * tb + wg_rb_floats(&gi, rpb));
        float *M = V + 36 * (size_t)C * tb, *rb = M + 36 * (size_t)OC * tb;
#pragma omp for schedule(static)
        for (int bk = 0; bk < nblk; bk++) {
            const int r0 = bk * rpb, r1 = r0 + rpb < total ? r0 + rpb : total;
            const int T = (r1 - r0) * gi.ntx;
            WG_RUNS(&gi, r0, r1, n, ty0, ty1, t0,
                    wg_in(V, T, t0, x + n * in_sz, &gi, ty0, ty1, rb));
            for (int xi = 0; xi < 36; xi++) {
                gemm_nn(OC, T, C, U + (size_t)xi * OC * C, C, V + (size_t)xi * C * T, T, 0,
                        M + (size_t)xi * OC * T, T);
                if (keep)
                    transpose_out(wg_keep_at(keep, &gi, r0) + (size_t)xi * T * C, C,
                                  V + (size_t)xi * C * T, T, C, T);
            }
            WG_RUNS(&go, r0, r1, n, ty0, ty1, t0,
                    wg_out(y + n * out_sz, M, T, t0, bias, &go, ty0, ty1, rb));
        }
    }
}

/* The weight-transform cache of ops_weights_frozen: per calling thread,
 * one entry per 3x3 weight tensor seen (pointer and shape), up to
 * WG_CACHE_MAX bytes in all (larger models transform the rest per call). */
#ifndef WG_CACHE_MAX
#define WG_CACHE_MAX ((size_t)64 << 20)
#endif
typedef struct {
    const float *w;
    int OC, C;
    float *U; /* [36][OC][C] */
} wg_cached;
static _Thread_local int wg_frozen;
static _Thread_local wg_cached *wg_cache;
static _Thread_local int wg_ncache, wg_capcache;
static _Thread_local size_t wg_cache_bytes;

void ops_weights_frozen(int on) {
    wg_frozen += on ? 1 : -1;
    if (wg_frozen > 0) return;
    wg_frozen = 0;
    for (int i = 0; i < wg_ncache; i++) free(wg_cache[i].U);
    free(wg_cache);
    wg_cache = NULL;
    wg_ncache = wg_capcache = 0;
    wg_cache_bytes = 0;
}

/* w's transform from the cache (made on first use), or NULL when not
 * frozen or over the budget. */
static const float *wg_weights_cached(const float *w, int OC, int C, int nt) {
    if (!wg_frozen) return NULL;
    for (int i = 0; i < wg_ncache; i++)
        if (wg_cache[i].w == w && wg_cache[i].OC == OC && wg_cache[i].C == C) return wg_cache[i].U;
    const size_t bytes = 36 * (size_t)OC * C * sizeof(float);
    if (wg_cache_bytes + bytes > WG_CACHE_MAX) return NULL;
    if (wg_ncache == wg_capcache) {
        int cap = wg_capcache ? 2 * wg_capcache : 32;
        wg_cached *nc = realloc(wg_cache, cap * sizeof *nc);
        if (!nc) return NULL;
        wg_cache = nc;
        wg_capcache = cap;
    }
    float *U = malloc(bytes);
    if (!U) return NULL;
    memcpy(U, wg_weights(w, OC, C, nt), bytes);
    wg_cache[wg_ncache++] = (wg_cached){w, OC, C, U};
    wg_cache_bytes += bytes;
    return U;
}

static void wg_forward(float *out, float *keep, const float *inp, const float *w, const float *b,
                       int N, int C, int H, int W, int OC, int nt) {
    const float *U = wg_weights_cached(w, OC, C, nt);
    if (!U) U = wg_weights(w, OC, C, nt);
    wg_conv(out, keep, inp, U, b, N, C, H, W, OC, nt);
}

/* The input gradient of block bk (tile rows [r0,r1), T tiles) from its
 * output-gradient transforms Mh[36][OC][T]: dV[xi] = Ut[xi] Mh[xi] (Ut:
 * U^T, [36][C][OC]), then wg_in_adj per image run (=, or += when acc),
 * the rows across the block's ends to haloT/haloB[bk][C][W]. */
static void wg_dx_block(float *dinp, int acc, const float *Mh, const float *Ut, float *dV,
                        float *haloT, float *haloB, const wg_geom *gi, int OC, int bk, int r0,
                        int r1, float *rb) {
    const int C = gi->C, T = (r1 - r0) * gi->ntx;
    const size_t in_sz = (size_t)C * gi->H * gi->W, halo = (size_t)C * gi->W;
    for (int xi = 0; xi < 36; xi++)
        gemm_nn(C, T, OC, Ut + (size_t)xi * C * OC, OC, Mh + (size_t)xi * OC * T, T, 0,
                dV + (size_t)xi * C * T, T);
    WG_RUNS(gi, r0, r1, n, ty0, ty1, t0,
            wg_in_adj(dinp + n * in_sz, acc, dV, T, t0, gi, ty0, ty1,
                      ty0 ? haloT + bk * halo : NULL,
                      ty1 < gi->nty ? haloB + bk * halo : NULL, rb));
}

/* keep: NULL, or the forward's input transforms (wg_conv), which the
 * weight gradient then reads instead of transforming inp again. set: dinp
 * is written, not added to (the same bits as adding onto zeros).
 *
 * Both gradients come from the output gradient's transforms Mh = At^T dY
 * At (wg_dout): the weight gradient dU[xi] += Mh[xi] V[xi]^T, the input
 * gradient the adjoint of the forward, dV[xi] = U[xi]^T Mh[xi] taken
 * back to the image by wg_in_adj (instead of a second Winograd conv of
 * dout with the flipped kernel: no input and output transforms of its
 * own, and dout transformed once). With no more threads than weight-
 * gradient groups the input gradient is formed in the weight gradient's
 * pass, block by block while Mh is in the cache; else (or without a
 * weight gradient) in a pass of its own over all the blocks, forming Mh
 * again. Each block's numbers are the same either way, and the rows that
 * neighbouring blocks share are summed after both: the results depend on
 * the thread count only as the weight gradient's groups do (not at all). */
static void wg_backward(float *dinp, int set, float *dw, float *db, const float *dout,
                        const float *inp, const float *keep, const float *w, int N, int C, int H,
                        int W, int OC, int nt) {
    const size_t in_sz = (size_t)C * H * W, out_sz = (size_t)OC * H * W;
    if (db) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int oc = 0; oc < OC; oc++) {
            float acc = 0.0f;
            for (int n = 0; n < N; n++) {
                const float *d = dout + n * out_sz + (size_t)oc * H * W;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int p = 0; p < H * W; p++) s += d[p];
                acc += s;
            }
            db[oc] += acc;
        }
    }
    if (!dw && !dinp) return;
    const wg_geom gi = wg_make(N, C, H, W), go = wg_make(N, OC, H, W);
    const int rpb = wg_rows_per_block(&gi, WG_MIN_BLOCKS), total = N * gi.nty;
    const int nblk = (total + rpb - 1) / rpb, tb = rpb * gi.ntx;
    const int K = OC * C;
    const size_t usz = 36 * (size_t)K, halo = (size_t)C * W;
    /* min(nblk, WG_GROUPS) partial sums, each over a fixed contiguous
     * range of blocks, summed in group order: the same result for any
     * thread count (the Winograd domain magnifies reordering differences). */
    const int ngr = nblk < WG_GROUPS ? nblk : WG_GROUPS;
    const int fuse = dw && dinp && nt <= ngr;
    /* shared: the partials, then U^T (and its transform's scratch) and
     * the halo rows of each block */
    const size_t nparts = dw ? usz * ngr : 0;
    float *parts = scratch_shared(nparts + (dinp ? WG_WEIGHTS_FLOATS(K) + 2 * nblk * halo : 0));
    float *Ut = parts + nparts, *haloT = Ut + WG_WEIGHTS_FLOATS(K), *haloB = haloT + nblk * halo;
    if (dinp) wg_weights_to(Ut, w, OC, C, 1, nt);
    blas_single();
#pragma omp parallel num_threads(nt)
    {
        const size_t vown = keep || !dw ? 0 : 36 * (size_t)C * tb;
        const size_t vsz = vown + 36 * (size_t)OC * tb + (size_t)tb * C +
                           (dinp ? 36 * (size_t)C * tb : 0) + wg_rb_floats(&gi, rpb);
        float *Vs = scratch(vsz > 63 * WG_KCHUNK ? vsz : 63 * WG_KCHUNK);
        float *Mh = Vs + vown, *vt = Mh + 36 * (size_t)OC * tb, *dV = vt + (size_t)tb * C;
        float *rb = dV + (dinp ? 36 * (size_t)C * tb : 0);
        if (dw) {
#pragma omp for schedule(static)
            for (int gr = 0; gr < ngr; gr++) {
                /* the group's first block assigns dU, the others add */
                float *dU = parts + (size_t)gr * usz;
                const int b0 = nblk * gr / ngr, b1 = nblk * (gr + 1) / ngr;
                for (int bk = b0; bk < b1; bk++) {
                    const int r0 = bk * rpb, r1 = r0 + rpb < total ? r0 + rpb : total;
                    const int T = (r1 - r0) * gi.ntx;
                    const float *V = keep ? wg_keep_at((float *)keep, &gi, r0) : Vs;
                    if (!keep)
                        WG_RUNS(&gi, r0, r1, n, ty0, ty1, t0,
                                wg_in(Vs, T, t0, inp + n * in_sz, &gi, ty0, ty1, rb));
                    WG_RUNS(&go, r0, r1, n, ty0, ty1, t0,
                            wg_dout(Mh, T, t0, dout + n * out_sz, &go, ty0, ty1, rb));
                    /* dU[xi][OC,C] += Mh[xi][OC,T] @ V[xi][C,T]^T (kept: Vt[xi][T,C]) */
                    for (int xi = 0; xi < 36; xi++) {
                        float *du = dU + (size_t)xi * OC * C;
                        const float *mh = Mh + (size_t)xi * OC * T;
                        if (keep)
                            gemm_nn(OC, C, T, mh, T, V + (size_t)xi * T * C, C, bk > b0, du, C);
                        else
                            gemm_nt(OC, C, T, mh, T, V + (size_t)xi * C * T, T, bk > b0, du, C,
                                    vt);
                    }
                    if (fuse)
                        wg_dx_block(dinp, !set, Mh, Ut, dV, haloT, haloB, &gi, OC, bk, r0, r1,
                                    rb);
                }
            }
        }
        if (dinp && !fuse) {
#pragma omp for schedule(static)
            for (int bk = 0; bk < nblk; bk++) {
                const int r0 = bk * rpb, r1 = r0 + rpb < total ? r0 + rpb : total;
                const int T = (r1 - r0) * gi.ntx;
                WG_RUNS(&go, r0, r1, n, ty0, ty1, t0,
                        wg_dout(Mh, T, t0, dout + n * out_sz, &go, ty0, ty1, rb));
                wg_dx_block(dinp, !set, Mh, Ut, dV, haloT, haloB, &gi, OC, bk, r0, r1, rb);
            }
        }
        /* (implicit barriers: every block is done) */
        if (dinp) {
            /* the rows across each block start inside an image: its first
             * patch row's above, the previous block's last one's below */
#pragma omp for schedule(static)
            for (int bk = 1; bk < nblk; bk++) {
                const int r0 = bk * rpb, n = r0 / gi.nty, ty0 = r0 % gi.nty;
                if (!ty0) continue;
                for (int c = 0; c < C; c++) {
                    float *xa = dinp + n * in_sz + (size_t)c * H * W + (size_t)(4 * ty0 - 1) * W;
                    float *xb = xa + W;
                    const float *ht = haloT + bk * halo + (size_t)c * W;
                    const float *hb = haloB + (bk - 1) * halo + (size_t)c * W;
#pragma omp simd
                    for (int i = 0; i < W; i++) xa[i] += ht[i];
#pragma omp simd
                    for (int i = 0; i < W; i++) xb[i] += hb[i];
                }
            }
        }
        if (dw) { /* dw += G^T dU G, over chunks of kernels; V's space is free again */
            const int nch = (K + WG_KCHUNK - 1) / WG_KCHUNK;
#pragma omp for schedule(static)
            for (int ch = 0; ch < nch; ch++) {
                const int k0 = ch * WG_KCHUNK, k1 = k0 + WG_KCHUNK < K ? k0 + WG_KCHUNK : K;
                wg_wgrad(dw, parts, ngr, (size_t)K, k0, k1, Vs);
            }
        }
    }
}

/* One image forward. x: [C,H,W], out: [OC,P], col: column block scratch
 * (shared by the team in coop mode). */
static void conv_fwd_img(float *out, const float *x, const float *w, const float *b,
                         float *col, const conv_shape *s, int coop) {
    int lo, hi;
    if (b) { /* out starts as the bias, the GEMMs add onto it */
        my_range(coop, s->OC, 1, &lo, &hi);
        for (int oc = lo; oc < hi; oc++) {
            float *o = out + (size_t)oc * s->P;
            for (int p = 0; p < s->P; p++) o[p] = b[oc];
        }
    }
    if (s->direct) {
        team_sync(coop);
        /* out[OC,P] (+)= w[OC,C] @ x[C,P] */
        mm(coop, 0, 0, s->OC, s->P, s->CKK, 1.0f, w, s->CKK, x, s->P, b ? 1.0f : 0.0f, out, s->P);
        team_sync(coop);
        return;
    }
    const int rb = conv_block_rows(s);
    for (int oh0 = 0; oh0 < s->OH; oh0 += rb) {
        const int oh1 = oh0 + rb < s->OH ? oh0 + rb : s->OH, Pb = (oh1 - oh0) * s->OW;
        my_range(coop, s->CKK, 1, &lo, &hi);
        im2col_block(col, x, s, lo, hi, oh0, oh1);
        team_sync(coop);
        /* out[OC, block] (+)= w[OC,CKK] @ col[CKK,Pb] */
        mm(coop, 0, 0, s->OC, Pb, s->CKK, 1.0f, w, s->CKK, col, Pb, b ? 1.0f : 0.0f,
           out + (size_t)oh0 * s->OW, s->P);
        team_sync(coop); /* col is reused by the next block */
    }
}

size_t conv2d_keep_floats(int N, int C, int H, int W, int OC, int K, int stride, int pad) {
    const conv_shape s = conv_make(C, H, W, OC, K, stride, pad);
    if (!conv_wino(&s)) return 0;
    const wg_geom g = wg_make(N, C, H, W);
    return wg_keep_floats(&g);
}

static void conv_forward(float *out, float *keep, const float *inp, const float *w,
                         const float *b, int N, int C, int H, int W, int OC, int K, int stride,
                         int pad) {
    // inp: [N,C,H,W]  w: [OC,C,K,K]  b: [OC]  out: [N,OC,OH,OW]
    const conv_shape s = conv_make(C, H, W, OC, K, stride, pad);
    const size_t in_sz = (size_t)C * H * W, out_sz = (size_t)OC * s.P;
    const size_t col_sz = conv_col_floats(&s);
    const double flops = 2.0 * N * OC * (double)s.P * s.CKK;
    const int nt = flops < 2e5 ? 1 : ops_get_threads();
    if (conv_wino(&s)) {
        wg_forward(out, keep, inp, w, b, N, C, H, W, OC, nt);
        return;
    }
    assert(!keep);
    const int coop = N < nt;
    const int impl = !coop && conv_impl(&s);
    float *shared = coop ? scratch(col_sz) : NULL;
    float *wk = impl ? conv_wk(w, &s) : NULL;
    const size_t impl_sz = impl ? conv_pad_floats(&s, C) + (size_t)OC * H * (W + 2 * pad) : 0;
    blas_single();
#pragma omp parallel num_threads(nt)
    {
        if (coop) {
            for (int n = 0; n < N; n++)
                conv_fwd_img(out + n * out_sz, inp + n * in_sz, w, b, shared, &s, 1);
        } else if (impl) {
            float *buf = scratch(impl_sz);
#pragma omp for schedule(dynamic, 1)
            for (int n = 0; n < N; n++)
                conv_fwd_impl(out + n * out_sz, inp + n * in_sz, wk, b, buf, &s);
        } else {
            float *col = scratch(col_sz);
#pragma omp for schedule(dynamic, 1)
            for (int n = 0; n < N; n++)
                conv_fwd_img(out + n * out_sz, inp + n * in_sz, w, b, col, &s, 0);
        }
    }
    free(wk);
}

/* One image backward. col: column block scratch (team-shared in coop
 * mode), dbp: [OC] and dwp the weight gradient target: in coop mode the
 * real dw [OC,CKK] (the blocks each thread writes are disjoint); when not
 * coop a per-thread partial stored TRANSPOSED, [CKK,OC]: OpenBLAS runs
 * dw^T += col @ dout^T (M = CKK) 7-15% faster than dw += dout @ col^T
 * (M = OC = 32..64) for these shapes (measured, 1 thread, Zen 4). */
static void conv_bwd_img(float *dx, float *dwp, float *dbp, const float *dout,
                         const float *x, const float *w, const float *wk, float *col,
                         const conv_shape *s, int coop) {
    int lo, hi;
    if (wk && dx) { /* implicit GEMM for dx (not coop; col has room) */
        conv_bwd_dx_impl(dx, dout, wk, col, s);
        dx = NULL;
    }
    const int P = s->P, OC = s->OC, CKK = s->CKK;
    if (dbp) { /* db[oc] += sum_p dout[oc,p] */
        my_range(coop, OC, 1, &lo, &hi);
        for (int oc = lo; oc < hi; oc++) {
            const float *d = dout + (size_t)oc * P;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int p = 0; p < P; p++) acc += d[p];
            dbp[oc] += acc;
        }
    }
    if (s->direct) {
        /* dw[OC,C] += dout[OC,P] @ x[C,P]^T ; dx[C,P] += w[OC,C]^T @ dout[OC,P] */
        if (dwp && coop) mm(coop, 0, 1, OC, CKK, P, 1.0f, dout, P, x, P, 1.0f, dwp, CKK);
        /* dw^T[C,OC] += x[C,P] @ dout[OC,P]^T */
        if (dwp && !coop) mm(0, 0, 1, CKK, OC, P, 1.0f, x, P, dout, P, 1.0f, dwp, OC);
        if (dx) mm(coop, 1, 0, CKK, P, OC, 1.0f, w, CKK, dout, P, 1.0f, dx, P);
        team_sync(coop);
        return;
    }
    if (!dwp && !dx) return;
    const int rb = conv_block_rows(s);
    for (int oh0 = 0; oh0 < s->OH; oh0 += rb) {
        const int oh1 = oh0 + rb < s->OH ? oh0 + rb : s->OH, Pb = (oh1 - oh0) * s->OW;
        const float *dblk = dout + (size_t)oh0 * s->OW; /* [OC, Pb], ld P */
        if (dwp) {
            my_range(coop, CKK, 1, &lo, &hi);
            im2col_block(col, x, s, lo, hi, oh0, oh1);
            team_sync(coop);
            /* dw[OC,CKK] += dout[OC,Pb] @ col[CKK,Pb]^T (coop), or
             * dw^T[CKK,OC] += col[CKK,Pb] @ dout[OC,Pb]^T */
            if (coop) mm(coop, 0, 1, OC, CKK, Pb, 1.0f, dblk, P, col, Pb, 1.0f, dwp, CKK);
            else mm(0, 0, 1, CKK, OC, Pb, 1.0f, col, Pb, dblk, P, 1.0f, dwp, OC);
            team_sync(coop); /* col is overwritten by dcol below */
        }
        if (dx) {
            /* dcol[CKK,Pb] = w[OC,CKK]^T @ dout[OC,Pb], then scatter-add */
            mm(coop, 1, 0, CKK, Pb, OC, 1.0f, w, CKK, dblk, P, 0.0f, col, Pb);
            team_sync(coop);
            my_range(coop, s->C, 1, &lo, &hi);
            col2im_block(dx, col, s, lo, hi, oh0, oh1);
            team_sync(coop);
        }
    }
}

void conv2d_forward(float *out, const float *inp, const float *w, const float *b,
                    int N, int C, int H, int W, int OC, int K, int stride, int pad) {
    conv_forward(out, NULL, inp, w, b, N, C, H, W, OC, K, stride, pad);
}

void conv2d_forward_keep(float *out, float *keep, const float *inp, const float *w,
                         const float *b, int N, int C, int H, int W, int OC, int K, int stride,
                         int pad) {
    conv_forward(out, keep, inp, w, b, N, C, H, W, OC, K, stride, pad);
}

static void conv_backward(float *dinp, int set, float *dw, float *db, const float *dout,
                          const float *inp, const float *keep, const float *w,
                          int N, int C, int H, int W, int OC, int K, int stride, int pad) {
    // dout: [N,OC,OH,OW] -> dinp: [N,C,H,W], dw: [OC,C,K,K], db: [OC]
    if (!dinp && !dw && !db) return;
    const conv_shape s = conv_make(C, H, W, OC, K, stride, pad);
    const size_t in_sz = (size_t)C * H * W, out_sz = (size_t)OC * s.P;
    const size_t col_sz = conv_col_floats(&s);
    const size_t wsz = (size_t)OC * s.CKK;
    const double flops = 4.0 * N * OC * (double)s.P * s.CKK;
    const int nt = flops < 2e5 ? 1 : ops_get_threads();
    if (conv_wino(&s)) {
        wg_backward(dinp, set, dw, db, dout, inp, keep, w, N, C, H, W, OC, nt);
        return;
    }
    assert(!keep);
    if (set && dinp) memset(dinp, 0, sizeof(float) * N * in_sz); /* the paths below add */
    const int coop = N < nt;
    const int impl = !coop && dinp && conv_impl(&s);
    float *shared = coop ? scratch(col_sz) : NULL;
    float *wk = impl ? conv_wk(w, &s) : NULL;
    size_t scr_sz = col_sz;
    if (impl) {
        const size_t isz = conv_pad_floats(&s, OC) + (size_t)C * H * (W + 2 * pad);
        scr_sz = isz > col_sz ? isz : col_sz;
    }
    blas_single();
    float *parts[256]; /* each thread's partial buffer, for the ordered sum */
#pragma omp parallel num_threads(nt < 256 ? nt : 256)
    {
        if (coop) {
            for (int n = 0; n < N; n++)
                conv_bwd_img(dinp ? dinp + n * in_sz : NULL, dw, db, dout + n * out_sz,
                             inp + n * in_sz, w, NULL, shared, &s, 1);
        } else {
            /* per-thread partials dw^T [CKK,OC] + db [OC], then the columns
             * (or the implicit-GEMM planes, which reuse the column space).
             * Images go to threads statically and the partials are summed
             * in thread order, so results are bit-reproducible for a given
             * thread count (pretraining resumes bit-identically). */
            const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            float *buf = scratch(scr_sz + wsz + OC);
            float *dwp = dw ? buf : NULL, *dbp = db ? buf + wsz : NULL, *col = buf + wsz + OC;
            if (dw) memset(dwp, 0, sizeof(float) * wsz);
            if (db) memset(dbp, 0, sizeof(float) * OC);
            parts[tid] = buf;
#pragma omp for schedule(static)
            for (int n = 0; n < N; n++)
                conv_bwd_img(dinp ? dinp + n * in_sz : NULL, dwp, dbp, dout + n * out_sz,
                             inp + n * in_sz, w, wk, col, &s, 0);
            /* (the implicit barrier above makes every partial complete) */
            if (dw || db) {
#pragma omp for schedule(static)
                for (int oc = 0; oc < OC; oc++) {
                    if (dw)
                        for (int r = 0; r < s.CKK; r++) {
                            float acc = 0.0f;
                            for (int t = 0; t < nth; t++) acc += parts[t][(size_t)r * OC + oc];
                            dw[(size_t)oc * s.CKK + r] += acc;
                        }
                    if (db) {
                        float acc = 0.0f;
                        for (int t = 0; t < nth; t++) acc += parts[t][wsz + oc];
                        db[oc] += acc;
                    }
                }
            }
        }
    }
    free(wk);
}

void conv2d_backward(float *dinp, float *dw, float *db, const float *dout,
                     const float *inp, const float *w,
                     int N, int C, int H, int W, int OC, int K, int stride, int pad) {
    conv_backward(dinp, 0, dw, db, dout, inp, NULL, w, N, C, H, W, OC, K, stride, pad);
}

void conv2d_backward_keep(float *dinp, int set, float *dw, float *db, const float *dout,
                          const float *inp, const float *keep, const float *w,
                          int N, int C, int H, int W, int OC, int K, int stride, int pad) {
    conv_backward(dinp, set, dw, db, dout, inp, keep, w, N, C, H, W, OC, K, stride, pad);
}

/* ----------------------------------------------------------------- linear */

void linear_forward(float *out, const float *inp, const float *w, const float *b,
                    int N, int IN, int OUT) {
    // inp: [N,IN]  w: [OUT,IN]  b: [OUT]  out: [N,OUT]
    if (b) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OUT; o++) out[(size_t)n * OUT + o] = b[o];
    }
    blas_single();
    const int par = 2.0 * N * IN * OUT > 1e6;
    /* out[N,OUT] (+)= inp[N,IN] @ w[OUT,IN]^T */
#pragma omp parallel num_threads(par ? ops_get_threads() : 1)
    mm(par, 0, 1, N, OUT, IN, 1.0f, inp, IN, w, IN, b ? 1.0f : 0.0f, out, OUT);
}

void linear_backward(float *dinp, float *dw, float *db, const float *dout,
                     const float *inp, const float *w, int N, int IN, int OUT) {
    // dout: [N,OUT] -> dinp: [N,IN], dw: [OUT,IN], db: [OUT]
    if (db) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OUT; o++) db[o] += dout[(size_t)n * OUT + o];
    }
    blas_single();
    const int par = 2.0 * N * IN * OUT > 1e6;
#pragma omp parallel num_threads(par ? ops_get_threads() : 1)
    {
        /* dinp[N,IN] += dout[N,OUT] @ w[OUT,IN] */
        if (dinp) mm(par, 0, 0, N, IN, OUT, 1.0f, dout, OUT, w, IN, 1.0f, dinp, IN);
        /* dw[OUT,IN] += dout[N,OUT]^T @ inp[N,IN] */
        if (dw) mm(par, 1, 0, OUT, IN, N, 1.0f, dout, OUT, inp, IN, 1.0f, dw, IN);
    }
}

/* The logistic sigmoid for SiLU, from e = e^-|x| in (0, 1] (no
 * overflow): s = 1/(1+e) for x >= 0, e/(1+e) for x < 0. |x| is capped at
 * 80 so that neither e nor s is ever subnormal (subnormal operands cost
 * ~100 cycles each on many x86 CPUs): for x < -80, s = 1.8e-35 instead of
 * e^x, which changes silu(x) ~ x*e^x (< 1e-33) by < 1e-33; for x > 80,
 * 1 + e rounds to 1 either way. One clamp and one reciprocal: x / (1 +
 * fexp(-x)) compiled (GCC 12, AVX-512) to two divisions and a tangle of
 * masks for fexp's two clamps, 0.66 ns per float; this runs at ~0.2. */
static inline float silu_sig(float x) {
    float t = -fabsf(x);
    t = t < -80.0f ? -80.0f : t;
    const float e = fexp_core(t);
    const float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

/* -------------------------------------------------------------- groupnorm */

/* hs[cc][i] = x[cc][i] + e[cc] for one group's CG channels of HW values
 * (addbc_forward's sums); returns hs. */
static const float *gn_group_h(float *hs, const float *x, const float *e, int CG, int HW) {
    for (int cc = 0; cc < CG; cc++) {
        const float v = e[cc];
        const float *xc = x + (size_t)cc * HW;
        float *hc = hs + (size_t)cc * HW;
        for (int i = 0; i < HW; i++) hc[i] = xc[i] + v;
    }
    return hs;
}

/* The group norm of h = x + e[n,c] (e may be NULL: h = x), then SiLU when
 * act: groupnorm_forward and gnsilu_forward. With e, each group's h is
 * formed in a per-thread buffer first, so every sum runs over the same
 * floats in the same order as addbc_forward then groupnorm_forward, and
 * y = h * a + bb and silu(y) are the same expressions as there and in
 * silu_forward: the fused op is bit-identical to the three ops in a row.
 * coef: NULL, or the per-(n,c) scale and shift applied, [2][N][C] (the
 * fused backward recomputes y from them exactly). */
static void gn_forward(float *out, float *mean, float *rstd, float *coef, const float *inp,
                       const float *e, const float *w, const float *b, int N, int C, int HW,
                       int G, float eps, int act) {
    // inp, out: [N,C,HW]  e: [N,C]  w, b: [C]  mean, rstd: [N,G]
    const double epsd = ops_eps_double(eps);
    const int CG = C / G;
    const size_t M = (size_t)CG * HW; /* elements per group */
    assert(C % G == 0);
#pragma omp parallel num_threads(par_threads((size_t)N * C * HW))
    {
        float *hs = e ? scratch(M) : NULL;
#pragma omp for collapse(2) schedule(static)
        for (int n = 0; n < N; n++)
            for (int g = 0; g < G; g++) {
                const float *x = inp + ((size_t)n * C + (size_t)g * CG) * HW;
                float *y = out + ((size_t)n * C + (size_t)g * CG) * HW;
                if (e) x = gn_group_h(hs, x, e + (size_t)n * C + (size_t)g * CG, CG, HW);
                /* two passes in double: mean, then centred variance */
                double sum = 0.0;
#pragma omp simd reduction(+ : sum)
                for (size_t i = 0; i < M; i++) sum += x[i];
                const double mu = sum / (double)M;
                double ss = 0.0;
#pragma omp simd reduction(+ : ss)
                for (size_t i = 0; i < M; i++) {
                    double d = x[i] - mu;
                    ss += d * d;
                }
                const double rs = 1.0 / sqrt(ss / (double)M + epsd);
                mean[n * G + g] = (float)mu;
                rstd[n * G + g] = (float)rs;
                for (int cc = 0; cc < CG; cc++) {
                    const int c = g * CG + cc;
                    /* y = (x - mu) * rs * w + b = x * a + bb */
                    const float a = (float)(rs * (w ? w[c] : 1.0f));
                    const float bb = (float)((b ? b[c] : 0.0f) - mu * rs * (w ? w[c] : 1.0f));
                    const float *xc = x + (size_t)cc * HW;
                    float *yc = y + (size_t)cc * HW;
                    if (coef) {
                        coef[(size_t)n * C + c] = a;
                        coef[(size_t)(N + n) * C + c] = bb;
                    }
                    if (act)
                        for (int i = 0; i < HW; i++) {
                            const float v = xc[i] * a + bb;
                            yc[i] = v * silu_sig(v);
                        }
                    else
                        for (int i = 0; i < HW; i++) yc[i] = xc[i] * a + bb;
                }
            }
    }
}

void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int N, int C, int HW, int G,
                       float eps) {
    gn_forward(out, mean, rstd, NULL, inp, NULL, w, b, N, C, HW, G, eps, 0);
}

void gnsilu_forward(float *out, float *mean, float *rstd, float *coef, const float *inp,
                    const float *e, const float *w, const float *b, int N, int C, int HW, int G,
                    float eps) {
    gn_forward(out, mean, rstd, coef, inp, e, w, b, N, C, HW, G, eps, 1);
}

/* The backward of gn_forward. act (coef given): dout is the gradient of
 * silu(y), turned into y's (silu_backward's expression) per group in a
 * per-thread buffer; with e, h = x + e is formed again and h's gradient
 * goes to dinp and, summed over space, to de (addbc_backward's sums): the
 * same floats in the same order as the three backwards in a row. */
static void gn_backward(float *dinp, float *de, float *dw, float *db, const float *dout,
                        const float *inp, const float *e, const float *w, const float *coef,
                        const float *mean, const float *rstd, int N, int C, int HW, int G) {
    // dout, inp: [N,C,HW] -> dinp: [N,C,HW], de: [N,C], dw, db: [C]  (eps is in rstd already)
    if (!dinp && !de && !dw && !db) return;
    assert(!de || e);
    const int CG = C / G;
    const size_t M = (size_t)CG * HW;
    const int par = (size_t)N * C * HW > PAR_MIN;
    /* One pass computes, per (n,c), a1 = sum_i dout and a2 = sum_i
     * dout*(x-mu): db[c] = sum_n a1, dw[c] = sum_n rs*a2, and the group
     * means the input gradient needs. ps: [2,N,C] (when dw || db). */
    float *ps = (dw || db) ? malloc(sizeof(float) * 2 * (size_t)N * C) : NULL;
    if ((dw || db) && !ps) abort(); /* out of memory: nothing sensible to do here */
    const int need_dx = dinp || de;
    /* dx = rs * (dxh - mean(dxh) - xhat * mean(dxh * xhat)), dxh = dout * w */
#pragma omp parallel num_threads(par ? ops_get_threads() : 1)
    {
        float *hs = e || coef ? scratch((e ? 2 : 1) * M) : NULL;
        float *dys = e ? hs + M : hs; /* y's gradient (act), then h's (e) */
#pragma omp for collapse(2) schedule(static)
        for (int n = 0; n < N; n++)
            for (int g = 0; g < G; g++) {
                const size_t off = ((size_t)n * C + (size_t)g * CG) * HW;
                const float *x = inp + off, *d = dout + off;
                const float mu = mean[n * G + g], rs = rstd[n * G + g];
                if (e) x = gn_group_h(hs, x, e + (size_t)n * C + (size_t)g * CG, CG, HW);
                if (coef) {
                    /* d/dy y*s(y) = s * (1 + y*(1 - s)) */
                    for (int cc = 0; cc < CG; cc++) {
                        const int c = g * CG + cc;
                        const float a = coef[(size_t)n * C + c], bb = coef[(size_t)(N + n) * C + c];
                        const float *xc = x + (size_t)cc * HW, *dc = d + (size_t)cc * HW;
                        float *yc = dys + (size_t)cc * HW;
                        for (int i = 0; i < HW; i++) {
                            const float v = xc[i] * a + bb;
                            const float sg = silu_sig(v);
                            yc[i] = dc[i] * (sg * (1.0f + v * (1.0f - sg)));
                        }
                    }
                    d = dys;
                }
                double s1 = 0.0, s2 = 0.0;
                for (int cc = 0; cc < CG; cc++) {
                    const int c = g * CG + cc;
                    const float wc = w ? w[c] : 1.0f;
                    const float *xc = x + (size_t)cc * HW, *dc = d + (size_t)cc * HW;
                    float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
                    for (int i = 0; i < HW; i++) {
                        a1 += dc[i];
                        a2 += dc[i] * (xc[i] - mu);
                    }
                    if (ps) {
                        ps[(size_t)n * C + c] = a1;
                        ps[(size_t)(N + n) * C + c] = a2;
                    }
                    s1 += (double)wc * a1;
                    s2 += (double)wc * a2 * rs;
                }
                if (!need_dx) continue;
                const float m1 = (float)(s1 / (double)M), m2 = (float)(s2 / (double)M);
                for (int cc = 0; cc < CG; cc++) {
                    const int c = g * CG + cc;
                    const float wc = w ? w[c] : 1.0f;
                    const float *xc = x + (size_t)cc * HW, *dc = d + (size_t)cc * HW;
                    if (!e) {
                        float *dxc = dinp + off + (size_t)cc * HW;
                        for (int i = 0; i < HW; i++) {
                            const float xh = (xc[i] - mu) * rs;
                            dxc[i] += rs * (dc[i] * wc - m1 - xh * m2);
                        }
                        continue;
                    }
                    /* h's gradient in place of y's (each element read
                     * before it is written), then to x and e */
                    float *dh = dys + (size_t)cc * HW;
                    for (int i = 0; i < HW; i++) {
                        const float xh = (xc[i] - mu) * rs;
                        dh[i] = rs * (dc[i] * wc - m1 - xh * m2);
                    }
                    if (dinp) {
                        float *dxc = dinp + off + (size_t)cc * HW;
                        for (int i = 0; i < HW; i++) dxc[i] += dh[i];
                    }
                    if (de) {
                        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                        for (int i = 0; i < HW; i++) acc += dh[i];
                        de[(size_t)n * C + c] += acc;
                    }
                }
            }
    }
    if (ps) {
        for (int c = 0; c < C; c++) {
            double sb = 0.0, sw = 0.0;
            for (int n = 0; n < N; n++) {
                sb += ps[(size_t)n * C + c];
                sw += (double)ps[(size_t)(N + n) * C + c] * rstd[n * G + c / CG];
            }
            if (dw) dw[c] += (float)sw;
            if (db) db[c] += (float)sb;
        }
        free(ps);
    }
}

void groupnorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int C, int HW, int G, float eps) {
    gn_backward(dinp, NULL, dw, db, dout, inp, NULL, w, NULL, mean, rstd, N, C, HW, G);
}

void gnsilu_backward(float *dinp, float *de, float *dw, float *db, const float *dout,
                     const float *inp, const float *e, const float *w, const float *coef,
                     const float *mean, const float *rstd, int N, int C, int HW, int G) {
    gn_backward(dinp, de, dw, db, dout, inp, e, w, coef, mean, rstd, N, C, HW, G);
}

/* ------------------------------------------------------------ elementwise */

void silu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        out[i] = x * silu_sig(x);
    }
}

void silu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (!dinp) return;
    /* d/dx x*s(x) = s * (1 + x*(1 - s)) */
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        const float s = silu_sig(x);
        dinp[i] += dout[i] * (s * (1.0f + x * (1.0f - s)));
    }
}

void add_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void add_backward(float *da, float *db, const float *dout, size_t n) {
    if (da) {
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
        for (size_t i = 0; i < n; i++) da[i] += dout[i];
    }
    if (db) {
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
        for (size_t i = 0; i < n; i++) db[i] += dout[i];
    }
}

void addbc_forward(float *out, const float *x, const float *e, int N, int C, int HW) {
    // x, out: [N,C,HW]  e: [N,C]
    const int NC = N * C;
#pragma omp parallel for schedule(static) num_threads(par_threads((size_t)NC * HW))
    for (int nc = 0; nc < NC; nc++) {
        const float v = e[nc];
        const float *xs = x + (size_t)nc * HW;
        float *o = out + (size_t)nc * HW;
        for (int i = 0; i < HW; i++) o[i] = xs[i] + v;
    }
}

void addbc_backward(float *dx, float *de, const float *dout, int N, int C, int HW) {
    // dout: [N,C,HW] -> dx: [N,C,HW], de: [N,C]
    const int NC = N * C;
#pragma omp parallel for schedule(static) num_threads(par_threads((size_t)NC * HW))
    for (int nc = 0; nc < NC; nc++) {
        const float *d = dout + (size_t)nc * HW;
        if (dx) {
            float *g = dx + (size_t)nc * HW;
            for (int i = 0; i < HW; i++) g[i] += d[i];
        }
        if (de) {
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int i = 0; i < HW; i++) acc += d[i];
            de[nc] += acc;
        }
    }
}

void concat_forward(float *out, const float *a, const float *b, int N, int C1, int C2, int HW) {
    // a: [N,C1,HW]  b: [N,C2,HW]  out: [N,C1+C2,HW]
    const size_t sa = (size_t)C1 * HW, sb = (size_t)C2 * HW;
#pragma omp parallel for schedule(static) num_threads(par_threads((sa + sb) * N))
    for (int n = 0; n < N; n++) {
        memcpy(out + n * (sa + sb), a + n * sa, sizeof(float) * sa);
        memcpy(out + n * (sa + sb) + sa, b + n * sb, sizeof(float) * sb);
    }
}

void concat_backward(float *da, float *db, const float *dout, int N, int C1, int C2, int HW) {
    // dout: [N,C1+C2,HW] -> da: [N,C1,HW], db: [N,C2,HW]
    const size_t sa = (size_t)C1 * HW, sb = (size_t)C2 * HW;
#pragma omp parallel for schedule(static) num_threads(par_threads((sa + sb) * N))
    for (int n = 0; n < N; n++) {
        const float *d = dout + n * (sa + sb);
        if (da) {
            float *g = da + n * sa;
            for (size_t i = 0; i < sa; i++) g[i] += d[i];
        }
        if (db) {
            float *g = db + n * sb;
            for (size_t i = 0; i < sb; i++) g[i] += d[sa + i];
        }
    }
}

void upsample2x_forward(float *out, const float *inp, int N, int C, int H, int W) {
    // inp: [N,C,H,W]  out: [N,C,2H,2W]
    const int NC = N * C, W2 = 2 * W;
#pragma omp parallel for schedule(static) num_threads(par_threads((size_t)NC * H * W * 4))
    for (int nc = 0; nc < NC; nc++)
        for (int y = 0; y < H; y++) {
            const float *src = inp + ((size_t)nc * H + y) * W;
            float *d0 = out + ((size_t)nc * 2 * H + 2 * y) * W2;
            for (int x = 0; x < W2; x++) d0[x] = src[x >> 1];
            memcpy(d0 + W2, d0, sizeof(float) * W2);
        }
}

void upsample2x_backward(float *dinp, const float *dout, int N, int C, int H, int W) {
    // dout: [N,C,2H,2W] -> dinp: [N,C,H,W]
    if (!dinp) return;
    const int NC = N * C, W2 = 2 * W;
#pragma omp parallel for schedule(static) num_threads(par_threads((size_t)NC * H * W * 4))
    for (int nc = 0; nc < NC; nc++)
        for (int y = 0; y < H; y++) {
            const float *d0 = dout + ((size_t)nc * 2 * H + 2 * y) * W2, *d1 = d0 + W2;
            float *g = dinp + ((size_t)nc * H + y) * W;
            for (int x = 0; x < W; x++)
                g[x] += (d0[2 * x] + d0[2 * x + 1]) + (d1[2 * x] + d1[2 * x + 1]);
        }
}

/* -------------------------------------------------------------- attention */

/* Softmax of rows [r0,r1) of s: [T,T], in place, max-subtracted. */
static void softmax_rows(float *s, int T, int r0, int r1) {
    for (int i = r0; i < r1; i++) {
        float *row = s + (size_t)i * T;
        /* row max, 16 lanes (an elementwise max vectorises where a max
         * reduction would need -ffast-math) */
        float m16[16];
        for (int k = 0; k < 16; k++) m16[k] = row[0];
        int j = 0;
        for (; j + 16 <= T; j += 16)
            for (int k = 0; k < 16; k++) m16[k] = row[j + k] > m16[k] ? row[j + k] : m16[k];
        for (; j < T; j++) m16[0] = row[j] > m16[0] ? row[j] : m16[0];
        float mx = m16[0];
        for (int k = 1; k < 16; k++) mx = m16[k] > mx ? m16[k] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < T; j++) {
            row[j] = fexp(row[j] - mx);
            sum += row[j];
        }
        const float inv = 1.0f / sum;
        for (int j = 0; j < T; j++) row[j] *= inv;
    }
}

/* One image. qkv: [3C,T], att: [T,T], out: [C,T]. */
static void attn_fwd_img(float *out, float *att, const float *qkv, int C, int T, int coop) {
    const float *q = qkv, *k = qkv + (size_t)C * T, *v = qkv + (size_t)2 * C * T;
    int lo, hi;
    /* att[T,T] = q[C,T]^T @ k[C,T] / sqrt(C) */
    mm(coop, 1, 0, T, T, C, 1.0f / sqrtf((float)C), q, T, k, T, 0.0f, att, T);
    team_sync(coop);
    my_range(coop, T, 1, &lo, &hi);
    softmax_rows(att, T, lo, hi);
    team_sync(coop);
    /* out[C,T] = v[C,T] @ att[T,T]^T */
    mm(coop, 0, 1, C, T, T, 1.0f, v, T, att, T, 0.0f, out, T);
    team_sync(coop);
}

void attention_forward(float *out, float *att, const float *qkv, int N, int C, int T) {
    // qkv: [N,3C,T]  att: [N,T,T]  out: [N,C,T]
    const double flops = 4.0 * N * (double)T * T * C;
    const int nt = flops < 2e5 ? 1 : ops_get_threads();
    const int coop = N < nt;
    blas_single();
#pragma omp parallel num_threads(nt)
    {
        const int t = coop ? 0 : omp_get_thread_num(), step = coop ? 1 : omp_get_num_threads();
        for (int n = t; n < N; n += step)
            attn_fwd_img(out + (size_t)n * C * T, att + (size_t)n * T * T,
                         qkv + (size_t)n * 3 * C * T, C, T, coop);
    }
}

/* One image backward. datt: [T,T] scratch. */
static void attn_bwd_img(float *dqkv, const float *dout, const float *qkv, const float *att,
                         float *datt, int C, int T, int coop) {
    const float *q = qkv, *k = qkv + (size_t)C * T, *v = qkv + (size_t)2 * C * T;
    float *dq = dqkv, *dk = dqkv + (size_t)C * T, *dv = dqkv + (size_t)2 * C * T;
    const float sc = 1.0f / sqrtf((float)C);
    int lo, hi;
    /* dv[C,T] += dout[C,T] @ att[T,T] */
    mm(coop, 0, 0, C, T, T, 1.0f, dout, T, att, T, 1.0f, dv, T);
    /* datt[T,T] = dout[C,T]^T @ v[C,T] */
    mm(coop, 1, 0, T, T, C, 1.0f, dout, T, v, T, 0.0f, datt, T);
    team_sync(coop);
    /* softmax backward, in place: ds = att * (datt - sum_j att*datt) */
    my_range(coop, T, 1, &lo, &hi);
    for (int i = lo; i < hi; i++) {
        const float *a = att + (size_t)i * T;
        float *d = datt + (size_t)i * T;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < T; j++) dot += a[j] * d[j];
        for (int j = 0; j < T; j++) d[j] = a[j] * (d[j] - dot);
    }
    team_sync(coop);
    /* s = sc * q^T k:  dq[C,T] += sc * k[C,T] @ ds[T,T]^T,
     *                  dk[C,T] += sc * q[C,T] @ ds[T,T] */
    mm(coop, 0, 1, C, T, T, sc, k, T, datt, T, 1.0f, dq, T);
    mm(coop, 0, 0, C, T, T, sc, q, T, datt, T, 1.0f, dk, T);
    team_sync(coop);
}

void attention_backward(float *dqkv, const float *dout, const float *qkv,
                        const float *att, int N, int C, int T) {
    // dout: [N,C,T] -> dqkv: [N,3C,T]
    if (!dqkv) return;
    const double flops = 8.0 * N * (double)T * T * C;
    const int nt = flops < 2e5 ? 1 : ops_get_threads();
    const int coop = N < nt;
    float *shared = coop ? scratch((size_t)T * T) : NULL;
    blas_single();
#pragma omp parallel num_threads(nt)
    {
        float *datt = coop ? shared : scratch((size_t)T * T);
        const int t = coop ? 0 : omp_get_thread_num(), step = coop ? 1 : omp_get_num_threads();
        for (int n = t; n < N; n += step)
            attn_bwd_img(dqkv + (size_t)n * 3 * C * T, dout + (size_t)n * C * T,
                         qkv + (size_t)n * 3 * C * T, att + (size_t)n * T * T, datt, C, T, coop);
    }
}

/* ------------------------------------------------------- embeddings, loss */

void embedding_forward(float *out, const int *idx, const float *table, int N, int D) {
    // table: [V,D]  idx: [N]  out: [N,D]
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * D, table + (size_t)idx[n] * D, sizeof(float) * D);
}

void embedding_backward(float *dtable, const float *dout, const int *idx, int N, int D) {
    // dout: [N,D] -> dtable: [V,D] (serial: indices may repeat)
    if (!dtable) return;
    for (int n = 0; n < N; n++) {
        float *g = dtable + (size_t)idx[n] * D;
        const float *d = dout + (size_t)n * D;
        for (int i = 0; i < D; i++) g[i] += d[i];
    }
}

/* [cos, sin] with no shift: diffusers' flip_sin_to_cos = True, shift 0
 * (ops_tx.c computes it, bit for bit as before it had options). */
void timestep_embedding(float *out, const float *t, int N, int D) {
    timestep_embedding_ex(out, t, N, D, 1, 0.0f);
}

float mse_forward(const float *a, const float *b, size_t n) {
    if (n == 0) return 0.0f;
    double acc = 0.0;
#pragma omp parallel for simd reduction(+ : acc) schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a[i] - (double)b[i];
        acc += d * d;
    }
    return (float)(acc / (double)n);
}

void mse_backward(float *da, float dloss, const float *a, const float *b, size_t n) {
    if (!da || n == 0) return;
    const float s = 2.0f * dloss / (float)n;
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) da[i] += s * (a[i] - b[i]);
}

/* ---------------------------------------------------------------- threads */

/* The thread count is process-wide (an atomic setting, 0 = OpenMP's
 * default), not OpenMP's per-thread ICV: the thread that calls
 * ops_set_threads (the UI) need not be the one that runs the ops. */
static atomic_int ops_threads;

void ops_set_threads(int n) {
    if (n > 0) {
        atomic_store(&ops_threads, n);
        omp_set_num_threads(n);
    }
    /* OpenBLAS stays at one thread: the ops parallelise around it. */
    openblas_set_num_threads(1);
}

/* A calling thread's own setting (0 = the process-wide one): a worker of
 * a data-parallel loop (pretrain_step_backward_w) runs its ops on itself. */
static _Thread_local int ops_local_threads;

void ops_set_local_threads(int n) { ops_local_threads = n > 0 ? n : 0; }

int ops_get_threads(void) {
    if (ops_local_threads > 0) return ops_local_threads;
    int n = atomic_load(&ops_threads);
    return n > 0 ? n : omp_get_max_threads();
}
