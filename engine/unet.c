/* unet.c - the DDPM-style UNet: architecture strings, the parameter table
 * with PyTorch names, initialisation, and the forward pass recorded on the
 * tape (whose reverse walk is the backward). The architecture is documented
 * in unet.h; bench/twin.py is its PyTorch twin. */
#include "unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

unet_arch unet_arch_default(void) {
    unet_arch a = {.base = 32, .nlevels = 3, .mult = {1, 2, 2}, .res = 2,
                   .nattn = 1, .attn = {8}, .size = 32, .classes = 100};
    return a;
}

static int parse_list(const char *v, int *out, int max, int *n) {
    *n = 0;
    if (!strcmp(v, "none")) return 0;
    const char *p = v;
    while (*p) {
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p || x <= 0 || x > 1 << 20 || *n >= max) return -1;
        out[(*n)++] = (int)x;
        if (*end == '.') p = end + 1;
        else if (*end == 0) p = end;
        else return -1;
    }
    return *n > 0 ? 0 : -1;
}

int unet_arch_parse(unet_arch *a, const char *s, char *err) {
    char buf[512];
    if (strlen(s) >= sizeof buf) return d3_errf(err, "architecture string too long");
    strcpy(buf, s);
    char *save = NULL;
    for (char *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) return d3_errf(err, "architecture: '%s' is not key=value", kv);
        *eq = 0;
        const char *k = kv, *v = eq + 1;
        char *end;
        if (!strcmp(k, "mult")) {
            if (parse_list(v, a->mult, UNET_MAX_LEVELS, &a->nlevels) || a->nlevels == 0)
                return d3_errf(err, "architecture: mult=%s: expected 1 to %d positive integers "
                               "separated by '.', e.g. 1.2.2", v, UNET_MAX_LEVELS);
        } else if (!strcmp(k, "attn")) {
            if (parse_list(v, a->attn, UNET_MAX_ATTN, &a->nattn))
                return d3_errf(err, "architecture: attn=%s: expected resolutions separated "
                               "by '.', e.g. 8 or 8.16, or none", v);
        } else {
            long x = strtol(v, &end, 10);
            if (end == v || *end || x <= 0 || x > 65536)
                return d3_errf(err, "architecture: %s=%s: expected a positive integer", k, v);
            if (!strcmp(k, "base")) a->base = (int)x;
            else if (!strcmp(k, "res")) a->res = (int)x;
            else if (!strcmp(k, "size")) a->size = (int)x;
            else if (!strcmp(k, "classes")) a->classes = (int)x;
            else return d3_errf(err, "architecture: unknown key '%s' (known: base, mult, res, "
                                "attn, size, classes)", k);
        }
    }
    return unet_arch_check(a, err);
}

void unet_arch_format(const unet_arch *a, char *out, size_t outlen) {
    char mult[64] = "", attn[64] = "";
    for (int i = 0; i < a->nlevels; i++)
        snprintf(mult + strlen(mult), sizeof mult - strlen(mult), "%s%d", i ? "." : "", a->mult[i]);
    if (a->nattn == 0) strcpy(attn, "none");
    for (int i = 0; i < a->nattn; i++)
        snprintf(attn + strlen(attn), sizeof attn - strlen(attn), "%s%d", i ? "." : "", a->attn[i]);
    snprintf(out, outlen, "base=%d,mult=%s,res=%d,attn=%s,size=%d,classes=%d", a->base, mult,
             a->res, attn, a->size, a->classes);
}

int unet_arch_check(const unet_arch *a, char *err) {
    if (a->base < 2 || a->base % 2 || a->base > 1024)
        return d3_errf(err, "architecture: base=%d: expected an even number from 2 to 1024", a->base);
    if (a->nlevels < 1 || a->nlevels > UNET_MAX_LEVELS)
        return d3_errf(err, "architecture: mult has %d levels, expected 1 to %d", a->nlevels,
                       UNET_MAX_LEVELS);
    for (int i = 0; i < a->nlevels; i++)
        if (a->mult[i] < 1 || a->mult[i] > 64)
            return d3_errf(err, "architecture: mult level %d is %d, expected 1 to 64", i, a->mult[i]);
    if (a->res < 1 || a->res > 8)
        return d3_errf(err, "architecture: res=%d: expected 1 to 8 blocks per level", a->res);
    if (a->size < 4 || a->size > 1024 || a->size % (1 << (a->nlevels - 1)))
        return d3_errf(err, "architecture: size=%d: expected 4..1024 and divisible by %d "
                       "(2^(levels-1))", a->size, 1 << (a->nlevels - 1));
    if (a->classes < 1 || a->classes > 100000)
        return d3_errf(err, "architecture: classes=%d: expected 1 to 100000", a->classes);
    return 0;
}

/* ---- parameter table ---- */

typedef struct {
    unet_layout *L;
    size_t cap;
    char prefix[96];
} builder;

static void add_param(builder *bd, const char *suffix, int ndim, int s0, int s1, int s2, int s3) {
    unet_layout *L = bd->L;
    if ((size_t)L->nparams == bd->cap) {
        bd->cap = bd->cap ? bd->cap * 2 : 128;
        L->params = realloc(L->params, bd->cap * sizeof *L->params);
        if (!L->params) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    }
    unet_param *p = &L->params[L->nparams++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s%s", bd->prefix, suffix);
    p->ndim = ndim;
    int s[4] = {s0, s1, s2, s3};
    p->numel = 1;
    for (int i = 0; i < ndim; i++) { p->shape[i] = s[i]; p->numel *= (size_t)s[i]; }
    p->offset = L->numel;
    L->numel += p->numel;
}

static void add_conv(builder *bd, const char *name, int ic, int oc, int k) {
    char w[48], b[48];
    snprintf(w, sizeof w, "%s.weight", name);
    snprintf(b, sizeof b, "%s.bias", name);
    add_param(bd, w, 4, oc, ic, k, k);
    add_param(bd, b, 1, oc, 0, 0, 0);
}
static void add_linear(builder *bd, const char *name, int in, int out) {
    char w[48], b[48];
    snprintf(w, sizeof w, "%s.weight", name);
    snprintf(b, sizeof b, "%s.bias", name);
    add_param(bd, w, 2, out, in, 0, 0);
    add_param(bd, b, 1, out, 0, 0, 0);
}
static void add_norm(builder *bd, const char *name, int c) {
    char w[48], b[48];
    snprintf(w, sizeof w, "%s.weight", name);
    snprintf(b, sizeof b, "%s.bias", name);
    add_param(bd, w, 1, c, 0, 0, 0);
    add_param(bd, b, 1, c, 0, 0, 0);
}

static void set_prefix(builder *bd, const char *fmt, int i, int j) {
    snprintf(bd->prefix, sizeof bd->prefix, fmt, i, j);
}

static void add_res(builder *bd, int ic, int oc, int E) {
    add_norm(bd, "norm1", ic);
    add_conv(bd, "conv1", ic, oc, 3);
    add_linear(bd, "emb_proj", E, oc);
    add_norm(bd, "norm2", oc);
    add_conv(bd, "conv2", oc, oc, 3);
    if (ic != oc) add_conv(bd, "skip", ic, oc, 1);
}
static void add_attn(builder *bd, int c) {
    add_norm(bd, "norm", c);
    add_conv(bd, "qkv", c, 3 * c, 1);
    add_conv(bd, "proj", c, c, 1);
}

static int has_attn(const unet_arch *a, int res) {
    for (int i = 0; i < a->nattn; i++)
        if (a->attn[i] == res) return 1;
    return 0;
}

int unet_layout_build(unet_layout *L, const unet_arch *a, char *err) {
    memset(L, 0, sizeof *L);
    if (unet_arch_check(a, err)) return -1;
    L->arch = *a;
    builder bd = {.L = L};
    int B = a->base, E = 4 * B;
    set_prefix(&bd, "", 0, 0);
    add_linear(&bd, "time_embed.0", B, E);
    add_linear(&bd, "time_embed.2", E, E);
    add_param(&bd, "class_embed.weight", 2, a->classes + 1, E, 0, 0);
    add_conv(&bd, "conv_in", 3, B, 3);
    int skips[64], ns = 0, ch = B, res = a->size;
    skips[ns++] = ch;
    for (int i = 0; i < a->nlevels; i++) {
        int oc = B * a->mult[i];
        for (int j = 0; j < a->res; j++) {
            set_prefix(&bd, "down.%d.res.%d.", i, j);
            add_res(&bd, ch, oc, E);
            ch = oc;
            if (has_attn(a, res)) { set_prefix(&bd, "down.%d.attn.%d.", i, j); add_attn(&bd, ch); }
            skips[ns++] = ch;
        }
        if (i != a->nlevels - 1) {
            set_prefix(&bd, "down.%d.", i, 0);
            add_conv(&bd, "downsample", ch, ch, 3);
            res /= 2;
            skips[ns++] = ch;
        }
    }
    set_prefix(&bd, "mid.res.0.", 0, 0); add_res(&bd, ch, ch, E);
    set_prefix(&bd, "mid.attn.0.", 0, 0); add_attn(&bd, ch);
    set_prefix(&bd, "mid.res.1.", 0, 0); add_res(&bd, ch, ch, E);
    for (int i = a->nlevels - 1; i >= 0; i--) {
        int oc = B * a->mult[i];
        for (int j = 0; j <= a->res; j++) {
            set_prefix(&bd, "up.%d.res.%d.", i, j);
            add_res(&bd, ch + skips[--ns], oc, E);
            ch = oc;
            if (has_attn(a, res)) { set_prefix(&bd, "up.%d.attn.%d.", i, j); add_attn(&bd, ch); }
        }
        if (i != 0) {
            set_prefix(&bd, "up.%d.", i, 0);
            add_conv(&bd, "upsample", ch, ch, 3);
            res *= 2;
        }
    }
    set_prefix(&bd, "", 0, 0);
    add_norm(&bd, "norm_out", ch);
    add_conv(&bd, "conv_out", ch, 3, 3);
    return 0;
}

void unet_layout_free(unet_layout *L) {
    free(L->params);
    memset(L, 0, sizeof *L);
}

const unet_param *unet_layout_find(const unet_layout *L, const char *name) {
    for (int i = 0; i < L->nparams; i++)
        if (!strcmp(L->params[i].name, name)) return &L->params[i];
    return NULL;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

void unet_init_params(const unet_layout *L, float *params, uint64_t seed) {
    d3_rng r;
    rng_init(&r, seed, 0x1417);
    for (int i = 0; i < L->nparams; i++) {
        const unet_param *p = &L->params[i];
        float *x = params + p->offset;
        int is_norm = strstr(p->name, "norm") != NULL;
        int zero = ends_with(p->name, ".conv2.weight") || ends_with(p->name, ".conv2.bias") ||
                   ends_with(p->name, ".proj.weight") || ends_with(p->name, ".proj.bias") ||
                   !strncmp(p->name, "conv_out.", 9);
        if (is_norm) {
            float v = ends_with(p->name, ".weight") ? 1.0f : 0.0f;
            for (size_t k = 0; k < p->numel; k++) x[k] = v;
        } else if (!strcmp(p->name, "class_embed.weight")) {
            rng_normal(&r, x, p->numel);
        } else if (zero) {
            memset(x, 0, p->numel * sizeof *x);
        } else {
            /* fan_in of the layer: the weight's numel / out features. For a
             * bias, use the matching weight's fan_in (the entry before). */
            const unet_param *w = ends_with(p->name, ".bias") ? p - 1 : p;
            size_t fan_in = w->numel / (size_t)w->shape[0];
            float bound = 1.0f / sqrtf((float)fan_in);
            rng_uniform(&r, x, p->numel);
            for (size_t k = 0; k < p->numel; k++) x[k] = (2.0f * x[k] - 1.0f) * bound;
        }
    }
}

/* ---- forward ---- */

int unet_gn_groups(int c) {
    for (int g = 32; g > 1; g--)
        if (c % g == 0) return g;
    return 1;
}

typedef struct {
    d3_tape *tp;
    const unet_layout *L;
    const float *P;
    float *G;
    char prefix[96];
    int cursor; /* parameters are used in about the order they were created */
} fctx;

static const unet_param *param(fctx *f, const char *name, const char *suffix) {
    char full[160];
    snprintf(full, sizeof full, "%s%s%s", f->prefix, name, suffix);
    const unet_param *p = NULL;
    for (int k = 0; k < f->L->nparams; k++) {
        int i = (f->cursor + k) % f->L->nparams;
        if (!strcmp(f->L->params[i].name, full)) { p = &f->L->params[i]; f->cursor = i; break; }
    }
    if (!p) { fprintf(stderr, "d3po: internal error: no parameter %s\n", full); abort(); }
    return p;
}
#define PW(f, name) ((f)->P + param(f, name, ".weight")->offset)
#define PB(f, name) ((f)->P + param(f, name, ".bias")->offset)
#define GW(f, name) ((f)->G ? (f)->G + param(f, name, ".weight")->offset : NULL)
#define GB(f, name) ((f)->G ? (f)->G + param(f, name, ".bias")->offset : NULL)

static d3_tensor *conv(fctx *f, const char *name, d3_tensor *x, int oc, int k, int stride) {
    return tape_conv2d(f->tp, x, PW(f, name), PB(f, name), GW(f, name), GB(f, name), oc, k,
                       stride, k / 2);
}
static d3_tensor *norm(fctx *f, const char *name, d3_tensor *x) {
    return tape_groupnorm(f->tp, x, PW(f, name), PB(f, name), GW(f, name), GB(f, name),
                          unet_gn_groups(x->c));
}

/* silu(norm(x + e)), e: [N, C, 1, 1] or NULL, as one op */
static d3_tensor *norm_silu(fctx *f, const char *name, d3_tensor *x, d3_tensor *e) {
    return tape_groupnorm_silu(f->tp, x, e, PW(f, name), PB(f, name), GW(f, name), GB(f, name),
                               unet_gn_groups(x->c), 1e-5f);
}

static d3_tensor *resblock(fctx *f, d3_tensor *x, d3_tensor *eact, int oc) {
    d3_tensor *h = conv(f, "conv1", norm_silu(f, "norm1", x, NULL), oc, 3, 1);
    d3_tensor *e = tape_linear(f->tp, eact, PW(f, "emb_proj"), PB(f, "emb_proj"),
                               GW(f, "emb_proj"), GB(f, "emb_proj"), oc);
    /* h + e, norm2, silu */
    h = conv(f, "conv2", norm_silu(f, "norm2", h, e), oc, 3, 1);
    d3_tensor *s = x->c != oc ? conv(f, "skip", x, oc, 1, 1) : x;
    return tape_add(f->tp, h, s);
}

static d3_tensor *attnblock(fctx *f, d3_tensor *x) {
    d3_tensor *qkv = conv(f, "qkv", norm(f, "norm", x), 3 * x->c, 1, 1);
    d3_tensor *o = tape_attention(f->tp, qkv);
    return tape_add(f->tp, x, conv(f, "proj", o, x->c, 1, 1));
}

d3_tensor *unet_forward(d3_tape *tp, const unet_layout *L, const float *params, float *grads,
                        d3_tensor *x, const float *t, const int *y) {
    const unet_arch *a = &L->arch;
    fctx F = {.tp = tp, .L = L, .P = params, .G = grads}, *f = &F;
    int N = x->n, B = a->base, E = 4 * B;
    /* embeddings: [N, E, 1, 1] */
    d3_tensor *te = tape_timestep_embedding(tp, t, N, B);
    f->prefix[0] = 0;
    te = tape_linear(tp, te, PW(f, "time_embed.0"), PB(f, "time_embed.0"), GW(f, "time_embed.0"),
                     GB(f, "time_embed.0"), E);
    te = tape_silu(tp, te);
    te = tape_linear(tp, te, PW(f, "time_embed.2"), PB(f, "time_embed.2"), GW(f, "time_embed.2"),
                     GB(f, "time_embed.2"), E);
    d3_tensor *ce = tape_embedding(tp, y, N, PW(f, "class_embed"), GW(f, "class_embed"), E);
    d3_tensor *eact = tape_silu(tp, tape_add(tp, te, ce));

    d3_tensor *skips[64];
    int ns = 0, res = a->size;
    d3_tensor *h = conv(f, "conv_in", x, B, 3, 1);
    skips[ns++] = h;
    for (int i = 0; i < a->nlevels; i++) {
        int oc = B * a->mult[i];
        for (int j = 0; j < a->res; j++) {
            snprintf(f->prefix, sizeof f->prefix, "down.%d.res.%d.", i, j);
            h = resblock(f, h, eact, oc);
            if (has_attn(a, res)) {
                snprintf(f->prefix, sizeof f->prefix, "down.%d.attn.%d.", i, j);
                h = attnblock(f, h);
            }
            skips[ns++] = h;
        }
        if (i != a->nlevels - 1) {
            snprintf(f->prefix, sizeof f->prefix, "down.%d.", i);
            h = conv(f, "downsample", h, h->c, 3, 2);
            res /= 2;
            skips[ns++] = h;
        }
    }
    snprintf(f->prefix, sizeof f->prefix, "mid.res.0.");
    h = resblock(f, h, eact, h->c);
    snprintf(f->prefix, sizeof f->prefix, "mid.attn.0.");
    h = attnblock(f, h);
    snprintf(f->prefix, sizeof f->prefix, "mid.res.1.");
    h = resblock(f, h, eact, h->c);
    for (int i = a->nlevels - 1; i >= 0; i--) {
        int oc = B * a->mult[i];
        for (int j = 0; j <= a->res; j++) {
            snprintf(f->prefix, sizeof f->prefix, "up.%d.res.%d.", i, j);
            h = resblock(f, tape_concat(tp, h, skips[--ns]), eact, oc);
            if (has_attn(a, res)) {
                snprintf(f->prefix, sizeof f->prefix, "up.%d.attn.%d.", i, j);
                h = attnblock(f, h);
            }
        }
        if (i != 0) {
            snprintf(f->prefix, sizeof f->prefix, "up.%d.", i);
            h = conv(f, "upsample", tape_upsample2x(tp, h), h->c, 3, 1);
            res *= 2;
        }
    }
    f->prefix[0] = 0;
    h = norm_silu(f, "norm_out", h, NULL);
    return conv(f, "conv_out", h, 3, 3, 1);
}
