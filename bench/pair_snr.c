/* pair_snr.c - the signal per label of the two preference objectives,
 * side by side: how much of one label's gradient is signal for D3PO and
 * for Diffusion-DPO with K = 1, 4, 16 and 64 (t, eps) draws per pair, on
 * the same pairs judged by several judges.
 *
 *   build/bench/pair_snr MODEL NPAIRS [CLASSES] [JUDGES] [THREADS] [BETA_DPO]
 *
 * Samples NPAIRS pairs as the engine does (pair i: seed 1 + i, shared
 * x_T, step-noise streams 1 and 2, 20 DDIM steps, eta 1, CFG 5; classes
 * cycled over CLASSES, a comma list of class names, default all) and
 * computes at the model itself (reference = policy):
 *   - the D3PO gradient of the pair (all 20 steps, beta 0.1; every ratio
 *     is 1, inside the clamp) with image A preferred;
 *   - the Diffusion-DPO gradient of each of 64 (t, eps) draws (pair i's
 *     draws from seed 1 + i, stream 0xD90; t ~ U{0..T-1}) with A
 *     preferred; the K-draw gradient is the mean of the first K draws.
 * At reference = policy both gradients are linear in the label (h -> -h
 * flips them), so every judge of JUDGES (a comma list of oracle names;
 * default brightness, jpeg-compressibility, realism and the random
 * control noisy:brightness:1e9) uses the same gradients with its own
 * sign; its ties are dropped. Per judge and objective it prints the rows
 * of snr.h: E|g|^2, the unbiased |E g|^2 with its standard error, snr =
 * |E g|^2 / E|g|^2 (the share of one label's gradient that is signal)
 * and the labels for signal = noise. A random judge must give snr within
 * two standard errors of zero. realism reads the data set folder
 * ($D3PO_DATASET, else ./emoji). BETA_DPO (default 2.5) only scales the
 * Diffusion-DPO gradients (snr does not depend on it at the reference).
 * The tables are printed after every 32 pairs and at the end.
 * Compute per pair: sampling 20 steps x 4 images, D3PO 20 steps x 4
 * images forward and backward, Diffusion-DPO per draw 2 images forward
 * and backward (the reference's pass is skipped: it is the policy; in
 * training it adds 2 forwards per draw): in forward-pass units (a
 * backward ~2) 80 + 240 + 6 per draw; in training 16 draws (128 units)
 * cost about half of D3PO's 240. A measurement for bench/results, not a
 * test. */
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

#define MAX_JUDGES 8
#define NDRAWS 64
#define DPO_STREAM 0xD90
static const int draw_counts[] = {1, 4, 16, 64};
#define NK (int)(sizeof draw_counts / sizeof draw_counts[0])
#define NOBJ (1 + NK) /* d3po, then dpo with each draw count */

static void die(const char *what, const char *err) {
    fprintf(stderr, "pair_snr: %s%s%s\n", what, err ? ": " : "", err ? err : "");
    exit(2);
}

/* Adds sign * g to a (tmp: scratch of n floats). */
static void add_signed(acc *a, const float *g, float sign, float *tmp, size_t n) {
    for (size_t j = 0; j < n; j++) tmp[j] = sign * g[j];
    acc_add(a, tmp, n);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: pair_snr MODEL NPAIRS [CLASSES] [JUDGES] [THREADS] [BETA_DPO]\n");
        return 1;
    }
    const char *model = argv[1];
    int N = atoi(argv[2]);
    const char *clist = argc > 3 ? argv[3] : "";
    const char *jlist = argc > 4 && argv[4][0]
                            ? argv[4]
                            : "brightness,jpeg-compressibility,realism,noisy:brightness:1e9";
    ops_set_threads(argc > 5 ? atoi(argv[5]) : 1);
    dpo_opts dd = dpo_opts_default();
    if (argc > 6) dd.beta = (float)atof(argv[6]);
    if (N < 2 || dd.beta <= 0) {
        fprintf(stderr, "pair_snr: NPAIRS must be >= 2 and BETA_DPO > 0\n");
        return 1;
    }
    char err[D3_ERRLEN];
    d3_model m;
    if (model_load(&m, model, NULL, err)) die(model, err);
    int S = m.L.arch.size, K = 20;
    size_t D = 3 * (size_t)S * S, numel = m.L.numel;

    d3_oracle *judge[MAX_JUDGES];
    int nj = 0;
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", jlist);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        if (nj == MAX_JUDGES) die("too many judges", NULL);
        if (!(judge[nj++] = oracle_new(t, 12345, err))) die("judge", err);
    }
    int cls[256], nc = 0;
    snprintf(buf, sizeof buf, "%s", clist);
    for (char *t = strtok(buf, ","); t && nc < 256; t = strtok(NULL, ",")) {
        int c = model_find_class(&m, t);
        if (c < 0) die("no such class in the model", t);
        cls[nc++] = c;
    }
    if (!nc)
        for (; nc < m.nclasses && nc < 256; nc++) cls[nc] = nc;
    for (int j = 0; j < nj; j++)
        for (int c = 0; c < nc; c++)
            if (oracle_set_prompt(judge[j], m.class_names[cls[c]], S, err)) die("judge", err);

    ddim_opts o = ddim_opts_default();
    o.steps = K;
    d3po_opts dl = d3po_opts_default();
    acc a[MAX_JUDGES][NOBJ];
    for (int j = 0; j < nj; j++)
        for (int q = 0; q < NOBJ; q++)
            if (acc_init(&a[j][q], numel)) die("out of memory", NULL);
    float *x = malloc(2 * D * sizeof(float)), *traj = malloc(2 * (K + 1) * D * sizeof(float));
    float *lp = malloc(2 * K * sizeof(float)), *eps = malloc(NDRAWS * D * sizeof(float));
    float *g[NOBJ], *gd = malloc(numel * sizeof(float)), *cum = malloc(numel * sizeof(float));
    float *tmp = malloc(numel * sizeof(float));
    for (int q = 0; q < NOBJ; q++) g[q] = malloc(numel * sizeof(float));
    uint8_t *rgb[2] = {malloc(D), malloc(D)};
    if (!x || !traj || !lp || !eps || !gd || !cum || !tmp || !rgb[0] || !rgb[1])
        die("out of memory", NULL);
    for (int q = 0; q < NOBJ; q++)
        if (!g[q]) die("out of memory", NULL);
    d3_tape *tp = tape_new(backend_cpu());
    int used[MAX_JUDGES] = {0}, ties[MAX_JUDGES] = {0};
    double dloss = 0;
    for (int i = 0; i < N; i++) {
        uint64_t seed = 1 + (uint64_t)i;
        int c = cls[i % nc];
        if (ddim_sample_pair(&m, tp, &o, c, seed, 1, x, traj, lp, err)) die("sampling", err);
        const float *x0a = traj + (size_t)K * D, *x0b = traj + (size_t)(2 * K + 1) * D;
        for (int s = 0; s < 2; s++) image_to_rgb(rgb[s], s ? x0b : x0a, S, S);
        float h[2] = {1, -1};
        /* D3PO, reference = policy: the sampling log-probs are the reference's */
        memset(g[0], 0, numel * sizeof(float));
        if (isnan(d3po_pair_backward(&m, tp, g[0], &o, &dl, traj, traj + (K + 1) * D, c, lp, lp + K,
                                     NULL, h, NULL, NULL, NULL, NULL, err)))
            die("d3po", err);
        /* Diffusion-DPO: NDRAWS draws, nested means of the first 1, 4, 16, 64 */
        d3_rng r;
        rng_init(&r, seed, DPO_STREAM);
        int t[NDRAWS];
        dpo_draw(&m, &r, NDRAWS, t, eps);
        memset(cum, 0, numel * sizeof(float));
        for (int d = 0, q = 1; d < NDRAWS; d++) {
            memset(gd, 0, numel * sizeof(float));
            double l = dpo_pair_backward(&m, &m, tp, gd, &dd, x0a, x0b, c, h, 1, t + d,
                                         eps + (size_t)d * D, NULL, err);
            if (isnan(l)) die("diffusion-dpo", err);
            dloss += l;
            for (size_t j = 0; j < numel; j++) cum[j] += gd[j];
            if (q <= NK && d + 1 == draw_counts[q - 1]) {
                for (size_t j = 0; j < numel; j++) g[q][j] = cum[j] / (float)(d + 1);
                q++;
            }
        }
        char verdicts[MAX_JUDGES + 1] = {0};
        for (int j = 0; j < nj; j++) {
            oracle_set_prompt(judge[j], m.class_names[c], S, NULL);
            int v = oracle_judge(judge[j], rgb[0], rgb[1], S, S);
            verdicts[j] = v == SESSION_A ? 'A' : v == SESSION_B ? 'B' : '=';
            if (v != SESSION_A && v != SESSION_B) {
                ties[j]++;
                continue;
            }
            for (int q = 0; q < NOBJ; q++)
                add_signed(&a[j][q], g[q], v == SESSION_A ? 1.0f : -1.0f, tmp, numel);
            used[j]++;
        }
        fprintf(stderr, "pair_snr: pair %d/%d (%s) judged %s\n", i + 1, N, m.class_names[c],
                verdicts);
        /* the tables so far every 32 pairs (a long run can be read early) */
        if ((i + 1) % 32 && i + 1 < N) continue;
        printf("# pair_snr %s: %d pairs%s, classes %s, 20 DDIM steps, cfg %g, eta %g; d3po beta "
               "%g; diffusion-dpo beta %g (beta T %g), draws from seed 1+i stream 0x%x; mean dpo "
               "loss per draw %.6f (log 2 at the reference)\n",
               model, i + 1, i + 1 < N ? " so far" : "", clist[0] ? clist : "all", o.cfg, o.eta,
               dl.beta, dd.beta, dd.beta * m.sched.T, DPO_STREAM, dloss / ((double)(i + 1) * NDRAWS));
        for (int j = 0; j < nj; j++) {
            printf("# judge %s: %d labeled pairs (%d ties dropped)\n", oracle_name(judge[j]),
                   used[j], ties[j]);
            if (used[j] < 2) continue;
            printf("%-10s %11s %11s %11s %9s %8s %10s\n", "objective", "E|g|^2", "|Eg|^2", "se",
                   "snr", "snr_se", "labels");
            acc_print("d3po", &a[j][0], numel, "");
            for (int q = 1; q < NOBJ; q++) {
                char name[32];
                snprintf(name, sizeof name, "dpo-K%d", draw_counts[q - 1]);
                acc_print(name, &a[j][q], numel, "");
            }
        }
        fflush(stdout);
    }
    return 0;
}
