/* blocks.c - half-block rendering (U+2580, fg = top pixel, bg = bottom
 * pixel) in truecolor or xterm 256 colours, and the nearest-colour mapping
 * into the 256-colour palette. See blocks.h. */
#include "blocks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int cube_level[6] = {0, 95, 135, 175, 215, 255};

/* Nearest cube level index for one channel (levels are not evenly spaced). */
static int cube_index(int v) {
    int best = 0;
    for (int i = 1; i < 6; i++)
        if (abs(v - cube_level[i]) < abs(v - cube_level[best])) best = i;
    return best;
}

static int dist2(int r, int g, int b, int r2, int g2, int b2) {
    return (r - r2) * (r - r2) + (g - g2) * (g - g2) + (b - b2) * (b - b2);
}

int blocks_xterm256(int r, int g, int b) {
    int ri = cube_index(r), gi = cube_index(g), bi = cube_index(b);
    int cube = 16 + 36 * ri + 6 * gi + bi;
    int dc = dist2(r, g, b, cube_level[ri], cube_level[gi], cube_level[bi]);
    /* Grey ramp: 232 + k is grey 8 + 10 k, k = 0..23; nearest to the mean. */
    int mean = (r + g + b) / 3;
    int k = (mean - 8 + 5) / 10;
    if (k < 0) k = 0;
    if (k > 23) k = 23;
    int gv = 8 + 10 * k;
    int dg = dist2(r, g, b, gv, gv, gv);
    return dg < dc ? 232 + k : cube;
}

void blocks_free(blocks_out *o) {
    if (o->line)
        for (int r = 0; r < o->rows; r++) free(o->line[r]);
    free(o->line);
    free(o->len);
    memset(o, 0, sizeof *o);
}

/* Appends one SGR colour: which is 38 (fg) or 48 (bg). */
static int put_color(char *p, int which, term_mode mode, const uint8_t *px) {
    if (mode == TERM_MODE_BLOCKS_TRUECOLOR)
        return sprintf(p, "\033[%d;2;%d;%d;%dm", which, px[0], px[1], px[2]);
    return sprintf(p, "\033[%d;5;%dm", which, blocks_xterm256(px[0], px[1], px[2]));
}

int blocks_render(const uint8_t *rgb, int w, int h, term_mode mode, int cols, int rows,
                  blocks_out *o, char *err) {
    memset(o, 0, sizeof *o);
    if (w <= 0 || h <= 0 || cols <= 0 || rows <= 0 || cols > 4096 || rows > 4096)
        return d3_errf(err, "blocks: image %dx%d into %dx%d cells, expected positive sizes", w, h,
                       cols, rows);
    if (mode != TERM_MODE_BLOCKS_TRUECOLOR && mode != TERM_MODE_BLOCKS_256)
        return d3_errf(err, "blocks: mode %s is not a half-block mode", term_mode_name(mode));
    o->line = calloc((size_t)rows, sizeof *o->line);
    o->len = calloc((size_t)rows, sizeof *o->len);
    if (!o->line || !o->len) goto oom;
    o->rows = rows, o->cols = cols;
    /* Per cell at most two SGRs of "\033[38;2;255;255;255m" (19) + 3 bytes
     * of U+2580; plus the reset and the NUL. */
    size_t cap = (size_t)cols * (2 * 19 + 3) + 8;
    for (int r = 0; r < rows; r++) {
        char *p = malloc(cap), *q = p;
        if (!p) goto oom;
        o->line[r] = p;
        const uint8_t *prev_fg = NULL, *prev_bg = NULL;
        int ytop = (int)((long)(2 * r) * h / (2 * rows));
        int ybot = (int)((long)(2 * r + 1) * h / (2 * rows));
        for (int c = 0; c < cols; c++) {
            int x = (int)((long)c * w / cols);
            const uint8_t *top = rgb + ((size_t)ytop * w + x) * 3;
            const uint8_t *bot = rgb + ((size_t)ybot * w + x) * 3;
            /* Same colour, same escape: skip it (a flat area costs 3 bytes
             * a cell instead of about 40, which matters over SSH). */
            if (!prev_fg || memcmp(prev_fg, top, 3)) q += put_color(q, 38, mode, top);
            if (!prev_bg || memcmp(prev_bg, bot, 3)) q += put_color(q, 48, mode, bot);
            prev_fg = top, prev_bg = bot;
            memcpy(q, "\xe2\x96\x80", 3), q += 3;
        }
        memcpy(q, "\033[0m", 5); /* with the NUL */
        q += 4;
        o->len[r] = (size_t)(q - p);
    }
    return 0;
oom:
    blocks_free(o);
    return d3_errf(err, "blocks: out of memory for %dx%d cells", cols, rows);
}

void blocks_fit(int w, int h, int max_cols, int max_rows, int *cols, int *rows) {
    /* Pixel area available: max_cols x 2*max_rows square pixels. */
    int c = max_cols, pr = 2 * max_rows;
    if ((long)w * pr > (long)h * max_cols) /* width-bound */
        pr = (int)((long)h * max_cols / w);
    else
        c = (int)((long)w * pr / h);
    *cols = c < 1 ? 1 : c;
    *rows = (pr + 1) / 2 < 1 ? 1 : (pr + 1) / 2;
    if (*rows > max_rows && max_rows > 0) *rows = max_rows;
}

int blocks_place(const blocks_out *b, int row, int col, unsigned char **buf, size_t *len,
                 char *err) {
    size_t total = 4;
    for (int r = 0; r < b->rows; r++) total += b->len[r] + 24;
    unsigned char *p = malloc(total), *q = p;
    *buf = NULL, *len = 0;
    if (!p) return d3_errf(err, "blocks: out of memory placing %d rows", b->rows);
    memcpy(q, "\0337", 2), q += 2;
    for (int r = 0; r < b->rows; r++) {
        q += sprintf((char *)q, "\033[%d;%dH", row + r + 1, col + 1);
        memcpy(q, b->line[r], b->len[r]), q += b->len[r];
    }
    memcpy(q, "\0338", 2), q += 2;
    *buf = p, *len = (size_t)(q - p);
    return 0;
}
