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

/* conv2d: out[N,OC,OH,OW] = inp[N,C,H,W] (*) w[OC,C,K,K] + b[OC]
 * OH = (H + 2*pad - K)/stride + 1 (same for OW). b may be NULL.
 * K in {1,3}, stride in {1,2}, pad >= 0. */
void conv2d_forward(float *out, const float *inp, const float *w, const float *b,
                    int N, int C, int H, int W, int OC, int K, int stride, int pad);
void conv2d_backward(float *dinp, float *dw, float *db, const float *dout,
                     const float *inp, const float *w,
                     int N, int C, int H, int W, int OC, int K, int stride, int pad);

/* linear: out[N,OUT] = inp[N,IN] @ w[OUT,IN]^T + b[OUT] (b may be NULL). */
void linear_forward(float *out, const float *inp, const float *w, const float *b,
                    int N, int IN, int OUT);
void linear_backward(float *dinp, float *dw, float *db, const float *dout,
                     const float *inp, const float *w, int N, int IN, int OUT);

/* group norm over G groups of C/G channels, eps 1e-5, affine w[C], b[C].
 * mean[N*G], rstd[N*G] are saved for the backward. */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int N, int C, int HW, int G);
void groupnorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int C, int HW, int G);

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

/* mean squared error: returns mean((a-b)^2) over n values.
 * backward: da += dloss * 2*(a-b)/n. */
float mse_forward(const float *a, const float *b, size_t n);
void mse_backward(float *da, float dloss, const float *a, const float *b, size_t n);

/* Number of OpenMP/BLAS threads the ops use (0 = library default). */
void ops_set_threads(int n);
int ops_get_threads(void);

#endif
