/* test_sdunet.c - the SD UNet and VAE decoder without the reference stack:
 * config.json reading (the three families' tiny configs, and a one-line
 * error naming the key for every unsupported value), layouts against
 * diffusers' tensor counts, finite-difference gradient checks of a tiny
 * UNet (conv and linear projections, with and without a mid block) and a
 * tiny VAE decoder through the tape, and the 8-bit pixel conversion.
 * Parity of the numbers with diffusers is tests/test_sd_unet.sh. */
#include <stdlib.h>

#include "backend.h"
#include "sd/sdunet.h"
#include "sd/vae.h"
#include "t.h"
#include "tape.h"

static uint64_t rs = 88172645463325252ull;
static double urand(void) {
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (double)(rs >> 11) / 9007199254740992.0;
}

/* make_tiny.py's UNet configs, in the keys diffusers writes that matter */
static const char *SD1 =
    "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", \"addition_embed_type\": null,"
    " \"attention_head_dim\": 4, \"block_out_channels\": [32, 64], \"center_input_sample\": false,"
    " \"cross_attention_dim\": 32, \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
    " \"downsample_padding\": 1, \"dropout\": 0.0, \"flip_sin_to_cos\": true, \"freq_shift\": 0,"
    " \"in_channels\": 4, \"layers_per_block\": 2, \"mid_block_scale_factor\": 1,"
    " \"mid_block_type\": \"UNetMidBlock2DCrossAttn\", \"norm_eps\": 1e-05, \"norm_num_groups\": 8,"
    " \"num_attention_heads\": null, \"out_channels\": 4, \"resnet_out_scale_factor\": 1.0,"
    " \"sample_size\": 8, \"transformer_layers_per_block\": 1,"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"upcast_attention\": false,"
    " \"use_linear_projection\": false}";
static const char *SD2 =
    "{\"attention_head_dim\": [2, 4, 4], \"block_out_channels\": [32, 64, 64],"
    " \"cross_attention_dim\": 32, \"down_block_types\": [\"CrossAttnDownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"layers_per_block\": 2, \"norm_num_groups\": 8,"
    " \"sample_size\": 8, \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\","
    " \"CrossAttnUpBlock2D\"], \"upcast_attention\": true, \"use_linear_projection\": true}";
static const char *BKSDM =
    "{\"attention_head_dim\": 8, \"block_out_channels\": [32, 64], \"cross_attention_dim\": 32,"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"],"
    " \"layers_per_block\": 1, \"mid_block_type\": null, \"norm_num_groups\": 8, \"sample_size\": 8,"
    " \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}";
static const char *VAE =
    "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", \"block_out_channels\": [32, 64],"
    " \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], \"force_upcast\": true,"
    " \"in_channels\": 3, \"latent_channels\": 4, \"latents_mean\": null, \"layers_per_block\": 1,"
    " \"mid_block_add_attention\": true, \"norm_num_groups\": 8, \"out_channels\": 3,"
    " \"sample_size\": 16, \"scaling_factor\": 0.18215, \"shift_factor\": null,"
    " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"], \"use_post_quant_conv\": true}";

static int unet_from(const char *text, sd_unet_config *c, char *err) {
    json_t *j = json_loads(text, 0, NULL);
    if (!j) return d3_errf(err, "test JSON does not parse");
    int rc = sd_unet_config_from_json(c, j, "unet/config.json", err);
    json_decref(j);
    return rc;
}

/* Parses cfg (a UNet config, or a VAE one when vae), builds its layout into
 * *L (freed by the caller) and checks its size against diffusers': n
 * tensors holding numel floats. */
static void layout_counts(const char *cfg, int vae, int n, size_t numel, sd_layout *L) {
    char err[D3_ERRLEN];
    sd_unet_config c;
    sd_vae_config v;
    json_t *j = json_loads(cfg, 0, NULL);
    int rc = vae ? sd_vae_config_from_json(&v, j, "vae/config.json", err)
                 : sd_unet_config_from_json(&c, j, "unet/config.json", err);
    json_decref(j);
    CHECK(rc == 0, "%.60s...: %s", cfg, err);
    if (rc) return;
    CHECK((vae ? sd_vae_layout(&v, L, err) : sd_unet_layout(&c, L, err)) == 0, "%s", err);
    size_t total = 0;
    for (int i = 0; i < L->n; i++) total += L->p[i].numel;
    CHECK(L->n == n && total == numel, "%.60s...: %d tensors, %zu floats; diffusers has %d, %zu",
          cfg, L->n, total, n, numel);
}

static void test_layouts(void) {
    /* diffusers 0.31's state_dict of make_tiny.py's pipelines (counted with
     * the reference stack): tensors and floats */
    struct { const char *cfg; int n; size_t numel; } k[] = {
        {SD1, 304, 1106212}, {SD2, 494, 2164452}, {BKSDM, 240, 802948},
    };
    char err[D3_ERRLEN];
    for (int i = 0; i < 3; i++) {
        sd_layout L = {0};
        layout_counts(k[i].cfg, 0, k[i].n, k[i].numel, &L);
        sd_layout_free(&L);
    }
    sd_unet_config c;
    sd_layout L = {0};
    CHECK(unet_from(SD1, &c, err) == 0, "%s", err);
    CHECK(c.heads[0] == 4 && c.mid && !c.linear_proj && c.norm_eps == 1e-5f && c.flip_sin_to_cos,
          "sd1 fields");
    CHECK(sd_unet_layout(&c, &L, err) == 0, "%s", err);
    const sd_param *p = sd_layout_find(&L, "down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight");
    CHECK(p && p->shape[0] == 256 && p->shape[1] == 32, "ff.net.0.proj");
    p = sd_layout_find(&L, "up_blocks.1.resnets.2.conv_shortcut.weight");
    CHECK(p && p->shape[0] == 32 && p->shape[1] == 64 && p->shape[2] == 1, "up conv_shortcut");
    p = sd_layout_find(&L, "down_blocks.0.attentions.0.proj_in.weight");
    CHECK(p && p->ndim == 4, "conv proj_in");
    CHECK(sd_layout_find(&L, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.bias") == NULL,
          "to_q has no bias");
    sd_layout_free(&L);

    layout_counts(VAE, 1, 70, 402071, &L); /* diffusers' decoder + post_quant_conv */
    sd_vae_config v;
    json_t *j = json_loads(VAE, 0, NULL);
    CHECK(sd_vae_config_from_json(&v, j, "vae/config.json", err) == 0, "%s", err);
    json_decref(j);
    CHECK(sd_layout_find(&L, "decoder.mid_block.attentions.0.to_out.0.bias") != NULL, "to_out.0");
    CHECK(v.scaling_factor == 0.18215f && v.post_quant_conv && v.mid_attn, "vae fields");
    sd_layout_free(&L);
}

/* The real families' shapes (configs only: no weights): SD 1.5, SD 2.1,
 * BK-SDM small and tiny, and SD's VAE decoder, against diffusers 0.31's
 * state_dict of the same configs (counted with accelerate's
 * init_empty_weights; SD 1.5's 859,520,964 is its published size). */
#define SD15 "\"sample_size\": 64, \"block_out_channels\": [320, 640, 1280, 1280], " \
    "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", " \
    "\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", " \
    "\"CrossAttnUpBlock2D\"], \"norm_num_groups\": 32"
static void test_real_layouts(void) {
    struct { const char *cfg; int n; size_t numel; } k[] = {
        {"{" SD15 ", \"layers_per_block\": 2, \"attention_head_dim\": 8, \"cross_attention_dim\": 768}",
         686, 859520964},
        {"{" SD15 ", \"layers_per_block\": 2, \"attention_head_dim\": [5, 10, 20, 20], "
         "\"cross_attention_dim\": 1024, \"use_linear_projection\": true, \"upcast_attention\": true}",
         686, 865910724},
        {"{" SD15 ", \"layers_per_block\": 1, \"attention_head_dim\": 8, \"cross_attention_dim\": 768, "
         "\"mid_block_type\": null}", 396, 482346884},
        {"{\"block_out_channels\": [320, 640, 1280], \"layers_per_block\": 1, \"down_block_types\": "
         "[\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"], \"up_block_types\": "
         "[\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"], \"attention_head_dim\": 8, "
         "\"cross_attention_dim\": 768, \"mid_block_type\": null}", 358, 323384964},
    };
    for (int i = 0; i < 4; i++) {
        sd_layout L = {0};
        layout_counts(k[i].cfg, 0, k[i].n, k[i].numel, &L);
        if (i == 1) {
            const sd_param *p = sd_layout_find(&L, "up_blocks.3.attentions.2.proj_out.weight");
            CHECK(p && p->ndim == 2 && p->shape[0] == 320 && p->shape[1] == 320, "sd2 linear proj_out");
            p = sd_layout_find(&L, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight");
            CHECK(p && p->shape[0] == 1280 && p->shape[1] == 1024, "sd2 cross to_k");
        }
        sd_layout_free(&L);
    }
    sd_layout L = {0};
    layout_counts("{\"block_out_channels\": [128, 256, 512, 512], \"layers_per_block\": 2,"
                  " \"norm_num_groups\": 32, \"sample_size\": 512, \"up_block_types\":"
                  " [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\","
                  " \"UpDecoderBlock2D\"]}", 1, 140, 49490199, &L);
    sd_layout_free(&L);
}

/* Each edit of a valid config gives an error that names the key. */
static void test_config_errors(void) {
    struct { const char *from, *to, *key; } bad[] = {
        {"\"addition_embed_type\": null", "\"addition_embed_type\": \"text_time\"", "'addition_embed_type'"},
        {"\"DownBlock2D\"]", "\"SimpleCrossAttnDownBlock2D\"]", "'down_block_types'"},
        {"\"num_attention_heads\": null", "\"num_attention_heads\": 8", "'num_attention_heads'"},
        {"\"layers_per_block\": 2", "\"layers_per_block\": [2, 2, 2]", "'layers_per_block'"},
        {"\"norm_num_groups\": 8", "\"norm_num_groups\": 24", "'norm_num_groups'"},
        {"\"UNet2DConditionModel\"", "\"UNet2DModel\"", "'_class_name'"},
        {"\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\"", "'act_fn'"},
        {"\"block_out_channels\": [32, 64]", "\"block_out_channels\": [32]", "'block_out_channels'"},
        {"\"mid_block_type\": \"UNetMidBlock2DCrossAttn\"", "\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"", "'mid_block_type'"},
        {"\"dropout\": 0.0", "\"dropout\": 0.1", "'dropout'"},
        {"\"attention_head_dim\": 4", "\"attention_head_dim\": \"x\"", "'attention_head_dim'"},
        {"\"downsample_padding\": 1", "\"downsample_padding\": 0", "'downsample_padding'"},
        {"\"center_input_sample\": false", "\"center_input_sample\": true", "'center_input_sample'"},
    };
    char err[D3_ERRLEN], text[4096];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *at = strstr(SD1, bad[i].from);
        CHECK(at != NULL, "case %zu: '%s' not in the config", i, bad[i].from);
        if (!at) continue;
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - SD1), SD1, bad[i].to, at + strlen(bad[i].from));
        sd_unet_config c;
        err[0] = 0;
        int rc = unet_from(text, &c, err);
        CHECK(rc == -1 && strstr(err, bad[i].key) && strstr(err, "unet/config.json") &&
              !strchr(err, '\n'), "case %zu: rc %d, '%s'", i, rc, err);
    }
    const char *vbad[][3] = {
        {"\"shift_factor\": null", "\"shift_factor\": 0.1159", "'shift_factor'"},
        {"\"UpDecoderBlock2D\"]", "\"UpDecoderBlock3D\"]", "'up_block_types'"},
        {"\"scaling_factor\": 0.18215", "\"scaling_factor\": \"a\"", "'scaling_factor'"},
    };
    for (size_t i = 0; i < sizeof vbad / sizeof vbad[0]; i++) {
        const char *at = strstr(VAE, vbad[i][0]);
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - VAE), VAE, vbad[i][1], at + strlen(vbad[i][0]));
        json_t *j = json_loads(text, 0, NULL);
        sd_vae_config v;
        err[0] = 0;
        int rc = sd_vae_config_from_json(&v, j, "vae/config.json", err);
        json_decref(j);
        CHECK(rc == -1 && strstr(err, vbad[i][2]) && strstr(err, "vae/config.json"), "vae case %zu: '%s'", i, err);
    }
    sd_unet_config c;
    CHECK(unet_from(SD1, &c, err) == 0, "%s", err);
    CHECK(sd_unet_check_size(&c, 8, 12, err) == 0, "8x12 fits two blocks");
    CHECK(sd_unet_check_size(&c, 8, 7, err) == -1 && strstr(err, "multiple of 2"), "%s", err);
}

/* ---- finite differences ---- */

typedef struct {
    int vae;
    sd_unet_config u;
    sd_vae_config v;
    sd_layout L;
    float *params;
    int N, h, w, T;
    float *x, *ctx, *t, *r;
} fd_model;

static d3_tensor *fd_forward(fd_model *m, d3_tape *tp, float *grads, d3_tensor **xin) {
    int C = m->vae ? m->v.latent_channels : m->u.in_channels;
    d3_tensor *x = tape_input(tp, m->N, C, m->h, m->w);
    memcpy(x->v, m->x, x->numel * sizeof(float));
    *xin = x;
    if (m->vae) return sd_vae_decode(tp, &m->v, &m->L, m->params, grads, x);
    d3_tensor *ctx = tape_input(tp, m->N, m->T, 1, m->u.cross_dim);
    memcpy(ctx->v, m->ctx, ctx->numel * sizeof(float));
    return sd_unet_forward(tp, &m->u, &m->L, m->params, grads, x, m->t, ctx);
}

static double fd_loss(fd_model *m, d3_tape *tp) {
    tape_reset(tp);
    tape_set_grad(tp, 0);
    d3_tensor *x;
    d3_tensor *out = fd_forward(m, tp, NULL, &x);
    double l = 0;
    for (size_t i = 0; i < out->numel; i++) l += (double)out->v[i] * m->r[i];
    tape_set_grad(tp, 1);
    return l;
}

/* loss = sum(out * r); analytic gradients of 2 random elements of every
 * tensor and of 20 input elements against central differences. */
static void fd_check(fd_model *m, const char *what) {
    for (size_t i = 0; i < m->L.numel; i++) m->params[i] = (float)(urand() * 0.6 - 0.3);
    for (int i = 0; i < m->L.n; i++)
        if (strstr(m->L.p[i].name, "norm") && strstr(m->L.p[i].name, ".weight"))
            for (size_t k = 0; k < m->L.p[i].numel; k++)
                m->params[m->L.p[i].off + k] = (float)(0.8 + 0.4 * urand());
    float *grads = calloc(m->L.numel, sizeof(float));
    d3_tape *tp = tape_new(backend_cpu());
    tape_reset(tp);
    d3_tensor *x;
    d3_tensor *out = fd_forward(m, tp, grads, &x);
    m->r = malloc(out->numel * sizeof(float));
    for (size_t i = 0; i < out->numel; i++) m->r[i] = (float)(urand() * 2 - 1);
    float *dout = tape_alloc(tp, out->numel);
    memcpy(dout, m->r, out->numel * sizeof(float));
    tape_backward(tp, out, dout);
    size_t nx = x->numel;
    float *gx = malloc(nx * sizeof(float));
    memcpy(gx, x->g, nx * sizeof(float));

    /* |a - n| <= 2e-3 + 3e-2 |n|: float32 forward through ~30 layers (loss
     * rounding ~1e-5 absolute, / 2h -> ~1e-3) plus the O(h^2) truncation of
     * central differences through the norms, softmax and GELU. */
    const double h = 1e-2, atol = 2e-3, rtol = 3e-2;
    double worst = 0;
    int checked = 0, bad = 0;
    for (int pi = 0; pi < m->L.n + 20; pi++) {
        int is_x = pi >= m->L.n;
        float *base = is_x ? m->x : m->params;
        size_t k = is_x ? (size_t)(urand() * nx) : m->L.p[pi].off + (size_t)(urand() * m->L.p[pi].numel);
        for (int s = 0; s < (is_x ? 1 : 2); s++) {
            if (s) k = m->L.p[pi].off + (size_t)(urand() * m->L.p[pi].numel);
            /* the VAE divides its input by scaling_factor (x5.5): half the
             * step there keeps the truncation error in tolerance (with 1e-2
             * one element of 20 was 15% off; with 5e-3 the worst is 1.5e-3) */
            double hs = is_x && m->vae ? h / 2 : h;
            float save = base[k];
            base[k] = save + (float)hs;
            double lp = fd_loss(m, tp);
            base[k] = save - (float)hs;
            double lm = fd_loss(m, tp);
            base[k] = save;
            double num = (lp - lm) / (2 * hs), an = is_x ? gx[k] : grads[k];
            double e = fabs(an - num);
            if (e > atol + rtol * fabs(num) && bad++ < 10)
                fprintf(stderr, "  %s %s[%zu]: analytic %g numeric %g\n", what,
                        is_x ? "input" : m->L.p[pi].name, is_x ? k : k - m->L.p[pi].off, an, num);
            if (e > worst) worst = e;
            checked++;
        }
    }
    printf("  %s: %d gradient elements checked (%d tensors + input), max abs error %.3g\n", what,
           checked, m->L.n, worst);
    CHECK(bad == 0, "%s: %d of %d gradient elements outside tolerance", what, bad, checked);
    tape_free(tp);
    free(grads); free(gx); free(m->r);
}

static void fd_unet(const char *cfg, const char *what) {
    fd_model m = {0};
    char err[D3_ERRLEN];
    CHECK(unet_from(cfg, &m.u, err) == 0, "%s", err);
    CHECK(sd_unet_layout(&m.u, &m.L, err) == 0, "%s", err);
    m.params = malloc(m.L.numel * sizeof(float));
    m.N = 2; m.h = 4; m.w = 4; m.T = 5;
    size_t nx = (size_t)m.N * m.u.in_channels * m.h * m.w, nc = (size_t)m.N * m.T * m.u.cross_dim;
    m.x = malloc(nx * sizeof(float));
    m.ctx = malloc(nc * sizeof(float));
    for (size_t i = 0; i < nx; i++) m.x[i] = (float)(urand() * 2 - 1);
    for (size_t i = 0; i < nc; i++) m.ctx[i] = (float)(urand() * 2 - 1);
    float t[2] = {801, 1};
    m.t = t;
    fd_check(&m, what);
    /* the low-memory forward: the same ops in the same order, the same bits */
    d3_tape *tp = tape_new(backend_cpu());
    tape_set_grad(tp, 0);
    d3_tensor *x;
    d3_tensor *y = fd_forward(&m, tp, NULL, &x);
    float *lean = malloc(y->numel * sizeof(float));
    CHECK(sd_unet_forward_lowmem(backend_cpu(), &m.u, &m.L, m.params, m.x, m.N, m.h, m.w, m.t, m.ctx,
                                 m.T, lean, err) == 0, "%s", err);
    CHECK(!memcmp(lean, y->v, y->numel * sizeof(float)),
          "%s: sd_unet_forward_lowmem differs from sd_unet_forward", what);
    free(lean);
    tape_free(tp);
    free(m.params); free(m.x); free(m.ctx);
    sd_layout_free(&m.L);
}

/* tiny: 8/16 channels, 2 heads, 4 groups, 8-wide context */
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

static void test_unet_grad_conv(void) { fd_unet(TINY_CONV, "unet (conv proj, mid block)"); }
static void test_unet_grad_linear(void) { fd_unet(TINY_LINEAR, "unet (linear proj, no mid block)"); }

static void fd_vae(const char *extra, int ntensors, const char *what) {
    fd_model m = {.vae = 1};
    char err[D3_ERRLEN], text[1024];
    snprintf(text, sizeof text, "{\"block_out_channels\": [8, 16], \"layers_per_block\": 1,"
             " \"norm_num_groups\": 4, \"up_block_types\": [\"UpDecoderBlock2D\","
             " \"UpDecoderBlock2D\"]%s}", extra);
    json_t *j = json_loads(text, 0, NULL);
    CHECK(sd_vae_config_from_json(&m.v, j, "vae/config.json", err) == 0, "%s", err);
    json_decref(j);
    CHECK(sd_vae_layout(&m.v, &m.L, err) == 0, "%s", err);
    CHECK(m.L.n == ntensors, "%s: %d tensors, expected %d", what, m.L.n, ntensors);
    m.params = malloc(m.L.numel * sizeof(float));
    m.N = 2; m.h = 3; m.w = 4;
    size_t nx = (size_t)m.N * m.v.latent_channels * m.h * m.w;
    m.x = malloc(nx * sizeof(float));
    for (size_t i = 0; i < nx; i++) m.x[i] = (float)(urand() * 0.4 - 0.2); /* latents ~ 0.18 N(0,1) */
    fd_check(&m, what);
    /* the low-memory decode: the same ops in the same order, the same bits */
    d3_tape *tp = tape_new(backend_cpu());
    tape_set_grad(tp, 0);
    d3_tensor *x = tape_input(tp, m.N, m.v.latent_channels, m.h, m.w);
    memcpy(x->v, m.x, nx * sizeof(float));
    d3_tensor *y = sd_vae_decode(tp, &m.v, &m.L, m.params, NULL, x);
    float *lean = malloc(y->numel * sizeof(float));
    CHECK(sd_vae_decode_lowmem(backend_cpu(), &m.v, &m.L, m.params, m.x, m.N, m.h, m.w, lean, err) == 0,
          "%s", err);
    CHECK(y->h == 2 * m.h && y->w == 2 * m.w && !memcmp(lean, y->v, y->numel * sizeof(float)),
          "%s: sd_vae_decode_lowmem differs from sd_vae_decode", what);
    free(lean);
    tape_free(tp);
    free(m.params); free(m.x);
    sd_layout_free(&m.L);
}

static void test_vae_grad(void) {
    fd_vae("", 70, "vae decoder");
    /* no post_quant_conv (2 tensors), no mid attention (group_norm + 4 linears: 10) */
    fd_vae(", \"use_post_quant_conv\": false, \"mid_block_add_attention\": false", 58,
           "vae decoder without post_quant_conv and mid attention");
}

static void test_rgb8(void) {
    /* x/2 + 0.5 clamped, * 255, round half to even (numpy) */
    float img[3 * 1 * 4] = {-1.0f, 1.0f, 0.0f, -3.0f,        /* R: 0, 255, 127.5 -> 128, 0 */
                            5.0f, 0.0f, 0.0f, 0.0f,           /* G: 255, 128, ... */
                            0.0f, 0.0f, 0.0f, 0.0f};
    img[3] = NAN;                                             /* NaN: 0 */
    img[5] = (2.5f / 255.0f - 0.5f) * 2.0f;                  /* ~2.5: even neighbour */
    uint8_t px[12];
    sd_vae_to_rgb8(px, img, 3, 1, 4);
    CHECK(px[0] == 0 && px[3] == 255 && px[6] == 128 && px[9] == 0, "R %d %d %d %d", px[0], px[3], px[6], px[9]);
    CHECK(px[1] == 255 && (px[4] == 2 || px[4] == 3), "G %d %d", px[1], px[4]);
    CHECK(px[2] == 128 && px[11] == 128, "B %d %d", px[2], px[11]);
}

int main(void) {
    RUN(test_layouts);
    RUN(test_real_layouts);
    RUN(test_config_errors);
    RUN(test_rgb8);
    RUN(test_unet_grad_conv);
    RUN(test_unet_grad_linear);
    RUN(test_vae_grad);
    return t_done();
}
