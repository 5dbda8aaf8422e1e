/* tape.c - the autograd tape: an arena of device memory, a list of tensors
 * and a list of recorded nodes, walked in reverse by tape_backward().
 * See tape.h for the contract. */
#include "tape.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum op {
    OP_CONV2D, OP_LINEAR, OP_GROUPNORM, OP_SILU, OP_ADD, OP_ADDBC, OP_CONCAT,
    OP_UPSAMPLE2X, OP_ATTENTION, OP_EMBEDDING, OP_GNSILU,
    /* transformer layers (SD family) */
    OP_DENSE, OP_LAYERNORM, OP_GELU, OP_QUICK_GELU, OP_GEGLU, OP_SCALE, OP_MHA,
    OP_TRANSPOSE, OP_COPY,
    /* classifier */
    OP_AVGPOOL
};

typedef struct {
    enum op op;
    d3_tensor *in0, *in1, *in2, *out; /* in2: attention's v */
    const float *w, *b;
    float *dw, *db;
    float *s0, *s1, *s2; /* saved buffers: gn mean/rstd (/coef), attention
                            probs, a conv's kept input transforms */
    const int *idx;  /* embedding indices (device) */
    int a0, a1, a2;  /* int arguments: OC/K/stride, G, D ... */
    int a3;
    float f0;        /* float argument: eps, scale */
} node;

typedef struct block {
    char *base;
    size_t size, used;
} block;

struct d3_tape {
    const d3_backend *be;
    int grad_on;
    size_t kept; /* bytes of kept conv transforms since tape_reset */
    block *blocks;
    int nblocks, cur;
    size_t total;
    d3_tensor **tensors;
    int ntensors, captensors;
    node *nodes;
    int nnodes, capnodes;
    /* tape_backward's recycled activation-gradient buffers */
    struct gbuf { float *p; size_t n; } *pool;
    int npool, cappool;
    /* per tensor id: its gradient buffer is held but not yet written or
     * zeroed (tape_backward; see grad_need) */
    unsigned char *gunset;
    /* tape_worker's sibling tapes, made on first use, freed with this one */
    struct d3_tape *workers[TAPE_WORKERS];
};

#define ARENA_MIN (64u << 20)
/* Kept conv input transforms (tape_conv2d) per forward, at most: they
 * save ~1/3 of the Winograd input transforms of a training step at 2.25x
 * each conv input's memory; a large model (SD's UNet with full gradients)
 * keeps them for its first convs only instead of growing by GBs. */
#define TAPE_KEEP_MAX ((size_t)512 << 20)

d3_tape *tape_new(const d3_backend *be) {
    d3_tape *tp = calloc(1, sizeof *tp);
    if (!tp) return NULL;
    tp->be = be;
    tp->grad_on = 1;
    return tp;
}

void tape_free(d3_tape *tp) {
    if (!tp) return;
    for (int k = 0; k < TAPE_WORKERS; k++) tape_free(tp->workers[k]);
    tape_reset(tp);
    for (int i = 0; i < tp->nblocks; i++) tp->be->free(tp->blocks[i].base);
    free(tp->blocks);
    free(tp->tensors);
    free(tp->nodes);
    free(tp->pool);
    free(tp->gunset);
    free(tp);
}

void tape_reset(d3_tape *tp) {
    for (int i = 0; i < tp->ntensors; i++) free(tp->tensors[i]);
    tp->ntensors = 0;
    tp->nnodes = 0;
    tp->kept = 0;
    for (int i = 0; i < tp->nblocks; i++) tp->blocks[i].used = 0;
    tp->cur = 0;
}

void tape_set_grad(d3_tape *tp, int on) { tp->grad_on = on; }
const d3_backend *tape_backend(const d3_tape *tp) { return tp->be; }
size_t tape_arena_bytes(const d3_tape *tp) {
    size_t n = tp->total;
    for (int k = 0; k < TAPE_WORKERS; k++)
        if (tp->workers[k]) n += tp->workers[k]->total;
    return n;
}

d3_tape *tape_worker(d3_tape *tp, int k) {
    if (k == 0) return tp;
    if (k < 0 || k > TAPE_WORKERS) return NULL;
    if (!tp->workers[k - 1]) tp->workers[k - 1] = tape_new(tp->be);
    return tp->workers[k - 1];
}

static void *arena_get(d3_tape *tp, size_t bytes, int zero) {
    bytes = (bytes + 63) & ~(size_t)63;
    if (bytes == 0) bytes = 64;
    for (; tp->cur < tp->nblocks; tp->cur++) {
        block *b = &tp->blocks[tp->cur];
        if (b->size - b->used >= bytes) {
            void *p = b->base + b->used;
            b->used += bytes;
            if (zero) tp->be->zero(p, bytes);
            return p;
        }
    }
    size_t sz = bytes > ARENA_MIN ? bytes : ARENA_MIN;
    block *nb = realloc(tp->blocks, (tp->nblocks + 1) * sizeof *nb);
    if (!nb) { fprintf(stderr, "d3po: out of memory (tape blocks)\n"); abort(); }
    tp->blocks = nb;
    void *base = tp->be->alloc(sz); /* zeroed */
    if (!base) {
        fprintf(stderr, "d3po: out of %s memory allocating %zu MiB for activations\n",
                tp->be->name, sz >> 20);
        abort();
    }
    tp->blocks[tp->nblocks] = (block){base, sz, bytes};
    tp->cur = tp->nblocks;
    tp->nblocks++;
    tp->total += sz;
    return base;
}

float *tape_alloc(d3_tape *tp, size_t nfloats) {
    return arena_get(tp, nfloats * sizeof(float), 1);
}

static d3_tensor *new_tensor(d3_tape *tp, int n, int c, int h, int w, int zero) {
    d3_tensor *t = malloc(sizeof *t);
    if (!t) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    t->n = n; t->c = c; t->h = h; t->w = w;
    t->numel = (size_t)n * c * h * w;
    t->v = arena_get(tp, t->numel * sizeof(float), zero);
    t->g = NULL;
    if (tp->ntensors == tp->captensors) {
        tp->captensors = tp->captensors ? 2 * tp->captensors : 256;
        tp->tensors = realloc(tp->tensors, tp->captensors * sizeof *tp->tensors);
        tp->gunset = realloc(tp->gunset, tp->captensors);
        if (!tp->tensors || !tp->gunset) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    }
    t->id = tp->ntensors;
    tp->tensors[tp->ntensors++] = t;
    return t;
}

static node *push(d3_tape *tp, enum op op, d3_tensor *in0, d3_tensor *in1, d3_tensor *out) {
    if (!tp->grad_on) return NULL;
    if (tp->nnodes == tp->capnodes) {
        tp->capnodes = tp->capnodes ? 2 * tp->capnodes : 256;
        tp->nodes = realloc(tp->nodes, tp->capnodes * sizeof *tp->nodes);
        if (!tp->nodes) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    }
    node *nd = &tp->nodes[tp->nnodes++];
    memset(nd, 0, sizeof *nd);
    nd->op = op; nd->in0 = in0; nd->in1 = in1; nd->out = out;
    return nd;
}

d3_tensor *tape_input(d3_tape *tp, int n, int c, int h, int w) {
    return new_tensor(tp, n, c, h, w, 1);
}

d3_tensor *tape_conv2d(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                       float *dw, float *db, int OC, int K, int stride, int pad) {
    int OH = (x->h + 2 * pad - K) / stride + 1, OW = (x->w + 2 * pad - K) / stride + 1;
    const d3_backend *be = tp->be;
    d3_tensor *y = new_tensor(tp, x->n, OC, OH, OW, 0);
    /* where the backend can keep the forward's input transforms for the
     * weight gradient (Winograd on the CPU), they go on the tape */
    const size_t nkeep = tp->grad_on && dw && be->conv2d_keep_floats
                             ? be->conv2d_keep_floats(x->n, x->c, x->h, x->w, OC, K, stride, pad)
                             : 0;
    float *keep = NULL;
    if (nkeep && tp->kept + nkeep * sizeof(float) <= TAPE_KEEP_MAX) {
        keep = arena_get(tp, nkeep * sizeof(float), 0);
        tp->kept += nkeep * sizeof(float);
    }
    if (keep)
        be->conv2d_forward_keep(y->v, keep, x->v, w, b, x->n, x->c, x->h, x->w, OC, K, stride,
                                pad);
    else
        be->conv2d_forward(y->v, x->v, w, b, x->n, x->c, x->h, x->w, OC, K, stride, pad);
    node *nd = push(tp, OP_CONV2D, x, NULL, y);
    if (nd) { nd->w = w; nd->b = b; nd->dw = dw; nd->db = db; nd->s0 = keep; nd->a0 = OC; nd->a1 = K; nd->a2 = stride; nd->a3 = pad; }
    return y;
}

d3_tensor *tape_linear(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                       float *dw, float *db, int OUT) {
    int IN = x->c * x->h * x->w;
    d3_tensor *y = new_tensor(tp, x->n, OUT, 1, 1, 0);
    tp->be->linear_forward(y->v, x->v, w, b, x->n, IN, OUT);
    node *nd = push(tp, OP_LINEAR, x, NULL, y);
    if (nd) { nd->w = w; nd->b = b; nd->dw = dw; nd->db = db; nd->a0 = IN; nd->a1 = OUT; }
    return y;
}

d3_tensor *tape_groupnorm_eps(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                              float *dw, float *db, int G, float eps) {
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w, 0);
    float *mean = arena_get(tp, sizeof(float) * x->n * G, 0);
    float *rstd = arena_get(tp, sizeof(float) * x->n * G, 0);
    tp->be->groupnorm_forward(y->v, mean, rstd, x->v, w, b, x->n, x->c, x->h * x->w, G, eps);
    node *nd = push(tp, OP_GROUPNORM, x, NULL, y);
    if (nd) { nd->w = w; nd->b = b; nd->dw = dw; nd->db = db; nd->s0 = mean; nd->s1 = rstd; nd->a0 = G; nd->f0 = eps; }
    return y;
}

d3_tensor *tape_groupnorm(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                          float *dw, float *db, int G) {
    return tape_groupnorm_eps(tp, x, w, b, dw, db, G, 1e-5f);
}

d3_tensor *tape_groupnorm_silu(d3_tape *tp, d3_tensor *x, d3_tensor *e, const float *w,
                               const float *b, float *dw, float *db, int G, float eps) {
    assert(!e || (e->n == x->n && e->c == x->c && e->h * e->w == 1));
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w, 0);
    const size_t ng = (size_t)x->n * G, nc = (size_t)x->n * x->c;
    float *mean = arena_get(tp, sizeof(float) * ng, 0);
    float *rstd = arena_get(tp, sizeof(float) * ng, 0);
    float *coef = arena_get(tp, sizeof(float) * 2 * nc, 0);
    tp->be->gnsilu_forward(y->v, mean, rstd, coef, x->v, e ? e->v : NULL, w, b, x->n, x->c,
                           x->h * x->w, G, eps);
    node *nd = push(tp, OP_GNSILU, x, e, y);
    if (nd) { nd->w = w; nd->b = b; nd->dw = dw; nd->db = db; nd->s0 = mean; nd->s1 = rstd; nd->s2 = coef; nd->a0 = G; }
    return y;
}

d3_tensor *tape_silu(d3_tape *tp, d3_tensor *x) {
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w, 0);
    tp->be->silu_forward(y->v, x->v, x->numel);
    push(tp, OP_SILU, x, NULL, y);
    return y;
}

d3_tensor *tape_add(d3_tape *tp, d3_tensor *a, d3_tensor *b) {
    assert(a->numel == b->numel);
    d3_tensor *y = new_tensor(tp, a->n, a->c, a->h, a->w, 0);
    tp->be->add_forward(y->v, a->v, b->v, a->numel);
    push(tp, OP_ADD, a, b, y);
    return y;
}

d3_tensor *tape_addbc(d3_tape *tp, d3_tensor *x, d3_tensor *e) {
    assert(e->n == x->n && e->c == x->c && e->h * e->w == 1);
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w, 0);
    tp->be->addbc_forward(y->v, x->v, e->v, x->n, x->c, x->h * x->w);
    push(tp, OP_ADDBC, x, e, y);
    return y;
}

d3_tensor *tape_concat(d3_tape *tp, d3_tensor *a, d3_tensor *b) {
    assert(a->n == b->n && a->h == b->h && a->w == b->w);
    d3_tensor *y = new_tensor(tp, a->n, a->c + b->c, a->h, a->w, 0);
    tp->be->concat_forward(y->v, a->v, b->v, a->n, a->c, b->c, a->h * a->w);
    push(tp, OP_CONCAT, a, b, y);
    return y;
}

d3_tensor *tape_upsample2x(d3_tape *tp, d3_tensor *x) {
    d3_tensor *y = new_tensor(tp, x->n, x->c, 2 * x->h, 2 * x->w, 0);
    tp->be->upsample2x_forward(y->v, x->v, x->n, x->c, x->h, x->w);
    push(tp, OP_UPSAMPLE2X, x, NULL, y);
    return y;
}

d3_tensor *tape_attention(d3_tape *tp, d3_tensor *qkv) {
    assert(qkv->c % 3 == 0);
    int C = qkv->c / 3, T = qkv->h * qkv->w;
    d3_tensor *y = new_tensor(tp, qkv->n, C, qkv->h, qkv->w, 0);
    float *att = arena_get(tp, sizeof(float) * (size_t)qkv->n * T * T, 0);
    tp->be->attention_forward(y->v, att, qkv->v, qkv->n, C, T);
    node *nd = push(tp, OP_ATTENTION, qkv, NULL, y);
    if (nd) nd->s0 = att;
    return y;
}

d3_tensor *tape_embedding(d3_tape *tp, const int *idx, int n, const float *table,
                          float *dtable, int D) {
    int *didx = arena_get(tp, sizeof(int) * n, 0);
    tp->be->upload(didx, idx, sizeof(int) * n);
    d3_tensor *y = new_tensor(tp, n, D, 1, 1, 0);
    tp->be->embedding_forward(y->v, didx, table, n, D);
    node *nd = push(tp, OP_EMBEDDING, NULL, NULL, y);
    if (nd) { nd->idx = didx; nd->dw = dtable; nd->a0 = D; }
    return y;
}

d3_tensor *tape_timestep_embedding_ex(d3_tape *tp, const float *t, int n, int D, int flip,
                                      float shift) {
    float *dt = arena_get(tp, sizeof(float) * n, 0);
    tp->be->upload(dt, t, sizeof(float) * n);
    d3_tensor *y = new_tensor(tp, n, D, 1, 1, 0);
    tp->be->timestep_embedding_ex(y->v, dt, n, D, flip, shift);
    return y; /* a leaf: no gradient flows to timesteps */
}

d3_tensor *tape_timestep_embedding(d3_tape *tp, const float *t, int n, int D) {
    float *dt = arena_get(tp, sizeof(float) * n, 0);
    tp->be->upload(dt, t, sizeof(float) * n);
    d3_tensor *y = new_tensor(tp, n, D, 1, 1, 0);
    tp->be->timestep_embedding(y->v, dt, n, D);
    return y; /* a leaf: no gradient flows to timesteps */
}

/* ------------------------------------------------------ transformer layers */

/* rows of x over its last dim */
static int rows_of(const d3_tensor *x) { return (int)(x->numel / (size_t)x->w); }

d3_tensor *tape_dense(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                      float *dw, float *db, int OUT) {
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, OUT, 0);
    tp->be->linear_forward(y->v, x->v, w, b, rows_of(x), x->w, OUT);
    node *nd = push(tp, OP_DENSE, x, NULL, y);
    if (nd) { nd->w = w; nd->b = b; nd->dw = dw; nd->db = db; }
    return y;
}

d3_tensor *tape_layernorm(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                          float *dw, float *db, float eps) {
    const int R = rows_of(x);
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w, 0);
    float *mean = arena_get(tp, sizeof(float) * R, 0);
    float *rstd = arena_get(tp, sizeof(float) * R, 0);
    tp->be->layernorm_forward(y->v, mean, rstd, x->v, w, b, R, x->w, eps);
    node *nd = push(tp, OP_LAYERNORM, x, NULL, y);
    if (nd) { nd->w = w; nd->b = b; nd->dw = dw; nd->db = db; nd->s0 = mean; nd->s1 = rstd; }
    return y;
}

d3_tensor *tape_gelu(d3_tape *tp, d3_tensor *x) {
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w, 0);
    tp->be->gelu_forward(y->v, x->v, x->numel);
    push(tp, OP_GELU, x, NULL, y);
    return y;
}

d3_tensor *tape_quick_gelu(d3_tape *tp, d3_tensor *x) {
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w, 0);
    tp->be->quick_gelu_forward(y->v, x->v, x->numel);
    push(tp, OP_QUICK_GELU, x, NULL, y);
    return y;
}

d3_tensor *tape_geglu(d3_tape *tp, d3_tensor *x) {
    assert(x->w % 2 == 0);
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w / 2, 0);
    tp->be->geglu_forward(y->v, x->v, rows_of(x), x->w / 2);
    push(tp, OP_GEGLU, x, NULL, y);
    return y;
}

d3_tensor *tape_scale(d3_tape *tp, d3_tensor *x, float s) {
    d3_tensor *y = new_tensor(tp, x->n, x->c, x->h, x->w, 0);
    tp->be->scale_forward(y->v, x->v, s, x->numel);
    node *nd = push(tp, OP_SCALE, x, NULL, y);
    if (nd) nd->f0 = s;
    return y;
}

d3_tensor *tape_avgpool(d3_tape *tp, d3_tensor *x) {
    d3_tensor *y = new_tensor(tp, x->n, x->c, 1, 1, 0);
    tp->be->avgpool_forward(y->v, x->v, x->n, x->c, x->h * x->w);
    push(tp, OP_AVGPOOL, x, NULL, y);
    return y;
}

d3_tensor *tape_mha(d3_tape *tp, d3_tensor *q, d3_tensor *k, d3_tensor *v, int heads,
                    int causal) {
    const int D = q->w, Tq = q->c, Tk = k->c;
    assert(q->h == 1 && k->h == 1 && v->h == 1 && k->n == q->n && v->n == q->n);
    assert(k->w == D && v->w == D && v->c == Tk && heads > 0 && D % heads == 0);
    assert(!causal || Tq == Tk);
    d3_tensor *y = new_tensor(tp, q->n, Tq, 1, D, 0);
    float *lse = arena_get(tp, sizeof(float) * (size_t)q->n * heads * Tq, 0);
    tp->be->mha_forward(y->v, lse, q->v, k->v, v->v, q->n, Tq, Tk, heads, D / heads, causal);
    node *nd = push(tp, OP_MHA, q, k, y);
    if (nd) { nd->in2 = v; nd->s0 = lse; nd->a0 = heads; nd->a1 = causal; }
    return y;
}

d3_tensor *tape_to_tokens(d3_tape *tp, d3_tensor *x) {
    const int HW = x->h * x->w;
    d3_tensor *y = new_tensor(tp, x->n, HW, 1, x->c, 0);
    tp->be->transpose_forward(y->v, x->v, x->n, x->c, HW);
    push(tp, OP_TRANSPOSE, x, NULL, y);
    return y;
}

d3_tensor *tape_to_nchw(d3_tape *tp, d3_tensor *x, int H, int W) {
    assert(x->h == 1 && x->c == H * W);
    d3_tensor *y = new_tensor(tp, x->n, x->w, H, W, 0);
    tp->be->transpose_forward(y->v, x->v, x->n, x->c, x->w);
    push(tp, OP_TRANSPOSE, x, NULL, y);
    return y;
}

d3_tensor *tape_reshape(d3_tape *tp, d3_tensor *x, int n, int c, int h, int w) {
    assert((size_t)n * c * h * w == x->numel);
    d3_tensor *y = new_tensor(tp, n, c, h, w, 0);
    tp->be->copy(y->v, x->v, x->numel * sizeof(float));
    push(tp, OP_COPY, x, NULL, y);
    return y;
}

static float *gradof(d3_tensor *t) { return t ? t->g : NULL; }

/* Activation gradients live only from their first consumer's backward to
 * their producer's: tape_backward takes each from a pool of released
 * buffers of the same size or from the arena, and releases it once the
 * producer's backward has read it. The live set is a few tensors wide
 * instead of the whole forward, so the gradients stay in the caches (and
 * the arena holds ~half as much). Every backward accumulates, so a buffer
 * is zeroed before its first writer runs (grad_zero), unless that writer
 * can overwrite instead (a conv's input gradient, conv2d_backward_keep's
 * set; add, concat and reshape, grad_pass): the reverse walk reaches a tensor's consumers one by one, so the
 * first one to run is the first writer. */
static void grad_need(d3_tape *tp, d3_tensor *t) {
    if (!t || t->g) return;
    tp->gunset[t->id] = 1;
    for (int i = 0; i < tp->npool; i++)
        if (tp->pool[i].n == t->numel) {
            t->g = tp->pool[i].p;
            tp->pool[i] = tp->pool[--tp->npool];
            return;
        }
    t->g = arena_get(tp, t->numel * sizeof(float), 0);
}

/* Zeroes t's gradient if nothing wrote it yet (before an accumulating
 * backward). */
static void grad_zero(d3_tape *tp, d3_tensor *t) {
    if (!t || !tp->gunset[t->id]) return;
    tp->be->zero(t->g, t->numel * sizeof(float));
    tp->gunset[t->id] = 0;
}

static void grad_release(d3_tape *tp, d3_tensor *t) {
    if (!t->g) return;
    if (tp->npool == tp->cappool) {
        tp->cappool = tp->cappool ? 2 * tp->cappool : 64;
        tp->pool = realloc(tp->pool, tp->cappool * sizeof *tp->pool);
        if (!tp->pool) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    }
    tp->pool[tp->npool++] = (struct gbuf){t->g, t->numel};
    t->g = NULL;
}

/* The ops whose input gradients are slices or copies of the output's
 * (add, reshape, concat): an input without a gradient yet (this is its
 * first writer) gets a copy, or in0 of an add or reshape takes the
 * output's buffer over, instead of a zeroed buffer added to; inputs
 * that have one are added to. The same numbers but for the sign of a
 * zero (0 + -0 is +0). Returns 0 for the other ops. */
static int grad_pass(d3_tape *tp, node *nd) {
    const d3_backend *be = tp->be;
    d3_tensor *x = nd->in0, *b = nd->in1, *y = nd->out;
    if (nd->op == OP_CONCAT && b != x) {
        const int N = x->n, HW = x->h * x->w;
        const size_t sa = (size_t)x->c * HW, sb = (size_t)b->c * HW;
        d3_tensor *t[2] = {x, b};
        int fresh[2];
        for (int i = 0; i < 2; i++) {
            fresh[i] = !t[i]->g;
            grad_need(tp, t[i]);
            tp->gunset[t[i]->id] = 0;
        }
        for (int n = 0; n < N; n++) {
            const float *d = y->g + n * (sa + sb);
            if (fresh[0]) be->copy(x->g + n * sa, d, sa * sizeof(float));
            if (fresh[1]) be->copy(b->g + n * sb, d + sa, sb * sizeof(float));
        }
        if (!fresh[0] || !fresh[1])
            be->concat_backward(fresh[0] ? NULL : x->g, fresh[1] ? NULL : b->g, y->g, N, x->c,
                                b->c, HW);
        grad_release(tp, y);
        return 1;
    }
    if ((nd->op != OP_ADD && nd->op != OP_COPY) || b == x) return 0;
    if (b) {
        if (b->g) {
            be->add_backward(NULL, b->g, y->g, y->numel);
        } else {
            grad_need(tp, b);
            tp->gunset[b->id] = 0;
            be->copy(b->g, y->g, y->numel * sizeof(float));
        }
    }
    if (x->g) {
        be->add_backward(x->g, NULL, y->g, y->numel);
        grad_release(tp, y);
    } else { /* y's buffer is x's now (the same size) */
        x->g = y->g;
        y->g = NULL;
        tp->gunset[x->id] = 0;
    }
    return 1;
}

void tape_backward(d3_tape *tp, d3_tensor *out, const float *dout) {
    const d3_backend *be = tp->be;
    assert(tp->grad_on);
    for (int i = 0; i <= out->id; i++) tp->tensors[i]->g = NULL;
    tp->npool = 0;
    grad_need(tp, out);
    tp->gunset[out->id] = 0;
    be->copy(out->g, dout, out->numel * sizeof(float)); /* out->g = dout */
    for (int k = tp->nnodes - 1; k >= 0; k--) {
        node *nd = &tp->nodes[k];
        if (nd->out->id > out->id) continue; /* recorded after out: not part of it */
        d3_tensor *x = nd->in0, *y = nd->out;
        if (!y->g) continue; /* no consumer: a zero gradient, nothing to add */
        if (grad_pass(tp, nd)) continue;
        grad_need(tp, nd->in0);
        grad_need(tp, nd->in1);
        grad_need(tp, nd->in2);
        if (nd->op != OP_CONV2D || !be->conv2d_backward_keep) {
            grad_zero(tp, nd->in0);
            grad_zero(tp, nd->in1);
            grad_zero(tp, nd->in2);
        }
        switch (nd->op) {
        case OP_CONV2D:
            if (be->conv2d_backward_keep) {
                const int set = tp->gunset[x->id];
                tp->gunset[x->id] = 0;
                be->conv2d_backward_keep(x->g, set, nd->dw, nd->db, y->g, x->v, nd->s0, nd->w,
                                         x->n, x->c, x->h, x->w, nd->a0, nd->a1, nd->a2, nd->a3);
            } else
                be->conv2d_backward(x->g, nd->dw, nd->db, y->g, x->v, nd->w, x->n, x->c, x->h,
                                    x->w, nd->a0, nd->a1, nd->a2, nd->a3);
            break;
        case OP_LINEAR:
            be->linear_backward(x->g, nd->dw, nd->db, y->g, x->v, nd->w, x->n, nd->a0, nd->a1);
            break;
        case OP_GROUPNORM:
            be->groupnorm_backward(x->g, nd->dw, nd->db, y->g, x->v, nd->w, nd->s0, nd->s1,
                                   x->n, x->c, x->h * x->w, nd->a0, nd->f0);
            break;
        case OP_GNSILU:
            be->gnsilu_backward(x->g, gradof(nd->in1), nd->dw, nd->db, y->g, x->v,
                                nd->in1 ? nd->in1->v : NULL, nd->w, nd->s2, nd->s0, nd->s1,
                                x->n, x->c, x->h * x->w, nd->a0);
            break;
        case OP_SILU:
            be->silu_backward(x->g, y->g, x->v, x->numel);
            break;
        case OP_ADD:
            be->add_backward(x->g, gradof(nd->in1), y->g, y->numel);
            break;
        case OP_ADDBC:
            be->addbc_backward(x->g, gradof(nd->in1), y->g, x->n, x->c, x->h * x->w);
            break;
        case OP_CONCAT:
            be->concat_backward(x->g, gradof(nd->in1), y->g, x->n, x->c, nd->in1->c, x->h * x->w);
            break;
        case OP_UPSAMPLE2X:
            be->upsample2x_backward(x->g, y->g, x->n, x->c, x->h, x->w);
            break;
        case OP_ATTENTION:
            be->attention_backward(x->g, y->g, x->v, nd->s0, x->n, y->c, y->h * y->w);
            break;
        case OP_EMBEDDING:
            if (nd->dw) be->embedding_backward(nd->dw, y->g, nd->idx, y->n, nd->a0);
            break;
        case OP_DENSE:
            be->linear_backward(x->g, nd->dw, nd->db, y->g, x->v, nd->w, rows_of(x), x->w, y->w);
            break;
        case OP_LAYERNORM:
            be->layernorm_backward(x->g, nd->dw, nd->db, y->g, x->v, nd->w, nd->s0, nd->s1,
                                   rows_of(x), x->w);
            break;
        case OP_GELU:
            be->gelu_backward(x->g, y->g, x->v, x->numel);
            break;
        case OP_QUICK_GELU:
            be->quick_gelu_backward(x->g, y->g, x->v, x->numel);
            break;
        case OP_GEGLU:
            be->geglu_backward(x->g, y->g, x->v, rows_of(x), y->w);
            break;
        case OP_SCALE:
            be->scale_backward(x->g, y->g, nd->f0, x->numel);
            break;
        case OP_MHA: {
            d3_tensor *k = nd->in1, *v = nd->in2;
            be->mha_backward(x->g, k->g, v->g, y->g, x->v, k->v, v->v, y->v, nd->s0, x->n, x->c,
                             k->c, nd->a0, x->w / nd->a0, nd->a1);
            break;
        }
        case OP_TRANSPOSE: /* x viewed as [n, A = c, B = h*w]: a map [n, C, HW] or
                              tokens [n, HW, 1, C]; y = its transpose */
            be->transpose_backward(x->g, y->g, x->n, x->c, x->h * x->w);
            break;
        case OP_COPY:
            be->add_backward(x->g, NULL, y->g, x->numel);
            break;
        case OP_AVGPOOL:
            be->avgpool_backward(x->g, y->g, x->n, x->c, x->h * x->w);
            break;
        }
        grad_release(tp, y);
    }
    /* only node outputs are released: leaves (the input, timestep
     * embeddings) keep their gradients for the caller */
}
