/* vae.c - Stable Diffusion's VAE decoder (diffusers' AutoencoderKL, the
 * decoding path): config.json, the decoder's parameter table under
 * diffusers' names, the forward pass on the tape, and the conversion to
 * 8-bit RGB. The architecture is written out in vae.h. */
#include "vae.h"

#include <math.h>
#include <string.h>

#include "sdblocks.h"
#include "sdcfg.h"

#define VAE_EPS 1e-6f  /* every GroupNorm of diffusers' VAE decoder */

static const char *const down_names[] = {"DownEncoderBlock2D", NULL};
static const char *const up_names[] = {"UpDecoderBlock2D", NULL};

static const sdcfg_fixed vae_fixed[] = {
    {"act_fn", "\"silu\""},
    {"shift_factor", "null"},   /* SD3/Flux latents: not this family */
    {"latents_mean", "null"},   /* per-channel latent statistics: not SD 1.x/2.x */
    {"latents_std", "null"},
};

/* Ignored keys: force_upcast (fp16 -> fp32 upcasting; we decode in float32
 * always), use_quant_conv (the encoder side). */
int sd_vae_config_from_json(sd_vae_config *c, const json_t *j, const char *path, char *err) {
    memset(c, 0, sizeof *c);
    if (!json_is_object(j)) return d3_errf(err, "%s: expected a JSON object", path);
    const char *cls = json_string_value(json_object_get(j, "_class_name"));
    if (json_object_get(j, "_class_name") && (!cls || strcmp(cls, "AutoencoderKL")))
        return d3_errf(err, "%s: key '_class_name': expected \"AutoencoderKL\"", path);
    if (sdcfg_check_fixed(j, vae_fixed, (int)(sizeof vae_fixed / sizeof vae_fixed[0]),
                          "SD 1.x/2.x VAEs are supported", path, err))
        return -1;
    static const int d1[] = {0};
    int types[SDV_MAX_BLOCKS], nd, nu;
    if (sdcfg_enum_list(j, "down_block_types", down_names, SDV_MAX_BLOCKS, d1, 1, types, &nd, path,
                        err) ||
        sdcfg_enum_list(j, "up_block_types", up_names, SDV_MAX_BLOCKS, d1, 1, types, &nu, path, err))
        return -1;
    c->nblocks = nu;
    const json_t *boc = json_object_get(j, "block_out_channels");
    if (!boc || json_is_null(boc)) {
        if (nu != 1)
            return d3_errf(err, "%s: key 'block_out_channels': missing (needed for %d blocks)",
                           path, nu);
        c->block_out[0] = 64;
    } else if (!json_is_array(boc) ||
               sdcfg_ints(j, "block_out_channels", nu, 0, 1, 8192, c->block_out, path, err)) {
        return d3_errf(err, "%s: key 'block_out_channels': expected a list of %d integers from 1 "
                       "to 8192 (one per up block)", path, nu);
    }
    double sf;
    if (sdcfg_int(j, "in_channels", 3, 1, 64, &c->in_channels, path, err) ||
        sdcfg_int(j, "out_channels", 3, 1, 64, &c->out_channels, path, err) ||
        sdcfg_int(j, "latent_channels", 4, 1, 64, &c->latent_channels, path, err) ||
        sdcfg_int(j, "layers_per_block", 1, 1, 16, &c->layers, path, err) ||
        sdcfg_int(j, "norm_num_groups", 32, 1, 1024, &c->groups, path, err) ||
        sdcfg_int(j, "sample_size", 32, 1, 65536, &c->sample_size, path, err) ||
        sdcfg_num(j, "scaling_factor", 0.18215, 1e-6, 1e6, &sf, path, err) ||
        sdcfg_bool(j, "use_post_quant_conv", 1, &c->post_quant_conv, path, err) ||
        sdcfg_bool(j, "mid_block_add_attention", 1, &c->mid_attn, path, err))
        return -1;
    c->scaling_factor = (float)sf;
    for (int i = 0; i < nu; i++)
        if (c->block_out[i] % c->groups)
            return d3_errf(err, "%s: key 'norm_num_groups': %d does not divide block_out_channels "
                           "entry %d (%d)", path, c->groups, i, c->block_out[i]);
    return 0;
}

int sd_vae_layout(const sd_vae_config *c, sd_layout *L, char *err) {
    sdb_builder bd = {.L = L}, *b = &bd;
    int B = c->nblocks, lat = c->latent_channels, ch = c->block_out[B - 1];
    if (c->post_quant_conv) sdb_add_conv(b, "post_quant_conv", lat, lat, 1);
    sdb_bprefix(b, "decoder.");
    sdb_add_conv(b, "conv_in", lat, ch, 3);
    sdb_bprefix(b, "decoder.mid_block.resnets.0.");
    sdb_add_resnet(b, ch, ch, 0);
    if (c->mid_attn) {
        sdb_bprefix(b, "decoder.mid_block.attentions.0.");
        sdb_add_norm(b, "group_norm", ch);
        sdb_add_attention(b, "", ch, ch, ch, ch, 1);
    }
    sdb_bprefix(b, "decoder.mid_block.resnets.1.");
    sdb_add_resnet(b, ch, ch, 0);
    for (int i = 0; i < B; i++) {
        int oc = c->block_out[B - 1 - i];
        for (int j = 0; j <= c->layers; j++) {
            sdb_bprefix(b, "decoder.up_blocks.%d.resnets.%d.", i, j);
            sdb_add_resnet(b, ch, oc, 0);
            ch = oc;
        }
        if (i != B - 1) {
            sdb_bprefix(b, "decoder.up_blocks.%d.upsamplers.0.", i);
            sdb_add_conv(b, "conv", ch, ch, 3);
        }
    }
    sdb_bprefix(b, "decoder.");
    sdb_add_norm(b, "conv_norm_out", ch);
    sdb_add_conv(b, "conv_out", ch, c->out_channels, 3);
    if (b->failed) {
        sd_layout_free(L);
        return d3_errf(err, "SD VAE layout: out of memory");
    }
    return 0;
}

/* The decode is a chain of stages, each a function of the previous one's
 * output only: 0 = scale, post_quant_conv, conv_in and the mid block; then
 * every up block's resnets and upsampler in turn; last, the output norm,
 * SiLU and conv_out. sd_vae_decode runs them all on one tape;
 * sd_vae_decode_lowmem runs each on a fresh tape. */
static int vae_nstages(const sd_vae_config *c) {
    return 2 + c->nblocks * (c->layers + 1) + c->nblocks - 1;
}

static d3_tensor *vae_stage(sdb_ctx *f, const sd_vae_config *c, int k, d3_tensor *h) {
    d3_tape *tp = f->tp;
    int B = c->nblocks, G = c->groups, R = c->layers, ch = c->block_out[B - 1];
    if (k == 0) {
        d3_tensor *z = tape_scale(tp, h, 1.0f / c->scaling_factor);
        if (c->post_quant_conv) {
            sdb_prefix(f, "%s", "");
            z = sdb_conv(f, "post_quant_conv", z, c->latent_channels, 1, 1);
        }
        sdb_prefix(f, "decoder.");
        h = sdb_conv(f, "conv_in", z, ch, 3, 1);
        sdb_prefix(f, "decoder.mid_block.resnets.0.");
        h = sdb_resnet(f, h, NULL, ch, G, VAE_EPS);
        if (c->mid_attn) {
            /* one head over the H*W tokens, residual around it */
            sdb_prefix(f, "decoder.mid_block.attentions.0.");
            d3_tensor *a = tape_to_tokens(tp, sdb_groupnorm(f, "group_norm", h, G, VAE_EPS));
            a = sdb_attention(f, "", a, a, 1, ch, ch, 1);
            h = tape_add(tp, tape_to_nchw(tp, a, h->h, h->w), h);
        }
        sdb_prefix(f, "decoder.mid_block.resnets.1.");
        return sdb_resnet(f, h, NULL, ch, G, VAE_EPS);
    }
    k--;
    for (int i = 0; i < B; i++) {
        if (k <= R) {
            sdb_prefix(f, "decoder.up_blocks.%d.resnets.%d.", i, k);
            return sdb_resnet(f, h, NULL, c->block_out[B - 1 - i], G, VAE_EPS);
        }
        k -= R + 1;
        if (i != B - 1) {
            if (k == 0) {
                sdb_prefix(f, "decoder.up_blocks.%d.upsamplers.0.", i);
                return sdb_conv(f, "conv", tape_upsample2x(tp, h), h->c, 3, 1);
            }
            k--;
        }
    }
    sdb_prefix(f, "decoder.");
    h = tape_silu(tp, sdb_groupnorm(f, "conv_norm_out", h, G, VAE_EPS));
    return sdb_conv(f, "conv_out", h, c->out_channels, 3, 1);
}

d3_tensor *sd_vae_decode(d3_tape *tp, const sd_vae_config *c, const sd_layout *L,
                         const float *params, float *grads, d3_tensor *latents) {
    sdb_ctx F = {.tp = tp, .L = L, .P = params, .G = grads};
    d3_tensor *h = latents;
    for (int k = 0; k < vae_nstages(c); k++) h = vae_stage(&F, c, k, h);
    return h;
}

int sd_vae_decode_lowmem(const d3_backend *be, const sd_vae_config *c, const sd_layout *L,
                         const float *params, const float *latents, int N, int h, int w,
                         float *out, char *err) {
    d3_tape *tp[2] = {tape_new(be), tape_new(be)};
    if (!tp[0] || !tp[1]) {
        tape_free(tp[0]);
        tape_free(tp[1]);
        return d3_errf(err, "VAE decode: out of memory");
    }
    const float *src = latents;
    int n = N, ch = c->latent_channels, hh = h, ww = w;
    for (int k = 0; k < vae_nstages(c); k++) {
        /* the input comes from the other tape, whose stage is done */
        d3_tape *t = tp[k % 2];
        tape_reset(t);
        tape_set_grad(t, 0);
        d3_tensor *x = tape_input(t, n, ch, hh, ww);
        be->copy(x->v, src, x->numel * sizeof(float));
        sdb_ctx F = {.tp = t, .L = L, .P = params, .G = NULL};
        d3_tensor *y = vae_stage(&F, c, k, x);
        src = y->v;
        n = y->n; ch = y->c; hh = y->h; ww = y->w;
    }
    be->copy(out, src, (size_t)n * ch * hh * ww * sizeof(float));
    tape_free(tp[0]);
    tape_free(tp[1]);
    return 0;
}

void sd_vae_to_rgb8(uint8_t *out, const float *img, int C, int H, int W) {
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                float v = img[((size_t)c * H + y) * W + x] / 2.0f + 0.5f;
                if (!(v >= 0.0f)) v = 0.0f;  /* NaN too: 0, never an undefined cast */
                else if (v > 1.0f) v = 1.0f;
                out[((size_t)y * W + x) * C + c] = (uint8_t)rintf(v * 255.0f);
            }
}
