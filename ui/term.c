/* term.c - terminal capability detection: one query burst, a tolerant reply
 * parser, the environment (tmux, $TERM, $COLORTERM, TIOCGWINSZ) and the
 * choice between sixel and half blocks. See term.h for the contracts.
 *
 * The parser walks the whole input read so far with a small ECMA-48 scanner:
 * plain bytes are typed keys, ESC [ ... final is a CSI, ESC P/]/_/^/X start
 * strings that end at ST (ESC \) or BEL. Only what a terminal sends as a
 * report is swallowed; key sequences (arrows, function keys, Alt+key) pass
 * through to the leftover so nothing the user typed is lost. */
#include "term.h"

#include <errno.h>
#include <signal.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "err.h"

#define ESC 0x1b

size_t term_query_build(char *buf) {
    /* XTSMGRAPHICS read colour registers; cell size in pixels; DECRQM of
     * modes 80 and 1070; XTVERSION; DA1 last. */
    static const char q[] = "\033[?1;1;0S"
                            "\033[16t"
                            "\033[?80$p"
                            "\033[?1070$p"
                            "\033[>0q"
                            "\033[c";
    memcpy(buf, q, sizeof q); /* with the NUL, so buf is also a C string */
    return sizeof q - 1;
}

/* ---- reply parser ------------------------------------------------------ */

static void leftover_add(term_caps *c, const char *p, size_t n) {
    for (size_t i = 0; i < n && c->nleftover < TERM_LEFTOVER_MAX; i++)
        c->leftover[c->nleftover++] = (unsigned char)p[i];
}

#define MAXPARAM 32

/* One complete CSI: p[0..n) are the parameter and intermediate bytes, fin
 * the final byte. Returns 1 when it was a terminal report (swallowed), 0
 * when it should go to the keys. Sets *da1 when it was the DA1 reply. */
static int csi_report(term_caps *c, const char *p, size_t n, char fin, int *da1) {
    char marker = 0;
    size_t i = 0;
    if (n > 0 && (p[0] == '?' || p[0] == '>' || p[0] == '=' || p[0] == '<')) marker = p[i++];
    int v[MAXPARAM], np = 0;
    long cur = 0;
    int have = 0;
    for (; i < n; i++) {
        char ch = p[i];
        if (ch >= '0' && ch <= '9') {
            if (cur < 1000000) cur = cur * 10 + (ch - '0');
            have = 1;
        } else if (ch == ';' || ch == ':') {
            if (np < MAXPARAM) v[np++] = (int)cur;
            cur = 0, have = 0;
        } else {
            break; /* intermediates or stray markers: stop reading numbers */
        }
    }
    if ((have || np > 0) && np < MAXPARAM) v[np++] = (int)cur;

    if (marker == '?' && fin == 'c') { /* DA1: ESC [ ? class ; attr ; ... c */
        c->da1_class = np > 0 ? v[0] : 0;
        c->sixel = 0;
        for (int k = 1; k < np; k++)
            if (v[k] == 4) c->sixel = 1;
        *da1 = 1;
        return 1;
    }
    if (marker == '?' && fin == 'S') { /* XTSMGRAPHICS: ? item ; status ; value S */
        if (np >= 3 && v[0] == 1 && v[1] == 0 && v[2] > 0) c->color_registers = v[2];
        return 1;
    }
    if (marker == '?' && fin == 'y') { /* DECRPM: ? mode ; state $ y */
        if (np >= 2 && v[1] >= 0 && v[1] <= 4) {
            if (v[0] == 80) c->decsdm_state = v[1];
            if (v[0] == 1070) c->privreg_state = v[1];
        }
        return 1;
    }
    if (marker == 0 && fin == 't') { /* window reports; 6 ; H ; W is the cell */
        if (np >= 3 && v[0] == 6 && v[1] > 0 && v[2] > 0) {
            c->reply_cell_h = v[1];
            c->reply_cell_w = v[2];
        }
        return 1;
    }
    /* Other private-marker reports (DA2 '>', DECRPM '?...$y', ...) are
     * reports too; '<' is SGR mouse input, which belongs to the keys. */
    if (marker == '?' || marker == '>' || marker == '=') return 1;
    return 0;
}

int term_parse_xterm_version(const char *s) {
    if (!s || strncmp(s, "XTerm(", 6)) return 0;
    char *end;
    long v = strtol(s + 6, &end, 10);
    return *end == ')' && v > 0 && v < 100000 ? (int)v : 0;
}

/* The text of an XTVERSION reply (ESC P > | text ESC \). */
static void xtversion(term_caps *c, const char *p, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < sizeof c->version; i++) {
        unsigned char ch = (unsigned char)p[i];
        c->version[k++] = ch < 0x20 || ch >= 0x7f ? '?' : (char)ch;
    }
    c->version[k] = 0;
    c->xterm_patch = term_parse_xterm_version(c->version);
}

int term_parse_replies(const char *b, size_t n, term_caps *c) {
    int da1 = 0;
    c->nleftover = 0;
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)b[i] != ESC) {
            leftover_add(c, b + i, 1);
            i++;
            continue;
        }
        if (i + 1 >= n) goto cut; /* lone ESC at the end */
        char c1 = b[i + 1];
        if (c1 == '[') {
            size_t j = i + 2;
            while (j < n && (unsigned char)b[j] >= 0x20 && (unsigned char)b[j] <= 0x3f) j++;
            if (j >= n) goto cut;
            unsigned char f = (unsigned char)b[j];
            if (f < 0x40 || f > 0x7e) {
                /* Malformed: a control or 8-bit byte inside the CSI. Drop
                 * what looked like a report, keep what looked like a key,
                 * and rescan from the offending byte. */
                int priv = j > i + 2 && (b[i + 2] == '?' || b[i + 2] == '>');
                if (!priv) leftover_add(c, b + i, j - i);
                i = j;
                continue;
            }
            if (!csi_report(c, b + i + 2, j - (i + 2), (char)f, &da1))
                leftover_add(c, b + i, j + 1 - i);
            i = j + 1;
            continue;
        }
        if (c1 == 'P' || c1 == ']' || c1 == '_' || c1 == '^' || c1 == 'X') {
            /* DCS / OSC / APC / PM / SOS string: swallow up to ST or BEL.
             * Reports never hold a raw ESC inside, so an ESC that does not
             * start ST means ESC P was Alt+Shift+P, typed: keep it. */
            size_t j = i + 2;
            while (j < n && b[j] != '\a' && (unsigned char)b[j] != ESC) j++;
            if (j >= n || (b[j] != '\a' && j + 1 >= n)) goto cut;
            if (b[j] == '\a' || b[j + 1] == '\\') {
                if (c1 == 'P' && j >= i + 4 && b[i + 2] == '>' && b[i + 3] == '|')
                    xtversion(c, b + i + 4, j - (i + 4));
                i = j + (b[j] == '\a' ? 1 : 2);
                continue;
            }
        }
        /* ESC + anything else: the Escape key or Alt+key. Keep the ESC and
         * let the next byte be read on its own. */
        leftover_add(c, b + i, 1);
        i++;
        continue;
    cut:
        /* A sequence cut off by the end of the input. Before DA1 it may be
         * a reply still arriving: hold it back. After DA1 no reply is on
         * the way (replies come in order), so it is typed. */
        if (da1) leftover_add(c, b + i, n - i);
        break;
    }
    if (da1) c->da1_complete = 1;
    return da1;
}

/* ---- environment ------------------------------------------------------- */

int term_parse_tmux_version(const char *s, int *major, int *minor) {
    if (!s) return -1;
    while (*s && !(*s >= '0' && *s <= '9')) s++;
    if (!*s) return -1;
    char *end;
    long ma = strtol(s, &end, 10), mi = 0;
    if (*end == '.' && end[1] >= '0' && end[1] <= '9') mi = strtol(end + 1, NULL, 10);
    if (ma < 0 || ma > 1000 || mi < 0 || mi > 1000) return -1;
    *major = (int)ma;
    *minor = (int)mi;
    return 0;
}

static int term_has(const char *term, const char *const *names) {
    for (; *names; names++)
        if (strstr(term, *names)) return 1;
    return 0;
}

void term_apply_env(term_caps *c, const char *term, const char *colorterm, const char *tmux,
                    const char *tmux_version) {
    /* $TERM substrings. Over SSH $COLORTERM is usually not forwarded, but
     * $TERM is: the names of terminals that always have truecolor help. */
    static const char *const sixel_terms[] = {"mlterm", "foot", "yaft", "contour", "wezterm", NULL};
    static const char *const no_sixel_terms[] = {"kitty", "ghostty", "alacritty", "linux", NULL};
    static const char *const truecolor_terms[] = {"-direct", "kitty", "ghostty", "alacritty",
                                                  "foot",    "wezterm", "contour", NULL};
    c->tmux = tmux && *tmux;
    c->tmux_major = c->tmux_minor = 0;
    c->tmux_passthrough = 0;
    if (c->tmux) {
        int ma, mi;
        if (term_parse_tmux_version(tmux_version, &ma, &mi) == 0) {
            c->tmux_major = ma, c->tmux_minor = mi;
            /* 3.4 is the first release that can carry sixel itself. */
            c->tmux_passthrough = ma < 3 || (ma == 3 && mi < 4);
        }
    }
    c->truecolor = colorterm && (!strcasecmp(colorterm, "truecolor") || !strcasecmp(colorterm, "24bit"));
    c->term_sixel_hint = c->term_no_sixel_hint = 0;
    if (term) {
        if (term_has(term, truecolor_terms)) c->truecolor = 1;
        c->term_sixel_hint = term_has(term, sixel_terms);
        c->term_no_sixel_hint = term_has(term, no_sixel_terms);
    }
}

void term_resolve_cell(term_caps *c) {
    if (c->win_cols > 0 && c->win_rows > 0 && c->win_xpix > 0 && c->win_ypix > 0) {
        int w = c->win_xpix / c->win_cols, h = c->win_ypix / c->win_rows;
        /* Plausible cells: a few pixels up to HiDPI fonts. Some terminals
         * (and SSH sessions) report the pixel size of something else. */
        if (w >= 4 && w <= 128 && h >= 8 && h <= 256) {
            c->cell_w = w, c->cell_h = h;
            return;
        }
    }
    if (c->reply_cell_w >= 4 && c->reply_cell_w <= 128 && c->reply_cell_h >= 8 &&
        c->reply_cell_h <= 256) {
        c->cell_w = c->reply_cell_w, c->cell_h = c->reply_cell_h;
        return;
    }
    c->cell_w = TERM_DEFAULT_CELL_W, c->cell_h = TERM_DEFAULT_CELL_H;
}

/* The tmux that runs us: $TERM_PROGRAM_VERSION names the server that
 * started this shell (tmux 3.2+ sets it); `tmux -V` is the client binary on
 * $PATH, usually the same. buf gets a version string or stays empty. */
static void tmux_version_string(char *buf, size_t cap) {
    buf[0] = 0;
    const char *prog = getenv("TERM_PROGRAM"), *ver = getenv("TERM_PROGRAM_VERSION");
    if (prog && !strcmp(prog, "tmux") && ver && *ver) {
        snprintf(buf, cap, "%s", ver);
        return;
    }
    FILE *f = popen("tmux -V 2>/dev/null", "r");
    if (!f) return;
    if (!fgets(buf, (int)cap, f)) buf[0] = 0;
    pclose(f);
}

/* ---- detection --------------------------------------------------------- */

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w, n -= (size_t)w;
    }
    return 0;
}

int term_detect(int fd_in, int fd_out, int timeout_ms, term_caps *out) {
    memset(out, 0, sizeof *out);
    const char *tmux = getenv("TMUX");
    char ver[64] = "";
    if (tmux && *tmux) tmux_version_string(ver, sizeof ver);
    term_apply_env(out, getenv("TERM"), getenv("COLORTERM"), tmux, ver);

    /* Raw mode: replies must not wait for a newline nor be echoed. ISIG off
     * too, so a Ctrl-C typed now arrives as a key instead of killing us with
     * echo switched off. */
    struct termios old, raw;
    int tty = tcgetattr(fd_in, &old) == 0;
    if (tty) {
        raw = old;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO | ISIG | IEXTEN);
        raw.c_iflag &= ~(tcflag_t)(IXON | ICRNL);
        raw.c_cc[VMIN] = 1;
        raw.c_cc[VTIME] = 0;
        if (tcsetattr(fd_in, TCSANOW, &raw) != 0) tty = 0;
    }

    char q[TERM_QUERY_MAX], buf[4096];
    size_t len = term_query_build(q), n = 0;
    int rc = -1;
    if (write_all(fd_out, q, len) == 0) {
        long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
        for (;;) {
            long left = deadline - now_ms();
            if (left <= 0) break;
            struct pollfd p = {.fd = fd_in, .events = POLLIN};
            int r = poll(&p, 1, (int)left);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            ssize_t got = read(fd_in, buf + n, sizeof buf - n);
            if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (got <= 0) break;
            n += (size_t)got;
            if (term_parse_replies(buf, n, out)) {
                rc = 0;
                break;
            }
            if (n == sizeof buf) break; /* a flood of something: give up */
        }
    }
    if (tty) tcsetattr(fd_in, TCSANOW, &old);

    struct winsize ws;
    if (ioctl(fd_out, TIOCGWINSZ, &ws) == 0 || ioctl(fd_in, TIOCGWINSZ, &ws) == 0) {
        out->win_cols = ws.ws_col, out->win_rows = ws.ws_row;
        out->win_xpix = ws.ws_xpixel, out->win_ypix = ws.ws_ypixel;
    }
    term_resolve_cell(out);
    /* xterm older than XTVERSION (patch #354) still names itself here */
    if (!out->xterm_patch) out->xterm_patch = term_parse_xterm_version(getenv("XTERM_VERSION"));
    return rc;
}

/* ---- sixel modes ------------------------------------------------------- */

int term_decsdm_inverted(const term_caps *c) {
    return c->xterm_patch > 0 && c->xterm_patch < TERM_XTERM_DECSDM_FIXED;
}

size_t term_sixel_modes(const term_caps *c, int setup, char *buf) {
    char m[TERM_QUERY_MAX];
    size_t n = 0;
    if (c->tmux && !c->tmux_passthrough) {
        buf[0] = 0;
        return 0; /* tmux 3.4+ draws the sixel itself, at its cursor */
    }
    if (setup) {
        /* sixel scrolling on (the image at the cursor), private palettes */
        n = (size_t)snprintf(m, sizeof m, "\033[?80%c\033[?1070h", term_decsdm_inverted(c) ? 'h' : 'l');
    } else {
        /* the states reported at start-up; 3 and 4 are permanent anyway */
        if (c->decsdm_state == 1 || c->decsdm_state == 2)
            n += (size_t)snprintf(m + n, sizeof m - n, "\033[?80%c", c->decsdm_state == 1 ? 'h' : 'l');
        if (c->privreg_state == 1 || c->privreg_state == 2)
            n += (size_t)snprintf(m + n, sizeof m - n, "\033[?1070%c", c->privreg_state == 1 ? 'h' : 'l');
    }
    if (n && c->tmux_passthrough) {
        /* ESC P tmux ; with every ESC doubled ; ESC \ (see sixel_wrap_tmux) */
        size_t k = 0;
        k += (size_t)snprintf(buf, TERM_QUERY_MAX, "\033Ptmux;");
        for (size_t i = 0; i < n && k + 4 < TERM_QUERY_MAX; i++) {
            if (m[i] == 0x1b) buf[k++] = 0x1b;
            buf[k++] = m[i];
        }
        buf[k++] = 0x1b, buf[k++] = '\\';
        buf[k] = 0;
        return k;
    }
    memcpy(buf, m, n);
    buf[n] = 0;
    return n;
}

/* ---- mode choice ------------------------------------------------------- */

int term_override_check(const char *s, char *err) {
    if (!s || !strcmp(s, "auto") || !strcmp(s, "sixel") || !strcmp(s, "blocks")) return 0;
    return d3_errf(err, "graphics: '%s' is not a mode; expected auto, sixel or blocks", s);
}

term_mode term_choose_mode(const term_caps *c, const char *override) {
    term_mode blocks = c->truecolor ? TERM_MODE_BLOCKS_TRUECOLOR : TERM_MODE_BLOCKS_256;
    if (override && !strcmp(override, "sixel")) return TERM_MODE_SIXEL;
    if (override && !strcmp(override, "blocks")) return blocks;
    if (c->sixel) return TERM_MODE_SIXEL;
    if (!c->da1_complete && c->term_sixel_hint && !c->term_no_sixel_hint) return TERM_MODE_SIXEL;
    return blocks;
}

const char *term_mode_name(term_mode m) {
    switch (m) {
    case TERM_MODE_SIXEL: return "sixel";
    case TERM_MODE_BLOCKS_TRUECOLOR: return "blocks-truecolor";
    case TERM_MODE_BLOCKS_256: return "blocks-256";
    }
    return "?";
}

/* ---- restoring the terminal on signals --------------------------------- */

static const int guard_sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV,
                                 SIGBUS, SIGFPE,  SIGILL, SIGABRT};
#define NGUARD (int)(sizeof guard_sigs / sizeof guard_sigs[0])
static struct {
    int on, fd, tty_fd, have_tty;
    char restore[256], leave[256];
    size_t nrestore, nleave;
    struct termios tty;
    struct sigaction old[NGUARD];
} guard;

static void guard_write(const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(guard.fd, p, n);
        if (w <= 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w, n -= (size_t)w;
    }
}

static void guard_handler(int sig) {
    int saved = errno;
    guard_write(guard.restore, guard.nrestore);
    guard.nrestore = 0; /* once, even when the old handler returns */
    for (int i = 0; i < NGUARD; i++) {
        if (guard_sigs[i] != sig) continue;
        struct sigaction *o = &guard.old[i];
        if (!(o->sa_flags & SA_SIGINFO) && o->sa_handler != SIG_DFL && o->sa_handler != SIG_IGN) {
            o->sa_handler(sig); /* the program's own handler decides */
            errno = saved;
            return;
        }
        if (!(o->sa_flags & SA_SIGINFO) && o->sa_handler == SIG_IGN) {
            errno = saved;
            return;
        }
    }
    guard_write(guard.leave, guard.nleave);
    if (guard.have_tty) tcsetattr(guard.tty_fd, TCSANOW, &guard.tty);
    signal(sig, SIG_DFL);
    raise(sig);
    errno = saved;
}

void term_guard_install(int fd_out, int fd_tty, const char *restore, size_t nrestore) {
    if (guard.on) term_guard_release();
    guard.fd = fd_out;
    guard.tty_fd = fd_tty;
    guard.nrestore = nrestore < sizeof guard.restore ? nrestore : 0;
    if (guard.nrestore) memcpy(guard.restore, restore, guard.nrestore);
    guard.nleave = 0;
    guard.have_tty = tcgetattr(fd_tty, &guard.tty) == 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = guard_handler;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < NGUARD; i++) sigaction(guard_sigs[i], &sa, &guard.old[i]);
    guard.on = 1;
}

void term_guard_leave(const char *leave) {
    size_t k = 0;
    for (const char *p = leave; p && *p && k + 1 < sizeof guard.leave; p++) {
        if (p[0] == '$' && p[1] == '<') { /* terminfo padding, not bytes to send */
            const char *e = strchr(p, '>');
            if (e) { p = e; continue; }
        }
        guard.leave[k++] = *p;
    }
    guard.nleave = k;
}

void term_guard_release(void) {
    if (!guard.on) return;
    for (int i = 0; i < NGUARD; i++) sigaction(guard_sigs[i], &guard.old[i], NULL);
    guard_write(guard.restore, guard.nrestore);
    guard.on = 0;
}
