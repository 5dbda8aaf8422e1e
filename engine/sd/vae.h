/* vae.h - Stable Diffusion's image decoder: the decoding path of diffusers'
 * AutoencoderKL (vae/config.json), its parameter table under diffusers'
 * current names, the forward pass on the tape, and the conversion of its
 * output to 8-bit RGB exactly as diffusers' VaeImageProcessor does it.
 *
 * Only decoding: D3PO samples from noise and never encodes an image, so the
 * encoder (encoder.*, quant_conv.*) is neither in the layout nor run; the
 * loader ignores those tensors.
 *
 * ARCHITECTURE (diffusers 0.31 AutoencoderKL.decode; boc = block_out_channels,
 * B = its length, R = layers_per_block, G = norm_num_groups, every
 * GroupNorm eps 1e-6):
 *   z = latents / scaling_factor
 *   z = post_quant_conv(z)          1x1, latent -> latent (use_post_quant_conv)
 *   h = decoder.conv_in(z)          3x3, latent -> boc[B-1]
 *   decoder.mid_block: resnets.0, attentions.0 (mid_block_add_attention),
 *       resnets.1 over boc[B-1] channels
 *   decoder.up_blocks.i (i < B, channels boc[B-1-i]): resnets.j (j <= R;
 *       the first from the previous block's channels), then
 *       upsamplers.0.conv (nearest 2x, 3x3) unless i is the last block
 *   image = decoder.conv_out(silu(decoder.conv_norm_out(h)))   3x3 -> out
 *
 *   resnet: h = conv1(silu(norm1(x))); h = conv2(silu(norm2(h)));
 *       return h + (conv_shortcut(x) if in != out else x)     (no time input)
 *   attention (one head over the HW tokens, C channels):
 *       h = group_norm(x) as tokens [N, HW, C]; q, k, v = to_q, to_k, to_v
 *       (Linear with bias); o = softmax(q k^T / sqrt(C)) v;
 *       return to_nchw(to_out.0(o)) + x
 * The old attention names of diffusers < 0.14 (query, key, value,
 * proj_attn) are the loader's to map onto to_q, to_k, to_v, to_out.0.
 */
#ifndef D3PO_SD_VAE_H
#define D3PO_SD_VAE_H

#include <jansson.h>
#include <stdint.h>

#include "backend.h"
#include "err.h"
#include "layout.h"
#include "tape.h"

#define SDV_MAX_BLOCKS 6

typedef struct {
    int in_channels, out_channels;      /* image channels (3): out is decoded */
    int latent_channels;                /* 4 */
    int nblocks;
    int block_out[SDV_MAX_BLOCKS];
    int layers;                         /* layers_per_block */
    int groups;                         /* norm_num_groups */
    float scaling_factor;               /* 0.18215 (SD 1.x/2.x) */
    int post_quant_conv;                /* use_post_quant_conv */
    int mid_attn;                       /* mid_block_add_attention */
    int sample_size;                    /* image size the model was trained at */
} sd_vae_config;

/* Reads a diffusers vae/config.json (see sd_unet_config_from_json for the
 * rules). Returns 0 or -1 with err naming path and key. */
int sd_vae_config_from_json(sd_vae_config *c, const json_t *j, const char *path, char *err);

/* The decoder's tensors (post_quant_conv.*, decoder.*) under diffusers'
 * names, in the order the forward pass uses them. *L must be zeroed. */
int sd_vae_layout(const sd_vae_config *c, sd_layout *L, char *err);

/* Records image = decode(latents / scaling_factor) on the tape:
 * latents [N, latent_channels, h, w] -> [N, out_channels, h*2^(B-1),
 * w*2^(B-1)], nominally in [-1, 1] (not clamped here). */
d3_tensor *sd_vae_decode(d3_tape *tp, const sd_vae_config *c, const sd_layout *L,
                         const float *params, float *grads, d3_tensor *latents);

/* The same decode for inference only (no gradients), in bounded memory:
 * the same ops in the same order as sd_vae_decode (so the same numbers),
 * but each stage (the mid block, every resnet, every upsampler, the output
 * layers) runs on one of two scratch tapes in turn, so only two stages'
 * activations are held instead of the whole decoder's (SD's VAE at 512x512:
 * about 8 GB on one tape). latents: device [N, latent_channels, h, w];
 * out: device [N, out_channels, h*2^(B-1), w*2^(B-1)] floats, written.
 * Returns 0, or -1 with err when the scratch tapes cannot be made. */
int sd_vae_decode_lowmem(const d3_backend *be, const sd_vae_config *c, const sd_layout *L,
                         const float *params, const float *latents, int N, int h, int w,
                         float *out, char *err);

/* The decoder's output (host floats, [C, H, W], C = 3) to 8-bit pixels
 * [H, W, C] as diffusers' VaeImageProcessor.postprocess + numpy_to_pil:
 * v = clamp(x / 2 + 0.5, 0, 1) in float32, then round(v * 255) with
 * round-half-to-even (numpy's round) as uint8. */
void sd_vae_to_rgb8(uint8_t *out, const float *img, int C, int H, int W);

#endif
