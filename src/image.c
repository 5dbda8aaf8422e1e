/* image.c - PNG reading and writing with libpng (see image.h). PNGs are
 * encoded into memory and then written with fs_write_atomic, so a crash
 * never leaves half an image behind. */
#include "image.h"

#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
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

typedef struct {
    struct jpeg_error_mgr mgr;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} jerr_t;

static void jpeg_fail(j_common_ptr c) {
    jerr_t *e = (jerr_t *)c->err;
    (*c->err->format_message)(c, e->msg);
    longjmp(e->jb, 1);
}

static int jpeg_read_rgb(const char *path, uint8_t **out, int *W, int *H, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return d3_errf(err, "%s: cannot open: %m", path);
    struct jpeg_decompress_struct c;
    jerr_t je;
    uint8_t *volatile buf = NULL;
    c.err = jpeg_std_error(&je.mgr);
    je.mgr.error_exit = jpeg_fail;
    if (setjmp(je.jb)) {
        jpeg_destroy_decompress(&c);
        fclose(f);
        free(buf);
        return d3_errf(err, "%s: corrupt JPEG: %s", path, je.msg);
    }
    jpeg_create_decompress(&c);
    jpeg_stdio_src(&c, f);
    jpeg_read_header(&c, TRUE);
    c.out_color_space = JCS_RGB;
    jpeg_start_decompress(&c);
    if (c.output_width == 0 || c.output_height == 0 || c.output_width > 16384 ||
        c.output_height > 16384 || c.output_components != 3) {
        jpeg_destroy_decompress(&c);
        fclose(f);
        return d3_errf(err, "%s: JPEG size %ux%u outside 1..16384", path, c.output_width, c.output_height);
    }
    buf = malloc((size_t)c.output_width * c.output_height * 3);
    if (!buf) { jpeg_destroy_decompress(&c); fclose(f); return d3_errf(err, "%s: out of memory", path); }
    while (c.output_scanline < c.output_height) {
        JSAMPROW row = buf + (size_t)c.output_scanline * c.output_width * 3;
        jpeg_read_scanlines(&c, &row, 1);
    }
    *W = (int)c.output_width;
    *H = (int)c.output_height;
    jpeg_finish_decompress(&c);
    jpeg_destroy_decompress(&c);
    fclose(f);
    *out = buf;
    return 0;
}

int image_read_rgb(const char *path, uint8_t **rgb, int *W, int *H, char *err) {
    unsigned char magic[8] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return d3_errf(err, "%s: cannot open: %m", path);
    size_t n = fread(magic, 1, sizeof magic, f);
    fclose(f);
    if (n >= 8 && !memcmp(magic, "\x89PNG\r\n\x1a\n", 8)) return png_read_rgb(path, rgb, W, H, err);
    if (n >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF)
        return jpeg_read_rgb(path, rgb, W, H, err);
    return d3_errf(err, "%s: neither a PNG nor a JPEG file", path);
}

void image_to_tensor(float *x, const uint8_t *src, int W, int H, int S) {
    int side = W < H ? W : H, x0 = (W - side) / 2, y0 = (H - side) / 2;
    double scale = (double)side / S; /* source pixels per output pixel */
    size_t SS = (size_t)S * S;
    for (int oy = 0; oy < S; oy++)
        for (int ox = 0; ox < S; ox++) {
            double sy0 = oy * scale, sy1 = sy0 + scale, sx0 = ox * scale, sx1 = sx0 + scale;
            double acc[3] = {0, 0, 0}, wsum = 0;
            for (int sy = (int)sy0; sy < (int)ceil(sy1) && sy < side; sy++) {
                double wy = fmin(sy + 1, sy1) - fmax(sy, sy0);
                for (int sx = (int)sx0; sx < (int)ceil(sx1) && sx < side; sx++) {
                    double w = wy * (fmin(sx + 1, sx1) - fmax(sx, sx0));
                    const uint8_t *p = src + ((size_t)(y0 + sy) * W + x0 + sx) * 3;
                    for (int c = 0; c < 3; c++) acc[c] += w * p[c];
                    wsum += w;
                }
            }
            for (int c = 0; c < 3; c++)
                x[c * SS + (size_t)oy * S + ox] = (float)(acc[c] / wsum / 127.5 - 1.0);
        }
}
