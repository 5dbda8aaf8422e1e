/* plot.h - PNG line charts of per-round values (`d3po eval --plot`): one
 * or more panels stacked vertically, each with axes, tick labels, a title,
 * one series drawn as a polyline with dots, optional error bars and an
 * optional horizontal reference line (0.5 for win rates). Text is drawn
 * with FreeType from DejaVu Sans, like grid.c; the file is written with
 * png_write_rgb (atomic).
 *
 *   double x[] = {0, 1, 2}, y[] = {101.2, 104.9, 110.3};
 *   plot_panel p = plot_panel_default();
 *   p.title = "brightness (mean oracle score) per round"; p.n = 3; p.x = x; p.y = y;
 *   if (plot_write_png("chart.png", &p, 1, err)) ...;
 */
#ifndef D3PO_PLOT_H
#define D3PO_PLOT_H
#include <stdint.h>

#include "err.h"

typedef struct {
    const char *title;  /* above the panel */
    const char *xlabel; /* under the x axis, e.g. "round" */
    int n;              /* points */
    const double *x, *y;      /* [n]; non-finite y values are left out */
    const double *lo, *hi;    /* [n] error bars, or NULL */
    double ymin, ymax;  /* y range; NAN: from the data (with a margin) */
    double ref;         /* a dashed horizontal line at this y, NAN: none */
    uint8_t color[3];   /* series colour */
} plot_panel;

/* A panel with no data, automatic y range, no reference line, blue. */
plot_panel plot_panel_default(void);

/* Writes the panels (each 640x240 pixels, stacked) as one RGB PNG. A panel
 * with no finite point says "no data". 0, or -1 with err naming path (or
 * the missing font). */
int plot_write_png(const char *path, const plot_panel *panels, int npanels, char *err);

/* Draws UTF-8 text in colour rgb_c with its baseline at (x, y) into an RGB8
 * image [H][W][3], at px pixels, clipped to the image. align: 0 left,
 * 1 centred on x, 2 right-aligned at x. Returns the text width in pixels,
 * or -1 with err when the font cannot be loaded. */
int plot_draw_text(uint8_t *rgb, int W, int H, int x, int y, int px, int align,
                   const uint8_t rgb_c[3], const char *s, char *err);
#endif
