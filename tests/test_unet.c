/* test_unet.c - the UNet as a whole: parameter table (names, count of the
 * yardstick architecture), architecture strings, and a finite-difference
 * gradient check of the whole model on a tiny configuration, through the
 * tape, including the gradient with respect to the input image. */
#include <stdlib.h>

#include "model.h"
#include "t.h"
#include "tape.h"
#include "unet.h"

static uint64_t rs = 88172645463325252ull;
static double urand(void) {
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (double)(rs >> 11) / 9007199254740992.0;
}

static void test_layout_yardstick(void) {
    unet_layout L;
    unet_arch a = unet_arch_default();
    char err[D3_ERRLEN];
    CHECK(unet_layout_build(&L, &a, err) == 0, "%s", err);
    /* bench/twin.py counts the same architecture at 1,637,251 parameters */
    CHECK(L.numel == 1637251, "numel %zu", L.numel);
    CHECK(L.nparams == 245, "nparams %d", L.nparams);
    const unet_param *p = unet_layout_find(&L, "down.0.res.1.conv1.weight");
    CHECK(p && p->ndim == 4 && p->shape[0] == 32 && p->shape[1] == 32 && p->shape[2] == 3, "conv1");
    p = unet_layout_find(&L, "up.1.res.2.skip.weight");
    CHECK(p && p->shape[0] == 64 && p->shape[1] == 96, "skip %d %d", p ? p->shape[0] : -1,
          p ? p->shape[1] : -1);
    CHECK(unet_layout_find(&L, "mid.attn.0.qkv.weight") != NULL, "mid attn");
    CHECK(unet_layout_find(&L, "class_embed.weight")->shape[0] == 101, "null class row");
    for (int i = 0; i < L.nparams; i++)
        for (int j = i + 1; j < L.nparams; j++)
            if (!strcmp(L.params[i].name, L.params[j].name)) CHECK(0, "duplicate %s", L.params[i].name);
    unet_layout_free(&L);
}

static void test_arch_strings(void) {
    unet_arch a = unet_arch_default();
    char err[D3_ERRLEN], s[256];
    CHECK(unet_arch_parse(&a, "base=16,mult=1.2.4,attn=none,size=16,classes=7,res=1", err) == 0, "%s", err);
    unet_arch_format(&a, s, sizeof s);
    CHECK(!strcmp(s, "base=16,mult=1.2.4,res=1,attn=none,size=16,classes=7"), "%s", s);
    unet_arch b = unet_arch_default();
    CHECK(unet_arch_parse(&b, s, err) == 0 && !memcmp(&a, &b, sizeof a), "round trip");
    struct { const char *s, *msg; } bad[] = {
        {"base=0", "base"}, {"mult=1..2", "mult"}, {"size=30,mult=1.2.2", "divisible"},
        {"foo=1", "unknown key"}, {"base", "key=value"}, {"classes=-3", "classes"},
        {"attn=x", "attn"}, {"base=31", "even"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unet_arch c = unet_arch_default();
        err[0] = 0;
        CHECK(unet_arch_parse(&c, bad[i].s, err) == -1 && strstr(err, bad[i].msg), "'%s' -> '%s'",
              bad[i].s, err);
    }
}

/* Whole-model gradient check. loss = sum(out * r) computed in double from
 * the float32 forward; central differences with h = 1e-2 on a random
 * subset of every parameter tensor and of the input. */
static double loss_of(const d3_model *m, d3_tape *tp, const float *x, const float *t, const int *y,
                      const float *r, int N) {
    int S = m->L.arch.size;
    tape_reset(tp);
    tape_set_grad(tp, 0);
    d3_tensor *in = tape_input(tp, N, 3, S, S);
    memcpy(in->v, x, in->numel * sizeof(float));
    d3_tensor *out = unet_forward(tp, &m->L, m->params, NULL, in, t, y);
    double l = 0;
    for (size_t i = 0; i < out->numel; i++) l += (double)out->v[i] * r[i];
    tape_set_grad(tp, 1);
    return l;
}

static void test_whole_model_grad(void) {
    char err[D3_ERRLEN];
    unet_arch a = unet_arch_default();
    CHECK(unet_arch_parse(&a, "base=8,mult=1.2,res=1,attn=4,size=8,classes=3", err) == 0, "%s", err);
    d3_model m;
    CHECK(model_init(&m, &a, NULL, 3, err) == 0, "%s", err);
    /* non-zero everywhere (the default init zeroes conv_out/conv2/proj,
     * which would hide the gradient of every earlier layer) */
    for (size_t i = 0; i < m.L.numel; i++) m.params[i] = (float)(urand() * 0.6 - 0.3);
    for (int i = 0; i < m.L.nparams; i++)
        if (strstr(m.L.params[i].name, "norm") && strstr(m.L.params[i].name, ".weight"))
            for (size_t k = 0; k < m.L.params[i].numel; k++)
                m.params[m.L.params[i].offset + k] = (float)(0.8 + 0.4 * urand());
    int N = 2, S = a.size;
    size_t D = 3 * S * S;
    float *x = malloc(N * D * sizeof(float)), *r = malloc(N * D * sizeof(float));
    for (size_t i = 0; i < N * D; i++) { x[i] = (float)(urand() * 2 - 1); r[i] = (float)(urand() * 2 - 1); }
    float t[2] = {37, 803};
    int y[2] = {1, 3}; /* 3 = the null class */
    float *grads = calloc(m.L.numel, sizeof(float));
    d3_tape *tp = tape_new(backend_cpu());
    tape_reset(tp);
    d3_tensor *in = tape_input(tp, N, 3, S, S);
    memcpy(in->v, x, N * D * sizeof(float));
    d3_tensor *out = unet_forward(tp, &m.L, m.params, grads, in, t, y);
    float *dout = tape_alloc(tp, out->numel);
    memcpy(dout, r, out->numel * sizeof(float));
    tape_backward(tp, out, dout);
    float *gx = malloc(N * D * sizeof(float));
    memcpy(gx, in->g, N * D * sizeof(float));

    /* Tolerance |a - n| <= 4e-3 + 3e-2 |n|: float32 forward through ~40
     * layers (loss rounding ~1e-5..4e-5 absolute, / 2h = 2e-2 -> up to
     * ~2e-3; the 16-channel 3x3 convs run as Winograd F(4x4,3x3), whose
     * transforms round ~3x more than a direct sum: measured 3.5e-3 on
     * parameters whose gradient is ~0) plus the O(h^2) truncation of
     * central differences through GroupNorm/SiLU. A wrong gradient
     * formula gives errors of the size of the gradient itself. */
    const double h = 1e-2, atol = 4e-3, rtol = 3e-2;
    double worst = 0;
    int checked = 0, bad = 0;
    for (int pi = 0; pi < m.L.nparams; pi++) {
        const unet_param *p = &m.L.params[pi];
        for (int s = 0; s < 3; s++) {
            size_t k = p->offset + (size_t)(urand() * p->numel);
            float save = m.params[k];
            m.params[k] = save + (float)h;
            double lp = loss_of(&m, tp, x, t, y, r, N);
            m.params[k] = save - (float)h;
            double lm = loss_of(&m, tp, x, t, y, r, N);
            m.params[k] = save;
            double num = (lp - lm) / (2 * h), an = grads[k];
            double e = fabs(an - num);
            if (e > atol + rtol * fabs(num)) {
                if (bad++ < 10) fprintf(stderr, "  %s[%zu]: analytic %g numeric %g\n", p->name, k - p->offset, an, num);
            }
            if (e > worst) worst = e;
            checked++;
        }
    }
    for (int s = 0; s < 40; s++) {
        size_t k = (size_t)(urand() * N * D);
        float save = x[k];
        x[k] = save + (float)h;
        double lp = loss_of(&m, tp, x, t, y, r, N);
        x[k] = save - (float)h;
        double lm = loss_of(&m, tp, x, t, y, r, N);
        x[k] = save;
        double num = (lp - lm) / (2 * h);
        double e = fabs(gx[k] - num);
        if (e > atol + rtol * fabs(num) && bad++ < 10) fprintf(stderr, "  x[%zu]: analytic %g numeric %g\n", k, gx[k], num);
        if (e > worst) worst = e;
        checked++;
    }
    printf("  whole-model gradient: %d elements checked, max abs error %.3g\n", checked, worst);
    CHECK(bad == 0, "%d of %d gradient elements outside tolerance", bad, checked);
    tape_free(tp);
    free(x); free(r); free(grads); free(gx);
    model_free(&m);
}

int main(void) {
    RUN(test_layout_yardstick);
    RUN(test_arch_strings);
    RUN(test_whole_model_grad);
    return t_done();
}
