/* test_sd_clip.c - CLIP's text encoder (engine/sd/clip.c) without Python:
 * its config reader (defaults, every rejected value), its layout (names,
 * shapes, count), the causal mask (a later token never changes an earlier
 * state), and the gradients of the whole encoder on a tiny random config,
 * quick_gelu and gelu, against central finite differences: every
 * parameter tensor (40 sampled elements each) of loss = sum(out * r).
 * The numbers against transformers are tests/test_sd_text.sh's job. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "sd/clip.h"
#include "fd.h"
#include "t.h"
#include "tape.h"

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static float urand(void) { /* [-1, 1) */
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (float)((double)(rs >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static int parse(const char *text, sd_clip_config *c, char *err) {
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    int rc = sd_clip_config_from_json(c, j, "te/config.json", err);
    json_decref(j);
    return rc;
}

static void test_config(void) {
    sd_clip_config c;
    char err[D3_ERRLEN];
    CHECK(parse("{}", &c, err) == 0, "empty config: %s", err);
    CHECK(c.vocab_size == 49408 && c.hidden_size == 512 && c.intermediate_size == 2048 &&
              c.num_hidden_layers == 12 && c.num_attention_heads == 8 && c.max_position_embeddings == 77 &&
              c.hidden_act == SD_ACT_QUICK_GELU && c.layer_norm_eps == 1e-5f,
          "CLIPTextConfig's defaults");
    CHECK(parse("{\"hidden_size\": 1024, \"intermediate_size\": 4096, \"num_hidden_layers\": 23, "
                "\"num_attention_heads\": 16, \"hidden_act\": \"gelu\", \"layer_norm_eps\": 1e-05, "
                "\"architectures\": [\"CLIPTextModel\"], \"model_type\": \"clip_text_model\", "
                "\"projection_dim\": 512, \"torch_dtype\": \"float16\"}", &c, err) == 0,
          "SD 2's config: %s", err);
    CHECK(c.hidden_act == SD_ACT_GELU && c.num_hidden_layers == 23 && c.hidden_size == 1024, "SD 2's values");
    static const struct { const char *json, *want; } bad[] = {
        {"{\"hidden_act\": \"gelu_new\"}", "te/config.json: key \"hidden_act\": expected \"quick_gelu\" or \"gelu\""},
        {"{\"hidden_size\": \"768\"}", "te/config.json: key \"hidden_size\": expected a positive integer"},
        {"{\"num_hidden_layers\": 0}", "key \"num_hidden_layers\": expected a positive integer"},
        {"{\"hidden_size\": 100, \"num_attention_heads\": 8}", "key \"num_attention_heads\": 8 does not divide"},
        {"{\"hidden_size\": 512, \"num_attention_heads\": 2}", "heads of 256 features, at most 160"},
        {"{\"layer_norm_eps\": -1}", "key \"layer_norm_eps\""},
        {"{\"architectures\": [\"CLIPTextModelWithProjection\"]}", "key \"architectures\""},
        {"{\"model_type\": \"clip\"}", "key \"model_type\""},
        {"[]", "te/config.json: expected a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        CHECK(parse(bad[i].json, &c, err) != 0, "%s accepted", bad[i].json);
        CHECK(strstr(err, bad[i].want) != NULL, "%s: error '%s' lacks '%s'", bad[i].json, err, bad[i].want);
    }
}

/* the tiny config of the gradient test */
enum { V = 11, D = 8, I = 12, NL = 2, H = 2, P = 7, N = 2, T = 5 };

static void test_layout(void) {
    sd_clip_config c = {V, D, I, NL, H, P, SD_ACT_QUICK_GELU, 1e-5f};
    sd_layout L = {0};
    char err[D3_ERRLEN];
    CHECK(sd_clip_layout(&c, &L, err) == 0, "%s", err);
    CHECK(L.n == 2 + 16 * NL + 2, "%d tensors", L.n);
    size_t want = (size_t)V * D + P * D + NL * (4 * (D * D + D) + 2 * D + I * D + I + D * I + D + 2 * D) + 2 * D, got = 0;
    for (int i = 0; i < L.n; i++) got += L.p[i].numel;
    CHECK(got == want, "%zu parameters, expected %zu", got, want);
    const sd_param *p = sd_layout_find(&L, "text_model.encoder.layers.1.mlp.fc1.weight");
    CHECK(p && p->ndim == 2 && p->shape[0] == I && p->shape[1] == D, "fc1 shape");
    p = sd_layout_find(&L, "text_model.encoder.layers.0.self_attn.out_proj.bias");
    CHECK(p && p->ndim == 1 && p->shape[0] == D, "out_proj.bias");
    CHECK(sd_layout_find(&L, "text_model.embeddings.position_embedding.weight") &&
              sd_layout_find(&L, "text_model.final_layer_norm.bias"),
          "embeddings and final norm named as transformers names them");
    sd_layout_free(&L);
}

static sd_clip_config cfg;
static sd_layout lay;
static float *params, *grads, *r;
static const int32_t ids[N * T] = {9, 3, 0, 5, 10, 9, 7, 7, 1, 10};

static double loss(d3_tape *tp) {
    tape_reset(tp);
    d3_tensor *y = sd_clip_forward(tp, &cfg, &lay, params, grads, ids, N, T);
    double L = 0;
    for (size_t i = 0; i < y->numel; i++) L += (double)y->v[i] * r[i];
    return L;
}

static double loss_cb(void *tp) { return loss(tp); }

/* Central differences (h = 3e-3) at up to 40 elements per tensor. At
 * h = 1e-2 the worst gelu error was 1.3e-2 and fell 11x at h = 3e-3: the
 * h^2/6 |L'''| truncation of parameters ~0.5 through two layers and three
 * layer norms, not the gradient. Float rounding of the 80 outputs at
 * h = 3e-3: ~6e-8 * 9 * |out| / 2h ~ 3e-4. atol 2e-3 + rtol 2e-3. */
static double fd(d3_tape *tp, const char *what, float *buf, size_t n, const float *g) {
    return fd_check(loss_cb, tp, what, buf, n, g, 3e-3f, 2e-3, urand);
}

static void gradients(int act) {
    char err[D3_ERRLEN];
    cfg = (sd_clip_config){V, D, I, NL, H, P, act, 1e-5f};
    memset(&lay, 0, sizeof lay);
    CHECK(sd_clip_layout(&cfg, &lay, err) == 0, "%s", err);
    params = calloc(lay.numel, sizeof(float));
    grads = calloc(lay.numel, sizeof(float));
    float *g0 = calloc(lay.numel, sizeof(float));
    r = malloc(sizeof(float) * N * T * D);
    for (size_t i = 0; i < lay.numel; i++) params[i] = 0.5f * urand();
    for (int i = 0; i < lay.n; i++) /* norms' scales near 1 */
        if (strstr(lay.p[i].name, "norm") && strstr(lay.p[i].name, ".weight"))
            for (size_t j = 0; j < lay.p[i].numel; j++) params[lay.p[i].off + j] += 1.0f;
    for (int i = 0; i < N * T * D; i++) r[i] = urand();

    d3_tape *tp = tape_new(backend_cpu());
    d3_tensor *y = sd_clip_forward(tp, &cfg, &lay, params, grads, ids, N, T);
    CHECK(y->n == N && y->c == T && y->h == 1 && y->w == D, "output [%d,%d,%d,%d]", y->n, y->c, y->h, y->w);
    float *dy = tape_alloc(tp, y->numel);
    memcpy(dy, r, y->numel * sizeof(float));
    tape_backward(tp, y, dy);
    memcpy(g0, grads, lay.numel * sizeof(float));
    double mx = 0;
    for (int i = 0; i < lay.n; i++) {
        const sd_param *p = &lay.p[i];
        mx = fmax(mx, fd(tp, p->name, params + p->off, p->numel, g0 + p->off));
        double gn = 0;
        for (size_t j = 0; j < p->numel; j++) gn += fabs(g0[p->off + j]);
        /* token rows never looked up (ids 2, 4, 6, 8) and position rows >= T get no gradient; all others do */
        CHECK(gn > 0, "%s: zero gradient (not connected?)", p->name);
    }
    printf("    %s encoder (%zu parameters): max |analytic - numeric| %.3g\n",
           act == SD_ACT_GELU ? "gelu" : "quick_gelu", lay.numel, mx);

    /* causal: changing the last token of prompt 0 leaves its first T-1 states alone */
    tape_set_grad(tp, 0);
    tape_reset(tp);
    y = sd_clip_forward(tp, &cfg, &lay, params, NULL, ids, N, T);
    float *a = malloc(sizeof(float) * y->numel);
    memcpy(a, y->v, sizeof(float) * y->numel);
    int32_t ids2[N * T];
    memcpy(ids2, ids, sizeof ids2);
    ids2[T - 1] = 2;
    tape_reset(tp);
    y = sd_clip_forward(tp, &cfg, &lay, params, NULL, ids2, N, T);
    double before = 0, last = 0;
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
            double e = fabs(a[t * D + d] - y->v[t * D + d]);
            if (t < T - 1) before = fmax(before, e);
            else last = fmax(last, e);
        }
    CHECK(before == 0 && last > 0, "causal mask: earlier states moved by %g, the last by %g", before, last);
    free(a);
    tape_free(tp);
    sd_layout_free(&lay);
    free(params); free(grads); free(g0); free(r);
}

static void test_gradients_quick_gelu(void) { gradients(SD_ACT_QUICK_GELU); }
static void test_gradients_gelu(void) { gradients(SD_ACT_GELU); }

int main(void) {
    RUN(test_config);
    RUN(test_layout);
    RUN(test_gradients_quick_gelu);
    RUN(test_gradients_gelu);
    return t_done();
}
