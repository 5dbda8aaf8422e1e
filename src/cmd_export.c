/* cmd_export.c - `d3po export`: a session's labels in formats other
 * preference trainers read.
 *
 *   pickapic  OUT/data.jsonl, one line per A/B/tie pair (Pick-a-Pic style):
 *             {"caption": prompt, "image_0": "images/NNNNNN-a.png",
 *              "image_1": "images/NNNNNN-b.png", "label_0": 1|0|0.5,
 *              "label_1": 0|1|0.5, "pair": id}
 *   scores    OUT/scores.jsonl, one line per image of those pairs:
 *             {"pair": id, "image": "A"|"B", "caption": prompt,
 *              "score": 1|0|0.5, "png": "images/NNNNNN-a.png"}
 *
 *   lora, lora-diffusers (Stable Diffusion-family sessions): the trained
 *             LoRA adapters of the session's current round (or --round N)
 *             as one .safetensors file, kohya naming (AUTOMATIC1111,
 *             ComfyUI, diffusers' load_lora_weights) or diffusers naming;
 *             --out is the file (session_sd_export).
 *
 * Groups of k (the screen's grid mode, src/groups.h) that were marked:
 *   pickapic  one line per (good, bad) pair of the group, the good image
 *             first: {..., "label_0": 1, "label_1": 0, "group": id}
 *   scores    one line per image: {"group": id, "image": i, "caption",
 *             "mark": "good"|"bad"|"unmarked", "score": 1|0|null,
 *             "png": "images/gNNNNNN-I.png"}
 *
 * Skipped and unlabeled pairs (and groups) are left out. The PNGs are copied into
 * OUT/images/ (re-rendered from the trajectory's x_0 when the session has
 * no PNG for a pair); the .jsonl is written atomically after all images,
 * so a reader never sees a line whose image is missing. The session is
 * opened read-only. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "fsutil.h"
#include "groups.h"
#include "image.h"
#include "session.h"
#include "session_sd.h"
#include "text.h"

static const char export_help[] =
    "usage: d3po export --session DIR --format pickapic|scores --out DIR2\n"
    "       d3po export --session DIR --format lora|lora-diffusers --out FILE.safetensors\n"
    "                   [--round N]\n"
    "\n"
    "Exports the session's A/B/tie decisions (skips and unlabeled pairs are\n"
    "left out) with the images copied into DIR2/images/:\n"
    "  pickapic  DIR2/data.jsonl: {\"caption\", \"image_0\", \"image_1\", \"label_0\",\n"
    "            \"label_1\", \"pair\"} per pair; labels 1/0, 0/1, or 0.5/0.5 for a tie\n"
    "  scores    DIR2/scores.jsonl: {\"pair\", \"image\": \"A\"|\"B\", \"caption\",\n"
    "            \"score\": 1|0|0.5, \"png\"} per image\n"
    "Marked groups of k images (grid mode) are included: pickapic, one line per\n"
    "(good, bad) pair with \"group\"; scores, one line per image: {\"group\",\n"
    "\"image\": 0..k-1, \"caption\", \"mark\": good|bad|unmarked, \"score\": 1|0|null,\n"
    "\"png\"}.\n"
    "Image paths are relative to DIR2. The .jsonl file is written atomically.\n"
    "On a Stable Diffusion-family session the trained LoRA adapters export as a\n"
    "file AUTOMATIC1111, ComfyUI and diffusers' load_lora_weights read:\n"
    "  lora            kohya naming (lora_unet_<module>.lora_down.weight, .lora_up.weight,\n"
    "                  .alpha)\n"
    "  lora-diffusers  diffusers naming (unet.<module>.lora.down.weight, .lora.up.weight)\n"
    "  --round N       the adapters of round N (default: the session's current round)\n"
    "\n"
    "  --session DIR   the session (opened read-only)\n"
    "  --format F      pickapic or scores\n"
    "  --out DIR2      output directory (created; existing files are replaced)\n";

/* Copies the session's PNG of one image to dst, or renders it from x_0. */
static int export_png(const d3_session *s, long id, int side, const session_pair *p,
                      const char *dst, char *err) {
    char src[4200];
    session_pair_path(s, id, side ? "b" : "a", src, sizeof src);
    unsigned char *buf;
    size_t len;
    if (access(src, R_OK) == 0) {
        if (fs_read_all(src, &buf, &len, err)) return -1;
        const void *parts[1] = {buf};
        int rc = fs_write_atomic(dst, parts, &len, 1, err);
        free(buf);
        return rc;
    }
    if (p->family != SESSION_FAMILY_PIXEL) /* x_0 is latents: only the VAE makes the image */
        return d3_errf(err, "%s: missing (the image of a latent pair is not re-rendered here)", src);
    uint8_t *rgb = malloc((size_t)p->S * p->S * 3);
    if (!rgb) return d3_errf(err, "%s: out of memory", dst);
    image_to_rgb(rgb, p->traj[side] + (size_t)p->K * 3 * p->S * p->S, p->S, p->S);
    int rc = png_write_rgb(dst, rgb, p->S, p->S, err);
    free(rgb);
    return rc;
}

static int append_line(char **out, size_t *len, size_t *cap, json_t *o) {
    char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!t) return -1;
    size_t l = strlen(t);
    if (*len + l + 2 > *cap) {
        *cap = (*len + l + 2) * 2;
        char *n = realloc(*out, *cap);
        if (!n) { free(t); return -1; }
        *out = n;
    }
    memcpy(*out + *len, t, l);
    (*out)[*len + l] = '\n';
    *len += l + 1;
    free(t);
    return 0;
}

/* Opens dir read-only and prints its warnings; -1 (printed) on failure. */
static int open_session(const char *dir, d3_session *s) {
    char err[D3_ERRLEN];
    if (session_open_readonly(dir, s, err)) {
        fprintf(stderr, "d3po export: %s\n", err);
        return -1;
    }
    for (int i = 0; i < s->nwarn; i++) fprintf(stderr, "d3po export: warning: %s\n", s->warn[i]);
    return 0;
}

/* --format lora|lora-diffusers: the adapters of a round of an sd session. */
static int export_lora(const char *dir, const char *fmt, const char *out, int round) {
    char err[D3_ERRLEN];
    d3_session s;
    if (open_session(dir, &s)) return EXIT_FAIL;
    int rc = EXIT_FAIL;
    if (s.family != SESSION_FAMILY_SD) {
        fprintf(stderr, "d3po export: --format %s: %s is a %s session (LoRA adapters are trained on "
                "Stable Diffusion-family sessions only)\n", fmt, dir, session_family_name(s.family));
        rc = EXIT_USAGE;
    } else if (round > s.round) {
        fprintf(stderr, "d3po export: --round %d: %s is at round %d\n", round, dir, s.round);
        rc = EXIT_USAGE;
    } else if (session_sd_export(&s, round < 0 ? s.round : round, out,
                                 strcmp(fmt, "lora") ? LORA_DIFFUSERS : LORA_KOHYA,
                                 session_sd_ignore_hash_env(), err)) {
        fprintf(stderr, "d3po export: %s\n", err);
    } else {
        char shown[256];
        printf("%s: the LoRA adapters of round %d, %s naming\n", text_escape(shown, sizeof shown, out),
               round < 0 ? s.round : round, strcmp(fmt, "lora") ? "diffusers" : "kohya");
        rc = 0;
    }
    session_close(&s);
    return rc;
}

/* The marked groups of k: their images copied, their lines appended.
 * *ngroups, *nimages count them; a damaged group is left out with a
 * warning (*skipped). */
static int export_groups(const d3_session *s, const char *out, int pickapic, char **text, size_t *len,
                         size_t *cap, long *ngroups, long *nimages, long *skipped, char *err) {
    d3_groups g;
    if (groups_open(s->dir, s->round, 1, &g, err)) return -1;
    int rc = 0;
    for (long id = 0; id < g.next && !rc; id++) {
        const char *m = groups_marks(&g, id);
        if (!g.present[id] || !m[0] || !strcmp(m, "skip")) continue;
        session_traj t;
        if (groups_load(&g, id, &t, err)) {
            char e2[D3_ERRLEN];
            fprintf(stderr, "d3po export: warning: %s; group %ld left out (d3po session check)\n",
                    text_escape(e2, sizeof e2, err), id);
            (*skipped)++;
            continue;
        }
        char rel[GROUPS_MAX_K][64];
        for (int i = 0; i < t.N && !rc; i++) {
            char src[4300], dst[4300];
            unsigned char *buf;
            size_t n;
            snprintf(rel[i], sizeof rel[i], "images/g%06ld-%d.png", id, i);
            snprintf(dst, sizeof dst, "%s/%s", out, rel[i]);
            if (fs_read_all(groups_path(&g, id, i, src, sizeof src), &buf, &n, err)) { rc = -1; break; }
            const void *parts[1] = {buf};
            rc = fs_write_atomic(dst, parts, &n, 1, err);
            free(buf);
        }
        const char *caption = t.prompt ? t.prompt : "";
        int pr[GROUPS_MAX_PAIRS][2], np = groups_pairs(m, pr);
        for (int q = 0; q < np && !rc && pickapic; q++) {
            json_t *o = json_pack("{s:s, s:s, s:s, s:f, s:f, s:I}", "caption", caption, "image_0",
                                  rel[pr[q][0]], "image_1", rel[pr[q][1]], "label_0", 1.0,
                                  "label_1", 0.0, "group", (json_int_t)id);
            if (append_line(text, len, cap, o)) rc = d3_errf(err, "%s: cannot encode JSON", out);
        }
        for (int i = 0; i < t.N && !rc && !pickapic; i++) {
            const char *mark = m[i] == GROUP_GOOD ? "good" : m[i] == GROUP_BAD ? "bad" : "unmarked";
            json_t *score = m[i] == GROUP_GOOD ? json_integer(1) : m[i] == GROUP_BAD ? json_integer(0)
                                                                                 : json_null();
            json_t *o = json_pack("{s:I, s:i, s:s, s:s, s:o, s:s}", "group", (json_int_t)id, "image", i,
                                  "caption", caption, "mark", mark, "score", score, "png", rel[i]);
            if (append_line(text, len, cap, o)) rc = d3_errf(err, "%s: cannot encode JSON", out);
        }
        (*ngroups)++;
        *nimages += t.N;
        session_traj_free(&t);
    }
    groups_close(&g);
    return rc;
}

int cmd_export(int argc, char **argv) {
    static const struct option opts[] = {{"session", 1, 0, 's'}, {"format", 1, 0, 'f'},
                                         {"out", 1, 0, 'o'},     {"help", 0, 0, 'h'},
                                         {"round", 1, 0, 'r'},   {0, 0, 0, 0}};
    const char *dir = NULL, *fmt = NULL, *out = NULL;
    long round = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': dir = optarg; break;
        case 'f': fmt = optarg; break;
        case 'o': out = optarg; break;
        case 'r':
            if (cli_int("export", "--round", optarg, 0, SESSION_MAX_ROUND, &round)) return EXIT_USAGE;
            break;
        case 'h': fputs(export_help, stdout); return 0;
        default: fputs(export_help, stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc || !dir || !fmt || !out) {
        fprintf(stderr, "d3po export: %s\n%s",
                optind < argc ? "unexpected argument" : "--session, --format and --out are required",
                export_help);
        return EXIT_USAGE;
    }
    int pickapic = !strcmp(fmt, "pickapic");
    if (!strcmp(fmt, "lora") || !strcmp(fmt, "lora-diffusers"))
        return export_lora(dir, fmt, out, (int)round);
    if (round >= 0) {
        fprintf(stderr, "d3po export: --round applies to --format lora and lora-diffusers\n");
        return EXIT_USAGE;
    }
    if (!pickapic && strcmp(fmt, "scores")) {
        char shown[64];
        fprintf(stderr, "d3po export: --format '%s': expected pickapic, scores, lora or lora-diffusers\n",
                text_escape(shown, sizeof shown, fmt));
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN];
    d3_session s;
    if (open_session(dir, &s)) return EXIT_FAIL;
    char imgdir[4200];
    snprintf(imgdir, sizeof imgdir, "%s/images", out);
    char *text = NULL;
    size_t len = 0, cap = 0;
    long npairs = 0, nimages = 0, skipped = 0;
    int rc = 0;
    if (fs_mkdirs(imgdir, err)) rc = -1;
    for (long id = 0; id < s.cap && !rc; id++) {
        int ch = s.present[id] ? session_choice_of(&s, id) : SESSION_NONE;
        if (ch != SESSION_A && ch != SESSION_B && ch != SESSION_TIE) continue;
        session_pair p;
        if (session_load_pair(&s, id, &p, err)) { /* a damaged pair: left out, the rest goes on */
            char e2[D3_ERRLEN];
            fprintf(stderr, "d3po export: warning: %s; pair %ld left out (d3po session check)\n",
                    text_escape(e2, sizeof e2, err), id);
            skipped++;
            continue;
        }
        const char *caption = p.prompt ? p.prompt
                              : p.cls >= 0 && p.cls < s.policy.nclasses && s.policy.class_names
                                  ? s.policy.class_names[p.cls] : "";
        char rel[2][64], abs_[2][4300];
        for (int k = 0; k < 2 && !rc; k++) {
            snprintf(rel[k], sizeof rel[k], "images/%06ld-%c.png", id, "ab"[k]);
            snprintf(abs_[k], sizeof abs_[k], "%s/%s", out, rel[k]);
            rc = export_png(&s, id, k, &p, abs_[k], err);
        }
        double l0 = ch == SESSION_A ? 1 : ch == SESSION_B ? 0 : 0.5, l[2] = {l0, 1 - l0};
        if (!rc && pickapic) {
            json_t *o = json_pack("{s:s, s:s, s:s, s:f, s:f, s:I}", "caption", caption,
                                  "image_0", rel[0], "image_1", rel[1], "label_0", l[0],
                                  "label_1", l[1], "pair", (json_int_t)id);
            if (append_line(&text, &len, &cap, o)) rc = d3_errf(err, "%s: cannot encode JSON", out);
        }
        for (int k = 0; k < 2 && !rc && !pickapic; k++) {
            json_t *o = json_pack("{s:I, s:s, s:s, s:f, s:s}", "pair", (json_int_t)id, "image",
                                  k ? "B" : "A", "caption", caption, "score", l[k], "png", rel[k]);
            if (append_line(&text, &len, &cap, o)) rc = d3_errf(err, "%s: cannot encode JSON", out);
        }
        session_pair_free(&p);
        npairs++;
        nimages += 2;
    }
    long ngroups = 0;
    if (!rc)
        rc = export_groups(&s, out, pickapic, &text, &len, &cap, &ngroups, &nimages, &skipped, err);
    char jp[4200];
    snprintf(jp, sizeof jp, "%s/%s", out, pickapic ? "data.jsonl" : "scores.jsonl");
    if (!rc) {
        const void *parts[1] = {text ? text : ""};
        rc = fs_write_atomic(jp, parts, &len, 1, err);
    }
    free(text);
    session_close(&s);
    if (rc) {
        fprintf(stderr, "d3po export: %s\n", err);
        return EXIT_FAIL;
    }
    printf("%s: %ld pairs, %ld groups, %ld images (%s/images)%s\n", jp, npairs, ngroups, nimages,
           out, skipped ? "; damaged pairs or groups left out (see the warnings)" : "");
    return 0;
}
