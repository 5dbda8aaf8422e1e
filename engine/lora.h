/* lora.h - LoRA adapters on the linear layers of a Stable Diffusion-family
 * UNet (Hu et al. 2021, as the D3PO paper's official code tunes SD): for
 * a frozen linear y = W x + b over `in` -> `out` features, an adapter adds
 *
 *   y += (alpha / rank) * scale * up(down(x))      down [rank, in], up [out, rank]
 *
 * The base weights are never touched: switching the adapters off (no set,
 * or scale 0) gives the base model, which is D3PO's reference for this
 * family, with no second copy of the UNet. Gradients flow only into the
 * adapters' own flat buffer.
 *
 * Layout. A set is a list of modules named by diffusers' module paths
 * (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), each
 * with its rank, alpha, in, out and the offsets of its down and up
 * matrices in the set's flat buffer (down then up, module after module, in
 * the UNet layout's order). params and grads are float buffers of the
 * backend the tape runs on (host memory: the CPU backend).
 *
 * Defaults (the official D3PO code: diffusers' LoRAAttnProcessor of its
 * time): rank 4 on to_q, to_k, to_v and to_out.0 of every UNet attention,
 * no network alpha (alpha = rank, so alpha / rank = 1), down ~ N(0, 1/rank^2)
 * (std 1/rank), up = 0 so the adapted model starts equal to the base.
 *
 * The UNet forward applies a set through sdb_dense (engine/sd/sdblocks.c):
 * sd_unet_forward_lora(..., set) (NULL: the base). Several sets (several
 * `--lora FILE:SCALE`) chain through `next` and all apply.
 *
 *   lora_set s;
 *   if (lora_init(&s, &unet_layout, NULL, 0, 4, 4.0f, seed, err)) ...;  // defaults
 *   s.grads = calloc(s.numel, sizeof(float));        // training: adapter gradients
 *   y = sd_unet_forward_lora(tp, &cfg, &L, params, NULL, x, t, ctx, &s);
 *   tape_backward(tp, y, dy);                          // s.grads += dL/dadapters
 *   lora_save(&s, "out.safetensors", LORA_KOHYA, err);
 *   lora_free(&s);
 *
 * Files (lora_save / lora_load), every tensor F32 (read: F32/F16/BF16):
 *   LORA_KOHYA     lora_unet_<path with . as _>.lora_down.weight [r, in],
 *                  .lora_up.weight [out, r], .alpha (scalar): what
 *                  AUTOMATIC1111, ComfyUI and diffusers' load_lora_weights read
 *   LORA_DIFFUSERS unet.<path>.lora.down.weight, unet.<path>.lora.up.weight:
 *                  diffusers' own naming, which has no alpha (diffusers
 *                  uses scale 1): alpha / rank is multiplied into up
 *   read also:     unet.<path>.lora_A.weight / .lora_B.weight (peft, as
 *                  diffusers' save_lora_weights writes them)
 */
#ifndef D3PO_LORA_H
#define D3PO_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "sd/layout.h"
#include "tape.h"

typedef struct {
    char name[SD_NAME_MAX];  /* module path: "....attn1.to_q" */
    int in, out, rank;
    float alpha;
    size_t down, up;         /* offsets (floats) of down [rank, in] and up [out, rank] */
} lora_module;

typedef struct lora_set {
    lora_module *m;
    int n;
    size_t numel;            /* floats in params (and grads) */
    float *params;           /* owned */
    float *grads;            /* NULL: frozen (sampling); owned by the caller */
    float scale;             /* multiplier of every adapter (1; 0: off) */
    const struct lora_set *next; /* another set applied as well, or NULL */
} lora_set;

typedef enum { LORA_KOHYA, LORA_DIFFUSERS } lora_naming;

/* The default targets: to_q, to_k, to_v, to_out.0. */
extern const char *const lora_default_targets[];
extern const int lora_ndefault_targets;

/* A set of zero-initialised up and N(0, 1/rank^2) down matrices (seed) on
 * every linear weight [out, in] of the UNet layout L whose module path
 * ends in one of targets (".to_q", ...; NULL: the defaults) and lies in an
 * attention block (the layers the forward runs through sdb_dense). rank
 * 1..1024, alpha > 0. A target that matches no module is a one-line error
 * naming it. 0/-1. */
int lora_init(lora_set *s, const sd_layout *L, const char *const *targets, int ntargets, int rank,
              float alpha, uint64_t seed, char *err);
void lora_free(lora_set *s);
/* Device placement for a backend whose memory is not the host's (a GPU):
 * lora_upload moves s->params there (host copy freed; no-op on a host
 * backend); lora_free_on frees a set so placed. 0/-1. */
struct d3_backend;
int lora_upload(lora_set *s, const struct d3_backend *be, char *err);
void lora_free_on(lora_set *s, const struct d3_backend *be);
/* The module of that path, or NULL. */
const lora_module *lora_find(const lora_set *s, const char *path);

/* y (the frozen linear's output over x, tokens [.., in] -> [.., out]) plus
 * every adapter of module `path` in the chain s (NULL: y unchanged), on
 * the tape, with gradients into each set's grads when it has them. */
d3_tensor *lora_apply(d3_tape *tp, const lora_set *s, const char *path, d3_tensor *x,
                      d3_tensor *y);

/* Writes s (its scale is not written: a file holds the adapters at 1)
 * atomically in the naming chosen. 0/-1. */
int lora_save(const lora_set *s, const char *path, lora_naming naming, char *err);
/* Reads a LoRA file in any of the namings above against the UNet layout L:
 * every module must be a linear layer of an attention block of L with the
 * file's in/out, down and up of one rank, finite values; text-encoder
 * adapters, unknown names and hostile files are one-line errors naming the
 * file and the tensor. scale = 1, grads NULL. 0/-1. */
int lora_load(lora_set *s, const char *path, const sd_layout *L, char *err);

#endif
