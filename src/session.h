/* session.h - a labeling session on disk: a directory the user can copy,
 * inspect and resume, shared by the labeling screen (`d3po label`) and the
 * headless commands (`d3po auto/train/eval/export`).
 *
 * LAYOUT (format version 1)
 *   DIR/session.json        settings the session was started with (JSON object,
 *                           written once, atomically; "format": 1)
 *   DIR/base.safetensors    the model the session started from (a copy)
 *   DIR/rounds/NNNN.safetensors
 *                           checkpoint after round N (policy weights, AdamW
 *                           state, RNG), written atomically; round 0 = base
 *   DIR/LATEST              "round N version V\n": the last good checkpoint,
 *                           replaced atomically after the checkpoint is on disk
 *   DIR/pairs/NNNNNN.traj   one sampled pair (binary, below)
 *   DIR/pairs/NNNNNN-a.png, NNNNNN-b.png   the two images as shown
 *   DIR/labels.jsonl        append-only journal, one JSON object per line:
 *     {"pair":12,"choice":"A"|"B"|"tie"|"skip"|"undo","time":1764112345.123,
 *      "version":3}
 *                           fsync'd before the caller moves on. "undo" cancels
 *                           the newest not-yet-undone decision; a changed
 *                           choice is a new line for the same pair (the last
 *                           one counts). A torn last line (crash mid-write)
 *                           is ignored on load and reported; any other bad
 *                           line is reported as FILE:LINE and skipped (and
 *                           `d3po session check --repair` moves it aside
 *                           into labels.jsonl.bad).
 *   DIR/rounds/NNNN.labels  the labels round N trained on for the first
 *                           time (with train.all_labels the round also
 *                           trains again on every earlier round's labels,
 *                           which are not repeated here), one JSON object
 *                           a line: {"pair":12,"choice":"A"}; written
 *                           atomically before the round's training starts
 *                           and counted only once LATEST reaches round N,
 *                           so a label is "trained" when the round that
 *                           used it is the session's or an earlier one and
 *                           its choice has not changed since
 *   DIR/prompts.json        the session's prompt set (optional):
 *                           {"prompts":[{"prompt":"cat","weight":2},...],
 *                            "fixed":"cat"|null}; no file, or an empty
 *                           list: every class of the model
 *   DIR/lock                flock(2)ed while a process has the session open
 *
 * STABLE DIFFUSION-FAMILY SESSIONS ("family": "sd" in session.json) keep
 * the layout above with these differences (the model is gigabytes: it is
 * referred to, never copied):
 *   session.json            also "family": "sd", "model": the pipeline's
 *                           absolute path (folder or single file),
 *                           "model_hash": "fnv1a64:<16 hex>" (session_model_hash),
 *                           "latent": [C, h, w] of every pair, and "lora":
 *                           {"rank":4,"alpha":4,"seed":0,"targets":[...],
 *                            "start":true|false} (the trainable adapters'
 *                           layout; start: they began as lora_start.safetensors)
 *   no base.safetensors     the base is the model at "model" (its hash is
 *                           checked whenever the model is loaded)
 *   DIR/lora_start.safetensors  the LoRA file the adapters started from (a
 *                           copy; only when "start" is true)
 *   DIR/rounds/NNNN.safetensors ONLY the adapters and their training state
 *                           (session_sd.h): tensors "lora.params" [numel]
 *                           (lora.h's flat layout), "adam.m", "adam.v"
 *                           [numel]; metadata "d3po.lora_layout" ("MODULES
 *                           NUMEL FNV" of the module names), "d3po.adam",
 *                           "d3po.rng" as in model checkpoints. Round 0 is
 *                           the adapters before training (written the first
 *                           time the model is loaded; no training state)
 *   pairs/NNNNNN.traj       format 2, family 1, the latents [C][h][w]
 *   pairs/NNNNNN-a.png, -b.png  the decoded images (the VAE's size)
 *   prompts.json            the prompts are free text (not classes)
 *
 * TRAJECTORY FILE, format 2 (little-endian; what d3po writes): N >= 2
 * trajectories of one prompt sampled from one shared x_T (N = 2: a pair,
 * pairs/NNNNNN.traj; the groups-of-k screen stores its k images the same
 * way with N = k):
 *   off  size
 *     0     8  magic "D3POTRJ2"
 *     8     4  u32 header bytes HB = 72 + P rounded up to a multiple of 8
 *    12     4  u32 format 2
 *    16     4  u32 K, sampling steps (1..100000)
 *    20     4  u32 N, trajectories (1..SESSION_MAX_N)
 *    24     4  i32 class id (pixel family), -1 (0xffffffff) for none
 *    28     4  u32 model version that sampled them
 *    32     8  u64 seed (x_T: stream 0 of it; trajectory i: stream 1 + i)
 *    40     4  u32 dtype (0 = float32; nothing else yet)
 *    44     4  f32 cfg
 *    48     4  f32 eta
 *    52     4  u32 C   one state x is [C][h][w], D = C*h*w
 *    56     4  u32 h   (pixel: 3 x S x S RGB; sd: the latents)
 *    60     4  u32 w
 *    64     4  u32 family: 0 pixel, 1 sd (dmodel.h)
 *    68     4  u32 P, prompt bytes (at most SESSION_TRAJ_PROMPT_MAX)
 *    72     P  the prompt, UTF-8, no NUL (pixel: the class name, or empty)
 *          ..  zero padding to HB
 *   HB         trajectories [N][K+1][C][h][w] (x_T .. x_0), then log-probs
 *              [N][K] (the sampling policy's), all float32
 * The class (24) and dtype (40) sit where format 1 has them.
 *
 * Format 1 (pairs of sessions made before format 2; still read, never
 * written): magic "D3POTRJ1", u32 header bytes (64), u32 format 1, u32 K,
 * u32 S (image side), u32 class, u32 model version, u64 seed, u32 dtype
 * (0), f32 cfg, f32 eta, zero padding to 64 bytes; then traj A
 * [K+1][3][S][S], traj B, logp A [K], logp B [K]: a pixel pair, N = 2,
 * C = 3, h = w = S, no prompt text (the class id names it).
 *
 * Reading checks magic, header size, format, dtype, dims against the file
 * size, the prompt's bytes and that every float is finite; a file that does
 * not match is an error naming the file.
 */
#ifndef D3PO_SESSION_H
#define D3PO_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"

/* USAGE
 *   d3_session s;
 *   char err[D3_ERRLEN];
 *   if (session_create("runs/cats", "base.safetensors", "{\"prompt\":\"cat\"}", err) ||
 *       session_open("runs/cats", &s, err)) { fprintf(stderr, "%s\n", err); ... }
 *   for (int i = 0; i < s.nwarn; i++) fprintf(stderr, "warning: %s\n", s.warn[i]);
 *   long id;
 *   session_add_pair(&s, &pair, rgb_a, rgb_b, &id, err);    // sampled pair -> disk
 *   session_label(&s, id, SESSION_A, s.version, err);       // durable on return
 *   session_load_policy(&s, &policy, &state, err);          // LATEST checkpoint
 *   ... train ...
 *   session_save_round(&s, &policy, &state, s.round + 1, err);
 *   session_close(&s);
 * Every function that can fail returns 0 or -1 with err naming the file
 * (and line, for the journal) and what was expected. */

#define SESSION_FORMAT 1
#define SESSION_TRAJ_HEADER 64   /* format 1 */
#define SESSION_TRAJ_HEADER2 72  /* format 2, before the prompt */
#define SESSION_TRAJ_PROMPT_MAX 4096
#define SESSION_MAX_N 16         /* trajectories in one file */
#define SESSION_FAMILY_PIXEL 0
#define SESSION_FAMILY_SD 1
#define SESSION_MAX_PAIRS 10000000L /* pair ids are 0 .. SESSION_MAX_PAIRS-1 */
#define SESSION_MAX_ROUND 9999
#define SESSION_MAX_WARN 16 /* more are counted in nwarn_dropped */
#define SESSION_MAX_PROMPTS 1024
#define SESSION_PROMPT_LEN 512

/* A decision on a pair; SESSION_NONE: no (remaining) decision. */
typedef enum {
    SESSION_NONE = -1,
    SESSION_A = 0,  /* image A preferred */
    SESSION_B = 1,  /* image B preferred */
    SESSION_TIE = 2,
    SESSION_SKIP = 3,
    SESSION_NCHOICES = 4
} session_choice;

/* "A", "B", "tie", "skip" ("none" for SESSION_NONE). */
const char *session_choice_name(int choice);

/* One sampled pair: both trajectories and the sampling policy's log-probs.
 * Filled by the caller for session_add_pair (pointers borrowed); filled by
 * session_load_pair / session_read_traj (one malloc'd block in buf). */
typedef struct {
    int K;            /* sampling steps */
    int S;            /* pixel family: image side (= h = w) */
    int C, h, w;      /* a state is [C][h][w]; 0: 3, S, S (pixel) */
    int img_h, img_w; /* session_add_pair: the PNGs' size; 0: h, w */
    int family;       /* SESSION_FAMILY_* (0: pixel) */
    int cls;          /* class id (pixel family), -1: none */
    int version;      /* model version that sampled the pair */
    uint64_t seed;
    float cfg, eta;
    char *prompt;     /* prompt text (borrowed for session_add_pair; owned
                         after a load; NULL: none, e.g. a format-1 file) */
    float *traj[2];   /* [K+1][C][h][w] each: x_T .. x_0 of image A, B */
    float *logp[2];   /* [K] each */
    void *buf;        /* owner of traj/logp after a load; NULL otherwise */
} session_pair;

/* The content of one trajectory file with N trajectories (layout above).
 * For session_write_traj the caller sets every field but buf and
 * prompt_buf (traj[i], logp[i] borrowed, i < N); session_read_traj_n
 * fills it, traj/logp pointing into buf, prompt into prompt_buf (NULL
 * when the file has none). */
typedef struct {
    int N, K, C, h, w;
    int family;         /* SESSION_FAMILY_* */
    int cls;            /* pixel: class id; -1: none */
    int version;
    uint64_t seed;
    float cfg, eta;
    const char *prompt; /* UTF-8 */
    float *traj[SESSION_MAX_N]; /* [K+1][C][h][w] each */
    float *logp[SESSION_MAX_N]; /* [K] each */
    void *buf;
    char *prompt_buf;
} session_traj;

/* Writes a format-2 file atomically (fs_write_atomic). 0/-1 with err. */
int session_write_traj(const char *path, const session_traj *t, char *err);
/* Reads and validates a format-2 or format-1 file (format 1: N = 2, pixel,
 * no prompt). Errors name path. Free with session_traj_free. */
int session_read_traj_n(const char *path, session_traj *t, char *err);
void session_traj_free(session_traj *t);
/* "pixel", "sd" ("?"), and back (-1: unknown). */
const char *session_family_name(int family);
int session_family_code(const char *name);

/* The trainable LoRA adapters of an sd-family session (session.json
 * "lora"; defaults as the official D3PO code: rank 4, alpha = rank, seed 0,
 * to_q,to_k,to_v,to_out.0). start: the adapters began as the session's
 * lora_start.safetensors (rank, alpha, targets then come from that file). */
#define SESSION_HASH_LEN 32
#define SESSION_LORA_TARGETS 256
#define SESSION_LORA_START "lora_start.safetensors"
typedef struct {
    int rank;
    float alpha;
    uint64_t seed;
    char targets[SESSION_LORA_TARGETS]; /* comma-separated module name ends */
    int start;
} session_lora;

/* One decision on the undo stack (internal, see session_undo). */
typedef struct {
    long pair;
    signed char choice, prev;
} session_decision;

/* An open session. Fields are read-only for callers. */
typedef struct {
    char *dir;
    int lock_fd, journal_fd;   /* -1 when not held / read-only */
    int readonly;
    char *settings;            /* session.json as written (JSON object text) */
    int round, version;        /* the checkpoint in use (LATEST or the fallback) */
    unet_arch arch;            /* of that checkpoint (pixel family) */
    int nclasses;
    int family;                /* SESSION_FAMILY_* */
    int lat_c, lat_h, lat_w;   /* sd family: the latent shape of its pairs */
    /* pairs and their effective labels, indexed by pair id */
    long next_pair;            /* the id session_add_pair gives next */
    long npairs;               /* .traj files present */
    long cap;
    unsigned char *present;    /* [cap] 1 when pairs/NNNNNN.traj exists */
    signed char *choice;       /* [cap] session_choice */
    signed char *trained;      /* [cap] the choice a trained round used, SESSION_NONE: none */
    /* journal replay state */
    session_decision *stack;   /* decisions not undone, oldest first */
    long nstack, stack_cap;
    long lines, undone;        /* journal records read/written; undos applied */
    size_t journal_len;        /* bytes of complete lines in labels.jsonl */
    int journal_torn;          /* a torn tail follows journal_len: cut it off before appending */
    /* the checkpoint loaded by session_open, until session_load_policy takes it */
    int have_policy;
    d3_model policy;
    d3_state state;
    /* the prompt set (prompts.json): strings, weights 1..100; n = 0: every
     * class of the model. prompt_fixed: the prompt chosen for new pairs
     * (NULL: the set in turn) */
    int nprompts;
    char **prompts;
    int *prompt_w;
    char *prompt_fixed;
    /* sd family (session.json): the model referred to, its content hash,
     * and the trainable adapters' settings */
    char *model_path;
    char model_hash[SESSION_HASH_LEN];
    session_lora lora;
    /* things session_open repaired around or skipped, one line each,
     * control characters escaped (the screen shows them; commands print
     * them as warnings) */
    int nwarn, nwarn_dropped;
    char warn[SESSION_MAX_WARN][D3_ERRLEN];
} d3_session;

/* Adds a warning line (printf format; escaped) to s->warn, or counts it in
 * nwarn_dropped when the list is full. */
void session_warn(d3_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Makes a new session in dir (created, or an empty directory): the layout
 * above, the model at model_path (checked with model_load) copied to
 * base.safetensors and rounds/0000.safetensors, LATEST "round 0 version 0",
 * an empty journal, and session.json = the settings object (JSON text, NULL
 * for {}) plus "format": 1 and "created" (unix seconds). The session is
 * built in a sibling temp directory and renamed into place, so a crash
 * leaves no half-made session. Refuses a non-empty dir (saying whether it
 * already is a session). Does not open it. */
int session_create(const char *dir, const char *model_path, const char *settings_json, char *err);

/* Makes a new Stable Diffusion-family session (layout above) for the
 * pipeline at model_path (a folder or a single file; its content hash is
 * taken here), pairs of latents [C][h][w], adapters lo (lo->start: the
 * file lora_from is copied to lora_start.safetensors). settings_json as
 * for session_create. The model is not loaded: round 0's adapters are
 * written by the first session_sd_load (session_sd.h). */
int session_create_sd(const char *dir, const char *model_path, int C, int h, int w,
                      const session_lora *lo, const char *lora_from, const char *settings_json,
                      char *err);

/* The content hash of a model for sd sessions, "fnv1a64:<16 hex digits>"
 * into out[SESSION_HASH_LEN]: FNV-1a 64 over, for each .json, .txt and
 * .safetensors file (a single file: itself; a folder: those files in it
 * and its subfolders, by relative path in byte order), the relative path,
 * the size (8 bytes, little-endian), the first and the last 128 KiB. Not a
 * copy and not a full read: a model of gigabytes hashes in milliseconds,
 * and any edit of configs, vocabulary or tensor headers, a size change or
 * a change near either end of a weights file changes it. 0/-1 with err. */
int session_model_hash(const char *model_path, char *out, char *err);

/* The embedded default model: models/default.safetensors beside the
 * working directory, else the installed copy; NULL when neither exists. */
const char *session_default_model(void);

/* Creates the session in dir (and its parent folders) unless dir already
 * is one. *model: the model a new session starts from (NULL: the default
 * model; set to the one used). Returns 1 when created, 0 when it existed,
 * -1 with err, -2 when there is no model to start from (a usage error). */
int session_ensure(const char *dir, const char **model, const char *settings_json, char *err);

/* Opens a session: takes the lock (non-blocking; a second opener gets
 * "DIR is in use by another d3po (pid N)"), checks session.json, loads the
 * checkpoint named by LATEST (falling back to the newest rounds/ file that
 * loads, with a warning, when LATEST is missing, malformed or points at a
 * file that does not load), replays labels.jsonl (a torn last line is
 * ignored with a warning; any other bad line, and a label of a pair whose
 * file is missing, is skipped with a warning "FILE:LINE: ..."), removes
 * stale temp files, reads the trained rounds' label lists and the prompt
 * set, and scans pairs/. On failure *s is left closed (nothing to free). */
int session_open(const char *dir, d3_session *s, char *err);

/* The same without the lock, for looking at a session another process may
 * have open (`d3po session info`): nothing is written, and the functions
 * that write refuse with an error. A label being appended at that moment
 * shows as a torn last line. */
int session_open_readonly(const char *dir, d3_session *s, char *err);

/* Checks every line of labels.jsonl as session_open replays it; each bad
 * line (and a torn tail) goes to report as "FILE:LINE: why". With repair
 * (a session opened for writing), the bad lines are appended to
 * labels.jsonl.bad beside it (fsync'd) and the journal is rewritten
 * without them atomically; nothing is deleted, and the labels the session
 * replays do not change. Close and reopen the session after a repair.
 * Returns the number of bad lines, or -1 with err. */
int session_check_journal(d3_session *s, int repair,
                          void (*report)(void *ctx, const char *problem), void *ctx, char *err);

/* Renames pairs/NNNNNN.traj to NNNNNN.traj.bad (a damaged pair set aside,
 * not deleted); the pair no longer exists for the session. */
int session_set_aside_pair(d3_session *s, long id, char *err);

/* Releases the lock and everything session_open allocated. */
void session_close(d3_session *s);

/* Hands over the checkpoint in use (policy weights and whatever training
 * state it holds): the copy session_open loaded the first time, a fresh
 * load from disk after that. The caller frees m (model_free) and st
 * (state_free). st may be NULL. */
int session_load_policy(d3_session *s, d3_model *m, d3_state *st, char *err);

/* Path helpers: DIR/base.safetensors, DIR/rounds/NNNN.safetensors, and the
 * files of pair id ("traj", "a" or "b" for the PNGs). Return out. */
char *session_base_path(const d3_session *s, char *out, size_t n);
char *session_round_path(const d3_session *s, int round, char *out, size_t n);
char *session_pair_path(const d3_session *s, long id, const char *what, char *out, size_t n);

/* Writes a new pair: the PNGs of both images as shown (rgb_a, rgb_b:
 * [S][S][3], may be NULL to skip), then pairs/NNNNNN.traj atomically (its
 * presence is what makes the pair exist). p->K, S, cls, version, seed,
 * cfg, eta, traj and logp must be set. *id receives the new pair id. */
int session_add_pair(d3_session *s, const session_pair *p, const uint8_t *rgb_a,
                     const uint8_t *rgb_b, long *id, char *err);

/* Reads pair id back, fully validated (and its S and class checked against
 * the session's model). Free with session_pair_free. */
int session_load_pair(const d3_session *s, long id, session_pair *p, char *err);
/* Reads and validates one pair file (session_read_traj_n with N = 2).
 * Errors name path. */
int session_read_traj(const char *path, session_pair *p, char *err);
void session_pair_free(session_pair *p);
/* The class (prompt) in pair id's header, -1 when unreadable. */
int session_pair_class(const d3_session *s, long id);
/* The prompt text in pair id's header (format 2; UTF-8 as stored, not
 * escaped) into out[n] (NUL-terminated, cut to fit). Returns its length,
 * or -1 when the file is missing, short, format 1 or not a pair file. */
int session_pair_prompt(const d3_session *s, long id, char *out, size_t n);

/* Records a decision on pair id (which must exist) made while the model of
 * `version` was shown: appends one JSON line to labels.jsonl with a single
 * write() and fsyncs it before returning, so a 0 return means the label
 * survives kill -9 and power loss. A new decision on a labeled pair
 * replaces the old one (the last line counts). */
int session_label(d3_session *s, long id, int choice, int version, char *err);
/* Cancels the newest decision not yet undone (the pair gets its previous
 * choice back, usually none) by appending an "undo" record, fsync'd.
 * *id (may be NULL) receives the pair it concerned. -1 when there is
 * nothing to undo. */
int session_undo(d3_session *s, long *id, char *err);

/* The effective choice on pair id, SESSION_NONE when undecided. */
int session_choice_of(const d3_session *s, long id);
/* The smallest existing pair id >= from without a decision, -1 if none. */
long session_next_unlabeled(const d3_session *s, long from);

/* Writes rounds/NNNN.safetensors (the policy and the parts of st whose
 * has_* flag is set; st may be NULL) atomically, then replaces LATEST
 * atomically; the model version becomes the round number. round must be
 * greater than s->round and at most SESSION_MAX_ROUND. */
int session_save_round(d3_session *s, const d3_model *policy, const d3_state *st, int round,
                       char *err);

/* Replaces LATEST with "round N version N" atomically (call once round's
 * checkpoint is on disk); the session's round and version become round. */
int session_set_latest(d3_session *s, int round, char *err);

/* 1 when pair id's current decision (A, B or tie) is the one a trained
 * round used; 0 otherwise (undecided, skipped, or decided/changed since the
 * last round that used it: it goes into the next round). */
int session_label_trained(const d3_session *s, long id);
/* The choice the newest trained round used for pair id (SESSION_NONE: no
 * round used it); differs from session_choice_of after a history edit. */
int session_trained_choice(const d3_session *s, long id);
/* 1 when pair id has a decision that trains (A, B, tie) and no trained
 * round used that decision yet. */
int session_label_pending(const d3_session *s, long id);
/* Writes rounds/NNNN.labels (atomically): the n labels round `round` is
 * about to train on. Call before queueing the round's training. */
int session_write_round_labels(d3_session *s, int round, const long *ids, const signed char *ch,
                               int n, char *err);
/* Marks the n labels as trained (after the round's checkpoint is saved). */
void session_mark_trained(d3_session *s, const long *ids, const signed char *ch, int n);

/* Replaces the session's prompt set (n strings with weights 1..100; n = 0:
 * every class) and the fixed prompt (NULL: none), then writes prompts.json
 * atomically. */
int session_set_prompts(d3_session *s, const char *const *prompts, const int *weights, int n,
                        const char *fixed, char *err);

/* Removes PATH.tmp.PID files (temp files of atomic writes) in the session's
 * folders whose writer PID is no longer running; returns how many.
 * session_open calls it. list (may be NULL) gets each name, one a line. */
int session_clean_temp(const char *dir, int remove, char *list, size_t n);

typedef struct {
    long pairs;                     /* sampled (.traj files) */
    long labeled, unlabeled;        /* existing pairs with / without a decision (queued) */
    long by_choice[SESSION_NCHOICES]; /* effective decisions on existing pairs */
    long undone;                    /* undo records that cancelled a decision */
    long journal_lines;             /* records in labels.jsonl */
    long trained, untrained;        /* labels (A, B, tie) a trained round used / not yet */
    int round, version;             /* rounds trained, model version */
} session_stats;

void session_info(const d3_session *s, session_stats *info);

#endif
