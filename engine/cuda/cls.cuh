/* cls.cuh - the classifier ops of the CUDA backend (cls.cu), with the
 * signatures of their backend table entries (backend.h, ops.h). */
#ifndef D3PO_CUDA_CLS_CUH
#define D3PO_CUDA_CLS_CUH

#include <stddef.h>

#define D3_HIDDEN __attribute__((visibility("hidden")))

D3_HIDDEN void cu_avgpool_forward(float *out, const float *inp, int N, int C, int HW);
D3_HIDDEN void cu_avgpool_backward(float *dinp, const float *dout, int N, int C, int HW);
D3_HIDDEN void cu_xent_forward(float *probs, float *loss, const float *logits, const int *labels,
                               int N, int K);
D3_HIDDEN void cu_xent_backward(float *dlogits, float dloss, const float *probs,
                                const int *labels, int N, int K);

#endif
