/* evaltui.h - the blind A/B screen of `d3po eval --tui`: a person judges
 * pairs of images (one from the base model, one from the tuned model, the
 * side shuffled and hidden) with the labeling screen's keys, then sees the
 * result and, only then, which side each model was on.
 *
 *   evaltui_pair p[n] = {{.prompt = "fruit", .rgb = {a, b}}, ...};
 *   int choice[n];        // out: SESSION_A/B/TIE/SKIP, or -1 (not judged)
 *   evaltui_run(&cfg, NULL, p, n, W, H, tuned_is_a, choice, err);
 */
#ifndef D3PO_EVALTUI_H
#define D3PO_EVALTUI_H
#include <stdint.h>

#include "config.h"

typedef struct {
    const char *prompt;
    const uint8_t *rgb[2]; /* images A and B, [H][W][3] */
} evaltui_pair;

/* The result line the screen shows at the end (wins of the tuned model,
 * win rate with ties as half, Wilson 95% interval). */
typedef struct {
    long wins, losses, ties, skips;
    double rate, lo, hi;
} evaltui_result;

/* Counts the choices (-1: not judged, left out) against the hidden sides. */
void evaltui_count(const int *choice, const int *tuned_is_a, int n, evaltui_result *r);

/* 0 when a terminal (/dev/tty) can be opened, else -1 with err. */
int evaltui_available(char *err);

/* Runs the screen until every pair is judged or the person quits (the
 * pairs judged so far count). graphics: "auto", "sixel", "blocks" or NULL
 * (the config's). It draws on /dev/tty, so standard output may be a file
 * or a pipe. Returns 0, or -1 with err. */
int evaltui_run(const d3_config *c, const char *graphics, const evaltui_pair *p, int n, int W,
                int H, const int *tuned_is_a, int *choice, char *err);
#endif
