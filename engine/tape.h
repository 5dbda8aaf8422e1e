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
 * backward accumulates (see ops.h), so fan-out (skip connections) is exact;
 * a gradient buffer is reused once its tensor's producer has consumed it.
 * Parameter gradients accumulate into the caller's buffers across calls
 * until the caller zeroes them (gradient accumulation over timesteps).
 *
 *   d3_tape *tp = tape_new(backend_cpu());
 *   tape_reset(tp);
 *   d3_tensor *x = tape_input(tp, N, 3, 32, 32);   be->upload(x->v, host, ...)
 *   d3_tensor *y = unet_forward(tp, &layout, params, grads, x, t, cls);
 *   ... dy = tape_alloc(tp, y->numel) filled with dL/dy ...
 *   tape_backward(tp, y, dy);                       grads += dL/dparams
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
/* Bytes of arena memory held (peak so far). */
size_t tape_arena_bytes(const d3_tape *tp);

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

/* Backpropagates dout (device, out->numel floats) from out to every tensor
 * recorded before it and into the parameter gradients. */
void tape_backward(d3_tape *tp, d3_tensor *out, const float *dout);

#endif
