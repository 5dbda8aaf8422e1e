/* grid.c - labeled sample grids (see grid.h). */
#include "grid.h"

#include <ft2build.h>
#include FT_FREETYPE_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

#define GRID_FONT "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
#define PAD 4
#define TEXT_H 18

/* Draws UTF-8 text in black at (x, baseline y) into rgb [H][W][3],
 * clipped to max_w pixels; returns -1 if the font is missing. */
static int draw_text(uint8_t *rgb, int W, int H, int x0, int y0, int max_w, const char *s, char *err) {
    FT_Library lib;
    FT_Face face;
    if (FT_Init_FreeType(&lib)) return d3_errf(err, "FreeType initialisation failed");
    if (FT_New_Face(lib, GRID_FONT, 0, &face)) {
        FT_Done_FreeType(lib);
        return d3_errf(err, "%s: cannot load the label font (install fonts-dejavu-core)", GRID_FONT);
    }
    FT_Set_Pixel_Sizes(face, 0, 12);
    int pen = x0;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        /* decode one UTF-8 code point (invalid bytes become '?') */
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
        if (cp < 0x20) cp = '?';
        if (FT_Load_Char(face, cp, FT_LOAD_RENDER)) continue;
        FT_GlyphSlot g = face->glyph;
        if (pen + (int)(g->advance.x >> 6) > x0 + max_w) break;
        for (unsigned r = 0; r < g->bitmap.rows; r++)
            for (unsigned c = 0; c < g->bitmap.width; c++) {
                int x = pen + g->bitmap_left + (int)c, y = y0 - g->bitmap_top + (int)r;
                if (x < 0 || y < 0 || x >= W || y >= H) continue;
                int a = g->bitmap.buffer[r * g->bitmap.pitch + c];
                uint8_t *px = rgb + ((size_t)y * W + x) * 3;
                for (int k = 0; k < 3; k++) px[k] = (uint8_t)(px[k] * (255 - a) / 255);
            }
        pen += (int)(g->advance.x >> 6);
    }
    FT_Done_Face(face);
    FT_Done_FreeType(lib);
    return 0;
}

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
        if (draw_text(rgb, W, H, PAD, PAD + r * rowh + cell + 13, W - 2 * PAD, labels[r], err)) {
            free(rgb); free(one);
            return -1;
        }
    }
    int rc = png_write_rgb(path, rgb, W, H, err);
    free(rgb);
    free(one);
    return rc;
}
