/* test_cls.c - the classifier of `d3po eval-model` (engine/classifier.h,
 * engine/ops_cls.c): average pooling and softmax cross-entropy against
 * reference values and central finite differences; the whole network on
 * the tape (loss = mean cross-entropy) against finite differences with
 * respect to its parameters and its input; the file round trip; moments
 * and the Frechet distance against closed forms. CPU backend (the CUDA
 * twins are compared in test_cuda). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "classifier.h"
#include "fd.h"
#include "ops.h"
#include "t.h"
#include "tape.h"

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static float urand(void) { /* [-1, 1) */
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (float)((double)(rs >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

/* ------------------------------------------------------------------ ops */

enum { N = 3, C = 4, HW = 5, K = 6 };
static float px[N * C * HW], pz[N * K], pr[N * C];
static int lab[N] = {0, 5, 2};

static double pool_loss(void *ctx) { /* sum(avgpool(x) * r) */
    (void)ctx;
    float out[N * C];
    avgpool_forward(out, px, N, C, HW);
    double L = 0;
    for (int i = 0; i < N * C; i++) L += (double)out[i] * pr[i];
    return L;
}
static double xent_loss(void *ctx) { /* mean cross-entropy */
    (void)ctx;
    float p[N * K], l[N];
    xent_forward(p, l, pz, lab, N, K);
    double L = 0;
    for (int i = 0; i < N; i++) L += l[i];
    return L / N;
}

static void test_avgpool(void) {
    for (int i = 0; i < N * C * HW; i++) px[i] = urand();
    for (int i = 0; i < N * C; i++) pr[i] = urand();
    float out[N * C];
    avgpool_forward(out, px, N, C, HW);
    for (int r = 0; r < N * C; r++) {
        double s = 0;
        for (int i = 0; i < HW; i++) s += px[r * HW + i];
        /* double sum, one float rounding */
        CHECK(fabs(out[r] - s / HW) <= 1e-7, "avgpool[%d] %.8g want %.8g", r, out[r], s / HW);
    }
    float g[N * C * HW];
    for (int i = 0; i < N * C * HW; i++) g[i] = 0.5f; /* backward accumulates */
    avgpool_backward(g, pr, N, C, HW);
    for (int i = 0; i < N * C * HW; i++) g[i] -= 0.5f;
    /* linear in x: the central difference is exact up to float rounding of
     * the loss (~1e-7 / 2h, h = 1e-2): 1e-4 */
    double mx = fd_check(pool_loss, NULL, "avgpool dx", px, N * C * HW, g, 1e-2f, 1e-4, urand);
    avgpool_backward(NULL, pr, N, C, HW); /* NULL: nothing to do, no crash */
    printf("    avgpool: max grad err %.3g\n", mx);
}

static void test_xent(void) {
    for (int i = 0; i < N * K; i++) pz[i] = 3 * urand();
    pz[K + 1] = 80.0f; /* a large logit: the softmax must not overflow */
    float p[N * K], l[N];
    xent_forward(p, l, pz, lab, N, K);
    for (int n = 0; n < N; n++) {
        double m = -1e30, s = 0, ps = 0;
        for (int k = 0; k < K; k++) m = fmax(m, pz[n * K + k]);
        for (int k = 0; k < K; k++) s += exp((double)pz[n * K + k] - m);
        const double want = m + log(s) - pz[n * K + lab[n]];
        /* double softmax, one float rounding of the loss: 1e-6 relative */
        CHECK(fabs(l[n] - want) <= 1e-6 * (1 + fabs(want)), "xent loss[%d] %.8g want %.8g", n, l[n], want);
        for (int k = 0; k < K; k++) ps += p[n * K + k];
        CHECK(fabs(ps - 1) < 1e-6, "xent probs of row %d sum to %.8g", n, ps);
    }
    float g[N * K];
    for (int i = 0; i < N * K; i++) g[i] = -0.25f;
    xent_backward(g, 1.0f, p, lab, N, K);
    for (int i = 0; i < N * K; i++) g[i] += 0.25f;
    /* smooth: truncation ~h^2 * |f'''| ~ 1e-5 at h = 5e-3; float rounding of
     * the per-row losses (~1e-7 * |L| / 2h ~ 1e-5): 2e-4 */
    double mx = fd_check(xent_loss, NULL, "xent dlogits", pz, N * K, g, 5e-3f, 2e-4, urand);
    xent_backward(NULL, 1.0f, p, lab, N, K);
    printf("    xent: max grad err %.3g\n", mx);
}

/* ------------------------------------------------------- the network */

static d3_classifier net;
static d3_tape *tp;
static float *grads, *ximg;
static int nlab[2] = {1, 2};
enum { S = 8, NB = 2 };

static double net_loss(void *ctx) {
    (void)ctx;
    const d3_backend *be = backend_cpu();
    tape_reset(tp);
    tape_set_grad(tp, 0);
    d3_tensor *x = tape_input(tp, NB, 3, S, S);
    memcpy(x->v, ximg, sizeof(float) * 3 * S * S * NB);
    d3_tensor *z = cls_forward(tp, &net, net.params, NULL, x, NULL);
    float *p = tape_alloc(tp, z->numel), *l = tape_alloc(tp, NB);
    be->xent_forward(p, l, z->v, nlab, NB, net.nclasses);
    tape_set_grad(tp, 1);
    return ((double)l[0] + l[1]) / NB;
}

static void test_network(void) {
    char err[D3_ERRLEN];
    char *names[3] = {"a", "b", "c"};
    CHECK(cls_init(&net, 4, S, 3, names, 7, err) == 0, "%s", err);
    const d3_backend *be = backend_cpu();
    tp = tape_new(be);
    /* biases and norm affines away from their init, so their gradients
     * are generic */
    for (size_t i = 0; i < net.nparams; i++) net.params[i] += 0.1f * urand();
    grads = calloc(net.nparams, sizeof(float));
    ximg = malloc(sizeof(float) * 3 * S * S * NB);
    for (int i = 0; i < 3 * S * S * NB; i++) ximg[i] = urand();
    tape_reset(tp);
    d3_tensor *x = tape_input(tp, NB, 3, S, S);
    memcpy(x->v, ximg, sizeof(float) * 3 * S * S * NB);
    d3_tensor *f, *z = cls_forward(tp, &net, net.params, grads, x, &f);
    CHECK(z->n == NB && z->c == 3 && f->c == 16, "shapes: logits [%d,%d], features %d", z->n, z->c, f->c);
    float *p = tape_alloc(tp, z->numel), *l = tape_alloc(tp, NB), *dz = tape_alloc(tp, z->numel);
    be->xent_forward(p, l, z->v, nlab, NB, 3);
    be->xent_backward(dz, 1.0f, p, nlab, NB, 3);
    tape_backward(tp, z, dz);
    float *gx = malloc(sizeof(float) * 3 * S * S * NB);
    memcpy(gx, x->g, sizeof(float) * 3 * S * S * NB);
    /* float32 forward of ~10 layers; loss ~1: rounding ~1e-6 / 2h with
     * h = 1e-2, curvature through group norm ~h^2: atol = rtol = 3e-3 */
    double m1 = fd_check(net_loss, NULL, "params", net.params, net.nparams, grads, 1e-2f, 3e-3, urand);
    double m2 = fd_check(net_loss, NULL, "input", ximg, 3 * S * S * NB, gx, 1e-2f, 3e-3, urand);
    printf("    network: max grad err params %.3g, input %.3g\n", m1, m2);
    free(gx);
}

static void test_file(void) {
    char err[D3_ERRLEN], path[64];
    snprintf(path, sizeof path, "/tmp/test_cls_%d.safetensors", (int)getpid());
    const int F = net.nfeat, K1 = net.nclasses + 1;
    net.mu = calloc((size_t)K1 * F, sizeof(float));
    net.cov = calloc((size_t)K1 * F * F, sizeof(float));
    net.count = calloc(K1, sizeof(float));
    net.hacc = calloc(K1, sizeof(float));
    net.mu[5] = 1.5f;
    net.hacc[3] = 0.75f;
    net.hacc[1] = NAN; /* a class without held-out images */
    cls_set_meta(&net, "train", "steps=1");
    CHECK(cls_save(&net, path, err) == 0, "%s", err);
    d3_classifier b;
    CHECK(cls_load(&b, path, err) == 0, "%s", err);
    CHECK(b.nparams == net.nparams && !memcmp(b.params, net.params, net.nparams * 4),
          "weights differ after the round trip");
    CHECK(b.mu && b.mu[5] == 1.5f && b.hacc[3] == 0.75f && isnan(b.hacc[1]),
          "statistics differ after the round trip");
    CHECK(!strcmp(b.class_names[2], "c"), "class names");
    CHECK(cls_get_meta(&b, "train") && !strcmp(cls_get_meta(&b, "train"), "steps=1"), "metadata");
    cls_free(&b);
    /* a file that is not a classifier: a clear error naming it */
    FILE *fp = fopen(path, "wb");
    fputs("garbage", fp);
    fclose(fp);
    CHECK(cls_load(&b, path, err) == -1 && strstr(err, path), "garbage accepted: %s", err);
    unlink(path);
    cls_free(&net);
    tape_free(tp);
    free(grads);
    free(ximg);
}

/* ------------------------------------------------------ Frechet distance */

static void test_frechet(void) {
    enum { F = 5 };
    double mu1[F] = {1, 2, 3, 4, 5}, mu2[F] = {1, 0, 3, 4, 6};
    double c1[F * F] = {0}, c2[F * F] = {0};
    /* diagonal: FD = |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2 */
    const double a[F] = {1, 4, 0.25, 9, 0}, b[F] = {4, 4, 1, 1, 2};
    double want = 4 + 1;
    for (int i = 0; i < F; i++) {
        c1[i * F + i] = a[i];
        c2[i * F + i] = b[i];
        want += (sqrt(a[i]) - sqrt(b[i])) * (sqrt(a[i]) - sqrt(b[i]));
    }
    double fd = cls_frechet(mu1, c1, mu2, c2, F);
    CHECK(fabs(fd - want) < 1e-9 * want, "diagonal FD %.12g want %.12g", fd, want);
    /* a rotated pair: the distance is invariant under the same rotation of
     * both; FD of a Gaussian with itself is 0 */
    const double th = 0.7, cs = cos(th), sn = sin(th);
    double Q[F * F] = {0}, r1[F * F], r2[F * F], m1[F], m2[F];
    for (int i = 0; i < F; i++) Q[i * F + i] = 1;
    Q[0] = cs; Q[1] = -sn; Q[F] = sn; Q[F + 1] = cs;
    Q[2 * F + 2] = cs; Q[2 * F + 3] = -sn; Q[3 * F + 2] = sn; Q[3 * F + 3] = cs;
    for (int i = 0; i < F; i++) {
        m1[i] = m2[i] = 0;
        for (int k = 0; k < F; k++) { m1[i] += Q[i * F + k] * mu1[k]; m2[i] += Q[i * F + k] * mu2[k]; }
        for (int j = 0; j < F; j++) {
            r1[i * F + j] = r2[i * F + j] = 0;
            for (int k = 0; k < F; k++) {
                r1[i * F + j] += Q[i * F + k] * a[k] * Q[j * F + k];
                r2[i * F + j] += Q[i * F + k] * b[k] * Q[j * F + k];
            }
        }
    }
    fd = cls_frechet(m1, r1, m2, r2, F);
    CHECK(fabs(fd - want) < 1e-8 * want, "rotated FD %.12g want %.12g", fd, want);
    fd = cls_frechet(m1, r1, m1, r1, F);
    CHECK(fabs(fd) < 1e-8, "FD of a Gaussian with itself %.3g", fd);
    /* moments: mean and unbiased covariance of 3 rows */
    const float rows[3 * 2] = {1, 2, 3, 6, 5, 10};
    double mu[2], cov[4];
    cls_moments(mu, cov, rows, 3, 2);
    CHECK(fabs(mu[0] - 3) < 1e-12 && fabs(mu[1] - 6) < 1e-12, "mean %g %g", mu[0], mu[1]);
    CHECK(fabs(cov[0] - 4) < 1e-12 && fabs(cov[1] - 8) < 1e-12 && fabs(cov[3] - 16) < 1e-12,
          "cov %g %g %g", cov[0], cov[1], cov[3]);
}

int main(void) {
    RUN(test_avgpool);
    RUN(test_xent);
    RUN(test_network);
    RUN(test_file);
    RUN(test_frechet);
    return t_done();
}
