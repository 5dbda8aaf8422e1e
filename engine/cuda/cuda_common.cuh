/* cuda_common.cuh - what the CUDA backend's files share (backend_cuda.cu:
 * the table and the UNet ops; tx.cu: the transformer ops): call checking,
 * the one stream, launch helpers and block reductions. */
#ifndef D3PO_CUDA_COMMON_CUH
#define D3PO_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdio.h>
#include <stdlib.h>

/* The stream every op runs on and the cuBLAS handle bound to it (created
 * by d3po_cuda_open). */
extern cudaStream_t d3cu_st __attribute__((visibility("hidden")));
extern cublasHandle_t d3cu_cb __attribute__((visibility("hidden")));

/* ------------------------------------------------------------ checking */

static inline void die(const char *call, const char *what, const char *file, int line) {
    fprintf(stderr, "d3po: cuda backend: %s failed: %s (%s:%d)\n", call, what, file, line);
    abort();
}

#define CK(call)                                                                      \
    do {                                                                              \
        cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess) die(#call, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)
#define CKB(call)                                                                     \
    do {                                                                              \
        cublasStatus_t s_ = (call);                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) die(#call, cublasGetStatusString(s_), __FILE__, __LINE__); \
    } while (0)
#define CKD(call)                                                                     \
    do {                                                                              \
        cudnnStatus_t s_ = (call);                                                    \
        if (s_ != CUDNN_STATUS_SUCCESS) die(#call, cudnnGetErrorString(s_), __FILE__, __LINE__); \
    } while (0)
/* after a kernel launch: launch-configuration errors */
#define CKL() CK(cudaGetLastError())

/* A scratch buffer that grows to the largest size asked for and is then
 * reused (so a step makes no cudaMalloc). */
static inline void *grow(void **p, size_t *have, size_t need) {
    if (need <= *have) return *p;
    if (*p) CK(cudaFree(*p));
    *p = NULL;
    *have = 0;
    CK(cudaMalloc(p, need));
    *have = need;
    return *p;
}

static inline unsigned blocks_for(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b > 65535u * 16 ? 65535u * 16 : b); /* grid-stride loops cover the rest */
}
#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)


#define EW(kernel, n, ...)                                                         \
    do {                                                                           \
        if ((n) > 0) {                                                             \
            kernel<<<blocks_for((n), 256), 256, 0, d3cu_st>>>(__VA_ARGS__);             \
            CKL();                                                                 \
        }                                                                          \
    } while (0)

/* ---------------------------------------------------- block reductions */

template <typename T>
__device__ T block_sum(T v, T *sh) {
    /* blockDim.x is a multiple of 32, at most 1024; sh holds 32 values */
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = threadIdx.x < nw ? sh[threadIdx.x] : (T)0;
    if (wid == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}

#endif
