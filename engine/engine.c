/* engine.c - the engine thread (see engine.h): a job queue in, an event
 * queue out, a pipe as the wake-up fd. Only this thread touches the policy
 * model, the tape and the optimizer while the engine runs, and only it
 * calls the backend (o.be): the tape and the models' device copies are
 * freed by the thread itself before it ends. */
#include "engine.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ops.h"

typedef enum { JOB_SAMPLE, JOB_TRAIN } job_kind;

typedef struct job {
    job_kind kind;
    int cls;
    char *prompt;     /* JOB_SAMPLE: owned; NULL: the class cls */
    uint64_t seed;
    int drift;        /* JOB_SAMPLE: also the base model's log-probs */
    int remember;     /* JOB_TRAIN: only add the pairs to the pool, no training */
    int early;        /* JOB_SAMPLE: may run between a round's steps */
    uint64_t tag;     /* JOB_SAMPLE: handed back in the pair */
    int n;            /* JOB_SAMPLE: trajectories (2: a pair) */
    d3po_pair *pairs; /* JOB_TRAIN: owned copies */
    int npairs, round;
    struct job *next;
} job;

typedef struct evnode {
    d3_event ev;
    struct evnode *next;
} evnode;

struct d3_engine {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *jobs, *jobs_tail;
    evnode *evs, *evs_tail;
    int wake[2];
    atomic_int cancel;
    int stopping, running_kind; /* -1: idle */
    int pend_sample, pend_train;
    d3_dmodel *policy, *base;   /* owned (dm_close + free) */
    d3_model *px_policy, *px_base; /* engine_start: the pixel models under the views */
    float *uncond;              /* the policy's "" conditioning (engine thread) */
    d3_state st;
    long version;
    engine_opts o;
    d3_tape *tp;
    d3_rng rng;
    double job_t0;
    d3_dmodel *in_force; /* during a round with overlap: the model before it */
    /* overlap on a family the engine does not copy (sd: a multi-GB base
     * with small adapters): in_force is the policy itself, and its
     * trainable set of the round's start (keep_params, host) is swapped in
     * around each early sample, the training state parked in swap_tmp */
    float *keep_params, *swap_tmp;
    /* train.all_labels: every labeled pair so far (engine thread only) */
    d3po_pair *pool;
    int npool, cappool;
};

/* Moves job j's pairs into the pool (j keeps none). 0, or -1 when out of
 * memory (j keeps them). */
static int pool_take(d3_engine *e, job *j) {
    if (e->npool + j->npairs > e->cappool) {
        int nc = 2 * (e->npool + j->npairs) + 16;
        d3po_pair *np = realloc(e->pool, (size_t)nc * sizeof *np);
        if (!np) return -1;
        e->pool = np;
        e->cappool = nc;
    }
    memcpy(e->pool + e->npool, j->pairs, (size_t)j->npairs * sizeof *j->pairs);
    e->npool += j->npairs;
    free(j->pairs);
    j->pairs = NULL;
    j->npairs = 0;
    return 0;
}

engine_opts engine_opts_default(void) {
    engine_opts o = {0};
    o.sample = ddim_opts_default();
    o.train = d3po_train_opts_default();
    o.lr = 1e-4f;
    o.weight_decay = 1e-4f;
    return o;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void emit(d3_engine *e, const d3_event *ev) {
    evnode *n = calloc(1, sizeof *n);
    if (!n) return; /* out of memory: the event is lost, the engine goes on */
    n->ev = *ev;
    pthread_mutex_lock(&e->mu);
    if (e->evs_tail) e->evs_tail->next = n;
    else e->evs = n;
    e->evs_tail = n;
    pthread_mutex_unlock(&e->mu);
    char b = 1;
    ssize_t w = write(e->wake[1], &b, 1); /* a full pipe already wakes the reader */
    (void)w;
}

static void emit_error(d3_engine *e, const char *msg) {
    d3_event ev = {.kind = EV_ERROR};
    snprintf(ev.msg, sizeof ev.msg, "%s", msg);
    emit(e, &ev);
}

void engine_pair_free(d3_pair_sample *p) {
    if (!p) return;
    for (int i = 0; i < D3_MAX_GROUP; i++) {
        free(p->traj[i]); free(p->logp[i]); free(p->rgb[i]);
    }
    free(p->logp_base[0]); free(p->logp_base[1]);
    free(p->prompt);
    free(p->cond);
    free(p);
}

const char *engine_family(const d3_engine *e) { return e->policy->family; }

/* ---- the reference of a LoRA family: the policy with its adapters off ----
 * A view over the policy (no second copy of the UNet): every forward
 * switches the trainable adapters off around the policy's own forward, so
 * the reference is the base (with its frozen LoRA files) bit for bit, as
 * DESIGN.md's "reference = base" for the sd family. The tape computes
 * while it records, so the switch is back on before anyone trains. */
static int refv_condition(d3_dmodel *dm, const char *prompt, float *cond, char *err) {
    return dm_condition(dm->impl, prompt, cond, err);
}
static int refv_plan(const d3_dmodel *dm, int K, int *ts, double *at, double *ap, char *err) {
    const d3_dmodel *p = dm->impl;
    return p->ops->plan(p, K, ts, at, ap, err);
}
static d3_tensor *refv_forward(d3_dmodel *dm, d3_tape *tp, float *grads, int n, const float *x,
                               int t, const float *cond, const float *uncond, float cfg, int *nb) {
    d3_dmodel *p = dm->impl;
    (void)grads; /* the reference is never trained */
    dm_adapters_on(p, 0);
    d3_tensor *y = p->ops->forward(p, tp, NULL, n, x, t, cond, uncond, cfg, nb);
    dm_adapters_on(p, 1);
    return y;
}
static int refv_decode(d3_dmodel *dm, d3_tape *tp, const float *x, int n, uint8_t *rgb, char *err) {
    return dm_decode(dm->impl, tp, x, n, rgb, err);
}
static float *refv_trainable_dev(d3_dmodel *dm, const d3_backend *be) {
    (void)dm; (void)be;
    return NULL;
}
static void refv_touch(d3_dmodel *dm) { (void)dm; }
static void refv_close(d3_dmodel *dm) { (void)dm; } /* the policy is closed on its own */
static const dm_ops refv_ops = {refv_condition, refv_plan,  refv_forward, refv_decode,
                                refv_trainable_dev, refv_touch, refv_close};

/* A malloc'd adapters-off view of policy (engine_start_dm without a base on
 * a LoRA family), or NULL. */
static d3_dmodel *ref_view(d3_dmodel *policy) {
    d3_dmodel *v = malloc(sizeof *v);
    if (!v) return NULL;
    *v = *policy;
    v->ops = &refv_ops;
    v->impl = policy;
    v->train = (dm_trainable){NULL, 0};
    snprintf(v->desc, sizeof v->desc, "%.120s (adapters off)", policy->desc);
    return v;
}

/* The policy's unconditional input, made once on the engine thread. */
static const float *engine_uncond(d3_engine *e, char *err) {
    if (e->uncond) return e->uncond;
    float *u = malloc(e->policy->cond_floats * sizeof(float));
    if (!u) { d3_errf(err, "engine: out of memory"); return NULL; }
    if (dm_condition(e->policy, "", u, err)) { free(u); return NULL; }
    return e->uncond = u;
}

void engine_event_free(d3_event *ev) {
    if (ev->kind == EV_PAIR) engine_pair_free(ev->pair);
    ev->pair = NULL;
}

double engine_pair_drift(const d3_pair_sample *p) {
    if (!p->logp_base[0] || !p->logp_base[1]) return NAN;
    double d = 0;
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < p->K; t++) d += p->logp[i][t] - p->logp_base[i][t];
    return d / (2.0 * p->K);
}

/* p->logp_base: the pair's trajectories traj [2][K+1][D] scored by the
 * base model. Left NULL when that fails (the drift measure skips the
 * pair; it is a diagnostic, not worth failing the pair for). */
static void base_logp(d3_engine *e, d3_pair_sample *p, const float *c2, const float *traj) {
    char err[D3_ERRLEN];
    float *lb = malloc(2 * p->K * sizeof(float));
    const float *u = engine_uncond(e, err);
    if (!lb || !u || dm_traj_logp(e->base, e->tp, &e->o.sample, 2, c2, u, traj, lb, NULL, err)) {
        free(lb);
        return;
    }
    float *lb1 = malloc(p->K * sizeof(float));
    if (!lb1) {
        free(lb);
        return;
    }
    memcpy(lb1, lb + p->K, p->K * sizeof(float));
    p->logp_base[0] = lb; /* [0..K) is image 0's */
    p->logp_base[1] = lb1;
}

/* Samples job j's pair from m (the policy, or during a round the model in
 * force before it); EV_PAIR carries the version of m. */
static void run_sample_from(d3_engine *e, d3_dmodel *m, const job *j) {
    int K = e->o.sample.steps, n = j->n;
    size_t D = m->D, cf = m->cond_floats, rgbn = (size_t)m->img_h * m->img_w * 3;
    char err[D3_ERRLEN];
    d3_pair_sample *p = calloc(1, sizeof *p);
    float *x = malloc(n * D * sizeof(float)), *traj = malloc(n * (K + 1) * D * sizeof(float));
    float *lp = malloc(n * K * sizeof(float)), *c2 = malloc(2 * cf * sizeof(float));
    uint8_t *rgb = malloc(n * rgbn);
    if (!p || !x || !traj || !lp || !c2 || !rgb) {
        d3_errf(err, "engine: out of memory sampling a pair");
        goto fail;
    }
    const float *uncond = engine_uncond(e, err);
    if (!uncond) goto fail;
    if (j->prompt) {
        if (dm_condition(m, j->prompt, c2, err)) goto fail;
    } else if (!strcmp(m->family, "pixel")) {
        c2[0] = (float)j->cls;
    } else {
        d3_errf(err, "engine: a %s model needs a prompt, not a class id", m->family);
        goto fail;
    }
    memcpy(c2 + cf, c2, cf * sizeof(float));
    int queued;
    pthread_mutex_lock(&e->mu);
    queued = e->pend_sample;
    pthread_mutex_unlock(&e->mu);
    d3_event pe = {.kind = EV_PROGRESS, .what = "sampling", .i = 0, .n = queued, .eta_s = NAN,
                   .loss = NAN};
    emit(e, &pe);
    /* the pair (group) shares x_T (stream 0 of its seed); step noise streams 1 .. n */
    if (dm_sample_group(m, e->tp, &e->o.sample, n, c2, uncond, j->seed, 1, x, traj, lp, err) ||
        dm_decode(m, e->tp, x, n, rgb, err))
        goto fail;
    *p = (d3_pair_sample){.cls = strcmp(m->family, "pixel") ? -1 : (int)c2[0], .seed = j->seed,
                          .version = e->version, .n = n, .K = K, .S = m->h, .C = m->C, .h = m->h,
                          .w = m->w, .cfg = e->o.sample.cfg, .eta = e->o.sample.eta, .tag = j->tag,
                          .cond_floats = (int)cf, .img_h = m->img_h, .img_w = m->img_w};
    p->cond = malloc(cf * sizeof(float));
    if (j->prompt) p->prompt = strdup(j->prompt);
    int oom = !p->cond || (j->prompt && !p->prompt);
    if (p->cond) memcpy(p->cond, c2, cf * sizeof(float));
    for (int i = 0; i < n; i++) {
        p->traj[i] = malloc((K + 1) * D * sizeof(float));
        p->logp[i] = malloc(K * sizeof(float));
        p->rgb[i] = malloc(rgbn);
        if (!p->traj[i] || !p->logp[i] || !p->rgb[i]) { oom = 1; continue; }
        memcpy(p->traj[i], traj + i * (K + 1) * D, (K + 1) * D * sizeof(float));
        memcpy(p->logp[i], lp + i * K, K * sizeof(float));
        memcpy(p->rgb[i], rgb + i * rgbn, rgbn);
    }
    if (oom) {
        engine_pair_free(p);
        p = NULL;
        d3_errf(err, "engine: out of memory sampling a pair");
        goto fail;
    }
    if (j->drift && e->base) base_logp(e, p, c2, traj);
    free(x); free(traj); free(lp); free(c2); free(rgb);
    d3_event ev = {.kind = EV_PAIR, .pair = p};
    emit(e, &ev);
    return;
fail:
    emit_error(e, err);
    free(p); free(x); free(traj); free(lp); free(c2); free(rgb);
}

static void run_sample(d3_engine *e, const job *j) { run_sample_from(e, e->policy, j); }

static void free_job(job *j);

/* Takes the oldest queued early sample job, or NULL. */
static job *take_early(d3_engine *e) {
    pthread_mutex_lock(&e->mu);
    job **pp = &e->jobs, *prev = NULL, *j = NULL;
    for (; *pp; prev = *pp, pp = &(*pp)->next)
        if ((*pp)->kind == JOB_SAMPLE && (*pp)->early && !e->stopping) {
            j = *pp;
            *pp = j->next;
            if (e->jobs_tail == j) e->jobs_tail = prev;
            break;
        }
    pthread_mutex_unlock(&e->mu);
    return j;
}

/* in = 1: parks the policy's trainable set (as the training sees it:
 * host memory on a host backend, else the device copy) in swap_tmp and
 * puts the round's starting set in its place; in = 0: restores it. The
 * host copy of a device backend is not touched (the training writes it
 * back when the round ends), so dm_trainable_dev uploads nothing. */
static void swap_trainable(d3_engine *e, int in) {
    d3_dmodel *m = e->policy;
    size_t bytes = m->train.numel * sizeof(float);
    const d3_backend *be = tape_backend(e->tp);
    if (be->host) {
        if (in) {
            memcpy(e->swap_tmp, m->train.params, bytes);
            memcpy(m->train.params, e->keep_params, bytes);
        } else {
            memcpy(m->train.params, e->swap_tmp, bytes);
        }
        return;
    }
    float *dev = dm_trainable_dev(m, be);
    if (in) {
        be->download(e->swap_tmp, dev, bytes);
        be->upload(dev, e->keep_params, bytes);
    } else {
        be->upload(dev, e->swap_tmp, bytes);
    }
}

static int train_progress(void *ctx, int step, int total, double loss) {
    d3_engine *e = ctx;
    /* the time spent sampling between steps is part of the round's time,
     * so the estimate stays honest while pairs are interleaved */
    double el = now() - e->job_t0;
    d3_event ev = {.kind = EV_PROGRESS, .what = "training", .i = step, .n = total, .loss = loss,
                   .eta_s = step ? el / step * (total - step) : NAN};
    emit(e, &ev);
    if (e->in_force && step < total) {
        job *j;
        while (!atomic_load(&e->cancel) && (j = take_early(e))) {
            if (e->keep_params) swap_trainable(e, 1);
            run_sample_from(e, e->in_force, j);
            if (e->keep_params) swap_trainable(e, 0);
            pthread_mutex_lock(&e->mu);
            e->pend_sample--;
            pthread_mutex_unlock(&e->mu);
            free_job(j);
        }
    }
    return atomic_load(&e->cancel);
}

static void run_train(d3_engine *e, job *j) {
    char err[D3_ERRLEN];
    d3po_train_opts to = e->o.train;
    to.sample = e->o.sample;
    int round = j->round;
    if (j->remember && !to.all_labels) return; /* no pool to remember into */
    if (to.all_labels) {
        if (pool_take(e, j)) {
            emit_error(e, "out of memory for the pool of labeled pairs");
            return;
        }
        if (j->remember) return;
    }
    d3po_pair *pairs = to.all_labels ? e->pool : j->pairs;
    int npairs = to.all_labels ? e->npool : j->npairs;
    if (!dm_can_train(e->policy, err)) { emit_error(e, err); return; }
    /* pairs read back from a session carry their prompt, not its
     * conditioning: made here, once */
    for (int i = 0; i < npairs; i++) {
        d3po_pair *q = &pairs[i];
        if (q->cond || q->cls >= 0) continue;
        if (!q->prompt) { emit_error(e, "engine: a pair without prompt or class"); return; }
        if (!(q->cond = malloc(e->policy->cond_floats * sizeof(float)))) {
            emit_error(e, "engine: out of memory");
            return;
        }
        if (dm_condition(e->policy, q->prompt, q->cond, err)) {
            free(q->cond);
            q->cond = NULL;
            emit_error(e, err);
            return;
        }
    }
    d3_dmodel *ref = e->base, dsnap, dkeep;
    d3_model snap, keep;
    long tag = 0;
    int have_snap = 0, have_keep = 0;
    if (e->px_policy && (to.ref == D3PO_REF_ROUND || !e->base)) {
        if (model_copy(&snap, e->px_policy, err)) { emit_error(e, err); return; }
        dm_open_pixel(&dsnap, &snap, err);
        have_snap = 1;
        ref = &dsnap;
        tag = round + 1;
        if (e->o.overlap) e->in_force = &dsnap; /* the reference is the model in force */
    } else if (!e->base) {
        emit_error(e, "engine: no reference model to train against (the base)");
        return;
    } else if (e->px_policy && e->o.overlap) {
        if (model_copy(&keep, e->px_policy, err)) { emit_error(e, err); return; }
        dm_open_pixel(&dkeep, &keep, err);
        have_keep = 1;
        e->in_force = &dkeep;
    } else if (!e->px_policy && e->o.overlap) {
        /* the adapters of the round's start: the host copy is current
         * between rounds (the last round wrote it back) */
        size_t bytes = e->policy->train.numel * sizeof(float);
        e->keep_params = malloc(bytes);
        e->swap_tmp = malloc(bytes);
        if (e->keep_params && e->swap_tmp) {
            memcpy(e->keep_params, e->policy->train.params, bytes);
            e->in_force = e->policy;
        } else { /* no memory for the copy: samples wait for the round */
            free(e->keep_params);
            free(e->swap_tmp);
            e->keep_params = e->swap_tmp = NULL;
        }
    }
    e->st.opt.lr = e->o.lr;
    e->st.opt.wd = e->o.weight_decay;
    e->job_t0 = now();
    d3_event ev = {.kind = EV_PROGRESS, .what = "training", .i = 0, .n = npairs * to.epochs,
                   .eta_s = NAN, .loss = NAN};
    emit(e, &ev);
    double loss = d3po_train_dm(e->policy, ref, tag, e->tp, &e->st.opt, pairs, npairs, &to,
                                &e->rng, train_progress, e, err);
    e->in_force = NULL;
    free(e->keep_params);
    free(e->swap_tmp);
    e->keep_params = e->swap_tmp = NULL;
    if (have_snap) { dm_close(&dsnap); model_free(&snap); }
    if (have_keep) { dm_close(&dkeep); model_free(&keep); }
    if (isnan(loss)) {
        if (!atomic_load(&e->cancel)) emit_error(e, err);
        return;
    }
    e->version++;
    e->st.rng = e->rng;
    e->st.has_opt = e->st.has_rng = 1;
    int rc = 0;
    if (e->px_policy) {
        char buf[32];
        snprintf(buf, sizeof buf, "%ld", e->version);
        model_set_meta(e->px_policy, "d3po.model_version", buf);
        if (e->o.save_round) rc = e->o.save_round(e->o.save_ctx, e->px_policy, &e->st, round, err);
    } else if (e->o.save_round_dm) {
        rc = e->o.save_round_dm(e->o.save_ctx, e->policy, &e->st, round, err);
    }
    if (rc) {
        emit_error(e, err);
        return;
    }
    d3_event done = {.kind = EV_TRAINED, .loss = loss, .version = e->version, .round = round};
    emit(e, &done);
}

static void free_pairs(d3po_pair *pairs, int n) {
    if (!pairs) return;
    for (int i = 0; i < n; i++) {
        free(pairs[i].traj[0]);
        free(pairs[i].traj[1]);
        free(pairs[i].cond);
        free(pairs[i].prompt);
    }
    d3po_pairs_free_cache(pairs, n);
    free(pairs);
}

static void free_job(job *j) {
    free_pairs(j->pairs, j->npairs);
    free(j->prompt);
    free(j);
}

/* Frees the models the engine owns. */
static void free_models(d3_engine *e) {
    d3_dmodel **dm[2] = {&e->policy, &e->base};
    d3_model **px[2] = {&e->px_policy, &e->px_base};
    for (int i = 0; i < 2; i++) {
        if (*dm[i]) { dm_close(*dm[i]); free(*dm[i]); *dm[i] = NULL; }
        if (*px[i]) { model_free(*px[i]); free(*px[i]); *px[i] = NULL; }
    }
    free(e->uncond);
    e->uncond = NULL;
}

static void *thread_main(void *arg) {
    d3_engine *e = arg;
    if (e->o.threads) ops_set_threads(e->o.threads);
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->jobs && !e->stopping) pthread_cond_wait(&e->cv, &e->mu);
        if (e->stopping) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        job *j = e->jobs;
        e->jobs = j->next;
        if (!e->jobs) e->jobs_tail = NULL;
        e->running_kind = j->kind;
        pthread_mutex_unlock(&e->mu);
        if (j->kind == JOB_SAMPLE) run_sample(e, j);
        else run_train(e, j);
        pthread_mutex_lock(&e->mu);
        if (j->kind == JOB_SAMPLE) e->pend_sample--;
        else e->pend_train--;
        e->running_kind = -1;
        pthread_mutex_unlock(&e->mu);
        free_job(j);
    }
    /* the device memory goes with the thread that used it */
    tape_free(e->tp);
    e->tp = NULL;
    free_models(e);
    free_pairs(e->pool, e->npool);
    e->pool = NULL;
    e->npool = 0;
    d3_event ev = {.kind = EV_STOPPED};
    emit(e, &ev);
    return NULL;
}

static d3_engine *start(d3_engine *e, d3_state *st, long version, const engine_opts *o,
                        char *err) {
    if (pipe(e->wake)) {
        d3_errf(err, "engine: pipe: %m");
        return NULL;
    }
    for (int i = 0; i < 2; i++) fcntl(e->wake[i], F_SETFL, fcntl(e->wake[i], F_GETFL) | O_NONBLOCK);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->version = version;
    e->o = *o;
    e->running_kind = -1;
    /* the checkpoint's RNG before st is taken over (taking it clears st:
     * reading st->has_rng after that lost the state, and a resumed run
     * shuffled differently from an uninterrupted one) */
    rng_init(&e->rng, 0xD3B0, (uint64_t)version);
    if (st && st->has_rng) e->rng = st->rng;
    if (st && st->has_opt) {
        e->st = *st;
        memset(st, 0, sizeof *st);
    } else if (adamw_init(&e->st.opt, e->policy->train.numel)) {
        d3_errf(err, "engine: out of memory");
        goto fail;
    }
    e->tp = tape_new(o->be ? o->be : backend_cpu());
    if (!e->tp) { d3_errf(err, "engine: out of memory"); goto fail; }
    if (pthread_create(&e->th, NULL, thread_main, e)) {
        d3_errf(err, "engine: cannot start the thread");
        goto fail;
    }
    return e;
fail:
    state_free(&e->st);
    tape_free(e->tp);
    close(e->wake[0]);
    close(e->wake[1]);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    return NULL;
}

d3_engine *engine_start(d3_model *policy, d3_model *base, d3_state *st, long version,
                        const engine_opts *o, char *err) {
    d3_engine *e = calloc(1, sizeof *e);
    d3_dmodel *dp = calloc(1, sizeof *dp), *db = base ? calloc(1, sizeof *db) : NULL;
    if (!e || !dp || (base && !db)) {
        free(e); free(dp); free(db);
        d3_errf(err, "engine: out of memory");
        return NULL;
    }
    dm_open_pixel(dp, policy, err);
    if (base) dm_open_pixel(db, base, err);
    e->policy = dp;
    e->base = db;
    if (start(e, st, version, o, err)) {
        e->px_policy = policy;
        e->px_base = base;
        return e;
    }
    free(dp); free(db); free(e); /* the models stay the caller's */
    return NULL;
}

d3_engine *engine_start_dm(d3_dmodel *policy, d3_dmodel *base, d3_state *st, long version,
                           const engine_opts *o, char *err) {
    d3_engine *e = calloc(1, sizeof *e);
    if (!e) { d3_errf(err, "engine: out of memory"); return NULL; }
    e->policy = policy;
    e->base = base;
    if (!base && dm_lora(policy) && !(e->base = ref_view(policy))) {
        free(e);
        d3_errf(err, "engine: out of memory");
        return NULL;
    }
    if (start(e, st, version, o, err)) return e;
    if (!base) free(e->base); /* the view; the models stay the caller's */
    free(e);
    return NULL;
}

int engine_fd(const d3_engine *e) { return e->wake[0]; }

static void push_job(d3_engine *e, job *j) {
    pthread_mutex_lock(&e->mu);
    if (e->jobs_tail) e->jobs_tail->next = j;
    else e->jobs = j;
    e->jobs_tail = j;
    if (j->kind == JOB_SAMPLE) e->pend_sample++;
    else e->pend_train++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void engine_sample_ex(d3_engine *e, const engine_sample_req *r) {
    job *j = calloc(1, sizeof *j);
    if (!j) return;
    j->kind = JOB_SAMPLE;
    j->cls = r->cls;
    if (r->prompt && !(j->prompt = strdup(r->prompt))) { free(j); return; }
    j->seed = r->seed;
    j->drift = r->drift;
    j->early = r->early;
    j->tag = r->tag;
    j->n = r->n >= 3 && r->n <= D3_MAX_GROUP ? r->n : 2;
    if (j->n > 2) j->drift = 0;
    push_job(e, j);
}

void engine_sample(d3_engine *e, int cls, uint64_t seed) {
    engine_sample_ex(e, &(engine_sample_req){.cls = cls, .seed = seed});
}

void engine_sample_drift(d3_engine *e, int cls, uint64_t seed) {
    engine_sample_ex(e, &(engine_sample_req){.cls = cls, .seed = seed, .drift = 1});
}

static void queue_pairs(d3_engine *e, const d3_pair_sample *const *pairs, const float (*h)[2],
                        int n, int round, int remember) {
    job *j = calloc(1, sizeof *j);
    if (!j) return;
    j->kind = JOB_TRAIN;
    j->round = round;
    j->remember = remember;
    j->pairs = calloc(n ? n : 1, sizeof *j->pairs);
    for (int i = 0; i < n; i++) {
        const d3_pair_sample *p = pairs[i];
        /* the pool keeps only what this engine's settings can train on */
        if (remember && (p->K != e->o.sample.steps || p->cfg != e->o.sample.cfg ||
                         p->eta != e->o.sample.eta || (h[i][0] == 0 && h[i][1] == 0)))
            continue;
        size_t D = p->C ? (size_t)p->C * p->h * p->w : 3 * (size_t)p->S * p->S;
        size_t bytes = (size_t)(p->K + 1) * D * sizeof(float);
        d3po_pair *q = &j->pairs[j->npairs++];
        q->cls = p->cls;
        if (p->cond && p->cond_floats > 0 && (q->cond = malloc(p->cond_floats * sizeof(float))))
            memcpy(q->cond, p->cond, p->cond_floats * sizeof(float));
        if (!q->cond && p->prompt) q->prompt = strdup(p->prompt);
        q->h[0] = h[i][0];
        q->h[1] = h[i][1];
        q->ref_tag = -1;
        for (int k = 0; k < 2; k++) {
            q->traj[k] = malloc(bytes);
            if (q->traj[k]) memcpy(q->traj[k], p->traj[k], bytes);
        }
    }
    push_job(e, j);
}

void engine_train(d3_engine *e, const d3_pair_sample *const *pairs, const float (*h)[2], int n,
                  int round) {
    queue_pairs(e, pairs, h, n, round, 0);
}

void engine_remember(d3_engine *e, const d3_pair_sample *const *pairs, const float (*h)[2], int n) {
    queue_pairs(e, pairs, h, n, -1, 1);
}

int engine_poll(d3_engine *e, d3_event *ev) {
    char buf[64];
    while (read(e->wake[0], buf, sizeof buf) > 0) {
    }
    pthread_mutex_lock(&e->mu);
    evnode *n = e->evs;
    if (n) {
        e->evs = n->next;
        if (!e->evs) e->evs_tail = NULL;
    }
    int more = e->evs != NULL;
    pthread_mutex_unlock(&e->mu);
    if (more) { /* keep the fd readable while events remain */
        char b = 1;
        ssize_t w = write(e->wake[1], &b, 1);
        (void)w;
    }
    if (!n) return 0;
    *ev = n->ev;
    free(n);
    return 1;
}

void engine_pending(d3_engine *e, int *sampling, int *training) {
    pthread_mutex_lock(&e->mu);
    if (sampling) *sampling = e->pend_sample;
    if (training) *training = e->pend_train;
    pthread_mutex_unlock(&e->mu);
}

void engine_stop(d3_engine *e) {
    if (!e) return;
    atomic_store(&e->cancel, 1);
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    job *j = e->jobs;
    e->jobs = e->jobs_tail = NULL;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    while (j) { job *n = j->next; free_job(j); j = n; }
    pthread_join(e->th, NULL);
    d3_event ev;
    while (engine_poll(e, &ev)) engine_event_free(&ev);
    close(e->wake[0]);
    close(e->wake[1]);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    tape_free(e->tp);
    state_free(&e->st);
    free_models(e);
    free(e);
}
