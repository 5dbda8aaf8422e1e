/* label.c - the labeling screen (see label.h).
 *
 * Layout (rows top to bottom): header (session, round, labels this round,
 * model version, device), prompt line, the two image panels, the key
 * footer, the engine status line. Images are drawn after doupdate(), straight
 * to the tty at the panels' cells (sixel through libsixel, or half blocks);
 * curses keeps those cells blank. Every decision goes through
 * session_label(), which fsyncs the journal before the screen moves on.
 * Sampling and training run on the engine thread; this loop only polls the
 * keyboard and the engine's wake-up fd. */
#include "label.h"

#include <curses.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blocks.h"
#include "engine.h"
#include "rounds.h"
#include "image.h"
#include "sixel.h"
#include "term.h"

typedef struct {
    long id;
    d3_pair_sample *p;
    uint8_t *rgb[2];      /* [S][S][3] final images */
    unsigned char *gfx[2]; /* encoded and placed, per image (cache) */
    size_t gfxlen[2];
    int gfx_key[2];       /* the placement each cached image was made for */
    int pending_key[2];   /* placement asked of the encoder thread, -1: none */
} qpair;

#define QMAX 256

/* The encoder thread: sixel (libsixel) and half-block encoding happen off
 * the UI thread. Jobs carry a copy of the image, results come back through
 * a list and a wake-up pipe and are attached to the pair by id, so a pair
 * freed meanwhile is simply not found. */
typedef struct encjob {
    long id;
    int i, key, S;
    uint8_t *rgb;
    int top, left, w, h;
    unsigned char *out;
    size_t len;
    struct encjob *next;
} encjob;

typedef struct {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    encjob *todo, *done;
    int stop, wake[2];
    term_mode mode;
    term_caps caps;
    int colors;
} encoder;

typedef struct {
    d3_session *s;
    const d3_config *c;
    rounds *d;            /* the round driver (src/rounds.c): sampling, journal, rounds */
    rounds_status rs;     /* its status, refreshed after every event (header, status line) */
    const d3_backend *be; /* where the engine computes (header: "cpu", "cuda") */
    term_caps caps;
    term_mode mode;
    int round_size;
    qpair *queue[QMAX]; /* ready pairs, oldest first */
    int nq;
    qpair *done[64];    /* recently decided, for undo (newest last) */
    int ndone;
    char status[256], msg[D3_ERRLEN + 64];
    int prog_i, prog_n; /* engine progress for the bar (n = 0: none) */
    int help, zoom;     /* zoom: 0 off, 1 left image, 2 right image */
    int hist, hist_sel; /* history browser: on, selected row (0 = newest) */
    long hist_ids[4096];
    int hist_n;
    qpair *hist_pair;   /* the selected past pair, loaded from disk */
    int picking, pick_sel; /* prompt chooser: on, selected row (0 = all) */
    int prompt_fixed;   /* class of the fixed prompt (picker row - 1); -1: the set in turn */
    long last_view;     /* what the last draw showed (see draw) */
    encoder enc;
    int quit;
    int nclasses;
    char **names;       /* class names (prompts), copied from the policy */
    double drift;       /* mean per-step log p_policy - log p_base of the
                           newest measured pair (header); NAN: none yet */
    long drift_version; /* the model version that pair came from */
} ui;

static volatile sig_atomic_t resized;
static void on_winch(int sig) { (void)sig; resized = 1; }

static void sanitize(char *dst, size_t n, const char *src) {
    size_t j = 0;
    for (; *src && j + 1 < n; src++) {
        unsigned char ch = (unsigned char)*src;
        dst[j++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    dst[j] = 0;
}

static void qpair_free(qpair *q) {
    if (!q) return;
    engine_pair_free(q->p);
    for (int i = 0; i < 2; i++) { free(q->rgb[i]); free(q->gfx[i]); }
    free(q);
}

static qpair *qpair_from(long id, d3_pair_sample *p) {
    qpair *q = calloc(1, sizeof *q);
    q->id = id;
    q->p = p;
    size_t D = 3 * (size_t)p->S * p->S;
    for (int i = 0; i < 2; i++) {
        q->rgb[i] = malloc((size_t)p->S * p->S * 3);
        image_to_rgb(q->rgb[i], p->traj[i] + (size_t)p->K * D, p->S, p->S);
    }
    q->gfx_key[0] = q->gfx_key[1] = q->pending_key[0] = q->pending_key[1] = -1;
    return q;
}

/* ---- the round flow: everything below the screen is the round driver's
 * (src/rounds.c, shared with `d3po auto`); these functions only move pairs
 * between the driver and the screen's queue ---- */

/* a pair the driver saved as id goes into the queue */
static void on_pair(ui *u, long id, d3_pair_sample *p) {
    double d = engine_pair_drift(p);
    if (!isnan(d)) {
        u->drift = d;
        u->drift_version = p->version;
    }
    qpair *q = qpair_from(id, p);
    if (u->nq < QMAX) u->queue[u->nq++] = q;
    else qpair_free(q);
}

static void top_up(ui *u) { rounds_top_up(u->d, u->nq); }

/* The status line from the driver's status: what the engine really does. */
static void round_status(ui *u) {
    rounds_status *r = &u->rs;
    rounds_get_status(u->d, r);
    u->prog_n = 0;
    if (r->training) {
        char eta[32] = "";
        if (isfinite(r->train_eta_s)) snprintf(eta, sizeof eta, ", ~%.0f s", r->train_eta_s);
        u->prog_i = r->train_i;
        u->prog_n = r->train_n;
        snprintf(u->status, sizeof u->status,
                 "training round %d on %d labels: %d%%%s; next pairs from v%ld", r->train_round,
                 r->train_nlabels, r->train_n ? 100 * r->train_i / r->train_n : 0, eta, r->version);
    } else if (r->inflight) {
        snprintf(u->status, sizeof u->status, "sampling %d pair%s from v%ld", r->inflight,
                 r->inflight == 1 ? "" : "s", r->version);
    }
}

static void decide(ui *u, int choice) {
    if (!u->nq) {
        snprintf(u->msg, sizeof u->msg, "no pair on screen yet: the engine is sampling it");
        return;
    }
    char err[D3_ERRLEN];
    qpair *q = u->queue[0];
    if (rounds_decide(u->d, q->id, choice, (int)q->p->version, err)) {
        snprintf(u->msg, sizeof u->msg, "label NOT saved: %s", err);
        return;
    }
    memmove(u->queue, u->queue + 1, (u->nq - 1) * sizeof *u->queue);
    u->nq--;
    if (u->ndone == 64) {
        qpair_free(u->done[0]);
        memmove(u->done, u->done + 1, 63 * sizeof *u->done);
        u->ndone--;
    }
    u->done[u->ndone++] = q;
    snprintf(u->msg, sizeof u->msg, "pair %ld: %s saved", q->id, session_choice_name(choice));
    round_status(u);
}

/* Undo cancels the newest decision in the journal. When that was the pair
 * last decided on this screen, it comes back on screen; when it was a
 * history edit, the pair gets its earlier choice back and the screen stays. */
static void undo(ui *u) {
    char err[D3_ERRLEN];
    long id;
    if (rounds_undo(u->d, &id, err)) { snprintf(u->msg, sizeof u->msg, "undo: %s", err); return; }
    int back = session_choice_of(u->s, id);
    if (back == SESSION_NONE && u->ndone && u->done[u->ndone - 1]->id == id && u->nq < QMAX) {
        qpair *q = u->done[--u->ndone];
        memmove(u->queue + 1, u->queue, u->nq * sizeof *u->queue);
        u->queue[0] = q;
        u->nq++;
        snprintf(u->msg, sizeof u->msg, "undid the decision on pair %ld (journal keeps an undo record)", id);
    } else {
        snprintf(u->msg, sizeof u->msg, "undid the last change of pair %ld: it is %s again", id,
                 session_choice_name(back));
    }
    round_status(u);
}

static void train_now(ui *u) {
    char err[D3_ERRLEN];
    int rc = rounds_train_now(u->d, err);
    if (rc) snprintf(u->msg, sizeof u->msg, "%s", err);
    round_status(u);
}

static void engine_events(ui *u) {
    rounds_event ev;
    while (rounds_poll(u->d, &ev)) {
        switch (ev.kind) {
        case RV_PAIR:
            on_pair(u, ev.id, ev.pair);
            ev.pair = NULL; /* owned by the queue now */
            break;
        case RV_TRAINED:
            snprintf(u->msg, sizeof u->msg, "round %d trained on %d labels: model v%ld, loss %.4f",
                     ev.round, ev.nlabels, ev.version, ev.loss);
            snprintf(u->status, sizeof u->status, "round %d trained: model v%ld", ev.round, ev.version);
            break;
        case RV_ERROR:
        case RV_WARNING:
            snprintf(u->msg, sizeof u->msg, "%s", ev.msg);
            break;
        default:
            break;
        }
        rounds_event_free(&ev);
    }
    round_status(u);
}

/* ---- drawing ---- */

static void panel_geom(int *top, int *h, int *w, int *left0, int *left1) {
    int rows = LINES, cols = COLS;
    *top = 3;
    *h = rows - 6;
    *w = (cols - 3) / 2;
    *left0 = 1;
    *left1 = 2 + *w;
}

int label_encode_image(term_mode mode, const term_caps *caps, int colors, const uint8_t *rgb, int S,
                       int top, int left, int w, int h, unsigned char **out, size_t *outlen) {
    char err[D3_ERRLEN];
    *out = NULL;
    *outlen = 0;
    if (mode == TERM_MODE_SIXEL) {
        int f = (int)fmin((double)w * caps->cell_w, (double)h * caps->cell_h) / S;
        if (f < 1) f = 1;
        uint8_t *up = malloc((size_t)S * f * S * f * 3);
        if (!up) return -1;
        sixel_upscale_nearest(up, rgb, S, S, f);
        unsigned char *enc;
        size_t len;
        if (sixel_encode_rgb(up, S * f, S * f, colors, 0, &enc, &len, err) == 0) {
            if (caps->tmux_passthrough) {
                unsigned char *wr;
                size_t wl;
                if (sixel_wrap_tmux(enc, len, &wr, &wl, err) == 0) { free(enc); enc = wr; len = wl; }
            }
            if ((*out = malloc(len + 64))) *outlen = sixel_place(*out, len + 64, top, left, enc, len);
            free(enc);
        }
        free(up);
    } else {
        int bc, br;
        blocks_fit(S, S, w, h, &bc, &br);
        blocks_out bo = {0};
        if (blocks_render(rgb, S, S, mode, bc, br, &bo, err) == 0)
            blocks_place(&bo, top, left, out, outlen, err);
        blocks_free(&bo);
    }
    return *out ? 0 : -1;
}

static void encode_job(const encoder *e, encjob *j) {
    label_encode_image(e->mode, &e->caps, e->colors, j->rgb, j->S, j->top, j->left, j->w, j->h,
                       &j->out, &j->len);
}

static void *encoder_main(void *arg) {
    encoder *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->todo && !e->stop) pthread_cond_wait(&e->cv, &e->mu);
        if (e->stop) break;
        encjob *j = e->todo;
        e->todo = j->next;
        pthread_mutex_unlock(&e->mu);
        encode_job(e, j);
        pthread_mutex_lock(&e->mu);
        j->next = e->done;
        e->done = j;
        char b = 1;
        ssize_t w = write(e->wake[1], &b, 1);
        (void)w;
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

static void free_jobs(encjob *j) {
    while (j) { encjob *n = j->next; free(j->rgb); free(j->out); free(j); j = n; }
}

/* Asks for image i of q at a placement; returns 1 when it is ready. */
static int want_image(ui *u, qpair *q, int i, int top, int left, int w, int h) {
    int key = ((top * 131 + left) * 1031 + w) * 1031 + h + LINES * 7 + COLS * 13;
    if (q->gfx_key[i] == key && q->gfx[i]) return 1;
    if (q->pending_key[i] == key) return 0;
    encjob *j = calloc(1, sizeof *j);
    size_t n = (size_t)q->p->S * q->p->S * 3;
    *j = (encjob){.id = q->id, .i = i, .key = key, .S = q->p->S, .rgb = malloc(n), .top = top,
                  .left = left, .w = w, .h = h};
    memcpy(j->rgb, q->rgb[i], n);
    q->pending_key[i] = key;
    pthread_mutex_lock(&u->enc.mu);
    encjob **tail = &u->enc.todo;
    while (*tail) tail = &(*tail)->next;
    *tail = j;
    pthread_cond_signal(&u->enc.cv);
    pthread_mutex_unlock(&u->enc.mu);
    return 0;
}

/* Writes image i of q at the placement if it is encoded; else asks for it
 * (it is written when the encoder delivers it). */
static void put_image(ui *u, qpair *q, int i, int top, int left, int w, int h) {
    if (want_image(u, q, i, top, left, w, h)) {
        ssize_t wr = write(STDOUT_FILENO, q->gfx[i], q->gfxlen[i]);
        (void)wr;
    }
}

static qpair *ui_find_pair(ui *u, long id) {
    for (int k = 0; k < u->nq; k++)
        if (u->queue[k]->id == id) return u->queue[k];
    if (u->hist_pair && u->hist_pair->id == id) return u->hist_pair;
    return NULL;
}

static void draw_images(ui *u);

/* Results from the encoder: attach them, then draw what is now ready. */
static void encoder_results(ui *u) {
    char buf[64];
    while (read(u->enc.wake[0], buf, sizeof buf) > 0) {
    }
    pthread_mutex_lock(&u->enc.mu);
    encjob *j = u->enc.done;
    u->enc.done = NULL;
    pthread_mutex_unlock(&u->enc.mu);
    int any = 0;
    while (j) {
        encjob *n = j->next;
        qpair *q = ui_find_pair(u, j->id);
        if (q && q->pending_key[j->i] == j->key && j->out) {
            free(q->gfx[j->i]);
            q->gfx[j->i] = j->out;
            q->gfxlen[j->i] = j->len;
            q->gfx_key[j->i] = j->key;
            q->pending_key[j->i] = -1;
            j->out = NULL;
            any = 1;
        }
        free(j->rgb); free(j->out); free(j);
        j = n;
    }
    if (any && !(LINES < 12 || COLS < 40)) draw_images(u);
}

/* The next pairs' panels are encoded ahead, so a keypress shows them at once. */
static void prefetch(ui *u) {
    int top, h, w, l0, l1;
    panel_geom(&top, &h, &w, &l0, &l1);
    for (int k = 0; k < u->nq && k < 3; k++) {
        want_image(u, u->queue[k], 0, top, l0, w, h);
        want_image(u, u->queue[k], 1, top, l1, w, h);
    }
}

static void draw_images(ui *u) {
    int top, h, w, l0, l1;
    panel_geom(&top, &h, &w, &l0, &l1);
    if (u->help || u->picking) return;
    if (u->hist) {
        if (u->hist_pair) {
            int hw = (w - 1) / 2;
            put_image(u, u->hist_pair, 0, top, l1, hw, h);
            put_image(u, u->hist_pair, 1, top, l1 + hw + 1, hw, h);
        }
        return;
    }
    if (!u->nq) return;
    qpair *q = u->queue[0];
    if (u->zoom) { /* one image on every row between the header and the footer */
        put_image(u, q, u->zoom - 1, 1, 1, COLS - 2, LINES - 4);
        return;
    }
    put_image(u, q, 0, top, l0, w, h);
    put_image(u, q, 1, top, l1, w, h);
}

static const char *key_label(const d3_config *c, int act) {
    return c->ui.nkeys[act] ? c->ui.keys[act][0] : "?";
}

int label_frame_begin(long view, long *last_view, int full) {
    if (view != *last_view) full = 1;
    *last_view = view;
    if (full) clearok(curscr, TRUE);
    erase();
    if (LINES < 12 || COLS < 40) {
        mvprintw(LINES / 2, 0, "enlarge the terminal (at least 40x12; now %dx%d)", COLS, LINES);
        refresh();
        return -1;
    }
    return full;
}

static void draw(ui *u, int full) {
    /* Images are written around curses, which therefore thinks their cells
     * are blank: whenever what is shown changes, repaint the whole screen
     * (clearok) so no old image or block text survives. */
    long view = ((((long)u->help * 2 + u->hist) * 2 + u->picking) * 3 + u->zoom) * 100003L +
                (u->hist ? u->hist_sel : u->nq ? u->queue[0]->id + 1 : 0);
    if ((full = label_frame_begin(view, &u->last_view, full)) < 0) return;
    session_stats st;
    session_info(u->s, &st);
    char name[64];
    sanitize(name, sizeof name, u->s->dir);
    attron(A_REVERSE);
    mvhline(0, 0, ' ', COLS);
    char drift[48] = "drift -";
    if (!isnan(u->drift)) snprintf(drift, sizeof drift, "drift %.3f (v%ld)", u->drift, u->drift_version);
    /* the objective last: a narrow terminal cuts it before the drift */
    mvprintw(0, 1, "d3po  %s  round %d  labels %d/%d  model v%d  %s  queued %d  %s  %s", name,
             u->rs.round, u->rs.pending, u->rs.round_size, u->s->version, u->be->name, u->nq,
             drift, config_objective_name(u->c->train.objective));
    attroff(A_REVERSE);
    int top, h, w, l0, l1;
    panel_geom(&top, &h, &w, &l0, &l1);
    if (u->help) {
        static const char *what[D3_ACT_COUNT] = {
            "the left image is better", "the right image is better", "tie (no gradient)",
            "skip (no label)", "undo the last decision", "zoom: left image, right image, both",
            "history: past pairs; change a choice with the decision keys", "end the round now and train",
            "choose the prompt of new pairs", "this help", "quit (safe at any moment)"};
        mvprintw(top, 2, "keys (remap them in d3po.conf, ui.keys; see d3po.conf(5)):");
        for (int a = 0; a < D3_ACT_COUNT; a++) {
            char keys[64] = "";
            for (int k = 0; k < u->c->ui.nkeys[a]; k++)
                snprintf(keys + strlen(keys), sizeof keys - strlen(keys), "%s%s", k ? " " : "",
                         u->c->ui.keys[a][k]);
            mvprintw(top + 2 + a, 4, "%-16s %s", keys, what[a]);
        }
        mvprintw(top + 4 + D3_ACT_COUNT, 2,
                 "every decision is in labels.jsonl (fsync'd) before the next pair shows");
        mvprintw(top + 5 + D3_ACT_COUNT, 2, "training objective: %s%s (train.objective, --objective)",
                 config_objective_name(u->c->train.objective),
                 u->c->train.all_labels ? ", over every label so far" : "");
    } else if (u->hist) {
        mvprintw(2, l0, "history: %d decided pairs (Up/Down; decision keys change a choice; %s closes)",
                 u->hist_n, key_label(u->c, D3_ACT_HISTORY));
        int first = u->hist_sel - h / 2 < 0 ? 0 : u->hist_sel - h / 2;
        for (int r = 0; r < h && first + r < u->hist_n; r++) {
            long id = u->hist_ids[first + r];
            if (first + r == u->hist_sel) attron(A_REVERSE);
            mvprintw(top + r, l0, " pair %6ld  %-5s", id, session_choice_name(session_choice_of(u->s, id)));
            if (first + r == u->hist_sel) attroff(A_REVERSE);
        }
        if (u->hist_pair) {
            char prompt[128];
            sanitize(prompt, sizeof prompt,
                     u->hist_pair->p->cls < u->nclasses ? u->names[u->hist_pair->p->cls] : "?");
            mvprintw(LINES - 3, l1, "A | B  %.*s  (v%ld)", w - 16, prompt, u->hist_pair->p->version);
        }
    } else if (u->picking) {
        mvprintw(2, l0, "prompt of new pairs (Up/Down, Enter):");
        int first = u->pick_sel - h / 2 < 0 ? 0 : u->pick_sel - h / 2;
        for (int r = 0; r < h && first + r <= u->nclasses; r++) {
            int i = first + r;
            char name[128];
            sanitize(name, sizeof name, i ? u->names[i - 1] : "(every prompt in turn)");
            if (i == u->pick_sel) attron(A_REVERSE);
            mvprintw(top + r, l0, " %-*.*s", COLS - 4, COLS - 4, name);
            if (i == u->pick_sel) attroff(A_REVERSE);
        }
    } else if (u->nq) {
        qpair *q = u->queue[0];
        char prompt[128];
        sanitize(prompt, sizeof prompt, q->p->cls < u->nclasses ? u->names[q->p->cls] : "?");
        mvprintw(2, l0, "[%s] %.*s", key_label(u->c, D3_ACT_LEFT), w - 6, prompt);
        mvprintw(2, l1, "[%s] %.*s", key_label(u->c, D3_ACT_RIGHT), w - 6, prompt);
        mvprintw(LINES - 3, l0, "pair %ld  seed %llu  sampled by v%ld", q->id,
                 (unsigned long long)q->p->seed, q->p->version);
    } else {
        mvprintw(top + h / 2, 2, "sampling the next pair...");
    }
    mvprintw(LINES - 2, 0, " %s/%s left|right better  %s tie  %s skip  %s undo  %s train  %s help  %s quit",
             key_label(u->c, D3_ACT_LEFT), key_label(u->c, D3_ACT_RIGHT), key_label(u->c, D3_ACT_TIE),
             key_label(u->c, D3_ACT_SKIP), key_label(u->c, D3_ACT_UNDO), key_label(u->c, D3_ACT_TRAIN),
             key_label(u->c, D3_ACT_HELP), key_label(u->c, D3_ACT_QUIT));
    char line[1024], bar[24] = "";
    if (u->prog_n > 0) {
        int fill = (int)((double)u->prog_i / u->prog_n * 10 + 0.5);
        snprintf(bar, sizeof bar, "[%.*s%.*s] ", fill, "##########", 10 - fill, "..........");
    }
    snprintf(line, sizeof line, " %s%s%s%s", bar, u->status, u->msg[0] ? "  |  " : "", u->msg);
    mvprintw(LINES - 1, 0, "%.*s", COLS - 1, line);
    wnoutrefresh(stdscr);
    doupdate();
    /* the images' cells are blank in curses and untouched by partial
     * updates: images go out again only after a full repaint */
    if (full) draw_images(u);
}

const char *label_key_name(int ch, char *buf) {
    switch (ch) {
    case KEY_LEFT: return "Left";
    case KEY_RIGHT: return "Right";
    case KEY_UP: return "Up";
    case KEY_DOWN: return "Down";
    case ' ': return "Space";
    case KEY_BACKSPACE: case 127: case 8: return "Backspace";
    case '\n': case '\r': case KEY_ENTER: return "Enter";
    case '\t': return "Tab";
    case 27: return "Escape";
    case KEY_PPAGE: return "PageUp";
    case KEY_NPAGE: return "PageDown";
    case KEY_HOME: return "Home";
    case KEY_END: return "End";
    }
    if (ch >= KEY_F(1) && ch <= KEY_F(12)) { sprintf(buf, "F%d", ch - KEY_F(0)); return buf; }
    if (ch > 32 && ch < 127) { buf[0] = (char)ch; buf[1] = 0; return buf; }
    return NULL;
}

static qpair *load_qpair(ui *u, long id) {
    char err[D3_ERRLEN];
    d3_pair_sample *p = rounds_load_pair(u->s, id, err);
    if (!p) {
        snprintf(u->msg, sizeof u->msg, "%s", err);
        return NULL;
    }
    return qpair_from(id, p);
}

/* history: decided pairs, newest first */
static void hist_open(ui *u) {
    u->hist_n = 0;
    for (long id = u->s->next_pair - 1; id >= 0 && u->hist_n < 4096; id--)
        if (session_choice_of(u->s, id) != SESSION_NONE) u->hist_ids[u->hist_n++] = id;
    u->hist = 1;
    u->hist_sel = 0;
    qpair_free(u->hist_pair);
    u->hist_pair = u->hist_n ? load_qpair(u, u->hist_ids[0]) : NULL;
}

static void hist_move(ui *u, int d) {
    int n = u->hist_sel + d;
    if (n < 0 || n >= u->hist_n) return;
    u->hist_sel = n;
    qpair_free(u->hist_pair);
    u->hist_pair = load_qpair(u, u->hist_ids[n]);
}

/* changing a past choice: a new journal line for the same pair */
static void hist_relabel(ui *u, int choice) {
    if (!u->hist_n) return;
    char err[D3_ERRLEN];
    long id = u->hist_ids[u->hist_sel];
    int version = u->hist_pair ? (int)u->hist_pair->p->version : u->s->version;
    int was_trained = session_label_trained(u->s, id);
    if (rounds_decide(u->d, id, choice, version, err)) {
        snprintf(u->msg, sizeof u->msg, "label NOT saved: %s", err);
        return;
    }
    snprintf(u->msg, sizeof u->msg, "pair %ld changed to %s%s", id, session_choice_name(choice),
             was_trained && !session_label_trained(u->s, id) ? " (trained before: the new answer "
                                                               "goes into the next round)" : "");
    round_status(u);
}

static void on_key_hist(ui *u, int act, int ch) {
    if (ch == KEY_UP || ch == 'k') { hist_move(u, -1); return; }
    if (ch == KEY_DOWN || ch == 'j') { hist_move(u, 1); return; }
    switch (act) {
    case D3_ACT_LEFT: hist_relabel(u, SESSION_A); break;
    case D3_ACT_RIGHT: hist_relabel(u, SESSION_B); break;
    case D3_ACT_TIE: hist_relabel(u, SESSION_TIE); break;
    case D3_ACT_SKIP: hist_relabel(u, SESSION_SKIP); break;
    case D3_ACT_HISTORY: case D3_ACT_QUIT:
        u->hist = 0;
        qpair_free(u->hist_pair);
        u->hist_pair = NULL;
        break;
    default:
        if (ch == 27) { u->hist = 0; qpair_free(u->hist_pair); u->hist_pair = NULL; }
    }
}

static void on_key_pick(ui *u, int act, int ch) {
    if (ch == KEY_UP || ch == 'k') { if (u->pick_sel > 0) u->pick_sel--; return; }
    if (ch == KEY_DOWN || ch == 'j') { if (u->pick_sel < u->nclasses) u->pick_sel++; return; }
    if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) {
        char err[D3_ERRLEN];
        int f = u->pick_sel - 1;
        u->picking = 0;
        if (rounds_fix_prompt(u->d, f < 0 ? NULL : u->names[f], err)) {
            snprintf(u->msg, sizeof u->msg, "prompt not changed: %s", err);
            return;
        }
        u->prompt_fixed = f;
        snprintf(u->msg, sizeof u->msg, "new pairs: %s (queued pairs stay)",
                 u->prompt_fixed < 0 ? "every prompt" : u->names[u->prompt_fixed]);
        return;
    }
    if (act == D3_ACT_PROMPT || act == D3_ACT_QUIT || ch == 27) u->picking = 0;
}

static void on_key(ui *u, int ch) {
    char kb[8];
    const char *k = label_key_name(ch, kb);
    if (ch == 3) { u->quit = 1; return; } /* Ctrl-C that arrived during detection */
    if (!k && ch != KEY_UP && ch != KEY_DOWN && ch != '\n' && ch != KEY_ENTER) return;
    int act = k ? config_key_action(u->c, k) : -1;
    if (u->help && act != D3_ACT_QUIT) { u->help = 0; return; }
    u->msg[0] = 0;
    if (u->hist) { on_key_hist(u, act, ch); return; }
    if (u->picking) { on_key_pick(u, act, ch); return; }
    switch (act) {
    case D3_ACT_LEFT: decide(u, SESSION_A); break;
    case D3_ACT_RIGHT: decide(u, SESSION_B); break;
    case D3_ACT_TIE: decide(u, SESSION_TIE); break;
    case D3_ACT_SKIP: decide(u, SESSION_SKIP); break;
    case D3_ACT_UNDO: undo(u); break;
    case D3_ACT_TRAIN:
        train_now(u);
        break;
    case D3_ACT_HELP: u->help = 1; break;
    case D3_ACT_QUIT: u->quit = 1; break;
    case D3_ACT_ZOOM: u->zoom = (u->zoom + 1) % 3; break;
    case D3_ACT_HISTORY: hist_open(u); break;
    case D3_ACT_PROMPT:
        u->picking = 1;
        u->pick_sel = u->prompt_fixed + 1;
        break;
    default: break;
    }
}

/* The round driver for the screen: pairs keep coming from the model in
 * force while a round trains (overlap), the queue is the screen's. Pairs
 * left undecided on disk come first; labels no round trained yet make the
 * first round due at once when there are round_size of them. */
static int label_start_rounds(ui *u, char *err) {
    rounds_opts o = rounds_opts_default(u->c);
    o.round_size = u->round_size;
    if (!(u->d = rounds_start(u->s, u->c, u->be, &o, err))) return -1;
    u->nclasses = u->s->nclasses;
    u->names = calloc((size_t)u->nclasses + 1, sizeof *u->names);
    for (int i = 0; i < u->nclasses; i++) u->names[i] = strdup(rounds_prompt_of(u->d, i));
    const char *fx = rounds_fixed_prompt(u->d);
    for (int i = 0; fx && i < u->nclasses; i++)
        if (!strcmp(u->names[i], fx)) u->prompt_fixed = i;
    for (long id = session_next_unlabeled(u->s, 0); id >= 0 && u->nq < QMAX;
         id = session_next_unlabeled(u->s, id + 1)) {
        qpair *q = load_qpair(u, id);
        if (q) u->queue[u->nq++] = q;
    }
    if (rounds_check_due(u->d, err) < 0) snprintf(u->msg, sizeof u->msg, "%s", err);
    round_status(u);
    return 0;
}

int label_run(d3_session *s, const d3_config *c, const char *graphics, int round_size,
              const d3_backend *be, const char *device_note) {
    char err[D3_ERRLEN];
    ui U = {0}, *u = &U;
    u->s = s;
    u->c = c;
    u->be = be;
    u->round_size = round_size > 0 ? round_size : c->session.round_size;
    u->prompt_fixed = -1;
    u->drift = NAN;
    const char *gsel = graphics ? graphics
                       : c->ui.graphics == D3_GRAPHICS_SIXEL ? "sixel"
                       : c->ui.graphics == D3_GRAPHICS_BLOCKS ? "blocks" : "auto";
    term_detect(STDIN_FILENO, STDOUT_FILENO, TERM_TIMEOUT_MS, &u->caps);
    u->mode = term_choose_mode(&u->caps, gsel);

    if (label_start_rounds(u, err)) {
        fprintf(stderr, "d3po label: %s\n", err);
        return 2;
    }
    snprintf(u->status, sizeof u->status, "graphics: %s%s, device %s", term_mode_name(u->mode),
             u->caps.tmux ? " (in tmux)" : "", device_note ? device_note : be->name);

    u->enc.mode = u->mode;
    u->enc.caps = u->caps;
    u->enc.colors = c->ui.colors;
    pthread_mutex_init(&u->enc.mu, NULL);
    pthread_cond_init(&u->enc.cv, NULL);
    if (pipe(u->enc.wake) == 0) {
        for (int i = 0; i < 2; i++) fcntl(u->enc.wake[i], F_SETFL, fcntl(u->enc.wake[i], F_GETFL) | O_NONBLOCK);
    }
    pthread_create(&u->enc.th, NULL, encoder_main, &u->enc);
    signal(SIGWINCH, on_winch);
    initscr();
    cbreak();
    noecho();
    keypad(stdscr, TRUE);
    curs_set(0);
    nodelay(stdscr, TRUE);
    for (size_t i = 0; i < u->caps.nleftover; i++) ungetch(u->caps.leftover[u->caps.nleftover - 1 - i]);
    top_up(u);
    draw(u, 1);
    while (!u->quit) {
        struct pollfd pf[3] = {{STDIN_FILENO, POLLIN, 0}, {rounds_fd(u->d), POLLIN, 0},
                               {u->enc.wake[0], POLLIN, 0}};
        poll(pf, 3, 250);
        if (pf[2].revents & POLLIN) encoder_results(u);
        int redraw = 0, full = 0;
        if (resized) {
            resized = 0;
            endwin();
            refresh();
            full = redraw = 1;
        }
        int ch;
        while ((ch = getch()) != ERR) {
            if (ch == KEY_RESIZE) { full = 1; redraw = 1; continue; }
            on_key(u, ch);
            redraw = 1;
            if (u->quit) break;
        }
        if (pf[1].revents & POLLIN) {
            int had = u->nq;
            engine_events(u);
            redraw = 1;
            full |= had == 0 && u->nq > 0;
        }
        if (!u->quit) top_up(u);
        if (redraw) draw(u, full);
        if (!u->quit) prefetch(u);
    }
    endwin();
    pthread_mutex_lock(&u->enc.mu);
    u->enc.stop = 1;
    pthread_cond_signal(&u->enc.cv);
    pthread_mutex_unlock(&u->enc.mu);
    pthread_join(u->enc.th, NULL);
    free_jobs(u->enc.todo);
    free_jobs(u->enc.done);
    close(u->enc.wake[0]);
    close(u->enc.wake[1]);
    rounds_stop(u->d); /* cancels a running round: its labels train in the next one */
    for (int i = 0; i < u->nq; i++) qpair_free(u->queue[i]);
    for (int i = 0; i < u->ndone; i++) qpair_free(u->done[i]);
    qpair_free(u->hist_pair);
    for (int i = 0; i < u->nclasses; i++) free(u->names[i]);
    free(u->names);
    session_stats ss;
    session_info(s, &ss);
    printf("d3po: %ld labels saved in %s (round %d, model v%d)\n", ss.labeled, s->dir, ss.round,
           ss.version);
    return 0;
}
