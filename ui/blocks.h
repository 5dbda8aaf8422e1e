/* blocks.h - the fallback when the terminal has no sixel: Unicode upper half
 * blocks (U+2580), two pixels per cell, the top pixel in the foreground
 * colour and the bottom pixel in the background colour, in truecolor or in
 * the xterm 256-colour palette.
 *
 * The result is one byte string per text row (SGR colours + UTF-8 glyphs,
 * attributes reset at the end), written straight to the tty after curses'
 * doupdate() like a sixel, one row per cell position (sixel_place() frames a
 * row, or blocks_place() frames them all). curses itself cannot print them:
 * it would show the ESC bytes as ^[.
 *
 *   blocks_out b;
 *   int cols, rows;
 *   blocks_fit(w, h, max_cols, max_rows, &cols, &rows);
 *   if (blocks_render(rgb, w, h, TERM_MODE_BLOCKS_256, cols, rows, &b, err)) ...
 *   ... b.line[r] (b.len[r] bytes) for r < b.rows ...
 *   blocks_free(&b);
 */
#ifndef D3PO_BLOCKS_H
#define D3PO_BLOCKS_H
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "term.h"

typedef struct {
    int rows, cols;
    char **line; /* rows strings, NUL-terminated, each len[r] bytes */
    size_t *len;
} blocks_out;

/* Renders rgb [h][w][3] into a cols x rows cell area (cols x 2*rows pixels)
 * with nearest-neighbour scaling: cell (r, c) shows source pixels
 * (y = (2r) * h / (2 rows), x = c * w / cols) on top and row 2r+1 below.
 * mode: TERM_MODE_BLOCKS_TRUECOLOR or TERM_MODE_BLOCKS_256. Colour codes are
 * only sent when they change along a row. Each row ends with ESC [ 0 m.
 * 0, or -1 with err (bad size or mode, out of memory); free with
 * blocks_free, also after a failure. */
int blocks_render(const uint8_t *rgb, int w, int h, term_mode mode, int cols, int rows,
                  blocks_out *out, char *err);
void blocks_free(blocks_out *out);

/* The largest cols x rows area within max_cols x max_rows that keeps the
 * image's aspect ratio, taking a half block as a square pixel (a cell is
 * about twice as tall as wide). At least 1 x 1. */
void blocks_fit(int w, int h, int max_cols, int max_rows, int *cols, int *rows);

/* xterm 256-colour index nearest (squared RGB distance) to r,g,b among the
 * 6x6x6 cube (16..231, levels 0,95,135,...,255) and the grey ramp
 * (232..255, 8,18,...,238). The 16 system colours are never chosen: users
 * theme them. */
int blocks_xterm256(int r, int g, int b);

/* All rows framed for the tty in one buffer: ESC 7, then for each row
 * ESC [ row+r+1 ; col+1 H and the row, then ESC 8. row/col 0-based. *buf is
 * malloc'd. 0, or -1 with err when memory runs out. */
int blocks_place(const blocks_out *b, int row, int col, unsigned char **buf, size_t *len,
                 char *err);
#endif
