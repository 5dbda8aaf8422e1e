/* evaltui.c - the blind A/B screen of `d3po eval --tui` (see evaltui.h).
 *
 * The same layout and keys as the labeling screen (label.c): header, the
 * prompt over two image panels, the key footer, a status line. The pairs
 * are all sampled before the screen opens, so nothing runs behind it; the
 * images are encoded when a pair is shown (a 32x32 image takes well under
 * a millisecond) and written after doupdate() at the panels' cells. The
 * screen never says which side is the tuned model until the result page. */
#include "evaltui.h"

#include <curses.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "label.h"
#include "session.h"
#include "stats.h"
#include "term.h"

typedef struct {
    const d3_config *c;
    const evaltui_pair *p;
    int n, W, H;
    const int *tuned_is_a;
    int *choice;
    term_caps caps;
    term_mode mode;
    int tty;     /* /dev/tty: the screen, the keys and the images */
    int cur;     /* the pair on screen: the first not judged */
    int results; /* the result page is up */
    int quit;
    unsigned char *gfx[2];
    size_t len[2];
    long gfx_key; /* pair and placement the cached images were made for */
    long last_view;
    char msg[256];
} ev;

static volatile sig_atomic_t resized;
static void on_winch(int sig) { (void)sig; resized = 1; }

void evaltui_count(const int *choice, const int *tuned_is_a, int n, evaltui_result *r) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < n; i++) {
        if (choice[i] < 0) continue;
        if (choice[i] == SESSION_TIE) r->ties++;
        else if (choice[i] == SESSION_SKIP) r->skips++;
        else if ((choice[i] == SESSION_A) == !!tuned_is_a[i]) r->wins++;
        else r->losses++;
    }
    r->rate = stats_win_rate(r->wins, r->losses, r->ties);
    stats_wilson(r->wins + 0.5 * r->ties, (double)(r->wins + r->losses + r->ties), STATS_Z95, &r->lo,
                 &r->hi);
}

static const char *key_of(const d3_config *c, int act) {
    return c->ui.nkeys[act] ? c->ui.keys[act][0] : "?";
}

static void geom(int *top, int *h, int *w, int *l0, int *l1) {
    *top = 3;
    *h = LINES - 6;
    *w = (COLS - 3) / 2;
    *l0 = 1;
    *l1 = 2 + *w;
}

static int judged(const ev *v) {
    int k = 0;
    for (int i = 0; i < v->n; i++) k += v->choice[i] >= 0;
    return k;
}

static void put_images(ev *v) {
    int top, h, w, l0, l1;
    geom(&top, &h, &w, &l0, &l1);
    long key = (((long)v->cur * 4099 + LINES) * 4099 + COLS);
    if (key != v->gfx_key) {
        for (int i = 0; i < 2; i++) {
            free(v->gfx[i]);
            label_encode_image(v->mode, &v->caps, v->c->ui.colors, v->p[v->cur].rgb[i], v->W, v->H, top,
                               i ? l1 : l0, w, h, &v->gfx[i], &v->len[i]);
        }
        v->gfx_key = key;
    }
    for (int i = 0; i < 2; i++)
        if (v->gfx[i]) {
            ssize_t wr = write(v->tty, v->gfx[i], v->len[i]);
            (void)wr;
        }
}

static void draw_results(ev *v, int top, int h) {
    evaltui_result r;
    evaltui_count(v->choice, v->tuned_is_a, v->n, &r);
    int k = judged(v);
    mvprintw(2, 1, "result after %d of %d pairs (the tuned model against its base):", k, v->n);
    mvprintw(top, 3, "tuned preferred %ld, base preferred %ld, ties %ld, skipped %ld", r.wins, r.losses,
             r.ties, r.skips);
    if (r.wins + r.losses + r.ties > 0)
        mvprintw(top + 1, 3, "win rate %.3f, 95%% interval [%.3f, %.3f] (Wilson; ties count half)",
                 r.rate, r.lo, r.hi);
    else
        mvprintw(top + 1, 3, "no decisions: no win rate");
    mvprintw(top + 3, 3, "the sides, now revealed:");
    int row = top + 4, col = 3;
    for (int i = 0; i < v->n && v->choice[i] >= 0; i++) {
        if (row >= top + h) { row = top + 4; col += 26; }
        if (col + 24 >= COLS) break;
        const char *c = v->choice[i] == SESSION_TIE ? "tie" : v->choice[i] == SESSION_SKIP ? "skip"
                        : (v->choice[i] == SESSION_A) == !!v->tuned_is_a[i] ? "tuned" : "base";
        mvprintw(row++, col, "%3d: tuned=%s you: %s", i + 1, v->tuned_is_a[i] ? "A" : "B", c);
    }
}

static void draw(ev *v, int full) {
    if ((full = label_frame_begin(v->results ? -1 : v->cur, &v->last_view, full)) < 0) return;
    int top, h, w, l0, l1;
    geom(&top, &h, &w, &l0, &l1);
    attron(A_REVERSE);
    mvhline(0, 0, ' ', COLS);
    mvprintw(0, 1, "d3po eval  blind A/B, base vs tuned  pair %d/%d  judged %d",
             v->results ? v->n : v->cur + 1, v->n, judged(v));
    attroff(A_REVERSE);
    if (v->results) {
        draw_results(v, top, h);
        mvprintw(LINES - 2, 0, " %s undo the last decision  any other key: finish", key_of(v->c, D3_ACT_UNDO));
    } else {
        char prompt[128];
        snprintf(prompt, sizeof prompt, "%s", v->p[v->cur].prompt);
        for (char *q = prompt; *q; q++)
            if ((unsigned char)*q < 0x20 || *q == 0x7f) *q = '?';
        mvprintw(2, l0, "[%s] %.*s", key_of(v->c, D3_ACT_LEFT), w - 6, prompt);
        mvprintw(2, l1, "[%s] %.*s", key_of(v->c, D3_ACT_RIGHT), w - 6, prompt);
        mvprintw(LINES - 2, 0, " %s/%s left|right better  %s tie  %s skip  %s undo  %s result",
                 key_of(v->c, D3_ACT_LEFT), key_of(v->c, D3_ACT_RIGHT), key_of(v->c, D3_ACT_TIE),
                 key_of(v->c, D3_ACT_SKIP), key_of(v->c, D3_ACT_UNDO), key_of(v->c, D3_ACT_QUIT));
    }
    char line[512];
    snprintf(line, sizeof line, " %s", v->msg[0] ? v->msg
             : v->results ? "the choices above are final once you leave"
                          : "which model made which image stays hidden until the result");
    mvprintw(LINES - 1, 0, "%.*s", COLS - 1, line);
    wnoutrefresh(stdscr);
    doupdate();
    if (full && !v->results) put_images(v);
}

static void decide(ev *v, int choice) {
    v->choice[v->cur] = choice;
    while (v->cur < v->n && v->choice[v->cur] >= 0) v->cur++;
    if (v->cur == v->n) {
        v->cur = v->n - 1;
        v->results = 1;
    }
}

static void on_key(ev *v, int ch) {
    char kb[8];
    const char *k = label_key_name(ch, kb);
    if (ch == 3) { v->quit = 1; return; } /* Ctrl-C typed during detection */
    int act = k ? config_key_action(v->c, k) : -1;
    v->msg[0] = 0;
    if (act == D3_ACT_UNDO) {
        int last = -1;
        for (int i = 0; i < v->n; i++)
            if (v->choice[i] >= 0) last = i;
        if (last < 0) {
            snprintf(v->msg, sizeof v->msg, "nothing to undo");
            return;
        }
        v->choice[last] = -1;
        v->cur = last;
        v->results = 0;
        return;
    }
    if (v->results) { v->quit = 1; return; }
    switch (act) {
    case D3_ACT_LEFT: decide(v, SESSION_A); break;
    case D3_ACT_RIGHT: decide(v, SESSION_B); break;
    case D3_ACT_TIE: decide(v, SESSION_TIE); break;
    case D3_ACT_SKIP: decide(v, SESSION_SKIP); break;
    case D3_ACT_QUIT: v->results = 1; break;
    default:
        if (k) snprintf(v->msg, sizeof v->msg, "%s: not a key of this screen", k);
        break;
    }
}

int evaltui_available(char *err) {
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY);
    if (fd < 0) return d3_errf(err, "--tui needs a terminal (/dev/tty: %s)", strerror(errno));
    close(fd);
    return 0;
}

int evaltui_run(const d3_config *c, const char *graphics, const evaltui_pair *p, int n, int W,
                int H, const int *tuned_is_a, int *choice, char *err) {
    if (n < 1) return d3_errf(err, "no pairs to judge");
    /* the terminal itself, so standard output can take the result */
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY), fd2 = fd >= 0 ? dup(fd) : -1;
    FILE *fo = fd >= 0 ? fdopen(fd, "w") : NULL, *fi = fd2 >= 0 ? fdopen(fd2, "r") : NULL;
    if (!fo || !fi) {
        int e = errno;
        if (fo) fclose(fo); else if (fd >= 0) close(fd);
        if (fi) fclose(fi); else if (fd2 >= 0) close(fd2);
        return d3_errf(err, "--tui needs a terminal (/dev/tty: %s)", strerror(e));
    }
    ev V = {0}, *v = &V;
    v->tty = fd;
    v->c = c;
    v->p = p;
    v->n = n;
    v->W = W;
    v->H = H;
    v->tuned_is_a = tuned_is_a;
    v->choice = choice;
    v->gfx_key = -1;
    v->last_view = -2;
    for (int i = 0; i < n; i++) choice[i] = -1;
    const char *gsel = graphics ? graphics
                       : c->ui.graphics == D3_GRAPHICS_SIXEL ? "sixel"
                       : c->ui.graphics == D3_GRAPHICS_BLOCKS ? "blocks" : "auto";
    fflush(stdout);
    term_detect(fd, fd, TERM_TIMEOUT_MS, &v->caps);
    v->mode = term_choose_mode(&v->caps, gsel);
    snprintf(v->msg, sizeof v->msg, "graphics: %s%s; sides hidden until the result",
             term_mode_name(v->mode), v->caps.tmux ? " (in tmux)" : "");
    signal(SIGWINCH, on_winch);
    char terr[D3_ERRLEN];
    if (label_term_check(terr)) {
        fclose(fo);
        fclose(fi);
        return d3_errf(err, "--tui: %s", terr);
    }
    label_tty_guard(fd, &v->caps, v->mode);
    SCREEN *scr = newterm(NULL, fo, fi);
    if (!scr) {
        term_guard_release();
        fclose(fo);
        fclose(fi);
        return d3_errf(err, "--tui: curses cannot drive this terminal (TERM=%s)",
                       getenv("TERM") ? getenv("TERM") : "(unset)");
    }
    set_term(scr);
    cbreak();
    noecho();
    keypad(stdscr, TRUE);
    curs_set(0);
    label_tty_setup(fd, &v->caps, v->mode);
    for (size_t i = 0; i < v->caps.nleftover; i++) ungetch(v->caps.leftover[v->caps.nleftover - 1 - i]);
    draw(v, 1);
    while (!v->quit) {
        timeout(250);
        int ch = getch();
        int full = 0;
        if (resized) {
            resized = 0;
            endwin();
            refresh();
            full = 1;
        }
        if (ch == KEY_RESIZE) full = 1;
        else if (ch != ERR) on_key(v, ch);
        if (ch != ERR || full) draw(v, full);
    }
    endwin();
    term_guard_release();
    delscreen(scr);
    fclose(fo);
    fclose(fi);
    free(v->gfx[0]);
    free(v->gfx[1]);
    return 0;
}
