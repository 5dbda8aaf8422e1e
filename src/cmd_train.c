/* cmd_train.c - `d3po train`: an offline D3PO round over every decision a
 * session holds, however it was collected (the labeling screen, `d3po
 * auto`, an external labeler, a hand-edited journal), starting from the
 * session's latest checkpoint and saved as the next round
 * (session_save_round: checkpoint written atomically, then LATEST).
 *
 * Training pairs come from three places:
 *   - labels: every existing pair whose effective decision is A, B or tie
 *     (ties carry no gradient; skips and unlabeled pairs are left out);
 *   - groups (the screen's grid mode, groups.h): every decided group's
 *     good images each beat its bad ones; the groups trained are written
 *     to rounds/NNNN.groups as a round of the screen does;
 *   - --scores FILE.jsonl (the paper's "mark the distorted images" workflow,
 *     groups of k images with per-image scores): lines
 *       {"pair": 12, "image": "A", "score": 1}
 *     The session's pairs that share a seed and a class form a group (the
 *     same seed gives the same starting noise x_T; this is checked on the
 *     stored trajectories, and a mismatch is an error). Every two scored
 *     images of a group with different scores become one training pair,
 *     the higher score preferred: k scored images give up to k(k-1)/2 pairs;
 *   - groups of k the labeling screen's grid mode marked (src/groups.h):
 *     every (good, bad) pair of a group, the good image preferred; the
 *     groups used are written to rounds/NNNN.groups like the labels.
 * Pairs sampled with different steps/cfg/eta are trained in separate
 * passes (the log-probabilities depend on them).
 *
 * Both model families train through the model interface (d3po_train_dm):
 * a pixel session's whole policy against its reference (config), a Stable
 * Diffusion-family session's LoRA adapters against the same UNet with
 * them off (the base), each pair conditioned on its prompt; the round
 * file then holds only the adapters and their AdamW state
 * (session_sd_save_round). Either way one line goes to DIR/metrics.jsonl,
 * as a round of `d3po auto` writes (with "source": "train"). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "d3po.h"
#include "ops.h"
#include "dmodel.h"
#include "groups.h"
#include "session.h"
#include "session_sd.h"
#include "text.h"

static const char train_help[] =
    "usage: d3po train --session DIR [--epochs N] [--config FILE]\n"
    "                  [--scores FILE.jsonl] [--no-labels] [--threads N]\n"
    "                  [--objective d3po|diffusion-dpo] [--device auto|cpu|cuda] [--tf32]\n"
    "                  [--dtype fp32|fp16|bf16]\n"
    "\n"
    "Runs D3PO (or Diffusion-DPO) over every A/B/tie decision in the session (skips and unlabeled\n"
    "pairs are left out; ties give no gradient) and every marked group of grid mode\n"
    "(each good image beats each bad one), starting from the session's\n"
    "latest checkpoint, and saves the result as the next round (one line appended to\n"
    "DIR/metrics.jsonl). Labels collected by any means count. D3PO settings (lr, beta,\n"
    "clamp, reference, epochs, kl) come from the config. On a Stable Diffusion-family\n"
    "session the LoRA adapters train (reference: the model with them off) and the round\n"
    "holds only them.\n"
    "\n"
    "  --session DIR      the session (locked while training)\n"
    "  --epochs N         passes over the pairs (default: the config's d3po.epochs)\n"
    "  --config FILE      settings (default $XDG_CONFIG_HOME/d3po/d3po.conf, else built-in)\n"
    "  --scores FILE      per-image scores, one JSON object per line:\n"
    "                       {\"pair\": 12, \"image\": \"A\", \"score\": 1}\n"
    "                     (\"image\" is \"A\" or \"B\"; higher score = better). The\n"
    "                     session's pairs with the same seed and class (prompt) form a group\n"
    "                     sharing the starting noise; every two scored images of a\n"
    "                     group with different scores become a training pair\n"
    "  --no-labels        train on --scores only, not on the journals' decisions (pairs, groups)\n"
    "  --objective OBJ    d3po or diffusion-dpo (default: the config's train.objective;\n"
    "                     diffusion-dpo uses the final images and the base model as\n"
    "                     reference)\n"
    "  --threads N        CPU threads (default: the config's engine.threads)\n"
    "  --device DEV       auto (a CUDA GPU when one works, else the CPU), cpu or cuda\n"
    "                     (default: the config's engine.device)\n"
    "  --tf32             allow TF32 tensor cores on the GPU (faster, ~1e-3 relative\n"
    "                     error; default: the config's engine.tf32)\n"
    "  --dtype T          fp32, fp16 or bf16: the frozen base's precision (default:\n"
    "                     the config's engine.dtype); the CPU computes in fp32 always\n";

typedef struct {
    long pair;
    int side;
    double score;
} scored;

/* Loaded pairs, by id, so a pair used twice is read once. */
typedef struct {
    long n, cap;
    long *id;
    session_pair *p;
} pair_cache;

static session_pair *cache_get(pair_cache *c, const d3_session *s, long id, char *err) {
    for (long i = 0; i < c->n; i++)
        if (c->id[i] == id) return &c->p[i];
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->id = realloc(c->id, c->cap * sizeof *c->id);
        c->p = realloc(c->p, c->cap * sizeof *c->p);
    }
    if (session_load_pair(s, id, &c->p[c->n], err)) return NULL;
    c->id[c->n] = id;
    return &c->p[c->n++];
}

static void cache_free(pair_cache *c) {
    for (long i = 0; i < c->n; i++) session_pair_free(&c->p[i]);
    free(c->id);
    free(c->p);
}

/* Reads --scores: n entries into *out. Errors name FILE:LINE. */
static int read_scores(const char *path, const d3_session *s, scored **out, long *n, char *err) {
    FILE *f = fopen(path, "r");
    if (!f) return d3_errf(err, "%s: cannot open", path);
    char *line = NULL;
    size_t lcap = 0;
    long cap = 0, ln = 0;
    *out = NULL;
    *n = 0;
    int rc = 0;
    while (!rc && getline(&line, &lcap, f) > 0) {
        ln++;
        if (strspn(line, " \t\r\n") == strlen(line)) continue;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        json_t *jp = o ? json_object_get(o, "pair") : NULL, *ji = o ? json_object_get(o, "image") : NULL,
               *js = o ? json_object_get(o, "score") : NULL;
        const char *im = json_string_value(ji);
        if (!o) rc = d3_errf(err, "%s:%ld: %s", path, ln, je.text);
        else if (!json_is_integer(jp) || !json_is_number(js) || !im || (strcmp(im, "A") && strcmp(im, "B")))
            rc = d3_errf(err, "%s:%ld: expected {\"pair\": integer, \"image\": \"A\" or \"B\", "
                              "\"score\": number}", path, ln);
        else {
            long id = (long)json_integer_value(jp);
            double sc = json_number_value(js);
            int side = im[0] == 'B';
            if (id < 0 || id >= s->cap || !s->present[id])
                rc = d3_errf(err, "%s:%ld: pair %ld is not in the session", path, ln, id);
            else if (!isfinite(sc))
                rc = d3_errf(err, "%s:%ld: score is not finite", path, ln);
            for (long i = 0; i < *n && !rc; i++)
                if ((*out)[i].pair == id && (*out)[i].side == side)
                    rc = d3_errf(err, "%s:%ld: pair %ld image %s is scored twice", path, ln, id, im);
            if (!rc) {
                if (*n == cap) *out = realloc(*out, (cap = cap ? 2 * cap : 64) * sizeof **out);
                (*out)[(*n)++] = (scored){id, side, sc};
            }
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    if (rc) { free(*out); *out = NULL; *n = 0; }
    return rc;
}

/* Training pairs and the sampling settings of their trajectories. */
typedef struct {
    d3po_pair *v;
    ddim_opts *so;
    long n, cap;
} pair_list;

/* Trajectories x0 (preferred when h0 = 1) and x1 of one prompt (class
 * cls, or text) sampled with K steps, eta, cfg. */
static void add_traj_pair(pair_list *l, int cls, const char *prompt, float *x0, float *x1,
                          float h0, int K, float eta, float cfg) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        l->so = realloc(l->so, l->cap * sizeof *l->so);
    }
    l->so[l->n] = (ddim_opts){.steps = K, .eta = eta, .cfg = cfg};
    l->v[l->n++] = (d3po_pair){.cls = cls, .prompt = (char *)prompt, .traj = {x0, x1},
                               .h = {h0, -h0}, .ref_tag = -1};
}

static void add_pair(pair_list *l, const session_pair *a, int sa, const session_pair *b, int sb,
                     float h0) {
    add_traj_pair(l, a->cls, a->prompt, a->traj[sa], b->traj[sb], h0, a->K, a->eta, a->cfg);
}

/* The decided groups of g (grid mode) as training pairs: every good image
 * of a group beats every bad one. Their trajectories are loaded into
 * (*gt)[0..*ng) (the pairs point into them), their ids and marks into
 * gids/gmarks. A group whose file does not load is left out with a
 * warning. Returns the pairs added. */
static long add_group_pairs(d3_groups *g, pair_list *L, session_traj **gt, long **gids,
                            char (**gmarks)[GROUPS_MARKS_LEN], int *ng) {
    long n = 0;
    int cap = 0;
    for (long id = 0; id < g->next; id++) {
        int pr[GROUPS_MAX_PAIRS][2];
        const char *marks = groups_marks(g, id);
        int np = groups_pairs(marks, pr);
        if (!np) continue;
        if (*ng == cap) {
            cap = 2 * cap + 16;
            session_traj *t = realloc(*gt, cap * sizeof *t);
            if (t) *gt = t;
            long *i = realloc(*gids, cap * sizeof *i);
            if (i) *gids = i;
            char(*m)[GROUPS_MARKS_LEN] = realloc(*gmarks, cap * sizeof *m);
            if (m) *gmarks = m;
            if (!t || !i || !m) {
                fprintf(stderr, "d3po train: warning: out of memory; groups from %ld on left out\n", id);
                break;
            }
        }
        char why[D3_ERRLEN], e2[D3_ERRLEN];
        session_traj *t = &(*gt)[*ng];
        if (groups_load(g, id, t, why)) {
            fprintf(stderr, "d3po train: warning: %s; group %ld left out (d3po session check)\n",
                    text_escape(e2, sizeof e2, why), id);
            continue;
        }
        if ((int)strlen(marks) != t->N) {
            fprintf(stderr, "d3po train: warning: group %ld has %d images, its marks %d; left out\n",
                    id, t->N, (int)strlen(marks));
            session_traj_free(t);
            continue;
        }
        for (int q = 0; q < np; q++)
            add_traj_pair(L, t->cls, t->prompt, t->traj[pr[q][0]], t->traj[pr[q][1]], 1.0f, t->K,
                          t->eta, t->cfg);
        (*gids)[*ng] = id;
        snprintf((*gmarks)[*ng], GROUPS_MARKS_LEN, "%s", marks);
        (*ng)++;
        n += np;
    }
    return n;
}

static int same_sampling(const session_pair *a, const session_pair *b) {
    return a->K == b->K && a->C == b->C && a->h == b->h && a->w == b->w && a->cfg == b->cfg &&
           a->eta == b->eta;
}

/* The same seed, class and prompt: images meant to share x_T. */
static int same_group(const session_pair *a, const session_pair *b) {
    return a->seed == b->seed && a->cls == b->cls &&
           !strcmp(a->prompt ? a->prompt : "", b->prompt ? b->prompt : "");
}

/* Conditioning of every Stable Diffusion-family pair from its prompt, made
 * once per distinct prompt (conds[] owns them; pairs point into it). */
static int condition_pairs(d3_dmodel *dm, pair_list *L, float ***conds, long *nc, char *err) {
    for (long i = 0; i < L->n; i++) {
        d3po_pair *q = &L->v[i];
        if (!q->prompt) return d3_errf(err, "pair %ld of the training set has no prompt", i);
        for (long j = 0; j < i && !q->cond; j++)
            if (L->v[j].cond && !strcmp(L->v[j].prompt, q->prompt)) q->cond = L->v[j].cond;
        if (q->cond) continue;
        float *c = malloc(dm->cond_floats * sizeof *c), **nv = realloc(*conds, (*nc + 1) * sizeof *nv);
        if (nv) *conds = nv;
        if (!c || !nv) { free(c); return d3_errf(err, "out of memory"); }
        (*conds)[(*nc)++] = c;
        if (dm_condition(dm, q->prompt, c, err)) return -1;
        q->cond = c;
    }
    return 0;
}

typedef struct {
    int every, last;
} progress_ctx;

static int on_progress(void *ctx, int step, int total, double loss) {
    progress_ctx *p = ctx;
    if (step == total || step - p->last >= p->every) {
        fprintf(stderr, "d3po train: %d/%d updates, loss %.5f\n", step, total, loss);
        p->last = step;
    }
    return 0;
}

/* One line for the round trained, as `d3po auto` writes (cli.h), with
 * "source": "train": no oracle, score or drift (null); "labels" is the
 * number of preference pairs trained (labels, scores and groups). */
static int write_metrics(d3_session *s, const d3_config *cfg, int sd, int round, long pairs,
                         double loss, const char *device, char *err) {
    session_stats st;
    session_info(s, &st);
    json_t *o = json_object(), *tr = cli_train_json(cfg);
    if (sd) json_object_set_new(tr, "reference", json_string("base"));
    json_object_set_new(o, "round", json_integer(round));
    json_object_set_new(o, "labels", json_integer(pairs));
    json_object_set_new(o, "loss", isfinite(loss) ? json_real(loss) : json_null());
    json_object_set_new(o, "oracle", json_null());
    json_object_set_new(o, "score", json_null());
    json_object_set_new(o, "version", json_integer(round));
    json_object_set_new(o, "eval_images", json_integer(0));
    json_object_set_new(o, "drift_logratio", json_null());
    json_object_set_new(o, "total_labels", json_integer(st.labeled));
    json_object_set_new(o, "device", json_string(device));
    json_object_set_new(o, "source", json_string("train"));
    json_object_set_new(o, "train", tr);
    int rc = cli_metrics_append(s->dir, o, err);
    json_decref(o);
    return rc;
}

int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {
        {"session", 1, 0, 's'}, {"epochs", 1, 0, 'e'}, {"config", 1, 0, 'c'},
        {"scores", 1, 0, 'S'},  {"no-labels", 0, 0, 'N'}, {"threads", 1, 0, 't'},
        {"device", 1, 0, 'D'},  {"tf32", 0, 0, 'F'}, {"dtype", 1, 0, 'Y'},      {"help", 0, 0, 'h'},
        {"objective", 1, 0, 'O'}, {0, 0, 0, 0}};
    const char *dir = NULL, *conf = NULL, *scores_path = NULL;
    long epochs = 0, threads = -1;
    int no_labels = 0, dev = -1, tf32 = 0, objective = -1, c;
    optind = 1;
    int dtype = -1; /* -1: no --dtype, the config's engine.dtype */
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 's': dir = optarg; break;
        case 'c': conf = optarg; break;
        case 'S': scores_path = optarg; break;
        case 'N': no_labels = 1; break;
        case 'e': bad = cli_int("train", "--epochs", optarg, 1, 100000, &epochs); break;
        case 't': bad = cli_int("train", "--threads", optarg, 1, 1024, &threads); break;
        case 'Y':
            if (cli_dtype("train", optarg, &dtype)) return EXIT_USAGE;
            break;
        case 'D': bad = cli_device("train", optarg, &dev); break;
        case 'O': bad = cli_objective("train", optarg, &objective); break;
        case 'F': tf32 = 1; break;
        case 'h': fputs(train_help, stdout); return 0;
        default: bad = 1; fputs(train_help, stderr);
        }
        if (bad) return EXIT_USAGE;
    }
    if (optind < argc || !dir) {
        fprintf(stderr, "d3po train: %s\n%s",
                optind < argc ? "unexpected argument" : "--session DIR is required", train_help);
        return EXIT_USAGE;
    }
    if (no_labels && !scores_path) {
        fprintf(stderr, "d3po train: --no-labels needs --scores FILE\n");
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN];
    d3_config cfg;
    if (config_load(&cfg, conf, err)) {
        fprintf(stderr, "d3po train: %s\n", err);
        return EXIT_FAIL;
    }
    if (objective >= 0) cfg.train.objective = objective;
    d3po_train_opts to = config_train_opts(&cfg);
    if (epochs) to.epochs = cfg.d3po.epochs = (int)epochs; /* metrics.jsonl says it */
    if (threads < 0) threads = cfg.engine.threads;
    if (threads > 0) ops_set_threads((int)threads);
    char device[CLI_NOTE_LEN];
    if (dtype >= 0) cfg.engine.dtype = dtype;
    const d3_backend *be = cli_backend("train", dev, tf32, &cfg, device, sizeof device);
    if (!be) return EXIT_FAIL; /* before the session is opened (and locked) */

    d3_session s;
    if (session_open(dir, &s, err)) {
        fprintf(stderr, "d3po train: %s\n", err);
        return EXIT_FAIL;
    }
    for (int i = 0; i < s.nwarn; i++) fprintf(stderr, "d3po train: warning: %s\n", s.warn[i]);
    pair_cache cache = {0};
    pair_list L = {0};
    long *lab_ids = NULL, nlab = 0, lab_cap = 0; /* the labels trained: rounds/NNNN.labels */
    signed char *lab_ch = NULL;
    scored *sc = NULL;
    long nsc = 0, from_labels = 0, from_scores = 0, from_groups = 0, ties = 0;
    d3_groups g;
    session_traj *gt = NULL; /* the groups trained: trajectories, ids, marks */
    long *gids = NULL;
    char(*gmarks)[GROUPS_MARKS_LEN] = NULL;
    int ngt = 0, have_g = 0;
    int have_policy = 0, have_ref = 0, have_st = 0, rc = EXIT_FAIL;
    d3_model policy, refm;
    d3_dmodel dpol, dref; /* views of policy/refm, or (sd) the session's model */
    int have_dpol = 0, have_dref = 0;
    float **conds = NULL; /* sd: one conditioning per distinct prompt */
    long nconds = 0, tag = 0;
    d3_state st;
    memset(&st, 0, sizeof st);
    d3_tape *tp = NULL;

    /* 1. the journal's decisions */
    for (long id = 0; id < s.cap && !no_labels; id++) {
        int ch = s.present[id] ? session_choice_of(&s, id) : SESSION_NONE;
        if (ch != SESSION_A && ch != SESSION_B && ch != SESSION_TIE) continue;
        session_pair *p = cache_get(&cache, &s, id, err);
        if (!p) { /* a damaged pair file: its label is left out, the rest trains */
            char e2[D3_ERRLEN];
            fprintf(stderr, "d3po train: warning: %s; pair %ld left out (d3po session check)\n",
                    text_escape(e2, sizeof e2, err), id);
            continue;
        }
        add_pair(&L, p, 0, p, 1, ch == SESSION_A ? 1.0f : ch == SESSION_B ? -1.0f : 0.0f);
        if (nlab == lab_cap) {
            lab_cap = lab_cap ? 2 * lab_cap : 64;
            lab_ids = realloc(lab_ids, (size_t)lab_cap * sizeof *lab_ids);
            lab_ch = realloc(lab_ch, (size_t)lab_cap);
        }
        lab_ids[nlab] = id;
        lab_ch[nlab++] = (signed char)ch;
        if (ch == SESSION_TIE) ties++;
        else from_labels++;
    }
    /* 2. per-image scores expanded within groups of the same seed and class */
    if (scores_path) {
        if (read_scores(scores_path, &s, &sc, &nsc, err)) goto fail;
        long *ci = malloc((nsc ? nsc : 1) * sizeof *ci); /* cache index of each entry */
        for (long i = 0; i < nsc; i++) {
            if (!cache_get(&cache, &s, sc[i].pair, err)) { free(ci); goto fail; }
            for (ci[i] = 0; cache.id[ci[i]] != sc[i].pair; ci[i]++) {}
        }
        for (long i = 0; i < nsc; i++) {
            const session_pair *a = &cache.p[ci[i]];
            for (long j = i + 1; j < nsc; j++) {
                const session_pair *b = &cache.p[ci[j]];
                if (!same_group(a, b) || sc[i].score == sc[j].score) continue;
                size_t D = (size_t)a->C * a->h * a->w;
                if (!same_sampling(a, b) ||
                    memcmp(a->traj[sc[i].side], b->traj[sc[j].side], D * sizeof(float))) {
                    d3_errf(err, "%s: pairs %ld and %ld share seed %llu and class %d (prompt) but "
                                 "not the starting noise or sampling settings; they cannot be "
                                 "compared", scores_path, sc[i].pair, sc[j].pair,
                            (unsigned long long)a->seed, a->cls);
                    free(ci);
                    goto fail;
                }
                add_pair(&L, a, sc[i].side, b, sc[j].side, sc[i].score > sc[j].score ? 1.0f : -1.0f);
                from_scores++;
            }
        }
        free(ci);
    }
    /* 3. the groups' marks (grid mode) */
    if (!no_labels) {
        if (groups_open(s.dir, s.round, 0, &g, err)) goto fail;
        have_g = 1;
        for (int i = 0; i < g.nwarn && i < GROUPS_MAX_WARN; i++)
            fprintf(stderr, "d3po train: warning: %s\n", g.warn[i]);
        from_groups = add_group_pairs(&g, &L, &gt, &gids, &gmarks, &ngt);
    }
    if (!from_labels && !from_scores && !from_groups) {
        d3_errf(err, "%s: nothing to train on (no A/B decisions or marked groups%s)", dir,
                scores_path ? " and no images of a group with different scores" : "");
        goto fail;
    }
    /* the pairs' traj pointers point into the cache, which no longer grows */

    /* 4. policy, optimizer, RNG, reference (both as model-interface views) */
    int sd = s.family == SESSION_FAMILY_SD;
    if (sd) {
        if (session_sd_load(&s, be, session_sd_ignore_hash_env(), &dpol, &st, err)) goto fail;
        have_dpol = have_st = 1;
        if (condition_pairs(&dpol, &L, &conds, &nconds, err)) goto fail;
        to.ref = D3PO_REF_BASE; /* the adapters off: d3po_train_dm's view of dpol itself */
        tag = 0;
    } else {
        if (session_load_policy(&s, &policy, &st, err)) goto fail;
        have_policy = have_st = 1;
        if (to.ref == D3PO_REF_BASE) {
            char bp[4096];
            if (model_load(&refm, session_base_path(&s, bp, sizeof bp), NULL, err)) goto fail;
            tag = 0;
        } else {
            if (model_copy(&refm, &policy, err)) goto fail;
            tag = s.round + 1;
        }
        have_ref = 1;
        if (dm_open_pixel(&dpol, &policy, err)) goto fail;
        have_dpol = 1;
        if (dm_open_pixel(&dref, &refm, err)) goto fail;
        have_dref = 1;
    }
    if (!dm_can_train(&dpol, err)) goto fail;
    if (!st.has_opt) {
        if (adamw_init(&st.opt, dpol.train.numel)) { d3_errf(err, "out of memory"); goto fail; }
        st.has_opt = 1;
    }
    st.opt.lr = (float)cfg.d3po.lr;
    st.opt.wd = (float)cfg.d3po.weight_decay;
    d3_rng rng;
    rng_init(&rng, 0xD3B0, (uint64_t)s.version);
    if (st.has_rng) rng = st.rng;
    tp = tape_new(be);

    /* 5. one d3po_train_dm call per sampling setting (usually one) */
    fprintf(stderr, "d3po train: %s round %d -> %d: %ld pairs from labels, %ld from scores, "
                    "%ld from %d groups, %ld ties (no gradient), objective %s, %d epochs, lr %g, reference %s, kl %g, "
                    "device %s\n",
            dir, s.round, s.round + 1, from_labels, from_scores, from_groups, ngt, ties,
            config_objective_name(to.objective), to.epochs, cfg.d3po.lr,
            sd ? "base (LoRA adapters off)" : to.ref == D3PO_REF_BASE ? "base" : "round", cfg.d3po.kl,
            device);
    unsigned char *done = calloc(L.n, 1);
    d3po_pair *part = malloc(L.n * sizeof *part);
    double loss_sum = 0;
    long loss_n = 0;
    for (long i = 0; i < L.n; i++) {
        if (done[i]) continue;
        const ddim_opts *oi = &L.so[i];
        int np = 0;
        for (long j = i; j < L.n; j++) {
            const ddim_opts *oj = &L.so[j];
            if (done[j] || oi->steps != oj->steps || oi->eta != oj->eta || oi->cfg != oj->cfg)
                continue;
            part[np++] = L.v[j];
            done[j] = 1;
        }
        to.sample = *oi;
        progress_ctx pc = {.every = np * to.epochs / 10 > 0 ? np * to.epochs / 10 : 1, .last = 0};
        double loss = d3po_train_dm(&dpol, sd ? &dpol : &dref, tag, tp, &st.opt, part, np, &to,
                                    &rng, on_progress, &pc, err);
        d3po_pairs_free_cache(part, np);
        if (isnan(loss)) { free(done); free(part); goto fail; }
        long nn = 0;
        for (int k = 0; k < np; k++) nn += part[k].h[0] != 0;
        loss_sum += loss * nn;
        loss_n += nn;
    }
    free(done);
    free(part);

    /* 6. the next round, then its metrics line */
    st.rng = rng;
    st.has_rng = 1;
    int round = s.round + 1;
    if (session_write_round_labels(&s, round, lab_ids, lab_ch, (int)nlab, err) ||
        (ngt && groups_write_round(&g, round, gids, ngt, err)))
        goto fail;
    if (sd) {
        if (session_sd_save_round(&s, &dpol, &st, round, err)) goto fail;
    } else {
        char buf[32];
        snprintf(buf, sizeof buf, "%d", round);
        model_set_meta(&policy, "d3po.model_version", buf);
        if (session_save_round(&s, &policy, &st, round, err)) goto fail;
    }
    session_mark_trained(&s, lab_ids, lab_ch, (int)nlab);
    if (ngt) groups_mark_trained(&g, gids, (const char(*)[GROUPS_MARKS_LEN])gmarks, ngt);
    long total = from_labels + from_scores + from_groups;
    double mean = loss_n ? loss_sum / loss_n : 0.0;
    if (write_metrics(&s, &cfg, sd, round, total, mean, be->name, err))
        fprintf(stderr, "d3po train: warning: %s (round %d is saved)\n", err, round);
    char rp[4096];
    printf("round %d: trained on %ld pairs (%ld from labels, %ld from scores, %ld from groups), "
           "mean loss %.5f, saved %s\n", round, total, from_labels, from_scores, from_groups, mean,
           session_round_path(&s, round, rp, sizeof rp));
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "d3po train: %s\n", err);
    rc = EXIT_FAIL;
out:
    if (tp) tape_free(tp);
    if (have_dpol) dm_close(&dpol); /* a pixel view, or the sd model (before its policy) */
    if (have_dref) dm_close(&dref);
    if (have_ref) model_free(&refm);
    if (have_policy) model_free(&policy);
    if (have_st) state_free(&st);
    free(L.v);
    free(L.so);
    free(sc);
    cache_free(&cache);
    free(lab_ids);
    free(lab_ch);
    for (long i = 0; i < nconds; i++) free(conds[i]);
    for (int i = 0; i < ngt; i++) session_traj_free(&gt[i]);
    free(gt);
    free(gids);
    free(gmarks);
    if (have_g) groups_close(&g);
    free(conds);
    session_close(&s);
    return rc;
}
