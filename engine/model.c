/* model.c - model lifetime and safetensors I/O with validation (model.h). */
#include "model.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

#ifndef D3PO_VERSION
#define D3PO_VERSION "dev"
#endif

int schedule_init(d3_schedule *s, int T, double b0, double b1, char *err) {
    if (T < 2 || T > D3_T_MAX)
        return d3_errf(err, "schedule: T=%d: expected 2 to %d steps", T, D3_T_MAX);
    if (!(b0 > 0 && b1 >= b0 && b1 < 1))
        return d3_errf(err, "schedule: betas %g..%g: expected 0 < start <= end < 1", b0, b1);
    s->T = T; s->beta_start = b0; s->beta_end = b1;
    double a = 1.0;
    for (int t = 0; t < T; t++) {
        double beta = b0 + (b1 - b0) * t / (T - 1);
        a *= 1.0 - beta;
        s->abar[t] = a;
    }
    return 0;
}

static char *xstrdup(const char *s) {
    char *d = strdup(s);
    if (!d) { fprintf(stderr, "d3po: out of memory\n"); abort(); }
    return d;
}

int model_init(d3_model *m, const unet_arch *a, const char *const *names, uint64_t seed, char *err) {
    memset(m, 0, sizeof *m);
    if (unet_layout_build(&m->L, a, err)) return -1;
    m->params = malloc(m->L.numel * sizeof(float));
    m->class_names = calloc(a->classes, sizeof(char *));
    if (!m->params || !m->class_names) { model_free(m); return d3_errf(err, "out of memory"); }
    m->nclasses = a->classes;
    for (int i = 0; i < a->classes; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "class%d", i);
        m->class_names[i] = xstrdup(names ? names[i] : buf);
    }
    unet_init_params(&m->L, m->params, seed);
    if (schedule_init(&m->sched, 1000, 1e-4, 0.02, err)) { model_free(m); return -1; }
    return 0;
}

struct d3_devcopy {
    const d3_backend *be;
    float *p;
    unsigned long gen;
};

float *model_params_dev(const d3_model *m, const d3_backend *be) {
    if (be->host) return m->params;
    d3_model *mm = (d3_model *)m; /* the cache is not part of the value */
    struct d3_devcopy *d = mm->dev;
    if (d && d->be != be) {
        d->be->free(d->p);
        free(d);
        d = mm->dev = NULL;
    }
    if (!d) {
        if (!(d = calloc(1, sizeof *d))) return NULL;
        d->be = be;
        if (!(d->p = be->alloc(m->L.numel * sizeof(float)))) { free(d); return NULL; }
        d->gen = m->gen - 1; /* stale: upload below */
        mm->dev = d;
    }
    if (d->gen != m->gen) {
        be->upload(d->p, m->params, m->L.numel * sizeof(float));
        d->gen = m->gen;
    }
    return d->p;
}

void model_touch(d3_model *m) { m->gen++; }

void model_pull(d3_model *m) {
    struct d3_devcopy *d = m->dev;
    if (!d) return;
    d->be->download(m->params, d->p, m->L.numel * sizeof(float));
    d->gen = ++m->gen;
}

void model_free(d3_model *m) {
    if (m->dev) { m->dev->be->free(m->dev->p); free(m->dev); }
    unet_layout_free(&m->L);
    free(m->params);
    for (int i = 0; i < m->nclasses; i++) free(m->class_names[i]);
    free(m->class_names);
    for (int i = 0; i < m->nmeta; i++) { free(m->meta_keys[i]); free(m->meta_vals[i]); }
    free(m->meta_keys); free(m->meta_vals);
    memset(m, 0, sizeof *m);
}

int model_set_meta(d3_model *m, const char *key, const char *val) {
    for (int i = 0; i < m->nmeta; i++)
        if (!strcmp(m->meta_keys[i], key)) {
            free(m->meta_vals[i]);
            m->meta_vals[i] = xstrdup(val);
            return 0;
        }
    char **k = realloc(m->meta_keys, (m->nmeta + 1) * sizeof *k);
    if (!k) return -1;
    m->meta_keys = k;
    char **v = realloc(m->meta_vals, (m->nmeta + 1) * sizeof *v);
    if (!v) return -1;
    m->meta_vals = v;
    m->meta_keys[m->nmeta] = xstrdup(key);
    m->meta_vals[m->nmeta] = xstrdup(val);
    m->nmeta++;
    return 0;
}

const char *model_get_meta(const d3_model *m, const char *key) {
    for (int i = 0; i < m->nmeta; i++)
        if (!strcmp(m->meta_keys[i], key)) return m->meta_vals[i];
    return NULL;
}

int model_copy(d3_model *dst, const d3_model *src, char *err) {
    if (model_init(dst, &src->L.arch, (const char *const *)src->class_names, 0, err)) return -1;
    memcpy(dst->params, src->params, src->L.numel * sizeof(float));
    dst->sched = src->sched;
    for (int i = 0; i < src->nmeta; i++) model_set_meta(dst, src->meta_keys[i], src->meta_vals[i]);
    return 0;
}

int model_find_class(const d3_model *m, const char *prompt) {
    for (int i = 0; i < m->nclasses; i++)
        if (!strcmp(m->class_names[i], prompt)) return i;
    char *end;
    long id = strtol(prompt, &end, 10);
    if (*prompt && !*end && id >= 0 && id < m->nclasses) return (int)id;
    return -1;
}

static int is_builtin_meta(const char *k) {
    return !strcmp(k, "d3po.format") || !strcmp(k, "d3po.arch") || !strcmp(k, "d3po.classes") ||
           !strcmp(k, "d3po.schedule") || !strcmp(k, "d3po.version") || !strcmp(k, "d3po.adam") ||
           !strcmp(k, "d3po.rng") || !strcmp(k, "d3po.ema");
}

void state_free(d3_state *st) {
    adamw_free(&st->opt);
    free(st->ema);
    memset(st, 0, sizeof *st);
}

int model_save(const d3_model *m, const char *path, const d3_state *st, char *err) {
    const d3_adamw *opt = st && st->has_opt ? &st->opt : NULL;
    const d3_rng *rng = st && st->has_rng ? &st->rng : NULL;
    const float *ema = st && st->has_ema ? st->ema : NULL;
    st_writer *w = st_writer_new();
    if (!w) return d3_errf(err, "%s: out of memory", path);
    char arch[256], sched[128], buf[512];
    unet_arch_format(&m->L.arch, arch, sizeof arch);
    snprintf(sched, sizeof sched, "linear %d %.17g %.17g", m->sched.T, m->sched.beta_start,
             m->sched.beta_end);
    json_t *arr = json_array();
    for (int i = 0; i < m->nclasses; i++) json_array_append_new(arr, json_string(m->class_names[i]));
    char *classes = json_dumps(arr, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(arr);
    int rc = -1;
    if (!classes) { d3_errf(err, "%s: cannot encode class names", path); goto out; }
    if (st_writer_meta(w, "d3po.format", "1", err) || st_writer_meta(w, "d3po.arch", arch, err) ||
        st_writer_meta(w, "d3po.classes", classes, err) ||
        st_writer_meta(w, "d3po.schedule", sched, err) ||
        st_writer_meta(w, "d3po.version", D3PO_VERSION, err))
        goto out;
    for (int i = 0; i < m->nmeta; i++)
        if (!is_builtin_meta(m->meta_keys[i]) &&
            st_writer_meta(w, m->meta_keys[i], m->meta_vals[i], err))
            goto out;
    if (opt) {
        snprintf(buf, sizeof buf, "step=%ld lr=%.9g beta1=%.9g beta2=%.9g eps=%.9g wd=%.9g",
                 opt->step, opt->lr, opt->beta1, opt->beta2, opt->eps, opt->wd);
        if (st_writer_meta(w, "d3po.adam", buf, err)) goto out;
    }
    if (rng) {
        snprintf(buf, sizeof buf, "%llu %llu %llu", (unsigned long long)rng->seed,
                 (unsigned long long)rng->stream, (unsigned long long)rng->counter);
        if (st_writer_meta(w, "d3po.rng", buf, err)) goto out;
    }
    if (ema) {
        snprintf(buf, sizeof buf, "%.9g", st->ema_decay);
        if (st_writer_meta(w, "d3po.ema", buf, err)) goto out;
    }
    for (int pass = 0; pass < 4; pass++) {
        if ((pass == 1 || pass == 2) && !opt) continue;
        if (pass == 3 && !ema) continue;
        const float *base = pass == 0 ? m->params : pass == 1 ? opt->m : pass == 2 ? opt->v : ema;
        const char *pre = pass == 0 ? "" : pass == 1 ? "adam.m." : pass == 2 ? "adam.v." : "ema.";
        for (int i = 0; i < m->L.nparams; i++) {
            const unet_param *p = &m->L.params[i];
            int64_t shape[4];
            for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
            snprintf(buf, sizeof buf, "%s%s", pre, p->name);
            if (st_writer_add(w, buf, ST_F32, p->ndim, shape, base + p->offset, err)) goto out;
        }
    }
    rc = st_writer_save(w, path, err);
out:
    free(classes);
    st_writer_free(w);
    return rc;
}

static int load_tensor(const st_file *f, const char *path, const char *name, const unet_param *p,
                       float *dst, char *err) {
    const st_tensor *t = st_find(f, name);
    if (!t) return d3_errf(err, "%s: tensor '%s' is missing", path, name);
    if (t->dtype != ST_F32)
        return d3_errf(err, "%s: tensor '%s' has dtype %s, expected F32", path, name,
                       st_dtype_name(t->dtype));
    int ok = t->ndim == p->ndim;
    for (int d = 0; ok && d < p->ndim; d++) ok = t->shape[d] == p->shape[d];
    if (!ok) {
        char got[128] = "", want[128] = "";
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "",
                     (long long)t->shape[d]);
        for (int d = 0; d < p->ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", d ? "," : "", p->shape[d]);
        return d3_errf(err, "%s: tensor '%s' has shape [%s], the architecture needs [%s]", path,
                       name, got, want);
    }
    memcpy(dst, t->data, p->numel * sizeof(float));
    for (size_t k = 0; k < p->numel; k++)
        if (!isfinite(dst[k]))
            return d3_errf(err, "%s: tensor '%s' holds a non-finite value at index %zu", path, name, k);
    return 0;
}

static int strip_state_prefix(const char *n, const char **base) {
    static const char *pre[] = {"adam.m.", "adam.v.", "ema."};
    for (int i = 0; i < 3; i++)
        if (!strncmp(n, pre[i], strlen(pre[i]))) { *base = n + strlen(pre[i]); return i + 1; }
    *base = n;
    return 0;
}

int model_load(d3_model *m, const char *path, d3_state *st, char *err) {
    st_file f;
    memset(m, 0, sizeof *m);
    if (st) memset(st, 0, sizeof *st);
    if (st_load(&f, path, err)) return -1;
    int rc = -1;
    char e2[D3_ERRLEN];
    const char *arch_s = st_meta(&f, "d3po.arch");
    if (!arch_s) {
        d3_errf(err, "%s: not a d3po model: __metadata__ has no 'd3po.arch'", path);
        goto out;
    }
    unet_arch a = unet_arch_default();
    a.nattn = 0;
    if (unet_arch_parse(&a, arch_s, e2)) { d3_errf(err, "%s: d3po.arch: %s", path, e2); goto out; }
    /* class names */
    const char **names = NULL;
    json_t *arr = NULL;
    const char *cls = st_meta(&f, "d3po.classes");
    if (cls) {
        json_error_t je;
        arr = json_loads(cls, 0, &je);
        if (!arr || !json_is_array(arr) || (int)json_array_size(arr) != a.classes) {
            d3_errf(err, "%s: d3po.classes: expected a JSON array of %d strings", path, a.classes);
            json_decref(arr);
            goto out;
        }
        names = calloc(a.classes, sizeof *names);
        for (int i = 0; i < a.classes; i++) {
            json_t *s = json_array_get(arr, i);
            if (!json_is_string(s) || !json_string_value(s)[0]) {
                d3_errf(err, "%s: d3po.classes: entry %d is not a non-empty string", path, i);
                free(names); json_decref(arr);
                goto out;
            }
            names[i] = json_string_value(s);
        }
    }
    int r = model_init(m, &a, names, 0, e2);
    free(names);
    json_decref(arr);
    if (r) { d3_errf(err, "%s: %s", path, e2); goto out; }
    const char *sch = st_meta(&f, "d3po.schedule");
    if (sch) {
        int T; double b0, b1; char kind[16];
        if (sscanf(sch, "%15s %d %lf %lf", kind, &T, &b0, &b1) != 4 || strcmp(kind, "linear")) {
            d3_errf(err, "%s: d3po.schedule '%s': expected 'linear T beta_start beta_end'", path, sch);
            goto fail;
        }
        if (schedule_init(&m->sched, T, b0, b1, e2)) { d3_errf(err, "%s: %s", path, e2); goto fail; }
    }
    for (int i = 0; i < m->L.nparams; i++) {
        const unet_param *p = &m->L.params[i];
        if (load_tensor(&f, path, p->name, p, m->params + p->offset, err)) goto fail;
    }
    const char *adam = st_meta(&f, "d3po.adam");
    if (adam && st) {
        {
            d3_adamw o;
            if (adamw_init(&o, m->L.numel)) { d3_errf(err, "%s: out of memory", path); goto fail; }
            if (sscanf(adam, "step=%ld lr=%f beta1=%f beta2=%f eps=%f wd=%f", &o.step, &o.lr,
                       &o.beta1, &o.beta2, &o.eps, &o.wd) != 6 || o.step < 0) {
                d3_errf(err, "%s: d3po.adam '%s' is malformed", path, adam);
                adamw_free(&o);
                goto fail;
            }
            char name[176];
            for (int i = 0; i < m->L.nparams; i++) {
                const unet_param *p = &m->L.params[i];
                snprintf(name, sizeof name, "adam.m.%s", p->name);
                if (load_tensor(&f, path, name, p, o.m + p->offset, err)) { adamw_free(&o); goto fail; }
                snprintf(name, sizeof name, "adam.v.%s", p->name);
                if (load_tensor(&f, path, name, p, o.v + p->offset, err)) { adamw_free(&o); goto fail; }
            }
            st->opt = o;
            st->has_opt = 1;
        }
    }
    const char *rs = st_meta(&f, "d3po.rng");
    if (rs && st) {
        unsigned long long s, sm, c;
        if (sscanf(rs, "%llu %llu %llu", &s, &sm, &c) != 3) {
            d3_errf(err, "%s: d3po.rng '%s': expected 'seed stream counter'", path, rs);
            goto fail;
        }
        st->rng.seed = s; st->rng.stream = sm; st->rng.counter = c;
        st->has_rng = 1;
    }
    const char *es = st_meta(&f, "d3po.ema");
    if (es && st) {
        char *end;
        st->ema_decay = strtof(es, &end);
        if (*end || !(st->ema_decay > 0 && st->ema_decay < 1)) {
            d3_errf(err, "%s: d3po.ema '%s': expected a decay between 0 and 1", path, es);
            goto fail;
        }
        st->ema = malloc(m->L.numel * sizeof(float));
        if (!st->ema) { d3_errf(err, "%s: out of memory", path); goto fail; }
        char name[176];
        for (int i = 0; i < m->L.nparams; i++) {
            const unet_param *p = &m->L.params[i];
            snprintf(name, sizeof name, "ema.%s", p->name);
            if (load_tensor(&f, path, name, p, st->ema + p->offset, err)) goto fail;
        }
        st->has_ema = 1;
    }
    /* every tensor must be a parameter, or the state of one */
    for (int i = 0; i < f.ntensors; i++) {
        const char *n = f.tensors[i].name, *base;
        int kind = strip_state_prefix(n, &base);
        if (!unet_layout_find(&m->L, base) || (kind && kind < 3 && !adam) || (kind == 3 && !es)) {
            d3_errf(err, "%s: tensor '%s' does not belong to architecture %s", path, n, arch_s);
            goto fail;
        }
    }
    for (int i = 0; i < f.nmeta; i++)
        if (!is_builtin_meta(f.meta_keys[i])) model_set_meta(m, f.meta_keys[i], f.meta_vals[i]);
    rc = 0;
    goto out;
fail:
    if (st) state_free(st);
    model_free(m);
out:
    st_free(&f);
    return rc;
}
