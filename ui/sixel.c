/* sixel.c - sixel encoding through libsixel into memory, tmux passthrough
 * wrapping and cursor-framed placement. See sixel.h. libsixel is only used
 * here; everything else deals in byte buffers. */
#include "sixel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libsixel's header is also called sixel.h; -Iui would find ours first. */
#include <sixel/sixel.h>

/* Growing buffer fed by libsixel's write callback. */
typedef struct {
    unsigned char *p;
    size_t n, cap;
    int oom;
} membuf;

static int membuf_write(char *data, int size, void *priv) {
    membuf *m = priv;
    if (m->oom || size <= 0) return size;
    if (m->n + (size_t)size > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->n + (size_t)size) cap *= 2;
        unsigned char *q = realloc(m->p, cap);
        if (!q) {
            m->oom = 1;
            return size;
        }
        m->p = q, m->cap = cap;
    }
    memcpy(m->p + m->n, data, (size_t)size);
    m->n += (size_t)size;
    return size;
}

int sixel_encode_rgb(const uint8_t *rgb, int w, int h, int colors, int dither, unsigned char **out,
                     size_t *len, char *err) {
    *out = NULL, *len = 0;
    if (w <= 0 || h <= 0 || w > 16384 || h > 16384)
        return d3_errf(err, "sixel: image size %dx%d, expected 1..16384 on each side", w, h);
    if (colors < 2 || colors > 256)
        return d3_errf(err, "sixel: %d colours requested, expected 2..256", colors);

    /* libsixel takes non-const pixels; give it a copy rather than cast. */
    size_t npix = (size_t)w * (size_t)h * 3;
    unsigned char *px = malloc(npix);
    if (!px) return d3_errf(err, "sixel: out of memory for a %dx%d image", w, h);
    memcpy(px, rgb, npix);

    membuf m = {0};
    sixel_output_t *output = NULL;
    sixel_dither_t *dith = NULL;
    SIXELSTATUS st = sixel_output_new(&output, membuf_write, &m, NULL);
    if (!SIXEL_FAILED(st)) st = sixel_dither_new(&dith, colors, NULL);
    if (!SIXEL_FAILED(st))
        st = sixel_dither_initialize(dith, px, w, h, SIXEL_PIXELFORMAT_RGB888, SIXEL_LARGE_AUTO,
                                     SIXEL_REP_AUTO, SIXEL_QUALITY_AUTO);
    if (!SIXEL_FAILED(st)) {
        sixel_dither_set_diffusion_type(dith, dither ? SIXEL_DIFFUSE_FS : SIXEL_DIFFUSE_NONE);
        st = sixel_encode(px, w, h, 8, dith, output);
    }
    if (dith) sixel_dither_unref(dith);
    if (output) sixel_output_unref(output);
    free(px);

    if (SIXEL_FAILED(st)) {
        free(m.p);
        return d3_errf(err, "sixel: encoding a %dx%d image with %d colours failed: %s", w, h,
                       colors, sixel_helper_format_error(st));
    }
    if (m.oom || m.n < 4) {
        free(m.p);
        return d3_errf(err, "sixel: %s while encoding a %dx%d image",
                       m.oom ? "out of memory" : "no output", w, h);
    }
    *out = m.p, *len = m.n;
    return 0;
}

void sixel_upscale_nearest(uint8_t *dst, const uint8_t *src, int w, int h, int f) {
    int W = w * f;
    for (int y = 0; y < h * f; y++) {
        const uint8_t *srow = src + (size_t)(y / f) * w * 3;
        uint8_t *drow = dst + (size_t)y * W * 3;
        for (int x = 0; x < W; x++) memcpy(drow + (size_t)x * 3, srow + (size_t)(x / f) * 3, 3);
    }
}

/* The weight of source cell i in [a, b) (fractional overlap). */
static double overlap(int i, double a, double b) {
    double lo = i > a ? i : a, hi = i + 1 < b ? i + 1 : b;
    return hi > lo ? hi - lo : 0;
}

void sixel_downscale_area(uint8_t *dst, int dw, int dh, const uint8_t *src, int w, int h) {
    double sx = (double)w / dw, sy = (double)h / dh;
    for (int y = 0; y < dh; y++) {
        double y0 = y * sy, y1 = (y + 1) * sy;
        for (int x = 0; x < dw; x++) {
            double x0 = x * sx, x1 = (x + 1) * sx, acc[3] = {0, 0, 0}, wsum = 0;
            for (int j = (int)y0; j < h && j < y1; j++) {
                double wy = overlap(j, y0, y1);
                for (int i = (int)x0; i < w && i < x1; i++) {
                    double wt = wy * overlap(i, x0, x1);
                    const uint8_t *p = src + ((size_t)j * w + i) * 3;
                    for (int c = 0; c < 3; c++) acc[c] += wt * p[c];
                    wsum += wt;
                }
            }
            uint8_t *q = dst + ((size_t)y * dw + x) * 3;
            for (int c = 0; c < 3; c++) q[c] = (uint8_t)(wsum > 0 ? acc[c] / wsum + 0.5 : 0);
        }
    }
}

int sixel_wrap_tmux(const unsigned char *in, size_t len, unsigned char **out, size_t *outlen,
                    char *err) {
    static const char head[] = "\033Ptmux;", tail[] = "\033\\";
    size_t nesc = 0;
    for (size_t i = 0; i < len; i++) nesc += in[i] == 0x1b;
    size_t total = (sizeof head - 1) + len + nesc + (sizeof tail - 1);
    *out = NULL, *outlen = 0;
    if (total > SIXEL_TMUX_MAX)
        return d3_errf(err,
                       "sixel: tmux passthrough of %zu bytes exceeds tmux's limit of %u; "
                       "use fewer colours or a smaller image",
                       total, SIXEL_TMUX_MAX);
    unsigned char *p = malloc(total);
    if (!p) return d3_errf(err, "sixel: out of memory wrapping %zu bytes for tmux", len);
    size_t k = 0;
    memcpy(p, head, sizeof head - 1), k += sizeof head - 1;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == 0x1b) p[k++] = 0x1b;
        p[k++] = in[i];
    }
    memcpy(p + k, tail, sizeof tail - 1), k += sizeof tail - 1;
    *out = p, *outlen = k;
    return 0;
}

size_t sixel_place(unsigned char *buf, size_t cap, int row, int col, const unsigned char *payload,
                   size_t len) {
    char move[32];
    int m = snprintf(move, sizeof move, "\0337\033[%d;%dH", row + 1, col + 1);
    size_t total = (size_t)m + len + 2;
    if (buf && cap >= total) {
        memcpy(buf, move, (size_t)m);
        if (len) memcpy(buf + m, payload, len);
        memcpy(buf + m + len, "\0338", 2);
    }
    return total;
}
