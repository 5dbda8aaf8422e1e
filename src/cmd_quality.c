/* cmd_quality.c - a measure of sample quality that d3po computes itself
 * (issue 18): `d3po classifier` trains the small emoji classifier of
 * engine/classifier.h on an image folder with our own ops and tape, and
 * `d3po eval-model` scores a model's samples (or an image folder) with it:
 * per prompt, the classifier's top-1 accuracy on the samples relative to
 * its accuracy on held-out real images, and the Frechet distance between
 * the samples' features and the data's (the penultimate layer), overall
 * and per class.
 *
 * Both run on the backend chosen by --device; the data statistics are
 * computed when the classifier is saved and stored in its file. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier.h"
#include "cli.h"
#include "diffusion.h"
#include "imgfolder.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "rng.h"
#include "text.h"

#define DEFAULT_CLASSIFIER "models/classifier.safetensors"
enum { CHUNK = 64 };

/* Runs the classifier (no gradients) on n host images x[n][3*S*S]:
 * logits[n][K] and feat[n][F] (host, either may be NULL). */
static void classify(d3_tape *tp, const d3_classifier *c, const float *dparams, const float *x,
                     int n, float *logits, float *feat) {
    const d3_backend *be = tape_backend(tp);
    const size_t D = 3 * (size_t)c->size * c->size;
    tape_set_grad(tp, 0);
    for (int i0 = 0; i0 < n; i0 += CHUNK) {
        const int b = n - i0 < CHUNK ? n - i0 : CHUNK;
        tape_reset(tp);
        d3_tensor *xt = tape_input(tp, b, 3, c->size, c->size);
        be->upload(xt->v, x + i0 * D, b * D * sizeof(float));
        d3_tensor *f, *z = cls_forward(tp, c, dparams, NULL, xt, &f);
        if (logits) be->download(logits + (size_t)i0 * c->nclasses, z->v, z->numel * sizeof(float));
        if (feat) be->download(feat + (size_t)i0 * c->nfeat, f->v, f->numel * sizeof(float));
    }
    tape_set_grad(tp, 1);
}

static int argmax(const float *z, int K) {
    int a = 0;
    for (int k = 1; k < K; k++)
        if (z[k] > z[a]) a = k;
    return a;
}

/* ------------------------------------------------------------ classifier */

static const char cls_help[] =
    "usage: d3po classifier --data DIR --out FILE [options]\n"
    "\n"
    "Trains the emoji classifier that `d3po eval-model` scores samples with,\n"
    "on DIR/<class>/*.png|jpg (as written by `d3po dataset`). Every fifth\n"
    "image of each class (index 4 mod 5 in folder order) is held out; the\n"
    "file stores the weights, the held-out accuracy per class and the\n"
    "feature statistics of the data.\n"
    "\n"
    "  --data DIR      image folder\n"
    "  --out FILE      classifier to write (safetensors)\n"
    "  --base N        width of the first layer (default 16; features 4N)\n"
    "  --size N        image size (default 32)\n"
    "  --steps N       optimizer steps (default 3000)\n"
    "  --batch N       images per step (default 64)\n"
    "  --lr X          peak learning rate, linear decay to 0 (default 2e-3)\n"
    "  --seed N        seed of initialisation, data order and augmentation (default 1)\n"
    "  --threads N     CPU threads (default: all cores)\n"
    "  --device D      auto, cpu or cuda (default: the config's)\n";

/* Augmentation: a shift of up to 2 pixels (edges replicated) and a
 * horizontal flip, drawn from r. */
static void augment(float *dst, const float *src, int S, d3_rng *r) {
    const int dx = (int)rng_below(r, 5) - 2, dy = (int)rng_below(r, 5) - 2;
    const int flip = (int)rng_below(r, 2);
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int sx = (flip ? S - 1 - x : x) + dx, sy = y + dy;
                sx = sx < 0 ? 0 : sx >= S ? S - 1 : sx;
                sy = sy < 0 ? 0 : sy >= S ? S - 1 : sy;
                dst[((size_t)ch * S + y) * S + x] = src[((size_t)ch * S + sy) * S + sx];
            }
}

/* The held-out accuracy per class and the feature statistics of every
 * image, into c (rows K: overall). */
static void data_stats(d3_classifier *c, d3_tape *tp, const float *dparams, const imgfolder *ds,
                       const int *held) {
    const int K = c->nclasses, F = c->nfeat;
    float *logits = malloc((size_t)ds->n * K * sizeof(float));
    float *feat = malloc((size_t)ds->n * F * sizeof(float));
    float *fk = malloc((size_t)ds->n * F * sizeof(float));
    double *mu = malloc(F * sizeof(double)), *cov = malloc((size_t)F * F * sizeof(double));
    c->mu = calloc((size_t)(K + 1) * F, sizeof(float));
    c->cov = calloc((size_t)(K + 1) * F * F, sizeof(float));
    c->count = calloc(K + 1, sizeof(float));
    c->hacc = calloc(K + 1, sizeof(float));
    if (!logits || !feat || !fk || !mu || !cov || !c->mu || !c->cov || !c->count || !c->hacc) {
        fprintf(stderr, "d3po classifier: out of memory\n");
        exit(EXIT_FAIL);
    }
    classify(tp, c, dparams, ds->x, ds->n, logits, feat);
    long hn = 0, hok = 0;
    for (int k = 0; k <= K; k++) {
        int n = 0;
        long kn = 0, kok = 0;
        for (int i = 0; i < ds->n; i++) {
            if (k < K && ds->cls[i] != k) continue;
            memcpy(fk + (size_t)n++ * F, feat + (size_t)i * F, F * sizeof(float));
            if (k < K && held[i]) {
                kn++;
                kok += argmax(logits + (size_t)i * K, K) == k;
            }
        }
        cls_moments(mu, cov, fk, n, F);
        for (int j = 0; j < F; j++) c->mu[(size_t)k * F + j] = (float)mu[j];
        for (size_t j = 0; j < (size_t)F * F; j++) c->cov[(size_t)k * F * F + j] = (float)cov[j];
        c->count[k] = (float)n;
        if (k < K) {
            c->hacc[k] = kn ? (float)kok / kn : NAN;
            hn += kn;
            hok += kok;
        } else {
            c->hacc[k] = hn ? (float)hok / hn : NAN;
        }
    }
    free(logits); free(feat); free(fk); free(mu); free(cov);
}

int cmd_classifier(int argc, char **argv) {
    const char *data = NULL, *out = NULL, *conf = NULL;
    long base = 16, size = 32, steps = 3000, batch = 64, threads = 0;
    double lr = 2e-3;
    uint64_t seed = 1;
    int dev = -1;
    static const struct option opts[] = {
        {"data", 1, 0, 'd'},  {"out", 1, 0, 'o'},     {"base", 1, 0, 'b'},
        {"size", 1, 0, 'z'},  {"steps", 1, 0, 'n'},   {"batch", 1, 0, 'B'},
        {"lr", 1, 0, 'l'},    {"seed", 1, 0, 'S'},    {"threads", 1, 0, 't'},
        {"device", 1, 0, 'D'}, {"config", 1, 0, 'c'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (ch) {
        case 'd': data = optarg; break;
        case 'o': out = optarg; break;
        case 'b': bad = cli_int("classifier", "--base", optarg, 4, 256, &base); break;
        case 'z': bad = cli_int("classifier", "--size", optarg, 8, 256, &size); break;
        case 'n': bad = cli_int("classifier", "--steps", optarg, 1, 100000000, &steps); break;
        case 'B': bad = cli_int("classifier", "--batch", optarg, 1, 4096, &batch); break;
        case 'l': bad = cli_float("classifier", "--lr", optarg, 0, 1, &lr); break;
        case 'S': bad = cli_u64("classifier", "--seed", optarg, &seed); break;
        case 't': bad = cli_int("classifier", "--threads", optarg, 1, 1024, &threads); break;
        case 'D': bad = cli_device("classifier", optarg, &dev); break;
        case 'c': conf = optarg; break;
        case 'h': fputs(cls_help, stdout); return 0;
        default: fputs(cls_help, stderr); return EXIT_USAGE;
        }
        if (bad) return EXIT_USAGE;
    }
    if (!data || !out || optind < argc) {
        fprintf(stderr, "d3po classifier: %s\n%s",
                optind < argc ? "unexpected argument" : "--data and --out are required", cls_help);
        return EXIT_USAGE;
    }
    if (size % 8) {
        fprintf(stderr, "d3po classifier: --size %ld: expected a multiple of 8\n", size);
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN];
    d3_config settings;
    if (config_load(&settings, conf, err)) {
        fprintf(stderr, "d3po classifier: %s\n", err);
        return EXIT_FAIL;
    }
    if (!threads) threads = settings.engine.threads;
    if (threads) ops_set_threads((int)threads);
    char note[CLI_NOTE_LEN];
    const d3_backend *be = cli_backend("classifier", dev, 0, &settings, note, sizeof note);
    if (!be) return EXIT_FAIL;
    imgfolder ds;
    if (imgfolder_load(&ds, data, (int)size, 0, err)) {
        fprintf(stderr, "d3po classifier: %s\n", err);
        return EXIT_FAIL;
    }
    /* the split: index within the class in folder order */
    int *held = calloc(ds.n, sizeof(int)), *seen = calloc(ds.nclasses, sizeof(int));
    int *train = malloc(ds.n * sizeof(int));
    int ntrain = 0, nheld = 0;
    for (int i = 0; i < ds.n; i++) {
        held[i] = cls_holdout(seen[ds.cls[i]]++);
        if (held[i]) nheld++;
        else train[ntrain++] = i;
    }
    d3_classifier c;
    if (cls_init(&c, (int)base, (int)size, ds.nclasses, ds.class_names, seed, err)) {
        fprintf(stderr, "d3po classifier: %s\n", err);
        imgfolder_free(&ds);
        return EXIT_FAIL;
    }
    fprintf(stderr, "d3po classifier: %d images in %d classes (%d train, %d held out), "
                    "%zu parameters, on %s\n", ds.n, ds.nclasses, ntrain, nheld, c.nparams, note);
    const size_t P = c.nparams, D = 3 * (size_t)size * size;
    const int K = c.nclasses;
    float *dp = be->alloc(P * 4), *dg = be->alloc(P * 4), *dm = be->alloc(P * 4),
          *dv = be->alloc(P * 4);
    int *dlab = be->alloc(batch * sizeof(int));
    float *xb = malloc(batch * D * sizeof(float)), *lossh = malloc(batch * sizeof(float));
    float *logh = malloc(batch * K * sizeof(float));
    int *lab = malloc(batch * sizeof(int)), *perm = malloc(ntrain * sizeof(int));
    if (!dp || !dg || !dm || !dv || !dlab || !xb || !lossh || !logh || !lab || !perm) {
        fprintf(stderr, "d3po classifier: out of memory\n");
        return EXIT_FAIL;
    }
    be->upload(dp, c.params, P * 4);
    d3_adamw o;
    if (adamw_init(&o, 0)) { fprintf(stderr, "d3po classifier: out of memory\n"); return EXIT_FAIL; }
    o.n = P; /* the moments are dm, dv on the device */
    o.wd = 1e-4f;
    d3_tape *tp = tape_new(be);
    d3_rng r;
    int pos = ntrain; /* epoch position: shuffle at the start */
    long epoch = 0;
    double lavg = 0, aavg = 0;
    for (long s = 0; s < steps; s++) {
        rng_init(&r, seed, 1000000 + s);
        for (int j = 0; j < batch; j++) {
            if (pos == ntrain) { /* Fisher-Yates with the epoch's stream */
                d3_rng re;
                rng_init(&re, seed, epoch++);
                for (int i = 0; i < ntrain; i++) perm[i] = train[i];
                for (int i = ntrain - 1; i > 0; i--) {
                    int k = (int)rng_below(&re, (uint32_t)i + 1), t = perm[i];
                    perm[i] = perm[k];
                    perm[k] = t;
                }
                pos = 0;
            }
            const int i = perm[pos++];
            augment(xb + j * D, ds.x + (size_t)i * D, (int)size, &r);
            lab[j] = ds.cls[i];
        }
        tape_reset(tp);
        d3_tensor *x = tape_input(tp, (int)batch, 3, (int)size, (int)size);
        be->upload(x->v, xb, batch * D * sizeof(float));
        be->upload(dlab, lab, batch * sizeof(int));
        d3_tensor *z = cls_forward(tp, &c, dp, dg, x, NULL);
        float *probs = tape_alloc(tp, z->numel), *loss = tape_alloc(tp, batch);
        float *dz = tape_alloc(tp, z->numel);
        be->xent_forward(probs, loss, z->v, dlab, (int)batch, K);
        be->xent_backward(dz, 1.0f, probs, dlab, (int)batch, K);
        be->zero(dg, P * 4);
        tape_backward(tp, z, dz);
        be->download(lossh, loss, batch * sizeof(float));
        be->download(logh, z->v, batch * K * sizeof(float));
        double L = 0, acc = 0;
        for (int j = 0; j < batch; j++) {
            L += lossh[j];
            acc += argmax(logh + (size_t)j * K, K) == lab[j];
        }
        L /= batch;
        acc /= batch;
        lavg = s ? 0.98 * lavg + 0.02 * L : L;
        aavg = s ? 0.98 * aavg + 0.02 * acc : acc;
        const long warm = steps / 20 > 0 ? steps / 20 : 1;
        o.lr = (float)(lr * (s < warm ? (double)(s + 1) / warm
                                      : (double)(steps - s) / (double)(steps - warm + 1)));
        grad_clip_on(be, dg, P, 1.0);
        adamw_step_on(be, &o, dp, dm, dv, dg);
        if ((s + 1) % 100 == 0 || s + 1 == steps)
            fprintf(stderr, "step %ld/%ld  loss %.4f  train acc %.3f  lr %.3g\n", s + 1, steps,
                    lavg, aavg, o.lr);
    }
    be->download(c.params, dp, P * 4);
    data_stats(&c, tp, dp, &ds, held);
    char buf[512], shown[1024];
    snprintf(buf, sizeof buf, "steps=%ld batch=%ld lr=%.9g seed=%llu images=%d held_out=%d",
             steps, batch, lr, (unsigned long long)seed, ds.n, nheld);
    cls_set_meta(&c, "train", buf);
    cls_set_meta(&c, "train.data", data);
    snprintf(buf, sizeof buf, "%.4f", c.hacc[K]);
    cls_set_meta(&c, "holdout.accuracy", buf);
    int rc = 0;
    if (cls_save(&c, out, err)) {
        fprintf(stderr, "d3po classifier: %s\n", err);
        rc = EXIT_FAIL;
    } else {
        fprintf(stderr, "d3po classifier: held-out accuracy %.4f (%d images); wrote %s\n",
                c.hacc[K], nheld, text_escape(shown, sizeof shown, out));
    }
    tape_free(tp);
    be->free(dp); be->free(dg); be->free(dm); be->free(dv); be->free(dlab);
    adamw_free(&o);
    free(xb); free(lossh); free(logh); free(lab); free(perm); free(held); free(seen); free(train);
    cls_free(&c);
    imgfolder_free(&ds);
    return rc;
}

/* ------------------------------------------------------------ eval-model */

static const char eval_help[] =
    "usage: d3po eval-model (--model FILE | --images DIR) [options]\n"
    "\n"
    "Scores a model's samples with the emoji classifier (`d3po classifier`):\n"
    "for each prompt the classifier's top-1 accuracy on N samples, that\n"
    "accuracy relative to its accuracy on the held-out real images of the\n"
    "prompt, and the Frechet distance between the samples' features (the\n"
    "classifier's penultimate layer) and the data's; then the same overall.\n"
    "With --images the images of DIR/<class>/ are scored instead of samples.\n"
    "\n"
    "  --model FILE       model to sample (a class-conditional d3po model)\n"
    "  --images DIR       an image folder to score instead\n"
    "  --classifier FILE  default " DEFAULT_CLASSIFIER "\n"
    "  --samples N        samples per prompt (default 8)\n"
    "  --seed N           seed of the samples (default 1)\n"
    "  --steps N --cfg X --eta X   DDIM settings (default 20, 2, 1: the default\n"
    "                     model's sampler defaults)\n"
    "  --json             one JSON object on stdout instead of the table\n"
    "  --threads N        CPU threads;  --device D  auto, cpu or cuda\n";

/* Per-class results over a set of images with classes cl[n] (classifier
 * ids, -1: not a classifier class). */
typedef struct {
    int n, ok;
    double fd;
} cls_result;

static void score(const d3_classifier *c, const float *logits, const float *feat, const int *cl,
                  int n, cls_result *res) {
    const int K = c->nclasses, F = c->nfeat;
    float *fk = malloc((size_t)(n ? n : 1) * F * sizeof(float));
    double *mu = malloc(F * sizeof(double)), *cov = malloc((size_t)F * F * sizeof(double));
    double *dmu = malloc(F * sizeof(double)), *dcov = malloc((size_t)F * F * sizeof(double));
    if (!fk || !mu || !cov || !dmu || !dcov) { fprintf(stderr, "d3po: out of memory\n"); exit(EXIT_FAIL); }
    for (int k = 0; k <= K; k++) {
        int m = 0, ok = 0;
        for (int i = 0; i < n; i++) {
            if (cl[i] < 0 || (k < K && cl[i] != k)) continue;
            memcpy(fk + (size_t)m++ * F, feat + (size_t)i * F, F * sizeof(float));
            ok += argmax(logits + (size_t)i * K, K) == cl[i];
        }
        res[k].n = m;
        res[k].ok = ok;
        res[k].fd = NAN;
        if (!m) continue;
        cls_moments(mu, cov, fk, m, F);
        for (int j = 0; j < F; j++) dmu[j] = c->mu[(size_t)k * F + j];
        for (size_t j = 0; j < (size_t)F * F; j++) dcov[j] = c->cov[(size_t)k * F * F + j];
        res[k].fd = cls_frechet(mu, cov, dmu, dcov, F);
    }
    free(fk); free(mu); free(cov); free(dmu); free(dcov);
}

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

int cmd_eval_model(int argc, char **argv) {
    const char *model = NULL, *images = NULL, *cpath = DEFAULT_CLASSIFIER, *conf = NULL;
    long samples = 8, steps = 20, threads = 0;
    double cfg = D3_CFG_PIXEL, eta = 1.0;
    uint64_t seed = 1;
    int dev = -1, json = 0;
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},   {"images", 1, 0, 'i'}, {"classifier", 1, 0, 'C'},
        {"samples", 1, 0, 'n'}, {"seed", 1, 0, 'S'},   {"steps", 1, 0, 's'},
        {"cfg", 1, 0, 'g'},     {"eta", 1, 0, 'e'},    {"json", 0, 0, 'j'},
        {"threads", 1, 0, 't'}, {"device", 1, 0, 'D'}, {"config", 1, 0, 'c'},
        {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (ch) {
        case 'm': model = optarg; break;
        case 'i': images = optarg; break;
        case 'C': cpath = optarg; break;
        case 'n': bad = cli_int("eval-model", "--samples", optarg, 1, 100000, &samples); break;
        case 'S': bad = cli_u64("eval-model", "--seed", optarg, &seed); break;
        case 's': bad = cli_int("eval-model", "--steps", optarg, 1, 1000, &steps); break;
        case 'g': bad = cli_float("eval-model", "--cfg", optarg, 0, 100, &cfg); break;
        case 'e': bad = cli_float("eval-model", "--eta", optarg, 0, 10, &eta); break;
        case 'j': json = 1; break;
        case 't': bad = cli_int("eval-model", "--threads", optarg, 1, 1024, &threads); break;
        case 'D': bad = cli_device("eval-model", optarg, &dev); break;
        case 'c': conf = optarg; break;
        case 'h': fputs(eval_help, stdout); return 0;
        default: fputs(eval_help, stderr); return EXIT_USAGE;
        }
        if (bad) return EXIT_USAGE;
    }
    if (!model == !images || optind < argc) {
        fprintf(stderr, "d3po eval-model: %s\n%s",
                optind < argc ? "unexpected argument" : "give --model FILE or --images DIR",
                eval_help);
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN], e1[1024], e2[1024];
    d3_config settings;
    if (config_load(&settings, conf, err)) {
        fprintf(stderr, "d3po eval-model: %s\n", err);
        return EXIT_FAIL;
    }
    if (!threads) threads = settings.engine.threads;
    if (threads) ops_set_threads((int)threads);
    const d3_backend *be = cli_backend("eval-model", dev, 0, &settings, NULL, 0);
    if (!be) return EXIT_FAIL;
    d3_classifier c;
    if (cls_load(&c, cpath, err)) {
        fprintf(stderr, "d3po eval-model: %s\n", err);
        return EXIT_FAIL;
    }
    if (!c.mu) {
        fprintf(stderr, "d3po eval-model: %s: no data statistics (tensor data.mu)\n",
                text_escape(e1, sizeof e1, cpath));
        cls_free(&c);
        return EXIT_FAIL;
    }
    const int K = c.nclasses, F = c.nfeat, S = c.size;
    const size_t D = 3 * (size_t)S * S;
    float *x = NULL;
    int *cl = NULL, n = 0, rc = 0;
    d3_tape *tp = tape_new(be);
    if (images) {
        imgfolder ds;
        if (imgfolder_load(&ds, images, S, 0, err)) {
            fprintf(stderr, "d3po eval-model: %s\n", err);
            rc = EXIT_FAIL;
            goto out;
        }
        n = ds.n;
        x = ds.x;
        ds.x = NULL;
        cl = malloc(n * sizeof(int));
        for (int i = 0; i < n; i++) {
            int k = 0;
            while (k < K && strcmp(c.class_names[k], ds.class_names[ds.cls[i]])) k++;
            cl[i] = k < K ? k : -1;
        }
        imgfolder_free(&ds);
    } else {
        d3_model m;
        if (model_load(&m, model, NULL, err)) {
            fprintf(stderr, "d3po eval-model: %s\n", err);
            rc = EXIT_FAIL;
            goto out;
        }
        if (m.L.arch.size != S) {
            fprintf(stderr, "d3po eval-model: %s makes %dx%d images, the classifier %s takes %dx%d\n",
                    text_escape(e1, sizeof e1, model), m.L.arch.size, m.L.arch.size,
                    text_escape(e2, sizeof e2, cpath), S, S);
            model_free(&m);
            rc = EXIT_FAIL;
            goto out;
        }
        x = malloc((size_t)m.nclasses * samples * D * sizeof(float));
        cl = malloc((size_t)m.nclasses * samples * sizeof(int));
        if (!x || !cl) { fprintf(stderr, "d3po eval-model: out of memory\n"); exit(EXIT_FAIL); }
        ddim_opts o = {.steps = (int)steps, .eta = (float)eta, .cfg = (float)cfg};
        enum { SB = 8 };
        for (int mk = 0; mk < m.nclasses && !rc; mk++) {
            int k = 0;
            while (k < K && strcmp(c.class_names[k], m.class_names[mk])) k++;
            if (k == K) continue; /* a prompt the classifier does not know */
            for (long j0 = 0; j0 < samples; j0 += SB) {
                const int b = samples - j0 < SB ? (int)(samples - j0) : SB;
                d3_rng rngs[SB];
                int cv[SB];
                for (int j = 0; j < b; j++) {
                    /* image j of prompt mk: x_T from stream 2i, step noise 2i+1 */
                    const uint64_t i = (uint64_t)mk * samples + j0 + j;
                    d3_rng r0;
                    rng_init(&r0, seed, 2 * i);
                    rng_normal(&r0, x + (size_t)(n + j) * D, D);
                    rng_init(&rngs[j], seed, 2 * i + 1);
                    cv[j] = mk;
                    cl[n + j] = k;
                }
                if (ddim_sample(&m, tp, &o, b, cv, x + (size_t)n * D, rngs, NULL, NULL, err)) {
                    fprintf(stderr, "d3po eval-model: %s\n", err);
                    rc = EXIT_FAIL;
                    break;
                }
                n += b;
            }
            if (!json) fprintf(stderr, "\rsampled %d of %d prompts", mk + 1, m.nclasses);
        }
        if (!json) fprintf(stderr, "\n");
        model_free(&m);
        if (rc) goto out;
    }
    {
        float *dp = be->alloc(c.nparams * 4);
        float *logits = malloc((size_t)(n ? n : 1) * K * sizeof(float));
        float *feat = malloc((size_t)(n ? n : 1) * F * sizeof(float));
        cls_result *res = malloc((K + 1) * sizeof(cls_result));
        if (!dp || !logits || !feat || !res) { fprintf(stderr, "d3po eval-model: out of memory\n"); exit(EXIT_FAIL); }
        be->upload(dp, c.params, c.nparams * 4);
        classify(tp, &c, dp, x, n, logits, feat);
        score(&c, logits, feat, cl, n, res);
        json_t *root = json_object(), *arr = json_array();
        if (!json)
            printf("%-32s %6s %8s %8s %8s %9s\n", "prompt", "images", "accuracy", "held-out",
                   "relative", "FD");
        for (int k = 0; k <= K; k++) {
            if (!res[k].n) continue;
            const double acc = (double)res[k].ok / res[k].n, h = c.hacc[k];
            const double rel = h > 0 ? acc / h : NAN;
            if (json) {
                json_t *o = json_object();
                if (k < K) json_object_set_new(o, "prompt", json_string(c.class_names[k]));
                json_object_set_new(o, "images", json_integer(res[k].n));
                json_object_set_new(o, "accuracy", jnum(acc));
                json_object_set_new(o, "holdout_accuracy", jnum(h));
                json_object_set_new(o, "relative", jnum(rel));
                json_object_set_new(o, "fd", jnum(res[k].fd));
                if (k < K) json_array_append_new(arr, o);
                else json_object_set_new(root, "overall", o);
            } else {
                printf("%-32.32s %6d %8.3f %8.3f %8.3f %9.3f\n",
                       k < K ? text_escape(e1, sizeof e1, c.class_names[k]) : "OVERALL", res[k].n,
                       acc, h, rel, res[k].fd);
            }
        }
        if (json) {
            json_object_set_new(root, "source", json_string(model ? model : images));
            json_object_set_new(root, "classifier", json_string(cpath));
            if (model) {
                json_object_set_new(root, "samples_per_prompt", json_integer(samples));
                json_object_set_new(root, "seed", json_integer((json_int_t)seed));
                json_object_set_new(root, "steps", json_integer(steps));
                json_object_set_new(root, "cfg", json_real(cfg));
                json_object_set_new(root, "eta", json_real(eta));
            }
            json_object_set_new(root, "classes", arr);
            char *s = json_dumps(root, JSON_INDENT(1) | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER);
            if (s) printf("%s\n", s);
            free(s);
        } else {
            json_decref(arr);
        }
        json_decref(root);
        be->free(dp);
        free(logits); free(feat); free(res);
    }
out:
    tape_free(tp);
    free(x);
    free(cl);
    cls_free(&c);
    return rc;
}
