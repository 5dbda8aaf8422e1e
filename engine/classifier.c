/* classifier.c - the emoji classifier of `d3po eval-model`: parameter
 * layout, forward pass on the tape, safetensors file with data statistics,
 * and the Frechet distance between feature Gaussians. See classifier.h. */
#include "classifier.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "safetensors.h"

/* (out channels as a multiple of base, stride) of the blocks */
static const int blk_mult[CLS_NBLOCKS] = {2, 2, 4, 4, 4};
static const int blk_stride[CLS_NBLOCKS] = {2, 1, 2, 1, 2};

/* One parameter tensor of the layout. */
typedef struct {
    char name[48];
    int ndim;
    int64_t shape[4];
    size_t off, n;
} cls_param;

#define CLS_MAXP (4 + 4 * CLS_NBLOCKS + 2)

static int groups_of(int C) { return C % 8 == 0 ? 8 : C % 4 == 0 ? 4 : 1; }

/* Fills the table (in forward order) and returns the count. */
static int layout(const d3_classifier *c, cls_param *p, size_t *total) {
    int np = 0;
    size_t off = 0;
#define ADD(nm, nd, a, b, cc, d)                                                             \
    do {                                                                                     \
        cls_param *q = &p[np++];                                                             \
        snprintf(q->name, sizeof q->name, "%s", nm);                                         \
        q->ndim = nd;                                                                        \
        q->shape[0] = a; q->shape[1] = b; q->shape[2] = cc; q->shape[3] = d;                 \
        q->n = (size_t)(a) * (nd > 1 ? (b) : 1) * (nd > 2 ? (cc) : 1) * (nd > 3 ? (d) : 1); \
        q->off = off;                                                                        \
        off += q->n;                                                                         \
    } while (0)
    const int B = c->base;
    ADD("stem.weight", 4, B, 3, 3, 3);
    ADD("stem.bias", 1, B, 0, 0, 0);
    int cin = B;
    for (int i = 0; i < CLS_NBLOCKS; i++) {
        const int cout = blk_mult[i] * B;
        char nm[48];
        snprintf(nm, sizeof nm, "blocks.%d.norm.weight", i); ADD(nm, 1, cin, 0, 0, 0);
        snprintf(nm, sizeof nm, "blocks.%d.norm.bias", i);   ADD(nm, 1, cin, 0, 0, 0);
        snprintf(nm, sizeof nm, "blocks.%d.conv.weight", i); ADD(nm, 4, cout, cin, 3, 3);
        snprintf(nm, sizeof nm, "blocks.%d.conv.bias", i);   ADD(nm, 1, cout, 0, 0, 0);
        cin = cout;
    }
    ADD("out_norm.weight", 1, cin, 0, 0, 0);
    ADD("out_norm.bias", 1, cin, 0, 0, 0);
    ADD("head.weight", 2, c->nclasses, cin, 0, 0);
    ADD("head.bias", 1, c->nclasses, 0, 0, 0);
#undef ADD
    *total = off;
    return np;
}

static char *xstrdup(const char *s) {
    char *d = strdup(s);
    if (!d) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    return d;
}

static int alloc_common(d3_classifier *c, int base, int size, int nclasses, char *err) {
    if (base < 4 || base > 256 || size < 8 || size > 256 || size % 8 || nclasses < 2 ||
        nclasses > 100000)
        return d3_errf(err, "classifier: base=%d size=%d classes=%d: expected base 4..256, size "
                            "a multiple of 8 in 8..256, at least 2 classes", base, size, nclasses);
    c->base = base;
    c->size = size;
    c->nclasses = nclasses;
    c->nfeat = 4 * base;
    cls_param p[CLS_MAXP];
    layout(c, p, &c->nparams);
    c->params = calloc(c->nparams, sizeof(float));
    c->class_names = calloc(nclasses, sizeof(char *));
    if (!c->params || !c->class_names) return d3_errf(err, "classifier: out of memory");
    return 0;
}

int cls_init(d3_classifier *c, int base, int size, int nclasses, char *const *names,
             uint64_t seed, char *err) {
    memset(c, 0, sizeof *c);
    if (alloc_common(c, base, size, nclasses, err)) { cls_free(c); return -1; }
    for (int i = 0; i < nclasses; i++) c->class_names[i] = xstrdup(names[i]);
    cls_param p[CLS_MAXP];
    size_t total;
    int np = layout(c, p, &total);
    d3_rng r;
    rng_init(&r, seed, 0);
    for (int i = 0; i < np; i++) {
        float *w = c->params + p[i].off;
        const char *nm = p[i].name;
        size_t L = strlen(nm);
        if (L > 11 && !strcmp(nm + L - 11, "norm.weight")) {
            for (size_t j = 0; j < p[i].n; j++) w[j] = 1.0f;
        } else if (p[i].ndim > 1) { /* PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
            size_t fan_in = p[i].n / (size_t)p[i].shape[0];
            float a = 1.0f / sqrtf((float)fan_in);
            rng_uniform(&r, w, p[i].n);
            for (size_t j = 0; j < p[i].n; j++) w[j] = a * (2 * w[j] - 1);
        } /* biases stay 0 */
    }
    return 0;
}

void cls_free(d3_classifier *c) {
    if (c->class_names)
        for (int i = 0; i < c->nclasses; i++) free(c->class_names[i]);
    free(c->class_names);
    free(c->params);
    free(c->mu); free(c->cov); free(c->count); free(c->hacc);
    for (int i = 0; i < c->nmeta; i++) { free(c->meta_keys[i]); free(c->meta_vals[i]); }
    free(c->meta_keys); free(c->meta_vals);
    memset(c, 0, sizeof *c);
}

void cls_set_meta(d3_classifier *c, const char *key, const char *val) {
    for (int i = 0; i < c->nmeta; i++)
        if (!strcmp(c->meta_keys[i], key)) { free(c->meta_vals[i]); c->meta_vals[i] = xstrdup(val); return; }
    c->meta_keys = realloc(c->meta_keys, (c->nmeta + 1) * sizeof(char *));
    c->meta_vals = realloc(c->meta_vals, (c->nmeta + 1) * sizeof(char *));
    if (!c->meta_keys || !c->meta_vals) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    c->meta_keys[c->nmeta] = xstrdup(key);
    c->meta_vals[c->nmeta++] = xstrdup(val);
}

const char *cls_get_meta(const d3_classifier *c, const char *key) {
    for (int i = 0; i < c->nmeta; i++)
        if (!strcmp(c->meta_keys[i], key)) return c->meta_vals[i];
    return NULL;
}

/* ------------------------------------------------------------- the file */

int cls_save(const d3_classifier *c, const char *path, char *err) {
    cls_param p[CLS_MAXP];
    size_t total;
    int np = layout(c, p, &total);
    st_writer *w = st_writer_new();
    int rc = -1;
    char arch[128];
    snprintf(arch, sizeof arch, "base=%d,size=%d,classes=%d", c->base, c->size, c->nclasses);
    json_t *arr = json_array();
    for (int i = 0; i < c->nclasses; i++) json_array_append_new(arr, json_string(c->class_names[i]));
    char *classes = json_dumps(arr, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(arr);
    if (!w || !classes) { d3_errf(err, "%s: out of memory", path); goto out; }
    if (st_writer_meta(w, "d3po.format", "1", err) ||
        st_writer_meta(w, "d3po.kind", "classifier", err) ||
        st_writer_meta(w, "d3po.classifier", arch, err) ||
        st_writer_meta(w, "d3po.classes", classes, err))
        goto out;
    for (int i = 0; i < c->nmeta; i++)
        if (st_writer_meta(w, c->meta_keys[i], c->meta_vals[i], err)) goto out;
    for (int i = 0; i < np; i++)
        if (st_writer_add(w, p[i].name, ST_F32, p[i].ndim, p[i].shape, c->params + p[i].off, err))
            goto out;
    const int64_t K1 = c->nclasses + 1, F = c->nfeat;
    const int64_t smu[2] = {K1, F}, scov[3] = {K1, F, F}, sk[1] = {K1};
    if (c->mu && (st_writer_add(w, "data.mu", ST_F32, 2, smu, c->mu, err) ||
                  st_writer_add(w, "data.cov", ST_F32, 3, scov, c->cov, err) ||
                  st_writer_add(w, "data.count", ST_F32, 1, sk, c->count, err) ||
                  st_writer_add(w, "holdout.acc", ST_F32, 1, sk, c->hacc, err)))
        goto out;
    rc = st_writer_save(w, path, err);
out:
    free(classes);
    st_writer_free(w);
    return rc;
}

/* Copies tensor name of exactly n floats into a new buffer. */
static float *load_f32(const st_file *f, const char *path, const char *name, size_t n,
                       int required, char *err) {
    const st_tensor *t = st_find(f, name);
    if (!t) {
        if (required) d3_errf(err, "%s: missing tensor '%s'", path, name);
        return NULL;
    }
    if (st_numel(t) != n) {
        d3_errf(err, "%s: tensor '%s' has %zu values, expected %zu", path, name, st_numel(t), n);
        return NULL;
    }
    float *d = malloc(n * sizeof(float));
    if (!d) { d3_errf(err, "%s: out of memory", path); return NULL; }
    if (st_to_f32(t, d, path, err)) { free(d); return NULL; }
    return d;
}

int cls_load(d3_classifier *c, const char *path, char *err) {
    memset(c, 0, sizeof *c);
    st_file f;
    if (st_load(&f, path, err)) return -1;
    int rc = -1;
    const char *kind = st_meta(&f, "d3po.kind"), *arch = st_meta(&f, "d3po.classifier");
    const char *classes = st_meta(&f, "d3po.classes");
    int base, size, K;
    if (!kind || strcmp(kind, "classifier") || !arch ||
        sscanf(arch, "base=%d,size=%d,classes=%d", &base, &size, &K) != 3) {
        d3_errf(err, "%s: not a d3po classifier (metadata d3po.kind, d3po.classifier)", path);
        goto out;
    }
    if (alloc_common(c, base, size, K, err)) {
        char e2[D3_ERRLEN];
        snprintf(e2, sizeof e2, "%s: %s", path, err);
        snprintf(err, D3_ERRLEN, "%s", e2);
        goto out;
    }
    json_error_t je;
    json_t *arr = classes ? json_loads(classes, 0, &je) : NULL;
    if (!json_is_array(arr) || (int)json_array_size(arr) != K) {
        json_decref(arr);
        d3_errf(err, "%s: metadata d3po.classes: expected a JSON array of %d strings", path, K);
        goto out;
    }
    for (int i = 0; i < K; i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        c->class_names[i] = xstrdup(s ? s : "?");
    }
    json_decref(arr);
    cls_param p[CLS_MAXP];
    size_t total;
    int np = layout(c, p, &total);
    for (int i = 0; i < np; i++) {
        float *v = load_f32(&f, path, p[i].name, p[i].n, 1, err);
        if (!v) goto out;
        memcpy(c->params + p[i].off, v, p[i].n * sizeof(float));
        free(v);
    }
    const size_t K1 = (size_t)K + 1, F = c->nfeat;
    err[0] = 0;
    c->mu = load_f32(&f, path, "data.mu", K1 * F, 0, err);
    if (c->mu) {
        c->cov = load_f32(&f, path, "data.cov", K1 * F * F, 1, err);
        c->count = c->cov ? load_f32(&f, path, "data.count", K1, 1, err) : NULL;
        /* holdout.acc is NaN for a class without held-out images (fewer
         * than 5): read it as stored, finite or not */
        const st_tensor *t = c->count ? st_find(&f, "holdout.acc") : NULL;
        const float *h = t && t->dtype == ST_F32 && st_numel(t) == K1 ? st_f32_view(t) : NULL;
        if (c->count && !h) d3_errf(err, "%s: tensor 'holdout.acc': expected %zu F32 values", path, K1);
        if (!h) goto out;
        c->hacc = malloc(K1 * sizeof(float));
        if (!c->hacc) { d3_errf(err, "%s: out of memory", path); goto out; }
        memcpy(c->hacc, h, K1 * sizeof(float));
    } else if (err[0]) {
        goto out;
    }
    for (int i = 0; i < f.nmeta; i++)
        if (strncmp(f.meta_keys[i], "d3po.", 5)) cls_set_meta(c, f.meta_keys[i], f.meta_vals[i]);
    rc = 0;
out:
    st_free(&f);
    if (rc) cls_free(c);
    return rc;
}

/* ---------------------------------------------------------- the network */

d3_tensor *cls_forward(d3_tape *tp, const d3_classifier *c, const float *params, float *grads,
                       d3_tensor *x, d3_tensor **feat) {
    cls_param p[CLS_MAXP];
    size_t total;
    layout(c, p, &total);
    int k = 0;
#define W(i) (params + p[i].off)
#define G(i) (grads ? grads + p[i].off : NULL)
    /* x: [N, 3, S, S] -> [N, B, S, S] */
    d3_tensor *h = tape_conv2d(tp, x, W(k), W(k + 1), G(k), G(k + 1), c->base, 3, 1, 1);
    k += 2;
    for (int i = 0; i < CLS_NBLOCKS; i++) {
        h = tape_groupnorm(tp, h, W(k), W(k + 1), G(k), G(k + 1), groups_of(h->c));
        h = tape_silu(tp, h);
        h = tape_conv2d(tp, h, W(k + 2), W(k + 3), G(k + 2), G(k + 3), blk_mult[i] * c->base, 3,
                        blk_stride[i], 1);
        k += 4;
    }
    h = tape_groupnorm(tp, h, W(k), W(k + 1), G(k), G(k + 1), groups_of(h->c));
    h = tape_silu(tp, h);
    d3_tensor *f = tape_avgpool(tp, h); /* [N, F, 1, 1] */
    if (feat) *feat = f;
    return tape_linear(tp, f, W(k + 2), W(k + 3), G(k + 2), G(k + 3), c->nclasses);
#undef W
#undef G
}

/* ------------------------------------------------------ Frechet distance */

void cls_moments(double *mu, double *cov, const float *feat, int n, int F) {
    for (int j = 0; j < F; j++) mu[j] = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < F; j++) mu[j] += feat[(size_t)i * F + j];
    for (int j = 0; j < F; j++) mu[j] /= n > 0 ? n : 1;
    for (size_t j = 0; j < (size_t)F * F; j++) cov[j] = 0;
    if (n < 2) return;
    for (int i = 0; i < n; i++)
        for (int a = 0; a < F; a++) {
            const double da = feat[(size_t)i * F + a] - mu[a];
            for (int b = 0; b <= a; b++) cov[(size_t)a * F + b] += da * (feat[(size_t)i * F + b] - mu[b]);
        }
    for (int a = 0; a < F; a++)
        for (int b = 0; b <= a; b++) {
            cov[(size_t)a * F + b] /= n - 1;
            cov[(size_t)b * F + a] = cov[(size_t)a * F + b];
        }
}

/* Cyclic Jacobi: A [F*F] symmetric (destroyed) -> eigenvalues ev[F],
 * eigenvectors as the columns of V [F*F]. */
static void jacobi(double *A, double *ev, double *V, int F) {
    for (int i = 0; i < F; i++)
        for (int j = 0; j < F; j++) V[i * F + j] = i == j;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, tot = 0;
        for (int i = 0; i < F; i++)
            for (int j = 0; j < F; j++) {
                tot += A[i * F + j] * A[i * F + j];
                if (i != j) off += A[i * F + j] * A[i * F + j];
            }
        if (off <= 1e-30 * tot || off == 0) break;
        for (int p = 0; p < F - 1; p++)
            for (int q = p + 1; q < F; q++) {
                const double apq = A[p * F + q];
                if (apq == 0) continue;
                const double th = (A[q * F + q] - A[p * F + p]) / (2 * apq);
                const double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                const double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < F; k++) { /* columns p, q */
                    const double akp = A[k * F + p], akq = A[k * F + q];
                    A[k * F + p] = cs * akp - sn * akq;
                    A[k * F + q] = sn * akp + cs * akq;
                }
                for (int k = 0; k < F; k++) { /* rows p, q */
                    const double apk = A[p * F + k], aqk = A[q * F + k];
                    A[p * F + k] = cs * apk - sn * aqk;
                    A[q * F + k] = sn * apk + cs * aqk;
                }
                for (int k = 0; k < F; k++) {
                    const double vkp = V[k * F + p], vkq = V[k * F + q];
                    V[k * F + p] = cs * vkp - sn * vkq;
                    V[k * F + q] = sn * vkp + cs * vkq;
                }
            }
    }
    for (int i = 0; i < F; i++) ev[i] = A[i * F + i];
}

double cls_frechet(const double *mu1, const double *cov1, const double *mu2, const double *cov2,
                   int F) {
    const size_t FF = (size_t)F * F;
    double *A = malloc(FF * sizeof(double)), *V = malloc(FF * sizeof(double));
    double *R = malloc(FF * sizeof(double)), *T = malloc(FF * sizeof(double));
    double *ev = malloc(F * sizeof(double));
    if (!A || !V || !R || !T || !ev) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    double d = 0, tr = 0;
    for (int i = 0; i < F; i++) {
        d += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]);
        tr += cov1[(size_t)i * F + i] + cov2[(size_t)i * F + i];
    }
    /* R = S1^1/2 = V diag(sqrt(max(ev, 0))) V^T */
    memcpy(A, cov1, FF * sizeof(double));
    jacobi(A, ev, V, F);
    for (int i = 0; i < F; i++)
        for (int j = 0; j < F; j++) {
            double s = 0;
            for (int k = 0; k < F; k++) s += V[i * F + k] * sqrt(ev[k] > 0 ? ev[k] : 0) * V[j * F + k];
            R[i * F + j] = s;
        }
    /* A = R S2 R (symmetric PSD); tr sqrt(A) = sum sqrt(eigenvalues) */
    for (int i = 0; i < F; i++)
        for (int j = 0; j < F; j++) {
            double s = 0;
            for (int k = 0; k < F; k++) s += R[i * F + k] * cov2[(size_t)k * F + j];
            T[i * F + j] = s;
        }
    for (int i = 0; i < F; i++)
        for (int j = 0; j < F; j++) {
            double s = 0;
            for (int k = 0; k < F; k++) s += T[i * F + k] * R[k * F + j];
            A[i * F + j] = s;
        }
    for (int i = 0; i < F; i++) /* symmetrise the rounding */
        for (int j = 0; j < i; j++) A[i * F + j] = A[j * F + i] = 0.5 * (A[i * F + j] + A[j * F + i]);
    jacobi(A, ev, V, F);
    double trs = 0;
    for (int i = 0; i < F; i++) trs += sqrt(ev[i] > 0 ? ev[i] : 0);
    free(A); free(V); free(R); free(T); free(ev);
    const double fd = d + tr - 2 * trs;
    return fd > 0 ? fd : 0;
}
