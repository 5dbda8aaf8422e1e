/* sdblocks.c - shared SD blocks, layout half and forward half (sdblocks.h). */
#include "sdblocks.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- layout half ---- */

void sdb_bprefix(sdb_builder *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->prefix, sizeof b->prefix, fmt, ap);
    va_end(ap);
}

static void add(sdb_builder *b, const char *name, const char *suffix, int ndim, int64_t s0,
                int64_t s1, int64_t s2, int64_t s3) {
    int64_t s[4] = {s0, s1, s2, s3};
    if (!sd_layout_addf(b->L, ndim, s, "%s%s%s", b->prefix, name, suffix)) b->failed = 1;
}

void sdb_add_conv(sdb_builder *b, const char *name, int ic, int oc, int k) {
    add(b, name, ".weight", 4, oc, ic, k, k);
    add(b, name, ".bias", 1, oc, 0, 0, 0);
}

void sdb_add_linear(sdb_builder *b, const char *name, int in, int out, int bias) {
    add(b, name, ".weight", 2, out, in, 0, 0);
    if (bias) add(b, name, ".bias", 1, out, 0, 0, 0);
}

void sdb_add_norm(sdb_builder *b, const char *name, int c) {
    add(b, name, ".weight", 1, c, 0, 0, 0);
    add(b, name, ".bias", 1, c, 0, 0, 0);
}

void sdb_add_resnet(sdb_builder *b, int ic, int oc, int temb) {
    sdb_add_norm(b, "norm1", ic);
    sdb_add_conv(b, "conv1", ic, oc, 3);
    if (temb > 0) sdb_add_linear(b, "time_emb_proj", temb, oc, 1);
    sdb_add_norm(b, "norm2", oc);
    sdb_add_conv(b, "conv2", oc, oc, 3);
    if (ic != oc) sdb_add_conv(b, "conv_shortcut", ic, oc, 1);
}

void sdb_add_attention(sdb_builder *b, const char *name, int dq, int dkv, int inner, int out,
                       int qkv_bias) {
    char n[SD_NAME_MAX];
    snprintf(n, sizeof n, "%sto_q", name);
    sdb_add_linear(b, n, dq, inner, qkv_bias);
    snprintf(n, sizeof n, "%sto_k", name);
    sdb_add_linear(b, n, dkv, inner, qkv_bias);
    snprintf(n, sizeof n, "%sto_v", name);
    sdb_add_linear(b, n, dkv, inner, qkv_bias);
    snprintf(n, sizeof n, "%sto_out.0", name);
    sdb_add_linear(b, n, inner, out, 1);
}

/* ---- forward half ---- */

void sdb_prefix(sdb_ctx *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->prefix, sizeof f->prefix, fmt, ap);
    va_end(ap);
}

const sd_param *sdb_param(sdb_ctx *f, const char *name, const char *suffix) {
    char full[3 * SD_NAME_MAX];
    snprintf(full, sizeof full, "%s%s%s", f->prefix, name, suffix);
    int n = f->L->n;
    for (int k = 0; k < n; k++) {
        int i = (f->cursor + k) % n;
        if (!strcmp(f->L->p[i].name, full)) {
            f->cursor = i;
            return &f->L->p[i];
        }
    }
    fprintf(stderr, "d3po: internal error: the SD layout has no tensor %s\n", full);
    abort();
}

const float *sdb_w(sdb_ctx *f, const char *name, const char *suffix) {
    return f->P + sdb_param(f, name, suffix)->off;
}

float *sdb_g(sdb_ctx *f, const char *name, const char *suffix) {
    return f->G ? f->G + sdb_param(f, name, suffix)->off : NULL;
}

d3_tensor *sdb_conv(sdb_ctx *f, const char *name, d3_tensor *x, int oc, int k, int stride) {
    return tape_conv2d(f->tp, x, sdb_w(f, name, ".weight"), sdb_w(f, name, ".bias"),
                       sdb_g(f, name, ".weight"), sdb_g(f, name, ".bias"), oc, k, stride, k / 2);
}

d3_tensor *sdb_groupnorm(sdb_ctx *f, const char *name, d3_tensor *x, int G, float eps) {
    return tape_groupnorm_eps(f->tp, x, sdb_w(f, name, ".weight"), sdb_w(f, name, ".bias"),
                              sdb_g(f, name, ".weight"), sdb_g(f, name, ".bias"), G, eps);
}

d3_tensor *sdb_layernorm(sdb_ctx *f, const char *name, d3_tensor *x, float eps) {
    return tape_layernorm(f->tp, x, sdb_w(f, name, ".weight"), sdb_w(f, name, ".bias"),
                          sdb_g(f, name, ".weight"), sdb_g(f, name, ".bias"), eps);
}

d3_tensor *sdb_dense(sdb_ctx *f, const char *name, d3_tensor *x, int out, int bias) {
    return tape_dense(f->tp, x, sdb_w(f, name, ".weight"), bias ? sdb_w(f, name, ".bias") : NULL,
                      sdb_g(f, name, ".weight"), bias ? sdb_g(f, name, ".bias") : NULL, out);
}

d3_tensor *sdb_resnet(sdb_ctx *f, d3_tensor *x, d3_tensor *eact, int oc, int G, float eps) {
    d3_tape *tp = f->tp;
    d3_tensor *h = sdb_conv(f, "conv1", tape_silu(tp, sdb_groupnorm(f, "norm1", x, G, eps)), oc, 3, 1);
    if (eact) {
        d3_tensor *e = tape_linear(tp, eact, sdb_w(f, "time_emb_proj", ".weight"),
                                   sdb_w(f, "time_emb_proj", ".bias"),
                                   sdb_g(f, "time_emb_proj", ".weight"),
                                   sdb_g(f, "time_emb_proj", ".bias"), oc);
        h = tape_addbc(tp, h, e);
    }
    h = sdb_conv(f, "conv2", tape_silu(tp, sdb_groupnorm(f, "norm2", h, G, eps)), oc, 3, 1);
    d3_tensor *s = x->c != oc ? sdb_conv(f, "conv_shortcut", x, oc, 1, 1) : x;
    return tape_add(tp, h, s);
}

d3_tensor *sdb_attention(sdb_ctx *f, const char *name, d3_tensor *xq, d3_tensor *xkv, int heads,
                         int inner, int out, int qkv_bias) {
    char n[SD_NAME_MAX];
    snprintf(n, sizeof n, "%sto_q", name);
    d3_tensor *q = sdb_dense(f, n, xq, inner, qkv_bias);
    snprintf(n, sizeof n, "%sto_k", name);
    d3_tensor *k = sdb_dense(f, n, xkv, inner, qkv_bias);
    snprintf(n, sizeof n, "%sto_v", name);
    d3_tensor *v = sdb_dense(f, n, xkv, inner, qkv_bias);
    d3_tensor *o = tape_mha(f->tp, q, k, v, heads, 0);
    snprintf(n, sizeof n, "%sto_out.0", name);
    return sdb_dense(f, n, o, out, 1);
}
