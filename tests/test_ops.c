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
} gn_ctx;

static void gn_fwd(void *v) {
    gn_ctx *c = v;
    groupnorm_forward(c->out, c->mean, c->rstd, c->x, c->w, c->b, c->N, c->C, c->HW, c->G);
}

static void test_groupnorm(void) {
    rng_seed(3);
    /* N, C, HW, G */
    const int shapes[][4] = {{2, 6, 35, 1}, {2, 6, 35, 6}, {3, 6, 35, 3}, {1, 8, 5, 4},
                             {2, 12, 16, 4}, {1, 5, 7, 5}, {4, 32, 300, 8}};
    double fe = 0, ge = 0;
    for (int t = 0; t < 7; t++) {
        const int N = shapes[t][0], C = shapes[t][1], HW = shapes[t][2], G = shapes[t][3];
        const size_t nx = (size_t)N * C * HW;
        gn_ctx c = {N, C, HW, G, trand(nx, 1), trand(C, 0.5f), trand(C, 0.5f), talloc(nx),
                    talloc((size_t)N * G), talloc((size_t)N * G)};
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
                const double rs = 1.0 / sqrt(var + 1e-5);
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
        groupnorm_backward(dx, dw, db, r, c.x, c.w, c.mean, c.rstd, N, C, HW, G);
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
        groupnorm_backward(NULL, NULL, NULL, r, c.x, c.w, c.mean, c.rstd, N, C, HW, G);
        float *dx1 = talloc(nx);
        groupnorm_backward(dx1, NULL, NULL, r, c.x, c.w, c.mean, c.rstd, N, C, HW, G);
        cmpf("groupnorm dx alone", dx1, dx, nx, 1e-5, 1e-5); /* pattern round trip */
        /* parameter gradients without the input gradient (frozen input) */
        float *dw1 = talloc(C), *db1 = talloc(C);
        groupnorm_backward(NULL, dw1, db1, r, c.x, c.w, c.mean, c.rstd, N, C, HW, G);
        cmpf("groupnorm dw alone", dw1, dw, C, 1e-5, 1e-5);
        cmpf("groupnorm db alone", db1, db, C, 1e-5, 1e-5);
    }
    printf("    groupnorm: max fwd err %.3g, max grad err %.3g\n", fe, ge);
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
        groupnorm_forward(o, m, s, x, w, b, N, C, HW, G);
        groupnorm_backward(dx, dw, db, r, x, w, m, s, N, C, HW, G);
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
    RUN(test_silu);
    RUN(test_add);
    RUN(test_addbc);
    RUN(test_concat);
    RUN(test_upsample);
    RUN(test_attention);
    RUN(test_embedding);
    RUN(test_timestep_embedding);
    RUN(test_mse);
    RUN(test_threads);
    return t_done();
}
