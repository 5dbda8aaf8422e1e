/* gridview.h - the labeling screen's grid mode: k images (3..8) of one
 * prompt from one starting noise, laid out rows x cols to make the images
 * as large as the terminal allows; the person marks each image good or
 * bad and submits the group, which trains as every (good, bad) pair. The
 * labeling screen (ui/label.c) owns the terminal and the main loop and
 * hands this view its area, its keys and its groups; the round driver
 * (src/rounds.c) samples, journals (src/groups.c) and trains.
 *
 * KEYS (in grid mode, before the screen's own bindings)
 *   1 .. k          cycle image i: unmarked -> good -> bad -> unmarked
 *   arrows          move the selection
 *   g  b  -         mark the selected image good, bad, unmarked
 *   B               the selected image is the best: it good, the rest bad
 *   zoom key (z)    the selected image alone, as large as the area allows
 *                   (arrows move between images; z or Escape: the grid)
 *   Enter           submit the group (journaled, fsync'd, before the next)
 *   skip key (s)    skip the group;  undo key (u): undo the last group
 *   history key (h) the decided groups, newest first, with the selected
 *                   one's images; its marks can be changed (Enter saves)
 *
 * USAGE (from the screen's loop)
 *   gridview *g = gridview_new(&env, 4);
 *   gridview_load_undecided(g);               // groups left on disk
 *   gridview_top_up(g);                       // asks the driver for groups
 *   on RV_GROUP: gridview_on_group(g, ev.id, ev.pair); ev.pair = NULL;
 *   draw: gridview_draw(g, top, left, w, h) after erase(), then after
 *         doupdate() on a full repaint gridview_draw_images(g)
 *   keys: if (gridview_key(g, ch, act, msg, n)) the key was the grid's
 *   gridview_free(g);
 */
#ifndef D3PO_GRIDVIEW_H
#define D3PO_GRIDVIEW_H
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "rounds.h"
#include "term.h"

typedef struct {
    rounds *d;
    d3_session *s;
    const d3_config *c;
    term_mode mode;
    term_caps caps;
    int colors;
} gridview_env;

typedef struct gridview gridview;

/* k: the images of new groups (3..8). NULL on out of memory. */
gridview *gridview_new(const gridview_env *env, int k);
void gridview_free(gridview *g);
int gridview_k(const gridview *g);
/* Undecided groups on disk (a resumed session) join the queue. */
void gridview_load_undecided(gridview *g);
/* Asks the round driver for groups to keep the queue full. */
void gridview_top_up(gridview *g);
/* A group the driver saved as id (p->n images); p is the view's now. */
void gridview_on_group(gridview *g, long id, d3_pair_sample *p);
/* Groups waiting (the one shown included). */
int gridview_held(const gridview *g);
/* What the view shows, for the screen's full-repaint decision. */
long gridview_view_id(const gridview *g);
/* The key footer of grid mode into out. */
void gridview_footer(const gridview *g, char *out, size_t n);

/* The layout: rows x cols tiles of w x h cells (each tile one label row
 * above its image) for k square images of S pixels, in an area of W x H
 * cells of px_w x px_h pixels (sixel: the cell size; half blocks: 1 x 2),
 * gap columns between tiles. Chooses the rows that give the largest image
 * (sixel: whole multiples of S when the tile holds S pixels; images larger
 * than a tile are scaled down to it), fewer rows on a tie. *side: the image's
 * side in pixels. 0, or -1 when not even a tile of 1 image row fits. */
int gridview_layout(int k, int W, int H, int px_w, int px_h, int S, int sixel, int gap, int *rows,
                    int *cols, int *side);

/* Draws the text (labels, prompt line, history) into the area with
 * curses; images come with gridview_draw_images after doupdate(). */
void gridview_draw(gridview *g, int top, int left, int w, int h);
void gridview_draw_images(gridview *g);
/* Handles a key of grid mode (act: the screen's binding, -1 none); 1 when
 * it was the grid's, with a message for the message line in msg. */
int gridview_key(gridview *g, int ch, int act, char *msg, size_t n);
/* Escape: closes the group history. */
void gridview_close_views(gridview *g);
int gridview_hist_open(const gridview *g);
#endif
