/* cmd_sd.c - the Stable Diffusion-family side of `d3po info` and `d3po
 * sample`: describes a diffusers folder or a single-file SD 1.x checkpoint
 * (family, image and latent sizes, parameters and dtype of each part,
 * scheduler, prediction type), and samples PNGs from it with latent DDIM
 * (engine/sd/sdsample.h). cmd_info and cmd_sample (cmd_model.c) come here
 * when sd_pipeline_probe says the path is such a model. Everything taken
 * from the files is escaped before it is printed. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <stdlib.h>
#include <unistd.h>

#include "cli.h"
#include "cmd_sd.h"
#include "d3po.h"
#include "dmodel.h"
#include "fsutil.h"
#include "image.h"
#include "lora.h"
#include "ops.h"
#include "rng.h"
#include "sd/pipeline.h"
#include "sd/sdsample.h"

/* s with control characters (C0, DEL, C1) as '?', whole. */
static void put_safe(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    for (; *p; p++) {
        if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            putchar('?');
            p++;
        } else {
            putchar(*p < 0x20 || *p == 0x7f ? '?' : *p);
        }
    }
}

static long jint(const json_t *c, const char *k, long dflt) {
    const json_t *v = json_object_get(c, k);
    return json_is_integer(v) ? (long)json_integer_value(v) : dflt;
}

static void put_int_list(const json_t *a) {
    putchar('[');
    for (size_t i = 0; i < json_array_size(a); i++)
        printf("%s%lld", i ? "," : "", (long long)json_integer_value(json_array_get(a, i)));
    putchar(']');
}

int sd_info(const char *path, const char *tokenizer) {
    char err[D3_ERRLEN];
    sd_pipeline p;
    if (sd_pipeline_open(&p, path, tokenizer, err)) {
        fprintf(stderr, "d3po info: %s\n", err);
        return EXIT_FAIL;
    }
    const json_t *u = p.config[SD_UNET], *v = p.config[SD_VAE], *t = p.config[SD_TEXT_ENCODER];
    long nlev = (long)json_array_size(json_object_get(v, "block_out_channels"));
    long factor = nlev > 0 ? 1L << (nlev - 1) : 1, ss = jint(u, "sample_size", 64);
    const json_t *sf = json_object_get(v, "scaling_factor");
    printf("model:        ");
    put_safe(path);
    printf(" (%s)\n", p.single ? "single-file checkpoint, SD 1.x configs derived from its tensors"
                               : "diffusers pipeline folder");
    printf("family:       %s\n", p.family);
    printf("image size:   %ldx%ld (UNet sample_size %ld x VAE factor %ld)\n", ss * factor,
           ss * factor, ss, factor);
    printf("latents:      %ld x %ld x %ld (VAE scaling_factor %g)\n", jint(v, "latent_channels", 4),
           ss, ss, json_is_number(sf) ? json_number_value(sf) : 0.18215);
    for (int k = 0; k < SD_NPARTS; k++) {
        char dt[64];
        sdw_dtype(&p.weights[k], dt, sizeof dt);
        size_t used = 0, all = sdw_numel(&p.weights[k]);
        for (int i = 0; i < p.weights[k].n; i++)
            if (!sdw_ignorable((sd_part)k, p.weights[k].e[i].name)) used += st_numel(p.weights[k].e[i].t);
        if (used > all) used = all; /* the ignorable integer buffers */
        printf("%-13s %.2f M parameters", k == SD_TEXT_ENCODER ? "text encoder:" : k == SD_UNET ? "unet:" : "vae:",
               all / 1e6);
        if (used != all) printf(" (%.2f M used: the decoder)", used / 1e6);
        printf(", %s on disk", dt);
        if (p.weights[k].nfiles > 1) printf(", %d shards", p.weights[k].nfiles);
        putchar('\n');
    }
    const json_t *act = json_object_get(t, "hidden_act");
    printf("text:         CLIP, %ld layers, width %ld, %ld heads, %s, %ld tokens\n",
           jint(t, "num_hidden_layers", 0), jint(t, "hidden_size", 0),
           jint(t, "num_attention_heads", 0),
           json_is_string(act) ? st_show(json_string_value(act)).s : "?",
           jint(t, "max_position_embeddings", 77));
    printf("unet:         channels ");
    put_int_list(json_object_get(u, "block_out_channels"));
    const json_t *mid = json_object_get(u, "mid_block_type");
    printf(", %ld layers per block, context %ld, %s\n", jint(u, "layers_per_block", 0),
           jint(u, "cross_attention_dim", 0), json_is_null(mid) ? "no mid block" : "mid block");
    const sd_sched *s = &p.sched;
    printf("scheduler:    ");
    put_safe(s->class_name);
    printf(" config, sampled with DDIM: %s betas %g..%g over %d steps, steps_offset %d, set_alpha_to_one %s%s\n",
           s->beta_schedule == SD_BETA_SCALED_LINEAR ? "scaled_linear" : "linear", s->beta_start,
           s->beta_end, s->num_train_timesteps, s->steps_offset, s->set_alpha_to_one ? "true" : "false",
           s->clip_sample ? ", clip_sample" : "");
    printf("prediction:   %s\n", s->prediction == SD_PRED_V ? "v_prediction" : "epsilon");
    printf("tokenizer:    ");
    put_safe(p.tokenizer);
    putchar('\n');
    sd_pipeline_close(&p);
    return 0;
}

/* ---- info --train: the cost of LoRA D3PO, measured ---- */

/* /proc/self/status's VmRSS or VmHWM in MB; 0 when unreadable. */
double status_mb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') kb = strtod(line + n + 1, NULL);
    if (f) fclose(f);
    return kb / 1024.0;
}

int sd_info_train(const sd_cost_args *a, const d3_backend *be) {
    char err[D3_ERRLEN];
    double base_mb = status_mb("VmRSS"); /* the process before the model: code, libraries */
    sd_pipeline p;
    if (sd_pipeline_open(&p, a->model, a->tokenizer, err)) {
        fprintf(stderr, "d3po info: %s\n", err);
        return EXIT_FAIL;
    }
    long nlev = (long)json_array_size(json_object_get(p.config[SD_VAE], "block_out_channels"));
    int factor = nlev > 0 ? 1 << (nlev - 1) : 1, h = p.unet.sample_size, w = h;
    sd_pipeline_close(&p);
    if (a->width || a->height) {
        if (a->width % factor || a->height % factor) {
            fprintf(stderr, "d3po info: --size %dx%d: both sides must be multiples of %d (the VAE's factor)\n",
                    a->width, a->height, factor);
            return EXIT_USAGE;
        }
        w = a->width / factor;
        h = a->height / factor;
    }
    d3_dmodel dm;
    be = dm_count_backend(be); /* what the parts allocate on the backend, counted */
    if (dm_open_sd(&dm, a->model, a->tokenizer, be, h, w, err)) {
        fprintf(stderr, "d3po info: %s\n", err);
        return EXIT_FAIL;
    }
    dm_lora_opts lo = dm_lora_opts_default();
    char what[200];
    if (dm_lora_attach(&dm, &lo, err)) {
        fprintf(stderr, "d3po info: %s\n", err);
        dm_close(&dm);
        return EXIT_FAIL;
    }
    snprintf(what, sizeof what, "LoRA rank %d on every attention's q, k, v, out (%d modules, %zu "
             "trainable floats), base frozen", lo.rank, dm_lora(&dm)->n, dm.train.numel);
    int rc = info_train_report(&dm, a, be, base_mb, what);
    dm_close(&dm);
    return rc;
}

int info_train_report(d3_dmodel *dm, const sd_cost_args *a, const d3_backend *be, double base_mb,
                      const char *what) {
    char err[D3_ERRLEN] = "";
    d3_tape *tp = tape_new(be);
    dm_cost c;
    if (!tp || dm_calibrate(dm, tp, (float)a->cfg, &c, err)) {
        fprintf(stderr, "d3po info: %s\n", err[0] ? err : "out of memory");
        if (tp) tape_free(tp);
        return EXIT_FAIL;
    }
    const double MB = 1048576.0;
    int K = a->steps, E = a->epochs, N = a->draws, pixel = !strcmp(dm->family, "pixel");
    size_t numel = dm->train.numel;
    /* a labeled pair: sampled (K guided steps of the pair, then decoded for
     * the screen); D3PO: the reference log-probs (K guided steps, adapters
     * off, once per pair) and, each epoch, K steps recorded + backward and
     * one clip + AdamW; Diffusion-DPO: each epoch, N draws of a reference
     * pass and a recorded pass + backward (conditional), one AdamW */
    double sample = K * c.fwd + c.decode, ref = K * c.fwd, upd = E * (K * c.fwdbwd + c.opt);
    double d3po = sample + ref + upd;
    double dupd = E * (N * (c.fwd1 + c.fwdbwd1) + c.opt), dpo = sample + dupd;
    /* memory at the peak, all measured: the weights, the tape's arena
     * (held from the first step on: the largest step's activations and
     * gradients), the adapters with their gradients and AdamW moments,
     * what decoding a pair allocates beyond that (its scratch tapes), the
     * pair's trajectories and reference means (KL, host), and on the CPU
     * the process itself */
    /* the trainable set: LoRA adapters with their gradients and AdamW
     * moments (4 x); the pixel family trains its weights in place (3 x)
     * and keeps a frozen reference copy of them (the base, or the round's
     * snapshot: + 1 x the weights) */
    double wmb = c.weights / MB, amb = c.arena / MB;
    double smb = (pixel ? 3.0 : 4.0) * numel * sizeof(float) / MB + (pixel ? wmb : 0);
    double dmb = c.decode_extra / MB, tmb = (2.0 * (K + 1) + 2.0 * K) * dm->D * sizeof(float) / MB;
    double pmb = be->host ? base_mb : 0, parts = pmb + wmb + amb + smb + dmb + tmb;
    /* on the CPU the calibration's own peak resident memory is a
     * measurement of the same loop (loading included), with the op
     * scratch outside the backend's buffers that the parts miss; the
     * arena and decode scratch are allocations, not all resident */
    double hwm = be->host ? status_mb("VmHWM") + tmb : 0, peak = parts > hwm ? parts : hwm;
    printf("train cost:   %s\n", what);
    printf("model:        ");
    put_safe(a->model);
    printf(" (%s)\n", dm->desc);
    printf("device:       ");
    put_safe(a->device);
    if (be->host) printf(" (%d compute thread%s)", ops_get_threads(), ops_get_threads() == 1 ? "" : "s");
    printf("\nsettings:     images %dx%d (denoised as %dx%dx%d), K=%d steps, cfg %g, %d epoch%s, "
           "diffusion-dpo %d draws; objective %s\n", dm->img_w, dm->img_h, dm->C, dm->h, dm->w, K, a->cfg, E,
           E == 1 ? "" : "s", N, a->objective == D3PO_OBJ_DPO ? "diffusion-dpo" : "d3po");
    printf("calibration:  guided forward of a pair %.4f s, with backward %.4f s; conditional %.4f s, with "
           "backward %.4f s; decode 2 images %.4f s; clip + AdamW %.4f s (medians of up to 3 runs "
           "after a warm-up)\n", c.fwd, c.fwdbwd, c.fwd1, c.fwdbwd1, c.decode, c.opt);
    printf("time/pair:    d3po %.3f s = sample %.3f (%d x %.4f + decode) + reference %.3f + update %.3f "
           "(%d x %d x %.4f + AdamW)\n", d3po, sample, K, c.fwd, ref, upd, E, K, c.fwdbwd);
    printf("time/pair:    diffusion-dpo %.3f s = sample %.3f + update %.3f (%d x %d x (%.4f + %.4f) + "
           "AdamW)\n", dpo, sample, dupd, E, N, c.fwd1, c.fwdbwd1);
    printf("memory:       peak %.1f MB %s", peak, be->host ? "resident, the larger of:\n              " : "on the device = ");
    if (be->host) printf("%.1f = process %.1f + ", parts, pmb);
    printf("weights %.1f + activations %.1f (the tape's arena, one step) + %s "
           "%.1f + decode scratch %.1f + trajectories %.1f (allocated)\n", wmb, amb,
           pixel ? "gradients, AdamW, reference copy" : "adapters, gradients, AdamW", smb, dmb, tmb);
    if (be->host)
        printf("              %.1f = the calibration's peak resident memory + trajectories\n"
               "              (process: the program and its libraries before loading the model)\n", hwm);
    printf("d3po train-cost %s %d %d %d %.4f %.4f %.4f %.4f %.4f %.1f %.1f %.1f %.1f %.2f %.1f %.2f %.1f\n",
           be->name, K, dm->img_w, dm->img_h, d3po, sample, ref, upd, dpo, peak, pmb, wmb, amb, smb, dmb,
           tmb, hwm);
    tape_free(tp);
    return 0;
}

/* ---- sample ---- */

/* The one tensor of a --latents file as x_T [C,h,w] (malloc'd). */
static float *read_latents(const char *path, int C, int *h, int *w, char *err) {
    st_file f;
    if (st_map(&f, path, err)) return NULL;
    float *x = NULL;
    const st_tensor *t = f.ntensors == 1 ? &f.tensors[0] : NULL;
    if (!t) {
        d3_errf(err, "%s: holds %d tensors, expected one latent tensor [1,%d,h,w] or [%d,h,w]", path,
                f.ntensors, C, C);
    } else {
        const int64_t *s = t->ndim == 4 ? t->shape + 1 : t->shape;
        if ((t->ndim != 3 && t->ndim != 4) || (t->ndim == 4 && t->shape[0] != 1) || s[0] != C ||
            s[1] < 1 || s[2] < 1 || s[1] > 4096 || s[2] > 4096)
            d3_errf(err, "%s: tensor '%s' has the wrong shape: expected [1,%d,h,w] or [%d,h,w]", path,
                    st_show(t->name).s, C, C);
        else if (!(x = malloc(st_numel(t) * sizeof(float))))
            d3_errf(err, "%s: out of memory", path);
        else if (st_to_f32(t, x, path, err)) {
            free(x);
            x = NULL;
        } else {
            *h = (int)s[1];
            *w = (int)s[2];
        }
    }
    st_free(&f);
    return x;
}

/* A file-name-safe, bounded form of a prompt. */
static void prompt_name(char *dst, size_t n, const char *s) {
    size_t j = 0;
    for (; *s && j + 1 < n && j < 48; s++) {
        unsigned char ch = (unsigned char)*s;
        dst[j++] = (ch == '/' || ch == ' ' || ch < 0x20 || ch == 0x7f || ch >= 0x80) ? '_' : (char)ch;
    }
    dst[j] = 0;
    if (!j || !strcmp(dst, ".") || !strcmp(dst, "..")) snprintf(dst, n, "prompt");
}

/* FILE[:SCALE] -> file (into buf) and scale; 0, or -1 with err. */
static int lora_arg(const char *arg, char *buf, size_t cap, float *scale, char *err) {
    snprintf(buf, cap, "%s", arg);
    *scale = 1.0f;
    char *colon = strrchr(buf, ':'), *end;
    if (colon && colon[1]) {
        double v = strtod(colon + 1, &end);
        if (!*end) {
            if (!isfinite(v) || v < -100 || v > 100)
                return d3_errf(err, "--lora %s: scale expected from -100 to 100", arg);
            *scale = (float)v;
            *colon = 0;
        }
    }
    return 0;
}

/* Loads a->lora into sets[] (chained, on the backend's memory) and sets
 * m->lora. 0/-1. */
static int load_loras(const sd_sample_args *a, sd_model *m, lora_set *sets, char *err) {
    for (int i = 0; i < a->nlora; i++) {
        char file[4096];
        float scale;
        if (lora_arg(a->lora[i], file, sizeof file, &scale, err) ||
            lora_load(&sets[i], file, &m->p.L[SD_UNET], err))
            return -1;
        sets[i].scale = scale;
        /* the adapters where the tape's ops read them */
        if (lora_upload(&sets[i], m->be, err)) return -1;
        if (i) sets[i - 1].next = &sets[i];
    }
    m->lora = a->nlora ? &sets[0] : NULL;
    return 0;
}

static void free_loras(const sd_model *m, lora_set *sets, int n) {
    for (int i = 0; i < n; i++) lora_free_on(&sets[i], m->be);
}

int sd_sample(const sd_sample_args *a, const d3_backend *be) {
    char err[D3_ERRLEN];
    sd_model m;
    lora_set sets[SD_MAX_LORAS];
    memset(sets, 0, sizeof sets);
    if (sd_model_load(&m, a->model, a->tokenizer, be, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        return EXIT_FAIL;
    }
    int rc = EXIT_FAIL, C = m.latent_c, h = m.p.unet.sample_size, w = h;
    float *x0 = NULL, *x = NULL, *ctx = NULL;
    uint8_t *rgb = NULL;
    d3_tape *tp = NULL;
    if (load_loras(a, &m, sets, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        goto out;
    }
    if (a->width || a->height) {
        if (a->width % m.factor || a->height % m.factor) {
            fprintf(stderr, "d3po sample: --size %dx%d: both sides must be multiples of %d (the VAE's factor)\n",
                    a->width, a->height, m.factor);
            rc = EXIT_USAGE;
            goto out;
        }
        w = a->width / m.factor;
        h = a->height / m.factor;
    }
    if (a->latents) {
        int lh, lw;
        if (!(x0 = read_latents(a->latents, C, &lh, &lw, err))) {
            fprintf(stderr, "d3po sample: %s\n", err);
            goto out;
        }
        if ((a->width || a->height) && (lh != h || lw != w)) {
            fprintf(stderr, "d3po sample: --size %dx%d disagrees with the %dx%d latents of %s\n",
                    a->width, a->height, lw * m.factor, lh * m.factor, a->latents);
            rc = EXIT_USAGE;
            goto out;
        }
        h = lh;
        w = lw;
    }
    if (sd_unet_check_size(&m.p.unet, h, w, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        rc = EXIT_USAGE;
        goto out;
    }
    size_t Dx = (size_t)C * h * w, Dc = sd_model_ctx_floats(&m);
    int H = h * m.factor, W = w * m.factor;
    x = malloc(Dx * sizeof(float));
    ctx = malloc(2 * Dc * sizeof(float));
    rgb = malloc((size_t)H * W * 3);
    tp = tape_new(be);
    if (!x || !ctx || !rgb || !tp) {
        fprintf(stderr, "d3po sample: out of memory\n");
        goto out;
    }
    const char *pr[2] = {a->prompt, a->negative ? a->negative : ""};
    if (sd_model_encode(&m, pr, 2, ctx, err) || fs_mkdirs(a->out, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        goto out;
    }
    ddim_opts o = {.steps = (int)a->steps, .eta = (float)a->eta, .cfg = (float)a->cfg};
    char name[64];
    prompt_name(name, sizeof name, a->prompt);
    for (long i = 0; i < a->count; i++) {
        d3_rng r, step;
        /* image i: x_T from stream 2i, step noise from stream 2i+1 (as the
         * pixel family's sample --count) */
        if (x0) {
            memcpy(x, x0, Dx * sizeof(float));
        } else {
            rng_init(&r, a->seed, 2 * (uint64_t)i);
            rng_normal(&r, x, Dx);
        }
        rng_init(&step, a->seed, 2 * (uint64_t)i + 1);
        if (sd_ddim_sample(&m, tp, &o, 1, ctx, ctx + Dc, x, h, w, &step, NULL, NULL, err) ||
            sd_model_decode(&m, tp, x, 1, h, w, rgb, err)) {
            fprintf(stderr, "d3po sample: %s\n", err);
            goto out;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s-%llu-%ld.png", a->out, name, (unsigned long long)a->seed, i);
        if (png_write_rgb(path, rgb, W, H, err)) {
            fprintf(stderr, "d3po sample: %s\n", err);
            goto out;
        }
        put_safe(path);
        putchar('\n');
    }
    rc = 0;
out:
    if (tp) tape_free(tp);
    free(x0);
    free(x);
    free(ctx);
    free(rgb);
    free_loras(&m, sets, a->nlora);
    sd_model_free(&m);
    return rc;
}

/* ---- lora ---- */

static const char *lora_help =
    "usage: d3po lora --model SD_DIR_OR_FILE --out FILE.safetensors [--format lora|lora-diffusers]\n"
    "                 [--from FILE] [--rank N] [--alpha X] [--targets LIST] [--seed N] [--up-std X]\n"
    "\n"
    "Writes LoRA adapters for the model's UNet: new ones (rank 4, alpha = rank, on\n"
    "to_q,to_k,to_v,to_out.0 of every attention: the D3PO paper's), or those of\n"
    "--from (any naming d3po reads) in another naming. Files load with\n"
    "`d3po sample --lora FILE` and in diffusers, ComfyUI and AUTOMATIC1111.\n"
    "  --format lora           kohya naming: lora_unet_<module>.lora_down.weight,\n"
    "                          .lora_up.weight, .alpha (default)\n"
    "  --format lora-diffusers diffusers naming: unet.<module>.lora.down.weight,\n"
    "                          .lora.up.weight (alpha/rank folded into up)\n"
    "  --rank N, --alpha X     new adapters' rank (1..1024) and alpha (default: rank)\n"
    "  --targets LIST          comma-separated module names ending the adapted linear\n"
    "                          layers' paths (default to_q,to_k,to_v,to_out.0)\n"
    "  --seed N                down ~ N(0, 1/rank^2) from this seed (default 0)\n"
    "  --up-std X              up ~ N(0, X^2) instead of zero (0: the adapted model is\n"
    "                          the base; non-zero: random adapters, for tests)\n";

int cmd_lora(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *from = NULL, *targets = NULL, *format = "lora";
    long rank = 4;
    double alpha = 0, upstd = 0;
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            fputs(lora_help, stdout);
            return 0;
        }
        if (o[0] != '-' || o[1] != '-' || i + 1 >= argc) {
            fprintf(stderr, "d3po lora: %s '%s'\n%s",
                    o[0] == '-' ? "option needs a value:" : "unexpected argument", st_show(o).s,
                    lora_help);
            return EXIT_USAGE;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(o, "--model")) model = v;
        else if (!strcmp(o, "--out")) out = v;
        else if (!strcmp(o, "--from")) from = v;
        else if (!strcmp(o, "--targets")) targets = v;
        else if (!strcmp(o, "--format")) format = v;
        else if (!strcmp(o, "--rank")) bad = cli_int("lora", o, v, 1, 1024, &rank);
        else if (!strcmp(o, "--alpha")) bad = cli_float("lora", o, v, 1e-6, 1e6, &alpha);
        else if (!strcmp(o, "--up-std")) bad = cli_float("lora", o, v, 0, 100, &upstd);
        else if (!strcmp(o, "--seed")) bad = cli_u64("lora", o, v, &seed);
        else {
            fprintf(stderr, "d3po lora: unknown option '%s'\n%s", st_show(o).s, lora_help);
            return EXIT_USAGE;
        }
        if (bad) return EXIT_USAGE;
    }
    if (!model || !out) {
        fprintf(stderr, "d3po lora: --model and --out are required\n%s", lora_help);
        return EXIT_USAGE;
    }
    lora_naming naming;
    if (!strcmp(format, "lora")) naming = LORA_KOHYA;
    else if (!strcmp(format, "lora-diffusers")) naming = LORA_DIFFUSERS;
    else {
        fprintf(stderr, "d3po lora: --format '%s': expected lora or lora-diffusers\n", st_show(format).s);
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN];
    sd_pipeline p;
    if (sd_pipeline_open(&p, model, NULL, err)) {
        fprintf(stderr, "d3po lora: %s\n", err);
        return EXIT_FAIL;
    }
    lora_set s = {0};
    int rc;
    if (from) {
        rc = lora_load(&s, from, &p.L[SD_UNET], err);
    } else {
        char list[1024], *tg[64];
        int nt = 0;
        snprintf(list, sizeof list, "%s", targets ? targets : "");
        for (char *t = strtok(list, ","); t && nt < 64; t = strtok(NULL, ",")) tg[nt++] = t;
        rc = lora_init(&s, &p.L[SD_UNET], nt ? (const char *const *)tg : NULL, nt, (int)rank,
                       alpha > 0 ? (float)alpha : (float)rank, seed, err);
        if (!rc && upstd > 0) {
            d3_rng r;
            rng_init(&r, seed, 0x10b);
            for (int i = 0; i < s.n; i++) {
                float *u = s.params + s.m[i].up;
                size_t n = (size_t)s.m[i].out * s.m[i].rank;
                rng_normal(&r, u, n);
                for (size_t k = 0; k < n; k++) u[k] *= (float)upstd;
            }
        }
    }
    if (!rc) rc = lora_save(&s, out, naming, err);
    if (rc) fprintf(stderr, "d3po lora: %s\n", err);
    else printf("%s: %d adapters (%zu parameters), %s naming\n", st_show(out).s, s.n, s.numel,
                naming == LORA_KOHYA ? "kohya" : "diffusers");
    lora_free(&s);
    sd_pipeline_close(&p);
    return rc ? EXIT_FAIL : 0;
}
