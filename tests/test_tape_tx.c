/* test_tape_tx.c - the tape's transformer layers (tape.h) as a whole: a
 * small Stable Diffusion-style transformer block (group norm with eps 1e-6,
 * map -> tokens, layer norm, self-attention, cross-attention onto a
 * "text" context, GEGLU feed-forward, a causal self-attention of one
 * tensor with itself, GELU, quick GELU, scale, tokens -> map, reshape, and
 * a diffusers timestep embedding added over space) run forward through the
 * tape on the CPU backend, and its tape_backward gradients with respect to
 * the input map, the context and every parameter checked against central
 * finite differences of loss = sum(out * r), computed in double.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "fd.h"
#include "t.h"
#include "tape.h"

static uint64_t rs = 0x2545F4914F6CDD1Dull;
static float urand(void) { /* [-1, 1) */
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (float)((double)(rs >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

enum { N = 2, C = 8, H = 3, W = 4, T = H * W, TC = 5, DC = 6, F = 16 };

/* parameter table: offsets into one flat buffer */
enum {
    GN_W, GN_B, LN1_W, LN1_B, WQ, WK, WV, WO, BO, LN2_W, LN2_B, WQ2, WK2, WV2, LN3_W, LN3_B,
    WF1, BF1, WF2, BF2, NPAR
};
static const int psize[NPAR] = {C, C, C, C, C * C, C * C, C * C, C * C, C, C, C, C * C, C * DC,
                                C * DC, C, C, 2 * F * C, 2 * F, C * F, C};
static size_t poff[NPAR + 1];

static float *params, *grads, *x, *ctx, *gx, *gctx, *r;
static const float tsteps[N] = {999.0f, 21.0f};

static const float *P(int i) { return params + poff[i]; }
static float *G(int i) { return grads + poff[i]; }

/* The block; returns the output tensor [N, C, H, W]. */
static d3_tensor *block(d3_tape *tp, d3_tensor **xin, d3_tensor **cin) {
    const d3_backend *be = tape_backend(tp);
    d3_tensor *xm = tape_input(tp, N, C, H, W), *cx = tape_input(tp, N, TC, 1, DC);
    be->upload(xm->v, x, sizeof(float) * xm->numel);
    be->upload(cx->v, ctx, sizeof(float) * cx->numel);
    *xin = xm;
    *cin = cx;
    d3_tensor *h = tape_groupnorm_eps(tp, xm, P(GN_W), P(GN_B), G(GN_W), G(GN_B), 2, 1e-6f);
    d3_tensor *t = tape_to_tokens(tp, h); /* [N, T, 1, C] */
    /* self-attention, 2 heads */
    d3_tensor *a = tape_layernorm(tp, t, P(LN1_W), P(LN1_B), G(LN1_W), G(LN1_B), 1e-5f);
    d3_tensor *q = tape_dense(tp, a, P(WQ), NULL, G(WQ), NULL, C);
    d3_tensor *k = tape_dense(tp, a, P(WK), NULL, G(WK), NULL, C);
    d3_tensor *v = tape_dense(tp, a, P(WV), NULL, G(WV), NULL, C);
    a = tape_mha(tp, q, k, v, 2, 0);
    a = tape_dense(tp, a, P(WO), P(BO), G(WO), G(BO), C);
    t = tape_add(tp, t, a);
    /* cross-attention onto the context, 2 heads, Tq = 12, Tk = 5 */
    a = tape_layernorm(tp, t, P(LN2_W), P(LN2_B), G(LN2_W), G(LN2_B), 1e-5f);
    q = tape_dense(tp, a, P(WQ2), NULL, G(WQ2), NULL, C);
    k = tape_dense(tp, cx, P(WK2), NULL, G(WK2), NULL, C);
    v = tape_dense(tp, cx, P(WV2), NULL, G(WV2), NULL, C);
    t = tape_add(tp, t, tape_mha(tp, q, k, v, 2, 0));
    /* GEGLU feed-forward */
    a = tape_layernorm(tp, t, P(LN3_W), P(LN3_B), G(LN3_W), G(LN3_B), 1e-5f);
    a = tape_geglu(tp, tape_dense(tp, a, P(WF1), P(BF1), G(WF1), G(BF1), 2 * F));
    t = tape_add(tp, t, tape_dense(tp, a, P(WF2), P(BF2), G(WF2), G(BF2), C));
    /* causal self-attention of one tensor with itself (q = k = v), 4 heads */
    t = tape_add(tp, t, tape_quick_gelu(tp, tape_mha(tp, t, t, t, 4, 1)));
    t = tape_add(tp, t, tape_gelu(tp, tape_scale(tp, t, 0.5f)));
    d3_tensor *y = tape_to_nchw(tp, t, H, W);
    y = tape_reshape(tp, tape_reshape(tp, y, N, C * H * W, 1, 1), N, C, H, W);
    d3_tensor *e = tape_timestep_embedding_ex(tp, tsteps, N, C, 0, 1.0f);
    return tape_addbc(tp, y, e);
}

static double loss(d3_tape *tp) {
    tape_reset(tp);
    d3_tensor *a, *b;
    d3_tensor *y = block(tp, &a, &b);
    double L = 0;
    for (size_t i = 0; i < y->numel; i++) L += (double)y->v[i] * r[i];
    return L;
}

static double loss_cb(void *tp) { return loss(tp); }

/* Central differences at up to 40 elements of buf[n] against g. h = 1e-2
 * on values ~1: truncation h^2/6 |L'''| ~ 1e-5 * O(10) through the whole
 * block; float rounding of the ~200 outputs, 6e-8 * sqrt(200) * |out| /
 * (2h) ~ 1e-4. atol 2e-3 + rtol 2e-3. */
static double fd(d3_tape *tp, const char *what, float *buf, size_t n, const float *g) {
    return fd_check(loss_cb, tp, what, buf, n, g, 1e-2f, 2e-3, urand);
}

static void test_block_gradients(void) {
    for (int i = 0; i < NPAR; i++) poff[i + 1] = poff[i] + psize[i];
    params = calloc(poff[NPAR], sizeof(float));
    grads = calloc(poff[NPAR], sizeof(float));
    const size_t nx = (size_t)N * C * H * W, nc = (size_t)N * TC * DC;
    x = malloc(nx * sizeof(float)); gx = malloc(nx * sizeof(float)); r = malloc(nx * sizeof(float));
    ctx = malloc(nc * sizeof(float)); gctx = malloc(nc * sizeof(float));
    for (size_t i = 0; i < poff[NPAR]; i++) params[i] = 0.4f * urand();
    for (int i = 0; i < C; i++) { /* norms' scales near 1 */
        params[poff[GN_W] + i] += 1.0f;
        params[poff[LN1_W] + i] += 1.0f;
        params[poff[LN2_W] + i] += 1.0f;
        params[poff[LN3_W] + i] += 1.0f;
    }
    for (size_t i = 0; i < nx; i++) { x[i] = 2.0f * urand(); r[i] = urand(); }
    for (size_t i = 0; i < nc; i++) ctx[i] = urand();

    d3_tape *tp = tape_new(backend_cpu());
    d3_tensor *xin, *cin;
    d3_tensor *y = block(tp, &xin, &cin);
    CHECK(y->n == N && y->c == C && y->h == H && y->w == W, "output shape");
    float *dy = tape_alloc(tp, y->numel);
    memcpy(dy, r, y->numel * sizeof(float));
    tape_backward(tp, y, dy);
    memcpy(gx, xin->g, nx * sizeof(float));
    memcpy(gctx, cin->g, nc * sizeof(float));
    int nonfinite = 0;
    for (size_t i = 0; i < y->numel; i++) nonfinite += !isfinite(y->v[i]);
    CHECK(nonfinite == 0, "%d non-finite outputs", nonfinite);

    double mx = fd(tp, "input map", x, nx, gx);
    mx = fmax(mx, fd(tp, "context", ctx, nc, gctx));
    static const char *names[NPAR] = {"gn.w", "gn.b", "ln1.w", "ln1.b", "wq", "wk", "wv", "wo",
                                      "bo", "ln2.w", "ln2.b", "wq2", "wk2", "wv2", "ln3.w",
                                      "ln3.b", "wf1", "bf1", "wf2", "bf2"};
    for (int i = 0; i < NPAR; i++) {
        mx = fmax(mx, fd(tp, names[i], params + poff[i], psize[i], grads + poff[i]));
        double gn = 0;
        for (int j = 0; j < psize[i]; j++) gn += fabs(grads[poff[i] + j]);
        CHECK(gn > 0, "%s: zero gradient (not connected?)", names[i]);
    }
    printf("    transformer block (%zu parameters): max |analytic - numeric| %.3g\n",
           poff[NPAR], mx);
    tape_free(tp);
    free(params); free(grads); free(x); free(gx); free(r); free(ctx); free(gctx);
}

int main(void) {
    RUN(test_block_gradients);
    return t_done();
}
