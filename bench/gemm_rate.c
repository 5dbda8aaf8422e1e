/* gemm_rate.c - single-thread GFLOP/s of the engine's matrix product
 * (ops_gemm_nn: the AVX-512 kernel where the build has it) and of
 * OpenBLAS's cblas_sgemm on the same row-major shapes: the Winograd
 * products' (M = out channels, N = 64 tiles, K = in channels) and a
 * large square one, the yardstick for "sgemm peak" in bench/results.
 *
 *   gemm_rate            prints one line per shape:
 *   gemm M64 N64 K64: d3po <GFLOP/s>, openblas (<core>) <GFLOP/s>
 *
 * Times are process CPU seconds over ~2 GFLOP per shape and program
 * (OpenBLAS pinned to one thread); the core is what OpenBLAS runs
 * (OPENBLAS_CORETYPE may force it). No assertion on speed. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ops_internal.h"

char *openblas_get_corename(void);
void openblas_set_num_threads(int num_threads);

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void) {
    static const int shapes[][3] = {{32, 64, 32}, {64, 64, 64}, {64, 64, 128}, {128, 64, 128},
                                    {1024, 1024, 1024}};
    openblas_set_num_threads(1);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
        float *C = malloc(sizeof(float) * M * N);
        if (!A || !B || !C) {
            fprintf(stderr, "gemm_rate: out of memory\n");
            return 1;
        }
        for (long i = 0; i < (long)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
        for (long i = 0; i < (long)K * N; i++) B[i] = (float)(i % 5) * 0.1f;
        const double fl = 2.0 * M * N * K;
        const int reps = (int)(2e9 / fl) + 1;
        ops_gemm_nn(M, N, K, A, K, B, N, 0, C, N); /* warm-up */
        double t0 = cpu_now();
        for (int r = 0; r < reps; r++) ops_gemm_nn(M, N, K, A, K, B, N, 0, C, N);
        double t1 = cpu_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f,
                    C, N);
        double t2 = cpu_now();
        for (int r = 0; r < reps; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N,
                        0.0f, C, N);
        double t3 = cpu_now();
        printf("gemm M%d N%d K%d: d3po %.1f GFLOP/s, openblas (%s) %.1f GFLOP/s\n", M, N, K,
               fl * reps / (t1 - t0) / 1e9, openblas_get_corename(), fl * reps / (t3 - t2) / 1e9);
        free(A);
        free(B);
        free(C);
    }
    return 0;
}
