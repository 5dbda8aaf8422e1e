/* tx.cuh - the transformer ops of the CUDA backend (tx.cu), with the
 * signatures of their backend table entries (backend.h, ops.h). */
#ifndef D3PO_CUDA_TX_CUH
#define D3PO_CUDA_TX_CUH

#include <stddef.h>

#define D3_HIDDEN __attribute__((visibility("hidden")))

D3_HIDDEN void cu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                    const float *b, int N, int D, float eps);
D3_HIDDEN void cu_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                     const float *w, const float *mean, const float *rstd, int N, int D);
D3_HIDDEN void cu_gelu_forward(float *out, const float *inp, size_t n);
D3_HIDDEN void cu_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
D3_HIDDEN void cu_quick_gelu_forward(float *out, const float *inp, size_t n);
D3_HIDDEN void cu_quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
D3_HIDDEN void cu_geglu_forward(float *out, const float *inp, int N, int F);
D3_HIDDEN void cu_geglu_backward(float *dinp, const float *dout, const float *inp, int N, int F);
D3_HIDDEN void cu_scale_forward(float *out, const float *inp, float s, size_t n);
D3_HIDDEN void cu_scale_backward(float *dinp, const float *dout, float s, size_t n);
D3_HIDDEN void cu_transpose_forward(float *out, const float *inp, int N, int A, int B);
D3_HIDDEN void cu_transpose_backward(float *dinp, const float *dout, int N, int A, int B);
D3_HIDDEN void cu_timestep_embedding_ex(float *out, const float *t, int N, int D, int flip_sin_to_cos,
                                        float freq_shift);
D3_HIDDEN void cu_mha_forward(float *out, float *lse, const float *q, const float *k, const float *v, int N,
                              int Tq, int Tk, int heads, int dh, int causal);
D3_HIDDEN void cu_mha_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse, int N,
                               int Tq, int Tk, int heads, int dh, int causal);

#endif
