/* sdsample.h - a loaded Stable Diffusion-family model and latent DDIM
 * sampling on it: the pipeline's files (engine/sd/pipeline.h) turned into
 * device parameter buffers for the text encoder, UNet and VAE decoder,
 * prompts encoded by CLIP, DDIM in latent space with classifier-free
 * guidance and per-step log-probabilities, and decoding to 8-bit RGB.
 *
 * The step is DESIGN.md's ("Sampling and log-probabilities") in latent
 * space, as diffusers' DDIMScheduler computes it for these models: the
 * folder's schedule and steps_offset (t_k = 951, 901, ..., 1 for K = 20
 * with offset 1), the last step's prev alpha per set_alpha_to_one, no x0
 * clipping (unless the config sets clip_sample), v-prediction converted to
 * eps (engine/diffusion.c ddim_step_pred); log-probs are the MEAN over the
 * latent elements (ddim_logprob). Guidance as diffusers: w > 1 runs the
 * conditional and unconditional (negative or "") prompts, eps = u + w (c -
 * u); w <= 1 runs the conditional prompt alone.
 *
 *   sd_model m;
 *   if (sd_model_load(&m, "model_dir", NULL, backend, err)) ...;
 *   float *ctx = malloc(2 * sd_model_ctx_floats(&m) * sizeof(float));
 *   const char *pr[2] = {"a cat", ""};
 *   sd_model_encode(&m, pr, 2, ctx, err);                 // cond, uncond
 *   sd_ddim_sample(&m, tp, &opts, 1, ctx, ctx + T*D, x, h, w, rngs, traj, logp, err);
 *   sd_model_decode(&m, tp, x, h, w, rgb, err);          // [8h][8w][3]
 *   sd_model_free(&m);
 */
#ifndef D3PO_SD_SAMPLE_H
#define D3PO_SD_SAMPLE_H

#include <stdint.h>

#include "backend.h"
#include "diffusion.h"
#include "rng.h"
#include "sd/clip.h"
#include "sd/pipeline.h"
#include "sd/tokenizer.h"
#include "tape.h"

typedef struct {
    sd_pipeline p;
    const d3_backend *be;
    sd_tokenizer *tok;
    float *params[SD_NPARTS];  /* device buffers laid out by p.L[part] */
    int T, D;                  /* text states: tokens, width */
    int latent_c;              /* latent channels */
    int factor;                /* image pixels per latent pixel */
    const struct lora_set *lora; /* UNet adapters applied when sampling (engine/lora.h), or NULL */
} sd_model;

/* Opens the pipeline (see sd_pipeline_open; tokenizer may be NULL), reads
 * the tokenizer, and converts every part's weights into device buffers of
 * backend be (on the CPU straight from the mapped files into the buffers
 * the ops read), then unmaps the files (m->p.weights are closed; configs
 * and layouts stay). 0/-1 with err naming the file. */
int sd_model_load(sd_model *m, const char *path, const char *tokenizer, const d3_backend *be,
                  char *err);
void sd_model_free(sd_model *m);
/* Floats of one prompt's text states (T * D). */
size_t sd_model_ctx_floats(const sd_model *m);
/* n prompts -> their text states, host [n][T][D]. 0/-1. */
int sd_model_encode(sd_model *m, const char *const *prompts, int n, float *ctx, char *err);

/* Records the UNet on batch [x (cond) ; x (uncond)] (cfg > 1) or [x
 * (cond)], cond [n][T*D], uncond [T*D] host; grads: the UNet's gradient
 * buffer (NULL: frozen); m->lora's adapters apply (with gradients into
 * their grads when set). Returns the raw output [nb][C*h*w], *nb_out = nb.
 * The caller resets the tape and checks h, w. */
d3_tensor *sd_unet_forward_cfg(sd_model *m, d3_tape *tp, float *grads, int n, const float *x, int h,
                               int w, int t, const float *cond, const float *uncond, float cfg,
                               int *nb_out);
/* Latent DDIM of n images of h x w latents (o: steps, eta, cfg). cond
 * [n][T*D] text states of each image's prompt, uncond [T*D] (used when
 * cfg > 1). x [n][C*h*w]: in x_T, out x_0. rngs[n] the step-noise streams
 * (advanced; eta 0 draws nothing). traj [n][K+1][C*h*w] and logp [n][K]
 * may be NULL; logp needs sigma > 0 at every step (eta > 0, and
 * set_alpha_to_one false for the last step). 0/-1. */
int sd_ddim_sample(sd_model *m, d3_tape *tp, const ddim_opts *o, int n, const float *cond,
                   const float *uncond, float *x, int h, int w, d3_rng *rngs, float *traj,
                   float *logp, char *err);
/* Teacher-forced log-probs of one stored trajectory traj [K+1][C*h*w]
 * (the reference log-probs D3PO caches): logp [K]. Needs eta > 0. 0/-1. */
int sd_traj_logp(sd_model *m, d3_tape *tp, const ddim_opts *o, const float *cond,
                 const float *uncond, const float *traj, int h, int w, float *logp, char *err);
/* Decodes n latents [n][C*h*w] to 8-bit RGB [n][H][W][3], H = h*factor,
 * as diffusers' VaeImageProcessor does, with the VAE's low-memory decode
 * (tp unused). 0/-1. */
int sd_model_decode(sd_model *m, d3_tape *tp, const float *x, int n, int h, int w, uint8_t *rgb,
                    char *err);

#endif
