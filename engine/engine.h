/* engine.h - the engine thread: the one place where sampling and training
 * run, so the labeling screen never waits on the math (DESIGN.md, "The UI
 * never calls the engine's math directly").
 *
 * Jobs go in (sample pairs, train a round, stop); events come out (a pair
 * is ready, progress, a round is trained, an error) through a queue and a
 * wake-up file descriptor the UI can poll() next to the keyboard. The
 * engine owns the policy model while it runs. Jobs run in order, so pairs
 * requested after a training job come from the updated model; every pair
 * carries the model version that sampled it. A training job runs D3PO or
 * Diffusion-DPO (train.objective) over the round's labeled pairs, or over
 * every labeled pair so far (train.all_labels).
 *
 *   engine_opts o = engine_opts_default();
 *   d3_engine *e = engine_start(policy, base, &o, err);   // takes ownership
 *   // any family (dmodel.h): engine_start_dm(&dm_policy, &dm_base, ...)
 *   engine_sample(e, cls, seed);                          // x_T shared by the pair
 *   engine_sample_ex(e, &(engine_sample_req){.prompt = "a cat", .seed = 7});
 *   struct pollfd p = {engine_fd(e), POLLIN};  poll(&p, 1, -1);
 *   d3_event ev; while (engine_poll(e, &ev)) { ...; engine_event_free(&ev); }
 *   engine_train(e, pairs, n, round);                     // D3PO on labeled pairs
 *   engine_stop(e);                                       // cancels, joins, frees
 *
 * Everything runs over the model interface (dmodel.h): trajectories are
 * [K+1][D] with D = C*h*w of the family, a pair carries its prompt text and
 * conditioning, and its decoded images (dm_decode, on the engine thread).
 * The pixel family behaves and computes exactly as before the interface.
 * On the other families the round reference is the base (train.ref
 * "round" needs a copy of the policy, which only the pixel family makes).
 * With overlap, early sample requests run between a round's steps on every
 * family: the pixel family samples from a copy of the model in force; the
 * others (sd: a frozen base with small adapters) from the policy with the
 * round's starting trainable set swapped in around each sample.
 *
 * The engine computes on the backend of its opts (o.be: the CPU or CUDA
 * backend that device_backend() chose). Only the engine thread calls the
 * backend: its tape, the models' device copies and the optimizer's
 * device buffers are made, used and freed there, so the GPU has one user.
 */
#ifndef D3PO_ENGINE_H
#define D3PO_ENGINE_H

#include <stdint.h>

#include "d3po.h"
#include "model.h"

typedef struct {
    ddim_opts sample;       /* steps, eta, cfg of the pairs */
    d3po_train_opts train;  /* D3PO settings (train.sample is set from .sample) */
    float lr, weight_decay; /* AdamW */
    int threads;            /* CPU threads of the ops: 0 = all cores */
    const d3_backend *be;   /* where to compute (device.h); NULL: the CPU */
    /* Called on the engine thread after each trained round, with the new
     * policy and its training state, to write the checkpoint. Returns 0,
     * or -1 with err set (reported as an EV_ERROR). May be NULL. */
    int (*save_round)(void *ctx, const d3_model *policy, const d3_state *st, int round, char *err);
    /* The same for an engine started with engine_start_dm on a family
     * other than pixel (the policy's trainable set is what to save); a
     * pixel policy uses save_round when it is set. */
    int (*save_round_dm)(void *ctx, d3_dmodel *policy, const d3_state *st, int round, char *err);
    void *save_ctx;
    /* 1: sample requests marked `early` run while a round trains, between
     * its steps, from a copy of the model in force when the round began
     * (the pairs carry that version), so a person keeps labeling; costs a
     * copy of the model per round. 0: every job waits its turn. */
    int overlap;
} engine_opts;

engine_opts engine_opts_default(void);

/* trajectories one sample request may ask for (a group of k images of one
 * prompt from one x_T, the labeling screen's grid mode) */
#define D3_MAX_GROUP 8

typedef struct {
    int cls;            /* pixel family: the class id; -1 otherwise */
    int n;              /* trajectories: 2 (a pair), or 3..D3_MAX_GROUP (a group;
                           0 means 2); the arrays below hold n of them */
    uint64_t seed;
    long version;       /* model version that sampled it */
    int K, S;           /* S: the side of a square x (pixel: the image side) */
    int C, h, w;        /* x is [C][h][w]; D = C*h*w (pixel: 3, S, S) */
    float cfg, eta;
    char *prompt;       /* the prompt text (NULL: the class cls, pixel family) */
    float *cond;        /* [cond_floats] its conditioning (NULL: the class cls) */
    int cond_floats;
    float *traj[D3_MAX_GROUP]; /* [K+1][D]; traj[i] + K*D is x_0 */
    uint8_t *rgb[D3_MAX_GROUP]; /* [img_h][img_w][3] the decoded x_0 (NULL: decode
                           it yourself; pairs the engine samples carry them) */
    int img_h, img_w;
    float *logp[D3_MAX_GROUP]; /* [K] sampling log-probs */
    float *logp_base[2]; /* [K] the same steps' log-probs under the base model
                            (engine_sample_drift with a base model, pairs only),
                            else NULL */
    uint64_t tag;       /* the caller's tag from engine_sample_req (0 otherwise) */
} d3_pair_sample;

typedef enum { EV_PAIR, EV_PROGRESS, EV_TRAINED, EV_ERROR, EV_STOPPED } d3_event_kind;

typedef struct {
    d3_event_kind kind;
    d3_pair_sample *pair; /* EV_PAIR: owned by the receiver (engine_pair_free) */
    const char *what;     /* EV_PROGRESS: "sampling" or "training" */
    int i, n;             /* EV_PROGRESS: step i of n */
    double loss;          /* EV_PROGRESS (training), EV_TRAINED: mean loss */
    double eta_s;         /* EV_PROGRESS: estimated seconds left of the job */
    long version;         /* EV_TRAINED: the new model version */
    int round;            /* EV_TRAINED */
    char msg[D3_ERRLEN];  /* EV_ERROR */
} d3_event;

typedef struct d3_engine d3_engine;

/* Starts the thread. policy: a malloc'd model to sample from and train
 * (owned by the engine from now on, freed by engine_stop); base: the
 * malloc'd frozen base model for the "base" reference and for
 * engine_sample_drift (owned too; may be NULL when train.ref is
 * D3PO_REF_ROUND: training then ignores it);
 * st: AdamW state to continue (may be NULL: fresh); version: the policy's
 * model version. */
d3_engine *engine_start(d3_model *policy, d3_model *base, d3_state *st, long version,
                        const engine_opts *o, char *err);
/* The same on any family: policy and base are malloc'd, open models
 * (dm_open_*), owned by the engine from now on (dm_close and free at
 * engine_stop; base may be NULL). A policy with trainable LoRA adapters
 * (dm_lora_attach) and no base gets the reference DESIGN.md asks for: a
 * view of the policy with its adapters off (no second UNet), used for the
 * reference log-probs and the drift measure. A pixel view's model is not
 * freed: use engine_start for pixel models the engine should own. The
 * optimizer state is sized to policy->train.numel; st's RNG (has_rng)
 * continues the round shuffles where the checkpoint left them. */
d3_engine *engine_start_dm(d3_dmodel *policy, d3_dmodel *base, d3_state *st, long version,
                           const engine_opts *o, char *err);
/* The policy's family ("pixel", "sd"). */
const char *engine_family(const d3_engine *e);
/* Readable when events are waiting. */
int engine_fd(const d3_engine *e);
/* Queues the sampling of one pair of class cls sharing x_T drawn from seed. */
void engine_sample(d3_engine *e, int cls, uint64_t seed);
/* The same, and the pair also carries logp_base: the log-probabilities of
 * its trajectories under the base model (d3po auto's drift measure; NULL
 * when the engine has no base model), computed on the engine thread. */
void engine_sample_drift(d3_engine *e, int cls, uint64_t seed);
/* One sample request: prompt (or, pixel family, class), seed, whether to add the base log-probs
 * (drift), a tag the pair carries back, and early: may run while a round
 * trains (engine_opts.overlap), from the model in force before it. */
typedef struct {
    int cls;            /* pixel family: used when prompt is NULL */
    const char *prompt; /* the prompt text (copied); conditioned on the engine thread */
    uint64_t seed;
    int drift, early;
    uint64_t tag;
    int n;              /* 0 or 2: a pair; 3..D3_MAX_GROUP: a group of n
                           trajectories from the one x_T (no drift) */
} engine_sample_req;
void engine_sample_ex(d3_engine *e, const engine_sample_req *r);
/* The drift of a pair from engine_sample_drift: the mean over both images
 * and all steps of log p_policy - log p_base; NAN without logp_base. */
double engine_pair_drift(const d3_pair_sample *p);
/* Queues a D3PO round over n labeled pairs (copied; trajectories are
 * copied too, so the caller may free its own). */
void engine_train(d3_engine *e, const d3_pair_sample *const *pairs, const float (*h)[2], int n,
                  int round);
/* With train.all_labels the engine keeps every pair it trained on, and
 * each engine_train round trains over all of them (the round's pairs
 * joined to the earlier ones). engine_remember adds labeled pairs from
 * before this engine started (a resumed session's earlier rounds) to
 * that pool without training: pairs sampled with other steps, cfg or eta,
 * and ties, are left out; without train.all_labels it does nothing.
 * Call it before the first engine_train. */
void engine_remember(d3_engine *e, const d3_pair_sample *const *pairs, const float (*h)[2], int n);
/* Takes one event; 1 if there was one, 0 if the queue is empty. */
int engine_poll(d3_engine *e, d3_event *ev);
void engine_event_free(d3_event *ev);
void engine_pair_free(d3_pair_sample *p);
/* Jobs still queued or running (sampling, training). */
void engine_pending(d3_engine *e, int *sampling, int *training);
/* Cancels the running job at its next step, drops queued jobs, joins the
 * thread and frees everything (events not yet polled are dropped). */
void engine_stop(d3_engine *e);
#endif
