/* tape.h - a small reverse-mode autograd tape over the backend's ops.
 *
 * The forward pass of a model is written as ordinary calls (tape_conv2d,
 * tape_silu, ...). Each call runs the op at once through the backend and,
 * when gradients are on, records a node (op, inputs, output, saved
 * buffers, parameter pointers). tape_backward() walks the nodes in reverse
 * and calls each op's backward: the "mirror order" of llm.c, derived
 * instead of written twice.
 *
 * Memory: every activation, saved buffer and gradient comes from the
 * tape's arena (device memory of the backend), reused after tape_reset().
 * Gradients of activations are zeroed before their first use and every op
 * backward accumulates (see ops.h), so fan-out (skip connections) is exact
 * (a first writer that can overwrites instead: a conv's input gradient
 * where the backend has conv2d_backward_keep, and add, concat and reshape,
 * which copy or take over their output's gradient: the same numbers
 * without the zeroing, up to the sign of a zero);
 * a gradient buffer is reused once its tensor's producer has consumed it.
 * Parameter gradients accumulate into the caller's buffers across calls
 * until the caller zeroes them (gradient accumulation over timesteps).
 * A conv recorded with a weight gradient may keep its input transforms
 * (backend conv2d_keep_floats: Winograd on the CPU, 2.25x its input) for
 * the backward, up to 512 MB per forward (TAPE_KEEP_MAX in tape.c).
 *
 *   d3_tape *tp = tape_new(backend_cpu());
 *   tape_reset(tp);
 *   d3_tensor *x = tape_input(tp, N, 3, 32, 32);   be->upload(x->v, host, ...)
 *   d3_tensor *y = unet_forward(tp, &layout, params, grads, x, t, cls);
 *   ... dy = tape_alloc(tp, y->numel) filled with dL/dy ...
 *   tape_backward(tp, y, dy);                       grads += dL/dparams
 *
 * Layouts. A feature map is [N, C, H, W] (NCHW). A token tensor [N, T, D]
 * (a sequence of T vectors of D features: text states, attention tokens)
 * is a d3_tensor with n = N, c = T, h = 1, w = D: "rows" are numel / w and
 * the last dim is always w. tape_to_tokens / tape_to_nchw convert between
 * the two; tape_dense, tape_layernorm, tape_geglu work over the last dim
 * (w) of any tensor.
 */
#ifndef D3PO_TAPE_H
#define D3PO_TAPE_H

#include <stddef.h>

#include "backend.h"

typedef struct d3_tensor {
    float *v;      /* values [n,c,h,w] (device) */
    float *g;      /* gradient, set by tape_backward (NULL before); after it
                      only leaves (tape_input ...) keep theirs: the buffers
                      of intermediate tensors are recycled during the pass */
    int n, c, h, w;
    size_t numel;
    int id;        /* index on the tape */
} d3_tensor;

typedef struct d3_tape d3_tape;

d3_tape *tape_new(const d3_backend *be);
void tape_free(d3_tape *tp);
/* Forgets all tensors and nodes; keeps the arena memory for reuse. */
void tape_reset(d3_tape *tp);
/* Gradients on (default) or off (inference: no nodes, less memory). */
void tape_set_grad(d3_tape *tp, int on);
const d3_backend *tape_backend(const d3_tape *tp);
/* Bytes of arena memory held (peak so far), its worker tapes' included. */
size_t tape_arena_bytes(const d3_tape *tp);
/* Tapes for the workers of a data-parallel loop, each used by one thread
 * at a time: worker 0 is tp itself, 1..TAPE_WORKERS siblings of tp on the
 * same backend, made on first call (not thread-safe: call before the
 * parallel region) and freed by tape_free(tp). NULL when k is out of range
 * or memory runs out. */
#define TAPE_WORKERS 15
d3_tape *tape_worker(d3_tape *tp, int k);

/* Scratch device floats from the arena, zeroed, valid until tape_reset. */
float *tape_alloc(d3_tape *tp, size_t nfloats);
/* A new leaf tensor with zeroed values (fill with be->upload). */
d3_tensor *tape_input(d3_tape *tp, int n, int c, int h, int w);

/* Layers. Parameter pointers (w, b) and gradient pointers (dw, db) point
 * into the model's flat device buffers; dw/db may be NULL (frozen). */
d3_tensor *tape_conv2d(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                       float *dw, float *db, int OC, int K, int stride, int pad);
/* x viewed as [n, c*h*w]; output [n, OUT, 1, 1]. */
d3_tensor *tape_linear(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                       float *dw, float *db, int OUT);
d3_tensor *tape_groupnorm(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                          float *dw, float *db, int G);
d3_tensor *tape_silu(d3_tape *tp, d3_tensor *x);
/* silu(groupnorm(x + e[:, :, None, None])) as one op (e: [n, c, 1, 1] or
 * NULL), the same numbers as tape_addbc, tape_groupnorm_eps and tape_silu
 * in a row on the CPU, without keeping the two intermediate maps. */
d3_tensor *tape_groupnorm_silu(d3_tape *tp, d3_tensor *x, d3_tensor *e, const float *w,
                               const float *b, float *dw, float *db, int G, float eps);
d3_tensor *tape_add(d3_tape *tp, d3_tensor *a, d3_tensor *b);
/* out = x + e[:, :, None, None], e: [n, c, 1, 1]. */
d3_tensor *tape_addbc(d3_tape *tp, d3_tensor *x, d3_tensor *e);
d3_tensor *tape_concat(d3_tape *tp, d3_tensor *a, d3_tensor *b);
d3_tensor *tape_upsample2x(d3_tape *tp, d3_tensor *x);
/* qkv: [n, 3C, h, w] -> [n, C, h, w]. */
d3_tensor *tape_attention(d3_tape *tp, d3_tensor *qkv);
/* idx: n host ints; output [n, D, 1, 1]. */
d3_tensor *tape_embedding(d3_tape *tp, const int *idx, int n, const float *table,
                          float *dtable, int D);
/* t: n host floats; output [n, D, 1, 1] (no gradient flows to t). */
d3_tensor *tape_timestep_embedding(d3_tape *tp, const float *t, int n, int D);

/* Transformer layers (Stable Diffusion family; ops in ops.h). */

/* dense (linear over the last dim): x [n,c,h,w] viewed as rows = numel/w
 * of w features; w: [OUT, x->w], b: [OUT] or NULL -> [n, c, h, OUT]. */
d3_tensor *tape_dense(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                      float *dw, float *db, int OUT);
/* layer norm over the last dim (w) of x; w, b: [x->w] (NULL: 1, 0). */
d3_tensor *tape_layernorm(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                          float *dw, float *db, float eps);
d3_tensor *tape_gelu(d3_tape *tp, d3_tensor *x);       /* exact (erf) */
d3_tensor *tape_quick_gelu(d3_tape *tp, d3_tensor *x); /* x * sigmoid(1.702 x) */
/* geglu over the last dim: [.., 2F] -> [.., F] (value half, then gate half). */
d3_tensor *tape_geglu(d3_tape *tp, d3_tensor *x);
d3_tensor *tape_scale(d3_tape *tp, d3_tensor *x, float s); /* s * x */
/* multi-head attention: q [N,Tq,1,D], k, v [N,Tk,1,D] token tensors,
 * D = heads * dh -> [N,Tq,1,D]; causal masks key j > query i (Tq == Tk).
 * Saves only the log-sum-exp [N,heads,Tq] (memory-efficient, see ops.h).
 * q, k, v may be the same tensor or different ones (cross-attention). */
d3_tensor *tape_mha(d3_tape *tp, d3_tensor *q, d3_tensor *k, d3_tensor *v, int heads,
                    int causal);
/* group norm with an explicit eps (SD's VAE uses 1e-6); tape_groupnorm is
 * tape_groupnorm_eps(..., 1e-5f). */
d3_tensor *tape_groupnorm_eps(d3_tape *tp, d3_tensor *x, const float *w, const float *b,
                              float *dw, float *db, int G, float eps);
/* [N,C,H,W] -> tokens [N,H*W,1,C], and back (H, W: the map's size). */
d3_tensor *tape_to_tokens(d3_tape *tp, d3_tensor *x);
d3_tensor *tape_to_nchw(d3_tape *tp, d3_tensor *x, int H, int W);
/* The same values under a new shape (n*c*h*w == x->numel). */
d3_tensor *tape_reshape(d3_tape *tp, d3_tensor *x, int n, int c, int h, int w);
/* t: n host floats; [n, D, 1, 1] as timestep_embedding_ex (ops.h). */
d3_tensor *tape_timestep_embedding_ex(d3_tape *tp, const float *t, int n, int D, int flip,
                                      float shift);

/* Global average pool: [n, c, h, w] -> [n, c, 1, 1] (classifier). */
d3_tensor *tape_avgpool(d3_tape *tp, d3_tensor *x);

/* Backpropagates dout (device, out->numel floats) from out to every tensor
 * recorded before it and into the parameter gradients. */
void tape_backward(d3_tape *tp, d3_tensor *out, const float *dout);

#endif
