/* grid.h - a labeled contact sheet: rows of sample images, the class name
 * under each row, written as one PNG (the models/samples.png of the
 * README). Labels are drawn with plot_draw_text (DejaVu Sans through
 * FreeType, fonts-dejavu-core). */
#ifndef D3PO_GRID_H
#define D3PO_GRID_H
#include "err.h"

/* imgs: [rows][cols][3,S,S] floats in [-1,1]; labels: rows strings.
 * Each image is upscaled `scale` times (nearest). Returns 0 or -1. */
int grid_write_png(const char *path, const float *imgs, int rows, int cols, int S, int scale,
                   const char *const *labels, char *err);
#endif
