/* sdunet.c - Stable Diffusion's UNet (diffusers' UNet2DConditionModel as
 * SD 1.x/2.x and BK-SDM configure it): config.json, the parameter table
 * under diffusers' names, and the forward pass on the tape. The
 * architecture is written out in sdunet.h; the blocks shared with the VAE
 * (resnet, attention, name lookup) are in sdblocks.c. */
#include "sdunet.h"

#include <stdio.h>
#include <string.h>

#include "sdblocks.h"
#include "sdcfg.h"

static const char *const down_names[] = {"DownBlock2D", "CrossAttnDownBlock2D", NULL};
static const char *const up_names[] = {"UpBlock2D", "CrossAttnUpBlock2D", NULL};

/* Keys of other UNet architectures: each must be absent or at diffusers'
 * default (the value after which this engine's forward is the model's). */
static const sdcfg_fixed unet_fixed[] = {
    {"center_input_sample", "false"},
    {"only_cross_attention", "false"},
    {"mid_block_scale_factor", "1"},
    {"dropout", "0"},                   /* training-time only; a frozen base has none */
    {"act_fn", "\"silu\""},
    {"reverse_transformer_layers_per_block", "null"},
    {"encoder_hid_dim", "null"},
    {"encoder_hid_dim_type", "null"},
    {"num_attention_heads", "null"},    /* diffusers 0.31 refuses a value here */
    {"dual_cross_attention", "false"},
    {"class_embed_type", "null"},
    {"addition_embed_type", "null"},
    {"addition_time_embed_dim", "null"},
    {"num_class_embeds", "null"},
    {"resnet_time_scale_shift", "\"default\""},
    {"resnet_skip_time_act", "false"},
    {"resnet_out_scale_factor", "1"},
    {"time_embedding_type", "\"positional\""},
    {"time_embedding_dim", "null"},
    {"time_embedding_act_fn", "null"},
    {"timestep_post_act", "null"},
    {"time_cond_proj_dim", "null"},
    {"conv_in_kernel", "3"},
    {"conv_out_kernel", "3"},
    {"projection_class_embeddings_input_dim", "null"},
    {"attention_type", "\"default\""},
    {"class_embeddings_concat", "false"},
    {"mid_block_only_cross_attention", "null"},
    {"cross_attention_norm", "null"},
    {"downsample_padding", "1"},        /* 0 pads asymmetrically: not in SD */
};

int sd_unet_config_from_json(sd_unet_config *c, const json_t *j, const char *path, char *err) {
    memset(c, 0, sizeof *c);
    if (!json_is_object(j)) return d3_errf(err, "%s: expected a JSON object", path);
    const char *cls = json_string_value(json_object_get(j, "_class_name"));
    if (json_object_get(j, "_class_name") && (!cls || strcmp(cls, "UNet2DConditionModel")))
        return d3_errf(err, "%s: key '_class_name': expected \"UNet2DConditionModel\" (SD 1.x, "
                       "2.x and BK-SDM UNets)", path);
    if (sdcfg_check_fixed(j, unet_fixed, (int)(sizeof unet_fixed / sizeof unet_fixed[0]),
                          "SD 1.x, 2.x and BK-SDM UNets are supported", path, err))
        return -1;

    static const int ddown[] = {1, 1, 1, 0}, dup[] = {0, 1, 1, 1};
    int nup;
    if (sdcfg_enum_list(j, "down_block_types", down_names, SDU_MAX_BLOCKS, ddown, 4, c->down_cross,
                        &c->nblocks, path, err) ||
        sdcfg_enum_list(j, "up_block_types", up_names, SDU_MAX_BLOCKS, dup, 4, c->up_cross, &nup,
                        path, err))
        return -1;
    int B = c->nblocks;
    if (nup != B)
        return d3_errf(err, "%s: key 'up_block_types': expected %d entries, as down_block_types",
                       path, B);
    const json_t *boc = json_object_get(j, "block_out_channels");
    if (!boc || json_is_null(boc)) {
        if (B != 4)
            return d3_errf(err, "%s: key 'block_out_channels': missing (needed for %d blocks)",
                           path, B);
        static const int d[] = {320, 640, 1280, 1280};
        memcpy(c->block_out, d, sizeof d);
    } else if (!json_is_array(boc) ||
               sdcfg_ints(j, "block_out_channels", B, 0, 1, 8192, c->block_out, path, err)) {
        return d3_errf(err, "%s: key 'block_out_channels': expected a list of %d integers from 1 "
                       "to 8192 (one per block)", path, B);
    }
    double eps, shift;
    if (sdcfg_ints(j, "layers_per_block", B, 2, 1, SDU_MAX_LAYERS, c->layers, path, err) ||
        sdcfg_ints(j, "attention_head_dim", B, 8, 1, 1024, c->heads, path, err) ||
        sdcfg_ints(j, "transformer_layers_per_block", B, 1, 1, 16, c->tlayers, path, err) ||
        sdcfg_int(j, "in_channels", 4, 1, 64, &c->in_channels, path, err) ||
        sdcfg_int(j, "out_channels", 4, 1, 64, &c->out_channels, path, err) ||
        sdcfg_int(j, "sample_size", 0, 1, 4096, &c->sample_size, path, err) ||
        sdcfg_int(j, "cross_attention_dim", 1280, 1, 8192, &c->cross_dim, path, err) ||
        sdcfg_int(j, "norm_num_groups", 32, 1, 1024, &c->groups, path, err) ||
        sdcfg_num(j, "norm_eps", 1e-5, 1e-12, 1.0, &eps, path, err) ||
        sdcfg_num(j, "freq_shift", 0, -1e6, 1e6, &shift, path, err) ||
        sdcfg_bool(j, "flip_sin_to_cos", 1, &c->flip_sin_to_cos, path, err) ||
        sdcfg_bool(j, "use_linear_projection", 0, &c->linear_proj, path, err) ||
        sdcfg_bool(j, "upcast_attention", 0, &c->upcast_attention, path, err))
        return -1;
    c->norm_eps = (float)eps;
    c->freq_shift = (float)shift;
    c->downsample_padding = 1;  /* checked with the fixed keys */
    const json_t *mid = json_object_get(j, "mid_block_type");
    if (!mid) c->mid = 1;
    else if (json_is_null(mid)) c->mid = 0;
    else if (json_is_string(mid) && !strcmp(json_string_value(mid), "UNetMidBlock2DCrossAttn")) c->mid = 1;
    else
        return d3_errf(err, "%s: key 'mid_block_type': expected \"UNetMidBlock2DCrossAttn\" or "
                       "null", path);
    for (int i = 0; i < B; i++) {
        if (c->block_out[i] % c->groups)
            return d3_errf(err, "%s: key 'norm_num_groups': %d does not divide block_out_channels "
                           "entry %d (%d)", path, c->groups, i, c->block_out[i]);
        int dh = c->block_out[i] / c->heads[i];
        if (dh < 1 || dh > 160)
            return d3_errf(err, "%s: key 'attention_head_dim': %d heads over %d channels (block "
                           "%d) gives a head size of %d, expected 1 to 160", path, c->heads[i],
                           c->block_out[i], i, dh);
    }
    if (c->block_out[0] % 2 || c->block_out[0] / 2 == c->freq_shift)
        return d3_errf(err, "%s: key 'block_out_channels': the first entry (%d) sizes the timestep "
                       "embedding: expected an even number other than 2*freq_shift", path,
                       c->block_out[0]);
    return 0;
}

int sd_unet_check_size(const sd_unet_config *c, int h, int w, char *err) {
    int m = 1 << (c->nblocks - 1);
    if (h < 1 || w < 1 || h % m || w % m)
        return d3_errf(err, "latent size %dx%d: expected both sides a positive multiple of %d "
                       "(the UNet halves it %d times)", w, h, m, c->nblocks - 1);
    return 0;
}

/* The transformer's sizes over C channels with n heads (diffusers passes
 * head dim C / n, so inner = n * (C / n)). */
static int inner_dim(int C, int heads) { return heads * (C / heads); }

static void add_transformer(sdb_builder *b, const sd_unet_config *c, int C, int heads, int tl) {
    int inner = inner_dim(C, heads);
    char base[SD_NAME_MAX];
    snprintf(base, sizeof base, "%s", b->prefix);
    sdb_add_norm(b, "norm", C);
    if (c->linear_proj) sdb_add_linear(b, "proj_in", C, inner, 1);
    else sdb_add_conv(b, "proj_in", C, inner, 1);
    for (int k = 0; k < tl; k++) {
        sdb_bprefix(b, "%stransformer_blocks.%d.", base, k);
        sdb_add_norm(b, "norm1", inner);
        sdb_add_attention(b, "attn1.", inner, inner, inner, inner, 0);
        sdb_add_norm(b, "norm2", inner);
        sdb_add_attention(b, "attn2.", inner, c->cross_dim, inner, inner, 0);
        sdb_add_norm(b, "norm3", inner);
        sdb_add_linear(b, "ff.net.0.proj", inner, 8 * inner, 1);
        sdb_add_linear(b, "ff.net.2", 4 * inner, inner, 1);
    }
    sdb_bprefix(b, "%s", base);
    if (c->linear_proj) sdb_add_linear(b, "proj_out", inner, C, 1);
    else sdb_add_conv(b, "proj_out", inner, C, 1);
}

int sd_unet_layout(const sd_unet_config *c, sd_layout *L, char *err) {
    sdb_builder bd = {.L = L}, *b = &bd;
    int B = c->nblocks, C0 = c->block_out[0], E = 4 * C0;
    sdb_add_conv(b, "conv_in", c->in_channels, C0, 3);
    sdb_add_linear(b, "time_embedding.linear_1", C0, E, 1);
    sdb_add_linear(b, "time_embedding.linear_2", E, E, 1);
    int skips[SDU_MAX_BLOCKS * (SDU_MAX_LAYERS + 1) + 1], ns = 0, ch = C0;
    skips[ns++] = ch;
    for (int i = 0; i < B; i++) {
        int oc = c->block_out[i];
        for (int j = 0; j < c->layers[i]; j++) {
            sdb_bprefix(b, "down_blocks.%d.resnets.%d.", i, j);
            sdb_add_resnet(b, ch, oc, E);
            ch = oc;
            if (c->down_cross[i]) {
                sdb_bprefix(b, "down_blocks.%d.attentions.%d.", i, j);
                add_transformer(b, c, ch, c->heads[i], c->tlayers[i]);
            }
            skips[ns++] = ch;
        }
        if (i != B - 1) {
            sdb_bprefix(b, "down_blocks.%d.downsamplers.0.", i);
            sdb_add_conv(b, "conv", ch, ch, 3);
            skips[ns++] = ch;
        }
    }
    if (c->mid) {
        sdb_bprefix(b, "mid_block.resnets.0.");
        sdb_add_resnet(b, ch, ch, E);
        sdb_bprefix(b, "mid_block.attentions.0.");
        add_transformer(b, c, ch, c->heads[B - 1], c->tlayers[B - 1]);
        sdb_bprefix(b, "mid_block.resnets.1.");
        sdb_add_resnet(b, ch, ch, E);
    }
    for (int i = 0; i < B; i++) {
        int r = B - 1 - i, oc = c->block_out[r];
        for (int j = 0; j <= c->layers[r]; j++) {
            sdb_bprefix(b, "up_blocks.%d.resnets.%d.", i, j);
            sdb_add_resnet(b, ch + skips[--ns], oc, E);
            ch = oc;
            if (c->up_cross[i]) {
                sdb_bprefix(b, "up_blocks.%d.attentions.%d.", i, j);
                add_transformer(b, c, ch, c->heads[r], c->tlayers[r]);
            }
        }
        if (i != B - 1) {
            sdb_bprefix(b, "up_blocks.%d.upsamplers.0.", i);
            sdb_add_conv(b, "conv", ch, ch, 3);
        }
    }
    sdb_bprefix(b, "%s", "");
    sdb_add_norm(b, "conv_norm_out", ch);
    sdb_add_conv(b, "conv_out", ch, c->out_channels, 3);
    if (b->failed) {
        sd_layout_free(L);
        return d3_errf(err, "SD UNet layout: out of memory");
    }
    return 0;
}

/* ---- forward ---- */

/* Transformer2DModel under f->prefix: x [N, C, H, W] -> [N, C, H, W]. */
static d3_tensor *transformer(sdb_ctx *f, const sd_unet_config *c, d3_tensor *x, int heads, int tl,
                              d3_tensor *ctx) {
    d3_tape *tp = f->tp;
    int C = x->c, H = x->h, W = x->w, inner = inner_dim(C, heads);
    char base[SD_NAME_MAX];
    snprintf(base, sizeof base, "%s", f->prefix);
    d3_tensor *h = sdb_groupnorm(f, "norm", x, c->groups, 1e-6f);
    if (c->linear_proj) {
        h = sdb_dense(f, "proj_in", tape_to_tokens(tp, h), inner, 1);
    } else {
        h = tape_to_tokens(tp, sdb_conv(f, "proj_in", h, inner, 1, 1));
    }
    /* h: tokens [N, HW, 1, inner] */
    for (int k = 0; k < tl; k++) {
        sdb_prefix(f, "%stransformer_blocks.%d.", base, k);
        d3_tensor *a = sdb_layernorm(f, "norm1", h, 1e-5f);
        h = tape_add(tp, h, sdb_attention(f, "attn1.", a, a, heads, inner, inner, 0));
        a = sdb_layernorm(f, "norm2", h, 1e-5f);
        h = tape_add(tp, h, sdb_attention(f, "attn2.", a, ctx, heads, inner, inner, 0));
        a = sdb_layernorm(f, "norm3", h, 1e-5f);
        a = tape_geglu(tp, sdb_dense(f, "ff.net.0.proj", a, 8 * inner, 1));
        h = tape_add(tp, h, sdb_dense(f, "ff.net.2", a, inner, 1));
    }
    sdb_prefix(f, "%s", base);
    if (c->linear_proj) {
        h = tape_to_nchw(tp, sdb_dense(f, "proj_out", h, C, 1), H, W);
    } else {
        h = sdb_conv(f, "proj_out", tape_to_nchw(tp, h, H, W), C, 1, 1);
    }
    return tape_add(tp, h, x);
}

/* The forward is a chain of stages, each a function of the previous one's
 * output (and, in the up blocks, of one skip): conv_in; every down resnet
 * with its attention; every downsampler; the mid block; every up resnet
 * with its attention; every upsampler; the output layers. sd_unet_forward
 * runs them all on one tape, sd_unet_forward_lowmem each on a fresh one. */
enum { ST_IN, ST_DOWN, ST_DOWNSAMPLE, ST_MID, ST_UP, ST_UPSAMPLE, ST_OUT };
typedef struct {
    int kind, i, j;
} ustage;
#define SDU_MAX_STAGES (2 * SDU_MAX_BLOCKS * (SDU_MAX_LAYERS + 2) + 3)

static int unet_stages(const sd_unet_config *c, ustage *s) {
    int n = 0, B = c->nblocks;
    s[n++] = (ustage){ST_IN, 0, 0};
    for (int i = 0; i < B; i++) {
        for (int j = 0; j < c->layers[i]; j++) s[n++] = (ustage){ST_DOWN, i, j};
        if (i != B - 1) s[n++] = (ustage){ST_DOWNSAMPLE, i, 0};
    }
    if (c->mid) s[n++] = (ustage){ST_MID, 0, 0};
    for (int i = 0; i < B; i++) {
        for (int j = 0; j <= c->layers[B - 1 - i]; j++) s[n++] = (ustage){ST_UP, i, j};
        if (i != B - 1) s[n++] = (ustage){ST_UPSAMPLE, i, 0};
    }
    s[n++] = (ustage){ST_OUT, 0, 0};
    return n;
}

/* Whether a stage's output is pushed as a skip, and whether it pops one. */
static int stage_pushes(const ustage *s) {
    return s->kind == ST_IN || s->kind == ST_DOWN || s->kind == ST_DOWNSAMPLE;
}
static int stage_pops(const ustage *s) { return s->kind == ST_UP; }

/* eact = silu(temb(t)): [N, E, 1, 1]. */
static d3_tensor *time_embedding(sdb_ctx *f, const sd_unet_config *c, const float *t, int N) {
    d3_tape *tp = f->tp;
    int C0 = c->block_out[0], E = 4 * C0;
    sdb_prefix(f, "%s", "");
    d3_tensor *te = tape_timestep_embedding_ex(tp, t, N, C0, c->flip_sin_to_cos, c->freq_shift);
    te = tape_linear(tp, te, sdb_w(f, "time_embedding.linear_1", ".weight"),
                     sdb_w(f, "time_embedding.linear_1", ".bias"),
                     sdb_g(f, "time_embedding.linear_1", ".weight"),
                     sdb_g(f, "time_embedding.linear_1", ".bias"), E);
    te = tape_silu(tp, te);
    te = tape_linear(tp, te, sdb_w(f, "time_embedding.linear_2", ".weight"),
                     sdb_w(f, "time_embedding.linear_2", ".bias"),
                     sdb_g(f, "time_embedding.linear_2", ".weight"),
                     sdb_g(f, "time_embedding.linear_2", ".bias"), E);
    return tape_silu(tp, te);
}

static d3_tensor *unet_stage(sdb_ctx *f, const sd_unet_config *c, const ustage *s, d3_tensor *h,
                             d3_tensor *skip, d3_tensor *eact, d3_tensor *ctx) {
    d3_tape *tp = f->tp;
    int B = c->nblocks, G = c->groups, i = s->i, j = s->j;
    float eps = c->norm_eps;
    switch (s->kind) {
    case ST_IN:
        sdb_prefix(f, "%s", "");
        return sdb_conv(f, "conv_in", h, c->block_out[0], 3, 1);
    case ST_DOWN:
        sdb_prefix(f, "down_blocks.%d.resnets.%d.", i, j);
        h = sdb_resnet(f, h, eact, c->block_out[i], G, eps);
        if (c->down_cross[i]) {
            sdb_prefix(f, "down_blocks.%d.attentions.%d.", i, j);
            h = transformer(f, c, h, c->heads[i], c->tlayers[i], ctx);
        }
        return h;
    case ST_DOWNSAMPLE:
        sdb_prefix(f, "down_blocks.%d.downsamplers.0.", i);
        return sdb_conv(f, "conv", h, h->c, 3, 2);
    case ST_MID:
        sdb_prefix(f, "mid_block.resnets.0.");
        h = sdb_resnet(f, h, eact, h->c, G, eps);
        sdb_prefix(f, "mid_block.attentions.0.");
        h = transformer(f, c, h, c->heads[B - 1], c->tlayers[B - 1], ctx);
        sdb_prefix(f, "mid_block.resnets.1.");
        return sdb_resnet(f, h, eact, h->c, G, eps);
    case ST_UP: {
        int r = B - 1 - i;
        sdb_prefix(f, "up_blocks.%d.resnets.%d.", i, j);
        h = sdb_resnet(f, tape_concat(tp, h, skip), eact, c->block_out[r], G, eps);
        if (c->up_cross[i]) {
            sdb_prefix(f, "up_blocks.%d.attentions.%d.", i, j);
            h = transformer(f, c, h, c->heads[r], c->tlayers[r], ctx);
        }
        return h;
    }
    case ST_UPSAMPLE:
        sdb_prefix(f, "up_blocks.%d.upsamplers.0.", i);
        return sdb_conv(f, "conv", tape_upsample2x(tp, h), h->c, 3, 1);
    default:
        sdb_prefix(f, "%s", "");
        h = tape_silu(tp, sdb_groupnorm(f, "conv_norm_out", h, G, eps));
        return sdb_conv(f, "conv_out", h, c->out_channels, 3, 1);
    }
}

d3_tensor *sd_unet_forward(d3_tape *tp, const sd_unet_config *c, const sd_layout *L,
                           const float *params, float *grads, d3_tensor *x, const float *t,
                           d3_tensor *context) {
    sdb_ctx F = {.tp = tp, .L = L, .P = params, .G = grads};
    ustage st[SDU_MAX_STAGES];
    int n = unet_stages(c, st), ns = 0;
    d3_tensor *eact = time_embedding(&F, c, t, x->n), *skips[SDU_MAX_STAGES], *h = x;
    for (int k = 0; k < n; k++) {
        h = unet_stage(&F, c, &st[k], h, stage_pops(&st[k]) ? skips[--ns] : NULL, eact, context);
        if (stage_pushes(&st[k])) skips[ns++] = h;
    }
    return h;
}

/* A copy of src (device, the shape of like) on tape t. */
static d3_tensor *copy_to(d3_tape *t, const d3_backend *be, const d3_tensor *src) {
    d3_tensor *y = tape_input(t, src->n, src->c, src->h, src->w);
    be->copy(y->v, src->v, src->numel * sizeof(float));
    return y;
}

int sd_unet_forward_lowmem(const d3_backend *be, const sd_unet_config *c, const sd_layout *L,
                           const float *params, const float *x, int N, int h, int w,
                           const float *t, const float *context, int T, float *out, char *err) {
    /* keep: the time embedding, the context and the skips; tp[2]: stages */
    d3_tape *keep = tape_new(be), *tp[2] = {tape_new(be), tape_new(be)};
    if (!keep || !tp[0] || !tp[1]) {
        tape_free(keep); tape_free(tp[0]); tape_free(tp[1]);
        return d3_errf(err, "UNet forward: out of memory");
    }
    tape_set_grad(keep, 0);
    sdb_ctx K = {.tp = keep, .L = L, .P = params};
    d3_tensor *eact = time_embedding(&K, c, t, N);
    d3_tensor *ctx = tape_input(keep, N, T, 1, c->cross_dim);
    be->copy(ctx->v, context, ctx->numel * sizeof(float));
    d3_tensor *prev = tape_input(keep, N, c->in_channels, h, w);
    be->copy(prev->v, x, prev->numel * sizeof(float));
    ustage st[SDU_MAX_STAGES];
    d3_tensor *skips[SDU_MAX_STAGES];
    int n = unet_stages(c, st), ns = 0;
    for (int k = 0; k < n; k++) {
        /* the input comes from the other tape (its stage is done) or from keep */
        d3_tape *cur = tp[k % 2];
        tape_reset(cur);
        tape_set_grad(cur, 0);
        sdb_ctx F = {.tp = cur, .L = L, .P = params};
        d3_tensor *in = copy_to(cur, be, prev);
        d3_tensor *skip = stage_pops(&st[k]) ? copy_to(cur, be, skips[--ns]) : NULL;
        d3_tensor *y = unet_stage(&F, c, &st[k], in, skip, copy_to(cur, be, eact), copy_to(cur, be, ctx));
        if (stage_pushes(&st[k])) skips[ns++] = y = copy_to(keep, be, y);
        prev = y;
    }
    be->copy(out, prev->v, prev->numel * sizeof(float));
    tape_free(keep); tape_free(tp[0]); tape_free(tp[1]);
    return 0;
}
