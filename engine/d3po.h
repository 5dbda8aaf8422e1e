/* d3po.h - D3PO training over a set of labeled pairs: the reference
 * log-prob cache, the reference setting (frozen base model, or the policy
 * as it was when the round started), shuffled pair and timestep order,
 * gradient accumulation over a pair's timesteps, global-norm clipping and
 * AdamW; or, with the Diffusion-DPO objective, a pair's (t, eps) draws
 * instead of its timesteps. The per-pair math is d3po_pair_backward() and
 * dpo_pair_backward() (diffusion.h).
 *
 *   d3po_pair p = {.cls = c, .traj = {t0, t1}, .h = {1, -1}};
 *   d3po_train_opts to = d3po_train_opts_default();
 *   // reference: the base model (D3PO_REF_BASE, ref_tag constant), or a
 *   // copy of the policy made when the round starts (D3PO_REF_ROUND,
 *   // ref_tag = round number): cached log-probs are recomputed only when
 *   // a pair's cached tag differs from ref_tag.
 *   d3po_train(&policy, &ref, ref_tag, tp, &adam, pairs, n, &to, &rng, NULL, NULL, err);
 */
#ifndef D3PO_D3PO_H
#define D3PO_D3PO_H

#include "diffusion.h"
#include "dmodel.h"
#include "optim.h"

typedef enum { D3PO_REF_BASE = 0, D3PO_REF_ROUND = 1 } d3po_ref_mode;
/* The preference objective: D3PO on the stored trajectories' steps, or
 * Diffusion-DPO on their final images (dpo_pair_backward). */
typedef enum { D3PO_OBJ_D3PO = 0, D3PO_OBJ_DPO = 1 } d3po_objective;

typedef struct {
    int cls;         /* pixel family: the class id, used when cond is NULL */
    float *cond;     /* the pair's conditioning [cond_floats] (dmodel.h), owned
                        by the caller; NULL: the class id cls (pixel family) */
    char *prompt;    /* the prompt text, owned by the caller; the engine makes
                        cond from it when cond is NULL and cls < 0 */
    float *traj[2];  /* [K+1][D] each, owned by the caller */
    float h[2];      /* {+1,-1}: image 0 preferred, {-1,+1}: image 1, {0,0}: tie */
    float *ref[2];   /* cached reference log-probs [K] each (allocated by d3po_train) */
    float *rmean[2]; /* cached reference means [K][D] each, only with a KL penalty */
    long ref_tag;    /* which reference the cache holds; -1: none */
} d3po_pair;

typedef struct {
    ddim_opts sample;     /* steps/eta/cfg the trajectories were sampled with */
    d3po_opts loss;       /* beta, clamp */
    d3po_ref_mode ref;    /* informational for callers; the tag decides caching */
    int epochs;           /* passes over the pairs per call */
    double max_grad_norm; /* 1.0 */
    d3po_objective objective; /* D3PO_OBJ_D3PO */
    dpo_opts dpo;         /* Diffusion-DPO's beta */
    int dpo_draws;        /* Diffusion-DPO: (t, eps) draws per pair per pass: 4 */
    int all_labels;       /* for callers (the engine): train each round over every
                             label collected so far, not only the round's: 0 */
} d3po_train_opts;

d3po_train_opts d3po_train_opts_default(void);

/* Progress callback: step j of total (one step = one pair update). A
 * non-zero return cancels the training (d3po_train returns NAN, err
 * "cancelled"; the updates already made stay in the policy). It is also
 * called with step 0 and loss NAN after each pair's reference log-probs
 * are computed (before the first update), so a caller can do other work
 * on the same thread between pairs (the engine samples pairs there). */
typedef int (*d3po_progress_fn)(void *ctx, int step, int total, double loss);

/* Trains policy on the pairs (ties are skipped: they carry no gradient).
 * ref: the reference model; ref_tag identifies it for the cache. The
 * order of pairs and of each pair's timesteps is shuffled from rng.
 * With o->objective D3PO_OBJ_DPO each pair update is dpo_pair_backward on
 * the pair's final images (traj[i] + K*D) with o->dpo_draws fresh (t, eps)
 * draws from rng (no reference cache: the draws are new every pass; the
 * reference should be the base model, see config_train_opts).
 * Returns the mean loss per timestep (D3PO) or per draw (Diffusion-DPO)
 * over the non-tie updates (NAN with err set on failure; 0 when there was
 * nothing to train on). */
double d3po_train(d3_model *policy, const d3_model *ref, long ref_tag, d3_tape *tp,
                  d3_adamw *opt, d3po_pair *pairs, int npairs, const d3po_train_opts *o,
                  d3_rng *rng, d3po_progress_fn progress, void *ctx, char *err);

/* The same over the model interface (dmodel.h), for any family: the
 * policy's trainable set (dm_trainable) is what AdamW updates (opt sized
 * policy->train.numel); ref is the reference model (for the pixel family
 * a view of a frozen copy or of the base; for the sd family the same
 * UNet with its adapters off: ref may be policy itself, and the
 * reference passes then switch its trainable adapters off). Each pair's
 * cond (or, pixel, its class) and the family's "" as the unconditional
 * input. Diffusion-DPO runs on every family: dpo_pair_backward on pixel
 * models (the bits of before), dm_dpo_pair_backward on the others (x_0 =
 * the trajectories' final latents; the error on the model's target, eps
 * or v). d3po_train is this function on pixel views: same ops in the same
 * order, the same bits. */
double d3po_train_dm(d3_dmodel *policy, d3_dmodel *ref, long ref_tag, d3_tape *tp, d3_adamw *opt,
                     d3po_pair *pairs, int npairs, const d3po_train_opts *o, d3_rng *rng,
                     d3po_progress_fn progress, void *ctx, char *err);

/* Frees the cached reference log-probs and means of n pairs (not the
 * trajectories). */
void d3po_pairs_free_cache(d3po_pair *pairs, int n);

/* How many reference log-prob computations d3po_train has run (for tests
 * of the cache). */
long d3po_ref_computations(void);

#endif
