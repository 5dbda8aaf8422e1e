/* backend.h - the engine's compute backend: one table of function pointers
 * per device (redis ae_* style). The CPU backend (backend_cpu.c) points at the
 * reference ops in ops.h; a CUDA backend fills the same table with kernels.
 * The tape (tape.c), the UNet and the sampler only ever call through this
 * table, so they run unchanged on either device.
 *
 * Memory returned by alloc lives on the backend's device; upload/download
 * copy between host and device (plain memcpy on the CPU).
 */
#ifndef D3PO_BACKEND_H
#define D3PO_BACKEND_H

#include <stddef.h>

typedef struct d3_backend {
    const char *name; /* "cpu", "cuda" */
    void *(*alloc)(size_t bytes);            /* zeroed; NULL on failure */
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src_host, size_t bytes);
    void (*download)(void *dst_host, const void *src, size_t bytes);
    void (*zero)(void *p, size_t bytes);

    void (*conv2d_forward)(float *out, const float *inp, const float *w, const float *b,
                           int N, int C, int H, int W, int OC, int K, int stride, int pad);
    void (*conv2d_backward)(float *dinp, float *dw, float *db, const float *dout,
                            const float *inp, const float *w,
                            int N, int C, int H, int W, int OC, int K, int stride, int pad);
    void (*linear_forward)(float *out, const float *inp, const float *w, const float *b,
                           int N, int IN, int OUT);
    void (*linear_backward)(float *dinp, float *dw, float *db, const float *dout,
                            const float *inp, const float *w, int N, int IN, int OUT);
    void (*groupnorm_forward)(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int N, int C, int HW, int G);
    void (*groupnorm_backward)(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int N, int C, int HW, int G);
    void (*silu_forward)(float *out, const float *inp, size_t n);
    void (*silu_backward)(float *dinp, const float *dout, const float *inp, size_t n);
    void (*add_forward)(float *out, const float *a, const float *b, size_t n);
    void (*add_backward)(float *da, float *db, const float *dout, size_t n);
    void (*addbc_forward)(float *out, const float *x, const float *e, int N, int C, int HW);
    void (*addbc_backward)(float *dx, float *de, const float *dout, int N, int C, int HW);
    void (*concat_forward)(float *out, const float *a, const float *b, int N, int C1, int C2, int HW);
    void (*concat_backward)(float *da, float *db, const float *dout, int N, int C1, int C2, int HW);
    void (*upsample2x_forward)(float *out, const float *inp, int N, int C, int H, int W);
    void (*upsample2x_backward)(float *dinp, const float *dout, int N, int C, int H, int W);
    void (*attention_forward)(float *out, float *att, const float *qkv, int N, int C, int T);
    void (*attention_backward)(float *dqkv, const float *dout, const float *qkv,
                               const float *att, int N, int C, int T);
    void (*embedding_forward)(float *out, const int *idx, const float *table, int N, int D);
    void (*embedding_backward)(float *dtable, const float *dout, const int *idx, int N, int D);
    void (*timestep_embedding)(float *out, const float *t, int N, int D);
    float (*mse_forward)(const float *a, const float *b, size_t n);
    void (*mse_backward)(float *da, float dloss, const float *a, const float *b, size_t n);
} d3_backend;

/* The CPU backend (always available). */
const d3_backend *backend_cpu(void);

#endif
