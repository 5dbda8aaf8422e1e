/* diffusion.c - DDIM step math and log-probabilities, the pixel model's
 * sampling entry points (views of the model interface: the sampler itself
 * is written once, in dmodel.c), D3PO, Diffusion-DPO and pretraining
 * steps (contracts and formulas in diffusion.h and DESIGN.md). The model
 * runs through the tape on the backend; the per-image step math runs on the
 * host in double-precision coefficients. */
#include "diffusion.h"

#include "dmodel.h"
#include "ops.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

ddim_opts ddim_opts_default(void) { return (ddim_opts){.steps = 20, .eta = 1.0f, .cfg = 5.0f}; }
d3po_opts d3po_opts_default(void) { return (d3po_opts){.beta = 0.1f, .clip_eps = 0.1f, .kl = 0}; }

int ddim_timesteps(int T, int K, int *ts, int *prev, char *err) {
    if (K < 1 || K > T || K > D3_MAX_STEPS)
        return d3_errf(err, "steps=%d: expected 1 to %d", K, T < D3_MAX_STEPS ? T : D3_MAX_STEPS);
    int stride = T / K;
    for (int k = 0; k < K; k++) {
        ts[k] = (K - 1 - k) * stride + 1;
        prev[k] = ts[k] - stride > 0 ? ts[k] - stride : 0;
    }
    return 0;
}

double ddim_sigma(double abar_t, double abar_prev, double eta) {
    return eta * sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * sqrt(1.0 - abar_t / abar_prev);
}

double ddim_step(float *x_prev, float *mean, const float *x_t, const float *eps, const float *z,
                 double abar_t, double abar_prev, double eta, size_t n) {
    double sigma = ddim_sigma(abar_t, abar_prev, eta);
    float s1t = (float)sqrt(1.0 - abar_t), rst = (float)(1.0 / sqrt(abar_t));
    float sp = (float)sqrt(abar_prev);
    double ce2 = 1.0 - abar_prev - sigma * sigma;
    float ce = (float)sqrt(ce2 > 0 ? ce2 : 0), sg = (float)sigma;
    for (size_t i = 0; i < n; i++) {
        float x0 = (x_t[i] - s1t * eps[i]) * rst;
        x0 = x0 < -1.0f ? -1.0f : x0 > 1.0f ? 1.0f : x0;
        float mu = sp * x0 + ce * eps[i];
        mean[i] = mu;
        x_prev[i] = z ? mu + sg * z[i] : mu;
    }
    return sigma;
}

double ddim_step_pred(float *x_prev, float *mean, const float *x_t, const float *out,
                      const float *z, double abar_t, double abar_prev, double eta, int pred_v,
                      float clip, size_t n) {
    double sigma = ddim_sigma(abar_t, abar_prev, eta);
    double ce2 = 1.0 - abar_prev - sigma * sigma;
    float sa = (float)sqrt(abar_t), s1 = (float)sqrt(1.0 - abar_t), rsa = (float)(1.0 / sqrt(abar_t));
    float rs1 = (float)(1.0 / sqrt(1.0 - abar_t)), sp = (float)sqrt(abar_prev);
    float ce = (float)sqrt(ce2 > 0 ? ce2 : 0), sg = (float)sigma;
    for (size_t i = 0; i < n; i++) {
        float e, x0;
        if (pred_v) {
            x0 = sa * x_t[i] - s1 * out[i];
            e = sa * out[i] + s1 * x_t[i];
        } else {
            e = out[i];
            x0 = (x_t[i] - s1 * e) * rsa;
        }
        if (clip > 0) {
            x0 = x0 < -clip ? -clip : x0 > clip ? clip : x0;
            e = (x_t[i] - sa * x0) * rs1;
        }
        float mu = sp * x0 + ce * e;
        mean[i] = mu;
        x_prev[i] = z ? mu + sg * z[i] : mu;
    }
    return sigma;
}

double ddim_logprob(const float *x_prev, const float *mean, double sigma, size_t n) {
    double ss = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x_prev[i] - mean[i];
        ss += d * d;
    }
    return -ss / (2.0 * sigma * sigma * (double)n) - log(sigma) - 0.5 * log(2.0 * M_PI);
}

void ddim_logprob_backward(float *deps, double dlogp, const float *x_t, const float *eps,
                           const float *x_prev, const float *mean, double sigma, double abar_t,
                           double abar_prev, size_t n) {
    double s2 = sigma * sigma;
    double ce2 = 1.0 - abar_prev - s2;
    double ce = sqrt(ce2 > 0 ? ce2 : 0);
    double dx0 = -sqrt(abar_prev) * sqrt(1.0 - abar_t) / sqrt(abar_t); /* dmean/deps via x0 */
    float s1t = (float)sqrt(1.0 - abar_t), rst = (float)(1.0 / sqrt(abar_t));
    double k = dlogp / (s2 * (double)n);
    for (size_t i = 0; i < n; i++) {
        float x0 = (x_t[i] - s1t * eps[i]) * rst;
        /* clamp passes the gradient on [-1, 1] inclusive, like torch.clamp */
        double dm = (x0 >= -1.0f && x0 <= 1.0f ? dx0 : 0.0) + ce;
        deps[i] = (float)(k * ((double)x_prev[i] - mean[i]) * dm);
    }
}

void ddim_logprob_backward_pred(float *dout, double dlogp, const float *x_t, const float *out,
                                const float *x_prev, const float *mean, double sigma,
                                double abar_t, double abar_prev, int pred_v, float clip, size_t n) {
    double s2 = sigma * sigma, ce2 = 1.0 - abar_prev - s2;
    double ce = sqrt(ce2 > 0 ? ce2 : 0), sp = sqrt(abar_prev);
    double sa = sqrt(abar_t), s1 = sqrt(1.0 - abar_t);
    /* mean = sp x0 + ce e; per unit of out: eps: dx0 = -s1/sa, de = 1;
     * v: dx0 = -s1, de = sa. Clipping re-derives e from x0, which gives
     * the same derivatives inside the range and zero where x0 is clamped. */
    double dm = pred_v ? -sp * s1 + ce * sa : -sp * s1 / sa + ce;
    float fsa = (float)sa, fs1 = (float)s1, rsa = (float)(1.0 / sa);
    double k = dlogp / (s2 * (double)n);
    for (size_t i = 0; i < n; i++) {
        int on = 1;
        if (clip > 0) {
            float x0 = pred_v ? fsa * x_t[i] - fs1 * out[i] : (x_t[i] - fs1 * out[i]) * rsa;
            on = x0 >= -clip && x0 <= clip; /* torch.clamp: inclusive */
        }
        dout[i] = on ? (float)(k * ((double)x_prev[i] - mean[i]) * dm) : 0.0f;
    }
}

d3_tensor *model_forward_cfg(const d3_model *m, d3_tape *tp, float *grads, int n, const float *x,
                              int t, const int *cls, float w, int *nb_out) {
    const d3_backend *be = tape_backend(tp);
    int S = m->L.arch.size, D = 3 * S * S, nb = w == 1.0f ? n : 2 * n;
    d3_tensor *in = tape_input(tp, nb, 3, S, S);
    int ybuf[64], *y = nb <= 64 ? ybuf : malloc(sizeof(int) * nb);
    float tbuf[64], *tv = nb <= 64 ? tbuf : malloc(sizeof(float) * nb);
    for (int r = 0; r < nb; r++) {
        be->upload(in->v + (size_t)r * D, x + (size_t)(r % n) * D, sizeof(float) * D);
        y[r] = r < n ? cls[r % n] : m->L.arch.classes;
        tv[r] = (float)t;
    }
    d3_tensor *out = unet_forward(tp, &m->L, model_params_dev(m, be), grads, in, tv, y);
    if (y != ybuf) free(y);
    if (tv != tbuf) free(tv);
    *nb_out = nb;
    return out;
}

static void guide(float *eps, const float *out, int n, int nb, size_t D, float w) {
    for (int i = 0; i < n; i++) {
        const float *c = out + (size_t)i * D;
        float *e = eps + (size_t)i * D;
        if (nb == n) { memcpy(e, c, D * sizeof(float)); continue; }
        const float *u = out + (size_t)(n + i) * D;
        for (size_t j = 0; j < D; j++) e[j] = u[j] + w * (c[j] - u[j]);
    }
}

void ddim_guide(float *eps, const float *out, int n, int nb, size_t D, float w) {
    guide(eps, out, n, nb, D, w);
}

void model_eps_cfg(const d3_model *m, d3_tape *tp, int n, const float *x, int t, const int *cls,
                   float w, float *eps) {
    int S = m->L.arch.size, nb;
    size_t D = 3 * (size_t)S * S;
    tape_reset(tp);
    tape_set_grad(tp, 0);
    d3_tensor *out = model_forward_cfg(m, tp, NULL, n, x, t, cls, w, &nb);
    float *host = malloc(out->numel * sizeof(float));
    tape_backend(tp)->download(host, out->v, out->numel * sizeof(float));
    guide(eps, host, n, nb, D, w);
    free(host);
    tape_set_grad(tp, 1);
}

/* The pixel model as the model interface sees it (dmodel.h); the view
 * only reads m. */
static int pixel_view(d3_dmodel *dm, const d3_model *m, int n, const int *cls, float **cond,
                      float *uncond, char *err) {
    for (int i = 0; i < n; i++)
        if (cls[i] < 0 || cls[i] >= m->L.arch.classes)
            return d3_errf(err, "class %d out of range 0..%d", cls[i], m->L.arch.classes - 1);
    if (!(*cond = malloc(n * sizeof(float)))) return d3_errf(err, "out of memory");
    for (int i = 0; i < n; i++) (*cond)[i] = (float)cls[i];
    dm_open_pixel(dm, (d3_model *)m, err);
    return dm_condition(dm, "", uncond, err);
}

int ddim_sample(const d3_model *m, d3_tape *tp, const ddim_opts *o, int n, const int *cls,
                float *x, d3_rng *rngs, float *traj, float *logp, char *err) {
    d3_dmodel dm;
    float *cond = NULL, uncond;
    int rc = pixel_view(&dm, m, n, cls, &cond, &uncond, err);
    if (!rc) rc = dm_sample(&dm, tp, o, n, cond, &uncond, x, rngs, traj, logp, err);
    free(cond);
    return rc;
}

int ddim_sample_pair(const d3_model *m, d3_tape *tp, const ddim_opts *o, int cls, uint64_t seed,
                     uint64_t stream, float *x, float *traj, float *logp, char *err) {
    size_t D = 3 * (size_t)m->L.arch.size * m->L.arch.size;
    d3_rng r, rngs[2];
    rng_init(&r, seed, 0);
    rng_normal(&r, x, D);
    memcpy(x + D, x, D * sizeof(float));
    rng_init(&rngs[0], seed, stream);
    rng_init(&rngs[1], seed, stream + 1);
    int c2[2] = {cls, cls};
    return ddim_sample(m, tp, o, 2, c2, x, rngs, traj, logp, err);
}

int ddim_traj_logp(const d3_model *m, d3_tape *tp, const ddim_opts *o, int n, const int *cls,
                   const float *traj, float *logp, char *err) {
    return ddim_traj_logp_mean(m, tp, o, n, cls, traj, logp, NULL, err);
}

int ddim_traj_logp_mean(const d3_model *m, d3_tape *tp, const ddim_opts *o, int n, const int *cls,
                        const float *traj, float *logp, float *means, char *err) {
    d3_dmodel dm;
    float *cond = NULL, uncond;
    int rc = pixel_view(&dm, m, n, cls, &cond, &uncond, err);
    if (!rc) rc = dm_traj_logp(&dm, tp, o, n, cond, &uncond, traj, logp, means, err);
    free(cond);
    return rc;
}

static double log_sigmoid(double s) { return s >= 0 ? -log1p(exp(-s)) : s - log1p(exp(s)); }
static double sigmoid(double s) { return s >= 0 ? 1.0 / (1.0 + exp(-s)) : exp(s) / (1.0 + exp(s)); }

double d3po_pair_backward(const d3_model *m, d3_tape *tp, float *grads, const ddim_opts *o,
                          const d3po_opts *d, const float *traj0, const float *traj1, int cls,
                          const float *ref0, const float *ref1, const float *const rmean[2],
                          const float h[2], const int *order, float *loss_k, float *lp0,
                          float *lp1, char *err) {
    d3_dmodel dm;
    float *cond = NULL, uncond;
    if (pixel_view(&dm, m, 1, &cls, &cond, &uncond, err)) return NAN;
    double r = dm_d3po_pair_backward(&dm, tp, grads, o, d, traj0, traj1, cond, &uncond, ref0, ref1,
                                     rmean, h, order, loss_k, lp0, lp1, err);
    free(cond);
    return r;
}

/* What one D3PO step (timestep k of the pair) reads, shared by the steps. */
typedef struct {
    d3_dmodel *dm;
    const ddim_opts *o;
    const d3po_opts *d;
    const int *ts;
    const double *ats, *aps;
    const float *trajs[2], *refs[2];
    const float *const *rmean;
    const float *h;
    const float *c2, *uncond;
    float *loss_k, *lp0, *lp1;
    const int *steps; /* run_items' item q is timestep steps[q] */
} d3po_ctx;

/* Timestep k forward and backward on tp, parameter gradients added to
 * grads; returns the step's loss (DESIGN.md's D3PO objective). scr: 14 D
 * floats of host scratch (x, eps, mean, deps [2D each], xp, dkl [D],
 * host [4D]). */
static double d3po_step(const d3po_ctx *c, d3_tape *tp, float *grads, int k, float *scr) {
    d3_dmodel *dm = c->dm;
    const d3po_opts *d = c->d;
    const size_t D = dm->D;
    const double kl = d->kl, at = c->ats[k], ap = c->aps[k];
    const float w = c->o->cfg, *h = c->h;
    float *x = scr, *eps = x + 2 * D, *mean = eps + 2 * D, *deps = mean + 2 * D;
    float *xp = deps + 2 * D, *dkl = xp + D, *host = dkl + D;
    const d3_backend *be = tape_backend(tp);
    for (int i = 0; i < 2; i++) memcpy(x + i * D, c->trajs[i] + (size_t)k * D, D * sizeof(float));
    tape_reset(tp);
    tape_set_grad(tp, 1);
    int nb;
    d3_tensor *out = dm->ops->forward(dm, tp, grads, 2, x, c->ts[k], c->c2, c->uncond, w, &nb);
    be->download(host, out->v, out->numel * sizeof(float));
    ddim_guide(eps, host, 2, nb, D, w);
    double lp[2], sigma = 0, lr[2], mask[2];
    for (int i = 0; i < 2; i++) {
        const float *xn = c->trajs[i] + (size_t)(k + 1) * D;
        sigma = dm_step(dm, xp, mean + i * D, x + i * D, eps + i * D, NULL, at, ap, c->o->eta);
        lp[i] = ddim_logprob(xn, mean + i * D, sigma, D);
        double ratio = exp(lp[i] - c->refs[i][k]);
        double lo = 1.0 - d->clip_eps, hi = 1.0 + d->clip_eps;
        /* torch.clamp passes the gradient on [lo, hi] inclusive */
        mask[i] = ratio >= lo && ratio <= hi;
        lr[i] = log(ratio < lo ? lo : ratio > hi ? hi : ratio);
    }
    if (c->lp0) c->lp0[k] = (float)lp[0];
    if (c->lp1) c->lp1[k] = (float)lp[1];
    double s = d->beta * (h[0] * lr[0] + h[1] * lr[1]);
    double loss = -log_sigmoid(s);
    for (int i = 0; i < 2 && kl > 0; i++) {
        /* KL_i = |mean_i - rmean_i|^2 / (2 sigma^2 D) */
        const float *rm = c->rmean[i] + (size_t)k * D, *mi = mean + i * D;
        double ss = 0;
        for (size_t j = 0; j < D; j++) ss += ((double)mi[j] - rm[j]) * ((double)mi[j] - rm[j]);
        loss += 0.5 * kl * ss / (2.0 * sigma * sigma * (double)D);
    }
    if (c->loss_k) c->loss_k[k] = (float)loss;
    double ds = sigmoid(s) - 1.0; /* dloss/ds */
    double dlp[2] = {ds * d->beta * h[0] * mask[0], ds * d->beta * h[1] * mask[1]};
    /* tie or both clamped, and no KL: zero gradient */
    if (dlp[0] == 0 && dlp[1] == 0 && kl == 0) return loss;
    for (int i = 0; i < 2; i++) {
        const float *xn = c->trajs[i] + (size_t)(k + 1) * D;
        dm_logprob_backward(dm, deps + i * D, dlp[i], x + i * D, eps + i * D, xn, mean + i * D, sigma,
                            at, ap);
        if (kl > 0) {
            /* d(kl KL_i / 2) = d(-kl/2 log N(rmean; mean, sigma)) */
            dm_logprob_backward(dm, dkl, -0.5 * kl, x + i * D, eps + i * D, c->rmean[i] + (size_t)k * D,
                                mean + i * D, sigma, at, ap);
            for (size_t j = 0; j < D; j++) deps[i * D + j] += dkl[j];
        }
    }
    /* eps = u + w (c - u): dc = w deps, du = (1 - w) deps */
    for (int i = 0; i < 2; i++)
        for (size_t j = 0; j < D; j++) {
            if (nb == 2) { host[i * D + j] = deps[i * D + j]; continue; }
            host[i * D + j] = w * deps[i * D + j];
            host[(2 + i) * D + j] = (1.0f - w) * deps[i * D + j];
        }
    float *dout = tape_alloc(tp, out->numel);
    be->upload(dout, host, out->numel * sizeof(float));
    tape_backward(tp, out, dout);
    return loss;
}

static double d3po_item(const void *ctx, d3_tape *tp, float *grads, int q, float *scr) {
    const d3po_ctx *c = ctx;
    return d3po_step(c, tp, grads, c->steps[q], scr);
}

/* Adds the workers' gradient buffers wg[(k-1)*P ..] (k = 1..nw-1) to grads,
 * in worker order, the parameter range split between nw threads. */
static void sum_workers(float *grads, const float *wg, int nw, size_t P) {
#pragma omp parallel for schedule(static) num_threads(nw)
    for (size_t i = 0; i < P; i++) {
        float g = grads[i];
        for (int k = 1; k < nw; k++) g += wg[(size_t)(k - 1) * P + i];
        grads[i] = g;
    }
}

/* One item of a data-parallel loop: forward and backward on tp, the
 * parameter gradients added to grads; returns the item's loss. */
typedef double (*item_fn)(const void *ctx, d3_tape *tp, float *grads, int item, float *scr);

/* out[q] = fn(ctx, ., ., q, .) for the ns items. With nw > 1 workers (the
 * caller's choice: the pixel family on the CPU) they run data-parallel:
 * worker j (its own tape, scratch of scr_floats (0: none) and gradient
 * buffer; ops on one thread) takes items j, j + nw, ...; the buffers are summed into
 * grads in worker order, so a thread count gives the same floats every
 * time. The model must only be read (its parameters as be sees them
 * already uploaded). 0, or -1 when memory runs out. */
static int run_items(const void *ctx, item_fn fn, d3_tape *tp, float *grads, size_t P, int nw, int ns,
                     size_t scr_floats, double *out) {
    if (nw > ns) nw = ns;
    if (nw > TAPE_WORKERS + 1) nw = TAPE_WORKERS + 1;
    float *wgrad = nw > 1 ? calloc((size_t)(nw - 1) * P, sizeof(float)) : NULL;
    if (!wgrad) nw = 1;
    for (int j = 1; j < nw; j++)
        if (!tape_worker(tp, j)) nw = 1;
    int oom = 0;
    if (nw > 1) {
#pragma omp parallel num_threads(nw) reduction(+ : oom)
        {
            const int j = omp_get_thread_num();
            float *scr = scr_floats ? malloc(scr_floats * sizeof(float)) : NULL;
            if (scr_floats && !scr) {
                oom++;
            } else {
                ops_set_local_threads(1);
                d3_tape *wt = tape_worker(tp, j);
                float *wg = j ? wgrad + (size_t)(j - 1) * P : grads;
                for (int q = j; q < ns; q += nw) out[q] = fn(ctx, wt, wg, q, scr);
                ops_set_local_threads(0);
                free(scr);
            }
        }
        if (!oom) sum_workers(grads, wgrad, nw, P);
    } else {
        float *scr = scr_floats ? malloc(scr_floats * sizeof(float)) : NULL;
        oom = scr_floats && !scr;
        for (int q = 0; q < ns && !oom; q++) out[q] = fn(ctx, tp, grads, q, scr);
        free(scr);
    }
    free(wgrad);
    return oom ? -1 : 0;
}

double dm_d3po_pair_backward(d3_dmodel *dm, d3_tape *tp, float *grads, const ddim_opts *o,
                             const d3po_opts *d, const float *traj0, const float *traj1,
                             const float *cond, const float *uncond, const float *ref0,
                             const float *ref1, const float *const rmean[2], const float h[2],
                             const int *order, float *loss_k, float *lp0, float *lp1, char *err) {
    int K = o->steps;
    if (d->kl > 0 && (!rmean || !rmean[0] || !rmean[1])) {
        d3_errf(err, "the KL penalty needs the reference means");
        return NAN;
    }
    if (grads && !dm_can_train(dm, err)) return NAN;
    size_t D = dm->D, Dc = dm->cond_floats;
    int ts[D3_MAX_STEPS];
    double ats[D3_MAX_STEPS], aps[D3_MAX_STEPS];
    if (dm->ops->plan(dm, K, ts, ats, aps, err)) return NAN;
    const d3_backend *be = tape_backend(tp);
    float *c2 = malloc(2 * Dc * sizeof(float));
    if (!c2) {
        d3_errf(err, "out of memory");
        return NAN;
    }
    memcpy(c2, cond, Dc * sizeof(float));
    memcpy(c2 + Dc, cond, Dc * sizeof(float));
    /* the steps of this call, in order */
    int steps[D3_MAX_STEPS], ns = 0;
    double lk[D3_MAX_STEPS];
    for (int kk = 0; kk < K; kk++) {
        int k = order ? order[kk] : kk;
        if (k >= 0) steps[ns++] = k; /* a negative entry: a step left out of this call */
    }
    const d3po_ctx c = {dm, o, d, ts, ats, aps, {traj0, traj1}, {ref0, ref1}, rmean, h, c2, uncond,
                        loss_k, lp0, lp1, steps};
    /* On the CPU, with several threads, the pixel family's steps run
     * data-parallel (run_items): the model is only read (its host
     * parameters); the sd family's forward keeps per-call state and stays
     * on one thread. */
    const int nw = be->host && grads && !strcmp(dm->family, "pixel") ? ops_get_threads() : 1;
    if (nw > 1) dm_trainable_dev(dm, be); /* the parameters as read by every worker */
    const int oom = run_items(&c, d3po_item, tp, grads, dm->train.numel, nw, ns, 14 * D, lk);
    free(c2);
    if (oom) {
        d3_errf(err, "out of memory");
        return NAN;
    }
    double total = 0;
    for (int q = 0; q < ns; q++) total += lk[q];
    return total;
}

dpo_opts dpo_opts_default(void) { return (dpo_opts){.beta = 2.5f}; }

void dm_dpo_draw(const d3_dmodel *dm, d3_rng *rng, int n, int *t, float *eps) {
    for (int j = 0; j < n; j++) t[j] = (int)rng_below(rng, (uint32_t)dm->T);
    rng_normal(rng, eps, (size_t)n * dm->D);
}

void dpo_draw(const d3_model *m, d3_rng *rng, int n, int *t, float *eps) {
    d3_dmodel dm;
    dm_open_pixel(&dm, (d3_model *)m, NULL);
    dm_dpo_draw(&dm, rng, n, t, eps);
}

/* mean over n elements of (eps - out)^2, in double */
static double mean_sq_err(const float *eps, const float *out, size_t n) {
    double ss = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)eps[i] - out[i];
        ss += d * d;
    }
    return ss / (double)n;
}

double dpo_pair_backward(const d3_model *policy, const d3_model *ref, d3_tape *tp, float *grads,
                         const dpo_opts *d, const float *x0a, const float *x0b, int cls,
                         const float h[2], int n, const int *t, const float *eps, float *loss_j,
                         char *err) {
    d3_dmodel dp, dr;
    float *cond = NULL, uncond;
    if (pixel_view(&dp, policy, 1, &cls, &cond, &uncond, err)) return NAN;
    if (ref->L.numel != policy->L.numel || ref->L.arch.size != policy->L.arch.size ||
        ref->sched.T != policy->sched.T) {
        free(cond);
        d3_errf(err, "the reference model's architecture or schedule differs from the policy's");
        return NAN;
    }
    dm_open_pixel(&dr, (d3_model *)ref, err);
    double r = dm_dpo_pair_backward(&dp, &dr, tp, grads, d, x0a, x0b, cond, h, n, t, eps, loss_j,
                                    err);
    free(cond);
    return r;
}

/* What one Diffusion-DPO draw reads, shared by the draws. */
typedef struct {
    d3_dmodel *dm, *rm;
    const dpo_opts *d;
    const float *x0[2], *cond2, *h, *eps;
    const int *t;
    int n, same, off;
    float *loss_j;
} dpo_ctx;

/* Draw j forward (and backward into grads when given) on tp; its loss.
 * scr: 8 D floats of host scratch (x, rout, host, tgt [2D each]). */
static double dpo_item(const void *ctx, d3_tape *tp, float *grads, int j, float *scr) {
    const dpo_ctx *c = ctx;
    d3_dmodel *dm = c->dm;
    const size_t D = dm->D;
    const float *h = c->h;
    float *x = scr, *rout = x + 2 * D, *host = rout + 2 * D, *tgt = host + 2 * D;
    const d3_backend *be = tape_backend(tp);
    const int T = dm->T;
    const double bT = (double)c->d->beta * T;
    const float *ej = c->eps + (size_t)j * D;
    const int tj = c->t[j];
    float a = (float)sqrt(dm->abar[tj]), b = (float)sqrt(1.0 - dm->abar[tj]);
    for (int i = 0; i < 2; i++)
        for (size_t q = 0; q < D; q++) {
            x[i * D + q] = a * c->x0[i][q] + b * ej[q];
            /* the model's target: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0 */
            tgt[i * D + q] = dm->pred_v ? a * ej[q] - b * c->x0[i][q] : ej[q];
        }
    /* the reference's outputs first: dm_eps resets the tape */
    if (!c->same || c->off) {
        if (c->off) dm_adapters_on(dm, 0);
        dm_eps(c->rm, tp, 2, x, tj, c->cond2, c->cond2, 1.0f, rout);
        if (c->off) dm_adapters_on(dm, 1);
    }
    tape_reset(tp);
    tape_set_grad(tp, 1);
    int nb;
    d3_tensor *out = dm->ops->forward(dm, tp, grads, 2, x, tj, c->cond2, c->cond2, 1.0f, &nb);
    be->download(host, out->v, 2 * D * sizeof(float));
    if (c->same && !c->off) memcpy(rout, host, 2 * D * sizeof(float));
    double s = 0;
    for (int i = 0; i < 2; i++)
        s += h[i] * (mean_sq_err(tgt + i * D, host + i * D, D) - mean_sq_err(tgt + i * D, rout + i * D, D));
    double z = -bT * s, loss = -log_sigmoid(z);
    if (c->loss_j) c->loss_j[j] = (float)loss;
    if ((h[0] == 0 && h[1] == 0) || !grads) return loss; /* a tie: no gradient */
    /* d(loss/n)/dout_i = (sigmoid(z) - 1) (-bT h_i) 2 (out_i - target_i) / D / n */
    double g = (sigmoid(z) - 1.0) * -bT * 2.0 / ((double)D * c->n);
    for (int i = 0; i < 2; i++)
        for (size_t q = 0; q < D; q++)
            host[i * D + q] = (float)(g * h[i] * ((double)host[i * D + q] - tgt[i * D + q]));
    float *dout = tape_alloc(tp, out->numel);
    be->upload(dout, host, out->numel * sizeof(float));
    tape_backward(tp, out, dout);
    return loss;
}

double dm_dpo_pair_backward(d3_dmodel *dm, d3_dmodel *ref, d3_tape *tp, float *grads,
                            const dpo_opts *d, const float *x0a, const float *x0b,
                            const float *cond, const float h[2], int n, const int *t,
                            const float *eps, float *loss_j, char *err) {
    int T = dm->T;
    size_t D = dm->D, Dc = dm->cond_floats;
    if (ref->D != D || ref->T != T || ref->cond_floats != Dc || ref->pred_v != dm->pred_v) {
        d3_errf(err, "the reference model's architecture or schedule differs from the policy's");
        return NAN;
    }
    if (grads && !dm_can_train(dm, err)) return NAN;
    for (int j = 0; j < n; j++)
        if (t[j] < 0 || t[j] >= T) {
            d3_errf(err, "draw %d: t=%d out of range 0..%d", j, t[j], T - 1);
            return NAN;
        }
    /* the same model as reference: with trainable adapters, the reference
     * pass switches them off (the base); without, the reference is the
     * policy itself (the same numbers: not run twice) */
    int same = ref == dm || ref->impl == dm->impl, off = same && dm_lora(dm) != NULL;
    const d3_backend *be = tape_backend(tp);
    float *c2 = malloc(2 * Dc * sizeof(float));
    double *lj = malloc((n > 0 ? n : 1) * sizeof(double));
    if (!c2 || !lj) {
        free(c2); free(lj);
        d3_errf(err, "out of memory");
        return NAN;
    }
    memcpy(c2, cond, Dc * sizeof(float));
    memcpy(c2 + Dc, cond, Dc * sizeof(float));
    dpo_ctx c = {dm, same ? dm : ref, d, {x0a, x0b}, c2, h, eps, t, n, same, off, loss_j};
    /* On the CPU with several threads, the pixel family's draws run
     * data-parallel (run_items); both models are only read. Adapters
     * toggled per draw (off) and the sd family stay on one thread. */
    const int nw = be->host && grads && !off && !strcmp(dm->family, "pixel") && !strcmp(c.rm->family, "pixel")
                       ? ops_get_threads() : 1;
    if (nw > 1) {
        dm_trainable_dev(dm, be); /* the parameters as read by every worker */
        dm_trainable_dev(c.rm, be);
    }
    const int oom = run_items(&c, dpo_item, tp, grads, dm->train.numel, nw, n, 8 * D, lj);
    double total = 0;
    for (int j = 0; j < n && !oom; j++) total += lj[j];
    free(c2);
    free(lj);
    if (oom) {
        d3_errf(err, "out of memory");
        return NAN;
    }
    return n ? total / n : 0.0;
}

#ifndef PRETRAIN_CPU_CHUNK
#define PRETRAIN_CPU_CHUNK 8 /* images per forward/backward on the CPU */
#endif

/* What one chunk of a pretraining batch reads; plain[c] gets chunk c's
 * share of the plain MSE. */
typedef struct {
    const d3_model *m;
    const float *params, *xt, *noise, *tv;
    const int *y;
    int N, chunk;
    size_t D;
    float snr_gamma;
    double *plain;
} pretrain_ctx;

/* Chunk c (images c*chunk .. , fewer at the end) forward and backward on
 * tp, parameter gradients added to grads; returns the chunk's share of the
 * (weighted) loss. */
static double pretrain_item(const void *ctx, d3_tape *tp, float *grads, int c, float *scr) {
    const pretrain_ctx *p = ctx;
    const d3_model *m = p->m;
    const d3_backend *be = tape_backend(tp);
    const int S = m->L.arch.size, N = p->N, i0 = c * p->chunk;
    const int nc = N - i0 < p->chunk ? N - i0 : p->chunk;
    const size_t D = p->D;
    const float share = (float)nc / (float)N;
    double loss = 0.0, plain = 0.0;
    (void)scr;
    tape_reset(tp);
    tape_set_grad(tp, 1);
    d3_tensor *in = tape_input(tp, nc, 3, S, S);
    be->upload(in->v, p->xt + (size_t)i0 * D, nc * D * sizeof(float));
    d3_tensor *out = unet_forward(tp, &m->L, p->params, grads, in, p->tv + i0, p->y + i0);
    float *dn = tape_alloc(tp, out->numel), *dout = tape_alloc(tp, out->numel);
    be->upload(dn, p->noise + (size_t)i0 * D, nc * D * sizeof(float));
    if (p->snr_gamma > 0) {
        /* min-SNR: image j's error weighs min(SNR, gamma) / SNR */
        for (int j = 0; j < nc; j++) {
            double ab = m->sched.abar[(int)p->tv[i0 + j]], snr = ab / (1.0 - ab);
            float wj = (float)(fmin(snr, (double)p->snr_gamma) / snr);
            size_t o = (size_t)j * D;
            double e = be->mse_forward(out->v + o, dn + o, D);
            loss += (double)share / nc * wj * e;
            plain += (double)share / nc * e;
            be->mse_backward(dout + o, share * wj / (float)nc, out->v + o, dn + o, D);
        }
    } else {
        double e = be->mse_forward(out->v, dn, out->numel);
        loss += (double)share * e;
        plain += (double)share * e;
        be->mse_backward(dout, share, out->v, dn, out->numel);
    }
    tape_backward(tp, out, dout);
    p->plain[c] = plain;
    return loss;
}

double pretrain_step_backward(const d3_model *m, d3_tape *tp, float *grads, int N,
                              const float *x0, const int *cls, float p_uncond, d3_rng *rng) {
    return pretrain_step_backward_w(m, tp, grads, N, x0, cls, p_uncond, 0.0f, rng, NULL);
}

double pretrain_step_backward_w(const d3_model *m, d3_tape *tp, float *grads, int N,
                                const float *x0, const int *cls, float p_uncond, float snr_gamma,
                                d3_rng *rng, double *mse) {
    const d3_backend *be = tape_backend(tp);
    int S = m->L.arch.size;
    size_t D = 3 * (size_t)S * S;
    float *noise = malloc(N * D * sizeof(float)), *xt = malloc(N * D * sizeof(float));
    float *tv = malloc(N * sizeof(float)), *u = malloc(N * sizeof(float));
    int *y = malloc(N * sizeof(int));
    rng_normal(rng, noise, N * D);
    rng_uniform(rng, u, N);
    for (int i = 0; i < N; i++) {
        int t = (int)rng_below(rng, (uint32_t)m->sched.T);
        tv[i] = (float)t;
        y[i] = u[i] < p_uncond ? m->L.arch.classes : cls[i];
        float a = (float)sqrt(m->sched.abar[t]), b = (float)sqrt(1.0 - m->sched.abar[t]);
        for (size_t j = 0; j < D; j++) xt[i * D + j] = a * x0[i * D + j] + b * noise[i * D + j];
    }
    /* On the CPU the batch runs in chunks of PRETRAIN_CPU_CHUNK images,
     * forward and backward each, the parameter gradients accumulating
     * (the same sum; GroupNorm is per image and the loss a mean, so each
     * chunk's MSE is weighted by its share of the batch): the activations
     * of a chunk stay in the caches instead of streaming ~30 MB per image
     * through memory. The random draws above are unchanged. A GPU takes
     * the whole batch at once.
     * With several threads the chunks are shared out data-parallel: worker
     * k (its own tape, its ops on one thread) takes chunks k, k + nw, ...
     * into its own gradient buffer (worker 0: grads itself), summed into
     * grads in worker order at the end. The many small ops of a chunk
     * (group norms, 8x8 attention, adds) then run on both cores instead of
     * splitting each op between them. Fixed assignment and order: the same
     * floats for the same thread count. */
    const int chunk = be->host ? PRETRAIN_CPU_CHUNK : N;
    const int nchunks = (N + chunk - 1) / chunk;
    double *closs = malloc((size_t)nchunks * 2 * sizeof(double)), loss = NAN, plain = NAN;
    if (closs) {
        const pretrain_ctx p = {m, model_params_dev(m, be), xt, noise, tv, y, N, chunk, D, snr_gamma,
                                closs + nchunks};
        const int nw = be->host && grads ? ops_get_threads() : 1;
        if (!run_items(&p, pretrain_item, tp, grads, m->L.numel, nw, nchunks, 0, closs)) {
            loss = plain = 0.0;
            for (int c = 0; c < nchunks; c++) {
                loss += closs[c];
                plain += closs[nchunks + c];
            }
        }
    }
    free(closs);
    free(noise); free(xt); free(tv); free(u); free(y);
    if (mse) *mse = plain;
    return loss;
}
