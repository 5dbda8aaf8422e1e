/* pipeline.c - opening a diffusers pipeline folder or a single-file SD 1.x
 * checkpoint (see pipeline.h): the pipeline class, the scheduler, each
 * component's config and weights, the tokenizer folder.
 *
 * Single files carry no configs: those of SD 1.x are built here as the
 * JSON diffusers would hold, with every size read from the tensor shapes
 * (channels per level, layers per block, which levels attend, context
 * width, CLIP's width, depth and vocabulary) and the values shapes cannot
 * tell taken from SD 1.x (8 attention heads, 32 norm groups, quick_gelu
 * CLIP with 64-wide heads, VAE factor 0.18215, 512-pixel images). */
#include "pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SHOW(x) (st_show(x).s)

int sd_json_load(json_t **out, const char *path, char *err) {
    struct stat st;
    *out = NULL;
    if (stat(path, &st)) return d3_errf(err, "%s: missing", path);
    if (!S_ISREG(st.st_mode)) return d3_errf(err, "%s: not a regular file", path);
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        return d3_errf(err, "%s: not valid JSON: %s (line %d, column %d)", path, je.text, je.line,
                       je.column);
    if (!json_is_object(j)) {
        json_decref(j);
        return d3_errf(err, "%s: expected a JSON object", path);
    }
    *out = j;
    return 0;
}

/* ---- scheduler ------------------------------------------------------------ */

sd_sched sd_sched_sd1(void) {
    sd_sched s = {.num_train_timesteps = 1000, .beta_start = 0.00085, .beta_end = 0.012,
                  .beta_schedule = SD_BETA_SCALED_LINEAR, .steps_offset = 1,
                  .set_alpha_to_one = 0, .prediction = SD_PRED_EPSILON, .clip_sample = 0,
                  .clip_sample_range = 1.0};
    strcpy(s.class_name, "DDIMScheduler");
    return s;
}

/* Optional typed keys: absent or null keeps the default. */
static int get_num(const json_t *j, const char *key, double *v, const char *path, char *err) {
    const json_t *x = json_object_get(j, key);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_number(x)) return d3_errf(err, "%s: key '%s': expected a number", path, key);
    *v = json_number_value(x);
    if (!isfinite(*v)) return d3_errf(err, "%s: key '%s': not finite", path, key);
    return 0;
}

static int get_int(const json_t *j, const char *key, int *v, int lo, int hi, const char *path,
                   char *err) {
    const json_t *x = json_object_get(j, key);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_integer(x) || json_integer_value(x) < lo || json_integer_value(x) > hi)
        return d3_errf(err, "%s: key '%s': expected an integer in %d..%d", path, key, lo, hi);
    *v = (int)json_integer_value(x);
    return 0;
}

static int get_bool(const json_t *j, const char *key, int *v, const char *path, char *err) {
    const json_t *x = json_object_get(j, key);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_boolean(x)) return d3_errf(err, "%s: key '%s': expected true or false", path, key);
    *v = json_is_true(x);
    return 0;
}

static int get_str(const json_t *j, const char *key, const char **v, const char *path, char *err) {
    const json_t *x = json_object_get(j, key);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_string(x)) return d3_errf(err, "%s: key '%s': expected a string", path, key);
    *v = json_string_value(x);
    return 0;
}

int sd_sched_from_json(sd_sched *s, const json_t *j, const char *path, char *err) {
    /* diffusers' DDIMScheduler defaults, which from_config gives keys the
     * file lacks */
    *s = (sd_sched){.num_train_timesteps = 1000, .beta_start = 0.0001, .beta_end = 0.02,
                    .beta_schedule = SD_BETA_LINEAR, .steps_offset = 0, .set_alpha_to_one = 1,
                    .prediction = SD_PRED_EPSILON, .clip_sample = 1, .clip_sample_range = 1.0};
    const char *cls = "DDIMScheduler", *bs = NULL, *pt = NULL, *sp = NULL;
    if (get_str(j, "_class_name", &cls, path, err)) return -1;
    snprintf(s->class_name, sizeof s->class_name, "%s", SHOW(cls));
    if (get_int(j, "num_train_timesteps", &s->num_train_timesteps, 2, 100000, path, err) ||
        get_num(j, "beta_start", &s->beta_start, path, err) ||
        get_num(j, "beta_end", &s->beta_end, path, err) ||
        get_int(j, "steps_offset", &s->steps_offset, 0, 100000, path, err) ||
        get_bool(j, "set_alpha_to_one", &s->set_alpha_to_one, path, err) ||
        get_bool(j, "clip_sample", &s->clip_sample, path, err) ||
        get_num(j, "clip_sample_range", &s->clip_sample_range, path, err) ||
        get_str(j, "beta_schedule", &bs, path, err) ||
        get_str(j, "prediction_type", &pt, path, err) ||
        get_str(j, "timestep_spacing", &sp, path, err))
        return -1;
    if (bs && !strcmp(bs, "scaled_linear")) s->beta_schedule = SD_BETA_SCALED_LINEAR;
    else if (bs && strcmp(bs, "linear"))
        return d3_errf(err, "%s: key 'beta_schedule': '%s' is not supported (scaled_linear or linear)",
                       path, SHOW(bs));
    if (pt && !strcmp(pt, "v_prediction")) s->prediction = SD_PRED_V;
    else if (pt && strcmp(pt, "epsilon"))
        return d3_errf(err, "%s: key 'prediction_type': '%s' is not supported (epsilon or v_prediction)",
                       path, SHOW(pt));
    if (sp && strcmp(sp, "leading"))
        return d3_errf(err, "%s: key 'timestep_spacing': '%s' is not supported (leading, as DDIM in SD 1.x/2.x)",
                       path, SHOW(sp));
    const json_t *tb = json_object_get(j, "trained_betas");
    if (tb && !json_is_null(tb))
        return d3_errf(err, "%s: key 'trained_betas': explicit betas are not supported (null expected)", path);
    int flag = 0;
    if (get_bool(j, "thresholding", &flag, path, err)) return -1;
    if (flag) return d3_errf(err, "%s: key 'thresholding': dynamic thresholding is not supported (false expected)", path);
    if (get_bool(j, "rescale_betas_zero_snr", &flag, path, err)) return -1;
    if (flag) return d3_errf(err, "%s: key 'rescale_betas_zero_snr': not supported (false expected)", path);
    if (!(s->beta_start > 0 && s->beta_end >= s->beta_start && s->beta_end < 1))
        return d3_errf(err, "%s: keys 'beta_start', 'beta_end': expected 0 < beta_start <= beta_end < 1, got %g, %g",
                       path, s->beta_start, s->beta_end);
    if (s->steps_offset >= s->num_train_timesteps)
        return d3_errf(err, "%s: key 'steps_offset': %d is not below num_train_timesteps %d", path,
                       s->steps_offset, s->num_train_timesteps);
    if (s->clip_sample && !(s->clip_sample_range > 0))
        return d3_errf(err, "%s: key 'clip_sample_range': expected a positive number", path);
    return 0;
}

void sd_sched_abar(const sd_sched *s, float *abar) {
    /* torch.linspace in float32 (start + i*step for the first half, end -
     * (T-1-i)*step for the second), squared for scaled_linear; the
     * cumulative product accumulates in double and is stored as float, as
     * torch's CPU cumprod does */
    int T = s->num_train_timesteps;
    float a = s->beta_schedule == SD_BETA_SCALED_LINEAR ? (float)sqrt(s->beta_start) : (float)s->beta_start;
    float b = s->beta_schedule == SD_BETA_SCALED_LINEAR ? (float)sqrt(s->beta_end) : (float)s->beta_end;
    float step = (b - a) / (float)(T - 1);
    double acc = 1.0;
    for (int i = 0; i < T; i++) {
        float x = i < T / 2 ? a + step * (float)i : b - step * (float)(T - 1 - i);
        float beta = s->beta_schedule == SD_BETA_SCALED_LINEAR ? x * x : x;
        float alpha = 1.0f - beta;
        acc *= (double)alpha;
        abar[i] = (float)acc;
    }
}

int sd_sched_plan(const sd_sched *s, int K, int *ts, double *abar_t, double *abar_prev, char *err) {
    int T = s->num_train_timesteps;
    if (K < 1 || K > T) return d3_errf(err, "steps %d: expected 1..%d", K, T);
    float *abar = malloc((size_t)T * sizeof *abar);
    if (!abar) return d3_errf(err, "out of memory");
    sd_sched_abar(s, abar);
    int ratio = T / K, rc = 0;
    for (int k = 0; k < K; k++) {
        int t = (K - 1 - k) * ratio + s->steps_offset, prev = t - ratio;
        if (t >= T) {
            rc = d3_errf(err, "steps %d with steps_offset %d reach timestep %d, beyond num_train_timesteps %d",
                         K, s->steps_offset, t, T);
            break;
        }
        ts[k] = t;
        abar_t[k] = abar[t];
        abar_prev[k] = prev >= 0 ? abar[prev] : s->set_alpha_to_one ? 1.0 : abar[0];
    }
    free(abar);
    return rc;
}

/* ---- folders ---------------------------------------------------------------- */

/* model_index.json entry of a component: ["library", "Class"]. */
static int check_component(const json_t *idx, const char *path, const char *key, const char *lib,
                           const char *cls, char *err) {
    const json_t *v = json_object_get(idx, key);
    if (!v || json_is_null(v))
        return d3_errf(err, "%s: key '%s' missing (a Stable Diffusion pipeline has [\"%s\", \"%s\"])",
                       path, key, lib, cls);
    const json_t *c = json_array_get(v, 1);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_string(c))
        return d3_errf(err, "%s: key '%s': expected [\"library\", \"Class\"]", path, key);
    if (cls && strcmp(json_string_value(c), cls))
        return d3_errf(err, "%s: key '%s': class '%s' is not supported (expected %s)", path, key,
                       SHOW(json_string_value(c)), cls);
    return 0;
}

static int open_folder(sd_pipeline *p, const char *dir, char *err) {
    char path[1100];
    json_t *idx = NULL;
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    if (sd_json_load(&idx, path, err)) {
        struct stat st;
        if (stat(path, &st)) d3_errf(err, "%s: missing: not a diffusers pipeline folder", path);
        return -1;
    }
    int rc = -1;
    const char *cls = "";
    if (get_str(idx, "_class_name", &cls, path, err)) goto out;
    if (strstr(cls, "XL") || json_object_get(idx, "text_encoder_2")) {
        d3_errf(err, "%s: key '_class_name': '%s' is an SDXL pipeline, which d3po does not support (SD 1.x, 2.x and BK-SDM are)",
                path, SHOW(cls));
        goto out;
    }
    if (strcmp(cls, "StableDiffusionPipeline")) {
        d3_errf(err, "%s: key '_class_name': '%s' is not supported (expected StableDiffusionPipeline: SD 1.x, 2.x, BK-SDM)",
                path, SHOW(cls));
        goto out;
    }
    if (check_component(idx, path, "text_encoder", "transformers", "CLIPTextModel", err) ||
        check_component(idx, path, "tokenizer", "transformers", "CLIPTokenizer", err) ||
        check_component(idx, path, "unet", "diffusers", "UNet2DConditionModel", err) ||
        check_component(idx, path, "vae", "diffusers", "AutoencoderKL", err) ||
        check_component(idx, path, "scheduler", "diffusers", NULL, err))
        goto out;

    json_t *sj = NULL;
    snprintf(p->sched_path, sizeof p->sched_path, "%s/scheduler/scheduler_config.json", dir);
    if (sd_json_load(&sj, p->sched_path, err)) goto out;
    int bad = sd_sched_from_json(&p->sched, sj, p->sched_path, err);
    json_decref(sj);
    if (bad) goto out;

    for (int k = 0; k < SD_NPARTS; k++) {
        snprintf(p->config_path[k], sizeof p->config_path[k], "%s/%s/config.json", dir, sd_part_name(k));
        if (sd_json_load(&p->config[k], p->config_path[k], err)) goto out;
        snprintf(path, sizeof path, "%s/%s", dir, sd_part_name(k));
        if (sdw_open_dir(&p->weights[k], path, k, err)) goto out;
    }
    snprintf(p->tokenizer, sizeof p->tokenizer, "%s/tokenizer", dir);
    rc = 0;
out:
    json_decref(idx);
    return rc;
}

/* ---- single files ----------------------------------------------------------- */

/* Shape dim d of a diffusers-named tensor of w, or -1. */
static int64_t dim_of(const sd_weights *w, const char *name, int d) {
    const sdw_entry *e = sdw_find(w, name);
    return e && d < e->t->ndim ? e->t->shape[d] : -1;
}

static int has_prefix(const sd_weights *w, const char *prefix) {
    size_t n = strlen(prefix);
    for (int i = 0; i < w->n; i++)
        if (!strncmp(w->e[i].name, prefix, n)) return 1;
    return 0;
}

static json_t *unet_config(const sd_weights *w, const char *file, char *err) {
    char n[SD_NAME_MAX];
    int levels = 0, lpb = 0;
    while (snprintf(n, sizeof n, "down_blocks.%d.resnets.0.conv1.weight", levels), sdw_find(w, n)) levels++;
    while (snprintf(n, sizeof n, "down_blocks.0.resnets.%d.conv1.weight", lpb), sdw_find(w, n)) lpb++;
    int64_t cin = dim_of(w, "conv_in.weight", 1), cout = dim_of(w, "conv_out.weight", 0);
    if (levels == 0 || lpb == 0 || cin < 0 || cout < 0) {
        d3_errf(err, "%s: the UNet (model.diffusion_model.*) lacks conv_in/conv_out or its down blocks", file);
        return NULL;
    }
    if (cin != 4) {
        d3_errf(err, "%s: tensor 'model.diffusion_model.input_blocks.0.0.weight' has %lld input channels, an SD 1.x UNet has 4 (inpainting and other variants are not supported)",
                file, (long long)cin);
        return NULL;
    }
    json_t *c = json_object(), *boc = json_array(), *down = json_array(), *up = json_array();
    int64_t ctx = -1, depth = 0;
    int linear = 0;
    for (int b = 0; b < levels; b++) {
        snprintf(n, sizeof n, "down_blocks.%d.resnets.0.conv1.weight", b);
        json_array_append_new(boc, json_integer(dim_of(w, n, 0)));
        snprintf(n, sizeof n, "down_blocks.%d.attentions.", b);
        int att = has_prefix(w, n);
        json_array_append_new(down, json_string(att ? "CrossAttnDownBlock2D" : "DownBlock2D"));
        snprintf(n, sizeof n, "up_blocks.%d.attentions.", b);
        json_array_append_new(up, json_string(has_prefix(w, n) ? "CrossAttnUpBlock2D" : "UpBlock2D"));
        if (att && ctx < 0) {
            snprintf(n, sizeof n, "down_blocks.%d.attentions.0.transformer_blocks.0.attn2.to_k.weight", b);
            ctx = dim_of(w, n, 1);
            snprintf(n, sizeof n, "down_blocks.%d.attentions.0.proj_in.weight", b);
            const sdw_entry *e = sdw_find(w, n);
            linear = e && e->t->ndim == 2;
            while (snprintf(n, sizeof n, "down_blocks.%d.attentions.0.transformer_blocks.%lld.attn1.to_q.weight",
                            b, (long long)depth), sdw_find(w, n))
                depth++;
        }
    }
    json_object_set_new(c, "_class_name", json_string("UNet2DConditionModel"));
    json_object_set_new(c, "sample_size", json_integer(64));
    json_object_set_new(c, "in_channels", json_integer(cin));
    json_object_set_new(c, "out_channels", json_integer(cout));
    json_object_set_new(c, "layers_per_block", json_integer(lpb));
    json_object_set_new(c, "block_out_channels", boc);
    json_object_set_new(c, "down_block_types", down);
    json_object_set_new(c, "up_block_types", up);
    json_object_set_new(c, "mid_block_type", has_prefix(w, "mid_block.") ? json_string("UNetMidBlock2DCrossAttn") : json_null());
    json_object_set_new(c, "cross_attention_dim", ctx > 0 ? json_integer(ctx) : json_integer(768));
    json_object_set_new(c, "attention_head_dim", json_integer(8));
    json_object_set_new(c, "num_attention_heads", json_null());
    json_object_set_new(c, "use_linear_projection", json_boolean(linear));
    json_object_set_new(c, "transformer_layers_per_block", json_integer(depth > 0 ? depth : 1));
    json_object_set_new(c, "norm_num_groups", json_integer(32));
    json_object_set_new(c, "norm_eps", json_real(1e-5));
    json_object_set_new(c, "flip_sin_to_cos", json_true());
    json_object_set_new(c, "freq_shift", json_integer(0));
    json_object_set_new(c, "upcast_attention", json_false());
    json_object_set_new(c, "act_fn", json_string("silu"));
    return c;
}

static json_t *vae_config(const sd_weights *w, const char *file, char *err) {
    char n[SD_NAME_MAX];
    int levels = 0, lpb = 0;
    while (snprintf(n, sizeof n, "decoder.up_blocks.%d.resnets.0.conv1.weight", levels), sdw_find(w, n)) levels++;
    while (snprintf(n, sizeof n, "decoder.up_blocks.0.resnets.%d.conv1.weight", lpb), sdw_find(w, n)) lpb++;
    int64_t lat = dim_of(w, "decoder.conv_in.weight", 1), out = dim_of(w, "decoder.conv_out.weight", 0);
    if (levels == 0 || lpb < 2 || lat < 0 || out < 0) {
        d3_errf(err, "%s: the VAE (first_stage_model.*) lacks its decoder's conv_in/conv_out or up blocks", file);
        return NULL;
    }
    json_t *c = json_object(), *boc = json_array(), *down = json_array(), *up = json_array();
    for (int b = 0; b < levels; b++) { /* up_blocks run from the widest level down */
        snprintf(n, sizeof n, "decoder.up_blocks.%d.resnets.0.conv1.weight", levels - 1 - b);
        json_array_append_new(boc, json_integer(dim_of(w, n, 0)));
        json_array_append_new(down, json_string("DownEncoderBlock2D"));
        json_array_append_new(up, json_string("UpDecoderBlock2D"));
    }
    json_object_set_new(c, "_class_name", json_string("AutoencoderKL"));
    json_object_set_new(c, "in_channels", json_integer(out));
    json_object_set_new(c, "out_channels", json_integer(out));
    json_object_set_new(c, "latent_channels", json_integer(lat));
    json_object_set_new(c, "block_out_channels", boc);
    json_object_set_new(c, "down_block_types", down);
    json_object_set_new(c, "up_block_types", up);
    json_object_set_new(c, "layers_per_block", json_integer(lpb - 1));
    json_object_set_new(c, "norm_num_groups", json_integer(32));
    json_object_set_new(c, "sample_size", json_integer(512));
    json_object_set_new(c, "scaling_factor", json_real(0.18215));
    json_object_set_new(c, "act_fn", json_string("silu"));
    json_object_set_new(c, "use_quant_conv", json_boolean(sdw_find(w, "quant_conv.weight") != NULL));
    json_object_set_new(c, "use_post_quant_conv", json_boolean(sdw_find(w, "post_quant_conv.weight") != NULL));
    json_object_set_new(c, "mid_block_add_attention", json_boolean(has_prefix(w, "decoder.mid_block.attentions.")));
    return c;
}

static json_t *clip_config(const sd_weights *w, const char *file, char *err) {
    char n[SD_NAME_MAX];
    int layers = 0;
    while (snprintf(n, sizeof n, "text_model.encoder.layers.%d.self_attn.q_proj.weight", layers), sdw_find(w, n)) layers++;
    int64_t vocab = dim_of(w, "text_model.embeddings.token_embedding.weight", 0),
            hidden = dim_of(w, "text_model.embeddings.token_embedding.weight", 1),
            pos = dim_of(w, "text_model.embeddings.position_embedding.weight", 0),
            inter = dim_of(w, "text_model.encoder.layers.0.mlp.fc1.weight", 0);
    if (layers == 0 || vocab < 0 || hidden < 0 || pos < 0 || inter < 0) {
        d3_errf(err, "%s: the text encoder (cond_stage_model.transformer.text_model.*) lacks its embeddings or layers", file);
        return NULL;
    }
    json_t *c = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", "CLIPTextModel"));
    json_object_set_new(c, "model_type", json_string("clip_text_model"));
    json_object_set_new(c, "vocab_size", json_integer(vocab));
    json_object_set_new(c, "hidden_size", json_integer(hidden));
    json_object_set_new(c, "intermediate_size", json_integer(inter));
    json_object_set_new(c, "num_hidden_layers", json_integer(layers));
    /* CLIP ViT-L/14's text tower: 64-wide heads */
    json_object_set_new(c, "num_attention_heads", json_integer(hidden % 64 == 0 ? hidden / 64 : 1));
    json_object_set_new(c, "max_position_embeddings", json_integer(pos));
    json_object_set_new(c, "hidden_act", json_string("quick_gelu"));
    json_object_set_new(c, "layer_norm_eps", json_real(1e-5));
    json_object_set_new(c, "bos_token_id", json_integer(49406));
    json_object_set_new(c, "eos_token_id", json_integer(49407));
    json_object_set_new(c, "pad_token_id", json_integer(1));
    return c;
}

static int open_single(sd_pipeline *p, const char *file, char *err) {
    /* the family first, from names only diffusers' detection uses */
    st_file f;
    if (st_map(&f, file, err)) return -1;
    int openclip = 0, xl = 0, ldm = 0;
    for (int i = 0; i < f.ntensors; i++) {
        const char *n = f.tensors[i].name;
        openclip |= !strncmp(n, "cond_stage_model.model.", 23);
        xl |= !strncmp(n, "conditioner.embedders.", 22);
        ldm |= !strncmp(n, "model.diffusion_model.", 22);
    }
    st_free(&f);
    if (xl)
        return d3_errf(err, "%s: tensors 'conditioner.embedders.*': an SDXL checkpoint, which d3po does not support (SD 1.x single files; SD 2.x and BK-SDM as diffusers folders)",
                       file);
    if (openclip)
        return d3_errf(err, "%s: tensors 'cond_stage_model.model.*' (OpenCLIP): an SD 2.x checkpoint; d3po reads SD 2.x as a diffusers folder only (convert it with diffusers' from_single_file + save_pretrained)",
                       file);
    if (!ldm)
        return d3_errf(err, "%s: no tensors named model.diffusion_model.*: not a single-file Stable Diffusion checkpoint (a diffusers pipeline is a folder with model_index.json)",
                       file);
    json_t *(*mk[SD_NPARTS])(const sd_weights *, const char *, char *) = {clip_config, unet_config,
                                                                           vae_config};
    for (int k = 0; k < SD_NPARTS; k++) {
        if (sdw_open_single(&p->weights[k], file, k, err)) return -1;
        snprintf(p->config_path[k], sizeof p->config_path[k], "%s (SD 1.x %s config)", file, sd_part_name(k));
        if (!(p->config[k] = mk[k](&p->weights[k], file, err))) return -1;
    }
    /* 512-pixel images, as diffusers' single-file loader assumes for SD 1.x */
    size_t nlev = json_array_size(json_object_get(p->config[SD_VAE], "block_out_channels"));
    json_object_set_new(p->config[SD_UNET], "sample_size", json_integer(512 >> (nlev - 1)));
    int64_t ctx = json_integer_value(json_object_get(p->config[SD_UNET], "cross_attention_dim"));
    int64_t hid = json_integer_value(json_object_get(p->config[SD_TEXT_ENCODER], "hidden_size"));
    if (ctx != hid)
        return d3_errf(err, "%s: the UNet attends to %lld-wide text states but the text encoder is %lld wide",
                       file, (long long)ctx, (long long)hid);
    p->sched = sd_sched_sd1();
    snprintf(p->sched_path, sizeof p->sched_path, "%s (SD 1.x scheduler)", file);
    return 0;
}

/* ---- both -------------------------------------------------------------------- */

static int tokenizer_ok(const char *dir) {
    char a[1200], b[1200];
    struct stat st;
    snprintf(a, sizeof a, "%s/vocab.json", dir);
    snprintf(b, sizeof b, "%s/merges.txt", dir);
    return stat(a, &st) == 0 && S_ISREG(st.st_mode) && stat(b, &st) == 0 && S_ISREG(st.st_mode);
}

static void family(sd_pipeline *p) {
    const json_t *u = p->config[SD_UNET], *t = p->config[SD_TEXT_ENCODER];
    const json_t *mid = json_object_get(u, "mid_block_type");
    const json_t *act = json_object_get(t, "hidden_act");
    if (mid && json_is_null(mid)) strcpy(p->family, "BK-SDM");
    else if (json_is_string(act) && !strcmp(json_string_value(act), "gelu")) strcpy(p->family, "SD 2.x");
    else strcpy(p->family, "SD 1.x");
}

int sd_pipeline_open(sd_pipeline *p, const char *path, const char *tokenizer, char *err) {
    memset(p, 0, sizeof *p);
    snprintf(p->path, sizeof p->path, "%s", path);
    struct stat st;
    if (stat(path, &st)) return d3_errf(err, "%s: no such file or folder", path);
    int rc;
    if (S_ISDIR(st.st_mode)) {
        rc = open_folder(p, path, err);
    } else if (S_ISREG(st.st_mode)) {
        p->single = 1;
        rc = open_single(p, path, err);
        if (!rc && !tokenizer) {
            const char *slash = strrchr(path, '/');
            snprintf(p->tokenizer, sizeof p->tokenizer, "%.*s%stokenizer",
                     slash ? (int)(slash - path) : 0, path, slash ? "/" : "");
        }
    } else {
        rc = d3_errf(err, "%s: neither a folder nor a regular file", path);
    }
    if (!rc && tokenizer) snprintf(p->tokenizer, sizeof p->tokenizer, "%s", tokenizer);
    if (!rc && tokenizer && !tokenizer_ok(p->tokenizer))
        rc = d3_errf(err, "%s: tokenizer folder %s lacks vocab.json or merges.txt", path, tokenizer);
    else if (!rc && !tokenizer_ok(p->tokenizer))
        rc = d3_errf(err, p->single ? "%s: a single-file checkpoint has no tokenizer: put CLIP's vocab.json and merges.txt in %s (a tokenizer/ folder beside the file) or pass --tokenizer DIR"
                                    : "%s: no tokenizer: %s needs vocab.json and merges.txt (or pass --tokenizer DIR)",
                     path, p->tokenizer);
    if (!rc) rc = sd_clip_config_from_json(&p->clip, p->config[SD_TEXT_ENCODER], p->config_path[SD_TEXT_ENCODER], err);
    if (!rc) rc = sd_clip_layout(&p->clip, &p->L[SD_TEXT_ENCODER], err);
    if (!rc) rc = sd_unet_config_from_json(&p->unet, p->config[SD_UNET], p->config_path[SD_UNET], err);
    if (!rc) rc = sd_vae_config_from_json(&p->vae, p->config[SD_VAE], p->config_path[SD_VAE], err);
    if (!rc) rc = sd_unet_layout(&p->unet, &p->L[SD_UNET], err);
    if (!rc) rc = sd_vae_layout(&p->vae, &p->L[SD_VAE], err);
    for (int k = 0; k < SD_NPARTS && !rc; k++)
        if (p->L[k].n) rc = sdw_check(&p->weights[k], &p->L[k], err);
    if (rc) {
        sd_pipeline_close(p);
        return -1;
    }
    family(p);
    return 0;
}

int sd_pipeline_fill(sd_pipeline *p, sd_part part, float *params, char *err) {
    if (!p->L[part].n) return d3_errf(err, "%s: no layout for the %s", p->path, sd_part_name(part));
    return sdw_fill(&p->weights[part], &p->L[part], params, err);
}

int sd_pipeline_probe(const char *path) {
    struct stat st;
    if (stat(path, &st)) return 0;
    if (S_ISDIR(st.st_mode)) return 1;
    st_file f;
    char err[D3_ERRLEN];
    if (!S_ISREG(st.st_mode) || st_map(&f, path, err)) return 0;
    int sd = 0;
    if (!st_meta(&f, "d3po.arch"))
        for (int i = 0; i < f.ntensors && !sd; i++) {
            const char *n = f.tensors[i].name;
            sd = !strncmp(n, "model.diffusion_model.", 22) || !strncmp(n, "conditioner.", 12) ||
                 !strncmp(n, "cond_stage_model.", 17);
        }
    st_free(&f);
    return sd;
}

void sd_pipeline_close(sd_pipeline *p) {
    for (int k = 0; k < SD_NPARTS; k++) {
        json_decref(p->config[k]);
        sdw_free(&p->weights[k]);
        sd_layout_free(&p->L[k]);
    }
    memset(p, 0, sizeof *p);
}
