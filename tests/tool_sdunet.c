/* tool_sdunet.c - the SD UNet and VAE decoder against diffusers, and their
 * speed, for tests/test_sd_unet.sh and bench/run.sh.
 *
 *   tool_sdunet unet PIPE REF      UNet of PIPE (a diffusers folder, F32)
 *                                  on REF's x, t, context vs REF's eps
 *   tool_sdunet lora PIPE LORA REF UNet of PIPE with the LoRA file's adapters
 *                                  on REF's x, t, context: eps vs REF's, and
 *                                  the adapter gradients of sum(eps * r) vs
 *                                  REF's grad.<module>.down/.up (written by
 *                                  tests/sd/lora_ref.py grad: diffusers + peft)
 *   tool_sdunet vae PIPE REF       VAE decode of REF's latents vs REF's image,
 *                                  and the 8-bit pixels vs REF's rgb8
 *   tool_sdunet bench CONFIG [--size S] [--batch N] [--threads T] [--iters K]
 *                                  random UNet of CONFIG (a unet config.json):
 *                                  ms per forward and per forward+backward
 *                                  (medians of K after a warm-up), peak
 *                                  resident memory; last line, for
 *                                  bench/run.sh: "d3po sd-unet FWD_S FB_S MB";
 *                                  --lowmem: sd_unet_forward_lowmem, forward only
 *   tool_sdunet vaebench CONFIG [same options] [--lowmem]
 *                                  random VAE decoder of CONFIG (a vae
 *                                  config.json): ms per decode of S x S
 *                                  latents (no gradients), peak memory;
 *                                  last line "d3po sd-vae DEC_S MB"
 * REF is written by tests/sd/ref_unet.py (its layout is documented there).
 * Tolerances are printed with their reasons next to each comparison. Exit
 * status 0 when everything matches, 1 on a mismatch or an error (one line
 * on stderr). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "backend.h"
#include "lora.h"
#include "ops.h"
#include "safetensors.h"
#include "sd/sdunet.h"
#include "sd/vae.h"
#include "tape.h"

static void die(const char *fmt, const char *a) {
    fprintf(stderr, "tool_sdunet: ");
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
    exit(1);
}

static json_t *load_json(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j) die("%s: not a readable JSON file", path);
    return j;
}

/* The one place this tool reads weights (the loader's sdw_fill does this
 * for the program): every layout tensor from the F32 safetensors file at
 * path, by name, with its exact shape. Tensors the layout does not name are
 * counted: they must all start with one of the ignored prefixes (the VAE's
 * encoder), so a tensor the forward forgot shows up here. */
static int fill_f32(const char *path, const sd_layout *L, float *params, const char *const *ignored,
                    char *err) {
    st_file f;
    if (st_load(&f, path, err)) return -1;
    int used = 0, skipped = 0;
    for (int i = 0; i < L->n; i++) {
        const sd_param *p = &L->p[i];
        const st_tensor *t = st_find(&f, p->name);
        int ok = t && t->dtype == ST_F32 && t->ndim == p->ndim;
        for (int d = 0; ok && d < p->ndim; d++) ok = t->shape[d] == p->shape[d];
        if (!ok) {
            d3_errf(err, "%s: tensor '%s': %s", path, p->name,
                    t ? "not F32 of the layout's shape" : "missing");
            st_free(&f);
            return -1;
        }
        memcpy(params + p->off, t->data, p->numel * sizeof(float));
        used++;
    }
    for (int i = 0; i < f.ntensors; i++) {
        int ign = 0;
        for (int k = 0; ignored && ignored[k]; k++)
            ign |= !strncmp(f.tensors[i].name, ignored[k], strlen(ignored[k]));
        skipped += ign;
    }
    int extra = f.ntensors - used - skipped;
    st_free(&f);
    if (extra) return d3_errf(err, "%s: %d tensors neither in the layout nor ignored", path, extra);
    return 0;
}

static const st_tensor *ref_tensor(const st_file *r, const char *name, st_dtype dt) {
    const st_tensor *t = st_find(r, name);
    if (!t || t->dtype != dt) die("reference file has no tensor '%s' of the expected dtype", name);
    return t;
}

/* max over i of |a - b| against atol + rtol * |b|; prints and returns 0/1. */
static int compare(const char *what, const float *a, const float *b, size_t n, double atol,
                   double rtol, const char *why) {
    double maxabs = 0, maxrel = 0, worst = -1;
    size_t bad = 0, wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]), lim = atol + rtol * fabs(b[i]);
        if (!(d <= lim)) bad++;
        if (d > maxabs) maxabs = d;
        if (fabs(b[i]) > 1e-3 && d / fabs(b[i]) > maxrel) maxrel = d / fabs(b[i]);
        if (!(d - lim <= worst)) { worst = d - lim; wi = i; }
    }
    printf("  %s: %zu values, max |diff| %.3g, max rel %.3g (|ref| > 1e-3); tolerance %.0e + %.0e*|ref| "
           "(%s); worst [%zu] ours %.7g ref %.7g: %s\n", what, n, maxabs, maxrel, atol, rtol, why,
           wi, a[wi], b[wi], bad ? "MISMATCH" : "ok");
    return bad ? 1 : 0;
}

static d3_tensor *input_from(d3_tape *tp, const st_tensor *t, int n, int c, int h, int w) {
    if ((size_t)n * c * h * w * sizeof(float) != t->nbytes) die("reference tensor '%s' has a bad size", t->name);
    d3_tensor *x = tape_input(tp, n, c, h, w);
    tape_backend(tp)->upload(x->v, t->data, t->nbytes);
    return x;
}

static int cmd_unet(const char *pipe, const char *refpath) {
    char path[4096], err[D3_ERRLEN];
    snprintf(path, sizeof path, "%s/unet/config.json", pipe);
    json_t *j = load_json(path);
    sd_unet_config c;
    if (sd_unet_config_from_json(&c, j, path, err)) die("%s", err);
    json_decref(j);
    sd_layout L = {0};
    if (sd_unet_layout(&c, &L, err)) die("%s", err);
    float *params = calloc(L.numel, sizeof(float));
    if (!params) die("%s", "out of memory");
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", pipe);
    if (fill_f32(path, &L, params, NULL, err)) die("%s", err);
    st_file r;
    if (st_load(&r, refpath, err)) die("%s", err);
    const st_tensor *x = ref_tensor(&r, "x", ST_F32), *t = ref_tensor(&r, "t", ST_F32),
                    *ctx = ref_tensor(&r, "context", ST_F32), *eps = ref_tensor(&r, "eps", ST_F32);
    int N = (int)x->shape[0], h = (int)x->shape[2], w = (int)x->shape[3];
    if (sd_unet_check_size(&c, h, w, err)) die("%s", err);
    d3_tape *tp = tape_new(backend_cpu());
    tape_set_grad(tp, 0);
    d3_tensor *xt = input_from(tp, x, N, c.in_channels, h, w);
    d3_tensor *ct = input_from(tp, ctx, N, (int)ctx->shape[1], 1, c.cross_dim);
    d3_tensor *out = sd_unet_forward(tp, &c, &L, params, NULL, xt, (const float *)t->data, ct);
    if (out->numel * sizeof(float) != eps->nbytes) die("%s", "output size differs from the reference");
    printf("tool_sdunet unet: %s: %d tensors, %zu floats, x [%d,%d,%d,%d]\n", pipe, L.n, L.numel, N,
           c.in_channels, h, w);
    /* float32 on both sides, different summation orders (OpenBLAS vs
     * PyTorch's kernels) through ~40 layers; GroupNorm/LayerNorm rescale
     * rounding by 1/std: 1e-7 relative per op grows to the ~4e-6 seen
     * on outputs of size ~1; 10x margin. */
    int bad = compare("eps", out->v, (const float *)eps->data, out->numel, 5e-5, 1e-3,
                      "float32, summation order through ~40 layers");
    /* the low-memory forward runs the same ops in the same order */
    float *lean = malloc(out->numel * sizeof(float));
    if (!lean || sd_unet_forward_lowmem(backend_cpu(), &c, &L, params, (const float *)x->data, N, h,
                                        w, (const float *)t->data, (const float *)ctx->data,
                                        (int)ctx->shape[1], lean, err))
        die("%s", "sd_unet_forward_lowmem failed");
    int same = !memcmp(lean, out->v, out->numel * sizeof(float));
    printf("  sd_unet_forward_lowmem: %s\n", same ? "bit-identical to sd_unet_forward: ok"
                                                    : "DIFFERS from sd_unet_forward");
    bad |= !same;
    free(lean);
    tape_free(tp);
    st_free(&r);
    free(params);
    sd_layout_free(&L);
    return bad;
}

static int cmd_lora(const char *pipe, const char *lorapath, const char *refpath) {
    char path[4096], err[D3_ERRLEN];
    snprintf(path, sizeof path, "%s/unet/config.json", pipe);
    json_t *j = load_json(path);
    sd_unet_config c;
    if (sd_unet_config_from_json(&c, j, path, err)) die("%s", err);
    json_decref(j);
    sd_layout L = {0};
    if (sd_unet_layout(&c, &L, err)) die("%s", err);
    float *params = calloc(L.numel, sizeof(float));
    if (!params) die("%s", "out of memory");
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", pipe);
    if (fill_f32(path, &L, params, NULL, err)) die("%s", err);
    lora_set s;
    if (lora_load(&s, lorapath, &L, err)) die("%s", err);
    s.grads = calloc(s.numel, sizeof(float));
    st_file r;
    if (!s.grads || st_load(&r, refpath, err)) die("%s", err);
    const st_tensor *x = ref_tensor(&r, "x", ST_F32), *t = ref_tensor(&r, "t", ST_F32),
                    *ctx = ref_tensor(&r, "context", ST_F32), *eps = ref_tensor(&r, "eps", ST_F32),
                    *rr = ref_tensor(&r, "r", ST_F32);
    int N = (int)x->shape[0], h = (int)x->shape[2], w = (int)x->shape[3];
    if (sd_unet_check_size(&c, h, w, err)) die("%s", err);
    d3_tape *tp = tape_new(backend_cpu());
    d3_tensor *xt = input_from(tp, x, N, c.in_channels, h, w);
    d3_tensor *ct = input_from(tp, ctx, N, (int)ctx->shape[1], 1, c.cross_dim);
    d3_tensor *out = sd_unet_forward_lora(tp, &c, &L, params, NULL, xt, (const float *)t->data, ct, &s);
    if (out->numel * sizeof(float) != eps->nbytes || rr->nbytes != eps->nbytes)
        die("%s", "output size differs from the reference");
    printf("tool_sdunet lora: %s with %s: %d adapters\n", pipe, lorapath, s.n);
    /* the forward: sd-unet's tolerance (float32, other summation orders) */
    int bad = compare("eps with adapters", out->v, (const float *)eps->data, out->numel, 5e-5, 1e-3,
                      "float32, summation order through ~40 layers");
    float *dy = tape_alloc(tp, out->numel);
    memcpy(dy, rr->data, rr->nbytes);
    tape_backward(tp, out, dy);
    /* gradients: a sum over 2 x 64 outputs of products through the whole
     * UNet's backward; float32 with other summation orders on both sides
     * (measured ~1e-6 relative); atol covers elements that nearly cancel */
    double worst = 0;
    int nbad = 0;
    for (int i = 0; i < s.n; i++) {
        for (int k = 0; k < 2; k++) {
            char name[SD_NAME_MAX + 16];
            snprintf(name, sizeof name, "grad.%s.%s", s.m[i].name, k ? "up" : "down");
            const st_tensor *g = ref_tensor(&r, name, ST_F32);
            size_t n = k ? (size_t)s.m[i].out * s.m[i].rank : (size_t)s.m[i].rank * s.m[i].in;
            if (g->nbytes != n * sizeof(float)) die("reference tensor '%s' has a bad size", name);
            const float *a = s.grads + (k ? s.m[i].up : s.m[i].down), *b = (const float *)g->data;
            for (size_t e = 0; e < n; e++) {
                double d = fabs((double)a[e] - b[e]);
                if (!(d <= 1e-4 + 1e-3 * fabs(b[e]))) {
                    if (nbad++ < 5)
                        printf("  %s[%zu]: ours %.7g ref %.7g\n", name, e, a[e], b[e]);
                }
                if (d > worst) worst = d;
            }
        }
    }
    printf("  adapter gradients (%d matrices): max |diff| %.3g; tolerance 1e-4 + 1e-3*|ref| "
           "(float32, summation order through the UNet's backward): %s\n", 2 * s.n, worst,
           nbad ? "MISMATCH" : "ok");
    bad |= nbad != 0;
    tape_free(tp);
    st_free(&r);
    free(s.grads);
    s.grads = NULL;
    lora_free(&s);
    free(params);
    sd_layout_free(&L);
    return bad;
}

static int cmd_vae(const char *pipe, const char *refpath) {
    char path[4096], err[D3_ERRLEN];
    snprintf(path, sizeof path, "%s/vae/config.json", pipe);
    json_t *j = load_json(path);
    sd_vae_config c;
    if (sd_vae_config_from_json(&c, j, path, err)) die("%s", err);
    json_decref(j);
    sd_layout L = {0};
    if (sd_vae_layout(&c, &L, err)) die("%s", err);
    float *params = calloc(L.numel, sizeof(float));
    if (!params) die("%s", "out of memory");
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", pipe);
    /* decoding never uses the encoder (see vae.h) */
    static const char *const ignored[] = {"encoder.", "quant_conv.", NULL};
    if (fill_f32(path, &L, params, ignored, err)) die("%s", err);
    st_file r;
    if (st_load(&r, refpath, err)) die("%s", err);
    const st_tensor *lat = ref_tensor(&r, "latents", ST_F32), *img = ref_tensor(&r, "image", ST_F32),
                    *rgb = ref_tensor(&r, "rgb8", ST_U8);
    int N = (int)lat->shape[0], h = (int)lat->shape[2], w = (int)lat->shape[3];
    d3_tape *tp = tape_new(backend_cpu());
    tape_set_grad(tp, 0);
    d3_tensor *z = input_from(tp, lat, N, c.latent_channels, h, w);
    d3_tensor *out = sd_vae_decode(tp, &c, &L, params, NULL, z);
    if (out->numel * sizeof(float) != img->nbytes) die("%s", "image size differs from the reference");
    printf("tool_sdunet vae: %s: %d tensors, %zu floats, latents [%d,%d,%d,%d] -> [%d,%d,%d,%d]\n",
           pipe, L.n, L.numel, N, c.latent_channels, h, w, out->n, out->c, out->h, out->w);
    int bad = compare("image", out->v, (const float *)img->data, out->numel, 5e-5, 1e-3,
                      "float32, summation order through ~20 layers");
    /* the low-memory decode runs the same ops in the same order */
    float *lean = malloc(out->numel * sizeof(float));
    if (!lean || sd_vae_decode_lowmem(backend_cpu(), &c, &L, params, (const float *)lat->data, N, h,
                                      w, lean, err))
        die("%s", "sd_vae_decode_lowmem failed");
    int same = !memcmp(lean, out->v, out->numel * sizeof(float));
    printf("  sd_vae_decode_lowmem: %s\n", same ? "bit-identical to sd_vae_decode: ok"
                                                  : "DIFFERS from sd_vae_decode");
    bad |= !same;
    free(lean);
    /* 8-bit pixels: equal, except that a value within 1e-3/255 of a rounding
     * boundary (k + 0.5) may go either way by float32 noise: off by one there. */
    size_t HW = (size_t)out->h * out->w, C = (size_t)out->c, exact = 0, edge = 0, wrong = 0;
    uint8_t *px = malloc(HW * C);
    for (int n = 0; n < N; n++) {
        const float *im = (const float *)img->data + n * C * HW;
        sd_vae_to_rgb8(px, out->v + n * C * HW, (int)C, out->h, out->w);
        const uint8_t *ref = rgb->data + n * C * HW;
        for (size_t i = 0; i < HW * C; i++) {
            size_t c_ = i % C, p = i / C;
            double v = fmin(fmax(im[c_ * HW + p] / 2.0 + 0.5, 0), 1) * 255.0;
            double frac = v - floor(v);
            if (px[i] == ref[i]) exact++;
            else if (fabs(frac - 0.5) < 1e-3 && abs((int)px[i] - (int)ref[i]) == 1) edge++;
            else wrong++;
        }
    }
    printf("  rgb8: %zu pixels equal, %zu off by one at a rounding edge, %zu wrong: %s\n", exact,
           edge, wrong, wrong ? "MISMATCH" : "ok");
    free(px);
    tape_free(tp);
    st_free(&r);
    free(params);
    sd_layout_free(&L);
    return bad || wrong;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct {
    int S, N, threads, iters, lowmem;
} bench_opts;

/* argv[3..]: --size S --batch N --threads T --iters K [--lowmem] */
static bench_opts bench_args(int argc, char **argv) {
    bench_opts o = {.S = 16, .N = 1, .threads = 2, .iters = 3};
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--lowmem")) { o.lowmem = 1; continue; }
        if (i + 1 >= argc) die("option %s needs a value", argv[i]);
        int v = atoi(argv[++i]);
        if (!strcmp(argv[i - 1], "--size")) o.S = v;
        else if (!strcmp(argv[i - 1], "--batch")) o.N = v;
        else if (!strcmp(argv[i - 1], "--threads")) o.threads = v;
        else if (!strcmp(argv[i - 1], "--iters")) o.iters = v;
        else die("unknown option %s", argv[i - 1]);
    }
    if (o.iters < 1 || o.iters > 64 || o.S < 1 || o.N < 1 || o.threads < 1)
        die("%s", "expected --iters 1..64, --size, --batch and --threads >= 1");
    return o;
}

static int cmd_bench(int argc, char **argv) {
    const char *cfg = argv[2];
    bench_opts o = bench_args(argc, argv);
    int S = o.S, N = o.N, threads = o.threads, iters = o.iters;
    char err[D3_ERRLEN];
    json_t *j = load_json(cfg);
    sd_unet_config c;
    if (sd_unet_config_from_json(&c, j, cfg, err)) die("%s", err);
    json_decref(j);
    if (sd_unet_check_size(&c, S, S, err)) die("%s", err);
    sd_layout L = {0};
    if (sd_unet_layout(&c, &L, err)) die("%s", err);
    ops_set_threads(threads);
    float *params = malloc(L.numel * sizeof(float)), *grads = calloc(L.numel, sizeof(float));
    if (!params || !grads) die("%s", "out of memory");
    uint64_t s = 12345;
    for (size_t i = 0; i < L.numel; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        params[i] = ((float)(s >> 40) / (float)(1 << 24) - 0.5f) * 0.04f;
    }
    int T = 77;
    float *x = malloc(sizeof(float) * N * c.in_channels * S * S), *ctx = malloc(sizeof(float) * N * T * c.cross_dim);
    float *t = malloc(sizeof(float) * N);
    for (int i = 0; i < N * c.in_channels * S * S; i++) x[i] = sinf(i * 0.37f);
    for (int i = 0; i < N * T * c.cross_dim; i++) ctx[i] = cosf(i * 0.11f);
    for (int i = 0; i < N; i++) t[i] = 500.0f + i;
    d3_tape *tp = tape_new(backend_cpu());
    double tf[64], tb[64];
    size_t arena_fwd = 0;  /* the tape's memory after the first forward alone */
    for (int it = 0; it < iters + 1; it++) {   /* the first round warms up */
        for (int grad = 0; grad < (o.lowmem ? 1 : 2); grad++) {
            double t0 = now();
            if (o.lowmem) {   /* forward only, in bounded memory */
                float *y = malloc(sizeof(float) * N * c.out_channels * S * S);
                if (!y || sd_unet_forward_lowmem(backend_cpu(), &c, &L, params, x, N, S, S, t, ctx, T,
                                                 y, err))
                    die("%s", "sd_unet_forward_lowmem failed");
                free(y);
                if (it > 0) tf[it - 1] = tb[it - 1] = now() - t0;
                continue;
            }
            tape_reset(tp);
            tape_set_grad(tp, grad);
            d3_tensor *xt = tape_input(tp, N, c.in_channels, S, S);
            memcpy(xt->v, x, xt->numel * sizeof(float));
            d3_tensor *ct = tape_input(tp, N, T, 1, c.cross_dim);
            memcpy(ct->v, ctx, ct->numel * sizeof(float));
            d3_tensor *out = sd_unet_forward(tp, &c, &L, params, grad ? grads : NULL, xt, t, ct);
            if (grad) {
                float *dy = tape_alloc(tp, out->numel);
                for (size_t i = 0; i < out->numel; i++) dy[i] = 1.0f / (float)out->numel;
                tape_backward(tp, out, dy);
            }
            double dt = now() - t0;
            if (it == 0 && !grad) arena_fwd = tape_arena_bytes(tp);
            if (it > 0 && grad) tb[it - 1] = dt;
            else if (it > 0) tf[it - 1] = dt;
        }
    }
    double fwd = median(tf, iters), fb = median(tb, iters);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (o.lowmem) printf("(--lowmem: sd_unet_forward_lowmem, forward only: forward+backward not run)\n");
    printf("d3po unet bench: params %zu, batch %d, latent %dx%d, threads %d: forward %.1f ms, "
           "forward+backward %.1f ms (medians of %d), peak rss %.0f MiB, tape arena %.0f MiB "
           "(%.0f MiB after a forward alone)\n", L.numel, N, S, S, threads, fwd * 1e3, fb * 1e3,
           iters, ru.ru_maxrss / 1024.0, tape_arena_bytes(tp) / 1048576.0, arena_fwd / 1048576.0);
    printf("d3po sd-unet %.6f %.6f %.1f\n", fwd, fb, ru.ru_maxrss / 1024.0);
    tape_free(tp);
    free(params); free(grads); free(x); free(ctx); free(t);
    sd_layout_free(&L);
    return 0;
}

/* VAE decode of a random decoder of CONFIG (a vae config.json): ms per
 * decode without gradients (median of K after a warm-up), peak RSS. */
static int cmd_vaebench(int argc, char **argv) {
    const char *cfg = argv[2];
    bench_opts o = bench_args(argc, argv);
    int S = o.S, N = o.N, threads = o.threads, iters = o.iters, lowmem = o.lowmem;
    char err[D3_ERRLEN];
    json_t *j = load_json(cfg);
    sd_vae_config c;
    if (sd_vae_config_from_json(&c, j, cfg, err)) die("%s", err);
    json_decref(j);
    sd_layout L = {0};
    if (sd_vae_layout(&c, &L, err)) die("%s", err);
    ops_set_threads(threads);
    float *params = malloc(L.numel * sizeof(float));
    if (!params) die("%s", "out of memory");
    uint64_t s = 12345;
    for (size_t i = 0; i < L.numel; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        params[i] = ((float)(s >> 40) / (float)(1 << 24) - 0.5f) * 0.04f;
    }
    d3_tape *tp = tape_new(backend_cpu());
    double tf[64];
    int OH = 0;
    for (int it = 0; it < iters + 1; it++) {
        double t0 = now();
        tape_reset(tp);
        tape_set_grad(tp, 0);
        d3_tensor *z = tape_input(tp, N, c.latent_channels, S, S);
        for (size_t i = 0; i < z->numel; i++) z->v[i] = 0.18215f * sinf((float)i * 0.37f);
        OH = S << (c.nblocks - 1);
        if (lowmem) {
            float *img = tape_alloc(tp, (size_t)N * c.out_channels * OH * OH);
            if (sd_vae_decode_lowmem(backend_cpu(), &c, &L, params, z->v, N, S, S, img, err))
                die("%s", err);
        } else {
            sd_vae_decode(tp, &c, &L, params, NULL, z);
        }
        if (it > 0) tf[it - 1] = now() - t0;
    }
    double dec = median(tf, iters);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("d3po vae bench%s: params %zu, batch %d, latent %dx%d -> %dx%d, threads %d: decode %.1f ms "
           "(median of %d), peak rss %.0f MiB\n", lowmem ? " (lowmem)" : "", L.numel, N, S, S, OH,
           OH, threads, dec * 1e3, iters, ru.ru_maxrss / 1024.0);
    printf("d3po sd-vae %.6f %.1f\n", dec, ru.ru_maxrss / 1024.0);
    tape_free(tp);
    free(params);
    sd_layout_free(&L);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "unet")) return cmd_unet(argv[2], argv[3]);
    if (argc >= 4 && !strcmp(argv[1], "vae")) return cmd_vae(argv[2], argv[3]);
    if (argc >= 5 && !strcmp(argv[1], "lora")) return cmd_lora(argv[2], argv[3], argv[4]);
    if (argc >= 3 && !strcmp(argv[1], "bench")) return cmd_bench(argc, argv);
    if (argc >= 3 && !strcmp(argv[1], "vaebench")) return cmd_vaebench(argc, argv);
    fprintf(stderr, "usage: tool_sdunet unet|vae PIPE REF.safetensors\n"
                    "       tool_sdunet bench|vaebench CONFIG.json [--size S] [--batch N] [--threads T] "
                    "[--iters K]\n");
    return 1;
}
