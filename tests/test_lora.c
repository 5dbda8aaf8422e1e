/* test_lora.c - LoRA adapters on the SD UNet without the reference stack:
 * the default targets and rank on tiny UNets, adapters off (or up = 0)
 * giving the base's exact bits, finite-difference checks of the adapter
 * gradients through a whole tiny UNet (base frozen), the low-memory
 * forward's same bits with adapters, file round trips in the kohya and
 * diffusers namings, and one-line errors for files that do not fit.
 * Parity with diffusers/peft is tests/test_lora.sh. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "lora.h"
#include "safetensors.h"
#include "sd/sdunet.h"
#include "t.h"
#include "tape.h"

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static double urand(void) {
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (double)(rs >> 11) / 9007199254740992.0;
}

/* tiny UNets: conv projections with a mid block; linear projections, two
 * transformer layers, no mid block (test_sdunet.c's) */
static const char *TINY_CONV =
    "{\"attention_head_dim\": 2, \"block_out_channels\": [8, 16], \"cross_attention_dim\": 8,"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"layers_per_block\": 1,"
    " \"norm_num_groups\": 4, \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"]}";
static const char *TINY_LINEAR =
    "{\"attention_head_dim\": [2, 4], \"block_out_channels\": [8, 16], \"cross_attention_dim\": 8,"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"], \"layers_per_block\": 1,"
    " \"norm_num_groups\": 4, \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"],"
    " \"use_linear_projection\": true, \"mid_block_type\": null, \"flip_sin_to_cos\": false,"
    " \"freq_shift\": 1, \"transformer_layers_per_block\": [1, 2]}";

typedef struct {
    sd_unet_config u;
    sd_layout L;
    float *params, *x, *ctx, *r;
    float t[2];
    int N, h, w, T;
    lora_set *s;
} model;

static void model_new(model *m, const char *cfg) {
    char err[D3_ERRLEN];
    memset(m, 0, sizeof *m);
    json_t *j = json_loads(cfg, 0, NULL);
    CHECK(j && sd_unet_config_from_json(&m->u, j, "unet/config.json", err) == 0, "%s", err);
    json_decref(j);
    CHECK(sd_unet_layout(&m->u, &m->L, err) == 0, "%s", err);
    m->params = malloc(m->L.numel * sizeof(float));
    for (size_t i = 0; i < m->L.numel; i++) m->params[i] = (float)(urand() * 0.6 - 0.3);
    for (int i = 0; i < m->L.n; i++)
        if (strstr(m->L.p[i].name, "norm") && strstr(m->L.p[i].name, ".weight"))
            for (size_t k = 0; k < m->L.p[i].numel; k++)
                m->params[m->L.p[i].off + k] = (float)(0.8 + 0.4 * urand());
    m->N = 2; m->h = 4; m->w = 4; m->T = 5;
    size_t nx = (size_t)m->N * m->u.in_channels * m->h * m->w, nc = (size_t)m->N * m->T * m->u.cross_dim;
    m->x = malloc(nx * sizeof(float));
    m->ctx = malloc(nc * sizeof(float));
    for (size_t i = 0; i < nx; i++) m->x[i] = (float)(urand() * 2 - 1);
    for (size_t i = 0; i < nc; i++) m->ctx[i] = (float)(urand() * 2 - 1);
    m->t[0] = 801; m->t[1] = 1;
}

static void model_free(model *m) {
    free(m->params); free(m->x); free(m->ctx); free(m->r);
    sd_layout_free(&m->L);
}

static d3_tensor *forward(model *m, d3_tape *tp, const lora_set *s) {
    d3_tensor *x = tape_input(tp, m->N, m->u.in_channels, m->h, m->w);
    memcpy(x->v, m->x, x->numel * sizeof(float));
    d3_tensor *ctx = tape_input(tp, m->N, m->T, 1, m->u.cross_dim);
    memcpy(ctx->v, m->ctx, ctx->numel * sizeof(float));
    return sd_unet_forward_lora(tp, &m->u, &m->L, m->params, NULL, x, m->t, ctx, s);
}

/* host copy of the forward's output */
static float *run(model *m, const lora_set *s, size_t *n) {
    d3_tape *tp = tape_new(backend_cpu());
    tape_set_grad(tp, 0);
    d3_tensor *y = forward(m, tp, s);
    float *out = malloc(y->numel * sizeof(float));
    memcpy(out, y->v, y->numel * sizeof(float));
    *n = y->numel;
    tape_free(tp);
    return out;
}

static void randomize_up(lora_set *s, double amp) {
    for (int i = 0; i < s->n; i++)
        for (size_t k = 0; k < (size_t)s->m[i].out * s->m[i].rank; k++)
            s->params[s->m[i].up + k] = (float)((urand() * 2 - 1) * amp);
}

static void test_defaults(void) {
    model m;
    char err[D3_ERRLEN];
    model_new(&m, TINY_CONV);
    lora_set s;
    CHECK(lora_init(&s, &m.L, NULL, 0, 4, 4.0f, 1, err) == 0, "%s", err);
    /* conv model: transformers in down block 0 (1), the mid block (1), up
     * block 1 (2); each 2 attentions (attn1, attn2) x 4 projections */
    CHECK(s.n == 4 * 2 * 4, "%d modules, expected 32", s.n);
    const lora_module *q = lora_find(&s, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k");
    CHECK(q && q->in == 8 && q->out == 8 && q->rank == 4 && q->alpha == 4.0f, "attn2.to_k: %p", (void *)q);
    CHECK(lora_find(&s, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0") != NULL,
          "to_out.0 is a default target");
    CHECK(lora_find(&s, "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2") == NULL,
          "ff.net.2 is not a default target");
    /* up = 0: the adapted model is the base, bit for bit; so is scale 0 */
    size_t n;
    float *base = run(&m, NULL, &n), *same = run(&m, &s, &n);
    CHECK(!memcmp(base, same, n * sizeof(float)), "up = 0 differs from the base");
    randomize_up(&s, 0.5);
    float *moved = run(&m, &s, &n);
    CHECK(memcmp(base, moved, n * sizeof(float)) != 0, "non-zero adapters change nothing");
    s.scale = 0;
    float *off = run(&m, &s, &n);
    CHECK(!memcmp(base, off, n * sizeof(float)), "scale 0 differs from the base");
    free(base); free(same); free(moved); free(off);
    /* configurable targets; unknown ones are errors */
    lora_set t;
    const char *tg[2] = {"ff.net.2", "to_v"};
    CHECK(lora_init(&t, &m.L, tg, 2, 2, 1.0f, 1, err) == 0, "%s", err);
    CHECK(t.n == 4 * (1 + 2), "%d modules, expected 12", t.n);
    lora_free(&t);
    const char *bad[1] = {"conv1"};
    CHECK(lora_init(&t, &m.L, bad, 1, 2, 1.0f, 1, err) == -1 && strstr(err, "'conv1'"), "%s", err);
    CHECK(lora_init(&t, &m.L, NULL, 0, 0, 1.0f, 1, err) == -1 && strstr(err, "rank 0"), "%s", err);
    lora_free(&s);
    model_free(&m);
}

static model *fdm;
static d3_tape *fdtp;  /* reused: a new arena per evaluation costs more than the forward */
static double fd_loss(void) {
    tape_reset(fdtp);
    tape_set_grad(fdtp, 0);
    d3_tensor *y = forward(fdm, fdtp, fdm->s);
    double l = 0;
    for (size_t i = 0; i < y->numel; i++) l += (double)y->v[i] * fdm->r[i];
    return l;
}

/* loss = sum(out * r): two elements of every adapter matrix against central
 * differences, the base frozen (no gradient buffer at all). */
static void fd_unet(const char *cfg, const char *what) {
    model m;
    char err[D3_ERRLEN];
    model_new(&m, cfg);
    lora_set s, s2;
    CHECK(lora_init(&s, &m.L, NULL, 0, 4, 8.0f, 7, err) == 0, "%s", err);
    randomize_up(&s, 0.3);
    s.scale = 0.7f;
    /* a second set chained after the first, on other targets, trained too */
    const char *tg[1] = {"ff.net.0.proj"};
    CHECK(lora_init(&s2, &m.L, tg, 1, 2, 2.0f, 8, err) == 0, "%s", err);
    randomize_up(&s2, 0.3);
    s.next = &s2;
    s.grads = calloc(s.numel, sizeof(float));
    s2.grads = calloc(s2.numel, sizeof(float));
    m.s = &s;
    d3_tape *tp = tape_new(backend_cpu());
    d3_tensor *y = forward(&m, tp, &s);
    m.r = malloc(y->numel * sizeof(float));
    for (size_t i = 0; i < y->numel; i++) m.r[i] = (float)(urand() * 2 - 1);
    float *dy = tape_alloc(tp, y->numel);
    memcpy(dy, m.r, y->numel * sizeof(float));
    tape_backward(tp, y, dy);
    fdm = &m;
    fdtp = tp;

    /* |a - n| <= 2e-3 + 3e-2 |n|, test_sdunet's tolerance for this UNet:
     * float32 loss rounding (~1e-5) over 2h, plus the O(h^2) truncation of
     * central differences through the norms, softmax and GELU */
    const double h = 1e-2, atol = 2e-3, rtol = 3e-2;
    double worst = 0;
    int checked = 0, bad = 0;
    lora_set *sets[2] = {&s, &s2};
    for (int si = 0; si < 2; si++) {
        lora_set *S = sets[si];
        for (int mi = 0; mi < S->n; mi++) {
            const lora_module *md = &S->m[mi];
            for (int e = 0; e < 4; e++) {
                size_t k = e < 2 ? md->down + (size_t)(urand() * md->rank * md->in)
                                 : md->up + (size_t)(urand() * md->out * md->rank);
                float save = S->params[k];
                S->params[k] = save + (float)h;
                double lp = fd_loss();
                S->params[k] = save - (float)h;
                double lm = fd_loss();
                S->params[k] = save;
                double num = (lp - lm) / (2 * h), an = S->grads[k], d = fabs(an - num);
                if (d > atol + rtol * fabs(num) && bad++ < 10)
                    fprintf(stderr, "  %s %s.%s: analytic %g numeric %g\n", what, md->name,
                            e < 2 ? "down" : "up", an, num);
                if (d > worst) worst = d;
                checked++;
            }
        }
    }
    printf("  %s: %d adapter gradient elements checked (%d + %d modules), max abs error %.3g\n",
           what, checked, s.n, s2.n, worst);
    CHECK(bad == 0, "%s: %d of %d adapter gradient elements outside tolerance", what, bad, checked);
    tape_free(tp);

    /* the low-memory forward with adapters: the same bits */
    size_t n;
    float *full = run(&m, &s, &n), *lean = malloc(n * sizeof(float));
    CHECK(sd_unet_forward_lowmem_lora(backend_cpu(), &m.u, &m.L, m.params, m.x, m.N, m.h, m.w, m.t,
                                      m.ctx, m.T, lean, &s, err) == 0, "%s", err);
    CHECK(!memcmp(full, lean, n * sizeof(float)), "%s: lowmem with adapters differs", what);
    free(full); free(lean);
    free(s.grads); free(s2.grads);
    s.grads = s2.grads = NULL;
    lora_free(&s); lora_free(&s2);
    model_free(&m);
}

static void test_grad_conv(void) { fd_unet(TINY_CONV, "unet (conv proj, mid block)"); }
static void test_grad_linear(void) { fd_unet(TINY_LINEAR, "unet (linear proj, no mid block)"); }

/* A safetensors file of one tensor list (F32), for the error cases. */
static void write_file(const char *path, int n, const char *const *names, const int64_t (*shapes)[2],
                       const int *ndims) {
    char err[D3_ERRLEN];
    static float data[4096];
    for (int i = 0; i < 4096; i++) data[i] = 0.01f * (float)(i % 7);
    st_writer *w = st_writer_new();
    for (int i = 0; i < n; i++) CHECK(st_writer_add(w, names[i], ST_F32, ndims[i], shapes[i], data, err) == 0, "%s", err);
    CHECK(st_writer_save(w, path, err) == 0, "%s", err);
    st_writer_free(w);
}

static void test_files(void) {
    model m;
    char err[D3_ERRLEN], dir[] = "/tmp/d3po-lora-XXXXXX", p[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    model_new(&m, TINY_LINEAR);
    lora_set s;
    CHECK(lora_init(&s, &m.L, NULL, 0, 4, 2.0f, 3, err) == 0, "%s", err);
    randomize_up(&s, 0.5);
    size_t n;
    float *ref = run(&m, &s, &n);
    for (int naming = 0; naming < 2; naming++) {
        snprintf(p, sizeof p, "%s/l%d.safetensors", dir, naming);
        CHECK(lora_save(&s, p, (lora_naming)naming, err) == 0, "%s", err);
        lora_set r;
        CHECK(lora_load(&r, p, &m.L, err) == 0, "%s", err);
        CHECK(r.n == s.n && r.numel == s.numel, "naming %d: %d modules, expected %d", naming, r.n, s.n);
        for (int i = 0; i < r.n && i < s.n; i++)
            CHECK(!strcmp(r.m[i].name, s.m[i].name) && r.m[i].rank == 4, "module %d: %s", i, r.m[i].name);
        float *got = run(&m, &r, &n);
        double mx = 0;
        for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(got[i] - ref[i]));
        /* kohya keeps alpha: the same bits; diffusers folds alpha/rank = 0.5
         * (a power of two) into up: the same bits too */
        CHECK(mx == 0, "naming %d: output differs after the round trip by %g", naming, mx);
        free(got);
        lora_free(&r);
    }
    /* peft naming (diffusers' save_lora_weights) and the error cases */
    const char *q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    char a[256], b[256];
    snprintf(a, sizeof a, "%s.lora_A.weight", q);
    snprintf(b, sizeof b, "%s.lora_B.weight", q);
    const char *peft[2] = {a, b};
    const int64_t ok[2][2] = {{2, 8}, {8, 2}}, wrong[2][2] = {{2, 8}, {8, 3}};
    const int nd[3] = {2, 2, 0};
    snprintf(p, sizeof p, "%s/peft.safetensors", dir);
    write_file(p, 2, peft, ok, nd);
    lora_set r;
    CHECK(lora_load(&r, p, &m.L, err) == 0 && r.n == 1 && r.m[0].rank == 2 && r.m[0].alpha == 2.0f,
          "peft naming: %s", err);
    lora_free(&r);
    write_file(p, 2, peft, wrong, nd);
    CHECK(lora_load(&r, p, &m.L, err) == -1 && strstr(err, "attn1.to_q") && strstr(err, p), "%s", err);
    write_file(p, 1, peft, ok, nd);
    CHECK(lora_load(&r, p, &m.L, err) == -1 && strstr(err, "no up"), "%s", err);
    const char *unk[1] = {"unet.down_blocks.9.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"};
    write_file(p, 1, unk, ok, nd);
    CHECK(lora_load(&r, p, &m.L, err) == -1 && strstr(err, "no attention linear"), "%s", err);
    const char *te[1] = {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"};
    write_file(p, 1, te, ok, nd);
    CHECK(lora_load(&r, p, &m.L, err) == -1 && strstr(err, "text-encoder"), "%s", err);
    const char *odd[1] = {"model.\x1b[31mweight"};
    write_file(p, 1, odd, ok, nd);
    CHECK(lora_load(&r, p, &m.L, err) == -1 && strstr(err, "not a LoRA tensor") && !strchr(err, 0x1b),
          "%s", err);
    const char *al[3] = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
                         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
                         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"};
    const int64_t sh3[3][2] = {{2, 8}, {8, 2}, {0, 0}};
    write_file(p, 3, al, sh3, nd);  /* alpha = data[0] = 0: refused */
    CHECK(lora_load(&r, p, &m.L, err) == -1 && strstr(err, "alpha"), "%s", err);
    FILE *f = fopen(p, "wb");
    fputs("\xff\xff\xff\xff\xff\xff\xff\x7fjunk", f);
    fclose(f);
    CHECK(lora_load(&r, p, &m.L, err) == -1 && strstr(err, p), "%s", err);
    free(ref);
    lora_free(&s);
    model_free(&m);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "rm");
}

int main(void) {
    RUN(test_defaults);
    RUN(test_files);
    RUN(test_grad_conv);
    RUN(test_grad_linear);
    return t_done();
}
