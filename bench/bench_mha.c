/* bench_mha.c - time of one multi-head attention forward + backward
 * (mha_forward + mha_backward, engine/ops_tx.c) on the CPU.
 *
 *   build/bench/bench_mha [N T dh heads threads reps]   (default 1 1024 64 8 2 5)
 *
 * Prints `mha N.. T.. dh.. heads.. threads..: <ms> ms` (median of reps
 * after one warm-up). bench/mha.sh runs it beside bench/mha_torch.py
 * (PyTorch's explicit softmax attention, same shape and threads) and prints
 * the ratio; nothing here asserts on time. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ops.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int a[6] = {1, 1024, 64, 8, 2, 5};
    if (argc != 1 && argc != 7) {
        fprintf(stderr, "usage: bench_mha [N T dh heads threads reps]\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        a[i - 1] = atoi(argv[i]);
        if (a[i - 1] <= 0 || a[i - 1] > 1000000) {
            fprintf(stderr, "bench_mha: argument %d must be a positive integer\n", i);
            return 1;
        }
    }
    const int N = a[0], T = a[1], dh = a[2], H = a[3], reps = a[5] > 64 ? 64 : a[5];
    ops_set_threads(a[4]);
    const size_t n = (size_t)N * T * H * dh;
    float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *o = malloc(n * 4);
    float *r = malloc(n * 4), *dq = malloc(n * 4), *dk = malloc(n * 4), *dv = malloc(n * 4);
    float *lse = malloc((size_t)N * H * T * 4);
    if (!q || !k || !v || !o || !r || !dq || !dk || !dv || !lse) {
        fprintf(stderr, "bench_mha: out of memory\n");
        return 2;
    }
    unsigned s = 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        q[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
        k[i] = q[(i * 7) % n];
        v[i] = q[(i * 13) % n];
        r[i] = q[(i * 3) % n];
        dq[i] = dk[i] = dv[i] = 0.0f;
    }
    double t[65];
    for (int it = 0; it <= reps; it++) {
        const double t0 = now();
        mha_forward(o, lse, q, k, v, N, T, T, H, dh, 0);
        mha_backward(dq, dk, dv, r, q, k, v, o, lse, N, T, T, H, dh, 0);
        t[it] = now() - t0;
    }
    qsort(t + 1, reps, sizeof(double), cmpd); /* t[0]: warm-up */
    printf("mha N%d T%d dh%d heads%d threads%d: %.2f ms\n", N, T, dh, H, a[4], 1e3 * t[1 + reps / 2]);
    free(q); free(k); free(v); free(o); free(r); free(dq); free(dk); free(dv); free(lse);
    return 0;
}
