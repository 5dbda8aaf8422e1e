/* sdunet.h - Stable Diffusion's denoiser: diffusers' UNet2DConditionModel
 * as SD 1.x, SD 2.x and BK-SDM configure it, its config (unet/config.json),
 * its parameter table under diffusers' state_dict names, and its forward
 * pass on the tape (the reverse walk of the tape is the backward).
 *
 * ARCHITECTURE (diffusers 0.31 UNet2DConditionModel, the keys this file
 * supports; B = nblocks, boc = block_out_channels, E = 4*boc[0]):
 *   temb = time_embedding.linear_2(silu(time_embedding.linear_1(
 *              sinusoid(t, boc[0], flip_sin_to_cos, freq_shift))))   [N,E]
 *   eact = silu(temb)                       (shared by every resnet)
 *   h = conv_in(x)  3x3;  skips = [h]
 *   down_blocks.i (i < B): resnets.j (j < layers[i]) then, in a
 *       CrossAttnDownBlock2D, attentions.j; push h after each j;
 *       downsamplers.0.conv (3x3 stride 2, pad downsample_padding) unless
 *       i is the last block; push h
 *   mid_block (UNetMidBlock2DCrossAttn, absent in BK-SDM): resnets.0,
 *       attentions.0, resnets.1
 *   up_blocks.i (boc reversed, heads reversed): resnets.j for j <=
 *       layers[B-1-i], input concat(h, skips.pop()) (h first); then
 *       attentions.j in a CrossAttnUpBlock2D; upsamplers.0.conv (nearest
 *       2x, then 3x3) unless i is the last block
 *   out = conv_out(silu(conv_norm_out(h)))     GroupNorm(groups, norm_eps)
 *
 *   resnet (ResnetBlock2D, in -> out): h = conv1(silu(norm1(x)));
 *       h += time_emb_proj(eact)[:, :, None, None]; h = conv2(silu(norm2(h)));
 *       return h + (conv_shortcut(x) if in != out else x)
 *       norm1/norm2: GroupNorm(groups, norm_eps)
 *   attention (Transformer2DModel over C channels, heads n, head dim
 *       d = C / n, inner = n*d): r = x; h = norm(x) (GroupNorm eps 1e-6);
 *       proj_in (1x1 conv, or Linear over tokens with use_linear_projection);
 *       tokens [N, HW, inner]; transformer_blocks.k (k < tlayers):
 *           h += attn1(norm1(h))               self-attention
 *           h += attn2(norm2(h), context)      cross-attention
 *           h += ff.net.2(geglu(ff.net.0.proj(norm3(h))))   inner*4 hidden
 *       (LayerNorm eps 1e-5; to_q/to_k/to_v without bias, to_out.0 with);
 *       proj_out back to C; return h + r
 * Multi-head attention is tape_mha: softmax(q k^T / sqrt(d)) v with no
 * T x T matrix kept. upcast_attention only changes the dtype of the scores
 * in half precision: everything here is float32, so it has no effect.
 *
 * Shapes: x [N, in_channels, h, w] with h and w divisible by 2^(B-1)
 * (diffusers interpolates odd sizes; we do not); t: N host floats;
 * context: a token tensor [N, T, 1, cross_attention_dim] (T = 77 for SD).
 */
#ifndef D3PO_SD_SDUNET_H
#define D3PO_SD_SDUNET_H

#include <jansson.h>

#include "backend.h"
#include "err.h"
#include "layout.h"
#include "tape.h"

#define SDU_MAX_BLOCKS 6
#define SDU_MAX_LAYERS 16  /* layers_per_block */

typedef struct {
    int in_channels, out_channels;      /* 4, 4 */
    int sample_size;                    /* latent size the model was trained at (0: unset) */
    int nblocks;
    int down_cross[SDU_MAX_BLOCKS];     /* 1: CrossAttnDownBlock2D, 0: DownBlock2D */
    int up_cross[SDU_MAX_BLOCKS];       /* 1: CrossAttnUpBlock2D, 0: UpBlock2D (up order) */
    int block_out[SDU_MAX_BLOCKS];      /* block_out_channels */
    int layers[SDU_MAX_BLOCKS];         /* layers_per_block, per down block */
    int heads[SDU_MAX_BLOCKS];          /* attention heads per down block */
    int tlayers[SDU_MAX_BLOCKS];        /* transformer_layers_per_block, per down block */
    int cross_dim;                      /* cross_attention_dim */
    int linear_proj;                    /* use_linear_projection */
    int groups;                         /* norm_num_groups */
    float norm_eps;                     /* resnets and conv_norm_out */
    int mid;                            /* 1: UNetMidBlock2DCrossAttn, 0: none (BK-SDM) */
    int flip_sin_to_cos;
    float freq_shift;
    int downsample_padding;
    int upcast_attention;               /* recorded; no effect in float32 */
} sd_unet_config;

/* Reads a diffusers unet/config.json (j: its parsed object; path: for
 * messages). Every key SD 1.x/2.x/BK-SDM use is read; keys of other
 * architectures set to a non-default value (SDXL's addition_embed_type,
 * class_embed_type, other block types, ...) are a one-line error naming
 * path and key. Keys unknown to diffusers' UNet2DConditionModel (e.g.
 * "_diffusers_version") are ignored, as its from_config ignores them.
 * Returns 0 or -1 with err set. */
int sd_unet_config_from_json(sd_unet_config *c, const json_t *j, const char *path, char *err);

/* Every tensor of the model under its diffusers name and shape, in the
 * order the forward pass uses them. *L must be zeroed. Returns 0 or -1. */
int sd_unet_layout(const sd_unet_config *c, sd_layout *L, char *err);

/* Records eps = unet(x, t, context) on the tape: x [N, in, h, w], t (N host
 * floats, the scheduler's timesteps), context [N, T, 1, cross_dim]. params
 * and grads (NULL: frozen) are device buffers laid out by L (built by
 * sd_unet_layout from the same c). Returns [N, out, h, w]. The caller
 * checks h, w with sd_unet_check_size first. */
d3_tensor *sd_unet_forward(d3_tape *tp, const sd_unet_config *c, const sd_layout *L,
                           const float *params, float *grads, d3_tensor *x, const float *t,
                           d3_tensor *context);

/* The same forward for inference only (no gradients), in bounded memory:
 * the same ops in the same order as sd_unet_forward (so the same numbers),
 * but each stage (every resnet with its attention, every down/upsampler,
 * the mid block, the output layers) runs on one of two scratch tapes in
 * turn; only the skips, the time embedding and the context are kept
 * throughout. x: device [N, in, h, w]; t: N host floats; context: device
 * [N, T, cross_dim]; out: device [N, out, h, w], written. Returns 0, or -1
 * with err when the scratch tapes cannot be made. */
int sd_unet_forward_lowmem(const d3_backend *be, const sd_unet_config *c, const sd_layout *L,
                           const float *params, const float *x, int N, int h, int w,
                           const float *t, const float *context, int T, float *out, char *err);

/* 0 when a latent of h x w fits the model (divisible by 2^(nblocks-1)), else
 * -1 with err saying what is expected. */
int sd_unet_check_size(const sd_unet_config *c, int h, int w, char *err);

#endif
