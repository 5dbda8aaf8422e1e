/* cmd_sd.h - the Stable Diffusion-family halves of d3po's model commands
 * (src/cmd_sd.c), called by cmd_model.c when sd_pipeline_probe says the
 * model path is a diffusers folder or a single-file checkpoint. Each
 * returns the process exit status (0, 1 usage, 2 other errors). */
#ifndef D3PO_CMD_SD_H
#define D3PO_CMD_SD_H

#include <stdint.h>

#include "backend.h"

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
} sd_sample_args;

/* Samples count images with latent DDIM and writes OUT/<prompt>-<seed>-<i>.png. */
int sd_sample(const sd_sample_args *a, const d3_backend *be);

#endif
