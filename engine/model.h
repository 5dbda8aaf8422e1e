/* model.h - a diffusion model as d3po keeps it: the UNet layout, its flat
 * parameters (host memory; a device backend uploads a copy), the class
 * names (prompts) and the noise schedule; plus loading and saving it as
 * safetensors, with or without training state (AdamW moments, RNG).
 *
 * File format (safetensors): one F32 tensor per parameter under its
 * PyTorch name; with training state also "adam.m.<name>" and
 * "adam.v.<name>". __metadata__ keys:
 *   d3po.format    "1"
 *   d3po.arch      unet_arch_format() string
 *   d3po.classes   JSON array of class names (index = class id)
 *   d3po.schedule  "linear T beta_start beta_end", e.g. "linear 1000 0.0001 0.02"
 *   d3po.version   program version that wrote it
 *   d3po.adam      (training state) "step=S lr=.. beta1=.. beta2=.. eps=.. wd=.."
 *   d3po.rng       (training state) "seed stream counter"
 *   d3po.ema       (training state) EMA decay; tensors "ema.<name>"
 * plus any extra string pairs the caller adds (model_set_meta).
 */
#ifndef D3PO_MODEL_H
#define D3PO_MODEL_H

#include <stdint.h>

#include "err.h"
#include "optim.h"
#include "rng.h"
#include "unet.h"

#define D3_T_MAX 4000

typedef struct {
    int T;                /* training steps, 1000 */
    double beta_start, beta_end;
    double abar[D3_T_MAX]; /* cumulative product of (1 - beta_t), t = 0..T-1 */
} d3_schedule;

/* Linear betas beta_start..beta_end over T steps (in double). 0/-1. */
int schedule_init(d3_schedule *s, int T, double beta_start, double beta_end, char *err);

typedef struct {
    unet_layout L;
    float *params;        /* [L.numel] host */
    int nclasses;
    char **class_names;   /* [nclasses] */
    d3_schedule sched;
    int nmeta;            /* extra metadata pairs carried along */
    char **meta_keys, **meta_vals;
    /* Device copy of params (model_params_dev). gen counts host writes
     * (model_touch); the copy is refreshed when its gen is older. */
    unsigned long gen;
    struct d3_devcopy *dev;
} d3_model;

/* Training state saved beside the weights in a checkpoint. Every pointer
 * may be NULL (not saved / not wanted). On load, the has_* flags tell what
 * the file held; ema is malloc'd by model_load when present and wanted. */
typedef struct {
    d3_adamw opt;
    d3_rng rng;
    float *ema;        /* [numel] exponential moving average of the weights */
    float ema_decay;
    int has_opt, has_rng, has_ema;
} d3_state;

/* A new model with parameters initialised from seed; class names from
 * names[] (may be NULL: "class0".."classK-1"). */
int model_init(d3_model *m, const unet_arch *a, const char *const *names, uint64_t seed, char *err);
/* Loads a model and, when st is non-NULL, whatever training state the file
 * holds (st->has_*). Every parameter must be present with its exact shape
 * as F32 and finite; names not belonging to the model are an error. */
int model_load(d3_model *m, const char *path, d3_state *st, char *err);
/* Saves atomically: the weights, plus the parts of st whose has_* flag is
 * set (st may be NULL: weights only). */
int model_save(const d3_model *m, const char *path, const d3_state *st, char *err);
void state_free(d3_state *st);
int model_copy(d3_model *dst, const d3_model *src, char *err);
void model_free(d3_model *m);
/* Class id for a prompt: exact name match, else a decimal id; -1 if none. */
int model_find_class(const d3_model *m, const char *prompt);
/* The parameters as backend be sees them: m->params itself on a host
 * backend, else a device copy, uploaded when the host parameters changed
 * since (model_touch). NULL only when device memory runs out. The copy is
 * freed by model_free. Not thread-safe: one thread uses a model at a time. */
float *model_params_dev(const d3_model *m, const d3_backend *be);
/* Call after writing m->params on the host. */
void model_touch(d3_model *m);
/* After updating the device copy in place (training on the device):
 * downloads it into m->params, leaving both in step. */
void model_pull(d3_model *m);
/* Sets (or replaces) an extra metadata pair saved with the model. */
int model_set_meta(d3_model *m, const char *key, const char *val);
const char *model_get_meta(const d3_model *m, const char *key);
#endif
