/* diffusion.h - sampling and training math on top of the UNet: the DDIM
 * sampler with classifier-free guidance and per-step log-probabilities,
 * teacher-forced log-probabilities of stored trajectories, the D3PO pair
 * update, the Diffusion-DPO pair update (dpo_pair_backward, on the two
 * final images) and the epsilon-MSE pretraining step. The formulas are
 * exactly those of ../shared/DESIGN.md ("Sampling and log-probabilities",
 * "D3PO update", "Preference objectives"); bench/twin.py implements them again in PyTorch and
 * tests/test_parity.sh compares the two.
 *
 * Images are [3,S,S] floats in [-1,1]; D = 3*S*S. A trajectory of one image
 * is [K+1][D]: traj[0] = x_T, traj[k+1] = x after step k. Step k goes from
 * timestep ts[k] to prev[k] (951 -> 901, ..., 1 -> 0 for K = 20).
 */
#ifndef D3PO_DIFFUSION_H
#define D3PO_DIFFUSION_H

#include <stddef.h>

#include "model.h"
#include "rng.h"
#include "tape.h"

#define D3_MAX_STEPS 1000

typedef struct {
    int steps;   /* K, default 20 */
    float eta;   /* default 1.0 */
    float cfg;   /* guidance scale w, default 5.0 */
} ddim_opts;

ddim_opts ddim_opts_default(void);

/* ts[k] = (K-1-k)*(T/K) + 1, prev[k] = max(ts[k] - T/K, 0), k = 0..K-1.
 * Returns 0, or -1 with err when K does not fit T. */
int ddim_timesteps(int T, int K, int *ts, int *prev, char *err);

/* One DDIM step for n floats (one image), given the guided eps:
 * x0 = clip((x_t - sqrt(1-a_t) eps)/sqrt(a_t), -1, 1), sigma as in DESIGN.md,
 * mean = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) eps, x_prev = mean + sigma z
 * (z may be NULL: x_prev = mean). Returns sigma. */
double ddim_step(float *x_prev, float *mean, const float *x_t, const float *eps, const float *z,
                 double abar_t, double abar_prev, double eta, size_t n);
/* The same step as diffusers' DDIMScheduler.step computes it for the
 * latent family, from the model's raw (guided) output: out is eps, or v
 * when pred_v (x0 = sqrt(a_t) x_t - sqrt(1-a_t) v, eps = sqrt(a_t) v +
 * sqrt(1-a_t) x_t); clip > 0 clamps x0 to [-clip, clip] and re-derives eps
 * from the clamped x0 as diffusers does (clip_sample; SD configs say false:
 * clip 0, no clamp); then sigma, mean and x_prev as ddim_step. Returns
 * sigma. */
double ddim_step_pred(float *x_prev, float *mean, const float *x_t, const float *out,
                      const float *z, double abar_t, double abar_prev, double eta, int pred_v,
                      float clip, size_t n);
/* Classifier-free guidance of n images: out holds nb rows of D floats, the
 * n conditional rows first, then (nb == 2n) the n unconditional ones;
 * eps[i] = u + w (c - u), or c when nb == n. */
void ddim_guide(float *eps, const float *out, int n, int nb, size_t D, float w);
/* sigma_t of that step. */
double ddim_sigma(double abar_t, double abar_prev, double eta);
/* MEAN over n elements of the Gaussian log-density of x_prev under
 * N(mean, sigma^2). */
double ddim_logprob(const float *x_prev, const float *mean, double sigma, size_t n);
/* deps = dlogp * d logp/d eps (through mean and the clipped x0). */
void ddim_logprob_backward(float *deps, double dlogp, const float *x_t, const float *eps,
                           const float *x_prev, const float *mean, double sigma, double abar_t,
                           double abar_prev, size_t n);

/* Guided noise prediction for n images at one timestep t: eps[n][D] =
 * eps_u + w (eps_c - eps_u), the model run on batch [x (cond) ; x (null)]
 * (w == 1: one conditional pass). Resets and uses the tape. */
void model_eps_cfg(const d3_model *m, d3_tape *tp, int n, const float *x, int t, const int *cls,
                   float w, float *eps);

/* dout = dlogp * d logp/d out for ddim_step_pred's step (out: eps or v;
 * through x0's clamp when clip > 0: zero where x0 was clamped). */
void ddim_logprob_backward_pred(float *dout, double dlogp, const float *x_t, const float *out,
                                const float *x_prev, const float *mean, double sigma,
                                double abar_t, double abar_prev, int pred_v, float clip, size_t n);

/* Records the UNet on batch [x (cls) ; x (null)], or [x (cls)] alone when
 * w == 1, and returns the output tensor [nb][D] (rows: cond first; *nb_out
 * = nb). grads NULL: inference. The caller resets the tape. */
d3_tensor *model_forward_cfg(const d3_model *m, d3_tape *tp, float *grads, int n, const float *x,
                             int t, const int *cls, float w, int *nb_out);

/* Samples n images with DDIM. x: in x_T [n][D], out x_0. rngs[n]: the
 * per-image step-noise streams (advanced). traj [n][K+1][D] and logp
 * [n][K] may be NULL. A pair or group shares x_T and the class: the caller
 * copies x_T into each row and gives each image its own stream. 0/-1. */
int ddim_sample(const d3_model *m, d3_tape *tp, const ddim_opts *o, int n, const int *cls,
                float *x, d3_rng *rngs, float *traj, float *logp, char *err);

/* Samples a pair the way the engine does: both images start from the x_T
 * of stream 0 of seed; image i takes its step noise from stream
 * stream + i of seed (the engine: stream 1). x [2][D] out: the two x_0;
 * traj [2][K+1][D] and logp [2][K] as ddim_sample. 0/-1. */
int ddim_sample_pair(const d3_model *m, d3_tape *tp, const ddim_opts *o, int cls, uint64_t seed,
                     uint64_t stream, float *x, float *traj, float *logp, char *err);

/* Teacher-forced log-probabilities of n stored trajectories under model m
 * (the reference log-probs D3PO caches). logp [n][K]. 0/-1. */
int ddim_traj_logp(const d3_model *m, d3_tape *tp, const ddim_opts *o, int n, const int *cls,
                   const float *traj, float *logp, char *err);

/* The same, and also each step's DDIM mean [n][K][D] (the reference means
 * of the KL penalty) when means is not NULL. 0/-1. */
int ddim_traj_logp_mean(const d3_model *m, d3_tape *tp, const ddim_opts *o, int n, const int *cls,
                        const float *traj, float *logp, float *means, char *err);

typedef struct {
    float beta;       /* 0.1 */
    float clip_eps;   /* 0.1: ratio clamped to [1-eps, 1+eps] */
    float kl;         /* 0: weight of the KL penalty to the reference */
} d3po_opts;

d3po_opts d3po_opts_default(void);

/* D3PO for one pair (two trajectories of the same class and x_T): for each
 * step k (in the order given, or 0..K-1 if order is NULL; a negative
 * entry in order leaves that slot out, so a call can train a subset)
 *   lr_i = log clamp(exp(logp_i - ref_i), 1-eps, 1+eps)
 *   loss_k = -log sigmoid(beta (h0 lr0 + h1 lr1))
 *          + kl * (KL_0 + KL_1) / 2
 * where KL_i = |mean_i - rmean_i[k]|^2 / (2 sigma_k^2 D) is the per-pixel
 * KL divergence of the policy's step distribution from the reference's at
 * the trajectory's state (rmean: the reference means [K][D] of each image,
 * from ddim_traj_logp_mean; only read when kl > 0). ACCUMULATES
 * d(sum_k loss_k)/dparams into grads. h = {+1,-1} when image 0 is
 * preferred, {-1,+1} when image 1 is, {0,0} for a tie (no preference
 * gradient). loss_k [K], lp0/lp1 [K] (policy log-probs) may be NULL.
 * Returns sum_k loss_k, or NAN with err set on bad input. */
double d3po_pair_backward(const d3_model *m, d3_tape *tp, float *grads, const ddim_opts *o,
                          const d3po_opts *d, const float *traj0, const float *traj1, int cls,
                          const float *ref0, const float *ref1, const float *const rmean[2],
                          const float h[2], const int *order, float *loss_k, float *lp0,
                          float *lp1, char *err);

/* Diffusion-DPO (Wallace et al., CVPR 2024): DPO on the denoising errors
 * of the two FINAL images of a labeled pair (x0[0], x0[1]; the last state
 * of each stored trajectory) under fresh forward noise. For each draw j of
 * (t_j, eps_j), the SAME for both images:
 *   x_i = sqrt(abar_t) x0_i + sqrt(1 - abar_t) eps
 *   err_i = mean over the D elements of (eps - eps_theta(x_i, t, cls))^2
 *   rerr_i = the same with the reference model
 *   s = h0 (err_0 - rerr_0) + h1 (err_1 - rerr_1)
 *   loss_j = -log sigmoid(-beta T s)            (T: the schedule's steps)
 * With h = {+1,-1} (image 0 preferred) s is the paper's
 * (err_w - rerr_w) - (err_l - rerr_l); {0,0} (a tie) gives loss log 2 and
 * no gradient. eps is the CONDITIONAL prediction (one pass with cls, no
 * guidance): the null class of classifier-free guidance is not trained
 * (it is shared by every prompt, and sampling amplifies the conditional
 * change by the guidance scale). The mean over elements makes beta T the
 * scale of the paper's beta with the official code's per-element mean
 * (its beta_dpo 5000 with its factor 1/2 is beta T = 2500).
 * ACCUMULATES d(mean_j loss_j)/dparams of policy into grads and returns
 * mean_j loss_j (loss_j [n] each draw's loss, may be NULL); NAN with err
 * set on bad input. t [n] in 0..T-1, eps [n][D]. ref may be policy itself
 * (then its errors are the policy's, not computed twice). */
typedef struct {
    float beta; /* beta of the loss above (times T): 2.5 */
} dpo_opts;

dpo_opts dpo_opts_default(void);

double dpo_pair_backward(const d3_model *policy, const d3_model *ref, d3_tape *tp, float *grads,
                         const dpo_opts *d, const float *x0a, const float *x0b, int cls,
                         const float h[2], int n, const int *t, const float *eps, float *loss_j,
                         char *err);

/* n draws of (t, eps) for dpo_pair_backward from rng: t ~ U{0..T-1},
 * eps [n][D] ~ N(0, I). */
void dpo_draw(const d3_model *m, d3_rng *rng, int n, int *t, float *eps);

/* Epsilon-MSE denoising loss on a batch x0 [N][D] with classes cls[N]:
 * t ~ U{0..T-1}, noise ~ N(0,1), each class replaced by the null class
 * with probability p_uncond; draws from rng. ACCUMULATES the gradient
 * into grads and returns the loss. On a host (CPU) backend the batch runs
 * through the tape in chunks of a few images (the same gradient up to
 * float summation order; afterwards the tape holds the last chunk only). */
double pretrain_step_backward(const d3_model *m, d3_tape *tp, float *grads, int N,
                              const float *x0, const int *cls, float p_uncond, d3_rng *rng);

/* The same with min-SNR-gamma weighting (Hang et al. 2023) when snr_gamma
 * > 0: each image's squared error is weighted by min(SNR(t), gamma) /
 * SNR(t), SNR = abar / (1 - abar), which lowers the weight of the low-noise
 * steps; the draws are the same. Returns the weighted loss (whose
 * gradient is accumulated) and, when mse is not NULL, stores the
 * unweighted epsilon-MSE there (comparable across runs). snr_gamma <= 0
 * is pretrain_step_backward. */
double pretrain_step_backward_w(const d3_model *m, d3_tape *tp, float *grads, int N,
                                const float *x0, const int *cls, float p_uncond, float snr_gamma,
                                d3_rng *rng, double *mse);

#endif
