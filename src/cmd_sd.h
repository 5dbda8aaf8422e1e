/* cmd_sd.h - the Stable Diffusion-family halves of d3po's model commands
 * (src/cmd_sd.c), called by cmd_model.c when sd_pipeline_probe says the
 * model path is a diffusers folder or a single-file checkpoint. Each
 * returns the process exit status (0, 1 usage, 2 other errors). */
#ifndef D3PO_CMD_SD_H
#define D3PO_CMD_SD_H

#include <stdint.h>

#include "backend.h"

#define SD_MAX_LORAS 8

/* `d3po info DIR_OR_FILE [--tokenizer DIR]`. */
int sd_info(const char *path, const char *tokenizer);

/* The options of `d3po sample --model DIR_OR_FILE` (cmd_sample parses
 * them; see its help text). */
typedef struct {
    const char *model, *prompt, *negative, *out, *latents, *tokenizer;
    int width, height;   /* --size in pixels; 0: the model's */
    long count, steps;
    double eta, cfg;
    uint64_t seed;
    const char *lora[SD_MAX_LORAS]; /* --lora FILE[:SCALE], in order */
    int nlora;
} sd_sample_args;

/* Samples count images with latent DDIM and writes OUT/<prompt>-<seed>-<i>.png. */
int sd_sample(const sd_sample_args *a, const d3_backend *be);

/* `d3po info DIR_OR_FILE --train [--device D] [--size WxH] [--steps N]`:
 * the expected peak memory and time per labeled pair of LoRA D3PO (and of
 * Diffusion-DPO) on this model and backend, from a calibration run of the
 * training loop's parts at that size (dm_calibrate). */
typedef struct {
    const char *model, *tokenizer;
    int width, height;   /* --size in pixels; 0: the model's */
    int steps;           /* K; sampler.steps of the config when --steps is absent */
    double cfg;          /* sampler.cfg */
    int epochs;          /* d3po.epochs */
    int draws;           /* train.dpo_draws */
    int objective;       /* train.objective (d3po_objective) */
    const char *device;  /* for the output: the backend's note */
} sd_cost_args;

int sd_info_train(const sd_cost_args *a, const d3_backend *be);
/* The report of `info --train` for an opened model with a trainable set
 * (sd: LoRA attached; pixel: all its weights), on be (dm_count_backend's,
 * so the decode scratch is counted): calibrates and prints. base_mb: the
 * process's resident MB before the model was loaded; what: the first
 * line's description of what trains. */
struct d3_dmodel;
int info_train_report(struct d3_dmodel *dm, const sd_cost_args *a, const d3_backend *be,
                      double base_mb, const char *what);
/* This process's resident memory now ("VmRSS") or its peak ("VmHWM"), MB. */
double status_mb(const char *key);

/* `d3po lora`: writes a LoRA file for an SD model (new adapters, or a
 * LoRA file converted to another naming); argv as main's. */
int cmd_lora(int argc, char **argv);

#endif
