/* label.h - the labeling screen: two images of one prompt from one starting
 * noise, a keystroke for the better one, the engine thread training
 * between rounds. One file per screen (ncdu style): label_run() owns the
 * curses session and the main loop; the engine and the session store do
 * the work. */
#ifndef D3PO_LABEL_H
#define D3PO_LABEL_H
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"
#include "session.h"
#include "term.h"

/* Runs the screen on an open session until the person quits. graphics:
 * "auto", "sixel" or "blocks" (NULL: the config's). round_size > 0
 * overrides the config. be: the backend the engine computes on (its name
 * is in the header); device_note (may be NULL): the choice and, when auto
 * fell back to the CPU, why, shown in the status line at start-up.
 * Returns the exit status (0 ok, 2 error). */
int label_run(d3_session *s, const d3_config *c, const char *graphics, int round_size,
              const d3_backend *be, const char *device_note);

/* Shared with the other screens (evaltui.c): */
/* Encodes a W x H RGB image to fit the cell box (top, left, w, h) in the
 * drawing mode (sixel, or half blocks), aspect kept, cursor placement
 * included, ready to write to the tty after curses' doupdate(). Sixel: an
 * image smaller than the box is enlarged by the largest whole factor
 * (sharp pixels), a larger one shrunk by area averaging to fit. 0, or -1
 * (*out NULL). */
int label_encode_image(term_mode mode, const term_caps *caps, int colors, const uint8_t *rgb, int W,
                       int H, int top, int left, int w, int h, unsigned char **out, size_t *outlen);
/* Starts a frame: images are written around curses, which thinks their
 * cells blank, so when the view changed (view != *last_view) the whole
 * screen is repainted. Erases the screen. Returns -1 (after asking for a
 * bigger terminal) below 40x12, else whether this frame is a full repaint. */
int label_frame_begin(long view, long *last_view, int full);
/* Whether $TERM can carry the screen (set, known to terminfo, able to
 * move the cursor): 0, or -1 with err a one-line d3po message naming what
 * to do (another TERM, --graphics blocks, the headless commands) instead
 * of curses' bare "Error opening terminal". */
int label_term_check(char *err);
/* The terminal put back on exit and on signals (term_guard_install), to
 * call before curses starts; then, once it runs, label_tty_setup sets the
 * sixel modes the drawing needs (term_sixel_modes) and a short ESCDELAY.
 * term_guard_release() after endwin() puts the modes back. */
void label_tty_guard(int fd, const term_caps *caps, term_mode mode);
void label_tty_setup(int fd, const term_caps *caps, term_mode mode);
/* The name of a curses key as d3po.conf writes it ("Left", "a", "F2"), or
 * NULL for keys that have none. buf: at least 8 bytes. */
const char *label_key_name(int ch, char *buf);
#endif
