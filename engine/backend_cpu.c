/* backend_cpu.c - the CPU backend table: host memory and the reference ops
 * of ops_cpu.c. See backend.h. */
#include "backend.h"
#include "ops.h"
#include "optim.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(size_t bytes) {
    /* 64-byte alignment for AVX-512 loads; zeroed like calloc. */
    size_t sz = (bytes + 63) & ~(size_t)63;
    void *p = NULL;
    if (sz == 0) sz = 64;
    if (posix_memalign(&p, 64, sz) != 0) return NULL;
    memset(p, 0, sz);
    return p;
}
static void cpu_free(void *p) { free(p); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
/* Zeroing gradient buffers is a large share of a training step: split it
 * over the threads (each clears a contiguous slice). */
static void cpu_zero(void *p, size_t bytes) {
    int nt = ops_get_threads();
    if (bytes < (1u << 20) || nt < 2) {
        memset(p, 0, bytes);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        size_t lo = bytes * t / n, hi = bytes * (t + 1) / n;
        memset((char *)p + lo, 0, hi - lo);
    }
}

static void cpu_sync(void) {}

static double cpu_sumsq(const float *x, size_t n) {
    double ss = 0;
#pragma omp parallel for reduction(+ : ss) schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

static void cpu_scale(float *x, float s, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

static void cpu_ema(float *e, const float *p, float decay, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) e[i] = decay * e[i] + (1 - decay) * p[i];
}

static const d3_backend cpu = {
    .abi = D3_BACKEND_ABI,
    .name = "cpu",
    .host = 1,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .adamw = adamw_update,
    .ema = cpu_ema,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .zero = cpu_zero,
    .conv2d_forward = conv2d_forward,
    .conv2d_backward = conv2d_backward,
    .gnsilu_forward = gnsilu_forward,
    .gnsilu_backward = gnsilu_backward,
    .conv2d_keep_floats = conv2d_keep_floats,
    .conv2d_forward_keep = conv2d_forward_keep,
    .conv2d_backward_keep = conv2d_backward_keep,
    .linear_forward = linear_forward,
    .linear_backward = linear_backward,
    .groupnorm_forward = groupnorm_forward,
    .groupnorm_backward = groupnorm_backward,
    .silu_forward = silu_forward,
    .silu_backward = silu_backward,
    .add_forward = add_forward,
    .add_backward = add_backward,
    .addbc_forward = addbc_forward,
    .addbc_backward = addbc_backward,
    .concat_forward = concat_forward,
    .concat_backward = concat_backward,
    .upsample2x_forward = upsample2x_forward,
    .upsample2x_backward = upsample2x_backward,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .embedding_forward = embedding_forward,
    .embedding_backward = embedding_backward,
    .timestep_embedding = timestep_embedding,
    .mse_forward = mse_forward,
    .mse_backward = mse_backward,
    .timestep_embedding_ex = timestep_embedding_ex,
    .layernorm_forward = layernorm_forward,
    .layernorm_backward = layernorm_backward,
    .gelu_forward = gelu_forward,
    .gelu_backward = gelu_backward,
    .quick_gelu_forward = quick_gelu_forward,
    .quick_gelu_backward = quick_gelu_backward,
    .geglu_forward = geglu_forward,
    .geglu_backward = geglu_backward,
    .mha_forward = mha_forward,
    .mha_backward = mha_backward,
    .transpose_forward = transpose_forward,
    .transpose_backward = transpose_backward,
    .scale_forward = scale_forward,
    .scale_backward = scale_backward,
    .avgpool_forward = avgpool_forward,
    .avgpool_backward = avgpool_backward,
    .xent_forward = xent_forward,
    .xent_backward = xent_backward,
};

const d3_backend *backend_cpu(void) { return &cpu; }
