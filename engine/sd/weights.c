/* weights.c - reading an SD-family component's tensors by diffusers name
 * from a diffusers folder (plain, fp16 variant, sharded) or a single-file
 * SD 1.x checkpoint (see weights.h).
 *
 * Opening maps every file (st_map) and builds one table of entries sorted
 * by diffusers name; the data stay in the maps until sdw_fill converts them
 * into the component's flat buffer. The LDM -> diffusers renaming of
 * single files (sdw_ldm_name) follows the structure of the LDM modules:
 *   UNet  input_blocks.0.0 = conv_in; input_blocks.i (i >= 1) is level
 *         (i-1)/(lpb+1), slot (i-1)%(lpb+1): .0 a res block (or .0.op the
 *         downsampler in the last slot), .1 its transformer;
 *         middle_block.0/1/2 = resnet 0, attention, resnet 1;
 *         output_blocks.i is up level i/(lpb+1), slot i%(lpb+1): .0 res
 *         block, .1 transformer or (no transformer) .1.conv the upsampler,
 *         .2.conv the upsampler after a transformer;
 *         res blocks: in_layers.0/2 = norm1/conv1, out_layers.0/3 =
 *         norm2/conv2, emb_layers.1 = time_emb_proj, skip_connection =
 *         conv_shortcut; time_embed.0/2 = time_embedding.linear_1/2;
 *         out.0/2 = conv_norm_out/conv_out. Transformer names are equal.
 *   VAE   {en,de}coder.down.i.block.j / up.i.block.j = down_blocks.i /
 *         up_blocks.(n-1-i) resnets.j (up levels are numbered from the
 *         bottom in LDM), .downsample/.upsample = *samplers.0,
 *         mid.block_1/2 = mid_block.resnets.0/1, mid.attn_1.{norm,q,k,v,
 *         proj_out} = mid_block.attentions.0.{group_norm,to_q,to_k,to_v,
 *         to_out.0} (1x1 convolutions in LDM: squeezed), norm_out =
 *         conv_norm_out, nin_shortcut = conv_shortcut.
 *   CLIP  cond_stage_model.transformer. is removed; the rest is
 *         transformers' CLIPTextModel names already (checkpoints saved
 *         by transformers before text_model. existed get it added).
 * A name the conversion does not know is left out, as diffusers' single-
 * file loader leaves it out (EMA copies, LDM schedule buffers, ...). */
#include "weights.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SHOW(x) (st_show(x).s)

static const char *part_names[SD_NPARTS] = {"text_encoder", "unet", "vae"};

const char *sd_part_name(sd_part p) { return (unsigned)p < SD_NPARTS ? part_names[p] : "?"; }

/* The LDM prefix of each part in a single-file checkpoint. */
static const char *ldm_prefix[SD_NPARTS] = {"cond_stage_model.transformer.",
                                           "model.diffusion_model.", "first_stage_model."};

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

void sdw_free(sd_weights *w) {
    for (int i = 0; i < w->nfiles; i++) {
        st_free(&w->files[i]);
        free(w->paths[i]);
    }
    free(w->files);
    free(w->paths);
    free(w->e);
    memset(w, 0, sizeof *w);
}

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const sdw_entry *)a)->name, ((const sdw_entry *)b)->name);
}

const sdw_entry *sdw_find(const sd_weights *w, const char *name) {
    sdw_entry key;
    if (strlen(name) >= sizeof key.name) return NULL;
    strcpy(key.name, name);
    return bsearch(&key, w->e, (size_t)w->n, sizeof *w->e, entry_cmp);
}

const char *sdw_path(const sd_weights *w, const sdw_entry *e) { return w->paths[e->file]; }

/* Maps one more file into w. Returns its index or -1. */
static int add_file(sd_weights *w, const char *path, char *err) {
    st_file *nf = realloc(w->files, (size_t)(w->nfiles + 1) * sizeof *nf);
    if (!nf) return d3_errf(err, "%s: out of memory", path);
    w->files = nf;
    char **np = realloc(w->paths, (size_t)(w->nfiles + 1) * sizeof *np);
    if (!np) return d3_errf(err, "%s: out of memory", path);
    w->paths = np;
    if (st_map(&w->files[w->nfiles], path, err)) return -1;
    if (!(w->paths[w->nfiles] = strdup(path))) {
        st_free(&w->files[w->nfiles]);
        return d3_errf(err, "%s: out of memory", path);
    }
    return w->nfiles++;
}

static int grow_entries(sd_weights *w, int more, int *cap) {
    if (w->n + more <= *cap) return 0;
    int nc = *cap ? *cap : 256;
    while (nc < w->n + more) nc *= 2;
    sdw_entry *ne = realloc(w->e, (size_t)nc * sizeof *ne);
    if (!ne) return -1;
    w->e = ne;
    *cap = nc;
    return 0;
}

/* diffusers' renaming of the old VAE attention block (AttentionBlock:
 * query/key/value/proj_attn) to Attention's to_q/to_k/to_v/to_out.0, for
 * names inside ".attentions.N.". Returns 1 when renamed into out. */
static int old_attention_name(const char *name, char *out, size_t cap) {
    static const char *from[] = {".query.", ".key.", ".value.", ".proj_attn."};
    static const char *to[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    if (!strstr(name, ".attentions.")) return 0;
    for (int i = 0; i < 4; i++) {
        const char *p = strstr(name, from[i]);
        if (!p || strchr(p + strlen(from[i]), '.')) continue; /* only the last component */
        int k = snprintf(out, cap, "%.*s%s%s", (int)(p - name), name, to[i], p + strlen(from[i]));
        return k > 0 && (size_t)k < cap;
    }
    return 0;
}

/* Sorts the entries and refuses two tensors under one name. */
static int finish(sd_weights *w, char *err) {
    qsort(w->e, (size_t)w->n, sizeof *w->e, entry_cmp);
    for (int i = 1; i < w->n; i++)
        if (!strcmp(w->e[i].name, w->e[i - 1].name))
            return d3_errf(err, "%s: tensor '%s' appears twice ('%s' in %s and '%s' in %s)", w->what,
                           SHOW(w->e[i].name), SHOW(w->e[i - 1].src),
                           w->paths[w->e[i - 1].file], SHOW(w->e[i].src), w->paths[w->e[i].file]);
    if (w->n == 0) return d3_errf(err, "%s: no %s tensors", w->what, sd_part_name(w->part));
    return 0;
}

/* Adds every tensor of file fi (a folder's file) under its own name, old
 * attention names renamed. only: when not NULL, the index's weight map,
 * and a tensor must be listed there with this file. */
static int add_folder_tensors(sd_weights *w, int fi, const json_t *only, const char *shard, int *cap,
                              char *err) {
    const st_file *f = &w->files[fi];
    if (grow_entries(w, f->ntensors, cap)) return d3_errf(err, "%s: out of memory", w->paths[fi]);
    for (int i = 0; i < f->ntensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (only) {
            const json_t *v = json_object_get(only, t->name);
            if (!v || !json_is_string(v) || strcmp(json_string_value(v), shard))
                return d3_errf(err, "%s: tensor '%s' is not listed for this shard in the index's weight_map",
                               w->paths[fi], SHOW(t->name));
        }
        sdw_entry *e = &w->e[w->n];
        memset(e, 0, sizeof *e);
        if (strlen(t->name) >= sizeof e->name)
            return d3_errf(err, "%s: tensor name '%s' is longer than %d bytes", w->paths[fi],
                           SHOW(t->name), SD_NAME_MAX - 1);
        if (old_attention_name(t->name, e->name, sizeof e->name)) e->squeeze = 1;
        else strcpy(e->name, t->name);
        e->src = t->name;
        e->t = t;
        e->file = fi;
        w->n++;
    }
    return 0;
}

/* A shard name from an index: a plain file name in the same directory. */
static int safe_shard_name(const char *s) {
    return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) < 256;
}

static int open_index(sd_weights *w, const char *dir, const char *index, int *cap, char *err) {
    json_error_t je;
    json_t *root = json_load_file(index, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return d3_errf(err, "%s: not valid JSON: %s (line %d)", index, je.text, je.line);
    int rc = -1;
    const json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        d3_errf(err, "%s: key 'weight_map': expected an object of tensor name -> shard file", index);
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)map, name, v)
        if (!json_is_string(v) || !safe_shard_name(json_string_value(v))) {
            d3_errf(err, "%s: weight_map['%s']: expected a file name in %s", index, SHOW(name), dir);
            goto out;
        }
    /* the distinct shard files */
    json_object_foreach((json_t *)map, name, v) {
        const char *shard = json_string_value(v);
        int seen = 0;
        for (int i = 0; i < w->nfiles && !seen; i++) {
            const char *b = strrchr(w->paths[i], '/');
            seen = !strcmp(b ? b + 1 : w->paths[i], shard);
        }
        if (seen) continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, shard);
        int fi = add_file(w, path, err);
        if (fi < 0) goto out;
        if (add_folder_tensors(w, fi, map, shard, cap, err)) goto out;
    }
    /* every listed tensor is in its shard */
    json_object_foreach((json_t *)map, name, v) {
        const char *shard = json_string_value(v);
        int found = 0;
        for (int i = 0; i < w->nfiles && !found; i++) {
            const char *b = strrchr(w->paths[i], '/');
            found = !strcmp(b ? b + 1 : w->paths[i], shard) && st_find(&w->files[i], name);
        }
        if (!found) {
            d3_errf(err, "%s: weight_map['%s'] names %s, which has no such tensor", index,
                    SHOW(name), SHOW(shard));
            goto out;
        }
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int sdw_open_dir(sd_weights *w, const char *dir, sd_part part, char *err) {
    memset(w, 0, sizeof *w);
    w->part = part;
    snprintf(w->what, sizeof w->what, "%s", dir);
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode))
        return d3_errf(err, "%s: %s folder missing (a diffusers pipeline has %s/ beside model_index.json)",
                       dir, sd_part_name(part), sd_part_name(part));
    /* diffusers' and transformers' file names, the plain file first (as
     * from_pretrained without a variant), then the fp16 variant, then the
     * sharded forms */
    const char *base = part == SD_TEXT_ENCODER ? "model" : "diffusion_pytorch_model";
    const char *alt = part == SD_TEXT_ENCODER ? "diffusion_pytorch_model" : "model";
    const char *forms[] = {"%s/%s.safetensors", "%s/%s.fp16.safetensors",
                           "%s/%s.safetensors.index.json", "%s/%s.safetensors.index.fp16.json"};
    char path[2048];
    int cap = 0, rc = -1;
    for (int b = 0; b < 2 && rc; b++)
        for (int k = 0; k < 4 && rc; k++) {
            snprintf(path, sizeof path, forms[k], dir, b ? alt : base);
            if (!is_file(path)) continue;
            if (k < 2) {
                int fi = add_file(w, path, err);
                if (fi < 0 || add_folder_tensors(w, fi, NULL, NULL, &cap, err)) goto fail;
            } else if (open_index(w, dir, path, &cap, err)) {
                goto fail;
            }
            rc = 0;
        }
    if (rc) {
        snprintf(path, sizeof path, "%s/%s.bin", dir, base);
        if (is_file(path))
            return d3_errf(err, "%s: only %s.bin (a pickle) is there; d3po reads safetensors only: save the pipeline with safe_serialization=True",
                           dir, base);
        return d3_errf(err, "%s: no weights: expected %s.safetensors (or .fp16.safetensors, or a .safetensors.index.json with shards)",
                       dir, base);
    }
    if (finish(w, err)) goto fail;
    return 0;
fail:
    sdw_free(w);
    return -1;
}

/* ---- LDM names ----------------------------------------------------------- */

/* UNet res block sub-names: the diffusers name of rest's first part, *tail
 * set past it ("in_layers.2.weight" -> "conv1.", tail "weight"). */
static const char *ldm_resnet(const char *rest, const char **tail) {
    static const char *from[] = {"in_layers.0.", "in_layers.2.", "out_layers.0.", "out_layers.3.",
                                 "emb_layers.1.", "skip_connection."};
    static const char *to[] = {"norm1.", "conv1.", "norm2.", "conv2.", "time_emb_proj.",
                               "conv_shortcut."};
    for (int i = 0; i < 6; i++)
        if (!strncmp(rest, from[i], strlen(from[i]))) {
            *tail = rest + strlen(from[i]);
            return to[i];
        }
    return NULL;
}

/* "<int>." at *p: the int, *p moved past the dot; -1 when absent. */
static int take_int(const char **p) {
    const char *s = *p;
    if (*s < '0' || *s > '9') return -1;
    long v = strtol(s, (char **)&s, 10);
    if (*s != '.' || v > 100000) return -1;
    *p = s + 1;
    return (int)v;
}

#define OUT(...) (k = snprintf(out, cap, __VA_ARGS__), k > 0 && (size_t)k < cap)

static int ldm_unet(const char *n, int lpb, char *out, size_t cap) {
    int k;
    const char *p;
    if (!strncmp(n, "time_embed.0.", 13)) return OUT("time_embedding.linear_1.%s", n + 13);
    if (!strncmp(n, "time_embed.2.", 13)) return OUT("time_embedding.linear_2.%s", n + 13);
    if (!strncmp(n, "input_blocks.0.0.", 17)) return OUT("conv_in.%s", n + 17);
    if (!strncmp(n, "out.0.", 6)) return OUT("conv_norm_out.%s", n + 6);
    if (!strncmp(n, "out.2.", 6)) return OUT("conv_out.%s", n + 6);
    if (!strncmp(n, "input_blocks.", 13)) {
        p = n + 13;
        int i = take_int(&p), j = i >= 1 ? take_int(&p) : -1;
        if (i < 1 || j < 0) return 0;
        int b = (i - 1) / (lpb + 1), l = (i - 1) % (lpb + 1);
        if (j == 0 && !strncmp(p, "op.", 3)) return OUT("down_blocks.%d.downsamplers.0.conv.%s", b, p + 3);
        const char *r, *tail;
        if (j == 0 && (r = ldm_resnet(p, &tail)))
            return OUT("down_blocks.%d.resnets.%d.%s%s", b, l, r, tail);
        if (j == 1) return OUT("down_blocks.%d.attentions.%d.%s", b, l, p);
        return 0;
    }
    if (!strncmp(n, "middle_block.", 13)) {
        p = n + 13;
        int j = take_int(&p);
        const char *r, *tail;
        if ((j == 0 || j == 2) && (r = ldm_resnet(p, &tail)))
            return OUT("mid_block.resnets.%d.%s%s", j / 2, r, tail);
        if (j == 1) return OUT("mid_block.attentions.0.%s", p);
        return 0;
    }
    if (!strncmp(n, "output_blocks.", 14)) {
        p = n + 14;
        int i = take_int(&p), j = i >= 0 ? take_int(&p) : -1;
        if (i < 0 || j < 0) return 0;
        int b = i / (lpb + 1), l = i % (lpb + 1);
        const char *r, *tail;
        if (j == 0 && (r = ldm_resnet(p, &tail)))
            return OUT("up_blocks.%d.resnets.%d.%s%s", b, l, r, tail);
        if ((j == 1 || j == 2) && !strncmp(p, "conv.", 5))
            return OUT("up_blocks.%d.upsamplers.0.conv.%s", b, p + 5);
        if (j == 1) return OUT("up_blocks.%d.attentions.%d.%s", b, l, p);
        return 0;
    }
    return 0;
}

static int ldm_vae(const char *n, int nup, char *out, size_t cap, int *squeeze) {
    int k;
    const char *side = !strncmp(n, "encoder.", 8) ? "encoder" : !strncmp(n, "decoder.", 8) ? "decoder" : NULL;
    if (!side) {
        if (!strncmp(n, "quant_conv.", 11) || !strncmp(n, "post_quant_conv.", 16)) return OUT("%s", n);
        return 0;
    }
    const char *p = n + 8;
    if (!strncmp(p, "conv_in.", 8) || !strncmp(p, "conv_out.", 9)) return OUT("%s", n);
    if (!strncmp(p, "norm_out.", 9)) return OUT("%s.conv_norm_out.%s", side, p + 9);
    int enc = side[0] == 'e';
    if (!strncmp(p, enc ? "down." : "up.", enc ? 5 : 3)) {
        p += enc ? 5 : 3;
        int i = take_int(&p);
        if (i < 0) return 0;
        int bi = enc ? i : nup - 1 - i;
        if (bi < 0) return 0;
        const char *blocks = enc ? "down_blocks" : "up_blocks";
        if (!strncmp(p, "block.", 6)) {
            p += 6;
            int j = take_int(&p);
            if (j < 0) return 0;
            if (!strncmp(p, "nin_shortcut.", 13))
                return OUT("%s.%s.%d.resnets.%d.conv_shortcut.%s", side, blocks, bi, j, p + 13);
            return OUT("%s.%s.%d.resnets.%d.%s", side, blocks, bi, j, p);
        }
        const char *smp = enc ? "downsample.conv." : "upsample.conv.";
        if (!strncmp(p, smp, strlen(smp)))
            return OUT("%s.%s.%d.%s.0.conv.%s", side, blocks, bi, enc ? "downsamplers" : "upsamplers",
                       p + strlen(smp));
        return 0;
    }
    if (!strncmp(p, "mid.block_1.", 12) || !strncmp(p, "mid.block_2.", 12)) {
        const char *r = p + 12;
        if (!strncmp(r, "nin_shortcut.", 13))
            return OUT("%s.mid_block.resnets.%d.conv_shortcut.%s", side, p[10] - '1', r + 13);
        return OUT("%s.mid_block.resnets.%d.%s", side, p[10] - '1', r);
    }
    if (!strncmp(p, "mid.attn_1.", 11)) {
        const char *r = p + 11;
        static const char *from[] = {"norm.", "q.", "k.", "v.", "proj_out."};
        static const char *to[] = {"group_norm.", "to_q.", "to_k.", "to_v.", "to_out.0."};
        for (int i = 0; i < 5; i++)
            if (!strncmp(r, from[i], strlen(from[i]))) {
                *squeeze = i > 0;
                return OUT("%s.mid_block.attentions.0.%s%s", side, to[i], r + strlen(from[i]));
            }
    }
    return 0;
}

int sdw_ldm_name(sd_part part, const char *ldm, int lpb, int nup, char *out, size_t cap,
                 int *squeeze) {
    int k;
    *squeeze = 0;
    switch (part) {
    case SD_UNET: return ldm_unet(ldm, lpb, out, cap);
    case SD_VAE: return ldm_vae(ldm, nup, out, cap, squeeze);
    case SD_TEXT_ENCODER: /* older transformers saved CLIPTextModel without "text_model." */
        return strncmp(ldm, "text_model.", 11) ? OUT("text_model.%s", ldm) : OUT("%s", ldm);
    default: return 0;
    }
}

int sdw_open_single(sd_weights *w, const char *file, sd_part part, char *err) {
    memset(w, 0, sizeof *w);
    w->part = part;
    w->single = 1;
    snprintf(w->what, sizeof w->what, "%s", file);
    if (add_file(w, file, err) < 0) goto fail;
    const st_file *f = &w->files[0];
    const char *pre = ldm_prefix[part];
    size_t pl = strlen(pre);
    /* layers per block of the UNet: input_blocks 1.. hold levels * (lpb+1)
     * - 1 entries (no downsampler after the last level); levels = number of
     * downsamplers + 1. Decoder levels of the VAE: distinct up.i. */
    int maxin = 0, ndown = 0, nup = 0;
    for (int i = 0; i < f->ntensors; i++) {
        const char *n = f->tensors[i].name;
        if (strncmp(n, pre, pl)) continue;
        n += pl;
        const char *p;
        if (part == SD_UNET && !strncmp(n, "input_blocks.", 13)) {
            p = n + 13;
            int b = take_int(&p);
            if (b > maxin) maxin = b;
            if (!strncmp(p, "0.op.weight", 11)) ndown++;
        }
        if (part == SD_VAE && !strncmp(n, "decoder.up.", 11)) {
            p = n + 11;
            int b = take_int(&p);
            if (b + 1 > nup) nup = b + 1;
        }
    }
    int lpb = ndown + 1 > 0 ? (maxin + 1) / (ndown + 1) - 1 : 0;
    if (part == SD_UNET && (lpb < 1 || (maxin + 1) % (ndown + 1))) {
        d3_errf(err, "%s: the UNet's input_blocks (%d, with %d downsamplers) do not form levels of equal depth",
                file, maxin + 1, ndown);
        goto fail;
    }
    int cap = 0;
    if (grow_entries(w, f->ntensors, &cap)) {
        d3_errf(err, "%s: out of memory", file);
        goto fail;
    }
    for (int i = 0; i < f->ntensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (strncmp(t->name, pre, pl)) continue;
        sdw_entry *e = &w->e[w->n];
        memset(e, 0, sizeof *e);
        if (!sdw_ldm_name(part, t->name + pl, lpb, nup, e->name, sizeof e->name, &e->squeeze))
            continue; /* not converted by diffusers either */
        e->src = t->name;
        e->t = t;
        e->file = 0;
        w->n++;
    }
    if (w->n == 0) {
        d3_errf(err, "%s: no tensors named %s*: not a single-file SD 1.x checkpoint with a %s",
                file, pre, sd_part_name(part));
        goto fail;
    }
    if (finish(w, err)) goto fail;
    return 0;
fail:
    sdw_free(w);
    return -1;
}

/* ---- filling ------------------------------------------------------------- */

static void fmt_shape(char *out, size_t cap, const int64_t *s, int nd) {
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < nd && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%lld", i ? "," : "", (long long)s[i]);
    if (n < cap) snprintf(out + n, cap - n, "]");
}

/* Tensors diffusers/transformers drop when the layout does not use them. */
int sdw_ignorable(sd_part part, const char *name) {
    if (part == SD_VAE) return !strncmp(name, "encoder.", 8) || !strncmp(name, "quant_conv.", 11);
    if (part == SD_TEXT_ENCODER) return !strcmp(name, "text_model.embeddings.position_ids");
    return 0;
}

/* "'X'" or "'X' (in the file: 'Y')" for messages */
static void describe(char *out, size_t cap, const sdw_entry *e) {
    if (strcmp(e->name, e->src))
        snprintf(out, cap, "'%s' (in the file: '%s')", SHOW(e->name), SHOW(e->src));
    else
        snprintf(out, cap, "'%s'", SHOW(e->name));
}

/* The checks of sdw_fill; converts into params unless it is NULL. */
static int check_fill(const sd_weights *w, const sd_layout *L, float *params, char *err) {
    char d[512], got[200], want[200];
    for (int i = 0; i < L->n; i++) {
        const sd_param *p = &L->p[i];
        const sdw_entry *e = sdw_find(w, p->name);
        if (!e)
            return d3_errf(err, "%s: tensor '%s' missing (the %s config needs it, shape %s)", w->what,
                           p->name, sd_part_name(w->part),
                           (fmt_shape(want, sizeof want, p->shape, p->ndim), want));
        const st_tensor *t = e->t;
        int ok = t->ndim == p->ndim;
        for (int k = 0; ok && k < p->ndim; k++) ok = t->shape[k] == p->shape[k];
        /* [C,C,1,1] / [C,C,1] 1x1-convolution attention weights as [C,C] */
        if (!ok && e->squeeze && p->ndim == 2 && t->ndim > 2 && t->shape[0] == p->shape[0] &&
            t->shape[1] == p->shape[1]) {
            ok = 1;
            for (int k = 2; k < t->ndim; k++) ok &= t->shape[k] == 1;
        }
        if (!ok) {
            describe(d, sizeof d, e);
            fmt_shape(got, sizeof got, t->shape, t->ndim);
            fmt_shape(want, sizeof want, p->shape, p->ndim);
            return d3_errf(err, "%s: tensor %s has shape %s, the %s config needs %s",
                           sdw_path(w, e), d, got, sd_part_name(w->part), want);
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
            describe(d, sizeof d, e);
            return d3_errf(err, "%s: tensor %s has dtype %s, expected F32, F16 or BF16",
                           sdw_path(w, e), d, st_dtype_name(t->dtype));
        }
        if (params && st_to_f32(t, params + p->off, sdw_path(w, e), err)) return -1;
    }
    for (int i = 0; i < w->n; i++) {
        const sdw_entry *e = &w->e[i];
        if (sd_layout_find(L, e->name) || sdw_ignorable(w->part, e->name)) continue;
        describe(d, sizeof d, e);
        return d3_errf(err, "%s: tensor %s is not part of the %s its config describes (a different model or config?)",
                       sdw_path(w, e), d, sd_part_name(w->part));
    }
    return 0;
}

int sdw_fill(sd_weights *w, const sd_layout *L, float *params, char *err) {
    return check_fill(w, L, params, err);
}

int sdw_check(const sd_weights *w, const sd_layout *L, char *err) {
    return check_fill(w, L, NULL, err);
}

/* Weights, not integer buffers (position_ids). */
static int is_float(const st_tensor *t) {
    return t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64;
}

size_t sdw_numel(const sd_weights *w) {
    size_t n = 0;
    for (int i = 0; i < w->n; i++)
        if (is_float(w->e[i].t)) n += st_numel(w->e[i].t);
    return n;
}

void sdw_dtype(const sd_weights *w, char *out, size_t cap) {
    int seen[ST_DTYPE_COUNT] = {0}, kinds = 0;
    for (int i = 0; i < w->n; i++)
        if (is_float(w->e[i].t) && !seen[w->e[i].t->dtype]++) kinds++;
    size_t n = 0;
    out[0] = '\0';
    if (kinds > 1) n += (size_t)snprintf(out, cap, "mixed (");
    for (int d = 0, first = 1; d < ST_DTYPE_COUNT && n < cap; d++)
        if (seen[d]) {
            n += (size_t)snprintf(out + n, cap - n, "%s%s", first ? "" : ", ", st_dtype_name((st_dtype)d));
            first = 0;
        }
    if (kinds > 1 && n < cap) snprintf(out + n, cap - n, ")");
}
