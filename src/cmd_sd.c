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

#include "cli.h"
#include "cmd_sd.h"
#include "fsutil.h"
#include "image.h"
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

int sd_sample(const sd_sample_args *a, const d3_backend *be) {
    char err[D3_ERRLEN];
    sd_model m;
    if (sd_model_load(&m, a->model, a->tokenizer, be, err)) {
        fprintf(stderr, "d3po sample: %s\n", err);
        return EXIT_FAIL;
    }
    int rc = EXIT_FAIL, C = m.latent_c, h = m.p.unet.sample_size, w = h;
    float *x0 = NULL, *x = NULL, *ctx = NULL;
    uint8_t *rgb = NULL;
    d3_tape *tp = NULL;
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
    sd_model_free(&m);
    return rc;
}
