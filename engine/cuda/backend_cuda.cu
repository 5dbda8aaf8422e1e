/* backend_cuda.cu - the CUDA backend: the d3_backend table (backend.h) on
 * one GPU, built into libd3po_cuda.so and loaded by engine/device.c.
 *
 *  - convolution: cuDNN (forward, backward data, backward filter, bias),
 *    algorithms found once per shape with cudnnFind* and cached;
 *  - linear layers and the attention products: cuBLAS sgemm (strided
 *    batched for attention), row-major buffers handled by computing the
 *    transposed product in cuBLAS's column-major view;
 *  - everything else: the kernels below (group norm, SiLU, adds, concat,
 *    upsample, softmax, embeddings, MSE, and the flat-buffer utilities of
 *    the optimizer: sum of squares, scale, AdamW, EMA).
 *
 * Every backward accumulates (+=) like the CPU ops (ops.h): cuDNN and cuBLAS
 * are called with beta = 1. One stream, one cuBLAS and one cuDNN handle per
 * process; the engine thread is the only caller. TF32 is off unless asked
 * for (cuDNN math type CUDNN_FMA_MATH, cuBLAS CUBLAS_DEFAULT_MATH); with it
 * on, convolutions and matrix products may use TF32 tensor cores.
 *
 * Memory: the tape's arena (tape.c) allocates a few large blocks and reuses
 * them after the first step; this file adds a cuDNN workspace and an
 * attention scratch buffer that grow to the largest size seen and are then
 * reused, so a step makes no cudaMalloc. Every CUDA, cuBLAS and cuDNN call
 * is checked; a failure inside an op (a device fault, out of memory while
 * growing scratch) prints the call, its status and the place, and aborts:
 * the device state is unusable by then, and everything the program had
 * acknowledged (labels, checkpoints) is already on disk.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../backend.h"
#include "../ops.h"
#include "../err.h"
}
#include "cuda_common.cuh"
#include "tx.cuh"
#include "cls.cuh"

/* ------------------------------------------------------------- globals */

cudaStream_t d3cu_st __attribute__((visibility("hidden"))); /* the one stream (cuda_common.cuh) */
cublasHandle_t d3cu_cb __attribute__((visibility("hidden"))); /* the one cuBLAS handle (cuda_common.cuh) */
static cudnnHandle_t dn;
static int use_tf32;
static double *red;          /* device scalar for reductions */
static void *ws;             /* cuDNN workspace */
static size_t ws_size;
static float *scratch;       /* attention backward: dS [N,T,T] */
static size_t scratch_size;
static float *gs_scratch;    /* fused group norm + SiLU backward: y's, h's gradient, h */
static size_t gs_scratch_size;


/* --------------------------------------------------------------- memory */

static void *cu_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 256;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear: the caller reports out of memory */
        return NULL;
    }
    CK(cudaMemsetAsync(p, 0, bytes, d3cu_st));
    return p;
}
static void cu_free(void *p) {
    if (!p) return;
    CK(cudaStreamSynchronize(d3cu_st));
    CK(cudaFree(p));
}
static void cu_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, d3cu_st));
}
static void cu_download(void *dst, const void *src, size_t bytes) {
    if (bytes) CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, d3cu_st));
    CK(cudaStreamSynchronize(d3cu_st));
}
static void cu_zero(void *p, size_t bytes) {
    if (bytes) CK(cudaMemsetAsync(p, 0, bytes, d3cu_st));
}
static void cu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, d3cu_st));
}
static void cu_sync(void) { CK(cudaStreamSynchronize(d3cu_st)); }

/* ---------------------------------------------------------- convolution */

typedef struct {
    int N, C, H, W, OC, K, stride, pad;
    cudnnTensorDescriptor_t x, y, b;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    cudnnMathType_t math_fwd, math_data, math_filter;
    size_t ws_fwd, ws_data, ws_filter;
} conv_plan;

#define MAX_PLANS 256
static conv_plan plans[MAX_PLANS];
static int nplans;

/* Largest workspace an algorithm may ask for. */
#define WS_LIMIT ((size_t)1 << 30)

static int math_ok(cudnnMathType_t m) {
    return use_tf32 || m == CUDNN_FMA_MATH || m == CUDNN_DEFAULT_MATH;
}

static conv_plan *plan_for(int N, int C, int H, int W, int OC, int K, int stride, int pad) {
    for (int i = 0; i < nplans; i++) {
        conv_plan *p = &plans[i];
        if (p->N == N && p->C == C && p->H == H && p->W == W && p->OC == OC && p->K == K &&
            p->stride == stride && p->pad == pad)
            return p;
    }
    if (nplans == MAX_PLANS) die("plan_for", "more than 256 convolution shapes", __FILE__, __LINE__);
    conv_plan *p = &plans[nplans++];
    memset(p, 0, sizeof *p);
    p->N = N; p->C = C; p->H = H; p->W = W; p->OC = OC; p->K = K; p->stride = stride; p->pad = pad;
    int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    CKD(cudnnCreateTensorDescriptor(&p->x));
    CKD(cudnnCreateTensorDescriptor(&p->y));
    CKD(cudnnCreateTensorDescriptor(&p->b));
    CKD(cudnnCreateFilterDescriptor(&p->w));
    CKD(cudnnCreateConvolutionDescriptor(&p->conv));
    CKD(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, C, H, W));
    CKD(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, OC, OH, OW));
    CKD(cudnnSetTensor4dDescriptor(p->b, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, OC, 1, 1));
    CKD(cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, OC, C, K, K));
    CKD(cudnnSetConvolution2dDescriptor(p->conv, pad, pad, stride, stride, 1, 1,
                                        CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CKD(cudnnSetConvolutionMathType(p->conv, use_tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));

    /* cudnnFind* times every algorithm on scratch buffers it allocates
     * itself; results come fastest first. */
    int n = 0;
    cudnnConvolutionFwdAlgoPerf_t fp[16];
    CKD(cudnnFindConvolutionForwardAlgorithm(dn, p->x, p->w, p->conv, p->y, 16, &n, fp));
    int ok = 0;
    for (int i = 0; i < n && !ok; i++)
        if (fp[i].status == CUDNN_STATUS_SUCCESS && fp[i].memory <= WS_LIMIT && math_ok(fp[i].mathType)) {
            p->fwd = fp[i].algo; p->ws_fwd = fp[i].memory; p->math_fwd = fp[i].mathType; ok = 1;
        }
    if (!ok) die("cudnnFindConvolutionForwardAlgorithm", "no usable algorithm", __FILE__, __LINE__);
    cudnnConvolutionBwdDataAlgoPerf_t dp[16];
    CKD(cudnnFindConvolutionBackwardDataAlgorithm(dn, p->w, p->y, p->conv, p->x, 16, &n, dp));
    ok = 0;
    for (int i = 0; i < n && !ok; i++)
        if (dp[i].status == CUDNN_STATUS_SUCCESS && dp[i].memory <= WS_LIMIT && math_ok(dp[i].mathType)) {
            p->bwd_data = dp[i].algo; p->ws_data = dp[i].memory; p->math_data = dp[i].mathType; ok = 1;
        }
    if (!ok) die("cudnnFindConvolutionBackwardDataAlgorithm", "no usable algorithm", __FILE__, __LINE__);
    cudnnConvolutionBwdFilterAlgoPerf_t wp[16];
    CKD(cudnnFindConvolutionBackwardFilterAlgorithm(dn, p->x, p->y, p->conv, p->w, 16, &n, wp));
    ok = 0;
    for (int i = 0; i < n && !ok; i++)
        if (wp[i].status == CUDNN_STATUS_SUCCESS && wp[i].memory <= WS_LIMIT && math_ok(wp[i].mathType)) {
            p->bwd_filter = wp[i].algo; p->ws_filter = wp[i].memory; p->math_filter = wp[i].mathType; ok = 1;
        }
    if (!ok) die("cudnnFindConvolutionBackwardFilterAlgorithm", "no usable algorithm", __FILE__, __LINE__);
    return p;
}

__global__ void k_bias_nchw(float *out, const float *b, int C, int HW, size_t n) {
    GRID_STRIDE(i, n) out[i] += b[(i / HW) % C];
}

static void cu_conv2d_forward(float *out, const float *inp, const float *w, const float *b, int N, int C,
                              int H, int W, int OC, int K, int stride, int pad) {
    conv_plan *p = plan_for(N, C, H, W, OC, K, stride, pad);
    const float one = 1.0f, zero = 0.0f;
    grow(&ws, &ws_size, p->ws_fwd);
    CKD(cudnnSetConvolutionMathType(p->conv, p->math_fwd));
    CKD(cudnnConvolutionForward(dn, &one, p->x, inp, p->w, w, p->conv, p->fwd, ws, p->ws_fwd, &zero,
                                p->y, out));
    if (b) {
        int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
        size_t n = (size_t)N * OC * OH * OW;
        k_bias_nchw<<<blocks_for(n, 256), 256, 0, d3cu_st>>>(out, b, OC, OH * OW, n);
        CKL();
    }
}

static void cu_conv2d_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                               const float *w, int N, int C, int H, int W, int OC, int K, int stride,
                               int pad) {
    conv_plan *p = plan_for(N, C, H, W, OC, K, stride, pad);
    const float one = 1.0f;
    if (dinp) {
        grow(&ws, &ws_size, p->ws_data);
        CKD(cudnnSetConvolutionMathType(p->conv, p->math_data));
        CKD(cudnnConvolutionBackwardData(dn, &one, p->w, w, p->y, dout, p->conv, p->bwd_data, ws,
                                         p->ws_data, &one, p->x, dinp));
    }
    if (dw) {
        grow(&ws, &ws_size, p->ws_filter);
        CKD(cudnnSetConvolutionMathType(p->conv, p->math_filter));
        CKD(cudnnConvolutionBackwardFilter(dn, &one, p->x, inp, p->y, dout, p->conv, p->bwd_filter, ws,
                                           p->ws_filter, &one, p->w, dw));
    }
    if (db) CKD(cudnnConvolutionBackwardBias(dn, &one, p->y, dout, &one, p->b, db));
}

/* --------------------------------------------------------------- linear */

__global__ void k_bias_rows(float *out, const float *b, int OUT, size_t n) {
    GRID_STRIDE(i, n) out[i] += b[i % OUT];
}

/* db[o] += sum_n dout[n,o] */
__global__ void k_colsum(float *db, const float *dout, int N, int OUT) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OUT) return;
    float s = 0.0f;
    for (int n = 0; n < N; n++) s += dout[(size_t)n * OUT + o];
    db[o] += s;
}

static void cu_linear_forward(float *out, const float *inp, const float *w, const float *b, int N, int IN,
                              int OUT) {
    /* column-major view: out^T [OUT x N] = W [OUT x IN] * inp^T [IN x N];
     * w row-major [OUT,IN] is column-major [IN x OUT], hence op T. */
    const float one = 1.0f, zero = 0.0f;
    CKB(cublasSgemm(d3cu_cb, CUBLAS_OP_T, CUBLAS_OP_N, OUT, N, IN, &one, w, IN, inp, IN, &zero, out, OUT));
    if (b) {
        size_t n = (size_t)N * OUT;
        k_bias_rows<<<blocks_for(n, 256), 256, 0, d3cu_st>>>(out, b, OUT, n);
        CKL();
    }
}

static void cu_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                               const float *w, int N, int IN, int OUT) {
    const float one = 1.0f;
    /* dinp^T [IN x N] += W^T [IN x OUT] * dout^T [OUT x N] */
    if (dinp) CKB(cublasSgemm(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_N, IN, N, OUT, &one, w, IN, dout, OUT, &one, dinp, IN));
    /* dw^T [IN x OUT] += inp^T [IN x N] * dout [N x OUT] */
    if (dw) CKB(cublasSgemm(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_T, IN, OUT, N, &one, inp, IN, dout, OUT, &one, dw, IN));
    if (db) {
        k_colsum<<<(OUT + 127) / 128, 128, 0, d3cu_st>>>(db, dout, N, OUT);
        CKL();
    }
}

/* ------------------------------------------------------------ groupnorm */

/* one block per (n, g): two passes in double like the CPU op */
__global__ void k_gn_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                             const float *b, int C, int HW, int G, double eps) {
    __shared__ double sh[32];
    int ng = blockIdx.x, n = ng / G, g = ng % G, CG = C / G;
    size_t M = (size_t)CG * HW, off = ((size_t)n * C + (size_t)g * CG) * HW;
    const float *x = inp + off;
    double s = 0.0;
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) s += x[i];
    double mu = block_sum(s, sh) / (double)M;
    double ss = 0.0;
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        double d = x[i] - mu;
        ss += d * d;
    }
    double rs = 1.0 / sqrt(block_sum(ss, sh) / (double)M + eps);
    if (threadIdx.x == 0) { mean[ng] = (float)mu; rstd[ng] = (float)rs; }
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        int c = g * CG + (int)(i / HW);
        float wc = w ? w[c] : 1.0f;
        float a = (float)(rs * wc);
        float bb = (float)((b ? b[c] : 0.0f) - mu * rs * wc);
        out[off + i] = x[i] * a + bb;
    }
}

/* dx += rs * (dxh - mean(dxh) - xhat * mean(dxh * xhat)), dxh = dout * w;
 * one block per (n, g) */
__global__ void k_gn_backward_x(float *dinp, const float *dout, const float *inp, const float *w,
                                const float *mean, const float *rstd, int C, int HW, int G) {
    __shared__ double sh[32];
    int ng = blockIdx.x, n = ng / G, g = ng % G, CG = C / G;
    size_t M = (size_t)CG * HW, off = ((size_t)n * C + (size_t)g * CG) * HW;
    const float *x = inp + off, *d = dout + off;
    float mu = mean[ng], rs = rstd[ng];
    double s1 = 0.0, s2 = 0.0;
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        int c = g * CG + (int)(i / HW);
        float dxh = d[i] * (w ? w[c] : 1.0f);
        s1 += dxh;
        s2 += (double)dxh * ((x[i] - mu) * rs);
    }
    double m1 = block_sum(s1, sh) / (double)M;
    double m2 = block_sum(s2, sh) / (double)M;
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        int c = g * CG + (int)(i / HW);
        float dxh = d[i] * (w ? w[c] : 1.0f);
        float xh = (x[i] - mu) * rs;
        dinp[off + i] += (float)(rs * (dxh - m1 - xh * m2));
    }
}

/* dw[c] += sum dout * xhat, db[c] += sum dout over (n, hw); one block per c */
__global__ void k_gn_backward_wb(float *dw, float *db, const float *dout, const float *inp,
                                 const float *mean, const float *rstd, int N, int C, int HW, int G) {
    __shared__ float sh[32];
    int c = blockIdx.x, g = c / (C / G);
    float a1 = 0.0f, a2 = 0.0f;
    for (int n = 0; n < N; n++) {
        const float *x = inp + ((size_t)n * C + c) * HW, *d = dout + ((size_t)n * C + c) * HW;
        float mu = mean[n * G + g], rs = rstd[n * G + g];
        for (int i = threadIdx.x; i < HW; i += blockDim.x) {
            a1 += d[i];
            a2 += d[i] * (x[i] - mu) * rs;
        }
    }
    a1 = block_sum(a1, sh);
    a2 = block_sum(a2, sh);
    if (threadIdx.x == 0) {
        if (db) db[c] += a1;
        if (dw) dw[c] += a2;
    }
}

static void cu_groupnorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                 const float *b, int N, int C, int HW, int G, float eps) {
    k_gn_forward<<<N * G, 256, 0, d3cu_st>>>(out, mean, rstd, inp, w, b, C, HW, G, ops_eps_double(eps));
    CKL();
}

static void cu_groupnorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                  const float *w, const float *mean, const float *rstd, int N, int C,
                                  int HW, int G, float eps) {
    if (dinp) {
        k_gn_backward_x<<<N * G, 256, 0, d3cu_st>>>(dinp, dout, inp, w, mean, rstd, C, HW, G);
        CKL();
    }
    if (dw || db) {
        k_gn_backward_wb<<<C, 128, 0, d3cu_st>>>(dw, db, dout, inp, mean, rstd, N, C, HW, G);
        CKL();
    }
}

/* ------------------------------------------- group norm + SiLU (fused) */

__global__ void k_addbc_b(float *dx, float *de, const float *dout, int HW); /* elementwise */

/* h = x + e[n,c] (x where e is NULL), the group norm of h, then SiLU; one
 * block per (n, g), the statistics as k_gn_forward; coef [2][N][C] gets
 * the scale and shift applied (the backward forms y again from them) */
__global__ void k_gnsilu_forward(float *out, float *mean, float *rstd, float *coef, const float *inp,
                                 const float *e, const float *w, const float *b, int N, int C, int HW,
                                 int G, double eps) {
    __shared__ double sh[32];
    int ng = blockIdx.x, n = ng / G, g = ng % G, CG = C / G;
    size_t M = (size_t)CG * HW, off = ((size_t)n * C + (size_t)g * CG) * HW;
    const float *x = inp + off, *ev = e ? e + (size_t)n * C + (size_t)g * CG : NULL;
    double s = 0.0;
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) s += ev ? x[i] + ev[i / HW] : x[i];
    double mu = block_sum(s, sh) / (double)M;
    double ss = 0.0;
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        double d = (ev ? x[i] + ev[i / HW] : x[i]) - mu;
        ss += d * d;
    }
    double rs = 1.0 / sqrt(block_sum(ss, sh) / (double)M + eps);
    if (threadIdx.x == 0) { mean[ng] = (float)mu; rstd[ng] = (float)rs; }
    for (int cc = threadIdx.x; cc < CG; cc += blockDim.x) {
        int c = g * CG + cc;
        float wc = w ? w[c] : 1.0f;
        coef[(size_t)n * C + c] = (float)(rs * wc);
        coef[(size_t)(N + n) * C + c] = (float)((b ? b[c] : 0.0f) - mu * rs * wc);
    }
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        int c = g * CG + (int)(i / HW);
        float wc = w ? w[c] : 1.0f;
        float a = (float)(rs * wc);
        float bb = (float)((b ? b[c] : 0.0f) - mu * rs * wc);
        float v = (ev ? x[i] + ev[i / HW] : x[i]) * a + bb;
        out[off + i] = v / (1.0f + expf(-v));
    }
}

/* y's gradient dy = dout * silu'(y), y = h * coef[0] + coef[1]; with e,
 * h = x + e is written to hbuf for the group-norm backward kernels */
__global__ void k_gnsilu_dy(float *dy, float *hbuf, const float *dout, const float *x, const float *e,
                            const float *coef, int HW, size_t NC, size_t n) {
    GRID_STRIDE(i, n) {
        size_t nc = i / HW;
        float h = e ? x[i] + e[nc] : x[i];
        if (e) hbuf[i] = h;
        float v = h * coef[nc] + coef[NC + nc], s = 1.0f / (1.0f + expf(-v));
        dy[i] = dout[i] * s * (1.0f + v * (1.0f - s));
    }
}

static void cu_gnsilu_forward(float *out, float *mean, float *rstd, float *coef, const float *inp,
                              const float *e, const float *w, const float *b, int N, int C, int HW,
                              int G, float eps) {
    k_gnsilu_forward<<<N * G, 256, 0, d3cu_st>>>(out, mean, rstd, coef, inp, e, w, b, N, C, HW, G,
                                                  ops_eps_double(eps));
    CKL();
}

/* composed of the group-norm and addbc backward kernels over dy (and h) */
static void cu_gnsilu_backward(float *dinp, float *de, float *dw, float *db, const float *dout,
                               const float *inp, const float *e, const float *w, const float *coef,
                               const float *mean, const float *rstd, int N, int C, int HW, int G) {
    if (!dinp && !de && !dw && !db) return;
    const size_t n = (size_t)N * C * HW;
    float *dy = (float *)grow((void **)&gs_scratch, &gs_scratch_size,
                             sizeof(float) * n * (e ? 3 : 1));
    float *dh = e ? dy + n : NULL, *h = e ? dy + 2 * n : NULL;
    EW(k_gnsilu_dy, n, dy, h, dout, inp, e, coef, HW, (size_t)N * C, n);
    const float *hx = e ? h : inp;
    if (dinp || de) {
        float *dtarget = e ? dh : dinp;
        if (e) CK(cudaMemsetAsync(dh, 0, sizeof(float) * n, d3cu_st));
        k_gn_backward_x<<<N * G, 256, 0, d3cu_st>>>(dtarget, dy, hx, w, mean, rstd, C, HW, G);
        CKL();
        if (e) {
            k_addbc_b<<<N * C, HW >= 256 ? 256 : (HW >= 128 ? 128 : 64), 0, d3cu_st>>>(dinp, de, dh,
                                                                                       HW);
            CKL();
        }
    }
    if (dw || db) {
        k_gn_backward_wb<<<C, 128, 0, d3cu_st>>>(dw, db, dy, hx, mean, rstd, N, C, HW, G);
        CKL();
    }
}

/* ---------------------------------------------------------- elementwise */

__global__ void k_silu_f(float *out, const float *x, size_t n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        out[i] = v / (1.0f + expf(-v));
    }
}
__global__ void k_silu_b(float *dx, const float *dout, const float *x, size_t n) {
    GRID_STRIDE(i, n) {
        float v = x[i], s = 1.0f / (1.0f + expf(-v));
        dx[i] += dout[i] * s * (1.0f + v * (1.0f - s));
    }
}
__global__ void k_add_f(float *out, const float *a, const float *b, size_t n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}
__global__ void k_add_b(float *da, float *db, const float *dout, size_t n) {
    GRID_STRIDE(i, n) {
        float d = dout[i];
        if (da) da[i] += d;
        if (db) db[i] += d;
    }
}
__global__ void k_addbc_f(float *out, const float *x, const float *e, int HW, size_t n) {
    GRID_STRIDE(i, n) out[i] = x[i] + e[i / HW];
}
/* one block per (n, c) */
__global__ void k_addbc_b(float *dx, float *de, const float *dout, int HW) {
    __shared__ float sh[32];
    size_t nc = blockIdx.x;
    const float *d = dout + nc * HW;
    float s = 0.0f;
    for (int i = threadIdx.x; i < HW; i += blockDim.x) {
        if (dx) dx[nc * HW + i] += d[i];
        s += d[i];
    }
    if (de) {
        s = block_sum(s, sh);
        if (threadIdx.x == 0) de[nc] += s;
    }
}
__global__ void k_concat_f(float *out, const float *a, const float *b, int C1, int C2, int HW, size_t n) {
    GRID_STRIDE(i, n) {
        size_t C = C1 + C2, nn = i / (C * HW), r = i % (C * HW);
        size_t c = r / HW, p = r % HW;
        out[i] = c < (size_t)C1 ? a[(nn * C1 + c) * HW + p] : b[(nn * C2 + (c - C1)) * HW + p];
    }
}
__global__ void k_concat_b(float *da, float *db, const float *dout, int C1, int C2, int HW, size_t n) {
    GRID_STRIDE(i, n) {
        size_t C = C1 + C2, nn = i / (C * HW), r = i % (C * HW);
        size_t c = r / HW, p = r % HW;
        if (c < (size_t)C1) {
            if (da) da[(nn * C1 + c) * HW + p] += dout[i];
        } else if (db) {
            db[(nn * C2 + (c - C1)) * HW + p] += dout[i];
        }
    }
}
/* over the output [N*C, 2H, 2W] */
__global__ void k_up_f(float *out, const float *inp, int H, int W, size_t n) {
    GRID_STRIDE(i, n) {
        size_t W2 = 2 * (size_t)W, plane = 4 * (size_t)H * W;
        size_t nc = i / plane, r = i % plane, y = r / W2, x = r % W2;
        out[i] = inp[(nc * H + y / 2) * W + x / 2];
    }
}
/* over the input [N*C, H, W]: sum of its four output pixels */
__global__ void k_up_b(float *dinp, const float *dout, int H, int W, size_t n) {
    GRID_STRIDE(i, n) {
        size_t plane = (size_t)H * W, nc = i / plane, r = i % plane, y = r / W, x = r % W;
        const float *d = dout + nc * 4 * plane + (2 * y) * (2 * (size_t)W) + 2 * x;
        dinp[i] += d[0] + d[1] + d[2 * W] + d[2 * W + 1];
    }
}


static void cu_silu_forward(float *out, const float *inp, size_t n) { EW(k_silu_f, n, out, inp, n); }
static void cu_silu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (dinp) EW(k_silu_b, n, dinp, dout, inp, n);
}
static void cu_add_forward(float *out, const float *a, const float *b, size_t n) { EW(k_add_f, n, out, a, b, n); }
static void cu_add_backward(float *da, float *db, const float *dout, size_t n) {
    if (da || db) EW(k_add_b, n, da, db, dout, n);
}
static void cu_addbc_forward(float *out, const float *x, const float *e, int N, int C, int HW) {
    size_t n = (size_t)N * C * HW;
    EW(k_addbc_f, n, out, x, e, HW, n);
}
static void cu_addbc_backward(float *dx, float *de, const float *dout, int N, int C, int HW) {
    if (!dx && !de) return;
    k_addbc_b<<<N * C, HW >= 256 ? 256 : (HW >= 128 ? 128 : 64), 0, d3cu_st>>>(dx, de, dout, HW);
    CKL();
}
static void cu_concat_forward(float *out, const float *a, const float *b, int N, int C1, int C2, int HW) {
    size_t n = (size_t)N * (C1 + C2) * HW;
    EW(k_concat_f, n, out, a, b, C1, C2, HW, n);
}
static void cu_concat_backward(float *da, float *db, const float *dout, int N, int C1, int C2, int HW) {
    size_t n = (size_t)N * (C1 + C2) * HW;
    if (da || db) EW(k_concat_b, n, da, db, dout, C1, C2, HW, n);
}
static void cu_upsample2x_forward(float *out, const float *inp, int N, int C, int H, int W) {
    size_t n = (size_t)N * C * 4 * H * W;
    EW(k_up_f, n, out, inp, H, W, n);
}
static void cu_upsample2x_backward(float *dinp, const float *dout, int N, int C, int H, int W) {
    size_t n = (size_t)N * C * H * W;
    if (dinp) EW(k_up_b, n, dinp, dout, H, W, n);
}

/* ------------------------------------------------------------ attention */

/* in-place softmax of each row of length T; one block per row */
__global__ void k_softmax_rows(float *a, int T) {
    __shared__ float sh[32];
    float *r = a + (size_t)blockIdx.x * T;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < T; j += blockDim.x) mx = fmaxf(mx, r[j]);
    /* block max through the sum helper's layout: reduce with shuffles */
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_down_sync(0xffffffffu, mx, o));
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) sh[wid] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = sh[0];
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, sh[w]);
        sh[0] = m;
    }
    __syncthreads();
    mx = sh[0];
    float s = 0.0f;
    for (int j = threadIdx.x; j < T; j += blockDim.x) {
        float e = expf(r[j] - mx);
        r[j] = e;
        s += e;
    }
    s = block_sum(s, sh);
    float inv = 1.0f / s;
    for (int j = threadIdx.x; j < T; j += blockDim.x) r[j] *= inv;
}

/* dS = att * (datt - sum_j att datt) * scale, in place over datt; one block per row */
__global__ void k_softmax_back_rows(float *datt, const float *att, int T, float scale) {
    __shared__ float sh[32];
    float *d = datt + (size_t)blockIdx.x * T;
    const float *a = att + (size_t)blockIdx.x * T;
    float s = 0.0f;
    for (int j = threadIdx.x; j < T; j += blockDim.x) s += a[j] * d[j];
    s = block_sum(s, sh);
    for (int j = threadIdx.x; j < T; j += blockDim.x) d[j] = a[j] * (d[j] - s) * scale;
}

static int row_threads(int T) { return T >= 256 ? 256 : T >= 128 ? 128 : T >= 64 ? 64 : 32; }

/* Per image: q, k, v are [C,T] row-major at qkv + {0, C, 2C}*T. In the
 * column-major view a row-major [C,T] buffer is a T x C matrix (ld T). */
static void cu_attention_forward(float *out, float *att, const float *qkv, int N, int C, int T) {
    const float sc = 1.0f / sqrtf((float)C), one = 1.0f, zero = 0.0f;
    long long sq = 3LL * C * T, sa = (long long)T * T, so = (long long)C * T;
    /* att^T (col-major T x T, = att row-major) : S^T(j,i) = sum_c K(j,c) Q(i,c) */
    CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_T, T, T, C, &sc, qkv + (size_t)C * T, T, sq,
                                  qkv, T, sq, &zero, att, T, sa, N));
    k_softmax_rows<<<N * T, row_threads(T), 0, d3cu_st>>>(att, T);
    CKL();
    /* O(i,c) = sum_j att[i][j] V(j,c): A = att as col-major (j,i), op T */
    CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_T, CUBLAS_OP_N, T, C, T, &one, att, T, sa,
                                  qkv + 2 * (size_t)C * T, T, sq, &zero, out, T, so, N));
}

static void cu_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att, int N,
                                  int C, int T) {
    if (!dqkv) return;
    const float sc = 1.0f / sqrtf((float)C), one = 1.0f, zero = 0.0f;
    long long sq = 3LL * C * T, sa = (long long)T * T, so = (long long)C * T;
    size_t CT = (size_t)C * T;
    float *ds = (float *)grow((void **)&scratch, &scratch_size, sizeof(float) * (size_t)N * T * T);
    /* dV(j,c) += sum_i att[i][j] dO(i,c) */
    CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_N, T, C, T, &one, att, T, sa, dout, T, so, &one,
                                  dqkv + 2 * CT, T, sq, N));
    /* datt[i][j] (col-major (j,i)) = sum_c V(j,c) dO(i,c) */
    CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_T, T, T, C, &one, qkv + 2 * CT, T, sq, dout, T,
                                  so, &zero, ds, T, sa, N));
    k_softmax_back_rows<<<N * T, row_threads(T), 0, d3cu_st>>>(ds, att, T, sc);
    CKL();
    /* dQ(i,c) += sum_j dS[i][j] K(j,c) */
    CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_T, CUBLAS_OP_N, T, C, T, &one, ds, T, sa, qkv + CT, T, sq, &one,
                                  dqkv, T, sq, N));
    /* dK(j,c) += sum_i dS[i][j] Q(i,c) */
    CKB(cublasSgemmStridedBatched(d3cu_cb, CUBLAS_OP_N, CUBLAS_OP_N, T, C, T, &one, ds, T, sa, qkv, T, sq, &one,
                                  dqkv + CT, T, sq, N));
}

/* ----------------------------------------------------------- embeddings */

__global__ void k_emb_f(float *out, const int *idx, const float *table, int D, size_t n) {
    GRID_STRIDE(i, n) out[i] = table[(size_t)idx[i / D] * D + i % D];
}
__global__ void k_emb_b(float *dtable, const float *dout, const int *idx, int D, size_t n) {
    GRID_STRIDE(i, n) atomicAdd(&dtable[(size_t)idx[i / D] * D + i % D], dout[i]);
}
/* in double like the CPU op, rounded to float once */
__global__ void k_temb(float *out, const float *t, int D, size_t n) {
    int half = D / 2;
    GRID_STRIDE(i, n) {
        size_t nn = i / half;
        int j = (int)(i % half);
        double f = exp(-log(10000.0) * j / half), a = (double)t[nn] * f;
        out[nn * D + j] = (float)cos(a);
        out[nn * D + half + j] = (float)sin(a);
    }
}

static void cu_embedding_forward(float *out, const int *idx, const float *table, int N, int D) {
    size_t n = (size_t)N * D;
    EW(k_emb_f, n, out, idx, table, D, n);
}
static void cu_embedding_backward(float *dtable, const float *dout, const int *idx, int N, int D) {
    size_t n = (size_t)N * D;
    if (dtable) EW(k_emb_b, n, dtable, dout, idx, D, n);
}
static void cu_timestep_embedding(float *out, const float *t, int N, int D) {
    size_t n = (size_t)N * (D / 2);
    EW(k_temb, n, out, t, D, n);
}

/* ------------------------------------------- reductions and optimizer */

/* *acc += sum (a - b)^2 (b may be NULL: sum a^2), in double */
__global__ void k_sqdiff(double *acc, const float *a, const float *b, size_t n) {
    __shared__ double sh[32];
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double d = b ? (double)a[i] - (double)b[i] : (double)a[i];
        s += d * d;
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

static double sqdiff(const float *a, const float *b, size_t n) {
    double h = 0.0;
    CK(cudaMemsetAsync(red, 0, sizeof(double), d3cu_st));
    if (n > 0) {
        unsigned g = blocks_for(n, 256);
        if (g > 1024) g = 1024;
        k_sqdiff<<<g, 256, 0, d3cu_st>>>(red, a, b, n);
        CKL();
    }
    cu_download(&h, red, sizeof h);
    return h;
}

static float cu_mse_forward(const float *a, const float *b, size_t n) {
    if (n == 0) return 0.0f;
    return (float)(sqdiff(a, b, n) / (double)n);
}
__global__ void k_mse_b(float *da, float s, const float *a, const float *b, size_t n) {
    GRID_STRIDE(i, n) da[i] += s * (a[i] - b[i]);
}
static void cu_mse_backward(float *da, float dloss, const float *a, const float *b, size_t n) {
    if (!da || n == 0) return;
    const float s = 2.0f * dloss / (float)n;
    EW(k_mse_b, n, da, s, a, b, n);
}

static double cu_sumsq(const float *x, size_t n) { return sqdiff(x, NULL, n); }

__global__ void k_scale(float *x, float s, size_t n) {
    GRID_STRIDE(i, n) x[i] *= s;
}
static void cu_scale(float *x, float s, size_t n) { EW(k_scale, n, x, s, n); }

__global__ void k_adamw(float *p, float *m, float *v, const float *g, size_t n, float b1, float b2, float eps,
                        float step_size, float rbc2, float decay) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * rbc2 + eps;
        p[i] = p[i] * decay - step_size * mi / denom;
    }
}
static void cu_adamw(float *p, float *m, float *v, const float *g, size_t n, float b1, float b2, float eps,
                     float step_size, float rbc2, float decay) {
    EW(k_adamw, n, p, m, v, g, n, b1, b2, eps, step_size, rbc2, decay);
}
__global__ void k_ema(float *e, const float *p, float decay, size_t n) {
    GRID_STRIDE(i, n) e[i] = decay * e[i] + (1 - decay) * p[i];
}
static void cu_ema(float *e, const float *p, float decay, size_t n) { EW(k_ema, n, e, p, decay, n); }

/* ---------------------------------------------------------------- table */

static const d3_backend cuda_table = {
    .abi = D3_BACKEND_ABI,
    .name = "cuda",
    .host = 0,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .zero = cu_zero,
    .copy = cu_copy,
    .sync = cu_sync,
    .sumsq = cu_sumsq,
    .scale = cu_scale,
    .adamw = cu_adamw,
    .ema = cu_ema,
    .conv2d_forward = cu_conv2d_forward,
    .conv2d_backward = cu_conv2d_backward,
    .linear_forward = cu_linear_forward,
    .linear_backward = cu_linear_backward,
    .groupnorm_forward = cu_groupnorm_forward,
    .groupnorm_backward = cu_groupnorm_backward,
    .silu_forward = cu_silu_forward,
    .silu_backward = cu_silu_backward,
    .add_forward = cu_add_forward,
    .add_backward = cu_add_backward,
    .addbc_forward = cu_addbc_forward,
    .addbc_backward = cu_addbc_backward,
    .concat_forward = cu_concat_forward,
    .concat_backward = cu_concat_backward,
    .upsample2x_forward = cu_upsample2x_forward,
    .upsample2x_backward = cu_upsample2x_backward,
    .attention_forward = cu_attention_forward,
    .attention_backward = cu_attention_backward,
    .embedding_forward = cu_embedding_forward,
    .embedding_backward = cu_embedding_backward,
    .timestep_embedding = cu_timestep_embedding,
    .mse_forward = cu_mse_forward,
    .mse_backward = cu_mse_backward,
    .timestep_embedding_ex = cu_timestep_embedding_ex,
    .layernorm_forward = cu_layernorm_forward,
    .layernorm_backward = cu_layernorm_backward,
    .gelu_forward = cu_gelu_forward,
    .gelu_backward = cu_gelu_backward,
    .quick_gelu_forward = cu_quick_gelu_forward,
    .quick_gelu_backward = cu_quick_gelu_backward,
    .geglu_forward = cu_geglu_forward,
    .geglu_backward = cu_geglu_backward,
    .mha_forward = cu_mha_forward,
    .mha_backward = cu_mha_backward,
    .transpose_forward = cu_transpose_forward,
    .transpose_backward = cu_transpose_backward,
    .scale_forward = cu_scale_forward,
    .scale_backward = cu_scale_backward,
    .avgpool_forward = cu_avgpool_forward,
    .avgpool_backward = cu_avgpool_backward,
    .xent_forward = cu_xent_forward,
    .xent_backward = cu_xent_backward,
    .gnsilu_forward = cu_gnsilu_forward,
    .gnsilu_backward = cu_gnsilu_backward,
    /* no kept conv transforms: cuDNN chooses its own algorithms */
    .conv2d_keep_floats = nullptr,
    .conv2d_forward_keep = nullptr,
    .conv2d_backward_keep = nullptr,
};

/* ------------------------------------------------------- entry points */

static int opened; /* d3po_cuda_open succeeded */

static const char *result_tf32_text(void) {
    if (!opened) return "off unless --tf32";
    return use_tf32 ? "on (--tf32)" : "off";
}

static int fail(char *err, const char *fmt, const char *a, const char *b) {
    if (err) snprintf(err, D3_ERRLEN, fmt, a, b);
    return -1;
}

static int count_devices(char *err) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || e == cudaErrorInitializationError ||
        e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice) {
        const char *what = e == cudaErrorNoDevice ? "no GPU" :
                           e == cudaErrorInsufficientDriver ? "no usable CUDA driver" : "CUDA driver problem";
        fail(err, "%s (cudaGetDeviceCount: %s)", what, cudaGetErrorString(e));
        return -1;
    }
    if (e != cudaSuccess) {
        fail(err, "cudaGetDeviceCount failed: %s%s", cudaGetErrorString(e), "");
        return -1;
    }
    if (n == 0) {
        fail(err, "no GPU%s%s", "", "");
        return -1;
    }
    return n;
}

extern "C" __attribute__((visibility("default"))) const d3_backend *d3po_cuda_open(int tf32, char *err) {
    static int done;
    static const d3_backend *result;
    static char saved[D3_ERRLEN];
    if (done) {
        if (!result && err) snprintf(err, D3_ERRLEN, "%s", saved);
        return result;
    }
    done = 1;
    char e2[D3_ERRLEN] = "";
    if (count_devices(e2) < 0) goto bad;
    {
        cudaError_t e;
        if ((e = cudaSetDevice(0)) != cudaSuccess || (e = cudaFree(0)) != cudaSuccess ||
            (e = cudaStreamCreateWithFlags(&d3cu_st, cudaStreamNonBlocking)) != cudaSuccess ||
            (e = cudaMalloc((void **)&red, sizeof(double))) != cudaSuccess) {
            fail(e2, "initialising device 0 failed: %s%s", cudaGetErrorString(e), "");
            goto bad;
        }
        cublasStatus_t bs;
        if ((bs = cublasCreate(&d3cu_cb)) != CUBLAS_STATUS_SUCCESS) {
            fail(e2, "cuBLAS: cublasCreate failed: %s%s", cublasGetStatusString(bs), "");
            goto bad;
        }
        if ((bs = cublasSetStream(d3cu_cb, d3cu_st)) != CUBLAS_STATUS_SUCCESS ||
            (bs = cublasSetMathMode(d3cu_cb, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)) !=
                CUBLAS_STATUS_SUCCESS) {
            fail(e2, "cuBLAS: setting stream/math mode failed: %s%s", cublasGetStatusString(bs), "");
            goto bad;
        }
        cudnnStatus_t ds;
        if ((ds = cudnnCreate(&dn)) != CUDNN_STATUS_SUCCESS) {
            fail(e2, "cuDNN: cudnnCreate failed: %s%s", cudnnGetErrorString(ds), "");
            goto bad;
        }
        if ((ds = cudnnSetStream(dn, d3cu_st)) != CUDNN_STATUS_SUCCESS) {
            fail(e2, "cuDNN: cudnnSetStream failed: %s%s", cudnnGetErrorString(ds), "");
            goto bad;
        }
        use_tf32 = tf32;
        opened = 1;
        result = &cuda_table;
        return result;
    }
bad:
    snprintf(saved, sizeof saved, "%s", e2);
    if (err) snprintf(err, D3_ERRLEN, "%s", saved);
    return NULL;
}

extern "C" __attribute__((visibility("default"))) int d3po_cuda_describe(char *out, size_t len) {
    char e2[D3_ERRLEN] = "";
    int n = count_devices(e2);
    if (n < 0) {
        snprintf(out, len, "%s", e2);
        return -1;
    }
    size_t o = 0;
    for (int i = 0; i < n && o < len; i++) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
        o += snprintf(out + o, len - o, "cuda:%d: %s, %.1f GiB, compute capability %d.%d, %d SMs\n", i, p.name,
                      p.totalGlobalMem / 1073741824.0, p.major, p.minor, p.multiProcessorCount);
    }
    int rt = 0, drv = 0, blas = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    cublasGetProperty(MAJOR_VERSION, &blas);
    int bmin = 0;
    cublasGetProperty(MINOR_VERSION, &bmin);
    size_t dv = cudnnGetVersion();
    if (o < len)
        snprintf(out + o, len - o,
                 "cuda: runtime %d.%d, driver %d.%d, cuBLAS %d.%d, cuDNN %zu.%zu.%zu; TF32 %s\n", rt / 1000,
                 rt % 1000 / 10, drv / 1000, drv % 1000 / 10, blas, bmin, dv / 10000, dv / 100 % 100, dv % 100,
                 result_tf32_text());
    return n;
}
