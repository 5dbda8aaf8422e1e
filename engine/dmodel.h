/* dmodel.h - the model interface of DESIGN.md ("Model families"): what the
 * sampler, D3PO, sessions, `auto`, `eval` and the screen may know of a
 * diffusion model, whatever its family. A family fills a d3_dmodel (sizes,
 * DDIM options, trainable set) and a dm_ops table (condition, the guided
 * denoiser on the tape, decode); the DDIM sampler and the teacher-forced
 * log-probabilities below are written once, over the interface.
 *
 * Families today:
 *   pixel  d3po's own UNet (engine/model.h): conditioning is a class id
 *          (the prompt is a class name or a decimal id; "" is the null
 *          class), x is RGB [3,S,S] in [-1,1], decode is the identity to
 *          8-bit, DESIGN.md's step (x0 clipped to [-1,1], eps kept:
 *          ddim_step), linear betas in double; trains all its weights.
 *   sd     Stable Diffusion 1.x/2.x and BK-SDM (engine/sd/sdsample.h):
 *          conditioning is CLIP text states [77][d] ("" is the null
 *          prompt), x is latents [C,h,w], decode is the VAE, diffusers'
 *          DDIM step (ddim_step_pred: epsilon or v, x0 clipping only when
 *          the scheduler config says so), the folder's schedule. Its
 *          trainable set is LoRA adapters (engine/lora.h) attached with
 *          dm_lora_attach; until then it has none, and training on it is
 *          an error. Frozen LoRA files (`--lora FILE[:SCALE]`) may be
 *          added with dm_lora_frozen: they are part of the base.
 *
 * Conditioning is a flat float buffer of cond_floats floats per prompt
 * (pixel: 1 float holding the class id, exact below 2^24; sd: T*d text
 * states). The unconditional pass of classifier-free guidance uses the
 * conditioning of "" (dm_condition(dm, "", uncond, err)).
 *
 * Bit-identity: on the pixel family dm_sample, dm_sample_pair and
 * dm_traj_logp give exactly the bits of ddim_sample, ddim_sample_pair and
 * ddim_traj_logp_mean (tests/test_dmodel.c); on the sd family those of
 * sd_ddim_sample and sd_traj_logp.
 *
 *   d3_dmodel dm;
 *   dm_open_pixel(&dm, &model, err);                // a view: model stays the caller's
 *   // or dm_open_sd(&dm, "model_dir", NULL, be, 32, 32, err);  (latent h, w)
 *   float *c = malloc(2 * dm.cond_floats * sizeof(float));
 *   dm_condition(&dm, "a cat", c, err); dm_condition(&dm, "", c + dm.cond_floats, err);
 *   dm_sample_pair(&dm, tp, &o, c, c + dm.cond_floats, seed, 1, x, traj, logp, err);
 *   dm_decode(&dm, tp, x, 2, rgb, err);            // rgb [2][img_h][img_w][3]
 *   dm_close(&dm);
 *
 * Training the sd family (LoRA D3PO; DESIGN.md "Model families"):
 *
 *   dm_open_sd(&dm, dir, NULL, be, 32, 32, err);
 *   dm_lora_frozen(&dm, "style.safetensors", 0.8f, err);   // optional, always on
 *   dm_lora_opts lo = dm_lora_opts_default();              // rank 4, q/k/v/out
 *   lo.from = "start.safetensors";                         // optional: start from a file
 *   dm_lora_attach(&dm, &lo, err);          // dm.train = the adapters' flat params
 *   float *g = calloc(dm.train.numel, sizeof(float));     // (device buffer on a GPU)
 *   dm_adapters_on(&dm, 0);                 // the reference: base (+ frozen sets)
 *   dm_traj_logp(&dm, tp, &o, 1, c, u, traj0, ref0, NULL, err);   // cache
 *   dm_adapters_on(&dm, 1);                 // the policy
 *   dm_d3po_pair_backward(&dm, tp, g, &o, &d, traj0, traj1, c, u, ref0, ref1, ...);
 *   adamw_step(&opt, dm.train.params, g); dm_touch(&dm);
 *   dm_lora_save(&dm, "round3.safetensors", LORA_KOHYA, err);
 *
 * The base UNet is never written: gradients go only to the grads buffer
 * given to forward (the adapters' layout); the base weights stay as loaded
 * (float32: the engine's ops are float32; F16/BF16 files are converted on
 * load), and switching the adapters off gives the base's exact bits (no
 * second copy of the UNet). Only the UNet gets adapters: text-encoder
 * adapters are refused (the prompt's text states are computed once per
 * prompt and cached; training them would mean a text-encoder backward per
 * step for a part the paper leaves frozen).
 *
 * THIS HEADER IS THE CONTRACT between the engine's users and the families
 * (the LoRA adapters fill dm_trainable for the sd family).
 */
#ifndef D3PO_DMODEL_H
#define D3PO_DMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "diffusion.h"
#include "lora.h"
#include "model.h"
#include "rng.h"
#include "tape.h"

typedef struct d3_dmodel d3_dmodel;

/* The set the optimizer sees: numel floats of host memory, laid out by the
 * family (pixel: the UNet's flat parameters; sd: the LoRA adapters, base
 * frozen). numel 0: the family cannot train; dm_eps_forward with grads then
 * must not be called (callers check dm_can_train first). */
typedef struct {
    float *params;   /* host [numel]; after writing it call dm_touch */
    size_t numel;
} dm_trainable;

typedef struct {
    /* prompt -> cond [cond_floats]; "" gives the null conditioning. */
    int (*condition)(d3_dmodel *dm, const char *prompt, float *cond, char *err);
    /* The DDIM plan of K steps: timesteps ts[K], abar_t[K], abar_prev[K]. */
    int (*plan)(const d3_dmodel *dm, int K, int *ts, double *abar_t, double *abar_prev, char *err);
    /* Records the model on the tape for batch [x (cond) ; x (uncond)] (or
     * [x (cond)] alone when the family runs one pass for this cfg): x
     * [n][D] host, cond [n][cond_floats], uncond [cond_floats]; grads: the
     * trainable set's gradient buffer as the backend sees it (NULL:
     * inference). Returns the raw output [nb][D] on the tape; *nb = n or 2n.
     * The caller resets the tape and sets its grad mode. */
    d3_tensor *(*forward)(d3_dmodel *dm, d3_tape *tp, float *grads, int n, const float *x, int t,
                          const float *cond, const float *uncond, float cfg, int *nb);
    /* x0 [n][D] -> 8-bit RGB [n][img_h][img_w][3]. */
    int (*decode)(d3_dmodel *dm, d3_tape *tp, const float *x, int n, uint8_t *rgb, char *err);
    /* The trainable parameters as the backend sees them (uploaded when the
     * host copy changed), or NULL when the family has none. */
    float *(*trainable_dev)(d3_dmodel *dm, const d3_backend *be);
    void (*touch)(d3_dmodel *dm);
    void (*close)(d3_dmodel *dm);
} dm_ops;

struct d3_dmodel {
    const dm_ops *ops;
    const char *family;   /* "pixel" | "sd" */
    char desc[160];       /* one line for `session info` and the screen */
    int C, h, w;          /* the space the family denoises in */
    size_t D;             /* C*h*w: log-probs are means over D elements */
    int img_h, img_w;     /* decoded RGB size */
    size_t cond_floats;   /* floats of one conditioning */
    /* DDIM options of the family */
    int pred_v;           /* the model predicts v (sd 2.x), else eps */
    float x0_clip;        /* > 0: x0 clamped to [-x0_clip, x0_clip] */
    int x0_clip_keeps_eps;/* 1: DESIGN.md's step (ddim_step: clip x0, keep eps);
                             0: diffusers' (ddim_step_pred: eps re-derived) */
    dm_trainable train;   /* numel 0: cannot train */
    /* the training schedule (Diffusion-DPO's forward noise): T timesteps,
     * abar[t] = prod_{s<=t} (1 - beta_s) for t in 0..T-1, owned by the
     * family (pixel: the model's schedule in double; sd: diffusers'
     * float32 alphas_cumprod of the folder's scheduler, widened) */
    int T;
    const double *abar;
    void *impl;           /* the family's own state */
};

/* A view of a pixel model (not copied: m must outlive dm; dm_close frees
 * only the view). cond_floats 1. 0/-1. */
int dm_open_pixel(d3_dmodel *dm, d3_model *m, char *err);
/* Loads an SD-family pipeline (folder or single file; tokenizer as
 * sd_model_load) for latents of h x w (images 8h x 8w), checked against
 * the UNet. dm->impl points at an sd_model (engine/sd/sdsample.h). No
 * trainable set until dm_lora_attach. 0/-1. */
int dm_open_sd(d3_dmodel *dm, const char *path, const char *tokenizer, const d3_backend *be,
               int h, int w, char *err);
void dm_close(d3_dmodel *dm);

int dm_condition(d3_dmodel *dm, const char *prompt, float *cond, char *err);
int dm_decode(d3_dmodel *dm, d3_tape *tp, const float *x, int n, uint8_t *rgb, char *err);
/* 1 when the family has a trainable set; else 0 with err saying why. */
int dm_can_train(const d3_dmodel *dm, char *err);
/* The trainable set as the backend sees it (uploaded from dm->train.params
 * when they were touched since), or NULL when there is none. */
float *dm_trainable_dev(d3_dmodel *dm, const d3_backend *be);
/* Call after writing dm->train.params (an optimizer step, a rollback). */
void dm_touch(d3_dmodel *dm);

/* ---- LoRA adapters: the sd family's trainable set ---- */

typedef struct {
    int rank;                   /* 4 */
    float alpha;                /* 4 (= rank: the adapters' factor alpha/rank is 1) */
    const char *const *targets; /* module name ends; NULL: lora_default_targets */
    int ntargets;
    uint64_t seed;              /* draw of the down matrices (up starts at 0) */
    const char *from;           /* NULL, or a LoRA file (kohya, diffusers or peft
                                   naming): the set starts as the file's adapters
                                   (its modules, ranks and alphas; rank, alpha,
                                   targets and seed above are then unused) */
} dm_lora_opts;

dm_lora_opts dm_lora_opts_default(void);
/* Attaches trainable adapters to an sd model: dm->train becomes their flat
 * parameters (host, lora.h's layout: down then up, module after module in
 * the UNet's order), the forward's grads buffer their gradients, and they
 * are on (dm_adapters_on). One set per model: a second call is an error.
 * Pixel models train all their weights: an error too. 0/-1. */
int dm_lora_attach(d3_dmodel *dm, const dm_lora_opts *o, char *err);
/* Adds a frozen LoRA file (either naming) at scale to an sd model: applied
 * in every forward, policy and reference alike (it is part of the base the
 * adapters tune). At most DM_MAX_FROZEN; call before dm_lora_attach. 0/-1. */
#define DM_MAX_FROZEN 8
int dm_lora_frozen(d3_dmodel *dm, const char *file, float scale, char *err);
/* The trainable adapters on (1: the policy) or off (0: the reference, the
 * base with its frozen sets, bit for bit). No effect without adapters. */
void dm_adapters_on(d3_dmodel *dm, int on);
/* The trainable adapters (host params), or NULL when none are attached. */
const lora_set *dm_lora(const d3_dmodel *dm);
/* Writes the trainable adapters as a LoRA file (lora_save). 0/-1. */
int dm_lora_save(const d3_dmodel *dm, const char *path, lora_naming naming, char *err);

/* One step of the family's DDIM from the guided output out (eps or v):
 * x_prev = mean + sigma z (z NULL: x_prev = mean). Returns sigma. */
double dm_step(const d3_dmodel *dm, float *x_prev, float *mean, const float *x_t, const float *out,
               const float *z, double abar_t, double abar_prev, double eta);
/* dout = dlogp * d logp / d out for dm_step's step (the family's
 * ddim_logprob_backward or ddim_logprob_backward_pred). */
void dm_logprob_backward(const d3_dmodel *dm, float *dout, double dlogp, const float *x_t,
                         const float *out, const float *x_prev, const float *mean, double sigma,
                         double abar_t, double abar_prev);
/* The guided output for n states at timestep t, host eps [n][D]. Resets
 * the tape; inference. */
void dm_eps(d3_dmodel *dm, d3_tape *tp, int n, const float *x, int t, const float *cond,
            const float *uncond, float cfg, float *eps);

/* DDIM of n states x [n][D] (in x_T, out x_0), as ddim_sample: cond
 * [n][cond_floats], uncond [cond_floats]; rngs[n] advanced by D normals per
 * step when eta > 0; traj [n][K+1][D], logp [n][K] may be NULL (logp needs
 * sigma > 0 at every step). 0/-1. */
int dm_sample(d3_dmodel *dm, d3_tape *tp, const ddim_opts *o, int n, const float *cond,
              const float *uncond, float *x, d3_rng *rngs, float *traj, float *logp, char *err);
/* A pair as the engine samples it: both start from the x_T of stream 0 of
 * seed, image i steps with stream stream + i. x [2][D]. 0/-1. */
int dm_sample_pair(d3_dmodel *dm, d3_tape *tp, const ddim_opts *o, const float *cond,
                   const float *uncond, uint64_t seed, uint64_t stream, float *x, float *traj,
                   float *logp, char *err);
/* The same for n >= 1 trajectories from the one x_T (a group of k images):
 * image i steps with stream stream + i; x [n][D], traj [n][K+1][D], logp
 * [n][K]. dm_sample_pair is dm_sample_group with n = 2. 0/-1. */
int dm_sample_group(d3_dmodel *dm, d3_tape *tp, const ddim_opts *o, int n, const float *cond,
                    const float *uncond, uint64_t seed, uint64_t stream, float *x, float *traj,
                    float *logp, char *err);
/* Teacher-forced log-probs of n stored trajectories [n][K+1][D] (all of
 * conditioning cond [n][cond_floats]): logp [n][K]; means [n][K][D] may
 * be NULL. 0/-1. */
int dm_traj_logp(d3_dmodel *dm, d3_tape *tp, const ddim_opts *o, int n, const float *cond,
                 const float *uncond, const float *traj, float *logp, float *means, char *err);

/* D3PO for one pair on any family: d3po_pair_backward (diffusion.h) with
 * the pair's conditioning cond [cond_floats] and uncond instead of a class;
 * grads: the trainable set's gradient buffer on the backend (an error when
 * the family has no trainable set; NULL computes the loss only). */
double dm_d3po_pair_backward(d3_dmodel *dm, d3_tape *tp, float *grads, const ddim_opts *o,
                             const d3po_opts *d, const float *traj0, const float *traj1,
                             const float *cond, const float *uncond, const float *ref0,
                             const float *ref1, const float *const rmean[2], const float h[2],
                             const int *order, float *loss_k, float *lp0, float *lp1, char *err);

/* Diffusion-DPO for one pair on any family (dpo_pair_backward in
 * diffusion.h, whose math this is): for each draw j of (t_j, eps_j), the
 * same for both final images x0a, x0b [D],
 *   x_i = sqrt(abar_t) x0_i + sqrt(1 - abar_t) eps
 *   target_i = eps (epsilon models), or v_i = sqrt(abar_t) eps -
 *              sqrt(1 - abar_t) x0_i on v-prediction models (dm->pred_v:
 *              the error is on what the model predicts, as diffusers'
 *              training and the official Diffusion-DPO code compute it)
 *   err_i = mean over D of (target_i - out_theta(x_i, t, cond))^2, one
 *           CONDITIONAL pass (no guidance), rerr_i the reference's
 *   loss_j = -log sigmoid(-beta T (h0 (err_0 - rerr_0) + h1 (err_1 - rerr_1)))
 * ACCUMULATES d(mean_j loss_j)/d(trainable set) into grads (the backend's
 * buffer; NULL: the loss alone) with one forward + backward per draw
 * (memory flat in n). The reference: ref, or when ref is dm itself (or a
 * view of the same model): on the sd family the same UNet with its
 * trainable adapters switched off for the reference pass (the base), on a
 * family without adapters the policy's own outputs (err = rerr). t [n] in
 * 0..T-1, eps [n][D]; loss_j [n] may be NULL. Returns mean_j loss_j, or
 * NAN with err set. */
double dm_dpo_pair_backward(d3_dmodel *dm, d3_dmodel *ref, d3_tape *tp, float *grads,
                            const dpo_opts *d, const float *x0a, const float *x0b,
                            const float *cond, const float h[2], int n, const int *t,
                            const float *eps, float *loss_j, char *err);
/* n draws of (t, eps) for dm_dpo_pair_backward from rng: t ~ U{0..T-1},
 * then eps [n][D] ~ N(0, I) (dpo_draw's order). */
void dm_dpo_draw(const d3_dmodel *dm, d3_rng *rng, int n, int *t, float *eps);

/* ---- measured costs (`d3po info MODEL --train`) ---- */

/* Seconds of the training loop's parts on this model, backend and latent
 * size, each the median of up to 3 timed runs after one untimed warm-up
 * (fewer when a run takes over a second): */
typedef struct {
    double fwd;        /* the guided forward of a pair (dm_eps, n = 2, cfg):
                          one sampling step, one reference log-prob step */
    double fwdbwd;     /* the same recorded on the tape + its backward into
                          the trainable set: one D3PO step */
    double fwd1;       /* the conditional forward of a pair (cfg 1): a
                          Diffusion-DPO reference pass */
    double fwdbwd1;    /* its forward + backward: a Diffusion-DPO draw */
    double decode;     /* decoding the pair's two final states to RGB */
    double opt;        /* clipping + AdamW on the trainable set */
    size_t arena;      /* the tape's arena after all of it (its peak): the
                          activations of the largest step */
    size_t decode_extra; /* bytes the decode allocated on the backend beyond
                          what was held before it (its scratch tapes and
                          buffers); 0 unless tp's backend is dm_count_backend's */
    size_t weights;    /* bytes of the model's weights on the backend */
} dm_cost;

/* Measures dm_cost for dm (with a trainable set) on tp's backend (a fresh
 * tape, so its arena is the calibration's alone) with guidance cfg. The
 * runs use random states at timestep T/2 and random output gradients: the
 * costs do not depend on the values. 0/-1. */
int dm_calibrate(d3_dmodel *dm, d3_tape *tp, float cfg, dm_cost *c, char *err);

/* A backend that forwards everything to be and counts the bytes held by
 * its alloc (until free): open the model and the tape on it to measure
 * what a run allocates on the device (or, on the CPU, in the backend's
 * buffers). One counter per process; not thread-safe. NULL when be is
 * NULL. dm_count_bytes: held now; dm_count_peak: the most held since the
 * last dm_count_reset_peak (or the start); -1 when more than 16384 buffers
 * were alive at once (the counts are then unknown). */
const d3_backend *dm_count_backend(const d3_backend *be);
long long dm_count_bytes(void);
long long dm_count_peak(void);
void dm_count_reset_peak(void);

#endif
