/* pipeline.h - a Stable Diffusion-family pipeline as the user brings it: a
 * diffusers folder (model_index.json, scheduler/, text_encoder/,
 * tokenizer/, unet/, vae/) or a single-file SD 1.x checkpoint. Opening
 * checks the pipeline class, reads the scheduler config, reads (folder) or
 * derives from tensor shapes (single file) each component's config.json,
 * and maps each component's weights (engine/sd/weights.h); the
 * components' own parsers (sd_clip/unet/vae_config_from_json) then read
 * those configs.
 *
 *   sd_pipeline p;
 *   if (sd_pipeline_open(&p, "path/to/model", NULL, err)) ...;   // or a .safetensors file
 *   const json_t *ucfg = p.config[SD_UNET];     // diffusers' unet/config.json
 *   sd_weights *uw = &p.weights[SD_UNET];       // sdw_fill(uw, &layout, params, err)
 *   sd_pipeline_close(&p);
 *
 * The scheduler is read for DDIM sampling whatever its class (SD 1.5 ships
 * PNDM's config): only the values that define the noise schedule and the
 * model's output are used, and values DDIM cannot honour are errors. */
#ifndef D3PO_SD_PIPELINE_H
#define D3PO_SD_PIPELINE_H

#include <jansson.h>

#include "clip.h"
#include "err.h"
#include "sdunet.h"
#include "vae.h"
#include "weights.h"

typedef enum { SD_BETA_SCALED_LINEAR, SD_BETA_LINEAR } sd_beta_schedule;
typedef enum { SD_PRED_EPSILON, SD_PRED_V } sd_prediction;

typedef struct {
    char class_name[96];       /* "DDIMScheduler", "PNDMScheduler", ... (informative) */
    int num_train_timesteps;   /* T, 1000 */
    double beta_start, beta_end;
    sd_beta_schedule beta_schedule;
    int steps_offset;          /* 1 in SD */
    int set_alpha_to_one;      /* the last step's abar_prev: 1, or abar[0] */
    sd_prediction prediction;
    int clip_sample;           /* clip x0 to +-clip_sample_range (false in SD) */
    double clip_sample_range;
} sd_sched;

/* The SD 1.x scheduler (scaled_linear 0.00085..0.012, T 1000, steps_offset
 * 1, set_alpha_to_one false, epsilon, no clipping): single files use it. */
sd_sched sd_sched_sd1(void);
/* Reads scheduler_config.json's values: beta_schedule (scaled_linear |
 * linear), beta_start, beta_end, num_train_timesteps, steps_offset,
 * set_alpha_to_one, prediction_type (epsilon | v_prediction), clip_sample,
 * clip_sample_range; refuses trained_betas, thresholding,
 * rescale_betas_zero_snr and a timestep_spacing other than "leading".
 * Missing keys take diffusers' DDIMScheduler defaults. path names the file
 * in messages. 0/-1. */
int sd_sched_from_json(sd_sched *s, const json_t *j, const char *path, char *err);
/* abar[T]: the cumulative products of 1 - beta, in float32 like diffusers. */
void sd_sched_abar(const sd_sched *s, float *abar);
/* DDIM with K steps as diffusers' DDIMScheduler ("leading" spacing):
 * ts[k] = (K-1-k) * (T/K) + steps_offset, abar_t[k] = abar[ts[k]],
 * abar_prev[k] = abar[ts[k] - T/K], or for the last step (index < 0)
 * 1 when set_alpha_to_one else abar[0]. K=20, offset 1: 951, 901, ..., 1.
 * Returns 0, or -1 when K is out of 1..T or a timestep leaves 0..T-1. */
int sd_sched_plan(const sd_sched *s, int K, int *ts, double *abar_t, double *abar_prev, char *err);

typedef struct {
    char path[1024];           /* the folder or the file */
    int single;                /* a single-file checkpoint */
    char family[32];           /* "SD 1.x", "SD 2.x", "BK-SDM" */
    sd_sched sched;
    char sched_path[1100];     /* for messages */
    json_t *config[SD_NPARTS]; /* each component's config.json (derived for single files) */
    char config_path[SD_NPARTS][1100];
    sd_weights weights[SD_NPARTS];
    char tokenizer[1100];      /* the folder holding vocab.json and merges.txt */
    sd_clip_config clip;       /* parsed by the components' own parsers */
    sd_unet_config unet;
    sd_vae_config vae;
    sd_layout L[SD_NPARTS];    /* each part's layout, checked against its files
                                  (names, shapes, dtypes); n == 0: not built */
} sd_pipeline;

/* Opens a diffusers folder or a single-file checkpoint (a regular file).
 * tokenizer: a folder with CLIP's vocab.json + merges.txt to use instead of
 * the pipeline's tokenizer/ (single files have none: NULL looks for a
 * tokenizer/ folder beside the file). Each component's config is parsed
 * by its own parser, its layout built, and every tensor of its files
 * checked against the layout (sdw_check: names, shapes, dtypes; the data
 * are read only by sd_pipeline_fill). SDXL, SD 2.x single files, inpainting
 * models, other pipelines, missing files and bad configs are one-line
 * errors naming the file and the key. 0/-1. */
int sd_pipeline_open(sd_pipeline *p, const char *path, const char *tokenizer, char *err);
void sd_pipeline_close(sd_pipeline *p);
/* Converts part's weights into params (p->L[part].numel floats, host
 * memory) with sdw_fill. 0/-1. */
int sd_pipeline_fill(sd_pipeline *p, sd_part part, float *params, char *err);
/* 1 when path looks like an SD-family model rather than a d3po model file:
 * a folder, or a safetensors file without d3po's metadata whose tensors
 * have LDM checkpoint names (model.diffusion_model.*, conditioner.*,
 * cond_stage_model.*). Used by `d3po info` and `d3po sample` to choose. */
int sd_pipeline_probe(const char *path);

/* Reads a JSON file into *out (caller json_decref's); errors name the
 * path, the line and column. 0/-1. */
int sd_json_load(json_t **out, const char *path, char *err);

#endif
