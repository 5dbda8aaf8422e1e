/* test_graphics.c - the terminal-graphics layer without a terminal: reply
 * parsing on canned bytes, term_detect() against a fake terminal on a
 * socketpair, the mode decision, sixel bytes (decoded back with libsixel),
 * tmux wrapping, placement and half-block rows, byte for byte. */
#define _GNU_SOURCE /* posix_openpt, ptsname */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <sixel/sixel.h>

#include "blocks.h"
#include "label.h"
#include "sixel.h"
#include "t.h"
#include "term.h"

static int parse(const char *s, term_caps *c) {
    memset(c, 0, sizeof *c);
    return term_parse_replies(s, strlen(s), c);
}

static int leftover_is(const term_caps *c, const char *want) {
    return c->nleftover == strlen(want) && !memcmp(c->leftover, want, c->nleftover);
}

static void test_query(void) {
    char q[TERM_QUERY_MAX];
    size_t n = term_query_build(q);
    const char *want = "\033[?1;1;0S\033[16t\033[?80$p\033[?1070$p\033[>0q\033[c";
    CHECK(n == strlen(want) && !memcmp(q, want, n), "burst '%s'", q + 1);
}

static void test_da1_vt340(void) {
    term_caps c;
    int done = parse("\033[?63;1;2;4;6;9;15;16;17;18;21;22;28c", &c);
    CHECK(done == 1 && c.da1_complete, "done %d", done);
    CHECK(c.sixel == 1, "sixel %d", c.sixel);
    CHECK(c.da1_class == 63, "class %d", c.da1_class);
    CHECK(c.nleftover == 0, "leftover %zu", c.nleftover);
}

static void test_da1_vt220(void) {
    term_caps c;
    int done = parse("\033[?62;1;2;6;7;8;9c", &c);
    CHECK(done == 1 && c.sixel == 0 && c.da1_class == 62, "done %d sixel %d", done, c.sixel);
    /* VT100-style reply: "?1;2c" (class 1, attribute 2), no sixel. */
    done = parse("\033[?1;2c", &c);
    CHECK(done == 1 && c.sixel == 0 && c.da1_class == 1, "done %d sixel %d", done, c.sixel);
    /* tmux 3.4 with sixel answers for itself and lists 4. */
    done = parse("\033[?1;2;4c", &c);
    CHECK(done == 1 && c.sixel == 1, "tmux-style sixel %d", c.sixel);
}

static const char *full = "\033[?1;0;1024S\033[6;20;10t\033[?63;1;2;4c";

static void test_full_burst(void) {
    term_caps c;
    int done = parse(full, &c);
    CHECK(done == 1 && c.sixel, "done %d", done);
    CHECK(c.color_registers == 1024, "registers %d", c.color_registers);
    CHECK(c.reply_cell_w == 10 && c.reply_cell_h == 20, "cell %dx%d", c.reply_cell_w,
          c.reply_cell_h);
    CHECK(c.nleftover == 0, "leftover %zu", c.nleftover);
}

/* xterm 379's answers to the whole burst (sixelScrolling false), a typed
 * key between them: the DECRQM states, the XTVERSION name and patch. */
static void test_modes_version(void) {
    term_caps c;
    const char *xt = "\033[?80;1$y\033[?1070;1$yk\033P>|XTerm(379)\033\\\033[>19;379;0c"
                     "\033[?1;0;256S\033[?63;1;2;4;6;9;15;16;22;28c";
    int done = parse(xt, &c);
    CHECK(done == 1 && c.sixel, "done %d", done);
    CHECK(c.decsdm_state == 1 && c.privreg_state == 1, "states %d %d", c.decsdm_state,
          c.privreg_state);
    CHECK(!strcmp(c.version, "XTerm(379)") && c.xterm_patch == 379, "version '%s' patch %d",
          c.version, c.xterm_patch);
    CHECK(leftover_is(&c, "k"), "leftover %zu", c.nleftover);
    /* mlterm: mode 1070 unknown (0), no XTVERSION; a hostile name is escaped */
    done = parse("\033[?80;2$y\033[?1070;0$y\033P>|evil\033]0;x\007\033\\\033[?63;4c", &c);
    CHECK(done == 1 && c.decsdm_state == 2 && c.privreg_state == 0 && c.xterm_patch == 0,
          "states %d %d patch %d", c.decsdm_state, c.privreg_state, c.xterm_patch);
    done = parse("\033P>|x\001y\033\\\033[?63;4c", &c);
    CHECK(done == 1 && !strcmp(c.version, "x?y"), "escaped '%s'", c.version);
    CHECK(term_parse_xterm_version("XTerm(368)") == 368 && term_parse_xterm_version("XTerm(") == 0 &&
              term_parse_xterm_version("foot(1.16)") == 0 && term_parse_xterm_version(NULL) == 0,
          "xterm versions");
}

/* The bytes that set the sixel modes and put them back: DECSDM's sense
 * flips below xterm patch 369; restore writes what was reported; tmux
 * draws itself (nothing) or wraps for the outer terminal (passthrough). */
static void test_sixel_modes(void) {
    term_caps c;
    char b[TERM_QUERY_MAX];
    memset(&c, 0, sizeof c);
    size_t n = term_sixel_modes(&c, 1, b);
    CHECK(n == strlen(b) && !strcmp(b, "\033[?80l\033[?1070h"), "setup '%s'", b + 1);
    CHECK(term_sixel_modes(&c, 0, b) == 0, "no reply: nothing to restore");
    c.xterm_patch = 368;
    CHECK(term_decsdm_inverted(&c) && term_sixel_modes(&c, 1, b) &&
              !strcmp(b, "\033[?80h\033[?1070h"), "old xterm setup '%s'", b + 1);
    c.xterm_patch = TERM_XTERM_DECSDM_FIXED;
    CHECK(!term_decsdm_inverted(&c), "patch 369 has the manuals' sense");
    c.decsdm_state = 1, c.privreg_state = 2;
    n = term_sixel_modes(&c, 0, b);
    CHECK(n && !strcmp(b, "\033[?80h\033[?1070l"), "restore '%s'", b + 1);
    c.decsdm_state = 2, c.privreg_state = 0;
    CHECK(term_sixel_modes(&c, 0, b) && !strcmp(b, "\033[?80l"), "restore '%s'", b + 1);
    c.decsdm_state = 3; /* permanently set: nothing to write */
    CHECK(term_sixel_modes(&c, 0, b) == 0, "permanent mode left alone");
    c.tmux = 1;
    CHECK(term_sixel_modes(&c, 1, b) == 0, "tmux 3.4+ draws sixel itself");
    c.tmux_passthrough = 1;
    n = term_sixel_modes(&c, 1, b);
    CHECK(n == strlen(b) && !strcmp(b, "\033Ptmux;\033\033[?80l\033\033[?1070h\033\\"),
          "passthrough '%s'", b + 1);
}

/* The guard: a child killed by SIGTERM writes the restore bytes (and the
 * leave bytes, without terminfo padding) and still dies of the signal. */
static void test_guard(void) {
    int p[2];
    if (pipe(p)) { CHECK(0, "pipe"); return; }
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        term_guard_install(p[1], p[1], "R1", 2);
        term_guard_leave("L$<5>2");
        raise(SIGTERM);
        _exit(0); /* not reached */
    }
    close(p[1]);
    char got[32] = "";
    size_t n = 0;
    ssize_t r;
    while (n < sizeof got - 1 && (r = read(p[0], got + n, sizeof got - 1 - n)) > 0) n += (size_t)r;
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(!strcmp(got, "R1L2"), "child wrote '%s'", got);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "child status %d", st);
    /* release writes the bytes once and puts the old handler back */
    if (pipe(p)) { CHECK(0, "pipe"); return; }
    term_guard_install(p[1], p[1], "R", 1);
    struct sigaction now;
    sigaction(SIGTERM, NULL, &now);
    int ours = now.sa_handler != SIG_DFL;
    term_guard_release();
    sigaction(SIGTERM, NULL, &now);
    close(p[1]);
    n = (size_t)read(p[0], got, sizeof got - 1);
    got[n] = 0;
    close(p[0]);
    CHECK(ours && now.sa_handler == SIG_DFL && !strcmp(got, "R"), "release: '%s'", got);
}

/* Every cut point: the prefix is never complete and never leaks bytes. */
static void test_split(void) {
    size_t n = strlen(full);
    for (size_t k = 0; k < n; k++) {
        term_caps c;
        memset(&c, 0, sizeof c);
        int done = term_parse_replies(full, k, &c);
        CHECK(done == 0, "prefix %zu complete", k);
        CHECK(c.nleftover == 0, "prefix %zu leaks %zu bytes", k, c.nleftover);
    }
    /* Accumulating caller, as term_detect does: reparse the grown buffer. */
    term_caps c;
    memset(&c, 0, sizeof c);
    CHECK(term_parse_replies(full, 9, &c) == 0, "first read");
    CHECK(term_parse_replies(full, 20, &c) == 0, "second read");
    CHECK(term_parse_replies(full, n, &c) == 1 && c.sixel && c.color_registers == 1024,
          "third read");
}

static void test_typed_keys(void) {
    term_caps c;
    /* 'a', then an arrow key and 'b' between the replies, 'c' and a lone
     * Escape after DA1 (handed back: no reply can follow DA1). */
    int done = parse("a\033[?1;0;256S\033[Ab\033[6;16;8tc\033[?65;4c" "x\033", &c);
    CHECK(done == 1 && c.sixel && c.color_registers == 256, "done %d", done);
    CHECK(c.reply_cell_w == 8 && c.reply_cell_h == 16, "cell %dx%d", c.reply_cell_w,
          c.reply_cell_h);
    CHECK(leftover_is(&c, "a\033[Abcx\033"), "leftover %zu bytes", c.nleftover);
    /* Alt+x (ESC x) and a modified arrow before DA1 are keys too. */
    done = parse("\033x\033[1;5C\033[?62;1c", &c);
    CHECK(done == 1 && leftover_is(&c, "\033x\033[1;5C"), "alt keys, %zu bytes", c.nleftover);
    /* A lone ESC before DA1's arrival at the end: held back (could be the
     * start of a reply). */
    done = parse("q\033", &c);
    CHECK(done == 0 && leftover_is(&c, "q"), "held back, %zu bytes", c.nleftover);
}

static void test_garbage(void) {
    term_caps c;
    /* XTSMGRAPHICS error status, an OSC colour report, DA2, DECRPM, a
     * malformed private CSI with a control byte, and DA1 without sixel. */
    int done = parse("\033[?1;3;0S\033]11;rgb:0000/0000/0000\033\\\033[>41;320;0c"
                     "\033[?2026;2$y\033[?6\001\033P>|xterm(390)\033\\\033[?62;22c",
                     &c);
    CHECK(done == 1 && c.sixel == 0, "done %d sixel %d", done, c.sixel);
    CHECK(c.color_registers == 0, "registers %d from an error reply", c.color_registers);
    CHECK(leftover_is(&c, "\001"), "leftover %zu bytes", c.nleftover);
    /* Absurd numbers are clamped, not overflowed. */
    done = parse("\033[?1;0;99999999999999999999S\033[?99999999999999999999;4c", &c);
    CHECK(done == 1 && c.sixel == 1, "huge numbers");
    /* Random bytes: no crash, no overrun (run under ASan). */
    unsigned s = 12345;
    char buf[256];
    for (int it = 0; it < 5000; it++) {
        size_t n = 1 + (s >> 16) % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            s = s * 1103515245u + 12345u;
            unsigned v = (s >> 16) & 0xff;
            /* biased toward the interesting bytes */
            buf[i] = v < 40 ? 0x1b : v < 80 ? "[?;P\\c4St6"[v % 10] : (char)v;
        }
        term_parse_replies(buf, n, &c);
        CHECK(c.nleftover <= TERM_LEFTOVER_MAX, "leftover %zu", c.nleftover);
    }
}

static void test_missing_da1(void) {
    term_caps c;
    int done = parse("\033[?1;0;256S\033[6;20;10t", &c);
    CHECK(done == 0 && !c.da1_complete, "complete without DA1");
    CHECK(c.color_registers == 256 && c.reply_cell_h == 20, "other replies still parsed");
    done = parse("\033[?63;1;2;4;6", &c);
    CHECK(done == 0 && c.nleftover == 0 && !c.sixel, "partial DA1: done %d", done);
}

/* ---- term_detect against a fake terminal ------------------------------- */

typedef struct {
    int fd;
    int answer; /* 0: never answers */
    char got[TERM_QUERY_MAX];
    size_t ngot;
} fake_term;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void *fake_term_main(void *arg) {
    fake_term *f = arg;
    char q[TERM_QUERY_MAX];
    size_t want = term_query_build(q);
    while (f->ngot < want) {
        ssize_t r = read(f->fd, f->got + f->ngot, sizeof f->got - f->ngot);
        if (r <= 0) return NULL;
        f->ngot += (size_t)r;
    }
    if (!f->answer) return NULL;
    /* A key typed early, then the replies in two pieces, DA1 cut in half. */
    const char *a = "k\033[?1;0;256S\033[6;18;9t\033[?64;1;2;4", *b = ";22c";
    sleep_ms(50);
    if (write(f->fd, a, strlen(a)) < 0) return NULL;
    sleep_ms(30);
    if (write(f->fd, b, strlen(b)) < 0) return NULL;
    return NULL;
}

static void detect_with(int answer, int timeout_ms, term_caps *c, int *rc, fake_term *f) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        CHECK(0, "socketpair failed");
        return;
    }
    memset(f, 0, sizeof *f);
    f->fd = sv[1];
    f->answer = answer;
    pthread_t th;
    pthread_create(&th, NULL, fake_term_main, f);
    *rc = term_detect(sv[0], sv[0], timeout_ms, c);
    close(sv[0]); /* unblocks a fake terminal still reading */
    pthread_join(th, NULL);
    close(sv[1]);
}

static void test_detect_answers(void) {
    term_caps c;
    fake_term f;
    int rc;
    detect_with(1, 5000, &c, &rc, &f);
    char q[TERM_QUERY_MAX];
    size_t qn = term_query_build(q);
    CHECK(f.ngot == qn && !memcmp(f.got, q, qn), "terminal got %zu bytes", f.ngot);
    CHECK(rc == 0 && c.da1_complete && c.sixel && c.da1_class == 64, "rc %d sixel %d", rc,
          c.sixel);
    CHECK(c.color_registers == 256, "registers %d", c.color_registers);
    /* A socket has no TIOCGWINSZ: the ESC[16t reply gives the cell. */
    CHECK(c.cell_w == 9 && c.cell_h == 18, "cell %dx%d", c.cell_w, c.cell_h);
    CHECK(leftover_is(&c, "k"), "leftover %zu bytes", c.nleftover);
}

static void test_detect_silent(void) {
    term_caps c;
    fake_term f;
    int rc;
    /* The terminal never answers: term_detect must give up by itself (no
     * assertion on the time it took, only that it came back). */
    detect_with(0, 200, &c, &rc, &f);
    CHECK(rc == -1 && !c.da1_complete && !c.sixel, "rc %d sixel %d", rc, c.sixel);
    CHECK(c.cell_w == TERM_DEFAULT_CELL_W && c.cell_h == TERM_DEFAULT_CELL_H, "cell %dx%d",
          c.cell_w, c.cell_h);
}

/* On a real pty: raw mode during the read (the replies are not echoed and
 * need no newline), the tty's modes restored afterwards, and TIOCGWINSZ's
 * pixel size preferred over the ESC[16t reply. */
static void test_detect_pty(void) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) {
        printf("    skipped: no pty\n");
        if (master >= 0) close(master);
        return;
    }
    int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
    CHECK(slave >= 0, "open slave");
    if (slave < 0) {
        close(master);
        return;
    }
    struct winsize ws = {.ws_row = 24, .ws_col = 80, .ws_xpixel = 960, .ws_ypixel = 528};
    ioctl(master, TIOCSWINSZ, &ws);
    struct termios before, after;
    tcgetattr(slave, &before);
    fake_term f;
    memset(&f, 0, sizeof f);
    f.fd = master;
    f.answer = 1;
    pthread_t th;
    pthread_create(&th, NULL, fake_term_main, &f);
    term_caps c;
    int rc = term_detect(slave, slave, 5000, &c);
    pthread_join(th, NULL);
    tcgetattr(slave, &after);
    CHECK(rc == 0 && c.sixel && leftover_is(&c, "k"), "rc %d sixel %d leftover %zu", rc, c.sixel,
          c.nleftover);
    CHECK(before.c_lflag == after.c_lflag && before.c_iflag == after.c_iflag &&
              before.c_cc[VMIN] == after.c_cc[VMIN],
          "termios not restored");
    CHECK(c.win_cols == 80 && c.cell_w == 12 && c.cell_h == 22, "cell %dx%d", c.cell_w, c.cell_h);
    close(slave);
    close(master);
}

/* ---- environment and decisions ----------------------------------------- */

static void test_tmux_version(void) {
    int ma = -1, mi = -1;
    CHECK(term_parse_tmux_version("tmux 3.3a\n", &ma, &mi) == 0 && ma == 3 && mi == 3, "3.3a");
    CHECK(term_parse_tmux_version("3.4", &ma, &mi) == 0 && ma == 3 && mi == 4, "3.4");
    CHECK(term_parse_tmux_version("tmux next-3.5", &ma, &mi) == 0 && ma == 3 && mi == 5, "next");
    CHECK(term_parse_tmux_version("tmux 2.9a", &ma, &mi) == 0 && ma == 2 && mi == 9, "2.9a");
    CHECK(term_parse_tmux_version("tmux master", &ma, &mi) == -1, "master");
    CHECK(term_parse_tmux_version(NULL, &ma, &mi) == -1, "NULL");

    term_caps c;
    memset(&c, 0, sizeof c);
    term_apply_env(&c, "tmux-256color", NULL, "/tmp/tmux-1000/default,1,0", "tmux 3.3a");
    CHECK(c.tmux && c.tmux_passthrough && !c.truecolor, "tmux 3.3a: passthrough");
    term_apply_env(&c, "tmux-256color", "truecolor", "/tmp/tmux-1000/default,1,0", "3.4");
    CHECK(c.tmux && !c.tmux_passthrough && c.truecolor, "tmux 3.4: native");
    term_apply_env(&c, "screen", NULL, "/tmp/x,1,0", "tmux master");
    CHECK(c.tmux && !c.tmux_passthrough, "unknown version taken as current");
    term_apply_env(&c, "xterm-256color", NULL, "", NULL);
    CHECK(!c.tmux && !c.tmux_passthrough, "empty $TMUX");
    term_apply_env(&c, "xterm-kitty", NULL, NULL, NULL);
    CHECK(c.truecolor && c.term_no_sixel_hint && !c.term_sixel_hint, "kitty");
    term_apply_env(&c, "mlterm", "24bit", NULL, NULL);
    CHECK(c.truecolor && c.term_sixel_hint, "mlterm");
    term_apply_env(&c, NULL, NULL, NULL, NULL);
    CHECK(!c.truecolor && !c.tmux && !c.term_sixel_hint, "empty environment");
}

static void test_cell_size(void) {
    term_caps c;
    memset(&c, 0, sizeof c);
    c.win_cols = 80, c.win_rows = 24, c.win_xpix = 800, c.win_ypix = 480;
    c.reply_cell_w = 7, c.reply_cell_h = 14;
    term_resolve_cell(&c);
    CHECK(c.cell_w == 10 && c.cell_h == 20, "winsize %dx%d", c.cell_w, c.cell_h);
    c.win_xpix = 80, c.win_ypix = 24; /* 1x1 pixel cells: implausible */
    term_resolve_cell(&c);
    CHECK(c.cell_w == 7 && c.cell_h == 14, "reply %dx%d", c.cell_w, c.cell_h);
    c.win_xpix = c.win_ypix = 0, c.reply_cell_w = c.reply_cell_h = 0;
    term_resolve_cell(&c);
    CHECK(c.cell_w == 10 && c.cell_h == 20, "default %dx%d", c.cell_w, c.cell_h);
}

static void test_choose_mode(void) {
    term_caps c;
    memset(&c, 0, sizeof c);
    struct {
        int sixel, da1, truecolor, hint;
        const char *override;
        term_mode want;
    } m[] = {
        {1, 1, 0, 0, NULL, TERM_MODE_SIXEL},
        {1, 1, 1, 0, "auto", TERM_MODE_SIXEL},
        {1, 1, 1, 0, "blocks", TERM_MODE_BLOCKS_TRUECOLOR},
        {1, 1, 0, 0, "blocks", TERM_MODE_BLOCKS_256},
        {0, 1, 0, 0, NULL, TERM_MODE_BLOCKS_256},
        {0, 1, 1, 0, "auto", TERM_MODE_BLOCKS_TRUECOLOR},
        {0, 1, 0, 0, "sixel", TERM_MODE_SIXEL},
        {0, 0, 0, 0, "sixel", TERM_MODE_SIXEL},
        {0, 0, 0, 1, NULL, TERM_MODE_SIXEL},        /* DA1 lost, $TERM=mlterm */
        {0, 1, 0, 1, NULL, TERM_MODE_BLOCKS_256},   /* DA1 says no: believe it */
        {0, 0, 1, 0, NULL, TERM_MODE_BLOCKS_TRUECOLOR},
        {0, 1, 0, 0, "bogus", TERM_MODE_BLOCKS_256}, /* unchecked junk: auto */
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        c.sixel = m[i].sixel, c.da1_complete = m[i].da1, c.truecolor = m[i].truecolor;
        c.term_sixel_hint = m[i].hint;
        term_mode got = term_choose_mode(&c, m[i].override);
        CHECK(got == m[i].want, "case %zu: %s, want %s", i, term_mode_name(got),
              term_mode_name(m[i].want));
    }
    char err[D3_ERRLEN] = "";
    CHECK(term_override_check("auto", err) == 0 && term_override_check(NULL, err) == 0 &&
              term_override_check("sixel", err) == 0 && term_override_check("blocks", err) == 0,
          "valid values");
    CHECK(term_override_check("kitty", err) == -1 && strstr(err, "'kitty'"), "err '%s'", err);
}

/* ---- sixel ------------------------------------------------------------- */

/* 16x12: four flat quadrants (red, green, blue, grey) and a white row. */
static void make_image(uint8_t *rgb, int w, int h) {
    static const uint8_t q[4][3] = {{220, 20, 20}, {20, 200, 40}, {30, 40, 210}, {128, 128, 128}};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const uint8_t *c = q[(y >= h / 2) * 2 + (x >= w / 2)];
            uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            if (y == h - 1) p[0] = p[1] = p[2] = 255;
            else memcpy(p, c, 3);
        }
}

static void test_sixel_roundtrip(void) {
    enum { W = 16, H = 12 };
    uint8_t rgb[W * H * 3];
    make_image(rgb, W, H);
    char err[D3_ERRLEN] = "";
    for (int dither = 0; dither <= 1; dither++) {
        unsigned char *six = NULL;
        size_t n = 0;
        int rc = sixel_encode_rgb(rgb, W, H, 16, dither, &six, &n, err);
        CHECK(rc == 0, "encode: %s", err);
        if (rc) continue;
        CHECK(n > 8 && six[0] == 0x1b && six[1] == 'P', "starts %02x %02x", six[0], six[1]);
        CHECK(six[n - 2] == 0x1b && six[n - 1] == '\\', "ends %02x %02x", six[n - 2], six[n - 1]);
        CHECK(memchr(six, 'q', n) != NULL, "no sixel introducer q");

        unsigned char *px = NULL, *pal = NULL;
        int dw = 0, dh = 0, nc = 0;
        SIXELSTATUS st = sixel_decode_raw(six, (int)n, &px, &dw, &dh, &pal, &nc, NULL);
        CHECK(!SIXEL_FAILED(st), "decode failed");
        if (!SIXEL_FAILED(st)) {
            CHECK(dw == W && dh == H, "decoded %dx%d", dw, dh);
            /* 16 registers for 5 flat colours, so no colour is merged;
             * the error is libsixel's histogram, which keeps 5 bits per
             * channel (255 -> 248, up to 7 levels), plus the palette in
             * percent (one step is 2.55 levels, rounding up to 1.3):
             * at most 9, and 10 for margin. */
            int maxd = 0;
            for (int i = 0; i < W * H && dw == W && dh == H; i++)
                for (int k = 0; k < 3; k++) {
                    int d = abs((int)pal[px[i] * 3 + k] - rgb[i * 3 + k]);
                    if (d > maxd) maxd = d;
                }
            CHECK(maxd <= 10, "dither %d: max channel error %d", dither, maxd);
            printf("    dither %d: %zu bytes, %d palette entries, max channel error %d\n", dither,
                   n, nc, maxd);
        }
        free(px);
        free(pal);
        free(six);
    }
    unsigned char *six = (unsigned char *)"x";
    size_t n = 7;
    CHECK(sixel_encode_rgb(rgb, W, H, 1, 0, &six, &n, err) == -1 && six == NULL && n == 0,
          "1 colour accepted");
    CHECK(strstr(err, "2..256") != NULL, "err '%s'", err);
    CHECK(sixel_encode_rgb(rgb, 0, H, 16, 0, &six, &n, err) == -1, "width 0 accepted");
}

static void test_upscale(void) {
    const uint8_t src[2 * 1 * 3] = {1, 2, 3, 4, 5, 6};
    uint8_t dst[4 * 2 * 3];
    sixel_upscale_nearest(dst, src, 2, 1, 2);
    const uint8_t want[] = {1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6, 1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6};
    CHECK(!memcmp(dst, want, sizeof want), "upscale x2");
}

/* Area averaging: whole 2x2 blocks are their mean; a fractional 3 -> 2
 * shrink of a flat image stays flat; a gradient keeps its order. */
static void test_downscale(void) {
    const uint8_t src[4 * 2 * 3] = {0, 0, 0, 4, 4, 4, 10, 20, 30, 10, 20, 30,
                                    8, 8, 8, 12, 12, 12, 30, 40, 50, 30, 40, 50};
    uint8_t dst[2 * 1 * 3];
    sixel_downscale_area(dst, 2, 1, src, 4, 2);
    const uint8_t want[] = {6, 6, 6, 20, 30, 40};
    CHECK(!memcmp(dst, want, sizeof want), "2x2 means: %d %d %d, %d %d %d", dst[0], dst[1], dst[2],
          dst[3], dst[4], dst[5]);
    uint8_t flat[3 * 3 * 3], out[2 * 2 * 3];
    memset(flat, 77, sizeof flat);
    sixel_downscale_area(out, 2, 2, flat, 3, 3);
    int same = 1;
    for (size_t i = 0; i < sizeof out; i++) same &= out[i] == 77;
    CHECK(same, "flat 3x3 -> 2x2 not flat");
    uint8_t ramp[5 * 1 * 3], r2[2 * 1 * 3];
    for (int x = 0; x < 5; x++) memset(ramp + 3 * x, 50 * x, 3);
    sixel_downscale_area(r2, 2, 1, ramp, 5, 1);
    CHECK(r2[0] < r2[3] && r2[0] == 40 && r2[3] == 160, "ramp 5 -> 2: %d %d (want 40, 160)", r2[0],
          r2[3]);
}

/* The sixel size label_encode_image makes of payload out (placement
 * included): decoded by libsixel. */
static void sixel_dims(const unsigned char *out, size_t len, int *w, int *h) {
    *w = *h = 0;
    const unsigned char *p = memchr(out, 'P', len);
    if (!p || p == out || p[-1] != 0x1b) return;
    p--;
    unsigned char *px = NULL, *pal = NULL;
    int nc = 0;
    if (!SIXEL_FAILED(sixel_decode_raw((unsigned char *)p, (int)(len - (size_t)(p - out)), &px, w, h,
                                       &pal, &nc, NULL))) {
        free(px);
        free(pal);
    }
}

/* Stable Diffusion images of any size fit the panel: a 512x512 image in a
 * 40x20-cell panel of 10x20-pixel cells (400x400 pixels) is shrunk to
 * 400x400, a 64x64 one enlarged by the whole factor 6 (384x384); in half
 * blocks both fill the panel's height (20 rows, 40 columns). */
static void test_encode_fit(void) {
    term_caps caps;
    memset(&caps, 0, sizeof caps);
    caps.cell_w = 10;
    caps.cell_h = 20;
    static uint8_t big[512 * 512 * 3], small[64 * 64 * 3];
    make_image(big, 512, 512);
    make_image(small, 64, 64);
    struct { const uint8_t *rgb; int S, want; } c[2] = {{big, 512, 400}, {small, 64, 384}};
    for (int k = 0; k < 2; k++) {
        unsigned char *out = NULL;
        size_t len = 0;
        int rc = label_encode_image(TERM_MODE_SIXEL, &caps, 64, c[k].rgb, c[k].S, c[k].S, 2, 1, 40, 20,
                                    &out, &len);
        int w = 0, h = 0;
        if (!rc) sixel_dims(out, len, &w, &h);
        CHECK(rc == 0 && w == c[k].want && h == c[k].want, "%dx%d image: sixel %dx%d, want %dx%d",
              c[k].S, c[k].S, w, h, c[k].want, c[k].want);
        free(out);
        rc = label_encode_image(TERM_MODE_BLOCKS_256, &caps, 64, c[k].rgb, c[k].S, c[k].S, 2, 1, 40,
                                20, &out, &len);
        int rows = 0, cells = 0;
        for (size_t i = 0; !rc && i + 2 < len; i++) {
            if (out[i] == 0xe2 && out[i + 1] == 0x96 && out[i + 2] == 0x80) cells++; /* U+2580 */
            if (out[i] != 0x1b || out[i + 1] != '[') continue;
            size_t q = i + 2; /* ESC [ row ; col H: one per row of blocks */
            while (q < len && out[q] >= '0' && out[q] <= '9') q++;
            if (q < len && out[q] == ';') {
                q++;
                while (q < len && out[q] >= '0' && out[q] <= '9') q++;
                rows += q < len && out[q] == 'H';
            }
        }
        CHECK(rc == 0 && rows == 20 && cells == 20 * 40, "%dx%d image: half blocks %d rows, %d cells "
              "(want 20, 800)", c[k].S, c[k].S, rows, cells);
        free(out);
    }
}

static void test_tmux_wrap(void) {
    const unsigned char in[] = "\033Pq#0;2;0;0;0~-\033\\";
    size_t n = sizeof in - 1;
    unsigned char *out = NULL;
    size_t on = 0;
    char err[D3_ERRLEN] = "";
    CHECK(sixel_wrap_tmux(in, n, &out, &on, err) == 0, "wrap: %s", err);
    const char *want = "\033Ptmux;\033\033Pq#0;2;0;0;0~-\033\033\\\033\\";
    CHECK(out && on == strlen(want) && !memcmp(out, want, on), "wrapped %zu bytes", on);
    free(out);
    /* Over tmux's 1 MiB: refused with a message. */
    size_t big = SIXEL_TMUX_MAX;
    unsigned char *b = calloc(big, 1);
    CHECK(sixel_wrap_tmux(b, big, &out, &on, err) == -1 && out == NULL, "1 MiB accepted");
    CHECK(strstr(err, "tmux") != NULL, "err '%s'", err);
    free(b);
}

static void test_place(void) {
    const unsigned char pay[] = "\033Pq~\033\\";
    size_t n = sizeof pay - 1;
    size_t need = sixel_place(NULL, 0, 2, 10, pay, n);
    unsigned char buf[64];
    memset(buf, 0xAA, sizeof buf);
    CHECK(sixel_place(buf, 3, 2, 10, pay, n) == need && buf[0] == 0xAA, "short buffer written");
    size_t got = sixel_place(buf, sizeof buf, 2, 10, pay, n);
    const char *want = "\0337\033[3;11H\033Pq~\033\\\0338";
    CHECK(got == need && got == strlen(want) && !memcmp(buf, want, got), "place %zu bytes", got);
}

/* ---- half blocks ------------------------------------------------------- */

/* 2x2: red, green on top; blue, white below -> one row of two cells. */
static const uint8_t img2x2[] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255};

static void test_blocks_truecolor(void) {
    blocks_out b;
    char err[D3_ERRLEN] = "";
    CHECK(blocks_render(img2x2, 2, 2, TERM_MODE_BLOCKS_TRUECOLOR, 2, 1, &b, err) == 0, "%s", err);
    const char *want = "\033[38;2;255;0;0m\033[48;2;0;0;255m\xe2\x96\x80"
                       "\033[38;2;0;255;0m\033[48;2;255;255;255m\xe2\x96\x80\033[0m";
    CHECK(b.rows == 1 && b.len[0] == strlen(want) && !strcmp(b.line[0], want), "row '%s'",
          b.rows ? b.line[0] + 1 : "");
    blocks_free(&b);
}

static void test_blocks_256(void) {
    blocks_out b;
    char err[D3_ERRLEN] = "";
    CHECK(blocks_render(img2x2, 2, 2, TERM_MODE_BLOCKS_256, 2, 1, &b, err) == 0, "%s", err);
    const char *want = "\033[38;5;196m\033[48;5;21m\xe2\x96\x80"
                       "\033[38;5;46m\033[48;5;231m\xe2\x96\x80\033[0m";
    CHECK(b.rows == 1 && b.len[0] == strlen(want) && !strcmp(b.line[0], want), "row '%s'",
          b.rows ? b.line[0] + 1 : "");
    blocks_free(&b);

    /* Upscaled to 4x2 cells: repeated colours are not re-sent, and each of
     * the two rows ends with the reset. */
    CHECK(blocks_render(img2x2, 2, 2, TERM_MODE_BLOCKS_256, 4, 2, &b, err) == 0, "%s", err);
    const char *r0 = "\033[38;5;196m\033[48;5;196m\xe2\x96\x80\xe2\x96\x80"
                     "\033[38;5;46m\033[48;5;46m\xe2\x96\x80\xe2\x96\x80\033[0m";
    const char *r1 = "\033[38;5;21m\033[48;5;21m\xe2\x96\x80\xe2\x96\x80"
                     "\033[38;5;231m\033[48;5;231m\xe2\x96\x80\xe2\x96\x80\033[0m";
    CHECK(b.rows == 2 && !strcmp(b.line[0], r0) && !strcmp(b.line[1], r1), "scaled rows");
    unsigned char *buf;
    size_t n;
    CHECK(blocks_place(&b, 5, 7, &buf, &n, err) == 0, "%s", err);
    char want2[256];
    int wn = snprintf(want2, sizeof want2, "\0337\033[6;8H%s\033[7;8H%s\0338", r0, r1);
    CHECK(n == (size_t)wn && !memcmp(buf, want2, n), "blocks_place %zu bytes", n);
    free(buf);
    blocks_free(&b);

    CHECK(blocks_render(img2x2, 2, 2, TERM_MODE_SIXEL, 2, 1, &b, err) == -1, "sixel mode accepted");
    CHECK(blocks_render(img2x2, 2, 2, TERM_MODE_BLOCKS_256, 0, 1, &b, err) == -1, "0 cols");
    blocks_free(&b);
}

static void test_xterm256(void) {
    struct {
        int r, g, b, want;
    } m[] = {
        {0, 0, 0, 16},       {255, 255, 255, 231}, {255, 0, 0, 196},    {0, 255, 0, 46},
        {0, 0, 255, 21},     {255, 255, 0, 226},   {0, 255, 255, 51},   {255, 0, 255, 201},
        {128, 128, 128, 244}, {8, 8, 8, 232},      {238, 238, 238, 255}, {95, 95, 95, 59},
        {135, 0, 175, 91},   {3, 3, 3, 16},        {20, 20, 20, 233},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        int got = blocks_xterm256(m[i].r, m[i].g, m[i].b);
        CHECK(got == m[i].want, "(%d,%d,%d) -> %d, want %d", m[i].r, m[i].g, m[i].b, got,
              m[i].want);
    }
}

static void test_blocks_fit(void) {
    int c, r;
    blocks_fit(32, 32, 80, 24, &c, &r);
    CHECK(c == 48 && r == 24, "square in 80x24: %dx%d", c, r);
    blocks_fit(64, 32, 40, 24, &c, &r);
    CHECK(c == 40 && r == 10, "wide in 40x24: %dx%d", c, r);
}

int main(void) {
    RUN(test_query);
    RUN(test_da1_vt340);
    RUN(test_da1_vt220);
    RUN(test_full_burst);
    RUN(test_modes_version);
    RUN(test_sixel_modes);
    RUN(test_guard);
    RUN(test_split);
    RUN(test_typed_keys);
    RUN(test_garbage);
    RUN(test_missing_da1);
    RUN(test_detect_answers);
    RUN(test_detect_silent);
    RUN(test_detect_pty);
    RUN(test_tmux_version);
    RUN(test_cell_size);
    RUN(test_choose_mode);
    RUN(test_sixel_roundtrip);
    RUN(test_upscale);
    RUN(test_downscale);
    RUN(test_encode_fit);
    RUN(test_tmux_wrap);
    RUN(test_place);
    RUN(test_blocks_truecolor);
    RUN(test_blocks_256);
    RUN(test_xterm256);
    RUN(test_blocks_fit);
    return t_done();
}
