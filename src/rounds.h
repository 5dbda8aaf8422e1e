/* rounds.h - the round driver: the one flow of a labeling session, below
 * both the labeling screen (ui/label.c) and `d3po auto` (src/cmd_auto.c),
 * so the two cannot drift apart (STYLE.md habit 9). It picks the prompts,
 * asks the engine thread for pairs, writes each pair to the session before
 * anyone judges it, journals decisions, decides when a round is due,
 * collects the round's labels (every label no trained round used yet:
 * labels journaled before a resume, a cancelled round's, history edits of
 * trained pairs), trains it on the engine and marks the labels trained once
 * the engine's checkpoint hook has saved the round.
 *
 * CONTRACT
 *   - A round is due when no round is training and the session holds at
 *     least round_size labels (A, B, tie) that no trained round used with
 *     their current choice; rounds_train_now starts one with fewer.
 *   - Labels made while a round trains go into the next round.
 *   - Prompts are strings (the session's prompt set, prompts.json; else
 *     the config's session.prompts; else every class of the model). The
 *     q-th pair of the session uses entry q of the weighted cycle, so every
 *     prompt comes up within one cycle, across resumes. Prompt -> class id
 *     happens here, at the model's edge, and nowhere above.
 *   - With opts.overlap the engine keeps sampling pairs from the model in
 *     force while a round trains (the screen: nobody waits); with
 *     opts.on_policy the driver asks only for the pairs the current round
 *     still needs, and the next round's pairs come from its new model
 *     (auto: on-policy rounds, reproducible curves).
 *
 * USAGE (single thread; the engine runs on its own)
 *   rounds_opts o = rounds_opts_default(&cfg);
 *   rounds *d = rounds_start(&s, &cfg, be, &o, err);
 *   rounds_top_up(d, held);                     // held: undecided pairs you hold
 *   poll(rounds_fd(d)) ...
 *   rounds_event ev;
 *   while (rounds_poll(d, &ev)) {
 *       if (ev.kind == RV_PAIR) { show or judge ev.pair (pair ev.id on disk) }
 *       rounds_event_free(&ev);
 *   }
 *   rounds_decide(d, id, choice, version, err); // journaled; starts a round when due
 *   rounds_status st; rounds_get_status(d, &st);
 *   rounds_stop(d);
 */
#ifndef D3PO_ROUNDS_H
#define D3PO_ROUNDS_H
#include <stdint.h>

#include "backend.h"
#include "config.h"
#include "engine.h"
#include "groups.h"
#include "session.h"

#define ROUNDS_MAX_PAIRS 4096 /* labels one round trains on; more wait for the next */

typedef struct {
    int round_size;   /* labels that make a round due */
    int queue_depth;  /* pairs sampled ahead of the judge */
    int overlap;      /* sample from the model in force while a round trains */
    int on_policy;    /* ask only for the pairs the current round needs */
    int drift_every;  /* every N-th pair also carries base log-probs (0: none) */
    uint64_t seed;    /* which pairs: their x_T seeds (auto's --seed) */
    int max_rounds;   /* rounds to start (0: no limit) */
} rounds_opts;

/* round_size and queue_depth from the config; overlap on, drift every 4th. */
rounds_opts rounds_opts_default(const d3_config *c);

typedef enum {
    RV_PAIR,     /* a new pair is on disk as ev.id; ev.pair is the receiver's */
    RV_EXTRA,    /* a pair asked with rounds_extra (not on disk); ev.tag */
    RV_PROGRESS, /* the status changed (training progress, a round started) */
    RV_TRAINED,  /* round ev.round is saved; model ev.version; ev.loss; ev.nlabels */
    RV_ERROR,    /* ev.msg: the engine or the session failed */
    RV_GROUP     /* a new group of k images is on disk as group ev.id; ev.pair
                    (n = k trajectories) is the receiver's */
} rounds_ev_kind;

typedef struct {
    rounds_ev_kind kind;
    long id;
    d3_pair_sample *pair;
    uint64_t tag;
    int round, nlabels;
    long version;
    double loss;
    char msg[D3_ERRLEN];
} rounds_event;

/* What is really happening, for the screen's header and status line. */
typedef struct {
    int training;        /* a round is training */
    int train_round;     /* its number */
    int train_nlabels;   /* labels it trains on */
    int train_i, train_n; /* steps done / all */
    double train_eta_s;  /* estimated seconds left (NAN: not yet known) */
    double train_loss;   /* mean loss of the newest step (NAN: none) */
    long version;        /* the model in force: pairs sampled now come from it */
    int round;           /* the round being labeled (the next to train) */
    int pending;         /* labels that go into that round */
    int round_size;
    int inflight;        /* pairs asked of the engine, not yet here */
    int rounds_trained;  /* rounds this driver trained */
    long labels_trained, labels_untrained; /* over the whole session */
    const char *next_prompt; /* the prompt of the next pair asked for */
    int inflight_groups; /* groups asked of the engine, not yet here */
} rounds_status;

typedef struct rounds rounds;

/* Loads the session's policy (and base model), builds the prompt cycle,
 * starts the engine on backend be. Warnings (unknown prompts, no drift
 * measure) are added to s->warn, and so are later ones (a damaged pair
 * file left out of a round): callers show s->warn. NULL with err on
 * failure. */
rounds *rounds_start(d3_session *s, const d3_config *c, const d3_backend *be, const rounds_opts *o,
                     char *err);
/* Readable when engine events wait. */
int rounds_fd(const rounds *d);
/* Handles one engine event; 1 with *ev filled, 0 when none is waiting. */
int rounds_poll(rounds *d, rounds_event *ev);
void rounds_event_free(rounds_event *ev);
/* Asks the engine for pairs: up to queue_depth ahead counting the held
 * undecided pairs the caller holds (on_policy: at most what the round
 * still needs). */
void rounds_top_up(rounds *d, int held);
/* Journals a decision (session_label) made while `version` was shown,
 * then starts a round when one is due. 0, or -1 with err (the label is
 * not saved). A decision on a pair already decided is a history edit. */
int rounds_decide(rounds *d, long id, int choice, int version, char *err);
/* Undoes the newest decision (session_undo); *id gets its pair. */
int rounds_undo(rounds *d, long *id, char *err);
/* Starts a round with the pending labels now (the screen's "train"); 0
 * started, 1 nothing to do (a round is training, or no label pending; err
 * says which), -1 error. */
int rounds_train_now(rounds *d, char *err);
/* Starts a round if one is due; 1 when one started. */
int rounds_check_due(rounds *d, char *err);
void rounds_get_status(rounds *d, rounds_status *st);

/* Groups of k (the screen's grid mode; src/groups.h): a group's marks
 * make every (good, bad) pair, and those pairs count and train like
 * labeled pairs (a round's "labels" are pairs). The store is opened by
 * rounds_start on the session's directory. */
d3_groups *rounds_groups(rounds *d);
/* Asks the engine for groups of k images (3..8) of the next prompt of
 * the cycle, from one x_T each: up to 2 ahead counting the held undecided
 * groups the caller holds. They come back as RV_GROUP, on disk. */
void rounds_top_up_groups(rounds *d, int k, int held);
/* Journals a group's marks (groups_decide; "skip" or one of g, b, - per
 * image), then starts a round when one is due. 0, or -1 with err. */
int rounds_decide_group(rounds *d, long id, const char *marks, int k, int version, char *err);
/* Undoes the newest group decision (groups_undo); *id gets its group. */
int rounds_undo_group(rounds *d, long *id, char *err);

/* Prompts. */
int rounds_nprompts(const rounds *d);            /* distinct prompts in the cycle */
const char *rounds_prompt(const rounds *d, int i); /* i-th prompt of the set */
/* The prompt of new pairs: one of the set (or any class name), NULL: the
 * set in turn; saved in the session (prompts.json). On a family of
 * free-text prompts (sd) a prompt not in the set joins it first (weight 1,
 * prompts.json rewritten atomically before any pair uses it). */
int rounds_fix_prompt(rounds *d, const char *prompt, char *err);
const char *rounds_fixed_prompt(const rounds *d);
/* The prompt of a pair: its text (sd family), else its class's name. */
const char *rounds_pair_prompt(const rounds *d, const d3_pair_sample *p);
/* The prompt text of a pair's class id (the model's class name; "?"). */
const char *rounds_prompt_of(const rounds *d, int cls);
/* Asks for a pair outside the rounds (auto's evaluation samples): prompt
 * i of the set (modulo its size), seed, with the base log-probs when drift; it
 * comes back as RV_EXTRA with tag, from the model after the jobs queued
 * before it. */
void rounds_extra(rounds *d, int i, uint64_t seed, int drift, uint64_t tag);
/* Reads pair id back from the session as an engine pair sample (for
 * queued pairs after a resume, or history). NULL with err. */
d3_pair_sample *rounds_load_pair(const d3_session *s, long id, char *err);
/* Reads a prompt file (one prompt a line, optionally PROMPT<TAB>WEIGHT
 * with WEIGHT 1..100; empty lines and lines starting with '#' skipped) and
 * makes it the session's prompt set (prompts.json; the fixed prompt is
 * kept). Errors name FILE:LINE. */
int rounds_prompts_file(d3_session *s, const char *path, char *err);
/* The parser alone: *p (n malloc'd strings, the array malloc'd too) and
 * *w (weights); the caller frees them. */
int rounds_read_prompt_file(const char *path, char ***p, int **w, int *n, char *err);
/* The backend's name (for headers, metrics). */
const char *rounds_device(const rounds *d);
/* The sampler settings the engine samples and trains with: the config's,
 * the guidance resolved for the model family or kept from the session's
 * pairs (config_cfg; driver_engine_opts in rounds.c). */
ddim_opts rounds_sampling(const rounds *d);
/* Stops the engine (a round in training is cancelled: its labels stay
 * pending and train in the next round, in this run or after a resume). */
void rounds_stop(rounds *d);
#endif
