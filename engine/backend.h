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

/* Bumped whenever the table changes: a CUDA backend built from another
 * tree is refused instead of called through a mismatched table. */
#define D3_BACKEND_ABI 6

typedef struct d3_backend {
    int abi;          /* D3_BACKEND_ABI */
    const char *name; /* "cpu", "cuda" */
    int host;         /* 1: alloc returns host memory (the model's host
                         buffers can be used directly) */
    void *(*alloc)(size_t bytes);            /* zeroed; NULL on failure */
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src_host, size_t bytes);
    void (*download)(void *dst_host, const void *src, size_t bytes);
    void (*zero)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes); /* device to device */
    void (*sync)(void);      /* waits for queued work (no-op on the CPU) */

    /* Flat-buffer training utilities (the optimizer runs where the
     * gradients are). sumsq accumulates in double. adamw is one AdamW
     * step with the scalars precomputed by adamw_scalars() (optim.h), so
     * both backends compute the same float expression:
     *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
     *   p = p * decay - step_size * m / (sqrt(v) * rbc2 + eps)
     * ema: e = decay e + (1 - decay) p. */
    double (*sumsq)(const float *x, size_t n);
    void (*scale)(float *x, float s, size_t n);
    void (*adamw)(float *p, float *m, float *v, const float *g, size_t n, float b1, float b2,
                  float eps, float step_size, float rbc2, float decay);
    void (*ema)(float *e, const float *p, float decay, size_t n);

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
                              const float *w, const float *b, int N, int C, int HW, int G,
                              float eps);
    void (*groupnorm_backward)(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int N, int C, int HW, int G, float eps);
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

    /* transformer ops (ABI 3), see ops.h */
    void (*timestep_embedding_ex)(float *out, const float *t, int N, int D, int flip_sin_to_cos,
                                  float freq_shift);
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int N, int D, float eps);
    void (*layernorm_backward)(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int N, int D);
    void (*gelu_forward)(float *out, const float *inp, size_t n);
    void (*gelu_backward)(float *dinp, const float *dout, const float *inp, size_t n);
    void (*quick_gelu_forward)(float *out, const float *inp, size_t n);
    void (*quick_gelu_backward)(float *dinp, const float *dout, const float *inp, size_t n);
    void (*geglu_forward)(float *out, const float *inp, int N, int F);
    void (*geglu_backward)(float *dinp, const float *dout, const float *inp, int N, int F);
    void (*mha_forward)(float *out, float *lse, const float *q, const float *k, const float *v,
                        int N, int Tq, int Tk, int heads, int dh, int causal);
    void (*mha_backward)(float *dq, float *dk, float *dv, const float *dout, const float *q,
                         const float *k, const float *v, const float *out, const float *lse,
                         int N, int Tq, int Tk, int heads, int dh, int causal);
    void (*transpose_forward)(float *out, const float *inp, int N, int A, int B);
    void (*transpose_backward)(float *dinp, const float *dout, int N, int A, int B);
    void (*scale_forward)(float *out, const float *inp, float s, size_t n);
    void (*scale_backward)(float *dinp, const float *dout, float s, size_t n);

    /* classifier ops (ABI 4), see ops.h */
    void (*avgpool_forward)(float *out, const float *inp, int N, int C, int HW);
    void (*avgpool_backward)(float *dinp, const float *dout, int N, int C, int HW);
    void (*xent_forward)(float *probs, float *loss, const float *logits, const int *labels,
                         int N, int K);
    void (*xent_backward)(float *dlogits, float dloss, const float *probs, const int *labels,
                          int N, int K);

    /* fused group norm + SiLU (ABI 5), see ops.h */
    void (*gnsilu_forward)(float *out, float *mean, float *rstd, float *coef, const float *inp,
                           const float *e, const float *w, const float *b, int N, int C, int HW,
                           int G, float eps);
    void (*gnsilu_backward)(float *dinp, float *de, float *dw, float *db, const float *dout,
                            const float *inp, const float *e, const float *w, const float *coef,
                            const float *mean, const float *rstd, int N, int C, int HW, int G);

    /* optional (ABI 5): a conv that keeps its input transforms for the
     * backward (ops.h, conv2d_keep_floats); NULL where a backend has none
     * (CUDA: cuDNN picks its own algorithms), and the tape then calls the
     * plain conv2d pair. */
    size_t (*conv2d_keep_floats)(int N, int C, int H, int W, int OC, int K, int stride, int pad);
    void (*conv2d_forward_keep)(float *out, float *keep, const float *inp, const float *w,
                                const float *b, int N, int C, int H, int W, int OC, int K,
                                int stride, int pad);
    /* ABI 6: set (dinp overwritten, not added to); keep may be NULL */
    void (*conv2d_backward_keep)(float *dinp, int set, float *dw, float *db, const float *dout,
                                 const float *inp, const float *keep, const float *w, int N,
                                 int C, int H, int W, int OC, int K, int stride, int pad);
} d3_backend;

/* The CPU backend (always available). */
const d3_backend *backend_cpu(void);

/* The CUDA backend lives in a shared object (engine/cuda/, built when nvcc
 * is present) that engine/device.c loads with dlopen, so the binary runs
 * on machines without a driver. Its entry points: */
#define D3_CUDA_OPEN "d3po_cuda_open"         /* d3_cuda_open_fn */
#define D3_CUDA_DESCRIBE "d3po_cuda_describe" /* d3_cuda_describe_fn */
/* Initialises device 0 (context, stream, cuBLAS/cuDNN handles) once and
 * returns the table, or NULL with err naming the reason (no driver, no
 * device, a library missing, a call that failed). tf32: allow TF32 tensor
 * cores in cuBLAS and cuDNN (faster, ~1e-3 relative error). */
typedef const d3_backend *(*d3_cuda_open_fn)(int tf32, char *err);
/* One line per device (name, memory, compute capability) plus the CUDA,
 * cuBLAS and cuDNN versions. Returns the number of devices, or -1 with the
 * reason in out. */
typedef int (*d3_cuda_describe_fn)(char *out, size_t len);

#endif
