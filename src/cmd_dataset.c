/* cmd_dataset.c - `d3po dataset emoji`: builds a class-labelled image set
 * for pretraining from the emoji on this machine. The Unicode list
 * (emoji-test.txt, Debian package unicode-data) gives every fully-qualified
 * emoji and its subgroup; the subgroup is the class. Each emoji is shaped as
 * one codepoint sequence with HarfBuzz (so ZWJ sequences, flags, keycaps and
 * skin tones become one glyph), its colour bitmap is loaded with FreeType
 * from Noto Color Emoji (fonts-noto-color-emoji), composited on white,
 * padded to a centred square and box-filtered down to SIZE x SIZE. Output:
 *
 *   DIR/<subgroup>/<codepoints as lowercase hex joined by '-'>.png   RGB8
 *   DIR/classes.tsv   id, subgroup, prompt, count; one line per class
 *
 * The same inputs give byte-identical files: everything after the font's
 * bitmap is integer arithmetic. */
#include <ctype.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ft2build.h>
#include FT_FREETYPE_H
#include <hb-ft.h>
#include <hb.h>

#include "cli.h"
#include "fsutil.h"
#include "image.h"

#define EMOJI_TEST_PATH "/usr/share/unicode/emoji/emoji-test.txt"
#define EMOJI_FONT_PATH "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
#define MAX_CPS 32 /* the longest RGI sequence has 10 codepoints */

static const char dataset_help[] =
    "usage: d3po dataset emoji --out DIR [--size N] [--only SEQ,...] [--verbose]\n"
    "\n"
    "Renders every fully-qualified emoji of the Unicode emoji list with the Noto\n"
    "Color Emoji font into a class-labelled image set for pretraining:\n"
    "DIR/<subgroup>/<codepoints>.png (RGB, on white) and DIR/classes.tsv\n"
    "(id, subgroup, prompt, count). The class is the emoji's subgroup\n"
    "(\"food-fruit\" -> prompt \"fruit\"). Rerunning gives byte-identical files.\n"
    "\n"
    "  --out DIR        output directory (created)\n"
    "  --size N         image side in pixels, 8..512 (default 32)\n"
    "  --only SEQ,...   only these emoji: codepoints in hex joined by '-',\n"
    "                   e.g. 1f600,1f1eb-1f1f7,0023-fe0f-20e3\n"
    "  --verbose        list every skipped emoji, not just a few per reason\n"
    "\n"
    "Reads " EMOJI_TEST_PATH "\n"
    "and " EMOJI_FONT_PATH ".\n";

/* ---- emoji-test.txt ---- */

typedef struct {
    uint32_t cp[MAX_CPS];
    int n;
    int sub;    /* index into the subgroup table */
    char *name; /* CLDR short name, for messages */
} emoji;

typedef struct {
    emoji *v;
    int n, cap;
    char **subs; /* subgroup names in file order */
    int nsubs, capsubs;
} emoji_list;

static void emoji_list_free(emoji_list *L) {
    for (int i = 0; i < L->n; i++) free(L->v[i].name);
    for (int i = 0; i < L->nsubs; i++) free(L->subs[i]);
    free(L->v);
    free(L->subs);
    memset(L, 0, sizeof *L);
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
    return s;
}

/* Parses one hex codepoint of 1..6 digits at *s, advancing *s. */
static int parse_cp(const char **s, uint32_t *cp) {
    const char *p = *s;
    uint32_t v = 0;
    int nd = 0;
    while (isxdigit((unsigned char)*p) && nd < 7) {
        int d = isdigit((unsigned char)*p) ? *p - '0' : tolower((unsigned char)*p) - 'a' + 10;
        v = v * 16 + (uint32_t)d;
        p++, nd++;
    }
    if (nd < 1 || nd > 6 || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return -1;
    *s = p;
    *cp = v;
    return 0;
}

/* Reads the fully-qualified emoji of an emoji-test.txt file, in file order,
 * with their subgroups. 0, or -1 with err "path:line: problem". */
static int emoji_list_read(emoji_list *L, const char *path, char *err) {
    unsigned char *buf;
    size_t len;
    memset(L, 0, sizeof *L);
    if (fs_read_all(path, &buf, &len, err)) return -1;
    char *s = (char *)buf;
    int line = 0, rc = 0;
    while (*s && !rc) {
        char *nl = strchr(s, '\n');
        if (nl) *nl = 0;
        char *next = nl ? nl + 1 : s + strlen(s);
        line++;
        size_t l = strlen(s);
        if (l && s[l - 1] == '\r') s[--l] = 0;
        if (s[0] == '#') {
            if (!strncmp(s, "# subgroup:", 11)) {
                char *name = trim(s + 11);
                if (!*name) {
                    rc = d3_errf(err, "%s:%d: empty subgroup name", path, line);
                    break;
                }
                for (char *c = name; *c; c++)
                    if ((unsigned char)*c < 0x20 || *c == 0x7f) {
                        rc = d3_errf(err, "%s:%d: subgroup name contains a control character", path,
                                     line);
                        break;
                    }
                if (rc) break;
                if (L->nsubs == L->capsubs) {
                    L->capsubs = L->capsubs ? 2 * L->capsubs : 64;
                    L->subs = realloc(L->subs, L->capsubs * sizeof *L->subs);
                }
                L->subs[L->nsubs++] = strdup(name);
            }
            s = next;
            continue;
        }
        if (!*trim(s)) {
            s = next;
            continue;
        }
        /* <codepoints> ; <status> # <emoji> E<version> <name> */
        char *semi = strchr(s, ';');
        if (!semi) {
            rc = d3_errf(err,
                         "%s:%d: expected '<codepoints> ; <status> # <emoji> E<version> <name>'",
                         path, line);
            break;
        }
        *semi = 0;
        char *hash = strchr(semi + 1, '#');
        if (hash) *hash = 0;
        char *status = trim(semi + 1);
        emoji e = {.n = 0};
        const char *p = s;
        while (*p) {
            while (*p == ' ' || *p == '\t') p++;
            if (!*p) break;
            if (e.n == MAX_CPS) {
                rc = d3_errf(err, "%s:%d: more than %d codepoints", path, line, MAX_CPS);
                break;
            }
            if (parse_cp(&p, &e.cp[e.n]) || (*p && *p != ' ' && *p != '\t')) {
                rc = d3_errf(err,
                             "%s:%d: bad codepoint (expected hex 0..10FFFF separated by spaces)",
                             path, line);
                break;
            }
            e.n++;
        }
        if (rc) break;
        if (!e.n) {
            rc = d3_errf(err, "%s:%d: no codepoints before ';'", path, line);
            break;
        }
        if (strcmp(status, "fully-qualified") && strcmp(status, "minimally-qualified") &&
            strcmp(status, "unqualified") && strcmp(status, "component")) {
            rc = d3_errf(err,
                         "%s:%d: unknown status '%.40s' (expected fully-qualified, "
                         "minimally-qualified, unqualified or component)",
                         path, line, status);
            break;
        }
        if (strcmp(status, "fully-qualified")) {
            s = next;
            continue;
        }
        if (!L->nsubs) {
            rc = d3_errf(err, "%s:%d: emoji before any '# subgroup:' line", path, line);
            break;
        }
        /* name: skip the emoji itself and the E<version> token */
        const char *nm = "";
        if (hash) {
            char *c = hash + 1;
            while (*c == ' ') c++;
            while (*c && *c != ' ') c++; /* the emoji */
            while (*c == ' ') c++;
            if (c[0] == 'E' && isdigit((unsigned char)c[1])) {
                while (*c && *c != ' ') c++;
                while (*c == ' ') c++;
            }
            nm = trim(c);
        }
        e.sub = L->nsubs - 1;
        e.name = strdup(nm);
        if (L->n == L->cap) {
            L->cap = L->cap ? 2 * L->cap : 1024;
            L->v = realloc(L->v, L->cap * sizeof *L->v);
        }
        L->v[L->n++] = e;
        s = next;
    }
    free(buf);
    if (!rc && !L->n)
        rc = d3_errf(err, "%s: no fully-qualified emoji (expected Unicode's emoji-test.txt)", path);
    if (rc) emoji_list_free(L);
    return rc;
}

/* "1f1eb-1f1f7" */
static void seq_format(char *dst, size_t n, const uint32_t *cp, int ncp) {
    size_t j = 0;
    dst[0] = 0;
    for (int i = 0; i < ncp && j < n; i++)
        j += (size_t)snprintf(dst + j, n - j, "%s%04x", i ? "-" : "", (unsigned)cp[i]);
}

/* ---- class names ---- */

/* Directory name of a subgroup: lowercase letters and digits, other runs
 * become one '-' ("sky & weather" -> "sky-weather"). */
static void subgroup_dir(char *dst, size_t n, const char *sub) {
    size_t j = 0;
    int dash = 0;
    for (const char *c = sub; *c && j + 2 < n; c++) {
        unsigned char ch = (unsigned char)*c;
        if (isalnum(ch) && ch < 0x80) {
            if (dash && j) dst[j++] = '-';
            dst[j++] = (char)tolower(ch);
            dash = 0;
        } else {
            dash = 1;
        }
    }
    dst[j] = 0;
    if (!j) snprintf(dst, n, "other");
}

/* Prompts for the subgroups of Unicode 15; others fall back to the
 * subgroup with '-' as spaces. */
static const char *const nice_names[][2] = {
    {"face-smiling", "smiling face"},
    {"face-affection", "affectionate face"},
    {"face-tongue", "face with tongue"},
    {"face-hand", "face with hand"},
    {"face-neutral-skeptical", "neutral or skeptical face"},
    {"face-sleepy", "sleepy face"},
    {"face-unwell", "unwell face"},
    {"face-hat", "face with hat"},
    {"face-glasses", "face with glasses"},
    {"face-concerned", "concerned face"},
    {"face-negative", "angry face"},
    {"face-costume", "costumed face"},
    {"cat-face", "cat face"},
    {"monkey-face", "monkey face"},
    {"heart", "heart"},
    {"emotion", "emotion symbol"},
    {"hand-fingers-open", "open hand"},
    {"hand-fingers-partial", "hand sign"},
    {"hand-single-finger", "pointing finger"},
    {"hand-fingers-closed", "closed hand"},
    {"hands", "pair of hands"},
    {"hand-prop", "hand holding something"},
    {"body-parts", "body part"},
    {"person", "person"},
    {"person-gesture", "person gesturing"},
    {"person-role", "person at work"},
    {"person-fantasy", "fantasy character"},
    {"person-activity", "person doing something"},
    {"person-sport", "person playing sport"},
    {"person-resting", "person resting"},
    {"family", "family"},
    {"person-symbol", "person symbol"},
    {"skin-tone", "skin tone"},
    {"hair-style", "hair style"},
    {"animal-mammal", "mammal"},
    {"animal-bird", "bird"},
    {"animal-amphibian", "amphibian"},
    {"animal-reptile", "reptile"},
    {"animal-marine", "sea animal"},
    {"animal-bug", "bug"},
    {"plant-flower", "flower"},
    {"plant-other", "plant"},
    {"food-fruit", "fruit"},
    {"food-vegetable", "vegetable"},
    {"food-prepared", "prepared food"},
    {"food-asian", "asian food"},
    {"food-marine", "seafood"},
    {"food-sweet", "sweets"},
    {"drink", "drink"},
    {"dishware", "dishware"},
    {"place-map", "map"},
    {"place-geographic", "landscape"},
    {"place-building", "building"},
    {"place-religious", "place of worship"},
    {"place-other", "place"},
    {"transport-ground", "land vehicle"},
    {"transport-water", "boat"},
    {"transport-air", "aircraft"},
    {"hotel", "hotel"},
    {"time", "clock"},
    {"sky & weather", "sky and weather"},
    {"event", "celebration"},
    {"award-medal", "award medal"},
    {"sport", "sports equipment"},
    {"game", "game"},
    {"arts & crafts", "arts and crafts"},
    {"clothing", "clothing"},
    {"sound", "sound"},
    {"music", "music"},
    {"musical-instrument", "musical instrument"},
    {"phone", "phone"},
    {"computer", "computer"},
    {"light & video", "light and video"},
    {"book-paper", "book and paper"},
    {"money", "money"},
    {"mail", "mail"},
    {"writing", "writing tool"},
    {"office", "office supplies"},
    {"lock", "lock"},
    {"tool", "tool"},
    {"science", "science equipment"},
    {"medical", "medical object"},
    {"household", "household object"},
    {"other-object", "object"},
    {"transport-sign", "transport sign"},
    {"warning", "warning sign"},
    {"arrow", "arrow"},
    {"religion", "religious symbol"},
    {"zodiac", "zodiac sign"},
    {"av-symbol", "audio and video button"},
    {"gender", "gender symbol"},
    {"math", "math symbol"},
    {"punctuation", "punctuation mark"},
    {"currency", "currency symbol"},
    {"other-symbol", "symbol"},
    {"keycap", "keycap"},
    {"alphanum", "letter and number button"},
    {"geometric", "geometric shape"},
    {"flag", "flag"},
    {"country-flag", "country flag"},
    {"subdivision-flag", "regional flag"},
};

static void subgroup_prompt(char *dst, size_t n, const char *sub) {
    for (size_t i = 0; i < sizeof nice_names / sizeof nice_names[0]; i++)
        if (!strcmp(sub, nice_names[i][0])) {
            snprintf(dst, n, "%s", nice_names[i][1]);
            return;
        }
    size_t j = 0;
    for (const char *c = sub; *c && j + 1 < n; c++)
        dst[j++] = (*c == '-' || *c == '_' || *c == '\t') ? ' ' : *c;
    dst[j] = 0;
}

/* ---- rendering ---- */

typedef struct {
    FT_Library ft;
    FT_Face face;
    hb_font_t *hb;
    hb_buffer_t *buf;
} renderer;

static void renderer_free(renderer *r) {
    if (r->buf) hb_buffer_destroy(r->buf);
    if (r->hb)
        hb_font_destroy(r->hb);
    else if (r->face)
        FT_Done_Face(r->face);
    if (r->ft) FT_Done_FreeType(r->ft);
    memset(r, 0, sizeof *r);
}

/* Opens a colour bitmap font at its largest bitmap strike. */
static int renderer_open(renderer *r, const char *path, char *err) {
    memset(r, 0, sizeof *r);
    int e;
    if ((e = FT_Init_FreeType(&r->ft)))
        return d3_errf(err, "FreeType initialisation failed (error %d)", e);
    if ((e = FT_New_Face(r->ft, path, 0, &r->face))) {
        r->face = NULL;
        renderer_free(r);
        FILE *f = fopen(path, "rb");
        if (!f)
            return d3_errf(err, "%s: cannot open font (is fonts-noto-color-emoji installed?)",
                           path);
        fclose(f);
        return d3_errf(err, "%s: not a font FreeType can read (error %d)", path, e);
    }
    if (!FT_HAS_COLOR(r->face) || r->face->num_fixed_sizes < 1) {
        renderer_free(r);
        return d3_errf(
            err, "%s: no colour bitmap strikes (expected a CBDT font like NotoColorEmoji.ttf)",
            path);
    }
    int best = 0;
    for (int i = 1; i < r->face->num_fixed_sizes; i++)
        if (r->face->available_sizes[i].y_ppem > r->face->available_sizes[best].y_ppem) best = i;
    if ((e = FT_Select_Size(r->face, best))) {
        renderer_free(r);
        return d3_errf(err, "%s: selecting bitmap strike %d failed (error %d)", path, best, e);
    }
    /* hb-ft takes over the face: hb_font_destroy frees it */
    r->hb = hb_ft_font_create_referenced(r->face);
    FT_Done_Face(r->face); /* drop our reference, the hb font keeps one */
    r->face = NULL;
    r->buf = hb_buffer_create();
    if (!r->hb || !hb_buffer_allocation_successful(r->buf)) {
        renderer_free(r);
        return d3_errf(err, "%s: out of memory creating the HarfBuzz font", path);
    }
    return 0;
}

enum skip_reason { SKIP_MULTI, SKIP_NOTDEF, SKIP_LOAD, SKIP_NOT_COLOR, SKIP_EMPTY, NSKIP };
static const char *const skip_text[NSKIP] = {
    "shaped to more than one glyph (no ligature in the font)",
    "not in the font (.notdef)",
    "glyph bitmap failed to load",
    "glyph is not a colour bitmap",
    "glyph bitmap is empty",
};

/* Shapes e into one glyph and renders it as SIZE x SIZE RGB on white.
 * Returns -1 (and *why, *detail) when the emoji has to be skipped. */
static int render_emoji(renderer *r, const emoji *e, int size, uint8_t *rgb, int *why,
                        int *detail) {
    hb_buffer_clear_contents(r->buf);
    hb_buffer_add_utf32(r->buf, e->cp, e->n, 0, e->n);
    hb_buffer_set_flags(r->buf, HB_BUFFER_FLAG_BOT | HB_BUFFER_FLAG_EOT);
    hb_buffer_guess_segment_properties(r->buf);
    hb_shape(r->hb, r->buf, NULL, 0);
    unsigned ng = 0;
    hb_glyph_info_t *gi = hb_buffer_get_glyph_infos(r->buf, &ng);
    *detail = (int)ng;
    if (ng != 1) {
        *why = SKIP_MULTI;
        return -1;
    }
    if (gi[0].codepoint == 0) {
        *why = SKIP_NOTDEF;
        return -1;
    }
    FT_Face face = hb_ft_font_get_face(r->hb);
    int fe = FT_Load_Glyph(face, gi[0].codepoint, FT_LOAD_COLOR);
    if (fe) {
        *why = SKIP_LOAD;
        *detail = fe;
        return -1;
    }
    FT_Bitmap *bm = &face->glyph->bitmap;
    if (bm->pixel_mode != FT_PIXEL_MODE_BGRA) {
        *why = SKIP_NOT_COLOR;
        *detail = bm->pixel_mode;
        return -1;
    }
    int w = (int)bm->width, h = (int)bm->rows;
    if (w <= 0 || h <= 0) {
        *why = SKIP_EMPTY;
        return -1;
    }

    /* canvas: [N, N, 3] bytes, white, bitmap centred; premultiplied BGRA
     * over white is c + (255 - a) per channel */
    int N = w > h ? w : h, ox = (N - w) / 2, oy = (N - h) / 2;
    uint8_t *cv = malloc((size_t)N * N * 3);
    memset(cv, 255, (size_t)N * N * 3);
    int pitch = bm->pitch < 0 ? -bm->pitch : bm->pitch;
    for (int y = 0; y < h; y++) {
        const uint8_t *src = bm->buffer + (size_t)(bm->pitch < 0 ? h - 1 - y : y) * pitch;
        uint8_t *dst = cv + ((size_t)(y + oy) * N + ox) * 3;
        for (int x = 0; x < w; x++, src += 4, dst += 3) {
            int a = src[3];
            for (int c = 0; c < 3; c++) {
                int v = src[2 - c] + 255 - a; /* BGRA: R is byte 2, B byte 0 */
                dst[c] = (uint8_t)(v > 255 ? 255 : v);
            }
        }
    }

    /* Box filter over the exact footprint, in integers: along one axis, in
     * units of 1/(N*size) of the canvas, source pixel j covers
     * [j*size, (j+1)*size) and output pixel i covers [i*N, (i+1)*N); the
     * weight is the overlap, and the weights of one output pixel sum to N. */
    int S = size;
    int *lo = malloc(S * sizeof *lo), *hi = malloc(S * sizeof *hi);
    int *wt = malloc((size_t)S * (N + 1) * sizeof *wt); /* wt[i*(N+1) + (j-lo[i])] */
    for (int i = 0; i < S; i++) {
        long a0 = (long)i * N, a1 = (long)(i + 1) * N;
        lo[i] = (int)(a0 / S);
        hi[i] = (int)((a1 + S - 1) / S); /* exclusive */
        if (hi[i] > N) hi[i] = N;
        for (int j = lo[i]; j < hi[i]; j++) {
            long b0 = (long)j * S, b1 = (long)(j + 1) * S;
            long o = (a1 < b1 ? a1 : b1) - (a0 > b0 ? a0 : b0);
            wt[(size_t)i * (N + 1) + (j - lo[i])] = (int)(o > 0 ? o : 0);
        }
    }
    uint32_t *tmp = malloc((size_t)N * S * 3 * sizeof *tmp); /* [N rows, S cols, 3] */
    for (int y = 0; y < N; y++)
        for (int i = 0; i < S; i++) {
            uint32_t acc[3] = {0, 0, 0};
            for (int j = lo[i]; j < hi[i]; j++) {
                uint32_t wj = (uint32_t)wt[(size_t)i * (N + 1) + (j - lo[i])];
                const uint8_t *p = cv + ((size_t)y * N + j) * 3;
                acc[0] += wj * p[0], acc[1] += wj * p[1], acc[2] += wj * p[2];
            }
            memcpy(tmp + ((size_t)y * S + i) * 3, acc, sizeof acc);
        }
    uint64_t den = (uint64_t)N * N;
    for (int i = 0; i < S; i++)
        for (int x = 0; x < S; x++) {
            uint64_t acc[3] = {0, 0, 0};
            for (int j = lo[i]; j < hi[i]; j++) {
                uint64_t wj = (uint64_t)wt[(size_t)i * (N + 1) + (j - lo[i])];
                const uint32_t *p = tmp + ((size_t)j * S + x) * 3;
                acc[0] += wj * p[0], acc[1] += wj * p[1], acc[2] += wj * p[2];
            }
            for (int c = 0; c < 3; c++)
                rgb[((size_t)i * S + x) * 3 + c] = (uint8_t)((acc[c] + den / 2) / den);
        }
    free(tmp);
    free(wt);
    free(lo);
    free(hi);
    free(cv);
    return 0;
}

/* ---- --only ---- */

typedef struct {
    uint32_t cp[MAX_CPS];
    int n;
    int used;
} seq;

/* "1f600,1f1eb-1f1f7" -> sequences. -1 after printing a usage message. */
static int parse_only(const char *s, seq **out, int *nout) {
    int cap = 8, n = 0;
    seq *v = calloc(cap, sizeof *v);
    const char *p = s;
    for (;;) {
        if (n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        seq *q = &v[n];
        memset(q, 0, sizeof *q);
        for (;;) {
            if (q->n == MAX_CPS || parse_cp(&p, &q->cp[q->n])) goto bad;
            q->n++;
            if (*p != '-') break;
            p++;
        }
        n++;
        if (!*p) break;
        if (*p != ',') goto bad;
        p++;
    }
    *out = v;
    *nout = n;
    return 0;
bad:
    fprintf(stderr,
            "d3po dataset: --only '%s': expected hex codepoints joined by '-', sequences "
            "separated by ',' (e.g. 1f600,1f1eb-1f1f7)\n",
            s);
    free(v);
    return -1;
}

static int seq_find(seq *v, int n, const emoji *e) {
    for (int i = 0; i < n; i++)
        if (v[i].n == e->n && !memcmp(v[i].cp, e->cp, e->n * sizeof e->cp[0])) return i;
    return -1;
}

/* ---- the command ---- */

typedef struct {
    int emoji, why, detail;
} skip;

/* The summary on stderr: counts, then the skipped emoji grouped by reason
 * (a few of each, or all with verbose). */
static void report(const emoji_list *L, int nrendered, int nconsidered, const skip *skips,
                   int nskip, int verbose) {
    char name[MAX_CPS * 7 + 1];
    fprintf(stderr, "d3po dataset: %d of %d emoji rendered, %d skipped\n", nrendered, nconsidered,
            nskip);
    for (int why = 0; why < NSKIP; why++) {
        int n = 0;
        for (int k = 0; k < nskip; k++) n += skips[k].why == why;
        if (!n) continue;
        fprintf(stderr, "  skipped %d: %s\n", n, skip_text[why]);
        int shown = 0;
        for (int k = 0; k < nskip && (verbose || shown < 5); k++) {
            if (skips[k].why != why) continue;
            const emoji *e = &L->v[skips[k].emoji];
            seq_format(name, sizeof name, e->cp, e->n);
            if (why == SKIP_MULTI)
                fprintf(stderr, "    %s %s (%d glyphs)\n", name, e->name, skips[k].detail);
            else if (why == SKIP_LOAD || why == SKIP_NOT_COLOR)
                fprintf(stderr, "    %s %s (%s %d)\n", name, e->name,
                        why == SKIP_LOAD ? "FreeType error" : "pixel mode", skips[k].detail);
            else
                fprintf(stderr, "    %s %s\n", name, e->name);
            shown++;
        }
        if (shown < n) fprintf(stderr, "    ... and %d more (--verbose lists all)\n", n - shown);
    }
}

static int dataset_emoji(const char *out, int size, const char *only, int verbose,
                         const char *test_path, const char *font_path) {
    char err[D3_ERRLEN];
    seq *sel = NULL;
    int nsel = 0;
    if (only && parse_only(only, &sel, &nsel)) return EXIT_USAGE;
    emoji_list L;
    if (emoji_list_read(&L, test_path, err)) {
        fprintf(stderr, "d3po dataset: %s%s\n", err,
                strcmp(test_path, EMOJI_TEST_PATH)
                    ? ""
                    : " (the list comes with Debian's unicode-data)");
        free(sel);
        return EXIT_FAIL;
    }
    int rc = 0;
    if (sel) {
        for (int i = 0; i < L.n; i++) {
            int k = seq_find(sel, nsel, &L.v[i]);
            if (k >= 0) sel[k].used = 1;
        }
        for (int k = 0; k < nsel; k++)
            if (!sel[k].used) {
                char sq[MAX_CPS * 7 + 1];
                seq_format(sq, sizeof sq, sel[k].cp, sel[k].n);
                fprintf(stderr, "d3po dataset: --only %s: not a fully-qualified emoji in %s\n", sq,
                        test_path);
                rc = EXIT_USAGE;
            }
        if (rc) goto done_list;
    }
    renderer r;
    if (renderer_open(&r, font_path, err)) {
        fprintf(stderr, "d3po dataset: %s\n", err);
        rc = EXIT_FAIL;
        goto done_list;
    }
    if (fs_mkdirs(out, err)) {
        fprintf(stderr, "d3po dataset: %s\n", err);
        rc = EXIT_FAIL;
        goto done_render;
    }
    int *count = calloc(L.nsubs, sizeof *count);
    skip *skips = malloc((L.n + 1) * sizeof *skips);
    int nskip = 0, nrendered = 0, nconsidered = 0;
    uint8_t *rgb = malloc((size_t)size * size * 3);
    char path[4096], dir[256], name[MAX_CPS * 7 + 1];
    for (int i = 0; i < L.n && !rc; i++) {
        const emoji *e = &L.v[i];
        if (sel && seq_find(sel, nsel, e) < 0) continue;
        nconsidered++;
        int why, detail;
        if (render_emoji(&r, e, size, rgb, &why, &detail)) {
            skips[nskip++] = (skip){i, why, detail};
            continue;
        }
        subgroup_dir(dir, sizeof dir, L.subs[e->sub]);
        seq_format(name, sizeof name, e->cp, e->n);
        snprintf(path, sizeof path, "%s/%s", out, dir);
        if (!count[e->sub] && fs_mkdirs(path, err)) {
            fprintf(stderr, "d3po dataset: %s\n", err);
            rc = EXIT_FAIL;
            break;
        }
        snprintf(path, sizeof path, "%s/%s/%s.png", out, dir, name);
        if (png_write_rgb(path, rgb, size, size, err)) {
            fprintf(stderr, "d3po dataset: %s\n", err);
            rc = EXIT_FAIL;
            break;
        }
        count[e->sub]++;
        nrendered++;
    }
    if (!rc) report(&L, nrendered, nconsidered, skips, nskip, verbose);
    if (!rc && !nrendered) {
        fprintf(stderr, "d3po dataset: no emoji rendered from %s with %s\n", test_path, font_path);
        rc = EXIT_FAIL;
    }
    int nclasses = 0;
    if (!rc) {
        /* classes.tsv, built in memory and written atomically */
        size_t cap = 4096, len = 0;
        char *tsv = malloc(cap);
        len += (size_t)snprintf(tsv, cap, "id\tsubgroup\tprompt\tcount\n");
        for (int s = 0; s < L.nsubs; s++) {
            if (!count[s]) continue;
            char prompt[256];
            subgroup_dir(dir, sizeof dir, L.subs[s]);
            subgroup_prompt(prompt, sizeof prompt, L.subs[s]);
            if (len + 600 > cap) tsv = realloc(tsv, cap *= 2);
            len += (size_t)snprintf(tsv + len, cap - len, "%d\t%s\t%s\t%d\n", nclasses++, dir,
                                    prompt, count[s]);
        }
        snprintf(path, sizeof path, "%s/classes.tsv", out);
        const void *parts[1] = {tsv};
        size_t lens[1] = {len};
        if (fs_write_atomic(path, parts, lens, 1, err)) {
            fprintf(stderr, "d3po dataset: %s\n", err);
            rc = EXIT_FAIL;
        }
        free(tsv);
    }
    if (!rc)
        printf("wrote %d images of %dx%d in %d classes to %s (classes in %s/classes.tsv)\n",
               nrendered, size, size, nclasses, out, out);
    free(rgb);
    free(skips);
    free(count);
done_render:
    renderer_free(&r);
done_list:
    emoji_list_free(&L);
    free(sel);
    return rc;
}

int cmd_dataset(int argc, char **argv) {
    /* --emoji-test and --font are hidden: for tests and unusual installs */
    static const struct option opts[] = {
        {"out", 1, 0, 'o'},        {"size", 1, 0, 's'}, {"only", 1, 0, 'n'}, {"verbose", 0, 0, 'v'},
        {"emoji-test", 1, 0, 'T'}, {"font", 1, 0, 'F'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *out = NULL, *only = NULL;
    const char *test_path = EMOJI_TEST_PATH, *font_path = EMOJI_FONT_PATH;
    long size = 32;
    int verbose = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 'n':
            only = optarg;
            break;
        case 'T':
            test_path = optarg;
            break;
        case 'F':
            font_path = optarg;
            break;
        case 'v':
            verbose = 1;
            break;
        case 's':
            bad = cli_int("dataset", "--size", optarg, 8, 512, &size);
            break;
        case 'h':
            fputs(dataset_help, stdout);
            return 0;
        default:
            bad = 1;
            fputs(dataset_help, stderr);
        }
        if (bad) return EXIT_USAGE;
    }
    if (optind >= argc) {
        fprintf(stderr, "d3po dataset: which dataset? (only 'emoji' exists)\n%s", dataset_help);
        return EXIT_USAGE;
    }
    if (strcmp(argv[optind], "emoji")) {
        fprintf(stderr, "d3po dataset: unknown dataset '%s' (only 'emoji' exists)\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!out || optind + 1 < argc) {
        fprintf(stderr, "d3po dataset: %s\n%s",
                optind + 1 < argc ? "unexpected argument" : "--out DIR is required", dataset_help);
        return EXIT_USAGE;
    }
    return dataset_emoji(out, (int)size, only, verbose, test_path, font_path);
}
