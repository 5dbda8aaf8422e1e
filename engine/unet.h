/* unet.h - the pixel-space DDPM-style UNet that d3po trains, its parameter
 * table (PyTorch state_dict names) and its forward/backward on the tape.
 *
 * ARCHITECTURE (the PyTorch twin in bench/twin.py mirrors this exactly):
 * config: base B, mult m[0..L-1], res R blocks per level, attention at the
 * resolutions listed in attn[], image size S (square), in/out channels 3,
 * classes K (+1 null class with id K, for classifier-free guidance).
 * E = 4*B is the embedding width. GroupNorm groups for C channels:
 * gn_groups(C) = the largest g <= 32 dividing C. eps 1e-5.
 *
 *   temb  = time_embed.2( silu( time_embed.0( sinusoid(t, B) ) ) )   Linear B->E, E->E
 *   emb   = temb + class_embed.weight[y]                              [K+1, E]
 *   eact  = silu(emb)                          (shared by every ResBlock)
 *   h = conv_in(x)            3x3, 3->B;  push h to skips
 *   for i in 0..L-1:  ch = B*m[i]
 *       for j in 0..R-1: h = down.i.res.j(h, eact)   (in_ch -> ch)
 *                        if res in attn: h = down.i.attn.j(h)
 *                        push h
 *       if i != L-1: h = down.i.downsample(h)  conv 3x3 stride 2 pad 1, ch->ch;
 *                    res /= 2; push h
 *   h = mid.res.0(h); h = mid.attn.0(h); h = mid.res.1(h)      (ch -> ch)
 *   for i in L-1..0:  ch = B*m[i]
 *       for j in 0..R:   h = up.i.res.j(concat(h, pop()), eact)  (in+skip -> ch)
 *                        if res in attn: h = up.i.attn.j(h)
 *       if i != 0: h = up.i.upsample(upsample2x(h))  conv 3x3 pad 1, ch->ch; res *= 2
 *   out = conv_out( silu( norm_out(h) ) )    GN(B), 3x3 B->3
 *
 *   ResBlock(x, eact), in_ch -> out_ch, names under its prefix:
 *       h = conv1( silu( norm1(x) ) )         norm1 GN(in_ch), conv1 3x3 pad 1
 *       h = h + emb_proj(eact)[:, :, None, None]      Linear E -> out_ch
 *       h = conv2( silu( norm2(h) ) )         norm2 GN(out_ch), conv2 3x3 pad 1
 *       return h + (skip(x) if in_ch != out_ch else x)   skip: conv 1x1
 *   AttnBlock(x), C channels, T = H*W:
 *       q,k,v = split(qkv(norm(x)))           norm GN(C), qkv conv 1x1 C->3C
 *       a = softmax(q^T k / sqrt(C)) ; o[c,i] = sum_j a[i,j] v[c,j]
 *       return x + proj(o)                    proj conv 1x1 C->C
 *
 * Parameter names are the dotted paths above plus ".weight"/".bias", e.g.
 * "down.0.res.1.conv1.weight", "time_embed.0.bias", "class_embed.weight".
 * Conv weights [OC,C,K,K], Linear [OUT,IN], GroupNorm [C].
 * Initialisation: conv/linear weight and bias U(-1/sqrt(fan_in), +1/sqrt(fan_in))
 * (PyTorch's default), GroupNorm weight 1 bias 0, class_embed N(0,1), and
 * conv_out, every ResBlock's conv2 and every AttnBlock's proj zero
 * (DDPM practice: every block starts as the identity).
 */
#ifndef D3PO_UNET_H
#define D3PO_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "err.h"
#include "tape.h"

#define UNET_MAX_LEVELS 6
#define UNET_MAX_ATTN 6

typedef struct {
    int base;                   /* B */
    int nlevels;                /* L */
    int mult[UNET_MAX_LEVELS];
    int res;                    /* R */
    int nattn;
    int attn[UNET_MAX_ATTN];    /* resolutions with attention, e.g. {8} */
    int size;                   /* S */
    int classes;                /* K (null class id = K) */
} unet_arch;

/* Parses "base=32,mult=1.2.2,res=2,attn=8,size=32,classes=100" (keys in
 * any order, missing keys keep the values already in *a; attn may be
 * "8.16" or "none"). Returns 0 or -1 with err naming the bad field. */
int unet_arch_parse(unet_arch *a, const char *s, char *err);
/* Canonical string form, the one stored in checkpoints. */
void unet_arch_format(const unet_arch *a, char *out, size_t outlen);
/* Checks ranges and divisibility (size divisible by 2^(L-1), ...). */
int unet_arch_check(const unet_arch *a, char *err);
unet_arch unet_arch_default(void); /* the yardstick: 32, 1.2.2, 2, 8, 32, 100 */

typedef struct {
    char name[160];
    int ndim;
    int shape[4];
    size_t offset; /* in floats, into the flat parameter buffer */
    size_t numel;
} unet_param;

typedef struct {
    unet_arch arch;
    int nparams;
    unet_param *params; /* table, in creation order */
    size_t numel;       /* total floats */
} unet_layout;

/* Builds the parameter table for an architecture. */
int unet_layout_build(unet_layout *L, const unet_arch *a, char *err);
void unet_layout_free(unet_layout *L);
const unet_param *unet_layout_find(const unet_layout *L, const char *name);

/* GroupNorm groups for c channels: the largest g <= 32 dividing c. */
int unet_gn_groups(int c);

/* Initialises the flat host buffer params[numel] as documented above,
 * deterministically from seed. */
void unet_init_params(const unet_layout *L, float *params, uint64_t seed);

/* Records the forward pass on the tape and returns the output tensor
 * eps[N,3,S,S]. x: [N,3,S,S] tape tensor; t: N timesteps (host floats);
 * y: N class ids (host ints, K = null). params/grads are device buffers in
 * the layout's order (grads may be NULL for inference). */
d3_tensor *unet_forward(d3_tape *tp, const unet_layout *L, const float *params,
                        float *grads, d3_tensor *x, const float *t, const int *y);

#endif
