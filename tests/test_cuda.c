/* test_cuda.c - the CUDA backend (engine/cuda/, loaded by engine/device.c)
 * against the CPU backend, the reference (engine/ops.h).
 *
 * Without a usable CUDA backend (no libd3po_cuda.so, no driver, no GPU) it
 * prints "test_cuda: SKIPPED: <reason>" and exits 0.
 *
 * With one, every check prints one line with its measured error:
 *  - every op of the backend table, forward and backward, on random inputs
 *    at the yardstick UNet's shapes (base 32, mult 1.2.2, 2 res blocks,
 *    attention at 8x8, 32x32 images; batch 2 and 4 since CFG doubles the
 *    batch) plus odd shapes. Backward gradient buffers are pre-filled with
 *    a pattern on both sides, so a backward that overwrites instead of
 *    accumulating fails; NULL gradient pointers are exercised wherever
 *    ops.h allows them. Forward outputs are pre-filled with NaN on the
 *    device, so an element left unwritten fails the finiteness check.
 *    Every device buffer has GUARD floats of a sentinel before and after
 *    it, checked after each case (out-of-bounds writes);
 *  - sumsq, scale, adamw, ema;
 *  - the transformer ops (layer norm, GELU, quick GELU, GEGLU, scale,
 *    transpose, timestep_embedding_ex, multi-head attention with and
 *    without the causal mask, cross-attention) at SD and CLIP shapes;
 *  - unet_forward + tape_backward of the whole model: output, input
 *    gradient and every parameter gradient;
 *  - D3PO: d3po_pair_backward (gradients, loss, log-probs), Diffusion-DPO's
 *    dpo_pair_backward (gradients, loss) and d3po_train
 *    (updated parameters, AdamW moments, loss) on a CPU and a CUDA copy;
 *  - DDIM sampling, 20 steps, CFG 5, same x_T and step noise.
 *
 * Errors are "normalised": max |cuda - cpu| / max |cpu| over a tensor
 * (the scale of the tensor, so a tiny element's relative error does not
 * dominate), unless a line says otherwise. TF32 is off (device_backend
 * with tf32 = 0), so both sides compute in fp32; the tolerances below are
 * for fp32 summation order, cuDNN's choice of algorithm (Winograd/FFT/
 * implicit GEMM) and FMA contraction, each explained where it is set.
 *
 * Self-check of this harness without a GPU:
 *   D3PO_TEST_CUDA_SELF=1        the CPU backend in place of CUDA (every
 *                                error must be 0 or tiny)
 *   D3PO_TEST_CUDA_SELF=broken   the CPU backend with three planted bugs
 *                                (overwrite instead of +=, a write past the
 *                                end, an unwritten output): must FAIL those
 *   D3PO_TEST_CUDA_SELF=noisy[:X] the CPU backend with every op's output
 *                                perturbed by relative noise X (default
 *                                1e-6, about 8 ulp): a model of a GPU's
 *                                different summation order, used to size
 *                                the whole-model, D3PO and sampling
 *                                tolerances (the exact-op checks fail by
 *                                design in this mode)
 */
#define _GNU_SOURCE
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "d3po.h"
#include "device.h"
#include "diffusion.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "rng.h"
#include "t.h"
#include "tape.h"
#include "unet.h"

static const d3_backend *G; /* under test (CUDA) */
static const d3_backend *R; /* reference: the CPU backend */

/* ------------------------------------------------------------ utilities */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t rng_next(void) { /* xorshift64* */
    uint64_t x = rng_state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}
static float urand(void) { /* [-1, 1) */
    return (float)((double)(rng_next() >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "test_cuda: %s\n", what);
    exit(2);
}

/* Host allocations, freed at the end of each case (case_end). */
static void *h_allocs[1024];
static int h_n;
static float *halloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p || h_n == 1024) die("out of host memory");
    h_allocs[h_n++] = p;
    return p;
}
static float *hrand(size_t n, float scale) {
    float *p = halloc(n);
    for (size_t i = 0; i < n; i++) p[i] = scale * urand();
    return p;
}
/* the known pattern pre-filled into gradient buffers (|pat| <= 1.5) */
static float pat(size_t i) { return 0.25f * (float)((i * 7919u) % 13u) - 1.5f; }
static float *hpat(size_t n) {
    float *p = halloc(n);
    for (size_t i = 0; i < n; i++) p[i] = pat(i);
    return p;
}
static float *hcopy(const float *src, size_t n) {
    float *p = halloc(n);
    memcpy(p, src, n * sizeof(float));
    return p;
}

/* Device buffers with guards: GUARD sentinel floats before and after. */
#define GUARD 64
typedef struct {
    float *base, *p;
    size_t n;
} dbuf;
static dbuf d_bufs[512];
static int d_n;
static float guard_val(int i) { return -7777.0f - 0.25f * (float)i; }

static float *dnew(size_t n, const void *host) {
    if (d_n == 512) die("too many device buffers");
    dbuf *b = &d_bufs[d_n++];
    b->n = n;
    b->base = G->alloc((n + 2 * GUARD) * sizeof(float));
    if (!b->base) die("device alloc failed");
    float g[2 * GUARD];
    for (int i = 0; i < 2 * GUARD; i++) g[i] = guard_val(i);
    G->upload(b->base, g, GUARD * sizeof(float));
    G->upload(b->base + GUARD + n, g + GUARD, GUARD * sizeof(float));
    b->p = b->base + GUARD;
    if (host) G->upload(b->p, host, n * sizeof(float));
    return b->p;
}
/* an output buffer whose every element the op must write */
static float *dnan(size_t n) {
    float *h = halloc(n);
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    return dnew(n, h);
}
static float *dget(const float *d, size_t n) {
    float *h = halloc(n);
    G->sync();
    G->download(h, d, n * sizeof(float));
    return h;
}

static int guards_bad; /* buffers whose guards changed, since the last case_end */

/* Checks every device buffer's guards, frees device and host memory. */
static void case_end(void) {
    G->sync();
    for (int k = 0; k < d_n; k++) {
        dbuf *b = &d_bufs[k];
        float g[2 * GUARD];
        G->download(g, b->base, GUARD * sizeof(float));
        G->download(g + GUARD, b->base + GUARD + b->n, GUARD * sizeof(float));
        for (int i = 0; i < 2 * GUARD; i++) {
            float want = guard_val(i);
            if (memcmp(&g[i], &want, sizeof want)) {
                guards_bad++;
                CHECK(0, "device buffer %d (%zu floats): guard float %d %s the buffer changed "
                      "(%.8g): out-of-bounds write", k, b->n, i < GUARD ? GUARD - i : i - GUARD + 1,
                      i < GUARD ? "before" : "after", g[i]);
                break;
            }
        }
        G->free(b->base);
    }
    d_n = 0;
    while (h_n > 0) free(h_allocs[--h_n]);
}

/* max |got - ref| / max(max|ref|, 1e-30); a non-finite value on either
 * side -> INFINITY (counted in nonfinite) */
static long nonfinite;
static double nerr(const float *got, const float *ref, size_t n) {
    double mx = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) { nonfinite++; return INFINITY; }
        double e = fabs((double)got[i] - (double)ref[i]);
        if (e > mx) mx = e;
        if (fabs((double)ref[i]) > mr) mr = fabs((double)ref[i]);
    }
    return mx / (mr > 1e-30 ? mr : 1e-30);
}
static double maxabs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m) m = fabs((double)x[i]);
    return m;
}
/* ||got - ref|| / ||ref||; non-finite got -> INFINITY */
static double l2rel(const float *got, const float *ref, size_t n) {
    double a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) { nonfinite++; return INFINITY; }
        double d = (double)got[i] - ref[i];
        a += d * d;
        b += (double)ref[i] * ref[i];
    }
    return sqrt(a / (b > 0 ? b : 1e-300));
}
static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static double worst_ratio; /* max over checks of err / tol (0 tol: err > 0 -> inf) */
static int nchecks, nfailed;

static void expect(const char *what, double err, double tol) {
    int ok = err <= tol;
    nchecks++;
    if (!ok) nfailed++;
    double r = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0);
    if (!(r <= worst_ratio)) worst_ratio = r;
    printf("    %-58s err %-10.3g tol %-7.2g %s\n", what, err, tol, ok ? "ok" : "FAIL");
    fflush(stdout);
    CHECK(ok, "%s: error %.3g above tolerance %.3g", what, err, tol);
}

/* A gradient buffer on both sides, pre-filled with the pattern. */
typedef struct {
    float *h, *d;
    size_t n;
} gpair;
static gpair gp(size_t n) {
    gpair g = {hpat(n), NULL, n};
    g.d = dnew(n, g.h);
    return g;
}
static double gcmp(const gpair *g) { return nerr(dget(g->d, g->n), g->h, g->n); }
/* an untouched buffer still holds exactly the pattern */
static int gpristine(const gpair *g) {
    float *x = dget(g->d, g->n);
    for (size_t i = 0; i < g->n; i++)
        if (x[i] != pat(i)) return 0;
    return 1;
}

/* ------------------------------------------------------------ tolerances
 * Normalised errors (max |cuda - cpu| / max |cpu|).
 *
 * EXACT (0): copies and single float additions/multiplications (add,
 *   addbc forward, concat, upsample forward, embedding forward, scale and
 *   the add-backward accumulation da += dout) round identically on both.
 * T_CONV 2e-4: the CUDA backend takes the fastest algorithm cudnnFind
 *   reports (implicit GEMM, Winograd or FFT, TF32 excluded); fp32 Winograd
 *   and FFT transforms carry errors of ~1e-5 of the output scale on sums
 *   of up to C*K*K = 1152 products (the CPU does a plain fp32 GEMM); 2e-4
 *   keeps a 10x margin, while an indexing bug (a missing tap, a wrong
 *   channel, a border) costs >= 1e-2.
 * T_CONV_BWD 5e-4: the same for dgrad/wgrad, whose weight sums run over up
 *   to N*OH*OW = 4096 positions, with cuDNN free to split them (atomics).
 * T_LINEAR 2e-5: cuBLAS SGEMM (TF32 off) vs OpenBLAS over <= 128 terms:
 *   both ~sqrt(128)*6e-8 relative; 2e-5 leaves a wide margin.
 * T_GN 2e-5: mean/rstd in double on both; the output and the backward's
 *   two group sums differ only in float rounding and summation order.
 * T_ELEM 2e-6: elementwise transcendental ops (silu uses expf; CUDA's
 *   expf is within 2 ulp of the correctly rounded value, glibc's within
 *   1): a few ulp of the largest element.
 * T_SUM 1e-5: small reductions in float (addbc de over HW <= 1024,
 *   upsample's 4-term sums, embedding's repeated-index atomics).
 * T_ATT 2e-5: scores are C=64-term dot products, softmax with expf, and
 *   the outputs T=64-term weighted sums (cuBLAS or a kernel): fp32 order.
 * T_ATT_BWD 5e-5: the backward chains three such products and the
 *   softmax Jacobian (d_s = p*(d_p - sum p*d_p), a cancellation).
 * T_TEMB 2e-6 absolute: the angle t*f up to 999 rad is formed in double on
 *   the CPU; forming it in float would cost 999*6e-8 = 6e-5 and fail.
 * T_MSE 1e-6 relative: the CPU accumulates in double.
 */
#define EXACT 0.0
#define T_CONV 2e-4
#define T_CONV_BWD 5e-4
#define T_LINEAR 2e-5
#define T_GN 2e-5
#define T_ELEM 2e-6
#define T_SUM 1e-5
#define T_ATT 2e-5
#define T_ATT_BWD 5e-5
#define T_TEMB 2e-6
#define T_MSE 1e-6

/* ---------------------------------------------------------------- conv2d */

static void conv_case(int N, int C, int H, int W, int OC, int K, int s, int p, int ub) {
    char what[128], w2[192];
    snprintf(what, sizeof what, "conv N%d C%d %dx%d OC%d K%d s%d p%d%s", N, C, H, W, OC, K, s, p,
             ub ? "" : " nobias");
    const int OH = (H + 2 * p - K) / s + 1, OW = (W + 2 * p - K) / s + 1;
    const size_t nx = (size_t)N * C * H * W, nw = (size_t)OC * C * K * K,
                 no = (size_t)N * OC * OH * OW;
    float *x = hrand(nx, 1), *w = hrand(nw, 1.0f / sqrtf((float)(C * K * K)));
    float *b = ub ? hrand(OC, 0.5f) : NULL;
    float *out = halloc(no);
    R->conv2d_forward(out, x, w, b, N, C, H, W, OC, K, s, p);
    float *dx = dnew(nx, x), *dw = dnew(nw, w), *db = ub ? dnew(OC, b) : NULL, *dout = dnan(no);
    G->conv2d_forward(dout, dx, dw, db, N, C, H, W, OC, K, s, p);
    snprintf(w2, sizeof w2, "%s fwd", what);
    expect(w2, nerr(dget(dout, no), out, no), T_CONV);

    /* backward, every gradient, accumulating into the pattern */
    float *r = hrand(no, 1), *dr = dnew(no, r);
    gpair gx = gp(nx), gw = gp(nw), gb = gp(OC);
    R->conv2d_backward(gx.h, gw.h, ub ? gb.h : NULL, r, x, w, N, C, H, W, OC, K, s, p);
    G->conv2d_backward(gx.d, gw.d, ub ? gb.d : NULL, dr, dx, dw, N, C, H, W, OC, K, s, p);
    double e = fmax(gcmp(&gx), gcmp(&gw));
    if (ub) e = fmax(e, gcmp(&gb));
    else CHECK(gpristine(&gb), "%s: db written although NULL", what);
    snprintf(w2, sizeof w2, "%s bwd (dx,dw%s) +=", what, ub ? ",db" : "");
    expect(w2, e, T_CONV_BWD);

    /* each gradient alone, the others NULL */
    for (int v = 0; v < 3; v++) {
        if (v == 2 && !ub) continue;
        gpair g = gp(v == 0 ? nx : v == 1 ? nw : (size_t)OC);
        float *h[3] = {NULL, NULL, NULL}, *d[3] = {NULL, NULL, NULL};
        h[v] = g.h; d[v] = g.d;
        R->conv2d_backward(h[0], h[1], h[2], r, x, w, N, C, H, W, OC, K, s, p);
        G->conv2d_backward(d[0], d[1], d[2], dr, dx, dw, N, C, H, W, OC, K, s, p);
        snprintf(w2, sizeof w2, "%s bwd %s alone", what, v == 0 ? "dx" : v == 1 ? "dw" : "db");
        expect(w2, gcmp(&g), T_CONV_BWD);
    }
    G->conv2d_backward(NULL, NULL, NULL, dr, dx, dw, N, C, H, W, OC, K, s, p); /* no-op */
    case_end();
}

static void test_conv2d(void) {
    rng_seed(1);
    /* N, C, H, W, OC, K, stride, pad, bias: the yardstick's convolutions */
    conv_case(4, 3, 32, 32, 32, 3, 1, 1, 1);    /* conv_in */
    conv_case(4, 32, 32, 32, 32, 3, 1, 1, 1);   /* level 0 res conv */
    conv_case(4, 32, 32, 32, 32, 3, 2, 1, 1);   /* downsample 32->16 */
    conv_case(4, 32, 16, 16, 64, 3, 1, 1, 1);   /* level 1 conv1 */
    conv_case(4, 32, 16, 16, 64, 1, 1, 0, 1);   /* skip 1x1 */
    conv_case(4, 64, 16, 16, 64, 3, 2, 1, 1);   /* downsample 16->8 */
    conv_case(4, 64, 8, 8, 192, 1, 1, 0, 1);    /* attention qkv */
    conv_case(4, 64, 8, 8, 64, 1, 1, 0, 1);     /* attention proj */
    conv_case(2, 128, 8, 8, 64, 3, 1, 1, 1);    /* up level 2 conv1 (concat input) */
    conv_case(2, 128, 16, 16, 64, 1, 1, 0, 1);  /* up level 1 skip */
    conv_case(2, 96, 32, 32, 32, 3, 1, 1, 1);   /* up level 0 conv1 */
    conv_case(2, 96, 32, 32, 32, 1, 1, 0, 1);   /* up level 0 skip */
    conv_case(4, 32, 32, 32, 3, 3, 1, 1, 1);    /* conv_out */
    /* odd shapes */
    conv_case(3, 5, 7, 9, 6, 3, 2, 1, 1);       /* stride 2, odd sizes */
    conv_case(2, 7, 9, 5, 4, 3, 1, 0, 0);       /* pad 0, no bias */
    conv_case(1, 6, 5, 7, 5, 1, 2, 0, 1);       /* 1x1 stride 2 */
    conv_case(2, 4, 6, 6, 3, 3, 1, 2, 0);       /* pad 2 > K/2 */
    conv_case(1, 3, 2, 3, 2, 3, 2, 1, 1);       /* output 1x2 */
}

/* ---------------------------------------------------------------- linear */

static void linear_case(int N, int IN, int OUT, int ub) {
    char what[96], w2[160];
    snprintf(what, sizeof what, "linear N%d %d->%d%s", N, IN, OUT, ub ? "" : " nobias");
    const size_t nx = (size_t)N * IN, nw = (size_t)OUT * IN, no = (size_t)N * OUT;
    float *x = hrand(nx, 1), *w = hrand(nw, 1.0f / sqrtf((float)IN)), *b = ub ? hrand(OUT, 0.5f) : NULL;
    float *out = halloc(no);
    R->linear_forward(out, x, w, b, N, IN, OUT);
    float *dx = dnew(nx, x), *dw = dnew(nw, w), *db = ub ? dnew(OUT, b) : NULL, *dout = dnan(no);
    G->linear_forward(dout, dx, dw, db, N, IN, OUT);
    snprintf(w2, sizeof w2, "%s fwd", what);
    expect(w2, nerr(dget(dout, no), out, no), T_LINEAR);

    float *r = hrand(no, 1), *dr = dnew(no, r);
    gpair gx = gp(nx), gw = gp(nw), gb = gp(OUT);
    R->linear_backward(gx.h, gw.h, ub ? gb.h : NULL, r, x, w, N, IN, OUT);
    G->linear_backward(gx.d, gw.d, ub ? gb.d : NULL, dr, dx, dw, N, IN, OUT);
    double e = fmax(gcmp(&gx), gcmp(&gw));
    if (ub) e = fmax(e, gcmp(&gb));
    else CHECK(gpristine(&gb), "%s: db written although NULL", what);
    snprintf(w2, sizeof w2, "%s bwd (dx,dw%s) +=", what, ub ? ",db" : "");
    expect(w2, e, T_LINEAR);
    for (int v = 0; v < 3; v++) {
        if (v == 2 && !ub) continue;
        gpair g = gp(v == 0 ? nx : v == 1 ? nw : (size_t)OUT);
        float *h[3] = {NULL, NULL, NULL}, *d[3] = {NULL, NULL, NULL};
        h[v] = g.h; d[v] = g.d;
        R->linear_backward(h[0], h[1], h[2], r, x, w, N, IN, OUT);
        G->linear_backward(d[0], d[1], d[2], dr, dx, dw, N, IN, OUT);
        snprintf(w2, sizeof w2, "%s bwd %s alone", what, v == 0 ? "dx" : v == 1 ? "dw" : "db");
        expect(w2, gcmp(&g), T_LINEAR);
    }
    G->linear_backward(NULL, NULL, NULL, dr, dx, dw, N, IN, OUT);
    case_end();
}

static void test_linear(void) {
    rng_seed(2);
    linear_case(4, 32, 128, 1);   /* time_embed.0 */
    linear_case(4, 128, 128, 1);  /* time_embed.2 */
    linear_case(4, 128, 64, 1);   /* emb_proj (level 1/2) */
    linear_case(2, 128, 32, 1);   /* emb_proj (level 0), batch 2 */
    linear_case(3, 33, 17, 0);    /* odd, no bias */
    linear_case(1, 5, 3, 1);
}

/* ------------------------------------------------------------- groupnorm */

static void gn_case_eps(int N, int C, int HW, int G_, float eps) {
    char what[96], w2[160];
    snprintf(what, sizeof what, "groupnorm N%d C%d HW%d G%d eps %g", N, C, HW, G_, eps);
    const size_t nx = (size_t)N * C * HW, ns = (size_t)N * G_;
    float *x = hrand(nx, 2), *w = hrand(C, 0.5f), *b = hrand(C, 0.5f);
    for (int i = 0; i < C; i++) w[i] += 1.0f;
    for (size_t i = 0; i < nx; i++) x[i] += 0.3f * (float)((i / HW) % 5); /* nonzero means */
    float *out = halloc(nx), *mean = halloc(ns), *rstd = halloc(ns);
    R->groupnorm_forward(out, mean, rstd, x, w, b, N, C, HW, G_, eps);
    float *dx = dnew(nx, x), *dw = dnew(C, w), *db = dnew(C, b);
    float *dout = dnan(nx), *dmean = dnan(ns), *drstd = dnan(ns);
    G->groupnorm_forward(dout, dmean, drstd, dx, dw, db, N, C, HW, G_, eps);
    snprintf(w2, sizeof w2, "%s fwd (out, mean, rstd)", what);
    double e = nerr(dget(dout, nx), out, nx);
    /* saved statistics: double on both sides, one float rounding */
    e = fmax(e, nerr(dget(dmean, ns), mean, ns));
    e = fmax(e, nerr(dget(drstd, ns), rstd, ns));
    expect(w2, e, T_GN);

    /* the backward uses the reference statistics on both sides (uploaded),
     * so it is tested on its own */
    float *r = hrand(nx, 1), *dr = dnew(nx, r), *dm = dnew(ns, mean), *ds = dnew(ns, rstd);
    gpair gx = gp(nx), gw = gp(C), gb = gp(C);
    R->groupnorm_backward(gx.h, gw.h, gb.h, r, x, w, mean, rstd, N, C, HW, G_, eps);
    G->groupnorm_backward(gx.d, gw.d, gb.d, dr, dx, dw, dm, ds, N, C, HW, G_, eps);
    snprintf(w2, sizeof w2, "%s bwd (dx,dw,db) +=", what);
    expect(w2, fmax(gcmp(&gx), fmax(gcmp(&gw), gcmp(&gb))), T_GN);
    {
        gpair g = gp(nx);
        R->groupnorm_backward(g.h, NULL, NULL, r, x, w, mean, rstd, N, C, HW, G_, eps);
        G->groupnorm_backward(g.d, NULL, NULL, dr, dx, dw, dm, ds, N, C, HW, G_, eps);
        snprintf(w2, sizeof w2, "%s bwd dx alone", what);
        expect(w2, gcmp(&g), T_GN);
    }
    {
        gpair g1 = gp(C), g2 = gp(C);
        R->groupnorm_backward(NULL, g1.h, g2.h, r, x, w, mean, rstd, N, C, HW, G_, eps);
        G->groupnorm_backward(NULL, g1.d, g2.d, dr, dx, dw, dm, ds, N, C, HW, G_, eps);
        snprintf(w2, sizeof w2, "%s bwd dw,db without dx", what);
        expect(w2, fmax(gcmp(&g1), gcmp(&g2)), T_GN);
    }
    G->groupnorm_backward(NULL, NULL, NULL, dr, dx, dw, dm, ds, N, C, HW, G_, eps);
    case_end();
}

static void gn_case(int N, int C, int HW, int G_) { gn_case_eps(N, C, HW, G_, 1e-5f); }

static void test_groupnorm(void) {
    rng_seed(3);
    gn_case(4, 32, 1024, 32);  /* level 0 */
    gn_case(2, 96, 1024, 32);  /* up level 0 norm1 (96 channels) */
    gn_case(4, 64, 256, 32);   /* level 1 */
    gn_case(4, 64, 64, 32);    /* level 2 / attention norm */
    gn_case(2, 128, 64, 32);   /* up level 2 norm1 */
    gn_case(2, 128, 256, 32);  /* up level 1 norm1 */
    gn_case(3, 48, 49, 24);    /* G < 32 (gn_groups(48) = 24), odd HW */
    gn_case(2, 6, 35, 3);
    gn_case(1, 20, 16, 20);    /* one channel per group */
    gn_case(2, 12, 7, 1);      /* one group */
    gn_case_eps(2, 128, 1024, 32, 1e-6f); /* SD's VAE: eps 1e-6 */
}

/* ------------------------------------------------------ group norm + SiLU */

/* gnsilu: the group norm of x + e then SiLU, saved statistics and coef;
 * the backward gets the reference's statistics and coef on both sides.
 * T_GN covers it: the norm's own error, SiLU with expf against fexp
 * (2e-7 relative), and de's sums over HW <= 1024 (T_SUM < T_GN). */
static void gs_case(int N, int C, int HW, int G_, int use_e) {
    char what[96], w2[160];
    snprintf(what, sizeof what, "gnsilu N%d C%d HW%d G%d%s", N, C, HW, G_, use_e ? " +e" : "");
    const size_t nx = (size_t)N * C * HW, ns = (size_t)N * G_, nc = (size_t)N * C;
    float *x = hrand(nx, 2), *e = use_e ? hrand(nc, 1) : NULL;
    float *w = hrand(C, 0.5f), *b = hrand(C, 0.5f);
    for (int i = 0; i < C; i++) w[i] += 1.0f;
    float *out = halloc(nx), *mean = halloc(ns), *rstd = halloc(ns), *coef = halloc(2 * nc);
    R->gnsilu_forward(out, mean, rstd, coef, x, e, w, b, N, C, HW, G_, 1e-5f);
    float *dx = dnew(nx, x), *de = use_e ? dnew(nc, e) : NULL, *dw = dnew(C, w), *db = dnew(C, b);
    float *dout = dnan(nx), *dmean = dnan(ns), *drstd = dnan(ns), *dcoef = dnan(2 * nc);
    G->gnsilu_forward(dout, dmean, drstd, dcoef, dx, de, dw, db, N, C, HW, G_, 1e-5f);
    snprintf(w2, sizeof w2, "%s fwd (out, mean, rstd, coef)", what);
    double er = nerr(dget(dout, nx), out, nx);
    er = fmax(er, nerr(dget(dmean, ns), mean, ns));
    er = fmax(er, nerr(dget(drstd, ns), rstd, ns));
    er = fmax(er, nerr(dget(dcoef, 2 * nc), coef, 2 * nc));
    expect(w2, er, T_GN);

    float *r = hrand(nx, 1), *dr = dnew(nx, r);
    float *dm = dnew(ns, mean), *ds = dnew(ns, rstd), *dc = dnew(2 * nc, coef);
    gpair gx = gp(nx), ge = gp(nc), gw = gp(C), gb = gp(C);
    R->gnsilu_backward(gx.h, use_e ? ge.h : NULL, gw.h, gb.h, r, x, e, w, coef, mean, rstd, N, C,
                       HW, G_);
    G->gnsilu_backward(gx.d, use_e ? ge.d : NULL, gw.d, gb.d, dr, dx, de, dw, dc, dm, ds, N, C, HW,
                       G_);
    snprintf(w2, sizeof w2, "%s bwd (dx,%sdw,db) +=", what, use_e ? "de," : "");
    er = fmax(gcmp(&gx), fmax(gcmp(&gw), gcmp(&gb)));
    if (use_e) er = fmax(er, gcmp(&ge));
    else CHECK(gpristine(&ge), "%s: de written although NULL", what);
    expect(w2, er, T_GN);
    {
        gpair g = gp(nx);
        R->gnsilu_backward(g.h, NULL, NULL, NULL, r, x, e, w, coef, mean, rstd, N, C, HW, G_);
        G->gnsilu_backward(g.d, NULL, NULL, NULL, dr, dx, de, dw, dc, dm, ds, N, C, HW, G_);
        snprintf(w2, sizeof w2, "%s bwd dx alone", what);
        expect(w2, gcmp(&g), T_GN);
    }
    if (use_e) {
        gpair g = gp(nc);
        R->gnsilu_backward(NULL, g.h, NULL, NULL, r, x, e, w, coef, mean, rstd, N, C, HW, G_);
        G->gnsilu_backward(NULL, g.d, NULL, NULL, dr, dx, de, dw, dc, dm, ds, N, C, HW, G_);
        snprintf(w2, sizeof w2, "%s bwd de alone", what);
        expect(w2, gcmp(&g), T_GN);
    }
    {
        gpair g1 = gp(C), g2 = gp(C);
        R->gnsilu_backward(NULL, NULL, g1.h, g2.h, r, x, e, w, coef, mean, rstd, N, C, HW, G_);
        G->gnsilu_backward(NULL, NULL, g1.d, g2.d, dr, dx, de, dw, dc, dm, ds, N, C, HW, G_);
        snprintf(w2, sizeof w2, "%s bwd dw,db alone", what);
        expect(w2, fmax(gcmp(&g1), gcmp(&g2)), T_GN);
    }
    G->gnsilu_backward(NULL, NULL, NULL, NULL, dr, dx, de, dw, dc, dm, ds, N, C, HW, G_);
    case_end();
}

static void test_gnsilu(void) {
    rng_seed(33);
    gs_case(4, 32, 1024, 32, 0); /* level 0 norm1 / norm_out */
    gs_case(4, 32, 1024, 32, 1); /* level 0 norm2 (+ time embedding) */
    gs_case(4, 64, 256, 32, 1);  /* level 1 norm2 */
    gs_case(2, 96, 1024, 32, 0); /* up level 0 norm1 (96 channels) */
    gs_case(3, 48, 49, 24, 1);   /* G < 32, odd HW */
    gs_case(2, 12, 7, 1, 1);     /* one group */
}

/* ---------------------------------------------------------- elementwise */

static void test_silu(void) {
    rng_seed(4);
    const size_t sizes[] = {(size_t)4 * 32 * 1024, (size_t)2 * 64 * 256, 1001, 1};
    for (int t = 0; t < 4; t++) {
        char w2[96];
        const size_t n = sizes[t];
        float *x = hrand(n, 8);
        if (n > 3) { x[0] = -100.0f; x[1] = 100.0f; x[2] = 0.0f; } /* saturation */
        float *out = halloc(n);
        R->silu_forward(out, x, n);
        float *dx = dnew(n, x), *dout = dnan(n);
        G->silu_forward(dout, dx, n);
        snprintf(w2, sizeof w2, "silu n%zu fwd", n);
        expect(w2, nerr(dget(dout, n), out, n), T_ELEM);
        float *r = hrand(n, 1), *dr = dnew(n, r);
        gpair g = gp(n);
        R->silu_backward(g.h, r, x, n);
        G->silu_backward(g.d, dr, dx, n);
        snprintf(w2, sizeof w2, "silu n%zu bwd +=", n);
        expect(w2, gcmp(&g), T_ELEM);
        G->silu_backward(NULL, dr, dx, n);
        case_end();
    }
}

static void test_add(void) {
    rng_seed(5);
    const size_t sizes[] = {(size_t)4 * 32 * 1024, 1001};
    for (int t = 0; t < 2; t++) {
        char w2[96];
        const size_t n = sizes[t];
        float *a = hrand(n, 1), *b = hrand(n, 1), *out = halloc(n);
        R->add_forward(out, a, b, n);
        float *da = dnew(n, a), *db = dnew(n, b), *dout = dnan(n);
        G->add_forward(dout, da, db, n);
        snprintf(w2, sizeof w2, "add n%zu fwd", n);
        expect(w2, nerr(dget(dout, n), out, n), EXACT);
        float *r = hrand(n, 1), *dr = dnew(n, r);
        gpair ga = gp(n), gb = gp(n);
        R->add_backward(ga.h, gb.h, r, n);
        G->add_backward(ga.d, gb.d, dr, n);
        snprintf(w2, sizeof w2, "add n%zu bwd (da,db) +=", n);
        expect(w2, fmax(gcmp(&ga), gcmp(&gb)), EXACT);
        gpair g1 = gp(n), g2 = gp(n);
        R->add_backward(g1.h, NULL, r, n);
        G->add_backward(g1.d, NULL, dr, n);
        R->add_backward(NULL, g2.h, r, n);
        G->add_backward(NULL, g2.d, dr, n);
        snprintf(w2, sizeof w2, "add n%zu bwd da alone, db alone", n);
        expect(w2, fmax(gcmp(&g1), gcmp(&g2)), EXACT);
        G->add_backward(NULL, NULL, dr, n);
        case_end();
    }
}

static void test_addbc(void) {
    rng_seed(6);
    const int shapes[][3] = {{4, 32, 1024}, {4, 64, 256}, {2, 64, 64}, {3, 5, 35}};
    for (int t = 0; t < 4; t++) {
        char w2[96];
        const int N = shapes[t][0], C = shapes[t][1], HW = shapes[t][2];
        const size_t nx = (size_t)N * C * HW, ne = (size_t)N * C;
        float *x = hrand(nx, 1), *e = hrand(ne, 1), *out = halloc(nx);
        R->addbc_forward(out, x, e, N, C, HW);
        float *dx = dnew(nx, x), *de = dnew(ne, e), *dout = dnan(nx);
        G->addbc_forward(dout, dx, de, N, C, HW);
        snprintf(w2, sizeof w2, "addbc N%d C%d HW%d fwd", N, C, HW);
        expect(w2, nerr(dget(dout, nx), out, nx), EXACT);
        float *r = hrand(nx, 1), *dr = dnew(nx, r);
        gpair gx = gp(nx), ge = gp(ne);
        R->addbc_backward(gx.h, ge.h, r, N, C, HW);
        G->addbc_backward(gx.d, ge.d, dr, N, C, HW);
        snprintf(w2, sizeof w2, "addbc N%d C%d HW%d bwd dx += (exact)", N, C, HW);
        expect(w2, gcmp(&gx), EXACT);
        snprintf(w2, sizeof w2, "addbc N%d C%d HW%d bwd de += (sum over HW)", N, C, HW);
        expect(w2, gcmp(&ge), T_SUM);
        gpair g1 = gp(nx), g2 = gp(ne);
        R->addbc_backward(g1.h, NULL, r, N, C, HW);
        G->addbc_backward(g1.d, NULL, dr, N, C, HW);
        R->addbc_backward(NULL, g2.h, r, N, C, HW);
        G->addbc_backward(NULL, g2.d, dr, N, C, HW);
        snprintf(w2, sizeof w2, "addbc N%d C%d HW%d bwd dx alone, de alone", N, C, HW);
        expect(w2, fmax(gcmp(&g1), gcmp(&g2)), T_SUM);
        G->addbc_backward(NULL, NULL, dr, N, C, HW);
        case_end();
    }
}

static void test_concat(void) {
    rng_seed(7);
    /* N, C1, C2, HW: the decoder's concats at 8x8, 16x16, 32x32 + odd */
    const int shapes[][4] = {{2, 64, 64, 64}, {2, 64, 32, 1024}, {4, 64, 64, 256}, {3, 3, 5, 35}};
    for (int t = 0; t < 4; t++) {
        char w2[96];
        const int N = shapes[t][0], C1 = shapes[t][1], C2 = shapes[t][2], HW = shapes[t][3];
        const size_t na = (size_t)N * C1 * HW, nb = (size_t)N * C2 * HW, no = na + nb;
        float *a = hrand(na, 1), *b = hrand(nb, 1), *out = halloc(no);
        R->concat_forward(out, a, b, N, C1, C2, HW);
        float *da = dnew(na, a), *db = dnew(nb, b), *dout = dnan(no);
        G->concat_forward(dout, da, db, N, C1, C2, HW);
        snprintf(w2, sizeof w2, "concat N%d C%d+%d HW%d fwd", N, C1, C2, HW);
        expect(w2, nerr(dget(dout, no), out, no), EXACT);
        float *r = hrand(no, 1), *dr = dnew(no, r);
        gpair ga = gp(na), gb = gp(nb);
        R->concat_backward(ga.h, gb.h, r, N, C1, C2, HW);
        G->concat_backward(ga.d, gb.d, dr, N, C1, C2, HW);
        snprintf(w2, sizeof w2, "concat N%d C%d+%d HW%d bwd (da,db) +=", N, C1, C2, HW);
        expect(w2, fmax(gcmp(&ga), gcmp(&gb)), EXACT);
        gpair g1 = gp(na), g2 = gp(nb);
        R->concat_backward(g1.h, NULL, r, N, C1, C2, HW);
        G->concat_backward(g1.d, NULL, dr, N, C1, C2, HW);
        R->concat_backward(NULL, g2.h, r, N, C1, C2, HW);
        G->concat_backward(NULL, g2.d, dr, N, C1, C2, HW);
        snprintf(w2, sizeof w2, "concat N%d C%d+%d HW%d bwd da alone, db alone", N, C1, C2, HW);
        expect(w2, fmax(gcmp(&g1), gcmp(&g2)), EXACT);
        G->concat_backward(NULL, NULL, dr, N, C1, C2, HW);
        case_end();
    }
}

static void test_upsample(void) {
    rng_seed(8);
    const int shapes[][4] = {{4, 64, 8, 8}, {4, 64, 16, 16}, {2, 3, 5, 7}, {1, 1, 1, 1}};
    for (int t = 0; t < 4; t++) {
        char w2[96];
        const int N = shapes[t][0], C = shapes[t][1], H = shapes[t][2], W = shapes[t][3];
        const size_t nx = (size_t)N * C * H * W, no = 4 * nx;
        float *x = hrand(nx, 1), *out = halloc(no);
        R->upsample2x_forward(out, x, N, C, H, W);
        float *dx = dnew(nx, x), *dout = dnan(no);
        G->upsample2x_forward(dout, dx, N, C, H, W);
        snprintf(w2, sizeof w2, "upsample2x N%d C%d %dx%d fwd", N, C, H, W);
        expect(w2, nerr(dget(dout, no), out, no), EXACT);
        float *r = hrand(no, 1), *dr = dnew(no, r);
        gpair g = gp(nx);
        R->upsample2x_backward(g.h, r, N, C, H, W);
        G->upsample2x_backward(g.d, dr, N, C, H, W);
        snprintf(w2, sizeof w2, "upsample2x N%d C%d %dx%d bwd += (4-term sums)", N, C, H, W);
        expect(w2, gcmp(&g), T_SUM);
        G->upsample2x_backward(NULL, dr, N, C, H, W);
        case_end();
    }
}

/* ------------------------------------------------------------- attention */

static void att_case(int N, int C, int T) {
    char what[64], w2[128];
    snprintf(what, sizeof what, "attention N%d C%d T%d", N, C, T);
    const size_t nq = (size_t)N * 3 * C * T, na = (size_t)N * T * T, no = (size_t)N * C * T;
    float *qkv = hrand(nq, 1.5f), *out = halloc(no), *att = halloc(na);
    R->attention_forward(out, att, qkv, N, C, T);
    float *dq = dnew(nq, qkv), *dout = dnan(no), *datt = dnan(na);
    G->attention_forward(dout, datt, dq, N, C, T);
    snprintf(w2, sizeof w2, "%s fwd (out, att)", what);
    expect(w2, fmax(nerr(dget(dout, no), out, no), nerr(dget(datt, na), att, na)), T_ATT);
    /* the backward on the reference probabilities on both sides */
    float *r = hrand(no, 1), *dr = dnew(no, r), *da = dnew(na, att);
    gpair g = gp(nq);
    R->attention_backward(g.h, r, qkv, att, N, C, T);
    G->attention_backward(g.d, dr, dq, da, N, C, T);
    snprintf(w2, sizeof w2, "%s bwd +=", what);
    expect(w2, gcmp(&g), T_ATT_BWD);
    G->attention_backward(NULL, dr, dq, da, N, C, T);
    case_end();
}

static void test_attention(void) {
    rng_seed(9);
    att_case(4, 64, 64); /* the yardstick's 8x8 attention, CFG batch */
    att_case(2, 64, 64);
    att_case(3, 5, 16);  /* odd */
    att_case(2, 24, 49);
    att_case(1, 3, 1);   /* one position */
}

/* ----------------------------------------------------- embeddings, loss */

static void emb_case(int V, int D, int N, const int *idx) {
    char w2[96];
    float *table = hrand((size_t)V * D, 1), *out = halloc((size_t)N * D);
    R->embedding_forward(out, idx, table, N, D);
    float *dt = dnew((size_t)V * D, table), *di = dnew((size_t)N, idx), *dout = dnan((size_t)N * D);
    G->embedding_forward(dout, (const int *)di, dt, N, D);
    snprintf(w2, sizeof w2, "embedding V%d D%d N%d fwd", V, D, N);
    expect(w2, nerr(dget(dout, (size_t)N * D), out, (size_t)N * D), EXACT);
    float *r = hrand((size_t)N * D, 1), *dr = dnew((size_t)N * D, r);
    gpair g = gp((size_t)V * D);
    R->embedding_backward(g.h, r, idx, N, D);
    G->embedding_backward(g.d, dr, (const int *)di, N, D);
    snprintf(w2, sizeof w2, "embedding V%d D%d N%d bwd += (repeated rows)", V, D, N);
    expect(w2, gcmp(&g), T_SUM);
    G->embedding_backward(NULL, dr, (const int *)di, N, D);
    case_end();
}

static void test_embedding(void) {
    rng_seed(10);
    const int cfg[4] = {7, 100, 7, 100};            /* CFG batch: cond, cond, null, null */
    emb_case(101, 128, 4, cfg);
    int many[64];
    for (int i = 0; i < 64; i++) many[i] = (i * 37) % 5; /* each row ~13 times */
    emb_case(101, 128, 64, many);
    const int odd[6] = {3, 0, 6, 3, 3, 1};
    emb_case(7, 5, 6, odd);
}

static void test_timestep_embedding(void) {
    const float t[6] = {951.0f, 951.0f, 501.0f, 1.0f, 0.0f, 999.0f};
    const int Ds[4] = {32, 128, 2, 6};
    for (int k = 0; k < 4; k++) {
        char w2[96];
        const int D = Ds[k];
        float *out = halloc((size_t)6 * D);
        R->timestep_embedding(out, t, 6, D);
        float *dt = dnew(6, t), *dout = dnan((size_t)6 * D);
        G->timestep_embedding(dout, dt, 6, D);
        float *got = dget(dout, (size_t)6 * D);
        double e = nerr(got, out, (size_t)6 * D); /* values in [-1,1], max ~1: ~absolute */
        snprintf(w2, sizeof w2, "timestep_embedding N6 D%d (t up to 999)", D);
        expect(w2, e, T_TEMB);
        case_end();
    }
}

static void test_mse(void) {
    rng_seed(11);
    const size_t sizes[] = {(size_t)4 * 3 * 1024, (size_t)64 * 3 * 1024, 1001, 1};
    for (int t = 0; t < 4; t++) {
        char w2[96];
        const size_t n = sizes[t];
        float *a = hrand(n, 1), *b = hrand(n, 1);
        float ref = R->mse_forward(a, b, n);
        float *da = dnew(n, a), *db = dnew(n, b);
        float got = G->mse_forward(da, db, n);
        snprintf(w2, sizeof w2, "mse n%zu fwd (relative)", n);
        expect(w2, isfinite(got) ? fabs((double)got - ref) / fabs((double)ref) : INFINITY, T_MSE);
        gpair g = gp(n);
        R->mse_backward(g.h, 0.7f, a, b, n);
        G->mse_backward(g.d, 0.7f, da, db, n);
        /* da += s*(a-b): an FMA may round once instead of twice: 1 ulp */
        snprintf(w2, sizeof w2, "mse n%zu bwd +=", n);
        expect(w2, gcmp(&g), T_ELEM);
        G->mse_backward(NULL, 0.7f, da, db, n);
        case_end();
    }
}

/* ------------------------------------------------------ classifier ops
 * avgpool: sums in double on both sides, one float rounding: T_ELEM.
 * xent: row softmax in double, probabilities and losses rounded once:
 * T_ELEM; the backward is one multiply-add per element: T_ELEM. */
static void cls_case(int N, int C, int HW, int K) {
    char w2[96];
    const size_t nx = (size_t)N * C * HW, no = (size_t)N * C;
    float *x = hrand(nx, 2), *out = halloc(no);
    R->avgpool_forward(out, x, N, C, HW);
    float *dx = dnew(nx, x), *dout = dnan(no);
    G->avgpool_forward(dout, dx, N, C, HW);
    snprintf(w2, sizeof w2, "avgpool N%d C%d HW%d fwd", N, C, HW);
    expect(w2, nerr(dget(dout, no), out, no), T_ELEM);
    float *r = hrand(no, 1), *dr = dnew(no, r);
    gpair g = gp(nx);
    R->avgpool_backward(g.h, r, N, C, HW);
    G->avgpool_backward(g.d, dr, N, C, HW);
    snprintf(w2, sizeof w2, "avgpool N%d C%d HW%d bwd +=", N, C, HW);
    expect(w2, gcmp(&g), T_ELEM);
    G->avgpool_backward(NULL, dr, N, C, HW);

    const size_t nz = (size_t)N * K;
    float *z = hrand(nz, 8), *p = halloc(nz), *l = halloc(N);
    int *lab = malloc(N * sizeof(int));
    for (int i = 0; i < N; i++) lab[i] = (i * 7 + 3) % K;
    R->xent_forward(p, l, z, lab, N, K);
    float *dz = dnew(nz, z), *dp = dnan(nz), *dl = dnan(N), *dlab = dnew(N, lab);
    G->xent_forward(dp, dl, dz, (const int *)dlab, N, K);
    snprintf(w2, sizeof w2, "xent N%d K%d fwd probs", N, K);
    expect(w2, nerr(dget(dp, nz), p, nz), T_ELEM);
    snprintf(w2, sizeof w2, "xent N%d K%d fwd loss", N, K);
    expect(w2, nerr(dget(dl, N), l, N), T_ELEM);
    gpair gz = gp(nz);
    R->xent_backward(gz.h, 0.7f, p, lab, N, K);
    G->xent_backward(gz.d, 0.7f, dp, (const int *)dlab, N, K);
    snprintf(w2, sizeof w2, "xent N%d K%d bwd +=", N, K);
    expect(w2, gcmp(&gz), T_ELEM);
    G->xent_backward(NULL, 0.7f, dp, (const int *)dlab, N, K);
    free(lab);
    case_end();
}

static void test_classifier_ops(void) {
    rng_seed(21);
    cls_case(64, 32, 16, 99);
    cls_case(3, 5, 7, 2);
    cls_case(1, 1, 1, 3);
}

/* ------------------------------------------- flat-buffer training utilities */

static void test_training_utils(void) {
    rng_seed(12);
    const size_t sizes[] = {1637251, 4099, 1};
    for (int t = 0; t < 3; t++) {
        char w2[96];
        const size_t n = sizes[t];
        float *x = hrand(n, 1);
        double ss = R->sumsq(x, n);
        float *dx = dnew(n, x);
        double sg = G->sumsq(dx, n);
        /* double accumulation on both (backend.h): only the order differs */
        snprintf(w2, sizeof w2, "sumsq n%zu (relative)", n);
        expect(w2, isfinite(sg) ? fabs(sg - ss) / ss : INFINITY, 1e-9);

        float *xs = hcopy(x, n);
        R->scale(xs, 0.3125f, n);
        G->scale(dx, 0.3125f, n);
        snprintf(w2, sizeof w2, "scale n%zu (one multiply: exact)", n);
        expect(w2, nerr(dget(dx, n), xs, n), EXACT);

        /* three AdamW steps with the optimizer's scalars */
        float *p = hrand(n, 1), *m = halloc(n), *v = halloc(n);
        float *dp = dnew(n, p), *dm = dnew(n, m), *dv = dnew(n, v);
        const float *p0 = hcopy(p, n);
        d3_adamw o = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .wd = 1e-2f};
        for (int s = 0; s < 3; s++) {
            float *g = hrand(n, 0.1f), *dg = dnew(n, g);
            float step_size, rbc2, decay;
            adamw_scalars(&o, &step_size, &rbc2, &decay);
            R->adamw(p, m, v, g, n, o.beta1, o.beta2, o.eps, step_size, rbc2, decay);
            G->adamw(dp, dm, dv, dg, n, o.beta1, o.beta2, o.eps, step_size, rbc2, decay);
        }
        float *gp_ = dget(dp, n), *gm = dget(dm, n), *gv = dget(dv, n);
        /* the same float expression; FMA contraction and CUDA's sqrtf/div
         * (both IEEE by default) leave a few ulp of each value */
        snprintf(w2, sizeof w2, "adamw n%zu x3 (p, m, v)", n);
        expect(w2, fmax(nerr(gp_, p, n), fmax(nerr(gm, m, n), nerr(gv, v, n))), 1e-6);
        /* the update itself (p - p0 ~ 3 lr): a few ulp of |p| ~ 1 is 1e-7,
         * so 1e-4 of the update's scale */
        float *ug = halloc(n), *uc = halloc(n);
        for (size_t i = 0; i < n; i++) { ug[i] = gp_[i] - p0[i]; uc[i] = p[i] - p0[i]; }
        snprintf(w2, sizeof w2, "adamw n%zu x3 update p-p0", n);
        expect(w2, nerr(ug, uc, n), 1e-3);

        float *e = hrand(n, 1), *de = dnew(n, e);
        R->ema(e, p, 0.999f, n);
        G->ema(de, dp, 0.999f, n);
        snprintf(w2, sizeof w2, "ema n%zu", n);
        expect(w2, nerr(dget(de, n), e, n), 1e-6);
        case_end();
    }
}

/* ------------------------------------------------------------ the model */

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* model_init zeroes conv_out, every conv2 and every proj (each block starts
 * as the identity) and sets GroupNorm to 1/0: re-randomise them (as
 * bench/bench.c does, plus random norms) so every path carries signal. */
static void randomise(d3_model *m, uint64_t seed) {
    d3_rng r;
    rng_init(&r, seed, 0x7e57);
    const unet_layout *L = &m->L;
    for (int i = 0; i < L->nparams; i++) {
        const unet_param *p = &L->params[i];
        float *v = m->params + p->offset;
        if (strstr(p->name, "norm")) {
            rng_uniform(&r, v, p->numel);
            int w = ends_with(p->name, ".weight");
            for (size_t j = 0; j < p->numel; j++) v[j] = w ? 0.5f + v[j] : 0.6f * v[j] - 0.3f;
            continue;
        }
        int zw = ends_with(p->name, ".conv2.weight") || ends_with(p->name, ".proj.weight") ||
                 !strcmp(p->name, "conv_out.weight");
        int zb = ends_with(p->name, ".conv2.bias") || ends_with(p->name, ".proj.bias") ||
                 !strcmp(p->name, "conv_out.bias");
        if (!zw && !zb) continue;
        const unet_param *wp = p;
        if (zb) {
            char wn[200];
            snprintf(wn, sizeof wn, "%.*sweight", (int)(strlen(p->name) - 4), p->name);
            wp = unet_layout_find(L, wn);
        }
        size_t fan_in = wp ? wp->numel / (size_t)wp->shape[0] : p->numel;
        float bound = 1.0f / sqrtf((float)fan_in);
        rng_uniform(&r, v, p->numel);
        for (size_t j = 0; j < p->numel; j++) v[j] = (2.0f * v[j] - 1.0f) * bound;
    }
    model_touch(m);
}

static d3_model yard;     /* the yardstick, random weights */
static int yard_ok;

static int make_yardstick(void) {
    char err[D3_ERRLEN];
    unet_arch a = unet_arch_default();
    if (model_init(&yard, &a, NULL, 1234, err)) {
        CHECK(0, "model_init: %s", err);
        return -1;
    }
    randomise(&yard, 1234);
    yard_ok = 1;
    return 0;
}

/* Per-parameter-tensor comparison: the worst tensor's error, max |got - ref|
 * over the tensor divided by max(max |ref| over the tensor, PARAM_FLOOR *
 * max |ref| over all tensors). The floor is there because some gradients
 * are zero in exact arithmetic and only rounding noise in fp32, on either
 * device: in the yardstick every GroupNorm at 32 channels has 32 groups of
 * ONE channel, which removes any per-channel constant, so the emb_proj of
 * each level-0 ResBlock and a conv bias feeding such a norm get no
 * gradient; their "relative error" would compare two noises. A tensor
 * whose gradient is below 1e-2 of the largest is held to an absolute
 * bound of tol * 1e-2 * that largest gradient instead.
 * D3PO_TEST_CUDA_VERBOSE=1 prints every tensor's numbers. */
#define PARAM_FLOOR 1e-2
static double param_err(const unet_layout *L, const float *got, const float *ref,
                        const char **worst) {
    double e = 0, gmax = maxabs(ref, L->numel);
    int verbose = getenv("D3PO_TEST_CUDA_VERBOSE") && atoi(getenv("D3PO_TEST_CUDA_VERBOSE"));
    *worst = "-";
    for (int i = 0; i < L->nparams; i++) {
        const unet_param *p = &L->params[i];
        double mx = 0, mr = maxabs(ref + p->offset, p->numel);
        for (size_t j = 0; j < p->numel; j++) {
            double gj = got[p->offset + j];
            if (!isfinite(gj)) { nonfinite++; mx = INFINITY; break; }
            double d = fabs(gj - ref[p->offset + j]);
            if (d > mx) mx = d;
        }
        double den = fmax(mr, PARAM_FLOOR * gmax);
        double ei = mx / (den > 1e-30 ? den : 1e-30);
        if (verbose)
            printf("      %-40s max|ref| %.3g (%.2g of max) max|d| %.3g -> %.3g\n", p->name, mr,
                   gmax > 0 ? mr / gmax : 0, mx, ei);
        if (!(ei <= e)) { e = ei; *worst = p->name; }
    }
    return e;
}

/* Whole-model tolerances, sized with D3PO_TEST_CUDA_SELF=noisy (every op's
 * output perturbed by relative noise; fp32 reordering is ~1e-6, cuDNN's
 * Winograd up to ~1e-5). Measured at noise 1e-6 / 1e-5: output 7e-6 /
 * 8e-5, input gradient 1.4e-5 / 1.4e-4, worst parameter tensor 4e-5 /
 * 4.2e-4 (zero-gradient tensors, see PARAM_FLOOR, 5e-5 / 4e-4). The
 * tolerances sit >= 10x above the 1e-5 numbers; a wrong op moves them to
 * O(1e-2..1). */
#define T_MODEL 1e-3
#define T_MODEL_GRAD 5e-3

static void test_model(void) {
    if (!yard_ok && make_yardstick()) return;
    d3_model *m = &yard;
    const int N = 4, S = m->L.arch.size;
    const size_t D = 3 * (size_t)S * S, np = m->L.numel;
    const float t[4] = {951, 951, 501, 1};
    const int y[4] = {7, 42, 100, 100}; /* 100 = the null class */
    rng_seed(13);
    float *x = hrand(N * D, 1.5f), *dout = hrand(N * D, 1);

    /* CPU */
    double t0 = now();
    d3_tape *tc = tape_new(R);
    float *gc = halloc(np);
    tape_reset(tc);
    d3_tensor *xc = tape_input(tc, N, 3, S, S);
    memcpy(xc->v, x, N * D * sizeof(float));
    d3_tensor *oc = unet_forward(tc, &m->L, model_params_dev(m, R), gc, xc, t, y);
    float *outc = hcopy(oc->v, N * D);
    float *doc = tape_alloc(tc, N * D);
    memcpy(doc, dout, N * D * sizeof(float));
    tape_backward(tc, oc, doc);
    float *gxc = hcopy(xc->g, N * D);
    double t1 = now();

    /* device */
    d3_tape *tg = tape_new(G);
    float *gg = dnew(np, NULL);
    G->zero(gg, np * sizeof(float));
    tape_reset(tg);
    d3_tensor *xg = tape_input(tg, N, 3, S, S);
    G->upload(xg->v, x, N * D * sizeof(float));
    const float *pg = model_params_dev(m, G);
    CHECK(pg != NULL, "model_params_dev on %s", G->name);
    if (!pg) { tape_free(tc); tape_free(tg); case_end(); return; }
    d3_tensor *og = unet_forward(tg, &m->L, pg, gg, xg, t, y);
    float *outg = dget(og->v, N * D);
    float *dog = tape_alloc(tg, N * D);
    G->upload(dog, dout, N * D * sizeof(float));
    tape_backward(tg, og, dog);
    float *gxg = dget(xg->g, N * D), *ggh = dget(gg, np);
    double t2 = now();
    printf("    (unet fwd+bwd batch %d: cpu %.3f s, %s %.3f s)\n", N, t1 - t0, G->name, t2 - t1);

    double mo = 0;
    for (size_t i = 0; i < N * D; i++) mo += fabs((double)outg[i] - outc[i]);
    printf("    unet output: max|cpu| %.3g, mean abs diff %.3g\n", maxabs(outc, N * D),
           mo / (double)(N * D));
    expect("unet_forward output (batch 4, yardstick)", nerr(outg, outc, N * D), T_MODEL);
    expect("unet input gradient x->g", nerr(gxg, gxc, N * D), T_MODEL_GRAD);
    const char *worst;
    double e = param_err(&m->L, ggh, gc, &worst);
    char w2[256];
    snprintf(w2, sizeof w2, "unet parameter gradients, worst tensor (%.40s)", worst);
    expect(w2, e, T_MODEL_GRAD);
    /* the same over the whole flat vector */
    expect("unet parameter gradients, all (normalised by the global max)", nerr(ggh, gc, np),
           T_MODEL_GRAD);
    tape_free(tc);
    tape_free(tg);
    case_end();
}

/* ------------------------------------------------------------------ D3PO */

static void sample_pairs(const d3_model *m, d3_tape *tp, const ddim_opts *o, int npairs,
                         const int *cls_pair, float *traj, float *logp) {
    const int S = m->L.arch.size, n = 2 * npairs;
    const size_t D = 3 * (size_t)S * S;
    float *x = malloc(n * D * sizeof(float));
    int *cls = malloc(n * sizeof(int));
    d3_rng *rngs = malloc(n * sizeof(d3_rng));
    for (int p = 0; p < npairs; p++) {
        d3_rng r;
        rng_init(&r, 77, 2 * (uint64_t)p);
        rng_normal(&r, x + 2 * p * D, D);
        memcpy(x + (2 * p + 1) * D, x + 2 * p * D, D * sizeof(float));
        cls[2 * p] = cls[2 * p + 1] = cls_pair[p];
    }
    for (int i = 0; i < n; i++) rng_init(&rngs[i], 77, 1000 + (uint64_t)i);
    char err[D3_ERRLEN];
    CHECK(ddim_sample(m, tp, o, n, cls, x, rngs, traj, logp, err) == 0, "ddim_sample: %s", err);
    free(x); free(cls); free(rngs);
}

/* D3PO tolerances, sized with D3PO_TEST_CUDA_SELF=noisy as above
 * (measured at op noise 1e-6 / 1e-5):
 * T_D3PO_GRAD 5e-2: d3po_pair_backward's gradient, worst tensor (2.7e-3 /
 *   2.8e-2) and whole vector (1e-3 / 1e-2). Far more sensitive than the
 *   plain model gradient: d logp / d eps passes the x0 clamp, whose mask
 *   flips for pixels at +-1 under any perturbation of eps, and at high t
 *   dx0/deps = sqrt(1-a_t)/sqrt(a_t) is ~100. A wrong op gives O(1).
 * T_D3PO_LOGP 1e-4: per-step policy log-probs, relative (2.8e-6 / 2.3e-5).
 * T_D3PO_LOSS 1e-4: the loss, relative (1e-8 / 3e-6): the policy and its
 *   reference are computed on the same device, their difference is ~0.
 * T_D3PO_UPDATE 0.3: d3po_train's parameter update, ||upd_cuda - upd_cpu||
 *   / ||upd_cpu|| (0.035 / 0.11). AdamW's first step is lr g / (|g| + eps),
 *   about lr sign(g): elements whose gradient is within rounding of zero
 *   flip sign on either device and move by 2 lr, so this is an integration
 *   check (the update ran on the device, the parameters and moments came
 *   back, once): a missing or doubled update, or stale parameters, gives
 *   >= 1. The per-tensor gradient check above is the precise one.
 * T_D3PO_MOMENT 0.1: AdamW m and v after two updates, norm-wise (8e-3 /
 *   2.5e-2), the same integration check for the moments. */
#define T_D3PO_LOSS 1e-4
#define T_D3PO_LOGP 1e-4
#define T_D3PO_GRAD 5e-2
#define T_D3PO_UPDATE 0.3
#define T_D3PO_MOMENT 0.1

static void test_d3po(void) {
    if (!yard_ok && make_yardstick()) return;
    d3_model *m = &yard;
    char err[D3_ERRLEN];
    const int S = m->L.arch.size, K = 4, NP = 2;
    const size_t D = 3 * (size_t)S * S, np = m->L.numel, TN = (size_t)(K + 1) * D;
    ddim_opts o = ddim_opts_default();
    o.steps = K;
    d3_tape *tc = tape_new(R), *tg = tape_new(G);
    float *traj = halloc(2 * NP * TN), *logp = halloc(2 * NP * (size_t)K);
    const int cls_pair[2] = {7, 42};
    double t0 = now();
    sample_pairs(m, tc, &o, NP, cls_pair, traj, logp);
    printf("    (sampled %d pairs on the cpu, %d steps: %.2f s)\n", NP, K, now() - t0);

    /* 1. d3po_pair_backward on the yardstick itself, both devices, the same
     * reference log-probs (sampled logp - 0.01: inside the clamp) */
    float *ref = halloc(2 * (size_t)K);
    for (int i = 0; i < 2 * K; i++) ref[i] = logp[i] - 0.01f;
    const float h[2] = {1, -1};
    d3po_opts dopt = d3po_opts_default();
    float *gc = halloc(np), *lkc = halloc(K), *lp0c = halloc(K), *lp1c = halloc(K);
    float *lkg = halloc(K), *lp0g = halloc(K), *lp1g = halloc(K);
    t0 = now();
    double lc = d3po_pair_backward(m, tc, gc, &o, &dopt, traj, traj + TN, cls_pair[0], ref, ref + K,
                                   NULL, h, NULL, lkc, lp0c, lp1c, err);
    CHECK(isfinite(lc), "cpu d3po_pair_backward: %s", err);
    double t1 = now();
    float *gg = dnew(np, NULL);
    G->zero(gg, np * sizeof(float));
    double lg = d3po_pair_backward(m, tg, gg, &o, &dopt, traj, traj + TN, cls_pair[0], ref, ref + K,
                                   NULL, h, NULL, lkg, lp0g, lp1g, err);
    CHECK(isfinite(lg), "%s d3po_pair_backward: %s", G->name, err);
    float *ggh = dget(gg, np);
    printf("    (d3po_pair_backward K=%d: cpu %.3f s, %s %.3f s)\n", K, t1 - t0, G->name, now() - t1);
    expect("d3po_pair_backward loss (relative)", fabs(lg - lc) / fmax(fabs(lc), 1e-30), T_D3PO_LOSS);
    double el = 0;
    for (int k = 0; k < K; k++) {
        el = fmax(el, fabs((double)lp0g[k] - lp0c[k]) / fabs((double)lp0c[k]));
        el = fmax(el, fabs((double)lp1g[k] - lp1c[k]) / fabs((double)lp1c[k]));
    }
    expect("d3po_pair_backward policy log-probs (relative)", el, T_D3PO_LOGP);
    const char *worst;
    double e = param_err(&m->L, ggh, gc, &worst);
    char w2[256];
    snprintf(w2, sizeof w2, "d3po_pair_backward gradients, worst tensor (%.40s)", worst);
    expect(w2, e, T_D3PO_GRAD);
    expect("d3po_pair_backward gradients, all", nerr(ggh, gc, np), T_D3PO_GRAD);

    /* 1b. dpo_pair_backward (Diffusion-DPO) on the pair's final images, the
     * same 3 draws on both devices, a copy of the model as reference (its
     * own pass on each device); tolerances as D3PO's (a plain eps-MSE
     * gradient, no clamp: expected well inside them) */
    {
        d3_model dref;
        CHECK(model_copy(&dref, m, err) == 0, "%s", err);
        for (size_t i = 0; i < np; i += 7) dref.params[i] *= 1.01f;
        int dts[3] = {5, 500, 990};
        float *deps = halloc(3 * D), *gdc = halloc(np);
        d3_rng dr;
        rng_init(&dr, 91, 0);
        rng_normal(&dr, deps, 3 * D);
        dpo_opts dd = {.beta = 0.05f};
        const float *x0a = traj + (size_t)K * D, *x0b = traj + TN + (size_t)K * D;
        double ldc = dpo_pair_backward(m, &dref, tc, gdc, &dd, x0a, x0b, cls_pair[0], h, 3, dts,
                                       deps, NULL, err);
        CHECK(isfinite(ldc), "cpu dpo_pair_backward: %s", err);
        float *gdg = dnew(np, NULL);
        G->zero(gdg, np * sizeof(float));
        double ldg = dpo_pair_backward(m, &dref, tg, gdg, &dd, x0a, x0b, cls_pair[0], h, 3, dts,
                                       deps, NULL, err);
        CHECK(isfinite(ldg), "%s dpo_pair_backward: %s", G->name, err);
        float *gdh = dget(gdg, np);
        expect("dpo_pair_backward loss (relative)", fabs(ldg - ldc) / fmax(fabs(ldc), 1e-30),
               T_D3PO_LOSS);
        e = param_err(&m->L, gdh, gdc, &worst);
        snprintf(w2, sizeof w2, "dpo_pair_backward gradients, worst tensor (%.40s)", worst);
        expect(w2, e, T_D3PO_GRAD);
        expect("dpo_pair_backward gradients, all", nerr(gdh, gdc, np), T_D3PO_GRAD);
        model_free(&dref); /* the buffers go at case_end */
    }

    /* 2. d3po_train: a CPU copy and a device copy, same pairs, same seed;
     * reference = a copy of the policy (the round's start) */
    d3_model pc, pg, rc, rg;
    if (model_copy(&pc, m, err) || model_copy(&pg, m, err) || model_copy(&rc, m, err) ||
        model_copy(&rg, m, err)) {
        CHECK(0, "model_copy: %s", err);
        tape_free(tc); tape_free(tg); case_end();
        return;
    }
    d3_adamw oc, og;
    if (adamw_init(&oc, np) || adamw_init(&og, np)) die("adamw_init");
    d3po_pair pairs_c[2], pairs_g[2];
    for (int p = 0; p < NP; p++) {
        pairs_c[p] = (d3po_pair){.cls = cls_pair[p],
                                 .traj = {traj + 2 * p * TN, traj + (2 * p + 1) * TN},
                                 .h = {p ? -1.0f : 1.0f, p ? 1.0f : -1.0f},
                                 .ref = {NULL, NULL},
                                 .ref_tag = -1};
        pairs_g[p] = pairs_c[p];
    }
    d3po_train_opts to = d3po_train_opts_default();
    to.sample = o;
    d3_rng rngc, rngg;
    rng_init(&rngc, 99, 5);
    rng_init(&rngg, 99, 5);
    t0 = now();
    double Lc = d3po_train(&pc, &rc, 0, tc, &oc, pairs_c, NP, &to, &rngc, NULL, NULL, err);
    CHECK(isfinite(Lc), "cpu d3po_train: %s", err);
    t1 = now();
    double Lg = d3po_train(&pg, &rg, 0, tg, &og, pairs_g, NP, &to, &rngg, NULL, NULL, err);
    CHECK(isfinite(Lg), "%s d3po_train: %s", G->name, err);
    printf("    (d3po_train %d pairs, K=%d: cpu %.3f s, %s %.3f s)\n", NP, K, t1 - t0, G->name,
           now() - t1);
    expect("d3po_train loss (relative)", fabs(Lg - Lc) / fmax(fabs(Lc), 1e-30), T_D3PO_LOSS);
    CHECK(oc.step == NP && og.step == NP, "optimizer steps cpu %ld, %s %ld", oc.step, G->name,
          og.step);
    double dd = 0, dc = 0, mx = 0, nn = 0;
    long flips = 0;
    for (size_t i = 0; i < np; i++) {
        double uc = (double)pc.params[i] - m->params[i], ug = (double)pg.params[i] - m->params[i];
        dd += (ug - uc) * (ug - uc);
        dc += uc * uc;
        if (fabs(ug - uc) > mx) mx = fabs(ug - uc);
        if (fabs(ug - uc) > 0.5 * oc.lr) flips++;
        if (!isfinite(pg.params[i])) nn++;
    }
    printf("    d3po_train update: ||cpu|| %.3g, max |cuda-cpu| %.3g (= %.3g lr), %ld of %zu "
           "elements differ by > lr/2, %.0f non-finite\n",
           sqrt(dc), mx, mx / oc.lr, flips, np, nn);
    expect("d3po_train parameter update ||d|| / ||update||", nn ? INFINITY : sqrt(dd / dc),
           T_D3PO_UPDATE);
    expect("d3po_train AdamW m (||d|| / ||m||)", l2rel(og.m, oc.m, np), T_D3PO_MOMENT);
    expect("d3po_train AdamW v (||d|| / ||v||)", l2rel(og.v, oc.v, np), T_D3PO_MOMENT);
    d3po_pairs_free_cache(pairs_c, NP);
    d3po_pairs_free_cache(pairs_g, NP);
    adamw_free(&oc); adamw_free(&og);
    model_free(&pc); model_free(&pg); model_free(&rc); model_free(&rg);
    tape_free(tc);
    tape_free(tg);
    case_end();
}

/* -------------------------------------------------------------- sampling */

/* 20 DDIM steps with CFG 5 from the same x_T with the same step noise
 * (each image's d3_rng stream, drawn on the host for both devices): the
 * only difference is the eps of each step, fp32 noise amplified by CFG
 * (eps_u + 5 (eps_c - eps_u)) and carried through later steps. Because the
 * injected noise is shared and x0 is clipped, the trajectories do not
 * diverge: the images stay within 0.05 max and 5e-3 mean absolute (of a
 * [-1,1] range; a wrong op gives O(0.1..1)). D3PO_TEST_CUDA_SELF=noisy
 * measured 5.6e-5 / 5e-6 at op noise 1e-6 and 4.8e-4 / 5.2e-5 at 1e-5 on
 * the default model: the bounds leave 100x for the GPU's real
 * differences, which this harness cannot measure without one. */
#define T_SAMPLE_MAX 0.05
#define T_SAMPLE_MEAN 5e-3
#define T_SAMPLE_LOGP 1e-3

static void test_sampling(void) {
    char err[D3_ERRLEN];
    d3_model tm, *m = NULL;
    const char *paths[] = {"models/default.safetensors", "../models/default.safetensors"};
    const char *which = "random yardstick";
    for (int i = 0; i < 2 && !m; i++)
        if (model_load(&tm, paths[i], NULL, err) == 0) { m = &tm; which = paths[i]; }
    if (!m) {
        if (!yard_ok && make_yardstick()) return;
        m = &yard;
    }
    const int S = m->L.arch.size, n = 2, K = 20;
    const size_t D = 3 * (size_t)S * S;
    ddim_opts o = ddim_opts_default(); /* 20 steps, eta 1, cfg 5 */
    int cls[2] = {3 % m->L.arch.classes, 3 % m->L.arch.classes};
    float *xc = halloc(n * D), *xg = halloc(n * D), *lpc = halloc(n * K), *lpg = halloc(n * K);
    d3_rng r;
    rng_init(&r, 5, 0);
    rng_normal(&r, xc, D);
    memcpy(xc + D, xc, D * sizeof(float));
    memcpy(xg, xc, n * D * sizeof(float));
    d3_rng rc[2], rg[2];
    for (int i = 0; i < n; i++) {
        rng_init(&rc[i], 5, 1 + (uint64_t)i);
        rg[i] = rc[i];
    }
    d3_tape *tc = tape_new(R), *tg = tape_new(G);
    double t0 = now();
    CHECK(ddim_sample(m, tc, &o, n, cls, xc, rc, NULL, lpc, err) == 0, "cpu: %s", err);
    double t1 = now();
    CHECK(ddim_sample(m, tg, &o, n, cls, xg, rg, NULL, lpg, err) == 0, "%s: %s", G->name, err);
    printf("    (ddim_sample n=2, 20 steps, cfg 5 on %s: cpu %.3f s, %s %.3f s)\n", which, t1 - t0,
           G->name, now() - t1);
    double mx = 0, mean = 0, lp = 0;
    int fin = all_finite(xg, n * D) && all_finite(lpg, n * K);
    for (size_t i = 0; i < n * D; i++) {
        double d = fabs((double)xg[i] - xc[i]);
        mean += d;
        if (d > mx) mx = d;
    }
    mean /= (double)(n * D);
    for (int i = 0; i < n * K; i++)
        lp = fmax(lp, fabs((double)lpg[i] - lpc[i]) / fmax(fabs((double)lpc[i]), 1.0));
    expect("ddim_sample images, max abs diff", fin ? mx : INFINITY, T_SAMPLE_MAX);
    expect("ddim_sample images, mean abs diff", fin ? mean : INFINITY, T_SAMPLE_MEAN);
    expect("ddim_sample per-step log-probs (relative)", fin ? lp : INFINITY, T_SAMPLE_LOGP);
    tape_free(tc);
    tape_free(tg);
    if (m == &tm) model_free(&tm);
    case_end();
}

/* ------------------------------------------------------------ noisy self */

/* The CPU backend with relative noise on every op's output (calibration of
 * the model-level tolerances; see the header comment). */
static d3_backend noisy;
static double noise_level = 1e-6;
static uint64_t nz_state = 12345;
static void nz(float *p, size_t n) {
    if (!p || !n) return;
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)p[i] * p[i];
    const double rms = sqrt(ss / (double)n);
    for (size_t i = 0; i < n; i++) {
        nz_state ^= nz_state << 13; nz_state ^= nz_state >> 7; nz_state ^= nz_state << 17;
        double u = (double)(nz_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        p[i] += (float)(noise_level * u * (fabs((double)p[i]) + rms));
    }
}
static int oh(int H, int K, int s, int p) { return (H + 2 * p - K) / s + 1; }
static void n_conv_f(float *out, const float *inp, const float *w, const float *b, int N, int C,
                     int H, int W, int OC, int K, int s, int p) {
    R->conv2d_forward(out, inp, w, b, N, C, H, W, OC, K, s, p);
    nz(out, (size_t)N * OC * oh(H, K, s, p) * oh(W, K, s, p));
}
static void n_conv_b(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int N, int C, int H, int W, int OC, int K, int s, int p) {
    R->conv2d_backward(dinp, dw, db, dout, inp, w, N, C, H, W, OC, K, s, p);
    nz(dinp, (size_t)N * C * H * W); nz(dw, (size_t)OC * C * K * K); nz(db, (size_t)OC);
}
static void n_lin_f(float *out, const float *inp, const float *w, const float *b, int N, int IN,
                    int OUT) {
    R->linear_forward(out, inp, w, b, N, IN, OUT);
    nz(out, (size_t)N * OUT);
}
static void n_lin_b(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                    const float *w, int N, int IN, int OUT) {
    R->linear_backward(dinp, dw, db, dout, inp, w, N, IN, OUT);
    nz(dinp, (size_t)N * IN); nz(dw, (size_t)OUT * IN); nz(db, (size_t)OUT);
}
static void n_gn_f(float *out, float *mean, float *rstd, const float *inp, const float *w,
                   const float *b, int N, int C, int HW, int G_, float eps) {
    R->groupnorm_forward(out, mean, rstd, inp, w, b, N, C, HW, G_, eps);
    nz(out, (size_t)N * C * HW);
}
static void n_gn_b(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                   const float *w, const float *mean, const float *rstd, int N, int C, int HW,
                   int G_, float eps) {
    R->groupnorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C, HW, G_, eps);
    nz(dinp, (size_t)N * C * HW); nz(dw, (size_t)C); nz(db, (size_t)C);
}
static void n_silu_f(float *out, const float *inp, size_t n) { R->silu_forward(out, inp, n); nz(out, n); }
static void n_silu_b(float *dinp, const float *dout, const float *inp, size_t n) {
    R->silu_backward(dinp, dout, inp, n); nz(dinp, n);
}
static void n_att_f(float *out, float *att, const float *qkv, int N, int C, int T) {
    R->attention_forward(out, att, qkv, N, C, T);
    nz(out, (size_t)N * C * T);
}
static void n_att_b(float *dqkv, const float *dout, const float *qkv, const float *att, int N,
                    int C, int T) {
    R->attention_backward(dqkv, dout, qkv, att, N, C, T);
    nz(dqkv, (size_t)N * 3 * C * T);
}
static void n_addbc_b(float *dx, float *de, const float *dout, int N, int C, int HW) {
    R->addbc_backward(dx, de, dout, N, C, HW);
    nz(de, (size_t)N * C);
}
static void n_temb(float *out, const float *t, int N, int D) {
    R->timestep_embedding(out, t, N, D);
    nz(out, (size_t)N * D);
}

static const d3_backend *make_noisy(double level) {
    noisy = *backend_cpu();
    noise_level = level;
    noisy.name = "cpu+noise";
    noisy.conv2d_forward = n_conv_f;
    noisy.conv2d_backward = n_conv_b;
    noisy.linear_forward = n_lin_f;
    noisy.linear_backward = n_lin_b;
    noisy.groupnorm_forward = n_gn_f;
    noisy.groupnorm_backward = n_gn_b;
    noisy.silu_forward = n_silu_f;
    noisy.silu_backward = n_silu_b;
    noisy.attention_forward = n_att_f;
    noisy.attention_backward = n_att_b;
    noisy.addbc_backward = n_addbc_b;
    noisy.timestep_embedding = n_temb;
    return &noisy;
}

/* The CPU backend with three planted bugs (D3PO_TEST_CUDA_SELF=broken): the
 * harness must report each of them. */
static d3_backend broken;
static void b_add_bwd(float *da, float *db, const float *dout, size_t n) {
    for (size_t i = 0; i < n; i++) { /* overwrites instead of accumulating */
        if (da) da[i] = dout[i];
        if (db) db[i] = dout[i];
    }
}
static void b_silu_f(float *out, const float *inp, size_t n) {
    R->silu_forward(out, inp, n);
    out[n] = 0.0f; /* one float past the end */
}
static void b_lin_f(float *out, const float *inp, const float *w, const float *b, int N, int IN,
                    int OUT) {
    float keep = out[(size_t)N * OUT - 1];
    R->linear_forward(out, inp, w, b, N, IN, OUT);
    out[(size_t)N * OUT - 1] = keep; /* last element left unwritten */
}
static const d3_backend *make_broken(void) {
    broken = *backend_cpu();
    broken.name = "cpu+bugs";
    broken.add_backward = b_add_bwd;
    broken.silu_forward = b_silu_f;
    broken.linear_forward = b_lin_f;
    return &broken;
}

/* ---------------------------------------------------- transformer ops
 * Shapes of Stable Diffusion 1.x/2.x and CLIP (77 tokens, d 768, 12
 * heads of 64; SD's 8 heads of 40..160 at 32x32..64x64 latents, cross
 * onto 77 text tokens) at reduced batch, plus odd sizes.
 * T_LN: as T_GN (statistics in double on both sides).
 * T_MHA 2e-5: q.k products over dh <= 160 terms, expf on both sides (the
 *   CPU's fexp is within 2e-7), sums of <= 1024 weighted values in a
 *   different order (online softmax in blocks of 64x128 on the CPU, 32x32
 *   on the GPU): ~1e-6 normalised; lse is compared the same way.
 * T_MHA_BWD 5e-5: as T_ATT_BWD, the backward chains three products and
 *   the softmax Jacobian. */
#define T_LN 2e-5
#define T_MHA 2e-5
#define T_MHA_BWD 5e-5

static void ln_case(int N, int D, int affine, float eps) {
    char what[64], w2[128];
    snprintf(what, sizeof what, "layernorm N%d D%d%s eps %g", N, D, affine ? "" : " (no affine)", eps);
    const size_t nx = (size_t)N * D;
    float *x = hrand(nx, 2), *w = affine ? hrand(D, 1) : NULL, *b = affine ? hrand(D, 1) : NULL;
    float *out = halloc(nx), *mean = halloc(N), *rstd = halloc(N);
    R->layernorm_forward(out, mean, rstd, x, w, b, N, D, eps);
    float *dx = dnew(nx, x), *dw = affine ? dnew(D, w) : NULL, *db = affine ? dnew(D, b) : NULL;
    float *dout = dnan(nx), *dm = dnan(N), *ds = dnan(N);
    G->layernorm_forward(dout, dm, ds, dx, dw, db, N, D, eps);
    snprintf(w2, sizeof w2, "%s fwd (out, mean, rstd)", what);
    expect(w2, fmax(nerr(dget(dout, nx), out, nx),
                    fmax(nerr(dget(dm, N), mean, N), nerr(dget(ds, N), rstd, N))), T_LN);
    /* the backward on the reference statistics on both sides */
    float *r = hrand(nx, 1), *dr = dnew(nx, r), *rm = dnew(N, mean), *rs = dnew(N, rstd);
    gpair gx = gp(nx), gw = gp(D), gb = gp(D);
    R->layernorm_backward(gx.h, affine ? gw.h : NULL, affine ? gb.h : NULL, r, x, w, mean, rstd, N, D);
    G->layernorm_backward(gx.d, affine ? gw.d : NULL, affine ? gb.d : NULL, dr, dx, dw, rm, rs, N, D);
    snprintf(w2, sizeof w2, "%s bwd (dx, dw, db) +=", what);
    expect(w2, fmax(gcmp(&gx), fmax(gcmp(&gw), gcmp(&gb))), T_LN);
    gpair g1 = gp(nx), g2 = gp(D);
    R->layernorm_backward(g1.h, NULL, NULL, r, x, w, mean, rstd, N, D);
    G->layernorm_backward(g1.d, NULL, NULL, dr, dx, dw, rm, rs, N, D);
    R->layernorm_backward(NULL, g2.h, NULL, r, x, w, mean, rstd, N, D);
    G->layernorm_backward(NULL, g2.d, NULL, dr, dx, dw, rm, rs, N, D);
    snprintf(w2, sizeof w2, "%s bwd dx alone, dw alone", what);
    expect(w2, fmax(gcmp(&g1), gcmp(&g2)), T_LN);
    G->layernorm_backward(NULL, NULL, NULL, dr, dx, dw, rm, rs, N, D);
    case_end();
}

static void test_layernorm(void) {
    rng_seed(21);
    ln_case(2 * 77, 768, 1, 1e-5f);  /* CLIP ViT-L/14 text states */
    ln_case(2 * 1024, 320, 1, 1e-5f); /* SD 1.x transformer at 32x32 latents */
    ln_case(3, 7, 1, 1e-6f);
    ln_case(5, 33, 0, 1e-5f);
}

/* one elementwise op: kind 0 gelu, 1 quick_gelu, 2 scale */
static void tx_ew_case(int kind, size_t n) {
    static const char *names[] = {"gelu", "quick_gelu", "scale 0.18215"};
    char w2[96];
    float *x = hrand(n, 6), *out = halloc(n);
    if (n > 3) { x[0] = -30.0f; x[1] = 30.0f; x[2] = 0.0f; }
    float *dx = dnew(n, x), *dout = dnan(n);
    if (kind == 0) { R->gelu_forward(out, x, n); G->gelu_forward(dout, dx, n); }
    if (kind == 1) { R->quick_gelu_forward(out, x, n); G->quick_gelu_forward(dout, dx, n); }
    if (kind == 2) { R->scale_forward(out, x, 0.18215f, n); G->scale_forward(dout, dx, 0.18215f, n); }
    snprintf(w2, sizeof w2, "%s n%zu fwd", names[kind], n);
    /* a single multiply rounds identically; erff/expf within 2 ulp */
    expect(w2, nerr(dget(dout, n), out, n), kind == 2 ? EXACT : T_ELEM);
    float *r = hrand(n, 1), *dr = dnew(n, r);
    gpair g = gp(n);
    if (kind == 0) { R->gelu_backward(g.h, r, x, n); G->gelu_backward(g.d, dr, dx, n); G->gelu_backward(NULL, dr, dx, n); }
    if (kind == 1) { R->quick_gelu_backward(g.h, r, x, n); G->quick_gelu_backward(g.d, dr, dx, n); G->quick_gelu_backward(NULL, dr, dx, n); }
    if (kind == 2) { R->scale_backward(g.h, r, 0.18215f, n); G->scale_backward(g.d, dr, 0.18215f, n); G->scale_backward(NULL, dr, 0.18215f, n); }
    snprintf(w2, sizeof w2, "%s n%zu bwd +=", names[kind], n);
    /* g += s*d may be contracted into an FMA on one side only */
    expect(w2, gcmp(&g), T_ELEM);
    case_end();
}

static void geglu_case(int N, int F) {
    char w2[96];
    const size_t nx = (size_t)N * 2 * F, no = (size_t)N * F;
    float *x = hrand(nx, 3), *out = halloc(no);
    R->geglu_forward(out, x, N, F);
    float *dx = dnew(nx, x), *dout = dnan(no);
    G->geglu_forward(dout, dx, N, F);
    snprintf(w2, sizeof w2, "geglu N%d F%d fwd", N, F);
    expect(w2, nerr(dget(dout, no), out, no), T_ELEM);
    float *r = hrand(no, 1), *dr = dnew(no, r);
    gpair g = gp(nx);
    R->geglu_backward(g.h, r, x, N, F);
    G->geglu_backward(g.d, dr, dx, N, F);
    G->geglu_backward(NULL, dr, dx, N, F);
    snprintf(w2, sizeof w2, "geglu N%d F%d bwd +=", N, F);
    expect(w2, gcmp(&g), T_ELEM);
    case_end();
}

static void transpose_case(int N, int A, int B) {
    char w2[96];
    const size_t n = (size_t)N * A * B;
    float *x = hrand(n, 1), *out = halloc(n);
    R->transpose_forward(out, x, N, A, B);
    float *dx = dnew(n, x), *dout = dnan(n);
    G->transpose_forward(dout, dx, N, A, B);
    snprintf(w2, sizeof w2, "transpose N%d %dx%d fwd", N, A, B);
    expect(w2, nerr(dget(dout, n), out, n), EXACT);
    float *r = hrand(n, 1), *dr = dnew(n, r);
    gpair g = gp(n);
    R->transpose_backward(g.h, r, N, A, B);
    G->transpose_backward(g.d, dr, N, A, B);
    G->transpose_backward(NULL, dr, N, A, B);
    snprintf(w2, sizeof w2, "transpose N%d %dx%d bwd +=", N, A, B);
    expect(w2, gcmp(&g), EXACT);
    case_end();
}

static void test_tx_elementwise(void) {
    rng_seed(22);
    const size_t sizes[] = {(size_t)2 * 1024 * 1280, 1001, 1};
    for (int kind = 0; kind < 3; kind++)
        for (int t = 0; t < 3; t++) tx_ew_case(kind, sizes[t]);
    geglu_case(2 * 1024, 1280); /* SD 1.x feed-forward at 32x32 latents */
    geglu_case(3, 5);
    transpose_case(2, 320, 1024); /* feature map [N,C,HW] -> tokens */
    transpose_case(2, 1024, 320);
    transpose_case(3, 33, 70);
    transpose_case(1, 1, 1);
}

static void test_timestep_embedding_ex(void) {
    const float t[6] = {951.0f, 951.0f, 501.0f, 1.0f, 0.0f, 999.0f};
    const int Ds[4] = {320, 128, 6, 7};
    for (int k = 0; k < 4; k++)
        for (int flip = 0; flip < 2; flip++)
            for (int shift = 0; shift < 2; shift++) {
                char w2[96];
                const int D = Ds[k];
                float *out = halloc((size_t)6 * D);
                R->timestep_embedding_ex(out, t, 6, D, flip, (float)shift);
                float *dt = dnew(6, t), *dout = dnan((size_t)6 * D);
                G->timestep_embedding_ex(dout, dt, 6, D, flip, (float)shift);
                snprintf(w2, sizeof w2, "timestep_embedding_ex N6 D%d flip %d shift %d", D, flip, shift);
                expect(w2, nerr(dget(dout, (size_t)6 * D), out, (size_t)6 * D), T_TEMB);
                case_end();
            }
}

static void mha_case(int N, int Tq, int Tk, int H, int dh, int causal) {
    char what[80], w2[160];
    snprintf(what, sizeof what, "mha N%d Tq%d Tk%d H%d dh%d%s", N, Tq, Tk, H, dh, causal ? " causal" : "");
    const int D = H * dh;
    const size_t nq = (size_t)N * Tq * D, nk = (size_t)N * Tk * D, nl = (size_t)N * H * Tq;
    float *q = hrand(nq, 1.5f), *k = hrand(nk, 1.5f), *v = hrand(nk, 1), *out = halloc(nq), *lse = halloc(nl);
    R->mha_forward(out, lse, q, k, v, N, Tq, Tk, H, dh, causal);
    float *dq_ = dnew(nq, q), *dk_ = dnew(nk, k), *dv_ = dnew(nk, v), *dout = dnan(nq), *dl = dnan(nl);
    G->mha_forward(dout, dl, dq_, dk_, dv_, N, Tq, Tk, H, dh, causal);
    snprintf(w2, sizeof w2, "%s fwd (out, lse)", what);
    expect(w2, fmax(nerr(dget(dout, nq), out, nq), nerr(dget(dl, nl), lse, nl)), T_MHA);
    /* the backward on the reference out and lse on both sides */
    float *r = hrand(nq, 1), *dr = dnew(nq, r), *ro = dnew(nq, out), *rl = dnew(nl, lse);
    gpair gq = gp(nq), gk = gp(nk), gv = gp(nk);
    R->mha_backward(gq.h, gk.h, gv.h, r, q, k, v, out, lse, N, Tq, Tk, H, dh, causal);
    G->mha_backward(gq.d, gk.d, gv.d, dr, dq_, dk_, dv_, ro, rl, N, Tq, Tk, H, dh, causal);
    snprintf(w2, sizeof w2, "%s bwd (dq, dk, dv) +=", what);
    expect(w2, fmax(gcmp(&gq), fmax(gcmp(&gk), gcmp(&gv))), T_MHA_BWD);
    gpair g1 = gp(nq), g2 = gp(nk), g3 = gp(nk);
    R->mha_backward(g1.h, NULL, NULL, r, q, k, v, out, lse, N, Tq, Tk, H, dh, causal);
    G->mha_backward(g1.d, NULL, NULL, dr, dq_, dk_, dv_, ro, rl, N, Tq, Tk, H, dh, causal);
    R->mha_backward(NULL, g2.h, NULL, r, q, k, v, out, lse, N, Tq, Tk, H, dh, causal);
    G->mha_backward(NULL, g2.d, NULL, dr, dq_, dk_, dv_, ro, rl, N, Tq, Tk, H, dh, causal);
    R->mha_backward(NULL, NULL, g3.h, r, q, k, v, out, lse, N, Tq, Tk, H, dh, causal);
    G->mha_backward(NULL, NULL, g3.d, dr, dq_, dk_, dv_, ro, rl, N, Tq, Tk, H, dh, causal);
    snprintf(w2, sizeof w2, "%s bwd dq, dk, dv each alone", what);
    expect(w2, fmax(gcmp(&g1), fmax(gcmp(&g2), gcmp(&g3))), T_MHA_BWD);
    G->mha_backward(NULL, NULL, NULL, dr, dq_, dk_, dv_, ro, rl, N, Tq, Tk, H, dh, causal);
    case_end();
}

static void test_mha(void) {
    rng_seed(23);
    mha_case(2, 77, 77, 12, 64, 1);   /* CLIP ViT-L/14 text encoder */
    mha_case(2, 256, 256, 8, 40, 0);  /* SD 1.x self-attention, 16x16 latents */
    mha_case(2, 256, 77, 8, 40, 0);   /* its cross-attention onto the prompt */
    mha_case(1, 1024, 1024, 5, 64, 0); /* SD 2.x heads of 64, 32x32 latents */
    mha_case(1, 300, 300, 2, 160, 0); /* SD 1.x's widest heads (8 x 160 at 1280) */
    mha_case(1, 33, 17, 3, 24, 0);    /* odd */
    mha_case(2, 45, 45, 2, 33, 1);    /* odd, causal */
    mha_case(1, 1, 1, 1, 8, 0);       /* one token */
    /* d_head > 160: the chunked path (SD's VAE: one head of 512), several
     * query chunks (D3PO_CUDA_MHA_CHUNK_FLOATS is 16384 in this test) */
    mha_case(1, 256, 256, 1, 512, 0);
    mha_case(2, 300, 77, 2, 192, 0);
    mha_case(1, 100, 100, 2, 200, 1);
}

/* ------------------------------------------------------------------ main */

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    R = backend_cpu();
    const char *self = getenv("D3PO_TEST_CUDA_SELF");
    char err[D3_ERRLEN];
    if (self && *self && strcmp(self, "0")) {
        if (!strcmp(self, "broken")) {
            G = make_broken();
            printf("test_cuda: SELF-CHECK with planted bugs (add_backward overwrites, silu_forward "
                   "writes past the end, linear_forward skips an element): must FAIL\n");
        } else if (!strncmp(self, "noisy", 5)) {
            double lv = self[5] == ':' ? atof(self + 6) : 1e-6;
            G = make_noisy(lv > 0 ? lv : 1e-6);
            printf("test_cuda: SELF-CHECK with the CPU backend plus relative noise %.2g on every "
                   "op (calibration; exact checks fail by design)\n", noise_level);
        } else {
            G = R;
            printf("test_cuda: SELF-CHECK with the CPU backend in place of CUDA (errors must be "
                   "0 or tiny)\n");
        }
    } else {
        /* small attention chunks, so the wide-head cases span several */
        setenv("D3PO_CUDA_MHA_CHUNK_FLOATS", "16384", 0);
        G = device_backend(D3_DEV_CUDA, 0, NULL, err);
        if (!G) {
            printf("test_cuda: SKIPPED: %s\n", err);
            return 0;
        }
        char desc[4096];
        device_describe(desc, sizeof desc);
        printf("test_cuda: backend '%s' (TF32 off) against the CPU backend\n%s", G->name, desc);
    }
    CHECK(G->abi == D3_BACKEND_ABI, "backend ABI %d, expected %d", G->abi, D3_BACKEND_ABI);
    /* every entry of the table must be filled: a NULL one would crash */
    {
#define ENTRY(f) {#f, (const void *)G->f}
        const struct { const char *name; const void *fn; } tab[] = {
            ENTRY(alloc), ENTRY(free), ENTRY(upload), ENTRY(download), ENTRY(zero), ENTRY(copy),
            ENTRY(sync), ENTRY(sumsq), ENTRY(scale), ENTRY(adamw), ENTRY(ema),
            ENTRY(conv2d_forward), ENTRY(conv2d_backward), ENTRY(linear_forward),
            ENTRY(linear_backward), ENTRY(groupnorm_forward), ENTRY(groupnorm_backward),
            ENTRY(silu_forward), ENTRY(silu_backward), ENTRY(add_forward), ENTRY(add_backward),
            ENTRY(addbc_forward), ENTRY(addbc_backward), ENTRY(concat_forward),
            ENTRY(concat_backward), ENTRY(upsample2x_forward), ENTRY(upsample2x_backward),
            ENTRY(attention_forward), ENTRY(attention_backward), ENTRY(embedding_forward),
            ENTRY(embedding_backward), ENTRY(timestep_embedding), ENTRY(mse_forward),
            ENTRY(mse_backward), ENTRY(timestep_embedding_ex), ENTRY(layernorm_forward),
            ENTRY(layernorm_backward), ENTRY(gelu_forward), ENTRY(gelu_backward),
            ENTRY(quick_gelu_forward), ENTRY(quick_gelu_backward), ENTRY(geglu_forward),
            ENTRY(geglu_backward), ENTRY(mha_forward), ENTRY(mha_backward),
            ENTRY(transpose_forward), ENTRY(transpose_backward), ENTRY(scale_forward),
            ENTRY(scale_backward), ENTRY(gnsilu_forward), ENTRY(gnsilu_backward)};
#undef ENTRY
        int missing = 0;
        for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
            if (!tab[i].fn) {
                printf("test_cuda: backend '%s' has no %s\n", G->name, tab[i].name);
                missing++;
            }
        CHECK(!missing && G->name, "%d entries of the backend table are NULL", missing);
        if (missing) return t_done();
    }
    CHECK(G->host == 0 || G == R || G == &noisy || G == &broken,
          "the CUDA backend says host = 1 (its memory would be taken for host memory)");
    /* copy: device to device, guards intact */
    {
        rng_seed(99);
        float *h = hrand(1000, 1), *a = dnew(1000, h), *b = dnan(1000);
        G->copy(b, a, 1000 * sizeof(float));
        expect("copy (device to device)", nerr(dget(b, 1000), h, 1000), EXACT);
        G->zero(b, 1000 * sizeof(float));
        float *z = dget(b, 1000);
        int nz_ = 0;
        for (int i = 0; i < 1000; i++) nz_ += z[i] != 0.0f;
        expect("zero (elements left nonzero)", nz_, EXACT);
        case_end();
    }
    double t0 = now();
    RUN(test_conv2d);
    RUN(test_linear);
    RUN(test_groupnorm);
    RUN(test_gnsilu);
    RUN(test_silu);
    RUN(test_add);
    RUN(test_addbc);
    RUN(test_concat);
    RUN(test_upsample);
    RUN(test_attention);
    RUN(test_embedding);
    RUN(test_timestep_embedding);
    RUN(test_mse);
    RUN(test_training_utils);
    RUN(test_layernorm);
    RUN(test_tx_elementwise);
    RUN(test_timestep_embedding_ex);
    RUN(test_mha);
    RUN(test_classifier_ops);
    double t1 = now();
    RUN(test_model);
    RUN(test_d3po);
    RUN(test_sampling);
    if (yard_ok) model_free(&yard);
    printf("test_cuda: %d checks, %d failed, worst err/tol %.3g, %ld non-finite outputs, %d "
           "guard violations; ops %.1f s, model-level %.1f s\n",
           nchecks, nfailed, worst_ratio, nonfinite, guards_bad, t1 - t0, now() - t1);
    return t_done();
}
