/* tx.cu - the CUDA twins of the transformer ops in ops.h (CPU reference:
 * engine/ops_tx.c): layer norm, GELU, quick GELU, GEGLU, transpose, scale,
 * diffusers' timestep embedding and memory-efficient multi-head attention.
 * backend_cuda.cu puts them in the backend table (declared in tx.cuh).
 *
 * Attention is flash-style in fp32 (half precision is a later step): no
 * Tq x Tk buffer. A block of 8 warps owns 32 rows (queries in the forward
 * and in the dq kernel, keys in the dk/dv kernel), 4 per warp, each lane
 * holding columns lane, lane+32, ... of its rows' accumulators (dh <= 160,
 * so at most 5 per row). The other side streams through shared memory in
 * tiles of 32, one key or query per lane when scores are formed:
 *  - forward: online softmax per query row, saving lse = m + log(l);
 *  - backward: p = exp(s - lse) recomputed; one kernel over key tiles
 *    accumulates dk, dv (no atomics: a block owns its keys), another over
 *    query tiles accumulates dq; delta_i = dout_i . out_i is recomputed
 *    where needed (dh products per row), so nothing is allocated.
 * Heads wider than 160 (SD's VAE) take a chunked cuBLAS path instead (see
 * "attention for wide heads" below). The flash kernels' dynamic shared
 * memory reaches 82 KiB at dh = 160 (sm_80 and newer allow it).
 * Every backward accumulates (+=), NULL gradients are skipped.
 */
#include <math.h>
#include <stdlib.h>

extern "C" {
#include "../backend.h"
#include "../ops.h"
}
#include "cuda_common.cuh"
#include "tx.cuh"

#define FULL 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

/* ----------------------------------------------------------- layer norm */

/* one block per row, two passes in double like the CPU op */
__global__ void k_ln_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                             const float *b, int D, double eps) {
    __shared__ double sh[32];
    const size_t r = blockIdx.x;
    const float *x = inp + r * D;
    double s = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += x[i];
    const double mu = block_sum(s, sh) / D;
    double ss = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        double d = x[i] - mu;
        ss += d * d;
    }
    const double rs = 1.0 / sqrt(block_sum(ss, sh) / D + eps);
    if (threadIdx.x == 0) { mean[r] = (float)mu; rstd[r] = (float)rs; }
    const float muf = (float)mu, rsf = (float)rs;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        out[r * D + i] = (x[i] - muf) * rsf * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

/* dx += rs * (dxh - mean(dxh) - xhat * mean(dxh * xhat)); one block per row */
__global__ void k_ln_backward_x(float *dinp, const float *dout, const float *inp, const float *w,
                                const float *mean, const float *rstd, int D) {
    __shared__ float sh[32];
    const size_t r = blockIdx.x;
    const float *x = inp + r * D, *d = dout + r * D;
    const float mu = mean[r], rs = rstd[r];
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float dxh = d[i] * (w ? w[i] : 1.0f);
        s1 += dxh;
        s2 += dxh * ((x[i] - mu) * rs);
    }
    const float m1 = block_sum(s1, sh) / D, m2 = block_sum(s2, sh) / D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float dxh = d[i] * (w ? w[i] : 1.0f), xh = (x[i] - mu) * rs;
        dinp[r * D + i] += rs * (dxh - m1 - xh * m2);
    }
}

/* dw[i] += sum_r dout * xhat, db[i] += sum_r dout: blocks of 32 columns x
 * 8 row lanes (coalesced along the row), reduced in shared memory */
__global__ void k_ln_backward_wb(float *dw, float *db, const float *dout, const float *inp,
                                 const float *mean, const float *rstd, int N, int D) {
    __shared__ float sw[8][33], sb[8][33];
    const int i = blockIdx.x * 32 + threadIdx.x;
    float aw = 0.0f, ab = 0.0f;
    if (i < D)
        for (int r = threadIdx.y; r < N; r += 8) {
            float d = dout[(size_t)r * D + i];
            aw += d * (inp[(size_t)r * D + i] - mean[r]) * rstd[r];
            ab += d;
        }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && i < D) {
        for (int y = 1; y < 8; y++) { aw += sw[y][threadIdx.x]; ab += sb[y][threadIdx.x]; }
        if (dw) dw[i] += aw;
        if (db) db[i] += ab;
    }
}

void cu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                          const float *b, int N, int D, float eps) {
    if (N <= 0) return;
    k_ln_forward<<<N, 128, 0, d3cu_st>>>(out, mean, rstd, inp, w, b, D, ops_eps_double(eps));
    CKL();
}

void cu_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, const float *mean, const float *rstd, int N, int D) {
    if (N <= 0) return;
    if (dinp) {
        k_ln_backward_x<<<N, 128, 0, d3cu_st>>>(dinp, dout, inp, w, mean, rstd, D);
        CKL();
    }
    if (dw || db) {
        k_ln_backward_wb<<<(D + 31) / 32, dim3(32, 8), 0, d3cu_st>>>(dw, db, dout, inp, mean, rstd, N, D);
        CKL();
    }
}

/* ----------------------------------------------------------- activations */

__device__ __forceinline__ float gelu1(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float dgelu1(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
}

__global__ void k_gelu_f(float *out, const float *x, size_t n) { GRID_STRIDE(i, n) out[i] = gelu1(x[i]); }
__global__ void k_gelu_b(float *dx, const float *dout, const float *x, size_t n) {
    GRID_STRIDE(i, n) dx[i] += dout[i] * dgelu1(x[i]);
}
__global__ void k_qgelu_f(float *out, const float *x, size_t n) {
    GRID_STRIDE(i, n) out[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}
__global__ void k_qgelu_b(float *dx, const float *dout, const float *x, size_t n) {
    GRID_STRIDE(i, n) {
        float v = x[i], s = 1.0f / (1.0f + expf(-1.702f * v));
        dx[i] += dout[i] * (s + 1.702f * v * s * (1.0f - s));
    }
}
/* inp [rows, 2F] (value | gate) -> out [rows, F] */
__global__ void k_geglu_f(float *out, const float *inp, int F, size_t n) {
    GRID_STRIDE(i, n) {
        size_t r = i / F, c = i % F;
        out[i] = inp[r * 2 * F + c] * gelu1(inp[r * 2 * F + F + c]);
    }
}
__global__ void k_geglu_b(float *dinp, const float *dout, const float *inp, int F, size_t n) {
    GRID_STRIDE(i, n) {
        size_t r = i / F, c = i % F;
        float a = inp[r * 2 * F + c], g = inp[r * 2 * F + F + c];
        dinp[r * 2 * F + c] += dout[i] * gelu1(g);
        dinp[r * 2 * F + F + c] += dout[i] * a * dgelu1(g);
    }
}
__global__ void k_scale_f(float *out, const float *x, float s, size_t n) { GRID_STRIDE(i, n) out[i] = s * x[i]; }
__global__ void k_scale_b(float *dx, const float *dout, float s, size_t n) { GRID_STRIDE(i, n) dx[i] += s * dout[i]; }

void cu_gelu_forward(float *out, const float *inp, size_t n) { EW(k_gelu_f, n, out, inp, n); }
void cu_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (dinp) EW(k_gelu_b, n, dinp, dout, inp, n);
}
void cu_quick_gelu_forward(float *out, const float *inp, size_t n) { EW(k_qgelu_f, n, out, inp, n); }
void cu_quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (dinp) EW(k_qgelu_b, n, dinp, dout, inp, n);
}
void cu_geglu_forward(float *out, const float *inp, int N, int F) {
    size_t n = (size_t)N * F;
    EW(k_geglu_f, n, out, inp, F, n);
}
void cu_geglu_backward(float *dinp, const float *dout, const float *inp, int N, int F) {
    size_t n = (size_t)N * F;
    if (dinp) EW(k_geglu_b, n, dinp, dout, inp, F, n);
}
void cu_scale_forward(float *out, const float *inp, float s, size_t n) { EW(k_scale_f, n, out, inp, s, n); }
void cu_scale_backward(float *dinp, const float *dout, float s, size_t n) {
    if (dinp) EW(k_scale_b, n, dinp, dout, s, n);
}

/* ------------------------------------------------------------ transpose */

/* dst[n, B, A] (acc ? += : =) src[n, A, B]^T through a 32x33 shared tile;
 * grid (B/32, A/32, N), block (32, 8) */
__global__ void k_transpose(float *dst, const float *src, int A, int B, int acc) {
    __shared__ float tile[32][33];
    const size_t off = (size_t)blockIdx.z * A * B;
    const int b0 = blockIdx.x * 32, a0 = blockIdx.y * 32;
    for (int y = threadIdx.y; y < 32; y += 8) {
        int a = a0 + y, b = b0 + threadIdx.x;
        if (a < A && b < B) tile[y][threadIdx.x] = src[off + (size_t)a * B + b];
    }
    __syncthreads();
    for (int y = threadIdx.y; y < 32; y += 8) {
        int b = b0 + y, a = a0 + threadIdx.x;
        if (a < A && b < B) {
            float *p = dst + off + (size_t)b * A + a;
            *p = (acc ? *p : 0.0f) + tile[threadIdx.x][y];
        }
    }
}

static void transpose_tiles(float *dst, const float *src, int N, int A, int B, int acc) {
    if ((size_t)N * A * B == 0) return;
    dim3 grid((B + 31) / 32, (A + 31) / 32, N);
    k_transpose<<<grid, dim3(32, 8), 0, d3cu_st>>>(dst, src, A, B, acc);
    CKL();
}
void cu_transpose_forward(float *out, const float *inp, int N, int A, int B) { transpose_tiles(out, inp, N, A, B, 0); }
void cu_transpose_backward(float *dinp, const float *dout, int N, int A, int B) {
    if (dinp) transpose_tiles(dinp, dout, N, B, A, 1);
}

/* --------------------------------------------------- timestep embedding */

/* in double like the CPU op, rounded to float once */
__global__ void k_temb_ex(float *out, const float *t, int D, int flip, double den, size_t n) {
    int half = D / 2;
    GRID_STRIDE(i, n) {
        size_t nn = i / half;
        int j = (int)(i % half);
        double f = exp(-log(10000.0) * j / den), a = (double)t[nn] * f;
        out[nn * D + (flip ? j : half + j)] = (float)cos(a);
        out[nn * D + (flip ? half + j : j)] = (float)sin(a);
        if (j == 0 && (D & 1)) out[nn * D + D - 1] = 0.0f;
    }
}
void cu_timestep_embedding_ex(float *out, const float *t, int N, int D, int flip_sin_to_cos, float freq_shift) {
    size_t n = (size_t)N * (D / 2);
    EW(k_temb_ex, n, out, t, D, flip_sin_to_cos, (double)(D / 2) - (double)freq_shift, n);
}

/* ------------------------------------------------------------ attention */

#define MT 32   /* rows per block = keys or queries per tile = warp size */
#define RPW 4   /* rows per warp (8 warps) */
#define MAXC 5  /* accumulator columns per lane: dh <= 32 * MAXC = 160 */
#define MHA_THREADS 256

/* Rows r0..r0+31 of sa (and sb, unless NULL), dh columns, row stride D in
 * global memory, into shared tiles a, b with row strides la, lb; rows past
 * T are zero. The whole block takes part. */
__device__ __forceinline__ void load_rows(float *a, int la, const float *sa, float *b, int lb,
                                          const float *sb, int r0, int T, int D, int dh) {
    for (int e = threadIdx.x; e < MT * dh; e += blockDim.x) {
        const int r = e / dh, d = e % dh, in = r0 + r < T;
        a[r * la + d] = in ? sa[(size_t)(r0 + r) * D + d] : 0.0f;
        if (b) b[r * lb + d] = in ? sb[(size_t)(r0 + r) * D + d] : 0.0f;
    }
}

/* acc[c] += sum_jj x(lane jj) * tile[jj][lane + 32 c]: a row of weights held
 * one per lane (x) times a 32-row tile in shared memory (row stride ld),
 * into this lane's columns of an accumulator row */
__device__ __forceinline__ void acc_tile(float acc[MAXC], float x, const float *tile, int ld, int dh,
                                         int lane) {
    for (int jj = 0; jj < MT; jj++) {
        const float xj = __shfl_sync(FULL, x, jj);
#pragma unroll
        for (int c = 0; c < MAXC; c++)
            if (lane + 32 * c < dh) acc[c] += xj * tile[jj * ld + lane + 32 * c];
    }
}

/* forward: grid (ceil(Tq/32), N*H); shared q [32][dh], k [32][dh+1], v [32][dh] */
__global__ void __launch_bounds__(MHA_THREADS)
k_mha_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int Tq, int Tk, int H,
          int dh, int causal, float scale) {
    extern __shared__ float sm[];
    const int D = H * dh, ld = dh + 1, nh = blockIdx.y, n = nh / H, h = nh % H, i0 = blockIdx.x * MT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *qs = sm, *ks = qs + MT * dh, *vs = ks + MT * ld;
    const float *qb = q + (size_t)n * Tq * D + h * dh, *kb = k + (size_t)n * Tk * D + h * dh,
                *vb = v + (size_t)n * Tk * D + h * dh;
    load_rows(qs, dh, qb, NULL, 0, NULL, i0, Tq, D, dh);
    float o[RPW][MAXC], m[RPW], l[RPW];
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int c = 0; c < MAXC; c++) o[rr][c] = 0.0f;
    }
    const int kend = causal ? min(Tk, i0 + MT) : Tk;
    for (int j0 = 0; j0 < kend; j0 += MT) {
        __syncthreads(); /* the previous tile is consumed */
        load_rows(ks, ld, kb, vs, dh, vb, j0, Tk, D, dh);
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < RPW; rr++) {
            const int r = warp * RPW + rr, i = i0 + r, j = j0 + lane;
            if (i >= Tq) continue; /* warp-uniform */
            float s = 0.0f;
            for (int d = 0; d < dh; d++) s += qs[r * dh + d] * ks[lane * ld + d];
            const bool valid = j < Tk && !(causal && j > i);
            s = valid ? s * scale : -INFINITY;
            const float mt = warp_max(s);
            if (mt == -INFINITY) continue; /* no key of this tile is visible */
            const float mn = fmaxf(m[rr], mt), alpha = expf(m[rr] - mn);
            const float p = valid ? expf(s - mn) : 0.0f;
            l[rr] = l[rr] * alpha + warp_sum(p);
            m[rr] = mn;
#pragma unroll
            for (int c = 0; c < MAXC; c++) o[rr][c] *= alpha;
            acc_tile(o[rr], p, vs, dh, dh, lane);
        }
    }
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        const int i = i0 + warp * RPW + rr;
        if (i >= Tq) continue;
        float *y = out + (size_t)n * Tq * D + (size_t)i * D + h * dh;
        const float inv = 1.0f / l[rr];
#pragma unroll
        for (int c = 0; c < MAXC; c++)
            if (lane + 32 * c < dh) y[lane + 32 * c] = o[rr][c] * inv;
        if (lane == 0) lse[(size_t)nh * Tq + i] = m[rr] + logf(l[rr]);
    }
}

/* delta_i = dout_i . out_i for the warp's rows of a tile starting at i0
 * (lane 0 writes dl[r], and lse into ls[r]; rows past Tq get 0) */
__device__ void mha_row_stats(float *dl, float *ls, const float *dout, const float *out, const float *lse,
                              int i0, int Tq, int D, int dh, int warp, int lane) {
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        const int r = warp * RPW + rr, i = i0 + r;
        float acc = 0.0f;
        if (i < Tq)
            for (int d = lane; d < dh; d += 32) acc += dout[(size_t)i * D + d] * out[(size_t)i * D + d];
        acc = warp_sum(acc);
        if (lane == 0) {
            dl[r] = acc;
            ls[r] = i < Tq ? lse[i] : 0.0f;
        }
    }
}

/* One (query i, key j) pair of the backward, rows in shared memory:
 * p = exp(scale q_i.k_j - lse_i) (0 where masked), ds = p (dout_i.v_j - delta_i). */
__device__ __forceinline__ void mha_p_ds(float *p, float *ds, const float *qi, const float *kj,
                                         const float *doi, const float *vj, int dh, bool valid,
                                         float scale, float lse, float delta) {
    float s = 0.0f, dp = 0.0f;
    for (int d = 0; d < dh; d++) {
        s += qi[d] * kj[d];
        dp += doi[d] * vj[d];
    }
    *p = valid ? expf(s * scale - lse) : 0.0f;
    *ds = *p * (dp - delta);
}

/* dk, dv: grid (ceil(Tk/32), N*H), the block owns keys j0..j0+31.
 * shared: k, v [32][dh] (own keys), q, dout [32][dh+1] (query tile),
 * delta, lse [32] */
__global__ void __launch_bounds__(MHA_THREADS)
k_mha_bwd_kv(float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
             const float *out, const float *lse, int Tq, int Tk, int H, int dh, int causal, float scale) {
    extern __shared__ float sm[];
    const int D = H * dh, ld = dh + 1, nh = blockIdx.y, n = nh / H, h = nh % H, j0 = blockIdx.x * MT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *ks = sm, *vs = ks + MT * dh, *qs = vs + MT * dh, *os = qs + MT * ld, *dl = os + MT * ld, *ls = dl + MT;
    const size_t oq = (size_t)n * Tq * D + h * dh, ok = (size_t)n * Tk * D + h * dh;
    load_rows(ks, dh, k + ok, vs, dh, v + ok, j0, Tk, D, dh);
    float gk[RPW][MAXC], gv[RPW][MAXC];
#pragma unroll
    for (int rr = 0; rr < RPW; rr++)
#pragma unroll
        for (int c = 0; c < MAXC; c++) gk[rr][c] = gv[rr][c] = 0.0f;
    /* under the mask, queries before j0 see none of these keys */
    for (int i0 = causal ? j0 : 0; i0 < Tq; i0 += MT) {
        __syncthreads();
        load_rows(qs, ld, q + oq, os, ld, dout + oq, i0, Tq, D, dh);
        mha_row_stats(dl, ls, dout + oq, out + oq, lse + (size_t)nh * Tq, i0, Tq, D, dh, warp, lane);
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < RPW; rr++) {
            const int r = warp * RPW + rr, j = j0 + r, i = i0 + lane;
            if (j >= Tk) continue; /* warp-uniform */
            float p, ds;
            mha_p_ds(&p, &ds, qs + lane * ld, ks + r * dh, os + lane * ld, vs + r * dh, dh,
                     i < Tq && !(causal && j > i), scale, ls[lane], dl[lane]);
            acc_tile(gv[rr], p, os, ld, dh, lane);
            acc_tile(gk[rr], ds, qs, ld, dh, lane);
        }
    }
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        const int j = j0 + warp * RPW + rr;
        if (j >= Tk) continue;
#pragma unroll
        for (int c = 0; c < MAXC; c++)
            if (lane + 32 * c < dh) {
                const size_t at = ok + (size_t)j * D + lane + 32 * c;
                if (dk) dk[at] += scale * gk[rr][c];
                if (dv) dv[at] += gv[rr][c];
            }
    }
}

/* dq: grid (ceil(Tq/32), N*H), the block owns queries i0..i0+31.
 * shared: q, dout [32][dh] (own queries), k, v [32][dh+1] (key tile),
 * delta, lse [32] */
__global__ void __launch_bounds__(MHA_THREADS)
k_mha_bwd_q(float *dq, const float *dout, const float *q, const float *k, const float *v, const float *out,
            const float *lse, int Tq, int Tk, int H, int dh, int causal, float scale) {
    extern __shared__ float sm[];
    const int D = H * dh, ld = dh + 1, nh = blockIdx.y, n = nh / H, h = nh % H, i0 = blockIdx.x * MT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *qs = sm, *os = qs + MT * dh, *ks = os + MT * dh, *vs = ks + MT * ld, *dl = vs + MT * ld, *ls = dl + MT;
    const size_t oq = (size_t)n * Tq * D + h * dh, ok = (size_t)n * Tk * D + h * dh;
    load_rows(qs, dh, q + oq, os, dh, dout + oq, i0, Tq, D, dh);
    mha_row_stats(dl, ls, dout + oq, out + oq, lse + (size_t)nh * Tq, i0, Tq, D, dh, warp, lane);
    float gq[RPW][MAXC];
#pragma unroll
    for (int rr = 0; rr < RPW; rr++)
#pragma unroll
        for (int c = 0; c < MAXC; c++) gq[rr][c] = 0.0f;
    const int kend = causal ? min(Tk, i0 + MT) : Tk;
    for (int j0 = 0; j0 < kend; j0 += MT) {
        __syncthreads();
        load_rows(ks, ld, k + ok, vs, ld, v + ok, j0, Tk, D, dh);
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < RPW; rr++) {
            const int r = warp * RPW + rr, i = i0 + r, j = j0 + lane;
            if (i >= Tq) continue; /* warp-uniform */
            float p, ds;
            mha_p_ds(&p, &ds, qs + r * dh, ks + lane * ld, os + r * dh, vs + lane * ld, dh,
                     j < Tk && !(causal && j > i), scale, ls[r], dl[r]);
            acc_tile(gq[rr], ds, ks, ld, dh, lane);
        }
    }
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        const int i = i0 + warp * RPW + rr;
        if (i >= Tq) continue;
#pragma unroll
        for (int c = 0; c < MAXC; c++)
            if (lane + 32 * c < dh) dq[oq + (size_t)i * D + lane + 32 * c] += scale * gq[rr][c];
    }
}


/* ------------------------------------------- attention for wide heads
 * d_head above 160 (SD's VAE: one head of 512 over the latent's tokens)
 * does not fit the flash kernels' registers and shared memory. It runs by
 * query chunks of cq rows instead, per image, all heads at once with
 * strided-batched cuBLAS products: the scores of a chunk, [H, cq, Tk],
 * live in a scratch buffer of at most MHA_CHUNK_FLOATS floats (cq chosen
 * to fit), never the whole T x T matrix of a large T. The backward
 * recomputes the chunk's probabilities from lse like the flash kernels.
 * Row-major X[r, c] with row stride ld is cuBLAS's column-major X^T. */
#define MHA_CHUNK_FLOATS ((size_t)4 << 20) /* 16 MiB per scratch buffer */

static float *chunk_s, *chunk_dp; /* [H, cq, Tk] scores / probabilities, their gradient */
static size_t chunk_s_size, chunk_dp_size;

/* One warp per row of s [H, cq, Tk]: grid (ceil(cq/8), H), 8 warps a block.
 * mode 0: softmax in place, lse written; mode 1: p = exp(s - lse). lse
 * points at the image's [H, Tq]. */
__global__ void k_chunk_rows(float *s, float *lse, int cq, int Tq, int Tk, int i0, int causal, int mode) {
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int h = blockIdx.y, i = i0 + r;
    if (r >= cq) return;
    float *x = s + ((size_t)h * cq + r) * Tk;
    float *l = lse + (size_t)h * Tq + i;
    const int jv = causal ? min(Tk, i + 1) : Tk;
    if (mode == 1) {
        const float li = *l;
        for (int j = lane; j < Tk; j += 32) x[j] = j < jv ? expf(x[j] - li) : 0.0f;
        return;
    }
    float m = -INFINITY;
    for (int j = lane; j < jv; j += 32) m = fmaxf(m, x[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < Tk; j += 32) {
        const float e = j < jv ? expf(x[j] - m) : 0.0f;
        x[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int j = lane; j < jv; j += 32) x[j] *= inv;
    if (lane == 0) *l = m + logf(sum);
}

/* ds = p * (dp - sum_j p dp), in place in dp; one warp per row */
__global__ void k_chunk_ds(float *dp, const float *p, int rows, int Tk) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float *pr = p + (size_t)row * Tk;
    float *dr = dp + (size_t)row * Tk;
    float dot = 0.0f;
    for (int j = lane; j < Tk; j += 32) dot += pr[j] * dr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < Tk; j += 32) dr[j] = pr[j] * (dr[j] - dot);
}

/* Rows per chunk. D3PO_CUDA_MHA_CHUNK_FLOATS overrides the budget (read
 * once; test_cuda makes it small so that its cases span several chunks). */
static int chunk_rows(int H, int Tq, int Tk) {
    static size_t budget;
    if (!budget) {
        const char *e = getenv("D3PO_CUDA_MHA_CHUNK_FLOATS");
        unsigned long long b = e ? strtoull(e, NULL, 10) : 0;
        budget = b > 0 ? (size_t)b : MHA_CHUNK_FLOATS;
    }
    size_t cq = budget / ((size_t)H * Tk);
    return cq < 1 ? 1 : cq > (size_t)Tq ? Tq : (int)cq;
}

/* s[h] (cq x Tk) = alpha * a[h] (cq x dh, rows i0.., stride D) @ b[h]^T (Tk x dh, stride D) */
static void chunk_scores(float *s, const float *a, const float *b, float alpha, int H, int cq, int Tk, int dh,
                         int D) {
    const float zero = 0.0f;
    CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_T, CUBLAS_OP_N, Tk, cq, dh, &alpha, b, D, dh, a, D, dh,
                                  &zero, s, Tk, (long long)cq * Tk, H));
}

static void chunk_launch_rows(float *s, float *lse, int H, int cq, int Tq, int Tk, int i0, int causal, int mode) {
    dim3 grid((cq + 7) / 8, H); /* 8 warps (rows) per block */
    k_chunk_rows<<<grid, 256, 0, d3cu_st>>>(s, lse, cq, Tq, Tk, i0, causal, mode);
    CKL();
}

static void mha_chunked_forward(float *out, float *lse, const float *q, const float *k, const float *v, int N,
                                int Tq, int Tk, int H, int dh, int causal) {
    const int D = H * dh, cqmax = chunk_rows(H, Tq, Tk);
    float *s = (float *)grow((void **)&chunk_s, &chunk_s_size, sizeof(float) * (size_t)H * cqmax * Tk);
    const float one = 1.0f, zero = 0.0f, scale = 1.0f / sqrtf((float)dh);
    for (int n = 0; n < N; n++)
        for (int i0 = 0; i0 < Tq; i0 += cqmax) {
            const int cq = min(cqmax, Tq - i0);
            const float *qc = q + ((size_t)n * Tq + i0) * D, *kn = k + (size_t)n * Tk * D, *vn = v + (size_t)n * Tk * D;
            chunk_scores(s, qc, kn, scale, H, cq, Tk, dh, D);
            chunk_launch_rows(s, lse + (size_t)n * H * Tq, H, cq, Tq, Tk, i0, causal, 0);
            /* out[h] (cq x dh) = p[h] (cq x Tk) @ v[h] (Tk x dh) */
            CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_N, dh, cq, Tk, &one, vn, D, dh, s, Tk,
                                          (long long)cq * Tk, &zero, out + ((size_t)n * Tq + i0) * D, D, dh, H));
        }
}

static void mha_chunked_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                 const float *v, const float *lse, int N, int Tq, int Tk, int H, int dh, int causal) {
    const int D = H * dh, cqmax = chunk_rows(H, Tq, Tk);
    const size_t bytes = sizeof(float) * (size_t)H * cqmax * Tk;
    float *p = (float *)grow((void **)&chunk_s, &chunk_s_size, bytes);
    float *dp = (float *)grow((void **)&chunk_dp, &chunk_dp_size, bytes);
    const float one = 1.0f, scale = 1.0f / sqrtf((float)dh);
    for (int n = 0; n < N; n++)
        for (int i0 = 0; i0 < Tq; i0 += cqmax) {
            const int cq = min(cqmax, Tq - i0);
            const long long sc = (long long)cq * Tk;
            const size_t oq = ((size_t)n * Tq + i0) * D, ok = (size_t)n * Tk * D;
            chunk_scores(p, q + oq, k + ok, scale, H, cq, Tk, dh, D);
            chunk_launch_rows(p, (float *)lse + (size_t)n * H * Tq, H, cq, Tq, Tk, i0, causal, 1);
            /* dv[h] (Tk x dh) += p[h]^T @ dout[h] */
            if (dv)
                CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_T, dh, Tk, cq, &one, dout + oq, D, dh,
                                              p, Tk, sc, &one, dv + ok, D, dh, H));
            if (!dq && !dk) continue;
            /* dp[h] = dout[h] @ v[h]^T, then ds = p (dp - rowsum(p dp)) */
            chunk_scores(dp, dout + oq, v + ok, 1.0f, H, cq, Tk, dh, D);
            const int rows = H * cq;
            k_chunk_ds<<<(rows + 7) / 8, 256, 0, d3cu_st>>>(dp, p, rows, Tk);
            CKL();
            /* dq[h] (cq x dh) += scale ds[h] @ k[h];  dk[h] (Tk x dh) += scale ds[h]^T @ q[h] */
            if (dq)
                CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_N, dh, cq, Tk, &scale, k + ok, D, dh,
                                              dp, Tk, sc, &one, dq + oq, D, dh, H));
            if (dk)
                CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_T, dh, Tk, cq, &scale, q + oq, D, dh,
                                              dp, Tk, sc, &one, dk + ok, D, dh, H));
        }
}

/* Dynamic shared memory above 48 KiB must be allowed per kernel. */
template <typename K>
static void allow_smem(K kernel, size_t bytes) {
    if (bytes > 48 * 1024) CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

void cu_mha_forward(float *out, float *lse, const float *q, const float *k, const float *v, int N, int Tq, int Tk,
                    int heads, int dh, int causal) {
    if ((size_t)N * heads * Tq == 0) return;
    if (dh > 32 * MAXC) {
        mha_chunked_forward(out, lse, q, k, v, N, Tq, Tk, heads, dh, causal);
        return;
    }
    const size_t smem = sizeof(float) * (size_t)MT * (3 * dh + 1);
    allow_smem(k_mha_fwd, smem);
    dim3 grid((Tq + MT - 1) / MT, N * heads);
    k_mha_fwd<<<grid, MHA_THREADS, smem, d3cu_st>>>(out, lse, q, k, v, Tq, Tk, heads, dh, causal,
                                                    1.0f / sqrtf((float)dh));
    CKL();
}

void cu_mha_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                     const float *v, const float *out, const float *lse, int N, int Tq, int Tk, int heads, int dh,
                     int causal) {
    if ((size_t)N * heads * Tq * Tk == 0 || (!dq && !dk && !dv)) return;
    if (dh > 32 * MAXC) {
        mha_chunked_backward(dq, dk, dv, dout, q, k, v, lse, N, Tq, Tk, heads, dh, causal);
        return;
    }
    const float scale = 1.0f / sqrtf((float)dh);
    const size_t smem = sizeof(float) * ((size_t)MT * (4 * dh + 2) + 2 * MT);
    if (dk || dv) {
        allow_smem(k_mha_bwd_kv, smem);
        dim3 grid((Tk + MT - 1) / MT, N * heads);
        k_mha_bwd_kv<<<grid, MHA_THREADS, smem, d3cu_st>>>(dk, dv, dout, q, k, v, out, lse, Tq, Tk, heads, dh,
                                                           causal, scale);
        CKL();
    }
    if (dq) {
        allow_smem(k_mha_bwd_q, smem);
        dim3 grid((Tq + MT - 1) / MT, N * heads);
        k_mha_bwd_q<<<grid, MHA_THREADS, smem, d3cu_st>>>(dq, dout, q, k, v, out, lse, Tq, Tk, heads, dh, causal,
                                                          scale);
        CKL();
    }
}
