/* session_sd.c - sd-family sessions meet the model interface (contract
 * in session_sd.h): hash check, adapters of a round in and out. A round
 * file holds tensors lora.params, adam.m, adam.v (flat, lora.h's layout)
 * and metadata d3po.lora_layout (modules, numel and an FNV-1a of their
 * names, ranks and sizes: a file for another layout is refused, not
 * misread), d3po.adam and d3po.rng as model checkpoints write them. */
#include "session_sd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "safetensors.h"
#include "sd/pipeline.h"

#define PLEN 4200

int session_sd_ignore_hash_env(void) {
    const char *v = getenv("D3PO_IGNORE_MODEL_HASH");
    return v && !strcmp(v, "1");
}

/* "MODULES NUMEL FNV" of a set's layout. */
static void layout_sig(const lora_set *l, char *out, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < l->n; i++) {
        char b[SD_NAME_MAX + 64];
        int k = snprintf(b, sizeof b, "%s %d %d %d;", l->m[i].name, l->m[i].rank, l->m[i].in,
                         l->m[i].out);
        for (int j = 0; j < k; j++) h = (h ^ (unsigned char)b[j]) * 0x100000001b3ULL;
    }
    snprintf(out, n, "%d %zu %016llx", l->n, l->numel, (unsigned long long)h);
}

/* Writes rounds/NNNN.safetensors of round (atomically). */
static int write_round_file(const d3_session *s, const d3_dmodel *dm, const d3_state *st, int round,
                            char *err) {
    const lora_set *l = dm_lora(dm);
    if (!l) return d3_errf(err, "%s: round %d: the model has no trainable adapters", s->dir, round);
    char p[PLEN], sig[96], buf[256];
    session_round_path(s, round, p, sizeof p);
    const d3_adamw *opt = st && st->has_opt && st->opt.n == l->numel ? &st->opt : NULL;
    st_writer *w = st_writer_new();
    if (!w) return d3_errf(err, "%s: out of memory", p);
    int64_t shape[1] = {(int64_t)l->numel};
    layout_sig(l, sig, sizeof sig);
    int rc = st_writer_meta(w, "d3po.format", "lora-round 1", err) ||
             st_writer_meta(w, "d3po.lora_layout", sig, err) ||
             st_writer_add(w, "lora.params", ST_F32, 1, shape, dm->train.params, err);
    if (!rc && opt) {
        snprintf(buf, sizeof buf, "step=%ld lr=%.9g beta1=%.9g beta2=%.9g eps=%.9g wd=%.9g",
                 opt->step, opt->lr, opt->beta1, opt->beta2, opt->eps, opt->wd);
        rc = st_writer_meta(w, "d3po.adam", buf, err) ||
             st_writer_add(w, "adam.m", ST_F32, 1, shape, opt->m, err) ||
             st_writer_add(w, "adam.v", ST_F32, 1, shape, opt->v, err);
    }
    if (!rc && st && st->has_rng) {
        snprintf(buf, sizeof buf, "%llu %llu %llu", (unsigned long long)st->rng.seed,
                 (unsigned long long)st->rng.stream, (unsigned long long)st->rng.counter);
        rc = st_writer_meta(w, "d3po.rng", buf, err);
    }
    if (!rc) rc = st_writer_save(w, p, err);
    st_writer_free(w);
    return rc ? -1 : 0;
}

int session_sd_save_round(d3_session *s, const d3_dmodel *dm, const d3_state *st, int round,
                          char *err) {
    if (s->readonly) return d3_errf(err, "%s: save round: session opened read-only", s->dir);
    if (round <= s->round || round > SESSION_MAX_ROUND)
        return d3_errf(err, "%s: round %d: expected %d..%d", s->dir, round, s->round + 1,
                       SESSION_MAX_ROUND);
    if (write_round_file(s, dm, st, round, err)) return -1;
    return session_set_latest(s, round, err);
}

/* Tensor name of f into dst[n] floats, checked. */
static int read_vec(const st_file *f, const char *path, const char *name, float *dst, size_t n,
                    char *err) {
    const st_tensor *t = st_find(f, name);
    if (!t) return d3_errf(err, "%s: no tensor '%s'", path, name);
    if (t->ndim != 1 || st_numel(t) != n)
        return d3_errf(err, "%s: tensor '%s': expected [%zu] floats (the session's adapters)", path,
                       name, n);
    return st_to_f32(t, dst, path, err);
}

/* Round `round`'s adapters into params (l's layout) and, st not NULL, the
 * training state. */
static int read_round(const d3_session *s, int round, const lora_set *l, float *params, d3_state *st,
                      char *err) {
    char p[PLEN], sig[96];
    session_round_path(s, round, p, sizeof p);
    st_file f;
    if (st_map(&f, p, err)) return -1;
    layout_sig(l, sig, sizeof sig);
    const char *fs = st_meta(&f, "d3po.lora_layout"), *adam = st_meta(&f, "d3po.adam"),
               *rs = st_meta(&f, "d3po.rng");
    int rc = -1;
    if (!fs || strcmp(fs, sig)) {
        d3_errf(err, "%s: adapters' layout '%s', expected '%s' (the session's lora settings)", p,
                fs ? st_show(fs).s : "(none)", sig);
        goto out;
    }
    if (read_vec(&f, p, "lora.params", params, l->numel, err)) goto out;
    if (st) {
        memset(st, 0, sizeof *st);
        if (adam) {
            if (adamw_init(&st->opt, l->numel)) { d3_errf(err, "%s: out of memory", p); goto out; }
            st->has_opt = 1;
            if (sscanf(adam, "step=%ld lr=%f beta1=%f beta2=%f eps=%f wd=%f", &st->opt.step,
                       &st->opt.lr, &st->opt.beta1, &st->opt.beta2, &st->opt.eps,
                       &st->opt.wd) != 6 || st->opt.step < 0) {
                d3_errf(err, "%s: d3po.adam '%s' is malformed", p, st_show(adam).s);
                goto out;
            }
            if (read_vec(&f, p, "adam.m", st->opt.m, l->numel, err) ||
                read_vec(&f, p, "adam.v", st->opt.v, l->numel, err))
                goto out;
        }
        if (rs) {
            unsigned long long a, b, c;
            if (sscanf(rs, "%llu %llu %llu", &a, &b, &c) != 3) {
                d3_errf(err, "%s: d3po.rng '%s': expected 'seed stream counter'", p, st_show(rs).s);
                goto out;
            }
            st->rng = (d3_rng){a, b, c};
            st->has_rng = 1;
        }
    }
    rc = 0;
out:
    if (rc && st) state_free(st);
    st_free(&f);
    return rc;
}

int session_sd_read_round(const d3_session *s, int round, d3_dmodel *dm, d3_state *st, char *err) {
    const lora_set *l = dm_lora(dm);
    if (!l) return d3_errf(err, "%s: the model has no adapters to load", s->dir);
    if (read_round(s, round, l, dm->train.params, st, err)) return -1;
    dm_touch(dm);
    return 0;
}

/* The model's content hash against the session's. */
static int check_hash(const d3_session *s, int ignore_hash, char *err) {
    char hash[SESSION_HASH_LEN];
    if (s->family != SESSION_FAMILY_SD || !s->model_path)
        return d3_errf(err, "%s: not a Stable Diffusion-family session", s->dir);
    if (session_model_hash(s->model_path, hash, err)) return -1;
    if (strcmp(hash, s->model_hash) && !ignore_hash)
        return d3_errf(err, "%s: content hash %s differs from %s's %s (the model changed since the "
                       "session began; D3PO_IGNORE_MODEL_HASH=1 uses it anyway)",
                       st_show(s->model_path).s, hash, s->dir, s->model_hash);
    return 0;
}

/* The adapters' options of the session: tg[64] and from[PLEN] hold
 * what lo points at. */
static dm_lora_opts lora_opts(const d3_session *s, char *list, char **tg, char *from) {
    dm_lora_opts lo = dm_lora_opts_default();
    int nt = 0;
    snprintf(list, SESSION_LORA_TARGETS, "%s", s->lora.targets);
    for (char *sv, *t = strtok_r(list, ",", &sv); t && nt < 64; t = strtok_r(NULL, ",", &sv))
        tg[nt++] = t;
    lo.rank = s->lora.rank;
    lo.alpha = s->lora.alpha;
    lo.seed = s->lora.seed;
    lo.targets = nt ? (const char *const *)tg : NULL;
    lo.ntargets = nt;
    if (s->lora.start) {
        snprintf(from, PLEN, "%s/%s", s->dir, SESSION_LORA_START);
        lo.from = from;
    }
    return lo;
}

/* 1 when round's file exists. */
static int round_on_disk(const d3_session *s, int round) {
    char p[PLEN];
    struct stat sb;
    session_round_path(s, round, p, sizeof p);
    return stat(p, &sb) == 0;
}

int session_sd_adapters(const d3_session *s, int ignore_hash, lora_set *l, char *err) {
    if (check_hash(s, ignore_hash, err)) return -1;
    sd_pipeline pl;
    if (sd_pipeline_open(&pl, s->model_path, NULL, err)) return -1;
    char list[SESSION_LORA_TARGETS], *tg[64], from[PLEN];
    dm_lora_opts lo = lora_opts(s, list, tg, from);
    const sd_layout *L = &pl.L[SD_UNET];
    int rc = lo.from ? lora_load(l, lo.from, L, err)
                     : lora_init(l, L, lo.targets, lo.ntargets, lo.rank, lo.alpha, lo.seed, err);
    sd_pipeline_close(&pl);
    return rc;
}

int session_sd_read_adapters(const d3_session *s, int round, lora_set *l, d3_state *st, char *err) {
    if (round == 0 && !round_on_disk(s, 0)) return 0; /* the fresh adapters */
    return read_round(s, round, l, l->params, st, err);
}

int session_sd_export(const d3_session *s, int round, const char *out, lora_naming naming,
                      int ignore_hash, char *err) {
    lora_set l;
    if (session_sd_adapters(s, ignore_hash, &l, err)) return -1;
    int rc = session_sd_read_adapters(s, round, &l, NULL, err) || lora_save(&l, out, naming, err);
    lora_free(&l);
    return rc ? -1 : 0;
}

int session_sd_copy_round(d3_session *s, int from, char *err) {
    char src[PLEN], dst[PLEN];
    if (!round_on_disk(s, from))
        return d3_errf(err, "%s: round %d has no adapters file (it was never loaded)", s->dir, from);
    if (s->round + 1 > SESSION_MAX_ROUND)
        return d3_errf(err, "%s: round limit %d reached", s->dir, SESSION_MAX_ROUND);
    session_round_path(s, from, src, sizeof src);
    session_round_path(s, s->round + 1, dst, sizeof dst);
    unsigned char *buf;
    size_t len;
    if (fs_read_all(src, &buf, &len, err)) return -1;
    const void *parts[1] = {buf};
    int rc = fs_write_atomic(dst, parts, &len, 1, err);
    free(buf);
    return rc ? -1 : session_set_latest(s, s->round + 1, err);
}

int session_sd_load(d3_session *s, const d3_backend *be, int ignore_hash, d3_dmodel *dm,
                    d3_state *st, char *err) {
    char p[PLEN];
    if (st) memset(st, 0, sizeof *st);
    if (check_hash(s, ignore_hash, err)) return -1;
    if (dm_open_sd(dm, s->model_path, NULL, be, s->lat_h, s->lat_w, err)) return -1;
    if (dm->C != s->lat_c) {
        d3_errf(err, "%s: latents have %d channels, the session's pairs %d", st_show(s->model_path).s,
                dm->C, s->lat_c);
        goto fail;
    }
    char list[SESSION_LORA_TARGETS], *tg[64], from[PLEN];
    dm_lora_opts lo = lora_opts(s, list, tg, from);
    if (dm_lora_attach(dm, &lo, err)) goto fail;
    session_round_path(s, s->round, p, sizeof p);
    struct stat sb;
    if (s->round == 0 && stat(p, &sb)) {
        /* round 0: the fresh adapters; on disk from now on (rollback, export) */
        if (!s->readonly && write_round_file(s, dm, NULL, 0, err)) goto fail;
        return 0;
    }
    if (session_sd_read_round(s, s->round, dm, st, err)) goto fail;
    return 0;
fail:
    dm_close(dm);
    return -1;
}

int session_sd_ensure(const char *dir, const char *model, int width, int height, int rank,
                      double alpha, int seed, const char *targets, const char *lora_from,
                      const char *settings_json, char *err) {
    char p[PLEN];
    struct stat sb;
    snprintf(p, sizeof p, "%s/session.json", dir);
    if (stat(p, &sb) == 0) return 0;
    sd_pipeline pl;
    if (sd_pipeline_open(&pl, model, NULL, err)) return -1;
    int C = pl.vae.latent_channels, f = 1 << (pl.vae.nblocks - 1), rc = 0;
    int h = pl.unet.sample_size, w = h;
    if (width || height) {
        if (width <= 0 || height <= 0 || width % f || height % f)
            rc = d3_errf(err, "--size %dx%d: both sides must be positive multiples of %d (the VAE's "
                         "factor)", width, height, f);
        w = width / f;
        h = height / f;
    }
    if (!rc && sd_unet_check_size(&pl.unet, h, w, err)) rc = -1;
    sd_pipeline_close(&pl);
    if (rc) return -2;
    session_lora lo = {.rank = rank, .alpha = alpha > 0 ? (float)alpha : (float)rank,
                       .seed = (uint64_t)seed, .start = lora_from != NULL};
    if (strlen(targets) >= sizeof lo.targets)
        return d3_errf(err, "lora.targets: longer than %zu bytes", sizeof lo.targets - 1);
    snprintf(lo.targets, sizeof lo.targets, "%s", targets);
    snprintf(p, sizeof p, "%s", dir);
    char *slash = strrchr(p, '/');
    if (slash && slash != p) {
        *slash = 0;
        if (fs_mkdirs(p, err)) return -1;
    }
    return session_create_sd(dir, model, C, h, w, &lo, lora_from, settings_json, err) ? -1 : 1;
}

int session_ensure_model(const char *dir, const char **model, int width, int height,
                         const char *lora_from, const d3_config *c, const char *settings_json,
                         char *err) {
    char p[PLEN];
    struct stat sb;
    snprintf(p, sizeof p, "%s/session.json", dir);
    if (stat(p, &sb) == 0) return 0;
    if (*model && sd_pipeline_probe(*model)) {
        int rc = session_sd_ensure(dir, *model, width, height, c->lora.rank, c->lora.alpha,
                                   c->lora.seed, c->lora.targets, lora_from, settings_json, err);
        return rc;
    }
    if (width || height || lora_from)
        return d3_errf(err, "--size and --lora apply to Stable Diffusion-family models only"), -2;
    return session_ensure(dir, model, settings_json, err);
}

int session_sd_sample_prep(const char *dir, char *model, size_t mn, char *lora, size_t ln, int *W,
                           int *H, char *err) {
    d3_session s;
    if (session_open_readonly(dir, &s, err)) return -1;
    int rc = 0;
    if (s.family == SESSION_FAMILY_SD) {
        const char *td = getenv("TMPDIR");
        snprintf(lora, ln, "%s/d3po-session-lora.XXXXXX", td && *td ? td : "/tmp");
        int fd = mkstemp(lora);
        sd_pipeline pl;
        if (fd < 0) {
            rc = d3_errf(err, "%s: %s", lora, strerror(errno));
            lora[0] = 0;
        } else {
            close(fd);
            rc = session_sd_export(&s, s.round, lora, LORA_KOHYA, session_sd_ignore_hash_env(), err);
            if (!rc && !*W && !*H && !(rc = sd_pipeline_open(&pl, s.model_path, NULL, err))) {
                int f = 1 << (pl.vae.nblocks - 1);
                *W = s.lat_w * f;
                *H = s.lat_h * f;
                sd_pipeline_close(&pl);
            }
            if (rc) {
                unlink(lora);
                lora[0] = 0;
            }
        }
        snprintf(model, mn, "%s", s.model_path);
        rc = rc ? -1 : 1;
    }
    session_close(&s);
    return rc;
}
