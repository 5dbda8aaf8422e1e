/* cmd_pretrain.c - `d3po pretrain`: trains a base diffusion model on an
 * image folder with the epsilon-MSE denoising loss (10% class dropout for
 * classifier-free guidance), AdamW with linear warm-up, global-norm clip
 * 1.0 and an EMA of the weights. The EMA weights are what --out receives.
 *
 * Checkpoints (OUT.ckpt unless --ckpt) hold the weights, the EMA, the AdamW
 * state and the run's settings, written atomically every --save-every
 * steps, at the end, and on Ctrl-C. Every random draw of step s comes from
 * the Philox stream (seed, s) and the data order of epoch e from the
 * stream (seed, e), so `--resume CKPT` continues bit-identically to an
 * uninterrupted run with the same seed and thread count. */
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "device.h"
#include "diffusion.h"
#include "imgfolder.h"
#include "model.h"
#include "ops.h"

static const char pretrain_help[] =
    "usage: d3po pretrain --data DIR --out FILE [options]\n"
    "\n"
    "Trains a class-conditional diffusion model on DIR/<class>/*.png|jpg\n"
    "(DIR/classes.tsv, when present, gives class order and prompts).\n"
    "\n"
    "  --data DIR        image folder\n"
    "  --out FILE        model to write (EMA weights) when training ends\n"
    "  --arch SPEC       architecture (default base=32,mult=1.2.2,res=2,attn=8,size=32;\n"
    "                    classes come from the data)\n"
    "  --steps N         total optimizer steps (default 20000)\n"
    "  --batch N         images per step (default 64)\n"
    "  --lr X            peak learning rate (default 2e-4)\n"
    "  --warmup N        linear warm-up steps (default 500)\n"
    "  --cooldown N      decay the rate linearly to 0 over the last N steps\n"
    "                    (default 0: constant after the warm-up)\n"
    "  --min-snr G       weight each image's error by min(SNR, G) / SNR\n"
    "                    (min-SNR-gamma; default 0: unweighted; the loss shown\n"
    "                    stays the unweighted epsilon-MSE)\n"
    "  --ema X           EMA decay (default 0.999)\n"
    "  --p-uncond X      class dropout probability (default 0.1)\n"
    "  --seed N          seed of initialisation, data order and noise (default 0)\n"
    "  --save-every N    checkpoint period in steps (default 500)\n"
    "  --ckpt FILE       checkpoint path (default FILE.ckpt)\n"
    "  --resume CKPT     continue a run from its checkpoint (bit-identical to an\n"
    "                    uninterrupted run with the same thread count); --steps,\n"
    "                    --lr, --cooldown and --min-snr may change, the other settings\n"
    "                    are the run's\n"
    "  --threads N       CPU threads (default: all cores)\n"
    "  --device D        auto (default: the GPU when one works), cpu or cuda\n"
    "  --tf32            allow TF32 tensor cores on the GPU (faster, ~1e-3 error)\n"
    "\n"
    "Ctrl-C saves a checkpoint and exits with status 130.\n";

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
    long step, steps, batch, warmup, seed;
    long cooldown; /* linear decay of the rate to 0 over the run's last steps */
    double lr, ema, p_uncond;
    double min_snr; /* min-SNR-gamma loss weighting; 0: none */
    double loss_avg; /* the smoothed loss shown, carried across resumes */
} run_cfg;

static void cfg_meta(d3_model *m, const run_cfg *c, const char *data) {
    char buf[512];
    snprintf(buf, sizeof buf,
             "step=%ld steps=%ld batch=%ld warmup=%ld seed=%ld lr=%.9g ema=%.9g p_uncond=%.9g loss=%.17g cooldown=%ld min_snr=%.9g",
             c->step, c->steps, c->batch, c->warmup, c->seed, c->lr, c->ema, c->p_uncond, c->loss_avg,
             c->cooldown, c->min_snr);
    model_set_meta(m, "d3po.pretrain", buf);
    model_set_meta(m, "d3po.pretrain.data", data);
}

/* Checkpoints written before --cooldown and --min-snr existed end after
 * loss=; they read as 0 (neither). */
static int cfg_parse(run_cfg *c, const char *s) {
    c->cooldown = 0;
    c->min_snr = 0;
    int n = sscanf(s, "step=%ld steps=%ld batch=%ld warmup=%ld seed=%ld lr=%lf ema=%lf p_uncond=%lf loss=%lf "
                      "cooldown=%ld min_snr=%lf",
                   &c->step, &c->steps, &c->batch, &c->warmup, &c->seed, &c->lr, &c->ema, &c->p_uncond,
                   &c->loss_avg, &c->cooldown, &c->min_snr);
    return n >= 9 && c->cooldown >= 0 && c->min_snr >= 0 ? 0 : -1;
}

/* The rate at a step: linear warm-up, the peak, then with a cool-down of
 * N steps a linear decay that reaches 0 after the run's last step. */
static double lr_at(const run_cfg *c, long step) {
    if (c->warmup > 0 && step < c->warmup) return c->lr * (step + 1) / c->warmup;
    long left = c->steps - step; /* >= 1 inside the run */
    if (c->cooldown > 0 && left < c->cooldown) return c->lr * left / c->cooldown;
    return c->lr;
}

/* Data order: epoch e is a permutation drawn from stream (seed, 2^41 + e). */
static void epoch_perm(int *perm, int n, uint64_t seed, long e) {
    d3_rng r;
    rng_init(&r, seed, (1ull << 41) + (uint64_t)e);
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(&r, (uint32_t)(i + 1));
        int t = perm[i]; perm[i] = perm[j]; perm[j] = t;
    }
}

static void fmt_time(char *b, size_t n, double s) {
    if (!isfinite(s) || s < 0) { snprintf(b, n, "?"); return; }
    long t = (long)s;
    if (t >= 3600) snprintf(b, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else snprintf(b, n, "%ldm%02lds", t / 60, t % 60);
}

static int save_ckpt(const d3_model *m, const d3_state *st, const char *path, const char *what) {
    char err[D3_ERRLEN];
    if (model_save(m, path, st, err)) {
        fprintf(stderr, "\nd3po pretrain: %s checkpoint: %s\n", what, err);
        return -1;
    }
    return 0;
}

/* Brings the training state computed on be back to the host buffers the
 * checkpoint is written from (on the CPU they are the same buffers). */
static void pull_state(const d3_backend *be, d3_model *m, d3_state *st, const float *M,
                       const float *V, const float *E) {
    if (be->host) {
        model_touch(m);
        return;
    }
    size_t bytes = m->L.numel * sizeof(float);
    model_pull(m);
    be->download(st->opt.m, M, bytes);
    be->download(st->opt.v, V, bytes);
    be->download(st->ema, E, bytes);
}

int cmd_pretrain(int argc, char **argv) {
    static const struct option opts[] = {
        {"data", 1, 0, 'd'},   {"out", 1, 0, 'o'},      {"arch", 1, 0, 'a'},
        {"steps", 1, 0, 'n'},  {"batch", 1, 0, 'b'},    {"lr", 1, 0, 'l'},
        {"warmup", 1, 0, 'w'}, {"ema", 1, 0, 'e'},      {"p-uncond", 1, 0, 'p'},
        {"seed", 1, 0, 's'},   {"save-every", 1, 0, 'S'}, {"ckpt", 1, 0, 'c'},
        {"resume", 1, 0, 'r'}, {"threads", 1, 0, 't'},  {"help", 0, 0, 'h'},
        {"device", 1, 0, 'D'}, {"tf32", 0, 0, 'T'},     {"cooldown", 1, 0, 'C'},
        {"min-snr", 1, 0, 'M'},
        {0, 0, 0, 0}};
    const char *data = NULL, *out = NULL, *arch = NULL, *ckpt = NULL, *resume = NULL;
    run_cfg c = {.steps = 20000, .batch = 64, .warmup = 500, .lr = 2e-4, .ema = 0.999, .p_uncond = 0.1, .loss_avg = NAN};
    long save_every = 500, threads = 0;
    int set_batch = 0, set_seed = 0, set_lr = 0, set_cool = 0, set_snr = 0, opt, tf32 = 0;
    d3_device_kind dev = D3_DEV_AUTO;
    char derr[D3_ERRLEN];
    uint64_t seed = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (opt) {
        case 'd': data = optarg; break;
        case 'o': out = optarg; break;
        case 'a': arch = optarg; break;
        case 'c': ckpt = optarg; break;
        case 'r': resume = optarg; break;
        case 'n': bad = cli_int("pretrain", "--steps", optarg, 1, 100000000, &c.steps); break;
        case 'b': bad = cli_int("pretrain", "--batch", optarg, 1, 4096, &c.batch); set_batch = 1; break;
        case 'w': bad = cli_int("pretrain", "--warmup", optarg, 0, 100000000, &c.warmup); break;
        case 'S': bad = cli_int("pretrain", "--save-every", optarg, 1, 100000000, &save_every); break;
        case 't': bad = cli_int("pretrain", "--threads", optarg, 1, 1024, &threads); break;
        case 'l': bad = cli_float("pretrain", "--lr", optarg, 1e-9, 1, &c.lr); set_lr = 1; break;
        case 'e': bad = cli_float("pretrain", "--ema", optarg, 0, 0.999999, &c.ema); break;
        case 'p': bad = cli_float("pretrain", "--p-uncond", optarg, 0, 1, &c.p_uncond); break;
        case 's': bad = cli_u64("pretrain", "--seed", optarg, &seed); set_seed = 1; break;
        case 'D':
            if ((bad = device_parse(optarg, &dev, derr) != 0))
                fprintf(stderr, "d3po pretrain: --device: %s\n", derr);
            break;
        case 'T': tf32 = 1; break;
        case 'C': bad = cli_int("pretrain", "--cooldown", optarg, 0, 100000000, &c.cooldown); set_cool = 1; break;
        case 'M': bad = cli_float("pretrain", "--min-snr", optarg, 0, 1e6, &c.min_snr); set_snr = 1; break;
        case 'h': fputs(pretrain_help, stdout); return 0;
        default: bad = 1; fputs(pretrain_help, stderr);
        }
        if (bad) return EXIT_USAGE;
    }
    if (!data || !out || optind < argc) {
        fprintf(stderr, "d3po pretrain: %s\n%s",
                optind < argc ? "unexpected argument" : "--data and --out are required", pretrain_help);
        return EXIT_USAGE;
    }
    c.seed = (long)seed;
    char ckbuf[4096], err[D3_ERRLEN];
    if (!ckpt) {
        snprintf(ckbuf, sizeof ckbuf, "%s.ckpt", out);
        ckpt = ckbuf;
    }
    if (threads) ops_set_threads((int)threads);
    char why[D3_ERRLEN];
    const d3_backend *be = device_backend(dev, tf32, why, derr);
    if (!be) {
        fprintf(stderr, "d3po pretrain: --device cuda: %s\n", derr);
        return EXIT_FAIL;
    }

    d3_model m;
    d3_state st = {0};
    long steps_wanted = c.steps;
    if (resume) {
        if (model_load(&m, resume, &st, err)) {
            fprintf(stderr, "d3po pretrain: --resume: %s\n", err);
            return EXIT_FAIL;
        }
        const char *meta = model_get_meta(&m, "d3po.pretrain");
        run_cfg rc;
        if (!meta || cfg_parse(&rc, meta) || !st.has_opt || !st.has_ema) {
            fprintf(stderr, "d3po pretrain: --resume: %s is not a pretraining checkpoint "
                            "(no d3po.pretrain metadata, AdamW state or EMA)\n", resume);
            model_free(&m); state_free(&st);
            return EXIT_FAIL;
        }
        if ((set_batch && rc.batch != c.batch) || (set_seed && rc.seed != c.seed)) {
            fprintf(stderr, "d3po pretrain: --resume: the checkpoint was trained with batch %ld "
                            "and seed %ld; resuming needs the same\n", rc.batch, rc.seed);
            model_free(&m); state_free(&st);
            return EXIT_USAGE;
        }
        rc.steps = steps_wanted; /* --steps may extend the run */
        if (set_lr) rc.lr = c.lr; /* and --lr change it (a cool-down) */
        if (set_cool) rc.cooldown = c.cooldown; /* or --cooldown decay it */
        if (set_snr) rc.min_snr = c.min_snr;
        c = rc;
    }
    imgfolder ds;
    int size = 32;
    if (resume) size = m.L.arch.size;
    else if (arch) {
        unet_arch a = unet_arch_default();
        if (unet_arch_parse(&a, arch, err)) {
            fprintf(stderr, "d3po pretrain: --arch: %s\n", err);
            return EXIT_USAGE;
        }
        size = a.size;
    }
    fprintf(stderr, "d3po pretrain: loading %s at %dx%d\n", data, size, size);
    if (imgfolder_load(&ds, data, size, 0, err)) {
        fprintf(stderr, "d3po pretrain: %s\n", err);
        if (resume) { model_free(&m); state_free(&st); }
        return EXIT_FAIL;
    }
    fprintf(stderr, "d3po pretrain: %d images in %d classes (%d skipped)\n", ds.n, ds.nclasses, ds.skipped);
    if (resume) {
        int same = m.nclasses == ds.nclasses;
        for (int i = 0; same && i < ds.nclasses; i++) same = !strcmp(m.class_names[i], ds.class_names[i]);
        if (!same) {
            fprintf(stderr, "d3po pretrain: --resume: %s has %d classes that differ from the %d of %s\n",
                    resume, m.nclasses, ds.nclasses, data);
            model_free(&m); state_free(&st); imgfolder_free(&ds);
            return EXIT_FAIL;
        }
    } else {
        unet_arch a = unet_arch_default();
        if (arch) unet_arch_parse(&a, arch, err);
        a.classes = ds.nclasses;
        if (model_init(&m, &a, (const char *const *)ds.class_names, seed, err)) {
            fprintf(stderr, "d3po pretrain: %s\n", err);
            imgfolder_free(&ds);
            return EXIT_USAGE;
        }
        adamw_init(&st.opt, m.L.numel);
        st.opt.wd = 0.0f; /* pretraining: plain Adam moments, no decay */
        st.ema = malloc(m.L.numel * sizeof(float));
        memcpy(st.ema, m.params, m.L.numel * sizeof(float));
        st.ema_decay = (float)c.ema;
        st.rng = (d3_rng){.seed = seed};
        st.has_opt = st.has_ema = st.has_rng = 1;
    }
    char archs[256];
    unet_arch_format(&m.L.arch, archs, sizeof archs);
    fprintf(stderr, "d3po pretrain: %s, %zu parameters, steps %ld..%ld, batch %ld, lr %g", archs,
            m.L.numel, c.step, c.steps, c.batch, c.lr);
    if (c.cooldown > 0)
        fprintf(stderr, ", decaying linearly to 0 from step %ld", c.steps - c.cooldown);
    if (c.min_snr > 0) fprintf(stderr, ", min-SNR weighting gamma %g", c.min_snr);
    fputc('\n', stderr);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    fprintf(stderr, "d3po pretrain: computing on %s%s%s\n", be->name, why[0] ? "; " : "", why);
    size_t D = 3 * (size_t)size * size, numel = m.L.numel, bytes = numel * sizeof(float);
    float *x0 = malloc(c.batch * D * sizeof(float));
    int *cls = malloc(c.batch * sizeof(int)), *perm = malloc(ds.n * sizeof(int));
    d3_tape *tp = tape_new(be);
    /* The training state where the backend computes: the host buffers
     * themselves on the CPU; device copies on a GPU, brought back to the
     * host (pull_state) before every checkpoint and at the end. */
    float *P = model_params_dev(&m, be), *G = be->host ? malloc(bytes) : be->alloc(bytes);
    float *M = be->host ? st.opt.m : be->alloc(bytes), *V = be->host ? st.opt.v : be->alloc(bytes);
    float *E = be->host ? st.ema : be->alloc(bytes);
    if (!x0 || !cls || !perm || !tp || !P || !G || !M || !V || !E) {
        fprintf(stderr, "d3po pretrain: out of %s memory\n", be->host ? "host" : "device");
        exit(EXIT_FAIL);
    }
    if (!be->host) {
        be->upload(M, st.opt.m, bytes);
        be->upload(V, st.opt.v, bytes);
        be->upload(E, st.ema, bytes);
    }
    long cur_epoch = -1;
    double t0 = now(), last_print = 0;
    long start = c.step;
    int tty = isatty(2), rc = 0;
    for (; c.step < c.steps && !stop_flag; c.step++) {
        for (long b = 0; b < c.batch; b++) {
            long g = c.step * c.batch + b, e = g / ds.n;
            if (e != cur_epoch) { epoch_perm(perm, ds.n, (uint64_t)c.seed, e); cur_epoch = e; }
            int idx = perm[g % ds.n];
            memcpy(x0 + b * D, ds.x + (size_t)idx * D, D * sizeof(float));
            cls[b] = ds.cls[idx];
        }
        d3_rng r;
        rng_init(&r, (uint64_t)c.seed, (uint64_t)c.step);
        be->zero(G, bytes);
        double loss;
        double wloss = pretrain_step_backward_w(&m, tp, G, (int)c.batch, x0, cls, (float)c.p_uncond,
                                                (float)c.min_snr, &r, &loss);
        if (!isfinite(wloss)) {
            fprintf(stderr, "\nd3po pretrain: loss is %g at step %ld; lower --lr (checkpoint kept at %s)\n",
                    wloss, c.step, ckpt);
            rc = EXIT_FAIL;
            break;
        }
        grad_clip_on(be, G, numel, 1.0);
        st.opt.lr = (float)lr_at(&c, c.step);
        adamw_step_on(be, &st.opt, P, M, V, G);
        /* EMA with the usual warm-up of the decay */
        float dec = (float)fmin(c.ema, (1.0 + c.step) / (10.0 + c.step));
        be->ema(E, P, dec, numel);
        c.loss_avg = isnan(c.loss_avg) ? loss : 0.98 * c.loss_avg + 0.02 * loss;
        double t = now();
        int last = c.step + 1 == c.steps;
        if (t - last_print > (tty ? 0.25 : 30) || last) {
            last_print = t;
            double ips = (c.step + 1 - start) * c.batch / (t - t0);
            char eta[32];
            fmt_time(eta, sizeof eta, (c.steps - c.step - 1) * c.batch / ips);
            int w = 24, fill = (int)((double)(c.step + 1) / c.steps * w);
            char bar[32];
            for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
            bar[w] = 0;
            fprintf(stderr, "%s[%s] step %ld/%ld loss %.4f %.1f img/s ETA %s%s", tty ? "\r" : "", bar,
                    c.step + 1, c.steps, c.loss_avg, ips, eta, tty ? "\033[K" : "\n");
        }
        if ((c.step + 1) % save_every == 0 && !last) {
            long s = c.step;
            c.step++; /* the checkpoint resumes at the next step */
            pull_state(be, &m, &st, M, V, E);
            cfg_meta(&m, &c, data);
            int bad = save_ckpt(&m, &st, ckpt, "saving");
            c.step = s;
            if (bad) { rc = EXIT_FAIL; break; }
        }
    }
    pull_state(be, &m, &st, M, V, E);
    if (be->host) free(G);
    else { be->free(G); be->free(M); be->free(V); be->free(E); }
    if (tty) fputc('\n', stderr);
    if (!rc) {
        cfg_meta(&m, &c, data);
        if (save_ckpt(&m, &st, ckpt, "saving")) rc = EXIT_FAIL;
    }
    if (!rc && stop_flag) {
        fprintf(stderr, "d3po pretrain: interrupted at step %ld; checkpoint %s (continue with --resume %s)\n",
                c.step, ckpt, ckpt);
        rc = 130;
    } else if (!rc) {
        /* the shipped model: the EMA weights, no training state */
        memcpy(m.params, st.ema, m.L.numel * sizeof(float));
        model_touch(&m);
        char buf[64];
        snprintf(buf, sizeof buf, "%.6f", c.loss_avg);
        model_set_meta(&m, "d3po.pretrain.loss", buf);
        if (model_save(&m, out, NULL, err)) {
            fprintf(stderr, "d3po pretrain: %s\n", err);
            rc = EXIT_FAIL;
        } else {
            fprintf(stderr, "d3po pretrain: wrote %s (EMA weights, %ld steps, loss %.4f, %.0f s)\n", out,
                    c.step, c.loss_avg, now() - t0);
        }
    }
    tape_free(tp);
    free(x0); free(cls); free(perm);
    imgfolder_free(&ds);
    state_free(&st);
    model_free(&m);
    return rc;
}
