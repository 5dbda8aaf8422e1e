/* weights.h - the tensors of one Stable Diffusion-family component (text
 * encoder, UNet, VAE), read in place from the files a user brings, under
 * their diffusers/transformers names:
 *
 *   - a diffusers folder's component directory (DIR/unet, DIR/vae,
 *     DIR/text_encoder): diffusion_pytorch_model.safetensors or
 *     model.safetensors, their fp16 variants (*.fp16.safetensors), or
 *     shards listed by an index (*.safetensors.index[.fp16].json,
 *     "weight_map": name -> shard file in the same directory);
 *   - a single-file SD 1.x checkpoint (LDM names: model.diffusion_model.*
 *     -> unet, first_stage_model.* -> vae, cond_stage_model.transformer.*
 *     -> text encoder), renamed to diffusers names on open;
 *   - the old diffusers VAE attention names (query/key/value/proj_attn ->
 *     to_q/to_k/to_v/to_out.0), and the LDM VAE's 1x1-convolution
 *     attention weights [C,C,1,1] read as the linear [C,C] they are.
 *
 * Files are memory-mapped (engine/safetensors.h st_map) and F32/F16/BF16
 * tensors are converted straight into the component's flat float buffer
 * (engine/sd/layout.h) by sdw_fill, so a file is read once and the weights
 * are held once, as float32.
 *
 *   sd_weights w;
 *   if (sdw_open_dir(&w, "model/unet", SD_UNET, err)) ...;
 *   // or sdw_open_single(&w, "sd15.safetensors", SD_UNET, err)
 *   const sdw_entry *e = sdw_find(&w, "conv_in.weight");   // shapes, before a layout exists
 *   float *params = calloc(L.numel, sizeof(float));
 *   if (sdw_fill(&w, &L, params, err)) ...;
 *   sdw_free(&w);
 */
#ifndef D3PO_SD_WEIGHTS_H
#define D3PO_SD_WEIGHTS_H

#include <stddef.h>

#include "err.h"
#include "safetensors.h"
#include "layout.h"

typedef enum { SD_TEXT_ENCODER, SD_UNET, SD_VAE, SD_NPARTS } sd_part;

/* "text_encoder", "unet", "vae": the folder names of a diffusers pipeline. */
const char *sd_part_name(sd_part p);

typedef struct {
    char name[SD_NAME_MAX];  /* diffusers/transformers name */
    const char *src;         /* the name in the file (the LDM name for single files) */
    const st_tensor *t;      /* in files[file] */
    int file;
    int squeeze;             /* a [C,C,1,1] or [C,C,1] attention weight read as [C,C] */
} sdw_entry;

typedef struct {
    sd_part part;
    char what[1024];         /* the directory or checkpoint, for messages */
    int single;              /* a single-file checkpoint */
    st_file *files;
    char **paths;            /* each file's path, for messages */
    int nfiles;
    sdw_entry *e;            /* sorted by name */
    int n;
} sd_weights;

/* Opens the weights of a component directory (e.g. "DIR/unet"). Missing
 * files, pickle-only folders, bad indexes and hostile files are one-line
 * errors naming the file. 0/-1. */
int sdw_open_dir(sd_weights *w, const char *dir, sd_part part, char *err);
/* Opens one component of a single-file SD 1.x checkpoint (LDM names).
 * Refuses a file without that component's tensors. 0/-1. */
int sdw_open_single(sd_weights *w, const char *file, sd_part part, char *err);
/* The entry of a diffusers name, or NULL. */
const sdw_entry *sdw_find(const sd_weights *w, const char *name);
/* The file path of an entry (for messages). */
const char *sdw_path(const sd_weights *w, const sdw_entry *e);
/* Fills params (laid out by L) by name: every layout tensor must be present
 * with exactly its shape (the [C,C,1,1] attention weights excepted, see
 * above) and finite; F16/BF16 are converted to float32. A tensor of the
 * files that the layout does not name is an error, except where diffusers
 * ignores it too: the VAE encoder (encoder.*, quant_conv.*) when the
 * layout is decoder-only, and the text encoder's position_ids buffer. 0/-1. */
int sdw_fill(sd_weights *w, const sd_layout *L, float *params, char *err);
/* sdw_fill's checks (names, shapes, dtypes) without reading the data. */
int sdw_check(const sd_weights *w, const sd_layout *L, char *err);
/* 1 when a tensor of part that a layout does not name is dropped (see
 * sdw_fill). */
int sdw_ignorable(sd_part part, const char *name);
/* Number of floats in the component's float tensors (F32/F16/BF16/F64;
 * integer buffers such as position_ids are not weights). */
size_t sdw_numel(const sd_weights *w);
/* The float tensors' dtype: "F32", "F16", "BF16", or "mixed (F16, F32)". */
void sdw_dtype(const sd_weights *w, char *out, size_t cap);
void sdw_free(sd_weights *w);

/* The diffusers name of an LDM name within a component (prefix already
 * removed), for a UNet with layers_per_block lpb and a VAE with nup decoder
 * levels. Returns 1 with out set (and *squeeze for 1x1-conv attention
 * weights), 0 when diffusers' conversion has no such name. Exposed for the
 * tests. */
int sdw_ldm_name(sd_part part, const char *ldm, int lpb, int nup, char *out, size_t cap,
                 int *squeeze);

#endif
