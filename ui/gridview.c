/* gridview.c - the labeling screen's grid mode (see gridview.h): a queue of
 * groups, the rows x cols layout, the marks and the keys that set them,
 * the group history. Images are encoded on the UI thread (a group is a few
 * small images; the pair view's encoder thread is label.c's) and cached per
 * placement, and written after doupdate() like the pair view's. */
#include "gridview.h"

#include <curses.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "groups.h"
#include "image.h"
#include "label.h"
#include "text.h"

#define GV_QMAX 64
#define GV_DONE 32
#define GV_GAP 2

typedef struct {
    long id;
    int k, S;
    long version;
    uint64_t seed;
    char prompt[160];                       /* escaped for the screen */
    char marks[GROUPS_MAX_K + 1];           /* '-', 'g', 'b' per image */
    uint8_t *rgb[GROUPS_MAX_K];             /* [S][S][3] */
    unsigned char *gfx[GROUPS_MAX_K];       /* encoded and placed */
    size_t gfxlen[GROUPS_MAX_K];
    long gfx_key[GROUPS_MAX_K];
} grp;

struct gridview {
    gridview_env env;
    int k;
    grp *queue[GV_QMAX];
    int nq;
    grp *done[GV_DONE]; /* submitted on this screen, newest last (undo) */
    int ndone;
    int sel;
    /* the last layout (for the images after doupdate): the group drawn,
     * its tiles' grid, size, first row and first tile's column */
    grp *shown;
    int first, count; /* the images of shown that are drawn (zoom: one) */
    int rows, cols, tw, th, top, x0;
    int zoom;         /* the selected image alone, as large as the area allows */
    /* group history */
    int hist, hist_sel, hist_n;
    long *hist_ids;
    grp *hist_grp; /* the selected decided group, loaded from disk */
    int hist_tile; /* its selected image */
};

static void grp_free(grp *q) {
    if (!q) return;
    for (int i = 0; i < GROUPS_MAX_K; i++) { free(q->rgb[i]); free(q->gfx[i]); }
    free(q);
}

/* the centre square of an img_w x img_h image */
static uint8_t *square(const uint8_t *rgb, int iw, int ih, int S) {
    uint8_t *o = malloc((size_t)S * S * 3);
    if (!o) return NULL;
    int x0 = (iw - S) / 2, y0 = (ih - S) / 2;
    for (int y = 0; y < S; y++) memcpy(o + (size_t)y * S * 3, rgb + ((size_t)(y + y0) * iw + x0) * 3, (size_t)S * 3);
    return o;
}

static grp *grp_new(long id, int k, long version, uint64_t seed, const char *prompt) {
    grp *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->id = id;
    q->k = k;
    q->version = version;
    q->seed = seed;
    text_escape(q->prompt, sizeof q->prompt, prompt ? prompt : "");
    memset(q->marks, GROUP_UNMARKED, (size_t)k);
    q->marks[k] = 0;
    for (int i = 0; i < GROUPS_MAX_K; i++) q->gfx_key[i] = -1;
    return q;
}

gridview *gridview_new(const gridview_env *env, int k) {
    gridview *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->env = *env;
    g->k = k < GROUPS_MIN_K ? GROUPS_MIN_K : k > GROUPS_MAX_K ? GROUPS_MAX_K : k;
    return g;
}

void gridview_free(gridview *g) {
    if (!g) return;
    for (int i = 0; i < g->nq; i++) grp_free(g->queue[i]);
    for (int i = 0; i < g->ndone; i++) grp_free(g->done[i]);
    free(g->hist_ids);
    grp_free(g->hist_grp);
    free(g);
}

int gridview_k(const gridview *g) { return g->k; }
int gridview_held(const gridview *g) { return g->nq; }
int gridview_hist_open(const gridview *g) { return g->hist; }
static void hist_close(gridview *g) {
    g->hist = 0;
    grp_free(g->hist_grp);
    g->hist_grp = NULL;
}

void gridview_close_views(gridview *g) {
    hist_close(g);
    g->zoom = 0;
}

static void enqueue(gridview *g, grp *q) {
    if (q && g->nq < GV_QMAX) g->queue[g->nq++] = q;
    else grp_free(q);
}

void gridview_on_group(gridview *g, long id, d3_pair_sample *p) {
    int n = p->n, S = p->rgb[0] ? (p->img_w < p->img_h ? p->img_w : p->img_h) : p->S;
    grp *q = grp_new(id, n, p->version, p->seed, p->prompt ? p->prompt
                     : rounds_prompt_of(g->env.d, p->cls));
    int ok = q != NULL;
    for (int i = 0; ok && i < n; i++) {
        if (p->rgb[i]) {
            q->rgb[i] = square(p->rgb[i], p->img_w, p->img_h, S);
        } else if ((q->rgb[i] = malloc((size_t)S * S * 3))) {
            image_to_rgb(q->rgb[i], p->traj[i] + (size_t)p->K * 3 * S * S, S, S);
        }
        ok = q->rgb[i] != NULL;
    }
    if (q) q->S = S;
    engine_pair_free(p);
    if (ok) enqueue(g, q);
    else grp_free(q);
}

/* a group from disk: its header from the .traj, its images from the PNGs */
static grp *load_group(gridview *g, long id, char *err) {
    d3_groups *gs = rounds_groups(g->env.d);
    session_traj t;
    if (groups_load(gs, id, &t, err)) return NULL;
    grp *q = grp_new(id, t.N, t.version, t.seed, t.prompt ? t.prompt : rounds_prompt_of(g->env.d, t.cls));
    int n = t.N;
    session_traj_free(&t);
    for (int i = 0; q && i < n; i++) {
        char path[4300];
        uint8_t *rgb;
        int w, h;
        if (png_read_rgb(groups_path(gs, id, i, path, sizeof path), &rgb, &w, &h, err)) {
            grp_free(q);
            return NULL;
        }
        int S = w < h ? w : h;
        if (i && S != q->S) {
            d3_errf(err, "%s: %dx%d, the group's other images are %dx%d", path, w, h, q->S, q->S);
            free(rgb);
            grp_free(q);
            return NULL;
        }
        q->S = S;
        q->rgb[i] = square(rgb, w, h, S);
        free(rgb);
        if (!q->rgb[i]) { grp_free(q); return NULL; }
    }
    return q;
}

void gridview_load_undecided(gridview *g) {
    d3_groups *gs = rounds_groups(g->env.d);
    for (long id = groups_next_undecided(gs, 0); id >= 0 && g->nq < GV_QMAX;
         id = groups_next_undecided(gs, id + 1)) {
        char err[D3_ERRLEN];
        grp *q = load_group(g, id, err);
        if (q) enqueue(g, q);
        else session_warn(g->env.s, "%s; group %ld is not shown", err, id);
    }
}

void gridview_top_up(gridview *g) { rounds_top_up_groups(g->env.d, g->k, g->nq); }

long gridview_view_id(const gridview *g) {
    if (g->hist) return -2 - g->hist_sel;
    if (g->zoom && g->nq) return -1000000L - (g->queue[0]->id * 16 + g->sel);
    return g->nq ? g->queue[0]->id * 16 + g->queue[0]->k : -1;
}

/* ---- layout ---- */

int gridview_layout(int k, int W, int H, int px_w, int px_h, int S, int sixel, int gap, int *rows,
                    int *cols, int *side) {
    int best = -1;
    *rows = *cols = *side = 0;
    for (int r = 1; r <= k; r++) {
        int c = (k + r - 1) / r;
        if ((r - 1) * c >= k) continue; /* a row would stay empty */
        int tw = (W - (c - 1) * gap) / c, th = H / r - 1; /* one label row per tile */
        if (tw < 2 || th < 1) continue;
        int sd = tw * px_w < th * px_h ? tw * px_w : th * px_h;
        if (sixel && sd >= S) sd = sd / S * S; /* whole factors: sharp pixels; else scaled down */
        /* equal image sizes: the layout nearer a square (a 2x2 block of 4
         * is easier to compare across than a strip of 4) */
        if (sd > best || (sd == best && abs(r - c) < abs(*rows - *cols))) {
            best = sd;
            *rows = r;
            *cols = c;
            *side = sd;
        }
    }
    return best > 0 ? 0 : -1;
}

/* ---- drawing ---- */

static const char *mark_name(char m) { return m == GROUP_GOOD ? "good" : m == GROUP_BAD ? "BAD" : "-"; }

static void draw_hist(gridview *g, int top, int left, int w, int h) {
    d3_groups *gs = rounds_groups(g->env.d);
    char line[512];
    snprintf(line, sizeof line, "group history: %d decided groups (newest first)", g->hist_n);
    mvaddnstr(top - 1, left, line, w);
    int first = g->hist_sel - h / 2 < 0 ? 0 : g->hist_sel - h / 2;
    for (int r = 0; r < h && first + r < g->hist_n; r++) {
        long id = g->hist_ids[first + r];
        const char *m = groups_marks(gs, id);
        int pr[GROUPS_MAX_PAIRS][2], np = groups_pairs(m, pr);
        snprintf(line, sizeof line, " group %6ld  %-9s %2d pair%s  %s", id, m, np, np == 1 ? " " : "s",
                 groups_trained(gs, id) && np ? "trained" : groups_pending(gs, id) ? "next round" : "");
        if (first + r == g->hist_sel) attron(A_REVERSE);
        mvaddnstr(top + r, left, line, w);
        if (first + r == g->hist_sel) attroff(A_REVERSE);
    }
}

/* Lays images first .. first+count-1 of q out in the area and draws their
 * labels (sel: the selected image, -1 none); g->shown and the layout are
 * what gridview_draw_images writes. */
static void draw_tiles(gridview *g, grp *q, int first, int count, int sel, int top, int left, int w,
                       int h) {
    char line[64];
    g->shown = NULL;
    g->rows = 0;
    int sixel = g->env.mode == TERM_MODE_SIXEL;
    int pw = sixel ? g->env.caps.cell_w : 1, ph = sixel ? g->env.caps.cell_h : 2, side;
    if (pw < 1 || ph < 1 || gridview_layout(count, w, h, pw, ph, q->S, sixel, GV_GAP, &g->rows,
                                            &g->cols, &side)) {
        mvaddnstr(top + h / 2, left + 1, "enlarge the terminal to see the group", w - 1);
        g->rows = 0;
        return;
    }
    /* tiles as wide as their images (the label needs ~12 columns), the grid
     * centred in the area */
    int most = (w - (g->cols - 1) * GV_GAP) / g->cols;
    int used = sixel ? (side + pw - 1) / pw : side;
    g->tw = used < 12 ? 12 : used;
    if (g->tw > most) g->tw = most;
    g->th = h / g->rows - 1;
    g->top = top;
    g->x0 = left + (w - (g->cols * g->tw + (g->cols - 1) * GV_GAP)) / 2;
    for (int i = first; i < first + count; i++) {
        int r = (i - first) / g->cols, c = (i - first) % g->cols;
        int y = top + r * (g->th + 1), x = g->x0 + c * (g->tw + GV_GAP);
        snprintf(line, sizeof line, "[%d] %s%s", i + 1, mark_name(q->marks[i]), i == sel ? " <" : "");
        if (i == sel) attron(A_REVERSE);
        if (q->marks[i] != GROUP_UNMARKED) attron(A_BOLD);
        mvaddnstr(y, x, line, g->tw);
        attroff(A_REVERSE | A_BOLD);
    }
    g->shown = q;
    g->first = first;
    g->count = count;
}

void gridview_draw(gridview *g, int top, int left, int w, int h) {
    g->shown = NULL;
    if (g->hist) {
        int lw = w / 3 < 46 ? 46 : w / 3;
        if (lw > w) lw = w;
        draw_hist(g, top, left, lw, h);
        if (g->hist_grp && w - lw > 16) {
            char line[512];
            snprintf(line, sizeof line, "\"%s\"  sampled by v%ld", g->hist_grp->prompt,
                     g->hist_grp->version);
            mvaddnstr(top - 1, left + lw + 2, line, w - lw - 2);
            draw_tiles(g, g->hist_grp, 0, g->hist_grp->k, g->hist_tile, top, left + lw + 2, w - lw - 2, h);
        }
        return;
    }
    if (!g->nq) {
        char line[128];
        snprintf(line, sizeof line, "sampling a group of %d images...", g->k);
        mvaddstr(top + h / 2, left + 1, line);
        return;
    }
    grp *q = g->queue[0];
    char line[512];
    snprintf(line, sizeof line, "group %ld: %d images of \"%s\"  seed %llu  sampled by v%ld", q->id,
             q->k, q->prompt, (unsigned long long)q->seed, q->version);
    mvaddnstr(top - 1, left, line, w);
    if (g->sel >= q->k) g->sel = q->k - 1;
    if (g->zoom) draw_tiles(g, q, g->sel, 1, g->sel, top, left, w, h);
    else draw_tiles(g, q, 0, q->k, g->sel, top, left, w, h);
}

void gridview_draw_images(gridview *g) {
    grp *q = g->shown;
    if (!q || !g->rows) return;
    for (int i = g->first; i < g->first + g->count; i++) {
        int r = (i - g->first) / g->cols, c = (i - g->first) % g->cols;
        int y = g->top + r * (g->th + 1) + 1, x = g->x0 + c * (g->tw + GV_GAP);
        long key = (((long)y * 1031 + x) * 1031 + g->tw) * 1031 + g->th;
        if (q->gfx_key[i] != key || !q->gfx[i]) {
            free(q->gfx[i]);
            q->gfx[i] = NULL;
            q->gfx_key[i] = -1;
            if (label_encode_image(g->env.mode, &g->env.caps, g->env.colors, q->rgb[i], q->S, q->S, y, x,
                                   g->tw, g->th, &q->gfx[i], &q->gfxlen[i]) == 0)
                q->gfx_key[i] = key;
        }
        if (q->gfx[i]) {
            ssize_t wr = write(STDOUT_FILENO, q->gfx[i], q->gfxlen[i]);
            (void)wr;
        }
    }
}

void gridview_footer(const gridview *g, char *out, size_t n) {
    const d3_config *c = g->env.c;
#define KEY(a) (c->ui.nkeys[a] ? c->ui.keys[a][0] : "?")
    if (g->hist) {
        snprintf(out, n, "Up/Down group  Left/Right image  1-%d g b B marks  Enter saves the new marks  "
                 "%s or Escape closes", g->hist_grp ? g->hist_grp->k : g->k, KEY(D3_ACT_HISTORY));
        return;
    }
    snprintf(out, n, "1-%d cycle  arrows+g/b mark  B best  Enter submit  %s skip  %s undo  %s zoom  "
             "G pairs  %s history  %s train  %s help  %s quit", g->nq ? g->queue[0]->k : g->k,
             KEY(D3_ACT_SKIP), KEY(D3_ACT_UNDO), KEY(D3_ACT_ZOOM), KEY(D3_ACT_HISTORY),
             KEY(D3_ACT_TRAIN), KEY(D3_ACT_HELP), KEY(D3_ACT_QUIT));
#undef KEY
}

/* ---- keys ---- */

/* row i of the history: its group from disk, marked as journaled */
static void hist_select(gridview *g, int i) {
    if (i < 0 || i >= g->hist_n) return;
    g->hist_sel = i;
    g->hist_tile = 0;
    grp_free(g->hist_grp);
    g->hist_grp = NULL;
    char err[D3_ERRLEN];
    long id = g->hist_ids[i];
    const char *m = groups_marks(rounds_groups(g->env.d), id);
    if (!(g->hist_grp = load_group(g, id, err))) return;
    if ((int)strlen(m) == g->hist_grp->k) memcpy(g->hist_grp->marks, m, (size_t)g->hist_grp->k);
}

static void hist_open(gridview *g) {
    d3_groups *gs = rounds_groups(g->env.d);
    free(g->hist_ids);
    g->hist_ids = malloc((size_t)(gs->next > 0 ? gs->next : 1) * sizeof *g->hist_ids);
    g->hist_n = 0;
    for (long id = gs->next - 1; g->hist_ids && id >= 0; id--)
        if (groups_marks(gs, id)[0]) g->hist_ids[g->hist_n++] = id;
    g->hist = 1;
    hist_select(g, 0);
}

static void submit(gridview *g, const char *marks, char *msg, size_t n) {
    grp *q = g->queue[0];
    char err[D3_ERRLEN];
    if (rounds_decide_group(g->env.d, q->id, marks, q->k, (int)q->version, err)) {
        snprintf(msg, n, "group NOT saved: %s", err);
        return;
    }
    int pr[GROUPS_MAX_PAIRS][2], np = groups_pairs(marks, pr);
    if (!strcmp(marks, "skip")) snprintf(msg, n, "group %ld skipped", q->id);
    else snprintf(msg, n, "group %ld: %s saved, %d pair%s%s", q->id, marks, np, np == 1 ? "" : "s",
                  np ? " for training" : " (all good or all bad: nothing to train)");
    memmove(g->queue, g->queue + 1, (size_t)(g->nq - 1) * sizeof *g->queue);
    g->nq--;
    if (g->ndone == GV_DONE) {
        grp_free(g->done[0]);
        memmove(g->done, g->done + 1, (GV_DONE - 1) * sizeof *g->done);
        g->ndone--;
    }
    g->done[g->ndone++] = q;
    g->sel = 0;
    g->zoom = 0;
}

static void undo(gridview *g, char *msg, size_t n) {
    char err[D3_ERRLEN];
    long id;
    if (rounds_undo_group(g->env.d, &id, err)) {
        snprintf(msg, n, "undo: %s", err);
        return;
    }
    const char *back = groups_marks(rounds_groups(g->env.d), id);
    if (!back[0] && g->ndone && g->done[g->ndone - 1]->id == id && g->nq < GV_QMAX) {
        grp *q = g->done[--g->ndone];
        memmove(g->queue + 1, g->queue, (size_t)g->nq * sizeof *g->queue);
        g->queue[0] = q;
        g->nq++;
        snprintf(msg, n, "undid the decision on group %ld (the journal keeps an undo record)", id);
    } else {
        snprintf(msg, n, "undid the last change of group %ld: it is %s again", id,
                 back[0] ? back : "undecided");
    }
}

/* The marking keys on q with selection *sel (cols: tiles per row): 1 when
 * ch was one of them. */
static int edit_marks(grp *q, int *sel, int cols, int ch, char *msg, size_t n) {
    if (ch >= '1' && ch <= '0' + q->k) {
        int i = ch - '1';
        char *m = &q->marks[i];
        *m = *m == GROUP_UNMARKED ? GROUP_GOOD : *m == GROUP_GOOD ? GROUP_BAD : GROUP_UNMARKED;
        *sel = i;
    } else if (ch >= '1' && ch <= '8') {
        snprintf(msg, n, "this group has %d images: keys 1-%d", q->k, q->k);
    } else if (ch == KEY_LEFT) {
        if (*sel > 0) (*sel)--;
    } else if (ch == KEY_RIGHT) {
        if (*sel + 1 < q->k) (*sel)++;
    } else if (ch == KEY_UP) {
        if (*sel - cols >= 0) *sel -= cols;
    } else if (ch == KEY_DOWN) {
        if (*sel + cols < q->k) *sel += cols;
    } else if (ch == 'g' || ch == 'b' || ch == '-') {
        q->marks[*sel] = (char)ch;
        if (ch != '-' && *sel + 1 < q->k) (*sel)++;
    } else if (ch == 'B') {
        for (int i = 0; i < q->k; i++) q->marks[i] = i == *sel ? GROUP_GOOD : GROUP_BAD;
        snprintf(msg, n, "image %d is the best: the others are bad (Enter saves)", *sel + 1);
    } else {
        return 0;
    }
    return 1;
}

/* history: marks of the selected past group changed and saved with Enter
 * (a new journal line; the newest counts, as for pairs) */
static int hist_key(gridview *g, int ch, int act, char *msg, size_t n) {
    if (ch == KEY_UP || ch == 'k') { hist_select(g, g->hist_sel - 1); return 1; }
    if (ch == KEY_DOWN || ch == 'j') { hist_select(g, g->hist_sel + 1); return 1; }
    if (act == D3_ACT_HISTORY || act == D3_ACT_QUIT || ch == 27) { hist_close(g); return 1; }
    if (act == D3_ACT_HELP || act == D3_ACT_STATS || act == D3_ACT_LOG) return 0;
    grp *q = g->hist_grp;
    if (!q) return 1;
    if (edit_marks(q, &g->hist_tile, g->cols > 0 ? g->cols : q->k, ch, msg, n)) return 1;
    if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) {
        char err[D3_ERRLEN];
        d3_groups *gs = rounds_groups(g->env.d);
        int was = groups_trained(gs, q->id);
        if (strspn(q->marks, "-") == (size_t)q->k) {
            snprintf(msg, n, "nothing marked: mark images with 1-%d or g/b", q->k);
        } else if (rounds_decide_group(g->env.d, q->id, q->marks, q->k, (int)q->version, err)) {
            snprintf(msg, n, "group NOT saved: %s", err);
        } else {
            snprintf(msg, n, "group %ld changed to %s%s", q->id, q->marks,
                     was && !groups_trained(gs, q->id) ? " (trained before: the new marks go into "
                                                         "the next round)" : "");
        }
    }
    return 1;
}

int gridview_key(gridview *g, int ch, int act, char *msg, size_t n) {
    if (g->hist) return hist_key(g, ch, act, msg, n);
    if (act == D3_ACT_HISTORY) { hist_open(g); return 1; }
    if (act == D3_ACT_UNDO) { undo(g, msg, n); return 1; }
    int grid_key = (ch >= '1' && ch <= '8') || ch == KEY_LEFT || ch == KEY_RIGHT || ch == KEY_UP ||
                   ch == KEY_DOWN || ch == 'g' || ch == 'b' || ch == '-' || ch == 'B' || ch == '\n' ||
                   ch == '\r' || ch == KEY_ENTER || act == D3_ACT_SKIP || act == D3_ACT_TIE ||
                   act == D3_ACT_ZOOM || act == D3_ACT_LEFT || act == D3_ACT_RIGHT;
    if (!grid_key) return 0;
    if (!g->nq) {
        snprintf(msg, n, "no group on screen yet: the engine is sampling it");
        return 1;
    }
    grp *q = g->queue[0];
    if (edit_marks(q, &g->sel, g->cols > 0 ? g->cols : q->k, ch, msg, n)) return 1;
    if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) {
        if (strspn(q->marks, "-") == (size_t)q->k)
            snprintf(msg, n, "nothing marked: mark images with 1-%d or g/b, or skip the group", q->k);
        else
            submit(g, q->marks, msg, n);
    } else if (act == D3_ACT_SKIP) {
        submit(g, "skip", msg, n);
    } else if (act == D3_ACT_ZOOM) {
        g->zoom = !g->zoom;
    } else if (act == D3_ACT_TIE) {
        snprintf(msg, n, "grid mode: mark images good (g) or bad (b); G goes back to pairs for ties");
    }
    return 1;
}
