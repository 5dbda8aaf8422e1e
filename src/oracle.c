/* oracle.c - the built-in judges of headless rounds (`d3po auto`) and blind
 * evaluation (see oracle.h): two JPEG-size scores (the D3PO paper's
 * compressibility / incompressibility rewards, measured with libjpeg-turbo
 * encoding into memory at quality 95), mean brightness, realism (closeness
 * to the class's training images in the data set folder), and a noisy wrapper
 * that answers like an inconsistent person (Bradley-Terry with temperature
 * T) from its own seeded Philox stream, so a run with the same seed gives
 * the same answers. Scores never depend on anything but the image; only
 * noisy: judgments draw random numbers. */
#include "oracle.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>

#include "groups.h"
#include "image.h"
#include "imgfolder.h"
#include "rng.h"
#include "session.h"

#define ORACLE_JPEG_QUALITY 95
#define ORACLE_RNG_STREAM 0x0AC1E /* the noisy oracle's Philox stream id */

typedef enum { OR_JPEG_SMALL, OR_JPEG_LARGE, OR_BRIGHTNESS, OR_REALISM } oracle_kind;

#define REALISM_NEAREST 5           /* training images averaged over */
#define REALISM_DEFAULT_DIR "emoji" /* `d3po dataset emoji --out emoji` */

/* The known base oracles and the default Bradley-Terry temperature of
 * their noisy: form, in score units. Brightness scores span 0..255 and
 * samples of one prompt differ by a few units: T = 4 makes a 4-unit gap
 * right 73% of the time. JPEG sizes of 32x32 samples are ~1-2 KB and
 * differ by tens of bytes: T = 40 bytes plays the same role. Realism
 * distances are RMS differences in 0..255 units; two samples of a prompt
 * are a few units apart: T = 2. */
static const struct {
    const char *name;
    oracle_kind kind;
    double T;
} known[] = {
    {"jpeg-compressibility", OR_JPEG_SMALL, 40},
    {"jpeg-incompressibility", OR_JPEG_LARGE, 40},
    {"brightness", OR_BRIGHTNESS, 4},
    {"realism", OR_REALISM, 2},
};
#define NKNOWN (sizeof known / sizeof *known)

struct d3_oracle {
    oracle_kind kind;
    int noisy;
    double T;
    d3_rng rng;
    char name[96];
    /* realism: the data set folder, loaded at side size (0: not yet), its
     * images blurred ([n][S*S*3] in 0..255) and the current class */
    char dir[1024];
    int size, cls;
    imgfolder data;
    float *blurred;
};

static int known_list(char *buf, size_t n) {
    size_t j = 0;
    buf[0] = 0;
    for (size_t i = 0; i < NKNOWN && j < n; i++)
        j += (size_t)snprintf(buf + j, n - j, "%s%s", i ? ", " : "", known[i].name);
    return 0;
}

d3_oracle *oracle_new(const char *spec, uint64_t seed, char *err) {
    char names[256];
    known_list(names, sizeof names);
    if (!spec || !spec[0]) {
        d3_errf(err, "no oracle named; known oracles: %s, noisy:<name>[:T]", names);
        return NULL;
    }
    const char *base = spec;
    int noisy = 0;
    double T = 0;
    char buf[96];
    if (!strncmp(spec, "noisy:", 6)) {
        noisy = 1;
        snprintf(buf, sizeof buf, "%s", spec + 6);
        char *colon = strchr(buf, ':');
        if (colon) {
            *colon = 0;
            char *end;
            T = strtod(colon + 1, &end);
            if (end == colon + 1 || *end || !isfinite(T) || T <= 0) {
                d3_errf(err, "oracle '%s': the temperature after '%s:' must be a number > 0", spec,
                        buf);
                return NULL;
            }
        }
        base = buf;
    }
    for (size_t i = 0; i < NKNOWN; i++) {
        if (strcmp(base, known[i].name)) continue;
        d3_oracle *o = calloc(1, sizeof *o);
        if (!o) {
            d3_errf(err, "oracle: out of memory");
            return NULL;
        }
        o->kind = known[i].kind;
        o->noisy = noisy;
        o->T = noisy ? (T > 0 ? T : known[i].T) : 0;
        rng_init(&o->rng, seed, ORACLE_RNG_STREAM);
        o->cls = -1;
        if (o->kind == OR_REALISM) {
            const char *env = getenv("D3PO_DATASET");
            snprintf(o->dir, sizeof o->dir, "%s", env && env[0] ? env : REALISM_DEFAULT_DIR);
            struct stat st;
            if (stat(o->dir, &st) || !S_ISDIR(st.st_mode)) {
                d3_errf(err, "oracle realism: data set folder '%.200s' not found (it is "
                             "$D3PO_DATASET, else ./%s; make it with `d3po dataset emoji --out "
                             "DIR`)", o->dir, REALISM_DEFAULT_DIR);
                free(o);
                return NULL;
            }
        }
        if (noisy)
            snprintf(o->name, sizeof o->name, "noisy:%s:%g", known[i].name, o->T);
        else
            snprintf(o->name, sizeof o->name, "%s", known[i].name);
        return o;
    }
    d3_errf(err, "unknown oracle '%.64s'; known oracles: %s, and noisy:<name>[:T] of any of them",
            base, names);
    return NULL;
}

void oracle_free(d3_oracle *o) {
    if (!o) return;
    if (o->size) imgfolder_free(&o->data);
    free(o->blurred);
    free(o);
}

void oracle_blur(float *out, const uint8_t *rgb, int W, int H) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) {
                double s = 0;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int yy = y + dy < 0 ? 0 : y + dy >= H ? H - 1 : y + dy;
                        int xx = x + dx < 0 ? 0 : x + dx >= W ? W - 1 : x + dx;
                        s += (dy ? 1 : 2) * (dx ? 1 : 2) * rgb[((size_t)yy * W + xx) * 3 + c];
                    }
                out[((size_t)y * W + x) * 3 + c] = (float)(s / 16.0);
            }
}

int oracle_needs_prompt(const d3_oracle *o) { return o->kind == OR_REALISM; }

int oracle_set_prompt(d3_oracle *o, const char *prompt, int S, char *err) {
    if (o->kind != OR_REALISM) return 0;
    if (S <= 0) return d3_errf(err, "oracle realism: image side %d", S);
    if (o->size != S) {
        if (o->size) imgfolder_free(&o->data);
        free(o->blurred);
        o->blurred = NULL;
        o->size = 0;
        o->cls = -1;
        if (imgfolder_load(&o->data, o->dir, S, 0, err)) return -1;
        o->size = S;
        size_t D = 3 * (size_t)S * S;
        uint8_t *rgb = malloc(D);
        o->blurred = malloc((size_t)o->data.n * D * sizeof(float));
        if (!rgb || !o->blurred) {
            free(rgb);
            return d3_errf(err, "oracle realism: out of memory for %d images", o->data.n);
        }
        for (int i = 0; i < o->data.n; i++) {
            image_to_rgb(rgb, o->data.x + (size_t)i * D, S, S);
            oracle_blur(o->blurred + (size_t)i * D, rgb, S, S);
        }
        free(rgb);
    }
    o->cls = -1;
    for (int c = 0; c < o->data.nclasses && o->cls < 0; c++)
        if (!strcmp(o->data.class_names[c], prompt) || !strcmp(o->data.class_dirs[c], prompt))
            o->cls = c;
    if (o->cls < 0) {
        char safe[96];
        size_t j = 0;
        for (const char *p = prompt; *p && j + 5 < sizeof safe; p++) /* escape control bytes */
            j += (unsigned char)*p < 0x20 || *p == 0x7f
                     ? (size_t)snprintf(safe + j, sizeof safe - j, "\\x%02x", (unsigned char)*p)
                     : (size_t)snprintf(safe + j, sizeof safe - j, "%c", *p);
        return d3_errf(err, "oracle realism: no class '%s' in the data set %s (classes.tsv prompts "
                            "or folder names)", safe, o->dir);
    }
    return 0;
}

/* -(mean of the REALISM_NEAREST smallest RMS distances between the blurred
 * image and the blurred training images of the current class). */
static double realism_score(const d3_oracle *o, const uint8_t *rgb, int W, int H) {
    if (o->cls < 0 || W != o->size || H != o->size) return NAN;
    size_t D = 3 * (size_t)W * H;
    float *b = malloc(D * sizeof(float));
    if (!b) return NAN;
    oracle_blur(b, rgb, W, H);
    double best[REALISM_NEAREST];
    int nb = 0;
    for (int i = 0; i < o->data.n; i++) {
        if (o->data.cls[i] != o->cls) continue;
        const float *t = o->blurred + (size_t)i * D;
        double ss = 0;
        for (size_t j = 0; j < D; j++) ss += ((double)b[j] - t[j]) * ((double)b[j] - t[j]);
        double d = sqrt(ss / (double)D);
        /* insertion into the sorted list of the nearest */
        int k;
        if (nb < REALISM_NEAREST) k = nb++;
        else if (d >= best[REALISM_NEAREST - 1]) continue;
        else k = REALISM_NEAREST - 1;
        while (k > 0 && best[k - 1] > d) {
            best[k] = best[k - 1];
            k--;
        }
        best[k] = d;
    }
    free(b);
    if (!nb) return NAN;
    double s = 0;
    for (int k = 0; k < nb; k++) s += best[k];
    return -s / nb;
}

const char *oracle_name(const d3_oracle *o) { return o->name; }

/* libjpeg reports errors through a longjmp out of the encoder instead of
 * exit(). */
typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
} jpeg_err;

static void jpeg_on_error(j_common_ptr c) { longjmp(((jpeg_err *)c->err)->jb, 1); }
static void jpeg_on_message(j_common_ptr c) { (void)c; }

/* Size in bytes of rgb [H][W][3] as a baseline JPEG at the given quality
 * (4:2:0, libjpeg-turbo defaults), or -1 on an encoder error. */
static long jpeg_size(const uint8_t *rgb, int W, int H, int quality) {
    struct jpeg_compress_struct c;
    jpeg_err je;
    unsigned long outlen = 0;
    c.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_on_error;
    je.pub.output_message = jpeg_on_message;
    if (setjmp(je.jb)) {
        /* the memory destination's buffer may have been replaced by then
         * and is not ours to free safely: a leak on an error that needs
         * absurd dimensions to happen */
        jpeg_destroy_compress(&c);
        return -1;
    }
    jpeg_create_compress(&c);
    unsigned char *o = NULL;
    jpeg_mem_dest(&c, &o, &outlen);
    c.image_width = (JDIMENSION)W;
    c.image_height = (JDIMENSION)H;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * W * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    /* jpeg_mem_dest may reallocate: the final buffer is in o */
    jpeg_destroy_compress(&c);
    free(o);
    return (long)outlen;
}

double oracle_score(d3_oracle *o, const uint8_t *rgb, int W, int H) {
    if (W <= 0 || H <= 0) return NAN;
    switch (o->kind) {
    case OR_JPEG_SMALL:
    case OR_JPEG_LARGE: {
        long n = jpeg_size(rgb, W, H, ORACLE_JPEG_QUALITY);
        if (n < 0) return NAN;
        return o->kind == OR_JPEG_SMALL ? -(double)n : (double)n;
    }
    case OR_BRIGHTNESS: {
        size_t n = (size_t)W * H * 3;
        double sum = 0;
        for (size_t i = 0; i < n; i++) sum += rgb[i];
        return sum / (double)n;
    }
    case OR_REALISM:
        return realism_score(o, rgb, W, H);
    }
    return NAN;
}

int oracle_judge(d3_oracle *o, const uint8_t *a, const uint8_t *b, int W, int H) {
    double sa = oracle_score(o, a, W, H), sb = oracle_score(o, b, W, H);
    if (!o->noisy) return sa > sb ? SESSION_A : sb > sa ? SESSION_B : SESSION_TIE;
    /* Bradley-Terry: P(A) = sigmoid((sa - sb) / T); one uniform per call */
    double pa = 1.0 / (1.0 + exp(-(sa - sb) / o->T));
    float u;
    rng_uniform(&o->rng, &u, 1);
    return (double)u < pa ? SESSION_A : SESSION_B;
}

int oracle_mark_group(d3_oracle *o, const uint8_t *const *rgb, int k, int W, int H, char *marks) {
    double s[GROUPS_MAX_K];
    if (k < GROUPS_MIN_K || k > GROUPS_MAX_K) return -1;
    for (int i = 0; i < k; i++) {
        s[i] = oracle_score(o, rgb[i], W, H);
        if (!isfinite(s[i])) return -1;
        if (o->noisy) {
            /* Gumbel(0, T) per image: the difference of two is logistic, so
             * any two images of the group compare as oracle_judge would */
            float u;
            rng_uniform(&o->rng, &u, 1);
            double v = u <= 0 ? 1e-12 : u >= 1 ? 1 - 1e-12 : u;
            s[i] -= o->T * log(-log(v));
        }
    }
    /* the top k/2 good, the bottom k/2 bad; an image tied across the
     * split (and the middle one of an odd group) stays unmarked */
    int half = k / 2, n = 0;
    for (int i = 0; i < k; i++) {
        int below = 0, above = 0;
        for (int j = 0; j < k; j++) {
            below += s[j] < s[i];
            above += s[j] > s[i];
        }
        marks[i] = below >= k - half ? GROUP_GOOD : above >= k - half ? GROUP_BAD : GROUP_UNMARKED;
        n += marks[i] != GROUP_UNMARKED;
    }
    marks[k] = 0;
    return n;
}
