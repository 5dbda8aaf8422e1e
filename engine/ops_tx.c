/* ops_tx.c - the CPU reference of the transformer ops in ops.h (layer norm,
 * GELU, quick GELU, GEGLU, multi-head attention, transpose, scale, and
 * diffusers' timestep embedding): what Stable Diffusion's UNet and VAE and
 * CLIP's text encoder need beyond the pixel UNet's ops (ops_cpu.c).
 *
 * Same conventions as ops_cpu.c: C11 + OpenMP, OpenBLAS single-threaded
 * inside OpenMP regions, every backward ACCUMULATES (+=) into each gradient
 * it receives, NULL = gradient not wanted.
 *
 * Attention is memory-efficient (flash attention on the CPU): the forward
 * goes over query blocks x key blocks with an online softmax and keeps only
 * the log-sum-exp of every query row; the backward recomputes each block's
 * probabilities from it. Per thread it needs O(BQ*BK + T) scratch floats,
 * never a Tq x Tk buffer, so a 64x64 latent's 4096 tokens cost no more
 * memory than their q, k, v.
 */
/* Without this, GCC 12 keeps fexp()'s clamps (x < -87 ? ...) as branches
 * and runs the softmax exponentials one float at a time (they were 40% of
 * the attention's time); assuming no FP traps lets it if-convert and
 * vectorise them. Results are unchanged: no reassociation is allowed. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "ops.h"
#include "ops_internal.h"

#include <assert.h>
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- layer norm */

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int N, int D, float eps) {
    // inp, out: [N,D]  w, b: [D]  mean, rstd: [N]
    const double epsd = ops_eps_double(eps);
#pragma omp parallel for schedule(static) num_threads(par_threads((size_t)N * D))
    for (int r = 0; r < N; r++) {
        const float *x = inp + (size_t)r * D;
        float *y = out + (size_t)r * D;
        /* two passes in double, like groupnorm */
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < D; i++) sum += x[i];
        const double mu = sum / D;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < D; i++) {
            const double d = x[i] - mu;
            ss += d * d;
        }
        const double rs = 1.0 / sqrt(ss / D + epsd);
        mean[r] = (float)mu;
        rstd[r] = (float)rs;
        const float muf = (float)mu, rsf = (float)rs;
        for (int i = 0; i < D; i++)
            y[i] = (x[i] - muf) * rsf * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int D) {
    // dout, inp: [N,D] -> dinp: [N,D], dw, db: [D]
    if (!dinp && !dw && !db) return;
    const int nt = par_threads((size_t)N * D);
    /* per-thread partial sums of dw, db: [nt][2D], summed at the end */
    float *part = (dw || db) ? calloc((size_t)nt * 2 * D, sizeof(float)) : NULL;
    if ((dw || db) && !part) abort(); /* out of memory: nothing sensible to do here */
#pragma omp parallel num_threads(nt)
    {
        float *pw = part ? part + (size_t)omp_get_thread_num() * 2 * D : NULL, *pb = pw ? pw + D : NULL;
#pragma omp for schedule(static)
        for (int r = 0; r < N; r++) {
            const float *x = inp + (size_t)r * D, *d = dout + (size_t)r * D;
            const float mu = mean[r], rs = rstd[r];
            /* dx = rs * (dxh - mean(dxh) - xhat * mean(dxh * xhat)), dxh = dout * w */
            float s1 = 0.0f, s2 = 0.0f;
            for (int i = 0; i < D; i++) {
                const float xh = (x[i] - mu) * rs, dxh = d[i] * (w ? w[i] : 1.0f);
                s1 += dxh;
                s2 += dxh * xh;
                if (pw) {
                    pw[i] += d[i] * xh;
                    pb[i] += d[i];
                }
            }
            if (!dinp) continue;
            const float m1 = s1 / D, m2 = s2 / D;
            float *dx = dinp + (size_t)r * D;
            for (int i = 0; i < D; i++) {
                const float xh = (x[i] - mu) * rs, dxh = d[i] * (w ? w[i] : 1.0f);
                dx[i] += rs * (dxh - m1 - xh * m2);
            }
        }
    }
    if (part) {
        for (int i = 0; i < D; i++) {
            float sw = 0.0f, sb = 0.0f;
            for (int t = 0; t < nt; t++) {
                sw += part[(size_t)t * 2 * D + i];
                sb += part[(size_t)t * 2 * D + D + i];
            }
            if (dw) dw[i] += sw;
            if (db) db[i] += sb;
        }
        free(part);
    }
}

/* ------------------------------------------------------------ activations */

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

static inline float gelu1(float x) { return 0.5f * x * (1.0f + erff(x * INV_SQRT2)); }
/* d/dx gelu = Phi(x) + x * phi(x) */
static inline float dgelu1(float x) {
    return 0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
}

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) out[i] = gelu1(inp[i]);
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (!dinp) return;
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * dgelu1(inp[i]);
}

void quick_gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        out[i] = x / (1.0f + expf(-1.702f * x));
    }
}

void quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (!dinp) return;
    /* d/dx x*s(ax) = s + a*x*s*(1-s) */
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i], s = 1.0f / (1.0f + expf(-1.702f * x));
        dinp[i] += dout[i] * (s + 1.702f * x * s * (1.0f - s));
    }
}

void geglu_forward(float *out, const float *inp, int N, int F) {
    // inp: [N,2F] (value | gate) -> out: [N,F]
#pragma omp parallel for schedule(static) num_threads(par_threads((size_t)N * F * 3))
    for (int r = 0; r < N; r++) {
        const float *a = inp + (size_t)r * 2 * F, *g = a + F;
        float *y = out + (size_t)r * F;
        for (int i = 0; i < F; i++) y[i] = a[i] * gelu1(g[i]);
    }
}

void geglu_backward(float *dinp, const float *dout, const float *inp, int N, int F) {
    if (!dinp) return;
#pragma omp parallel for schedule(static) num_threads(par_threads((size_t)N * F * 3))
    for (int r = 0; r < N; r++) {
        const float *a = inp + (size_t)r * 2 * F, *g = a + F, *d = dout + (size_t)r * F;
        float *da = dinp + (size_t)r * 2 * F, *dg = da + F;
        for (int i = 0; i < F; i++) {
            da[i] += d[i] * gelu1(g[i]);
            dg[i] += d[i] * a[i] * dgelu1(g[i]);
        }
    }
}

/* ------------------------------------------------------ transpose, scale */

/* Tile edge of the blocked transpose (32x32 floats: two 4 KiB tiles stay in L1). */
#define TT 32

/* dst[N,B,A] = src[N,A,B] transposed (acc: dst += instead of =), by tiles. */
static void transpose_tiles(float *dst, const float *src, int N, int A, int B, int acc) {
    const int ta = (A + TT - 1) / TT, tb = (B + TT - 1) / TT;
#pragma omp parallel for collapse(3) schedule(static) num_threads(par_threads((size_t)N * A * B))
    for (int n = 0; n < N; n++)
        for (int ia = 0; ia < ta; ia++)
            for (int ib = 0; ib < tb; ib++) {
                const float *x = src + (size_t)n * A * B;
                float *y = dst + (size_t)n * A * B;
                const int a1 = ia * TT + TT < A ? ia * TT + TT : A, b1 = ib * TT + TT < B ? ib * TT + TT : B;
                for (int b = ib * TT; b < b1; b++)
                    for (int a = ia * TT; a < a1; a++)
                        y[(size_t)b * A + a] = (acc ? y[(size_t)b * A + a] : 0.0f) + x[(size_t)a * B + b];
            }
}

void transpose_forward(float *out, const float *inp, int N, int A, int B) {
    // inp: [N,A,B] -> out: [N,B,A]
    transpose_tiles(out, inp, N, A, B, 0);
}

void transpose_backward(float *dinp, const float *dout, int N, int A, int B) {
    // dout: [N,B,A] -> dinp: [N,A,B] (+=)
    if (dinp) transpose_tiles(dinp, dout, N, B, A, 1);
}

void scale_forward(float *out, const float *inp, float s, size_t n) {
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) out[i] = s * inp[i];
}

void scale_backward(float *dinp, const float *dout, float s, size_t n) {
    if (!dinp) return;
#pragma omp parallel for schedule(static) num_threads(par_threads(n))
    for (size_t i = 0; i < n; i++) dinp[i] += s * dout[i];
}

/* ------------------------------------------------------ timestep embedding */

void timestep_embedding_ex(float *out, const float *t, int N, int D, int flip_sin_to_cos,
                           float freq_shift) {
    // t: [N]  out: [N,D]; in double, rounded to float once (diffusers
    // computes in float32: its values differ from these by up to ~1e-4 at
    // t ~ 1000, the float32 rounding of t * freq)
    const int half = D / 2;
    const double den = (double)half - (double)freq_shift;
    for (int n = 0; n < N; n++) {
        float *y = out + (size_t)n * D;
        for (int i = 0; i < half; i++) {
            const double f = exp(-log(10000.0) * i / den);
            const double a = (double)t[n] * f;
            y[flip_sin_to_cos ? i : half + i] = (float)cos(a);
            y[flip_sin_to_cos ? half + i : i] = (float)sin(a);
        }
        if (D % 2) y[D - 1] = 0.0f; /* diffusers pads an odd dim with a zero */
    }
}

/* -------------------------------------------------------------- attention */

/* Block sizes: a query block of MHA_BQ rows against key blocks of MHA_BK
 * keys; the scores block (BQ x BK floats, 32 KiB) stays in L2 and the GEMMs
 * are big enough for OpenBLAS to run near its peak. */
#ifndef MHA_BQ
#define MHA_BQ 64
#endif
#ifndef MHA_BK
#define MHA_BK 128
#endif

static inline int imin(int a, int b) { return a < b ? a : b; }

/* max(init, x[0..n)) in 16 lanes: an elementwise max vectorises where a
 * max reduction would need -ffast-math (a scalar compare-and-branch loop
 * was 40% of the forward's time) */
static inline float row_max(const float *x, int n, float init) {
    float m16[16];
    for (int k = 0; k < 16; k++) m16[k] = init;
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) m16[k] = x[j + k] > m16[k] ? x[j + k] : m16[k];
    for (; j < n; j++) m16[0] = x[j] > m16[0] ? x[j] : m16[0];
    float mx = m16[0];
    for (int k = 1; k < 16; k++) mx = m16[k] > mx ? m16[k] : mx;
    return mx;
}

/* One (image, head, query block): out rows [i0,i1) of head h and their lse.
 * q, k, v, out point at the image, head column offset applied; rows have
 * stride D. s: [BQ*BK], o: [BQ*dh], m, l: [BQ] scratch. */
static void mha_fwd_block(float *out, float *lse, const float *q, const float *k, const float *v,
                          int D, int Tk, int dh, int causal, float scale, int i0, int i1, float *s,
                          float *o, float *m, float *l) {
    const int bq = i1 - i0;
    for (int r = 0; r < bq; r++) {
        m[r] = -FLT_MAX;
        l[r] = 0.0f;
    }
    memset(o, 0, sizeof(float) * (size_t)bq * dh);
    const int kend = causal ? imin(Tk, i1) : Tk; /* keys past the last query are all masked */
    for (int j0 = 0; j0 < kend; j0 += MHA_BK) {
        const int bk = imin(MHA_BK, kend - j0);
        /* s[bq,bk] = scale * q[i0:i1] @ k[j0:j0+bk]^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, dh, scale,
                    q + (size_t)i0 * D, D, k + (size_t)j0 * D, D, 0.0f, s, MHA_BK);
        for (int r = 0; r < bq; r++) {
            float *row = s + (size_t)r * MHA_BK;
            /* valid keys j < jv: all of them, or j <= i under the mask */
            const int jv = causal ? imin(bk, i0 + r - j0 + 1) : bk;
            const float mx = row_max(row, jv, m[r]);
            const float alpha = fexp(m[r] - mx);
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < jv; j++) {
                const float e = fexp(row[j] - mx);
                row[j] = e;
                sum += e;
            }
            for (int j = jv > 0 ? jv : 0; j < bk; j++) row[j] = 0.0f;
            m[r] = mx;
            l[r] = l[r] * alpha + sum;
            float *orow = o + (size_t)r * dh;
            for (int d = 0; d < dh; d++) orow[d] *= alpha;
        }
        /* o[bq,dh] += p[bq,bk] @ v[j0:j0+bk] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, dh, bk, 1.0f, s, MHA_BK,
                    v + (size_t)j0 * D, D, 1.0f, o, dh);
    }
    for (int r = 0; r < bq; r++) {
        const float inv = 1.0f / l[r];
        float *y = out + (size_t)(i0 + r) * D;
        for (int d = 0; d < dh; d++) y[d] = o[(size_t)r * dh + d] * inv;
        lse[i0 + r] = m[r] + logf(l[r]);
    }
}

void mha_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                 int N, int Tq, int Tk, int heads, int dh, int causal) {
    // q: [N,Tq,H*dh]  k, v: [N,Tk,H*dh]  out: [N,Tq,H*dh]  lse: [N,H,Tq]
    const int D = heads * dh, nqb = (Tq + MHA_BQ - 1) / MHA_BQ;
    const float scale = 1.0f / sqrtf((float)dh);
    const double flops = 4.0 * N * heads * (double)Tq * Tk * dh;
    const int nt = flops < 2e5 ? 1 : ops_get_threads();
    ops_blas_single();
#pragma omp parallel num_threads(nt)
    {
        float *s = ops_scratch((size_t)MHA_BQ * MHA_BK + (size_t)MHA_BQ * dh + 2 * MHA_BQ);
        float *o = s + (size_t)MHA_BQ * MHA_BK, *m = o + (size_t)MHA_BQ * dh, *l = m + MHA_BQ;
        /* tasks: (image, head, query block); causal blocks differ in cost */
#pragma omp for collapse(3) schedule(dynamic)
        for (int n = 0; n < N; n++)
            for (int h = 0; h < heads; h++)
                for (int qb = 0; qb < nqb; qb++) {
                    const size_t oq = (size_t)n * Tq * D + (size_t)h * dh;
                    const size_t ok = (size_t)n * Tk * D + (size_t)h * dh;
                    mha_fwd_block(out + oq, lse + ((size_t)n * heads + h) * Tq, q + oq, k + ok,
                                  v + ok, D, Tk, dh, causal, scale, qb * MHA_BQ,
                                  imin(Tq, qb * MHA_BQ + MHA_BQ), s, o, m, l);
                }
    }
}

/* One (image, head) backward over key blocks kb = ks, ks + kstep, ...:
 *   p = exp(scale q k^T - lse)         (recomputed)
 *   dv += p^T dout;  dp = dout v^T;  ds = p * (dp - delta)
 *   dk += scale ds^T q;  dq += scale ds k
 * with delta_i = dout_i . out_i (the softmax backward's row sum). Pointers
 * have the image and head offsets applied, rows stride D (dqs: dq's row
 * stride, D or dh for a private partial). delta: [Tq], s, dp: [BQ*BK]. */
static void mha_bwd_head(float *dq, int dqs, float *dk, float *dv, const float *dout,
                         const float *q, const float *k, const float *v, const float *out,
                         const float *lse, int D, int Tq, int Tk, int dh, int causal, float scale,
                         int ks, int kstep, float *delta, float *s, float *dp) {
    for (int i = 0; i < Tq; i++) {
        const float *a = dout + (size_t)i * D, *b = out + (size_t)i * D;
        float acc = 0.0f;
        for (int d = 0; d < dh; d++) acc += a[d] * b[d];
        delta[i] = acc;
    }
    const int nkb = (Tk + MHA_BK - 1) / MHA_BK;
    for (int kb = ks; kb < nkb; kb += kstep) {
        const int j0 = kb * MHA_BK, bk = imin(MHA_BK, Tk - j0);
        /* under the mask, queries before j0 see none of these keys */
        for (int i0 = causal ? j0 / MHA_BQ * MHA_BQ : 0; i0 < Tq; i0 += MHA_BQ) {
            const int bq = imin(MHA_BQ, Tq - i0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, dh, scale,
                        q + (size_t)i0 * D, D, k + (size_t)j0 * D, D, 0.0f, s, MHA_BK);
            for (int r = 0; r < bq; r++) {
                float *row = s + (size_t)r * MHA_BK;
                const int jv = causal ? (i0 + r - j0 + 1 < bk ? i0 + r - j0 + 1 : bk) : bk;
                const float li = lse[i0 + r];
#pragma omp simd
                for (int j = 0; j < jv; j++) row[j] = fexp(row[j] - li);
                for (int j = jv > 0 ? jv : 0; j < bk; j++) row[j] = 0.0f;
            }
            /* dv[bk,dh] += p^T[bk,bq] @ dout[bq,dh] */
            if (dv)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bk, dh, bq, 1.0f, s, MHA_BK,
                            dout + (size_t)i0 * D, D, 1.0f, dv + (size_t)j0 * D, D);
            if (!dq && !dk) continue;
            /* dp[bq,bk] = dout[bq,dh] @ v^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, dh, 1.0f,
                        dout + (size_t)i0 * D, D, v + (size_t)j0 * D, D, 0.0f, dp, MHA_BK);
            for (int r = 0; r < bq; r++) {
                float *pr = s + (size_t)r * MHA_BK, *dr = dp + (size_t)r * MHA_BK;
                const float di = delta[i0 + r];
                for (int j = 0; j < bk; j++) dr[j] = pr[j] * (dr[j] - di);
            }
            /* dk[bk,dh] += scale ds^T @ q;  dq[bq,dh] += scale ds @ k */
            if (dk)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bk, dh, bq, scale, dp, MHA_BK,
                            q + (size_t)i0 * D, D, 1.0f, dk + (size_t)j0 * D, D);
            if (dq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, dh, bk, scale, dp, MHA_BK,
                            k + (size_t)j0 * D, D, 1.0f, dq + (size_t)i0 * dqs, dqs);
        }
    }
}

void mha_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                  const float *k, const float *v, const float *out, const float *lse,
                  int N, int Tq, int Tk, int heads, int dh, int causal) {
    if (!dq && !dk && !dv) return;
    const int D = heads * dh, NH = N * heads, nkb = (Tk + MHA_BK - 1) / MHA_BK;
    const float scale = 1.0f / sqrtf((float)dh);
    const double flops = 10.0 * NH * (double)Tq * Tk * dh;
    const int nt = flops < 2e5 ? 1 : ops_get_threads();
    /* Tasks are (image, head, key split): a task owns its keys' rows of dk
     * and dv, so they need no reduction. With fewer (image, head) pairs
     * than threads, the key blocks of a head are split between `split`
     * tasks, each adding its dq into a private [Tq, dh] partial (O(T dh)
     * memory) that is summed into dq afterwards. */
    int split = NH >= nt ? 1 : (nt + NH - 1) / NH;
    if (split > nkb) split = nkb;
    float *part = NULL;
    if (split > 1 && dq) {
        part = calloc((size_t)NH * split * Tq * dh, sizeof(float));
        if (!part) abort(); /* out of memory: nothing sensible to do here */
    }
    ops_blas_single();
#pragma omp parallel num_threads(nt)
    {
        float *delta = ops_scratch((size_t)Tq + 2 * (size_t)MHA_BQ * MHA_BK);
        float *s = delta + Tq, *dp = s + (size_t)MHA_BQ * MHA_BK;
#pragma omp for schedule(dynamic)
        for (int task = 0; task < NH * split; task++) {
            const int nh = task / split, ks = task % split, n = nh / heads, h = nh % heads;
            const size_t oq = (size_t)n * Tq * D + (size_t)h * dh;
            const size_t ok = (size_t)n * Tk * D + (size_t)h * dh;
            float *dqp = !dq ? NULL : part ? part + (size_t)task * Tq * dh : dq + oq;
            mha_bwd_head(dqp, part ? dh : D, dk ? dk + ok : NULL, dv ? dv + ok : NULL, dout + oq,
                         q + oq, k + ok, v + ok, out + oq, lse + (size_t)nh * Tq, D, Tq, Tk, dh,
                         causal, scale, ks, split, delta, s, dp);
        }
    }
    if (part) {
        for (int nh = 0; nh < NH; nh++) {
            float *d = dq + (size_t)(nh / heads) * Tq * D + (size_t)(nh % heads) * dh;
            for (int ks = 0; ks < split; ks++) {
                const float *p = part + ((size_t)nh * split + ks) * Tq * dh;
                for (int i = 0; i < Tq; i++)
                    for (int c = 0; c < dh; c++) d[(size_t)i * D + c] += p[(size_t)i * dh + c];
            }
        }
        free(part);
    }
}
