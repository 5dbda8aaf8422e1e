/* term.h - what the terminal can draw, found out once at start-up.
 *
 * d3po shows images either as sixel (DCS ... ST, see sixel.h) or as Unicode
 * half blocks (see blocks.h). This module asks the terminal in one burst of
 * queries ending with DA1, parses the replies byte by byte (they may be split
 * across reads, interleaved with keys the user typed, or never come at all),
 * adds what the environment says (tmux and its version, $TERM, $COLORTERM,
 * TIOCGWINSZ) and picks a drawing mode. Nothing here uses curses: run
 * term_detect() before initscr() so no reply leaks into curses' key input,
 * then push term_caps.leftover back as keys (ungetch) if the UI wants them.
 *
 *   term_caps caps;
 *   term_detect(STDIN_FILENO, STDOUT_FILENO, TERM_TIMEOUT_MS, &caps);
 *   term_mode mode = term_choose_mode(&caps, cfg_graphics);   // "auto" etc.
 *   if (mode == TERM_MODE_SIXEL && caps.tmux_passthrough) ... sixel_wrap_tmux
 */
#ifndef D3PO_TERM_H
#define D3PO_TERM_H
#include <stddef.h>

/* About 1 s: long enough for a reply to cross a slow SSH link, short enough
 * that a terminal which never answers delays start-up only a little. */
#define TERM_TIMEOUT_MS 1000
/* Cell size used when neither TIOCGWINSZ nor ESC [ 16 t tells us. */
#define TERM_DEFAULT_CELL_W 10
#define TERM_DEFAULT_CELL_H 20
/* Typed bytes kept from the detection window; more are dropped. */
#define TERM_LEFTOVER_MAX 64
/* Room for the query burst (term_query_build) and for the mode strings of
 * term_sixel_modes. */
#define TERM_QUERY_MAX 96
/* xterm's first patch where CSI ? 80 h means what the VT330/VT340 and
 * VT382 manuals mean (sixel display mode set: scrolling OFF, images at the
 * screen's top-left corner); patches before it read it the other way round
 * (xterm.log.html, patch #369: "invert the sense of DECSDM"). */
#define TERM_XTERM_DECSDM_FIXED 369

typedef enum {
    TERM_MODE_SIXEL,
    TERM_MODE_BLOCKS_TRUECOLOR, /* half blocks, ESC [ 38;2;r;g;b m */
    TERM_MODE_BLOCKS_256,       /* half blocks, xterm 256-colour palette */
} term_mode;

typedef struct {
    /* From the replies (term_parse_replies). 0 means "not reported". */
    int da1_complete;    /* the DA1 reply arrived whole */
    int da1_class;       /* first DA1 parameter: 62..65 for VT220..VT525 */
    int sixel;           /* DA1 listed attribute 4 */
    int color_registers; /* XTSMGRAPHICS ESC [ ? 1 ; 0 ; N S */
    int reply_cell_w, reply_cell_h; /* ESC [ 6 ; H ; W t */
    /* DECRQM replies (ESC [ ? mode ; state $ y): 1 set, 2 reset, 3/4
     * permanently set/reset; 0: no reply, or the mode is not recognised.
     * Kept so the modes can be put back as they were (term_sixel_modes). */
    int decsdm_state;   /* mode 80, sixel display mode (DECSDM) */
    int privreg_state;  /* mode 1070, a private colour palette per image */
    /* XTVERSION (ESC P > | name ESC \): the terminal's name and version,
     * control characters replaced; xterm_patch is N of "XTerm(N)", else 0
     * (term_detect also reads $XTERM_VERSION when there is no reply). */
    char version[48];
    int xterm_patch;
    /* Typed keys that arrived between the replies, in order, to be handed
     * to the key input. Reply bytes never appear here. */
    unsigned char leftover[TERM_LEFTOVER_MAX];
    size_t nleftover;

    /* From TIOCGWINSZ (term_detect); 0 when unknown. */
    int win_cols, win_rows, win_xpix, win_ypix;
    /* Resolved by term_resolve_cell: TIOCGWINSZ, else reply, else default. */
    int cell_w, cell_h;

    /* From the environment (term_apply_env). */
    int tmux;                   /* $TMUX is set */
    int tmux_major, tmux_minor; /* 0.0 when unknown */
    int tmux_passthrough;       /* tmux older than 3.4: wrap sixel */
    int truecolor;              /* $COLORTERM truecolor/24bit or a -direct $TERM */
    int term_sixel_hint;        /* $TERM names a terminal known to have sixel */
    int term_no_sixel_hint;     /* $TERM names one known not to (kitty, ...) */
} term_caps;

/* Writes the query burst into buf (TERM_QUERY_MAX bytes) and returns its
 * length: XTSMGRAPHICS colour registers, cell size in pixels, the state of
 * modes 80 and 1070 (DECRQM), the terminal's version (XTVERSION), and DA1
 * LAST. Every terminal answers DA1 and answers in order, so once its reply
 * is in, no other reply is still on the way; a terminal that does not know
 * a query ignores it. */
size_t term_query_build(char *buf);

/* Parses everything read so far from the terminal after the burst. bytes is
 * the whole accumulated input, not just the latest read: call again with the
 * grown buffer after each read (the parse is idempotent). Sets the reply
 * fields of out that it finds (leaves the others alone) and rebuilds
 * out->leftover from scratch. Tolerates garbage, replies split anywhere,
 * and typed keys in between. Recognised replies and other terminal reports
 * (CSI with a '?' or '>' marker, CSI ... t, DCS/OSC/APC strings) are dropped;
 * other bytes, including key sequences like ESC [ A, go to leftover. A
 * sequence cut off at the end is held back while DA1 is still missing (more
 * of it may come) and handed to leftover once DA1 is in (replies come in
 * order, so it is a typed key such as a lone Escape).
 * Returns 1 when the DA1 reply is complete, else 0. */
int term_parse_replies(const char *bytes, size_t n, term_caps *out);

/* Fills out with the environment's view: tmux (from $TMUX, its version from
 * tmux_version, a `tmux -V` or $TERM_PROGRAM_VERSION string such as
 * "tmux 3.3a", "3.4" or "next-3.5"; NULL or unparseable means a current tmux),
 * truecolor from $COLORTERM, hints from $TERM. Any argument may be NULL. Pure:
 * term_detect() passes getenv() values. */
void term_apply_env(term_caps *out, const char *term, const char *colorterm, const char *tmux,
                    const char *tmux_version);

/* Parses a tmux version string ("tmux 3.3a", "next-3.5"): 0 and major.minor,
 * or -1 when no number is in it ("tmux master"). */
int term_parse_tmux_version(const char *s, int *major, int *minor);

/* Sets out->cell_w/cell_h: the TIOCGWINSZ pixel size divided by the cell
 * count when plausible (4..64 x 8..128 pixels per cell), else the ESC[16t
 * reply when plausible, else 10x20. */
void term_resolve_cell(term_caps *out);

/* The whole detection. Zeroes out, fills the environment part, writes the
 * burst to fd_out, reads fd_in with poll() until the DA1 reply is complete or
 * timeout_ms passes (a terminal that never answers costs timeout_ms), reads
 * TIOCGWINSZ from fd_out, resolves the cell size. When fd_in is a tty it is
 * put in raw mode (no echo, no line buffering) for the duration and restored
 * before returning, also on failure. Returns 0 when the terminal answered
 * DA1, -1 otherwise (timeout, write or read error: out then describes a
 * terminal without sixel, which is still usable). */
int term_detect(int fd_in, int fd_out, int timeout_ms, term_caps *out);

/* Checks a --graphics / config value: 0 for "auto", "sixel", "blocks" (or
 * NULL, meaning auto), else -1 with err naming the value and the choices. */
int term_override_check(const char *override, char *err);

/* Chooses the drawing mode. override "sixel" forces sixel (the caller still
 * wraps for old tmux when caps->tmux_passthrough), "blocks" forces half
 * blocks, NULL / "auto" (and anything term_override_check rejects) detects:
 * sixel when DA1 listed it, or when DA1 never came and $TERM names a sixel
 * terminal (mlterm, foot, ...); else half blocks in truecolor when
 * caps->truecolor, else in 256 colours. A DA1 reply without 4 wins over
 * $TERM: a terminal knows itself better than its name does. */
term_mode term_choose_mode(const term_caps *caps, const char *override);

/* The sixel modes the drawing relies on. ui/label.c places an image by
 * moving the cursor to a cell and sending the sixel there: that needs
 * "sixel scrolling" (the image starts at the cursor; DECSDM reset in the
 * VT340 manual's and today's xterm's sense, set in xterm before patch
 * #369, TERM_XTERM_DECSDM_FIXED) and a private palette per image (mode
 * 1070 set: the second image's colours must not repaint the first's).
 * With `XTerm*sixelScrolling: false` (DECSDM set) a sixel lands at the
 * top-left corner of the screen whatever the cursor says.
 *   setup 1: the bytes that set those modes, whatever the terminal's
 *            defaults; setup 0: the bytes that put back the states the
 *            DECRQM replies reported (a mode with no reply is left as set).
 * In tmux with passthrough (caps->tmux_passthrough) the bytes are wrapped
 * for the outer terminal; in a tmux that draws sixel itself nothing is
 * needed (tmux places the image at its cursor). Writes at most
 * TERM_QUERY_MAX bytes into buf and returns the length (0: nothing). */
size_t term_sixel_modes(const term_caps *caps, int setup, char *buf);

/* 1 when CSI ? 80 h turns sixel scrolling ON in this terminal (xterm
 * before patch #369), else 0 (the manuals' sense, every other terminal). */
int term_decsdm_inverted(const term_caps *caps);

/* "XTerm(379)" (an XTVERSION reply or $XTERM_VERSION) -> 379; 0 when s is
 * NULL or not an xterm version. */
int term_parse_xterm_version(const char *s);

/* The terminal put back when the process dies. term_guard_install keeps
 * restore (the term_sixel_modes(caps, 0) bytes) and the tty modes of
 * fd_tty as they are now, and installs handlers for SIGINT, SIGTERM,
 * SIGHUP, SIGQUIT and the crash signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL,
 * SIGABRT). Call it BEFORE curses starts: the tty modes are still the
 * shell's, and curses, finding handlers in place, installs none of its
 * own. term_guard_leave then adds the bytes that leave the curses screen
 * (its rmcup and cnorm, which only exist once curses runs). On a signal
 * the handler writes restore and leave to fd_out, puts the tty modes back
 * and dies of the signal as before (a handler that was there before the
 * guard runs instead of dying; an ignored signal stays ignored).
 * Everything in it is async-signal-safe (write, tcsetattr, raise).
 * term_guard_release() writes restore once (normal exit, after endwin)
 * and puts the old handlers back. Nothing survives kill -9. One guard at
 * a time; the bytes are copied (at most 255 each; padding "$<..>" is
 * dropped from leave). */
void term_guard_install(int fd_out, int fd_tty, const char *restore, size_t nrestore);
void term_guard_leave(const char *leave);
void term_guard_release(void);

/* "sixel", "blocks-truecolor", "blocks-256". */
const char *term_mode_name(term_mode mode);
#endif
