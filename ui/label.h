/* label.h - the labeling screen: two images of one prompt from one starting
 * noise, a keystroke for the better one, the engine thread training
 * between rounds. One file per screen (ncdu style): label_run() owns the
 * curses session and the main loop; the engine and the session store do
 * the work. */
#ifndef D3PO_LABEL_H
#define D3PO_LABEL_H
#include "backend.h"
#include "config.h"
#include "session.h"

/* Runs the screen on an open session until the person quits. graphics:
 * "auto", "sixel" or "blocks" (NULL: the config's). round_size > 0
 * overrides the config. be: the backend the engine computes on (its name
 * is in the header); device_note (may be NULL): the choice and, when auto
 * fell back to the CPU, why, shown in the status line at start-up.
 * Returns the exit status (0 ok, 2 error). */
int label_run(d3_session *s, const d3_config *c, const char *graphics, int round_size,
              const d3_backend *be, const char *device_note);
#endif
