/* labeler.h - the external labeler protocol (documented in d3po(1)):
 * d3po starts CMD once (sh -c CMD) and keeps it running; for each pair it
 * writes one line to the program's stdin
 *     <pair-id>\t<prompt>\t<path to PNG A>\t<path to PNG B>\n
 * and reads one line back: "A", "B", "tie" or "skip" (surrounding blanks
 * and a CR are ignored). Anything else, the program exiting, or no answer
 * within the timeout is an error naming the command and what it said; the
 * labels already given stay saved (the caller journals each answer before
 * asking the next).
 *
 *   d3_labeler *l = labeler_start("python3 judge.py", 30000, err);
 *   int choice;
 *   if (labeler_ask(l, id, "smiling face", pa, pb, &choice, err)) ...;
 *   labeler_stop(l);
 */
#ifndef D3PO_LABELER_H
#define D3PO_LABELER_H
#include "err.h"

typedef struct d3_labeler d3_labeler;

/* Starts the command; timeout_ms bounds each answer. NULL with err. */
d3_labeler *labeler_start(const char *cmd, int timeout_ms, char *err);
/* Asks about one pair; *choice = SESSION_A/B/TIE/SKIP. 0, or -1 with err
 * ("labeler 'CMD' answered 'maybe' for pair 12; expected A, B, tie or
 * skip", "... exited with status 3", "... gave no answer within 30 s"). */
int labeler_ask(d3_labeler *l, long id, const char *prompt, const char *png_a,
                const char *png_b, int *choice, char *err);
/* Closes its stdin, waits briefly, kills it if needed, reaps it. */
void labeler_stop(d3_labeler *l);
#endif
