/* sdblocks.h - the building blocks the SD UNet (sdunet.c) and the VAE
 * decoder (vae.c) share, each in two halves that must agree: the layout
 * half adds a block's tensors under diffusers' names (sdb_add_*), the
 * forward half records the block on the tape, finding those tensors by
 * name (sdb_*). Names are the context's prefix + the local name:
 *
 *   sdb_ctx f = {.tp = tp, .L = L, .P = params, .G = grads};
 *   sdb_prefix(&f, "down_blocks.%d.resnets.%d.", i, j);
 *   h = sdb_resnet(&f, h, eact, oc, groups, eps);     uses down_blocks.0.resnets.0.norm1.weight, ...
 *
 * A tensor missing from the layout in the forward half is a programmer
 * error (the layout comes from the same config): it aborts with its name.
 */
#ifndef D3PO_SD_SDBLOCKS_H
#define D3PO_SD_SDBLOCKS_H

#include "layout.h"
#include "tape.h"

/* ---- layout half: each returns 0, or -1 when the layout cannot grow ---- */

typedef struct {
    sd_layout *L;
    char prefix[SD_NAME_MAX];
    int failed;      /* set when an add failed (out of memory, name clash) */
} sdb_builder;

void sdb_bprefix(sdb_builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* name.weight [oc, ic, k, k] and name.bias [oc]. */
void sdb_add_conv(sdb_builder *b, const char *name, int ic, int oc, int k);
/* name.weight [out, in], and name.bias [out] when bias. */
void sdb_add_linear(sdb_builder *b, const char *name, int in, int out, int bias);
/* name.weight [c], name.bias [c] (GroupNorm, LayerNorm). */
void sdb_add_norm(sdb_builder *b, const char *name, int c);
/* ResnetBlock2D ic -> oc: norm1, conv1, time_emb_proj (temb > 0), norm2,
 * conv2, conv_shortcut (ic != oc). */
void sdb_add_resnet(sdb_builder *b, int ic, int oc, int temb);

/* ---- forward half ---- */

typedef struct {
    d3_tape *tp;
    const sd_layout *L;
    const float *P;  /* parameters (device) */
    float *G;        /* gradients (device) or NULL: frozen */
    char prefix[SD_NAME_MAX];
    int cursor;      /* tensors are used in about layout order: search from here */
} sdb_ctx;

void sdb_prefix(sdb_ctx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The entry prefix+name+suffix (aborts if absent: see above). */
const sd_param *sdb_param(sdb_ctx *f, const char *name, const char *suffix);
const float *sdb_w(sdb_ctx *f, const char *name, const char *suffix);
float *sdb_g(sdb_ctx *f, const char *name, const char *suffix); /* NULL when frozen */

/* conv k x k (k/2 padding) with bias. */
d3_tensor *sdb_conv(sdb_ctx *f, const char *name, d3_tensor *x, int oc, int k, int stride);
/* GroupNorm with G groups and eps. */
d3_tensor *sdb_groupnorm(sdb_ctx *f, const char *name, d3_tensor *x, int G, float eps);
/* LayerNorm over the last dim. */
d3_tensor *sdb_layernorm(sdb_ctx *f, const char *name, d3_tensor *x, float eps);
/* Linear over the last dim (tokens), with or without bias. */
d3_tensor *sdb_dense(sdb_ctx *f, const char *name, d3_tensor *x, int out, int bias);
/* ResnetBlock2D x [N, ic, h, w] -> [N, oc, h, w]; eact = silu(temb)
 * [N, E, 1, 1] or NULL (the VAE: no time input). */
d3_tensor *sdb_resnet(sdb_ctx *f, d3_tensor *x, d3_tensor *eact, int oc, int G, float eps);
/* Attention (diffusers' Attention module) of tokens xq [N, Tq, 1, Dq] to
 * tokens xkv [N, Tk, 1, Dkv] under prefix+name: to_q/to_k/to_v (bias when
 * qkv_bias) to inner = heads * dh, tape_mha, to_out.0 (with bias) back to
 * out. */
d3_tensor *sdb_attention(sdb_ctx *f, const char *name, d3_tensor *xq, d3_tensor *xkv, int heads,
                         int inner, int out, int qkv_bias);
/* Layout half of sdb_attention: q from dq, k/v from dkv. */
void sdb_add_attention(sdb_builder *b, const char *name, int dq, int dkv, int inner, int out,
                       int qkv_bias);

#endif
