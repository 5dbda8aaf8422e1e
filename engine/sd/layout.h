/* layout.h - the parameter table of a Stable Diffusion-family component
 * (text encoder, UNet, VAE): every tensor under its diffusers/transformers
 * name with its shape and its offset in one flat float buffer, the same
 * "flat buffer named like a state_dict" convention as the default model
 * (engine/unet.h). A component's code builds its layout from its config
 * (sd_layout_add in the order it likes), the loader fills the flat buffer
 * by name with shape checks, and the forward pass looks tensors up once
 * (sd_layout_find) and keeps offsets.
 *
 *   sd_layout L = {0};
 *   int64_t s[2] = {320, 1280};
 *   sd_layout_add(&L, "time_embedding.linear_1.weight", 2, s);
 *   ...
 *   float *params = calloc(L.numel, sizeof(float));
 *   const sd_param *p = sd_layout_find(&L, "time_embedding.linear_1.weight");
 *   float *w = params + p->off;
 *   sd_layout_free(&L);
 */
#ifndef D3PO_SD_LAYOUT_H
#define D3PO_SD_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define SD_NAME_MAX 160
#define SD_MAX_DIMS 4

typedef struct {
    char name[SD_NAME_MAX];
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    size_t numel;
    size_t off;      /* in floats, into the component's flat buffer */
} sd_param;

typedef struct {
    sd_param *p;
    int n, cap;
    size_t numel;    /* total floats */
} sd_layout;

/* Appends a tensor; offsets are assigned in order, each tensor starting on
 * a multiple of 16 floats (64 bytes) so vector loads and device copies stay
 * aligned. Returns the new entry, or NULL when memory runs out or the name
 * is too long or already present (programmer errors: names come from code). */
const sd_param *sd_layout_add(sd_layout *L, const char *name, int ndim, const int64_t *shape);
/* printf-style name, for the many numbered blocks. */
const sd_param *sd_layout_addf(sd_layout *L, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The entry of name, or NULL. */
const sd_param *sd_layout_find(const sd_layout *L, const char *name);
void sd_layout_free(sd_layout *L);

#endif
