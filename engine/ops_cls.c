/* ops_cls.c - the ops of the emoji classifier (engine/classifier.c), CPU
 * reference: global average pooling and softmax cross-entropy. Contracts
 * in ops.h ("classifier ops"); the CUDA twins are in engine/cuda/cls.cu.
 * As every op, the backwards accumulate (+=) and skip NULL gradients. */
#include <math.h>

#include "ops.h"

void avgpool_forward(float *out, const float *inp, int N, int C, int HW) {
    for (size_t r = 0; r < (size_t)N * C; r++) {
        const float *x = inp + r * HW;
        double s = 0.0;
        for (int i = 0; i < HW; i++) s += x[i];
        out[r] = (float)(s / HW);
    }
}

void avgpool_backward(float *dinp, const float *dout, int N, int C, int HW) {
    if (!dinp) return;
    for (size_t r = 0; r < (size_t)N * C; r++) {
        const float g = dout[r] / (float)HW;
        float *d = dinp + r * HW;
        for (int i = 0; i < HW; i++) d[i] += g;
    }
}

void xent_forward(float *probs, float *loss, const float *logits, const int *labels, int N,
                  int K) {
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * K;
        float *p = probs + (size_t)n * K;
        float m = z[0];
        for (int k = 1; k < K; k++) m = z[k] > m ? z[k] : m;
        double s = 0.0;
        for (int k = 0; k < K; k++) s += exp((double)z[k] - m);
        const double lse = m + log(s);
        for (int k = 0; k < K; k++) p[k] = (float)exp((double)z[k] - lse);
        loss[n] = (float)(lse - z[labels[n]]);
    }
}

void xent_backward(float *dlogits, float dloss, const float *probs, const int *labels, int N,
                   int K) {
    if (!dlogits) return;
    const float g = dloss / (float)N;
    for (int n = 0; n < N; n++) {
        float *d = dlogits + (size_t)n * K;
        const float *p = probs + (size_t)n * K;
        for (int k = 0; k < K; k++) d[k] += g * (p[k] - (k == labels[n] ? 1.0f : 0.0f));
    }
}
