/* lora.c - LoRA adapters on the SD UNet's attention linears: the set, its
 * application on the tape, and its files in kohya, diffusers and peft
 * naming (lora.h). */
#include "lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rng.h"
#include "safetensors.h"

const char *const lora_default_targets[] = {"to_q", "to_k", "to_v", "to_out.0"};
const int lora_ndefault_targets = 4;

/* The module path of a layout entry the forward runs through sdb_dense (a
 * 2-D ".weight" inside a transformer: attentions, proj_in/out with linear
 * projection, the feed-forward), written into path; 0 when it is none. */
static int hookable(const sd_param *p, char *path) {
    size_t n = strlen(p->name);
    if (p->ndim != 2 || n < 8 || strcmp(p->name + n - 7, ".weight") || !strstr(p->name, "attentions."))
        return 0;
    memcpy(path, p->name, n - 7);
    path[n - 7] = 0;
    return 1;
}

static int ends_with_target(const char *path, const char *target) {
    size_t n = strlen(path), k = strlen(target);
    return n > k && path[n - k - 1] == '.' && !strcmp(path + n - k, target);
}

static int add_module(lora_set *s, int *cap, const char *path, int in, int out, int rank,
                      float alpha) {
    if (s->n == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        lora_module *m = realloc(s->m, (size_t)nc * sizeof *m);
        if (!m) return -1;
        s->m = m;
        *cap = nc;
    }
    lora_module *m = &s->m[s->n++];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", path);
    m->in = in; m->out = out; m->rank = rank; m->alpha = alpha;
    m->down = s->numel;
    m->up = m->down + (size_t)rank * in;
    s->numel = m->up + (size_t)out * rank;
    return 0;
}

int lora_init(lora_set *s, const sd_layout *L, const char *const *targets, int ntargets, int rank,
              float alpha, uint64_t seed, char *err) {
    memset(s, 0, sizeof *s);
    s->scale = 1.0f;
    if (!targets) { targets = lora_default_targets; ntargets = lora_ndefault_targets; }
    if (rank < 1 || rank > 1024) return d3_errf(err, "LoRA rank %d: expected 1 to 1024", rank);
    if (!(alpha > 0) || !isfinite(alpha))
        return d3_errf(err, "LoRA alpha %g: expected a positive number", alpha);
    int cap = 0, *hits = calloc((size_t)ntargets + 1, sizeof(int));
    char path[SD_NAME_MAX];
    for (int i = 0; hits && i < L->n; i++) {
        if (!hookable(&L->p[i], path)) continue;
        for (int k = 0; k < ntargets; k++) {
            if (!ends_with_target(path, targets[k])) continue;
            hits[k]++;
            int out = (int)L->p[i].shape[0], in = (int)L->p[i].shape[1];
            if (rank > in || rank > out) {
                free(hits);
                lora_free(s);
                return d3_errf(err, "LoRA rank %d: larger than module %s (%d -> %d)", rank, path,
                               in, out);
            }
            if (add_module(s, &cap, path, in, out, rank, alpha)) goto oom;
            break;
        }
    }
    if (!hits) goto oom;
    for (int k = 0; k < ntargets; k++)
        if (!hits[k]) {
            d3_errf(err, "LoRA target '%s': no linear layer of the UNet's attention blocks is "
                    "named so (e.g. to_q, to_k, to_v, to_out.0, ff.net.2)", targets[k]);
            free(hits);
            lora_free(s);
            return -1;
        }
    free(hits);
    s->params = calloc(s->numel ? s->numel : 1, sizeof(float));
    if (!s->params) goto oom;
    d3_rng r;
    rng_init(&r, seed, 0x10a);
    for (int i = 0; i < s->n; i++) {
        lora_module *m = &s->m[i];
        float *d = s->params + m->down;
        rng_normal(&r, d, (size_t)m->rank * m->in);
        for (size_t k = 0; k < (size_t)m->rank * m->in; k++) d[k] /= (float)m->rank;
    }
    return 0;
oom:
    lora_free(s);
    return d3_errf(err, "LoRA: out of memory");
}

void lora_free(lora_set *s) {
    free(s->m);
    free(s->params);
    s->m = NULL;
    s->params = NULL;
    s->n = 0;
    s->numel = 0;
}

int lora_upload(lora_set *s, const d3_backend *be, char *err) {
    if (be->host) return 0;
    float *dev = be->alloc((s->numel ? s->numel : 1) * sizeof(float));
    if (!dev) return d3_errf(err, "LoRA: out of device memory (%zu floats)", s->numel);
    be->upload(dev, s->params, s->numel * sizeof(float));
    free(s->params);
    s->params = dev;
    return 0;
}

void lora_free_on(lora_set *s, const d3_backend *be) {
    if (s->params && !be->host) {
        be->free(s->params);
        s->params = NULL;
    }
    lora_free(s);
}

const lora_module *lora_find(const lora_set *s, const char *path) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->m[i].name, path)) return &s->m[i];
    return NULL;
}

d3_tensor *lora_apply(d3_tape *tp, const lora_set *s, const char *path, d3_tensor *x,
                      d3_tensor *y) {
    for (; s; s = s->next) {
        const lora_module *m = s->scale != 0.0f ? lora_find(s, path) : NULL;
        if (!m) continue;
        float *g = s->grads;
        /* x [.., in] -> [.., rank] -> [.., out] */
        d3_tensor *d = tape_dense(tp, x, s->params + m->down, NULL, g ? g + m->down : NULL, NULL,
                                  m->rank);
        d3_tensor *u = tape_dense(tp, d, s->params + m->up, NULL, g ? g + m->up : NULL, NULL,
                                  m->out);
        y = tape_add(tp, y, tape_scale(tp, u, m->alpha / (float)m->rank * s->scale));
    }
    return y;
}

/* ---- files ---- */

static void kohya_name(const char *path, char *out, size_t cap) {
    snprintf(out, cap, "lora_unet_%s", path);
    for (char *c = out; *c; c++)
        if (*c == '.') *c = '_';
}

int lora_save(const lora_set *s, const char *path, lora_naming naming, char *err) {
    st_writer *w = st_writer_new();
    float *alphas = malloc((size_t)(s->n ? s->n : 1) * sizeof(float));
    float *ups = naming == LORA_DIFFUSERS ? malloc((s->numel ? s->numel : 1) * sizeof(float)) : NULL;
    int rc = 0;
    if (!w || !alphas || (naming == LORA_DIFFUSERS && !ups)) {
        rc = d3_errf(err, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < s->n && !rc; i++) {
        const lora_module *m = &s->m[i];
        char k[SD_NAME_MAX + 40], name[SD_NAME_MAX + 64];
        int64_t ds[2] = {m->rank, m->in}, us[2] = {m->out, m->rank};
        const float *up = s->params + m->up;
        if (naming == LORA_KOHYA) {
            kohya_name(m->name, k, sizeof k);
            alphas[i] = m->alpha;
            snprintf(name, sizeof name, "%s.lora_down.weight", k);
            rc = st_writer_add(w, name, ST_F32, 2, ds, s->params + m->down, err);
            snprintf(name, sizeof name, "%s.lora_up.weight", k);
            if (!rc) rc = st_writer_add(w, name, ST_F32, 2, us, up, err);
            snprintf(name, sizeof name, "%s.alpha", k);
            if (!rc) rc = st_writer_add(w, name, ST_F32, 0, ds, &alphas[i], err);
        } else {
            /* no alpha in this naming: diffusers applies up(down(x)) at 1 */
            float f = m->alpha / (float)m->rank, *u = ups + m->up;
            for (size_t e = 0; e < (size_t)m->out * m->rank; e++) u[e] = up[e] * f;
            snprintf(name, sizeof name, "unet.%s.lora.down.weight", m->name);
            rc = st_writer_add(w, name, ST_F32, 2, ds, s->params + m->down, err);
            snprintf(name, sizeof name, "unet.%s.lora.up.weight", m->name);
            if (!rc) rc = st_writer_add(w, name, ST_F32, 2, us, u, err);
        }
    }
    if (!rc) rc = st_writer_meta(w, "format", "pt", err);
    if (!rc) rc = st_writer_save(w, path, err);
done:
    st_writer_free(w);
    free(alphas);
    free(ups);
    return rc ? -1 : 0;
}

/* What a tensor of a LoRA file is: its module's path in the file's naming
 * (base, written into mod) and its role. */
enum { R_DOWN, R_UP, R_ALPHA };
static int classify(const char *name, char *mod, size_t cap, int *role, int *kohya) {
    static const struct { const char *suffix; int role, kohya; } sfx[] = {
        {".lora_down.weight", R_DOWN, 1}, {".lora_up.weight", R_UP, 1}, {".alpha", R_ALPHA, 1},
        {".lora.down.weight", R_DOWN, 0}, {".lora.up.weight", R_UP, 0},
        {".lora_A.weight", R_DOWN, 0},    {".lora_B.weight", R_UP, 0},
    };
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        size_t k = strlen(sfx[i].suffix);
        const char *pre = strncmp(name, "lora_unet_", 10) == 0 ? "lora_unet_"
                          : strncmp(name, "unet.", 5) == 0     ? "unet."
                                                               : NULL;
        if (!pre || n <= k || strcmp(name + n - k, sfx[i].suffix)) continue;
        int isk = pre[0] == 'l';
        if (sfx[i].role == R_ALPHA) *kohya = isk;
        else if (isk != sfx[i].kohya) continue;
        else *kohya = isk;
        if (n - k >= cap) return 0;
        memcpy(mod, name, n - k);
        mod[n - k] = 0;
        *role = sfx[i].role;
        return 1;
    }
    return 0;
}

int lora_load(lora_set *s, const char *path, const sd_layout *L, char *err) {
    memset(s, 0, sizeof *s);
    s->scale = 1.0f;
    st_file f;
    if (st_load(&f, path, err)) return -1;
    /* per hookable layout module: the file's down, up and alpha tensors */
    int nl = L->n, rc = 0, cap = 0;
    const st_tensor **tt = calloc((size_t)nl * 3 + 1, sizeof *tt);
    char (*paths)[SD_NAME_MAX] = malloc((size_t)(nl ? nl : 1) * SD_NAME_MAX);
    if (!tt || !paths) {
        rc = d3_errf(err, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < nl; i++)
        if (!hookable(&L->p[i], paths[i])) paths[i][0] = 0;
    for (int t = 0; t < f.ntensors && !rc; t++) {
        const st_tensor *x = &f.tensors[t];
        char mod[SD_NAME_MAX + 16], want[SD_NAME_MAX + 16];
        int role = 0, kohya = 0, hit = -1;
        if (!strncmp(x->name, "lora_te", 7) || !strncmp(x->name, "text_encoder.", 13)) {
            rc = d3_errf(err, "%s: tensor '%s': text-encoder adapters are not supported (UNet "
                         "only)", path, st_show(x->name).s);
            break;
        }
        if (!classify(x->name, mod, sizeof mod, &role, &kohya)) {
            rc = d3_errf(err, "%s: tensor '%s': not a LoRA tensor of the UNet (expected "
                         "lora_unet_*.lora_down/lora_up.weight/.alpha or unet.*.lora.down/up.weight "
                         "or unet.*.lora_A/lora_B.weight)", path, st_show(x->name).s);
            break;
        }
        for (int i = 0; i < nl && hit < 0; i++) {
            if (!paths[i][0]) continue;
            if (kohya) kohya_name(paths[i], want, sizeof want);
            else snprintf(want, sizeof want, "unet.%s", paths[i]);
            if (!strcmp(want, mod)) hit = i;
        }
        if (hit < 0) {
            rc = d3_errf(err, "%s: tensor '%s': the model has no attention linear layer of that "
                         "name", path, st_show(x->name).s);
            break;
        }
        if (tt[3 * hit + role]) {
            rc = d3_errf(err, "%s: tensor '%s': a second tensor for the same module", path,
                         st_show(x->name).s);
            break;
        }
        tt[3 * hit + role] = x;
    }
    /* shapes, then the set in layout order */
    for (int i = 0; i < nl && !rc; i++) {
        const st_tensor *d = tt[3 * i], *u = tt[3 * i + 1], *a = tt[3 * i + 2];
        if (!d && !u && !a) continue;
        int out = (int)L->p[i].shape[0], in = (int)L->p[i].shape[1];
        const char *nm = (d ? d : u ? u : a)->name;
        if (!d || !u) {
            rc = d3_errf(err, "%s: module %s: has %s but no %s matrix", path, paths[i],
                         d ? "a down" : "an up", d ? "up" : "down");
            break;
        }
        int r = d->ndim == 2 ? (int)d->shape[0] : 0;
        if (d->ndim != 2 || r < 1 || d->shape[1] != in || u->ndim != 2 || u->shape[0] != out ||
            u->shape[1] != r) {
            rc = d3_errf(err, "%s: module %s: down/up shapes do not fit the model's %d -> %d "
                         "linear (expected down [r, %d] and up [%d, r] of one rank r)", path,
                         paths[i], in, out, in, out);
            break;
        }
        float alpha = (float)r;
        if (a) {
            if (st_numel(a) != 1 || st_to_f32(a, &alpha, path, err)) {
                if (st_numel(a) != 1)
                    d3_errf(err, "%s: tensor '%s': expected one value", path, st_show(a->name).s);
                rc = -1;
                break;
            }
            if (!(alpha > 0)) {
                rc = d3_errf(err, "%s: tensor '%s': alpha %g, expected > 0", path,
                             st_show(a->name).s, alpha);
                break;
            }
        }
        (void)nm;
        if (add_module(s, &cap, paths[i], in, out, r, alpha)) {
            rc = d3_errf(err, "%s: out of memory", path);
            break;
        }
    }
    if (!rc && s->n == 0) rc = d3_errf(err, "%s: no LoRA tensors", path);
    if (!rc && !(s->params = malloc(s->numel * sizeof(float))))
        rc = d3_errf(err, "%s: out of memory", path);
    for (int i = 0, k = 0; i < nl && !rc; i++) {
        if (!tt[3 * i]) continue;
        const lora_module *m = &s->m[k++];
        if (st_to_f32(tt[3 * i], s->params + m->down, path, err) ||
            st_to_f32(tt[3 * i + 1], s->params + m->up, path, err))
            rc = -1;
    }
done:
    free(tt);
    free(paths);
    st_free(&f);
    if (rc) lora_free(s);
    return rc ? -1 : 0;
}
