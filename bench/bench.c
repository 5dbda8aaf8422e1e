/* bench.c - times one unit of d3po work on the yardstick model, the same
 * work bench/bench_torch.py times in PyTorch (bench/run.sh runs both).
 *
 *   bench --case sample|d3po|pretrain --threads N [--device cpu|cuda] [--reps R] [--arch SPEC]
 *   bench --probe      exit 0 when the CUDA backend opens (prints the device), else 1
 *
 *   sample    one pair: ddim_sample of n=2 images sharing x_T (class 7),
 *             K=20 steps, cfg 5, eta 1, keeping the trajectory and logp
 *   d3po      one D3PO pair update over 20 timesteps: zero grads,
 *             d3po_pair_backward on a stored pair (sampled once, untimed;
 *             reference log-probs = ddim_traj_logp - 0.01 so the ratios sit
 *             inside the clamp and gradients flow), grad_clip(1.0), AdamW
 *   pretrain  one training step at batch 64: x0 ~ U[-1,1], random classes,
 *             pretrain_step_backward (p_uncond 0.1), grad_clip(1.0), AdamW
 *
 * The model is model_init's random init, except that conv_out, every
 * ResBlock's conv2 and every AttnBlock's proj (zero at init, so every block
 * would be the identity) are re-randomised with PyTorch's default
 * U(+-1/sqrt(fan_in)), as the PyTorch twin is initialised: the activations,
 * clipping and log-probs then look like a trained model's, not a no-op's.
 *
 * --device cuda runs the same work on the CUDA backend (engine/device.h,
 * TF32 off like the default): the tape on the device, the optimizer on the
 * device as d3po_train does it (gradients, clipping and AdamW where the
 * gradients are), and be->sync() before each clock read.
 *
 * Warm-up runs (1 on the CPU; 2 on CUDA, where the first picks cuDNN's
 * algorithms for every shape), then the median of R reps (default 5, 3 for
 * d3po; on CUDA 10 and 5).
 * stdout: exactly one line  `d3po <case> <median_seconds> <peak_MB>`, the
 *   peak MB being the process's peak RSS on the CPU and, on CUDA, the peak
 *   of device memory allocated through the backend table (activation
 *   arena, parameters, gradients, AdamW moments; not the cuDNN/cuBLAS
 *   workspaces the backend keeps internally)
 * stderr: parameter count, threads, per-rep times (and the RSS on CUDA).
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "device.h"
#include "diffusion.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "rng.h"
#include "tape.h"
#include "unet.h"

#define K_STEPS 20
#define CFG 5.0f
#define ETA 1.0f
#define PRETRAIN_BATCH 64

static const char usage[] =
    "usage: bench --case sample|d3po|pretrain --threads N [--device cpu|cuda] [--reps R]\n"
    "             [--arch SPEC] [--seed S]\n"
    "       bench --probe\n"
    "Times one unit of work (see bench/README.md); prints\n"
    "  d3po <case> <median_seconds> <peak_MB>\n"
    "(peak RSS on the CPU, peak device memory through the backend on CUDA).\n"
    "--probe exits 0 and prints the CUDA device when the CUDA backend opens,\n"
    "else prints why not on stderr and exits 1.\n";

/* The backend with its alloc/free counted (device memory peak on CUDA). */
static const d3_backend *base_be;
static d3_backend counted;
static size_t cur_bytes, peak_bytes;
typedef struct {
    void *p;
    size_t n;
} alloc_rec;
static alloc_rec *recs;
static size_t nrecs, caprecs;

static void *cnt_alloc(size_t bytes) {
    void *p = base_be->alloc(bytes);
    if (!p) return NULL;
    if (nrecs == caprecs) {
        caprecs = caprecs ? 2 * caprecs : 64;
        alloc_rec *r = realloc(recs, caprecs * sizeof *r);
        if (!r) { fprintf(stderr, "bench: out of memory\n"); exit(1); }
        recs = r;
    }
    recs[nrecs++] = (alloc_rec){p, bytes};
    cur_bytes += bytes;
    if (cur_bytes > peak_bytes) peak_bytes = cur_bytes;
    return p;
}

static void cnt_free(void *p) {
    if (!p) return;
    for (size_t i = 0; i < nrecs; i++)
        if (recs[i].p == p) {
            cur_bytes -= recs[i].n;
            recs[i] = recs[--nrecs];
            break;
        }
    base_be->free(p);
}

static const d3_backend *counting(const d3_backend *be) {
    base_be = be;
    counted = *be;
    counted.alloc = cnt_alloc;
    counted.free = cnt_free;
    return &counted;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Re-randomises the zero-initialised parameters: U(+-1/sqrt(fan_in)),
 * fan_in = in_channels * k * k of the conv the tensor belongs to. */
static void rerandomise(d3_model *m, uint64_t seed) {
    d3_rng r;
    rng_init(&r, seed, 0xbe7c);
    const unet_layout *L = &m->L;
    for (int i = 0; i < L->nparams; i++) {
        const unet_param *p = &L->params[i];
        int w = ends_with(p->name, ".conv2.weight") || ends_with(p->name, ".proj.weight") ||
                !strcmp(p->name, "conv_out.weight");
        int b = ends_with(p->name, ".conv2.bias") || ends_with(p->name, ".proj.bias") ||
                !strcmp(p->name, "conv_out.bias");
        if (!w && !b) continue;
        size_t fan_in;
        if (w) {
            fan_in = p->numel / (size_t)p->shape[0];
        } else {
            /* the weight of the same layer: name with "bias" -> "weight" */
            char wn[128];
            size_t n = strlen(p->name) - 4;
            snprintf(wn, sizeof wn, "%.*sweight", (int)n, p->name);
            const unet_param *q = unet_layout_find(L, wn);
            fan_in = q ? q->numel / (size_t)q->shape[0] : (size_t)p->numel;
        }
        float bound = 1.0f / sqrtf((float)fan_in);
        float *v = m->params + p->offset;
        rng_uniform(&r, v, p->numel);
        for (size_t j = 0; j < p->numel; j++) v[j] = (2.0f * v[j] - 1.0f) * bound;
    }
}

typedef struct {
    d3_model *m;
    const d3_backend *be;
    d3_tape *tp;
    ddim_opts o;
    int S;
    size_t D;
    int cls;
    d3_rng rng;      /* inputs (x_T, x0, classes) */
    uint64_t seed;
    long calls;
    /* sample / d3po */
    float *x, *traj, *logp;
    /* d3po */
    float *ref;
    d3po_opts dopt;
    /* d3po / pretrain: gradients and AdamW moments where the backend
     * computes (host buffers on the CPU, device buffers on CUDA) */
    float *grads, *dm, *dv;
    d3_adamw opt;
    float *x0;
    int *clsv;
    double loss, gnorm; /* of the last update (stderr, a sanity check) */
    char err[D3_ERRLEN];
} bench_ctx;

/* one pair: x_T shared by both rows, each image its own step-noise stream */
static int run_sample(bench_ctx *c) {
    d3_rng rngs[2];
    int cls[2] = {c->cls, c->cls};
    rng_normal(&c->rng, c->x, c->D);
    memcpy(c->x + c->D, c->x, c->D * sizeof(float));
    rng_init(&rngs[0], c->seed, 1000 + 2 * (uint64_t)c->calls);
    rng_init(&rngs[1], c->seed, 1001 + 2 * (uint64_t)c->calls);
    c->calls++;
    if (ddim_sample(c->m, c->tp, &c->o, 2, cls, c->x, rngs, c->traj, c->logp, c->err)) return -1;
    return 0;
}

/* global-norm clip (1.0) and one AdamW step on the backend, as d3po_train
 * does it; returns the norm before clipping */
static double clip_and_step(bench_ctx *c) {
    double norm = grad_clip_on(c->be, c->grads, c->m->L.numel, 1.0);
    adamw_step_on(c->be, &c->opt, model_params_dev(c->m, c->be), c->dm, c->dv, c->grads);
    return norm;
}

static int run_d3po(bench_ctx *c) {
    const size_t traj_n = (size_t)(c->o.steps + 1) * c->D;
    const float h[2] = {1.0f, -1.0f};
    c->be->zero(c->grads, c->m->L.numel * sizeof(float));
    double loss = d3po_pair_backward(c->m, c->tp, c->grads, &c->o, &c->dopt, c->traj,
                                     c->traj + traj_n, c->cls, c->ref, c->ref + c->o.steps, NULL,
                                     h, NULL, NULL, NULL, NULL, c->err);
    if (isnan(loss)) return -1;
    c->loss = loss;
    c->gnorm = clip_and_step(c);
    return 0;
}

static int run_pretrain(bench_ctx *c) {
    const int N = PRETRAIN_BATCH;
    rng_uniform(&c->rng, c->x0, (size_t)N * c->D);
    for (size_t i = 0; i < (size_t)N * c->D; i++) c->x0[i] = 2.0f * c->x0[i] - 1.0f;
    for (int i = 0; i < N; i++) c->clsv[i] = (int)rng_below(&c->rng, (uint32_t)c->m->nclasses);
    c->be->zero(c->grads, c->m->L.numel * sizeof(float));
    double loss = pretrain_step_backward(c->m, c->tp, c->grads, N, c->x0, c->clsv, 0.1f, &c->rng);
    if (!isfinite(loss)) {
        snprintf(c->err, sizeof c->err, "pretrain loss is %g", loss);
        return -1;
    }
    c->loss = loss;
    c->gnorm = clip_and_step(c);
    return 0;
}

/* --probe: 0 and the device on stdout when the CUDA backend opens */
static int probe(void) {
    char err[D3_ERRLEN];
    const d3_backend *be = device_backend(D3_DEV_CUDA, 0, NULL, err);
    if (!be) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char desc[4096];
    device_describe(desc, sizeof desc);
    /* the lines after the CPU's */
    const char *p = strchr(desc, '\n');
    p = p ? p + 1 : desc;
    size_t n = strlen(p);
    while (n && (p[n - 1] == '\n' || p[n - 1] == ' ')) n--;
    printf("%.*s\n", (int)n, n ? p : be->name);
    return 0;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"case", 1, 0, 'c'},  {"threads", 1, 0, 't'},
                                         {"reps", 1, 0, 'r'},  {"arch", 1, 0, 'a'},
                                         {"seed", 1, 0, 's'},  {"help", 0, 0, 'h'},
                                         {"device", 1, 0, 'd'}, {"probe", 0, 0, 'p'},
                                         {0, 0, 0, 0}};
    const char *cas = NULL, *archs = NULL, *devs = "cpu";
    int do_probe = 0;
    int threads = 0, reps = -1;
    unsigned long long seed = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (ch) {
        case 'c': cas = optarg; break;
        case 'a': archs = optarg; break;
        case 't': threads = (int)strtol(optarg, &end, 10); break;
        case 'r': reps = (int)strtol(optarg, &end, 10); break;
        case 's': seed = strtoull(optarg, &end, 10); break;
        case 'd': devs = optarg; break;
        case 'p': do_probe = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
        if (end && (*end || end == optarg)) {
            fprintf(stderr, "bench: bad number '%s'\n%s", optarg, usage);
            return 2;
        }
    }
    if (do_probe) {
        if (cas || optind < argc) { fputs(usage, stderr); return 2; }
        return probe();
    }
    d3_device_kind kind;
    char err[D3_ERRLEN];
    if (device_parse(devs, &kind, err) || kind == D3_DEV_AUTO) {
        fprintf(stderr, "bench: --device %s: expected cpu or cuda\n%s", devs, usage);
        return 2;
    }
    if (!cas || optind < argc || threads < 0 ||
        (strcmp(cas, "sample") && strcmp(cas, "d3po") && strcmp(cas, "pretrain"))) {
        fputs(usage, stderr);
        return 2;
    }
    const int cuda = kind == D3_DEV_CUDA;
    if (reps < 0) reps = cuda ? (!strcmp(cas, "d3po") ? 5 : 10) : (!strcmp(cas, "d3po") ? 3 : 5);
    if (reps < 1) reps = 1;
    if (threads > 0) ops_set_threads(threads);
    else ops_set_threads(0);

    const d3_backend *dev = device_backend(kind, 0, NULL, err);
    if (!dev) {
        fprintf(stderr, "bench: --device %s: %s\n", devs, err);
        return 1;
    }
    const d3_backend *be = counting(dev);
    unet_arch arch = unet_arch_default();
    if (archs && (unet_arch_parse(&arch, archs, err) || unet_arch_check(&arch, err))) {
        fprintf(stderr, "bench: --arch: %s\n", err);
        return 2;
    }
    d3_model m;
    if (model_init(&m, &arch, NULL, seed, err)) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    rerandomise(&m, seed);
    char as[256];
    unet_arch_format(&arch, as, sizeof as);
    fprintf(stderr, "arch %s: %zu parameters; %d threads; device %s\n", as, m.L.numel,
            ops_get_threads(), be->name);

    bench_ctx c;
    memset(&c, 0, sizeof c);
    c.m = &m;
    c.be = be;
    c.tp = tape_new(be);
    c.o = ddim_opts_default();
    c.o.steps = K_STEPS;
    c.o.cfg = CFG;
    c.o.eta = ETA;
    c.dopt = d3po_opts_default();
    c.S = arch.size;
    c.D = 3 * (size_t)c.S * c.S;
    c.cls = 7 % arch.classes;
    c.seed = seed;
    rng_init(&c.rng, seed + 1, 0x1a7e);
    const size_t traj_n = (size_t)(K_STEPS + 1) * c.D;
    int (*run)(bench_ctx *) = NULL;
    int rc = 0;
    if (!c.tp) {
        fprintf(stderr, "bench: out of memory\n");
        return 1;
    }
    if (!strcmp(cas, "sample") || !strcmp(cas, "d3po")) {
        c.x = malloc(2 * c.D * sizeof(float));
        c.traj = malloc(2 * traj_n * sizeof(float));
        c.logp = malloc(2 * (size_t)K_STEPS * sizeof(float));
        if (!c.x || !c.traj || !c.logp) { fprintf(stderr, "bench: out of memory\n"); return 1; }
        run = run_sample;
    }
    if (!strcmp(cas, "d3po") || !strcmp(cas, "pretrain")) {
        const size_t bytes = m.L.numel * sizeof(float);
        if (adamw_init(&c.opt, m.L.numel)) {
            fprintf(stderr, "bench: out of memory\n");
            return 1;
        }
        if (be->host) {
            c.grads = calloc(m.L.numel, sizeof(float));
            c.dm = c.opt.m;
            c.dv = c.opt.v;
        } else {
            c.grads = be->alloc(bytes);
            c.dm = be->alloc(bytes);
            c.dv = be->alloc(bytes);
            if (c.dm) be->upload(c.dm, c.opt.m, bytes);
            if (c.dv) be->upload(c.dv, c.opt.v, bytes);
        }
        if (!c.grads || !c.dm || !c.dv || !model_params_dev(&m, be)) {
            fprintf(stderr, "bench: out of %s memory\n", be->name);
            return 1;
        }
    }
    if (!strcmp(cas, "d3po")) {
        /* the stored pair, sampled once by the model itself (untimed) */
        if (run_sample(&c)) { fprintf(stderr, "bench: %s\n", c.err); return 1; }
        int cls2[2] = {c.cls, c.cls};
        c.ref = malloc(2 * (size_t)K_STEPS * sizeof(float));
        if (!c.ref) { fprintf(stderr, "bench: out of memory\n"); return 1; }
        if (ddim_traj_logp(&m, c.tp, &c.o, 2, cls2, c.traj, c.ref, c.err)) {
            fprintf(stderr, "bench: %s\n", c.err);
            return 1;
        }
        for (int i = 0; i < 2 * K_STEPS; i++) c.ref[i] -= 0.01f;
        run = run_d3po;
    } else if (!strcmp(cas, "pretrain")) {
        c.x0 = malloc((size_t)PRETRAIN_BATCH * c.D * sizeof(float));
        c.clsv = malloc(PRETRAIN_BATCH * sizeof(int));
        if (!c.x0 || !c.clsv) { fprintf(stderr, "bench: out of memory\n"); return 1; }
        run = run_pretrain;
    }

    double *times = malloc((size_t)reps * sizeof(double));
    if (!times) { fprintf(stderr, "bench: out of memory\n"); return 1; }
    const int warmups = cuda ? 2 : 1;
    for (int i = 0; i < warmups; i++) {
        if (run(&c)) {
            fprintf(stderr, "bench: %s: %s\n", cas, c.err);
            return 1;
        }
        be->sync();
    }
    if (run != run_sample)
        fprintf(stderr, "warm-up: loss %.6g, gradient norm %.6g\n", c.loss, c.gnorm);
    double cpus[64];
    for (int i = 0; i < reps; i++) {
        be->sync();
        double t0 = now(), c0 = cpu_now();
        if (run(&c)) {
            fprintf(stderr, "bench: %s: %s\n", cas, c.err);
            return 1;
        }
        be->sync();
        times[i] = now() - t0;
        if (i < 64) cpus[i] = cpu_now() - c0;
    }
    fprintf(stderr, "times:");
    for (int i = 0; i < reps; i++) fprintf(stderr, " %.4f", times[i]);
    fprintf(stderr, "\n");
    /* process CPU seconds per rep: with 1 thread, the work itself even on
     * a loaded machine (wall time there counts other processes' turns) */
    fprintf(stderr, "cpu times:");
    for (int i = 0; i < reps && i < 64; i++) fprintf(stderr, " %.4f", cpus[i]);
    fprintf(stderr, "\n");
    qsort(times, (size_t)reps, sizeof(double), cmp_double);
    double med = reps % 2 ? times[reps / 2] : 0.5 * (times[reps / 2 - 1] + times[reps / 2]);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mb = (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
    fprintf(stderr, "tape arena %.1f MB\n", (double)tape_arena_bytes(c.tp) / (1024.0 * 1024.0));
    if (cuda) {
        fprintf(stderr, "peak RSS %.1f MB; peak device memory through the backend %.1f MB\n",
                rss_mb, (double)peak_bytes / (1024.0 * 1024.0));
        printf("d3po %s %.6f %.1f\n", cas, med, (double)peak_bytes / (1024.0 * 1024.0));
    } else {
        printf("d3po %s %.6f %.1f\n", cas, med, rss_mb);
    }

    free(times);
    free(c.x); free(c.traj); free(c.logp); free(c.ref);
    if (c.grads) {
        if (be->host) {
            free(c.grads);
        } else {
            be->free(c.grads); be->free(c.dm); be->free(c.dv);
        }
        adamw_free(&c.opt);
    }
    free(c.x0); free(c.clsv);
    tape_free(c.tp);
    model_free(&m);
    return rc;
}
