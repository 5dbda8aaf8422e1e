/* groups.h - groups of k images on disk: the paper's distortion workflow
 * (several images of one prompt from one x_T; the person marks each good
 * or bad; the group becomes every pair with different marks, good beating
 * bad). The labeling screen's grid mode (ui/gridview.c) shows them, the
 * round driver (src/rounds.c) saves them and trains their pairs, and
 * `d3po session info/check` and `d3po export --format scores` read them.
 * A group store lives inside a session directory and under its lock.
 *
 * LAYOUT (inside the session directory DIR)
 *   DIR/groups/NNNNNN.traj  the group's k trajectories: a trajectory file of
 *                           format 2 (session.h) with N = k, 3 <= k <= 8
 *   DIR/groups/NNNNNN-I.png image I (0 .. k-1) as shown
 *   DIR/groups.jsonl        append-only journal, one JSON object a line,
 *                           fsync'd before the next group shows:
 *     {"group":3,"marks":"gb-b","time":1764112345.123,"version":2}
 *         the marks of group 3, one character per image: g good, b bad,
 *         - unmarked; a new line for the same group replaces its marks
 *     {"group":3,"marks":"skip","time":...,"version":2}   skipped
 *     {"group":3,"undo":true,"time":...}
 *         cancels the newest decision not yet undone (which was on group 3)
 *                           A torn last line (a crash mid-write) is ignored
 *                           and cut off before the next append; any other
 *                           bad line is reported as FILE:LINE and skipped.
 *   DIR/rounds/NNNN.groups  the groups round N trained on, one line each:
 *                           {"group":3,"marks":"gb-b"}; written atomically
 *                           before the round trains, counted once LATEST
 *                           reaches round N (like rounds/NNNN.labels)
 *
 * USAGE
 *   d3_groups g;
 *   groups_open(s.dir, s.round, 0, &g, err);     // after session_open
 *   groups_add(&g, &traj, rgb, img_h, img_w, &id, err);  // k images -> disk
 *   groups_decide(&g, id, "gb-b", version, err);  // durable on return
 *   int pairs[GROUPS_MAX_PAIRS][2];
 *   int n = groups_pairs("gb-b", pairs);          // (0,1), (0,3): good beats bad
 *   groups_undo(&g, &id, err);
 *   groups_close(&g);
 * Functions that can fail return 0 or -1 with err naming the file (and
 * line) and what was expected. */
#ifndef D3PO_GROUPS_H
#define D3PO_GROUPS_H
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "session.h"

#define GROUPS_MIN_K 3
#define GROUPS_MAX_K 8
#define GROUPS_MAX_PAIRS 16 /* k = 8, 4 good and 4 bad */
#define GROUPS_MARKS_LEN 12 /* "skip", or k marks, with the NUL */
#define GROUPS_MAX_WARN 8

/* the marks of one image */
enum { GROUP_UNMARKED = '-', GROUP_GOOD = 'g', GROUP_BAD = 'b' };

typedef struct {
    long group;
    char marks[GROUPS_MARKS_LEN]; /* what the decision set */
    char prev[GROUPS_MARKS_LEN];  /* what it replaced ("" none) */
} groups_decision;

typedef struct {
    char *dir;           /* the session directory */
    int readonly;
    int fd;              /* groups.jsonl, -1 read-only */
    size_t journal_len;  /* bytes of complete lines */
    int journal_torn;
    long cap, next;      /* next: the id groups_add gives */
    unsigned char *present;             /* [cap] groups/NNNNNN.traj exists */
    char (*marks)[GROUPS_MARKS_LEN];    /* [cap] effective decision, "" none */
    char (*trained)[GROUPS_MARKS_LEN];  /* [cap] marks a trained round used, "" none */
    groups_decision *stack;             /* decisions not undone, oldest first */
    long nstack, stack_cap;
    long nlines, nundone; /* journal records read/written; undos applied */
    int nwarn;
    char warn[GROUPS_MAX_WARN][D3_ERRLEN];
} d3_groups;

/* Opens the groups of session directory dir whose checkpoint in use is
 * round `round` (rounds/NNNN.groups up to it count as trained): scans
 * groups/, replays groups.jsonl (bad lines become warnings in g->warn,
 * FILE:LINE: why). readonly: nothing is written (info, export). A session
 * without groups opens empty; groups/ and the journal are made by the
 * first groups_add / groups_decide. */
int groups_open(const char *dir, int round, int readonly, d3_groups *g, char *err);
void groups_close(d3_groups *g);

/* Checks every journal line as groups_open replays it; each bad line (and
 * a torn tail) goes to report as "FILE:LINE: why". With repair (the
 * session's lock held), the bad lines are appended to groups.jsonl.bad
 * (fsync'd) and the journal is rewritten without them atomically: nothing
 * is deleted and the marks the session replays do not change. Returns how
 * many bad lines, or -1 with err. */
int groups_check(const char *dir, int repair, void (*report)(void *ctx, const char *problem),
                 void *ctx, char *err);
/* Renames groups/NNNNNN.traj to .traj.bad (a damaged group set aside, not
 * deleted); its journal lines then no longer replay (a repair moves them
 * to groups.jsonl.bad). */
int groups_set_aside(const d3_groups *g, long id, char *err);

/* Writes group t (t->N = k images, 3..8) with its images rgb[i]
 * [img_h][img_w][3]: the PNGs, then the trajectory file atomically. *id
 * gets its id. */
int groups_add(d3_groups *g, const session_traj *t, const uint8_t *const *rgb, int img_h,
               int img_w, long *id, char *err);
/* groups/NNNNNN.traj, groups/NNNNNN-I.png (i < 0: the .traj). */
char *groups_path(const d3_groups *g, long id, int i, char *out, size_t n);
/* Reads group id's trajectories (session_read_traj_n; free with
 * session_traj_free). */
int groups_load(const d3_groups *g, long id, session_traj *t, char *err);

/* Journals a decision on group id: marks is "skip" or one of g, b, - per
 * image (as many as the group has: k is checked against the file when
 * given, k = 0 skips the check). Durable (fsync) on return. */
int groups_decide(d3_groups *g, long id, const char *marks, int k, int version, char *err);
/* Cancels the newest decision not yet undone; *id gets its group. -1 when
 * there is nothing to undo. */
int groups_undo(d3_groups *g, long *id, char *err);

/* The effective decision of group id: "" none, "skip", or the marks. */
const char *groups_marks(const d3_groups *g, long id);
/* The smallest existing group id >= from without a decision, -1 if none. */
long groups_next_undecided(const d3_groups *g, long from);

/* The pairs a group's marks make: every (good i, bad j), good first, in
 * order of i then j. Returns how many (0 for "skip", all good, all bad,
 * or nothing marked). */
int groups_pairs(const char *marks, int pairs[GROUPS_MAX_PAIRS][2]);

/* 1 when group id's decision makes pairs and no trained round used these
 * marks yet (it goes into the next round). */
int groups_pending(const d3_groups *g, long id);
/* 1 when a trained round used group id's current marks. */
int groups_trained(const d3_groups *g, long id);
/* Writes rounds/NNNN.groups (atomically): the n groups (ids, marks as
 * now) round `round` trains on. */
int groups_write_round(d3_groups *g, int round, const long *ids, int n, char *err);
/* After the round's checkpoint is saved: those marks count as trained. */
void groups_mark_trained(d3_groups *g, const long *ids, const char (*marks)[GROUPS_MARKS_LEN],
                         int n);

typedef struct {
    long groups;          /* sampled (.traj files) */
    long decided, skipped, undecided;
    long good, bad, unmarked; /* images of decided groups */
    long pairs;           /* pairs the decided groups make */
    long pairs_trained, pairs_pending;
    long undone, journal_lines;
} groups_stats;
void groups_info(const d3_groups *g, groups_stats *st);
#endif
