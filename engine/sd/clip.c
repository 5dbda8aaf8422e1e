/* clip.c - CLIP's text encoder on the tape (see clip.h for the model and
 * why no attention mask is applied). Parameters are found by name once per
 * call through the layout; every layer is a tape op from tape.h, so the
 * gradients to the encoder's parameters (a text-encoder LoRA later) come
 * from tape_backward like everything else. */
#include "sd/clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A positive integer key (default def when missing). */
static int get_int(const json_t *j, const char *key, int def, const char *path, int *out, char *err) {
    json_t *v = json_object_get(j, key);
    if (!v) { *out = def; return 0; }
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 24))
        return d3_errf(err, "%s: key \"%s\": expected a positive integer", path, key);
    *out = (int)json_integer_value(v);
    return 0;
}

int sd_clip_config_from_json(sd_clip_config *c, const json_t *j, const char *path, char *err) {
    if (!json_is_object(j)) return d3_errf(err, "%s: expected a JSON object", path);
    /* CLIPTextConfig's defaults, for keys a config leaves out */
    if (get_int(j, "vocab_size", 49408, path, &c->vocab_size, err) ||
        get_int(j, "hidden_size", 512, path, &c->hidden_size, err) ||
        get_int(j, "intermediate_size", 2048, path, &c->intermediate_size, err) ||
        get_int(j, "num_hidden_layers", 12, path, &c->num_hidden_layers, err) ||
        get_int(j, "num_attention_heads", 8, path, &c->num_attention_heads, err) ||
        get_int(j, "max_position_embeddings", 77, path, &c->max_position_embeddings, err))
        return -1;
    json_t *v = json_object_get(j, "hidden_act");
    c->hidden_act = SD_ACT_QUICK_GELU;
    if (v) {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "quick_gelu") == 0) c->hidden_act = SD_ACT_QUICK_GELU;
        else if (s && strcmp(s, "gelu") == 0) c->hidden_act = SD_ACT_GELU;
        else return d3_errf(err, "%s: key \"hidden_act\": expected \"quick_gelu\" or \"gelu\"", path);
    }
    v = json_object_get(j, "layer_norm_eps");
    c->layer_norm_eps = 1e-5f;
    if (v) {
        if (!json_is_number(v) || !(json_number_value(v) > 0) || json_number_value(v) > 1)
            return d3_errf(err, "%s: key \"layer_norm_eps\": expected a number in (0, 1]", path);
        c->layer_norm_eps = (float)json_number_value(v);
    }
    v = json_object_get(j, "model_type");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "clip_text_model") == 0))
        return d3_errf(err, "%s: key \"model_type\": expected \"clip_text_model\"", path);
    v = json_object_get(j, "architectures");
    if (v) {
        int ok = 0;
        for (size_t i = 0; json_is_array(v) && i < json_array_size(v); i++) {
            const char *s = json_string_value(json_array_get(v, i));
            if (s && strcmp(s, "CLIPTextModel") == 0) ok = 1;
        }
        if (!ok) return d3_errf(err, "%s: key \"architectures\": expected [\"CLIPTextModel\"]", path);
    }
    if (c->hidden_size % c->num_attention_heads)
        return d3_errf(err, "%s: key \"num_attention_heads\": %d does not divide hidden_size %d", path,
                       c->num_attention_heads, c->hidden_size);
    if (c->hidden_size / c->num_attention_heads > 160)
        return d3_errf(err, "%s: key \"num_attention_heads\": heads of %d features, at most 160 supported", path,
                       c->hidden_size / c->num_attention_heads);
    return 0;
}

int sd_clip_layout(const sd_clip_config *c, sd_layout *L, char *err) {
    const int64_t D = c->hidden_size, I = c->intermediate_size;
    int64_t s[2];
#define ADD2(a, b, ...) (s[0] = (a), s[1] = (b), sd_layout_addf(L, 2, s, __VA_ARGS__))
#define ADD1(a, ...) (s[0] = (a), sd_layout_addf(L, 1, s, __VA_ARGS__))
    int ok = ADD2(c->vocab_size, D, "text_model.embeddings.token_embedding.weight") &&
             ADD2(c->max_position_embeddings, D, "text_model.embeddings.position_embedding.weight");
    for (int l = 0; ok && l < c->num_hidden_layers; l++) {
        static const char *proj[4] = {"k_proj", "v_proj", "q_proj", "out_proj"};
        for (int p = 0; p < 4; p++)
            ok = ok && ADD2(D, D, "text_model.encoder.layers.%d.self_attn.%s.weight", l, proj[p]) &&
                 ADD1(D, "text_model.encoder.layers.%d.self_attn.%s.bias", l, proj[p]);
        ok = ok && ADD1(D, "text_model.encoder.layers.%d.layer_norm1.weight", l) &&
             ADD1(D, "text_model.encoder.layers.%d.layer_norm1.bias", l) &&
             ADD2(I, D, "text_model.encoder.layers.%d.mlp.fc1.weight", l) &&
             ADD1(I, "text_model.encoder.layers.%d.mlp.fc1.bias", l) &&
             ADD2(D, I, "text_model.encoder.layers.%d.mlp.fc2.weight", l) &&
             ADD1(D, "text_model.encoder.layers.%d.mlp.fc2.bias", l) &&
             ADD1(D, "text_model.encoder.layers.%d.layer_norm2.weight", l) &&
             ADD1(D, "text_model.encoder.layers.%d.layer_norm2.bias", l);
    }
    ok = ok && ADD1(D, "text_model.final_layer_norm.weight") && ADD1(D, "text_model.final_layer_norm.bias");
#undef ADD1
#undef ADD2
    if (!ok) return d3_errf(err, "text encoder layout: out of memory");
    return 0;
}

/* Parameter and gradient pointers of one named tensor. */
typedef struct {
    const float *params;
    float *grads;
    const sd_layout *L;
} pset;

static const sd_param *need(const pset *ps, const char *fmt, int l, const char *part) {
    char name[SD_NAME_MAX];
    snprintf(name, sizeof name, fmt, l, part);
    const sd_param *p = sd_layout_find(ps->L, name);
    if (!p) {
        /* the layout comes from sd_clip_layout: a missing name is a programmer error */
        fprintf(stderr, "clip.c: tensor %s not in the layout\n", name);
        abort();
    }
    return p;
}
static const float *PW(const pset *ps, const char *fmt, int l, const char *part) {
    return ps->params + need(ps, fmt, l, part)->off;
}
static float *GW(const pset *ps, const char *fmt, int l, const char *part) {
    return ps->grads ? ps->grads + need(ps, fmt, l, part)->off : NULL;
}

/* A linear layer "<prefix>.weight/.bias" over the last dim. */
static d3_tensor *dense(d3_tape *tp, const pset *ps, d3_tensor *x, int l, const char *fmtw, const char *fmtb,
                        const char *part, int OUT) {
    return tape_dense(tp, x, PW(ps, fmtw, l, part), PW(ps, fmtb, l, part), GW(ps, fmtw, l, part),
                      GW(ps, fmtb, l, part), OUT);
}

d3_tensor *sd_clip_forward(d3_tape *tp, const sd_clip_config *c, const sd_layout *L, const float *params,
                           float *grads, const int32_t *ids, int N, int T) {
    const pset ps = {params, grads, L};
    const int D = c->hidden_size, I = c->intermediate_size;
    const float eps = c->layer_norm_eps;
    int *idx = malloc(sizeof(int) * (size_t)N * T), *pos = malloc(sizeof(int) * (size_t)N * T);
    if (!idx || !pos) {
        fprintf(stderr, "clip.c: out of memory for %d x %d ids\n", N, T);
        abort();
    }
    for (int i = 0; i < N * T; i++) {
        idx[i] = ids[i];
        pos[i] = i % T; /* position_ids = arange(T) for every prompt */
    }
    /* x: [N, T, 1, D] */
    d3_tensor *tok = tape_embedding(tp, idx, N * T, PW(&ps, "text_model.embeddings.token_embedding.weight", 0, ""),
                                    GW(&ps, "text_model.embeddings.token_embedding.weight", 0, ""), D);
    d3_tensor *pe = tape_embedding(tp, pos, N * T, PW(&ps, "text_model.embeddings.position_embedding.weight", 0, ""),
                                   GW(&ps, "text_model.embeddings.position_embedding.weight", 0, ""), D);
    free(idx);
    free(pos);
    d3_tensor *x = tape_reshape(tp, tape_add(tp, tok, pe), N, T, 1, D);
    static const char *W = "text_model.encoder.layers.%d.%s.weight", *B = "text_model.encoder.layers.%d.%s.bias";
    for (int l = 0; l < c->num_hidden_layers; l++) {
        d3_tensor *h = tape_layernorm(tp, x, PW(&ps, W, l, "layer_norm1"), PW(&ps, B, l, "layer_norm1"),
                                      GW(&ps, W, l, "layer_norm1"), GW(&ps, B, l, "layer_norm1"), eps);
        d3_tensor *q = dense(tp, &ps, h, l, W, B, "self_attn.q_proj", D);
        d3_tensor *k = dense(tp, &ps, h, l, W, B, "self_attn.k_proj", D);
        d3_tensor *v = dense(tp, &ps, h, l, W, B, "self_attn.v_proj", D);
        h = tape_mha(tp, q, k, v, c->num_attention_heads, 1);
        x = tape_add(tp, x, dense(tp, &ps, h, l, W, B, "self_attn.out_proj", D));
        h = tape_layernorm(tp, x, PW(&ps, W, l, "layer_norm2"), PW(&ps, B, l, "layer_norm2"),
                           GW(&ps, W, l, "layer_norm2"), GW(&ps, B, l, "layer_norm2"), eps);
        h = dense(tp, &ps, h, l, W, B, "mlp.fc1", I);
        h = c->hidden_act == SD_ACT_GELU ? tape_gelu(tp, h) : tape_quick_gelu(tp, h);
        x = tape_add(tp, x, dense(tp, &ps, h, l, W, B, "mlp.fc2", D));
    }
    return tape_layernorm(tp, x, PW(&ps, "text_model.final_layer_norm.weight", 0, ""),
                          PW(&ps, "text_model.final_layer_norm.bias", 0, ""),
                          GW(&ps, "text_model.final_layer_norm.weight", 0, ""),
                          GW(&ps, "text_model.final_layer_norm.bias", 0, ""), eps);
}

int sd_clip_encode(const d3_backend *be, const sd_clip_config *c, const sd_layout *L, const float *params,
                   const sd_tokenizer *tk, const char *const *prompts, int n, float *out, char *err) {
    const int T = sd_tokenizer_max_length(tk);
    if (T > c->max_position_embeddings)
        return d3_errf(err, "text encoder: the tokenizer's model_max_length %d exceeds max_position_embeddings %d", T,
                       c->max_position_embeddings);
    if (n < 1) return 0;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n * T);
    if (!ids) return d3_errf(err, "text encoder: out of memory");
    for (int i = 0; i < n; i++) {
        if (sd_tokenizer_encode(tk, prompts[i], ids + (size_t)i * T, err) < 0) { free(ids); return -1; }
        for (int t = 0; t < T; t++) {
            int32_t id = ids[(size_t)i * T + t];
            if (id < 0 || id >= c->vocab_size) {
                free(ids);
                return d3_errf(err, "text encoder: token id %d outside the vocabulary of %d (tokenizer and text "
                               "encoder do not match)", id, c->vocab_size);
            }
        }
    }
    d3_tape *tp = tape_new(be);
    if (!tp) { free(ids); return d3_errf(err, "text encoder: out of memory for the tape"); }
    tape_set_grad(tp, 0);
    d3_tensor *h = sd_clip_forward(tp, c, L, params, NULL, ids, n, T);
    be->sync();
    be->download(out, h->v, sizeof(float) * h->numel);
    tape_free(tp);
    free(ids);
    return 0;
}
