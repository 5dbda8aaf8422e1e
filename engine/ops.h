/* ops.h - the op set of the d3po engine: every layer a UNet needs, forward
 * and backward, as plain functions over float buffers.
 *
 * Memory layout: NCHW, row-major, float32, like PyTorch. A "feature map"
 * argument named x with sizes N, C, H, W is x[((n*C + c)*H + h)*W + w].
 *
 * Conventions (llm.c style):
 *  - outputs first, then inputs, then sizes;
 *  - the forward saves what the backward needs (mean/rstd, attention probs);
 *  - EVERY backward ACCUMULATES (+=) into every gradient it is given, for
 *    parameters and activations alike. The autograd tape (tape.c) zeroes
 *    activation gradients before a backward pass, so a tensor used by two
 *    consumers (skip connections) simply receives both contributions;
 *  - a gradient pointer may be NULL when that gradient is not wanted (the
 *    image input, frozen parameters).
 *
 * These are the CPU reference implementations (ops_cpu.c, C + OpenMP +
 * OpenBLAS). A backend (d3_backend in backend.h) exposes the same functions
 * through a table of function pointers; the CUDA backend implements the
 * same table op for op and is checked against these.
 */
#ifndef D3PO_OPS_H
#define D3PO_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* conv2d: out[N,OC,OH,OW] = inp[N,C,H,W] (*) w[OC,C,K,K] + b[OC]
 * OH = (H + 2*pad - K)/stride + 1 (same for OW). b may be NULL.
 * K in {1,3}, stride in {1,2}, pad >= 0. */
void conv2d_forward(float *out, const float *inp, const float *w, const float *b,
                    int N, int C, int H, int W, int OC, int K, int stride, int pad);
void conv2d_backward(float *dinp, float *dw, float *db, const float *dout,
                     const float *inp, const float *w,
                     int N, int C, int H, int W, int OC, int K, int stride, int pad);

/* The same conv, keeping what the backward would compute again: a
 * Winograd 3x3 conv (stride 1, pad 1, >= 16 channels in and out, see
 * ops_cpu.c) keeps its input transforms for the weight gradient, 2.25x
 * the input's floats (36 per 4x4 tile and channel), instead of
 * transforming the input a second time. conv2d_keep_floats: the floats
 * keep needs, 0 when this conv keeps nothing (then call the plain pair).
 * conv2d_forward_keep fills keep as it computes out (out is bit-identical
 * to conv2d_forward's); conv2d_backward_keep reads it (inp is still read
 * for nothing else but must be the forward's input; the results are
 * bit-identical to conv2d_backward's). keep may be NULL (any conv: then
 * the plain backward). set: dinp's contents are ignored and overwritten,
 * bit for bit what conv2d_backward adds onto a zeroed dinp (the tape's
 * first writer of a gradient skips zeroing it; the Winograd input
 * gradient then stores instead of adding). */
size_t conv2d_keep_floats(int N, int C, int H, int W, int OC, int K, int stride, int pad);
void conv2d_forward_keep(float *out, float *keep, const float *inp, const float *w,
                         const float *b, int N, int C, int H, int W, int OC, int K, int stride,
                         int pad);
void conv2d_backward_keep(float *dinp, int set, float *dw, float *db, const float *dout,
                          const float *inp, const float *keep, const float *w,
                          int N, int C, int H, int W, int OC, int K, int stride, int pad);

/* linear: out[N,OUT] = inp[N,IN] @ w[OUT,IN]^T + b[OUT] (b may be NULL). */
void linear_forward(float *out, const float *inp, const float *w, const float *b,
                    int N, int IN, int OUT);
void linear_backward(float *dinp, float *dw, float *db, const float *dout,
                     const float *inp, const float *w, int N, int IN, int OUT);

/* group norm over G groups of C/G channels, affine w[C], b[C]:
 * y = (x - mean) / sqrt(var + eps) * w + b (biased variance, like PyTorch).
 * eps is 1e-5 for our pixel UNet and SD's UNet, 1e-6 for SD's VAE.
 * mean[N*G], rstd[N*G] are saved for the backward (rstd includes eps). */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int N, int C, int HW, int G,
                       float eps);
/* The norms add eps in double, at its shortest decimal value (1e-5f is
 * taken as the double 1e-5, as PyTorch receives it from Python): so a float
 * eps gives the same numbers as the constant did before it was a parameter.
 * Both backends use this one function. */
static inline double ops_eps_double(float eps) {
    char buf[32];
    for (int prec = 1; prec < 10; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)eps);
        double d = strtod(buf, NULL);
        if ((float)d == eps) return d;
    }
    return (double)eps;
}
void groupnorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int C, int HW, int G, float eps);

/* group norm then SiLU, with an optional per-(n,c) vector added first (a
 * residual block's time embedding; e may be NULL):
 *   h = x + e[n,c],  y = groupnorm(h; w, b, G, eps),  out = silu(y),
 * one pass over the data instead of three ops, and no y or h kept: the
 * backward forms them again from inp, e, mean, rstd and coef, the
 * per-(n,c) scale and shift the forward applied ([2][N][C]: y = h *
 * coef[0][n][c] + coef[1][n][c]). The CPU op gives the same floats as
 * addbc, groupnorm and silu in a row, forward and backward. */
void gnsilu_forward(float *out, float *mean, float *rstd, float *coef, const float *inp,
                    const float *e, const float *w, const float *b, int N, int C, int HW, int G,
                    float eps);
void gnsilu_backward(float *dinp, float *de, float *dw, float *db, const float *dout,
                     const float *inp, const float *e, const float *w, const float *coef,
                     const float *mean, const float *rstd, int N, int C, int HW, int G);

/* silu: out = x * sigmoid(x), elementwise over n values. */
void silu_forward(float *out, const float *inp, size_t n);
void silu_backward(float *dinp, const float *dout, const float *inp, size_t n);

/* add: out = a + b elementwise (residual connections). */
void add_forward(float *out, const float *a, const float *b, size_t n);
void add_backward(float *da, float *db, const float *dout, size_t n);

/* broadcast add of a per-(n,c) vector over space:
 * out[N,C,HW] = x[N,C,HW] + e[N,C] (time embedding into feature maps). */
void addbc_forward(float *out, const float *x, const float *e, int N, int C, int HW);
void addbc_backward(float *dx, float *de, const float *dout, int N, int C, int HW);

/* channel concat: out[N,C1+C2,HW] = [a[N,C1,HW], b[N,C2,HW]]. */
void concat_forward(float *out, const float *a, const float *b, int N, int C1, int C2, int HW);
void concat_backward(float *da, float *db, const float *dout, int N, int C1, int C2, int HW);

/* nearest 2x upsample: out[N,C,2H,2W], out[..,y,x] = inp[..,y/2,x/2]. */
void upsample2x_forward(float *out, const float *inp, int N, int C, int H, int W);
void upsample2x_backward(float *dinp, const float *dout, int N, int C, int H, int W);

/* single-head self-attention over T = H*W positions with C channels.
 * qkv[N,3C,T] holds q = channels [0,C), k = [C,2C), v = [2C,3C) (the output
 * of a 1x1 conv in NCHW). att[N,T,T] (saved) = softmax_j(q_i . k_j / sqrt(C)).
 * out[N,C,T]: out[n,c,i] = sum_j att[n,i,j] * v[n,c,j]. */
void attention_forward(float *out, float *att, const float *qkv, int N, int C, int T);
void attention_backward(float *dqkv, const float *dout, const float *qkv,
                        const float *att, int N, int C, int T);

/* embedding lookup: out[N,D] = table[idx[n], :]. Indices are checked by the
 * caller (programmer error if out of range). */
void embedding_forward(float *out, const int *idx, const float *table, int N, int D);
void embedding_backward(float *dtable, const float *dout, const int *idx, int N, int D);

/* sinusoidal timestep embedding, D even, half = D/2:
 * freq_i = exp(-ln(10000) * i / half), out[n,i] = cos(t[n]*freq_i),
 * out[n,half+i] = sin(t[n]*freq_i). The input is a timestep, not a learned
 * value: there is no backward (documented, not forgotten). */
void timestep_embedding(float *out, const float *t, int N, int D);

/* timestep embedding with diffusers' options (get_timestep_embedding),
 * D even, half = D/2:
 *   freq_i = exp(-ln(10000) * i / (half - freq_shift)), a = t[n] * freq_i
 *   flip_sin_to_cos ? out[n] = [cos(a), sin(a)] : out[n] = [sin(a), cos(a)]
 * SD's UNet uses flip 1, shift 0; timestep_embedding(out,t,N,D) is exactly
 * timestep_embedding_ex(out,t,N,D,1,0). No backward (timesteps are not
 * learned). */
void timestep_embedding_ex(float *out, const float *t, int N, int D, int flip_sin_to_cos,
                           float freq_shift);

/* mean squared error: returns mean((a-b)^2) over n values.
 * backward: da += dloss * 2*(a-b)/n. */
float mse_forward(const float *a, const float *b, size_t n);
void mse_backward(float *da, float dloss, const float *a, const float *b, size_t n);

/* ---------------------------------------------------------------------
 * Transformer ops (Stable Diffusion's UNet/VAE attention, CLIP), CPU
 * reference in ops_tx.c. Token tensors are [N, T, D] row-major: "rows" are
 * the N*T vectors of the last dimension D.
 */

/* layer norm over the last dim D of N rows, affine w[D], b[D] (either may
 * be NULL: 1 and 0): out = (x - mean) * rstd * w + b,
 * rstd = 1/sqrt(var + eps) (biased variance). mean[N], rstd[N] are saved. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int N, int D, float eps);
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int D);

/* gelu, exact (erf form, PyTorch's default): out = x/2 * (1 + erf(x/sqrt 2)). */
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
/* quick_gelu (CLIP ViT-L/14's activation): out = x * sigmoid(1.702 x). */
void quick_gelu_forward(float *out, const float *inp, size_t n);
void quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);

/* geglu (diffusers' GEGLU after its projection): inp[N, 2F] -> out[N, F],
 * out[r, i] = inp[r, i] * gelu(inp[r, F + i]): value first half, gate
 * second half. */
void geglu_forward(float *out, const float *inp, int N, int F);
void geglu_backward(float *dinp, const float *dout, const float *inp, int N, int F);

/* multi-head scaled dot-product attention, memory-efficient:
 *   q: [N, Tq, H*dh], k, v: [N, Tk, H*dh]; head h is columns [h*dh, (h+1)*dh)
 *   out[n, i, h] = sum_j softmax_j(q_i . k_j / sqrt(dh)) v_j   [N, Tq, H*dh]
 *   causal: key j > query i is masked (CLIP's text encoder; needs Tq == Tk)
 * lse[N, H, Tq] (saved) = log sum_j exp(q_i . k_j / sqrt(dh)): the only
 * thing kept for the backward, which recomputes the probabilities block by
 * block. No Tq x Tk buffer is ever held: the work goes by query blocks x
 * key blocks with an online softmax (flash attention), scratch O(block^2 +
 * block * dh) per thread on the CPU, any dh. The CUDA backend runs flash
 * kernels for dh <= 160 and, for wider heads (SD's VAE: one head of 512),
 * cuBLAS products over query chunks whose scores fit a 16 MiB buffer. */
void mha_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                 int N, int Tq, int Tk, int heads, int dh, int causal);
void mha_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                  const float *k, const float *v, const float *out, const float *lse,
                  int N, int Tq, int Tk, int heads, int dh, int causal);

/* transpose of the last two dims: inp[N, A, B] -> out[N, B, A]
 * (feature map [N, C, HW] <-> tokens [N, HW, C]). */
void transpose_forward(float *out, const float *inp, int N, int A, int B);
void transpose_backward(float *dinp, const float *dout, int N, int A, int B);

/* scale: out = s * x over n values (attention's 1/sqrt(d), the VAE factor). */
void scale_forward(float *out, const float *inp, float s, size_t n);
void scale_backward(float *dinp, const float *dout, float s, size_t n);

/* Number of OpenMP/BLAS threads the ops use (0 = library default). */
void ops_set_threads(int n);
int ops_get_threads(void);
/* This thread's own count for the ops it calls (0 = back to the process's):
 * set to 1 in each worker of an outer data-parallel region. */
void ops_set_local_threads(int n);
/* ops_weights_frozen(1) ... ops_weights_frozen(0), on one thread (nests):
 * a promise that no weight buffer the ops are given changes in between,
 * so the CPU ops may keep what they derive from weights (the Winograd
 * transforms of 3x3 conv weights, up to 64 MB) from one call to the next;
 * the last ops_weights_frozen(0) drops it. A sampler's steps. */
void ops_weights_frozen(int on);

/* Classifier ops (ops_cls.c; CUDA: engine/cuda/cls.cu). */

/* global average pool: out[N,C] = mean over HW of inp[N,C,HW] (in double). */
void avgpool_forward(float *out, const float *inp, int N, int C, int HW);
void avgpool_backward(float *dinp, const float *dout, int N, int C, int HW);
/* softmax cross-entropy of logits[N,K] against labels[N] (0 <= label < K,
 * device ints): probs[N,K] = softmax (saved for the backward) and
 * loss[N] = logsumexp(z) - z[label] per row; the mean loss is the mean of
 * loss[]. backward: dlogits += dloss * (probs - onehot) / N, the gradient of
 * dloss * mean(loss). */
void xent_forward(float *probs, float *loss, const float *logits, const int *labels, int N,
                  int K);
void xent_backward(float *dlogits, float dloss, const float *probs, const int *labels, int N,
                   int K);

#endif
