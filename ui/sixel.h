/* sixel.h - images as sixel bytes, ready to write to the tty.
 *
 * Encoding goes through libsixel into a memory buffer; the UI caches the
 * bytes per image (encode off the UI thread: a 256x256 image takes a few
 * milliseconds) and writes them after curses' doupdate():
 *
 *   unsigned char *six; size_t n;
 *   sixel_encode_rgb(rgb, w, h, 256, 0, &six, &n, err);     // once per image
 *   if (caps.tmux_passthrough) sixel_wrap_tmux(six, n, &six2, &n2, err);
 *   size_t need = sixel_place(NULL, 0, y, x, six, n);        // each redraw
 *   unsigned char *b = malloc(need); sixel_place(b, need, y, x, six, n);
 *   write(tty_fd, b, need);
 *
 * The bytes go to the tty with write(2), NEVER through putp()/tputs():
 * those read "$<...>" as a padding request and would eat part of the data.
 * Keep the image's cells blank in curses and off the last screen row (a
 * sixel reaching the bottom scrolls the screen). */
#ifndef D3PO_SIXEL_H
#define D3PO_SIXEL_H
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* tmux drops passthrough sequences over 1 MiB. */
#define SIXEL_TMUX_MAX (1u << 20)

/* Encodes rgb [h][w][3] as one complete sixel image: ESC P ... q, palette,
 * data, ESC \ (7-bit controls). colors: palette size 2..256 (fewer colours
 * mean fewer bytes over SSH). dither: 1 for Floyd-Steinberg error diffusion,
 * 0 for none (faster, smaller, and stable between frames). *out is malloc'd
 * (caller frees), *len its length. 0, or -1 with err. */
int sixel_encode_rgb(const uint8_t *rgb, int w, int h, int colors, int dither, unsigned char **out,
                     size_t *len, char *err);

/* Nearest-neighbour upscale by an integer factor >= 1: src [h][w][3] into
 * dst [h*factor][w*factor][3], which the caller provides. A 32x32 model
 * image shown in 8x8-pixel blocks keeps its pixels sharp. */
void sixel_upscale_nearest(uint8_t *dst, const uint8_t *src, int w, int h, int factor);

/* Area-average downscale: src [h][w][3] into dst [dh][dw][3] (dw <= w,
 * dh <= h, both >= 1), each output pixel the mean of the source pixels it
 * covers (fractional edges weighted). A 512x512 Stable Diffusion image
 * shown in a 40-column panel stays smooth instead of aliasing. */
void sixel_downscale_area(uint8_t *dst, int dw, int dh, const uint8_t *src, int w, int h);

/* Wraps a sixel payload for tmux older than 3.4 (which needs
 * `set -g allow-passthrough on` from 3.3): ESC P tmux ; payload with every
 * ESC doubled ; ESC \. *out is malloc'd. 0, or -1 with err when the result
 * would exceed SIXEL_TMUX_MAX (tmux would drop it) or memory runs out. */
int sixel_wrap_tmux(const unsigned char *in, size_t len, unsigned char **out, size_t *outlen,
                    char *err);

/* Builds the bytes that draw payload at a cell: ESC 7 (save cursor),
 * ESC [ row+1 ; col+1 H, payload, ESC 8 (restore cursor). row and col are
 * 0-based like curses' move(y, x). Returns the full length; writes into
 * buf only when cap is at least that (a cut sixel is useless), so call once
 * with buf NULL to size the buffer. Nothing is NUL-terminated:
 * the payload is bytes. Any payload fits (half-block rows too). */
size_t sixel_place(unsigned char *buf, size_t cap, int row, int col, const unsigned char *payload,
                   size_t len);
#endif
