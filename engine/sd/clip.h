/* clip.h - CLIP's text encoder (transformers' CLIPTextModel), the
 * conditioning half of a Stable Diffusion pipeline: token ids [N, T] ->
 * last_hidden_state [N, T, D], which diffusers' StableDiffusionPipeline
 * feeds the UNet's cross-attention as it is (no attention mask: SD's
 * text_encoder configs have no use_attention_mask, so encode_prompt passes
 * None; the causal mask alone shapes attention, padding included).
 *
 *   x = token_embedding[ids] + position_embedding[0..T)
 *   per layer:  x += out_proj(mha(q_proj, k_proj, v_proj of layer_norm1(x), causal))
 *               x += fc2(act(fc1(layer_norm2(x))))       act: quick_gelu | gelu
 *   return final_layer_norm(x)
 *
 * Parameters live in one flat buffer laid out by sd_clip_layout under
 * transformers' names (text_model.embeddings.token_embedding.weight, ...),
 * which the loader (engine/sd/weights.h, sdw_fill) fills by name.
 *
 *   sd_clip_config c;  sd_clip_config_from_json(&c, json, "te/config.json", err);
 *   sd_layout L = {0}; sd_clip_layout(&c, &L, err);
 *   ... params (device, L.numel floats) filled ...
 *   d3_tensor *h = sd_clip_forward(tp, &c, &L, params, grads, ids, N, 77);
 *   // or, for the sampler: prompts -> host states, "" for the unconditional
 *   sd_clip_encode(be, &c, &L, params, tk, prompts, 2, states, err);
 */
#ifndef D3PO_SD_CLIP_H
#define D3PO_SD_CLIP_H

#include <jansson.h>
#include <stdint.h>

#include "backend.h"
#include "sd/layout.h"
#include "sd/tokenizer.h"
#include "tape.h"

enum { SD_ACT_QUICK_GELU, SD_ACT_GELU };

typedef struct {
    int vocab_size;              /* 49408 */
    int hidden_size;             /* D: 768 (SD 1), 1024 (SD 2) */
    int intermediate_size;       /* 3072, 4096 */
    int num_hidden_layers;       /* 12, 23 */
    int num_attention_heads;     /* 12, 16 */
    int max_position_embeddings; /* 77 */
    int hidden_act;              /* SD_ACT_* */
    float layer_norm_eps;        /* 1e-5 */
} sd_clip_config;

/* Reads a text_encoder/config.json object. Keys missing take
 * CLIPTextConfig's defaults (as transformers does); a key of the wrong
 * type or an unsupported value (hidden_act other than quick_gelu/gelu,
 * hidden_size not a multiple of the heads, a head wider than 160, an
 * architecture other than CLIPTextModel) is a one-line error naming path
 * and key. */
int sd_clip_config_from_json(sd_clip_config *c, const json_t *j, const char *path, char *err);

/* Every tensor of CLIPTextModel's state dict under its transformers name
 * (the non-persistent position_ids buffer is not a parameter). */
int sd_clip_layout(const sd_clip_config *c, sd_layout *L, char *err);

/* The encoder on the tape: ids [N, T] host ints in [0, vocab_size) (checked
 * by the caller: sd_clip_encode checks), T <= max_position_embeddings;
 * params/grads device buffers laid out by L (grads NULL = frozen).
 * Returns last_hidden_state [N, T, 1, D]. */
d3_tensor *sd_clip_forward(d3_tape *tp, const sd_clip_config *c, const sd_layout *L,
                           const float *params, float *grads, const int32_t *ids, int N, int T);

/* prompts[0..n) -> tokenizer -> encoder -> out (host, n x T x D floats,
 * T = sd_tokenizer_max_length(tk)), on a tape of its own over backend be
 * with gradients off. "" is the unconditional prompt for classifier-free
 * guidance. Returns 0, or -1 with err set (a token id outside the
 * vocabulary, T longer than the position table, out of memory). */
int sd_clip_encode(const d3_backend *be, const sd_clip_config *c, const sd_layout *L,
                   const float *params, const sd_tokenizer *tk, const char *const *prompts, int n,
                   float *out, char *err);

#endif
