/* image.h - image files: model tensors [3,S,S] in [-1,1] to and from 8-bit
 * RGB PNG (libpng), written atomically. */
#ifndef D3PO_IMAGE_H
#define D3PO_IMAGE_H
#include <stdint.h>
#include "err.h"

/* x: [3,H,W] floats in [-1,1] -> rgb [H*W*3] bytes (round, clamp). */
void image_to_rgb(uint8_t *rgb, const float *x, int H, int W);
/* Writes an RGB8 PNG atomically. 0 or -1 with err naming the path. */
int png_write_rgb(const char *path, const uint8_t *rgb, int W, int H, char *err);
/* Reads any PNG as RGB8 (alpha composited on white). *rgb is malloc'd. */
int png_read_rgb(const char *path, uint8_t **rgb, int *W, int *H, char *err);
/* Reads a PNG or JPEG (by its magic bytes) as RGB8. *rgb is malloc'd. */
int image_read_rgb(const char *path, uint8_t **rgb, int *W, int *H, char *err);
/* Centre-crops src [H][W][3] to a square and resizes it to S x S with area
 * averaging (each output pixel is the mean of the source area it covers,
 * fractional pixels weighted), writing floats [3,S,S] in [-1,1]. */
void image_to_tensor(float *x, const uint8_t *src, int W, int H, int S);
#endif
