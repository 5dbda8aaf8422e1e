/* cls.cu - the CUDA twins of the classifier ops in ops.h (CPU reference:
 * engine/ops_cls.c): global average pooling and softmax cross-entropy.
 * One thread per (n, c) row for the pool, one per sample row for the
 * softmax (K = 99 classes: a row is tiny). Sums in double like the CPU.
 * Every backward accumulates (+=), NULL gradients are skipped. */
#include <math.h>

extern "C" {
#include "../backend.h"
#include "../ops.h"
}
#include "cuda_common.cuh"
#include "cls.cuh"

__global__ void k_avgpool_f(float *out, const float *inp, size_t R, int HW) {
    GRID_STRIDE(r, R) {
        const float *x = inp + r * HW;
        double s = 0.0;
        for (int i = 0; i < HW; i++) s += x[i];
        out[r] = (float)(s / HW);
    }
}
__global__ void k_avgpool_b(float *dinp, const float *dout, size_t n, int HW) {
    GRID_STRIDE(i, n) dinp[i] += dout[i / HW] / (float)HW;
}
void cu_avgpool_forward(float *out, const float *inp, int N, int C, int HW) {
    EW(k_avgpool_f, (size_t)N * C, out, inp, (size_t)N * C, HW);
}
void cu_avgpool_backward(float *dinp, const float *dout, int N, int C, int HW) {
    if (dinp) EW(k_avgpool_b, (size_t)N * C * HW, dinp, dout, (size_t)N * C * HW, HW);
}

__global__ void k_xent_f(float *probs, float *loss, const float *logits, const int *labels, int N,
                         int K) {
    GRID_STRIDE(n, (size_t)N) {
        const float *z = logits + n * K;
        float *p = probs + n * K;
        float m = z[0];
        for (int k = 1; k < K; k++) m = fmaxf(m, z[k]);
        double s = 0.0;
        for (int k = 0; k < K; k++) s += exp((double)z[k] - m);
        const double lse = m + log(s);
        for (int k = 0; k < K; k++) p[k] = (float)exp((double)z[k] - lse);
        loss[n] = (float)(lse - z[labels[n]]);
    }
}
__global__ void k_xent_b(float *d, float g, const float *probs, const int *labels, size_t n,
                         int K) {
    GRID_STRIDE(i, n) {
        const int k = (int)(i % K);
        d[i] += g * (probs[i] - (k == labels[i / K] ? 1.0f : 0.0f));
    }
}
void cu_xent_forward(float *probs, float *loss, const float *logits, const int *labels, int N,
                     int K) {
    EW(k_xent_f, (size_t)N, probs, loss, logits, labels, N, K);
}
void cu_xent_backward(float *dlogits, float dloss, const float *probs, const int *labels, int N,
                      int K) {
    if (dlogits)
        EW(k_xent_b, (size_t)N * K, dlogits, dloss / (float)N, probs, labels, (size_t)N * K, K);
}
