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
#include <ncursesw/term.h> /* setupterm; plain <term.h> would find ui/term.h */
#include <fcntl.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

#include "blocks.h"
#include "engine.h"
#include "gridview.h"
#include "rounds.h"
#include "image.h"
#include "sixel.h"
#include "term.h"
#include "text.h"

typedef struct {
    long id;
    d3_pair_sample *p;
    int W, H;             /* the images' size */
    uint8_t *rgb[2];      /* [H][W][3] final images */
    unsigned char *gfx[2]; /* encoded and placed, per image (cache) */
    size_t gfxlen[2];
    int gfx_key[2];       /* the placement each cached image was made for */
    int pending_key[2];   /* placement asked of the encoder thread, -1: none */
} qpair;

#define QMAX 256
/* pairs the header's drift is averaged over (of one model version) */
#define DRIFT_AVG 8
/* start-up warnings and messages kept for the log view */
#define LOG_MAX 200

/* The encoder thread: sixel (libsixel) and half-block encoding happen off
 * the UI thread. Jobs carry a copy of the image, results come back through
 * a list and a wake-up pipe and are attached to the pair by id, so a pair
 * freed meanwhile is simply not found. */
typedef struct encjob {
    long id;
    int i, key, W, H;
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

/* The stats view's per-prompt row: a class name (pixel) or a pair's
 * prompt text (free-text families), and its labeled pairs. */
typedef struct {
    char *text;
    int n;
} prompt_count;

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
    /* the engine's newest progress report; the status line is made from
     * these at each draw (one source for the header and the status) */
    int help, zoom;     /* zoom: 0 off, 1 left image, 2 right image */
    int stats, logview; /* the stats and message-log overlays */
    int log_first;      /* first log line shown (scrolling) */
    char **log;         /* start-up warnings and this sitting's messages */
    int nlog;
    char logged[D3_ERRLEN + 64]; /* the message last copied into the log */
    time_t t_start;     /* when the screen opened (labels per hour) */
    session_stats st0;  /* the session when the screen opened (this sitting) */
    prompt_count *pc;   /* per prompt: labeled pairs, most first (stats view, lazily) */
    int npc;
    long pc_counted;    /* session labeled count when pc was made */
    int hist, hist_sel; /* history browser: on, selected row (0 = newest) */
    long hist_ids[4096];
    int hist_n;
    qpair *hist_pair;   /* the selected past pair, loaded from disk */
    int picking, pick_sel; /* prompt chooser: on, selected row (0 = all) */
    /* free-text prompts (a family without classes, sd): `p` opens a line
     * where the person types one (UTF-8 bytes as they come) */
    int text_prompts, typing;
    char typed[SESSION_PROMPT_LEN];
    size_t ntyped;
    int prompt_fixed;   /* class of the fixed prompt (picker row - 1); -1: the set in turn */
    long last_view;     /* what the last draw showed (see draw) */
    encoder enc;
    int quit;
    int nclasses;
    char **names;       /* class names (prompts), copied from the policy */
    gridview *grid;     /* grid mode (ui/gridview.c): groups of k; NULL until first used */
    int grid_on;        /* showing the grid instead of pairs */
    groups_stats gstats; /* the groups at exit (summary) */
    /* drift: per-step log p_policy - log p_base of the newest measured
     * pairs (a ring); the header shows the mean over those of the newest
     * model version, so one odd pair does not make it jump */
    double drift_d[DRIFT_AVG];
    long drift_v[DRIFT_AVG];
    int ndrift;
} ui;

static volatile sig_atomic_t resized;
static void on_winch(int sig) { (void)sig; resized = 1; }

/* Text from files, prompts and errors, made safe to show: C0 controls,
 * DEL, the C1 controls (U+0080..U+009F) and bytes that are not well-formed
 * UTF-8 become '?', so nothing reaches the terminal as a control sequence;
 * other UTF-8 characters (a prompt's accents, emoji) are kept whole, never
 * cut inside. */
static void sanitize(char *dst, size_t n, const char *src) {
    size_t j = 0;
    const unsigned char *p = (const unsigned char *)src;
    while (*p && j + 1 < n) {
        unsigned ch = *p;
        int len = ch < 0x80 ? 1 : (ch & 0xe0) == 0xc0 ? 2 : (ch & 0xf0) == 0xe0 ? 3 : (ch & 0xf8) == 0xf0 ? 4 : 0;
        unsigned cp = len == 1 ? ch : len == 2 ? ch & 0x1f : len == 3 ? ch & 0x0f : ch & 0x07;
        int ok = len > 0;
        for (int k = 1; ok && k < len; k++) {
            ok = (p[k] & 0xc0) == 0x80;
            cp = cp << 6 | (p[k] & 0x3f);
        }
        static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        ok = ok && cp >= min_cp[len] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) &&
             cp >= 0x20 && cp != 0x7f && !(cp >= 0x80 && cp <= 0x9f);
        if (!ok) {
            dst[j++] = '?';
            p++; /* one byte at a time: a bad lead byte must not swallow good ones */
            continue;
        }
        if (j + (size_t)len + 1 > n) break;
        memcpy(dst + j, p, (size_t)len);
        j += (size_t)len;
        p += len;
    }
    dst[j] = 0;
}

/* Cuts text to at most width columns on a word boundary (mid-word only
 * when one word is wider than the line), marking a cut with "...". dst
 * gets the shown part; returns the offset in src where the rest starts
 * (strlen(src) when everything fits). Text is treated as one column a
 * byte, which holds for what d3po writes (ASCII) and errs short for
 * UTF-8 names. */
static size_t fit_words(char *dst, size_t n, const char *src, int width) {
    size_t len = strlen(src);
    if (width < 4) width = 4;
    if ((int)len <= width) {
        snprintf(dst, n, "%s", src);
        return len;
    }
    int room = width - 3; /* "..." */
    int cut = room;
    while (cut > 0 && src[cut] != ' ') cut--;
    if (cut < room / 2) { /* one long word: cut it, not inside a UTF-8 character */
        cut = room;
        while (cut > 0 && ((unsigned char)src[cut] & 0xc0) == 0x80) cut--;
    }
    int end = cut;
    while (end > 0 && src[end - 1] == ' ') end--;
    snprintf(dst, n, "%.*s...", end, src);
    size_t rest = (size_t)cut;
    while (src[rest] == ' ') rest++;
    return rest;
}

static void qpair_free(qpair *q) {
    if (!q) return;
    engine_pair_free(q->p);
    for (int i = 0; i < 2; i++) { free(q->rgb[i]); free(q->gfx[i]); }
    free(q);
}

/* A pair for the queue: its images are the engine's decoded ones, else
 * (a pair read back from the session) the PNGs as shown when it was
 * sampled, else (a pixel pair without PNGs) its x_0. NULL with err when a
 * latent pair's PNGs are missing or memory runs out. */
static qpair *qpair_from(const d3_session *s, long id, d3_pair_sample *p, char *err) {
    qpair *q = calloc(1, sizeof *q);
    if (!q) { d3_errf(err, "out of memory"); return NULL; }
    q->id = id;
    q->p = p;
    q->gfx_key[0] = q->gfx_key[1] = q->pending_key[0] = q->pending_key[1] = -1;
    int fail = 0;
    for (int i = 0; i < 2 && !fail; i++) {
        if (p->rgb[i]) {
            size_t n = (size_t)p->img_w * p->img_h * 3;
            q->W = p->img_w;
            q->H = p->img_h;
            if ((q->rgb[i] = malloc(n))) memcpy(q->rgb[i], p->rgb[i], n);
            else fail = d3_errf(err, "out of memory") < 0;
            continue;
        }
        char path[4200];
        session_pair_path(s, id, i ? "b" : "a", path, sizeof path);
        int W, H;
        if (p->cls < 0) { /* latents: only the VAE made the image; it is on disk */
            if (png_read_rgb(path, &q->rgb[i], &W, &H, err)) {
                fail = 1;
            } else if (i && (W != q->W || H != q->H)) {
                d3_errf(err, "%s: %dx%d, image A is %dx%d", path, W, H, q->W, q->H);
                fail = 1;
            }
            q->W = W;
            q->H = H;
            continue;
        }
        size_t D = 3 * (size_t)p->S * p->S;
        q->W = q->H = p->S;
        if ((q->rgb[i] = malloc(D))) image_to_rgb(q->rgb[i], p->traj[i] + (size_t)p->K * D, p->S, p->S);
        else fail = d3_errf(err, "out of memory") < 0;
    }
    if (fail) {
        q->p = NULL; /* the caller keeps p */
        for (int i = 0; i < 2; i++) free(q->rgb[i]);
        free(q);
        return NULL;
    }
    return q;
}

/* Remembers a measured pair's drift (NAN: the pair was not measured). */
static void drift_add(ui *u, double d, long version) {
    if (isnan(d)) return;
    memmove(u->drift_d + 1, u->drift_d, (DRIFT_AVG - 1) * sizeof *u->drift_d);
    memmove(u->drift_v + 1, u->drift_v, (DRIFT_AVG - 1) * sizeof *u->drift_v);
    u->drift_d[0] = d;
    u->drift_v[0] = version;
    if (u->ndrift < DRIFT_AVG) u->ndrift++;
}

/* The header's drift: the mean over the remembered pairs of the newest
 * model version among them; *n gets how many, *version which. NAN: none. */
static double drift_mean(const ui *u, int *n, long *version) {
    *n = 0;
    *version = -1;
    if (!u->ndrift) return NAN;
    long v = u->drift_v[0];
    for (int i = 1; i < u->ndrift; i++)
        if (u->drift_v[i] > v) v = u->drift_v[i];
    double sum = 0;
    for (int i = 0; i < u->ndrift; i++)
        if (u->drift_v[i] == v) sum += u->drift_d[i], (*n)++;
    *version = v;
    return sum / *n;
}

/* ---- the round flow: everything below the screen is the round driver's
 * (src/rounds.c, shared with `d3po auto`); these functions only move pairs
 * between the driver and the screen's queue ---- */

/* a pair the driver saved as id goes into the queue */
static void on_pair(ui *u, long id, d3_pair_sample *p) {
    char err[D3_ERRLEN] = "";
    drift_add(u, engine_pair_drift(p), p->version);
    qpair *q = qpair_from(u->s, id, p, err);
    if (!q) {
        snprintf(u->msg, sizeof u->msg, "pair %ld not shown: %s", id, err);
        engine_pair_free(p);
        return;
    }
    if (u->nq < QMAX) u->queue[u->nq++] = q;
    else qpair_free(q);
}

static void top_up(ui *u) {
    if (u->grid_on) gridview_top_up(u->grid);
    else rounds_top_up(u->d, u->nq);
}

/* The driver's status: the one source of the header, the status line and
 * the stats view (see engine_line). */
static void round_status(ui *u) { rounds_get_status(u->d, &u->rs); }

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

static void grid_on_group(ui *u, long id, d3_pair_sample *p);

static void engine_events(ui *u) {
    rounds_event ev;
    while (rounds_poll(u->d, &ev)) {
        switch (ev.kind) {
        case RV_PAIR:
            on_pair(u, ev.id, ev.pair);
            ev.pair = NULL; /* owned by the queue now */
            break;
        case RV_GROUP:
            grid_on_group(u, ev.id, ev.pair);
            ev.pair = NULL; /* the grid's now */
            break;
        case RV_TRAINED:
            snprintf(u->msg, sizeof u->msg, "round %d trained on %d labels: model v%ld, loss %.4f",
                     ev.round, ev.nlabels, ev.version, ev.loss);
            snprintf(u->status, sizeof u->status, "round %d trained: model v%ld", ev.round, ev.version);
            break;
        case RV_ERROR:
            snprintf(u->msg, sizeof u->msg, "%s", ev.msg);
            break;
        default:
            break;
        }
        rounds_event_free(&ev);
    }
    round_status(u);
}

/* The training mark of a history row: trained with this choice, changed
 * after training (the new answer goes into the next round), or waiting. */
static const char *hist_mark(const d3_session *s, long id) {
    static char buf[48];
    int tc = session_trained_choice(s, id), c = session_choice_of(s, id);
    if (session_label_trained(s, id)) return "trained";
    if (tc != SESSION_NONE && tc != c) {
        snprintf(buf, sizeof buf, "trained as %s, changed", session_choice_name(tc));
        return buf;
    }
    return session_label_pending(s, id) ? "next round" : "";
}

/* ---- drawing ---- */

/* The sixel size of a W x H image in w x h cells: enlarged by the largest
 * whole factor (returned) when it fits, else shrunk to fit (returns 0). */
static int sixel_fit(const term_caps *caps, int W, int H, int w, int h, int *ow, int *oh) {
    double bw = (double)w * caps->cell_w, bh = (double)h * caps->cell_h;
    int f = (int)fmin(bw / W, bh / H);
    if (f >= 1) {
        *ow = W * f;
        *oh = H * f;
        return f;
    }
    double sc = fmin(bw / W, bh / H);
    *ow = (int)(W * sc) < 1 ? 1 : (int)(W * sc);
    *oh = (int)(H * sc) < 1 ? 1 : (int)(H * sc);
    return 0;
}

int label_encode_image(term_mode mode, const term_caps *caps, int colors, const uint8_t *rgb, int W,
                       int H, int top, int left, int w, int h, unsigned char **out, size_t *outlen) {
    char err[D3_ERRLEN];
    *out = NULL;
    *outlen = 0;
    if (mode == TERM_MODE_SIXEL) {
        int ow, oh, f = sixel_fit(caps, W, H, w, h, &ow, &oh);
        uint8_t *up = malloc((size_t)ow * oh * 3);
        if (!up) return -1;
        if (f) sixel_upscale_nearest(up, rgb, W, H, f); /* whole factor: sharp pixels */
        else sixel_downscale_area(up, ow, oh, rgb, W, H); /* larger than the panel */
        unsigned char *enc;
        size_t len;
        if (sixel_encode_rgb(up, ow, oh, colors, 0, &enc, &len, err) == 0) {
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
        blocks_fit(W, H, w, h, &bc, &br);
        blocks_out bo = {0};
        uint8_t *small = NULL; /* more pixels than half blocks: average them first */
        if ((W > bc || H > 2 * br) && (small = malloc((size_t)bc * 2 * br * 3)))
            sixel_downscale_area(small, bc, 2 * br, rgb, W, H);
        if (blocks_render(small ? small : rgb, small ? bc : W, small ? 2 * br : H, mode, bc, br, &bo,
                          err) == 0)
            blocks_place(&bo, top, left, out, outlen, err);
        blocks_free(&bo);
        free(small);
    }
    return *out ? 0 : -1;
}

static void encode_job(const encoder *e, encjob *j) {
    label_encode_image(e->mode, &e->caps, e->colors, j->rgb, j->W, j->H, j->top, j->left, j->w,
                       j->h, &j->out, &j->len);
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
    size_t n = (size_t)q->W * q->H * 3;
    *j = (encjob){.id = q->id, .i = i, .key = key, .W = q->W, .H = q->H, .rgb = malloc(n),
                  .top = top, .left = left, .w = w, .h = h};
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
static void panel_geom(int *top, int *h, int *w, int *left0, int *left1);

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

/* Images go where curses thinks the screen is blank: panel_geom gives the
 * two panels (rows top .. top+h-1; a gap of a few columns between them,
 * wider on wide screens, so the images never touch), zoom_geom the one
 * image of the zoom view, centred on rows 1 .. LINES-5. Rows: 0 header, 2
 * the prompt above each panel, LINES-4 the pair line, LINES-3 messages,
 * LINES-2 the keys, LINES-1 the engine's status. */
static void panel_geom(int *top, int *h, int *w, int *left0, int *left1) {
    int rows = LINES, cols = COLS;
    int gap = 2 + cols / 50;
    *top = 3;
    *h = rows - 7;
    *w = (cols - 2 - gap) / 2;
    *left0 = 1;
    *left1 = 1 + *w + gap;
}

/* Columns a W x H image takes when fitted into w x h cells. */
static int image_cols(const ui *u, int W, int H, int w, int h) {
    if (u->mode != TERM_MODE_SIXEL) {
        int bc, br;
        blocks_fit(W, H, w, h, &bc, &br);
        return bc;
    }
    int ow, oh;
    sixel_fit(&u->caps, W, H, w, h, &ow, &oh);
    return (ow + u->caps.cell_w - 1) / u->caps.cell_w;
}

/* zoom: every row between the header and the pair line */
static void zoom_geom(const ui *u, int W, int H, int *top, int *h, int *w, int *left) {
    *top = 1;
    *h = LINES - 5;
    *w = COLS - 2;
    int used = image_cols(u, W, H, *w, *h);
    *left = 1 + (*w - used) / 2;
}

static void draw_images(ui *u) {
    int top, h, w, l0, l1;
    panel_geom(&top, &h, &w, &l0, &l1);
    if (u->help || u->picking || u->stats || u->logview || u->grid_on) return;
    if (u->hist) {
        if (u->hist_pair) {
            int hw = (w - 2) / 2;
            put_image(u, u->hist_pair, 0, top, l1, hw, h);
            put_image(u, u->hist_pair, 1, top, l1 + hw + 2, hw, h);
        }
        return;
    }
    if (!u->nq) return;
    qpair *q = u->queue[0];
    if (u->zoom) {
        int zl;
        zoom_geom(u, q->W, q->H, &top, &h, &w, &zl);
        put_image(u, q, u->zoom - 1, top, zl, w, h);
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

/* ---- the message log ---- */

static void log_add(ui *u, const char *what, const char *text) {
    char safe[D3_ERRLEN + 96];
    sanitize(safe, sizeof safe, text);
    if (u->nlog == LOG_MAX) {
        free(u->log[0]);
        memmove(u->log, u->log + 1, (LOG_MAX - 1) * sizeof *u->log);
        u->nlog--;
    }
    if (!u->log) u->log = calloc(LOG_MAX, sizeof *u->log);
    if (!u->log) return;
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char line[D3_ERRLEN + 128];
    snprintf(line, sizeof line, "%02d:%02d:%02d %s%s", tm.tm_hour, tm.tm_min, tm.tm_sec, what, safe);
    u->log[u->nlog++] = strdup(line);
}

/* ---- the status line and the header: one source ---- */

/* What the engine is doing, from the round driver's status (the header
 * reads the same status: one source). */
static void engine_line(const ui *u, char *out, size_t n) {
    const rounds_status *r = &u->rs;
    if (r->training) {
        char bar[24] = "", step[48] = "", loss[32] = "", eta[32] = "";
        int pct = r->train_n > 0 ? (int)(100.0 * r->train_i / r->train_n + 0.5) : 0;
        int fill = pct / 10;
        snprintf(bar, sizeof bar, "[%.*s%.*s] ", fill, "##########", 10 - fill, "..........");
        if (r->train_i > 0 && r->train_n > 0) snprintf(step, sizeof step, ", step %d/%d", r->train_i, r->train_n);
        if (r->train_i > 0 && isfinite(r->train_loss)) snprintf(loss, sizeof loss, ", loss %.4f", r->train_loss);
        if (isfinite(r->train_eta_s)) snprintf(eta, sizeof eta, ", ~%.0f s left", r->train_eta_s);
        snprintf(out, n, "%straining round %d on %d label%s: %d%%%s%s%s; next pairs from v%ld; new "
                 "labels go to round %d", bar, r->train_round, r->train_nlabels,
                 r->train_nlabels == 1 ? "" : "s", pct, step, loss, eta, r->version, r->round);
    } else if (r->inflight > 0 && !u->nq) {
        snprintf(out, n, "sampling the next pair with model v%ld...", r->version);
    } else if (r->inflight > 0) {
        snprintf(out, n, "sampling %d pair%s ahead with model v%ld%s%s", r->inflight,
                 r->inflight == 1 ? "" : "s", r->version, u->status[0] ? "; " : "", u->status);
    } else {
        snprintf(out, n, "%s", u->status[0] ? u->status : "idle");
    }
}

/* One line, fitted on word boundaries, never past the right edge. */
static void put_fitted(int row, int col, const char *text) {
    char safe[1024], line[1024];
    sanitize(safe, sizeof safe, text);
    fit_words(line, sizeof line, safe, COLS - col - 1);
    mvaddstr(row, col, line);
}

/* ---- overlays ---- */

static void draw_help(ui *u, int top) {
    static const char *what[D3_ACT_COUNT] = {
        "the left image is better", "the right image is better", "tie (no gradient)",
        "skip (no label)", "undo the last decision", "zoom: left image, right image, both",
        "history: past pairs; change a choice with the decision keys", "end the round now and train",
        "choose the prompt of new pairs", "this help", "quit (safe at any moment)",
        "statistics: labels, rate, balance, prompts, training", "messages: start-up warnings and errors"};
    put_fitted(top, 2, "keys (remap them in d3po.conf, ui.keys; see d3po.conf(5)); Escape closes "
                       "any view:");
    int r = top + 2;
    for (int a = 0; a < D3_ACT_COUNT && r < LINES - 5; a++, r++) {
        char keys[64] = "", line[256];
        for (int k = 0; k < u->c->ui.nkeys[a]; k++)
            snprintf(keys + strlen(keys), sizeof keys - strlen(keys), "%s%s", k ? " " : "",
                     u->c->ui.keys[a][k]);
        const char *w = a == D3_ACT_PROMPT && u->text_prompts
                            ? "type the prompt of new pairs (saved in the session's prompts)"
                            : what[a];
        snprintf(line, sizeof line, "%-16s %s", keys, w);
        put_fitted(r, 4, line);
    }
    char obj[160];
    snprintf(obj, sizeof obj, "training objective: %s%s (train.objective, --objective)",
             config_objective_name(u->c->train.objective),
             u->c->train.all_labels ? ", over every label so far" : "");
    const char *notes[] = {
        "every decision is in labels.jsonl (fsync'd) before the next pair shows", obj,
        "G: grid mode, groups of k images of one prompt (d3po label --grid K): 1..k cycle a mark, "
        "arrows with g/b mark, B picks the best, Enter submits; each good image beats each bad "
        "one in training",
        "drift: the mean per-step log-probability ratio log p(model) - log p(base) of the last "
        "measured pairs (every 4th pair, up to 8) of the newest model version; 0 at the base "
        "model, it grows as training moves the model away from it",
        NULL};
    r++;
    for (int i = 0; notes[i] && r < LINES - 5; i++) {
        const char *p = notes[i];
        while (*p && r < LINES - 5) { /* wrapped on words */
            char line[512];
            size_t used = fit_words(line, sizeof line, p, COLS - 4);
            if (p[used]) line[strlen(line) - 3] = 0; /* no "..." when wrapping */
            mvaddstr(r++, 2, line);
            p += used;
        }
    }
}

/* Per prompt: how many labeled pairs (read from the pair files' headers:
 * the class, or on free-text families the prompt text; again only when
 * the session's label count changed), most first. */
static int pc_cmp(const void *a, const void *b) {
    const prompt_count *x = a, *y = b;
    return x->n != y->n ? (y->n > x->n ? 1 : -1) : strcmp(x->text, y->text);
}

static void count_prompts(ui *u, long labeled) {
    if (u->pc && u->pc_counted == labeled) return;
    for (int i = 0; i < u->npc; i++) free(u->pc[i].text);
    free(u->pc);
    u->pc = NULL;
    u->npc = 0;
    int cap = 0;
    for (long id = 0; id < u->s->next_pair; id++) {
        if (session_choice_of(u->s, id) == SESSION_NONE) continue;
        char buf[SESSION_TRAJ_PROMPT_MAX + 1];
        const char *t = NULL;
        if (u->text_prompts) {
            if (session_pair_prompt(u->s, id, buf, sizeof buf) >= 0) t = buf;
        } else {
            int k = session_pair_class(u->s, id);
            if (k >= 0 && k < u->nclasses) t = u->names[k];
        }
        if (!t) continue;
        int i = 0;
        while (i < u->npc && strcmp(u->pc[i].text, t)) i++;
        if (i == u->npc) {
            if (u->npc == cap) {
                prompt_count *nv = realloc(u->pc, (size_t)(cap = 2 * cap + 16) * sizeof *nv);
                if (!nv) break;
                u->pc = nv;
            }
            if (!(u->pc[i].text = strdup(t))) break;
            u->pc[i].n = 0;
            u->npc++;
        }
        u->pc[i].n++;
    }
    if (u->npc) qsort(u->pc, (size_t)u->npc, sizeof *u->pc, pc_cmp);
    u->pc_counted = labeled;
}

/* text made safe to show (control bytes as \xNN escapes, bad UTF-8 as
 * '?') and cut to at most cols terminal columns at a character boundary,
 * "..." marking a cut. */
static void fit_cols(char *dst, size_t n, const char *text, int cols) {
    char esc[1024], safe[1024];
    text_escape(esc, sizeof esc, text);
    sanitize(safe, sizeof safe, esc);
    size_t i = 0, keep = 0; /* keep: bytes that fit with room for "..." (n >= 4) */
    int w = 0;
    mbstate_t ms;
    memset(&ms, 0, sizeof ms);
    while (safe[i]) {
        wchar_t wc;
        size_t len = mbrtowc(&wc, safe + i, strlen(safe + i), &ms);
        if (len == (size_t)-1 || len == (size_t)-2 || len == 0) { /* not UTF-8 here: byte-wise */
            len = 1;
            wc = '?';
            memset(&ms, 0, sizeof ms);
        }
        int cw = wcwidth(wc);
        if (cw < 0) cw = 1;
        if (w + cw <= cols - 3 && i + len + 4 <= n) keep = i + len;
        if (w + cw > cols || i + len + 4 > n) break;
        w += cw;
        i += len;
    }
    if (safe[i]) { /* cut after the characters that fit before "..." */
        memcpy(dst, safe, keep);
        memcpy(dst + keep, "...", 4);
    } else {
        memcpy(dst, safe, i + 1);
    }
}

static void draw_stats(ui *u, int top) {
    session_stats st;
    session_info(u->s, &st);
    char line[512];
    long dec = 0;
    for (int i = 0; i < SESSION_NCHOICES; i++) dec += st.by_choice[i];
    put_fitted(top - 1, 1, "statistics (i or Escape closes)");
    int r = top;
#define PCT(x) (dec ? 100.0 * (double)(x) / (double)dec : 0.0)
    snprintf(line, sizeof line,
             "labels        %ld decided pair%s: A %ld (%.0f%%), B %ld (%.0f%%), tie %ld (%.0f%%), "
             "skip %ld (%.0f%%); %ld undone",
             dec, dec == 1 ? "" : "s", st.by_choice[SESSION_A], PCT(st.by_choice[SESSION_A]), st.by_choice[SESSION_B],
             PCT(st.by_choice[SESSION_B]), st.by_choice[SESSION_TIE], PCT(st.by_choice[SESSION_TIE]),
             st.by_choice[SESSION_SKIP], PCT(st.by_choice[SESSION_SKIP]), st.undone);
#undef PCT
    put_fitted(r++, 2, line);
    long sat = st.labeled - u->st0.labeled;
    double mins = difftime(time(NULL), u->t_start) / 60.0;
    char rate[48] = "rate shown after a minute";
    if (mins >= 1) snprintf(rate, sizeof rate, "%.0f per hour", sat / (mins / 60.0));
    snprintf(line, sizeof line, "this sitting  %ld label%s in %.0f min: %s", sat, sat == 1 ? "" : "s",
             mins, rate);
    put_fitted(r++, 2, line);
    snprintf(line, sizeof line,
             "training      %d round%s trained (model v%d): %ld label%s trained, %ld pending; "
             "round %d has %d of %d%s",
             st.round, st.round == 1 ? "" : "s", st.version, st.trained, st.trained == 1 ? "" : "s",
             st.untrained, u->rs.round, u->rs.pending, u->rs.round_size,
             u->rs.training ? "; a round is training now" : "");
    put_fitted(r++, 2, line);
    snprintf(line, sizeof line, "pairs         %ld sampled, %ld without a decision", st.pairs,
             st.unlabeled);
    put_fitted(r++, 2, line);
    groups_stats gs;
    groups_info(rounds_groups(u->d), &gs);
    if (gs.groups) {
        snprintf(line, sizeof line, "groups        %ld sampled, %ld marked, %ld skipped; %ld pairs "
                 "(good beats bad): %ld trained, %ld waiting", gs.groups, gs.decided, gs.skipped,
                 gs.pairs, gs.pairs_trained, gs.pairs_pending);
        put_fitted(r++, 2, line);
    }
    r++;
    count_prompts(u, st.labeled);
    int nset = u->text_prompts ? rounds_nprompts(u->d) : u->nclasses;
    if (nset < u->npc) nset = u->npc; /* typed prompts beyond the set */
    snprintf(line, sizeof line, "per prompt    labeled pairs, most first (%d of %d prompts labeled):",
             u->npc, nset);
    put_fitted(r++, 2, line);
    int bottom = LINES - 5;
    if (bottom <= r) return;
    int colw = u->text_prompts ? COLS - 4 : 40; /* prompts: one wide column */
    if (colw < 16) colw = 16;
    int ncol = (COLS - 4) / colw > 0 ? (COLS - 4) / colw : 1;
    int slots = (bottom - r) * ncol;
    for (int slot = 0; slot < slots && slot < u->npc; slot++) {
        char name[480];
        fit_cols(name, sizeof name, u->pc[slot].text, colw - 10);
        snprintf(line, sizeof line, "%6d  %s", u->pc[slot].n, name);
        mvaddstr(r + slot % (bottom - r), 4 + (slot / (bottom - r)) * colw, line);
    }
}

static void draw_log(ui *u, int top) {
    char head[160];
    snprintf(head, sizeof head, "messages: %d (start-up warnings first; Up/Down scroll; %s or Escape closes)",
             u->nlog, key_label(u->c, D3_ACT_LOG));
    put_fitted(top - 1, 1, head);
    if (!u->nlog) {
        mvaddstr(top + 1, 2, "no warnings or errors so far");
        return;
    }
    if (u->log_first >= u->nlog) u->log_first = u->nlog - 1;
    if (u->log_first < 0) u->log_first = 0;
    int r = top;
    for (int i = u->log_first; i < u->nlog && r < LINES - 4; i++) {
        const char *p = u->log[i];
        int first = 1;
        while (*p && r < LINES - 4) { /* wrapped on words, continuation indented */
            char line[1024];
            int indent = first ? 2 : 11;
            size_t used = fit_words(line, sizeof line, p, COLS - indent - 1);
            if (p[used]) line[strlen(line) - 3] = 0;
            mvaddstr(r++, indent, line);
            p += used;
            first = 0;
        }
    }
}

/* The decision keys that need the pair on screen. */
static int decides(int act) {
    return act == D3_ACT_LEFT || act == D3_ACT_RIGHT || act == D3_ACT_TIE || act == D3_ACT_SKIP ||
           act == D3_ACT_UNDO || act == D3_ACT_ZOOM;
}

static void draw(ui *u, int full) {
    /* Images are written around curses, which therefore thinks their cells
     * are blank: whenever what is shown changes, repaint the whole screen
     * (clearok) so no old image or block text survives. */
    long view = (((((((long)u->help * 2 + u->hist) * 2 + u->picking) * 2 + u->stats) * 2 +
                  u->logview) * 3 + u->zoom) * 100003L) +
                (u->hist ? u->hist_sel : u->nq ? u->queue[0]->id + 1 : 0);
    if (u->grid_on) view = view * 7 + 3 + gridview_view_id(u->grid) * 1000003L;
    if (strcmp(u->msg, u->logged)) { /* every message also goes to the log */
        memcpy(u->logged, u->msg, sizeof u->logged);
        if (u->msg[0]) log_add(u, "", u->msg);
    }
    if ((full = label_frame_begin(view, &u->last_view, full)) < 0) {
        if (u->msg[0] && LINES > 2) put_fitted(LINES / 2 + 1, 0, u->msg);
        refresh();
        return;
    }
    session_stats st;
    session_info(u->s, &st);
    char name[512], line[1024];
    sanitize(name, sizeof name, u->s->dir);
    attron(A_REVERSE);
    mvhline(0, 0, ' ', COLS);
    char drift[64] = "drift -";
    int nd;
    long dv;
    double dm = drift_mean(u, &nd, &dv);
    if (!isnan(dm)) snprintf(drift, sizeof drift, "drift %.3f (v%ld, %d pair%s)", dm, dv, nd, nd == 1 ? "" : "s");
    char rest[256];
    /* the objective last: a narrow terminal cuts it before the drift */
    snprintf(rest, sizeof rest, "round %d  labels %d/%d  model v%d  %s  ahead %d  %s  %s",
             u->rs.round, u->rs.pending, u->rs.round_size, u->s->version, u->be->name,
             u->nq > 0 ? u->nq - 1 : 0, drift, config_objective_name(u->c->train.objective));
    /* the session's folder gives way first: its end, then nothing */
    int room = COLS - 2 - 6 - (int)strlen(rest) - 2, nl = (int)strlen(name);
    if (room < 8) snprintf(line, sizeof line, "d3po  %s", rest);
    else if (nl <= room) snprintf(line, sizeof line, "d3po  %s  %s", name, rest);
    else snprintf(line, sizeof line, "d3po  ...%s  %s", name + nl - (room - 3), rest);
    put_fitted(0, 1, line);
    attroff(A_REVERSE);
    int top, h, w, l0, l1;
    panel_geom(&top, &h, &w, &l0, &l1);
    if (u->help) {
        draw_help(u, top);
    } else if (u->stats) {
        draw_stats(u, top);
    } else if (u->logview) {
        draw_log(u, top);
    } else if (u->hist) {
        snprintf(line, sizeof line, "history: %d decided pairs (Up/Down; decision keys change a choice; %s closes)",
                 u->hist_n, key_label(u->c, D3_ACT_HISTORY));
        put_fitted(2, l0, line);
        int first = u->hist_sel - h / 2 < 0 ? 0 : u->hist_sel - h / 2;
        for (int r = 0; r < h && first + r < u->hist_n; r++) {
            long id = u->hist_ids[first + r];
            if (first + r == u->hist_sel) attron(A_REVERSE);
            mvprintw(top + r, l0, " pair %6ld  %-5s %s", id,
                     session_choice_name(session_choice_of(u->s, id)), hist_mark(u->s, id));
            if (first + r == u->hist_sel) attroff(A_REVERSE);
        }
        if (u->hist_pair) {
            char prompt[128];
            sanitize(prompt, sizeof prompt, rounds_pair_prompt(u->d, u->hist_pair->p));
            mvprintw(LINES - 4, l1, "A | B  %.*s  (v%ld)", w > 16 ? w - 16 : 0, prompt,
                     u->hist_pair->p->version);
        }
    } else if (u->picking) {
        mvprintw(2, l0, "prompt of new pairs (Up/Down, Enter):");
        int first = u->pick_sel - h / 2 < 0 ? 0 : u->pick_sel - h / 2;
        for (int r = 0; r < h && first + r <= u->nclasses; r++) {
            int i = first + r;
            char pname[128];
            sanitize(pname, sizeof pname, i ? u->names[i - 1] : "(every prompt in turn)");
            if (i == u->pick_sel) attron(A_REVERSE);
            mvprintw(top + r, l0, " %-*.*s", COLS - 4, COLS - 4, pname);
            if (i == u->pick_sel) attroff(A_REVERSE);
        }
    } else if (u->grid_on) {
        gridview_draw(u->grid, top, l0, COLS - 2, LINES - 4 - top);
    } else if (u->nq) {
        qpair *q = u->queue[0];
        char prompt[SESSION_PROMPT_LEN];
        sanitize(prompt, sizeof prompt, rounds_pair_prompt(u->d, q->p));
        if (u->zoom) {
            snprintf(line, sizeof line, "image %d of 2 [%s] %s  pair %ld  (%s: the other image, "
                     "then both; Escape: both)", u->zoom,
                     key_label(u->c, u->zoom == 1 ? D3_ACT_LEFT : D3_ACT_RIGHT), prompt, q->id,
                     key_label(u->c, D3_ACT_ZOOM));
            put_fitted(LINES - 4, l0, line);
        } else {
            mvprintw(2, l0, "[%s] %.*s", key_label(u->c, D3_ACT_LEFT), w > 6 ? w - 6 : 0, prompt);
            mvprintw(2, l1, "[%s] %.*s", key_label(u->c, D3_ACT_RIGHT), w > 6 ? w - 6 : 0, prompt);
            snprintf(line, sizeof line, "pair %ld  seed %llu  sampled by v%ld", q->id,
                     (unsigned long long)q->p->seed, q->p->version);
            put_fitted(LINES - 4, l0, line);
        }
    } else {
        mvprintw(top + h / 2, 2, "sampling the next pair...");
    }
    if (u->typing) {
        char shown[SESSION_PROMPT_LEN + 8];
        sanitize(shown, sizeof shown, u->typed);
        snprintf(line, sizeof line, "new prompt (Enter: use it for the next pairs, Escape: cancel): %s_",
                 shown);
        put_fitted(LINES - 3, 1, line);
    } else if (u->msg[0]) {
        put_fitted(LINES - 3, 1, u->msg);
    }
    snprintf(line, sizeof line,
             "%s/%s better  %s tie  %s skip  %s undo  %s zoom  %s train  %s stats  %s log  %s help  "
             "%s quit",
             key_label(u->c, D3_ACT_LEFT), key_label(u->c, D3_ACT_RIGHT), key_label(u->c, D3_ACT_TIE),
             key_label(u->c, D3_ACT_SKIP), key_label(u->c, D3_ACT_UNDO), key_label(u->c, D3_ACT_ZOOM),
             key_label(u->c, D3_ACT_TRAIN), key_label(u->c, D3_ACT_STATS), key_label(u->c, D3_ACT_LOG),
             key_label(u->c, D3_ACT_HELP), key_label(u->c, D3_ACT_QUIT));
    if (u->grid_on) gridview_footer(u->grid, line, sizeof line);
    put_fitted(LINES - 2, 1, line);
    engine_line(u, line, sizeof line);
    put_fitted(LINES - 1, 1, line);
    wnoutrefresh(stdscr);
    doupdate();
    /* the images' cells are blank in curses and untouched by partial
     * updates: images go out again only after a full repaint */
    if (full && u->grid_on && !u->help && !u->stats && !u->logview && !u->hist && !u->picking)
        gridview_draw_images(u->grid);
    else if (full) draw_images(u);
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
    char err[D3_ERRLEN] = "";
    d3_pair_sample *p = rounds_load_pair(u->s, id, err);
    qpair *q = p ? qpair_from(u->s, id, p, err) : NULL;
    if (!q) {
        engine_pair_free(p);
        snprintf(u->msg, sizeof u->msg, "%s", err);
    }
    return q;
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

/* The prompt line of `p` on a free-text family: bytes append (UTF-8
 * arrives a byte a key event), Backspace removes the last character, Enter
 * makes the text the prompt of new pairs (rounds_fix_prompt adds it to the
 * session's prompts.json, written atomically, before any pair uses it; an
 * empty line goes back to the set in turn), Escape cancels. Control keys
 * do nothing. */
static void on_key_typing(ui *u, int ch) {
    if (ch == 27 || ch == 3) {
        u->typing = 0;
        snprintf(u->msg, sizeof u->msg, "prompt not changed");
        return;
    }
    if (ch == KEY_BACKSPACE || ch == 127 || ch == 8) {
        while (u->ntyped > 0 && ((unsigned char)u->typed[u->ntyped - 1] & 0xc0) == 0x80) u->ntyped--;
        if (u->ntyped > 0) u->ntyped--;
        u->typed[u->ntyped] = 0;
        return;
    }
    if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) {
        u->typing = 0;
        char shown[SESSION_PROMPT_LEN], err[D3_ERRLEN], check[SESSION_PROMPT_LEN];
        sanitize(check, sizeof check, u->typed);
        if (!u->ntyped) { /* an empty line: back to the set in turn */
            if (rounds_fix_prompt(u->d, NULL, err))
                snprintf(u->msg, sizeof u->msg, "prompt not changed: %s", err);
            else
                snprintf(u->msg, sizeof u->msg, "new pairs: every prompt of the set in turn");
        } else if (strcmp(check, u->typed)) {
            snprintf(u->msg, sizeof u->msg, "prompt not changed: not valid UTF-8 text (%s)", check);
        } else if (rounds_fix_prompt(u->d, u->typed, err)) {
            snprintf(u->msg, sizeof u->msg, "prompt not changed: %s", err);
        } else {
            sanitize(shown, sizeof shown, u->typed);
            snprintf(u->msg, sizeof u->msg, "new pairs: %s (saved in the session's prompts; queued "
                     "pairs stay)", shown);
        }
        return;
    }
    if (ch < 0x20 || ch == 0x7f || ch > 0xff) return; /* arrows, function keys, controls */
    if (u->ntyped + 1 < sizeof u->typed) {
        u->typed[u->ntyped++] = (char)ch;
        u->typed[u->ntyped] = 0;
    }
}

static void close_overlays(ui *u) {
    u->help = u->stats = u->logview = u->picking = 0;
    if (u->hist) {
        u->hist = 0;
        qpair_free(u->hist_pair);
        u->hist_pair = NULL;
    }
}

static void on_key_log(ui *u, int ch) {
    if (ch == KEY_UP || ch == 'k') u->log_first--;
    else if (ch == KEY_DOWN || ch == 'j') u->log_first++;
    else if (ch == KEY_PPAGE) u->log_first -= LINES / 2;
    else if (ch == KEY_NPAGE) u->log_first += LINES / 2;
    else if (ch == KEY_HOME) u->log_first = 0;
    else if (ch == KEY_END) u->log_first = u->nlog - 1;
}

static void grid_toggle(ui *u);

static void on_key(ui *u, int ch) {
    char kb[8];
    const char *k = label_key_name(ch, kb);
    if (u->typing) { on_key_typing(u, ch); return; }
    if (ch == 3) { u->quit = 1; return; } /* Ctrl-C that arrived during detection */
    if (!k && ch != KEY_UP && ch != KEY_DOWN && ch != '\n' && ch != KEY_ENTER) return;
    int act = k ? config_key_action(u->c, k) : -1;
    if (act == D3_ACT_QUIT && !u->hist && !u->picking && !(u->grid_on && gridview_hist_open(u->grid))) {
        u->quit = 1;
        return;
    }
    if (ch == 'G' && act < 0 && !u->help && !u->stats && !u->logview && !u->hist && !u->picking) {
        grid_toggle(u);
        return;
    }
    /* Escape closes any view at once (ESCDELAY is short, see label_run) */
    if (ch == 27 && act < 0) {
        if (u->grid_on) gridview_close_views(u->grid);
        if (u->help || u->stats || u->logview || u->hist || u->picking || u->zoom) {
            close_overlays(u);
            u->zoom = 0;
            u->msg[0] = 0;
        }
        return;
    }
    /* a decision needs the pair on screen: not under a view that hides it,
     * nor in a terminal too small to show it */
    int hidden_by = u->help ? 'h' : u->stats ? 's' : u->logview ? 'l' : u->picking ? 'p' : 0;
    if (decides(act) && (LINES < 12 || COLS < 40)) {
        snprintf(u->msg, sizeof u->msg, "the pair is not shown (terminal %dx%d, needs 40x12): "
                 "enlarge it; key %s did nothing", COLS, LINES, k);
        return;
    }
    if (decides(act) && hidden_by && act != D3_ACT_ZOOM) {
        snprintf(u->msg, sizeof u->msg, "the pair is hidden by the %s: key %s did nothing (Escape "
                 "closes it)", hidden_by == 'h' ? "help" : hidden_by == 's' ? "statistics" :
                 hidden_by == 'l' ? "message log" : "prompt chooser", k);
        return;
    }
    if (u->help || u->stats) { /* any other key closes them */
        int was_stats = u->stats;
        u->help = u->stats = 0;
        u->msg[0] = 0;
        if (act == D3_ACT_HELP || (was_stats && act == D3_ACT_STATS)) return;
        if (act != D3_ACT_LOG && act != D3_ACT_STATS && act != D3_ACT_HELP) return;
    }
    if (u->logview) {
        if (act == D3_ACT_LOG) { u->logview = 0; return; }
        if (act != D3_ACT_STATS && act != D3_ACT_HELP) { on_key_log(u, ch); return; }
        u->logview = 0;
    }
    u->msg[0] = 0;
    if (u->grid_on && !u->hist && !u->picking && gridview_key(u->grid, ch, act, u->msg, sizeof u->msg)) {
        round_status(u);
        return;
    }
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
    case D3_ACT_STATS: u->stats = 1; break;
    case D3_ACT_LOG: u->logview = 1; u->log_first = 0; break;
    case D3_ACT_ZOOM: u->zoom = (u->zoom + 1) % 3; break;
    case D3_ACT_HISTORY: hist_open(u); break;
    case D3_ACT_PROMPT:
        if (u->text_prompts) { /* type one: the prompts are free text */
            u->typing = 1;
            u->ntyped = 0;
            u->typed[0] = 0;
            break;
        }
        u->picking = 1;
        u->pick_sel = u->prompt_fixed + 1;
        break;
    default: break;
    }
}

int label_term_check(char *err) {
    const char *t = getenv("TERM");
    static const char what[] =
        "set TERM to the type your terminal emulates (for example TERM=xterm-256color; add "
        "--graphics blocks if images then look wrong), or work without a screen: d3po auto "
        "--labeler CMD, d3po train, d3po eval (see d3po --help)";
    if (!t || !*t) return d3_errf(err, "TERM is not set, so the screen cannot be drawn: %s", what);
    char name[64];
    sanitize(name, sizeof name, t);
    int e = 0;
    if (setupterm((char *)t, STDOUT_FILENO, &e) != OK)
        return d3_errf(err, "TERM=%s %s: %s", name,
                       e == -1 ? "cannot be looked up (no terminfo database)"
                               : "is not in the terminfo database", what);
    const char *cup = tigetstr("cup");
    int dumb = !cup || cup == (char *)-1 || tigetflag("hc") > 0;
    del_curterm(cur_term);
    if (dumb)
        return d3_errf(err, "TERM=%s cannot move the cursor (a dumb or hard-copy terminal), "
                            "which the labeling screen needs: %s", name, what);
    return 0;
}

void label_tty_guard(int fd, const term_caps *caps, term_mode mode) {
    char restore[TERM_QUERY_MAX];
    size_t n = mode == TERM_MODE_SIXEL ? term_sixel_modes(caps, 0, restore) : 0;
    term_guard_install(fd, fd, restore, n);
}

void label_tty_setup(int fd, const term_caps *caps, term_mode mode) {
    /* Escape alone closes views at once; 25 ms still keeps an arrow key's
     * bytes together, also over SSH (they travel in one packet) */
    set_escdelay(25);
    char leave[512] = "";
    const char *cap[] = {"cnorm", "rmcup"};
    for (int i = 0; i < 2; i++) {
        const char *v = tigetstr((char *)cap[i]);
        if (v && v != (char *)-1 && strlen(leave) + strlen(v) < sizeof leave) strcat(leave, v);
    }
    term_guard_leave(leave);
    if (mode != TERM_MODE_SIXEL) return;
    char set[TERM_QUERY_MAX];
    size_t n = term_sixel_modes(caps, 1, set);
    fflush(stdout); /* curses' own start-up bytes first */
    while (n > 0) {
        ssize_t w = write(fd, set, n);
        if (w <= 0) break;
        n -= (size_t)w;
    }
}

/* After the screen closed: what this sitting did, and what waits. */
static void grid_summary(ui *u);

static void print_summary(ui *u) {
    session_stats st;
    session_info(u->s, &st);
    long sat = st.labeled - u->st0.labeled;
    double mins = difftime(time(NULL), u->t_start) / 60.0;
    char dir[256];
    sanitize(dir, sizeof dir, u->s->dir);
    printf("d3po: %ld labels saved in %s (round %d, model v%d)\n", st.labeled, dir, st.round,
           st.version);
    printf("d3po: this sitting: %ld label%s in %.0f min", sat, sat == 1 ? "" : "s", mins);
    if (mins >= 1) printf(" (%.0f per hour)", sat / (mins / 60.0));
    printf("; A %ld, B %ld, tie %ld, skip %ld\n", st.by_choice[SESSION_A] - u->st0.by_choice[SESSION_A],
           st.by_choice[SESSION_B] - u->st0.by_choice[SESSION_B],
           st.by_choice[SESSION_TIE] - u->st0.by_choice[SESSION_TIE],
           st.by_choice[SESSION_SKIP] - u->st0.by_choice[SESSION_SKIP]);
    if (u->grid) grid_summary(u);
    if (st.untrained)
        printf("d3po: %ld label%s not trained yet: they train in the next round when you "
               "resume\n", st.untrained, st.untrained == 1 ? "" : "s");
    if (u->s->nwarn)
        printf("d3po: %d start-up warning%s (shown in the screen's log):\n", u->s->nwarn,
               u->s->nwarn == 1 ? "" : "s");
    for (int i = 0; i < u->s->nwarn; i++) {
        char w[D3_ERRLEN];
        sanitize(w, sizeof w, u->s->warn[i]);
        printf("  %s\n", w);
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
    u->text_prompts = u->s->family != SESSION_FAMILY_PIXEL;
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
    if (label_term_check(err)) {
        fprintf(stderr, "d3po label: %s\n", err);
        return 2;
    }
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
    log_add(u, "", u->status);
    /* start-up warnings: in the message area now, in the log view later */
    for (int i = 0; i < s->nwarn; i++) log_add(u, "start-up warning: ", s->warn[i]);
    if (s->nwarn) {
        snprintf(u->msg, sizeof u->msg, "start-up warning%s (%s shows %s): %s",
                 s->nwarn > 1 ? "s" : "", key_label(c, D3_ACT_LOG), s->nwarn > 1 ? "all" : "it",
                 s->warn[0]);
        memcpy(u->logged, u->msg, sizeof u->logged); /* already in the log */
    }
    u->t_start = time(NULL);
    session_info(s, &u->st0);

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
    label_tty_guard(STDOUT_FILENO, &u->caps, u->mode);
    /* the terminal's character set (UTF-8 prompts shown as text, not as
     * M- escapes); numbers keep the C locale */
    setlocale(LC_CTYPE, "");
    initscr();
    cbreak();
    noecho();
    keypad(stdscr, TRUE);
    curs_set(0);
    nodelay(stdscr, TRUE);
    label_tty_setup(STDOUT_FILENO, &u->caps, u->mode);
    for (size_t i = 0; i < u->caps.nleftover; i++) ungetch(u->caps.leftover[u->caps.nleftover - 1 - i]);
    if (c->label.grid >= GROUPS_MIN_K) { /* the start-up warning keeps the message line */
        char keep[sizeof u->msg];
        memcpy(keep, u->msg, sizeof keep);
        grid_toggle(u);
        if (keep[0]) memcpy(u->msg, keep, sizeof keep);
    }
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
    term_guard_release(); /* the sixel modes as they were */
    if (u->grid) groups_info(rounds_groups(u->d), &u->gstats); /* for the summary */
    rounds_stop(u->d); /* cancels a running round: its labels train in the next one */
    for (int i = 0; i < u->nq; i++) qpair_free(u->queue[i]);
    for (int i = 0; i < u->ndone; i++) qpair_free(u->done[i]);
    qpair_free(u->hist_pair);
    gridview_free(u->grid);
    for (int i = 0; i < u->nclasses; i++) free(u->names[i]);
    free(u->names);
    print_summary(u);
    for (int i = 0; i < u->nlog; i++) free(u->log[i]);
    free(u->log);
    for (int i = 0; i < u->npc; i++) free(u->pc[i].text);
    free(u->pc);
    return 0;
}

/* ---- grid mode (ui/gridview.c): groups of k images instead of pairs ---- */

/* The grid view, made the first time it is needed (k: label.grid, else 4). */
static gridview *grid_view(ui *u) {
    if (u->grid) return u->grid;
    gridview_env env = {.d = u->d, .s = u->s, .c = u->c, .mode = u->mode, .caps = u->caps,
                        .colors = u->c->ui.colors};
    u->grid = gridview_new(&env, u->c->label.grid >= GROUPS_MIN_K ? u->c->label.grid : 4);
    if (u->grid) gridview_load_undecided(u->grid);
    return u->grid;
}

static void grid_toggle(ui *u) {
    if (!u->grid_on && !grid_view(u)) {
        snprintf(u->msg, sizeof u->msg, "grid mode: out of memory");
        return;
    }
    u->grid_on = !u->grid_on;
    u->zoom = 0;
    if (u->grid_on)
        snprintf(u->msg, sizeof u->msg, "grid mode: groups of %d images; mark each good or bad, "
                 "Enter submits (G: back to pairs)", gridview_k(u->grid));
    else
        snprintf(u->msg, sizeof u->msg, "pairs (G: groups of %d)", gridview_k(u->grid));
}

static void grid_on_group(ui *u, long id, d3_pair_sample *p) {
    if (grid_view(u)) gridview_on_group(u->grid, id, p);
    else engine_pair_free(p);
}

/* The exit summary's line on groups. */
static void grid_summary(ui *u) {
    const groups_stats g = u->gstats;
    printf("d3po: groups: %ld marked, %ld skipped, %ld undecided; their pairs: %ld trained, %ld not "
           "trained yet\n", g.decided, g.skipped, g.undecided, g.pairs_trained, g.pairs_pending);
}
