/* dmodel.c - the model interface (dmodel.h): the pixel family as a view of
 * a d3_model, the sd family over engine/sd/sdsample.h, and the DDIM
 * sampler and teacher-forced log-probabilities written once over the
 * interface. The per-family code here only translates: the UNets, the
 * step math (diffusion.c) and the VAE stay where they are. */
#include "dmodel.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops.h"
#include "optim.h"
#include "sd/sdsample.h"

/* ---- pixel family ---- */

static int px_condition(d3_dmodel *dm, const char *prompt, float *cond, char *err) {
    const d3_model *m = dm->impl;
    if (!prompt || !*prompt) {
        cond[0] = (float)m->L.arch.classes; /* the null class */
        return 0;
    }
    int c = model_find_class(m, prompt);
    if (c < 0) return d3_errf(err, "prompt \"%.60s\": not a class of this model (a class name or 0..%d)", prompt, m->nclasses - 1);
    cond[0] = (float)c;
    return 0;
}

static int px_plan(const d3_dmodel *dm, int K, int *ts, double *at, double *ap, char *err) {
    const d3_model *m = dm->impl;
    int prev[D3_MAX_STEPS];
    if (ddim_timesteps(m->sched.T, K, ts, prev, err)) return -1;
    for (int k = 0; k < K; k++) {
        at[k] = m->sched.abar[ts[k]];
        ap[k] = m->sched.abar[prev[k]];
    }
    return 0;
}

static d3_tensor *px_forward(d3_dmodel *dm, d3_tape *tp, float *grads, int n, const float *x, int t,
                             const float *cond, const float *uncond, float cfg, int *nb) {
    (void)uncond; /* the null class, as model_forward_cfg runs it */
    int cbuf[64] = {0}, *cls = n <= 64 ? cbuf : malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) cls[i] = (int)cond[i];
    d3_tensor *out = model_forward_cfg(dm->impl, tp, grads, n, x, t, cls, cfg, nb);
    if (cls != cbuf) free(cls);
    return out;
}

static int px_decode(d3_dmodel *dm, d3_tape *tp, const float *x, int n, uint8_t *rgb, char *err) {
    (void)tp; (void)err;
    size_t HW = (size_t)dm->img_h * dm->img_w;
    for (int i = 0; i < n; i++) {
        const float *xi = x + i * dm->D;
        uint8_t *o = rgb + (size_t)i * HW * 3;
        for (size_t p = 0; p < HW; p++)
            for (int c = 0; c < 3; c++) {
                float v = (xi[c * HW + p] + 1.0f) * 127.5f + 0.5f;
                o[p * 3 + c] = v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)v;
            }
    }
    return 0;
}

static float *px_trainable_dev(d3_dmodel *dm, const d3_backend *be) { return model_params_dev(dm->impl, be); }
static void px_touch(d3_dmodel *dm) { model_touch(dm->impl); }
static void px_close(d3_dmodel *dm) { (void)dm; }

static const dm_ops px_ops = {px_condition, px_plan, px_forward, px_decode, px_trainable_dev,
                              px_touch, px_close};

int dm_open_pixel(d3_dmodel *dm, d3_model *m, char *err) {
    (void)err;
    memset(dm, 0, sizeof(*dm));
    int S = m->L.arch.size;
    dm->ops = &px_ops;
    dm->family = "pixel";
    dm->C = 3;
    dm->h = dm->w = dm->img_h = dm->img_w = S;
    dm->D = 3 * (size_t)S * S;
    dm->cond_floats = 1;
    dm->x0_clip = 1.0f;
    dm->x0_clip_keeps_eps = 1;
    dm->train = (dm_trainable){m->params, m->L.numel};
    dm->T = m->sched.T;
    dm->abar = m->sched.abar;
    dm->impl = m;
    snprintf(dm->desc, sizeof dm->desc, "pixel UNet %dx%d, %d classes, %zu parameters", S, S,
             m->nclasses, m->L.numel);
    return 0;
}

/* ---- sd family ---- */

/* The sd family's state: the model (first, so dm->impl is an sd_model *),
 * frozen LoRA sets, and the trainable adapters. Chain applied by the UNet:
 * train (when attached) -> frozen[0] -> ... -> frozen[n-1]. */
typedef struct {
    sd_model m;
    lora_set frozen[DM_MAX_FROZEN];
    int nfrozen;
    lora_set train;      /* params on the backend (== host on a host backend) */
    int has_train;
    float train_scale;   /* 1; the scale while on */
    float *host;         /* dm->train.params */
    double *abar;        /* dm->abar [T] */
    unsigned long gen, dev_gen; /* host writes (dm_touch) / the device copy's */
} sd_fam;

static void sdf_chain(sd_fam *f) {
    for (int i = 0; i < f->nfrozen; i++) f->frozen[i].next = i + 1 < f->nfrozen ? &f->frozen[i + 1] : NULL;
    const lora_set *fz = f->nfrozen ? &f->frozen[0] : NULL;
    f->train.next = fz;
    f->m.lora = f->has_train ? &f->train : fz;
}

static int sd_condition(d3_dmodel *dm, const char *prompt, float *cond, char *err) {
    const char *p[1] = {prompt ? prompt : ""};
    return sd_model_encode(dm->impl, p, 1, cond, err);
}

static int sdf_plan(const d3_dmodel *dm, int K, int *ts, double *at, double *ap, char *err) {
    const sd_model *m = dm->impl;
    if (K < 1 || K > D3_MAX_STEPS) return d3_errf(err, "steps %d: expected 1..%d", K, D3_MAX_STEPS);
    return sd_sched_plan(&m->p.sched, K, ts, at, ap, err);
}

static float *sdf_trainable_dev(d3_dmodel *dm, const d3_backend *be) {
    sd_fam *f = dm->impl;
    if (!f->has_train) return NULL;
    if (!be->host && f->dev_gen != f->gen) {
        be->upload(f->train.params, f->host, f->train.numel * sizeof(float));
        f->dev_gen = f->gen;
    }
    return f->train.params;
}

static d3_tensor *sdf_forward(d3_dmodel *dm, d3_tape *tp, float *grads, int n, const float *x, int t,
                              const float *cond, const float *uncond, float cfg, int *nb) {
    sd_fam *f = dm->impl;
    /* the base UNet is frozen (its grads NULL); gradients reach only the
     * trainable adapters, whose buffer grads is (lora_apply reads
     * train.grads while recording) */
    if (f->has_train) {
        sdf_trainable_dev(dm, f->m.be);
        f->train.grads = grads;
    }
    d3_tensor *y = sd_unet_forward_cfg(&f->m, tp, NULL, n, x, dm->h, dm->w, t, cond, uncond, cfg, nb);
    f->train.grads = NULL;
    return y;
}

static int sdf_decode(d3_dmodel *dm, d3_tape *tp, const float *x, int n, uint8_t *rgb, char *err) {
    return sd_model_decode(dm->impl, tp, x, n, dm->h, dm->w, rgb, err);
}

static void sdf_touch(d3_dmodel *dm) { ((sd_fam *)dm->impl)->gen++; }

static void sdf_close(d3_dmodel *dm) {
    sd_fam *f = dm->impl;
    const d3_backend *be = f->m.be;
    for (int i = 0; i < f->nfrozen; i++) lora_free_on(&f->frozen[i], be);
    if (f->has_train) {
        if (!be->host) free(f->host);
        lora_free_on(&f->train, be);
    }
    sd_model_free(&f->m);
    free(f->abar);
    free(f);
}

static const dm_ops sd_ops = {sd_condition, sdf_plan, sdf_forward, sdf_decode, sdf_trainable_dev,
                              sdf_touch, sdf_close};

int dm_open_sd(d3_dmodel *dm, const char *path, const char *tokenizer, const d3_backend *be,
               int h, int w, char *err) {
    memset(dm, 0, sizeof(*dm));
    sd_fam *f = calloc(1, sizeof(*f));
    if (!f) return d3_errf(err, "out of memory");
    sd_model *m = &f->m;
    if (sd_model_load(m, path, tokenizer, be, err)) {
        free(f);
        return -1;
    }
    if (sd_unet_check_size(&m->p.unet, h, w, err)) {
        sd_model_free(m);
        free(f);
        return -1;
    }
    const sd_sched *s = &m->p.sched;
    int T = s->num_train_timesteps;
    float *a32 = malloc(T * sizeof(float));
    f->abar = malloc(T * sizeof(double));
    if (!a32 || !f->abar) {
        free(a32);
        free(f->abar);
        sd_model_free(m);
        free(f);
        return d3_errf(err, "out of memory");
    }
    sd_sched_abar(s, a32);
    for (int i = 0; i < T; i++) f->abar[i] = a32[i];
    free(a32);
    dm->T = T;
    dm->abar = f->abar;
    dm->ops = &sd_ops;
    dm->family = "sd";
    dm->C = m->latent_c;
    dm->h = h;
    dm->w = w;
    dm->D = (size_t)m->latent_c * h * w;
    dm->img_h = h * m->factor;
    dm->img_w = w * m->factor;
    dm->cond_floats = sd_model_ctx_floats(m);
    dm->pred_v = s->prediction == SD_PRED_V;
    dm->x0_clip = s->clip_sample ? (float)s->clip_sample_range : 0.0f;
    dm->x0_clip_keeps_eps = 0;
    dm->impl = f;
    snprintf(dm->desc, sizeof dm->desc, "%s, latents %dx%dx%d, images %dx%d, %s", m->p.family,
             dm->C, h, w, dm->img_w, dm->img_h, dm->pred_v ? "v-prediction" : "epsilon");
    return 0;
}

/* ---- LoRA adapters on the sd family ---- */

dm_lora_opts dm_lora_opts_default(void) {
    return (dm_lora_opts){.rank = 4, .alpha = 4.0f, .targets = NULL, .ntargets = 0, .seed = 0,
                          .from = NULL};
}

static sd_fam *sd_of(const d3_dmodel *dm, const char *what, char *err) {
    if (!dm->ops || dm->ops != &sd_ops) {
        d3_errf(err, "%s: only Stable Diffusion-family models take LoRA adapters (%s models train "
                "all their weights)", what, dm->family ? dm->family : "unopened");
        return NULL;
    }
    return dm->impl;
}

int dm_lora_attach(d3_dmodel *dm, const dm_lora_opts *o, char *err) {
    sd_fam *f = sd_of(dm, "trainable LoRA", err);
    if (!f) return -1;
    if (f->has_train) return d3_errf(err, "trainable LoRA: the model already has a trainable set");
    const sd_layout *L = &f->m.p.L[SD_UNET];
    lora_set *s = &f->train;
    int rc = o->from ? lora_load(s, o->from, L, err)
                     : lora_init(s, L, o->targets, o->ntargets, o->rank, o->alpha, o->seed, err);
    if (rc) return -1;
    const d3_backend *be = f->m.be;
    f->host = s->params;
    if (!be->host) {
        float *dev = be->alloc((s->numel ? s->numel : 1) * sizeof(float));
        if (!dev) {
            lora_free(s);
            return d3_errf(err, "trainable LoRA: out of device memory (%zu floats)", s->numel);
        }
        be->upload(dev, f->host, s->numel * sizeof(float));
        s->params = dev;
    }
    f->has_train = 1;
    f->train_scale = s->scale = 1.0f;
    f->gen = f->dev_gen = 0;
    dm->train = (dm_trainable){f->host, s->numel};
    sdf_chain(f);
    size_t n = strlen(dm->desc);
    snprintf(dm->desc + n, sizeof dm->desc - n, ", LoRA %d modules, %zu trainable", s->n, s->numel);
    return 0;
}

int dm_lora_frozen(d3_dmodel *dm, const char *file, float scale, char *err) {
    sd_fam *f = sd_of(dm, file, err);
    if (!f) return -1;
    if (f->has_train) return d3_errf(err, "%s: frozen LoRA files go before the trainable adapters", file);
    if (f->nfrozen == DM_MAX_FROZEN) return d3_errf(err, "%s: more than %d LoRA files", file, DM_MAX_FROZEN);
    lora_set *s = &f->frozen[f->nfrozen];
    if (lora_load(s, file, &f->m.p.L[SD_UNET], err)) return -1;
    s->scale = scale;
    if (lora_upload(s, f->m.be, err)) {
        lora_free(s);
        return -1;
    }
    f->nfrozen++;
    sdf_chain(f);
    return 0;
}

void dm_adapters_on(d3_dmodel *dm, int on) {
    if (dm->ops != &sd_ops) return;
    sd_fam *f = dm->impl;
    if (f->has_train) f->train.scale = on ? f->train_scale : 0.0f;
}

const lora_set *dm_lora(const d3_dmodel *dm) {
    if (dm->ops != &sd_ops) return NULL;
    const sd_fam *f = dm->impl;
    return f->has_train ? &f->train : NULL;
}

int dm_lora_save(const d3_dmodel *dm, const char *path, lora_naming naming, char *err) {
    const lora_set *t = dm_lora(dm);
    if (!t) return d3_errf(err, "%s: the model has no trainable LoRA adapters to save", path);
    lora_set s = *t; /* the host copy's numbers */
    s.params = dm->train.params;
    return lora_save(&s, path, naming, err);
}

/* ---- the interface ---- */

void dm_close(d3_dmodel *dm) {
    if (dm->ops) dm->ops->close(dm);
    memset(dm, 0, sizeof(*dm));
}

int dm_condition(d3_dmodel *dm, const char *prompt, float *cond, char *err) {
    return dm->ops->condition(dm, prompt, cond, err);
}

int dm_decode(d3_dmodel *dm, d3_tape *tp, const float *x, int n, uint8_t *rgb, char *err) {
    return dm->ops->decode(dm, tp, x, n, rgb, err);
}

int dm_can_train(const d3_dmodel *dm, char *err) {
    if (dm->train.numel > 0) return 1;
    d3_errf(err, "%s model has no trainable set (attach LoRA adapters): labels are collected, training is off",
            dm->family);
    return 0;
}

float *dm_trainable_dev(d3_dmodel *dm, const d3_backend *be) { return dm->ops->trainable_dev(dm, be); }
void dm_touch(d3_dmodel *dm) { dm->ops->touch(dm); }

double dm_step(const d3_dmodel *dm, float *x_prev, float *mean, const float *x_t, const float *out,
               const float *z, double abar_t, double abar_prev, double eta) {
    if (dm->x0_clip_keeps_eps) /* DESIGN.md's step; ddim_step clips at 1 */
        return ddim_step(x_prev, mean, x_t, out, z, abar_t, abar_prev, eta, dm->D);
    return ddim_step_pred(x_prev, mean, x_t, out, z, abar_t, abar_prev, eta, dm->pred_v,
                          dm->x0_clip, dm->D);
}

void dm_logprob_backward(const d3_dmodel *dm, float *dout, double dlogp, const float *x_t,
                         const float *out, const float *x_prev, const float *mean, double sigma,
                         double abar_t, double abar_prev) {
    if (dm->x0_clip_keeps_eps)
        ddim_logprob_backward(dout, dlogp, x_t, out, x_prev, mean, sigma, abar_t, abar_prev, dm->D);
    else
        ddim_logprob_backward_pred(dout, dlogp, x_t, out, x_prev, mean, sigma, abar_t, abar_prev,
                                   dm->pred_v, dm->x0_clip, dm->D);
}

void dm_eps(d3_dmodel *dm, d3_tape *tp, int n, const float *x, int t, const float *cond,
            const float *uncond, float cfg, float *eps) {
    int nb;
    tape_reset(tp);
    tape_set_grad(tp, 0);
    d3_tensor *out = dm->ops->forward(dm, tp, NULL, n, x, t, cond, uncond, cfg, &nb);
    float *host = malloc(out->numel * sizeof(float));
    tape_backend(tp)->download(host, out->v, out->numel * sizeof(float));
    ddim_guide(eps, host, n, nb, dm->D, cfg);
    free(host);
    tape_set_grad(tp, 1);
}

/* The plan of o, checked: with logp every step needs sigma > 0. */
static int plan_checked(const d3_dmodel *dm, const ddim_opts *o, int logp, int *ts, double *at,
                        double *ap, char *err) {
    if (dm->ops->plan(dm, o->steps, ts, at, ap, err)) return -1;
    for (int k = 0; logp && k < o->steps; k++)
        if (!(ddim_sigma(at[k], ap[k], o->eta) > 0))
            return d3_errf(err, "step %d (t=%d) has sigma 0 (eta %g): no log-probability there", k,
                           ts[k], o->eta);
    return 0;
}

/* A loop over n images that dm_sample and dm_traj_logp split between
 * workers: part runs images [a, b) on tape tp. */
typedef struct img_job {
    d3_dmodel *dm;
    const ddim_opts *o;
    int ts[D3_MAX_STEPS];
    double at[D3_MAX_STEPS], ap[D3_MAX_STEPS];
    const float *cond, *uncond;
    float *x;          /* dm_sample: x_T in, x_0 out */
    d3_rng *rngs;      /* dm_sample */
    const float *tin;  /* dm_traj_logp: the trajectories */
    float *traj, *logp, *means;
    int (*part)(const struct img_job *J, d3_tape *tp, int a, int b); /* 0, or -1: out of memory */
} img_job;

/* dm_sample's loop for images [a, b) on tp: their trajectories are
 * independent (each its own rng; the batch is only for speed). 0, or -1
 * when memory runs out. */
static int sample_part(const img_job *J, d3_tape *tp, int a, int b) {
    d3_dmodel *dm = J->dm;
    const ddim_opts *o = J->o;
    const int *ts = J->ts;
    const double *at = J->at, *ap = J->ap;
    float *x = J->x, *traj = J->traj, *logp = J->logp;
    d3_rng *rngs = J->rngs;
    const int K = o->steps, m = b - a;
    const size_t D = dm->D;
    float *eps = malloc(m * D * sizeof(float)), *mean = malloc(D * sizeof(float));
    float *z = malloc(D * sizeof(float)), *xp = malloc(D * sizeof(float));
    if (!eps || !mean || !z || !xp) {
        free(eps); free(mean); free(z); free(xp);
        return -1;
    }
    if (traj)
        for (int i = a; i < b; i++) memcpy(traj + (size_t)i * (K + 1) * D, x + i * D, D * sizeof(float));
    ops_weights_frozen(1); /* the model is only read until the end of the loop */
    for (int k = 0; k < K; k++) {
        dm_eps(dm, tp, m, x + (size_t)a * D, ts[k], J->cond + (size_t)a * dm->cond_floats, J->uncond, o->cfg, eps);
        for (int i = a; i < b; i++) {
            float *xi = x + i * D;
            if (o->eta > 0) rng_normal(&rngs[i], z, D);
            double sigma = dm_step(dm, xp, mean, xi, eps + (i - a) * D, o->eta > 0 ? z : NULL, at[k], ap[k], o->eta);
            if (logp) logp[(size_t)i * K + k] = (float)ddim_logprob(xp, mean, sigma, D);
            memcpy(xi, xp, D * sizeof(float));
            if (traj) memcpy(traj + ((size_t)i * (K + 1) + k + 1) * D, xi, D * sizeof(float));
        }
    }
    ops_weights_frozen(0);
    free(eps); free(mean); free(z); free(xp);
    return 0;
}

/* Workers for a data-parallel loop over n images on tp's backend: the
 * pixel family on the CPU with several threads (the sd family's forward
 * keeps per-call state: 1), at most n, each with a tape (tape_worker). */
static int data_workers(d3_dmodel *dm, d3_tape *tp, int n) {
    if (!tape_backend(tp)->host || strcmp(dm->family, "pixel")) return 1;
    int nw = ops_get_threads();
    if (nw > n) nw = n;
    if (nw > TAPE_WORKERS + 1) nw = TAPE_WORKERS + 1;
    for (int j = 1; j < nw; j++)
        if (!tape_worker(tp, j)) return 1;
    if (nw > 1) dm_trainable_dev(dm, tape_backend(tp)); /* read by every worker */
    return nw < 1 ? 1 : nw;
}

/* Runs J over n images: on the CPU with several threads, data-parallel,
 * worker j (its own tape, ops on one thread) taking images
 * [n j / nw, n (j+1) / nw) through all the steps: one fork and join per
 * call instead of the ops splitting every step's small layers between
 * the threads. Every image passes through the same per-image ops either
 * way: the same bits for any thread count. */
static int run_images(const img_job *J, d3_tape *tp, int n, char *err) {
    const int nw = data_workers(J->dm, tp, n);
    int bad = 0;
    if (nw > 1) {
#pragma omp parallel num_threads(nw) reduction(+ : bad)
        {
            const int j = omp_get_thread_num();
            ops_set_local_threads(1);
            bad += J->part(J, tape_worker(tp, j), n * j / nw, n * (j + 1) / nw) != 0;
            ops_set_local_threads(0);
        }
    } else {
        bad = J->part(J, tp, 0, n) != 0;
    }
    return bad ? d3_errf(err, "out of memory") : 0;
}

int dm_sample(d3_dmodel *dm, d3_tape *tp, const ddim_opts *o, int n, const float *cond,
              const float *uncond, float *x, d3_rng *rngs, float *traj, float *logp, char *err) {
    img_job J = {.dm = dm, .o = o, .cond = cond, .uncond = uncond, .x = x, .rngs = rngs, .traj = traj,
                 .logp = logp, .part = sample_part};
    if (plan_checked(dm, o, logp != NULL, J.ts, J.at, J.ap, err)) return -1;
    return run_images(&J, tp, n, err);
}

int dm_sample_group(d3_dmodel *dm, d3_tape *tp, const ddim_opts *o, int n, const float *cond,
                    const float *uncond, uint64_t seed, uint64_t stream, float *x, float *traj,
                    float *logp, char *err) {
    size_t D = dm->D, cf = dm->cond_floats;
    d3_rng r, *rngs = malloc((size_t)n * sizeof *rngs);
    float *cn = malloc((size_t)n * cf * sizeof(float));
    if (!rngs || !cn) {
        free(rngs);
        free(cn);
        return d3_errf(err, "out of memory");
    }
    rng_init(&r, seed, 0);
    rng_normal(&r, x, D);
    for (int i = 0; i < n; i++) {
        if (i) memcpy(x + i * D, x, D * sizeof(float));
        rng_init(&rngs[i], seed, stream + (uint64_t)i);
        memcpy(cn + i * cf, cond, cf * sizeof(float));
    }
    int rc = dm_sample(dm, tp, o, n, cn, uncond, x, rngs, traj, logp, err);
    free(cn);
    free(rngs);
    return rc;
}

int dm_sample_pair(d3_dmodel *dm, d3_tape *tp, const ddim_opts *o, const float *cond,
                   const float *uncond, uint64_t seed, uint64_t stream, float *x, float *traj,
                   float *logp, char *err) {
    return dm_sample_group(dm, tp, o, 2, cond, uncond, seed, stream, x, traj, logp, err);
}

/* dm_traj_logp's loop for images [a, b) on tp. 0, or -1 when memory
 * runs out. */
static int logp_part(const img_job *J, d3_tape *tp, int a, int b) {
    d3_dmodel *dm = J->dm;
    const ddim_opts *o = J->o;
    const int *ts = J->ts;
    const double *at = J->at, *ap = J->ap;
    const float *traj = J->tin;
    float *logp = J->logp, *means = J->means;
    const int K = o->steps, m = b - a;
    const size_t D = dm->D;
    float *x = malloc(m * D * sizeof(float)), *eps = malloc(m * D * sizeof(float));
    float *mean = malloc(D * sizeof(float)), *xp = malloc(D * sizeof(float));
    if (!x || !eps || !mean || !xp) {
        free(x); free(eps); free(mean); free(xp);
        return -1;
    }
    ops_weights_frozen(1);
    for (int k = 0; k < K; k++) {
        for (int i = a; i < b; i++)
            memcpy(x + (i - a) * D, traj + ((size_t)i * (K + 1) + k) * D, D * sizeof(float));
        dm_eps(dm, tp, m, x, ts[k], J->cond + (size_t)a * dm->cond_floats, J->uncond, o->cfg, eps);
        for (int i = a; i < b; i++) {
            const float *xn = traj + ((size_t)i * (K + 1) + k + 1) * D;
            double sigma = dm_step(dm, xp, mean, x + (i - a) * D, eps + (i - a) * D, NULL, at[k], ap[k], o->eta);
            logp[(size_t)i * K + k] = (float)ddim_logprob(xn, mean, sigma, D);
            if (means) memcpy(means + ((size_t)i * K + k) * D, mean, D * sizeof(float));
        }
    }
    ops_weights_frozen(0);
    free(x); free(eps); free(mean); free(xp);
    return 0;
}

int dm_traj_logp(d3_dmodel *dm, d3_tape *tp, const ddim_opts *o, int n, const float *cond,
                 const float *uncond, const float *traj, float *logp, float *means, char *err) {
    img_job J = {.dm = dm, .o = o, .cond = cond, .uncond = uncond, .tin = traj, .logp = logp,
                 .means = means, .part = logp_part};
    if (plan_checked(dm, o, 1, J.ts, J.at, J.ap, err)) return -1;
    return run_images(&J, tp, n, err);
}

/* ---- measured costs ---- */

/* the counting backend: a table of live buffers (pointer -> bytes) */
#define CNT_SLOTS 16384
static struct {
    d3_backend be;
    void *(*alloc)(size_t);
    void (*free)(void *);
    void *ptr[CNT_SLOTS];
    size_t bytes[CNT_SLOTS];
    long long now, peak;
    int overflow;
} cnt;

static size_t cnt_slot(const void *p) {
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 50) % CNT_SLOTS;
}

static void *cnt_alloc(size_t bytes) {
    void *p = cnt.alloc(bytes);
    if (!p) return NULL;
    size_t i = cnt_slot(p), n = 0;
    while (cnt.ptr[i] && n++ < CNT_SLOTS) i = (i + 1) % CNT_SLOTS;
    if (cnt.ptr[i]) {
        cnt.overflow = 1;
        return p;
    }
    cnt.ptr[i] = p;
    cnt.bytes[i] = bytes;
    cnt.now += (long long)bytes;
    if (cnt.now > cnt.peak) cnt.peak = cnt.now;
    return p;
}

static void cnt_free(void *p) {
    if (p) {
        size_t i = cnt_slot(p), n = 0;
        while (cnt.ptr[i] != p && n++ < CNT_SLOTS) i = (i + 1) % CNT_SLOTS;
        if (cnt.ptr[i] == p) {
            cnt.now -= (long long)cnt.bytes[i];
            cnt.ptr[i] = NULL;
            /* re-insert the run after i so that probing finds its entries */
            for (size_t j = (i + 1) % CNT_SLOTS; cnt.ptr[j]; j = (j + 1) % CNT_SLOTS) {
                void *q = cnt.ptr[j];
                size_t b = cnt.bytes[j], k = cnt_slot(q);
                cnt.ptr[j] = NULL;
                while (cnt.ptr[k]) k = (k + 1) % CNT_SLOTS;
                cnt.ptr[k] = q;
                cnt.bytes[k] = b;
            }
        }
    }
    cnt.free(p);
}

const d3_backend *dm_count_backend(const d3_backend *be) {
    if (!be) return NULL;
    memset(&cnt, 0, sizeof cnt);
    cnt.be = *be;
    cnt.alloc = be->alloc;
    cnt.free = be->free;
    cnt.be.alloc = cnt_alloc;
    cnt.be.free = cnt_free;
    return &cnt.be;
}

long long dm_count_bytes(void) { return cnt.overflow ? -1 : cnt.now; }
long long dm_count_peak(void) { return cnt.overflow ? -1 : cnt.peak; }
void dm_count_reset_peak(void) { cnt.peak = cnt.now; }

static double mono_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
    d3_dmodel *dm;
    d3_tape *tp;
    const float *x, *c2, *u;
    float *eps, *dout_host, *grads, *m, *v;
    uint8_t *rgb;
    d3_adamw *opt;
    int t;
} cal_ctx;

enum { CAL_FWD, CAL_FWDBWD, CAL_DECODE, CAL_OPT };

/* One run of a part; cfg as given. Ends with a download, so a device's
 * queue has drained when it returns. */
static int cal_run(cal_ctx *k, int what, float cfg, char *err) {
    d3_dmodel *dm = k->dm;
    const d3_backend *be = tape_backend(k->tp);
    switch (what) {
    case CAL_FWD:
        dm_eps(dm, k->tp, 2, k->x, k->t, k->c2, k->u, cfg, k->eps);
        return 0;
    case CAL_FWDBWD: {
        int nb;
        tape_reset(k->tp);
        tape_set_grad(k->tp, 1);
        d3_tensor *out = dm->ops->forward(dm, k->tp, k->grads, 2, k->x, k->t, k->c2, k->u, cfg, &nb);
        float *dout = tape_alloc(k->tp, out->numel);
        be->upload(dout, k->dout_host, out->numel * sizeof(float));
        tape_backward(k->tp, out, dout);
        float one;
        be->download(&one, k->grads, sizeof one);
        return 0;
    }
    case CAL_DECODE:
        return dm_decode(dm, k->tp, k->x, 2, k->rgb, err);
    default: {
        float *params = dm_trainable_dev(dm, be), one;
        grad_clip_on(be, k->grads, dm->train.numel, 1.0);
        adamw_step_on(be, k->opt, params, k->m, k->v, k->grads);
        be->download(&one, params, sizeof one);
        return 0;
    }
    }
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of up to 3 timed runs after a warm-up (1 run past 1 s each). */
static double cal_time(cal_ctx *k, int what, float cfg, char *err) {
    if (cal_run(k, what, cfg, err)) return NAN;
    double s[3];
    int n = 0;
    while (n < 3) {
        double t0 = mono_s();
        if (cal_run(k, what, cfg, err)) return NAN;
        s[n++] = mono_s() - t0;
        if (s[n - 1] > 1.0) break;
    }
    qsort(s, n, sizeof s[0], cmp_d);
    return s[n / 2];
}

int dm_calibrate(d3_dmodel *dm, d3_tape *tp, float cfg, dm_cost *c, char *err) {
    if (!dm_can_train(dm, err)) return -1;
    memset(c, 0, sizeof *c);
    const d3_backend *be = tape_backend(tp);
    size_t D = dm->D, Dc = dm->cond_floats, numel = dm->train.numel, bytes = numel * sizeof(float);
    cal_ctx k = {.dm = dm, .tp = tp, .t = dm->T / 2};
    float *x = malloc(2 * D * sizeof(float)), *c2 = malloc(3 * Dc * sizeof(float));
    k.eps = malloc(2 * D * sizeof(float));
    k.dout_host = malloc(4 * D * sizeof(float));
    k.rgb = malloc((size_t)2 * dm->img_h * dm->img_w * 3);
    k.grads = be->alloc(bytes);
    k.m = be->alloc(bytes);
    k.v = be->alloc(bytes);
    d3_adamw opt;
    int rc = -1, have_opt = !adamw_init(&opt, numel);
    k.opt = &opt;
    if (!x || !c2 || !k.eps || !k.dout_host || !k.rgb || !k.grads || !k.m || !k.v || !have_opt) {
        d3_errf(err, "calibration: out of memory");
        goto out;
    }
    d3_rng r;
    rng_init(&r, 1, 0);
    rng_normal(&r, x, 2 * D);
    rng_normal(&r, k.dout_host, 4 * D);
    for (size_t i = 0; i < 4 * D; i++) k.dout_host[i] *= 1e-3f;
    be->zero(k.grads, bytes);
    be->zero(k.m, bytes);
    be->zero(k.v, bytes);
    /* the null prompt for every pass: the cost does not depend on it, and
     * every family has one */
    if (dm_condition(dm, "", c2, err) || dm_condition(dm, "", c2 + 2 * Dc, err)) goto out;
    memcpy(c2 + Dc, c2, Dc * sizeof(float));
    k.x = x;
    k.c2 = c2;
    k.u = c2 + 2 * Dc;
    c->fwd = cal_time(&k, CAL_FWD, cfg, err);
    c->fwdbwd = cal_time(&k, CAL_FWDBWD, cfg, err);
    c->fwd1 = cal_time(&k, CAL_FWD, 1.0f, err);
    c->fwdbwd1 = cal_time(&k, CAL_FWDBWD, 1.0f, err);
    long long before = dm_count_bytes();
    dm_count_reset_peak();
    c->decode = cal_time(&k, CAL_DECODE, cfg, err);
    if (be == &cnt.be && before >= 0 && dm_count_peak() >= before)
        c->decode_extra = (size_t)(dm_count_peak() - before);
    c->opt = cal_time(&k, CAL_OPT, cfg, err);
    if (isnan(c->fwd) || isnan(c->fwdbwd) || isnan(c->fwd1) || isnan(c->fwdbwd1) ||
        isnan(c->decode) || isnan(c->opt))
        goto out;
    c->arena = tape_arena_bytes(tp);
    if (!strcmp(dm->family, "sd")) {
        const sd_model *m = dm->impl;
        for (int p = 0; p < SD_NPARTS; p++) c->weights += m->p.L[p].numel * sizeof(float);
    } else {
        c->weights = numel * sizeof(float);
    }
    rc = 0;
out:
    free(x); free(c2); free(k.eps); free(k.dout_host); free(k.rgb);
    if (k.grads) be->free(k.grads);
    if (k.m) be->free(k.m);
    if (k.v) be->free(k.v);
    if (have_opt) adamw_free(&opt);
    return rc;
}
