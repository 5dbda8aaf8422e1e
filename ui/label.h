/* label.h - the labeling screen: two images of one prompt from one starting
 * noise, a keystroke for the better one, the engine thread training
 * between rounds. One file per screen (ncdu style): label_run() owns the
 * curses session and the main loop; the engine and the session store do
 * the work. */
#ifndef D3PO_LABEL_H
#define D3PO_LABEL_H
#include "config.h"
#include "session.h"

/* Runs the screen on an open session until the person quits. graphics:
 * "auto", "sixel" or "blocks" (NULL: the config's). round_size > 0
 * overrides the config. Returns the exit status (0 ok, 2 error). */
int label_run(d3_session *s, const d3_config *c, const char *graphics, int round_size);
#endif
