/* d3po.c - the D3PO and Diffusion-DPO training loop over labeled pairs (see
 * d3po.h). */
#include "d3po.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long ref_count;

long d3po_ref_computations(void) { return atomic_load(&ref_count); }

d3po_train_opts d3po_train_opts_default(void) {
    return (d3po_train_opts){.sample = ddim_opts_default(),
                             .loss = d3po_opts_default(),
                             .ref = D3PO_REF_ROUND,
                             .epochs = 1,
                             .max_grad_norm = 1.0,
                             .objective = D3PO_OBJ_D3PO,
                             .dpo = dpo_opts_default(),
                             .dpo_draws = 4,
                             .all_labels = 0};
}

void d3po_pairs_free_cache(d3po_pair *pairs, int n) {
    for (int i = 0; i < n; i++) {
        free(pairs[i].ref[0]);
        free(pairs[i].ref[1]);
        free(pairs[i].rmean[0]);
        free(pairs[i].rmean[1]);
        pairs[i].ref[0] = pairs[i].ref[1] = NULL;
        pairs[i].rmean[0] = pairs[i].rmean[1] = NULL;
        pairs[i].ref_tag = -1;
    }
}

static void shuffle(int *v, int n, d3_rng *rng) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(rng, (uint32_t)(i + 1));
        int t = v[i]; v[i] = v[j]; v[j] = t;
    }
}

/* The pair's conditioning: its cond, or (pixel family) its class id. */
static const float *pair_cond(const d3po_pair *p, float *cls1) {
    if (p->cond) return p->cond;
    *cls1 = (float)p->cls;
    return cls1;
}

/* The reference log-probs of a pair, and with want_mean its reference
 * means, computed unless cached for this tag. */
static int refresh_ref(d3_dmodel *ref, long tag, d3_tape *tp, d3po_pair *p, const float *uncond,
                       const ddim_opts *o, int want_mean, char *err) {
    if (p->ref_tag == tag && p->ref[0] && p->ref[1] && (!want_mean || (p->rmean[0] && p->rmean[1])))
        return 0;
    int K = o->steps;
    size_t D = ref->D, cf = ref->cond_floats;
    for (int i = 0; i < 2; i++) {
        if (!p->ref[i] && !(p->ref[i] = malloc(sizeof(float) * K))) return d3_errf(err, "out of memory");
        if (want_mean && !p->rmean[i] && !(p->rmean[i] = malloc(sizeof(float) * K * D)))
            return d3_errf(err, "out of memory");
    }
    float *both = malloc(2 * (K + 1) * D * sizeof(float)), lp[2 * D3_MAX_STEPS];
    float *means = want_mean ? malloc(2 * K * D * sizeof(float)) : NULL;
    float *c2 = malloc(2 * cf * sizeof(float)), cls1;
    if (!both || !c2 || (want_mean && !means)) {
        free(both);
        free(means);
        free(c2);
        return d3_errf(err, "out of memory");
    }
    memcpy(both, p->traj[0], (K + 1) * D * sizeof(float));
    memcpy(both + (K + 1) * D, p->traj[1], (K + 1) * D * sizeof(float));
    const float *c = pair_cond(p, &cls1);
    memcpy(c2, c, cf * sizeof(float));
    memcpy(c2 + cf, c, cf * sizeof(float));
    int rc = dm_traj_logp(ref, tp, o, 2, c2, uncond, both, lp, means, err);
    free(both);
    free(c2);
    if (rc) {
        free(means);
        return -1;
    }
    memcpy(p->ref[0], lp, K * sizeof(float));
    memcpy(p->ref[1], lp + K, K * sizeof(float));
    if (means) {
        memcpy(p->rmean[0], means, K * D * sizeof(float));
        memcpy(p->rmean[1], means + K * D, K * D * sizeof(float));
        free(means);
    }
    p->ref_tag = tag;
    atomic_fetch_add(&ref_count, 1);
    return 0;
}

/* The optimizer state on the backend: on the CPU the host buffers
 * themselves; on a device, copies made for this call and copied back. */
typedef struct {
    const d3_backend *be;
    float *grads, *m, *v, *params;
} train_bufs;

static int bufs_open(train_bufs *b, const d3_backend *be, d3_dmodel *policy, d3_adamw *opt,
                     char *err) {
    size_t n = policy->train.numel, bytes = n * sizeof(float);
    memset(b, 0, sizeof *b);
    b->be = be;
    if (be->host) {
        b->params = policy->train.params;
        b->m = opt->m;
        b->v = opt->v;
        if (!(b->grads = malloc(bytes))) return d3_errf(err, "out of memory");
        return 0;
    }
    b->params = policy->ops->trainable_dev(policy, be);
    b->grads = be->alloc(bytes);
    b->m = be->alloc(bytes);
    b->v = be->alloc(bytes);
    if (!b->params || !b->grads || !b->m || !b->v)
        return d3_errf(err, "%s: out of device memory for the optimizer (3 x %zu MB)", be->name,
                       bytes >> 20);
    be->upload(b->m, opt->m, bytes);
    be->upload(b->v, opt->v, bytes);
    return 0;
}

/* Copies the trained state back to the host and frees the buffers. */
static void bufs_close(train_bufs *b, d3_dmodel *policy, d3_adamw *opt) {
    const d3_backend *be = b->be;
    if (be->host) {
        free(b->grads);
        policy->ops->touch(policy);
        return;
    }
    size_t bytes = policy->train.numel * sizeof(float);
    if (b->m) be->download(opt->m, b->m, bytes);
    if (b->v) be->download(opt->v, b->v, bytes);
    if (b->params) {
        if (!strcmp(policy->family, "pixel")) {
            model_pull(policy->impl); /* the device copy stays valid */
        } else {
            be->download(policy->train.params, b->params, bytes);
            policy->ops->touch(policy);
        }
    }
    be->free(b->grads); be->free(b->m); be->free(b->v);
}

double d3po_train(d3_model *policy, const d3_model *ref, long ref_tag, d3_tape *tp,
                  d3_adamw *opt, d3po_pair *pairs, int npairs, const d3po_train_opts *o,
                  d3_rng *rng, d3po_progress_fn progress, void *ctx, char *err) {
    d3_dmodel dp, dr;
    dm_open_pixel(&dp, policy, err);
    dm_open_pixel(&dr, (d3_model *)ref, err); /* read only: the reference is not trained */
    double l = d3po_train_dm(&dp, &dr, ref_tag, tp, opt, pairs, npairs, o, rng, progress, ctx, err);
    dm_close(&dp);
    dm_close(&dr);
    return l;
}

double d3po_train_dm(d3_dmodel *policy, d3_dmodel *ref, long ref_tag, d3_tape *tp, d3_adamw *opt,
                     d3po_pair *pairs, int npairs, const d3po_train_opts *o, d3_rng *rng,
                     d3po_progress_fn progress, void *ctx, char *err) {
    int K = o->sample.steps;
    if (K < 1 || K > D3_MAX_STEPS) { d3_errf(err, "steps=%d out of range", K); return NAN; }
    int dpo = o->objective == D3PO_OBJ_DPO;
    if (policy->train.numel == 0 && !dm_can_train(policy, err)) return NAN;
    int pixel = !strcmp(policy->family, "pixel");
    const d3_backend *be = tape_backend(tp);
    size_t numel = policy->train.numel, D = policy->D;
    int *order = malloc(sizeof(int) * (npairs ? npairs : 1)), steps[D3_MAX_STEPS];
    int nd = o->dpo_draws > 0 ? o->dpo_draws : 1, *dt = NULL;
    float *deps = NULL, *uncond = malloc(policy->cond_floats * sizeof(float));
    double total = 0, result = NAN;
    long count = 0;
    train_bufs b;
    int opened = 0;
    if (!order || !uncond ||
        (dpo && (!(dt = malloc(sizeof(int) * nd)) || !(deps = malloc(sizeof(float) * nd * D))))) {
        d3_errf(err, "out of memory");
        goto out;
    }
    if (dm_condition(policy, "", uncond, err)) goto out;
    int n = 0;
    for (int i = 0; i < npairs; i++)
        if (pairs[i].h[0] != 0 || pairs[i].h[1] != 0) order[n++] = i;
    /* reference log-probs first: with D3PO_REF_ROUND the reference is the
     * policy before this call's first update, so caching must precede it
     * (Diffusion-DPO needs none: its reference runs on fresh draws) */
    int ref_off = ref->impl == policy->impl && dm_lora(ref); /* the policy's base */
    for (int i = 0; i < n && !dpo; i++) {
        if (ref_off) dm_adapters_on(ref, 0);
        int rc = refresh_ref(ref, ref_tag, tp, &pairs[order[i]], uncond, &o->sample, o->loss.kl > 0, err);
        if (ref_off) dm_adapters_on(ref, 1);
        if (rc) goto out;
        if (progress && progress(ctx, 0, n * o->epochs, NAN)) {
            d3_errf(err, "cancelled");
            goto out;
        }
    }
    opened = 1;
    if (bufs_open(&b, be, policy, opt, err)) goto out;
    int done = 0, all = n * o->epochs;
    for (int e = 0; e < o->epochs; e++) {
        shuffle(order, n, rng);
        for (int i = 0; i < n; i++) {
            d3po_pair *p = &pairs[order[i]];
            be->zero(b.grads, numel * sizeof(float));
            double l;
            float cls1;
            if (dpo && pixel) {
                dm_dpo_draw(policy, rng, nd, dt, deps); /* the same draws for both images */
                l = dpo_pair_backward(policy->impl, ref->impl, tp, b.grads, &o->dpo,
                                      p->traj[0] + (size_t)K * D, p->traj[1] + (size_t)K * D,
                                      p->cond ? (int)p->cond[0] : p->cls, p->h, nd, dt, deps, NULL,
                                      err);
            } else if (dpo) {
                /* latent x_0: the trajectories' final states; the reference
                 * is ref (the policy itself: its adapters off) */
                dm_dpo_draw(policy, rng, nd, dt, deps);
                l = dm_dpo_pair_backward(policy, ref, tp, b.grads, &o->dpo,
                                         p->traj[0] + (size_t)K * D, p->traj[1] + (size_t)K * D,
                                         pair_cond(p, &cls1), p->h, nd, dt, deps, NULL, err);
            } else {
                for (int k = 0; k < K; k++) steps[k] = k;
                shuffle(steps, K, rng); /* one order for both images of the pair */
                l = dm_d3po_pair_backward(policy, tp, b.grads, &o->sample, &o->loss, p->traj[0],
                                          p->traj[1], pair_cond(p, &cls1), uncond, p->ref[0],
                                          p->ref[1], (const float *const *)p->rmean, p->h, steps,
                                          NULL, NULL, NULL, err);
            }
            if (isnan(l)) goto out;
            grad_clip_on(be, b.grads, numel, o->max_grad_norm);
            adamw_step_on(be, opt, b.params, b.m, b.v, b.grads);
            /* d3po: a sum over K steps; dpo: a mean over the draws */
            total += l;
            count += dpo ? 1 : K;
            if (progress && progress(ctx, ++done, all, dpo ? l : l / K)) {
                d3_errf(err, "cancelled");
                goto out;
            }
        }
    }
    result = count ? total / count : 0.0;
out:
    if (opened) bufs_close(&b, policy, opt);
    free(order);
    free(dt);
    free(deps);
    free(uncond);
    return result;
}
