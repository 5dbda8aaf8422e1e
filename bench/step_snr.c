/* step_snr.c - where the preference signal of a judge lies among the
 * denoising steps: how much of the D3PO gradient is signal and how much is
 * the noise of the sampled steps, step by step, on the base model.
 *
 *   build/bench/step_snr MODEL ORACLE NPAIRS [CLASSES] [STEPS] [THREADS] [branch]
 *
 * Samples NPAIRS pairs as the engine does (pair i: seed 1 + i, shared x_T,
 * step-noise streams 1 and 2; classes cycled over CLASSES, a comma list of
 * class names, default all), has ORACLE judge each pair (ties dropped),
 * and computes every pair's D3PO gradient at the model itself (reference
 * = policy, so every ratio is 1) step by step: g_{p,k}. Per step k it
 * prints the mean squared norm E|g|^2, an unbiased estimate of the
 * squared norm of the expected gradient,
 *   |E g|^2 ~ (|sum_p g_p|^2 - sum_p |g_p|^2) / (N (N - 1)),
 * with its standard error, their ratio snr (the share of one label's
 * gradient that is signal) and the labels it takes for the mean gradient's
 * signal to match its noise (1 / snr; a lower bound when the estimate is
 * within two standard errors of zero). The same for the sum over all
 * steps (what one training update uses) and for the high- and low-noise
 * halves, and for the whole update restricted to parts of the model
 * (group_pat below). A judge answering at random (noisy:NAME:1e9) has
 * |E g|^2 = 0.
 * With "branch" the two images of a pair share every step's noise but
 * one, step (7 i) mod STEPS for pair i (a variance-reduction idea: the
 * images then differ only by one step's noise, and the steps before it
 * give no gradient); the per-step rows of steps that few pairs reach say
 * "n/a" for the error.
 * A measurement for bench/results, not a test (about 4 s per pair on one
 * thread). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion.h"
#include "image.h"
#include "ops.h"
#include "oracle.h"
#include "session.h"

#include "snr.h"

/* Step weightings. One update sums the K steps' gradients with weight 1
 * each; a weighted sum sum_k w_k g_k has signal w'Mw and mean square w'Qw,
 * with M_jk = E g_j . E g_k (unbiased from different pairs) and Q_jk =
 * E[g_j . g_k]. Keeping each pair's K step gradients gives both matrices
 * (and, from consecutive pairs, the error of any w'Mw), so any weighting
 * can be scored afterwards: the paper's (all 1), sigma_k (the log-density
 * scaled by the step's noise), equal norms, and the best one (the top
 * generalized eigenvector of (M, Q)), chosen on one half of the pairs and
 * scored on the other. */
typedef struct {
    int K, N, n[2], nd;
    size_t numel;
    float *G, *Gp;  /* this pair's and the previous pair's step gradients [K][numel] */
    double *S[2];   /* per-step sums over the even/odd pairs [K][numel] */
    double *C[2];   /* sum over the even/odd pairs of G_j . G_k [K][K] */
    double *Dp;     /* per pair after the first: G_j . Gp_k [N][K][K] */
} wstats;

static int ws_init(wstats *w, int K, int N, size_t numel) {
    *w = (wstats){.K = K, .N = N, .numel = numel};
    w->G = calloc((size_t)K * numel, sizeof(float));
    w->Gp = calloc((size_t)K * numel, sizeof(float));
    w->S[0] = calloc((size_t)K * numel, sizeof(double));
    w->S[1] = calloc((size_t)K * numel, sizeof(double));
    w->C[0] = calloc((size_t)K * K, sizeof(double));
    w->C[1] = calloc((size_t)K * K, sizeof(double));
    w->Dp = calloc((size_t)N * K * K, sizeof(double));
    return w->G && w->Gp && w->S[0] && w->S[1] && w->C[0] && w->C[1] && w->Dp ? 0 : -1;
}

static double dotf(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t j = 0; j < n; j++) s += (double)a[j] * b[j];
    return s;
}

static double dotd(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t j = 0; j < n; j++) s += a[j] * b[j];
    return s;
}

/* Ends one pair whose step gradients are in w->G. */
static void ws_add(wstats *w) {
    int K = w->K, h = (w->n[0] + w->n[1]) & 1;
    size_t n = w->numel;
    for (int j = 0; j < K; j++)
        for (int k = j; k < K; k++) {
            double d = dotf(w->G + j * n, w->G + k * n, n);
            w->C[h][j * K + k] += d;
            if (k != j) w->C[h][k * K + j] += d;
        }
    if (w->n[0] + w->n[1] > 0) {
        double *D = w->Dp + (size_t)w->nd++ * K * K;
        for (int j = 0; j < K; j++)
            for (int k = 0; k < K; k++) D[j * K + k] = dotf(w->G + j * n, w->Gp + k * n, n);
    }
    for (size_t j = 0; j < (size_t)K * n; j++) w->S[h][j] += w->G[j];
    w->n[h]++;
    float *t = w->G;
    w->G = w->Gp;
    w->Gp = t;
}

/* M and Q of the even pairs (h 0), the odd ones (1) or all (2). */
static void ws_mq(const wstats *w, int h, double *M, double *Q) {
    int K = w->K;
    size_t n = w->numel;
    double *sk = malloc(n * sizeof(double)), *sj = malloc(n * sizeof(double));
    int N = h == 2 ? w->n[0] + w->n[1] : w->n[h];
    for (int j = 0; j < K; j++) {
        for (size_t q = 0; q < n; q++)
            sj[q] = h == 2 ? w->S[0][j * n + q] + w->S[1][j * n + q] : w->S[h][j * n + q];
        for (int k = j; k < K; k++) {
            for (size_t q = 0; q < n; q++)
                sk[q] = h == 2 ? w->S[0][k * n + q] + w->S[1][k * n + q] : w->S[h][k * n + q];
            double c = h == 2 ? w->C[0][j * K + k] + w->C[1][j * K + k] : w->C[h][j * K + k];
            M[j * K + k] = M[k * K + j] = (dotd(sj, sk, n) - c) / ((double)N * (N - 1));
            Q[j * K + k] = Q[k * K + j] = c / N;
        }
    }
    free(sk);
    free(sj);
}

static double quad(const double *A, const double *w, int K) {
    double s = 0;
    for (int j = 0; j < K; j++)
        for (int k = 0; k < K; k++) s += w[j] * A[j * K + k] * w[k];
    return s;
}

/* One row for weighting w on all pairs, with the error from consecutive pairs. */
static void ws_row(const wstats *w, const char *name, const double *wt, const double *M,
                   const double *Q) {
    int K = w->K, N = w->n[0] + w->n[1];
    double cross = 0;
    for (int p = 0; p < w->nd; p++) {
        double d = quad(w->Dp + (size_t)p * K * K, wt, K);
        cross += d * d;
    }
    double se = w->nd < 10 ? NAN : sqrt(2.0 * (cross / w->nd) / ((double)N * (N - 1)));
    print_row(name, quad(Q, wt, K), quad(M, wt, K), se, "");
}

/* The w maximising w'Mw / w'Qw (Q positive definite): Cholesky Q = L L',
 * Jacobi eigenvectors of L^-1 M L^-T, w = L^-T v of the largest
 * eigenvalue, scaled to max |w_k| = 1. -1 if Q is not positive definite. */
static int best_weights(const double *M, const double *Q, int K, double *w) {
    double *L = calloc((size_t)K * K, sizeof(double)), *A = calloc((size_t)K * K, sizeof(double));
    double *V = calloc((size_t)K * K, sizeof(double)), *T = calloc((size_t)K * K, sizeof(double));
    int rc = 0;
    for (int i = 0; i < K && !rc; i++)
        for (int j = 0; j <= i; j++) {
            double s = Q[i * K + j];
            for (int k = 0; k < j; k++) s -= L[i * K + k] * L[j * K + k];
            if (i == j) {
                if (s <= 0) { rc = -1; break; }
                L[i * K + i] = sqrt(s);
            } else L[i * K + j] = s / L[j * K + j];
        }
    if (!rc) {
        /* T = L^-1 M (forward substitution per column), A = T L^-T */
        for (int c = 0; c < K; c++)
            for (int i = 0; i < K; i++) {
                double s = M[i * K + c];
                for (int k = 0; k < i; k++) s -= L[i * K + k] * T[k * K + c];
                T[i * K + c] = s / L[i * K + i];
            }
        for (int r = 0; r < K; r++)
            for (int i = 0; i < K; i++) {
                double s = T[r * K + i];
                for (int k = 0; k < i; k++) s -= L[i * K + k] * A[r * K + k];
                A[r * K + i] = s / L[i * K + i];
            }
        for (int i = 0; i < K; i++) V[i * K + i] = 1;
        for (int sweep = 0; sweep < 100; sweep++) {
            double off = 0;
            for (int p = 0; p < K; p++)
                for (int q = p + 1; q < K; q++) off += A[p * K + q] * A[p * K + q];
            if (off < 1e-30) break;
            for (int p = 0; p < K; p++)
                for (int q = p + 1; q < K; q++) {
                    double apq = A[p * K + q];
                    if (fabs(apq) < 1e-300) continue;
                    double th = (A[q * K + q] - A[p * K + p]) / (2 * apq);
                    double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                    double c = 1 / sqrt(t * t + 1), s = t * c;
                    for (int k = 0; k < K; k++) { /* A = J' A J, V = V J */
                        double akp = A[k * K + p], akq = A[k * K + q];
                        A[k * K + p] = c * akp - s * akq;
                        A[k * K + q] = s * akp + c * akq;
                    }
                    for (int k = 0; k < K; k++) {
                        double apk = A[p * K + k], aqk = A[q * K + k];
                        A[p * K + k] = c * apk - s * aqk;
                        A[q * K + k] = s * apk + c * aqk;
                    }
                    for (int k = 0; k < K; k++) {
                        double vkp = V[k * K + p], vkq = V[k * K + q];
                        V[k * K + p] = c * vkp - s * vkq;
                        V[k * K + q] = s * vkp + c * vkq;
                    }
                }
        }
        int b = 0;
        for (int i = 1; i < K; i++)
            if (A[i * K + i] > A[b * K + b]) b = i;
        for (int i = K - 1; i >= 0; i--) { /* w = L^-T v */
            double s = V[i * K + b];
            for (int k = i + 1; k < K; k++) s -= L[k * K + i] * w[k];
            w[i] = s / L[i * K + i];
        }
        double mx = 0;
        int im = 0;
        for (int i = 0; i < K; i++)
            if (fabs(w[i]) > mx) mx = fabs(w[i]), im = i;
        double sc = w[im] < 0 ? -1 / mx : 1 / mx;
        for (int i = 0; i < K; i++) w[i] *= sc;
    }
    free(L); free(A); free(V); free(T);
    return rc;
}

/* Parameter groups: the whole-update rows restricted to a part of the
 * model (which parts carry what signal there is). A tensor belongs to
 * every group whose pattern its name contains ("" = all). */
static const char *const group_pat[][2] = {
    {"time_embed", "time_embed."}, {"class_embed", "class_embed."}, {"conv_in", "conv_in."},
    {"down", "down."},             {"mid", "mid."},                 {"up", "up."},
    {"norms", ".norm"},            {"emb_proj", "emb_proj."},       {"attention", ".attn."},
    {"norm_out", "norm_out."},     {"conv_out", "conv_out."},
};
#define NGROUPS (int)(sizeof group_pat / sizeof group_pat[0])

static int in_group(const char *name, int gi) { return strstr(name, group_pat[gi][1]) != NULL; }

/* Adds one pair's gradient, restricted to group gi's tensors, to a. */
static void acc_add_group(acc *a, const unet_layout *L, int gi, const float *g) {
    double q = 0, d = 0;
    for (int t = 0; t < L->nparams; t++)
        if (in_group(L->params[t].name, gi))
            acc_span(a, g, L->params[t].offset, L->params[t].offset + L->params[t].numel, &q, &d);
    acc_close(a, q, d);
}

/* A pair that branches at step kb: both images share x_T and every step's
 * noise except step kb's (stream 1 of seed for both, stream 2 for image
 * 1 at kb), so they differ only by what one step's noise did. */
static int sample_branch(const d3_model *m, d3_tape *tp, const ddim_opts *o, int cls,
                         uint64_t seed, int kb, float *x, float *traj, float *logp, char *err) {
    int K = o->steps, ts[D3_MAX_STEPS], prev[D3_MAX_STEPS];
    size_t D = 3 * (size_t)m->L.arch.size * m->L.arch.size;
    if (ddim_timesteps(m->sched.T, K, ts, prev, err)) return -1;
    d3_rng r, shared, other;
    rng_init(&r, seed, 0);
    rng_normal(&r, x, D);
    memcpy(x + D, x, D * sizeof(float));
    rng_init(&shared, seed, 1);
    rng_init(&other, seed, 2);
    float *eps = malloc(2 * D * sizeof(float)), *mean = malloc(D * sizeof(float));
    float *z = malloc(2 * D * sizeof(float)), *xp = malloc(D * sizeof(float));
    int c2[2] = {cls, cls};
    for (int i = 0; i < 2; i++) memcpy(traj + i * (K + 1) * D, x + i * D, D * sizeof(float));
    for (int k = 0; k < K; k++) {
        double at = m->sched.abar[ts[k]], ap = m->sched.abar[prev[k]];
        model_eps_cfg(m, tp, 2, x, ts[k], c2, o->cfg, eps);
        rng_normal(&shared, z, D);
        if (k == kb) rng_normal(&other, z + D, D);
        else memcpy(z + D, z, D * sizeof(float));
        for (int i = 0; i < 2; i++) {
            double sigma = ddim_step(xp, mean, x + i * D, eps + i * D, z + i * D, at, ap, o->eta, D);
            logp[i * K + k] = (float)ddim_logprob(xp, mean, sigma, D);
            memcpy(x + i * D, xp, D * sizeof(float));
            memcpy(traj + (i * (K + 1) + k + 1) * D, xp, D * sizeof(float));
        }
    }
    free(eps); free(mean); free(z); free(xp);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: step_snr MODEL ORACLE NPAIRS [CLASSES] [STEPS] [THREADS]\n");
        return 1;
    }
    const char *model = argv[1], *spec = argv[2];
    int N = atoi(argv[3]);
    const char *clist = argc > 4 ? argv[4] : "";
    int K = argc > 5 ? atoi(argv[5]) : 20;
    ops_set_threads(argc > 6 ? atoi(argv[6]) : 1);
    /* BRANCH: pairs share every step's noise but one (step (7 i) mod K) */
    int branch = argc > 7 && !strcmp(argv[7], "branch");
    char err[D3_ERRLEN];
    d3_model m;
    if (model_load(&m, model, NULL, err)) {
        fprintf(stderr, "step_snr: %s\n", err);
        return 2;
    }
    d3_oracle *orc = oracle_new(spec, 12345, err);
    if (!orc) {
        fprintf(stderr, "step_snr: %s\n", err);
        return 2;
    }
    int cls[256], nc = 0;
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", clist);
    for (char *t = strtok(buf, ","); t && nc < 256; t = strtok(NULL, ",")) {
        int c = -1;
        for (int i = 0; i < m.nclasses; i++)
            if (!strcmp(m.class_names[i], t)) c = i;
        if (c < 0) {
            fprintf(stderr, "step_snr: no class \"%s\" in %s\n", t, model);
            return 2;
        }
        cls[nc++] = c;
    }
    if (!nc)
        for (; nc < m.nclasses && nc < 256; nc++) cls[nc] = nc;
    int S = m.L.arch.size, W = S;
    size_t D = 3 * (size_t)S * S, numel = m.L.numel;
    ddim_opts o = ddim_opts_default();
    o.steps = K;
    d3po_opts dl = d3po_opts_default();
    float *x = malloc(2 * D * sizeof(float)), *traj = malloc(2 * (K + 1) * D * sizeof(float));
    float *lp = malloc(2 * K * sizeof(float)), *g = malloc(numel * sizeof(float));
    float *gt = malloc(numel * sizeof(float)), *gh[2] = {malloc(numel * sizeof(float)), malloc(numel * sizeof(float))};
    uint8_t *rgb[2] = {malloc(D), malloc(D)};
    acc *a = calloc(K + 3, sizeof(acc));
    for (int k = 0; k < K + 3; k++) {
        if (acc_init(&a[k], numel)) {
            fprintf(stderr, "step_snr: out of memory\n");
            return 2;
        }
    }
    acc ga[NGROUPS];
    size_t gnumel[NGROUPS];
    for (int gi = 0; gi < NGROUPS; gi++) {
        if (acc_init(&ga[gi], numel)) {
            fprintf(stderr, "step_snr: out of memory\n");
            return 2;
        }
        gnumel[gi] = 0;
        for (int t = 0; t < m.L.nparams; t++)
            if (in_group(m.L.params[t].name, gi)) gnumel[gi] += m.L.params[t].numel;
    }
    wstats ws;
    if (ws_init(&ws, K, N, numel)) {
        fprintf(stderr, "step_snr: out of memory\n");
        return 2;
    }
    d3_tape *tp = tape_new(backend_cpu());
    int used = 0, ties = 0;
    for (int i = 0; i < N; i++) {
        uint64_t seed = 1 + (uint64_t)i;
        int c2[2] = {cls[i % nc], cls[i % nc]};
        if (branch ? sample_branch(&m, tp, &o, c2[0], seed, (7 * i) % K, x, traj, lp, err)
                   : ddim_sample_pair(&m, tp, &o, c2[0], seed, 1, x, traj, lp, err)) {
            fprintf(stderr, "step_snr: %s\n", err);
            return 2;
        }
        for (int j = 0; j < 2; j++) image_to_rgb(rgb[j], x + j * D, S, W);
        if (oracle_set_prompt(orc, m.class_names[c2[0]], S, err)) {
            fprintf(stderr, "step_snr: %s\n", err);
            return 2;
        }
        int v = oracle_judge(orc, rgb[0], rgb[1], W, S);
        if (v != 0 && v != 1) {
            ties++;
            continue;
        }
        float h[2] = {v == 0 ? 1.0f : -1.0f, v == 0 ? -1.0f : 1.0f};
        memset(gt, 0, numel * sizeof(float));
        memset(gh[0], 0, numel * sizeof(float));
        memset(gh[1], 0, numel * sizeof(float));
        for (int k = 0; k < K; k++) {
            int order[D3_MAX_STEPS];
            for (int q = 0; q < K; q++) order[q] = q == k ? k : -1;
            memset(g, 0, numel * sizeof(float));
            /* branch: before the branching step the images are the same and
             * the two terms cancel (up to rounding): exactly 0 */
            double l = branch && k < (7 * i) % K ? 0 : d3po_pair_backward(&m, tp, g, &o, &dl, traj, traj + (K + 1) * D, c2[0], lp,
                                          lp + K, NULL, h, order, NULL, NULL, NULL, err);
            if (isnan(l)) {
                fprintf(stderr, "step_snr: %s\n", err);
                return 2;
            }
            acc_add(&a[k], g, numel);
            memcpy(ws.G + k * numel, g, numel * sizeof(float));
            float *half = gh[k < K / 2 ? 0 : 1];
            for (size_t j = 0; j < numel; j++) {
                gt[j] += g[j];
                half[j] += g[j];
            }
        }
        acc_add(&a[K], gt, numel);
        ws_add(&ws);
        for (int gi = 0; gi < NGROUPS; gi++) acc_add_group(&ga[gi], &m.L, gi, gt);
        acc_add(&a[K + 1], gh[0], numel);
        acc_add(&a[K + 2], gh[1], numel);
        used++;
        fprintf(stderr, "step_snr: pair %d/%d (%s) judged %c\n", i + 1, N, m.class_names[c2[0]],
                v == 0 ? 'A' : 'B');
    }
    if (used < 2) {
        fprintf(stderr, "step_snr: fewer than 2 labeled pairs\n");
        return 2;
    }
    int ts[D3_MAX_STEPS], prev[D3_MAX_STEPS];
    ddim_timesteps(m.sched.T, K, ts, prev, err);
    printf("# step_snr %s %s: %d labeled pairs (%d ties dropped), K %d, cfg %g, eta %g\n", model,
           spec, used, ties, K, o.cfg, o.eta);
    printf("%-10s %11s %11s %11s %9s %8s %10s\n", "step(t)", "E|g|^2", "|Eg|^2", "se", "snr",
           "snr_se", "labels");
    for (int k = 0; k < K; k++) {
        char name[32];
        snprintf(name, sizeof name, "%d(%d)", k, ts[k]);
        acc_print(name, &a[k], numel, "");
    }
    acc_print("all", &a[K], numel, "");
    acc_print("high-half", &a[K + 1], numel, "");
    acc_print("low-half", &a[K + 2], numel, "");
    printf("# the whole update (all steps) restricted to parts of the model:\n");
    printf("%-10s %11s %11s %11s %9s %8s %10s %9s\n", "part", "E|g|^2", "|Eg|^2", "se", "snr",
           "snr_se", "labels", "params");
    for (int gi = 0; gi < NGROUPS; gi++) {
        if (!gnumel[gi]) continue; /* e.g. no attention in this model */
        char tail[32];
        snprintf(tail, sizeof tail, " %9zu", gnumel[gi]);
        acc_print(group_pat[gi][0], &ga[gi], numel, tail);
    }
    /* step weightings (see wstats) */
    double *M = malloc((size_t)K * K * sizeof(double)), *Q = malloc((size_t)K * K * sizeof(double));
    double *Mh[2], *Qh[2], wt[D3_MAX_STEPS], wb[2][D3_MAX_STEPS];
    ws_mq(&ws, 2, M, Q);
    printf("# the whole update with the steps weighted: all 1 (the paper's; = \"all\"), sigma_k\n"
           "# (each step's log-density times its noise scale), equal norms (1/sqrt E|g_k|^2), and\n"
           "# the best weighting (top generalized eigenvector of signal and mean-square Gram\n"
           "# matrices) chosen on the even pairs and scored on the odd ones and vice versa\n");
    printf("%-10s %11s %11s %11s %9s %8s %10s\n", "weights", "E|g|^2", "|Eg|^2", "se", "snr",
           "snr_se", "labels");
    for (int k = 0; k < K; k++) wt[k] = 1;
    ws_row(&ws, "ones", wt, M, Q);
    for (int k = 0; k < K; k++) wt[k] = ddim_sigma(m.sched.abar[ts[k]], m.sched.abar[prev[k]], o.eta);
    ws_row(&ws, "sigma", wt, M, Q);
    for (int k = 0; k < K; k++) wt[k] = Q[k * K + k] > 0 ? 1 / sqrt(Q[k * K + k]) : 0;
    ws_row(&ws, "equal", wt, M, Q);
    for (int h = 0; h < 2; h++) {
        Mh[h] = malloc((size_t)K * K * sizeof(double));
        Qh[h] = malloc((size_t)K * K * sizeof(double));
        ws_mq(&ws, h, Mh[h], Qh[h]);
    }
    if (ws.n[0] > 1 && ws.n[1] > 1 && !best_weights(Mh[0], Qh[0], K, wb[0]) &&
        !best_weights(Mh[1], Qh[1], K, wb[1])) {
        for (int h = 0; h < 2; h++) {
            double *Mo = Mh[1 - h], *Qo = Qh[1 - h];
            printf("best-%s  %11.4e %11.4e %11s %9.5f %8s %10s  (chosen on the %s pairs,"
                   " in-sample snr %.5f)\n", h ? "odd " : "even", quad(Qo, wb[h], K),
                   quad(Mo, wb[h], K), "", quad(Mo, wb[h], K) / quad(Qo, wb[h], K), "", "",
                   h ? "odd" : "even", quad(Mh[h], wb[h], K) / quad(Qh[h], wb[h], K));
            printf("  w:");
            for (int k = 0; k < K; k++) printf(" %.2f", wb[h][k]);
            printf("\n");
        }
    }
    return 0;
}
