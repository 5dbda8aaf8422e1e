/* snr.h - the signal share of a preference gradient, shared by the
 * measurement tools bench/step_snr.c and bench/pair_snr.c: one pair's
 * gradient g_p is added to an accumulator; acc_print prints the mean
 * squared norm E|g|^2, an unbiased estimate of the squared norm of the
 * expected gradient |E g|^2 ~ (|sum_p g_p|^2 - sum_p |g_p|^2) / (N (N-1))
 * with its standard error (from consecutive, independent pairs), their
 * ratio snr (the share of one label's gradient that is signal) and the
 * labels it takes for the mean gradient's signal to match its noise.
 * Static functions: each tool includes it once. */
#ifndef D3PO_BENCH_SNR_H
#define D3PO_BENCH_SNR_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    double *sum;  /* sum_p g_p [numel] */
    float *prev;  /* the previous pair's g [numel] */
    double sumsq; /* sum_p |g_p|^2 */
    double prevsq; /* |prev|^2 */
    double cross; /* sum over consecutive pairs of (g_p . g_{p-1})^2 */
    int n, ncross;
} acc;

/* Adds g[lo..hi) of one pair's gradient to a (q, d: its running |g|^2
 * and g . prev); acc_close then ends the pair. */
static void acc_span(acc *a, const float *g, size_t lo, size_t hi, double *q, double *d) {
    for (size_t j = lo; j < hi; j++) {
        a->sum[j] += g[j];
        *q += (double)g[j] * g[j];
        *d += (double)g[j] * a->prev[j];
        a->prev[j] = g[j];
    }
}

static void acc_close(acc *a, double q, double d) {
    if (a->n > 0 && q > 0 && a->prevsq > 0) { /* zero gradients (branch mode) say nothing */
        a->cross += d * d;
        a->ncross++;
    }
    a->prevsq = q;
    a->sumsq += q;
    a->n++;
}

static void acc_add(acc *a, const float *g, size_t n) {
    double q = 0, d = 0;
    acc_span(a, g, 0, n, &q, &d);
    acc_close(a, q, d);
}

/* One row: E|g|^2, the estimate of |E g|^2 and its standard error
 * sqrt(2 tr(Sigma^2) / (N (N-1))), with tr(Sigma^2) estimated by the mean
 * of (g_p . g_{p-1})^2 over consecutive (independent) pairs; the signal
 * fraction snr = |E g|^2 / E|g|^2 and its error; the labels for signal =
 * noise in the mean gradient (E|g|^2 / |E g|^2), or a lower bound from
 * snr + 2 se when the estimate is not above two standard errors. */
static void print_row(const char *name, double msq, double sig, double se, const char *tail) {
    char lab[32];
    if (msq == 0) { /* no gradient at all (e.g. behind a zero output layer) */
        printf("%-10s %11.4e %11s %11s %9s %8s %10s%s\n", name, 0.0, "n/a", "n/a", "n/a", "n/a", "n/a",
               tail);
        return;
    }
    if (isnan(se)) { /* too few non-zero consecutive pairs for the error */
        printf("%-10s %11.4e %11.4e %11s %9.5f %8s %10s%s\n", name, msq, sig, "n/a", sig / msq, "n/a",
               "n/a", tail);
        return;
    }
    double snr = sig / msq, snr_se = se / msq;
    if (snr > 2 * snr_se) snprintf(lab, sizeof lab, "%.0f", 1.0 / snr);
    else snprintf(lab, sizeof lab, "> %.0f", 1.0 / (snr > 0 ? snr + 2 * snr_se : 2 * snr_se));
    printf("%-10s %11.4e %11.4e %11.4e %9.5f %8.5f %10s%s\n", name, msq, sig, se, snr, snr_se, lab,
           tail);
}

static void acc_print(const char *name, const acc *a, size_t n, const char *tail) {
    double s2 = 0;
    int N = a->n;
    for (size_t j = 0; j < n; j++) s2 += a->sum[j] * a->sum[j];
    double msq = a->sumsq / N, sig = (s2 - a->sumsq) / ((double)N * (N - 1));
    double se = a->ncross < 10 ? NAN : sqrt(2.0 * (a->cross / a->ncross) / ((double)N * (N - 1)));
    print_row(name, msq, sig, se, tail);
}


/* A zeroed accumulator for gradients of n floats; -1 when out of memory. */
static int acc_init(acc *a, size_t n) {
    *a = (acc){.sum = calloc(n, sizeof(double)), .prev = calloc(n, sizeof(float))};
    return a->sum && a->prev ? 0 : -1;
}
#endif
