/* cmd_sd.c - the Stable Diffusion-family side of `d3po info`: describes a
 * diffusers folder or a single-file SD 1.x checkpoint (family, image and
 * latent sizes, parameters and dtype of each part, scheduler, prediction
 * type). cmd_info (cmd_model.c) comes here when sd_pipeline_probe says the
 * path is such a model. Everything taken from the files is escaped before
 * it is printed. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cmd_sd.h"
#include "sd/pipeline.h"

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
