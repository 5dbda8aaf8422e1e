/* plot.c - PNG line charts of per-round values (see plot.h). Pixels are
 * drawn into an RGB8 buffer: axes, "nice" ticks (1, 2 or 5 x 10^k), the
 * series as a 2-pixel polyline with dots, error bars, a dashed reference
 * line; text with FreeType (DejaVu Sans, as grid.c). */
#include "plot.h"

#include <ft2build.h>
#include FT_FREETYPE_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

#define PLOT_FONT "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
#define PW 640       /* panel width */
#define PH 240       /* panel height */
#define ML 64        /* left margin (y tick labels) */
#define MR 20
#define MT 28        /* top margin (title) */
#define MB 40        /* bottom margin (x tick labels, x label) */

plot_panel plot_panel_default(void) {
    plot_panel p;
    memset(&p, 0, sizeof p);
    p.ymin = p.ymax = p.ref = NAN;
    p.color[0] = 31, p.color[1] = 119, p.color[2] = 180;
    return p;
}

static uint32_t utf8_next(const unsigned char **pp) {
    const unsigned char *p = *pp;
    uint32_t cp = *p++;
    int extra = cp >= 0xF0 ? 3 : cp >= 0xE0 ? 2 : cp >= 0xC0 ? 1 : 0;
    if (cp >= 0x80 && cp < 0xC0) cp = '?';
    else if (extra) {
        cp &= 0x3F >> extra;
        for (int i = 0; i < extra; i++) {
            if ((*p & 0xC0) != 0x80) { cp = '?'; break; }
            cp = cp << 6 | (*p++ & 0x3F);
        }
    }
    *pp = p;
    return cp < 0x20 ? '?' : cp;
}

int plot_draw_text(uint8_t *rgb, int W, int H, int x, int y, int px, int align,
                   const uint8_t c[3], const char *s, char *err) {
    FT_Library lib;
    FT_Face face;
    if (FT_Init_FreeType(&lib)) return d3_errf(err, "FreeType initialisation failed");
    if (FT_New_Face(lib, PLOT_FONT, 0, &face)) {
        FT_Done_FreeType(lib);
        return d3_errf(err, "%s: cannot load the chart font (install fonts-dejavu-core)", PLOT_FONT);
    }
    FT_Set_Pixel_Sizes(face, 0, (FT_UInt)px);
    int width = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        uint32_t cp = utf8_next(&p);
        if (!FT_Load_Char(face, cp, FT_LOAD_DEFAULT)) width += (int)(face->glyph->advance.x >> 6);
    }
    int pen = align == 1 ? x - width / 2 : align == 2 ? x - width : x;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        uint32_t cp = utf8_next(&p);
        if (FT_Load_Char(face, cp, FT_LOAD_RENDER)) continue;
        FT_GlyphSlot g = face->glyph;
        for (unsigned r = 0; r < g->bitmap.rows; r++)
            for (unsigned k = 0; k < g->bitmap.width; k++) {
                int xx = pen + g->bitmap_left + (int)k, yy = y - g->bitmap_top + (int)r;
                if (xx < 0 || yy < 0 || xx >= W || yy >= H) continue;
                int a = g->bitmap.buffer[r * g->bitmap.pitch + k];
                uint8_t *q = rgb + ((size_t)yy * W + xx) * 3;
                for (int i = 0; i < 3; i++) q[i] = (uint8_t)((q[i] * (255 - a) + c[i] * a) / 255);
            }
        pen += (int)(g->advance.x >> 6);
    }
    FT_Done_Face(face);
    FT_Done_FreeType(lib);
    return width;
}

static void put(uint8_t *rgb, int W, int H, int x, int y, const uint8_t c[3]) {
    if (x < 0 || y < 0 || x >= W || y >= H) return;
    memcpy(rgb + ((size_t)y * W + x) * 3, c, 3);
}

/* Bresenham; thick = 1 or 2 pixels; dash > 0: on/off runs of dash pixels. */
static void line(uint8_t *rgb, int W, int H, int x0, int y0, int x1, int y1, int thick, int dash,
                 const uint8_t c[3]) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int e = dx + dy, i = 0;
    for (;;) {
        if (!dash || (i / dash) % 2 == 0)
            for (int a = 0; a < thick; a++)
                for (int b = 0; b < thick; b++) put(rgb, W, H, x0 + a, y0 + b, c);
        i++;
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * e;
        if (e2 >= dy) { e += dy; x0 += sx; }
        if (e2 <= dx) { e += dx; y0 += sy; }
    }
}

/* A tick step of 1, 2 or 5 x 10^k giving about `want` intervals. */
static double nice_step(double range, int want) {
    double raw = range / want, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

static int draw_panel(uint8_t *rgb, int W, int H, int oy, const plot_panel *p, char *err) {
    static const uint8_t black[3] = {0, 0, 0}, grey[3] = {110, 110, 110},
                         light[3] = {225, 225, 225}, red[3] = {200, 60, 60};
    int x0 = ML, x1 = W - MR, y0 = oy + MT, y1 = oy + PH - MB; /* plot area */
    if (p->title && plot_draw_text(rgb, W, H, W / 2, oy + 18, 13, 1, black, p->title, err) < 0)
        return -1;
    /* data range */
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    int npts = 0;
    for (int i = 0; i < p->n; i++) {
        if (!isfinite(p->x[i]) || !isfinite(p->y[i])) continue;
        npts++;
        xmin = fmin(xmin, p->x[i]), xmax = fmax(xmax, p->x[i]);
        double lo = p->lo && isfinite(p->lo[i]) ? p->lo[i] : p->y[i];
        double hi = p->hi && isfinite(p->hi[i]) ? p->hi[i] : p->y[i];
        ymin = fmin(ymin, fmin(lo, p->y[i])), ymax = fmax(ymax, fmax(hi, p->y[i]));
    }
    if (isfinite(p->ref)) ymin = fmin(ymin, p->ref), ymax = fmax(ymax, p->ref);
    if (isfinite(p->ymin)) ymin = p->ymin;
    if (isfinite(p->ymax)) ymax = p->ymax;
    if (!npts) { xmin = 0, xmax = 1; }
    if (!(ymin < INFINITY)) ymin = 0, ymax = 1;
    if (xmax - xmin < 1) { xmin -= 0.5, xmax += 0.5; }
    if (ymax - ymin < 1e-12) { ymin -= 0.5, ymax += 0.5; }
    else if (!isfinite(p->ymin) || !isfinite(p->ymax)) {
        double m = 0.06 * (ymax - ymin);
        if (!isfinite(p->ymin)) ymin -= m;
        if (!isfinite(p->ymax)) ymax += m;
    }
    double xpad = 0.04 * (xmax - xmin);
    xmin -= xpad, xmax += xpad;
#define PX(v) (x0 + (int)lround(((v) - xmin) / (xmax - xmin) * (x1 - x0)))
#define PY(v) (y1 - (int)lround(((v) - ymin) / (ymax - ymin) * (y1 - y0)))
    /* grid and ticks */
    char buf[64];
    double ys = nice_step(ymax - ymin, 4);
    for (double v = ceil(ymin / ys) * ys; v <= ymax + 1e-9 * ys; v += ys) {
        int y = PY(v);
        line(rgb, W, H, x0, y, x1, y, 1, 0, light);
        line(rgb, W, H, x0 - 4, y, x0, y, 1, 0, black);
        snprintf(buf, sizeof buf, "%g", fabs(v) < 1e-9 * ys ? 0.0 : v);
        if (plot_draw_text(rgb, W, H, x0 - 7, y + 4, 11, 2, black, buf, err) < 0) return -1;
    }
    double xs = fmax(1, nice_step(xmax - xmin, 8)); /* rounds are integers */
    for (double v = ceil(xmin / xs) * xs; v <= xmax; v += xs) {
        int x = PX(v);
        line(rgb, W, H, x, y1, x, y1 + 4, 1, 0, black);
        snprintf(buf, sizeof buf, "%g", fabs(v) < 1e-9 * xs ? 0.0 : v);
        if (plot_draw_text(rgb, W, H, x, y1 + 17, 11, 1, black, buf, err) < 0) return -1;
    }
    if (p->xlabel && plot_draw_text(rgb, W, H, (x0 + x1) / 2, y1 + 33, 11, 1, grey, p->xlabel,
                                    err) < 0)
        return -1;
    line(rgb, W, H, x0, y0, x0, y1, 1, 0, black);
    line(rgb, W, H, x0, y1, x1, y1, 1, 0, black);
    if (isfinite(p->ref) && p->ref >= ymin && p->ref <= ymax)
        line(rgb, W, H, x0, PY(p->ref), x1, PY(p->ref), 1, 4, red);
    if (!npts)
        return plot_draw_text(rgb, W, H, (x0 + x1) / 2, (y0 + y1) / 2, 13, 1, grey, "no data",
                              err) < 0 ? -1 : 0;
    /* error bars, polyline, dots */
    for (int i = 0; i < p->n; i++) {
        if (!p->lo || !p->hi || !isfinite(p->x[i]) || !isfinite(p->y[i])) continue;
        if (!isfinite(p->lo[i]) || !isfinite(p->hi[i])) continue;
        int x = PX(p->x[i]), a = PY(p->lo[i]), b = PY(p->hi[i]);
        line(rgb, W, H, x, a, x, b, 1, 0, grey);
        line(rgb, W, H, x - 4, a, x + 4, a, 1, 0, grey);
        line(rgb, W, H, x - 4, b, x + 4, b, 1, 0, grey);
    }
    int px = 0, py = 0, have = 0;
    for (int i = 0; i < p->n; i++) {
        if (!isfinite(p->x[i]) || !isfinite(p->y[i])) continue;
        int x = PX(p->x[i]), y = PY(p->y[i]);
        if (have) line(rgb, W, H, px, py, x, y, 2, 0, p->color);
        px = x, py = y, have = 1;
    }
    for (int i = 0; i < p->n; i++) {
        if (!isfinite(p->x[i]) || !isfinite(p->y[i])) continue;
        int x = PX(p->x[i]), y = PY(p->y[i]);
        for (int a = -3; a <= 3; a++)
            for (int b = -3; b <= 3; b++)
                if (a * a + b * b <= 10) put(rgb, W, H, x + a, y + b, p->color);
    }
#undef PX
#undef PY
    return 0;
}

int plot_write_png(const char *path, const plot_panel *panels, int npanels, char *err) {
    if (npanels < 1) return d3_errf(err, "%s: no panels to plot", path);
    int W = PW, H = PH * npanels;
    uint8_t *rgb = malloc((size_t)W * H * 3);
    if (!rgb) return d3_errf(err, "%s: out of memory", path);
    memset(rgb, 255, (size_t)W * H * 3);
    int rc = 0;
    for (int i = 0; i < npanels && !rc; i++) rc = draw_panel(rgb, W, H, i * PH, &panels[i], err);
    if (!rc) rc = png_write_rgb(path, rgb, W, H, err);
    free(rgb);
    return rc;
}
