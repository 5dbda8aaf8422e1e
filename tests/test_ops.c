/* test_ops.c - tests of the CPU op set (engine/ops_cpu.c, contract in
 * engine/ops.h).
 *
 * For every op:
 *  - forward against a naive direct implementation written here in double
 *    (7-loop convolution, explicit softmax, the timestep formula, ...);
 *  - backward against central finite differences of the scalar loss
 *    L = sum(out * r) for a fixed random r, L evaluated in double from the
 *    float32 forward outputs. Gradient buffers are pre-filled with a known
 *    pattern that is subtracted afterwards, which also proves that every
 *    backward accumulates (+=) instead of overwriting;
 *  - backward with NULL gradient pointers (must not crash, and the other
 *    gradients must not change);
 *  - 1 thread versus 2 threads give the same results.
 * Up to FD_MAX elements per tensor are checked (random picks) so the file
 * runs in a few seconds. The max error per op is printed on stdout.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "t.h"

/* ------------------------------------------------------------ utilities */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t rng_next(void) { /* xorshift64* */
    uint64_t x = rng_state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}
static float rng_unif(void) { /* [-1, 1) */
    return (float)((double)(rng_next() >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

/* Test allocations, freed at the end of each case. */
static void *t_allocs[512];
static int t_nallocs;
static float *talloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p || t_nallocs == 512) { fprintf(stderr, "test out of memory\n"); exit(2); }
    t_allocs[t_nallocs++] = p;
    return p;
}
static void tfree_all(void) {
    while (t_nallocs > 0) free(t_allocs[--t_nallocs]);
}
static float *trand(size_t n, float scale) {
    float *p = talloc(n);
    for (size_t i = 0; i < n; i++) p[i] = scale * rng_unif();
    return p;
}

/* The known pattern pre-filled into gradient buffers. */
static float pat(size_t i) { return 0.25f * (float)((i * 7919u) % 13u) - 1.5f; }
static void prefill(float *g, size_t n) { for (size_t i = 0; i < n; i++) g[i] = pat(i); }
static void unprefill(float *g, size_t n) { for (size_t i = 0; i < n; i++) g[i] -= pat(i); }

static double dmax(double a, double b) { return a > b ? a : b; }

/* Compares got against ref: |got - ref| <= atol + rtol*|ref|. Returns the
 * max abs error; reports the first few failures. */
static double cmp(const char *what, const float *got, const double *ref, size_t n,
                  double atol, double rtol) {
    double mx = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= atol + rtol * fabs(ref[i]))) {
            if (bad++ < 3)
                CHECK(0, "%s[%zu]: got %.8g want %.8g (err %.3g)", what, i, got[i], ref[i], e);
        }
        if (!(e <= mx)) mx = e; /* NaN propagates to mx */
    }
    return mx;
}
static double cmpf(const char *what, const float *got, const float *ref, size_t n,
                   double atol, double rtol) {
    double mx = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)ref[i]);
        if (!(e <= atol + rtol * fabs((double)ref[i]))) {
            if (bad++ < 3)
                CHECK(0, "%s[%zu]: got %.8g want %.8g (err %.3g)", what, i, got[i], ref[i], e);
        }
        if (!(e <= mx)) mx = e;
    }
    return mx;
}

/* ----------------------------------------------------- finite differences */

#define FD_MAX 200
static size_t fd_cap = FD_MAX; /* lowered for the slow wide-image cases */

/* A forward pass under test: fwd(ctx) fills out[nout]; the loss is
 * sum(out * r) in double. */
typedef struct {
    void (*fwd)(void *ctx);
    void *ctx;
    const float *out;
    size_t nout;
    const float *r;
} fd_problem;

static double fd_loss(const fd_problem *p) {
    p->fwd(p->ctx);
    double L = 0.0;
    for (size_t i = 0; i < p->nout; i++) L += (double)p->out[i] * (double)p->r[i];
    return L;
}

/* Checks the analytic gradient g[nx] of the loss w.r.t. x[nx] against
 * central differences with step h at up to FD_MAX elements. The actual
 * step is taken from the float values x+h and x-h (exact in double).
 * Returns the max |analytic - numeric|. */
static double fd_check(const char *what, const fd_problem *p, float *x, size_t nx,
                       const float *g, double h, double atol, double rtol) {
    double mx = 0.0;
    int bad = 0;
    size_t m = nx < fd_cap ? nx : fd_cap;
    for (size_t k = 0; k < m; k++) {
        size_t i = nx <= fd_cap ? k : (size_t)(rng_next() % nx);
        const float save = x[i];
        const float xp = (float)(save + h), xm = (float)(save - h);
        x[i] = xp;
        const double Lp = fd_loss(p);
        x[i] = xm;
        const double Lm = fd_loss(p);
        x[i] = save;
        const double num = (Lp - Lm) / ((double)xp - (double)xm);
        const double e = fabs((double)g[i] - num);
        if (!(e <= atol + rtol * fabs(num))) {
            if (bad++ < 3)
                CHECK(0, "%s: d/dx[%zu] analytic %.8g numeric %.8g (err %.3g)", what, i,
                      g[i], num, e);
        }
        if (!(e <= mx)) mx = e;
    }
    p->fwd(p->ctx); /* leave out[] consistent with x */
    return mx;
}

/* ----------------------------------------------------------------- conv2d */

typedef struct {
    int N, C, H, W, OC, K, s, p;
    float *x, *w, *b, *out;
} conv_ctx;

static void conv_fwd(void *v) {
    conv_ctx *c = v;
    conv2d_forward(c->out, c->x, c->w, c->b, c->N, c->C, c->H, c->W, c->OC, c->K, c->s, c->p);
}

/* Direct 7-loop convolution in double. ref: [N,OC,OH,OW] */
static void conv_naive(double *ref, const conv_ctx *c, int OH, int OW) {
    for (int n = 0; n < c->N; n++)
        for (int oc = 0; oc < c->OC; oc++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    double acc = c->b ? c->b[oc] : 0.0;
                    for (int ci = 0; ci < c->C; ci++)
                        for (int kh = 0; kh < c->K; kh++)
                            for (int kw = 0; kw < c->K; kw++) {
                                int ih = oh * c->s - c->p + kh, iw = ow * c->s - c->p + kw;
                                if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
                                acc += (double)c->x[((size_t)(n * c->C + ci) * c->H + ih) * c->W + iw] *
                                       c->w[((size_t)(oc * c->C + ci) * c->K + kh) * c->K + kw];
                            }
                    ref[((size_t)(n * c->OC + oc) * OH + oh) * OW + ow] = acc;
                }
}

static double conv_fwd_err, conv_grad_err;
/* forward tolerance (abs and rel), raised for the Winograd cases */
static double conv_tol = 1e-5;

static void conv_case(int N, int C, int H, int W, int OC, int K, int s, int p, int use_b) {
    char what[128];
    snprintf(what, sizeof what, "conv N%d C%d %dx%d OC%d K%d s%d p%d%s", N, C, H, W, OC, K, s, p,
             use_b ? "" : " nobias");
    const int OH = (H + 2 * p - K) / s + 1, OW = (W + 2 * p - K) / s + 1;
    const size_t nx = (size_t)N * C * H * W, nw = (size_t)OC * C * K * K, no = (size_t)N * OC * OH * OW;
    conv_ctx c = {N, C, H, W, OC, K, s, p, trand(nx, 1), trand(nw, 0.5f),
                  use_b ? trand(OC, 0.5f) : NULL, talloc(no)};
    conv_fwd(&c);
    double *ref = malloc(no * sizeof(double));
    conv_naive(ref, &c, OH, OW);
    /* float32 GEMM over C*K*K <= 300 products of |terms| <= 0.5: rounding
     * grows ~ sqrt(terms)*eps*|partial sums| ~ 1e-6; 1e-5 leaves margin. */
    conv_fwd_err = dmax(conv_fwd_err, cmp(what, c.out, ref, no, conv_tol, conv_tol));
    free(ref);

    float *r = trand(no, 1);
    float *dx = talloc(nx), *dw = talloc(nw), *db = talloc(OC);
    prefill(dx, nx); prefill(dw, nw); prefill(db, OC);
    conv2d_backward(dx, dw, use_b ? db : NULL, r, c.x, c.w, N, C, H, W, OC, K, s, p);
    unprefill(dx, nx); unprefill(dw, nw); unprefill(db, OC);

    /* The loss is linear in x, w and b, so a central difference has no
     * truncation error at any step: h = 0.5 keeps the float32 rounding of
     * the outputs (~6e-8*|out|*sqrt(#outputs touched)) / (2h) below 1e-5;
     * atol 1e-4 + rtol 1e-4 covers it with margin. */
    fd_problem fp = {conv_fwd, &c, c.out, no, r};
    double e = fd_check(what, &fp, c.x, nx, dx, 0.5, 1e-4, 1e-4);
    e = dmax(e, fd_check(what, &fp, c.w, nw, dw, 0.5, 1e-4, 1e-4));
    if (use_b) e = dmax(e, fd_check(what, &fp, c.b, OC, db, 0.5, 1e-4, 1e-4));
    else {
        for (int i = 0; i < OC; i++) CHECK(db[i] == 0.0f, "%s: db touched with NULL", what);
    }
    conv_grad_err = dmax(conv_grad_err, e);

    /* NULL gradient pointers: each gradient alone equals the full run */
    float *dx1 = talloc(nx), *dw1 = talloc(nw), *db1 = talloc(OC);
    conv2d_backward(NULL, NULL, NULL, r, c.x, c.w, N, C, H, W, OC, K, s, p);
    conv2d_backward(dx1, NULL, NULL, r, c.x, c.w, N, C, H, W, OC, K, s, p);
    conv2d_backward(NULL, dw1, NULL, r, c.x, c.w, N, C, H, W, OC, K, s, p);
    conv2d_backward(NULL, NULL, db1, r, c.x, c.w, N, C, H, W, OC, K, s, p);
    /* same sums in the same order up to the pattern round trip: 1e-5 */
    cmpf("conv dx alone", dx1, dx, nx, 1e-5, 1e-5);
    cmpf("conv dw alone", dw1, dw, nw, 1e-5, 1e-5);
    if (use_b) cmpf("conv db alone", db1, db, OC, 1e-5, 1e-5);

    /* the pair that keeps the forward's input transforms (Winograd convs
     * only, else 0 floats): the same numbers bit for bit, a prefilled keep
     * buffer fully overwritten (the backward reads nothing stale) */
    const size_t nk = conv2d_keep_floats(N, C, H, W, OC, K, s, p);
    float *dx0 = talloc(nx); /* the plain input gradient from zero */
    conv2d_backward(dx0, NULL, NULL, r, c.x, c.w, N, C, H, W, OC, K, s, p);
    const int wino = K == 3 && s == 1 && p == 1 && C >= 16 && OC >= 16 && H >= 4 && W >= 4;
    CHECK((nk > 0) == wino, "%s: keep floats %zu", what, nk);
    if (nk) {
        CHECK(nk == 36 * (size_t)C * N * ((H + 3) / 4) * ((W + 3) / 4), "%s: keep floats %zu",
              what, nk);
        float *keep = talloc(nk), *out2 = talloc(no);
        for (size_t i = 0; i < nk; i++) keep[i] = NAN;
        conv_fwd(&c); /* (the finite differences left a perturbed output) */
        conv2d_forward_keep(out2, keep, c.x, c.w, c.b, N, C, H, W, OC, K, s, p);
        CHECK(memcmp(out2, c.out, no * sizeof(float)) == 0, "%s: forward_keep differs", what);
        float *dx2 = talloc(nx), *dw2 = talloc(nw), *db2 = talloc(OC);
        prefill(dx2, nx); prefill(dw2, nw); prefill(db2, OC);
        prefill(dx, nx); prefill(dw, nw); prefill(db, OC);
        conv2d_backward(dx, dw, use_b ? db : NULL, r, c.x, c.w, N, C, H, W, OC, K, s, p);
        conv2d_backward_keep(dx2, 0, dw2, use_b ? db2 : NULL, r, c.x, keep, c.w, N, C, H, W,
                             OC, K, s, p);
        CHECK(memcmp(dx2, dx, nx * sizeof(float)) == 0, "%s: backward_keep dx differs", what);
        CHECK(memcmp(dw2, dw, nw * sizeof(float)) == 0, "%s: backward_keep dw differs", what);
        CHECK(memcmp(db2, db, OC * sizeof(float)) == 0, "%s: backward_keep db differs", what);
        /* set with the kept transforms: dx overwritten (stale NaNs), dw
         * and db still added to */
        for (size_t i = 0; i < nx; i++) dx2[i] = NAN;
        prefill(dw2, nw); prefill(db2, OC);
        conv2d_backward_keep(dx2, 1, dw2, use_b ? db2 : NULL, r, c.x, keep, c.w, N, C, H, W,
                             OC, K, s, p);
        CHECK(memcmp(dw2, dw, nw * sizeof(float)) == 0, "%s: set: dw differs", what);
        CHECK(memcmp(db2, db, OC * sizeof(float)) == 0, "%s: set: db differs", what);
        CHECK(memcmp(dx2, dx0, nx * sizeof(float)) == 0, "%s: set+keep: dx differs", what);
    }
    /* set (any conv, keep NULL): bit for bit the plain backward into a
     * zeroed dx, whatever dx held before */
    float *dxs = talloc(nx);
    for (size_t i = 0; i < nx; i++) dxs[i] = NAN;
    conv2d_backward_keep(dxs, 1, NULL, NULL, r, c.x, NULL, c.w, N, C, H, W, OC, K, s, p);
    CHECK(memcmp(dxs, dx0, nx * sizeof(float)) == 0, "%s: set: dx differs", what);
    if (nk) { /* Winograd: the same bits with 1 thread (the input gradient
                 formed in the weight gradient's pass) and with 5 (more
                 than its 4 groups: a pass of its own), any block split */
        const int saved = ops_get_threads();
        float *dxa = talloc(nx), *dwa = talloc(nw), *dxb = talloc(nx), *dwb = talloc(nw);
        ops_set_threads(1);
        conv2d_backward(dxa, dwa, NULL, r, c.x, c.w, N, C, H, W, OC, K, s, p);
        ops_set_threads(5);
        conv2d_backward(dxb, dwb, NULL, r, c.x, c.w, N, C, H, W, OC, K, s, p);
        ops_set_threads(saved);
        CHECK(memcmp(dxa, dxb, nx * sizeof(float)) == 0, "%s: dx 1 vs 5 threads", what);
        CHECK(memcmp(dwa, dwb, nw * sizeof(float)) == 0, "%s: dw 1 vs 5 threads", what);
        /* the forward too: 1 thread takes the largest blocks, 5 at least 4 */
        const size_t ny = (size_t)N * OC * H * W;
        float *ya = talloc(ny), *yb = talloc(ny);
        ops_set_threads(1);
        conv2d_forward(ya, c.x, c.w, c.b, N, C, H, W, OC, K, s, p);
        ops_set_threads(5);
        conv2d_forward(yb, c.x, c.w, c.b, N, C, H, W, OC, K, s, p);
        ops_set_threads(saved);
        CHECK(memcmp(ya, yb, ny * sizeof(float)) == 0, "%s: forward 1 vs 5 threads", what);
    }
}

static void test_conv2d(void) {
    rng_seed(1);
    /* N, C, H, W, OC, K, stride, pad, bias */
    conv_case(2, 3, 5, 7, 4, 3, 1, 1, 1);
    conv_case(3, 5, 7, 5, 6, 3, 2, 1, 1);   /* stride 2, odd sizes */
    conv_case(2, 5, 9, 7, 3, 3, 2, 0, 1);   /* stride 2, pad 0 */
    conv_case(1, 6, 5, 5, 4, 3, 1, 0, 1);   /* pad 0 */
    conv_case(2, 4, 6, 6, 3, 1, 1, 0, 1);   /* 1x1 direct path */
    conv_case(2, 3, 5, 7, 5, 1, 2, 0, 1);   /* 1x1 stride 2 */
    conv_case(1, 4, 8, 8, 5, 1, 1, 1, 0);   /* 1x1 pad 1, no bias */
    conv_case(3, 3, 4, 4, 4, 3, 1, 2, 0);   /* pad 2 > K/2 */
    conv_case(1, 3, 2, 3, 2, 3, 2, 1, 1);   /* tiny, output 1x2 */
    /* large enough for the threaded paths: coop (N=1) and per-image */
    conv_case(1, 12, 12, 13, 10, 3, 1, 1, 1);
    conv_case(3, 12, 11, 12, 10, 3, 2, 1, 1);
    conv_case(5, 16, 12, 12, 12, 1, 1, 0, 1);
    conv_case(1, 20, 16, 16, 24, 1, 1, 0, 1);
    /* "same" 3x3 on images >= 16 wide: the implicit-GEMM path (padded
     * planes, no column matrix) when each thread takes whole images */
    conv_case(3, 5, 6, 33, 7, 3, 1, 1, 1);
    conv_case(2, 4, 5, 32, 3, 3, 1, 1, 0);
    /* wide images: the column matrix is processed in blocks of rows
     * (C*K*K*OW*4 bytes > the block budget); fewer FD probes, each
     * forward is large */
    fd_cap = 24;
    conv_case(1, 16, 3, 701, 2, 3, 1, 1, 1);
    conv_case(2, 16, 5, 1501, 2, 3, 2, 1, 1);
    conv_case(1, 16, 4, 800, 3, 3, 1, 0, 1);
    fd_cap = FD_MAX;
    /* "same" 3x3 convs with >= 16 channels in and out: Winograd F(4x4,3x3)
     * (whole and partial 4x4 tiles, batches whose tile-row blocks span
     * images, N=1). The transforms multiply by up to 8 and 1/24 and sum
     * 36 terms per output: rounding ~1e-6 of sum |terms| (~C*9*0.5 = 40
     * here), so 1e-4 abs + 1e-5 rel; the backward is checked as above. */
    conv_tol = 1e-4;
    conv_case(2, 16, 12, 12, 16, 3, 1, 1, 1);
    conv_case(1, 17, 7, 10, 18, 3, 1, 1, 1);
    conv_case(3, 20, 9, 5, 16, 3, 1, 1, 0);
    conv_case(5, 16, 8, 8, 24, 3, 1, 1, 1);
    /* blocks of 64 tiles (8 tile rows of 32x32 images): full 16x16
     * register transposes and 64-column kernels of the AVX-512 products,
     * with 20 = 16 + 4 channels for their edges */
    fd_cap = 24;
    conv_case(4, 20, 32, 32, 17, 3, 1, 1, 1);
    conv_case(1, 16, 6, 41, 16, 3, 1, 1, 1); /* > 8 tiles per row: the portable gather */
    fd_cap = FD_MAX;
    conv_tol = 1e-5;
    printf("    conv2d: max fwd err %.3g, max grad err %.3g\n", conv_fwd_err, conv_grad_err);
    tfree_all();
}

/* ----------------------------------------------------------------- linear */

typedef struct {
    int N, IN, OUT;
    float *x, *w, *b, *out;
} lin_ctx;

static void lin_fwd(void *v) {
    lin_ctx *c = v;
    linear_forward(c->out, c->x, c->w, c->b, c->N, c->IN, c->OUT);
}

static void test_linear(void) {
    rng_seed(2);
    const int shapes[][4] = {{1, 5, 3, 1}, {4, 7, 9, 1}, {3, 33, 17, 0}, {64, 130, 96, 1}};
    double fe = 0, ge = 0;
    for (int t = 0; t < 4; t++) {
        const int N = shapes[t][0], IN = shapes[t][1], OUT = shapes[t][2], ub = shapes[t][3];
        const size_t nx = (size_t)N * IN, nw = (size_t)OUT * IN, no = (size_t)N * OUT;
        lin_ctx c = {N, IN, OUT, trand(nx, 1), trand(nw, 0.5f), ub ? trand(OUT, 1) : NULL, talloc(no)};
        lin_fwd(&c);
        double *ref = malloc(no * sizeof(double));
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OUT; o++) {
                double acc = c.b ? c.b[o] : 0.0;
                for (int i = 0; i < IN; i++) acc += (double)c.x[n * IN + i] * c.w[o * IN + i];
                ref[n * OUT + o] = acc;
            }
        /* float32 dot products of <= 130 terms |x*w| <= 0.5: ~1e-6 */
        fe = dmax(fe, cmp("linear fwd", c.out, ref, no, 1e-5, 1e-5));
        free(ref);
        float *r = trand(no, 1), *dx = talloc(nx), *dw = talloc(nw), *db = talloc(OUT);
        prefill(dx, nx); prefill(dw, nw); prefill(db, OUT);
        linear_backward(dx, dw, ub ? db : NULL, r, c.x, c.w, N, IN, OUT);
        unprefill(dx, nx); unprefill(dw, nw); unprefill(db, OUT);
        /* linear in x, w, b: no truncation error, h = 0.5; rounding of
         * float outputs / (2h) ~ 1e-6 -> atol 1e-4, rtol 1e-4 */
        fd_problem fp = {lin_fwd, &c, c.out, no, r};
        ge = dmax(ge, fd_check("linear dx", &fp, c.x, nx, dx, 0.5, 1e-4, 1e-4));
        ge = dmax(ge, fd_check("linear dw", &fp, c.w, nw, dw, 0.5, 1e-4, 1e-4));
        if (ub) ge = dmax(ge, fd_check("linear db", &fp, c.b, OUT, db, 0.5, 1e-4, 1e-4));
        linear_backward(NULL, NULL, NULL, r, c.x, c.w, N, IN, OUT);
        float *dw1 = talloc(nw);
        linear_backward(NULL, dw1, NULL, r, c.x, c.w, N, IN, OUT);
        cmpf("linear dw alone", dw1, dw, nw, 1e-5, 1e-5); /* pattern round trip */
    }
    printf("    linear: max fwd err %.3g, max grad err %.3g\n", fe, ge);
    tfree_all();
}

/* -------------------------------------------------------------- groupnorm */

typedef struct {
    int N, C, HW, G;
    float *x, *w, *b, *out, *mean, *rstd;
    float eps;
} gn_ctx;

static void gn_fwd(void *v) {
    gn_ctx *c = v;
    groupnorm_forward(c->out, c->mean, c->rstd, c->x, c->w, c->b, c->N, c->C, c->HW, c->G, c->eps);
}

static void test_groupnorm(void) {
    rng_seed(3);
    /* N, C, HW, G; the last with SD's VAE eps 1e-6 */
    const int shapes[][4] = {{2, 6, 35, 1}, {2, 6, 35, 6}, {3, 6, 35, 3}, {1, 8, 5, 4},
                             {2, 12, 16, 4}, {1, 5, 7, 5}, {4, 32, 300, 8}, {2, 8, 9, 4}};
    double fe = 0, ge = 0;
    for (int t = 0; t < 8; t++) {
        const float eps = t == 7 ? 1e-6f : 1e-5f;
        const int N = shapes[t][0], C = shapes[t][1], HW = shapes[t][2], G = shapes[t][3];
        const size_t nx = (size_t)N * C * HW;
        gn_ctx c = {N, C, HW, G, trand(nx, 1), trand(C, 0.5f), trand(C, 0.5f), talloc(nx),
                    talloc((size_t)N * G), talloc((size_t)N * G), eps};
        for (int i = 0; i < C; i++) c.w[i] += 1.0f;
        for (size_t i = 0; i < nx; i++) c.x[i] = 2.0f * c.x[i] + 0.3f * (float)((i / HW) % 5);
        gn_fwd(&c);
        const int CG = C / G;
        const size_t M = (size_t)CG * HW;
        double *ref = malloc(nx * sizeof(double));
        for (int n = 0; n < N; n++)
            for (int g = 0; g < G; g++) {
                const float *x = c.x + ((size_t)n * C + g * CG) * HW;
                double mu = 0, var = 0;
                for (size_t i = 0; i < M; i++) mu += x[i];
                mu /= M;
                for (size_t i = 0; i < M; i++) var += (x[i] - mu) * (x[i] - mu);
                var /= M;
                const double rs = 1.0 / sqrt(var + (t == 7 ? 1e-6 : 1e-5));
                /* saved statistics: float rounding of double values */
                CHECK(fabs(c.mean[n * G + g] - mu) <= 1e-6 + 1e-6 * fabs(mu), "gn mean");
                CHECK(fabs(c.rstd[n * G + g] - rs) <= 1e-6 * rs, "gn rstd");
                for (size_t i = 0; i < M; i++) {
                    const int ch = g * CG + (int)(i / HW);
                    ref[((size_t)n * C + g * CG) * HW + i] = (x[i] - mu) * rs * c.w[ch] + c.b[ch];
                }
            }
        /* |xhat| <= ~4, float32 rounding of x*a + bb: a few eps * 6 ~ 1e-6 */
        fe = dmax(fe, cmp("groupnorm fwd", c.out, ref, nx, 1e-5, 1e-5));
        free(ref);

        float *r = trand(nx, 1), *dx = talloc(nx), *dw = talloc(C), *db = talloc(C);
        prefill(dx, nx); prefill(dw, C); prefill(db, C);
        groupnorm_backward(dx, dw, db, r, c.x, c.w, c.mean, c.rstd, N, C, HW, G, eps);
        unprefill(dx, nx); unprefill(dw, C); unprefill(db, C);
        fd_problem fp = {gn_fwd, &c, c.out, nx, r};
        /* x: nonlinear, h = 1e-2 on |x| ~ 1 (rstd ~ 1): truncation
         * h^2/6*|L'''| ~ 1e-5 * O(10); rounding of the M affected float
         * outputs: 6e-8*sqrt(M)*|out| / (2h) ~ 1e-4 for M = 2400.
         * atol 1e-3 + rtol 1e-3. */
        ge = dmax(ge, fd_check("groupnorm dx", &fp, c.x, nx, dx, 1e-2, 1e-3, 1e-3));
        /* w, b: the loss is linear in them, h = 0.5, no truncation error;
         * rounding over N*HW outputs / (2h): atol 1e-4 + rtol 1e-4. */
        ge = dmax(ge, fd_check("groupnorm dw", &fp, c.w, C, dw, 0.5, 1e-4, 1e-4));
        ge = dmax(ge, fd_check("groupnorm db", &fp, c.b, C, db, 0.5, 1e-4, 1e-4));
        groupnorm_backward(NULL, NULL, NULL, r, c.x, c.w, c.mean, c.rstd, N, C, HW, G, eps);
        float *dx1 = talloc(nx);
        groupnorm_backward(dx1, NULL, NULL, r, c.x, c.w, c.mean, c.rstd, N, C, HW, G, eps);
        cmpf("groupnorm dx alone", dx1, dx, nx, 1e-5, 1e-5); /* pattern round trip */
        /* parameter gradients without the input gradient (frozen input) */
        float *dw1 = talloc(C), *db1 = talloc(C);
        groupnorm_backward(NULL, dw1, db1, r, c.x, c.w, c.mean, c.rstd, N, C, HW, G, eps);
        cmpf("groupnorm dw alone", dw1, dw, C, 1e-5, 1e-5);
        cmpf("groupnorm db alone", db1, db, C, 1e-5, 1e-5);
    }
    printf("    groupnorm: max fwd err %.3g, max grad err %.3g\n", fe, ge);
    tfree_all();
}

/* ------------------------------------------------ group norm + SiLU */

typedef struct {
    int N, C, HW, G;
    float *x, *e, *w, *b, *out, *mean, *rstd, *coef;
} gs_ctx;

static void gs_fwd(void *v) {
    gs_ctx *c = v;
    gnsilu_forward(c->out, c->mean, c->rstd, c->coef, c->x, c->e, c->w, c->b, c->N, c->C, c->HW,
                   c->G, 1e-5f);
}

/* The fused op against addbc, groupnorm and silu in a row (bit for bit:
 * ops.h promises the same floats) and against finite differences. */
static void test_gnsilu(void) {
    rng_seed(31);
    /* N, C, HW, G, with e; shapes with several channels per group and
     * enough elements for the threaded loops (4*64*256) */
    const int shapes[][5] = {{2, 6, 35, 3, 1}, {2, 6, 35, 3, 0}, {1, 8, 5, 4, 1},
                             {3, 12, 16, 1, 1}, {4, 64, 256, 32, 1}, {4, 64, 256, 32, 0}};
    double ge = 0;
    for (int t = 0; t < 6; t++) {
        const int N = shapes[t][0], C = shapes[t][1], HW = shapes[t][2], G = shapes[t][3];
        const int use_e = shapes[t][4];
        const size_t nx = (size_t)N * C * HW, nc = (size_t)N * C;
        gs_ctx c = {N, C, HW, G, trand(nx, 1.5f), use_e ? trand(nc, 1) : NULL,
                    trand(C, 0.5f), trand(C, 0.5f), talloc(nx), talloc((size_t)N * G),
                    talloc((size_t)N * G), talloc(2 * nc)};
        for (int i = 0; i < C; i++) c.w[i] += 1.0f;
        gs_fwd(&c);
        /* the three ops */
        float *h = talloc(nx), *y = talloc(nx), *z = talloc(nx);
        float *mean = talloc((size_t)N * G), *rstd = talloc((size_t)N * G);
        if (use_e) addbc_forward(h, c.x, c.e, N, C, HW);
        else memcpy(h, c.x, nx * sizeof(float));
        groupnorm_forward(y, mean, rstd, h, c.w, c.b, N, C, HW, G, 1e-5f);
        silu_forward(z, y, nx);
        CHECK(memcmp(z, c.out, nx * sizeof(float)) == 0, "gnsilu %d: forward differs", t);
        CHECK(memcmp(mean, c.mean, N * G * sizeof(float)) == 0, "gnsilu %d: mean differs", t);
        CHECK(memcmp(rstd, c.rstd, N * G * sizeof(float)) == 0, "gnsilu %d: rstd differs", t);

        float *r = trand(nx, 1);
        float *dx = talloc(nx), *de = talloc(nc), *dw = talloc(C), *db = talloc(C);
        prefill(dx, nx); prefill(de, nc); prefill(dw, C); prefill(db, C);
        gnsilu_backward(dx, use_e ? de : NULL, dw, db, r, c.x, c.e, c.w, c.coef, c.mean, c.rstd,
                        N, C, HW, G);
        float *dy = talloc(nx), *dh = talloc(nx), *dx2 = talloc(nx), *de2 = talloc(nc);
        float *dw2 = talloc(C), *db2 = talloc(C);
        prefill(dx2, nx); prefill(de2, nc); prefill(dw2, C); prefill(db2, C);
        silu_backward(dy, r, y, nx);
        groupnorm_backward(use_e ? dh : dx2, dw2, db2, dy, h, c.w, mean, rstd, N, C, HW, G, 1e-5f);
        if (use_e) addbc_backward(dx2, de2, dh, N, C, HW);
        CHECK(memcmp(dx, dx2, nx * sizeof(float)) == 0, "gnsilu %d: dx differs", t);
        CHECK(memcmp(de, de2, nc * sizeof(float)) == 0, "gnsilu %d: de differs", t);
        CHECK(memcmp(dw, dw2, C * sizeof(float)) == 0, "gnsilu %d: dw differs", t);
        CHECK(memcmp(db, db2, C * sizeof(float)) == 0, "gnsilu %d: db differs", t);
        unprefill(dx, nx); unprefill(de, nc); unprefill(dw, C); unprefill(db, C);

        /* every input is nonlinear here (SiLU after the norm): h = 1e-2
         * on values ~1, truncation h^2/6 * |third derivative| ~ 1e-5 *
         * O(10); rounding of the group's float outputs (up to C/G*HW =
         * 512) / (2h) ~ 1e-4: atol 1e-3 + rtol 1e-3, as groupnorm's dx */
        fd_problem fp = {gs_fwd, &c, c.out, nx, r};
        ge = dmax(ge, fd_check("gnsilu dx", &fp, c.x, nx, dx, 1e-2, 1e-3, 1e-3));
        if (use_e) ge = dmax(ge, fd_check("gnsilu de", &fp, c.e, nc, de, 1e-2, 1e-3, 1e-3));
        ge = dmax(ge, fd_check("gnsilu dw", &fp, c.w, C, dw, 1e-2, 1e-3, 1e-3));
        ge = dmax(ge, fd_check("gnsilu db", &fp, c.b, C, db, 1e-2, 1e-3, 1e-3));

        /* each gradient alone: the same numbers */
        float *dx1 = talloc(nx), *de1 = talloc(nc), *dw1 = talloc(C), *db1 = talloc(C);
        gnsilu_backward(NULL, NULL, NULL, NULL, r, c.x, c.e, c.w, c.coef, c.mean, c.rstd, N, C,
                        HW, G);
        gnsilu_backward(dx1, NULL, NULL, NULL, r, c.x, c.e, c.w, c.coef, c.mean, c.rstd, N, C, HW,
                        G);
        if (use_e)
            gnsilu_backward(NULL, de1, NULL, NULL, r, c.x, c.e, c.w, c.coef, c.mean, c.rstd, N, C,
                            HW, G);
        gnsilu_backward(NULL, NULL, dw1, db1, r, c.x, c.e, c.w, c.coef, c.mean, c.rstd, N, C, HW,
                        G);
        cmpf("gnsilu dx alone", dx1, dx, nx, 1e-5, 1e-5); /* pattern round trip */
        if (use_e) cmpf("gnsilu de alone", de1, de, nc, 1e-5, 1e-5);
        cmpf("gnsilu dw alone", dw1, dw, C, 1e-5, 1e-5);
        cmpf("gnsilu db alone", db1, db, C, 1e-5, 1e-5);
    }
    printf("    gnsilu: max grad err %.3g\n", ge);
    tfree_all();
}

/* ------------------------------------------------------------ elementwise */

typedef struct {
    size_t n;
    int N, C, C2, H, W;
    float *a, *b, *out;
} ew_ctx;

static void silu_fwd_(void *v) { ew_ctx *c = v; silu_forward(c->out, c->a, c->n); }
static void add_fwd_(void *v) { ew_ctx *c = v; add_forward(c->out, c->a, c->b, c->n); }
static void addbc_fwd_(void *v) { ew_ctx *c = v; addbc_forward(c->out, c->a, c->b, c->N, c->C, c->H * c->W); }
static void concat_fwd_(void *v) { ew_ctx *c = v; concat_forward(c->out, c->a, c->b, c->N, c->C, c->C2, c->H * c->W); }
static void up_fwd_(void *v) { ew_ctx *c = v; upsample2x_forward(c->out, c->a, c->N, c->C, c->H, c->W); }

static void test_silu(void) {
    rng_seed(4);
    double fe = 0, ge = 0;
    const size_t sizes[] = {1, 1000, 100003};
    for (int t = 0; t < 3; t++) {
        const size_t n = sizes[t];
        ew_ctx c = {.n = n, .a = trand(n, 8), .out = talloc(n)};
        if (n > 2) { c.a[0] = -100.0f; c.a[1] = 100.0f; c.a[2] = 0.0f; } /* saturation */
        silu_fwd_(&c);
        double *ref = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) ref[i] = c.a[i] / (1.0 + exp(-(double)c.a[i]));
        /* float exp approximation (rel ~2e-7) + division: 1e-6 relative */
        fe = dmax(fe, cmp("silu fwd", c.out, ref, n, 1e-7, 1e-6));
        free(ref);
        float *r = trand(n, 1), *dx = talloc(n);
        prefill(dx, n);
        silu_backward(dx, r, c.a, n);
        unprefill(dx, n);
        /* h = 1e-2: truncation h^2/6*|silu'''| <= 2e-5*0.6; rounding
         * 6e-8*|out|(<=8) / (2h) ~ 2.4e-5 -> atol 2e-4 + rtol 1e-3 */
        fd_problem fp = {silu_fwd_, &c, c.out, n, r};
        ge = dmax(ge, fd_check("silu dx", &fp, c.a, n, dx, 1e-2, 2e-4, 1e-3));
        silu_backward(NULL, r, c.a, n);
    }
    printf("    silu: max fwd err %.3g, max grad err %.3g\n", fe, ge);
    tfree_all();
}

static void test_add(void) {
    rng_seed(5);
    double ge = 0;
    const size_t n = 101;
    ew_ctx c = {.n = n, .a = trand(n, 1), .b = trand(n, 1), .out = talloc(n)};
    add_fwd_(&c);
    for (size_t i = 0; i < n; i++) CHECK(c.out[i] == c.a[i] + c.b[i], "add fwd %zu", i);
    float *r = trand(n, 1), *da = talloc(n), *db = talloc(n);
    prefill(da, n); prefill(db, n);
    add_backward(da, db, r, n);
    unprefill(da, n); unprefill(db, n);
    /* linear, h = 0.5: exact up to float rounding of a+b (~1e-7 / 1) */
    fd_problem fp = {add_fwd_, &c, c.out, n, r};
    ge = dmax(ge, fd_check("add da", &fp, c.a, n, da, 0.5, 1e-5, 1e-5));
    ge = dmax(ge, fd_check("add db", &fp, c.b, n, db, 0.5, 1e-5, 1e-5));
    add_backward(NULL, NULL, r, n);
    /* large (threaded) path */
    const size_t big = 200001;
    float *x = trand(big, 1), *y = trand(big, 1), *o = talloc(big), *g = talloc(big);
    add_forward(o, x, y, big);
    add_backward(g, NULL, o, big);
    for (size_t i = 0; i < big; i++)
        if (o[i] != x[i] + y[i] || g[i] != o[i]) { CHECK(0, "add big %zu", i); break; }
    printf("    add: max grad err %.3g\n", ge);
    tfree_all();
}

static void test_addbc(void) {
    rng_seed(6);
    double ge = 0;
    const int N = 2, C = 5, H = 5, W = 7, HW = H * W;
    const size_t nx = (size_t)N * C * HW;
    ew_ctx c = {.N = N, .C = C, .H = H, .W = W, .a = trand(nx, 1), .b = trand(N * C, 1), .out = talloc(nx)};
    addbc_fwd_(&c);
    for (size_t i = 0; i < nx; i++)
        CHECK(c.out[i] == c.a[i] + c.b[i / HW], "addbc fwd %zu", i);
    float *r = trand(nx, 1), *dx = talloc(nx), *de = talloc(N * C);
    prefill(dx, nx); prefill(de, N * C);
    addbc_backward(dx, de, r, N, C, HW);
    unprefill(dx, nx); unprefill(de, N * C);
    /* linear, h = 0.5: exact up to float rounding of the sums (~1e-6) */
    fd_problem fp = {addbc_fwd_, &c, c.out, nx, r};
    ge = dmax(ge, fd_check("addbc dx", &fp, c.a, nx, dx, 0.5, 1e-5, 1e-5));
    ge = dmax(ge, fd_check("addbc de", &fp, c.b, N * C, de, 0.5, 1e-5, 1e-5));
    addbc_backward(NULL, NULL, r, N, C, HW);
    printf("    addbc: max grad err %.3g\n", ge);
    tfree_all();
}

static void test_concat(void) {
    rng_seed(7);
    double ge = 0;
    const int N = 3, C1 = 3, C2 = 5, H = 5, W = 7, HW = H * W;
    const size_t na = (size_t)N * C1 * HW, nb = (size_t)N * C2 * HW, no = na + nb;
    ew_ctx c = {.N = N, .C = C1, .C2 = C2, .H = H, .W = W, .a = trand(na, 1), .b = trand(nb, 1), .out = talloc(no)};
    concat_fwd_(&c);
    for (int n = 0; n < N; n++)
        for (int ch = 0; ch < C1 + C2; ch++)
            for (int i = 0; i < HW; i++) {
                float want = ch < C1 ? c.a[((size_t)n * C1 + ch) * HW + i]
                                     : c.b[((size_t)n * C2 + ch - C1) * HW + i];
                CHECK(c.out[((size_t)n * (C1 + C2) + ch) * HW + i] == want, "concat fwd");
            }
    float *r = trand(no, 1), *da = talloc(na), *db = talloc(nb);
    prefill(da, na); prefill(db, nb);
    concat_backward(da, db, r, N, C1, C2, HW);
    unprefill(da, na); unprefill(db, nb);
    /* linear copy, h = 0.5: exact up to the pattern round trip (~1e-7) */
    fd_problem fp = {concat_fwd_, &c, c.out, no, r};
    ge = dmax(ge, fd_check("concat da", &fp, c.a, na, da, 0.5, 1e-5, 1e-5));
    ge = dmax(ge, fd_check("concat db", &fp, c.b, nb, db, 0.5, 1e-5, 1e-5));
    concat_backward(NULL, NULL, r, N, C1, C2, HW);
    concat_backward(NULL, db, r, N, C1, C2, HW);
    printf("    concat: max grad err %.3g\n", ge);
    tfree_all();
}

static void test_upsample(void) {
    rng_seed(8);
    double ge = 0;
    const int shapes[][4] = {{2, 3, 5, 7}, {1, 1, 1, 1}, {4, 32, 16, 16}};
    for (int t = 0; t < 3; t++) {
        const int N = shapes[t][0], C = shapes[t][1], H = shapes[t][2], W = shapes[t][3];
        const size_t nx = (size_t)N * C * H * W, no = 4 * nx;
        ew_ctx c = {.N = N, .C = C, .H = H, .W = W, .a = trand(nx, 1), .out = talloc(no)};
        up_fwd_(&c);
        int ok = 1;
        for (int nc = 0; nc < N * C; nc++)
            for (int y = 0; y < 2 * H; y++)
                for (int x = 0; x < 2 * W; x++)
                    ok &= c.out[((size_t)nc * 2 * H + y) * 2 * W + x] ==
                          c.a[((size_t)nc * H + y / 2) * W + x / 2];
        CHECK(ok, "upsample fwd %dx%d", H, W);
        float *r = trand(no, 1), *dx = talloc(nx);
        prefill(dx, nx);
        upsample2x_backward(dx, r, N, C, H, W);
        unprefill(dx, nx);
        /* linear copy, h = 0.5: sums of 4 floats, exact to ~1e-6 */
        fd_problem fp = {up_fwd_, &c, c.out, no, r};
        ge = dmax(ge, fd_check("upsample dx", &fp, c.a, nx, dx, 0.5, 1e-5, 1e-5));
        upsample2x_backward(NULL, r, N, C, H, W);
    }
    printf("    upsample2x: max grad err %.3g\n", ge);
    tfree_all();
}

/* -------------------------------------------------------------- attention */

typedef struct {
    int N, C, T;
    float *qkv, *att, *out;
} att_ctx;

static void att_fwd(void *v) {
    att_ctx *c = v;
    attention_forward(c->out, c->att, c->qkv, c->N, c->C, c->T);
}

static double att_fe, att_ge;

static void att_case(int N, int C, int T) {
    char what[64];
    snprintf(what, sizeof what, "attention N%d C%d T%d", N, C, T);
    const size_t nq = (size_t)N * 3 * C * T, na = (size_t)N * T * T, no = (size_t)N * C * T;
    att_ctx c = {N, C, T, trand(nq, 1.5f), talloc(na), talloc(no)};
    att_fwd(&c);
    double *ra = malloc(na * sizeof(double)), *ro = malloc(no * sizeof(double));
    for (int n = 0; n < N; n++) {
        const float *q = c.qkv + (size_t)n * 3 * C * T, *k = q + (size_t)C * T, *v = k + (size_t)C * T;
        double *A = ra + (size_t)n * T * T;
        for (int i = 0; i < T; i++) {
            double mx = -1e300, sum = 0;
            for (int j = 0; j < T; j++) {
                double s = 0;
                for (int ch = 0; ch < C; ch++) s += (double)q[ch * T + i] * k[ch * T + j];
                A[i * T + j] = s / sqrt((double)C);
                if (A[i * T + j] > mx) mx = A[i * T + j];
            }
            for (int j = 0; j < T; j++) sum += (A[i * T + j] = exp(A[i * T + j] - mx));
            for (int j = 0; j < T; j++) A[i * T + j] /= sum;
        }
        for (int ch = 0; ch < C; ch++)
            for (int i = 0; i < T; i++) {
                double s = 0;
                for (int j = 0; j < T; j++) s += A[i * T + j] * v[ch * T + j];
                ro[((size_t)n * C + ch) * T + i] = s;
            }
    }
    /* probabilities in [0,1] from float scores (|s| <~ 10, rounding 1e-6
     * relative in exp): 1e-6 abs; outputs are convex combinations of
     * |v| <= 1.5: 2e-6 abs */
    att_fe = dmax(att_fe, cmp(what, c.att, ra, na, 1e-6, 1e-5));
    att_fe = dmax(att_fe, cmp(what, c.out, ro, no, 2e-6, 1e-5));
    free(ra); free(ro);

    float *r = trand(no, 1), *dq = talloc(nq);
    prefill(dq, nq);
    attention_backward(dq, r, c.qkv, c.att, N, C, T);
    unprefill(dq, nq);
    /* nonlinear (softmax), h = 1e-2: truncation h^2/6*|L'''| ~ 1e-5*O(1);
     * rounding of the C*T + T*T touched float outputs, ~6e-8*sqrt(that)
     * / (2h) ~ 1e-4 at T=64 -> atol 5e-4 + rtol 1e-3. */
    fd_problem fp = {att_fwd, &c, c.out, no, r};
    att_ge = dmax(att_ge, fd_check(what, &fp, c.qkv, nq, dq, 1e-2, 5e-4, 1e-3));
    attention_backward(NULL, r, c.qkv, c.att, N, C, T);
}

static void test_attention(void) {
    rng_seed(9);
    att_case(2, 3, 5);
    att_case(1, 8, 16);
    att_case(3, 5, 16);
    att_case(2, 4, 7);
    att_case(1, 32, 64);  /* threaded, coop */
    att_case(3, 24, 49);  /* threaded, per image */
    printf("    attention: max fwd err %.3g, max grad err %.3g\n", att_fe, att_ge);
    tfree_all();
}

/* ----------------------------------------------------- embeddings, loss */

typedef struct {
    int N, D;
    const int *idx;
    float *table, *out;
} emb_ctx;

static void emb_fwd(void *v) {
    emb_ctx *c = v;
    embedding_forward(c->out, c->idx, c->table, c->N, c->D);
}

static void test_embedding(void) {
    rng_seed(10);
    const int V = 7, D = 5, N = 6;
    const int idx[6] = {3, 0, 6, 3, 3, 1}; /* repeats accumulate */
    emb_ctx c = {N, D, idx, trand((size_t)V * D, 1), talloc((size_t)N * D)};
    emb_fwd(&c);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < D; i++)
            CHECK(c.out[n * D + i] == c.table[idx[n] * D + i], "embedding fwd");
    float *r = trand((size_t)N * D, 1), *dt = talloc((size_t)V * D);
    prefill(dt, (size_t)V * D);
    embedding_backward(dt, r, idx, N, D);
    unprefill(dt, (size_t)V * D);
    /* linear copy, h = 0.5: sums of <= 3 floats, exact to ~1e-6 */
    fd_problem fp = {emb_fwd, &c, c.out, (size_t)N * D, r};
    double ge = fd_check("embedding dtable", &fp, c.table, (size_t)V * D, dt, 0.5, 1e-5, 1e-5);
    embedding_backward(NULL, r, idx, N, D);
    printf("    embedding: max grad err %.3g\n", ge);
    tfree_all();
}

static void test_timestep_embedding(void) {
    const float t[5] = {0.0f, 1.0f, 17.5f, 250.0f, 999.0f};
    const int Ds[3] = {2, 8, 128};
    double fe = 0;
    for (int k = 0; k < 3; k++) {
        const int D = Ds[k], half = D / 2;
        float *out = talloc((size_t)5 * D);
        double *ref = malloc((size_t)5 * D * sizeof(double));
        timestep_embedding(out, t, 5, D);
        for (int n = 0; n < 5; n++)
            for (int i = 0; i < half; i++) {
                const double f = exp(-log(10000.0) * i / half);
                ref[n * D + i] = cos(t[n] * f);
                ref[n * D + half + i] = sin(t[n] * f);
            }
        /* angle in double, one float rounding of a value in [-1,1]: 6e-8;
         * 1e-6 leaves room for libm differences */
        fe = dmax(fe, cmp("timestep_embedding", out, ref, (size_t)5 * D, 1e-6, 0));
        free(ref);
    }
    printf("    timestep_embedding: max err %.3g\n", fe);
    tfree_all();
}

typedef struct {
    size_t n;
    float *a, *b, out[1];
} mse_ctx;

static void mse_fwd(void *v) {
    mse_ctx *c = v;
    c->out[0] = mse_forward(c->a, c->b, c->n);
}

static void test_mse(void) {
    rng_seed(11);
    double fe = 0, ge = 0;
    const size_t sizes[] = {1, 37, 1001, 300007};
    for (int t = 0; t < 4; t++) {
        const size_t n = sizes[t];
        mse_ctx c = {n, trand(n, 1), trand(n, 1), {0}};
        mse_fwd(&c);
        double ref = 0;
        for (size_t i = 0; i < n; i++) ref += ((double)c.a[i] - c.b[i]) * ((double)c.a[i] - c.b[i]);
        ref /= (double)n;
        /* double accumulation, one float rounding of the result: 1e-7 rel */
        fe = dmax(fe, cmp("mse fwd", c.out, &ref, 1, 0, 2e-7));
        if (n > 2000) continue; /* FD of a mean over 3e5 values is all rounding */
        float r[1] = {0.7f};
        float *da = talloc(n);
        prefill(da, n);
        mse_backward(da, r[0], c.a, c.b, n);
        unprefill(da, n);
        /* quadratic: central difference exact in exact arithmetic, h = 0.5;
         * the float loss rounds at 6e-8*|L| / (2h); gradients are
         * ~1/n: atol 1e-7 + rtol 1e-4 */
        fd_problem fp = {mse_fwd, &c, c.out, 1, r};
        ge = dmax(ge, fd_check("mse da", &fp, c.a, n, da, 0.5, 1e-7, 1e-4));
        mse_backward(NULL, r[0], c.a, c.b, n);
    }
    printf("    mse: max fwd err %.3g, max grad err %.3g\n", fe, ge);
    tfree_all();
}

/* ------------------------------------------------------ transformer ops */

/* Everything below tests ops_tx.c (layer norm, GELU, quick GELU, GEGLU,
 * multi-head attention, transpose, scale, timestep_embedding_ex) with the
 * same harness: naive double forward, finite differences of sum(out * r),
 * pattern-prefilled gradients (accumulation), NULL gradient pointers. */

typedef struct {
    int N, D;
    float eps;
    float *x, *w, *b, *out, *mean, *rstd;
} ln_ctx;

static void ln_fwd(void *v) {
    ln_ctx *c = v;
    layernorm_forward(c->out, c->mean, c->rstd, c->x, c->w, c->b, c->N, c->D, c->eps);
}

static void test_layernorm(void) {
    rng_seed(21);
    /* N rows, D, affine, eps: CLIP (1e-5), the VAE's 1e-6, no affine */
    const struct { int N, D, affine; float eps; } cs[] = {
        {3, 7, 1, 1e-5f}, {5, 64, 1, 1e-5f}, {2, 320, 1, 1e-6f}, {4, 9, 0, 1e-5f}, {300, 40, 1, 1e-5f}};
    double fe = 0, ge = 0;
    for (size_t t = 0; t < sizeof cs / sizeof cs[0]; t++) {
        const int N = cs[t].N, D = cs[t].D;
        const size_t nx = (size_t)N * D;
        ln_ctx c = {N, D, cs[t].eps, trand(nx, 1), cs[t].affine ? trand(D, 0.5f) : NULL,
                    cs[t].affine ? trand(D, 0.5f) : NULL, talloc(nx), talloc(N), talloc(N)};
        for (size_t i = 0; i < nx; i++) c.x[i] = 2.0f * c.x[i] + 0.5f * (float)((i / D) % 3);
        if (c.w) for (int i = 0; i < D; i++) c.w[i] += 1.0f;
        ln_fwd(&c);
        double *ref = malloc(nx * sizeof(double));
        for (int r = 0; r < N; r++) {
            const float *x = c.x + (size_t)r * D;
            double mu = 0, var = 0;
            for (int i = 0; i < D; i++) mu += x[i];
            mu /= D;
            for (int i = 0; i < D; i++) var += (x[i] - mu) * (x[i] - mu);
            var /= D;
            const double rs = 1.0 / sqrt(var + (cs[t].eps == 1e-5f ? 1e-5 : 1e-6));
            CHECK(fabs(c.mean[r] - mu) <= 1e-6 + 1e-6 * fabs(mu), "ln mean");
            CHECK(fabs(c.rstd[r] - rs) <= 1e-6 * rs, "ln rstd");
            for (int i = 0; i < D; i++)
                ref[(size_t)r * D + i] = (x[i] - mu) * rs * (c.w ? c.w[i] : 1.0) + (c.b ? c.b[i] : 0.0);
        }
        /* |xhat| <= ~sqrt(D), a few float roundings: 1e-5 abs + rel */
        fe = dmax(fe, cmp("layernorm fwd", c.out, ref, nx, 1e-5, 1e-5));
        free(ref);
        float *r = trand(nx, 1), *dx = talloc(nx), *dw = talloc(D), *db = talloc(D);
        prefill(dx, nx); prefill(dw, D); prefill(db, D);
        layernorm_backward(dx, c.w ? dw : NULL, c.b ? db : NULL, r, c.x, c.w, c.mean, c.rstd, N, D);
        unprefill(dx, nx); unprefill(dw, D); unprefill(db, D);
        fd_problem fp = {ln_fwd, &c, c.out, nx, r};
        /* as groupnorm: x nonlinear, h = 1e-2, atol 1e-3 + rtol 1e-3;
         * w, b linear, h = 0.5, rounding only: 1e-4 */
        ge = dmax(ge, fd_check("layernorm dx", &fp, c.x, nx, dx, 1e-2, 1e-3, 1e-3));
        if (c.w) {
            ge = dmax(ge, fd_check("layernorm dw", &fp, c.w, D, dw, 0.5, 1e-4, 1e-4));
            ge = dmax(ge, fd_check("layernorm db", &fp, c.b, D, db, 0.5, 1e-4, 1e-4));
            float *dw1 = talloc(D), *db1 = talloc(D);
            layernorm_backward(NULL, dw1, db1, r, c.x, c.w, c.mean, c.rstd, N, D);
            cmpf("layernorm dw alone", dw1, dw, D, 1e-5, 1e-5); /* pattern round trip */
            cmpf("layernorm db alone", db1, db, D, 1e-5, 1e-5);
        }
        layernorm_backward(NULL, NULL, NULL, r, c.x, c.w, c.mean, c.rstd, N, D);
        float *dx1 = talloc(nx);
        layernorm_backward(dx1, NULL, NULL, r, c.x, c.w, c.mean, c.rstd, N, D);
        cmpf("layernorm dx alone", dx1, dx, nx, 1e-5, 1e-5);
    }
    printf("    layernorm: max fwd err %.3g, max grad err %.3g\n", fe, ge);
    tfree_all();
}

static void gelu_fwd_(void *v) { ew_ctx *c = v; gelu_forward(c->out, c->a, c->n); }
static void qgelu_fwd_(void *v) { ew_ctx *c = v; quick_gelu_forward(c->out, c->a, c->n); }
static void geglu_fwd_(void *v) { ew_ctx *c = v; geglu_forward(c->out, c->a, c->N, c->C); }
static void scale_fwd_(void *v) { ew_ctx *c = v; scale_forward(c->out, c->a, 0.18215f, c->n); }
static void transpose_fwd_(void *v) { ew_ctx *c = v; transpose_forward(c->out, c->a, c->N, c->C, c->H); }

static double gelu_d(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

static void test_gelu(void) {
    rng_seed(22);
    double fe = 0, ge = 0;
    const size_t sizes[] = {1, 1000, 100003};
    for (int kind = 0; kind < 2; kind++)
        for (int t = 0; t < 3; t++) {
            const size_t n = sizes[t];
            ew_ctx c = {.n = n, .a = trand(n, 6), .out = talloc(n)};
            if (n > 2) { c.a[0] = -30.0f; c.a[1] = 30.0f; c.a[2] = 0.0f; } /* saturation */
            void (*fwd)(void *) = kind ? qgelu_fwd_ : gelu_fwd_;
            const char *nm = kind ? "quick_gelu" : "gelu";
            fwd(&c);
            double *ref = malloc(n * sizeof(double));
            for (size_t i = 0; i < n; i++)
                ref[i] = kind ? c.a[i] / (1.0 + exp(-1.702 * c.a[i])) : gelu_d(c.a[i]);
            /* libm erff/expf (1-2 ulp) and a product: 1e-6 relative */
            fe = dmax(fe, cmp(nm, c.out, ref, n, 1e-7, 1e-6));
            free(ref);
            float *r = trand(n, 1), *dx = talloc(n);
            prefill(dx, n);
            if (kind) quick_gelu_backward(dx, r, c.a, n);
            else gelu_backward(dx, r, c.a, n);
            unprefill(dx, n);
            /* elementwise: each derivative sees one output; h = 1e-2:
             * truncation h^2/6 |f'''| <= 2e-5, rounding 6e-8*6/(2h) ~ 2e-5:
             * atol 1e-4 + rtol 1e-3 */
            fd_problem fp = {fwd, &c, c.out, n, r};
            ge = dmax(ge, fd_check(nm, &fp, c.a, n, dx, 1e-2, 1e-4, 1e-3));
            if (kind) quick_gelu_backward(NULL, r, c.a, n);
            else gelu_backward(NULL, r, c.a, n);
        }
    printf("    gelu, quick_gelu: max fwd err %.3g, max grad err %.3g\n", fe, ge);
    tfree_all();
}

static void test_geglu(void) {
    rng_seed(23);
    const int shapes[][2] = {{3, 5}, {4, 40}, {77, 64}};
    double fe = 0, ge = 0;
    for (int t = 0; t < 3; t++) {
        const int N = shapes[t][0], F = shapes[t][1];
        const size_t nx = (size_t)N * 2 * F, no = (size_t)N * F;
        ew_ctx c = {.N = N, .C = F, .a = trand(nx, 3), .out = talloc(no)};
        geglu_fwd_(&c);
        double *ref = malloc(no * sizeof(double));
        for (int r = 0; r < N; r++)
            for (int i = 0; i < F; i++)
                ref[(size_t)r * F + i] = c.a[(size_t)r * 2 * F + i] * gelu_d(c.a[(size_t)r * 2 * F + F + i]);
        fe = dmax(fe, cmp("geglu fwd", c.out, ref, no, 1e-6, 1e-6));
        free(ref);
        float *r = trand(no, 1), *dx = talloc(nx);
        prefill(dx, nx);
        geglu_backward(dx, r, c.a, N, F);
        unprefill(dx, nx);
        /* as gelu; the value half is linear */
        fd_problem fp = {geglu_fwd_, &c, c.out, no, r};
        ge = dmax(ge, fd_check("geglu dx", &fp, c.a, nx, dx, 1e-2, 1e-4, 1e-3));
        geglu_backward(NULL, r, c.a, N, F);
    }
    printf("    geglu: max fwd err %.3g, max grad err %.3g\n", fe, ge);
    tfree_all();
}

static void test_transpose_scale(void) {
    rng_seed(24);
    /* N, A, B: odd sizes, tiles of 32 with remainders, [N,C,HW] of a map */
    const int shapes[][3] = {{2, 3, 5}, {1, 33, 70}, {2, 320, 64}};
    double ge = 0;
    for (int t = 0; t < 3; t++) {
        const int N = shapes[t][0], A = shapes[t][1], B = shapes[t][2];
        const size_t n = (size_t)N * A * B;
        ew_ctx c = {.n = n, .N = N, .C = A, .H = B, .a = trand(n, 1), .out = talloc(n)};
        transpose_fwd_(&c);
        int bad = 0;
        for (int m = 0; m < N; m++)
            for (int a = 0; a < A; a++)
                for (int b = 0; b < B; b++)
                    bad += c.out[((size_t)m * B + b) * A + a] != c.a[((size_t)m * A + a) * B + b];
        CHECK(bad == 0, "transpose fwd: %d elements differ", bad);
        float *r = trand(n, 1), *dx = talloc(n);
        prefill(dx, n);
        transpose_backward(dx, r, N, A, B);
        unprefill(dx, n);
        /* a permutation: linear, h = 0.5, exact up to the pattern round trip */
        fd_problem fp = {transpose_fwd_, &c, c.out, n, r};
        ge = dmax(ge, fd_check("transpose dx", &fp, c.a, n, dx, 0.5, 1e-5, 1e-5));
        transpose_backward(NULL, r, N, A, B);

        scale_fwd_(&c);
        bad = 0;
        for (size_t i = 0; i < n; i++) bad += c.out[i] != 0.18215f * c.a[i];
        CHECK(bad == 0, "scale fwd: %d elements differ", bad);
        prefill(dx, n);
        scale_backward(dx, r, 0.18215f, n);
        unprefill(dx, n);
        fp.fwd = scale_fwd_;
        ge = dmax(ge, fd_check("scale dx", &fp, c.a, n, dx, 0.5, 1e-5, 1e-5));
        scale_backward(NULL, r, 0.18215f, n);
    }
    printf("    transpose, scale: max grad err %.3g\n", ge);
    tfree_all();
}

static void test_timestep_embedding_ex(void) {
    const float t[5] = {0.0f, 1.0f, 17.5f, 250.0f, 999.0f};
    const int Ds[4] = {2, 8, 320, 7};
    double fe = 0;
    for (int k = 0; k < 4; k++)
        for (int flip = 0; flip < 2; flip++)
            for (int shift = 0; shift < 2; shift++) {
                const int D = Ds[k], half = D / 2;
                if (shift && half == 1) continue; /* half - shift = 0: no frequencies */
                float *out = talloc((size_t)5 * D);
                double *ref = calloc((size_t)5 * D, sizeof(double));
                timestep_embedding_ex(out, t, 5, D, flip, (float)shift);
                /* diffusers.models.embeddings.get_timestep_embedding:
                 * exponent = -ln(10000) * i / (half - shift), [sin, cos],
                 * flipped to [cos, sin]; an odd dim padded with a zero */
                for (int n = 0; n < 5; n++)
                    for (int i = 0; i < half; i++) {
                        const double f = exp(-log(10000.0) * i / (half - shift));
                        ref[n * D + (flip ? half + i : i)] = sin(t[n] * f);
                        ref[n * D + (flip ? i : half + i)] = cos(t[n] * f);
                    }
                fe = dmax(fe, cmp("timestep_embedding_ex", out, ref, (size_t)5 * D, 1e-6, 0));
                free(ref);
                if (flip && !shift) { /* the old op is this case, bit for bit */
                    float *old = talloc((size_t)5 * D);
                    timestep_embedding(old, t, 5, D);
                    CHECK(!memcmp(old, out, sizeof(float) * 5 * D), "timestep_embedding != ex(1, 0)");
                }
            }
    /* eps in double at its shortest decimal (groupnorm/layernorm) */
    CHECK(ops_eps_double(1e-5f) == 1e-5, "ops_eps_double(1e-5f) = %.17g", ops_eps_double(1e-5f));
    CHECK(ops_eps_double(1e-6f) == 1e-6, "ops_eps_double(1e-6f) = %.17g", ops_eps_double(1e-6f));
    printf("    timestep_embedding_ex: max err %.3g\n", fe);
    tfree_all();
}

/* multi-head attention */
typedef struct {
    int N, Tq, Tk, H, dh, causal;
    float *q, *k, *v, *out, *lse;
} mha_ctx;

static void mha_fwd_(void *p) {
    mha_ctx *c = p;
    mha_forward(c->out, c->lse, c->q, c->k, c->v, c->N, c->Tq, c->Tk, c->H, c->dh, c->causal);
}

/* Naive attention in double with the explicit softmax matrix, forward and
 * backward (ro, rlse, and gradients rdq, rdk, rdv of sum(out * r), any may
 * be NULL). */
static void mha_naive(const mha_ctx *c, const float *r, double *ro, double *rlse, double *rdq,
                      double *rdk, double *rdv) {
    const int D = c->H * c->dh, Tq = c->Tq, Tk = c->Tk, dh = c->dh;
    const double sc = 1.0 / sqrt((double)dh);
    double *P = malloc(sizeof(double) * Tq * Tk), *dP = malloc(sizeof(double) * Tq * Tk);
    for (int n = 0; n < c->N; n++)
        for (int h = 0; h < c->H; h++) {
            const size_t oq = (size_t)n * Tq * D + h * dh, ok = (size_t)n * Tk * D + h * dh;
            for (int i = 0; i < Tq; i++) {
                double mx = -1e300, sum = 0;
                for (int j = 0; j < Tk; j++) {
                    double s = 0;
                    for (int d = 0; d < dh; d++) s += (double)c->q[oq + (size_t)i * D + d] * c->k[ok + (size_t)j * D + d];
                    P[i * Tk + j] = (c->causal && j > i) ? -1e300 : s * sc;
                    if (P[i * Tk + j] > mx) mx = P[i * Tk + j];
                }
                for (int j = 0; j < Tk; j++) sum += (P[i * Tk + j] = exp(P[i * Tk + j] - mx));
                for (int j = 0; j < Tk; j++) P[i * Tk + j] /= sum;
                if (rlse) rlse[((size_t)n * c->H + h) * Tq + i] = mx + log(sum);
                for (int d = 0; d < dh; d++) {
                    double s = 0;
                    for (int j = 0; j < Tk; j++) s += P[i * Tk + j] * c->v[ok + (size_t)j * D + d];
                    if (ro) ro[oq + (size_t)i * D + d] = s;
                }
            }
            if (!r) continue;
            /* dP = r v^T; dS = P (dP - rowsum(P dP)); dq = sc dS k; dk = sc dS^T q; dv = P^T r */
            for (int i = 0; i < Tq; i++) {
                double dot = 0;
                for (int j = 0; j < Tk; j++) {
                    double s = 0;
                    for (int d = 0; d < dh; d++) s += (double)r[oq + (size_t)i * D + d] * c->v[ok + (size_t)j * D + d];
                    dP[i * Tk + j] = s;
                    dot += s * P[i * Tk + j];
                }
                for (int j = 0; j < Tk; j++) dP[i * Tk + j] = P[i * Tk + j] * (dP[i * Tk + j] - dot);
            }
            for (int i = 0; i < Tq; i++)
                for (int d = 0; d < dh; d++) {
                    double s = 0;
                    for (int j = 0; j < Tk; j++) s += dP[i * Tk + j] * c->k[ok + (size_t)j * D + d];
                    rdq[oq + (size_t)i * D + d] = sc * s;
                }
            for (int j = 0; j < Tk; j++)
                for (int d = 0; d < dh; d++) {
                    double s = 0, sv = 0;
                    for (int i = 0; i < Tq; i++) {
                        s += dP[i * Tk + j] * c->q[oq + (size_t)i * D + d];
                        sv += P[i * Tk + j] * r[oq + (size_t)i * D + d];
                    }
                    rdk[ok + (size_t)j * D + d] = sc * s;
                    rdv[ok + (size_t)j * D + d] = sv;
                }
        }
    free(P); free(dP);
}

static double mha_fe, mha_ge;

/* One case: forward (out, lse) against the naive reference; backward
 * against the naive analytic gradients (always) and finite differences
 * (fd: small cases). */
static void mha_case(int N, int Tq, int Tk, int H, int dh, int causal, float qs, int fd) {
    char what[96];
    snprintf(what, sizeof what, "mha N%d Tq%d Tk%d H%d dh%d%s", N, Tq, Tk, H, dh, causal ? " causal" : "");
    const int D = H * dh;
    const size_t nq = (size_t)N * Tq * D, nk = (size_t)N * Tk * D, nl = (size_t)N * H * Tq;
    mha_ctx c = {N, Tq, Tk, H, dh, causal, trand(nq, qs), trand(nk, qs), trand(nk, 1), talloc(nq), talloc(nl)};
    mha_fwd_(&c);
    float *r = trand(nq, 1);
    double *ro = malloc(nq * sizeof(double)), *rl = malloc(nl * sizeof(double));
    double *rdq = malloc(nq * sizeof(double)), *rdk = malloc(nk * sizeof(double)), *rdv = malloc(nk * sizeof(double));
    mha_naive(&c, r, ro, rl, rdq, rdk, rdv);
    /* outputs: convex combinations of |v| <= 1, float scores and fexp
     * (2e-7 rel), float sums over Tk terms: 2e-6 abs + 1e-5 rel; lse:
     * |s| <~ 10, log of a float sum: 1e-5 */
    char w2[128];
    snprintf(w2, sizeof w2, "%s out", what);
    mha_fe = dmax(mha_fe, cmp(w2, c.out, ro, nq, 2e-6, 1e-5));
    snprintf(w2, sizeof w2, "%s lse", what);
    mha_fe = dmax(mha_fe, cmp(w2, c.lse, rl, nl, 1e-5, 1e-6));
    float *dq = talloc(nq), *dk = talloc(nk), *dv = talloc(nk);
    prefill(dq, nq); prefill(dk, nk); prefill(dv, nk);
    mha_backward(dq, dk, dv, r, c.q, c.k, c.v, c.out, c.lse, N, Tq, Tk, H, dh, causal);
    unprefill(dq, nq); unprefill(dk, nk); unprefill(dv, nk);
    /* against the exact gradient: float GEMMs over Tk or Tq terms of
     * O(1) values, the pattern round trip (1.5 + g): 2e-5 abs + 1e-4 rel */
    snprintf(w2, sizeof w2, "%s dq (naive)", what);
    mha_ge = dmax(mha_ge, cmp(w2, dq, rdq, nq, 2e-5, 1e-4));
    snprintf(w2, sizeof w2, "%s dk (naive)", what);
    mha_ge = dmax(mha_ge, cmp(w2, dk, rdk, nk, 2e-5, 1e-4));
    snprintf(w2, sizeof w2, "%s dv (naive)", what);
    mha_ge = dmax(mha_ge, cmp(w2, dv, rdv, nk, 2e-5, 1e-4));
    free(ro); free(rl); free(rdq); free(rdk); free(rdv);
    if (fd) {
        fd_problem fp = {mha_fwd_, &c, c.out, nq, r};
        /* q, k: softmax is nonlinear, h = 1e-2: truncation h^2/6*|L'''|
         * ~ 1e-5*O(1), rounding of the <= Tq*dh touched outputs
         * 6e-8*sqrt(Tq*dh)/(2h) ~ 1e-4: atol 5e-4 + rtol 1e-3 (as the
         * single-head attention); v: linear, h = 0.5: 1e-4 */
        snprintf(w2, sizeof w2, "%s dq", what);
        mha_ge = dmax(mha_ge, fd_check(w2, &fp, c.q, nq, dq, 1e-2, 5e-4, 1e-3));
        snprintf(w2, sizeof w2, "%s dk", what);
        mha_ge = dmax(mha_ge, fd_check(w2, &fp, c.k, nk, dk, 1e-2, 5e-4, 1e-3));
        snprintf(w2, sizeof w2, "%s dv", what);
        mha_ge = dmax(mha_ge, fd_check(w2, &fp, c.v, nk, dv, 0.5, 1e-4, 1e-4));
    }
    /* NULL gradients: none, and each one alone equals the full call */
    mha_backward(NULL, NULL, NULL, r, c.q, c.k, c.v, c.out, c.lse, N, Tq, Tk, H, dh, causal);
    float *g1 = talloc(nq), *g2 = talloc(nk);
    prefill(g1, nq);
    mha_backward(g1, NULL, NULL, r, c.q, c.k, c.v, c.out, c.lse, N, Tq, Tk, H, dh, causal);
    unprefill(g1, nq);
    snprintf(w2, sizeof w2, "%s dq alone", what);
    cmpf(w2, g1, dq, nq, 1e-5, 1e-5);
    prefill(g2, nk);
    mha_backward(NULL, g2, NULL, r, c.q, c.k, c.v, c.out, c.lse, N, Tq, Tk, H, dh, causal);
    unprefill(g2, nk);
    snprintf(w2, sizeof w2, "%s dk alone", what);
    cmpf(w2, g2, dk, nk, 1e-5, 1e-5);
    memset(g2, 0, nk * sizeof(float));
    prefill(g2, nk);
    mha_backward(NULL, NULL, g2, r, c.q, c.k, c.v, c.out, c.lse, N, Tq, Tk, H, dh, causal);
    unprefill(g2, nk);
    snprintf(w2, sizeof w2, "%s dv alone", what);
    cmpf(w2, g2, dv, nk, 1e-5, 1e-5);
    tfree_all();
}

static void test_mha(void) {
    rng_seed(25);
    /* N, Tq, Tk, heads, dh, causal, scale of q and k, finite differences */
    mha_case(2, 5, 5, 1, 8, 0, 1.0f, 1);
    mha_case(2, 6, 6, 2, 8, 1, 1.0f, 1);     /* causal, several heads */
    mha_case(1, 10, 13, 3, 40, 0, 1.0f, 1);  /* Tq != Tk, dh 40 */
    mha_case(2, 9, 77, 2, 12, 0, 1.0f, 1);   /* cross-attention onto 77 text tokens */
    mha_case(1, 70, 140, 2, 12, 0, 1.0f, 1); /* several query and key blocks */
    mha_case(1, 130, 130, 1, 8, 1, 1.0f, 1); /* causal across blocks */
    mha_case(1, 3, 200, 1, 160, 0, 0.5f, 1); /* dh 160 (SD 2.x's widest head) */
    /* T large enough that blocks matter, against the explicit softmax matrix */
    mha_case(1, 300, 300, 2, 40, 0, 2.0f, 0);
    mha_case(1, 300, 300, 2, 40, 1, 2.0f, 0);
    mha_case(2, 300, 77, 3, 40, 0, 2.0f, 0);
    mha_case(1, 200, 200, 1, 512, 0, 0.3f, 0); /* SD's VAE: one head of 512 */
    printf("    mha: max fwd err %.3g, max grad err %.3g\n", mha_fe, mha_ge);
}

/* mha must not hold a Tq x Tk buffer. Checked by the process's peak
 * resident memory (VmHWM in /proc/self/status), reset to the current
 * resident size just before the op runs (writing "5" to
 * /proc/self/clear_refs), after every input and output buffer of a T =
 * 4096 case has been allocated and touched: a T x T float buffer would be
 * 64 MiB and raise the peak by that much once written, while the op's
 * scratch is O(block^2 + T) per thread (well under 1 MiB). The peak may
 * grow by at most 8 MiB (thread stacks, allocator slack). Planting a
 * 64 MiB memset between the two readings makes this check fail (tried). */
static long vm_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') v = atol(line + kl + 1);
    fclose(f);
    return v;
}

static int reset_peak(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static void test_mha_memory(void) {
    rng_seed(26);
    const int T = 4096, dh = 40, H = 1;
    const size_t n = (size_t)T * dh * H;
    float *q = trand(n, 1), *k = trand(n, 1), *v = trand(n, 1), *o = talloc(n), *lse = talloc(T);
    float *dq = talloc(n), *dk = talloc(n), *dv = talloc(n), *r = trand(n, 1);
    /* warm the threads and their scratch at a small size */
    mha_forward(o, lse, q, k, v, 1, 256, 256, H, dh, 0);
    mha_backward(dq, dk, dv, r, q, k, v, o, lse, 1, 256, 256, H, dh, 0);
    memset(o, 0, n * sizeof(float)); memset(dq, 0, n * sizeof(float));
    memset(dk, 0, n * sizeof(float)); memset(dv, 0, n * sizeof(float));
    CHECK(reset_peak() == 0, "cannot reset the peak resident size (/proc/self/clear_refs)");
    const long before = vm_kib("VmHWM"), rss = vm_kib("VmRSS");
    CHECK(before > 0 && before <= rss + 1024, "VmHWM %ld KiB after the reset, VmRSS %ld KiB", before, rss);
    mha_forward(o, lse, q, k, v, 1, T, T, H, dh, 0);
    mha_backward(dq, dk, dv, r, q, k, v, o, lse, 1, T, T, H, dh, 0);
    const long grew = vm_kib("VmHWM") - before;
    const long tt = (long)T * T * 4 / 1024;
    printf("    mha T=%d dh=%d: peak resident memory grew by %ld KiB (a T x T buffer: %ld KiB)\n", T,
           dh, grew, tt);
    CHECK(grew < 8 * 1024, "mha at T=%d grew the peak by %ld KiB: an O(T^2) buffer?", T, grew);
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(o[i]) || !isfinite(dq[i]) || !isfinite(dk[i]) || !isfinite(dv[i]);
    CHECK(bad == 0, "mha T=%d: %d non-finite values", T, bad);
    tfree_all();
}

/* ------------------------------------------------------- 1 vs 2 threads */

/* Runs every threaded op at sizes that take the parallel paths, once with
 * 1 thread and once with 2, and compares. Differences come only from the
 * order of float sums (per-thread partial gradients): 1e-5 relative. */
static void run_threaded(int nthreads, float **res, size_t *nres) {
    ops_set_threads(nthreads);
    rng_seed(12);
    int k = 0;
    /* conv, N=1 (coop with 2 threads) and N=4 (per image) */
    for (int N = 1; N <= 4; N += 3) {
        const int C = 16, H = 12, W = 12, OC = 16;
        const size_t nx = (size_t)N * C * H * W, nw = (size_t)OC * C * 9, no = (size_t)N * OC * H * W;
        float *x = trand(nx, 1), *w = trand(nw, 0.3f), *b = trand(OC, 1), *r = trand(no, 1);
        float *o = talloc(no), *dx = talloc(nx), *dw = talloc(nw), *db = talloc(OC);
        conv2d_forward(o, x, w, b, N, C, H, W, OC, 3, 1, 1);
        conv2d_backward(dx, dw, db, r, x, w, N, C, H, W, OC, 3, 1, 1);
        res[k] = o; nres[k++] = no;
        res[k] = dx; nres[k++] = nx;
        res[k] = dw; nres[k++] = nw;
        res[k] = db; nres[k++] = OC;
    }
    for (int N = 1; N <= 3; N += 2) {
        const int C = 16, T = 64;
        const size_t nq = (size_t)N * 3 * C * T;
        float *q = trand(nq, 1), *r = trand((size_t)N * C * T, 1);
        float *a = talloc((size_t)N * T * T), *o = talloc((size_t)N * C * T), *dq = talloc(nq);
        attention_forward(o, a, q, N, C, T);
        attention_backward(dq, r, q, a, N, C, T);
        res[k] = o; nres[k++] = (size_t)N * C * T;
        res[k] = dq; nres[k++] = nq;
    }
    {
        const int N = 4, C = 32, HW = 400, G = 8;
        const size_t nx = (size_t)N * C * HW;
        float *x = trand(nx, 1), *w = trand(C, 1), *b = trand(C, 1), *r = trand(nx, 1);
        float *o = talloc(nx), *m = talloc(N * G), *s = talloc(N * G), *dx = talloc(nx),
              *dw = talloc(C), *db = talloc(C);
        groupnorm_forward(o, m, s, x, w, b, N, C, HW, G, 1e-5f);
        groupnorm_backward(dx, dw, db, r, x, w, m, s, N, C, HW, G, 1e-5f);
        res[k] = o; nres[k++] = nx;
        res[k] = dx; nres[k++] = nx;
        res[k] = dw; nres[k++] = C;
    }
    {
        const int N = 64, IN = 128, OUT = 256;
        float *x = trand((size_t)N * IN, 1), *w = trand((size_t)OUT * IN, 0.3f), *r = trand((size_t)N * OUT, 1);
        float *o = talloc((size_t)N * OUT), *dx = talloc((size_t)N * IN), *dw = talloc((size_t)OUT * IN);
        linear_forward(o, x, w, NULL, N, IN, OUT);
        linear_backward(dx, dw, NULL, r, x, w, N, IN, OUT);
        res[k] = o; nres[k++] = (size_t)N * OUT;
        res[k] = dx; nres[k++] = (size_t)N * IN;
        res[k] = dw; nres[k++] = (size_t)OUT * IN;
    }
    /* mha: 1 image x 1 head (key blocks split between threads, private dq
     * partials) and 2 x 3 (per head) */
    for (int NH = 1; NH <= 6; NH += 5) {
        const int N = NH == 1 ? 1 : 2, H = NH / N, dh = 24, T = 300, D = H * dh;
        const size_t nq = (size_t)N * T * D;
        float *q = trand(nq, 1), *kk = trand(nq, 1), *v = trand(nq, 1), *r = trand(nq, 1);
        float *o = talloc(nq), *l = talloc((size_t)N * H * T), *dq = talloc(nq), *dk = talloc(nq),
              *dv = talloc(nq);
        mha_forward(o, l, q, kk, v, N, T, T, H, dh, NH == 1);
        mha_backward(dq, dk, dv, r, q, kk, v, o, l, N, T, T, H, dh, NH == 1);
        res[k] = o; nres[k++] = nq;
        res[k] = dq; nres[k++] = nq;
        res[k] = dk; nres[k++] = nq;
        res[k] = dv; nres[k++] = nq;
    }
    {
        const int N = 500, D = 96;
        const size_t nx = (size_t)N * D;
        float *x = trand(nx, 1), *w = trand(D, 1), *b = trand(D, 1), *r = trand(nx, 1);
        float *o = talloc(nx), *m = talloc(N), *s = talloc(N), *dx = talloc(nx), *dw = talloc(D);
        layernorm_forward(o, m, s, x, w, b, N, D, 1e-5f);
        layernorm_backward(dx, dw, NULL, r, x, w, m, s, N, D);
        res[k] = o; nres[k++] = nx;
        res[k] = dx; nres[k++] = nx;
        res[k] = dw; nres[k++] = D;
    }
    {
        const size_t n = 100000;
        float *x = trand(n, 5), *o = talloc(n), *m = talloc(1);
        silu_forward(o, x, n);
        m[0] = mse_forward(o, x, n);
        res[k] = o; nres[k++] = n;
        res[k] = m; nres[k++] = 1;
    }
    res[k] = NULL;
}

/* ops_weights_frozen: while frozen, a 3x3 conv's Winograd weight
 * transform is kept per weight buffer and reused: the same bits as without;
 * a second buffer of the same shape gets its own; the cache really is used
 * (a weight changed against the promise is not seen) and nests; the last
 * ops_weights_frozen(0) drops it (the change is seen). */
static void test_weights_frozen(void) {
    rng_seed(71);
    const int N = 2, C = 16, OC = 24, H = 12, W = 12;
    const size_t no = (size_t)N * OC * H * W, nw = (size_t)OC * C * 9;
    float *x = trand((size_t)N * C * H * W, 1.0f), *w = trand(nw, 0.2f), *w2 = trand(nw, 0.2f);
    float *b = trand(OC, 0.1f), *y0 = talloc(no), *y0b = talloc(no), *y = talloc(no);
    conv2d_forward(y0, x, w, b, N, C, H, W, OC, 3, 1, 1);
    conv2d_forward(y0b, x, w2, b, N, C, H, W, OC, 3, 1, 1);
    ops_weights_frozen(1);
    for (int r = 0; r < 2; r++) { /* first call fills the cache, the second reads it */
        conv2d_forward(y, x, w, b, N, C, H, W, OC, 3, 1, 1);
        CHECK(!memcmp(y, y0, no * sizeof(float)), "frozen, call %d: different bits", r + 1);
        conv2d_forward(y, x, w2, b, N, C, H, W, OC, 3, 1, 1);
        CHECK(!memcmp(y, y0b, no * sizeof(float)), "frozen, second weights, call %d: different bits", r + 1);
    }
    ops_weights_frozen(1); /* nested */
    ops_weights_frozen(0);
    const float keep = w[5];
    w[5] += 0.5f; /* against the promise: the kept transform is used */
    conv2d_forward(y, x, w, b, N, C, H, W, OC, 3, 1, 1);
    CHECK(!memcmp(y, y0, no * sizeof(float)), "the cached transform was not used");
    ops_weights_frozen(0);
    conv2d_forward(y, x, w, b, N, C, H, W, OC, 3, 1, 1);
    CHECK(memcmp(y, y0, no * sizeof(float)) != 0, "the cache outlived ops_weights_frozen(0)");
    w[5] = keep;
    conv2d_forward(y, x, w, b, N, C, H, W, OC, 3, 1, 1);
    CHECK(!memcmp(y, y0, no * sizeof(float)), "unfrozen: different bits");
    tfree_all();
}

static void test_threads(void) {
    const int saved = ops_get_threads();
    float *r1[32], *r2[32];
    size_t n1[32], n2[32];
    run_threaded(1, r1, n1);
    CHECK(ops_get_threads() == 1, "ops_get_threads() = %d after set 1", ops_get_threads());
    run_threaded(2, r2, n2);
    CHECK(ops_get_threads() == 2, "ops_get_threads() = %d after set 2", ops_get_threads());
    double mx = 0;
    for (int k = 0; r1[k]; k++) {
        char what[32];
        snprintf(what, sizeof what, "threads result %d", k);
        /* only the summation order differs: 1e-5 abs + 1e-5 rel */
        mx = dmax(mx, cmpf(what, r2[k], r1[k], n1[k], 1e-5, 1e-5));
    }
    ops_set_threads(saved);
    printf("    1 vs 2 threads: max diff %.3g\n", mx);
    tfree_all();
}

int main(void) {
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
    RUN(test_layernorm);
    RUN(test_gelu);
    RUN(test_geglu);
    RUN(test_transpose_scale);
    RUN(test_timestep_embedding_ex);
    RUN(test_mha);
    RUN(test_mha_memory);
    RUN(test_weights_frozen);
    RUN(test_threads);
    return t_done();
}
