/* image.c - PNG reading and writing with libpng (see image.h). PNGs are
 * encoded into memory and then written with fs_write_atomic, so a crash
 * never leaves half an image behind. */
#include "image.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"

void image_to_rgb(uint8_t *rgb, const float *x, int H, int W) {
    size_t HW = (size_t)H * W;
    for (size_t p = 0; p < HW; p++)
        for (int c = 0; c < 3; c++) {
            float v = (x[c * HW + p] + 1.0f) * 127.5f + 0.5f;
            rgb[p * 3 + c] = v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)v;
        }
}

typedef struct { unsigned char *buf; size_t len, cap; int oom; } membuf;

static void mem_write(png_structp png, png_bytep data, png_size_t n) {
    membuf *m = png_get_io_ptr(png);
    if (m->oom) return;
    if (m->len + n > m->cap) {
        size_t cap = (m->cap ? m->cap * 2 : 4096);
        while (cap < m->len + n) cap *= 2;
        unsigned char *b = realloc(m->buf, cap);
        if (!b) { m->oom = 1; return; }
        m->buf = b; m->cap = cap;
    }
    memcpy(m->buf + m->len, data, n);
    m->len += n;
}
static void mem_flush(png_structp png) { (void)png; }

int png_write_rgb(const char *path, const uint8_t *rgb, int W, int H, char *err) {
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *rows = malloc(sizeof(png_bytep) * H);
    if (!png || !info || !rows) {
        png_destroy_write_struct(&png, &info);
        free(rows);
        return d3_errf(err, "%s: out of memory encoding PNG", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(rows); free(m.buf);
        return d3_errf(err, "%s: PNG encoding failed", path);
    }
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, W, H, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int y = 0; y < H; y++) rows[y] = (png_bytep)rgb + (size_t)y * W * 3;
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    if (m.oom) { free(m.buf); return d3_errf(err, "%s: out of memory encoding PNG", path); }
    const void *parts[1] = {m.buf};
    size_t lens[1] = {m.len};
    int rc = fs_write_atomic(path, parts, lens, 1, err);
    free(m.buf);
    return rc;
}

int png_read_rgb(const char *path, uint8_t **out, int *W, int *H, char *err) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&img, path))
        return d3_errf(err, "%s: not a readable PNG: %s", path, img.message);
    img.format = PNG_FORMAT_RGB; /* alpha is composited on the background below */
    if (img.width == 0 || img.height == 0 || img.width > 16384 || img.height > 16384) {
        png_image_free(&img);
        return d3_errf(err, "%s: PNG size %ux%u outside 1..16384", path, img.width, img.height);
    }
    uint8_t *buf = malloc(PNG_IMAGE_SIZE(img));
    if (!buf) { png_image_free(&img); return d3_errf(err, "%s: out of memory", path); }
    png_color white = {255, 255, 255};
    if (!png_image_finish_read(&img, &white, buf, 0, NULL)) {
        free(buf);
        return d3_errf(err, "%s: corrupt PNG: %s", path, img.message);
    }
    *out = buf;
    *W = (int)img.width;
    *H = (int)img.height;
    return 0;
}
