/* grid.c - labeled sample grids (see grid.h). */
#include "grid.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "plot.h"

#define PAD 4
#define TEXT_H 18

int grid_write_png(const char *path, const float *imgs, int rows, int cols, int S, int scale,
                   const char *const *labels, char *err) {
    int cell = S * scale, W = PAD + cols * (cell + PAD), rowh = cell + TEXT_H + PAD;
    int H = PAD + rows * rowh;
    uint8_t *rgb = malloc((size_t)W * H * 3), *one = malloc((size_t)S * S * 3);
    if (!rgb || !one) { free(rgb); free(one); return d3_errf(err, "%s: out of memory", path); }
    memset(rgb, 255, (size_t)W * H * 3);
    size_t D = 3 * (size_t)S * S;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            image_to_rgb(one, imgs + ((size_t)r * cols + c) * D, S, S);
            int ox = PAD + c * (cell + PAD), oy = PAD + r * rowh;
            for (int y = 0; y < cell; y++)
                for (int x = 0; x < cell; x++)
                    memcpy(rgb + ((size_t)(oy + y) * W + ox + x) * 3,
                           one + ((size_t)(y / scale) * S + x / scale) * 3, 3);
        }
        static const uint8_t black[3] = {0, 0, 0};
        if (plot_draw_text(rgb, W, H, PAD, PAD + r * rowh + cell + 13, 12, 0, black, labels[r], err) < 0) {
            free(rgb); free(one);
            return -1;
        }
    }
    int rc = png_write_rgb(path, rgb, W, H, err);
    free(rgb);
    free(one);
    return rc;
}
