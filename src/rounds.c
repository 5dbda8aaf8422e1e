/* rounds.c - the round driver (contract in rounds.h): prompts, sampling
 * requests, pairs to disk, decisions to the journal, rounds due, trained,
 * marked. The screen and `auto` differ only in their opts and in who
 * judges. */
#include "rounds.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "session_sd.h"
#include "text.h"

#define TAG_EXTRA (1ULL << 63) /* pairs of rounds_extra; training pairs have tag 0 */

struct rounds {
    d3_session *s;
    const d3_config *c;
    d3_engine *e;
    const d3_backend *be;
    rounds_opts o;
    int base_ok;          /* a base model for drift */
    /* prompts: the set (strings), their classes, the weighted cycle */
    int np;
    char **prompt;
    int *cls;
    int *pw;              /* [np] their weights */
    int cap;              /* room in prompt[], cls[], pw[] */
    int text;             /* free-text prompts (a family without classes: sd) */
    int *cycle, ncycle;   /* indices into prompt[] */
    int fixed;            /* index into prompt[], or a class id + np when not in the set; -1 */
    int nclasses;
    char **class_name;
    ddim_opts sample;     /* the engine's sampler settings (rounds_sampling) */
    /* requests */
    uint64_t seq;         /* training pairs asked for (the pair sequence number) */
    int inflight;
    /* the round in training */
    int training, train_round, ntrain;
    long *train_ids;
    signed char *train_ch;
    int train_i, train_n;
    int train_npairs;     /* pairs it trains on: the labels' and the groups' */
    double train_eta, train_loss;
    long version;
    int started, trained;
    /* groups of k (grid mode): the store, requests, the round's groups */
    d3_groups g;
    int g_open;
    uint64_t gseq;
    int ginflight;
    long *train_gids;
    char (*train_gmarks)[GROUPS_MARKS_LEN];
    int ntrain_g;
};

rounds_opts rounds_opts_default(const d3_config *c) {
    rounds_opts o = {0};
    o.round_size = c->session.round_size;
    o.queue_depth = c->session.queue_depth;
    o.overlap = 1;
    o.drift_every = 4;
    return o;
}

static int save_round(void *ctx, const d3_model *policy, const d3_state *st, int round, char *err) {
    return session_save_round(ctx, policy, st, round, err);
}

static int save_round_sd(void *ctx, d3_dmodel *policy, const d3_state *st, int round, char *err) {
    return session_sd_save_round(ctx, policy, st, round, err);
}

/* ---- prompts ---- */

static int add_prompt(rounds *d, const char *text, int cls, int weight) {
    if (d->np == d->cap) {
        int nc = 2 * d->cap + 8;
        char **np = realloc(d->prompt, (size_t)nc * sizeof *np);
        if (np) d->prompt = np;
        int *nc1 = np ? realloc(d->cls, (size_t)nc * sizeof *nc1) : NULL;
        if (nc1) d->cls = nc1;
        int *nw = nc1 ? realloc(d->pw, (size_t)nc * sizeof *nw) : NULL;
        if (!nw) return -1;
        d->pw = nw;
        d->cap = nc;
    }
    d->prompt[d->np] = strdup(text);
    if (!d->prompt[d->np]) return -1;
    d->pw[d->np] = weight;
    d->cls[d->np++] = cls;
    return 0;
}

/* The weighted cycle over prompt[] by pw[]: smooth weighted round robin,
 * so a prompt of weight 3 comes up 3 times per cycle, spread out. */
static int make_cycle(rounds *d, char *err) {
    long total = 0;
    for (int i = 0; i < d->np; i++) total += d->pw[i];
    free(d->cycle);
    d->cycle = malloc((size_t)(total > 0 ? total : 1) * sizeof *d->cycle);
    long *cur = calloc((size_t)d->np + 1, sizeof *cur);
    if (!d->cycle || !cur) {
        free(cur);
        return d3_errf(err, "out of memory");
    }
    for (long k = 0; k < total; k++) {
        int best = 0;
        for (int i = 0; i < d->np; i++) {
            cur[i] += d->pw[i];
            if (cur[i] > cur[best]) best = i;
        }
        cur[best] -= total;
        d->cycle[k] = best;
    }
    d->ncycle = (int)total;
    free(cur);
    return 0;
}

/* The set: the session's prompts.json, else the config's session.prompts
 * (then saved into the session, so it survives resume), else every
 * class. m: the pixel model (prompts are its classes), or NULL: a family
 * of free-text prompts (every prompt is taken as written; a set is
 * required). Weights make the cycle (make_cycle). */
static int build_prompts(rounds *d, const d3_model *m, char *err) {
    d3_session *s = d->s;
    int n = s->nprompts ? s->nprompts : d->c->session.nprompts;
    int ncl = m ? m->nclasses : 0;
    d->text = !m;
    d->class_name = calloc((size_t)ncl + 1, sizeof *d->class_name);
    if (!d->class_name) return d3_errf(err, "out of memory");
    d->nclasses = ncl;
    for (int i = 0; i < ncl; i++)
        if (!(d->class_name[i] = strdup(m->class_names[i]))) return d3_errf(err, "out of memory");
    if (!s->nprompts && d->c->session.nprompts) {
        const char *p[D3_CFG_MAX_PROMPTS];
        for (int i = 0; i < d->c->session.nprompts; i++) p[i] = d->c->session.prompts[i];
        if (!s->readonly && session_set_prompts(s, p, NULL, d->c->session.nprompts, s->prompt_fixed, err))
            return -1;
    }
    if (!m && !n)
        return d3_errf(err, "%s: no prompts (give --prompts FILE, one prompt a line)", s->dir);
    for (int i = 0; i < n; i++) {
        const char *t = s->nprompts ? s->prompts[i] : d->c->session.prompts[i];
        int id = m ? model_find_class(m, t) : -1;
        if (m && (id < 0 || id >= m->nclasses)) {
            session_warn(s, "%s/prompts.json: prompt '%.200s' is not a class of the model; left out",
                         s->dir, t);
            continue;
        }
        if (add_prompt(d, t, id, s->nprompts ? s->prompt_w[i] : 1)) return d3_errf(err, "out of memory");
    }
    if (!d->np) {
        if (n) session_warn(s, "%s: no prompt of the set is a class of the model; every class is used",
                            s->dir);
        for (int i = 0; i < ncl; i++)
            if (add_prompt(d, m->class_names[i], i, 1)) return d3_errf(err, "out of memory");
    }
    if (make_cycle(d, err)) return -1;
    d->fixed = -1;
    if (s->prompt_fixed && rounds_fix_prompt(d, s->prompt_fixed, err)) {
        session_warn(s, "%s; new pairs cycle through the prompts", err);
        d->fixed = -1;
    }
    return 0;
}

int rounds_nprompts(const rounds *d) { return d->np; }
const char *rounds_prompt(const rounds *d, int i) { return i >= 0 && i < d->np ? d->prompt[i] : "?"; }

const char *rounds_pair_prompt(const rounds *d, const d3_pair_sample *p) {
    return p->prompt ? p->prompt : rounds_prompt_of(d, p->cls);
}

const char *rounds_prompt_of(const rounds *d, int cls) {
    return cls >= 0 && cls < d->nclasses ? d->class_name[cls] : "?";
}

const char *rounds_fixed_prompt(const rounds *d) {
    if (d->fixed < 0) return NULL;
    return d->fixed < d->np ? d->prompt[d->fixed] : d->class_name[d->fixed - d->np];
}

int rounds_fix_prompt(rounds *d, const char *prompt, char *err) {
    int f = -1;
    if (prompt) {
        for (int i = 0; i < d->np && f < 0; i++)
            if (!strcmp(d->prompt[i], prompt)) f = i;
        for (int i = 0; i < d->nclasses && f < 0; i++)
            if (!strcmp(d->class_name[i], prompt)) f = d->np + i;
        if (f < 0 && !d->text) return d3_errf(err, "prompt '%.200s' is not a class of the model", prompt);
    }
    int add = prompt && f < 0; /* a new free-text prompt joins the set */
    if (add && (!prompt[0] || strlen(prompt) >= SESSION_PROMPT_LEN || d->s->nprompts >= SESSION_MAX_PROMPTS))
        return d3_errf(err, "prompt: expected 1 to %d bytes, at most %d prompts", SESSION_PROMPT_LEN - 1,
                       SESSION_MAX_PROMPTS);
    for (const unsigned char *c = (const unsigned char *)prompt; add && *c; c++)
        if (*c < 0x20 || *c == 0x7f) return d3_errf(err, "prompt: control character 0x%02x", *c);
    if (d->s->readonly) {
        if (add) return d3_errf(err, "prompt: the session is read-only");
        d->fixed = f;
        return 0;
    }
    int ns = d->s->nprompts;
    const char **p = calloc((size_t)ns + 2, sizeof *p);
    int *wc = malloc(((size_t)ns + 2) * sizeof *wc);
    if (!p || !wc) { free(p); free(wc); return d3_errf(err, "out of memory"); }
    for (int i = 0; i < ns; i++) p[i] = d->s->prompts[i];
    memcpy(wc, d->s->prompt_w, (size_t)ns * sizeof *wc);
    if (add) { /* durable before it is used: prompts.json is written atomically */
        p[ns] = prompt;
        wc[ns++] = 1;
    }
    char *keep = prompt ? strdup(prompt) : NULL; /* prompt may be the session's own string */
    int rc = prompt && !keep ? d3_errf(err, "out of memory")
                             : session_set_prompts(d->s, p, wc, ns, keep, err);
    free(wc);
    free(p);
    if (!rc && add) {
        if (add_prompt(d, keep, -1, 1) || make_cycle(d, err)) rc = d3_errf(err, "out of memory");
        else f = d->np - 1;
    }
    free(keep);
    if (!rc) d->fixed = f;
    return rc;
}

int rounds_read_prompt_file(const char *path, char ***pp, int **wp, int *np, char *err) {
    FILE *f = fopen(path, "r");
    *pp = NULL;
    *wp = NULL;
    *np = 0;
    if (!f) return d3_errf(err, "%s: %s", path, strerror(errno));
    char line[SESSION_PROMPT_LEN + 16];
    char **p = calloc(SESSION_MAX_PROMPTS, sizeof *p);
    int *w = calloc(SESSION_MAX_PROMPTS, sizeof *w), n = 0, rc = 0, lineno = 0;
    if (!p || !w) rc = d3_errf(err, "%s: out of memory", path);
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len && line[len - 1] != '\n' && !feof(f)) {
            rc = d3_errf(err, "%s:%d: line longer than %d bytes", path, lineno, SESSION_PROMPT_LEN - 1);
            break;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len || line[0] == '#') continue;
        int weight = 1;
        char *tab = strrchr(line, '\t');
        if (tab) {
            char *end;
            long v = strtol(tab + 1, &end, 10);
            if (end == tab + 1 || *end || v < 1 || v > 100) {
                char shown[64];
                rc = d3_errf(err, "%s:%d: weight '%s': expected an integer 1..100", path, lineno,
                             text_escape(shown, sizeof shown, tab + 1));
                break;
            }
            weight = (int)v;
            *tab = 0;
        }
        for (unsigned char *c = (unsigned char *)line; *c; c++)
            if (*c < 0x20 || *c == 0x7f) {
                rc = d3_errf(err, "%s:%d: control character 0x%02x in the prompt", path, lineno, *c);
                break;
            }
        if (rc) break;
        if (!line[0]) {
            rc = d3_errf(err, "%s:%d: empty prompt before the weight", path, lineno);
            break;
        }
        if (n == SESSION_MAX_PROMPTS) {
            rc = d3_errf(err, "%s:%d: more than %d prompts", path, lineno, SESSION_MAX_PROMPTS);
            break;
        }
        for (int i = 0; i < n && !rc; i++)
            if (!strcmp(p[i], line)) rc = d3_errf(err, "%s:%d: prompt listed twice", path, lineno);
        if (rc) break;
        if (!(p[n] = strdup(line))) rc = d3_errf(err, "%s: out of memory", path);
        else w[n++] = weight;
    }
    if (!rc && ferror(f)) rc = d3_errf(err, "%s: read error", path);
    fclose(f);
    if (!rc && !n) rc = d3_errf(err, "%s: no prompt in the file", path);
    if (rc) {
        for (int i = 0; i < n; i++) free(p[i]);
        free(p);
        free(w);
        return -1;
    }
    *pp = p;
    *wp = w;
    *np = n;
    return 0;
}

int rounds_prompts_file(d3_session *s, const char *path, char *err) {
    char **p;
    int *w, n;
    if (rounds_read_prompt_file(path, &p, &w, &n, err)) return -1;
    int rc = session_set_prompts(s, (const char *const *)p, w, n, s->prompt_fixed, err);
    for (int i = 0; i < n; i++) free(p[i]);
    free(p);
    free(w);
    return rc;
}

/* the class of the q-th pair */
static int pair_class(const rounds *d, uint64_t q, const char **text) {
    int i;
    if (d->fixed >= d->np) {
        if (text) *text = d->class_name[d->fixed - d->np];
        return d->fixed - d->np;
    }
    i = d->fixed >= 0 ? d->fixed : d->cycle[q % (uint64_t)d->ncycle];
    if (text) *text = d->prompt[i];
    return d->cls[i];
}

/* ---- start / stop ---- */

/* train.all_labels: the engine trains every round over every label so
 * far. Labels that earlier rounds trained (before this start) join its
 * pool; pending ones come with the next round. A pair whose current choice
 * differs from the one trained (a history edit) is pending: it joins with
 * its new choice. Returns the pairs handed over, or -1 with err. */
static long remember_trained(rounds *d, char *err) {
    const d3_session *s = d->s;
    if (!d->c->train.all_labels) return 0;
    long n = 0;
    for (long id = 0; id < s->next_pair && id < s->cap; id++) {
        int ch = session_choice_of(s, id);
        if ((ch != SESSION_A && ch != SESSION_B) || session_label_pending(s, id) ||
            session_trained_choice(s, id) != ch)
            continue;
        d3_pair_sample *p = rounds_load_pair(s, id, err);
        if (!p) return -1;
        const d3_pair_sample *pp = p;
        float h[1][2] = {{ch == SESSION_A ? 1.0f : -1.0f, ch == SESSION_A ? -1.0f : 1.0f}};
        engine_remember(d->e, &pp, (const float(*)[2])h, 1); /* copies the trajectories */
        engine_pair_free(p);
        n++;
    }
    return n;
}

/* The engine options of the config and the driver's opts. */
static engine_opts driver_engine_opts(rounds *d, const d3_config *c, const d3_backend *be) {
    engine_opts eo = engine_opts_default();
    int sd = d->s->family == SESSION_FAMILY_SD;
    eo.sample = config_ddim_opts_family(c, sd);
    eo.train = config_train_opts_family(c, sd);
    if (!c->sampler.cfg_set && d->s->next_pair > 0) {
        /* guidance not in the config: the session keeps the guidance its
         * pairs were sampled with (a session begun before the family
         * default changed, or with another config), so its pairs train
         * under the guidance that sampled them */
        char e2[D3_ERRLEN];
        d3_pair_sample *p = rounds_load_pair(d->s, d->s->next_pair - 1, e2); /* NULL: not readable */
        if (p) {
            eo.sample.cfg = eo.train.sample.cfg = p->cfg;
            engine_pair_free(p);
        }
    }
    d->sample = eo.sample;
    eo.lr = (float)c->d3po.lr;
    eo.weight_decay = (float)c->d3po.weight_decay;
    eo.threads = c->engine.threads;
    eo.be = be;
    eo.save_ctx = d->s;
    eo.overlap = d->o.overlap;
    return eo;
}

/* rounds_start on a Stable Diffusion-family session: the model the session
 * refers to (hash checked), its LoRA adapters of the round in use as the
 * trainable set, the reference = the adapters off (the engine's view). */
static int open_groups(rounds *d, char *err);
static long remember_groups(rounds *d, char *err);

static rounds *start_sd(rounds *d, char *err) {
    d3_session *s = d->s;
    const d3_config *c = d->c;
    d3_dmodel *dm = calloc(1, sizeof *dm);
    d3_state st;
    memset(&st, 0, sizeof st);
    if (!dm) {
        d3_errf(err, "out of memory");
        rounds_stop(d);
        return NULL;
    }
    if (open_groups(d, err) || session_sd_load(s, d->be, session_sd_ignore_hash_env(), dm, &st, err) ||
        build_prompts(d, NULL, err)) {
        if (dm->ops) dm_close(dm);
        free(dm);
        state_free(&st);
        rounds_stop(d);
        return NULL;
    }
    d->base_ok = 1;
    engine_opts eo = driver_engine_opts(d, c, d->be);
    eo.save_round_dm = save_round_sd;
    d->version = s->version;
    d->seq = (uint64_t)s->next_pair;
    d->e = engine_start_dm(dm, NULL, &st, s->version, &eo, err);
    state_free(&st);
    if (!d->e) {
        dm_close(dm);
        free(dm);
        rounds_stop(d);
        return NULL;
    }
    long nr = remember_trained(d, err);
    long ng = nr >= 0 ? remember_groups(d, err) : -1;
    nr = ng < 0 ? -1 : nr + ng;
    if (nr < 0) {
        rounds_stop(d);
        return NULL;
    }
    if (nr) session_warn(s, "train.all_labels: %ld labels of earlier rounds join every round", nr);
    return d;
}

/* The session's groups (groups.h); their warnings join the session's. */
static int open_groups(rounds *d, char *err) {
    d3_session *s = d->s;
    if (groups_open(s->dir, s->round, s->readonly, &d->g, err)) return -1;
    d->g_open = 1;
    for (int i = 0; i < d->g.nwarn && i < GROUPS_MAX_WARN; i++) session_warn(s, "%s", d->g.warn[i]);
    if (d->g.nwarn > GROUPS_MAX_WARN)
        session_warn(s, "%s/groups.jsonl: %d more problems (d3po session check)", s->dir,
                     d->g.nwarn - GROUPS_MAX_WARN);
    d->gseq = (uint64_t)d->g.next;
    return 0;
}

/* train.all_labels, for groups: the pairs of groups earlier rounds trained
 * (with their current marks) join the engine's pool. Returns the pairs. */
static long remember_groups(rounds *d, char *err) {
    if (!d->c->train.all_labels) return 0;
    long n = 0;
    for (long id = 0; id < d->g.next; id++) {
        int pr[GROUPS_MAX_PAIRS][2];
        int np = groups_trained(&d->g, id) ? groups_pairs(groups_marks(&d->g, id), pr) : 0;
        if (!np) continue;
        session_traj t;
        if (groups_load(&d->g, id, &t, err)) return -1;
        for (int q = 0; q < np; q++) {
            d3_pair_sample p = {.cls = t.cls, .seed = t.seed, .version = t.version, .K = t.K,
                                .S = t.h, .C = t.C, .h = t.h, .w = t.w, .cfg = t.cfg, .eta = t.eta,
                                .prompt = (char *)t.prompt,
                                .traj = {t.traj[pr[q][0]], t.traj[pr[q][1]]}};
            const d3_pair_sample *pp = &p;
            float h[1][2] = {{1.0f, -1.0f}}; /* good beats bad */
            engine_remember(d->e, &pp, (const float(*)[2])h, 1); /* copies the trajectories */
        }
        session_traj_free(&t);
        n += np;
    }
    return n;
}

rounds *rounds_start(d3_session *s, const d3_config *c, const d3_backend *be, const rounds_opts *o,
                     char *err) {
    rounds *d = calloc(1, sizeof *d);
    if (!d) { d3_errf(err, "out of memory"); return NULL; }
    d->s = s;
    d->c = c;
    d->be = be;
    d->o = *o;
    if (d->o.round_size < 1) d->o.round_size = 1;
    if (d->o.queue_depth < 1) d->o.queue_depth = 1;
    d->train_ids = malloc(ROUNDS_MAX_PAIRS * sizeof *d->train_ids);
    d->train_ch = malloc(ROUNDS_MAX_PAIRS);
    d->train_gids = malloc(ROUNDS_MAX_PAIRS * sizeof *d->train_gids);
    d->train_gmarks = malloc(ROUNDS_MAX_PAIRS * sizeof *d->train_gmarks);
    if (!d->train_ids || !d->train_ch || !d->train_gids || !d->train_gmarks) {
        d3_errf(err, "out of memory");
        rounds_stop(d);
        return NULL;
    }
    if (s->family == SESSION_FAMILY_SD) return start_sd(d, err);
    d3_model *policy = malloc(sizeof *policy), *base = malloc(sizeof *base);
    d3_state st;
    memset(&st, 0, sizeof st);
    if (!policy || !base) {
        d3_errf(err, "out of memory");
        goto fail;
    }
    if (open_groups(d, err) || session_load_policy(s, policy, &st, err)) goto fail;
    char bp[4200], why[D3_ERRLEN];
    if (model_load(base, session_base_path(s, bp, sizeof bp), NULL, why)) {
        if (c->d3po.reference == D3PO_REF_BASE) {
            d3_errf(err, "%s", why);
            model_free(policy);
            state_free(&st);
            free(base);
            base = NULL;
            goto fail;
        }
        session_warn(s, "no drift measure: %s", why);
        free(base);
        base = NULL;
    }
    d->base_ok = base != NULL;
    if (build_prompts(d, policy, err)) {
        model_free(policy);
        state_free(&st);
        if (base) model_free(base);
        goto fail;
    }
    engine_opts eo = driver_engine_opts(d, c, be);
    eo.save_round = save_round;
    d->version = s->version;
    d->seq = (uint64_t)s->next_pair;
    d->e = engine_start(policy, base, &st, s->version, &eo, err);
    state_free(&st); /* whatever the engine did not take */
    if (d->e) {
        long nr = remember_trained(d, err);
        long ng = nr >= 0 ? remember_groups(d, err) : -1;
        nr = ng < 0 ? -1 : nr + ng;
        if (nr >= 0) {
            if (nr) session_warn(s, "train.all_labels: %ld labels of earlier rounds join every round", nr);
            return d;
        }
        rounds_stop(d);
        return NULL;
    }
    model_free(policy); /* engine_start failed: the models are still ours */
    if (base) model_free(base);
fail:
    free(policy);
    free(base);
    rounds_stop(d);
    return NULL;
}

void rounds_stop(rounds *d) {
    if (!d) return;
    if (d->e) engine_stop(d->e);
    if (d->g_open) groups_close(&d->g);
    free(d->train_gids);
    free(d->train_gmarks);
    for (int i = 0; i < d->np; i++) free(d->prompt[i]);
    for (int i = 0; d->class_name && i < d->nclasses; i++) free(d->class_name[i]);
    free(d->prompt);
    free(d->cls);
    free(d->pw);
    free(d->class_name);
    free(d->cycle);
    free(d->train_ids);
    free(d->train_ch);
    free(d);
}

int rounds_fd(const rounds *d) { return engine_fd(d->e); }
ddim_opts rounds_sampling(const rounds *d) { return d->sample; }

const char *rounds_device(const rounds *d) { return d->be ? d->be->name : "cpu"; }

/* ---- pending labels and rounds ---- */

static int in_training(const rounds *d, long id, int choice) {
    if (!d->training) return 0;
    for (int i = 0; i < d->ntrain; i++)
        if (d->train_ids[i] == id) return d->train_ch[i] == choice;
    return 0;
}

/* Labels that go into the next round: decided (A, B, tie), not trained
 * with their current choice, not in the round now training. */
static int group_in_training(const rounds *d, long id) {
    if (!d->training) return 0;
    for (int i = 0; i < d->ntrain_g; i++)
        if (d->train_gids[i] == id) return !strcmp(d->train_gmarks[i], groups_marks(&d->g, id));
    return 0;
}

/* The pairs of a pending group (0 when none or in the round training). */
static int group_pending_pairs(const rounds *d, long id) {
    int pr[GROUPS_MAX_PAIRS][2];
    if (!groups_pending(&d->g, id) || group_in_training(d, id)) return 0;
    return groups_pairs(groups_marks(&d->g, id), pr);
}

static int count_pending(const rounds *d) {
    const d3_session *s = d->s;
    int n = 0;
    for (long id = 0; id < s->next_pair && id < s->cap; id++)
        if (session_label_pending(s, id) && !in_training(d, id, session_choice_of(s, id))) n++;
    for (long id = 0; id < d->g.next; id++) n += group_pending_pairs(d, id);
    return n;
}

d3_pair_sample *rounds_load_pair(const d3_session *s, long id, char *err) {
    session_pair sp;
    if (session_load_pair(s, id, &sp, err)) return NULL;
    d3_pair_sample *p = calloc(1, sizeof *p);
    size_t n = (size_t)(sp.K + 1) * sp.C * sp.h * sp.w;
    int oom = !p;
    if (p) {
        *p = (d3_pair_sample){.cls = sp.cls, .seed = sp.seed, .version = sp.version, .K = sp.K,
                              .S = sp.S, .C = sp.C, .h = sp.h, .w = sp.w, .cfg = sp.cfg,
                              .eta = sp.eta};
        if (sp.prompt && !(p->prompt = strdup(sp.prompt))) oom = 1;
        for (int i = 0; i < 2; i++) {
            p->traj[i] = malloc(n * sizeof(float));
            p->logp[i] = malloc((size_t)sp.K * sizeof(float));
            if (p->traj[i]) memcpy(p->traj[i], sp.traj[i], n * sizeof(float));
            if (p->logp[i]) memcpy(p->logp[i], sp.logp[i], (size_t)sp.K * sizeof(float));
        }
    }
    session_pair_free(&sp);
    if (oom || !p->traj[0] || !p->traj[1] || !p->logp[0] || !p->logp[1]) {
        engine_pair_free(p);
        d3_errf(err, "pair %ld: out of memory", id);
        return NULL;
    }
    return p;
}

/* Adds the pairs of every pending group (good beats bad) after the n
 * pairs in ps/h: views into the group's trajectories, loaded into gt[],
 * which the caller frees after engine_train copied them. The groups go
 * into train_gids/train_gmarks. A group whose file does not load is left
 * out with a warning. Returns the groups used. */
static int add_group_pairs(rounds *d, int round, d3_pair_sample **ps, float (*h)[2], int *n,
                           session_traj *gt) {
    int ng = 0;
    for (long id = 0; id < d->g.next && ng < ROUNDS_MAX_PAIRS; id++) {
        int pr[GROUPS_MAX_PAIRS][2];
        const char *marks = groups_marks(&d->g, id);
        int np = groups_pending(&d->g, id) ? groups_pairs(marks, pr) : 0;
        if (!np || *n + np > ROUNDS_MAX_PAIRS) continue;
        char why[D3_ERRLEN];
        session_traj *t = &gt[ng];
        if (groups_load(&d->g, id, t, why)) {
            session_warn(d->s, "%s; group %ld is left out of round %d", why, id, round);
            continue;
        }
        if ((int)strlen(marks) != t->N) {
            session_warn(d->s, "%s/groups.jsonl: group %ld has %d images, its marks '%s' %d; left "
                         "out of round %d", d->s->dir, id, t->N, marks, (int)strlen(marks), round);
            session_traj_free(t);
            continue;
        }
        int added = 0;
        for (int q = 0; q < np; q++) {
            d3_pair_sample *p = calloc(1, sizeof *p);
            if (!p) break;
            *p = (d3_pair_sample){.cls = t->cls, .seed = t->seed, .version = t->version, .K = t->K,
                                  .S = t->h, .C = t->C, .h = t->h, .w = t->w, .cfg = t->cfg,
                                  .eta = t->eta, .prompt = (char *)t->prompt};
            for (int k = 0; k < 2; k++) {
                p->traj[k] = t->traj[pr[q][k]];
                p->logp[k] = t->logp[pr[q][k]];
            }
            ps[*n] = p;
            h[*n][0] = 1; /* good */
            h[*n][1] = -1; /* bad */
            (*n)++;
            added++;
        }
        if (!added) {
            session_traj_free(t);
            continue;
        }
        d->train_gids[ng] = id;
        snprintf(d->train_gmarks[ng], GROUPS_MARKS_LEN, "%s", marks);
        ng++;
    }
    return ng;
}

/* Collects every pending label, writes the round's label list, queues the
 * training. A pair whose file does not load is left out with a warning
 * (session_warn; the caller shows s->warn). 0 started, 1 nothing to train,
 * -1 error. */
static int start_round(rounds *d, char *err) {
    d3_session *s = d->s;
    if (d->training) {
        d3_errf(err, "a round is already training");
        return 1;
    }
    int n = 0, round = s->round + 1;
    if (round > SESSION_MAX_ROUND) return d3_errf(err, "%s: round limit %d reached", s->dir, SESSION_MAX_ROUND);
    d3_pair_sample **ps = malloc(ROUNDS_MAX_PAIRS * sizeof *ps);
    float(*h)[2] = malloc(ROUNDS_MAX_PAIRS * sizeof *h);
    if (!ps || !h) {
        free(ps);
        free(h);
        return d3_errf(err, "out of memory");
    }
    for (long id = 0; id < s->next_pair && id < s->cap && n < ROUNDS_MAX_PAIRS; id++) {
        if (!session_label_pending(s, id)) continue;
        char why[D3_ERRLEN];
        d3_pair_sample *p = rounds_load_pair(s, id, why);
        if (!p) {
            session_warn(s, "%s; its label is left out of round %d", why, round);
            continue;
        }
        int c = session_choice_of(s, id);
        ps[n] = p;
        h[n][0] = c == SESSION_A ? 1 : c == SESSION_B ? -1 : 0;
        h[n][1] = -h[n][0];
        d->train_ids[n] = id;
        d->train_ch[n] = (signed char)c;
        n++;
    }
    int npl = n; /* pairs of pair labels; the groups' pairs follow */
    session_traj *gt = calloc(ROUNDS_MAX_PAIRS, sizeof *gt);
    int ng = gt ? add_group_pairs(d, round, ps, h, &n, gt) : 0;
    int rc = 1;
    if (!gt) {
        rc = d3_errf(err, "out of memory");
    } else if (!n) {
        d3_errf(err, "no label waits for training");
    } else if (session_write_round_labels(s, round, d->train_ids, d->train_ch, npl, err) ||
               (ng && groups_write_round(&d->g, round, d->train_gids, ng, err))) {
        rc = -1;
    } else {
        engine_train(d->e, (const d3_pair_sample *const *)ps, (const float(*)[2])h, n, round);
        d->training = 1;
        d->train_round = round;
        d->ntrain = npl;
        d->ntrain_g = ng;
        d->train_npairs = n;
        d->train_i = 0;
        d->train_n = 0;
        d->train_eta = NAN;
        d->train_loss = NAN;
        d->started++;
        rc = 0;
    }
    for (int i = 0; i < npl; i++) engine_pair_free(ps[i]); /* the engine copied them */
    for (int i = npl; i < n; i++) free(ps[i]);                /* views into gt */
    for (int i = 0; gt && i < ng; i++) session_traj_free(&gt[i]);
    free(gt);
    free(ps);
    free(h);
    return rc;
}

int rounds_check_due(rounds *d, char *err) {
    if (d->training || (d->o.max_rounds && d->started >= d->o.max_rounds)) return 0;
    if (count_pending(d) < d->o.round_size) return 0;
    int rc = start_round(d, err);
    return rc < 0 ? -1 : rc == 0;
}

int rounds_train_now(rounds *d, char *err) {
    if (d->training || (d->o.max_rounds && d->started >= d->o.max_rounds)) {
        if (d->training) d3_errf(err, "round %d is already training", d->train_round);
        else d3_errf(err, "no more rounds in this run");
        return 1;
    }
    return start_round(d, err);
}

int rounds_decide(rounds *d, long id, int choice, int version, char *err) {
    if (session_label(d->s, id, choice, version, err)) return -1;
    char e2[D3_ERRLEN];
    if (rounds_check_due(d, e2) < 0) session_warn(d->s, "cannot start a round: %s", e2);
    return 0;
}

int rounds_undo(rounds *d, long *id, char *err) { return session_undo(d->s, id, err); }

/* ---- sampling ---- */

void rounds_top_up(rounds *d, int held) {
    int want = d->o.queue_depth - held - d->inflight;
    if (d->o.on_policy) {
        if (d->o.max_rounds && d->started >= d->o.max_rounds) return;
        int need = d->o.round_size - count_pending(d) - held - d->inflight;
        if (need < want) want = need;
    }
    for (; want > 0; want--) {
        uint64_t q = d->seq++;
        const char *text;
        engine_sample_req r = {.cls = pair_class(d, q, &text),
                               .prompt = d->text ? text : NULL,
                               /* seeds far above auto's evaluation seeds 0..N-1; opts.seed
                                * moves the whole sequence (golden-ratio stride) */
                               .seed = (1ULL << 32) + d->o.seed * 0x9E3779B97F4A7C15ULL +
                                       q * 1000003ULL + 17,
                               .drift = d->o.drift_every > 0 && q % (uint64_t)d->o.drift_every == 0,
                               .early = d->o.overlap};
        engine_sample_ex(d->e, &r);
        d->inflight++;
    }
}

void rounds_extra(rounds *d, int i, uint64_t seed, int drift, uint64_t tag) {
    engine_sample_req r = {.cls = d->cls[i % d->np], .seed = seed, .drift = drift,
                           .prompt = d->text ? d->prompt[i % d->np] : NULL,
                           .tag = tag | TAG_EXTRA};
    engine_sample_ex(d->e, &r);
}

/* ---- events ---- */

/* The shown image i of a pair: the engine's decoded one, or (a pixel
 * pair without it) its x_0 as RGB. Malloc'd. */
static uint8_t *final_rgb(const d3_pair_sample *p, int i) {
    if (p->rgb[i]) {
        size_t n = (size_t)p->img_h * p->img_w * 3;
        uint8_t *rgb = malloc(n);
        if (rgb) memcpy(rgb, p->rgb[i], n);
        return rgb;
    }
    size_t D = 3 * (size_t)p->S * p->S;
    uint8_t *rgb = malloc(D);
    if (rgb) image_to_rgb(rgb, p->traj[i] + (size_t)p->K * D, p->S, p->S);
    return rgb;
}

static void save_group(rounds *d, d3_pair_sample *p, rounds_event *ev);

int rounds_poll(rounds *d, rounds_event *ev) {
    d3_event e;
    memset(ev, 0, sizeof *ev);
    ev->id = -1;
    if (!engine_poll(d->e, &e)) return 0;
    switch (e.kind) {
    case EV_PAIR: {
        d3_pair_sample *p = e.pair;
        e.pair = NULL;
        if (p->tag & TAG_EXTRA) {
            ev->kind = RV_EXTRA;
            ev->tag = p->tag & ~TAG_EXTRA;
            ev->pair = p;
            break;
        }
        if (p->n > 2) {
            d->ginflight--;
            save_group(d, p, ev);
            break;
        }
        d->inflight--;
        int px = p->cls >= 0;
        session_pair sp = {.K = p->K, .S = p->S, .C = p->C, .h = p->h, .w = p->w,
                           .img_h = p->img_h, .img_w = p->img_w,
                           .family = px ? SESSION_FAMILY_PIXEL : d->s->family, .cls = p->cls,
                           .version = (int)p->version, .seed = p->seed, .cfg = p->cfg,
                           .eta = p->eta,
                           .prompt = p->prompt ? p->prompt : px ? (char *)rounds_prompt_of(d, p->cls) : NULL,
                           .traj = {p->traj[0], p->traj[1]}, .logp = {p->logp[0], p->logp[1]}};
        uint8_t *ra = final_rgb(p, 0), *rb = final_rgb(p, 1);
        long id;
        char err[D3_ERRLEN];
        if (!ra || !rb || session_add_pair(d->s, &sp, ra, rb, &id, err)) {
            ev->kind = RV_ERROR;
            d3_errf(ev->msg, "cannot save a pair: %s", ra && rb ? err : "out of memory");
            engine_pair_free(p);
        } else {
            ev->kind = RV_PAIR;
            ev->id = id;
            ev->pair = p;
        }
        free(ra);
        free(rb);
        break;
    }
    case EV_PROGRESS:
        ev->kind = RV_PROGRESS;
        if (e.what && !strcmp(e.what, "training")) {
            d->train_i = e.i;
            d->train_n = e.n;
            d->train_eta = e.eta_s;
            if (isfinite(e.loss)) d->train_loss = e.loss;
        }
        break;
    case EV_TRAINED:
        session_mark_trained(d->s, d->train_ids, d->train_ch, d->ntrain);
        groups_mark_trained(&d->g, d->train_gids, (const char(*)[GROUPS_MARKS_LEN])d->train_gmarks,
                            d->ntrain_g);
        ev->kind = RV_TRAINED;
        ev->round = e.round;
        ev->version = e.version;
        ev->loss = e.loss;
        ev->nlabels = d->train_npairs;
        d->version = e.version;
        d->training = 0;
        d->ntrain = 0;
        d->ntrain_g = 0;
        d->trained++;
        {
            /* labels made while it trained may already make the next round due */
            char err[D3_ERRLEN];
            if (rounds_check_due(d, err) < 0) session_warn(d->s, "cannot start a round: %s", err);
        }
        break;
    case EV_ERROR:
        ev->kind = RV_ERROR;
        d3_errf(ev->msg, "engine: %s", e.msg);
        if (d->training) { /* the round failed: its labels stay pending */
            d->training = 0;
            d->ntrain = 0;
            d->ntrain_g = 0;
        }
        break;
    default:
        ev->kind = RV_PROGRESS;
        break;
    }
    engine_event_free(&e);
    return 1;
}

void rounds_event_free(rounds_event *ev) {
    engine_pair_free(ev->pair);
    ev->pair = NULL;
}

void rounds_get_status(rounds *d, rounds_status *st) {
    memset(st, 0, sizeof *st);
    st->training = d->training;
    st->train_round = d->train_round;
    st->train_nlabels = d->train_npairs;
    st->train_i = d->train_i;
    st->train_n = d->train_n;
    st->train_eta_s = d->training ? d->train_eta : NAN;
    st->train_loss = d->train_loss;
    st->version = d->version;
    st->round = d->training ? d->train_round + 1 : d->s->round + 1;
    st->pending = count_pending(d);
    st->round_size = d->o.round_size;
    st->inflight = d->inflight;
    st->rounds_trained = d->trained;
    session_stats in;
    session_info(d->s, &in);
    st->labels_trained = in.trained;
    st->labels_untrained = in.untrained;
    pair_class(d, d->seq, &st->next_prompt);
    st->inflight_groups = d->ginflight;
}

/* ---- groups of k ---- */

d3_groups *rounds_groups(rounds *d) { return &d->g; }

void rounds_top_up_groups(rounds *d, int k, int held) {
    if (k < GROUPS_MIN_K || k > GROUPS_MAX_K) return;
    int want = 2 - held - d->ginflight;
    if (d->o.on_policy) {
        /* only the groups the current round still needs, each counted as
         * the (k/2)^2 pairs a half good, half bad marking makes */
        if (d->o.max_rounds && d->started >= d->o.max_rounds) return;
        int ppg = (k / 2) * (k / 2), left = d->o.round_size - count_pending(d);
        int need = (left + ppg - 1) / ppg - held - d->ginflight;
        if (need < want) want = need;
    }
    for (; want > 0; want--) {
        uint64_t q = d->gseq++;
        const char *text;
        engine_sample_req r = {.cls = pair_class(d, q, &text),
                               .prompt = d->text ? text : NULL, /* free-text families */
                               /* far from the pairs' seeds (1 << 32 + ...) */
                               .seed = (1ULL << 44) + d->o.seed * 0x9E3779B97F4A7C15ULL +
                                       q * 1000003ULL + 29,
                               .early = d->o.overlap, .n = k};
        engine_sample_ex(d->e, &r);
        d->ginflight++;
    }
}

int rounds_decide_group(rounds *d, long id, const char *marks, int k, int version, char *err) {
    if (groups_decide(&d->g, id, marks, k, version, err)) return -1;
    char e2[D3_ERRLEN];
    if (rounds_check_due(d, e2) < 0) session_warn(d->s, "cannot start a round: %s", e2);
    return 0;
}

int rounds_undo_group(rounds *d, long *id, char *err) { return groups_undo(&d->g, id, err); }

/* A sampled group (p->n = k) to disk: groups/NNNNNN.traj and its PNGs. */
static void save_group(rounds *d, d3_pair_sample *p, rounds_event *ev) {
    int px = p->cls >= 0;
    session_traj t = {.N = p->n, .K = p->K, .C = p->C, .h = p->h, .w = p->w,
                      .family = px ? SESSION_FAMILY_PIXEL : d->s->family, .cls = p->cls,
                      .version = (int)p->version, .seed = p->seed, .cfg = p->cfg, .eta = p->eta,
                      .prompt = p->prompt ? p->prompt : px ? rounds_prompt_of(d, p->cls) : ""};
    uint8_t *rgb[D3_MAX_GROUP] = {0};
    int oom = 0;
    for (int i = 0; i < p->n; i++) {
        t.traj[i] = p->traj[i];
        t.logp[i] = p->logp[i];
        oom |= !(rgb[i] = final_rgb(p, i));
    }
    long id;
    char err[D3_ERRLEN];
    int ih = p->rgb[0] ? p->img_h : p->S, iw = p->rgb[0] ? p->img_w : p->S;
    if (oom || groups_add(&d->g, &t, (const uint8_t *const *)rgb, ih, iw, &id, err)) {
        ev->kind = RV_ERROR;
        d3_errf(ev->msg, "cannot save a group: %s", oom ? "out of memory" : err);
        engine_pair_free(p);
    } else {
        ev->kind = RV_GROUP;
        ev->id = id;
        ev->pair = p;
    }
    for (int i = 0; i < D3_MAX_GROUP; i++) free(rgb[i]);
}
